# Redis Cluster: a slot map whose ranges overlap is refused whole.  Each
# slot has one master, so a CLUSTER SLOTS reply covers 16384 slots at
# most; one that covers more (a node that is not Redis, a proxy out of
# step, a corrupted stream) could make a worker write its map a billion
# times (65536 ranges of every slot) or connect to as many masters as the
# reply names.  The seed here is a RulesProxy in front of a real
# cluster's master, armed to replace its first CLUSTER SLOTS reply with
# two ranges of all 16384 slots: the refresh fails ("unexpected reply to
# CLUSTER SLOTS", counted), the next one gets the real map, and events
# are applied.  Then rules-replay through the same seed, its reply given
# a range of negative slots first (rules-replay wrote its map from the
# range's start, before the map: over its own node count, then read
# past its nodes): the range is skipped, the events applied.  Last, a
# master given as "127.0.0.", not an address as the C library reads one:
# its slots are not served, nor those of "127.0.0.1\0x"; and a map of
# 1001 masters (Redis Cluster is made for 1000) is refused before any of
# them is connected to.  A MOVED that names another slot than the
# call's is not followed.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep time);
use RulesNginx;
use RulesCluster;
use RulesProxy;
use RulesReplay;

my $dir = tempdir(CLEANUP => 1);
my $cluster = RulesCluster->new(masters => 3, replicas => 0);
my ($M1) = sort { $a <=> $b } keys %{ $cluster->masters };
my $proxy = RulesProxy::start(upstream => $M1, log => "$dir/proxy.log");

my $rules = '{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"}
]}';

# two ranges of every slot, both on M1 (as RESP2 CLUSTER SLOTS gives
# them: start, end, [host, port, id])
my $range = "*3\r\n:0\r\n:16383\r\n*3\r\n\$9\r\n127.0.0.1\r\n:$M1\r\n"
            . "\$3\r\nid1\r\n";
# the cluster's reply: three ranges, each master as [host, port, id,
# metadata]
RulesProxy::arm($proxy, 'raw', "*2\r\n$range$range",
                '\*3\r\n(?:\*3\r\n:\d+\r\n:\d+\r\n\*4\r\n\$\d+\r\n[0-9.]+\r\n'
                . ':\d+\r\n\$40\r\n[0-9a-f]{40}\r\n\*0\r\n){3}');

# an nginx whose seed is the proxy
sub start {
    return RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-113",
        workers => 1,
        files   => { 'rules.json' => $rules },
        http    => RulesNginx::pixel_http(
            store   => "rules_redis_cluster 127.0.0.1:$proxy->{port};",
            prefix  => 't113:',
            fields  => ['uid']));
}

my $ngx = start();

like(RulesProxy::armed($proxy, 'raw', 10) // '', qr/^raw \d+ bytes/,
     "the seed's first CLUSTER SLOTS reply replaced by overlapping ranges");

like(RulesNginx::wait_log($ngx, qr/slot map refresh failed/, 10),
     qr/\[warn\] \d+#\d+: rules redis cluster: slot map refresh failed: unexpected reply to CLUSTER SLOTS; retrying$/m,
     'the map is refused whole, at warn, and asked for again');

sub px {
    my ($q) = @_;
    my ($st, $h) = RulesNginx::get($ngx->{port}, "/px?$q");
    return join ' ', $h->{'x-status'} // '', $h->{'x-rules'} // '';
}

# the next refresh gets the cluster's own map: events are applied
my $got = RulesNginx::poll(10, sub { px('uid=u113&ts=1000') },
                           sub { $_[0] eq 'ok ' });
is($got, 'ok ', 'then the real map: an event is applied');
is(px('uid=u113&ts=2000'), 'ok twice', 'and the next sees its state');

cmp_ok(RulesNginx::metric($ngx,
           'nginx_rules_cluster_slot_refreshes_total{result="error"}') // 0,
       '>=', 1, 'the refused map is counted as a failed refresh');
like(RulesNginx::error_log($ngx), qr/slot map from \S+: 3 masters/,
     'the map taken is the cluster\'s: 3 masters');
unlike(RulesNginx::error_log($ngx), qr/\[(?:alert|crit|emerg)\]|exited on signal/,
       'no alert, no crash');

RulesNginx::stop_nginx($ngx);

SKIP: {
    my $replay = RulesReplay::binary();
    skip "no $replay", 4 unless -x $replay;
    open my $rf, '>', "$dir/rules.json" or die;
    print $rf $rules;
    close $rf;
    # the reply's first range made slots -4 to -1 of a node 127.0.0.1:1
    RulesProxy::arm($proxy, 'raw', "*4\r\n*3\r\n:-4\r\n:-1\r\n*2\r\n"
                                   . "\$9\r\n127.0.0.1\r\n:1\r\n",
                    '\A\*3\r\n(?=\*3\r\n:\d+\r\n:\d+\r\n\*4\r\n)');
    my $r = RulesReplay::run($dir,
        { in => qq({"uid":"r113","ts":1000}\n{"uid":"r113","ts":2000}\n) },
        '--redis-cluster', "127.0.0.1:$proxy->{port}", '--prefix', 't113r:');
    like(RulesProxy::armed($proxy, 'raw', 10) // '', qr/^raw \d+ bytes/,
         "rules-replay: the seed's CLUSTER SLOTS reply given a range of "
         . 'negative slots');
    is($r->{rc}, 0, 'rules-replay: exit 0') or diag($r->{err});
    is($r->{out}, qq({"matched":[]}\n{"matched":["twice"]}\n),
       'rules-replay: the range skipped, the events applied');
    is($r->{err}, '', 'rules-replay: nothing on stderr');
}

# The seed's first map with its first master's host replaced by $bulk
# (a RESP bulk string): its slots are not served, the host logged as
# $shown; then $check on the error log.
sub not_an_address {
    my ($bulk, $name, $shown, $check) = @_;
    RulesProxy::arm($proxy, 'raw', $bulk, '\$9\r\n127\.0\.0\.1\r\n');
    $ngx = start();
    like(RulesProxy::armed($proxy, 'raw', 10) // '', qr/^raw \d+ bytes/,
         "a CLUSTER SLOTS reply whose first master is \"$name\"");
    like(RulesNginx::wait_log($ngx, qr/not an IP address/, 10),
         qr/\[error\] \d+#\d+: rules redis cluster: the master of slots \d+-\d+ is "\Q$shown\E", not an IP address/,
         "$name: its slots are not served, logged as \"$shown\"");
    $check->(RulesNginx::error_log($ngx));
    RulesNginx::stop_nginx($ngx);
}

# A master given as "127.0.0.", which nginx's own address parser takes
# (as 127.0.0.0) and the C library does not: hiredis would look it up
# (getaddrinfo(), blocking the worker), so its slots are not served, as
# a host name's are.
not_an_address("\$8\r\n127.0.0.\r\n", '127.0.0.', '127.0.0.', sub {
    unlike($_[0], qr/127\.0\.0\.:/, 'no connection to it');
});

# A map of 1001 single-slot ranges, each its own master (ports 1 to 1001
# of 127.0.0.1, where no test listens): more masters than Redis Cluster is made
# for (1000), each a connection of every worker.  It is refused whole,
# before any node is made (no connection to any of them), and the next
# refresh gets the cluster's map.
{
    my $ranges = join '', map {
        "*3\r\n:$_\r\n:$_\r\n*3\r\n\$9\r\n127.0.0.1\r\n:"
        . (1 + $_) . "\r\n\$3\r\nid1\r\n"
    } 0 .. 1000;
    RulesProxy::arm($proxy, 'raw', "*1001\r\n$ranges",
                    '\*3\r\n(?:\*3\r\n:\d+\r\n:\d+\r\n\*4\r\n\$\d+\r\n'
                    . '[0-9.]+\r\n:\d+\r\n\$40\r\n[0-9a-f]{40}\r\n\*0\r\n){3}');
    $ngx = start();
    like(RulesProxy::armed($proxy, 'raw', 10) // '', qr/^raw \d+ bytes/,
         'a CLUSTER SLOTS reply of 1001 masters');
    like(RulesNginx::wait_log($ngx, qr/slot map refresh failed/, 10),
         qr/\[warn\] \d+#\d+: rules redis cluster: slot map refresh failed: CLUSTER SLOTS: 1001 masters, more than 1000; retrying$/m,
         'the map is refused whole, at warn, saying why');
    my $got = RulesNginx::poll(10, sub { px('uid=m113&ts=1000') },
                               sub { $_[0] eq 'ok ' });
    is($got, 'ok ', 'then the real map: an event is applied');
    like(RulesNginx::error_log($ngx), qr/slot map from \S+: 3 masters/,
         'the map taken is the cluster\'s: 3 masters');
    is_deeply([grep { $_ <= 1001 }
                   RulesNginx::error_log($ngx) =~ /127\.0\.0\.1:(\d+)\b/g],
              [], 'no node made for the refused map\'s masters');
    RulesNginx::stop_nginx($ngx);
}

# A master whose host holds a NUL byte ("127.0.0.1\0x"): the C library
# reads the address before it, the module's own lookups the whole string
# (no node ever found again: one per range, past the masters' bound), so
# it is not an address: its slots are not served, the host logged
# escaped.
not_an_address("\$11\r\n127.0.0.1\0x\r\n", '127.0.0.1\0x', '127.0.0.1%00x',
               sub { unlike($_[0], qr/\0/, 'no NUL byte in the log') });

# A MOVED that names another slot than the call's (a node or a proxy out
# of step): not followed, the event "error", logged; before, the named
# slot was given to the named node.  The map here names the proxy as the
# master of every slot, so that the calls of M1's slots go through it;
# its next state call reply (an array whose first element is Redis'
# clock) becomes a MOVED of the next slot to M2.
{
    my ($P, $M2) = ($proxy->{port},
                    grep { $_ != $M1 } sort { $a <=> $b }
                                       keys %{ $cluster->masters });
    RulesProxy::arm($proxy, 'raw',
                    "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n\$9\r\n127.0.0.1\r\n"
                    . ":$P\r\n\$3\r\nid1\r\n",
                    '\*3\r\n(?:\*3\r\n:\d+\r\n:\d+\r\n\*4\r\n\$\d+\r\n'
                    . '[0-9.]+\r\n:\d+\r\n\$40\r\n[0-9a-f]{40}\r\n\*0\r\n){3}');
    $ngx = start();
    like(RulesProxy::armed($proxy, 'raw', 10) // '', qr/^raw \d+ bytes/,
         'a map of one master, the proxy');
    my ($user, $slot);
    for my $i (0 .. 100000) {
        $slot = RulesCluster::key_slot("t113:{uid:w$i}");
        if (($cluster->slot_master($slot) // 0) == $M1) {
            $user = "w$i";
            last;
        }
    }
    is(RulesNginx::poll(10, sub { px("uid=$user&ts=1000") },
                        sub { $_[0] eq 'ok ' }),
       'ok ', "an event of slot $slot (M1's) through the proxy");
    my $wrong = ($slot + 1) % 16384;
    RulesProxy::arm($proxy, 'raw', "-MOVED $wrong 127.0.0.1:$M2\r\n",
                    '\A\*\d+\r\n:\d+\r\n[\s\S]*\z');
    my $len = length RulesNginx::error_log($ngx);
    is(px("uid=$user&ts=2000"), 'error ',
       "a MOVED of slot $wrong for a call of slot $slot: the event error");
    like(RulesProxy::armed($proxy, 'raw', 10) // '', qr/^raw \d+ bytes/,
         'the reply was replaced');
    like(substr(RulesNginx::error_log($ngx), $len),
         qr/\[warn\] \d+#\d+: rules redis cluster: cannot follow "MOVED $wrong 127\.0\.0\.1:$M2": the call's slot is $slot$/m,
         'not followed, logged at warn');
    is(px("uid=$user&ts=3000"), 'ok twice',
       'the next event of the slot goes as before');
    RulesNginx::stop_nginx($ngx);
}

RulesProxy::stop($proxy);
done_testing();
