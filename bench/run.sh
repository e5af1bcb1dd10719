#!/bin/bash
# Load benchmark: the same nginx serving empty_gif with no rules (the
# upper bound), the module with SPEC.md's five example rules, and the
# module with 1000 generated rules, each rule set with the states stored
# by the Lua script (EVALSHA) and by the rules Redis module (RULES.STORE,
# modes ending in -n), driven by wrk on loopback, interleaved
# (A B C D E A B C D E ...), medians of BENCH_RUNS runs.  Prints requests/s, p50,
# p99, ratios to the baseline, Redis CPU per event, Redis round trips
# per event, the nginx workers' CPU per request, their state caches'
# hit ratio and the machine's idle CPU per request, and draws latency
# under increasing load into build/bench/latency.png.
#
#   bench/run.sh                 (BENCH_SECS=10 BENCH_RUNS=3 BENCH_CONNS=50
#                                 BENCH_WORKERS="1 2")
#   BENCH_STEPS= bench/run.sh    the table only, no latency steps
#   BENCH_WARMUP=40 bench/run.sh  each run's nginx first serves 40 s of
#                                 the same load, not measured (default
#                                 10: its state cache filled as on a
#                                 live server; 0: from a cold start)
#   BENCH_GEN_STATE_CACHE=32m bench/run.sh  the 1000 rules with the
#                                 module's default cache, 32m (here 1024m
#                                 by default: their states, kilobytes per
#                                 key, fit, as the README tells operators
#                                 to size it)
#   BENCH_LAT_REDIS=table bench/run.sh  the latency steps on the table's
#                                 Redis (it also holds the 1000 rules'
#                                 states) instead of a fresh one
#   BENCH_CLUSTER=3 bench/run.sh  the same against a Redis Cluster of 3
#                                 masters (bench/cluster.sh); Redis CPU is
#                                 summed over the masters

set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
. bench/common.sh
out=$root/build/bench
secs=${BENCH_SECS:-10}
runs=${BENCH_RUNS:-3}
conns=${BENCH_CONNS:-50}
workers_list=${BENCH_WORKERS:-"1 2"}
state_cache=${BENCH_STATE_CACHE:-32m}
# the 1000 rules' states (kilobytes per key, about 106k keys) need a cache
# of their size: rules_state_cache sized to the keys active within the
# rules' windows, as the README's rules_state_cache section says
gen_state_cache=${BENCH_GEN_STATE_CACHE:-1024m}
# rules_shared_distinct (on: what a new installation should use)
shared_distinct=${BENCH_SHARED_DISTINCT:-on}
# each run's nginx is a new one: without a warm-up its state cache starts
# empty and the first seconds' events go to Redis as appends
warmup=${BENCH_WARMUP:-10}
case $warmup in
    ''|*[!0-9]*) echo "bench: BENCH_WARMUP is whole seconds, not \"$warmup\"" >&2; exit 1 ;;
esac
cluster=${BENCH_CLUSTER:-0}
lat_redis=${BENCH_LAT_REDIS:-fresh}
case $lat_redis in
    fresh|table) ;;
    *) echo "bench: BENCH_LAT_REDIS is fresh or table, not \"$lat_redis\"" >&2; exit 1 ;;
esac
module=$root/build/nginx/ngx_http_rules_module.so
redis_module=$root/build/rules_redis_module.so

[ -f "$module" ] && [ -f "$redis_module" ] \
    || { echo "bench: run make first" >&2; exit 1; }
[ -x build/bench/engine_bench ] || { echo "bench: run make bench" >&2; exit 1; }
command -v wrk >/dev/null || { echo "bench: wrk missing (make deps)" >&2; exit 1; }

rm -rf "$out/redis" "$out/ngx" && mkdir -p "$out/redis" "$out/ngx"

free_port() { "$root/tools/free-port"; }

redis_port=$(free_port)
redis_pid=
nginx_pid=

cleanup() {
    bench_stop_nginx
    stop_redis
}
trap cleanup EXIT

[ "$cluster" -gt 0 ] && . bench/cluster.sh

# start_redis: a Redis (or a Redis Cluster) holding no state yet
start_redis() {
    if [ "$cluster" -gt 0 ]; then
        cluster_start "$cluster"
        return
    fi
    redis_directive="rules_redis 127.0.0.1:$redis_port;"
    redis_ports=$redis_port
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize no --dir "$out/redis" --loadmodule "$redis_module" \
        > "$out/redis/redis.log" 2>&1 &
    redis_pid=$!
    for _ in $(seq 50); do
        redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && break
        sleep 0.1
    done
}

stop_redis() {
    if [ "$cluster" -gt 0 ]; then
        cluster_stop
        return
    fi
    if [ -n "$redis_pid" ]; then
        kill -TERM "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
        redis_pid=
    fi
}

start_redis

# 1000 generated rules of mixed types (the same generator as engine_bench)
build/bench/engine_bench --dump-generated > "$out/rules-1000.json"

port=$(free_port)

# start_nginx WORKERS RULES_FILE [NATIVE [CACHE]]: one server, /base without
# rules, /px with; NATIVE on or off (the default): rules_redis_native;
# CACHE: rules_state_cache (default BENCH_STATE_CACHE).
# Each rule file keeps its state under its own key prefix: the runs of one
# mode build on the state of the previous ones, as on a live server.
start_nginx() {
    local workers=$1 rules=$2 native=${3:-off} cache=${4:-$state_cache} user=
    [ "$(id -u)" = 0 ] && user="user root;"
    cat > "$out/ngx/nginx.conf" <<CONF
load_module $module;
$user
worker_processes $workers;
pid logs/nginx.pid;
error_log logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    $redis_directive
    rules_redis_native $native;
    rules_redis_timeout 200ms;
    rules_state_cache $cache;
    rules_shared_distinct $shared_distinct;
    rules_key_prefix "bench:$(basename "$rules" .json):$native:$shared_distinct:";
    rules_file $rules;
    server {
        listen 127.0.0.1:$port;
        location = /base { empty_gif; }
$(bench_px_location)
        location = /metrics { rules_metrics; }
    }
}
CONF
    mkdir -p "$out/ngx/logs"
    bench_start_nginx "$out/ngx"
    sleep 0.3
}

# the state calls (EVALSHA and RULES.STORE): calls, usec, failed calls,
# and Redis' cpu seconds (user+sys)
redis_stat() {
    for p in $redis_ports; do redis-cli -p "$p" info all; done \
        | bench_redis_stat 'evalsha|rules\.store'
}

# the machine's idle CPU seconds so far (idle + iowait, every core): the
# time nobody could run, waiting on someone else (a mode that makes
# nginx and Redis take turns shows it, whatever each one's CPU)
idle_cpu() {
    awk -v t="$(getconf CLK_TCK)" '/^cpu / { printf "%.2f\n", ($5 + $6) / t }' \
        /proc/stat
}

# the state caches' lookups so far, over the workers: "hits misses
# evicted-misses" (misses of keys a cache had evicted to make room)
cache_stat() {
    curl -sS --max-time 5 "http://127.0.0.1:$port/metrics" 2>/dev/null | perl -ne '
        $h = $1 if /^nginx_rules_state_cache_lookups_total\{result="hit"\} (\d+)/;
        $m = $1 if /^nginx_rules_state_cache_lookups_total\{result="miss"\} (\d+)/;
        $e = $1 if /^nginx_rules_state_cache_evicted_misses_total (\d+)/;
        END { printf "%d %d %d\n", $h // 0, $m // 0, $e // 0 }'
}

# wrk_run NAME PATH CONNS -> "rps p50_ms p99_ms requests"
wrk_run() {
    local path=$2 c=$3
    sed "s|/px?|$path?|" bench/pixel.lua > "$out/pixel-$1.lua"
    wrk -t1 -c"$c" -d"${secs}s" --latency -s "$out/pixel-$1.lua" \
        "http://127.0.0.1:$port" 2>&1 | perl -ne '
        $rps = $1 if /^Requests\/sec:\s+([\d.]+)/;
        $n = $1 if /^\s+(\d+) requests in/;
        sub ms { my ($v, $u) = @_; $u eq "us" ? $v / 1000 : $u eq "s" ? $v * 1000 : $v }
        $p50 = ms($1, $2) if /^\s+50%\s+([\d.]+)(us|ms|s)/;
        $p99 = ms($1, $2) if /^\s+99%\s+([\d.]+)(us|ms|s)/;
        $err .= $_ if /Non-2xx|Socket errors/;
        END { printf "%.1f %.3f %.3f %d\n", $rps, $p50, $p99, $n; print STDERR $err if $err }'
}


results=$out/results.txt
: > "$results"
modes=${BENCH_MODES:-"base spec spec-n gen gen-n"}

for workers in $workers_list; do
    echo "== $workers worker(s), wrk -t1 -c$conns -d${secs}s after ${warmup}s of warm-up, $runs interleaved runs"
    echo "   (rules_state_cache $state_cache; the 1000 rules' $gen_state_cache)"
    for r in $(seq "$runs"); do
        for mode in $modes; do
            native=off
            case $mode in
                *-n) native=on ;;
            esac
            cache=$state_cache
            case $mode in
                base)  rules=$root/conf-examples/rules.json; path=/base ;;
                spec*) rules=$root/conf-examples/rules.json; path=/px ;;
                gen*)  rules=$out/rules-1000.json; path=/px
                       cache=$gen_state_cache ;;
            esac
            start_nginx "$workers" "$rules" "$native" "$cache"
            if [ "$warmup" -gt 0 ]; then
                secs=$warmup wrk_run "$mode" "$path" "$conns" > /dev/null
            fi
            read -r c0 u0 f0 cpu0 < <(redis_stat)
            read -r h0 m0 e0 < <(cache_stat)
            ncpu0=$(bench_nginx_cpu "$nginx_pid")
            idle0=$(idle_cpu)
            read -r rps p50 p99 n < <(wrk_run "$mode" "$path" "$conns")
            idle1=$(idle_cpu)
            ncpu1=$(bench_nginx_cpu "$nginx_pid")
            read -r h1 m1 e1 < <(cache_stat)
            read -r c1 u1 f1 cpu1 < <(redis_stat)
            bench_stop_nginx
            # columns: workers mode run req/s p50 p99, round trips per
            # event (1, plus a retry for each call refused with NOSCRIPT),
            # events per call, call usec per event, Redis CPU usec per
            # event, nginx workers' CPU usec per request, state cache
            # hits in % of its lookups (-1: no lookup), the machine's
            # idle CPU usec per request, misses of evicted keys in % of
            # the lookups (-1: no lookup)
            perl -e 'my ($w,$m,$r,$rps,$p50,$p99,$n,$dc,$du,$df,$cpu0,$cpu1,$n0,$n1,$dh,$dm,$i0,$i1,$de)=@ARGV;
                printf "%s %s %s %s %s %s %.3f %.2f %.2f %.2f %.2f %.1f %.2f %.1f\n", $w, $m, $r, $rps, $p50, $p99,
                    $dc ? 1 + $df / $dc : 0, $dc ? $n / $dc : 0, $n ? $du / $n : 0,
                    $n ? ($cpu1 - $cpu0) * 1e6 / $n : 0, $n ? ($n1 - $n0) * 1e6 / $n : 0,
                    $dh + $dm ? 100 * $dh / ($dh + $dm) : -1,
                    $n ? ($i1 - $i0) * 1e6 / $n : 0,
                    $dh + $dm ? 100 * $de / ($dh + $dm) : -1' \
                "$workers" "$mode" "$r" "$rps" "$p50" "$p99" "$n" \
                $((c1 - c0)) $((u1 - u0)) $((f1 - f0)) "$cpu0" "$cpu1" "$ncpu0" "$ncpu1" \
                $((h1 - h0)) $((m1 - m0)) "$idle0" "$idle1" $((e1 - e0)) >> "$results"
            printf '   run %s %-5s %9s req/s  p50 %7s ms  p99 %7s ms\n' "$r" "$mode" "$rps" "$p50" "$p99"
        done
    done
done

echo
echo "Medians ($(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')):"
echo "(spec/gen: states stored by the script, EVALSHA; spec-n/gen-n: by the"
echo " rules Redis module, RULES.STORE; vs 5 rules: gen against spec,"
echo " gen-n against spec-n)"
printf '%-8s %-7s %10s %8s %9s %9s %8s %9s %10s %12s %12s %13s %10s %12s %9s\n' workers rules req/s ratio "p50 ms" "p99 ms" \
    "rt/event" "ev/call" "vs 5 rules" "redis us/ev" "call us/ev" "nginx us/req" "cache hit" "idle us/req" "evicted"
for workers in $workers_list; do
    col_of() { awk -v w="$workers" -v m="$1" -v c="$2" '$1==w && $2==m {print $c}' "$results" | bench_median; }
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b ? a / b : 0 }'; }
    # a percentage column: "-" where the mode had no lookup (-1)
    percent() { case $1 in -*) echo - ;; *) echo "$1 %" ;; esac; }
    base=$(col_of base 4)
    for mode in $modes; do
        rps=$(col_of "$mode" 4)
        case $mode in
            gen)   vs=$(ratio "$rps" "$(col_of spec 4)") ;;
            gen-n) vs=$(ratio "$rps" "$(col_of spec-n 4)") ;;
            *)     vs=- ;;
        esac
        printf '%-8s %-7s %10.0f %8s %9.3f %9.3f %8.2f %9.1f %10s %12.1f %12.1f %13.1f %10s %12.1f %9s\n' "$workers" "$mode" \
            "$rps" "$(ratio "$rps" "$base")" "$(col_of "$mode" 5)" "$(col_of "$mode" 6)" \
            "$(col_of "$mode" 7)" "$(col_of "$mode" 8)" "$vs" \
            "$(col_of "$mode" 10)" "$(col_of "$mode" 9)" "$(col_of "$mode" 11)" \
            "$(percent "$(col_of "$mode" 12)")" "$(col_of "$mode" 13)" \
            "$(percent "$(col_of "$mode" 14)")"
    done
done

# latency under increasing load: stepped connection counts, 1 worker
# The same ratios run by run, each against its own run's reference (the
# table's are medians over medians): how far the VM's noise moves them.
echo
echo "ratios run by run (spec, spec-n: against that run's empty_gif; gen, gen-n:"
echo " against that run's spec, spec-n), and their median:"
for workers in $workers_list; do
    for mode in $modes; do
        case $mode in
            base)  continue ;;
            spec*) ref=base ;;
            gen)   ref=spec ;;
            gen-n) ref=spec-n ;;
        esac
        awk -v w="$workers" -v m="$mode" -v ref="$ref" '
            $1 == w && $2 == m   { rps[$3] = $4 }
            $1 == w && $2 == ref { base[$3] = $4 }
            END {
                n = 0
                for (r = 1; r in rps; r++) {
                    if (!(r in base) || base[r] == 0) continue
                    v[++n] = rps[r] / base[r]
                    line = line sprintf(" %.2f", v[n])
                }
                if (n == 0) exit
                for (i = 1; i <= n; i++)        # insertion sort, n is small
                    for (j = i; j > 1 && v[j - 1] > v[j]; j--) {
                        t = v[j]; v[j] = v[j - 1]; v[j - 1] = t
                    }
                med = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
                printf "%-8s %-7s vs %-7s%s   median %.2f\n", w, m, ref, line, med
            }' "$results"
    done
done

steps=${BENCH_STEPS-"1 2 4 8 16 32 64"}
[ -n "$steps" ] || exit 0     # BENCH_STEPS= : no latency steps
echo
# The steps measure the 5 rules: by default on a Redis of their own that
# holds the 5 rules' states only (built by a warm-up), not on the
# table's, which also holds the 1000 rules' (760 MB). On the
# paravirtualized machines of this project any process that size costs
# the others milliseconds each time it wakes (bench/HISTORY.md,
# 2026-12-05): an idle Redis of the table's size raises even empty_gif's
# p99 from 0.12 ms to 1-2 ms. BENCH_LAT_REDIS=table keeps the table's.
if [ "$lat_redis" = fresh ]; then
    stop_redis
    start_redis
    # the 5 rules' states first, as the table's runs built them
    for native in off on; do
        start_nginx 1 "$root/conf-examples/rules.json" "$native"
        wrk_run warm /px "$conns" > /dev/null
        bench_stop_nginx
    done
    echo "(on a fresh Redis holding the 5 rules' states, built by ${secs}s of load"
    echo " for each of them first; BENCH_LAT_REDIS=table: on the table's Redis)"
fi
lat_runs=${BENCH_LAT_RUNS:-$runs}
echo "latency under load (1 worker, ${secs}s per step, medians of $lat_runs interleaved runs):"
: > "$out/latency.dat"
for c in $steps; do
    : > "$out/latency-step.dat"
    for _ in $(seq "$lat_runs"); do
        start_nginx 1 "$root/conf-examples/rules.json" off
        read -r brps bp50 bp99 bn < <(wrk_run base /base "$c")
        read -r srps sp50 sp99 sn < <(wrk_run spec /px "$c")
        bench_stop_nginx
        start_nginx 1 "$root/conf-examples/rules.json" on
        read -r nrps np50 np99 nn < <(wrk_run spec-n /px "$c")
        bench_stop_nginx
        echo "$brps $bp50 $bp99 $srps $sp50 $sp99 $nrps $np50 $np99" >> "$out/latency-step.dat"
    done
    read -r brps bp50 bp99 srps sp50 sp99 nrps np50 np99 < <(
        for col in $(seq 9); do
            awk -v c="$col" '{print $c}' "$out/latency-step.dat" | bench_median
        done | tr '\n' ' '; echo)
    echo "$c $brps $bp50 $bp99 $srps $sp50 $sp99 $nrps $np50 $np99" >> "$out/latency.dat"
    printf '   c=%-3s base %9s req/s p99 %7s ms | 5 rules %9s req/s p99 %7s ms | -n %9s req/s p99 %7s ms\n' \
        "$c" "$brps" "$bp99" "$srps" "$sp99" "$nrps" "$np99"
done

# the target's "p99 at half of the maximum load": the step whose 5-rule
# throughput is nearest half of the highest one, against empty_gif's p99
# at the same connection count
perl -ane '
    push @r, [@F];
    END {
        for my $m ([4, "5 rules"], [7, "5 rules -n"]) {
            my ($c, $name) = @$m;
            my ($max) = sort { $b <=> $a } map { $_->[$c] } @r;
            my ($half) = sort { abs($a->[$c] - $max / 2) <=> abs($b->[$c] - $max / 2) } @r;
            printf "p99 at half load (c=%d, %.0f of max %.0f req/s): %s %.3f ms, "
                . "empty_gif %.3f ms, difference %+.3f ms\n",
                $half->[0], $half->[$c], $max, $name, $half->[$c + 2], $half->[3],
                $half->[$c + 2] - $half->[3];
        }
    }' "$out/latency.dat"

if command -v gnuplot >/dev/null; then
    gnuplot <<GP
set terminal png size 900,520 noenhanced
set output "$out/latency.png"
set title "p50/p99 latency vs throughput (1 worker, stepped wrk connections)"
set xlabel "requests/s"
set ylabel "latency (ms)"
set key top left
set grid
plot "$out/latency.dat" using 2:3 with linespoints title "empty_gif p50", \
     "$out/latency.dat" using 2:4 with linespoints title "empty_gif p99", \
     "$out/latency.dat" using 5:6 with linespoints title "5 rules (script) p50", \
     "$out/latency.dat" using 5:7 with linespoints title "5 rules (script) p99", \
     "$out/latency.dat" using 8:9 with linespoints title "5 rules (RULES.STORE) p50", \
     "$out/latency.dat" using 8:10 with linespoints title "5 rules (RULES.STORE) p99"
GP
    echo "chart: $out/latency.png"
fi
