# Allocations failing inside running workers (t/lib/failalloc.c, an
# LD_PRELOAD injector armed through a control file, only in the
# master's children): pixel GETs and JSON bodies sent 25 at a time while
# the module's allocations and those of hiredis, jansson and pcre2 fail
# at random (seeded) or every n-th, in bursts, with Redis killed and
# restarted and nginx reloaded under it, and a round where every
# allocation of the workers may fail.  No worker crashes, every request
# is answered within its deadline (nginx's own failures, only in that
# last round, may close a connection unanswered), an event answered ok
# never carries a wrong match, and once the failures stop the workers
# serve as before, with no descriptor kept.
#
# Then each hiredis workaround, made sure of (the random rounds reach
# them too, but not by design: "a block set aside used" 17-26 times and
# "a command not sent" 70-197 times a run, over 12 runs): Redis killed while
# every allocation of the module and its libraries fails (a context
# freed takes blocks set aside), hiredis' own allocations failing under
# traffic (each command taken back, its event "error"); and a reload
# whose new workers cannot make their Redis client (under=, fresh=):
# they say so once at alert, answer events "error", try again every
# second, and start it once memory is back; and a reload whose new
# workers' connect callback writes only part of the setup commands
# (short=) while hiredis' allocations fail: they connect and serve.
#
# The crashes it found, all in hiredis 0.14.1 on a failed allocation
# (README, Hardening): its aborting hi_malloc()/hi_strdup() at each
# connect and free of a context, its output buffer left NULL after a
# write (also after the connect callback's partial write), its reader's
# buffer asserted after a reply; and a command whose callback it could
# not record, answered with the next one's reply.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(sleep time);
use RulesNginx;
use RulesMemcheck;

plan skip_all => 'the injector replaces malloc: not under valgrind or ASan'
    if RulesMemcheck::active();

my $root = "$FindBin::Bin/..";
my $dir = "$FindBin::Bin/servroot-068";
my $src = "$FindBin::Bin/lib/failalloc.c";

# the injector: make's (build/failalloc.so) when it is newer than its
# source, else built here
my $so = "$root/build/failalloc.so";
if (!-f $so || -M $so > -M $src) {
    $so = "$FindBin::Bin/failalloc-068.so";
    my $cc = $ENV{CC} // 'cc';
    system("$cc -shared -fPIC -O2 -o $so $src 2>/dev/null") == 0
        or plan skip_all => "the injector ($src) cannot be built with $cc";
}

my $redis = RulesNginx::start_redis();
my $rport = $redis->{port};

my $RULES = <<'_EOC_';
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"},
  {"id": "bot", "kind": "fraud", "key": "ip", "type": "count",
   "where": {"field": "ua", "regex": "^bot[0-9]+$"}, "min": 1,
   "within": "1h"},
  {"id": "many", "kind": "segment", "key": "ip", "type": "distinct",
   "field": "uid", "min": 3, "within": "1h"},
  {"id": "seq", "kind": "segment", "key": "uid", "type": "sequence",
   "steps": [{"where": {"field": "path", "eq": "/a"}},
             {"where": {"field": "path", "prefix": "/b"}}],
   "within": "1h"}
]}
_EOC_

# the control file is read by the library when nginx starts (inherited
# by every process it forks); written, it arms the workers
my $ctl = "$FindBin::Bin/failalloc-068.ctl";
unlink $ctl, glob("$ctl.*");
my $ngx;
{
    local $ENV{FAILALLOC_CTL} = $ctl;
    local $ENV{LD_PRELOAD} = $so;
    $ngx = RulesNginx::start_nginx(
        prefix  => $dir,
        workers => 2,
        files   => { 'rules.json' => $RULES },
        http    => RulesNginx::pixel_http(
            store  => "rules_redis 127.0.0.1:$rport;",
            prefix => "t068:$$:",
            fields => ['uid', 'ip', 'ua', 'path'],
            locations => <<'_EOC_'));
        location = /events {
            rules on;
            rules_body json;
            rules_time ts;
            rules_field ip $remote_addr;
            add_header X-Rules $rules_matched always;
            add_header X-Status $rules_status always;
            return 204;
        }
        location = /events-closed {
            rules on;
            rules_body json;
            rules_time ts;
            rules_on_error closed;
            rules_reject_fraud 403;
            add_header X-Rules $rules_matched always;
            add_header X-Status $rules_status always;
            return 204;
        }
_EOC_
}
my $master = RulesNginx::nginx_pid($ngx);
ok(RulesNginx::wait_connected($ngx, 0), 'connected');

# Requests sent at once, each on its connection, answered within
# $secs: [status, X-Status, X-Rules] each, status 0 when the connection
# closed unanswered, -1 when no answer came in time.
sub batch {
    my ($secs, @reqs) = @_;
    my (%buf, %sock, @res);
    my $sel = IO::Select->new;
    for my $i (0 .. $#reqs) {
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$ngx->{port}",
                                      Timeout => 5);
        if (!$s) {
            $res[$i] = [0, '-', ''];
            next;
        }
        my ($uri, $body) = @{ $reqs[$i] };
        print $s defined $body
            ? "POST $uri HTTP/1.0\r\nHost: x\r\nContent-Type: "
              . "application/json\r\nContent-Length: " . length($body)
              . "\r\n\r\n$body"
            : "GET $uri HTTP/1.0\r\nHost: x\r\n\r\n";
        $sock{fileno $s} = [$s, $i];
        $buf{$i} = '';
        $sel->add($s);
    }
    my $deadline = time + $secs;
    while ($sel->count && time < $deadline) {
        for my $s ($sel->can_read($deadline - time)) {
            my $i = $sock{fileno $s}[1];
            my $n = sysread($s, $buf{$i}, 65536, length $buf{$i});
            next if $n;
            $sel->remove($s);
            close $s;
            my ($st, $h) = RulesNginx::parse_response($buf{$i});
            $res[$i] = [$st, $h->{'x-status'} // '-', $h->{'x-rules'} // ''];
        }
    }
    for my $s ($sel->handles) {
        $res[$sock{fileno $s}[1]] = [-1, '-', ''];
        close $s;
    }
    return @res;
}

my $seq = 0;
my (%status, @bad, @wrong, $unanswered, $late);

# One exchange: 20 users' first events and 5 bodies of 5 events at once,
# then the same users' second events: a first event answered ok never
# matches "twice", a second one answered ok after an ok first always
# does.
sub exchange {
    my ($round, $allowed) = @_;
    my @uids = map { 'u' . $round . '-' . $seq++ } 1 .. 20;
    my @first;
    for my $pass (1, 2) {
        my @reqs = map {
            my $i = $_;
            ["/px?uid=$uids[$i]&ip=10.0.$round." . ($i % 4)
             . "&ua=bot$i&path=" . ($pass == 1 ? '/a' : '/b')
             . "&ts=" . (1000 + $pass)]
        } 0 .. $#uids;
        push @reqs, map {
            my $b = $_;
            ['/events', '[' . join(',', map {
                qq({"uid":"j$round-$seq-$b-$_","ip":"10.1.$b.$_",)
                . qq("ua":"x","path":"/a","ts":1000})
            } 1 .. 5) . ']']
        } 1 .. 5;
        my @res = batch(15 * RulesMemcheck::slowdown(), @reqs);
        for my $i (0 .. $#res) {
            my ($st, $xs, $xr) = @{ $res[$i] };
            $status{"$st $xs"}++;
            if ($st == -1) {
                $late++;
            } elsif ($st == 0) {
                $unanswered++ unless $allowed->{0};
            } elsif (!$allowed->{$st}) {
                push @bad, "round $round: $reqs[$i][0]: $st $xs";
            }
            next if $i > $#uids || $xs ne 'ok';
            my $twice = ",$xr," =~ /,twice,/;
            if ($pass == 1) {
                $first[$i] = 1;
                push @wrong, "round $round: $uids[$i] first: [$xr]"
                    if $twice;
            } elsif ($first[$i] && !$twice) {
                push @wrong, "round $round: $uids[$i] second: [$xr]";
            }
        }
    }
}

sub arm {
    my ($settings) = @_;
    RulesNginx::write_file($ctl, "ppid=$master $settings\n");
}

# armed before what follows: the workers' next allocations see it
sub arm_now {
    arm(@_);
    sleep 0.05;    # read again every 10 ms
}

sub disarm {
    unlink $ctl;
    sleep 0.05;    # read again every 10 ms
}

# the workers, once a reload's old ones are gone
sub workers {
    my $w = RulesNginx::poll(10, sub { [RulesNginx::worker_pids($ngx)] },
                             sub { @{ $_[0] } == 2 });
    return @$w;
}

# Four fresh users' two events, sent four at a time (both workers take
# some), and a body of a fresh user's two events, until all are ok and
# match (a worker backing off from Redis, or trying its start again,
# takes a few seconds): "ok" then, else the answers of the last try.
sub serving {
    my $tries = 0;
    my $r = RulesNginx::poll(20 * RulesMemcheck::slowdown(), sub {
        my @u = map { "after-$seq-" . $tries++ } 1 .. 4;
        my @a = batch(10, map { ["/px?uid=$_&ts=1"] } @u);
        my @b = batch(10, (map { ["/px?uid=$_&ts=2"] } @u),
                      ['/events', qq([{"uid":"$u[0]j","ip":"$u[0]","ts":1},)
                                  . qq({"uid":"$u[0]j","ip":"$u[0]","ts":2}])]);
        my $got = join ' | ', map { "$_->[0] $_->[1] [$_->[2]]" } @a, @b;
        my $want = join ' | ', ('204 ok []') x 4, ('204 ok [twice]') x 5;
        return $got eq $want ? 'ok' : $got;
    }, sub { $_[0] eq 'ok' }, 0.2);
    return $r;
}

# each worker serves (two tries per worker at least, at random)
is(serving(), 'ok', 'serving before the failures');
my %fds_before = map { $_ => RulesNginx::fd_count($_) } workers();

my %pixel = (204 => 1, 500 => 1);
my @rounds = (
    ['mode=lib rate=30000 seed=1', \%pixel],
    ['mode=lib rate=150000 seed=2 burst=4', \%pixel],
    ['mode=lib every=7 seed=3', \%pixel, 'redis'],
    ['mode=lib rate=50000 seed=4', \%pixel, 'reload'],
    ['mode=lib rate=400000 seed=5 burst=8', \%pixel],
    ['mode=lib every=3 seed=6', \%pixel, 'redis'],
    ['mode=lib rate=20000 seed=7 burst=30', \%pixel],
    # nginx's own allocations too: it may close a connection unanswered
    ['mode=all rate=3000 seed=8', { %pixel, 0 => 1 }],
);

# each round twice (the second time with another seed), the workers
# serving again after each
my ($t0, @broken) = (time);
for my $r (0 .. 2 * @rounds - 1) {
    my ($settings, $allowed, $event) = @{ $rounds[$r % @rounds] };
    $settings =~ s/seed=(\d+)/'seed=' . ($1 + 100 * int($r \/ @rounds))/e;
    arm($settings);
    exchange($r, $allowed);
    if (($event // '') eq 'redis') {
        RulesNginx::stop_pid($redis->{pid}, 'KILL');
        exchange($r, $allowed);
        $redis = RulesNginx::start_redis(port => $rport);
    } elsif (($event // '') eq 'reload') {
        RulesNginx::reload_nginx($ngx);
        sleep 0.5;
    }
    exchange($r, $allowed);
    disarm();
    # a worker lost: the rounds after would wait on its requests
    if (RulesNginx::error_log($ngx)
        =~ /exited on signal|exited with fatal code/)
    {
        push @broken, "round $r ($settings): a worker crashed or was lost";
        last;
    }
    my $after = serving();
    push @broken, "round $r ($settings): $after" unless $after eq 'ok';
}

is_deeply(\@broken, [], 'after each round, the failures over, events and '
          . 'bodies are served and matched again');

my ($calls, $failed) = (0, 0);
for my $f (glob "$ctl.stats.*") {
    open my $fh, '<', $f or next;
    my $line = <$fh> // '';
    close $fh;
    next unless $line =~ /^calls (\d+) failed (\d+)/;
    $calls += $1;
    $failed += $2;
}
cmp_ok($failed, '>', 100,
       "allocations failed in the workers ($failed of $calls)");
note('answers: ' . join(', ', map { "$_: $status{$_}" } sort keys %status));
note(sprintf 'rounds: %.1f s', time - $t0);

is($late // 0, 0, 'every request answered within its deadline');
is($unanswered // 0, 0, 'no connection closed unanswered by the module');
is_deeply(\@bad, [], 'every status is one a request may get');
is_deeply(\@wrong, [], 'no event answered ok with a wrong match');

my $log = RulesNginx::error_log($ngx);
is_deeply([$log =~ /^.*(?:exited on signal|exited with fatal code).*$/mg],
          [], 'no worker crashed or was lost');
like($log, qr/out of memory/, 'the failures are logged as such');
like($log, qr/\[error\] .*rules: event body not parsed: out of memory/,
     'a body parsed out of memory is an error');

# the workers of the reload saw every round after it: their descriptors
# are those of before (the Redis connection made again, no other)
my %fds_after = map { $_ => RulesNginx::fd_count($_) } workers();
my ($most) = sort { $b <=> $a } values %fds_before;
my @leaks = grep { $fds_after{$_} > $most + 1 } keys %fds_after;
is_deeply(\@leaks, [], 'no descriptor kept: '
          . join(' ', map { "$_: $fds_after{$_}" } sort keys %fds_after)
          . ' (before: ' . join(' ', map { "$_: $fds_before{$_}" }
                                     sort keys %fds_before) . ')');

# How many times the log has a line matching $re.
sub count_log { RulesNginx::log_count($ngx, $_[0]) }

my $block_re = qr/out of memory in hiredis, a block set aside used/;
my $undo_re = qr/out of memory in hiredis, a command not sent/;
note(sprintf 'over the rounds: "a block set aside used" %d, '
     . '"a command not sent" %d', count_log($block_re), count_log($undo_re));

# The reserve, made sure of: every allocation of the module and its
# libraries fails while Redis is killed under connected workers, so
# hiredis' iterators over a context it frees (hi_malloc(), which aborts
# in hiredis 0.14.1) come from the blocks set aside.
{
    my $blocks = count_log($block_re);
    my $mark = length RulesNginx::error_log($ngx);
    arm_now('mode=lib every=1');
    RulesNginx::stop_pid($redis->{pid}, 'KILL');
    RulesNginx::poll(10 * RulesMemcheck::slowdown(),
                     sub { count_log($block_re) }, sub { $_[0] > $blocks });
    cmp_ok(count_log($block_re), '>', $blocks,
           'a context freed short of memory: hiredis is given a block set '
           . 'aside');
    $redis = RulesNginx::start_redis(port => $rport);
    disarm();
    # both workers connected again (the next step needs each one's
    # connection: one still backing off fails its events at once), pixels
    # sent meanwhile (a worker may connect on its next event)
    my %want = map { $_ => 1 } workers();
    my $conn_re = qr/^\S+\ \S+\ \[\w+\]\ (\d+)\#\d+:\ rules\ redis\ \S+:
                     \ connected\b.*\(states\ stored/mx;
    my $again = RulesNginx::poll(20 * RulesMemcheck::slowdown(), sub {
        batch(10, map { ["/px?uid=again-$seq-$_&ts=1"] } 1 .. 4);
        my %got = map { $_ => 1 } substr(RulesNginx::error_log($ngx), $mark)
            =~ /$conn_re/g;
        return scalar grep { $got{$_} } keys %want;
    }, sub { $_[0] == keys %want }, 0.1);
    is($again, scalar keys %want, 'each worker connected again');
    is(serving(), 'ok', 'served again after the reserve was used');
}

# The undo, made sure of: every allocation hiredis makes itself fails
# (not through the module's hi_malloc()): the callback it records for a
# command, the output buffer grown, so each command is taken back whole,
# its event answered "error", the connection kept.  The line saying so
# comes at most once a second per worker (every command fails alike).
{
    sleep 1.1;    # a second since any earlier such line
    my $undone = count_log($undo_re);
    arm_now('mode=lib from=hiredis every=1');
    my $t0 = time;
    # one after another: a call, a command each
    my @res = map { batch(10, ["/px?uid=undo-$seq-$_&ts=1"]) } 1 .. 16;
    my $secs = sprintf '%.2f', time - $t0;
    is(join(' | ', map { "$_->[0] $_->[1] [$_->[2]]" } @res),
       join(' | ', ('204 error []') x 16),
       'commands hiredis cannot queue: their events are errors');
    my $lines = count_log($undo_re) - $undone;
    cmp_ok($lines, '>', 0,
           'a command hiredis could not queue whole is taken back');
    my $most = 2 * (int($secs) + 2);
    cmp_ok($lines, '<=', $most, "16 commands not sent in ${secs}s: at most "
           . "a line a second per worker ($lines lines)");
    disarm();
    is(serving(), 'ok', 'served again after the commands taken back');
}

# Armed with $settings, a reload: its two new workers (they see it armed
# from their start: fresh=1), once the old ones no longer count.
sub reload_armed {
    my ($settings) = @_;
    my %old = map { $_ => 1 } workers();
    arm_now($settings);
    RulesNginx::reload_nginx($ngx);
    my @new = @{ RulesNginx::poll(10 * RulesMemcheck::slowdown(), sub {
        [grep { !$old{$_} && !RulesNginx::zombie($_) }
              RulesNginx::worker_pids($ngx)]
    }, sub { @{ $_[0] } == 2 }) };
    is(scalar @new, 2, 'a reload: two new workers');
    return @new;
}

# A worker started short of memory: workers started after arming (a
# reload's) fail every allocation of the module and its libraries, so
# their init_process cannot make the state cache or the Redis client;
# they serve meanwhile (events "error"), say so once at alert, try again
# every second, and start their client once memory is back.
{
    my @old = workers();
    my $start_re = qr/\[alert\] .*rules: no memory to start the Redis client/;
    my $started_re = qr/\[notice\]\ .*rules:\ Redis\ client\ started,
                        \ after\ (\d+)\ tries\ short\ of\ memory/x;
    is(count_log($start_re), 0, 'no start short of memory before');
    my @new = reload_armed('under=ngx_http_rules_batch_init every=1 fresh=1');
    RulesNginx::poll(10 * RulesMemcheck::slowdown(),
                     sub { count_log($start_re) }, sub { $_[0] >= 2 });
    is(count_log($start_re), 2,
       'each new worker short of memory at its start says so at alert');
    # the old workers, still connected, no longer take a request
    ok(RulesNginx::poll(10 * RulesMemcheck::slowdown(), sub {
        !grep { !RulesNginx::zombie($_) } @old
    }), 'the old workers gone');
    # events answered "error" while the client is missing: pixels from
    # fresh users (sent 4 at a time, both workers take some) for 3.5 s,
    # so that each worker tries its start again (and fails) a few times
    my ($armed_at, %got, $tries) = (time);
    $tries = 0;
    while (time < $armed_at + 3.5 * RulesMemcheck::slowdown()) {
        my @u = map { "nostart-$seq-" . $tries++ } 1 .. 4;
        for my $r (batch(10, map { ["/px?uid=$_&ts=1"] } @u)) {
            $got{"$r->[0] $r->[1] [$r->[2]]"}++;
        }
        sleep 0.2;
    }
    is(join(', ', map { "$_ x$got{$_}" } sort keys %got),
       "204 error [] x$tries",
       'events answered "error" while the workers have no Redis client');
    is(count_log($start_re), 2, 'said once per worker, not at each try');
    is_deeply([sort { $a <=> $b } RulesNginx::worker_pids($ngx)],
              [sort { $a <=> $b } @new], 'the new workers still running');
    disarm();
    my $log = RulesNginx::wait_log($ngx, qr/(?:$started_re.*\n.*){2}/s,
                                   10 * RulesMemcheck::slowdown());
    my @tries = $log =~ /$started_re/mg;
    is(scalar @tries, 2, 'memory back: each worker starts its Redis client '
       . '(' . join(', ', @tries) . ' tries)');
    is(scalar(grep { $_ >= 2 } @tries), 2,
       'each worker tried its start again while short of memory');
    is(serving(), 'ok', 'the workers started short of memory serve and '
       . 'match events');
}

# The rest of the setup commands at a connect, made sure of: a reload's
# new workers find their first write to a socket (the setup commands,
# written by the connect callback) cut to 64 bytes, as by a socket full
# part way, while every allocation made under redisAsyncHandleWrite()
# fails.  hiredis writes again right after that callback and, when its
# write takes the rest, makes a new output buffer unchecked: NULL, and
# the worker crashed there at each start.  The module leaves hiredis
# nothing to write then, and the rest goes when the socket takes it.
{
    my $mark = length RulesNginx::error_log($ngx);
    my @new = reload_armed('under=redisAsyncHandleWrite every=1 short=64 '
                           . 'fresh=1');
    # at the first attempt ("connected (states stored ..."): not after a
    # reply timeout and a new connection, which would hide a stall
    my $conn_re = qr/^\S+\ \S+\ \[\w+\]\ (\d+)\#\d+:\ rules\ redis\ \S+:
                     \ connected\ \(states\ stored/mx;
    my $connected = RulesNginx::poll(10 * RulesMemcheck::slowdown(), sub {
        my %got = map { $_ => 1 }
            substr(RulesNginx::error_log($ngx), $mark) =~ /$conn_re/g;
        return scalar grep { $got{$_} } @new;
    }, sub { $_[0] == 2 });
    is($connected, 2, 'each new worker connected at once, the setup '
       . 'commands answered');
    for my $pid (@new) {
        my $stats = -f "$ctl.stats.$pid"
            ? do { local (@ARGV, $/) = ("$ctl.stats.$pid"); <> } : 'none';
        like($stats, qr/ short 1$/m, 'its connect callback wrote 64 bytes '
             . 'of the setup commands, the rest later');
    }
    is(serving(), 'ok', 'the new workers serve and match events');
    my $new_re = join '|', @new;
    is_deeply([substr(RulesNginx::error_log($ngx), $mark)
                   =~ /^.*\ (?:$new_re)\#\d+:\ rules\ redis\ .*
                         (?:no\ reply|lost|failed|retrying).*$/mgx],
              [], 'no connection of theirs lost or failed');
    is_deeply([sort { $a <=> $b } grep { !RulesNginx::zombie($_) }
                   RulesNginx::worker_pids($ngx)],
              [sort { $a <=> $b } @new], 'the new workers still running');
    disarm();
}

# A body the worker cannot parse for want of memory (every allocation
# under rules_json_events_parse() fails): an "error", as when Redis
# fails, counted so and answered as rules_on_error says (the pixel with
# no match when open, the rejection when closed); not a 500 with no
# status and no count.
{
    my %m0 = %{ RulesNginx::metrics_all($ngx) };
    my $body = qq([{"uid":"oom-$seq","ts":1},{"uid":"oom-$seq","ts":2}]);
    arm_now('under=rules_json_events_parse every=1');
    my @res = batch(10, ['/events', $body], ['/events-closed', $body]);
    disarm();
    is(join(' | ', map { "$_->[0] $_->[1] [$_->[2]]" } @res),
       '204 error [] | 403 error []',
       'a body parsed out of memory: "error", answered as rules_on_error '
       . 'says');
    my %m1 = %{ RulesNginx::metrics_all($ngx) };
    is(join(' ', map { ($m1{$_} // 0) - ($m0{$_} // 0) }
                 'nginx_rules_events_total{status="error"}',
                 'nginx_rules_failed_total{mode="open"}',
                 'nginx_rules_failed_total{mode="closed"}',
                 'nginx_rules_fraud_rejected_total{}'),
       '2 1 1 1', 'counted: an event each, a request failed open and one '
       . 'closed, one rejected');
    like(RulesNginx::error_log($ngx),
         qr/\[info\] .*rules: event rejected as fraud \(not evaluated, closed\), status 403/,
         'the rejection says the event was not evaluated (not "redis failed")');
    is(serving(), 'ok', 'bodies parsed again once memory is back');
}

is_deeply([RulesNginx::error_log($ngx)
               =~ /^.*(?:exited on signal|exited with fatal code).*$/mg],
          [], 'no worker crashed or was lost after the rounds either');
note(sprintf 'over the file: "a block set aside used" %d, '
     . '"a command not sent" %d', count_log($block_re), count_log($undo_re));

RulesNginx::stop_nginx($ngx);
unlink $ctl, glob("$ctl.*"), "$FindBin::Bin/failalloc-068.so";

done_testing();
