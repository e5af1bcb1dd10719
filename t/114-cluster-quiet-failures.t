# Redis Cluster: failures that used to fail events with nothing in the
# error log.
#
# 1. A seed whose cluster has no slot yet (cluster-enabled, never joined
#    or created): its first slot map is empty, so no slot changes; the
#    map and "16384 of 16384 slots have no master" are logged all the
#    same, and an event fails.
# 2. rules_redis_max_inflight on one master's connection: an event makes
#    a call per state key, so the calls to a master can reach the bound
#    before the worker's events do.  Two events of a user and an ip whose
#    keys share a master, stopped (SIGSTOP), under a bound of 3: the
#    second event's second call is refused, and that is logged (warn).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use RulesNginx;
use RulesCluster;

my $slow = RulesMemcheck::slowdown();

my $rules = <<'_EOC_';
{"rules": [
  {"id": "seen", "kind": "segment", "key": "uid", "type": "count",
   "min": 1, "within": "7d"},
  {"id": "ip_seen", "kind": "segment", "key": "ip", "type": "count",
   "min": 1, "within": "7d"}
]}
_EOC_

sub start {
    my ($store, $extra) = @_;
    return RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-114",
        workers => 1,
        files   => { 'rules.json' => $rules },
        http    => RulesNginx::pixel_http(
            store   => $store,
            timeout => '300ms',
            prefix  => 't114:',
            fields  => ['uid', 'ip'],
            extra   => $extra));
}


# ---- 1. a cluster without slots -------------------------------------------

{
    my $node = RulesNginx::start_redis(args => [
        '--cluster-enabled', 'yes',
        '--cluster-config-file', "t114-nodes-$$.conf",
        '--cluster-port', RulesNginx::free_port()]);
    my $ngx = start("rules_redis_cluster 127.0.0.1:$node->{port};");
    my $log = RulesNginx::wait_log($ngx, qr/slots have no master/,
                                   5 * $slow);
    like($log, qr/\[info\] \d+#\d+: rules redis cluster: slot map from 127\.0\.0\.1:$node->{port}: 0 masters, 0 slots changed, some slots not served$/m,
         'an empty first map: logged') or diag($log);
    like($log, qr/\[warn\] \d+#\d+: rules redis cluster: 16384 of 16384 slots have no master: their events fail$/m,
         'an empty first map: every slot without a master, at warn');
    my ($st, $h) = RulesNginx::get($ngx->{port}, '/px?uid=u1&ts=1000');
    is($h->{'x-status'}, 'error', 'an event fails');
    RulesNginx::stop_nginx($ngx);
    unlink "t114-nodes-$$.conf";
}


# ---- 2. rules_redis_max_inflight on one master's connection ---------------

{
    my $cluster = RulesCluster->new(replicas => 0);
    my $seeds = join ' ', map { "127.0.0.1:$_" } $cluster->ports;

    # a user and an ip whose keys have one master, in two slots
    my $uid = 'u0';
    my $uslot = RulesCluster::key_slot("t114:{uid:$uid}");
    my $master = $cluster->slot_master($uslot);
    my ($ip) = grep {
        my $s = RulesCluster::key_slot("t114:{ip:$_}");
        $s != $uslot && $cluster->slot_master($s) == $master
    } map { "192.0.2.$_" } 1 .. 254;
    ok(defined $ip, "an ip whose key is on the master of $uid\'s");

    my $ngx = start("rules_redis_cluster $seeds;",
                    'rules_redis_max_inflight 3;');
    ok($cluster->wait_nginx_ready($ngx, 1), 'nginx has the slot map and '
       . 'its masters');
    is(RulesNginx::pixel($ngx, "uid=$uid&ip=$ip&ts=1000"),
       '204 ok [seen,ip_seen]', 'an event, both keys stored');

    my $pid = (grep { $_->{port} == $master } @{ $cluster->{nodes} })[0]{pid};
    kill 'STOP', $pid;
    my $first = RulesNginx::send_get($ngx->{port},
                                     "/px?uid=$uid&ip=$ip&ts=2000");
    sleep 0.1;
    my $second = RulesNginx::pixel($ngx, "uid=$uid&ip=$ip&ts=3000");
    # (its other call waits for the stopped master: it ends at its
    # deadline)
    is($second, '204 timeout []',
       'the second event: its second call over the bound, no match');
    my $want = qr/\[warn\] \d+#\d+: rules redis 127\.0\.0\.1:$master: call refused: 3 calls already wait for a reply \(rules_redis_max_inflight 3; 0 more since the last such line\)/;
    like(RulesNginx::wait_log($ngx, $want, 2 * $slow), $want,
         'the refused call is logged, at warn');
    like(RulesNginx::pixel_answer($first), qr/^204 timeout /,
         'the first event: answered at its deadline');
    kill 'CONT', $pid;

    unlike(RulesNginx::error_log($ngx), qr/\[(?:alert|crit|emerg)\]/,
           'no alert in the error log');
    RulesNginx::stop_nginx($ngx);
}

done_testing();
