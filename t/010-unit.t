# The C unit tests of the engine (t/unit/test_*.c, built by make into
# build/unit/): each program is a TAP producer; it runs here, from the
# repository's root, as a subtest that re-emits its results (SKIP and TODO
# directives included) and also fails when the program does not exit 0
# (a crash after its last line included), does not run its whole plan, or
# runs longer than RULES_UNIT_TIMEOUT seconds (600).

use strict;
use warnings;
use FindBin;
use Cwd qw(abs_path);
use Test::More;

my $root = abs_path("$FindBin::Bin/..");
my $dir = $ENV{RULES_UNIT_DIR} // "$root/build/unit";
my $limit = $ENV{RULES_UNIT_TIMEOUT} // 600;
my @tests = grep { -f && -x } sort glob "$dir/test_*";
chdir $root or die "$root: $!";

ok(@tests, "unit test programs found in $dir (run make first)");

for my $bin (@tests) {
    my $name = (split m{/}, $bin)[-1];
    subtest $name => sub {
        my $tb = Test::More->builder;
        my $pid = open(my $fh, '-|', $bin);
        unless ($pid) {
            fail("$name: cannot run: $!");
            return;
        }
        my ($plan, $count, $timed_out, $failing) = (undef, 0, 0, 0);
        local $SIG{ALRM} = sub { $timed_out = 1; kill 'KILL', $pid };
        alarm $limit;
        while (defined(my $line = <$fh>)) {
            chomp $line;
            if ($line =~ /^1\.\.(\d+)/) {
                $plan = $1;
            } elsif ($line =~ /^(not )?ok\b\s*\d*\s*(?:-\s*)?(.*)$/) {
                my ($pass, $desc) = (!$1, $2);
                $count++;
                $failing = !$pass;
                my ($dir_kind, $reason);
                if ($desc =~ s/\s*(?<!\\)#\s*(SKIP|TODO)\S*\s*(.*)$//i) {
                    ($dir_kind, $reason) = (uc $1, $2);
                }
                if (defined $dir_kind && $dir_kind eq 'SKIP') {
                    $tb->skip($reason || $desc);
                } elsif (defined $dir_kind) {
                    $tb->todo_start($reason || 'TODO');
                    ok($pass, $desc);
                    $tb->todo_end;
                } else {
                    ok($pass, $desc);
                }
            } elsif ($line =~ /^Bail out!\s*(.*)/) {
                fail("$name bailed out: $1");
            } elsif ($line =~ /^#/) {
                # a failure's details are shown, the rest with prove -v
                $failing ? diag($line) : note($line);
            }
        }
        close $fh;
        my $status = $?;
        alarm 0;
        ok(!$timed_out, "$name finished within ${limit}s");
        is($status & 127, 0, "$name was not killed by a signal");
        is($status >> 8, 0, "$name exits 0");
        ok(defined $plan, "$name printed a plan");
        is($count, $plan // -1, "$name ran its whole plan");
    };
}

# src/rules_script.c (committed, compiled in) is what tools/gen-script.sh
# makes of src/rules_script.lua (the source the script's SHA1 and the
# rules Redis module's version come from)
{
    my $tmp = "$root/build/rules_script.c.check";
    system('tools/gen-script.sh', $tmp);
    is($?, 0, 'tools/gen-script.sh runs');
    open my $a, '<', 'src/rules_script.c' or die $!;
    open my $b, '<', $tmp or die $!;
    local $/;
    ok(<$a> eq <$b>, 'src/rules_script.c is generated from '
                     . 'src/rules_script.lua as committed (make script)');
    unlink $tmp;
}

# docs/SPEC.md is the project's contract as shipped with the repository:
# a copy of ../shared/SPEC.md, where that is (not in a clone elsewhere)
SKIP: {
    my $shared = "$root/../shared/SPEC.md";
    skip 'no ../shared/SPEC.md next to this clone', 1 unless -f $shared;
    open my $a, '<', $shared or die $!;
    open my $b, '<', 'docs/SPEC.md' or die $!;
    local $/;
    ok(<$a> eq <$b>, 'docs/SPEC.md is ../shared/SPEC.md (copy it again)');
}

done_testing();
