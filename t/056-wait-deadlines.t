# Each request that waits for Redis has its own deadline
# (rules_redis_timeout from the moment it started waiting), though a
# worker keeps one timer for all of them (the oldest wait's): a later
# request is not answered at an earlier one's deadline, a request that
# leaves does not take the others' deadlines with it, and a worker with
# nothing waiting keeps no timer that would hold a graceful exit.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time sleep);
use RulesNginx;

my $slow = RulesMemcheck::slowdown();

my $rules = <<'_EOC_';
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "7d"}
]}
_EOC_

sub http_body {
    my ($redis_port, $timeout) = @_;
    return RulesNginx::pixel_http(
        store   => "rules_redis 127.0.0.1:$redis_port;",
        timeout => $timeout,
        prefix  => "t056:$$:",
        fields  => ['uid']);
}

# sends a request on a new connection; returns the socket
sub send_px {
    my ($port, $uid) = @_;
    my $s = RulesNginx::send_get($port, "/px?uid=$uid&ts=1000")
        or die "connect: $!";
    return $s;
}

# a listening socket on a free loopback port (an upstream that is this
# script)
sub listener {
    my $l = IO::Socket::INET->new(Listen => 8, LocalAddr => '127.0.0.1',
                                  LocalPort => 0, ReuseAddr => 1)
        or die "listen: $!";
    return $l;
}

# reads the whole response; returns (status, X-Status, seconds since
# $since)
sub read_px {
    my ($s, $since) = @_;
    my ($code, $h) = RulesNginx::read_response($s);
    return ($code, $h->{'x-status'} // '', time - $since);
}


# A redis-server stopped with SIGSTOP: calls are accepted, never answered.
# Each case has an nginx of its own: after a second without a reply the
# worker gives the connection up (and the waiting events fail with
# status error), so a case stays well within that second.
my $paused = RulesNginx::start_redis();
kill 'STOP', $paused->{pid};

my $ngx;
my $errors = '';

# a new nginx on the paused Redis: rules_redis_timeout $timeout (400ms),
# main-context directives $main
sub paused_nginx {
    my ($timeout, $main) = @_;
    if ($ngx) {
        $errors .= RulesNginx::error_log($ngx);
        RulesNginx::stop_nginx($ngx);
    }
    $ngx = RulesNginx::start_nginx(
        prefix => "$FindBin::Bin/servroot-056",
        files  => { 'rules.json' => $rules },
        main   => $main,
        http   => http_body($paused->{port}, $timeout // '400ms'));
}

my $late = 0.4 + 0.5 * $slow;

# two waits 200 ms apart: each ends at its own deadline

{
    paused_nginx();
    my $t0 = time;
    my $a = send_px($ngx->{port}, 'a');
    sleep 0.2;
    my $t1 = time;
    my $b = send_px($ngx->{port}, 'b');

    my ($ca, $sa, $ta) = read_px($a, $t0);
    my ($cb, $sb, $tb) = read_px($b, $t1);

    is("$ca $sa", '204 timeout', 'first wait: answered, status timeout');
    is("$cb $sb", '204 timeout', 'second wait: answered, status timeout');
    cmp_ok($ta, '>=', 0.35, "first answered at its deadline ($ta s)");
    cmp_ok($ta, '<', $late, "first not late ($ta s)");
    cmp_ok($tb, '>=', 0.35,
           "second answered at its own deadline, not the first's ($tb s)");
    cmp_ok($tb, '<', $late, "second not late ($tb s)");
}

# the oldest wait leaves (its client closes): the next one still ends at
# its deadline

{
    paused_nginx();
    my $a = send_px($ngx->{port}, 'c');
    sleep 0.1;
    my $t1 = time;
    my $b = send_px($ngx->{port}, 'd');
    sleep 0.1;
    close $a;

    my ($cb, $sb, $tb) = read_px($b, $t1);

    is("$cb $sb", '204 timeout', 'after the oldest left: answered, timeout');
    cmp_ok($tb, '>=', 0.35, "at its own deadline ($tb s)");
    cmp_ok($tb, '<', $late, "not late ($tb s)");
}

# waits started one after the other: every one answered, none before its
# deadline

{
    paused_nginx();
    my @w;
    for my $i (1 .. 10) {
        push @w, [send_px($ngx->{port}, "m$i"), time];
        sleep 0.03;
    }

    my ($ok, $early, $slow_ones) = (0, 0, 0);
    for my $w (@w) {
        my ($c, $st, $t) = read_px(@$w);
        $ok++ if $c == 204 && $st eq 'timeout';
        $early++ if $t < 0.35;
        $slow_ones++ if $t >= $late;
    }

    is($ok, 10, '10 staggered waits: all answered, status timeout');
    is($early, 0, 'none before its deadline');
    is($slow_ones, 0, 'none late');
}

# 20 waits that end together (a Redis that stalls under load): a line a
# second in the error log, not one per request (it was 20 lines)

{
    paused_nginx();
    my @w = map { send_px($ngx->{port}, "burst$_") } 1 .. 20;
    my $ok = 0;
    for my $s (@w) {
        my ($c, $st) = read_px($s, time);
        $ok++ if $c == 204 && $st eq 'timeout';
    }
    is($ok, 20, '20 waits at once: all answered, status timeout');
    my @lines = RulesNginx::error_log($ngx)
                =~ /(redis reply not received in time.*)/g;
    cmp_ok(scalar @lines, '>=', 1, 'the timeouts are logged');
    # (their deadlines spread over the time the 20 took to send: two
    # seconds at most, more under valgrind)
    cmp_ok(scalar @lines, '<=', 2 * $slow, 'at most a line a second ('
           . scalar(@lines) . ')');
}

$errors .= RulesNginx::error_log($ngx);
unlike($errors, qr/\[(alert|crit|emerg)\]/, 'no alert in the error logs');
unlike($errors, qr/no reply for/, 'no case outlasted the connection');

# a client that leaves while its event waits, with post_action: nginx
# runs the post action (an internal redirect) at once; the deadline must
# not run the request's phases again there (it restarted the post
# action's proxying: the collector got a second request).  The collector
# is this script, which counts connections and never answers.

{
    RulesNginx::stop_nginx($ngx);
    my $collector = listener();
    my $cport = $collector->sockport;
    $ngx = RulesNginx::start_nginx(
        prefix => "$FindBin::Bin/servroot-056",
        files  => { 'rules.json' => $rules },
        http   => RulesNginx::pixel_http(
            store     => "rules_redis 127.0.0.1:$paused->{port};",
            timeout   => '400ms',
            prefix    => "t056:$$:",
            fields    => ['uid'],
            locations => <<"_EOC_"));
        post_action /collect;
        location = /collect {
            internal;
            post_action off;
            proxy_read_timeout 2s;
            proxy_pass http://127.0.0.1:$cport/hit;
        }
_EOC_
    my $s = send_px($ngx->{port}, 'pa');
    sleep 0.1;
    close $s;
    # past the deadline (0.4 s), within the collector's 2 s
    sleep 1.2 * $slow;
    $collector->blocking(0);
    my @conns;
    while (my $c = $collector->accept) {
        push @conns, $c;
    }
    is(scalar @conns, 1,
       'post action after the client left: one request to the collector');
    my $log = RulesNginx::error_log($ngx);
    unlike($log, qr/\[(alert|crit|emerg)\]/, 'and no alert');
}

# worker_shutdown_timeout: a reload while an event waits for the paused
# Redis, its deadline and the connection's watchdog (10 s) far off.  At
# the shutdown timeout nginx closes the old worker's connections: the
# Redis connection's waiting call fails, the request is answered (status
# error, as with Redis down: fail open) and counted, and the worker exits
# rather than wait for Redis.

{
    paused_nginx('10s', 'worker_shutdown_timeout 500ms;');
    my $s = send_px($ngx->{port}, 'ws');
    my $inflight = RulesNginx::poll(5 * $slow, sub { RulesNginx::metric($ngx,
        'nginx_rules_inflight_events') // 0 }, sub { $_[0] == 1 });
    is($inflight, 1, 'shutdown timeout: an event waits for the paused Redis');
    my @old = RulesNginx::worker_pids($ngx);
    my $t1 = time;
    RulesNginx::reload_nginx($ngx);
    my ($c, $st, $took) = read_px($s, $t1);
    is("$c $st", '204 error', 'answered at the shutdown timeout, status error');
    cmp_ok($took, '>=', 0.4, "not before the shutdown timeout ($took s)");
    cmp_ok($took, '<', 3 * $slow, "nor at the 10 s deadline ($took s)");
    ok(RulesNginx::poll(5 * $slow, sub { scalar(grep { kill 0, $_ } @old) },
                        sub { $_[0] == 0 }) == 0,
       'the old worker exits');
    my $log = RulesNginx::wait_log($ngx, qr/closed at worker shutdown/);
    like($log, qr/\[info\] .*rules redis 127\.0\.0\.1:$paused->{port}: connection closed \(closed at worker shutdown\), 1 command failed$/m,
         'the log says why the connection was closed');
    my $m = RulesNginx::poll(5 * $slow, sub { RulesNginx::metric($ngx,
        'nginx_rules_events_total{status="error"}') // 0 }, sub { $_[0] == 1 });
    is($m, 1, 'the new workers serve: events_total{status="error"} 1');
    is(RulesNginx::metric($ngx, 'nginx_rules_failed_total{mode="open"}'), 1,
       'failed_total{mode="open"} 1');
    is(RulesNginx::metric($ngx, 'nginx_rules_inflight_events'), 0,
       'nothing in flight');
    unlike($log, qr/\[(alert|crit|emerg)\]/, 'and no alert');
}

RulesNginx::stop_nginx($ngx);
kill 'CONT', $paused->{pid};

# a live Redis and a long timeout: once its request is answered, a worker
# has no timer left and quits at once on a graceful stop

my $live = RulesNginx::start_redis();
$ngx = RulesNginx::start_nginx(
    prefix => "$FindBin::Bin/servroot-056b",
    files  => { 'rules.json' => $rules },
    http   => http_body($live->{port}, '60s'));

{
    my $s = send_px($ngx->{port}, 'e');
    my ($c, $st) = read_px($s, time);
    close $s;
    is("$c $st", '204 ok', 'live Redis: answered, status ok');

    my $pid = RulesNginx::nginx_pid($ngx);
    my $t0 = time;
    kill 'QUIT', $pid;
    my $gone = RulesNginx::wait_gone($pid, 10 * $slow);
    my $took = time - $t0;
    ok($gone, 'graceful stop: nginx is gone');
    cmp_ok($took, '<', 3 * $slow,
           "within seconds, not the 60 s timeout ($took s)");
    RulesMemcheck::check("$ngx->{prefix}/logs", "nginx $ngx->{prefix}");
}

# after the wait, the request reads the client as nginx would have: with
# proxy_ignore_client_abort on, a client that leaves once the event was
# answered does not cut the proxied request (the wait's read handler,
# left in place, finalized it with 499 and closed the upstream
# connection).  The upstream is this script.

{
    my $upstream = listener();
    my $uport = $upstream->sockport;
    # longer than the wait below for the upstream connection to be cut
    # (valgrind slows it down 20 times)
    my $read_timeout = 5 * $slow;
    $ngx = RulesNginx::start_nginx(
        prefix => "$FindBin::Bin/servroot-056c",
        files  => { 'rules.json' => $rules },
        http   => RulesNginx::pixel_http(
            store     => "rules_redis 127.0.0.1:$live->{port};",
            timeout   => '2s',
            prefix    => "t056:$$:",
            fields    => ['uid'],
            locations => <<"_EOC_"));
        location = /up {
            rules on;
            rules_field uid \$arg_uid;
            proxy_ignore_client_abort on;
            proxy_read_timeout ${read_timeout}s;
            proxy_pass http://127.0.0.1:$uport/hit;
        }
_EOC_
    my $s = RulesNginx::send_get($ngx->{port}, '/up?uid=ica')
        or die "connect: $!";
    my $sel = IO::Select->new($upstream);
    my $up = $sel->can_read(3 * $slow) ? $upstream->accept : undef;
    ok($up, 'the event was answered and the request proxied');
    my $req = '';
    while ($up && $req !~ /\r\n\r\n/) {
        last unless IO::Select->new($up)->can_read(2 * $slow);
        last unless sysread($up, $req, 4096, length $req);
    }
    like($req, qr{^GET /hit\?uid=ica HTTP}, 'the upstream got the request');
    close $s;
    sleep 0.5 * $slow;
    my $cut = 0;
    if ($up && IO::Select->new($up)->can_read(0)) {
        my $buf;
        $cut = !sysread($up, $buf, 1);
    }
    ok(!$cut, 'proxy_ignore_client_abort: the client left, the upstream '
              . 'connection stays');
    print $up "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n" if $up;
    close $up if $up;
    sleep 0.2;
    my $log = RulesNginx::error_log($ngx);
    unlike($log, qr/prematurely closed connection while sending request/,
           'nginx did not finalize it as a client abort');
    unlike($log, qr/\[(alert|crit|emerg)\]/, 'and no alert');
    RulesNginx::stop_nginx($ngx);
}

done_testing();
