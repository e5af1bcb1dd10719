#!/bin/bash
# Runs the whole suite: starts a private redis-server on a free loopback
# port, runs prove over t/, and stops that Redis by PID, whatever happens.
# Ends with prove's summary and its exit status.

set -u
cd "$(dirname "$0")/.."
root=$(pwd)

free_port() { "$root/tools/free-port"; }

redis_dir=$(mktemp -d /tmp/rules-test-redis.XXXXXX)
redis_port=$(free_port)
redis_pid=

cleanup() {
    if [ -n "$redis_pid" ] && kill -0 "$redis_pid" 2>/dev/null; then
        kill -CONT "$redis_pid" 2>/dev/null
        kill -TERM "$redis_pid" 2>/dev/null
        for _ in $(seq 50); do
            kill -0 "$redis_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$redis_pid" 2>/dev/null
    fi
    rm -rf "$redis_dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' \
    --appendonly no --daemonize no --dir "$redis_dir" \
    > "$redis_dir/redis.log" 2>&1 &
redis_pid=$!

for _ in $(seq 100); do
    redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.05
done

if ! redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG; then
    echo "redis-server did not start:" >&2
    cat "$redis_dir/redis.log" >&2
    exit 1
fi

export TEST_NGINX_REDIS_PORT=$redis_port
export TEST_NGINX_LOAD_MODULES=$root/build/nginx/ngx_http_rules_module.so
export TEST_NGINX_BINARY=${TEST_NGINX_BINARY:-/usr/sbin/nginx}
export RULES_REPLAY=$root/build/rules-replay
export RULES_UNIT_DIR=$root/build/unit

inc=
perl -MTest::Nginx::Socket -e1 2>/dev/null || inc="-I t/lib"

prove $inc ${PROVE_ARGS:-} "${@:-t/}"
