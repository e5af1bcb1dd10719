# ngx_http_rules_module on Debian 12's stock nginx: the same make targets
# as the README and CI.
#
#   docker build --build-arg REDIS_ADDR=10.0.0.5:6379 -t nginx-rules .
#   docker run -p 8080:8080 nginx-rules

FROM debian:bookworm

ARG REDIS_ADDR=127.0.0.1:6379

RUN apt-get update \
    && apt-get install -y --no-install-recommends make ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . /src

RUN make deps build \
    && install -m 0644 build/nginx/ngx_http_rules_module.so \
           /usr/lib/nginx/modules/ngx_http_rules_module.so \
    && install -m 0644 conf-examples/rules.json /etc/nginx/rules.json \
    && sed "s|@REDIS_ADDR@|${REDIS_ADDR}|" conf-examples/docker.conf \
           > /etc/nginx/nginx.conf \
    && nginx -t

EXPOSE 8080
CMD ["nginx", "-g", "daemon off;"]
