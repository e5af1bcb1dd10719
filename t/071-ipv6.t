# IPv6 Redis addresses, end to end on the IPv6 loopback (skipped on a
# machine that cannot listen on ::1):
#
# 1. rules_redis [::1]:PORT: accepted by nginx -t, malformed forms
#    refused with nginx's URL parser's messages; events applied through
#    a connection made over IPv6 (Redis sees the client at [::1]), the
#    connection named "[::1]:PORT" in the error log.
# 2. rules_redis_cluster [::1]:P1 [::1]:P2: a cluster of 3 masters that
#    announce ::1 (CLUSTER SLOTS and MOVED name "::1", not bracketed):
#    the map taken, the masters connected as "[::1]:PORT", events of many
#    users on all three masters, and a slot moved by hand: the MOVED
#    naming "::1:PORT" followed (the port after the last colon) to the
#    new master.
# 3. rules-replay --redis and --redis-cluster to ::1, written both ways
#    (HOST:PORT split at the last colon, "::1:PORT", and bracketed as
#    nginx takes it, "[::1]:PORT").
#
# The nodes also listen on 127.0.0.1, where RulesCluster's redis-cli
# calls reach them; their CLUSTER NODES addresses are "::1:PORT@CPORT",
# which its slot_master() reads.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Path qw(make_path remove_tree);
use File::Temp qw(tempdir);
use IO::Socket::IP;
use RulesNginx;
use RulesCluster;
use RulesMemcheck;
use RulesReplay;

{
    my $probe = IO::Socket::IP->new(Listen => 1, LocalHost => '::1',
                                    LocalPort => 0, ReuseAddr => 1);
    plan skip_all => 'cannot listen on [::1] (no IPv6 loopback): '
                     . ($@ || $!)
        unless $probe;
    close $probe;
}

my $dir = tempdir(CLEANUP => 1);
my $slow = RulesMemcheck::slowdown();

my $rules = '{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"}
]}';

# redis-cli to ::1 (the server is asked over IPv6 too)
sub cli6 {
    my ($port, @args) = @_;
    return RulesCluster::redis_cli('-h', '::1', '-p', $port, @args);
}

# nginx -t of an http block with this store line; (exit status, output)
sub nginx_t {
    my ($store) = @_;
    my $prefix = "$FindBin::Bin/servroot-071t";
    remove_tree($prefix);
    make_path("$prefix/conf", "$prefix/logs", "$prefix/html");
    RulesNginx::write_file("$prefix/html/rules.json", $rules);
    my $load = join '', map { "load_module $_;\n" }
                            split ' ', RulesNginx::module_path();
    RulesNginx::write_file("$prefix/conf/nginx.conf", <<"_EOC_");
${load}pid logs/nginx.pid;
error_log logs/error.log info;
events { worker_connections 64; }
http {
    $store
    rules_file ../html/rules.json;
    server {
        listen 127.0.0.1:@{[ RulesNginx::free_port() ]};
        location = /px {
            rules on;
            rules_field uid \$arg_uid;
            return 204;
        }
    }
}
_EOC_
    my $out = `@{[ RulesNginx::nginx_command($prefix, '-t') ]} 2>&1`;
    my $rc = $?;
    RulesMemcheck::check("$prefix/logs", "nginx -t: $store");
    return ($rc, $out);
}

# ---- 1. one Redis on [::1] --------------------------------------------

my $redis = RulesNginx::start_redis(args => ['--bind', '::1', '127.0.0.1']);
my $P = $redis->{port};
is(cli6($P, 'PING'), 'PONG', "Redis answers on [::1]:$P");

{
    my ($rc, $out) = nginx_t("rules_redis [::1]:$P;");
    is($rc, 0, "nginx -t: rules_redis [::1]:$P accepted") or diag($out);
    ($rc, $out) = nginx_t("rules_redis_cluster [::1]:$P [::1]:1;");
    is($rc, 0, 'nginx -t: rules_redis_cluster [::1]:P seeds accepted')
        or diag($out);

    # each refused with the directive and the value it read
    for my $bad (
        ['rules_redis', '[::1',         'invalid host in "rules_redis [::1"'],
        ['rules_redis', '[::1]',        '"rules_redis [::1]" needs host:port or unix:/path'],
        ['rules_redis', '[::1]:',       'invalid port in "rules_redis [::1]:"'],
        ['rules_redis', '[::1]:70000',  'invalid port in "rules_redis [::1]:70000"'],
        ['rules_redis', "[::g]:$P",     qq(invalid IPv6 address in "rules_redis [::g]:$P")],
        # the brackets are needed (nginx's URL syntax)
        ['rules_redis', "::1:$P",       qq(invalid port in "rules_redis ::1:$P")],
        ['rules_redis_cluster', '[::1', 'invalid host in "rules_redis_cluster [::1"'],
        ['rules_redis_cluster', '[::1]', '"rules_redis_cluster" needs host:port seed nodes, not "[::1]"'],
    ) {
        my ($directive, $addr, $msg) = @$bad;
        ($rc, $out) = nginx_t("$directive $addr;");
        isnt($rc, 0, "nginx -t: $directive $addr refused");
        like($out, qr/\[emerg\] \d+#\d+: \Q$msg\E in \S+nginx\.conf:\d+$/m,
             "nginx -t: $directive $addr: $msg") or diag($out);
    }
}

{
    my $ngx = RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-071a",
        workers => 1,
        files   => { 'rules.json' => $rules },
        http    => RulesNginx::pixel_http(
            store   => "rules_redis [::1]:$P;",
            prefix  => 't071a:',
            timeout => '2s',
            fields  => ['uid']));
    like(RulesNginx::wait_log($ngx, qr/rules redis \[::1\]:$P: connected/),
         qr/rules redis \[::1\]:$P: connected/,
         "the error log names the connection [::1]:$P");

    is(RulesNginx::pixel($ngx, 'uid=v6&ts=1000'), '204 ok []',
       'first event: ok, no match');
    is(RulesNginx::pixel($ngx, 'uid=v6&ts=2000'), '204 ok [twice]',
       'second event: ok, the count matched (state kept in Redis)');
    is(cli6($P, 'EXISTS', 't071a:{uid:v6}'), 1, 'the state key in Redis');

    # asked over 127.0.0.1: the clients at [::1] are nginx's
    my $clients = RulesNginx::redis_call($P, 'CLIENT', 'LIST');
    like($clients, qr/^id=\d+ addr=\[::1\]:\d+ /m,
         'nginx connected to Redis over IPv6 (a client at [::1])')
        or diag($clients);

    my $log = RulesNginx::error_log($ngx);
    unlike($log, qr/\[(alert|crit|emerg|error)\]/, 'no error logged')
        or diag($log);
    RulesNginx::stop_nginx($ngx);
}

# ---- 2. a cluster announcing ::1 -------------------------------------

my $cluster = RulesCluster->new(masters => 3, replicas => 0, args => [
    '--bind', '::1', '127.0.0.1', '--cluster-announce-ip', '::1']);
my @ports = $cluster->ports;
my %id = map { $_ => $cluster->node_id($_) } @ports;

# CLUSTER SLOTS as seen by a node: [[start, end, host, port], ...]
sub slot_ranges {
    my ($view) = @_;
    my $r = RulesNginx::redis_call($view, 'CLUSTER', 'SLOTS');
    return [ map { [ $_->[0], $_->[1], $_->[2][0], $_->[2][1] ] } @$r ];
}

# the port of the master of a slot, in the view of the node on $view
sub owner {
    my ($slot, $view) = @_;
    return $cluster->slot_master($slot, $view // $ports[0]);
}

{
    my $ranges = slot_ranges($ports[0]);
    is_deeply([ sort map { $_->[2] } @$ranges ], [ ('::1') x 3 ],
              'CLUSTER SLOTS names each of the 3 masters ::1')
        or diag(explain($ranges));
    is_deeply([ sort { $a <=> $b } map { $_->[3] } @$ranges ],
              [ sort { $a <=> $b } @ports ], 'at their ports');
    # the test helpers read them from CLUSTER NODES ("::1:PORT@CPORT")
    is_deeply([ sort { $a <=> $b } keys %{ $cluster->masters } ],
              [ sort { $a <=> $b } @ports ],
              'CLUSTER NODES read: the 3 masters at their ports');
}

my $ngx = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-071b",
    workers => 1,
    files   => { 'rules.json' => $rules },
    http    => RulesNginx::pixel_http(
        store   => "rules_redis_cluster [::1]:$ports[0] [::1]:$ports[1];",
        prefix  => 't071b:',
        timeout => '2s',
        fields  => ['uid']));

{
    my $ready = sub {
        my $l = $_[0];
        $l =~ /rules redis cluster: slot map from \[::1\]:(?:$ports[0]|$ports[1]): 3 masters/
        && !grep { $l !~ /rules redis \[::1\]:$_: connected/ } @ports;
    };
    my $log = RulesNginx::poll(20 * $slow, sub { RulesNginx::error_log($ngx) },
                               $ready);
    ok($ready->($log), 'the slot map from a seed, the 3 masters connected '
                       . 'as [::1]:PORT') or diag($log);
}

my $metric = sub { RulesNginx::metric($ngx, $_[0]) // 'none' };

{
    my @users = map { "u$_" } 1 .. 30;
    my @got = map { (RulesNginx::pixel($ngx, "uid=$_&ts=1000"),
                     RulesNginx::pixel($ngx, "uid=$_&ts=2000")) } @users;
    is_deeply(\@got, [ map { ('204 ok []', '204 ok [twice]') } @users ],
              '30 users, 2 events each: all ok, state kept');
    my $misplaced = grep {
        my $key = "t071b:{uid:$_}";
        cli6(owner(RulesCluster::key_slot($key)), 'EXISTS', $key) ne '1';
    } @users;
    is($misplaced, 0, "each user's key on the master of its slot");
    my @sizes = map { cli6($_, 'DBSIZE') } @ports;
    is(scalar(grep { $_ > 0 } @sizes), 3, "keys on all 3 masters (@sizes)");
    my $total = 0;
    $total += $_ for @sizes;
    is($total, 30, 'one key a user, none else');
    is($metric->('nginx_rules_cluster_redirects_total{type="moved"}'), 0,
       'no MOVED yet');
}

# a user whose slot holds no key yet, moved by hand to another master
# (IMPORTING, MIGRATING, then NODE on every master, as t/107 does)
{
    my ($user, $slot);
    for my $i (0 .. 10000) {
        my $s = RulesCluster::key_slot("t071b:{uid:m$i}");
        next if cli6(owner($s), 'CLUSTER', 'COUNTKEYSINSLOT', $s) ne '0';
        ($user, $slot) = ("m$i", $s);
        last;
    }
    my $from = owner($slot);
    my ($to) = grep { $_ != $from } @ports;
    my ($other) = grep { $_ != $from && $_ != $to } @ports;
    cli6($to, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $id{$from});
    cli6($from, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $id{$to});
    cli6($_, 'CLUSTER', 'SETSLOT', $slot, 'NODE', $id{$to})
        for $to, $from, $other;
    my $moved = RulesNginx::poll(10 * $slow, sub {
        !grep { (owner($slot, $_) // 0) != $to } @ports });
    ok($moved, "slot $slot moved from $from to $to in every view");
    is(cli6($from, 'GET', "t071b:{uid:$user}"), "MOVED $slot ::1:$to",
       'the old master answers MOVED with an IPv6 address');

    is(RulesNginx::pixel($ngx, "uid=$user&ts=1000"), '204 ok []',
       "an event of slot $slot: ok");
    is($metric->('nginx_rules_cluster_redirects_total{type="moved"}'), 1,
       'through one MOVED');
    is(RulesNginx::pixel($ngx, "uid=$user&ts=2000"), '204 ok [twice]',
       'the next event: ok, the state found');
    is(cli6($to, 'EXISTS', "t071b:{uid:$user}"), 1,
       'the key on the new master');
    is($metric->('nginx_rules_cluster_redirects_total{type="moved"}'), 1,
       'the map followed: no other MOVED');

    my $log = RulesNginx::error_log($ngx);
    unlike($log, qr/\[(alert|crit|emerg|error)\]/, 'no error logged')
        or diag($log);
    RulesNginx::stop_nginx($ngx);
}

# ---- 3. rules-replay to ::1 ---------------------------------------------

SKIP: {
    my $replay = RulesReplay::binary();
    skip "no $replay", 15 unless -x $replay;
    RulesNginx::write_file("$dir/rules.json", $rules);
    my $in = qq({"uid":"r1","ts":1000}\n{"uid":"r1","ts":2000}\n);
    my $out = qq({"matched":[]}\n{"matched":["twice"]}\n);

    # bare and bracketed as nginx takes it, to one Redis and a cluster
    my $r;
    for my $case (['--redis', "::1:$P", 't071c:'],
                  ['--redis-cluster', "::1:$ports[0],::1:$ports[1]",
                   't071d:'],
                  ['--redis', "[::1]:$P", 't071e:'],
                  ['--redis-cluster', "[::1]:$ports[0],[::1]:$ports[1]",
                   't071f:']) {
        my ($opt, $addr, $prefix) = @$case;
        $r = RulesReplay::run($dir, { in => $in }, $opt, $addr,
                              '--prefix', $prefix);
        is($r->{rc}, 0, "rules-replay $opt $addr: exit 0")
            or diag($r->{err});
        is($r->{out}, $out, "$opt $addr: the events replayed");
        my $key = "$prefix\{uid:r1}";
        my $node = $opt eq '--redis' ? $P
                                     : owner(RulesCluster::key_slot($key));
        is(cli6($node, 'EXISTS', $key), 1,
           "$opt $addr: the state key in Redis (on its master)");
    }

    for my $bad ('[::1]', '[]:' . $P, '[::1:' . $P) {
        $r = RulesReplay::run($dir, { in => $in }, '--redis', $bad);
        is($r->{rc}, 2, "rules-replay --redis $bad: exit 2")
            or diag($r->{err});
    }
}

done_testing();
