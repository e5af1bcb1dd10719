# One key's events keep their order when its slot moves to another
# master (MOVED) while the old master still has some of them in flight.
#
# Master A is reached through a proxy (it announces the proxy's port to
# the cluster) that can hold A's replies.  The slot of user U moves from
# A to B; nginx's map still says A.  Event 1 (type a) and event 2 (type
# b) go to A, whose MOVED replies the proxy holds.  Only the first is
# let through: event 1 is sent again to B.  Event 3 (type c) comes now,
# while event 2's MOVED is still on its way: it must wait for it, so
# that B applies a, b, c and the sequence rule a -> b -> c matches on
# event 3.  Sent straight to B, it would be applied before b (no match).

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
use RulesProxy;

my $dir = tempdir(CLEANUP => 1);
my $prefix = 't106:';
my $cluster = RulesCluster->new(masters => 3, replicas => 0);
my @ports = sort { $a <=> $b } keys %{ $cluster->masters };
my ($a_port, $b_port, $c_port) = @ports;
my $a_node = $cluster->node_by_port($a_port);

# A, as the cluster (and nginx) sees it: the proxy's port
# (on a connection, from its first MOVED reply on: what comes before,
# such as a slot map, goes through)
my $proxy = RulesProxy::start(upstream => $a_port, log => "$dir/proxy.log",
                              hold_match => qr/^-MOVED /);
my $p_port = $proxy->{port};
is($cluster->cli($a_port, 'CONFIG', 'SET', 'cluster-announce-bus-port',
                 $a_node->{bus}), 'OK', 'A announces its own bus port');
is($cluster->cli($a_port, 'CONFIG', 'SET', 'cluster-announce-port', $p_port),
   'OK', "A announces the proxy's port $p_port");
my $seen = 0;
for (1 .. 100) {
    $seen = !grep { $cluster->cli($_, 'CLUSTER', 'SLOTS') !~ /\b$p_port\b/ }
                  $a_port, $b_port, $c_port;
    last if $seen;
    sleep 0.1;
}
ok($seen, 'every master names A by the proxy port');

# a user whose state key is in a slot of A
my ($uid, $slot);
my %a_ranges;
for my $i (0 .. 100000) {
    my $s = RulesCluster::key_slot("$prefix\{uid:u$i}");
    next unless ($cluster->slot_master($s) // 0) == $p_port;
    ($uid, $slot) = ("u$i", $s);
    last;
}
ok(defined $uid, "user $uid in slot $slot of A");

my $rules = RulesGen::json({ rules => [
    { id => 'abc', kind => 'segment', key => 'uid', type => 'sequence',
      within => '1d', hold => '1d',
      steps => [ { where => { field => 'type', eq => 'a' } },
                 { where => { field => 'type', eq => 'b' } },
                 { where => { field => 'type', eq => 'c' } } ] },
] });

my $ngx = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-106",
    workers => 1,
    files   => { 'rules.json' => $rules },
    http    => RulesNginx::pixel_http(
        store   => "rules_redis_cluster 127.0.0.1:$b_port 127.0.0.1:$c_port;",
        prefix  => $prefix,
        timeout => '5s',
        fields  => [qw(uid type)]));
ok($cluster->wait_nginx_ready($ngx, 1), 'the worker has the map and its '
                                        . 'connections (A through the proxy)');

# the slot moves to B; nginx learns it from A's MOVED only.  B imports
# it first, so that taking it bumps B's config epoch: otherwise A's
# heartbeats, sent before A was told, can give the slot back to A in
# B's view (then B and A each answer MOVED to the other)
my %id = map { $_ => $cluster->node_id($_) } @ports;
$cluster->cli($b_port, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING',
              $id{$a_port});
$cluster->cli($a_port, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING',
              $id{$b_port});
for my $port ($b_port, $a_port, $c_port) {
    $cluster->cli($port, 'CLUSTER', 'SETSLOT', $slot, 'NODE', $id{$b_port});
}

# the port of the master serving $slot in the view of the node at $port
sub owner_seen_by {
    my ($port) = @_;
    for my $line (split /\n/, $cluster->cli($port, 'CLUSTER', 'NODES')) {
        my @f = split ' ', $line;
        next unless $f[2] =~ /master/;
        for my $r (@f[8 .. $#f]) {
            next if $r =~ /^\[/;
            my ($lo, $hi) = split /-/, $r;
            return ($f[1] =~ /:(\d+)/)[0]
                if $slot >= $lo && $slot <= ($hi // $lo);
        }
    }
    return 0;
}
my $moved = 0;
for (1 .. 100) {
    $moved = $cluster->wait_ok(20)
             && !grep { owner_seen_by($_) != $b_port }
                      $a_port, $b_port, $c_port;
    last if $moved;
    sleep 0.1;
}
ok($moved, "slot $slot now served by B, in every master's view");

# events on their own connections, answered later
sub send_event {
    my ($type, $ts) = @_;
    my $s = RulesNginx::send_get($ngx->{port},
                                 "/px?uid=$uid&type=$type&ts=$ts")
        or die "connect: $!";
    return $s;
}

sub wait_held {
    my ($n) = @_;
    return RulesNginx::poll(10, sub { RulesProxy::held($proxy) >= $n },
                            undef, 0.01) ? 1 : 0;
}

ok(RulesProxy::hold($proxy), "the proxy holds A's MOVED replies");
my $e1 = send_event('a', 1000);
ok(wait_held(1), "event 1: A's MOVED held");
my $e2 = send_event('b', 2000);
ok(wait_held(2), "event 2: A's MOVED held");
like(RulesProxy::release($proxy, 'one'), qr/^released 1$/,
     "event 1's MOVED let through");
is(RulesNginx::pixel_answer($e1), '204 ok []',
   'event 1: sent again to B, applied');
my $e3 = send_event('c', 3000);
sleep 0.3;
# (and the reply to the slot map refresh that event 1's MOVED planned,
# when it went to A)
like(RulesProxy::release($proxy, 'all'), qr/^released [12]$/,
     "event 2's MOVED let through");
is(RulesNginx::pixel_answer($e2), '204 ok []',
   'event 2: sent again to B, applied');
is(RulesNginx::pixel_answer($e3), '204 ok [abc]',
   'event 3 waited for event 2: B applied a, b, c (the sequence matched)');

diag(join "\n", 'proxy log:', RulesProxy::_lines($proxy->{log}))
    unless Test::More->builder->is_passing;
my $log = RulesNginx::error_log($ngx);
unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alert in the error log');
RulesNginx::stop_nginx($ngx);
RulesProxy::stop($proxy);
done_testing();
