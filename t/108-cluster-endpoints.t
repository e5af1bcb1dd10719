# A Redis Cluster whose nodes announce no endpoint
# (cluster-preferred-endpoint-type unknown-endpoint: CLUSTER SLOTS gives
# a nil host, MOVED an empty one): each master is the host of the node
# that answered, at its own port.  The slot map was refused whole (nil is
# not a string), and every event failed.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use RulesNginx;
use RulesCluster;

my $cluster = RulesCluster->new(masters => 3, replicas => 0, args => [
    '--cluster-preferred-endpoint-type', 'unknown-endpoint']);

my $slots = $cluster->cli(($cluster->ports)[0], 'CLUSTER', 'SLOTS');
like($slots, qr/^\d+\n\d+\n\n\d+/m,
     'CLUSTER SLOTS names no host (an empty line where the host was)')
    or diag($slots);

my $rules = '{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"}
]}';

# users whose keys are on every master
my @users = $cluster->users_on_masters('t108:', 'e', 3);
is(scalar @users, 3, 'a user on each master');

my $seed = $cluster->seed;
my $ngx = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-108",
    workers => 1,
    files   => { 'rules.json' => $rules },
    http    => RulesNginx::pixel_http(
        store   => "rules_redis_cluster $seed;",
        prefix  => 't108:',
        timeout => '1s',
        fields  => ['uid']));

ok($cluster->wait_nginx_ready($ngx, 1), 'worker ready');

sub px {
    my ($q) = @_;
    my ($st, $h) = RulesNginx::get($ngx->{port}, "/px?$q");
    return join ' ', $h->{'x-status'} // '', $h->{'x-rules'} // '';
}

my @got = map { (px("uid=$_&ts=1000"), px("uid=$_&ts=2000")) } @users;
is_deeply(\@got, [ map { ('ok ', 'ok twice') } @users ],
          'events on every master, state kept');
for my $u (@users) {
    my $key = "t108:{uid:$u}";
    my $port = $cluster->slot_master(RulesCluster::key_slot($key));
    is($cluster->cli($port, 'EXISTS', $key), 1, "$u: its key on its master");
}

my $log = RulesNginx::error_log($ngx);
unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alert');
unlike($log, qr/slot map refresh failed|have no/,
       'the slot map taken');
RulesNginx::stop_nginx($ngx);

done_testing();
