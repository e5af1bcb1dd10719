#!/bin/bash
# Instructions per event of the worker's engine path (bench/worker_profile.c
# under valgrind's callgrind), for SPEC.md's five rules and the 1000
# generated rules (engine_bench's): repeatable counts, whatever else the
# machine does, to measure a change of the engine before and after.
#
#   bench/callgrind.sh          (BENCH_CG_WARMUP=300000 BENCH_CG_EVENTS=20000)
#   make bench-callgrind
#
# Prints, per rule set, the instructions per event of the engine (the
# Redis stand-in and the driver's snprintf left out) and the functions
# that cost the most themselves; callgrind's files stay in
# build/bench/callgrind/ (callgrind_annotate for more).

set -euo pipefail
cd "$(dirname "$0")/.."
out=build/bench/callgrind
warmup=${BENCH_CG_WARMUP:-300000}
events=${BENCH_CG_EVENTS:-20000}

for f in build/bench/worker_profile build/bench/engine_bench; do
    [ -x "$f" ] || { echo "callgrind: $f missing: make bench-callgrind" >&2; exit 1; }
done
command -v valgrind > /dev/null \
    || { echo "callgrind: valgrind missing (make deps)" >&2; exit 1; }

mkdir -p "$out"
build/bench/engine_bench --dump-generated > "$out/rules-1000.json"

for set in spec gen; do
    case $set in
        spec) rules=conf-examples/rules.json; name="5 rules (SPEC.md)" ;;
        gen)  rules=$out/rules-1000.json;     name="1000 generated rules" ;;
    esac
    valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$out/$set.out" \
        build/bench/worker_profile "$rules" "$warmup" "$events" \
        > /dev/null 2> "$out/$set.log" \
        || { tail -20 "$out/$set.log" >&2; exit 1; }
    callgrind_annotate --inclusive=yes "$out/$set.out" > "$out/$set.inclusive"
    callgrind_annotate "$out/$set.out" > "$out/$set.self"
    perl -e '
        my ($events, $name, $inc, $self) = @ARGV;
        my ($total, $off) = (0, 0);
        open my $fh, "<", $inc or die "$inc: $!";
        my %seen;
        while (<$fh>) {
            next if /=>/;    # the calls listed in the annotated sources
            my ($n, $f) = /^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*?)\s*$/ or next;
            $n =~ tr/,//d;
            $total = $n if $f =~ /PROGRAM TOTALS/;
            $off += $n if $f =~ /:fake_redis_item\b|:snprintf\b/ && !$seen{$f}++;
        }
        printf "%s: %.0f instructions per event (the engine; %.0f with the Redis stand-in)\n",
               $name, ($total - $off) / $events, $total / $events;
        open $fh, "<", $self or die "$self: $!";
        my $k = 0;
        while (<$fh>) {
            my ($n, $p, $f) = /^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(\S+)/ or next;
            next if $f =~ /PROGRAM/;
            printf "    %5.1f %%  %s\n", $p, $f;
            last if ++$k == 8;
        }
    ' "$events" "$name" "$out/$set.inclusive" "$out/$set.self"
    grep '^run:' "$out/$set.log" | sed 's/^run: /    (/; s/$/)/'
done
