# HTTP edges of the README that no other file checks:
#
# - rules_reject_fraud 444, 408 and 499 close the connection without an
#   answer, as nginx's "return" does (429 answers, for comparison);
# - HEAD and OPTIONS to a "rules_body json" location are query-mode
#   events (their rules_field values);
# - only main requests are evaluated: the subrequests of auth_request,
#   mirror and SSI's include virtual reach a location with "rules on"
#   and are not events (no state key, no event counted);
# - an error_page of a request nginx refused (413 over
#   client_max_body_size, 400) is not an event where it is redirected;
# - rules_redis_connect_timeout: a Redis address that never completes the
#   TCP handshake (a loopback listener whose accept queue is full) does
#   not hold the events: they fail at once (error), and the connect
#   attempt ends at the connect timeout.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use RulesNginx;

my $slow = RulesMemcheck::slowdown();

my $rules = <<'_EOC_';
{"rules": [
  {"id": "seen_twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "7d"},
  {"id": "bad_ip", "kind": "fraud", "key": "ip", "type": "count",
   "min": 1, "within": "7d"}
]}
_EOC_

my $redis = RulesNginx::start_redis();
my $prefix = "t059:$$:";

# a location that rejects fraud (any event with an ip) with STATUS
sub reject_location {
    my ($status) = @_;
    return <<"_EOC_";
        location = /r$status {
            rules on;
            rules_field ip \$arg_ip;
            rules_time \$arg_ts;
            rules_reject_fraud $status;
            add_header X-Status \$rules_status always;
            return 204;
        }
_EOC_
}

my $locations = join('', map { reject_location($_) } 444, 408, 499, 429)
    . <<'_EOC_';
        location = /ev {
            rules on;
            rules_body json;
            rules_field uid $arg_uid;
            rules_time $arg_ts;
            add_header X-Rules "[$rules_matched]" always;
            add_header X-Status $rules_status always;
            return 204;
        }

        # the location subrequests go to: rules on, and its fields from
        # a header, which subrequests share with their main request
        location = /sub {
            rules on;
            rules_field uid $http_x_uid;
            log_subrequest on;
            access_log logs/sub.log sub;
            add_header X-Status $rules_status always;
            return 204;
        }
        location = /subtext {
            rules on;
            rules_field uid $http_x_uid;
            log_subrequest on;
            access_log logs/sub.log sub;
            return 200 "included\n";
        }

        # main requests whose subrequests go there (content handlers, not
        # "return": auth_request and mirror run after the rewrite phase)
        location = /with-auth { auth_request /sub; empty_gif; }
        location = /with-mirror { mirror /sub; empty_gif; }
        location = /page.html { ssi on; }
_EOC_

my $ngx = RulesNginx::start_nginx(
    prefix => "$FindBin::Bin/servroot-059",
    files  => { 'rules.json' => $rules,
                'page.html'  => "before\n<!--# include virtual=\"/subtext\" -->after\n" },
    http   => RulesNginx::pixel_http(
        store     => "rules_redis 127.0.0.1:$redis->{port};",
        timeout   => '5s',
        prefix    => $prefix,
        fields    => ['uid'],
        extra     => 'log_format sub "$uri $request_method [$rules_status]";',
        locations => $locations));

sub metric {
    return RulesNginx::metric($ngx, @_) // 0;
}

sub events_total {
    my $n = 0;
    $n += metric(qq(nginx_rules_events_total{status="$_"}))
        for qw(ok skipped invalid error timeout);
    return $n;
}

sub key_exists {
    my ($field, $value) = @_;
    return RulesNginx::redis_call($redis->{port}, 'EXISTS',
                                  "$prefix\{$field:$value\}");
}

# one request on a connection of its own, "Connection: close"; returns
# every byte nginx sent before it closed the connection
sub raw_exchange {
    my ($req) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$ngx->{port}",
                                  Timeout => 5 * $slow)
        or die "connect: $!";
    print $s $req;
    local $/;
    my $all = <$s> // '';
    close $s;
    return $all;
}

sub raw_get {
    my ($uri) = @_;
    return raw_exchange("GET $uri HTTP/1.1\r\nHost: localhost\r\n"
                        . "Connection: close\r\n\r\n");
}


# ---- rules_reject_fraud 444, 408, 499 ----------------------------------
#
# README (rules_reject_fraud): "As with nginx's `return`, `408`, `444`
# and `499` close the connection without an answer (`444` is nginx's way
# to drop a client)."

like(raw_get('/r444?ts=1000'), qr{^HTTP/1\.1 204 .*\r\nX-Status: skipped\r\n}s,
     '444 location, no key field (skipped): answered as usual');

my $rej0 = metric('nginx_rules_fraud_rejected_total');
my $n = 0;
for my $status (444, 408, 499) {
    $n++;
    is(raw_get("/r$status?ip=192.0.2.$n&ts=1000"), '',
       "rules_reject_fraud $status: the connection closed, no answer");
    is(metric('nginx_rules_fraud_rejected_total') - $rej0, $n,
       "rules_reject_fraud $status: the event was rejected as fraud");
}

# for comparison: another status is an answer with that status
like(raw_get('/r429?ip=192.0.2.9&ts=1000'),
     qr{^HTTP/1\.1 429 .*\r\nX-Status: ok\r\n}s,
     'rules_reject_fraud 429: answered 429');
is(metric('nginx_rules_fraud_rejected_total') - $rej0, 4,
   'rules_reject_fraud 429: rejected as fraud');


# ---- HEAD and OPTIONS in a JSON body location ---------------------------
#
# README (rules_body): "Other methods use `rules_field` values (query
# mode): a `HEAD` or a CORS preflight (`OPTIONS`) to that location is an
# event too."

sub answer {
    my ($method, $uri) = @_;
    my $resp = raw_exchange("$method $uri HTTP/1.1\r\nHost: localhost\r\n"
                            . "Connection: close\r\n\r\n");
    my ($code, $h) = RulesNginx::parse_response($resp);
    return "$code $method " . ($h->{'x-status'} // '-') . ' '
        . ($h->{'x-rules'} // '-');
}

my $ev0 = metric('nginx_rules_events_total{status="ok"}');
is(answer('HEAD', '/ev?uid=t059-head&ts=1000'), '204 HEAD ok []',
   'HEAD to a JSON body location: an event of its query (ok)');
is(answer('OPTIONS', '/ev?uid=t059-head&ts=2000'),
   '204 OPTIONS ok [seen_twice]',
   'OPTIONS to it: an event of its query, the second of that uid');
is(metric('nginx_rules_events_total{status="ok"}') - $ev0, 2,
   'HEAD and OPTIONS: two events counted');
is(key_exists('uid', 't059-head'), 1, 'their uid\'s state is in Redis');


# ---- subrequests are not evaluated ---------------------------------------
#
# README (rules): "Only main requests are evaluated (not subrequests)"

sub get_with_uid {
    my ($uri, $uid) = @_;
    my $resp = raw_exchange("GET $uri HTTP/1.0\r\nHost: localhost\r\n"
                            . "X-Uid: $uid\r\n\r\n");
    return RulesNginx::parse_response($resp);
}

my $all0 = events_total();

my ($code, $h, $body) = get_with_uid('/with-auth', 't059-auth');
is($code, 200, 'auth_request: its subrequest to /sub allowed the request');

($code, $h, $body) = get_with_uid('/with-mirror', 't059-mirror');
is($code, 200, 'mirror: the main request answered');

($code, $h, $body) = get_with_uid('/page.html', 't059-ssi');
is("$code $body", "200 before\nincluded\nafter\n",
   'SSI: the subrequest to /subtext included');

# /sub as a main request is evaluated: once its answer is here, any call
# a subrequest before it would have made (the mirror's, which ends on its
# own) was answered too (one worker, one connection, in order)
($code, $h) = get_with_uid('/sub', 't059-direct');
is("$code " . ($h->{'x-status'} // '-'), '204 ok',
   '/sub as a main request: evaluated');
is(key_exists('uid', 't059-direct'), 1, '... its state is in Redis');

is(events_total() - $all0, 1,
   'one event counted: the main request to /sub, no subrequest');
for my $sub (qw(auth mirror ssi)) {
    is(key_exists('uid', "t059-$sub"), 0,
       "no state for the uid of the $sub subrequest");
}

my $sublog = '';
if (open my $fh, '<', "$ngx->{prefix}/logs/sub.log") {
    local $/;
    $sublog = <$fh> // '';
}
is($sublog, "/sub GET []\n/sub GET []\n/subtext GET []\n/sub GET [ok]\n",
   'the three subrequests reached the locations, with no $rules_status; '
   . 'the main request: ok');

my $errors = RulesNginx::error_log($ngx);
like($errors, qr/rules: event rejected as fraud \(matched a fraud rule\), status 444/,
     'the 444 rejection is logged');
unlike($errors, qr/\[(?:alert|crit|emerg)\]/, 'no alert in the error log');
RulesNginx::stop_nginx($ngx);


# ---- an error_page of a request nginx refused ------------------------------
#
# README (rules_max_body_size): a body over client_max_body_size "gets
# nginx's 413, with no $rules_status and not counted by the module".  So
# does a malformed request: with "rules on" and fields for the whole
# server, the error_page location they are redirected to does not take
# them as events (it evaluated them: an event per oversized or malformed
# request, its ip counted against the fraud rules).

{
    my $p = "t059e:$$:";
    $ngx = RulesNginx::start_nginx(
        prefix => "$FindBin::Bin/servroot-059",
        files  => { 'rules.json' => $rules },
        http   => <<"_EOC_");
    rules_redis 127.0.0.1:$redis->{port};
    rules_redis_timeout 5s;
    rules_key_prefix "$p";
    rules_file ../html/rules.json;
    server {
        listen 127.0.0.1:\$PORT;
        rules on;
        rules_field ip \$remote_addr;
        client_max_body_size 1k;
        error_page 400 413 /err;
        add_header X-Status "[\$rules_status]" always;
        location = /px { return 204; }
        location = /err { internal; return 200 "refused\\n"; }
        location = /metrics { rules off; rules_metrics; }
    }
_EOC_

    my $big = raw_exchange("POST /px HTTP/1.1\r\nHost: localhost\r\n"
                           . "Content-Length: 2048\r\nConnection: close"
                           . "\r\n\r\n" . ('x' x 2048));
    like($big, qr{^HTTP/1\.1 413 .*\r\nX-Status: \[\]\r\n.*refused}s,
         'a body over client_max_body_size: the error page, no '
         . '$rules_status') or diag($big);
    my $bad = raw_exchange("GET /px HTTP/1.1\r\nHost: localhost\r\n"
                           . "Host: other\r\nConnection: close\r\n\r\n");
    like($bad, qr{^HTTP/1\.1 400 .*\r\nX-Status: \[\]\r\n.*refused}s,
         'a malformed request (two Host headers): the error page, no '
         . '$rules_status') or diag($bad);
    is(RulesNginx::redis_call($redis->{port}, 'EXISTS',
                              "$p\{ip:127.0.0.1\}"), 0,
       'neither was an event: no state key');
    is(events_total(), 0, 'and none counted');

    like(raw_get('/px'), qr{^HTTP/1\.1 204 .*\r\nX-Status: \[ok\]\r\n}s,
         'a request to /px: an event');
    is(events_total(), 1, 'counted');
    unlike(RulesNginx::error_log($ngx), qr/\[(?:alert|crit|emerg)\]/,
           'no alert in the error log');
    RulesNginx::stop_nginx($ngx);
}


# ---- rules_redis_connect_timeout: a handshake that never completes ------
#
# README (rules_redis_connect_timeout): "How long a connection attempt
# may take (0: no limit but the kernel's). The events of a worker making
# its first connection ... wait for it, within their own deadline ...;
# once an attempt has failed, while Redis is down, events fail at once
# (`error`)."
#
# A listener with a backlog of 0 whose accept queue is filled (connected,
# never accepted): the kernel drops the SYNs that come next, so a connect
# to it stays in progress.  Filled until a connect of our own times out.

my $hole = IO::Socket::INET->new(Listen => 0, LocalAddr => '127.0.0.1',
                                 LocalPort => 0, ReuseAddr => 1)
    or die "listen: $!";
my @queued;
while (@queued < 1000) {
    my $c = IO::Socket::INET->new(PeerAddr => "127.0.0.1:" . $hole->sockport,
                                  Timeout => 0.3)
        or last;
    push @queued, $c;
}
my $t0 = time;
my $probe = IO::Socket::INET->new(PeerAddr => "127.0.0.1:" . $hole->sockport,
                                  Timeout => 1);
ok(!$probe && time - $t0 >= 0.9,
   'the blackhole: a connect to it is still in progress after 1 s ('
   . scalar(@queued) . ' queued)');

$ngx = RulesNginx::start_nginx(
    prefix => "$FindBin::Bin/servroot-059b",
    files  => { 'rules.json' => $rules },
    http   => RulesNginx::pixel_http(
        store   => 'rules_redis 127.0.0.1:' . $hole->sockport . ';',
        timeout => '5s',
        prefix  => $prefix,
        fields  => ['uid'],
        extra   => 'rules_redis_connect_timeout 2s;'));

$t0 = time;
my ($c, $hd) = RulesNginx::get($ngx->{port}, '/px?uid=t059-hole&ts=1000',
                               10 * $slow);
my $took = time - $t0;
is("$c " . ($hd->{'x-status'} // '-'), '204 error',
   'the first connection never made: the event is answered, error');
ok($took > 0.5 && $took < 4 * $slow,
   "when the attempt ends, at rules_redis_connect_timeout (2 s), not at "
   . "rules_redis_timeout (5 s) ($took s)");

# the attempt ends at the connect timeout (2 s), logged as such
my $log = RulesNginx::wait_log($ngx, qr/connect timed out/);
like($log, qr/rules redis 127\.0\.0\.1:\d+: .*connect timed out \(2000 ms\)/,
     'the connect attempt ended at rules_redis_connect_timeout');

# and again, later: each event still fails at once
$t0 = time;
($c, $hd) = RulesNginx::get($ngx->{port}, '/px?uid=t059-hole&ts=2000',
                            10 * $slow);
$took = time - $t0;
is("$c " . ($hd->{'x-status'} // '-'), '204 error',
   'a later event: error as well');
cmp_ok($took, '<', 1 * $slow, "at once ($took s)");

RulesNginx::stop_nginx($ngx);
close $_ for @queued;
close $hole;

done_testing();
