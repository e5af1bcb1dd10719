# The state cache's counters with two writers of one key: two nginx
# (each its own worker and state cache) on one Redis, one prefix.  A
# writer whose cached state went stale (the other one appended to the
# key) sends a whole state that Redis refuses: counted in
# nginx_rules_state_write_fallbacks_total, the event appended instead,
# its result still right.  Run against the plain Redis (EVALSHA) and,
# when t/run-tests.sh started it, the one with the rules Redis module
# (RULES.STORE).  Exact counts: each nginx is fresh, one worker, and the
# events are sent one after the other.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use RulesNginx;
use RulesMemcheck;

my @stores = (['script', $ENV{TEST_NGINX_REDIS_PORT}]);
push @stores, ['native', $ENV{TEST_NGINX_REDIS_NATIVE_PORT}]
    if $ENV{TEST_NGINX_REDIS_NATIVE_PORT};
plan skip_all => 'TEST_NGINX_REDIS_PORT is not set'
    unless $stores[0][1];

my $rules = <<'_EOC_';
{"rules": [
  {"id": "thrice", "kind": "segment", "key": "uid", "type": "count",
   "min": 3, "within": "1h"}
]}
_EOC_

# the counters of one nginx, as "name value" lines
sub counters {
    my ($ngx) = @_;
    return join ', ', map {
        my $v = RulesNginx::metric($ngx, $_) // 'none';
        (my $short = $_) =~ s/^nginx_rules_//;
        "$short=$v";
    } 'nginx_rules_state_cache_lookups_total{result="hit"}',
      'nginx_rules_state_cache_lookups_total{result="miss"}',
      'nginx_rules_state_writes_total',
      'nginx_rules_state_write_fallbacks_total',
      'nginx_rules_events_total{status="ok"}';
}

for my $s (@stores) {
    my ($name, $port) = @$s;
    my $prefix = "t044:$$:$name:";
    my @ngx = map {
        RulesNginx::start_nginx(
            prefix  => "$FindBin::Bin/servroot-044$_",
            workers => 1,
            files   => { 'rules.json' => $rules },
            http    => RulesNginx::pixel_http(
                store  => "rules_redis 127.0.0.1:$port;",
                prefix => $prefix,
                fields => ['uid']))
    } qw(a b);
    my ($na, $nb) = @ngx;
    ok(RulesNginx::wait_connected($_, $name eq 'native'),
       "$name: nginx connected")
        for @ngx;

    # a: a miss, appended (a caches the state it folds)
    is(RulesNginx::pixel($na, 'uid=w&ts=1000'),
       '204 ok []', "$name: a, first event");
    # b: a miss too, appended: a's cached state is stale now
    is(RulesNginx::pixel($nb, 'uid=w&ts=2000'),
       '204 ok []', "$name: b, second event");
    # a: a hit, a whole state computed from the stale one, refused: the
    # event is appended instead, and the key's 3 events counted
    is(RulesNginx::pixel($na, 'uid=w&ts=3000'), '204 ok [thrice]',
       "$name: a, third event, after the fallback");
    is(counters($na),
       'state_cache_lookups_total{result="hit"}=1, '
       . 'state_cache_lookups_total{result="miss"}=1, '
       . 'state_writes_total=0, state_write_fallbacks_total=1, '
       . 'events_total{status="ok"}=2',
       "$name: a counted the stale write as a fallback");
    is(counters($nb),
       'state_cache_lookups_total{result="hit"}=0, '
       . 'state_cache_lookups_total{result="miss"}=1, '
       . 'state_writes_total=0, state_write_fallbacks_total=0, '
       . 'events_total{status="ok"}=1',
       "$name: b appended only");

    # a folded the reply of its fallback: its cache is current again,
    # and its next event is written whole
    is(RulesNginx::pixel($na, 'uid=w&ts=4000'),
       '204 ok [thrice]', "$name: a, fourth event");
    is(counters($na),
       'state_cache_lookups_total{result="hit"}=2, '
       . 'state_cache_lookups_total{result="miss"}=1, '
       . 'state_writes_total=1, state_write_fallbacks_total=1, '
       . 'events_total{status="ok"}=3',
       "$name: a's next write is stored");

    RulesNginx::stop_nginx($_) for @ngx;
}

# A state cache too small for its keys.  With rules_state_cache 2k a
# worker holds about ten of these states: forty users, one event each,
# then the first twenty again.  Every lookup misses, and the second
# round's misses are of keys the cache evicted to make room, which it
# knows by their hashes (nearly all: the table of evicted hashes is
# direct-mapped, so a later eviction may take a key's place).  With the
# default size, the second round hits and nothing is evicted.  Either
# way each second event matches.
my $twice = <<'_EOC_';
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"}
]}
_EOC_

for my $s (@stores) {
    my ($name, $port) = @$s;
    for my $size ('2k', '32m') {
        my $ngx = RulesNginx::start_nginx(
            prefix  => "$FindBin::Bin/servroot-044c",
            workers => 1,
            files   => { 'rules.json' => $twice },
            http    => RulesNginx::pixel_http(
                store  => "rules_redis 127.0.0.1:$port;",
                prefix => "t044:$$:$name:$size:",
                fields => ['uid'],
                extra  => "rules_state_cache $size;"));
        ok(RulesNginx::wait_connected($ngx, $name eq 'native'),
           "$name, $size: nginx connected");

        my (@first, @second);
        push @first, RulesNginx::pixel($ngx, "uid=u$_&ts=" . (1000 + $_))
            for 0 .. 39;
        push @second, RulesNginx::pixel($ngx, "uid=u$_&ts=" . (2000 + $_))
            for 0 .. 19;
        is_deeply([\@first, \@second],
                  [[('204 ok []') x 40], [('204 ok [twice]') x 20]],
                  "$name, $size: the second event of each user matches");

        # hits, misses, misses of evicted keys, evictions
        my ($hit, $miss, $evicted, $evictions) = map {
            RulesNginx::metric($ngx, "nginx_rules_state_cache_$_") // 'none';
        } 'lookups_total{result="hit"}', 'lookups_total{result="miss"}',
          'evicted_misses_total', 'evictions_total';

        if ($size eq '2k') {
            is("$hit $miss", '0 60', "$name, $size: every lookup misses");
            ok($evicted ne 'none' && $evicted >= 15 && $evicted <= 20,
               "$name, $size: the second round's misses are known as "
               . "evicted ($evicted of 20)");
            # sixty states stored in room for at most eighteen
            ok($evictions ne 'none' && $evictions >= 42 && $evictions <= 60,
               "$name, $size: the cache evicted to make room, each state "
               . "once ($evictions)");
        } else {
            is("$hit $miss $evicted $evictions", '20 40 0 0',
               "$name, $size: the second round hits, nothing evicted");
        }

        RulesNginx::stop_nginx($ngx);
    }
}

done_testing();
