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

done_testing();
