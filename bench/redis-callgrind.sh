#!/bin/bash
# Instructions per event of Redis with the rules Redis module
# (redis-server under valgrind's callgrind), fed by rules-replay with the
# events of bench/pixel.lua's mix: repeatable counts, whatever else the
# machine does, to measure a change of redis_module/ before and after.
#
#   bench/redis-callgrind.sh [MODULE.so ...]
#       (default: build/rules_redis_module.so; BENCH_RCG_EVENTS=300000,
#        BENCH_RCG_RULES=conf-examples/rules.json)
#   make bench-redis-callgrind
#
# Each module gets a fresh Redis; rules-replay applies the same events as
# a worker would (its state cache of 32 MB, one RULES.STORE call per
# event, so each call's own cost is counted in full).  Prints, per
# module, the server's instructions per event, those of RULES.STORE
# itself and the functions that cost the most themselves.  callgrind's
# files stay in build/bench/redis-callgrind/.
#
# Keys expire by Redis' clock, and under callgrind a run lasts about a
# hundred seconds for the events' eight (longer on a busy machine): a key
# of a short window (ip_burst's 10 s) may expire in one run and not in
# another, so the counts of one module vary by about 0.1 % from run to
# run on a quiet machine, and so do a few of the replay's results (not
# compared here: t/ compares them).  Compare builds in one invocation,
# with nothing else running.

set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
events=${BENCH_RCG_EVENTS:-300000}

. "$root/bench/common.sh"
bench_paths redis-callgrind \
    "${BENCH_RCG_RULES:-$root/conf-examples/rules.json}" \
    "$root/build/rules_redis_module.so" "$@" || exit 1

cd "$root"
out=build/bench/redis-callgrind

case $events in
    ''|*[!0-9]*|0) echo "redis-callgrind: BENCH_RCG_EVENTS is a count, not \"$events\"" >&2; exit 1 ;;
esac
[ -x build/rules-replay ] \
    || { echo "redis-callgrind: build/rules-replay missing (make)" >&2; exit 1; }
for c in valgrind callgrind_annotate redis-server redis-cli; do
    command -v "$c" > /dev/null \
        || { echo "redis-callgrind: $c missing (make deps)" >&2; exit 1; }
done

mkdir -p "$out"
redis_pid=
# the servers listen on a unix socket only (no port another process could
# hold), in a directory of a short path
sock_dir=$(mktemp -d /tmp/redis-callgrind.XXXXXX)
sock=$sock_dir/redis.sock

cleanup() {
    if [ -n "$redis_pid" ]; then
        kill -KILL "$redis_pid" 2> /dev/null || true
        wait "$redis_pid" 2> /dev/null || true
    fi
    rm -rf "$sock_dir"
}
trap cleanup EXIT

# make_events: bench/pixel.lua's mix (100k users, about 3000 IPs and 3000
# devices, its event types, products and pages), 40 a millisecond from
# now, the same sequence every time (a fixed seed): made again for each
# module, so that each run's events start at its Redis' clock
make_events() {
    perl -e '
        my ($n, $base) = @ARGV;
        srand(7);
        my @types = (("page") x 4, "view", "view", "click", "cart", "purchase");
        my @paths = ("/home", "/sale", "/sale/summer", "/p/1", "/p/2", "/blog",
                     "/cart");
        for my $i (0 .. $n - 1) {
            printf "{\"uid\":\"u%d\",\"ip\":\"10.%d.%d.%d\",\"device\":\"d%d\","
                 . "\"type\":\"%s\",\"product\":\"P%d\",\"path\":\"%s\","
                 . "\"ts\":%d}\n",
                   int(rand(100000)), int(rand(4)), int(rand(256)), int(rand(3)),
                   int(rand(3000)), $types[rand @types], 40 + int(rand(5)),
                   $paths[rand @paths], $base + int($i / 40);
        }
    ' "$events" "$(date +%s%3N)" > "$out/events.jsonl"
}

n=0
for module in "${modules[@]}"; do
    n=$((n + 1))
    bench_redis_unix redis-callgrind "$sock" "$out/redis-$n" "$module" \
        valgrind --tool=callgrind --callgrind-out-file="$out/$n.out" \
        || exit 1

    make_events
    build/rules-replay --rules "$rules" --redis "unix:$sock" \
        --cache 33554432 --timeout 600000 "$out/events.jsonl" \
        > "$out/$n.results" \
        || { echo "redis-callgrind: rules-replay failed with $module" >&2
             exit 1; }
    calls=$(redis-cli -s "$sock" info commandstats | tr -d '\r' \
            | sed -n 's/^cmdstat_rules\.store:calls=\([0-9]*\),.*/\1/p')

    # rules-replay falls back to the script (EVALSHA) when the module
    # answers RULESVERSION: a module built from a commit whose script
    # differs from build/rules-replay's would be measured as the script
    if [ "${calls:-0}" != "$events" ]; then
        echo "redis-callgrind: $module answered ${calls:-0} RULES.STORE" \
             "calls for $events events (its state script differs from" \
             "build/rules-replay's?)" >&2
        exit 1
    fi

    # a clean exit, so that callgrind writes its file
    kill -TERM "$redis_pid"
    wait "$redis_pid" || true
    redis_pid=

    callgrind_annotate --inclusive=yes "$out/$n.out" > "$out/$n.inclusive"
    callgrind_annotate "$out/$n.out" > "$out/$n.self"
    echo "$module: $events events, one RULES.STORE call each"
    perl -e '
        my ($events, $inc, $self) = @ARGV;
        my ($total, $store) = (0, 0);
        open my $fh, "<", $inc or die "$inc: $!";
        while (<$fh>) {
            next if /=>/;
            my ($c, $f) = /^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*?)\s*$/
                or next;
            $c =~ tr/,//d;
            $total = $c if $f =~ /PROGRAM TOTALS/;
            $store = $c if !$store && $f =~ /:rs_store_command \[/;
        }
        printf "    %.0f instructions per event (the server), %.0f in "
             . "RULES.STORE\n", $total / $events, $store / $events;
        open $fh, "<", $self or die "$self: $!";
        my $k = 0;
        while (<$fh>) {
            my ($p, $f) = /^\s*[\d,]+\s+\(\s*([\d.]+)%\)\s+(\S+)/ or next;
            next if $f =~ /PROGRAM/;
            printf "    %5.1f %%  %s\n", $p, $f;
            last if ++$k == 8;
        }
    ' "$events" "$out/$n.inclusive" "$out/$n.self"
done
