#!/bin/bash
# Runs the whole suite (make test): starts two private redis-servers on
# free loopback ports (no persistence; the second with the rules Redis
# module loaded, for the files of t/native/), exports the TEST_NGINX_*
# settings, runs prove over t/ and t/native/ (or over the files given as
# arguments) and stops those Redis servers by PID whatever happens: prove failing, INT, TERM or HUP (prove and its
# tests are then stopped too).  prove's summary is the last thing printed;
# the exit status is prove's (130/143/129 when interrupted).
#
#   t/run-tests.sh                   everything
#   t/run-tests.sh t/050-inline.t    one file
#   t/run-tests.sh t/native/050-inline.t   the same with RULES.STORE
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

# two shared Redis servers: a plain one, and one with the rules Redis
# module loaded for the native pass (t/native/, t/lib/RulesNative.pm):
# the build's, or another one (make coverage)
redis_module=${RULES_REDIS_MODULE:-$root/build/rules_redis_module.so}
[ -f "$redis_module" ] \
    || { echo "run-tests: $redis_module is missing (make)" >&2; exit 1; }
redis_dirs=()
redis_pids=()
prove_pid=

stop_redis() {
    local pid
    for pid in "${redis_pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        kill -CONT "$pid" 2>/dev/null     # a test may have paused it
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    redis_pids=()
    [ ${#redis_dirs[@]} -eq 0 ] || rm -rf "${redis_dirs[@]}"
    redis_dirs=()
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

# start_redis [ARGS...]: one more Redis on a free port (again on another
# port if another process takes it before Redis binds it); sets
# started_port
start_redis() {
    local dir pid log=
    for _attempt in 1 2 3 4 5; do
        dir=$(mktemp -d /tmp/rules-test-redis.XXXXXX)
        redis_dirs+=("$dir")
        started_port=$("$root/tools/free-port") || exit 1
        redis-server --port "$started_port" --bind 127.0.0.1 --save '' \
            --appendonly no --daemonize no --dir "$dir" "$@" \
            > "$dir/redis.log" 2>&1 < /dev/null &
        pid=$!
        redis_pids+=("$pid")
        for _ in $(seq 100); do
            [ "$(redis-cli -p "$started_port" ping 2>/dev/null)" = PONG ] \
                && return 0
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        log=$(tail -20 "$dir/redis.log")
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    printf 'run-tests: redis-server did not start:\n%s\n' "$log" >&2
    exit 1
}

start_redis
redis_port=$started_port
start_redis --loadmodule "$redis_module"
redis_native_port=$started_port

export TEST_NGINX_REDIS_PORT=$redis_port
export TEST_NGINX_REDIS_NATIVE_PORT=$redis_native_port
export RULES_REDIS_MODULE=$redis_module
export TEST_NGINX_LOAD_MODULES=$module
export TEST_NGINX_BINARY=${TEST_NGINX_BINARY:-/usr/sbin/nginx}
export RULES_REPLAY=${RULES_REPLAY:-$root/build/rules-replay}
export RULES_UNIT_DIR=${RULES_UNIT_DIR:-$root/build/unit}

# the upstream Test::Nginx when it is installed, else t/lib's runner
inc=()
perl -MTest::Nginx::Socket -e1 2> /dev/null || inc=(-I t/lib)

[ $# -gt 0 ] || set -- t/ t/native/
set -m
# shellcheck disable=SC2086  # PROVE_ARGS: several words on purpose
prove "${inc[@]}" ${PROVE_ARGS:-} "$@" < /dev/null &
prove_pid=$!
set +m
wait "$prove_pid"
status=$?
prove_pid=
exit "$status"
