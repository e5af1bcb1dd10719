# rules_redis_max_inflight bounds the events a worker has waiting for
# Redis, however many calls carry them: with Redis stopped, a JSON body
# of five events under a bound of three has three waiting (answered at
# their deadline) and two failing at once (logged, at most once a
# second), the next event fails at once as well while the three are
# still unanswered by Redis, and once Redis answers them events are
# taken again.  The gauge of waiting events counts the running workers':
# a worker killed with events waiting takes them with it, the worker
# started instead counts its own.
# The bound also holds the calls waiting on one connection: a compaction
# call, which carries no event, waiting alone makes the next event fail
# at once (through a proxy that holds Redis' replies).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use RulesNginx;
use RulesProxy;
use File::Temp ();

my $slow = RulesMemcheck::slowdown();

my $rules = <<'_EOC_';
{"rules": [
  {"id": "seen", "kind": "segment", "key": "uid", "type": "count",
   "min": 1, "within": "7d"}
]}
_EOC_

# A redis-server stopped with SIGSTOP: calls are accepted, never answered
# until it goes on.  The worker gives a connection up after a second
# without a reply: the stopped part stays well within it.
my $redis = RulesNginx::start_redis();

my $ngx = RulesNginx::start_nginx(
    prefix => "$FindBin::Bin/servroot-057",
    files  => { 'rules.json' => $rules },
    http   => RulesNginx::pixel_http(
        store     => "rules_redis 127.0.0.1:$redis->{port};",
        timeout   => '200ms',
        prefix    => "t057:$$:",
        fields    => ['uid'],
        extra     => 'rules_redis_max_inflight 3;',
        locations => <<'_EOC_'));
        location = /ev {
            rules on;
            rules_body json;
            rules_time ts;
            add_header X-Status $rules_status always;
            return 204;
        }
_EOC_

# a JSON body of N events of uids TAG1..TAGN, posted
sub post_events {
    my ($tag, $n) = @_;
    my $body = '['
        . join(',', map { qq({"uid":"$tag$_","ts":1000}) } 1 .. $n) . ']';
    my ($code, $h) = RulesNginx::post_json($ngx->{port}, '/ev', $body);
    return ($code, $h->{'x-status'} // '');
}

sub get_event {
    my ($uid) = @_;
    my ($code, $h) = RulesNginx::get($ngx->{port}, "/px?uid=$uid&ts=1000");
    return ($code, $h->{'x-status'} // '');
}

sub metric {
    return RulesNginx::metric($ngx, @_) // -1;
}

# a live Redis first: the bound does not get in the way of events
# answered one after the other
is(join(' ', get_event('warm')), '204 ok', 'live Redis: ok');

my $err0 = metric('nginx_rules_events_total{status="error"}');
my $tmo0 = metric('nginx_rules_events_total{status="timeout"}');

kill 'STOP', $redis->{pid};

my $t0 = time;
my ($code, $status) = post_events('b', 5);
my $took = time - $t0;

is("$code $status", '204 timeout',
   'five events in one body, Redis stopped: answered, status timeout');
cmp_ok($took, '>=', 0.15, "at the deadline of those waiting ($took s)");

is(metric('nginx_rules_inflight_events'), 3,
   'three events wait for Redis: the bound, not the five of the one call');
is(metric('nginx_rules_events_total{status="error"}') - $err0, 2,
   'the two events beyond the bound failed (error)');
is(metric('nginx_rules_events_total{status="timeout"}') - $tmo0, 3,
   'the three waiting ones ended at their deadline (timeout)');

$t0 = time;
my @next = get_event('c1');
$took = time - $t0;
is("@next", '204 error', 'the next event, three still waiting: error');
cmp_ok($took, '<', 0.15 * $slow, "at once, not at a deadline ($took s)");

# the refusals are logged, once a second at most: the body's two (one
# line, or two across a second's turn), then the next event's
my @refused = RulesNginx::error_log($ngx) =~ /^(.*rules: event refused: .*)$/mg;
like($refused[0] // '', qr/\[warn\] .*rules: event refused: 3 events already wait for Redis \(rules_redis_max_inflight 3; 0 more since the last such line\)/,
     'a refusal is logged (warn), with the bound');
cmp_ok(scalar @refused, '<=', 3, 'at most a line a second ('
                                  . scalar(@refused) . ')');

kill 'CONT', $redis->{pid};

# Redis answers the three: their room is free again
my $back = RulesNginx::poll(10 * $slow, sub { join ' ', get_event('d1') },
                            sub { $_[0] eq '204 ok' });
is($back, '204 ok', 'Redis answering again: events taken');
is(metric('nginx_rules_inflight_events'), 0, 'nothing waits any more');

# ---- a worker killed with events waiting -------------------------------

my ($victim) = RulesNginx::worker_pids($ngx);

kill 'STOP', $redis->{pid};
is(join(' ', post_events('k', 3)), '204 timeout',
   'Redis stopped again: three events answered at their deadline');
is(metric('nginx_rules_inflight_events'), 3, 'the three wait for Redis');

kill 'KILL', $victim;
ok(RulesNginx::new_worker($ngx, $victim),
   'the worker killed, the master started another');
is(metric('nginx_rules_inflight_events'), 0,
   'the killed worker\'s waiting events are not counted');

# the new worker connects to the stopped Redis: its events wait too
is(join(' ', post_events('n', 2)), '204 timeout',
   'the new worker\'s two events answered at their deadline');
is(metric('nginx_rules_inflight_events'), 2,
   'the new worker\'s two waiting events are counted');

kill 'CONT', $redis->{pid};

my $left = RulesNginx::poll(5 * $slow,
                            sub { metric('nginx_rules_inflight_events') },
                            sub { $_[0] == 0 });
is($left, 0, 'Redis answering again: nothing waits');
is(join(' ', get_event('e1')), '204 ok', 'events are taken');

my $errors = RulesNginx::error_log($ngx);
my @alerts = $errors =~ /^.*\[(?:alert|crit|emerg)\].*$/mg;
is_deeply([grep { !/exited on signal 9/ } @alerts], [],
          'no alert in the error log but the killed worker\'s exit');
unlike($errors, qr/no reply for/,
       'Redis was stopped for less than a second at a time');
RulesNginx::stop_nginx($ngx);
RulesMemcheck::check("$ngx->{prefix}/logs", "nginx $ngx->{prefix}");

# ---- the bound on the calls waiting on one connection --------------------
#
# README (rules_redis_max_inflight): "A connection also has at most that
# many calls waiting for a reply (each carries one or more events)."
#
# A call can wait with no event in it: the compaction that the fold of a
# long key log asks for goes out in a call of its own once that event's
# reply is in.  Through a proxy that holds Redis' replies, with a bound
# of one and no state cache (every event appends to its key's log): the
# event that makes the log long enough waits (held), its reply is let
# through, and the compaction's call then waits with no event waiting.
# The next event is within the bound on events (none waits) but not
# within the one on calls: it fails at once (error) instead of waiting
# for its deadline.

{
    my $proxy = RulesProxy::start(upstream => $redis->{port},
                                  log => File::Temp::tempdir(CLEANUP => 1)
                                         . "/proxy.log");
    my $n2 = RulesNginx::start_nginx(
        prefix => "$FindBin::Bin/servroot-057b",
        files  => { 'rules.json' => $rules },
        http   => RulesNginx::pixel_http(
            store   => "rules_redis 127.0.0.1:$proxy->{port};",
            timeout => '200ms',
            prefix  => "t057b:$$:",
            fields  => ['uid'],
            extra   => "rules_redis_max_inflight 1;\n    rules_state_cache 0;"));
    my $m = sub { RulesNginx::metric($n2, @_) // -1 };
    my $ev = sub {
        my ($uid, $ts) = @_;
        my $t = time;
        my ($code, $h) = RulesNginx::get($n2->{port}, "/px?uid=$uid&ts=$ts");
        return ("$code " . ($h->{'x-status'} // ''), time - $t);
    };

    # seven events on one key: a log of seven entries, no compaction yet
    my @seven = map { ($ev->('long', 1000 + $_))[0] } 1 .. 7;
    is("@seven", join(' ', ('204 ok') x 7), 'seven events on one key: ok');
    is($m->('nginx_rules_state_compactions_total'), 0, 'no compaction yet');

    ok(RulesProxy::hold($proxy), 'the proxy holds the replies');
    my ($eighth, $took8) = $ev->('long', 1008);
    is($eighth, '204 timeout',
       'the eighth event, its reply held: answered at its deadline');
    is($m->('nginx_rules_inflight_events'), 1, 'it waits for Redis');

    # its reply let through: folded over eight entries, a compaction goes
    # out, in a call with no event, and its reply is held too
    ok(RulesProxy::release($proxy, 'one'), 'the eighth event\'s reply let through');
    my $held = RulesNginx::poll(2 * $slow, sub { RulesProxy::held($proxy) },
                                sub { $_[0] >= 2 }, 0.01);
    is($held, 2, 'a second reply held: the compaction\'s call');
    is($m->('nginx_rules_inflight_events'), 0,
       'no event waits: the compaction\'s call carries none');

    my $err0 = $m->('nginx_rules_events_total{status="error"}');
    my ($next, $took) = $ev->('other', 1000);
    is($next, '204 error',
       'the next event, the compaction\'s call waiting: error (the bound '
       . 'on calls), not timeout');
    cmp_ok($took, '<', 0.15 * $slow, "at once, not at a deadline ($took s)");
    is($m->('nginx_rules_events_total{status="error"}') - $err0, 1,
       'counted as error');

    ok(RulesProxy::release($proxy, 'all'), 'the replies let through');
    my $back = RulesNginx::poll(10 * $slow,
                                sub { ($ev->('other', 2000))[0] },
                                sub { $_[0] eq '204 ok' });
    is($back, '204 ok', 'the compaction answered: events taken again');
    is($m->('nginx_rules_state_compactions_total'), 1,
       'the compaction was applied');

    my $errs = RulesNginx::error_log($n2);
    unlike($errs, qr/\[(?:alert|crit|emerg)\]/, 'no alert in the error log');
    unlike($errs, qr/no reply for/, 'the replies were held less than a second');
    RulesNginx::stop_nginx($n2);
    RulesProxy::stop($proxy);
}

done_testing();
