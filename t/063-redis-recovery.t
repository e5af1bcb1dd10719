# Redis killed and restarted, its scripts flushed, and an idle connection
# closed by Redis: events fail fast while it is down, updates resume with
# no manual step, and an idle close costs no event.  A worker's first
# connection, slow to be made: its events wait for it (a reload's new
# workers fail none), within their deadline.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use RulesNginx;
use RulesProxy;

my $redis = RulesNginx::start_redis();
my $port = $redis->{port};

# the rules of each nginx here
my $TWICE = <<'_EOC_';
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"}
]}
_EOC_

my $ngx = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-063",
    workers => 1,
    files   => { 'rules.json' => $TWICE },
    http    => <<"_EOC_");
    rules_redis 127.0.0.1:$port;
    rules_redis_timeout 200ms;
    rules_file ../html/rules.json;
    server {
        listen 127.0.0.1:\$PORT;
        location = /px {
            rules on;
            rules_field uid \$arg_uid;
            rules_time \$arg_ts;
            add_header X-Rules \$rules_matched always;
            add_header X-Status \$rules_status always;
            return 204;
        }
    }
_EOC_

sub px {
    my ($q) = @_;
    my $t0 = time;
    my ($st, $h) = RulesNginx::get($ngx->{port}, "/px?$q");
    return ($h->{'x-status'} // '', $h->{'x-rules'} // '', time - $t0);
}

sub wait_status {
    my ($want, $q) = @_;
    my $secs = 20 * RulesMemcheck::slowdown();
    return @{ RulesNginx::poll($secs, sub { [px($q)] },
                               sub { $_[0][0] eq $want }, 0.1) };
}

my @r = wait_status('ok', 'uid=a&ts=1000');
is($r[0], 'ok', 'connected: status ok');

RulesNginx::stop_pid($redis->{pid}, 'KILL');
@r = wait_status('error', 'uid=a&ts=1500');
is($r[0], 'error', 'Redis killed: status error');
my @slow = grep { (px("uid=a&ts=1600"))[2] > 0.5 } 1 .. 5;
is(scalar @slow, 0, 'while Redis is down, events fail fast');

$redis = RulesNginx::start_redis(port => $port);
@r = wait_status('ok', 'uid=b&ts=2000');
is($r[0], 'ok', 'Redis restarted: updates resume (script reloaded)');
@r = px('uid=b&ts=2001');
is($r[1], 'twice', 'state is written again after the restart');

# SCRIPT FLUSH while connected: NOSCRIPT is answered by EVAL, once
my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die;
print $s "SCRIPT FLUSH\r\n";
my $line = <$s>;
is($line, "+OK\r\n", 'scripts flushed');
@r = px('uid=c&ts=3000');
is($r[0], 'ok', 'after SCRIPT FLUSH: status ok (NOSCRIPT recovered)');
@r = px('uid=c&ts=3001');
is_deeply([@r[0, 1]], ['ok', 'twice'], 'and the next event too');

# Redis closes idle connections (its "timeout"): the worker makes its
# own again at once, not after the back-off (100 ms), so an event right
# after the close finds one
sub idle_closes {
    my @l = RulesNginx::error_log($ngx) =~ /closed while idle.*$/mg;
    return @l;
}
my @before = idle_closes();
is(RulesNginx::redis_cmd($port, 'CONFIG', 'SET', 'timeout', '2'), '+OK',
   'Redis closes connections idle for 2 s');
my $slow = RulesMemcheck::slowdown();
my @closes = @{ RulesNginx::poll(10 * $slow, sub { [idle_closes()] },
                                  sub { @{ $_[0] } > @before }, 0.01) };
cmp_ok(scalar @closes, '>', scalar @before,
       'the worker\'s idle connection closed by Redis');
sleep 0.03 * $slow;
@r = px('uid=d&ts=4000');
is($r[0], 'ok', 'an event 30 ms later: ok (connection made again at once)');
like($closes[-1] // '', qr/: .*, reconnecting$/,
     'logged: reconnecting at once');
is(RulesNginx::redis_cmd($port, 'CONFIG', 'SET', 'timeout', '0'), '+OK',
   'Redis\' idle timeout off again');

my $log = RulesNginx::error_log($ngx);
unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alert in the error log');
unlike($log, qr/exited on signal/, 'no worker crashed');

RulesNginx::stop_nginx($ngx);

# A first connection that takes a second to be made: a listener whose
# accept queue is full (backlog 1, two connections waiting in it) drops
# the worker's SYN; once the queue is emptied, the SYN sent again (about
# 1 s later) is taken, and a proxy forwards to Redis.  The event sent
# right after the start waits for the connection: before, it failed at
# once (status error) while the connection was being made.
my $listen = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                   LocalPort => 0, ReuseAddr => 1)
    or die "listen: $!";
my $slow_port = $listen->sockport;
my @fillers = map {
    IO::Socket::INET->new(PeerAddr => "127.0.0.1:$slow_port")
        or die "connect: $!"
} 1 .. 2;

my $ngx2 = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-063b",
    workers => 1,
    files   => { 'rules.json' => $TWICE },
    http    => RulesNginx::pixel_http(
        store   => "rules_redis 127.0.0.1:$slow_port;\n"
                   . "    rules_redis_connect_timeout 10s;",
        prefix  => 't063b:',
        timeout => (5 * $slow) . 's',
        fields  => ['uid']));

my $t0 = time;
my $s1 = RulesNginx::send_get($ngx2->{port}, '/px?uid=e&ts=1000', 20);
sleep 0.3;

# the queue emptied: the worker's SYN, sent again, is taken next
for (@fillers) {
    my $held = $listen->accept;
    close $held if $held;
    close $_;
}
my $proxy = RulesProxy::start(listen => $listen, upstream => $port,
                              log => "$FindBin::Bin/servroot-063b/proxy.log");

my $first = RulesNginx::pixel_answer($s1);
my $waited = time - $t0;
is($first, '204 ok []', 'the first event waited for the first connection');
cmp_ok($waited, '>', 0.5, "it waited for the SYN sent again "
       . "(${\ sprintf '%.2f', $waited} s)");
is(RulesNginx::pixel_answer(
       RulesNginx::send_get($ngx2->{port}, '/px?uid=e&ts=2000')),
   '204 ok [twice]', 'its state was written: the next event matches');

$log = RulesNginx::error_log($ngx2);
unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alert in the error log');
RulesNginx::stop_nginx($ngx2);
RulesProxy::stop($proxy);

# A slow Redis that keeps answering is not dropped: the watchdog (no
# reply for max(1 s, rules_redis_timeout) while replies are due) counts
# from the last reply, not from the first call still waiting.  A proxy
# holds Redis' replies: event A's call waits, B's is sent 1.2 s later,
# A's reply goes through at 1.6 s, B's at 2.6 s; when the watchdog's
# timer fires (2 s after A's call) B waits, but a reply came 0.4 s
# before: the connection stays, and B is answered ok within its own
# deadline (2 s).
my $proxy3 = RulesProxy::start(upstream => $port,
                               log => "$FindBin::Bin/servroot-063c.proxy.log");
my $ngx3 = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-063c",
    workers => 1,
    files   => { 'rules.json' => $TWICE },
    http    => RulesNginx::pixel_http(
        store   => "rules_redis 127.0.0.1:$proxy3->{port};",
        prefix  => "t063c:$$:",
        timeout => (2 * $slow) . 's',
        fields  => ['uid']));
is(RulesNginx::pixel_answer(
       RulesNginx::send_get($ngx3->{port}, '/px?uid=w0&ts=1000')),
   '204 ok []', 'through the proxy: connected');

RulesProxy::hold($proxy3);
my $ta = time;
my $sa = RulesNginx::send_get($ngx3->{port}, '/px?uid=wa&ts=1000', 20);
sleep 1.2 * $slow;
my $sb = RulesNginx::send_get($ngx3->{port}, '/px?uid=wb&ts=1000', 20);
RulesNginx::poll(5 * $slow, sub { RulesProxy::held($proxy3) },
                 sub { $_[0] >= 2 });
is(RulesProxy::held($proxy3), 2, 'both calls made, their replies held');
sleep $ta + 1.6 * $slow - time if time < $ta + 1.6 * $slow;
RulesProxy::release($proxy3, 'one');
is(RulesNginx::pixel_answer($sa), '204 ok []', "A's reply: A answered ok");
sleep $ta + 2.6 * $slow - time if time < $ta + 2.6 * $slow;
RulesProxy::release($proxy3, 'all');
is(RulesNginx::pixel_answer($sb), '204 ok []',
   'B answered ok: the connection outlived the first timer');
$log = RulesNginx::error_log($ngx3);
unlike($log, qr/no reply for|connection lost|connection closed/,
       'the watchdog did not drop the connection');
is(RulesNginx::metric($ngx3, 'nginx_rules_events_total{status="ok"}'), 3,
   'events_total{status="ok"} 3');
is(RulesNginx::metric($ngx3, 'nginx_rules_redis_reconnects_total'), 0,
   'no reconnect');
unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alert in the error log');
RulesNginx::stop_nginx($ngx3);
RulesProxy::stop($proxy3);

done_testing();
