#!/bin/bash
# make docker-check: builds the Docker image (Dockerfile) and checks it end
# to end.  A redis-server on a free loopback port loads the image's rules
# Redis module (copied out of the image); the container runs with the
# host's network and REDIS_ADDR pointing at that Redis, and answers pixel
# requests on port 8080 (docker.conf's): the second page view of a user
# must carry X-Rules: visited_twice_week, the state must be in Redis,
# stored by RULES.STORE, and the image's rules-replay must run.  The
# container, the Redis (by PID) and the temporary files are removed at the
# end, on an error and on INT/TERM; the image stays (IMAGE, default
# nginx-rules).
#
# Needs a running Docker daemon.  Without a registry (no debian:bookworm to
# pull) the base image is made with debootstrap from Debian's mirror
# (DOCKER_CHECK_DEBOOTSTRAP=0 turns that off).

set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
image=${IMAGE:-nginx-rules}
base=debian:bookworm
port=8080
tmp=
redis_pid=
container=

die() { echo "docker-check: $*" >&2; exit 1; }

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$container" ]; then
        if [ "$status" != 0 ]; then
            echo "docker-check: the container's log:" >&2
            docker logs "$container" 2>&1 | tail -20 >&2 || true
        fi
        docker rm -f "$container" > /dev/null 2>&1 || true
    fi
    if [ -n "$redis_pid" ] && kill -0 "$redis_pid" 2>/dev/null; then
        kill -TERM "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    [ -z "$tmp" ] || rm -rf "$tmp"
    [ "$status" = 0 ] || echo "docker-check: FAILED" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for cmd in docker redis-server redis-cli curl; do
    command -v "$cmd" > /dev/null || die "$cmd is missing"
done
docker info > /dev/null 2>&1 || die "no Docker daemon answers (docker info)"
tmp=$(mktemp -d)

# the base image: the local one, a pull, or one made with debootstrap
if ! docker image inspect "$base" > /dev/null 2>&1 \
   && ! docker pull "$base" > "$tmp/pull.log" 2>&1
then
    [ "${DOCKER_CHECK_DEBOOTSTRAP:-1}" = 1 ] \
        || die "no $base image and no registry to pull it from"
    command -v debootstrap > /dev/null \
        || die "no $base image, no registry: install debootstrap to make one"
    echo "docker-check: no registry; making $base with debootstrap"
    debootstrap --variant=minbase bookworm "$tmp/rootfs" \
        http://deb.debian.org/debian > "$tmp/debootstrap.log" 2>&1 \
        || { tail -20 "$tmp/debootstrap.log" >&2; die "debootstrap failed"; }
    # the sources of Debian's own image: the release, its updates, security
    rm -f "$tmp/rootfs/etc/apt/sources.list"
    printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' \
        'Suites: bookworm bookworm-updates' 'Components: main' \
        'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' '' \
        'Types: deb' 'URIs: http://deb.debian.org/debian-security' \
        'Suites: bookworm-security' 'Components: main' \
        'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
        > "$tmp/rootfs/etc/apt/sources.list.d/debian.sources"
    rm -rf "$tmp/rootfs/var/lib/apt/lists/"* \
        "$tmp/rootfs/var/cache/apt/archives/"*.deb
    tar -C "$tmp/rootfs" -c . | docker import - "$base" > /dev/null
    rm -rf "$tmp/rootfs"
fi

# the host's network for the build (apt-get) and the run: works whether or
# not the daemon has a bridge
echo "docker-check: docker build -t $image ."
docker build --network host -t "$image" . > "$tmp/build.log" 2>&1 \
    || { tail -30 "$tmp/build.log" >&2; die "docker build failed"; }
echo "docker-check: image $image, $(docker image inspect -f '{{.Size}}' \
    "$image" | awk '{ printf "%.0f MB", $1 / 1e6 }')"

curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" \
    && die "port $port is in use on this host (the container listens there)"

# Redis with the image's rules Redis module
container=$(docker create --network none "$image" 2> /dev/null)
docker cp "$container:/usr/lib/redis/modules/rules_redis_module.so" \
    "$tmp/" > /dev/null
docker rm "$container" > /dev/null
container=
redis_port=$("$root/tools/free-port")
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' \
    --appendonly no --daemonize no --dir "$tmp" \
    --loadmodule "$tmp/rules_redis_module.so" \
    > "$tmp/redis.log" 2>&1 < /dev/null &
redis_pid=$!
rcli() { redis-cli -p "$redis_port" "$@"; }
for _ in $(seq 50); do
    [ "$(rcli ping 2>/dev/null)" = PONG ] && break
    kill -0 "$redis_pid" 2>/dev/null || break
    sleep 0.1
done
[ "$(rcli ping 2>/dev/null)" = PONG ] \
    || { cat "$tmp/redis.log" >&2; die "redis-server did not start"; }

container=$(docker run -d --network host \
    -e REDIS_ADDR="127.0.0.1:$redis_port" "$image" 2> "$tmp/run.log") \
    || { cat "$tmp/run.log" >&2; die "docker run failed"; }
for _ in $(seq 100); do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/metrics" \
        && break
    sleep 0.1
done
# the worker's connection has answered the probe for RULES.STORE
for _ in $(seq 50); do
    docker logs "$container" 2>&1 \
        | grep -q 'connected (states stored with RULES.STORE)' && break
    sleep 0.1
done
docker logs "$container" 2>&1 \
    | grep -q 'connected (states stored with RULES.STORE)' \
    || die "nginx in the container did not connect to Redis with RULES.STORE"

px() {
    curl -sS -o /dev/null -D - --max-time 5 -H "Cookie: uid=docker-check" \
        "http://127.0.0.1:$port/px?e=page&u=$1" | tr -d '\r'
}
first=$(px /home) || die "the first pixel request failed"
second=$(px /blog) || die "the second pixel request failed"
printf '%s\n' "$first" | grep -q '^HTTP/1.1 200' \
    || die "the first pixel request: $first"
printf '%s\n' "$first" | grep -q '^X-Rules: .' \
    && die "the first page view matched already: $first"
printf '%s\n' "$second" | grep -q '^X-Rules: visited_twice_week$' \
    || die "the second page view did not match visited_twice_week: $second"
echo "docker-check: second page view: X-Rules: visited_twice_week"

calls=$(rcli info commandstats | tr -d '\r' \
    | sed -n 's/^cmdstat_rules\.store:calls=\([0-9]*\).*/\1/p')
[ "${calls:-0}" -ge 1 ] || die "Redis took no RULES.STORE call"
[ "$(rcli dbsize)" -ge 1 ] || die "Redis holds no state key"
echo "docker-check: Redis: $(rcli dbsize) state keys, $calls RULES.STORE calls"

curl -sS --max-time 5 "http://127.0.0.1:$port/metrics" \
    | grep -q '^nginx_rules_rule_matched_total{rule="visited_twice_week",[^}]*} 1$' \
    || die "the metrics do not count the match"
# (--help prints its usage and exits 2)
replay=$(docker run --rm --network none "$image" rules-replay --help 2>&1 \
         || true)
printf '%s\n' "$replay" | grep -q '^usage: rules-replay' \
    || die "rules-replay does not run in the image: $replay"

# docker stop sends STOPSIGNAL (SIGQUIT: nginx's graceful stop)
docker stop -t 10 "$container" > /dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' "$container")" = 0 ] \
    || die "nginx did not exit 0 on docker stop"
echo "docker-check: ok"
