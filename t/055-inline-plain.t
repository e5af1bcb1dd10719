# Inline evaluation, what the block format cannot express:
#
# - the TTL of a state key, read from Redis (SPEC.md: no shorter than the
#   longest window or hold of the rules stored in it, relative to the
#   write as PEXPIRE, not to the event's time; README "How it works",
#   TTL: a write that needs more sets it a quarter beyond), against the
#   plain Redis (EVALSHA) and, when t/run-tests.sh started it, the one
#   with the rules Redis module (RULES.STORE), with the state cache on
#   and off;
# - a key holding an R1 state (an earlier version's): its first event
#   after the upgrade keeps the key's TTL and the state's records;
# - the server clock (no rules_time) against a window of seconds, with
#   pauses between the events: times are in milliseconds;
# - the startup warnings of rules_field, in the output of "nginx -t"
#   (t/030 only checks that such a configuration starts).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Path qw(make_path remove_tree);
use Time::HiRes qw(sleep time);
use RulesNginx;
use RulesMemcheck;

my @stores = (['script', $ENV{TEST_NGINX_REDIS_PORT}]);
push @stores, ['native', $ENV{TEST_NGINX_REDIS_NATIVE_PORT}]
    if $ENV{TEST_NGINX_REDIS_NATIVE_PORT};
plan skip_all => 'TEST_NGINX_REDIS_PORT is not set'
    unless $stores[0][1];

my $day = 86400000;

# ---- the TTL of a state key ----------------------------------------------

my $ttl_rules = <<'_EOC_';
{"rules": [
  {"id": "week", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "7d"},
  {"id": "month", "kind": "segment", "key": "uid", "type": "absence",
   "trigger": {"field": "type", "eq": "view"},
   "cancel": {"field": "type", "eq": "cart"}, "within": "30d"}
]}
_EOC_

# the longest window is 30d: after a write the key lives at least that
# long (less the test's own time), and at most a quarter more
my $ttl_min = 30 * $day - 60000;
my $ttl_max = 30 * $day + 30 * $day / 4;

# start_nginx()'s options for these rules, a store's port and a key prefix
sub ttl_conf {
    my ($port, $prefix, $extra) = @_;
    return (prefix  => "$FindBin::Bin/servroot-055",
            workers => 1,
            files   => { 'rules.json' => $ttl_rules },
            http    => RulesNginx::pixel_http(
                store  => "rules_redis 127.0.0.1:$port;",
                prefix => $prefix,
                fields => ['uid', 'type'],
                extra  => $extra));
}

for my $s (@stores) {
    for my $cache ('32m', '0') {
        my ($name, $port) = @$s;
        my $what = "$name, rules_state_cache $cache";
        my $prefix = "t055:$$:$name:$cache:";
        my $ngx = RulesNginx::start_nginx(
            ttl_conf($port, $prefix, "rules_state_cache $cache;"));
        my $key = "$prefix\{uid:t\}";
        ok(RulesNginx::wait_connected($ngx, $name eq 'native'),
           "$what: connected");

        # events of 1970: their windows are long over by the clock, not
        # by the TTL, which counts from the write
        is(RulesNginx::pixel($ngx, 'uid=t&type=view&ts=1000'),
           '204 ok [month]',
           "$what: a view, both rules");
        my $pttl = RulesNginx::redis_call($port, 'PTTL', $key);
        ok($pttl >= $ttl_min && $pttl <= $ttl_max,
           "$what: the key's TTL covers the 30d window from the write "
           . "($pttl ms: at least $ttl_min, at most $ttl_max)");

        # an event of the 7d rule only: the 30d record stays, and its TTL
        is(RulesNginx::pixel($ngx, 'uid=t&type=page&ts=2000'),
           '204 ok [week,month]',
           "$what: a page, the 7d rule only");
        $pttl = RulesNginx::redis_call($port, 'PTTL', $key);
        ok($pttl >= $ttl_min && $pttl <= $ttl_max,
           "$what: the TTL still covers the 30d record "
           . "($pttl ms: at least $ttl_min, at most $ttl_max)");

        RulesNginx::stop_nginx($ngx);
    }
}

# ---- a state of an earlier version --------------------------------------

# A key an earlier version wrote holds an R1 state (the folded records,
# no log) with a TTL that covers its longest record. The first event of
# the key after the upgrade makes it the snapshot of an R2 value: the
# records still match, and the key keeps its TTL though the event is of
# the 7d rule only (the TTL was cut to the 7d rule's).
my $replay = $ENV{RULES_REPLAY} // "$FindBin::Bin/../build/rules-replay";
SKIP: {
    skip "no $replay", 4 * @stores unless -x $replay;
    for my $s (@stores) {
        my ($name, $port) = @$s;
        my $prefix = "t055:$$:$name:legacy:";
        my $key = "$prefix\{uid:l\}";
        my %conf = ttl_conf($port, $prefix);

        # the R1 state of a view: the 30d rule's record, folded
        my $ngx = RulesNginx::start_nginx(%conf);
        is(RulesNginx::pixel($ngx, 'uid=l&type=view&ts=1000'),
           '204 ok [month]', "$name: a view, before the upgrade");
        open my $sf, '-|', $replay, '--rules',
            "$ngx->{prefix}/html/rules.json",
            '--redis', "127.0.0.1:$port", '--state', $key or die;
        binmode $sf;
        my $state = do { local $/; <$sf> } // '';
        close $sf;
        RulesNginx::stop_nginx($ngx);

        # as the earlier version stored it (its TTL: the 30d record's)
        RulesNginx::redis_call($port, 'SET', $key, $state, 'PX', 30 * $day);

        # a new nginx: its state cache does not know the key
        $ngx = RulesNginx::start_nginx(%conf);
        is(RulesNginx::pixel($ngx, 'uid=l&type=page&ts=2000'),
           '204 ok [week,month]',
           "$name: after the upgrade, the R1 state's record still matches");
        my $pttl = RulesNginx::redis_call($port, 'PTTL', $key);
        ok($pttl >= $ttl_min && $pttl <= 30 * $day,
           "$name: the key kept the R1 state's TTL, longer than the 7d "
           . "rule's ($pttl ms: at least $ttl_min)");
        like(RulesNginx::redis_call($port, 'GET', $key) // '',
             qr/\AR2.{20}\Q$state\E/s,
             "$name: the R1 state is the snapshot of the key's R2 value");
        RulesNginx::stop_nginx($ngx);
    }
}

# ---- the server clock ----------------------------------------------------

# A record also expires by the wall clock, its window after its last
# write: an event more than a window after the key's previous one finds
# it gone whatever the unit of the event times.  So the events here come
# less than the window apart (the record stays) while the first one
# leaves the window: only a window in milliseconds drops it.
# (Under valgrind, every time here three times longer.)
{
    my $port = $stores[0][1];
    my $k = RulesMemcheck::slowdown() > 1 ? 3 : 1;
    my ($window, $pause) = (3 * $k, 1.8 * $k);
    my $ngx = RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-055",
        workers => 1,
        files   => { 'rules.json' => <<"_EOC_" },
{"rules": [
  {"id": "thrice", "kind": "segment", "key": "uid", "type": "count",
   "min": 3, "within": "${window}s"}
]}
_EOC_
        http    => RulesNginx::pixel_http(
            store  => "rules_redis 127.0.0.1:$port;",
            prefix => "t055:$$:clock:",
            time   => '',
            fields => ['uid']));

    # three events at once: inside 3s
    is(join(' | ', map { RulesNginx::pixel($ngx, 'uid=c1') } 1 .. 3),
       '204 ok [] | 204 ok [] | 204 ok [thrice]',
       'server clock: three events at once match');

    # a pause (1.8 s, less than the 3 s window) apart: at the third, the
    # first is 3.6 s old (out of the window), the second 1.8 s (in it;
    # the record, written 1.8 s ago, is there)
    is(RulesNginx::pixel($ngx, 'uid=c2'),
       '204 ok []', 'server clock: first event');
    sleep $pause;
    my $t2 = time;
    is(RulesNginx::pixel($ngx, 'uid=c2'),
       '204 ok []', 'server clock: second, a pause later');
    sleep $pause;
    my $t3 = time;
    is(RulesNginx::pixel($ngx, 'uid=c2'), '204 ok []',
       'server clock: third, a pause later: the first is out of the window '
       . '(with times in seconds, or any coarser unit, it would be in)');
    is(RulesNginx::pixel($ngx, 'uid=c2'), '204 ok [thrice]',
       'server clock: a fourth at once: the last three are in the window');
    my $gap = $t3 - $t2;
    ok($gap < $window - 0.2, "server clock: the second and third events "
                             . "were ${gap}s apart, inside the window");

    RulesNginx::stop_nginx($ngx);
}

# ---- startup warnings (nginx -t) -------------------------------------------

# "nginx -t" of a configuration whose /px location has these lines (and
# its server those); returns (exit status, output)
sub nginx_t {
    my ($lines, $server_lines) = @_;
    $server_lines //= '';
    my $prefix = "$FindBin::Bin/servroot-055";
    remove_tree($prefix);
    make_path("$prefix/conf", "$prefix/logs", "$prefix/html");
    open my $fh, '>', "$prefix/html/rules.json" or die $!;
    print $fh <<'_EOC_';
{"rules": [{"id": "a", "kind": "segment", "key": "uid", "type": "count",
            "min": 1, "within": "1s"},
           {"id": "d1", "kind": "fraud", "key": "device", "type": "count",
            "min": 1, "within": "1s"},
           {"id": "d2", "kind": "fraud", "key": "device", "type": "count",
            "min": 2, "within": "1s"}]}
_EOC_
    close $fh;
    my $load = join '', map { "load_module $_;\n" }
                            split ' ', RulesNginx::module_path();
    open $fh, '>', "$prefix/conf/nginx.conf" or die $!;
    print $fh <<"_EOC_";
${load}pid logs/nginx.pid;
error_log logs/error.log info;
events { worker_connections 64; }
http {
    rules_redis 127.0.0.1:$stores[0][1];
    rules_file ../html/rules.json;
    server {
        listen 127.0.0.1:@{[ RulesNginx::free_port() ]};
        $server_lines
        location = /px {
            rules on;
            $lines
            return 204;
        }
    }
}
_EOC_
    close $fh;
    my $out = `@{[ RulesNginx::nginx_command($prefix, '-t') ]} 2>&1`;
    my $rc = $?;
    RulesMemcheck::check("$prefix/logs", "nginx -t: $lines");
    return ($rc, $out);
}

# "FILE:LINE" of the first line of the last nginx_t()'s nginx.conf that
# holds TEXT: where a warning about that directive must point
sub conf_line {
    my ($text) = @_;
    my $conf = "$FindBin::Bin/servroot-055/conf/nginx.conf";
    open my $fh, '<', $conf or die "$conf: $!";
    while (<$fh>) {
        return "$conf:$." if index($_, $text) >= 0;
    }
    die "no \"$text\" in $conf";
}

{
    my ($rc, $out) = nginx_t("rules_field uid \$arg_uid;\n"
                             . '            rules_field colour $arg_c;');
    is($rc, 0, 'a rules_field no rule uses: nginx -t passes');
    my $at = quotemeta conf_line('rules_field colour');
    like($out, qr/\[warn\] \d+#\d+: rules_field "colour" is not used by any rule of "[^"]*rules\.json" in $at$/m,
         "a rules_field no rule uses: warned, with its name and the "
         . "directive's file and line (not the http block's end)")
        or diag($out);
    unlike($out, qr/"uid" is not used/, 'the field a rule uses: no warning');
    $at = quotemeta conf_line('rules_field uid');
    like($out, qr/\[warn\] \d+#\d+: no "rules_field device" in location "\/px": its rules are not evaluated there \(2 rules keyed on it: "d1", \.\.\.\) in $at$/m,
         'a key no rules_field gives: warned, with its rules and where '
         . "the location's first rules_field is") or diag($out);
    unlike($out, qr/no "rules_field uid"/, 'the key a field gives: no warning');

    # a server's fields, merged into its location: warned about once
    ($rc, $out) = nginx_t('', 'rules on; rules_field uid $arg_uid; '
                              . 'rules_field colour $arg_c;');
    is($rc, 0, "a server's fields: nginx -t passes");
    my @unused = $out =~ /rules_field "colour" is not used/g;
    is(scalar @unused, 1, "a server's unused field: warned once")
        or diag($out);
    my @nokey = $out =~ /no "rules_field device" at server level: its rules are not evaluated there/g;
    is(scalar @nokey, 1, "a server's missing key: warned once, at server level")
        or diag($out);

    # the same, with a JSON location before /px: that one warns about
    # nothing, and /px still gets the warnings (the JSON location took
    # the server's fields as warned about)
    ($rc, $out) = nginx_t('', 'rules_field uid $arg_uid; '
                              . 'rules_field colour $arg_c; '
                              . 'location = /events { rules on; '
                              . 'rules_body json; }');
    is($rc, 0, 'a JSON location first: nginx -t passes');
    @unused = $out =~ /rules_field "colour" is not used/g;
    is(scalar @unused, 1, "a JSON location first: the server's unused "
                          . 'field warned about once') or diag($out);
    @nokey = $out =~ /no "rules_field device" in location "\/px": its rules are not evaluated there/g;
    is(scalar @nokey, 1, 'a JSON location first: the missing key warned '
                         . 'about in /px') or diag($out);
    unlike($out, qr/in location "\/events"/,
           'a JSON location first: nothing about it') or diag($out);

    ($rc, $out) = nginx_t('rules_body json;');
    is($rc, 0, 'a JSON location: nginx -t passes');
    unlike($out, qr/\[warn\]/,
           'a JSON location (its objects carry the keys): no warning')
        or diag($out);

    ($rc, $out) = nginx_t('rules_field uid "$arg_uid$request_uri";');
    is($rc, 0, 'a field mixing $arg_ with another variable: nginx -t passes');
    like($out, qr/\[warn\] \d+#\d+: rules_field "uid": "\$arg_uid\$request_uri" mixes \$arg_ variables with others: not percent-decoded \(give the query argument a field of its own\)/,
         'a field mixing $arg_ with another variable: warned') or diag($out);

    ($rc, $out) = nginx_t('rules_field uid "$arg_uid"; '
                          . 'rules_field device $http_x_device; '
                          . 'rules_field ts $arg_ts; rules_time ts;');
    is($rc, 0, 'only $arg_ fields, the time field unused by rules: passes');
    unlike($out, qr/\[warn\]/,
           'only $arg_ fields, the time field unused by rules: no warning')
        or diag($out);
}

done_testing();
