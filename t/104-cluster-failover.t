# A master killed (SIGKILL) under traffic, its replica promoted
# (cluster-node-timeout 1000 ms): every request is answered within the
# deadline, events on the other masters stay "ok" throughout, events on
# the dead master's slots fail open ("error" or "timeout") until nginx
# finds the promoted replica in the slot map; then every key's state,
# including the keys of the failed master (replicated before the kill),
# gives rules-replay's results.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep time);
use RulesGen;
use RulesNginx;
use RulesCluster;

my $replay = $ENV{RULES_REPLAY} // "$FindBin::Bin/../build/rules-replay";
-x $replay or plan skip_all => "no $replay";

my $dir = tempdir(CLEANUP => 1);
my $cluster = RulesCluster->new(node_timeout => 1000);
my $prefix = 't104:';
my $deadline_ms = 300;

my $rules = RulesGen::json({ rules => [
    { id => 'c4', kind => 'segment', key => 'uid', type => 'count',
      min => 4, within => '1d' },
    { id => 'ab', kind => 'segment', key => 'uid', type => 'sequence',
      within => '1d', hold => '1d',
      steps => [ { where => { field => 'type', eq => 'a' } },
                 { where => { field => 'type', eq => 'b' } } ] },
    { id => 'two_products', kind => 'fraud', key => 'uid',
      type => 'distinct', field => 'product', min => 2, within => '1d' },
] });

sub slot_of { RulesCluster::key_slot("$prefix\{uid:$_[0]}") }

# the victim, and a seed that is not the victim
my @masters = sort keys %{ $cluster->masters };
my $victim = $masters[0];
my $seed = "127.0.0.1:$masters[1]";

my $ngx = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-104",
    workers => 2,
    files   => { 'rules.json' => $rules },
    http    => <<"_EOC_");
    rules_redis_cluster $seed;
    rules_redis_timeout ${deadline_ms}ms;
    rules_key_prefix "$prefix";
    rules_file ../html/rules.json;
    server {
        listen 127.0.0.1:\$PORT;
        location = /px {
            rules on;
            rules_field uid \$arg_uid;
            rules_field type \$arg_type;
            rules_field product \$arg_product;
            rules_time \$arg_ts;
            add_header X-Rules \$rules_matched always;
            add_header X-Status \$rules_status always;
            return 204;
        }
        location = /metrics { rules_metrics; }
    }
_EOC_
ok($cluster->wait_nginx_ready($ngx, 2), 'workers ready');

my $ts = 1_000_000;
my (@events, @got);

sub px {
    my ($uid, $type, $product) = @_;
    my $e = { uid => $uid, type => $type, product => $product,
              ts => $ts += 1000 };
    my $t0 = time;
    my ($st, $h) = RulesNginx::get($ngx->{port},
        "/px?uid=$uid&type=$type&product=$product&ts=$e->{ts}");
    return ($e, [$st, $h->{'x-status'} // '', $h->{'x-rules'} // '',
                 time - $t0]);
}

# phase 1: 30 users on every master, two events each
my @users = map { "w$_" } 1 .. 30;
my @on_victim = grep { $cluster->slot_master(slot_of($_)) == $victim } @users;
ok(@on_victim > 0, scalar(@on_victim) . ' of the users are on the victim');

for my $round (1 .. 2) {
    for my $u (@users) {
        my ($e, $r) = px($u, $round == 1 ? 'a' : 'x', "P$round");
        push @events, $e;
        push @got, $r;
    }
}
# rules-replay connected to the cluster across the failover: its first
# event (a user on the victim) before the kill, its second after; the
# second waits the failover out on the promoted replica (it stopped the
# run: the dead master's closed connection looked like a lost answer)
my $rp_user = $on_victim[0];
open my $rpf, '>', "$dir/replay-rules.json" or die;
print $rpf $rules;
close $rpf;
open my $rp_in, '|-', "'$replay' --rules '$dir/replay-rules.json' "
    . "--redis-cluster $seed --prefix t104replay: --cache 0 "
    . "> '$dir/replay-out' 2> '$dir/replay-err'"
    or die "$replay: $!";
$rp_in->autoflush(1);
print $rp_in qq({"uid": "$rp_user", "type": "a", "ts": 1000}\n);
RulesNginx::poll(10, sub {
    $cluster->cli($victim, 'EXISTS', "t104replay:{uid:$rp_user}") eq '1' });
is($cluster->cli($victim, 'EXISTS', "t104replay:{uid:$rp_user}"), '1',
   "rules-replay's first event is on the victim");

ok($cluster->wait_synced(20), 'the replicas have every write');

# the failover, under traffic on other users
my %victim_slot;
my @load_users = map { "f$_" } 1 .. 60;
$victim_slot{$_} = ($cluster->slot_master(slot_of($_)) == $victim)
    for @load_users;
my ($replica) = map { $_->{port} } grep {
    $cluster->cli($_->{port}, 'INFO', 'replication') =~ /master_port:$victim\b/
} @{ $cluster->{nodes} };
ok($replica, "the victim $victim has a replica ($replica)");

my $since = length RulesNginx::error_log($ngx);
$cluster->kill_node($victim);
my $killed_at = time;

my (@load, $promoted_at, $ready_at);
my $i = 0;
while (time - $killed_at < 40) {
    my $u = $load_users[ $i++ % @load_users ];
    my ($e, $r) = px($u, 'a', 'P1');
    push @load, [$u, @$r];

    if (!$promoted_at
        && $cluster->cli($replica, 'INFO', 'replication') =~ /role:master/)
    {
        $promoted_at = time;
    }

    if ($promoted_at && !$ready_at
        && $cluster->wait_nginx_connected($ngx, 2, $replica, $since, 0))
    {
        $ready_at = time;
    }

    last if $ready_at && time - $ready_at > 1;
    sleep 0.01;
}

ok($promoted_at, sprintf('the replica was promoted %.1f s after the kill',
                         ($promoted_at // time) - $killed_at));
ok($ready_at, sprintf('both workers use the promoted replica %.1f s after '
                      . 'the kill', ($ready_at // time) - $killed_at));
ok($cluster->wait_ok(30), 'the cluster is ok again');

my (%st, $late, $not_204, $healthy_bad);
for my $l (@load) {
    my ($u, $http, $status, $matched, $secs) = @$l;
    $st{$status}++;
    $not_204++ if $http != 204;
    $late = $secs if $secs > ($late // 0);
    $healthy_bad //= "$u: $status" if !$victim_slot{$u} && $status ne 'ok';
}
ok(!$not_204, scalar(@load) . ' requests during the failover, all answered')
    or diag(explain(\%st));
ok($late < 2, sprintf('the slowest took %.3f s (deadline %d ms)', $late,
                      $deadline_ms));
is_deeply([grep { !/^(ok|error|timeout)$/ } keys %st], [],
          'statuses are ok, error or timeout')
    or diag(explain(\%st));
ok(!$healthy_bad, 'events on the other masters stayed ok')
    or diag($healthy_bad);
diag(explain(\%st)) if $ENV{TEST_VERBOSE};

# phase 3: the users of phase 1 again, on the new topology
for my $round (3 .. 4) {
    for my $u (@users) {
        my ($e, $r) = px($u, $round == 3 ? 'b' : 'x', "P$round");
        push @events, $e;
        push @got, $r;
    }
}

open my $rf, '>', "$dir/rules.json" or die;
print $rf $rules;
close $rf;
open my $ef, '>', "$dir/events.jsonl" or die;
print $ef RulesGen::json($_), "\n" for @events;
close $ef;
open my $fh, '-|', $replay, '--rules', "$dir/rules.json", "$dir/events.jsonl"
    or die;
my @expected = map { /"matched":\[([^\]]*)\]/ ? $1 : 'BAD' } <$fh>;
close $fh;
s/"//g for @expected;

my $bad;
for my $k (0 .. $#events) {
    next if $got[$k][1] eq 'ok' && $got[$k][2] eq $expected[$k];
    $bad //= "event $k " . RulesGen::json($events[$k])
             . "\n  nginx:  [$got[$k][2]] ($got[$k][1])\n  replay: [$expected[$k]]";
}
ok(!$bad, 'before and after the failover, every result equals '
          . "rules-replay's (" . scalar(@events) . ' events, state of the '
          . "failed master's keys kept)") or diag($bad);

my (undef, undef, $metrics) = RulesNginx::get($ngx->{port}, '/metrics');
like($metrics, qr/^nginx_rules_cluster_slot_refreshes_total\{result="ok"\} ([3-9]|\d\d)/m,
     'slot map refreshed during the failover');

# rules-replay's second event, after the failover, on the same run
print $rp_in qq({"uid": "$rp_user", "type": "b", "ts": 2000}\n);
close $rp_in;
is($? >> 8, 0, 'rules-replay across the failover: exit 0')
    or diag(`cat '$dir/replay-err'`);
open my $ro, '<', "$dir/replay-out" or die;
my @rp_lines = <$ro>;
close $ro;
is_deeply(\@rp_lines, [qq({"matched":[]}\n), qq({"matched":["ab"]}\n)],
          'rules-replay across the failover: the second event waited for '
          . 'the promoted replica, which had the first');

my $log = RulesNginx::error_log($ngx);
unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alert in the error log');
unlike($log, qr/exited on signal/, 'no worker crashed');
RulesNginx::stop_nginx($ngx);

done_testing();
