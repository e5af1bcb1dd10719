#!/bin/bash
# Two builds of the module under load, in interleaved pairs: the change a
# commit makes to throughput and to nginx's and Redis' CPU, where
# bench/run.sh's table compares the module with empty_gif.
#
#   bench/ab.sh BUILD_A BUILD_B
#       BUILD: a build directory (make's build/, or a worktree's), holding
#       nginx/ngx_http_rules_module.so and rules_redis_module.so
#       (BENCH_AB_PAIRS=5, BENCH_AB_SECS=8, BENCH_AB_WARMUP=5,
#        BENCH_AB_CONNS=50, BENCH_AB_RULES=conf-examples/rules.json,
#        BENCH_AB_STATE_CACHE=32m: rules_state_cache; for bench/run.sh's
#        1000 rules, build/bench/rules-1000.json, give 1024m as it does;
#        BENCH_AB_SHARED_DISTINCT=on|off: rules_shared_distinct, not
#        written unless given (builds before it was a directive start), on
#        as bench/run.sh has it)
#   make bench-ab BENCH_AB_A=/path/to/old/build   (B: this build/)
#
# To compare with an earlier commit:
#   git worktree add /tmp/old COMMIT && make -C /tmp/old
#   bench/ab.sh /tmp/old/build build
#
# Each build gets a Redis of its own with its own rules Redis module (the
# call's format may differ between them: a worker uses RULES.STORE only
# with the Redis module of its version), on a unix socket, kept for the
# whole invocation, so both states age alike.  Each run starts an nginx
# (1 worker, SPEC.md's five rules at /px), sends BENCH_AB_WARMUP seconds
# of bench/pixel.lua's requests not measured, then BENCH_AB_SECS seconds
# measured with wrk at BENCH_AB_CONNS connections.  The pairs alternate
# their order (A B, B A, ...), so neither build always runs second.
# Prints each run (requests/s, nginx CPU per request, Redis CPU per
# request, RULES.STORE's own time per event from INFO commandstats,
# events per call), then each build's medians and B's against A's.
# Nothing else should run meanwhile; the noise of a shared host is the
# spread of the pairs.

set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pairs=${BENCH_AB_PAIRS:-5}
secs=${BENCH_AB_SECS:-8}
warmup=${BENCH_AB_WARMUP:-5}
conns=${BENCH_AB_CONNS:-50}
state_cache=${BENCH_AB_STATE_CACHE:-32m}
shared_distinct=${BENCH_AB_SHARED_DISTINCT:-}
case $shared_distinct in
    ''|on|off) ;;
    *) echo "ab: BENCH_AB_SHARED_DISTINCT is on or off, not \"$shared_distinct\"" >&2; exit 1 ;;
esac
[[ $state_cache =~ ^[0-9]+[kKmMgG]?$ ]] \
    || { echo "ab: BENCH_AB_STATE_CACHE is a size such as 32m, not \"$state_cache\"" >&2; exit 1; }

for v in pairs secs warmup conns; do
    case ${!v} in
        ''|*[!0-9]*) echo "ab: $v is a whole number, not \"${!v}\"" >&2; exit 1 ;;
    esac
done
[ "$pairs" -gt 0 ] && [ "$secs" -gt 0 ] && [ "$conns" -gt 0 ] \
    || { echo "ab: BENCH_AB_PAIRS, BENCH_AB_SECS and BENCH_AB_CONNS above 0" >&2; exit 1; }
[ $# = 2 ] || { echo "usage: bench/ab.sh BUILD_A BUILD_B" >&2; exit 1; }

. "$root/bench/common.sh"
rules=$(bench_path_of ab "${BENCH_AB_RULES:-$root/conf-examples/rules.json}")
builds=()
for b in "$1" "$2"; do
    d=$(bench_path_of ab "$b") || exit 1
    for f in nginx/ngx_http_rules_module.so rules_redis_module.so; do
        [ -f "$d/$f" ] || { echo "ab: $d/$f missing (make)" >&2; exit 1; }
    done
    builds+=("$d")
done
for c in redis-server redis-cli wrk curl; do
    command -v "$c" > /dev/null || { echo "ab: $c missing (make deps)" >&2; exit 1; }
done

cd "$root"
out=$root/build/bench/ab
rm -rf "$out" && mkdir -p "$out"
sock_dir=$(mktemp -d /tmp/bench-ab.XXXXXX)
redis_pids=()
nginx_pid=

cleanup() {
    local p
    bench_stop_nginx
    for p in "${redis_pids[@]}"; do
        kill -TERM "$p" 2> /dev/null || true
        wait "$p" 2> /dev/null || true
    done
    rm -rf "$sock_dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for i in 0 1; do
    bench_redis_unix ab "$sock_dir/redis-$i.sock" "$out/redis-$i" \
        "${builds[$i]}/rules_redis_module.so" || exit 1
    redis_pids+=("$redis_pid")
done

# RULES.STORE's calls, usec and failed calls, Redis' CPU seconds
redis_counts() {
    redis-cli -s "$1" info all | bench_redis_stat 'rules\.store'
}

# wrk's completed requests over SECS seconds
load() {
    bench_wrk_requests "$conns" "$1" "$root/bench/pixel.lua" \
        "http://127.0.0.1:$port/" "$out/wrk.log"
}

# run I TAG: one run of build I, a line of results into $out/TAG
run() {
    local i=$1 tag=$2 sock=$sock_dir/redis-$1.sock dir=$out/nginx
    local user= n c0 c1 r0 r1
    rm -rf "$dir" && mkdir -p "$dir/logs"
    port=$("$root/tools/free-port")
    [ "$(id -u)" = 0 ] && user="user root;"
    cat > "$dir/nginx.conf" <<CONF
load_module ${builds[$i]}/nginx/ngx_http_rules_module.so;
$user
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    rules_redis unix:$sock;
    rules_redis_native on;
    rules_redis_timeout 200ms;
    rules_state_cache $state_cache;
${shared_distinct:+    rules_shared_distinct $shared_distinct;}
    rules_file $rules;
    server {
        listen 127.0.0.1:$port;
$(bench_px_location)
    }
}
CONF
    bench_start_nginx "$dir"
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$port/px?uid=ab" && break
        sleep 0.1
    done

    [ "$warmup" -gt 0 ] && load "$warmup" > /dev/null
    c0=$(bench_nginx_cpu "$nginx_pid")
    r0=$(redis_counts "$sock")
    n=$(load "$secs")
    c1=$(bench_nginx_cpu "$nginx_pid")
    r1=$(redis_counts "$sock")
    bench_stop_nginx

    [ "${n:-0}" -gt 0 ] || { echo "ab: no request answered by $tag" >&2; exit 1; }
    if [ -s "$dir/logs/error.log" ]; then
        echo "ab: $tag's nginx logged:" >&2
        tail -5 "$dir/logs/error.log" >&2
    fi

    perl -e '
        my ($tag, $n, $secs, $c0, $c1, @r) = @ARGV;
        my ($calls0, $usec0, undef, $cpu0, $calls1, $usec1, undef, $cpu1) = @r;
        die "ab: $tag: no RULES.STORE call (the script was used?)\n"
            if $calls1 == $calls0;
        printf "%s %.0f %.2f %.2f %.2f %.2f\n", $tag, $n / $secs,
            ($c1 - $c0) * 1e6 / $n, ($cpu1 - $cpu0) * 1e6 / $n,
            ($usec1 - $usec0) / $n, $n / ($calls1 - $calls0);
    ' "$tag" "$n" "$secs" "$c0" "$c1" $r0 $r1 | tee -a "$out/runs"
}

echo "A: ${builds[0]}"
echo "B: ${builds[1]}"
echo "$pairs pairs, wrk -t1 -c$conns -d${secs}s after ${warmup}s of warm-up;"
echo "per run: req/s, nginx us/req, Redis us/req, RULES.STORE us/event, events/call"
for p in $(seq "$pairs"); do
    if [ $((p % 2)) = 1 ]; then run 0 A; run 1 B; else run 1 B; run 0 A; fi
done

# the median of column COL of TAG's runs
median_of() {
    awk -v t="$1" -v c="$2" '$1 == t { print $c }' "$out/runs" | bench_median
}

printf '\nmedians          A          B     B/A\n'
col=2
for name in "req/s" "nginx us/req" "Redis us/req" "RULES.STORE us/event" \
            "events/call"; do
    awk -v n="$name" -v a="$(median_of A $col)" -v b="$(median_of B $col)" \
        'BEGIN { printf "%-20s %10.2f %10.2f %7.3f\n", n, a, b, a ? b / a : 0 }'
    col=$((col + 1))
done
