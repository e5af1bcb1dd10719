# rules-replay: the in-memory engine and the Redis path (the script keeps
# a log per key, src/rules_script.lua; the reader folds it and writes
# states back, src/rules_log.c) give the same result for every event of
# many random rule files and streams, with each writer mode: one writer
# that caches the states it wrote (the module's fast path: writes), no
# cache (appends, reads and compactions), a 1 KB cache that evicts all
# the time (writes and appends), three writers taking turns
# (writes that find the value changed by another and fall back), and the
# same two with every cached state extended rather than rewritten.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use RulesGen;

my $replay = $ENV{RULES_REPLAY} // "$FindBin::Bin/../build/rules-replay";
my $port = $ENV{TEST_NGINX_REDIS_PORT}
    or plan skip_all => 'TEST_NGINX_REDIS_PORT is not set';
-x $replay or plan skip_all => "no $replay";

my $dir = tempdir(CLEANUP => 1);
my $rounds = $ENV{RULES_DIFF_ROUNDS} // 40;

sub run_replay {
    my (@args) = @_;
    open my $fh, '-|', $replay, @args or die "cannot run $replay: $!";
    my @lines = <$fh>;
    close $fh;
    return ($? >> 8, \@lines);
}

for my $round (1 .. $rounds) {
    my $gen = RulesGen->new(1000 + $round);
    my $rules = $gen->rules(2 + $gen->rand_int(6));
    my $events = $gen->events(150);

    open my $rf, '>', "$dir/rules.json" or die;
    print $rf RulesGen::json($rules);
    close $rf;
    open my $ef, '>', "$dir/events.jsonl" or die;
    print $ef RulesGen::json($_), "\n" for @$events;
    close $ef;

    my ($rc1, $mem) = run_replay('--rules', "$dir/rules.json",
                                 "$dir/events.jsonl");
    is($rc1, 0, "round $round: dry run exits 0");
    is(scalar @$mem, scalar @$events, "round $round: one line per event");

  for my $mode (['cached'], ['uncached', '--cache', 0],
                ['evicting', '--cache', 1024],
                ['3 writers', '--writers', 3],
                ['extending', '--extend-min', 1],
                ['3 writers extending', '--writers', 3, '--extend-min', 1]) {
    my ($name, @opts) = @$mode;
    my $prefix = "difftest:$$:$round:$name:";
    my ($rc2, $red) = run_replay('--rules', "$dir/rules.json",
                                 '--redis', "127.0.0.1:$port", @opts,
                                 '--prefix', $prefix, "$dir/events.jsonl");
    is($rc2, 0, "round $round, $name: redis run exits 0");

    my $bad;
    for my $i (0 .. $#$events) {
        next if ($mem->[$i] // '') eq ($red->[$i] // '');
        $bad = "event $i " . RulesGen::json($events->[$i])
            . "\n  memory: " . ($mem->[$i] // "(none)")
            . "  redis:  " . ($red->[$i] // "(none)");
        last;
    }
    ok(!$bad, "round $round, $name: memory and redis agree on every event")
        or diag("seed " . (1000 + $round) . "\nrules: "
                . RulesGen::json($rules) . "\n$bad");
  }
}

done_testing();
