# The C unit tests of the engine (t/unit/test_*.c, built by make into
# build/unit/): each is a TAP producer, run here as a subtest.

use strict;
use warnings;
use FindBin;
use Test::More;

my $dir = $ENV{RULES_UNIT_DIR} // "$FindBin::Bin/../build/unit";
my @tests = sort glob "$dir/test_*";
ok(@tests, "unit test programs found in $dir") or BAIL_OUT('run make first');

for my $bin (@tests) {
    my $name = (split m{/}, $bin)[-1];
    subtest $name => sub {
        open my $fh, '-|', $bin or die "$bin: $!";
        my ($plan, $failed, $count) = (0, 0, 0);
        while (my $line = <$fh>) {
            chomp $line;
            if ($line =~ /^1\.\.(\d+)/) {
                $plan = $1;
            } elsif ($line =~ /^(not )?ok \d+ - (.*)$/) {
                $count++;
                ok(!$1, $2);
            } elsif ($line =~ /^#/) {
                diag($line);
            }
        }
        close $fh;
        is($? >> 8, 0, "$name exits 0");
        is($count, $plan, "$name ran its whole plan");
    };
}

done_testing();
