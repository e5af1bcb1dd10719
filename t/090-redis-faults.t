# Redis faults under load.  While a load generator sends pixel events
# and JSON bodies over many keep-alive connections to two nginx, one
# talking to Redis directly and one through a proxy that can break
# connections, Redis is killed (SIGKILL) and restarted on its port,
# stopped (SIGSTOP/SIGCONT), paused (CLIENT PAUSE ... ALL), made slow
# (DEBUG SLEEP), its clients are killed (CLIENT KILL TYPE normal) with
# replies in flight, and the proxy resets or closes a connection in the
# middle of a reply, replaces a reply with bytes that are not RESP, or
# adds a reply to no command (hiredis asserts on one: the worker must
# drop the connection instead), or replaces a reply with an array
# header hiredis 0.14 mishandles: 2^31 - 1 elements (it would allocate a
# 16 GB vector and wait for them), 2^31 or 2^32 followed by an element
# (Debian's hiredis refuses them; one without that fix cuts the count
# to an int, negative or 0, and stores the element beyond the vector),
# or arrays of 65536 elements nested until more than 2^20 elements in
# all, or a line of more than 64 KB (one that never ends, one that ends
# too late): the worker must drop the connection instead, with the
# reason; or
# gives a state call's reply Redis' clock as -1 (its events must fail,
# not fold with it).  Asserted:
#
#   - no worker dies (same worker PIDs, no "exited on signal", no alert);
#   - every request is answered, and within rules_redis_timeout + 250 ms
#     measured by the client (none later);
#   - after each fault, updates resume with no manual step: an event is
#     ok again and the next one sees the state the first one wrote;
#   - repeated faults do not make the workers' descriptors or memory grow
#     (counted after a first round of every fault, and after the cycles);
#   - no event is left counted as in flight.
#
# The short form (make test) runs every fault once, then 10 cycles of
# quicker ones.  A longer run:
#
#   RULES_FAULT_CYCLES=200 RULES_FAULT_RATE=1000 \
#       t/run-tests.sh t/090-redis-faults.t
#
# Under valgrind or ASan (make test-valgrind, make test-asan) the rate is
# lower and latencies and memory are not asserted (the tools slow nginx
# down and own its memory); everything else is.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep time);
use RulesMemcheck;
use RulesNginx;
use RulesLoad;
use RulesProxy;

my $memcheck = RulesMemcheck::active();
my $CYCLES = $ENV{RULES_FAULT_CYCLES} // 10;
my $RATE = $ENV{RULES_FAULT_RATE}
           // (RulesMemcheck::valgrind() ? 30 : $memcheck ? 150 : 400);
my $CONNS = $ENV{RULES_FAULT_CONNS} // 16;      # per nginx
my $TIMEOUT_MS = 100;                           # rules_redis_timeout
my $MARGIN_MS = 250;
my $RSS_SLACK_KB = $ENV{RULES_FAULT_RSS_SLACK_KB} // 1024;
my $RECOVERY_SECS = 20 * ($memcheck ? 3 : 1);

my $dir = tempdir(CLEANUP => 1);
my @redis_args = ('--enable-debug-command', 'yes');
my $redis = RulesNginx::start_redis(args => \@redis_args);
my $rport = $redis->{port};
my $proxy = RulesProxy::start(upstream => $rport, log => "$dir/proxy.log");

# SPEC.md's rules
my $rules = <<'_EOC_';
{"rules": [
  {"id": "visited_twice_week", "kind": "segment", "key": "uid",
   "type": "count", "where": {"field": "type", "eq": "page"},
   "min": 2, "within": "7d"},
  {"id": "viewed_not_carted", "kind": "segment", "key": "uid",
   "type": "absence",
   "trigger": {"all": [{"field": "type", "eq": "view"},
                       {"field": "product", "eq": "P42"}]},
   "cancel": {"all": [{"field": "type", "eq": "cart"},
                      {"field": "product", "eq": "P42"}]},
   "after": "0s", "within": "30d"},
  {"id": "home_sale_buy", "kind": "segment", "key": "uid",
   "type": "sequence",
   "steps": [{"where": {"field": "path", "eq": "/home"}},
             {"where": {"field": "path", "prefix": "/sale"}},
             {"where": {"all": [{"field": "type", "eq": "purchase"},
                                {"field": "product", "eq": "P42"}]}}],
   "within": "1h", "hold": "30d"},
  {"id": "ip_burst", "kind": "fraud", "key": "ip", "type": "count",
   "min": 21, "within": "10s"},
  {"id": "device_many_users", "kind": "fraud", "key": "device",
   "type": "distinct", "field": "uid", "min": 5, "within": "1h"}
]}
_EOC_

sub start_nginx {
    my ($name, $port) = @_;
    return RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-090-$name",
        workers => 1,
        files   => { 'rules.json' => $rules },
        http    => <<"_EOC_");
    rules_redis 127.0.0.1:$port;
    rules_redis_timeout ${TIMEOUT_MS}ms;
    rules_key_prefix "t090:";
    rules_file ../html/rules.json;
    # full after the first round (the load has ~8500 keys): the cache is
    # then at its bound, and the memory check sees leaks, not a cache
    # still filling
    rules_state_cache 256k;
    server {
        listen 127.0.0.1:\$PORT;
        location = /px {
            rules on;
            rules_field uid     \$arg_uid;
            rules_field ip      \$arg_ip;
            rules_field device  \$arg_d;
            rules_field type    \$arg_e;
            rules_field product \$arg_p;
            rules_field path    \$arg_u;
            add_header X-Status \$rules_status always;
            add_header X-Rules \$rules_matched always;
            return 204;
        }
        location = /events {
            rules on;
            rules_body json;
            rules_field ip \$remote_addr;
            add_header X-Status \$rules_status always;
            return 204;
        }
        location = /metrics { rules_metrics; }
    }
_EOC_
}

my @ngx = (start_nginx('direct', $rport),
           start_nginx('proxied', $proxy->{port}));
my @names = ('direct', 'proxied');
my %workers = map { $names[$_] => [RulesNginx::worker_pids($ngx[$_])] } 0, 1;
is(scalar @{ $workers{$_} }, 1, "$_: one worker") for @names;

my @types = qw(page page view cart purchase click);
my @paths = qw(/home /sale /sale/shoes /cart /p/42);

sub request {
    my ($seq) = @_;
    my $ev = sub {
        (uid => 'u' . int(rand 5000), ip => '10.1.' . int(rand 12) . '.'
         . int(rand 250), d => 'd' . int(rand 500),
         e => $types[rand @types], p => 'P' . (40 + int(rand 4)),
         u => $paths[rand @paths]);
    };
    if ($seq % 5 == 4) {
        # a JSON body of three events
        my $body = '[' . join(',', map {
            my %e = $ev->();
            sprintf '{"uid":"%s","device":"%s","type":"%s","product":"%s",'
                    . '"path":"%s"}', @e{qw(uid d e p u)};
        } 1 .. 3) . ']';
        return "POST /events HTTP/1.1\r\nHost: localhost\r\n"
               . "Content-Type: application/json\r\n"
               . 'Content-Length: ' . length($body) . "\r\n\r\n$body";
    }
    my %e = $ev->();
    my $q = join '&', map { "$_=$e{$_}" } qw(uid ip d e p u);
    return "GET /px?$q HTTP/1.1\r\nHost: localhost\r\n\r\n";
}

# Updates work: an event is ok (waiting for the reconnection), and the
# next event of the same user sees the state it wrote.  '' or what failed.
my $probes = 0;
sub recovered {
    my ($ngx) = @_;
    my $uid = 'probe-' . $$ . '-' . $probes++;
    my $st = RulesNginx::poll($RECOVERY_SECS, sub {
        my (undef, $h) = RulesNginx::get($ngx->{port}, "/px?uid=$uid&e=page");
        $h->{'x-status'} // '';
    }, sub { $_[0] eq 'ok' });
    return "no ok event in $RECOVERY_SECS s (last: \"$st\")" if $st ne 'ok';
    my (undef, $h) = RulesNginx::get($ngx->{port}, "/px?uid=$uid&e=page");
    my ($s2, $m) = ($h->{'x-status'} // '', $h->{'x-rules'} // '');
    return "second event: status \"$s2\", matched \"$m\""
        unless $s2 eq 'ok' && $m =~ /\bvisited_twice_week\b/;
    return '';
}

sub redis {
    return RulesNginx::redis_cmd($rport, @_) // '(no reply)';
}

# Each fault: does it, returns what happened ('' when it did not work).
my %fault = (
    kill => sub {
        my ($down) = @_;
        RulesNginx::stop_pid($redis->{pid}, 'KILL');
        sleep $down;
        $redis = RulesNginx::start_redis(port => $rport,
                                         args => \@redis_args);
        return "SIGKILL, restarted after ${down}s";
    },
    stop => sub {
        my ($secs) = @_;
        kill 'STOP', $redis->{pid};
        sleep $secs;
        kill 'CONT', $redis->{pid};
        return "SIGSTOP for ${secs}s";
    },
    pause => sub {
        my ($ms) = @_;
        my $r = redis('CLIENT', 'PAUSE', $ms, 'ALL');
        sleep $ms / 1000 + 0.1;
        return $r eq '+OK' ? "CLIENT PAUSE $ms ALL" : '';
    },
    sleep => sub {
        my $t0 = time;
        my $r = redis('DEBUG', 'SLEEP', '0.5');
        return $r eq '+OK' && time - $t0 >= 0.45 ? 'DEBUG SLEEP 0.5' : '';
    },
    client_kill => sub {
        my $r = redis('CLIENT', 'KILL', 'TYPE', 'normal');
        return $r =~ /^:([1-9]\d*)$/ ? "CLIENT KILL: $1 clients" : '';
    },
);

# the proxy's faults: what it logged (bytes forwarded of those received,
# or clients written to)
my %proxy_fault = (
    rst   => 'reset mid-reply',
    fin   => 'closed mid-reply',
    junk  => 'a reply replaced by junk',
    extra => 'a reply to no command after a reply',
    stray => 'a reply to no command, sent to idle clients',
    clock => "a state call's reply with Redis' clock at -1",
);
for my $how (keys %proxy_fault) {
    $fault{$how} = sub {
        my $r = RulesProxy::cut($proxy, $how);
        return $r ? "$proxy_fault{$how} ($r)" : '';
    };
}

# replies replaced by bytes of the proxy's choosing, and the reason the
# worker must log for each
my $wide = "*65536\r\n" . ("*65536\r\n" . (":0\r\n" x 65536)) x 15
           . "*65536\r\n";
my %raw_fault = (
    huge  => ["*2147483647\r\n",
              qr/connection lost: an array reply of 2147483647 elements \(the module takes 65536 at most\)/],
    # hiredis' reason (Debian's), or the module's (a hiredis without the
    # fix)
    wrap  => ["*2147483648\r\n:1\r\n",
              qr/connection lost: (?:Multi-bulk length out of range|an array reply of 2\^31 or more elements \(the module takes 65536 at most\))/],
    wrap0 => ["*4294967296\r\n:1\r\n",
              qr/connection lost: (?:Multi-bulk length out of range|an array reply with more elements than its length \(a length of 2\^32 or more\))/],
    wide  => [$wide,
              qr/connection lost: a reply of more than 1048576 elements in all its arrays/],
    # a status line that never ends (hiredis would scan it all again on
    # every read), and an error line that ends past the bound (refused
    # when it ends, or before if a read left more than the bound unended)
    line  => ['+' . ('x' x 200000),
              qr/connection lost: a reply line of more than 65536 bytes \(the module takes 65536 at most\)/],
    long  => ['-' . ('E' x 70000) . "\r\n",
              qr/connection lost: a reply line of (?:more than 65536|69999|70000) bytes \(the module takes 65536 at most\)/],
);
for my $how (keys %raw_fault) {
    $fault{$how} = sub {
        my $r = RulesProxy::cut($proxy, 'raw', $raw_fault{$how}[0]);
        return $r ? "a reply replaced ($r)" : '';
    };
}

sub inject {
    my ($what, $arg) = @_;
    my $t0 = time;
    my $done = $fault{$what}->($arg);
    ok($done, "fault $what: injected" . ($done ? " ($done)" : ''));
    for my $i (0, 1) {
        my $err = recovered($ngx[$i]);
        ok(!$err, "fault $what: $names[$i]: updates resume")
            or diag($err);
    }
    note(sprintf 'fault %s: %.1f s to recovery', $what, time - $t0);
}

sub check_load {
    my ($phase, $s) = @_;
    if ($s->{error}) {
        fail("$phase: load generator: $s->{error}");
        return;
    }
    my $bound = ($TIMEOUT_MS + $MARGIN_MS) / 1000;
    note(sprintf "%s: %d requests in %s s, statuses %s, p50 %.1f ms, "
                 . "p99 %.1f ms, max %.1f ms, %d connections", $phase,
         $s->{requests}, $s->{seconds},
         join(' ', map { "$_=$s->{status}{$_}" } sort keys %{ $s->{status} }),
         $s->{p50} * 1000, $s->{p99} * 1000, $s->{max} * 1000,
         $s->{connects});
    ok($s->{requests} > 0, "$phase: requests were sent");
    is($s->{failed} + $s->{unanswered}, 0,
       "$phase: every request answered (failed $s->{failed}, "
       . "unanswered $s->{unanswered})");
    is_deeply([keys %{ $s->{code} }], [204], "$phase: every response 204")
        or diag(explain($s->{code}));
    SKIP: {
        skip 'latency: not under valgrind or ASan', 1 if $memcheck;
        is($s->{late}, 0, "$phase: no request answered after "
                          . ($TIMEOUT_MS + $MARGIN_MS) . ' ms (max '
                          . sprintf('%.0f', $s->{max} * 1000) . ' ms)')
            or diag(join "\n", @{ $s->{late_list} });
    }
    return $s;
}

# descriptors and memory of a worker once it is idle: no client
# connection left, the Redis one made
sub idle_usage {
    my ($pid, $want_fds) = @_;
    my ($prev, $n) = (-1, -1);
    my $deadline = time + 10 * ($memcheck ? 3 : 1);
    while (time < $deadline) {
        $n = RulesNginx::fd_count($pid) // -1;
        last if defined $want_fds ? $n <= $want_fds : $n == $prev;
        $prev = $n;
        sleep 0.25;
    }
    return ($n, RulesNginx::rss_kb($pid) // 0);
}

# ---- round 1: every fault once, under load -----------------------------

my @ports = map { $_->{port} } @ngx;
my %load = (ports => \@ports, conns => $CONNS, rate => $RATE,
            bound => ($TIMEOUT_MS + $MARGIN_MS) / 1000,
            request => \&request);

for my $i (0, 1) {
    my $err = recovered($ngx[$i]);
    ok(!$err, "$names[$i]: connected, updates work") or diag($err);
}

my $load = RulesLoad::start(%load, out => "$dir/load-1");
sleep 2;
inject('sleep');
inject('client_kill');
inject('rst');
inject('fin');
inject('junk');
inject('extra');
inject($_) for sort keys %raw_fault;
inject('clock');
inject('pause', 1500);
inject('stop', 1.5);
inject('kill', 1);
sleep 1;
my $s1 = check_load('every fault once', RulesLoad::stop($load));
ok(($s1->{status}{ok} // 0) > 0, 'every fault once: events were ok');
ok(($s1->{status}{timeout} // 0) + ($s1->{status}{error} // 0) > 0,
   'every fault once: and some failed (the faults were felt)');

my (%fd0, %rss0);
for my $i (0, 1) {
    my $w = $workers{ $names[$i] }[0];
    ($fd0{$w}, $rss0{$w}) = idle_usage($w);
    note("$names[$i] worker $w after the first round: $fd0{$w} fds, "
         . "$rss0{$w} kB");
}

# ---- repeated faults ------------------------------------------------------

my @cycle = (['client_kill'], ['rst'], ['sleep'], ['fin'], ['stop', 0.6],
             ['junk'], ['pause', 600], ['extra'], ['huge'], ['kill', 0.3]);
$load = RulesLoad::start(%load, out => "$dir/load-2");
my $t0 = time;
for my $c (1 .. $CYCLES) {
    inject(@{ $cycle[($c - 1) % @cycle] });
}
sleep 1;
check_load("$CYCLES fault cycles", RulesLoad::stop($load));
note(sprintf '%d cycles in %.1f s', $CYCLES, time - $t0);

# without load: a reply to no command finds nothing waiting
inject('stray');

for my $i (0, 1) {
    my $w = $workers{ $names[$i] }[0];
    my ($fd, $rss) = idle_usage($w, $fd0{$w});
    note("$names[$i] worker $w after $CYCLES cycles: $fd fds, $rss kB "
         . '(' . ($rss - $rss0{$w}) . ' kB)');
    is($fd, $fd0{$w}, "$names[$i]: descriptors do not grow "
                      . "($fd0{$w} -> $fd)");
    SKIP: {
        skip 'memory: not under valgrind or ASan', 1 if $memcheck;
        cmp_ok($rss - $rss0{$w}, '<=', $RSS_SLACK_KB,
               "$names[$i]: memory does not grow ($rss0{$w} -> $rss kB)");
    }
}

for my $i (0, 1) {
    is(RulesNginx::metric($ngx[$i], 'nginx_rules_inflight_events'), 0,
       "$names[$i]: no event left in flight");
    cmp_ok(RulesNginx::metric($ngx[$i],
                              'nginx_rules_redis_reconnects_total') // 0,
           '>', 0, "$names[$i]: reconnections counted");
    is_deeply([RulesNginx::worker_pids($ngx[$i])], $workers{ $names[$i] },
              "$names[$i]: the same worker process throughout");
    my $log = RulesNginx::error_log($ngx[$i]);
    unlike($log, qr/exited on signal/, "$names[$i]: no worker crashed");
    unlike($log, qr/\[(?:alert|crit|emerg)\]/,
           "$names[$i]: no alert in the error log")
        or diag(join "\n", grep { /\[(?:alert|crit|emerg)\]/ }
                           split /\n/, $log);
}

{
    my $log = RulesNginx::error_log($ngx[1]);
    like($log, qr/connection lost: a reply to no command \(not a Redis server, or a proxy out of step\)/,
         'proxied: a reply to no command drops the connection, with that '
         . 'reason');
    # the extra replies, with calls in flight or none
    my $n = () = $log =~ /connection lost: (?:a reply to no command|replies out of step)/g;
    cmp_ok($n, '>=', 3, "proxied: every reply too many dropped the "
                        . "connection ($n)");
    for my $how (sort keys %raw_fault) {
        my $want = $raw_fault{$how}[1];
        # under ASan or valgrind the worker may take more than the
        # second without a whole reply that drops a connection (the
        # watchdog) to read wide's 4 MB up to the bound
        $want = qr/$want|connection lost: no reply for \d+ ms/
            if $memcheck && $how eq 'wide';
        like($log, $want, "proxied: fault $how drops the connection, with "
                          . 'its reason');
    }
    # folded with it, every record would expire: the call's events fail
    like($log, qr/unexpected reply to the state call: Redis' clock is not a time/,
         "proxied: a state call's reply with Redis' clock at -1 is refused");
}

RulesProxy::stop($proxy);
RulesNginx::stop_nginx($_) for @ngx;
done_testing();
