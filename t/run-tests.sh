#!/bin/bash
# Runs the whole suite (make test): starts a private redis-server on a free
# loopback port (no persistence), exports the TEST_NGINX_* settings, runs
# prove over t/ (or over the files given as arguments) and stops that Redis
# by PID whatever happens: prove failing, INT, TERM or HUP (prove and its
# tests are then stopped too).  prove's summary is the last thing printed;
# the exit status is prove's (130/143/129 when interrupted).
#
#   t/run-tests.sh                   everything
#   t/run-tests.sh t/050-inline.t    one file
#   PROVE_ARGS=-v t/run-tests.sh     verbose

set -u
cd "$(dirname "$0")/.." || exit 1
root=$(pwd)

for cmd in redis-server redis-cli prove perl; do
    command -v "$cmd" > /dev/null \
        || { echo "run-tests: $cmd is missing (make deps)" >&2; exit 1; }
done
# the module: the build's, or another one (make test-asan)
module=${TEST_NGINX_LOAD_MODULES:-$root/build/nginx/ngx_http_rules_module.so}
[ -f "$module" ] \
    || { echo "run-tests: $module is missing (make)" >&2; exit 1; }

redis_dir=$(mktemp -d /tmp/rules-test-redis.XXXXXX)
redis_pid=
prove_pid=

stop_redis() {
    if [ -n "$redis_pid" ] && kill -0 "$redis_pid" 2>/dev/null; then
        kill -CONT "$redis_pid" 2>/dev/null     # a test may have paused it
        kill -TERM "$redis_pid" 2>/dev/null
        for _ in $(seq 50); do
            kill -0 "$redis_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$redis_pid" 2>/dev/null
        wait "$redis_pid" 2>/dev/null
    fi
    redis_pid=
    rm -rf "$redis_dir"
}

# prove runs in its own process group: a signal to this script stops it
# and the test programs under it, then Redis
# shellcheck disable=SC2317  # invoked by the traps below
on_signal() {
    local status=$1
    trap - INT TERM HUP
    if [ -n "$prove_pid" ] && kill -0 "$prove_pid" 2>/dev/null; then
        echo "run-tests: interrupted, stopping prove ($prove_pid)" >&2
        kill -TERM -- "-$prove_pid" 2>/dev/null || kill -TERM "$prove_pid" 2>/dev/null
        wait "$prove_pid" 2>/dev/null
    fi
    exit "$status"
}
trap stop_redis EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'on_signal 129' HUP

# a free port, and again if another process takes it before Redis binds it
for _attempt in 1 2 3 4 5; do
    redis_port=$("$root/tools/free-port") || exit 1
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' \
        --appendonly no --daemonize no --dir "$redis_dir" \
        > "$redis_dir/redis.log" 2>&1 < /dev/null &
    redis_pid=$!
    for _ in $(seq 100); do
        [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && break 2
        kill -0 "$redis_pid" 2>/dev/null || break
        sleep 0.05
    done
    redis_log=$(tail -20 "$redis_dir/redis.log")
    stop_redis
    redis_dir=$(mktemp -d /tmp/rules-test-redis.XXXXXX)
done
if [ -z "$redis_pid" ]; then
    printf 'run-tests: redis-server did not start:\n%s\n' "$redis_log" >&2
    exit 1
fi

export TEST_NGINX_REDIS_PORT=$redis_port
export TEST_NGINX_LOAD_MODULES=$module
export TEST_NGINX_BINARY=${TEST_NGINX_BINARY:-/usr/sbin/nginx}
export RULES_REPLAY=$root/build/rules-replay
export RULES_UNIT_DIR=$root/build/unit

# the upstream Test::Nginx when it is installed, else t/lib's runner
inc=()
perl -MTest::Nginx::Socket -e1 2> /dev/null || inc=(-I t/lib)

set -m
# shellcheck disable=SC2086  # PROVE_ARGS: several words on purpose
prove "${inc[@]}" ${PROVE_ARGS:-} "${@:-t/}" < /dev/null &
prove_pid=$!
set +m
wait "$prove_pid"
status=$?
prove_pid=
exit "$status"
