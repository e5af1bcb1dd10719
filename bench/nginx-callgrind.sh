#!/bin/bash
# Instructions per request of the nginx worker itself (nginx under
# valgrind's callgrind, master_process off), serving /base (empty_gif, no
# rules) and /px (SPEC.md's five rules, RULES.STORE) with bench/pixel.lua's
# requests: repeatable counts, whatever else the machine does, to measure
# a change of ngx_module/ or src/ as the worker runs it (the module as
# make builds it for nginx, hiredis, nginx's request path) before and
# after.
#
#   bench/nginx-callgrind.sh [MODULE.so ...]
#       (default: build/nginx/ngx_http_rules_module.so; BENCH_NCG_SECS=20,
#        BENCH_NCG_WARMUP=10, BENCH_NCG_CONNS=4,
#        BENCH_NCG_RULES=conf-examples/rules.json,
#        BENCH_NCG_LOCATIONS="base px")
#   make bench-nginx-callgrind
#
# Each module gets a fresh Redis (with the rules Redis module, on a unix
# socket) and, per location, an nginx of its own whose instructions are
# counted only while wrk sends BENCH_NCG_SECS seconds of requests, after
# BENCH_NCG_WARMUP seconds of the same mix not counted (the state cache
# holding the users seen then, as a live server's holds its recent ones).
# wrk's random numbers have fixed seeds, one for the warm-up and another
# for the count, so every run sends the same requests, and the counted
# ones are not the warm-up's again.  At 4 connections a call carries
# about one event, so a call's own cost is counted in full; more
# connections share it.  Prints, per module and location, the
# instructions per request in all and by object (the module, nginx,
# libc, hiredis, the rest) and the five functions of the module that
# cost the most themselves.  callgrind's files stay in build/bench/nginx-callgrind/.
# Compare builds in one invocation, with nothing else running.

set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${BENCH_NCG_SECS:-20}
warmup=${BENCH_NCG_WARMUP:-10}
conns=${BENCH_NCG_CONNS:-4}
locations=${BENCH_NCG_LOCATIONS:-base px}

for v in secs warmup conns; do
    case ${!v} in
        ''|*[!0-9]*) echo "nginx-callgrind: $v is a whole number, not \"${!v}\"" >&2; exit 1 ;;
    esac
done
[ "$secs" -gt 0 ] && [ "$conns" -gt 0 ] \
    || { echo "nginx-callgrind: BENCH_NCG_SECS and BENCH_NCG_CONNS above 0" >&2; exit 1; }
for loc in $locations; do
    case $loc in
        base|px) ;;
        *) echo "nginx-callgrind: BENCH_NCG_LOCATIONS holds base and px, not \"$loc\"" >&2; exit 1 ;;
    esac
done

. "$root/bench/common.sh"
bench_paths nginx-callgrind \
    "${BENCH_NCG_RULES:-$root/conf-examples/rules.json}" \
    "$root/build/nginx/ngx_http_rules_module.so" "$@" || exit 1

cd "$root"
out=$root/build/bench/nginx-callgrind
redis_module=$root/build/rules_redis_module.so

[ -f "$redis_module" ] \
    || { echo "nginx-callgrind: $redis_module missing (make)" >&2; exit 1; }
for c in valgrind callgrind_annotate callgrind_control redis-server \
         redis-cli wrk curl; do
    command -v "$c" > /dev/null \
        || { echo "nginx-callgrind: $c missing (make deps)" >&2; exit 1; }
done

rm -rf "$out" && mkdir -p "$out"
redis_pid=
nginx_pid=
sock_dir=$(mktemp -d /tmp/nginx-callgrind.XXXXXX)
sock=$sock_dir/redis.sock

stop_redis() {
    if [ -n "$redis_pid" ]; then
        kill -TERM "$redis_pid" 2> /dev/null || true
        wait "$redis_pid" 2> /dev/null || true
        redis_pid=
    fi
}

cleanup() {
    bench_stop_nginx
    stop_redis
    rm -rf "$sock_dir"
}
trap cleanup EXIT
# wrk ends on ^C with status 0: the script stops there too (and cleans up)
trap 'exit 130' INT
trap 'exit 143' TERM

# the requests of bench/pixel.lua, the same ones every run: seed 7 for the
# warm-up, 8 for the count
for seed in 7 8; do
    sed "s/^  math.randomseed(.*/  math.randomseed($seed)/" bench/pixel.lua \
        > "$out/pixel-$seed.lua"
    grep -q "math.randomseed($seed)" "$out/pixel-$seed.lua" \
        || { echo "nginx-callgrind: bench/pixel.lua has no randomseed line" >&2; exit 1; }
done

# count LOCATION SECS SEED: wrk's requests (completed ones) over SECS
# seconds
count() {
    sed "s|/px?|/$1?|" "$out/pixel-$3.lua" > "$out/pixel-$1-$3.lua"
    bench_wrk_requests "$conns" "$2" "$out/pixel-$1-$3.lua" \
        "http://127.0.0.1:$port/" "$out/wrk.log"
}

n=0
for module in "${modules[@]}"; do
    n=$((n + 1))
    echo "$module ($conns connections, ${secs}s counted after ${warmup}s)"
    bench_redis_unix nginx-callgrind "$sock" "$out/redis-$n" \
        "$redis_module" || exit 1

    for loc in $locations; do
        prefix=$out/$n-$loc
        mkdir -p "$prefix/logs"
        port=$("$root/tools/free-port")
        user=
        [ "$(id -u)" = 0 ] && user="user root;"
        cat > "$prefix/nginx.conf" <<CONF
load_module $module;
$user
master_process off;
daemon off;
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    rules_redis unix:$sock;
    rules_redis_native on;
    rules_redis_timeout 5s;
    rules_file $rules;
    server {
        listen 127.0.0.1:$port;
        location = /base { empty_gif; }
$(bench_px_location)
    }
}
CONF
        valgrind --tool=callgrind --instr-atstart=no \
            --callgrind-out-file="$prefix.out" \
            /usr/sbin/nginx -p "$prefix/" -c nginx.conf \
            > "$prefix/valgrind.log" 2>&1 &
        nginx_pid=$!
        for _ in $(seq 600); do
            kill -0 "$nginx_pid" 2> /dev/null || break
            curl -s -o /dev/null "http://127.0.0.1:$port/base" && break
            sleep 0.1
        done
        curl -s -o /dev/null "http://127.0.0.1:$port/base" \
            || { echo "nginx-callgrind: nginx did not start with $module:" >&2
                 tail -20 "$prefix/valgrind.log" "$prefix/logs/error.log" >&2
                 exit 1; }

        [ "$warmup" -gt 0 ] && count "$loc" "$warmup" 7 > /dev/null
        callgrind_control -i on "$nginx_pid" > /dev/null 2>&1
        requests=$(count "$loc" "$secs" 8)
        callgrind_control -i off "$nginx_pid" > /dev/null 2>&1
        bench_stop_nginx

        [ "${requests:-0}" -gt 0 ] \
            || { echo "nginx-callgrind: no request answered at /$loc" >&2; exit 1; }
        if [ -s "$prefix/logs/error.log" ]; then
            echo "nginx-callgrind: /$loc logged:" >&2
            tail -5 "$prefix/logs/error.log" >&2
        fi

        # (callgrind's own warnings on the lines it cannot place left out)
        callgrind_annotate --auto=no --threshold=100 "$prefix.out" \
            > "$prefix.self" 2> /dev/null \
            || { echo "nginx-callgrind: no callgrind output for /$loc" \
                      "(nginx did not exit cleanly?)" >&2; exit 1; }
        perl -e '
            my ($loc, $requests, $self, $module) = @ARGV;
            my ($total, %obj, %mod);
            open my $fh, "<", $self or die "$self: $!";
            while (<$fh>) {
                if (/^\s*([\d,]+)\s.*PROGRAM TOTALS/) {
                    ($total = $1) =~ tr/,//d;
                    next;
                }
                # the lines of a function from another source file (inlined
                # code) come without their object: told by their names
                my ($c, $f, $o) =
                    /^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S+)(?:\s+\[(.*)\])?\s*$/
                    or next;
                $c =~ tr/,//d;
                $o //= $f =~ /:(?:ngx_http_rules_|rules_|rs_)/
                       ? $module : $f =~ m{^\./} ? "libc.so" : "";
                my $k = $o eq $module ? "module"
                      : $o =~ m{/nginx$} ? "nginx"
                      : $o =~ /libc\.so/ ? "libc"
                      : $o =~ /hiredis/ ? "hiredis" : "other";
                $obj{$k} += $c;
                # a function of several source files: summed by its name
                (my $name = $f) =~ s/^.*://;
                $mod{$name} += $c if $k eq "module";
            }
            printf "  /%-4s %6d requests, %6.0f instructions per request:",
                   $loc, $requests, $total / $requests;
            printf " %s %.0f", $_, ($obj{$_} // 0) / $requests
                for qw(module nginx libc hiredis other);
            print "\n";
            my @top = sort { $mod{$b} <=> $mod{$a} } keys %mod;
            for my $name (@top[0 .. ($#top < 4 ? $#top : 4)]) {
                printf "      %6.0f  %s\n", $mod{$name} / $requests, $name;
            }
        ' "$loc" "$requests" "$prefix.self" "$module"
    done
    stop_redis
done
