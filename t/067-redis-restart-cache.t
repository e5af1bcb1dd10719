# A Redis that comes back with older values (restarted from an RDB
# snapshot, or a replica promoted that missed writes): the worker's state
# cache must not take a value for the one it cached because its gen and
# length are the same.  A large state (over 1 KB) is extended in place,
# which keeps its gen; so the worker's last write can be undone (the key
# restored from a DUMP taken before it, the worker's connection killed as
# a restart would), another writer then appends an entry of the same
# length, and the value has the gen and length the worker cached, but
# another history.  Since a lost connection clears the worker's cache,
# its next event reads the key again and sees that history.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use RulesNginx;

my $replay = $ENV{RULES_REPLAY} // "$FindBin::Bin/../build/rules-replay";
-x $replay or plan skip_all => "no $replay (make)";

my $rules = <<'_EOC_';
{"rules": [
  {"id": "six_values", "kind": "segment", "key": "uid", "type": "distinct",
   "field": "v", "min": 6, "within": "1h"}
]}
_EOC_

my $redis = RulesNginx::start_redis();
my $port = $redis->{port};
my $prefix = "t067:$$:";

# an nginx of one worker with a state cache, and $extra
sub nginx_067 {
    my ($extra) = @_;
    return RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-067",
        workers => 1,
        files   => { 'rules.json' => $rules },
        http    => RulesNginx::pixel_http(
            store  => "rules_redis 127.0.0.1:$port;",
            prefix => $prefix,
            extra  => "rules_state_cache 1m;$extra",
            fields => ['uid', 'v']));
}

my $ngx = nginx_067('');
my $key = "$prefix\{uid:u}";
my $ts = 1000;

# the worker's connections made so far (logged "connected"); waits until
# there are more than $n
sub connects { RulesNginx::log_count($ngx, qr/rules redis \S+: connected/) }

sub wait_connects {
    my ($n) = @_;
    return RulesNginx::poll(5, sub { connects() > $n }) ? 1 : 0;
}

# another writer, without a cache (rules-replay with @opts), appends A
# again: an entry as long as E's; its exit status
sub other_writer {
    my (@opts) = @_;
    open my $in, '|-', $replay, '--rules', "$ngx->{prefix}/html/rules.json",
        '--redis', "127.0.0.1:$port", '--prefix', $prefix, '--cache', '0',
        @opts
        or die "$replay: $!";
    $ts += 1000;
    print $in '{"uid": "u", "v": "' . ('A' x 300) . "\", \"ts\": $ts}\n";
    close $in;
    return $?;
}

# one event of user u with the value $letter x 300; X-Rules
sub event {
    my ($letter) = @_;
    $ts += 1000;
    my ($st, $h) = RulesNginx::get($ngx->{port},
        "/px?uid=u&v=" . ($letter x 300) . "&ts=$ts");
    is($h->{'x-status'} // '', 'ok', "event $letter: ok");
    return $h->{'x-rules'} // '';
}

event($_) for qw(A B C D);
my $before = RulesNginx::redis_call($port, 'DUMP', $key);
ok(defined $before && !ref $before, 'the key dumped (4 values)');
is(event('E'), '', 'five distinct values: not matched');

# Redis "restarts" with the dump: E's entry is lost
is(RulesNginx::redis_call($port, 'RESTORE', $key, 0, $before, 'REPLACE'),
   'OK', 'the key restored as it was before E');
my $connected = connects();
cmp_ok(RulesNginx::redis_call($port, 'CLIENT', 'KILL', 'TYPE', 'normal'),
       '>=', 1, "the worker's connection killed");
is(other_writer(), 0, 'the other writer applied its event');

# the worker's reconnection (an idle connection closed: made again at
# once, logged "connected")
ok(wait_connects($connected), 'the worker connected again');

# the stored history is A B C D A: with G, five distinct values
is(event('G'), '', 'after the restart: five distinct values (A B C D G), '
                   . 'not matched');
is(event('H'), 'six_values', 'and a sixth value matches');

my $log = RulesNginx::error_log($ngx);
unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alert');
RulesNginx::stop_nginx($ngx);

# The same behind a connection that stays (a restart or a failover behind
# a proxy that keeps the client's connection): Redis lost its scripts, so
# the worker's EVALSHA gets NOSCRIPT, and that too clears the cache.  The
# call that meets the NOSCRIPT was planned on the cache and goes again as
# it was (its event, G, is taken as the cache had it: documented); the
# events after it read the key again.

$ngx = nginx_067("\nrules_redis_native off;");
RulesNginx::redis_call($port, 'DEL', $key);
wait_connects(0);

event($_) for qw(A B C D);
$before = RulesNginx::redis_call($port, 'DUMP', $key);
is(event('E'), '', 'script: five distinct values: not matched');
is(RulesNginx::redis_call($port, 'RESTORE', $key, 0, $before, 'REPLACE'),
   'OK', 'script: the key restored as it was before E');
is(other_writer('--no-native'), 0, 'script: the other writer applied its event');
is(RulesNginx::redis_call($port, 'SCRIPT', 'FLUSH'), 'OK',
   'script: Redis lost its scripts, the connection stays');

event('G');
# stored: A B C D A G (five distinct); the cache had A B C D E G (six)
is(event('A'), '', 'script: after the NOSCRIPT the key is read again: '
                   . 'A B C D G, not matched');
$log = RulesNginx::error_log($ngx);
like($log, qr/NOSCRIPT/, 'script: the NOSCRIPT was met');
unlike($log, qr/rules redis \S+: connection/, 'script: the connection stayed');
unlike($log, qr/\[(alert|crit|emerg)\]/, 'script: no alert');
RulesNginx::stop_nginx($ngx);

done_testing();
