# Redis Cluster: the cluster's own failures and the nodes nginx no longer
# needs, on a real cluster (3 masters, 3 replicas; RulesCluster).
#
# 1. Nodes that serve no slot are closed once idle for 5 s (GC_IDLE), at
#    info: the replicas given as seeds; then a master whose slots all
#    moved to another one, but only once the call it still had in
#    flight (an ASK to it, the node paused for 12 s) was answered: the
#    call and its event go through.  A key cached before the replicas
#    close is still a cache hit after (they carried no state call); one
#    cached before M1 closes is a miss after (M1 carried one: its last
#    writes may not have reached a replica that took over).
# 2. A slot deleted from every master (cluster-require-full-coverage
#    no): its event gets "CLUSTERDOWN Hash slot not served" (logged,
#    the event "error" and fails open, a refresh planned), the next map
#    leaves the slot out ("1 of 16384 slots have no master"), its events
#    then fail at once, the others' stay "ok"; served again once the
#    slot is added back.
# 3. The same with cluster-require-full-coverage yes: every master
#    answers "CLUSTERDOWN The cluster is down"; one line a second at
#    most, the next with the count of the failures not logged.
# 4. A master loading its dataset (DEBUG RELOAD, slowed by
#    key-load-delay): "LOADING", handled as CLUSTERDOWN.
# 5. A master announced by a host name (cluster-announce-hostname,
#    cluster-preferred-endpoint-type hostname): its slots are left out of
#    the map, logged once however many of its ranges and refreshes; the
#    other master's events go on; served again with the type "ip".
#
# TRYAGAIN is not staged: the module sends one state key per call
# (t/107), and Redis only answers TRYAGAIN to a call of several keys of
# a migrating slot that are not all on one node.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use Time::HiRes qw(sleep time);
use RulesNginx;
use RulesCluster;

my $prefix = 't112:';
my $cluster = RulesCluster->new(args => ['--enable-debug-command', 'yes']);
my @masters = sort { $a <=> $b } keys %{ $cluster->masters };
my ($M1, $M2, $M3) = @masters;
my %is_master = map { $_ => 1 } @masters;
my @replicas = grep { !$is_master{$_} } $cluster->ports;
is(scalar @replicas, 3, '3 masters, 3 replicas');
my %id = map { $_ => $cluster->node_id($_) } @masters;

my $rules = '{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"}
]}';

sub cli { $cluster->cli(@_) }

sub slot_of { RulesCluster::key_slot("$prefix\{uid:$_[0]}") }

# a new user ("${name}N") whose key is on the master on $port, in a slot
# not in %$avoid
my $serial = 0;
sub user_on {
    my ($port, $name, $avoid) = @_;
    for (;;) {
        my $u = $name . $serial++;
        my $s = slot_of($u);
        next if $avoid && $avoid->{$s};
        return $u if ($cluster->slot_master($s) // 0) == $port;
    }
}

# commands to a node in one write ("+OK" each, or the first error)
sub pipeline {
    my ($port, @cmds) = @_;
    my $s = RulesNginx::redis_conn($port);
    my $out = '';
    for my $c (@cmds) {
        $out .= '*' . @$c . "\r\n";
        $out .= '$' . length($_) . "\r\n$_\r\n" for @$c;
    }
    print $s $out;
    for (@cmds) {
        my $r = RulesNginx::_redis_reply($s);
        if (ref $r eq 'HASH') {
            close $s;
            return $r->{err};
        }
    }
    close $s;
    return 'OK';
}

# DELSLOTS of $slot on every master, its owner first: a node that
# deleted it before the owner did would learn it again from the owner's
# next ping
sub delete_slot {
    my ($slot, $owner) = @_;
    return map { cli($_, 'CLUSTER', 'DELSLOTS', $slot) }
               $owner, grep { $_ != $owner } @masters;
}

my $ngx = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-112",
    workers => 1,
    files   => { 'rules.json' => $rules },
    http    => RulesNginx::pixel_http(
        store   => 'rules_redis_cluster ' . $cluster->seeds . ';',
        prefix  => $prefix,
        timeout => '20s',
        fields  => ['uid']));
my $started = time;

sub px { RulesNginx::pixel($ngx, "uid=$_[0]&ts=" . ($_[1] // 1000)) }
sub log_since { substr RulesNginx::error_log($ngx), $_[0] }
sub log_len { length RulesNginx::error_log($ngx) }
sub metric { RulesNginx::metric($ngx, $_[0]) // 0 }

ok($cluster->wait_nginx_ready($ngx, 1), 'worker ready');

# ---- 1. nodes that serve no slot -------------------------------------------

# the seeds that are replicas: connected, then closed after 5 s idle
for my $r (@replicas) {
    ok(RulesNginx::wait_log($ngx, qr/rules redis 127\.0\.0\.1:$r: connected/),
       "seed $r (a replica) connected");
}

# a key cached before they close: a connection that carried no state
# call says nothing of the values cached, so the worker keeps its cache
sub lookups {
    join ' ', map { metric("nginx_rules_state_cache_lookups_total{result=\"$_\"}") }
              qw(hit miss);
}
my $uc = user_on($M2, 'cached');
is(px($uc) . ' ' . px($uc, 1500), '204 ok [] 204 ok [twice]',
   'a key cached before the replicas close');
my $cached = lookups();
unlike(RulesNginx::error_log($ngx), qr/it serves no slot/,
       "no replica closed yet (lookups $cached)");
ok(RulesNginx::poll(10, sub {
       my $l = RulesNginx::error_log($ngx);
       !grep { $l !~ /closing 127\.0\.0\.1:$_: it serves no slot/ } @replicas
   }), 'the replicas closed: they serve no slot');
my $took = time - $started;
cmp_ok($took, '>=', 4.5, sprintf('after 5 s idle (%.1f s)', $took));
{
    my $l = RulesNginx::error_log($ngx);
    for my $r (@replicas) {
        like($l, qr/\[info\] \d+#\d+: rules redis cluster: closing 127\.0\.0\.1:$r: it serves no slot/,
             "$r: logged at info");
    }
    unlike($l, qr/closing 127\.0\.0\.1:($M1|$M2|$M3):/, 'no master closed');
}
{
    my ($hit, $miss) = split / /, $cached;
    is(px($uc, 1600), '204 ok [twice]', 'the cached key after they closed');
    is(lookups(), ($hit + 1) . " $miss", 'a cache hit: the cache was kept');
}
for my $m (@masters) {
    my $u = user_on($m, 'live');
    is(px($u) . ' ' . px($u, 2000), '204 ok [] 204 ok [twice]',
       "master $m: events go on");
}

# every slot of M1 goes to M2 (no key in them); M1, a master without a
# slot, imports slot X from M2
my ($m1_first, $m1_last);
for my $line (split /\n/, cli($M1, 'CLUSTER', 'NODES')) {
    next unless $line =~ /^$id{$M1} /;
    ($m1_first, $m1_last) = $line =~ / (\d+)-(\d+)$/;
}
ok(defined $m1_first, "M1 $M1 serves $m1_first-$m1_last");
my $ux = user_on($M2, 'ask');
my $slot_x = slot_of($ux);
is(cli($M1, 'FLUSHALL'), 'OK', 'M1 flushed');
# else M1, left without a slot, becomes a replica of M2
is(cli($M1, 'CONFIG', 'SET', 'cluster-allow-replica-migration', 'no'), 'OK',
   'M1 stays a master');
is(pipeline($_, map { ['CLUSTER', 'SETSLOT', $_, 'NODE', $id{$M2}] }
                    $m1_first .. $m1_last), 'OK', "$_: M1's slots to M2")
    for $M1, $M2, $M3;
cli($M2, 'CLUSTER', 'BUMPEPOCH');
is(cli($M1, 'CLUSTER', 'SETSLOT', $slot_x, 'IMPORTING', $id{$M2}), 'OK',
   "slot $slot_x importing at M1");
is(cli($M2, 'CLUSTER', 'SETSLOT', $slot_x, 'MIGRATING', $id{$M1}), 'OK',
   "slot $slot_x migrating at M2");
ok(RulesNginx::poll(10, sub { !grep { cli($_, 'CLUSTER', 'SLOTS') =~ /\b$M1\b/ }
                            @masters }), 'M1 serves no slot in any view');

my $len = log_len();
my $moved = metric('nginx_rules_cluster_redirects_total{type="moved"}');
my $um = user_on($M2, 'moved', { map { $_ => 1 } 0 .. $m1_first - 1,
                                 $m1_last + 1 .. 16383 });
is(px($um), '204 ok []', "an event of a moved slot, MOVED followed");
ok(RulesNginx::wait_log($ngx, qr/slot map from \S+: 2 masters/s, 5)
   && log_since($len) =~ /slot map from \S+: 2 masters/,
   'the next map: M1 has no slot');
my $t0 = time;
cmp_ok(metric('nginx_rules_cluster_redirects_total{type="moved"}'), '>',
       $moved, 'MOVED counted');

# M1 gets a call through ASK, and holds it for 12 s: closing M1 would
# fail it; the gc of 5 s and 10 s after the map must keep M1
is(cli($M1, 'CLIENT', 'PAUSE', 12000, 'ALL'), 'OK', 'M1 paused for 12 s');
my $ask = metric('nginx_rules_cluster_redirects_total{type="ask"}');
my $e = RulesNginx::send_get($ngx->{port}, "/px?uid=$ux&ts=1000", 20);
my $answered = IO::Select->new($e)->can_read(16);
my $waited = time - $t0;
ok($answered, sprintf('the event through ASK answered (%.1f s after the map)',
                      $waited));
my $l = log_since($len);
unlike($l, qr/closing 127\.0\.0\.1:$M1/, 'M1 kept while its call was in flight');
is(RulesNginx::pixel_answer($e), '204 ok []', 'the event applied at M1');
# M1 carried a state call: once it is closed, the cache goes (its last
# writes may not have reached a replica that took over)
my $uk = user_on($M2, 'kept');
is(px($uk) . ' ' . px($uk, 1500), '204 ok [] 204 ok [twice]',
   'a key cached before M1 closes');
my $before_m1 = lookups();
cmp_ok($waited, '>', 10.5, 'in flight past two gc rounds');
{
    my $c = RulesNginx::redis_conn($M1);
    RulesNginx::redis_call($c, 'ASKING');
    is(RulesNginx::redis_call($c, 'EXISTS', "$prefix\{uid:$ux}"), 1,
       'its key on M1');
    close $c;
}
cmp_ok(metric('nginx_rules_cluster_redirects_total{type="ask"}'), '>', $ask,
       'ASK counted');
ok(RulesNginx::wait_log($ngx, qr/closing 127\.0\.0\.1:$M1: it serves no slot/,
                        7),
   'M1 closed once idle');
like(log_since($len), qr/\[info\] \d+#\d+: rules redis cluster: closing 127\.0\.0\.1:$M1: it serves no slot/,
     'at info');
{
    my ($hit, $miss) = split / /, $before_m1;
    is(px($uk, 1600), '204 ok [twice]', 'the cached key after M1 closed');
    is(lookups(), "$hit " . ($miss + 1), 'a miss: the cache was forgotten');
}
cli($_, 'CLUSTER', 'SETSLOT', $slot_x, 'STABLE') for $M1, $M2;
for my $m ($M2, $M3) {
    my $u = user_on($m, 'after');
    is(px($u) . ' ' . px($u, 2000), '204 ok [] 204 ok [twice]',
       "master $m: events go on");
}
unlike(RulesNginx::error_log($ngx), qr/\[(alert|crit|emerg)\]/, 'no alert');

# ---- 2. a slot without a master: "CLUSTERDOWN Hash slot not served" --------

# M3's slot S, deleted on every master (cluster-require-full-coverage no)
my $ud = user_on($M3, 'down');
my $S = slot_of($ud);
is(px($ud), '204 ok []', "a user of slot $S, at M3");
my $uo = user_on($M2, 'other');
my %m0 = map { $_ => metric($_) } (
    'nginx_rules_events_total{status="error"}',
    'nginx_rules_failed_total{mode="open"}',
    'nginx_rules_cluster_slot_refreshes_total{result="ok"}');

sub delta { metric($_[0]) - $m0{$_[0]} }

sub rejected {
    my ($port) = @_;
    return cli($port, 'INFO', 'commandstats')
           =~ /cmdstat_evalsha:.*rejected_calls=(\d+)/ ? $1 : 0;
}

$len = log_len();
is(join(' ', delete_slot($S, $M3)), 'OK OK OK',
   "slot $S deleted on every master");
is(px($ud, 2000), '204 error []', 'its event: error, failed open');
my $t_logged = time;
like(log_since($len), qr/\[warn\] \d+#\d+: rules redis cluster: 127\.0\.0\.1:$M3: CLUSTERDOWN Hash slot not served$/m,
     'CLUSTERDOWN logged');
ok(RulesNginx::wait_log($ngx, qr/slots have no master/, 3),
   'a map came');
$l = log_since($len);
like($l, qr/\] \d+#\d+: rules redis cluster: slot map from \S+: 2 masters, 1 slot changed, some slots not served$/m,
     'the map without the slot');
like($l, qr/\[warn\] \d+#\d+: rules redis cluster: 1 of 16384 slots have no master: their events fail$/m,
     'the slot without master warned about');
my $rej = rejected($M3);
cmp_ok($rej, '>=', 1, 'M3 rejected the call');
is(px($ud, 3000), '204 error []', 'its next event: error');
is(rejected($M3), $rej, 'failed at once, not sent');
is(px($uo), '204 ok []', "an event at M2: ok");
is(scalar(() = log_since($len) =~ /CLUSTERDOWN/g), 1, 'one CLUSTERDOWN line');
is(delta('nginx_rules_events_total{status="error"}'), 2, 'events: 2 error');
is(delta('nginx_rules_failed_total{mode="open"}'), 2, 'failed open: 2');
cmp_ok(delta('nginx_rules_cluster_slot_refreshes_total{result="ok"}'), '>=',
       1, 'the map refreshed');

# S back, at M2 (M3's range is split in two): found by the check of
# every second (a slot without master)
is(cli($M2, 'CLUSTER', 'ADDSLOTS', $S), 'OK', "slot $S added at M2");
ok(RulesNginx::poll(5, sub { px($ud, 4000) eq '204 ok [twice]' }),
   'its events served again');

# ---- 3. the cluster down: one line a second ---------------------------------

# every master has heard that S is at M2 (gossip): a DELSLOTS of a slot
# a node still thinks unassigned is refused
ok(RulesNginx::poll(10, sub {
       !grep { ($cluster->slot_master($S, $_) // 0) != $M2 } @masters }),
   "every master sees slot $S at M2");
cli($_, 'CONFIG', 'SET', 'cluster-require-full-coverage', 'yes')
    for @masters;
is(join(' ', delete_slot($S, $M2)), 'OK OK OK',
   "slot $S deleted again on every master");
ok(RulesNginx::poll(5, sub { !grep { cli($_, 'CLUSTER', 'INFO') !~ /cluster_state:fail/ }
                           $M2, $M3 }),
   'the cluster is down (a slot not covered)');
my @uf = map { user_on($_, 'fail', { $S => 1 }) } $M2, $M3, $M2, $M3, $M2;
sleep 0.05 while time < $t_logged + 1.2;
$len = log_len();
is(px($uf[0]), '204 error []', 'an event fails');
my $t1 = time;
like(log_since($len), qr/\[warn\] \d+#\d+: rules redis cluster: 127\.0\.0\.1:(?:$M2|$M3): CLUSTERDOWN The cluster is down$/m,
     'logged');
is(join(' ', map { px($_) } @uf[1 .. 3]),
   join(' ', ('204 error []') x 3), 'three more fail');
my $fast = time - $t1 < 0.9;
SKIP: {
    skip 'the events took a second', 3 unless $fast;
    is(scalar(() = log_since($len) =~ /CLUSTERDOWN/g), 1, 'not logged (within 1 s)');
    sleep 0.05 while time < $t1 + 1.2;
    is(px($uf[4]), '204 error []', 'one more, 1 s later');
    like(log_since($len), qr/\[warn\] \d+#\d+: rules redis cluster: 127\.0\.0\.1:(?:$M2|$M3): CLUSTERDOWN The cluster is down \(and 3 more failures not logged\)$/m,
         'logged, with the count of the others');
}
$t_logged = time;
is(px($uf[0], 2000), '204 error []', 'and one more');
is(scalar(() = log_since($len) =~ /CLUSTERDOWN/g), 2, 'not logged');

is(cli($M2, 'CLUSTER', 'ADDSLOTS', $S), 'OK', "slot $S added at M2 again");
cli($_, 'CONFIG', 'SET', 'cluster-require-full-coverage', 'no') for @masters;
ok(RulesNginx::poll(5, sub { !grep { cli($_, 'CLUSTER', 'INFO') !~ /cluster_state:ok/ }
                           $M2, $M3 }),
   'the cluster is up');
ok(RulesNginx::poll(5, sub { px($ud, 5000) =~ /^204 ok / }), 'events served again');
is(px($uf[0], 3000) . ' ' . px($uf[1], 3000), '204 ok [] 204 ok []',
   'at both masters');

# ---- 4. a master loading its dataset: LOADING -------------------------------

my $uw = user_on($M3, 'load', { $S => 1 });
is(px($uw), '204 ok []', 'a user at M3');
is(cli($M3, 'DEBUG', 'POPULATE', 4000, "{uid:$uw}pop", 10), 'OK',
   'keys in its slot');
cli($M3, 'CONFIG', 'SET', 'loading-process-events-interval-bytes', 1024);
is(cli($M3, 'CONFIG', 'SET', 'key-load-delay', 500), 'OK',
   'M3 loads a key in 0.5 ms');
sleep 0.05 while time < $t_logged + 1.2;
my $pid = fork // die "fork: $!";
if ($pid == 0) {
    open STDOUT, '>', '/dev/null';
    exec 'redis-cli', '-p', $M3, 'DEBUG', 'RELOAD';
    exit 127;
}
RulesNginx::track_pid($pid);
ok(RulesNginx::poll(3, sub { cli($M3, 'INFO', 'persistence') =~ /^loading:1/m }),
   'M3 loading');
$len = log_len();
is(px($uw, 2000), '204 error []', 'its event: error');
like(log_since($len), qr/\[warn\] \d+#\d+: rules redis cluster: 127\.0\.0\.1:$M3: LOADING Redis is loading the dataset in memory \(and 1 more failure not logged\)$/m,
     'LOADING logged, with the failure not logged before');
is(px($uo, 2000), '204 ok [twice]', 'an event at M2: ok');
waitpid $pid, 0;
is($?, 0, 'M3 reloaded');
cli($M3, 'CONFIG', 'SET', 'key-load-delay', 0);
is(px($uw, 3000), '204 ok [twice]', 'its events served again');
unlike(RulesNginx::error_log($ngx), qr/\[(alert|crit|emerg)\]/, 'no alert');
RulesNginx::stop_nginx($ngx);

# ---- 5. a master announced by a host name -----------------------------------

cli($M2, 'CONFIG', 'SET', 'cluster-announce-hostname', '127.0.0.1');
cli($M3, 'CONFIG', 'SET', 'cluster-announce-hostname', 'm3.invalid');
cli($_, 'CONFIG', 'SET', 'cluster-preferred-endpoint-type', 'hostname')
    for $M2, $M3;
# (the replicas, without a host name, are "?": nginx skips replicas)
ok(RulesNginx::poll(5, sub { my $s = cli($M2, 'CLUSTER', 'SLOTS');
                     $s =~ /^m3\.invalid\n$M3$/m
                     && $s =~ /^127\.0\.0\.1\n$M2$/m }),
   'CLUSTER SLOTS of M2 names M3 "m3.invalid", M2 "127.0.0.1"');
my @m3_ranges;
my $m3_count = 0;
for my $line (split /\n/, cli($M3, 'CLUSTER', 'NODES')) {
    next unless $line =~ /^$id{$M3} /;
    my @f = split ' ', $line;
    @m3_ranges = @f[8 .. $#f];
    for (@m3_ranges) {
        my ($a, $b) = split /-/;
        $m3_count += ($b // $a) - $a + 1;
    }
}
cmp_ok(scalar @m3_ranges, '>=', 2, "M3 serves @m3_ranges");

$ngx = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-112b",
    workers => 1,
    files   => { 'rules.json' => $rules },
    http    => RulesNginx::pixel_http(
        store   => "rules_redis_cluster 127.0.0.1:$M2;",
        prefix  => $prefix,
        timeout => '2s',
        fields  => ['uid']));
ok(RulesNginx::wait_log($ngx, qr/slots have no master/, 5), 'a map');
my $u2 = user_on($M2, 'host');
my $u3 = user_on($M3, 'host');
is(px($u2), '204 ok []', 'an event at M2: ok');
is(px($u3), '204 error []', 'an event at M3: error');
ok(RulesNginx::poll(5, sub {
       metric('nginx_rules_cluster_slot_refreshes_total{result="ok"}') >= 3 }),
   'refreshed again (a check every second)');
$l = RulesNginx::error_log($ngx);
my @lines = $l =~ /^(.*not an IP address.*)$/mg;
is(scalar @lines, 1, 'the host name logged once') or diag(join "\n", @lines);
like($lines[0] // '', qr/\[error\] \d+#\d+: rules redis cluster: the master of slots \d+-\d+ is "m3\.invalid", not an IP address \(cluster-preferred-endpoint-type must be "ip"\): those slots are not served$/,
     'at error, with the slots, the name and the fix');
like($l, qr/\[warn\] \d+#\d+: rules redis cluster: $m3_count of 16384 slots have no master: their events fail$/m,
     "M3's $m3_count slots not served");
cli($_, 'CONFIG', 'SET', 'cluster-preferred-endpoint-type', 'ip')
    for $M2, $M3;
ok(RulesNginx::poll(5, sub { px($u3, 2000) =~ /^204 ok / }),
   'M3 served again with the type "ip"');
is(px($u2, 2000), '204 ok [twice]', 'M2 still');
$l = RulesNginx::error_log($ngx);
unlike($l, qr/\[(alert|crit|emerg)\]/, 'no alert');
RulesNginx::stop_nginx($ngx);

done_testing();
