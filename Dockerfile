# ngx_http_rules_module on Debian 12's stock nginx.  Two stages: the build
# stage installs the build dependencies (make deps-build) and builds the
# module, the rules Redis module and rules-replay (make dist); the image
# holds Debian's nginx and the run-time libraries, those three files, and
# conf-examples/docker.conf as /etc/nginx/nginx.conf.
#
#   docker build -t nginx-rules .
#   docker run -p 8080:8080 -e REDIS_ADDR=10.0.0.5:6379 nginx-rules
#   make docker-check      (builds it and checks it against a local Redis)
#
# REDIS_ADDR (host:port or unix:/path, and optionally password=, user=,
# db=, as in rules_redis) fills docker.conf's @REDIS_ADDR@
# when the container starts, default 127.0.0.1:6379 (the build argument of
# the same name changes the default).  rules_redis resolves a host name
# once, when nginx starts: a name (a compose service) must resolve then.
# /etc/nginx/rules.json is conf-examples/rules.json: mount your own over it.
# The image also holds the rules Redis module, for a Redis of the same
# version (7.0, Debian 12) to load (README, "The rules Redis module"):
# /usr/lib/redis/modules/rules_redis_module.so; and rules-replay
# (docker run --rm nginx-rules rules-replay --rules ... < events).

FROM debian:bookworm AS build

RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . /src

RUN make clean && make deps-build && make dist


FROM debian:bookworm

ARG REDIS_ADDR=127.0.0.1:6379
ENV REDIS_ADDR=${REDIS_ADDR}

# nginx (the same Debian version the module was built against) and the
# module's libraries; perl-base, which fills in REDIS_ADDR, is essential
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx libhiredis0.14 \
           libjansson4 libpcre2-8-0 \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /src/build/nginx/ngx_http_rules_module.so \
     /usr/lib/nginx/modules/ngx_http_rules_module.so
COPY --from=build /src/build/rules_redis_module.so \
     /usr/lib/redis/modules/rules_redis_module.so
COPY --from=build /src/build/rules-replay /usr/local/bin/rules-replay
COPY conf-examples/rules.json /etc/nginx/rules.json
COPY conf-examples/docker.conf /etc/nginx/nginx.conf.in

RUN perl -pe 's/\@REDIS_ADDR\@/$ENV{REDIS_ADDR}/g' /etc/nginx/nginx.conf.in \
        > /etc/nginx/nginx.conf \
    && nginx -t \
    && rules-replay --help 2>&1 | grep -q usage

EXPOSE 8080
STOPSIGNAL SIGQUIT
CMD ["/bin/sh", "-c", "perl -pe 's/\\@REDIS_ADDR\\@/$ENV{REDIS_ADDR}/g' /etc/nginx/nginx.conf.in > /etc/nginx/nginx.conf && exec nginx -g 'daemon off;'"]
