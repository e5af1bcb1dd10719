# On a Redis Cluster (3 masters, 3 replicas), the module's results equal
# rules-replay's: random events go through nginx (rules_redis_cluster,
# 2 workers), through rules-replay's in-memory engine and through
# rules-replay --redis pointed at a cluster node (it detects the cluster
# and sends one EVALSHA per key, as the module does); every event's
# matched set is compared, and the state keys are spread over every
# master.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use RulesGen;
use RulesNginx;
use RulesCluster;

my $replay = $ENV{RULES_REPLAY} // "$FindBin::Bin/../build/rules-replay";
-x $replay or plan skip_all => "no $replay";

my $dir = tempdir(CLEANUP => 1);
my $cluster = RulesCluster->new;
my $seeds = $cluster->seeds;

sub uri_escape {
    my ($s) = @_;
    $s =~ s/([^A-Za-z0-9_~-])/sprintf('%%%02X', ord $1)/ge;
    return $s;
}

sub replay {
    my (@args) = @_;
    open my $fh, '-|', $replay, '--rules', "$dir/rules.json", @args,
        "$dir/events.jsonl" or die;
    my @r = map { /"matched":\[([^\]]*)\]/ ? $1 : "BAD: $_" } <$fh>;
    close $fh;
    ok($? == 0, "rules-replay @args exits 0");
    s/"//g for @r;
    return \@r;
}

for my $round (1 .. 2) {
    my $gen = RulesGen->new(9100 + $round);
    my $spread = RulesGen->new(77 + $round);
    my $rules = $gen->rules(6);
    my $events = $gen->events(200);
    my $rules_json = RulesGen::json($rules);

    # more users and addresses than the generator's: keys on every master
    for my $e (@$events) {
        $e->{uid} .= '-' . $spread->rand_int(6) if exists $e->{uid};
        $e->{ip} .= $spread->rand_int(4) if exists $e->{ip};
    }

    open my $ef, '>', "$dir/events.jsonl" or die;
    print $ef RulesGen::json($_), "\n" for @$events;
    close $ef;
    open my $rf, '>', "$dir/rules.json" or die;
    print $rf $rules_json;
    close $rf;

    my $expected = replay();

    my $ngx = RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-101",
        workers => 2,
        files   => { 'rules.json' => $rules_json },
        http    => RulesNginx::pixel_http(
            store  => "rules_redis_cluster $seeds;",
            prefix => "t101:$round:",
            fields => [qw(uid ip type product path n)]));

    ok($cluster->wait_nginx_ready($ngx, 2),
       "round $round: both workers have the slot map and every master");

    my ($bad, $statuses) = (undef, {});
    for my $i (0 .. $#$events) {
        my $e = $events->[$i];
        my $q = join '&', map { "$_=" . uri_escape($e->{$_}) } sort keys %$e;
        my ($st, $h) = RulesNginx::get($ngx->{port}, "/px?$q");
        $statuses->{ $h->{'x-status'} // 'none' }++;
        my $got = $h->{'x-rules'} // '';
        next if $got eq $expected->[$i];
        $bad //= "event $i " . RulesGen::json($e)
                 . "\n  nginx:  [$got] (status "
                 . ($h->{'x-status'} // '?') . ")\n  replay: [$expected->[$i]]";
    }

    ok(!$bad, "round $round: nginx on the cluster and rules-replay agree on "
              . scalar(@$events) . " events")
        or diag("rules: $rules_json\n$bad");
    ok(!$statuses->{error} && !$statuses->{timeout},
       "round $round: no Redis error or timeout")
        or diag(explain($statuses));

    # every master holds some of the state
    my $masters = $cluster->masters;
    my @empty = grep {
        $cluster->cli($_, '--scan', '--pattern', "t101:$round:*") eq ''
    } sort keys %$masters;
    is(scalar @empty, 0, "round $round: state keys on all 3 masters")
        or diag("no keys on @empty");

    my (undef, undef, $metrics) = RulesNginx::get($ngx->{port}, '/metrics');
    like($metrics, qr/^nginx_rules_cluster_slot_refreshes_total\{result="ok"\} [1-9]/m,
         "round $round: slot maps loaded (metrics)");

    my $log = RulesNginx::error_log($ngx);
    unlike($log, qr/\[(alert|crit|emerg)\]/, "round $round: no alert in the error log");
    RulesNginx::stop_nginx($ngx);

    # rules-replay against the cluster: --redis to one node (detected),
    # and --redis-cluster with every seed
    my $via_node = replay('--redis', $cluster->seed, '--prefix', "t101r:$round:");
    is_deeply($via_node, $expected,
              "round $round: rules-replay --redis <cluster node> agrees");
    my $via_seeds = replay('--redis-cluster', join(',', split ' ', $seeds),
                           '--prefix', "t101s:$round:");
    is_deeply($via_seeds, $expected,
              "round $round: rules-replay --redis-cluster agrees");
}

done_testing();
