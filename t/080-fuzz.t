# A short, bounded run of each libFuzzer target (t/fuzz/, built with
# ASan and UBSan): the rule loader, condition evaluation and key
# operations with the JSON event parser, and state deserialization with
# the state machines.  "make fuzz FUZZ_SECS=3600" runs them for longer.

use strict;
use warnings;
use FindBin;
use Test::More;
use File::Temp qw(tempdir);

my $dir = "$FindBin::Bin/../build/fuzz";
my $secs = $ENV{RULES_FUZZ_SECS} // 10;
my @bins = sort grep { -x } glob "$dir/fuzz_*";
plan skip_all => "no fuzz targets in $dir (clang missing?)" unless @bins;

for my $bin (@bins) {
    my ($name) = $bin =~ /fuzz_(\w+)$/;
    my $corpus = tempdir(CLEANUP => 1);
    my $out = `$bin -max_total_time=$secs -print_final_stats=1 $corpus $FindBin::Bin/fuzz/corpus/$name 2>&1`;
    my $rc = $? >> 8;
    my ($runs) = $out =~ /stat::number_of_executed_units:\s*(\d+)/;
    is($rc, 0, "fuzz_$name: no crash, leak or undefined behaviour in ${secs}s")
        or diag(join "\n", grep { /ERROR|SUMMARY|runtime error|#\d+ 0x/ }
                           split /\n/, $out);
    ok(($runs // 0) > 1000, "fuzz_$name ran " . ($runs // 0) . " inputs");
}

done_testing();
