# What a worker keeps for its next Redis calls after a burst of large
# ones is bounded: a call's command block and its batch go back to their
# free lists only within NGX_HTTP_RULES_REDIS_FREE_BYTES (1 MB) and
# NGX_HTTP_RULES_BATCH_KEEP_SIZE (64 KB a batch).  Before those bounds,
# 100 calls of 120 KB in flight at once left about 14 MB held by an idle
# worker (and the benchmark's 1000 rules 32 MB).
#
# The worker's heap in use is read with glibc's malloc_stats(), called in
# the worker by gdb (it writes to the worker's stderr: nginx's error
# log), before and after the burst.  Skipped without gdb, and under ASan
# or valgrind (their allocators are not glibc's).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(sleep);
use RulesNginx;

plan skip_all => 'not with ASan or valgrind (another allocator)'
    if $ENV{TEST_NGINX_USE_ASAN} || $ENV{TEST_NGINX_USE_VALGRIND};
plan skip_all => 'gdb is missing'
    unless system('command -v gdb > /dev/null 2>&1') == 0;

my $CALLS = 100;
my $VALUE = 60000;           # two fields: a 120 KB operation per event
my $GROWTH_MAX_KB = 4096;    # without the bounds: about 14000

my $rules = <<'_EOC_';
{"rules": [
  {"id": "v_seen", "kind": "segment", "key": "uid", "type": "distinct",
   "field": "v", "min": 2, "within": "1d"},
  {"id": "w_seen", "kind": "segment", "key": "uid", "type": "distinct",
   "field": "w", "min": 2, "within": "1d"}
]}
_EOC_

my $redis = RulesNginx::start_redis();

my $ngx = RulesNginx::start_nginx(
    prefix => "$FindBin::Bin/servroot-054",
    files  => { 'rules.json' => $rules },
    http   => RulesNginx::pixel_http(
        store   => "rules_redis 127.0.0.1:$redis->{port};",
        fields  => [qw(uid v w)],
        timeout => '20s',
        prefix  => "t054:$$:",
        extra   => "large_client_header_buffers 4 256k;\n"
                   . "    rules_state_cache 0;\n"
                   . "    rules_max_value_length 65535;"));

my ($worker) = RulesNginx::worker_pids($ngx);
ok($worker, "a worker ($worker)");

# the heap in use (bytes), from malloc_stats() in the worker's error log
sub heap_in_use {
    my $before = length RulesNginx::error_log($ngx);
    system("gdb -q -batch -p $worker -ex 'call (void) malloc_stats()' "
           . "-ex detach > /dev/null 2>&1");
    for (1 .. 50) {
        my $log = substr RulesNginx::error_log($ngx), $before;
        return $1 if $log =~ /Total \(incl\. mmap\):\s*\n\s*system bytes\s*=\s*\d+\s*\n\s*in use bytes\s*=\s*(\d+)/;
        sleep 0.1;
    }
    return undef;
}

# an event of user $uid with two values of $VALUE bytes
sub event_uri {
    my ($uid) = @_;
    my $v = substr("v$uid." x $VALUE, 0, $VALUE);
    my $w = substr("w$uid." x $VALUE, 0, $VALUE);
    my $ts = int(Time::HiRes::time() * 1000);
    return "/px?uid=u$uid&ts=$ts&v=$v&w=$w";
}

# 'ok' for a stored event, else its status and X-Status
sub outcome {
    my ($status, $h) = @_;
    my $st = $h->{'x-status'} // '';
    return $status == 204 && $st eq 'ok' ? 'ok' : "$status $st";
}

# warm up: the connection, the buffers of calls of one event
my @warm = map { outcome(RulesNginx::get($ngx->{port},
                                         event_uri(1000000 + $_), 10)) }
               1 .. 20;
is($warm[-1], 'ok', 'warm-up events stored');

my $heap0 = heap_in_use();
plan skip_all => 'gdb could not call malloc_stats() in the worker'
    unless defined $heap0;

# the burst: Redis stopped, one large event per event-loop pass, so that
# each is a call of its own, all of them in flight at once
kill 'STOP', $redis->{pid};
my @socks;
for my $i (1 .. $CALLS) {
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$ngx->{port}",
                                  Timeout => 30) or die "connect: $!";
    print $s "GET " . event_uri($i)
             . " HTTP/1.0\r\nHost: localhost\r\n\r\n";
    push @socks, $s;
    sleep 0.01;
}
sleep 0.5;
kill 'CONT', $redis->{pid};

my $bad = 0;
for my $i (0 .. $#socks) {
    my $resp = do { local $/; readline($socks[$i]) } // '';
    my $st = outcome(RulesNginx::parse_response($resp));
    $bad++ if $st ne 'ok';
    diag("event " . ($i + 1) . ": $st") if $st ne 'ok' && $bad <= 3;
}
is($bad, 0, "all $CALLS events of the burst stored once Redis went on");

my $heap1 = heap_in_use();
ok(defined $heap1, 'the heap read again');
my $growth_kb = int((($heap1 // 0) - $heap0) / 1024);
note("heap in use: $heap0 -> " . ($heap1 // '?') . " bytes");
cmp_ok($growth_kb, '<=', $GROWTH_MAX_KB,
       "an idle worker keeps at most ${GROWTH_MAX_KB} KB more after "
       . "$CALLS calls of 120 KB in flight ($growth_kb KB)");

unlike(RulesNginx::error_log($ngx), qr/\[(alert|crit|emerg)\]/,
       'no alert in the error log');

RulesNginx::stop_nginx($ngx);

done_testing();
