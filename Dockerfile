# ngx_http_rules_module on Debian 12's stock nginx: the same make targets
# as the README and CI (make deps build), the module installed next to
# Debian's, and conf-examples/docker.conf as /etc/nginx/nginx.conf.
#
#   docker build -t nginx-rules .
#   docker run -p 8080:8080 -e REDIS_ADDR=10.0.0.5:6379 nginx-rules
#
# REDIS_ADDR (host:port or unix:/path, and optionally password=, user=,
# db=, as in rules_redis) fills docker.conf's @REDIS_ADDR@
# when the container starts, default 127.0.0.1:6379 (the build argument of
# the same name changes the default).  rules_redis resolves a host name
# once, when nginx starts: a name (a compose service) must resolve then.
# /etc/nginx/rules.json is conf-examples/rules.json: mount your own over it.
# The image also holds the rules Redis module, for a Redis of the same
# version (7.0, Debian 12) to load (README, "The rules Redis module"):
# /usr/lib/redis/modules/rules_redis_module.so.

FROM debian:bookworm

ARG REDIS_ADDR=127.0.0.1:6379
ENV REDIS_ADDR=${REDIS_ADDR}

RUN apt-get update \
    && apt-get install -y --no-install-recommends make ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . /src

RUN make clean \
    && make deps build \
    && rm -rf /var/lib/apt/lists/* \
    && install -D -m 0644 build/nginx/ngx_http_rules_module.so \
           /usr/lib/nginx/modules/ngx_http_rules_module.so \
    && install -D -m 0644 build/rules_redis_module.so \
           /usr/lib/redis/modules/rules_redis_module.so \
    && install -D -m 0644 conf-examples/rules.json /etc/nginx/rules.json \
    && install -D -m 0644 conf-examples/docker.conf /etc/nginx/nginx.conf.in \
    && perl -pe 's/\@REDIS_ADDR\@/$ENV{REDIS_ADDR}/g' /etc/nginx/nginx.conf.in \
           > /etc/nginx/nginx.conf \
    && nginx -t

EXPOSE 8080
STOPSIGNAL SIGQUIT
CMD ["/bin/sh", "-c", "perl -pe 's/\\@REDIS_ADDR\\@/$ENV{REDIS_ADDR}/g' /etc/nginx/nginx.conf.in > /etc/nginx/nginx.conf && exec nginx -g 'daemon off;'"]
