# Redis answers the calls with an error (out of memory under a maxmemory
# limit with noeviction): every event is answered, fail-open, nothing is
# written, the error is logged at most once a second however many calls
# fail, and the events are evaluated again as soon as Redis accepts
# writes.  A state key holding another type is replaced.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use RulesNginx;

my $redis = RulesNginx::start_redis(
    args => ['--maxmemory-policy', 'noeviction']);
my $port = $redis->{port};

my $ngx = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-066",
    workers => 1,
    files   => { 'rules.json' => <<'_EOC_' },
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"}
]}
_EOC_
    http    => RulesNginx::pixel_http(
        store  => "rules_redis 127.0.0.1:$port;",
        prefix => 't066:',
        fields => ['uid']));

my ($st, $h) = RulesNginx::get($ngx->{port}, '/px?uid=a&ts=1000');
is($h->{'x-status'} // '', 'ok', 'an event before the limit: ok');

is(RulesNginx::redis_cmd($port, 'CONFIG', 'SET', 'maxmemory', '1'), '+OK',
   'Redis out of memory for writes');

my (%status, $answered);
for my $i (1 .. 40) {
    ($st, $h) = RulesNginx::get($ngx->{port}, "/px?uid=u$i&ts=" . (2000 + $i));
    $answered++ if $st == 204;
    $status{ $h->{'x-status'} // 'none' }++;
}
is($answered, 40, 'every event answered');
is($status{error} // 0, 40, 'as error (fail-open)') or diag(explain(\%status));

my @lines = RulesNginx::error_log($ngx) =~ /unexpected reply to the state call: OOM/g;
ok(@lines >= 1, 'the OOM error is logged');
cmp_ok(scalar @lines, '<=', 3,
       'at most once a second, not once per call (' . @lines . ' lines)');

is(RulesNginx::redis_cmd($port, 'CONFIG', 'SET', 'maxmemory', '0'), '+OK',
   'the limit lifted');
($st, $h) = RulesNginx::get($ngx->{port}, '/px?uid=a&ts=3000');
is($h->{'x-status'} // '', 'ok', 'events are evaluated again');
is($h->{'x-rules'} // '', 'twice', 'and see the state written before');

# a state key that holds another type is not ours: replaced, not an error
is(RulesNginx::redis_cmd($port, 'HSET', 't066:{uid:h}', 'a', 'b'), ':1',
   'a hash where a state key goes');
($st, $h) = RulesNginx::get($ngx->{port}, '/px?uid=h&ts=4000');
is($h->{'x-status'} // '', 'ok', 'the event on it is evaluated');
($st, $h) = RulesNginx::get($ngx->{port}, '/px?uid=h&ts=4001');
is($h->{'x-rules'} // '', 'twice', 'and the key holds its state now');

unlike(RulesNginx::error_log($ngx), qr/\[(alert|crit|emerg)\]/,
       'no alert in the error log');
RulesNginx::stop_nginx($ngx);
done_testing();
