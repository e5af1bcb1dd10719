# HTTP/2 (over TLS, a certificate made with openssl for the test; curl
# with nghttp2 as the client: Debian 12's curl 7.88 cannot reuse an h2c
# prior-knowledge connection, whatever the server):
#
# - pixel requests on streams of one connection are events, evaluated in
#   the order the client sends them, with the match header;
# - with Redis stopped (SIGSTOP), concurrent streams of one connection
#   each get their answer at their deadline (status timeout), none left
#   behind;
# - a client that drops the connection while its streams wait: the
#   streams end (499 in the access log), and the late Redis replies
#   that come once Redis runs again touch nothing (the worker stays, no
#   alert, the next requests are answered).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use RulesNginx;

my $slow = RulesMemcheck::slowdown();

system('curl --version 2>/dev/null | grep -qi nghttp2') == 0
    or plan skip_all => 'no curl with HTTP/2';
system('openssl version > /dev/null 2>&1') == 0
    or plan skip_all => 'no openssl to make a certificate';

my $rules = <<'_EOC_';
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "7d"}
]}
_EOC_

my $redis = RulesNginx::start_redis();
my $prefix = "t065:$$:";
my $h2port = RulesNginx::free_port();
my $timeout_ms = 300 * $slow;

my $certs = "$FindBin::Bin/servroot-065-certs";
mkdir $certs;
system("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost "
       . "-keyout $certs/key.pem -out $certs/cert.pem > /dev/null 2>&1") == 0
    or die 'openssl req failed';

my $ngx = RulesNginx::start_nginx(
    prefix => "$FindBin::Bin/servroot-065",
    files  => { 'rules.json' => $rules },
    http   => RulesNginx::pixel_http(
        store     => "rules_redis 127.0.0.1:$redis->{port};",
        timeout   => "${timeout_ms}ms",
        prefix    => $prefix,
        fields    => ['uid'],
        extra     => <<"_EOC_"));
    log_format h2 "\$arg_uid \$status [\$rules_status] \$server_protocol \$connection";
    server {
        listen 127.0.0.1:$h2port ssl http2;
        ssl_certificate $certs/cert.pem;
        ssl_certificate_key $certs/key.pem;
        access_log logs/h2.log h2;
        location = /px {
            rules on;
            rules_field uid \$arg_uid;
            rules_time \$arg_ts;
            add_header X-Rules "[\$rules_matched]" always;
            add_header X-Status \$rules_status always;
            return 204;
        }
    }
_EOC_

# curl on the HTTP/2 port, its URLs on one connection (--parallel: as
# concurrent streams); one line per answer: "VERSION STATUS [RULES] STATUS"
# (204s: no body to print)
sub h2 {
    my ($opts, @uris) = @_;
    my @urls = map { "https://127.0.0.1:$h2port$_" } @uris;
    my $w = '%{http_version} %{response_code} %header{x-rules} '
            . '%header{x-status}\n';
    my $cmd = join ' ', 'curl -sk --http2 --no-progress-meter', $opts,
        "-w '$w'", map { "'$_'" } @urls;
    return `$cmd 2>/dev/null`;
}

sub access_lines {
    open my $fh, '<', "$ngx->{prefix}/logs/h2.log" or return ();
    return <$fh>;
}

sub metric { return RulesNginx::metric($ngx, @_) // 0 }

# until an event is stored again (after Redis was stopped, the worker
# may have closed its connection and be waiting to reconnect: events
# then fail at once, which the next part must not meet)
my $ready_n = 0;
sub redis_ready {
    return RulesNginx::poll(10 * $slow, sub {
        RulesNginx::pixel($ngx, 'ts=1000&uid=h2w' . $ready_n++) =~ /^204 ok /
    }) ? 1 : 0;
}


# ---- streams of one connection, in order -------------------------------

my $out = h2('', '/px?uid=h2a&ts=1000', '/px?uid=h2a&ts=2000');
is($out, "2 204 [] ok\n2 204 [twice] ok\n",
   'two streams on one HTTP/2 connection: events in order, the second '
   . 'matches');
is(scalar(grep { /^h2a 204 \[ok\] HTTP\/2\.0 \d+$/ } access_lines()), 2,
   'both logged as HTTP/2 events with status ok');


# ---- Redis stopped: each concurrent stream answered at its deadline -----

my $timeouts0 = metric('nginx_rules_events_total{status="timeout"}');
ok(redis_ready(), 'an event is stored');
kill 'STOP', $redis->{pid};
my $t0 = time;
$out = h2('--parallel --parallel-max 10',
          map { "/px?uid=h2b$_&ts=1000" } 1 .. 3);
my $took = time - $t0;
kill 'CONT', $redis->{pid};
is($out, "2 204 [] timeout\n" x 3,
   'three concurrent streams, Redis stopped: each answered, status timeout')
    or diag($out);
cmp_ok($took, '>=', $timeout_ms / 1000 * 0.9,
       'answered at the deadline, not before');
cmp_ok($took, '<', 5 * $slow, 'and not held long after it');
is(metric('nginx_rules_events_total{status="timeout"}') - $timeouts0, 3,
   'three timeout events counted');
my %conns = map { /^h2b\d \S+ \S+ \S+ (\d+)$/ ? ($1 => 1) : () } access_lines();
is(scalar keys %conns, 1, 'the three were streams of one connection')
    or diag(join '', access_lines());


# ---- the client goes away while its streams wait ------------------------

ok(redis_ready(), 'Redis runs again: an event is stored');
kill 'STOP', $redis->{pid};
my @pids = RulesNginx::worker_pids($ngx);
# curl gives up (closes the connection) before the deadline
h2('--parallel --max-time ' . ($timeout_ms / 1000 / 3),
   map { "/px?uid=h2c$_&ts=1000" } 1 .. 3);
my @gone = @{ RulesNginx::poll(5 * $slow,
                               sub { [grep { /^h2c\d 499 / } access_lines()] },
                               sub { @{ $_[0] } == 3 }) };
is(scalar @gone, 3, 'a connection closed while 3 streams wait: each '
   . 'stream ends, logged with 499') or diag(join '', access_lines());
kill 'CONT', $redis->{pid};

# the replies to the dropped streams' events come now (unless the
# worker closed the connection at its reply timeout); then new requests
ok(redis_ready(), 'Redis runs again: an event is stored');
$out = h2('', '/px?uid=h2d&ts=1000', '/px?uid=h2d&ts=2000');
is($out, "2 204 [] ok\n2 204 [twice] ok\n",
   'after the late replies: the next streams are answered as before');
is_deeply([RulesNginx::worker_pids($ngx)], \@pids, 'the same worker');
unlike(RulesNginx::error_log($ngx), qr/\[(alert|emerg|crit)\]/,
       'no alert, emerg or crit in the error log');

RulesNginx::stop_nginx($ngx);
unlink "$certs/key.pem", "$certs/cert.pem";
rmdir $certs;
done_testing();
