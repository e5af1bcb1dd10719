# Redis killed and restarted, its scripts flushed, and an idle connection
# closed by Redis: events fail fast while it is down, updates resume with
# no manual step, and an idle close costs no event.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use RulesNginx;

my $redis = RulesNginx::start_redis();
my $port = $redis->{port};

my $ngx = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-063",
    workers => 1,
    files   => { 'rules.json' => <<'_EOC_' },
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"}
]}
_EOC_
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
    my @r;
    for (1 .. 100) {
        @r = px($q);
        return @r if $r[0] eq $want;
        sleep 0.1;
    }
    return @r;
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
my @closes;
my $deadline = time + 10 * $slow;
while (time < $deadline) {
    @closes = idle_closes();
    last if @closes > @before;
    sleep 0.01;
}
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
done_testing();
