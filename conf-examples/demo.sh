#!/bin/bash
# The demo (make demo): a private redis-server and nginx with the module on
# free loopback ports, conf-examples/demo.conf rendered into
# build/demo/conf/nginx.conf, and a scripted sequence of pixel requests
# for one user (then five users on one device) showing the X-Rules header
# change.  Both servers are stopped by PID at the end, on an error and on
# INT/TERM; their logs stay in build/demo/logs.

set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dir=$root/build/demo
module=$root/build/nginx/ngx_http_rules_module.so
nginx=${NGINX_BINARY:-/usr/sbin/nginx}

die() { echo "demo: $*" >&2; exit 1; }

[ -f "$module" ] || die "$module is missing: run make first"
for cmd in "$nginx" redis-server redis-cli curl; do
    command -v "$cmd" > /dev/null || die "$cmd is missing: run make deps"
done

redis_pid=
nginx_pid=

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$nginx_pid" ] && kill -0 "$nginx_pid" 2>/dev/null; then
        kill -QUIT "$nginx_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$nginx_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$nginx_pid" 2>/dev/null || true
        echo "demo: stopped nginx (master pid $nginx_pid)"
    fi
    if [ -n "$redis_pid" ] && kill -0 "$redis_pid" 2>/dev/null; then
        kill -TERM "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
        echo "demo: stopped redis-server (pid $redis_pid)"
    fi
    [ "$status" = 0 ] || echo "demo: failed; logs in build/demo/logs" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -rf "$dir"
mkdir -p "$dir/conf" "$dir/logs"

# Redis: no persistence, in the foreground of a background job, with the
# rules Redis module (RULES.STORE) when it is built: nginx finds it
redis_port=$("$root/tools/free-port")
redis_module=$root/build/rules_redis_module.so
redis_args=()
[ -f "$redis_module" ] && redis_args=(--loadmodule "$redis_module")
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --dir "$dir" "${redis_args[@]}" \
    > "$dir/logs/redis.log" 2>&1 < /dev/null &
redis_pid=$!
for _ in $(seq 50); do
    [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && break
    kill -0 "$redis_pid" 2>/dev/null || break
    sleep 0.1
done
[ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] || {
    tail -20 "$dir/logs/redis.log" >&2
    die "redis-server did not start on 127.0.0.1:$redis_port"
}

# nginx: demo.conf with the module, the ports and the paths filled in
port=$("$root/tools/free-port")
user=
[ "$(id -u)" = 0 ] && user="user root;"
sed -e "s|@MODULE@|$module|" -e "s|@ROOT@|$root|" -e "s|@PORT@|$port|" \
    -e "s|@REDIS_PORT@|$redis_port|" -e "s|@USER@|$user|" \
    conf-examples/demo.conf > "$dir/conf/nginx.conf"

"$nginx" -p "$dir/" -c conf/nginx.conf > "$dir/logs/start.log" 2>&1 || {
    cat "$dir/logs/start.log" >&2
    [ ! -s "$dir/logs/error.log" ] || tail -20 "$dir/logs/error.log" >&2
    die "nginx did not start (configuration: build/demo/conf/nginx.conf)"
}
for _ in $(seq 50); do
    [ -s "$dir/logs/nginx.pid" ] && break
    sleep 0.1
done
[ -s "$dir/logs/nginx.pid" ] || die "nginx wrote no pid file"
nginx_pid=$(cat "$dir/logs/nginx.pid")

echo "demo: redis-server (pid $redis_pid) on 127.0.0.1:$redis_port${redis_args[*]:+, with the rules Redis module}"
echo "demo: nginx (master pid $nginx_pid) on 127.0.0.1:$port, build/demo/conf/nginx.conf"
echo "demo: rules from conf-examples/rules.json (SPEC.md's five examples)"

# One pixel request: prints the varying part of its query and the module's
# answer (X-Rules, and X-Rules-Status in parentheses).
t0=1700000000000
common=
px() {
    local what=$1 query=$2 ts=$3 headers rules status
    headers=$(curl -sS -o /dev/null -D - --max-time 5 \
                  "http://127.0.0.1:$port/px?$common&$query&ts=$ts") \
        || die "request $what failed (nginx error log: build/demo/logs/error.log)"
    headers=$(printf '%s' "$headers" | tr -d '\r')
    rules=$(printf '%s\n' "$headers" | sed -n 's/^X-Rules: //p')
    status=$(printf '%s\n' "$headers" | sed -n 's/^X-Rules-Status: //p')
    printf '%-34s %-28s X-Rules: %s (%s)\n' "$what" "?$query" "${rules:-(none)}" "${status:-no status}"
}

echo
common="uid=demo-user&ip=203.0.113.7&d=phone-1"
echo "one user: GET /px?$common&ts=<event time>&..."
px "1. page view"                    "e=page&u=/home"        $((t0))
px "2. second page view, same week"  "e=page&u=/blog"        $((t0 + 60000))
px "3. views product P42"            "e=view&p=P42"          $((t0 + 120000))
px "4. visits /sale/summer"          "e=page&u=/sale/summer" $((t0 + 180000))
px "5. buys P42"                     "e=purchase&p=P42"      $((t0 + 240000))
px "6. adds P42 to the cart"         "e=cart&p=P42"          $((t0 + 300000))
px "7. eight days later"             "e=click"               $((t0 + 8 * 86400000))

echo
common="d=tablet-9"
echo "fraud: 5 users on one device within an hour (device_many_users)"
echo "five users: GET /px?$common&ts=<event time>&..."
for n in 1 2 3 4 5; do
    px "   user $n on device tablet-9" "uid=other-$n&ip=198.51.100.$n" $((t0 + n * 1000))
done

echo
echo "metrics (GET /metrics), the non-zero event and match counters:"
curl -sS --max-time 5 "http://127.0.0.1:$port/metrics" \
    | grep -E '^nginx_rules_(events_total|rule_matched_total)' \
    | grep -v ' 0$' || echo "(none)"
echo
