# The Redis connection cannot be made, or kept, for want of a resource:
#
#   - Redis at maxclients: it accepts the connection, answers the first
#     command "-ERR max number of clients reached" and closes it;
#   - the worker out of descriptors (worker_rlimit_nofile) when it must
#     connect again: socket() fails with EMFILE;
#   - every worker_connections slot taken by a client when it must
#     connect again: ngx_get_connection() fails;
#   - Redis' client-output-buffer-limit for normal clients under the size
#     of a state's reply: Redis closes the connection on that reply;
#   - a Redis Cluster master at maxclients: its slots' events fail, the
#     other masters' go on.
#
# Each time: the worker logs the cause, answers every request at once per
# rules_on_error (open: no match; closed: fraud, here rejected), keeps to
# its back-off (counted on Redis' side), connects again once the resource
# is back, and ends with the descriptors it had.  A change of cause while
# the attempts fail is logged at the next attempt, not at the next power
# of two.  (CLIENT KILL with calls in flight: t/090.)

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(sleep time);
use RulesNginx;
use RulesCluster;

my $slow = RulesMemcheck::slowdown();
my $RECOVERY = 15 * $slow;      # the back-off is 5 s at most

my $redis = RulesNginx::start_redis();
my $port = $redis->{port};

my $TWICE = <<'_EOC_';
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"},
  {"id": "burst", "kind": "fraud", "key": "uid", "type": "count",
   "min": 100, "within": "1h"}
]}
_EOC_

# /px fails open; /pxc fails closed and rejects fraud with 429
my $CLOSED = <<'_EOC_';
        location = /pxc {
            rules on;
            rules_on_error closed;
            rules_reject_fraud 429;
            rules_field uid $arg_uid;
            rules_time $arg_ts;
            add_header X-Status $rules_status always;
            add_header X-Fraud $rules_fraud always;
            return 204;
        }
_EOC_

sub nginx {
    my ($name, %opt) = @_;
    my $ngx = RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-069$name",
        workers => 1,
        files   => { 'rules.json' => $opt{rules} // $TWICE },
        main    => $opt{main},
        events  => $opt{events},
        http    => RulesNginx::pixel_http(
            store     => "rules_redis 127.0.0.1:$port;",
            prefix    => "t069$name:$$:",
            timeout   => '2s',
            fields    => $opt{fields} // ['uid'],
            extra     => $opt{extra},
            locations => $CLOSED));
    ok(RulesNginx::wait_connected($ngx), "$name: connected");
    return $ngx;
}

# GET /px (open) or /pxc (closed): "status X-Status [X-Rules]" (/pxc:
# "status X-Status fraud=X-Fraud"), and the seconds it took
sub px {
    my ($ngx, $query, $loc) = @_;
    my $t0 = time;
    return (RulesNginx::pixel($ngx, $query), time - $t0)
        if ($loc // '/px') eq '/px';
    my ($st, $h) = RulesNginx::get($ngx->{port}, "$loc?$query");
    return ("$st " . ($h->{'x-status'} // '-') . ' fraud='
            . ($h->{'x-fraud'} // '-'), time - $t0);
}

# Redis is down or refused: both modes answer at once (the deadline is
# 2 s), open with no match, closed rejected as fraud.
sub answered_per_on_error {
    my ($ngx, $what, $uid) = @_;
    my ($a, $t) = px($ngx, "uid=$uid&ts=5000");
    is($a, '204 error []', "$what: open: answered, status error");
    cmp_ok($t, '<', 1, "$what: open: at once (${\ sprintf '%.3f', $t} s)");
    ($a, $t) = px($ngx, "uid=$uid&ts=5001", '/pxc');
    is($a, '429 error fraud=1', "$what: closed: marked fraud, rejected");
    cmp_ok($t, '<', 1, "$what: closed: at once (${\ sprintf '%.3f', $t} s)");
}

# Until an event is ok again and the next one of its key matches.
sub recovers {
    my ($ngx, $what, $uid) = @_;
    my $ok = RulesNginx::poll($RECOVERY,
        sub { (px($ngx, "uid=$uid&ts=6000"))[0] }, sub { $_[0] =~ / ok / },
        0.1);
    is($ok, '204 ok []', "$what: an event is ok again");
    is((px($ngx, "uid=$uid&ts=6001"))[0], '204 ok [twice]',
       "$what: its state was written");
}

# The worker's descriptors back to what it had (closes take a moment).
sub same_fds {
    my ($worker, $before, $what) = @_;
    my $n = RulesNginx::poll(5 * $slow, sub { RulesNginx::fd_count($worker) },
                             sub { $_[0] == $before });
    is($n, $before, "$what: the worker has its $before descriptors again");
}

sub no_crash {
    my ($ngx, $worker, $what) = @_;
    is_deeply([RulesNginx::worker_pids($ngx)], [$worker],
              "$what: the same worker");
    unlike(RulesNginx::error_log($ngx), qr/exited on signal/,
           "$what: no worker crashed");
}

# Client connections that nginx accepts and keeps: a request whose
# header is not over (once nginx has read its start, not reusable: nginx
# does not close it to make room); finish() ends one's header and reads
# its answer.
sub hold_clients {
    my ($ngx, $n) = @_;
    my @c;
    for my $i (1 .. $n) {
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$ngx->{port}")
            or last;
        print $s "GET /px?uid=held$i&ts=5000 HTTP/1.0\r\nHost: x\r\n";
        push @c, $s;
    }
    return @c;
}

# Every free worker_connections slot taken the same way, one client at a
# time: each read by nginx (its bytes gone from the socket's queue,
# /proc/net/tcp) before the next is accepted, so that none is still
# reusable when nginx looks for a slot (it would close it to make room);
# until nginx closes one it has no slot for.
sub fill_slots {
    my ($ngx, $max) = @_;
    my @c;
    for my $i (1 .. $max) {
        my ($s) = hold_clients($ngx, 1) or last;
        my $unread = sub {
            my $peer = sprintf '0100007F:%04X 0100007F:%04X 01 ',
                               $ngx->{port}, $s->sockport;
            open my $fh, '<', '/proc/net/tcp' or return 0;
            for (<$fh>) {
                return hex $1 if /^\s*\d+: \Q$peer\E[0-9A-F]+:([0-9A-F]+)/;
            }
            return 0;       # read, or closed
        };
        RulesNginx::poll(5 * $slow, $unread, sub { $_[0] == 0 }, 0.005);
        if (IO::Select->new($s)->can_read(0.05 * $slow)) {
            close $s;       # closed by nginx: no slot for it
            return @c;
        }
        push @c, $s;
    }
    return @c;
}

sub finish {
    my ($s) = @_;
    my $t0 = time;
    print $s "\r\n";
    return (RulesNginx::pixel_answer($s), time - $t0);
}

# The lines of the worker's connection attempts: [level, text, attempts]
sub attempt_lines {
    my ($ngx) = @_;
    my $log = RulesNginx::error_log($ngx);
    my $attempts = qr/[^\n]*\((\d+) failed attempts?\)[^\n]*/;
    my @l;
    while ($log =~ /^\S+ \S+ \[(\w+)\] [^\n]*?rules redis [\d.]+:\d+: ($attempts)$/mg)
    {
        push @l, [$1, $2, $3];
    }
    return @l;
}

my $ctl = RulesNginx::redis_conn($port);    # stays: a client Redis counts

sub redis { RulesNginx::redis_call($ctl, @_) }

sub stat_of {
    my ($name) = @_;
    return redis('INFO', 'stats') =~ /^$name:(\d+)/m ? $1 : undef;
}


# ---- 1. Redis at maxclients -----------------------------------------

{
    my $ngx = nginx('a');
    my ($worker) = RulesNginx::worker_pids($ngx);
    is((px($ngx, 'uid=a&ts=1000'))[0], '204 ok []', 'maxclients: ok before');
    my $fds = RulesNginx::fd_count($worker);

    # no room for another client; the worker's connection killed
    is(redis('CONFIG', 'SET', 'maxclients', '1'), 'OK', 'maxclients 1');
    my $rejected0 = stat_of('rejected_connections');
    is(redis('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes'), 1,
       "the worker's connection killed");
    my $first = RulesNginx::poll(10 * $slow,
        sub { stat_of('rejected_connections') > $rejected0 ? time : 0 },
        undef, 0.01);
    ok($first, 'maxclients: the worker tried again, refused by Redis');

    # 3 s at maxclients, events sent all along
    my @answers;
    while (time < $first + 3) {
        push @answers, (px($ngx, 'uid=b&ts=5000'))[0];
        sleep 0.2;
    }
    my $attempts = stat_of('rejected_connections') - $rejected0;
    is_deeply([grep { $_ ne '204 error []' } @answers], [],
              scalar(@answers) . ' events at maxclients: each error, open');
    cmp_ok($attempts, '>=', 4, "maxclients: tried again ($attempts "
           . 'connections in 3 s)');
    cmp_ok($attempts, '<=', 7, 'maxclients: no more than the back-off '
           . 'allows (100 ms doubling: at most 6 in 3 s)');
    answered_per_on_error($ngx, 'maxclients', 'c');

    my @lines = attempt_lines($ngx);
    my $cause = 'SCRIPT LOAD failed: ERR max number of clients reached';
    like($lines[0][1] // '', qr/^\Q$cause\E \(1 failed attempt\)/,
         'maxclients: logged, naming the cause') or diag(explain(\@lines));
    is($lines[0][0], 'error', 'maxclients: the first line at error');
    is_deeply([map { $_->[0] } @lines[1 .. $#lines]],
              [('warn') x (@lines - 1)], 'maxclients: the next ones at warn');
    is_deeply([map { $_->[2] } @lines], [1, 2, 4],
              'maxclients: logged at attempts 1, 2, 4 (the 8th comes after '
              . '8 s at least)');

    # a slot is free again
    is(redis('CONFIG', 'SET', 'maxclients', '10000'), 'OK',
       'maxclients 10000');
    recovers($ngx, 'maxclients', 'd');
    like(RulesNginx::error_log($ngx), qr/\[notice\] .*: connected again, \d+ ms after the failure \(\d+ failed attempts\)/,
         'maxclients: "connected again" logged');
    same_fds($worker, $fds, 'maxclients');
    no_crash($ngx, $worker, 'maxclients');
    unlike(RulesNginx::error_log($ngx), qr/\[(alert|crit|emerg)\]/,
           'maxclients: no alert');
    RulesNginx::stop_nginx($ngx);
}

# Redis killed and started again on its port (a new control connection)
sub restart_redis {
    $redis = RulesNginx::start_redis(port => $port);
    $ctl = RulesNginx::redis_conn($port);
}


# ---- 2. the worker out of descriptors when it connects again ---------

SKIP: {
    # valgrind keeps descriptors of its own at the top of the limit and
    # refuses the worker's setrlimit()
    skip 'the descriptor limit under valgrind', 1
        if RulesMemcheck::valgrind();

    my $NOFILE = 32;
    my $ngx = nginx('b', main => "worker_rlimit_nofile $NOFILE;",
                    events => 'worker_connections 256;');
    my ($worker) = RulesNginx::worker_pids($ngx);
    my $fds = RulesNginx::fd_count($worker);
    cmp_ok($fds, '<', $NOFILE - 4, "EMFILE: $fds descriptors of $NOFILE");

    # Redis down: attempts refused; from the fifth on (not a power of
    # two: logged only as a change), the descriptors are all taken
    RulesNginx::stop_pid($redis->{pid}, 'KILL');
    close $ctl;
    my $log = RulesNginx::wait_log($ngx, qr/\(4 failed attempts\)/, 10 * $slow);
    like($log, qr/connect failed: Connection refused \(4 failed attempts\)/,
         'EMFILE: Redis down, four attempts refused');
    my @held = hold_clients($ngx, $NOFILE);
    like(RulesNginx::wait_log($ngx, qr/accept4?\(\) failed \(24: /, 5 * $slow),
         qr/\[crit\] .*accept4?\(\) failed \(24: Too many open files\)/,
         "EMFILE: the worker's descriptors all taken (nginx says so)");
    restart_redis();

    my $re = qr/connect failed: Can't create socket: Too many open files/;
    RulesNginx::wait_log($ngx, $re, 20 * $slow);
    my ($line) = grep { $_->[1] =~ $re } attempt_lines($ngx);
    ok($line, 'EMFILE: logged, naming the cause');
    like($line->[2] // '', qr/^[567]$/, 'EMFILE: at the first attempt it '
         . 'failed (a change of cause), not at the eighth');
    is($line->[0], 'warn', 'EMFILE: at warn (the outage began with an '
       . 'error line)');

    my ($a, $t) = finish($held[0]);
    is($a, '204 error []', 'EMFILE: a held request answered, error, open');
    cmp_ok($t, '<', 1, 'EMFILE: at once');

    close $_ for @held;
    recovers($ngx, 'EMFILE', 'e');
    same_fds($worker, $fds, 'EMFILE');
    no_crash($ngx, $worker, 'EMFILE');
    unlike(RulesNginx::error_log($ngx), qr/\[(alert|emerg)\]/,
           'EMFILE: no alert');
    RulesNginx::stop_nginx($ngx);
}


# ---- 3. every worker_connections slot taken when it connects again ---

{
    my $ngx = nginx('c', events => 'worker_connections 16;');
    my ($worker) = RulesNginx::worker_pids($ngx);
    my $fds = RulesNginx::fd_count($worker);

    RulesNginx::stop_pid($redis->{pid}, 'KILL');
    close $ctl;
    RulesNginx::wait_log($ngx, qr/\(1 failed attempt\)/, 10 * $slow);

    # (again if an attempt held a slot while the last client came: it
    # frees it when it fails)
    my $re = qr/no free connection \(worker_connections\)/;
    my @held;
    for my $try (1 .. 3) {
        push @held, fill_slots($ngx, 20);
        last if RulesNginx::wait_log($ngx, $re, 5 * $slow) =~ $re;
    }
    cmp_ok(scalar @held, '>=', 10, 'worker_connections: ' . @held
           . ' clients took every slot left (of 16)');
    my ($line) = grep { $_->[1] =~ $re } attempt_lines($ngx);
    ok($line, 'worker_connections: logged, naming the cause');
    restart_redis();

    my ($a, $t) = finish($held[0]);
    is($a, '204 error []', 'worker_connections: a held request answered, '
       . 'error, open');
    cmp_ok($t, '<', 1, 'worker_connections: at once');

    close $_ for @held;
    recovers($ngx, 'worker_connections', 'f');
    same_fds($worker, $fds, 'worker_connections');
    no_crash($ngx, $worker, 'worker_connections');
    RulesNginx::stop_nginx($ngx);
}


# ---- 4. replies over Redis' client-output-buffer-limit ---------------

{
    my $DISTINCT = <<'_EOC_';
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"},
  {"id": "values", "kind": "segment", "key": "uid", "type": "distinct",
   "field": "v", "min": 1000, "within": "7d"}
]}
_EOC_
    # no state cache: every event brings the key's whole value back
    my $ngx = nginx('d', rules => $DISTINCT, fields => ['uid', 'v'],
                    extra => 'rules_state_cache 0;');
    my ($worker) = RulesNginx::worker_pids($ngx);
    my $fds = RulesNginx::fd_count($worker);

    my $v = 'v' x 1000;
    my @big = map { (px($ngx, "uid=big&ts=" . (1000 + $_) . "&v=$v$_"))[0] }
                  1 .. 48;
    is_deeply([grep { $_ !~ / ok / } @big], [], 'a state of 48 KB written');
    my $len = redis('STRLEN', "t069d:$$:{uid:big}");
    cmp_ok($len, '>', 40000, "its value: $len bytes");

    # (Redis 7 counts whole 16 KB blocks: a limit under that closes the
    # connection on any reply that does not fit in its static buffer)
    is(redis('CONFIG', 'SET', 'client-output-buffer-limit',
             'normal 32kb 32kb 1'), 'OK', 'client-output-buffer-limit 32kb');
    my ($a, $t) = px($ngx, 'uid=big&ts=2000&v=x');
    is($a, '204 error []', 'the big state\'s event: error, open');
    cmp_ok($t, '<', 1, 'at once (Redis closed the connection)');
    like(RulesNginx::wait_log($ngx, qr/connection lost/),
         qr/\[error\] .*: connection lost: Server closed the connection, 1 command failed/,
         'logged at error: connection lost, the call failed');
    recovers($ngx, 'output buffer limit, another key', 'g');

    is(redis('CONFIG', 'SET', 'client-output-buffer-limit', 'normal 0 0 0'),
       'OK', 'client-output-buffer-limit off again');
    my $ok = RulesNginx::poll($RECOVERY,
        sub { (px($ngx, 'uid=big&ts=3000&v=y'))[0] },
        sub { $_[0] =~ / ok / }, 0.1);
    is($ok, '204 ok [twice]', 'the big state\'s events are ok again');
    same_fds($worker, $fds, 'output buffer limit');
    no_crash($ngx, $worker, 'output buffer limit');
    unlike(RulesNginx::error_log($ngx), qr/\[(alert|crit|emerg)\]/,
           'output buffer limit: no alert');
    RulesNginx::stop_nginx($ngx);
}


# ---- 5. a cluster master at maxclients --------------------------------

{
    my $cluster = RulesCluster->new(replicas => 0);
    my $pfx = "t069e:$$:";
    my $ngx = RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-069e",
        workers => 1,
        files   => { 'rules.json' => $TWICE },
        http    => RulesNginx::pixel_http(
            store     => 'rules_redis_cluster ' . $cluster->seeds . ';',
            prefix    => $pfx,
            timeout   => '2s',
            fields    => ['uid'],
            locations => $CLOSED));
    ok($cluster->wait_nginx_ready($ngx, 1, 20 * $slow),
       'cluster: the worker has the map and its connections');
    my ($worker) = RulesNginx::worker_pids($ngx);
    my ($full, @others) = $cluster->users_on_masters($pfx, 'u', 3);
    my $mport = $cluster->slot_master(
                    RulesCluster::key_slot("$pfx\{uid:$full}"));
    my $mctl = RulesNginx::redis_conn($mport);
    my $rejected = sub {
        RulesNginx::redis_call($mctl, 'INFO', 'stats')
            =~ /^rejected_connections:(\d+)/m ? $1 : undef;
    };

    is(RulesNginx::redis_call($mctl, 'CONFIG', 'SET', 'maxclients', '1'),
       'OK', "cluster: the master of $full at maxclients 1");
    my $rejected0 = $rejected->();
    is(RulesNginx::redis_call($mctl, 'CLIENT', 'KILL', 'TYPE', 'normal',
                              'SKIPME', 'yes'), 1,
       "cluster: the worker's connection to it killed");
    my $first = RulesNginx::poll(10 * $slow,
        sub { $rejected->() > $rejected0 ? time : 0 }, undef, 0.01);
    ok($first, 'cluster: the worker tried again, refused');

    # the maps asked of the other masters meanwhile (CLUSTER SLOTS)
    my @oports = grep { $_ != $mport } keys %{ $cluster->masters };
    my $maps = sub {
        my $sum = 0;
        for my $p (@oports) {
            $sum += $1 if $cluster->cli($p, 'INFO', 'commandstats')
                          =~ /^cmdstat_cluster\|slots:calls=(\d+)/m;
        }
        return $sum;
    };
    my $maps0 = $maps->();

    my @bad;
    my $n = 0;
    while (time < $first + 3) {
        my $ts = 5000 + $n++;
        my ($a) = px($ngx, "uid=$full&ts=$ts");
        push @bad, "$full: $a" unless $a eq '204 error []';
        for my $u (@others) {
            ($a) = px($ngx, "uid=$u&ts=$ts");
            push @bad, "$u: $a" unless $a =~ /^204 ok /;
        }
        sleep 0.1;
    }
    is_deeply(\@bad, [], "cluster: $n rounds: that master's events error "
              . 'at once, the other masters\' ok');
    my $attempts = $rejected->() - $rejected0;
    cmp_ok($attempts, '>=', 4, "cluster: tried again ($attempts in 3 s)");
    cmp_ok($attempts, '<=', 7, 'cluster: within the back-off');

    # every event of the refused master's slots asks for the map; the
    # same map again doubles the interval up to 1 s (100 ms each before:
    # about 30 in these 3 s)
    my $asked = $maps->() - $maps0;
    cmp_ok($asked, '>=', 2, "cluster: the map asked for again ($asked in 3 s)");
    cmp_ok($asked, '<=', 10, 'cluster: the same map, asked for less often');
    answered_per_on_error($ngx, 'cluster', $full);
    my $cause = 'SCRIPT LOAD failed: ERR max number of clients + cluster '
                . 'connections reached (1 failed attempt)';
    like(RulesNginx::error_log($ngx),
         qr/\[error\] [^\n]*rules redis 127\.0\.0\.1:$mport: \Q$cause\E/,
         'cluster: logged at error, naming the node and the cause');

    is(RulesNginx::redis_call($mctl, 'CONFIG', 'SET', 'maxclients', '10000'),
       'OK', 'cluster: maxclients 10000');
    recovers($ngx, 'cluster', $full);
    no_crash($ngx, $worker, 'cluster');
    unlike(RulesNginx::error_log($ngx), qr/\[(alert|crit|emerg)\]/,
           'cluster: no alert');
    RulesNginx::stop_nginx($ngx);
}

done_testing();
