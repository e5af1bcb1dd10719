# Every configuration in conf-examples/ but demo.conf and docker.conf
# (those have their own checks: make demo, the Docker build) passes
# "nginx -t" with the built module and the example rules file.  Then the
# examples SPEC.md promises as working configurations run, as written but
# for their ports, paths and Redis address, and do what their comments
# and the README say: the pixel answers a GIF with the matched segments
# in X-Rules and logs them, its /metrics serves the counts; the JSON
# endpoint applies a body's events and refuses other methods; fraud
# blocking answers 429 to a fraud match and, rules_on_error closed, when
# Redis is down; the upstream example passes the segments and the pool
# to the ad server.  (cluster.conf needs a Redis Cluster: t/10x.)

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Cwd qw(abs_path);
use File::Path qw(make_path remove_tree);
use RulesNginx;
use IO::Socket::INET;
use Time::HiRes qw(sleep time);

my $root = abs_path("$FindBin::Bin/..");
my $module = RulesNginx::module_path();
my $redis_port = $ENV{TEST_NGINX_REDIS_PORT}
    or plan skip_all => 'TEST_NGINX_REDIS_PORT is not set';

my @confs = grep { !/demo\.conf$|docker\.conf$/ } glob "$root/conf-examples/*.conf";
ok(@confs >= 4, 'the examples are there');

# The example rewritten to run here: its text, with the port, paths and
# Redis address replaced; more: a sub that edits the text further.
sub prepare {
    my ($conf, $prefix, %o) = @_;
    remove_tree($prefix);
    make_path("$prefix/conf", "$prefix/logs");

    open my $in, '<', $conf or die "$conf: $!";
    local $/;
    my $text = <$in>;
    close $in;

    my $port = RulesNginx::free_port();
    my $redis = $o{redis} // "127.0.0.1:$redis_port";
    $text =~ s{load_module\s+\S+;}{load_module $module;};
    $text =~ s{/etc/nginx/rules\.json}{$root/conf-examples/rules.json}g;
    $text =~ s{/var/log/nginx/}{$prefix/logs/}g;
    $text =~ s{127\.0\.0\.1:6379}{$redis}g;
    if ($o{run}) {
        # keys of this run only; a Redis round trip on a loaded test host
        # (or under valgrind) may take longer than the examples' 20 ms
        $text =~ s{(rules_file\s+\S+;)}{$1\n    rules_key_prefix "t070:$$:";}
            or die "$conf: no rules_file";
        $text =~ s{rules_redis_timeout\s+\d+ms;}{rules_redis_timeout 2s;}
            or die "$conf: no rules_redis_timeout";
    }
    $text =~ s{listen\s+127\.0\.0\.1:\d+;}{listen 127.0.0.1:$port;};
    $text =~ s{worker_processes auto;}{worker_processes 1;\n}
        and $text = ($> == 0 ? "user root;\n" : '') . $text;
    $text = "pid logs/nginx.pid;\nerror_log logs/error.log info;\n" . $text;
    $o{more}->($text) if $o{more};

    open my $out, '>', "$prefix/conf/nginx.conf" or die;
    print $out $text;
    close $out;
    return $port;
}

for my $conf (@confs) {
    my $name = (split m{/}, $conf)[-1];
    my $prefix = "$FindBin::Bin/servroot-070";
    prepare($conf, $prefix);

    my $res = `@{[ RulesNginx::nginx_command($prefix, '-t') ]} 2>&1`;
    is($?, 0, "$name: nginx -t passes") or diag($res);
    like($res, qr/syntax is ok/, "$name: syntax is ok");
    RulesMemcheck::check("$prefix/logs", "$name: nginx -t");
}

# Runs the example; returns { port, prefix } for RulesNginx::stop_nginx.
sub start_example {
    my ($file, %o) = @_;
    my $prefix = "$FindBin::Bin/servroot-070";
    my $port = prepare("$root/conf-examples/$file", $prefix, %o, run => 1);
    system(RulesNginx::nginx_command($prefix)) == 0
        or die "$file: nginx did not start: "
               . RulesNginx::error_log({ prefix => $prefix });
    my $ngx = { port => $port, prefix => $prefix };
    RulesNginx::track_pid(RulesNginx::nginx_pid($ngx));
    RulesNginx::wait_port($port, 5 * RulesMemcheck::slowdown())
        or die "$file: nginx is not listening on $port";
    # the worker connects to Redis after it starts: wait for it (or,
    # Redis down, for its first failure)
    my $addr = $o{redis} // "127.0.0.1:$redis_port";
    my $want = $o{redis} ? qr/rules redis \Q$addr\E: /
                         : qr/rules redis \Q$addr\E: connected/;
    RulesNginx::wait_log($ngx, $want);
    return $ngx;
}

# One HTTP/1.0 request with headers; returns (status, \%headers, body).
sub request {
    my ($port, $method, $uri, $headers, $body) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port",
                                  Timeout => 5)
        or return (0, {}, "connect: $!");
    my $h = join '', map { "$_: $headers->{$_}\r\n" } sort keys %{ $headers // {} };
    $h .= "Content-Length: " . length($body) . "\r\n" if defined $body;
    print $s "$method $uri HTTP/1.0\r\nHost: localhost\r\n$h\r\n"
        . ($body // '');
    return RulesNginx::read_response($s);
}

# events of this run only: the examples keep their default key prefix
my $u = "t070-$$-" . int(time);

{
    my $ngx = start_example('pixel.conf');
    my $p = $ngx->{port};
    my @r = request($p, 'GET', '/px?e=page', { Cookie => "uid=$u-px" });
    is($r[0], 200, 'pixel.conf: the pixel answers 200');
    like($r[2], qr/^GIF8/, 'pixel.conf: with a GIF');
    is($r[1]{'cache-control'}, 'no-store', 'pixel.conf: not to be cached');
    ok(!defined $r[1]{'x-rules'}, 'pixel.conf: a first page view: no segment');
    @r = request($p, 'GET', '/px?e=page', { Cookie => "uid=$u-px" });
    is($r[1]{'x-rules'}, 'visited_twice_week',
       'pixel.conf: a second page view: X-Rules visited_twice_week');
    @r = request($p, 'GET', '/px?e=view&p=P42', { Cookie => "uid=$u-px" });
    is($r[1]{'x-rules'}, 'visited_twice_week,viewed_not_carted',
       'pixel.conf: a view of P42 adds viewed_not_carted');
    @r = request($p, 'GET', '/px?e=cart&p=P42', { Cookie => "uid=$u-px" });
    is($r[1]{'x-rules'}, 'visited_twice_week',
       'pixel.conf: putting P42 in the cart cancels it');

    @r = request($p, 'GET', '/metrics');
    is($r[0], 200, 'pixel.conf: /metrics answers 200 from 127.0.0.1');
    like($r[2], qr/^nginx_rules_events_total\{status="ok"\} 4$/m,
         'pixel.conf: /metrics counts the 4 events ok');
    like($r[2], qr/^nginx_rules_rule_matched_total\{rule="visited_twice_week",kind="segment",type="count"\} 3$/m,
         'pixel.conf: /metrics counts visited_twice_week matched 3 times');

    RulesNginx::stop_nginx($ngx);
    open my $fh, '<', "$ngx->{prefix}/logs/rules.log";
    my @log = $fh ? <$fh> : ();
    is(scalar(grep { m{"GET /px\?e=page HTTP/1.0" 200 rules=\[visited_twice_week\] fraud=0 rules_status=ok$} } @log),
       1, 'pixel.conf: the access log has the segments of the second view');
    is(scalar @log, 4, 'pixel.conf: one access log line per pixel hit');
}

{
    my $ngx = start_example('events-json.conf');
    my $p = $ngx->{port};
    my $t = 1700000000000;
    my @r = request($p, 'POST', '/events', {},
        qq{[{"uid":"$u-js","type":"page","ts":$t},}
        . qq{ {"uid":"$u-js","type":"view","product":"P42","ts":@{[ $t + 5000 ]}}]});
    is($r[0], 204, 'events-json.conf: a POST of two events: 204');
    is($r[1]{'x-rules-status'}, 'ok', 'events-json.conf: status ok');
    is($r[1]{'x-rules'}, 'viewed_not_carted',
       'events-json.conf: X-Rules is the union of the events\' matches');
    @r = request($p, 'POST', '/events', {},
                 qq{{"uid":"$u-js","type":"page","ts":@{[ $t + 10000 ]}}});
    is($r[1]{'x-rules'}, 'visited_twice_week,viewed_not_carted',
       'events-json.conf: the next page view is the second (the first body was applied)');
    @r = request($p, 'GET', '/events');
    is($r[0], 403, 'events-json.conf: another method is denied');
    is($r[1]{'x-rules-status'}, 'invalid',
       'events-json.conf: as an event without "ts", invalid');
    @r = request($p, 'POST', '/events', {}, '{"uid": ');
    is("$r[0] $r[1]{'x-rules-status'}", '204 invalid',
       'events-json.conf: a body that is not JSON: 204, invalid');
    RulesNginx::stop_nginx($ngx);
}

{
    my $ngx = start_example('fraud-blocking.conf');
    my $p = $ngx->{port};
    my @st;
    for my $i (1 .. 5) {
        my @r = request($p, 'GET', '/px?e=page',
                        { Cookie => "uid=$u-fr-$i", 'X-Device-Id' => "$u-dev" });
        push @st, "$r[0] " . ($r[1]{'x-rules-status'} // '-');
    }
    is_deeply(\@st, ['200 ok', '200 ok', '200 ok', '200 ok', '429 ok'],
        'fraud-blocking.conf: the 5th user on one device is fraud: 429');
    my @r = request($p, 'GET', '/px?e=page',
                    { Cookie => "uid=$u-fr-6", 'X-Device-Id' => "$u-dev2" });
    is("$r[0] $r[1]{'x-rules-status'}", '200 ok',
       'fraud-blocking.conf: another device is served');
    like($r[2], qr/^GIF8/, 'fraud-blocking.conf: the pixel');
    RulesNginx::stop_nginx($ngx);

    # Redis down (nothing listens there): rules_on_error closed rejects
    my $dead = RulesNginx::free_port();
    $ngx = start_example('fraud-blocking.conf', redis => "127.0.0.1:$dead");
    @r = request($ngx->{port}, 'GET', '/px?e=page',
                 { Cookie => "uid=$u-fr-7" });
    is("$r[0] $r[1]{'x-rules-status'}", '429 error',
       'fraud-blocking.conf: Redis down, rules_on_error closed: 429');
    RulesNginx::stop_nginx($ngx);
}

{
    # the ad server: a server of the same nginx that echoes the headers
    my $ad = RulesNginx::free_port();
    my $ngx = start_example('upstream-segments.conf', more => sub {
        $_[0] =~ s{server 127\.0\.0\.1:9000;}{server 127.0.0.1:$ad;}
            or die 'no ad server in upstream-segments.conf';
        $_[0] =~ s{\}\s*\z}{    server {
        listen 127.0.0.1:$ad;
        location / {
            return 200 "segments=[\$http_x_segments] pool=\$http_x_ad_pool fraud=\$http_x_fraud\\n";
        }
    }
\}\n} or die;
    });
    my $p = $ngx->{port};
    my @r = request($p, 'GET', '/ad?e=page', { Cookie => "uid=$u-ad" });
    is("$r[0] $r[2]", "200 segments=[] pool=prospecting fraud=0\n",
       'upstream-segments.conf: a new user: no segment, prospecting');
    @r = request($p, 'GET', '/ad?e=view&p=P42', { Cookie => "uid=$u-ad" });
    is($r[2], "segments=[viewed_not_carted] pool=retargeting fraud=0\n",
       'upstream-segments.conf: a view of P42: the segment, retargeting');
    RulesNginx::stop_nginx($ngx);
}

done_testing();
