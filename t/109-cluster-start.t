# A worker's first slot map: the events made before it wait for it (and
# for the masters' first connections) instead of failing; it is asked of
# the first seed connected, so seeds that never answer do not hold it.  A reload's new
# workers failed every event until they had the map (100 ms at least):
# with rules_on_error closed, legitimate clients were rejected.  A
# cluster that cannot be reached still fails events at once.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use IO::Socket::INET;
use RulesNginx;
use RulesCluster;

my $cluster = RulesCluster->new(masters => 3, replicas => 0);

my $rules = '{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"}
]}';

my @users = $cluster->users_on_masters('t109:', 's', 3);
is(scalar @users, 3, 'a user on each master');

my $seed = $cluster->seed;
my $slow = RulesMemcheck::slowdown();
my $ngx = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-109",
    workers => 2,
    files   => { 'rules.json' => $rules },
    http    => RulesNginx::pixel_http(
        store   => "rules_redis_cluster $seed;",
        prefix  => 't109:',
        timeout => (2 * $slow) . 's',
        fields  => ['uid']));

sub px {
    my ($q) = @_;
    my ($st, $h) = RulesNginx::get($ngx->{port}, "/px?$q");
    return join ' ', $h->{'x-status'} // '', $h->{'x-rules'} // '';
}

# at once, before the workers can have their map
my @got = map { px("uid=$_&ts=1000") } @users;
is_deeply(\@got, [ map { 'ok ' } @users ],
          'the first events, made before the map: applied');
@got = map { px("uid=$_&ts=2000") } @users;
is_deeply(\@got, [ map { 'ok twice' } @users ], 'their state was written');

# reloads: the new workers' first events
my %status;
my $n = 0;
for my $round (1 .. 3) {
    RulesNginx::reload_nginx($ngx);
    my $end = time + 0.6 * $slow;
    while (time < $end) {
        my $u = $users[$n++ % @users];
        my ($st) = split / /, px("uid=$u&ts=" . (3000 + $n));
        $status{$st}++;
    }
}
is_deeply(\%status, { ok => $n }, "$n events during three reloads: all ok")
    or diag(explain(\%status));
is(RulesNginx::metric($ngx, 'nginx_rules_events_total{status="error"}') // 0,
   0, 'no event counted as an error');

my $log = RulesNginx::error_log($ngx);
unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alert');
unlike($log, qr/exited on signal/, 'no worker crashed');
RulesNginx::stop_nginx($ngx);

# seeds that never answer listed with a live one (listeners whose accept
# queues are full: their SYNs are dropped): the map comes from the live
# one at once, not after the dead ones' connect timeout
my @holes = map {
    my $l = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                  LocalPort => 0, ReuseAddr => 1)
        or die "listen: $!";
    my @fill = map {
        IO::Socket::INET->new(PeerAddr => '127.0.0.1:' . $l->sockport)
            or die "connect: $!"
    } 1 .. 2;
    [$l, @fill];
} 1 .. 4;
my $seeds = join ' ', (map { '127.0.0.1:' . $_->[0]->sockport } @holes),
                      $seed;
my $ngx3 = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-109c",
    workers => 2,
    files   => { 'rules.json' => $rules },
    http    => RulesNginx::pixel_http(
        store   => "rules_redis_cluster $seeds;\n"
                   . "    rules_redis_connect_timeout 3s;",
        prefix  => 't109c:',
        timeout => (2 * $slow) . 's',
        fields  => ['uid']));
my %st3;
my $t3 = time;
for my $i (1 .. 6) {
    my ($st, $h) = RulesNginx::get($ngx3->{port},
                                   "/px?uid=$users[$i % 3]&ts=$i");
    $st3{$h->{'x-status'} // '-'}++;
}
my $took3 = time - $t3;
is_deeply(\%st3, { ok => 6 }, 'four dead seeds before a live one: the '
          . 'first events applied') or diag(explain(\%st3));
cmp_ok($took3, '<', 1.5 * $slow,
       sprintf('without waiting for the dead seeds (%.2f s)', $took3));
RulesNginx::stop_nginx($ngx3);
close $_ for map { @$_ } @holes;

# a cluster that cannot be reached: events fail, and fast
my $dead = RulesNginx::free_port();
my $ngx2 = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-109b",
    workers => 1,
    files   => { 'rules.json' => $rules },
    http    => RulesNginx::pixel_http(
        store   => "rules_redis_cluster 127.0.0.1:$dead;",
        prefix  => 't109:',
        timeout => '2s',
        fields  => ['uid']));
sleep 0.2;
my $t0 = time;
my ($st, $h) = RulesNginx::get($ngx2->{port}, '/px?uid=x&ts=1000');
my $took = time - $t0;
is($h->{'x-status'} // '', 'error', 'no cluster: status error');
cmp_ok($took, '<', 1, sprintf('answered at once (%.2f s), not at the '
                              . 'deadline', $took));
RulesNginx::stop_nginx($ngx2);

done_testing();
