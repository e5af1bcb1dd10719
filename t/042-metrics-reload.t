# rules_metrics across reloads, the hard cases: events still waiting for
# Redis when the workers are replaced are counted in the per-rule
# counters; a reload that fails after the zone was set up (a listen
# address in use) loses nothing; a rule file big enough to change the
# zone's size carries the counters over to the new zone; a worker that
# dies counts as a start but not as a configuration load (the
# RulesWorkersRestarting alert tells the two apart); reloads that edit
# every rule free the slots of the replaced ones.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(sleep time);
use RulesNginx;

my $rules = <<'_EOC_';
{"rules": [
  {"id": "kept", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"},
  {"id": "gone", "kind": "fraud", "key": "uid", "type": "count",
   "min": 1, "within": "1h"}
]}
_EOC_

my $redis = RulesNginx::start_redis();
my $ngx = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-042",
    workers => 2,
    files   => { 'rules.json' => $rules },
    http    => <<"_EOC_");
    rules_redis 127.0.0.1:$redis->{port};
    rules_redis_timeout 10s;
    rules_file ../html/rules.json;
    server {
        listen 127.0.0.1:\$PORT;
        location = /px {
            rules on;
            rules_field uid \$arg_uid;
            rules_time \$arg_ts;
            add_header X-Status \$rules_status always;
            return 204;
        }
        location = /metrics { rules_metrics; }
    }
_EOC_

my $KEPT = 'nginx_rules_rule_evaluated_total{rule="kept",kind="segment",type="count"}';
my $OK = 'nginx_rules_events_total{status="ok"}';

sub metrics { RulesNginx::metrics_all($ngx) }

# polls the metrics until $cond holds; returns them
sub wait_metrics {
    my ($cond, $secs) = @_;
    return RulesNginx::poll($secs // 10, \&metrics, $cond);
}

# how many workers have exited (replaced by a reload) so far, and a wait
# until $n more have
sub exits { RulesNginx::log_count($ngx, qr/exited with code 0/) }

sub wait_exits {
    my ($before, $n) = @_;
    RulesNginx::poll(20, \&exits, sub { $_[0] >= $before + $n });
}

my $seq = 0;
sub events {
    my ($n) = @_;
    my $ok = 0;
    for (1 .. $n) {
        $seq++;
        my ($st, $h) = RulesNginx::get($ngx->{port}, "/px?uid=u$seq&ts=$seq");
        $ok++ if $st == 204 && ($h->{'x-status'} // '') eq 'ok';
    }
    return $ok;
}

sub redis_cmd {
    my (@args) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$redis->{port}")
        or die "redis: $!";
    print $s join('', '*', scalar @args, "\r\n",
                  map { '$' . length($_) . "\r\n$_\r\n" } @args);
    my $reply = <$s>;
    close $s;
    return $reply;
}

sub read_file {
    my ($path) = @_;
    open my $fh, '<', $path or die "$path: $!";
    local $/;
    return <$fh>;
}

# HEAD: the headers of the exposition, no body
{
    my $c = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$ngx->{port}")
        or die "connect: $!";
    print $c "HEAD /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    local $/;
    my $resp = <$c> // '';
    my ($st, $h, $body) = RulesNginx::parse_response($resp);
    is($st, 200, 'HEAD /metrics: 200');
    is($h->{'content-type'}, 'text/plain; version=0.0.4; charset=utf-8',
       'HEAD /metrics: the exposition content type');
    ok(($h->{'content-length'} // 0) > 0, 'HEAD /metrics: a Content-Length');
    is($body, '', 'HEAD /metrics: no body');
}

is(events(10), 10, '10 events answered');
my $s = metrics();
is($s->{$KEPT}, 10, 'kept: evaluated 10 times');

# ---- events in flight while the workers are replaced ----------------------

my $K = 6;
like(redis_cmd('CLIENT', 'PAUSE', '2500', 'ALL'), qr/^\+OK/, 'Redis paused');
my @pids;
for my $c (1 .. $K) {
    my $pid = fork();
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        my ($st, $h) = RulesNginx::get($ngx->{port}, "/px?uid=f$c&ts=$c", 20);
        POSIX::_exit($st == 204 && ($h->{'x-status'} // '') eq 'ok' ? 0 : 1);
    }
    push @pids, $pid;
}
$s = wait_metrics(sub { ($_[0]{'nginx_rules_inflight_events{}'} // 0) == $K });
is($s->{'nginx_rules_inflight_events{}'}, $K, "$K events wait for Redis");

RulesNginx::reload_nginx($ngx);
$s = wait_metrics(sub { ($_[0]{'nginx_rules_worker_starts_total{}'} // 0) == 4 });
is($s->{'nginx_rules_worker_starts_total{}'}, 4, 'new workers started');

my $answered = 0;
for (@pids) {
    waitpid $_, 0;
    $answered++ if $? == 0;
}
is($answered, $K, 'the waiting events are answered by the old workers');

$s = wait_metrics(sub { ($_[0]{'nginx_rules_inflight_events{}'} // -1) == 0 });
is($s->{'nginx_rules_inflight_events{}'}, 0, 'nothing in flight');
is($s->{$OK}, 10 + $K, 'events_total counts them');
is($s->{$KEPT}, 10 + $K,
   'and so do the per-rule counters, counted by the old workers');

# ---- a reload that fails after the shared memory was set up ---------------

my $busy = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                 LocalPort => 0, ReuseAddr => 0)
    or die "listen: $!";
my $busy_port = $busy->sockport;
my $conf = "$ngx->{prefix}/conf/nginx.conf";
my $good = read_file($conf);
(my $bad = $good) =~ s/\}\s*\z/    server { listen 127.0.0.1:$busy_port; }\n}\n/
    or die 'cannot edit nginx.conf';
RulesNginx::write_file($conf, $bad);
RulesNginx::reload_nginx($ngx);
my $log = RulesNginx::wait_log($ngx, qr/still could not bind/, 10);
like($log, qr/still could not bind/, 'the reload failed (address in use)');
RulesNginx::write_file($conf, $good);
close $busy;

is(events(5), 5, '5 more events, answered by the workers that stayed');
$s = metrics();
is($s->{$KEPT}, 15 + $K, 'kept: counted');

RulesNginx::reload_nginx($ngx);
$s = wait_metrics(sub { ($_[0]{'nginx_rules_worker_starts_total{}'} // 0) == 6 });
is($s->{'nginx_rules_worker_starts_total{}'}, 6, 'the next reload works');
is($s->{'nginx_rules_config_loads_total{}'}, 3,
   'configuration loads: the start and two reloads, not the failed one');
is($s->{$KEPT}, 15 + $K, 'kept: nothing lost to the failed reload');
is($s->{$OK}, 15 + $K, 'events_total: nothing lost');

# ---- a rule file that needs a bigger zone ----------------------------------

my $R = 6000;
my $big = qq({"rules": [\n  {"id": "kept", "kind": "segment", "key": "uid", )
        . qq("type": "count",\n   "min": 2, "within": "1h"});
$big .= qq(,\n  {"id": "r$_", "kind": "segment", "key": "uid", )
        . qq("type": "count", "min": 3, "within": "1h"}) for 1 .. $R;
$big .= "\n]}\n";
RulesNginx::write_file("$ngx->{prefix}/html/rules.json", $big);
RulesNginx::reload_nginx($ngx);
$s = wait_metrics(sub { ($_[0]{'nginx_rules_worker_starts_total{}'} // 0) == 8 });
is($s->{'nginx_rules_worker_starts_total{}'}, 8,
   'reload with ' . ($R + 1) . ' rules');
like(join(' ', grep { /^nginx_rules_info/ } keys %$s), qr/rules="@{[$R + 1]}"/,
     'they are loaded');
is($s->{$KEPT}, 15 + $K, 'kept: its counters moved to the bigger zone');
is($s->{$OK}, 15 + $K, 'events_total too');
is($s->{'nginx_rules_config_loads_total{}'}, 4, 'and the other counters');
ok(!exists $s->{'nginx_rules_rule_evaluated_total{rule="gone",kind="fraud",type="count"}'},
   'the removed rule is gone');
is($s->{"nginx_rules_rule_evaluated_total{rule=\"r$R\",kind=\"segment\",type=\"count\"}"},
   0, 'a new rule starts at 0');
is(events(1), 1, 'one more event');
$s = metrics();
is($s->{$KEPT}, 16 + $K, 'kept: counted in the new zone');
is($s->{"nginx_rules_rule_evaluated_total{rule=\"r$R\",kind=\"segment\",type=\"count\"}"},
   1, 'and so is a new rule');

# ---- a worker that dies is respawned: a start, not a configuration load ----

my $master = RulesNginx::nginx_pid($ngx);
my @workers;
for my $stat (glob '/proc/[0-9]*/stat') {
    open my $fh, '<', $stat or next;
    my $line = <$fh> // '';
    next unless $line =~ /^(\d+) \(nginx\) \S+ (\d+) / && $2 == $master;
    my $pid = $1;
    # not a worker of an earlier configuration that is still finishing
    open my $cf, '<', "/proc/$pid/cmdline" or next;
    my $cmd = <$cf> // '';
    push @workers, $pid unless $cmd =~ /shutting down/;
}
SKIP: {
    skip 'no nginx worker found in /proc', 2 unless @workers;
    kill 'KILL', $workers[0];
    $s = wait_metrics(sub { ($_[0]{'nginx_rules_worker_starts_total{}'} // 0) == 9 });
    is($s->{'nginx_rules_worker_starts_total{}'}, 9,
       'a killed worker is respawned: one more start');
    is($s->{'nginx_rules_config_loads_total{}'}, 4,
       'and no configuration load');
}

# ---- many reloads that edit every rule do not fill the zone --------------

# 3000 rules fit the default 1 MB zone twice, not three times: without
# the slots of the replaced rules freed, the third reload would fail
my $E = 3000;
my $all_fresh = 1;
for my $k (1 .. 6) {
    my $edited = qq({"rules": [\n) . join(",\n", map {
        qq(  {"id": "e$_", "kind": "segment", "key": "uid", "type": "count", )
        . qq("min": 2, "within": "${k}h"})
    } 1 .. $E) . "\n]}\n";
    RulesNginx::write_file("$ngx->{prefix}/html/rules.json", $edited);
    my $exited = exits();
    RulesNginx::reload_nginx($ngx);
    # the old workers gone, every request meets the new rules
    wait_exits($exited, 2);
    events(1);
    $s = metrics();
    $all_fresh = 0
        unless ($s->{'nginx_rules_rule_evaluated_total{rule="e7",kind="segment",type="count"}'} // -1) == 1;
}
ok($all_fresh, '6 reloads editing 3000 rules: each edited rule starts fresh');
$s = metrics();
is($s->{$OK}, 22 + $K, 'and events_total keeps counting');
$log = RulesNginx::error_log($ngx);
unlike($log, qr/zone is full|not enough shared memory/,
       'the zone never fills: replaced rules are freed');

# ---- a worker of an older configuration still counting two reloads later --
# Rule x is edited by a reload while an old worker's event waits for a
# paused Redis (x's former slot is that worker's alone); a second reload
# adds rule y.  The old worker counts x in its own slot when Redis
# answers: y, whose slot may take freed memory, must stay at 0.

sub reload_and_wait {
    my ($rules_text) = @_;
    my $starts = metrics()->{'nginx_rules_worker_starts_total{}'};
    RulesNginx::write_file("$ngx->{prefix}/html/rules.json", $rules_text);
    RulesNginx::reload_nginx($ngx);
    return wait_metrics(sub {
        ($_[0]{'nginx_rules_worker_starts_total{}'} // 0) >= $starts + 2 });
}

sub rule_x {
    my ($within, $more) = @_;
    return qq({"rules": [\n  {"id": "x", "kind": "segment", "key": "uid", )
         . qq("type": "count", "min": 1, "within": "$within"})
         . ($more // '') . "\n]}\n";
}

my $exited = exits();
reload_and_wait(rule_x('1h'));
wait_exits($exited, 2);
my $Y = 'rule="y",kind="segment",type="count"';
like(redis_cmd('CLIENT', 'PAUSE', '4000', 'ALL'), qr/^\+OK/, 'Redis paused');
my $old = fork();
die "fork: $!" unless defined $old;
if ($old == 0) {
    my ($st, $h) = RulesNginx::get($ngx->{port}, '/px?uid=old1&ts=1', 20);
    POSIX::_exit($st == 204 && ($h->{'x-status'} // '') eq 'ok' ? 0 : 1);
}
$s = wait_metrics(sub { ($_[0]{'nginx_rules_inflight_events{}'} // 0) == 1 });
is($s->{'nginx_rules_inflight_events{}'}, 1, 'an event waits for Redis');
reload_and_wait(rule_x('2h'));
$s = reload_and_wait(rule_x('2h', qq(,\n  {"id": "y", "kind": "segment", )
    . qq("key": "uid", "type": "count", "min": 1, "within": "1h"})));
# the scrape may still reach a worker that is being replaced
$s = wait_metrics(sub { defined $_[0]{"nginx_rules_rule_evaluated_total{$Y}"} });
is($s->{"nginx_rules_rule_evaluated_total{$Y}"}, 0, 'y: a new rule at 0');
waitpid $old, 0;
is($?, 0, 'the old worker answers its event, two reloads later');
$s = wait_metrics(sub { ($_[0]{'nginx_rules_inflight_events{}'} // -1) == 0 });
is($s->{"nginx_rules_rule_evaluated_total{$Y}"}, 0,
   'y: still 0 (the old worker counted x in the slot it kept)');
is($s->{"nginx_rules_rule_matched_total{$Y}"}, 0, 'y: matched 0');
is(events(1), 1, 'one more event');
$s = metrics();
is($s->{"nginx_rules_rule_evaluated_total{$Y}"}, 1, 'y: counts its own');

# ---- an edit reverted while a worker of the first version still runs ------
# y is edited (a new digest: it starts at 0), then edited back while a
# worker of the configuration before the edit still waits for Redis (so
# y's first slot is still there, that worker's): y starts at 0 again,
# rather than taking up its first slot's count (10 then 0 then 10 again
# would read as a counter reset to Prometheus).

sub rule_y {
    my ($within) = @_;
    return rule_x('2h', qq(,\n  {"id": "y", "kind": "segment", "key": )
                        . qq("uid", "type": "count", "min": 1, )
                        . qq("within": "$within"}));
}

like(redis_cmd('CLIENT', 'PAUSE', '4000', 'ALL'), qr/^\+OK/,
     'Redis paused again');
$old = fork();
die "fork: $!" unless defined $old;
if ($old == 0) {
    my ($st, $h) = RulesNginx::get($ngx->{port}, '/px?uid=old2&ts=2', 20);
    POSIX::_exit($st == 204 ? 0 : 1);
}
wait_metrics(sub { ($_[0]{'nginx_rules_inflight_events{}'} // 0) == 1 });
# the rules file's digest the scrape's worker has (nginx_rules_info)
my $info = sub { (grep { /^nginx_rules_info\{/ } keys %{ $_[0] })[0] // '' };
my $first = $info->(metrics());
reload_and_wait(rule_y('3h'));
$s = wait_metrics(sub { $info->($_[0]) ne $first });
my $edited = $info->($s);
is($s->{"nginx_rules_rule_evaluated_total{$Y}"}, 0, 'y edited: at 0');
reload_and_wait(rule_y('1h'));
$s = wait_metrics(sub { $info->($_[0]) ne $edited });
is($info->($s), $first, 'y edited back: the first rules file again');
is($s->{"nginx_rules_rule_evaluated_total{$Y}"}, 0,
   'y edited back while a worker of its first version runs: at 0 again');
waitpid $old, 0;
is($?, 0, 'that worker answers its event');

$log = RulesNginx::error_log($ngx);
$log =~ s/^.*\[alert\].*exited on signal 9.*\n//mg;
unlike($log, qr/\[(alert|crit)\]/, 'no alert in the error log');
my @emerg = grep { /\[emerg\]/ && !/bind\(\)/ } split /\n/, $log;
is_deeply(\@emerg, [], 'the only emerg is the failed bind');
RulesNginx::stop_nginx($ngx);
done_testing();
