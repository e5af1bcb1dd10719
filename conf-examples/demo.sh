#!/bin/bash
# The demo: a private redis-server and nginx with the module on loopback
# ports, and a scripted sequence of pixel requests for one user showing
# the X-Rules header change.  Stops both (by PID) when done.

set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dir=$root/build/demo
module=$root/build/nginx/ngx_http_rules_module.so

[ -f "$module" ] || { echo "demo: $module is missing; run make first" >&2; exit 1; }

free_port() { "$root/tools/free-port"; }

rm -rf "$dir"
mkdir -p "$dir/conf" "$dir/logs"
redis_port=$(free_port)
port=$(free_port)
redis_pid=
nginx_pid=

cleanup() {
    if [ -n "$nginx_pid" ]; then
        kill -QUIT "$nginx_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$nginx_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$nginx_pid" 2>/dev/null || true
    fi
    if [ -n "$redis_pid" ]; then
        kill -TERM "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    echo "demo: stopped nginx and redis-server (logs in build/demo/logs)"
}
trap cleanup EXIT

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --dir "$dir" > "$dir/logs/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 50); do
    redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
done

user=
[ "$(id -u)" = 0 ] && user="user root;"
sed -e "s|@MODULE@|$module|" -e "s|@ROOT@|$root|" -e "s|@PORT@|$port|" \
    -e "s|@REDIS_PORT@|$redis_port|" -e "s|@USER@|$user|" \
    conf-examples/demo.conf > "$dir/conf/nginx.conf"

/usr/sbin/nginx -p "$dir/" -c conf/nginx.conf
for _ in $(seq 50); do
    [ -s "$dir/logs/nginx.pid" ] && break
    sleep 0.1
done
nginx_pid=$(cat "$dir/logs/nginx.pid")

echo "demo: redis-server on 127.0.0.1:$redis_port, nginx on 127.0.0.1:$port"
echo "demo: rules from conf-examples/rules.json (SPEC.md's five examples)"
echo

t0=1700000000000
px() {
    local what=$1 query=$2
    local headers
    headers=$(curl -s -o /dev/null -D - "http://127.0.0.1:$port/px?$query")
    local rules status
    rules=$(printf '%s' "$headers" | tr -d '\r' | sed -n 's/^X-Rules: //p')
    status=$(printf '%s' "$headers" | tr -d '\r' | sed -n 's/^X-Rules-Status: //p')
    printf '%-44s X-Rules: %-45s (%s)\n' "$what" "${rules:-(none)}" "$status"
}

u="uid=demo-user&ip=203.0.113.7&d=phone-1"
px "1. page view"                      "$u&e=page&u=/home&ts=$((t0))"
px "2. second page view (same week)"   "$u&e=page&u=/blog&ts=$((t0 + 60000))"
px "3. views product P42"              "$u&e=view&p=P42&ts=$((t0 + 120000))"
px "4. visits /sale/summer"            "$u&e=page&u=/sale/summer&ts=$((t0 + 180000))"
px "5. buys P42"                       "$u&e=purchase&p=P42&ts=$((t0 + 240000))"
px "6. adds P42 to the cart"           "$u&e=cart&p=P42&ts=$((t0 + 300000))"
px "7. eight days later"               "$u&e=click&ts=$((t0 + 8 * 86400000))"
echo
echo "fraud: 5 users on one device within an hour (device_many_users)"
for n in 1 2 3 4 5; do
    px "   user $n on device tablet-9" "uid=other-$n&ip=198.51.100.$n&d=tablet-9&ts=$((t0 + n * 1000))"
done
echo
echo "metrics (http://127.0.0.1:$port/metrics):"
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^nginx_rules_(events_total|rule_matched_total)' | grep -v ' 0$'
