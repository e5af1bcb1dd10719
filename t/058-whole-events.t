# An event's key operations go to Redis in one call, even when the call
# fills up (30 items) in the middle of the event: with one Redis, an
# event is applied whole or not at all.
#
# JSON bodies of events evaluated in one pass of the worker's event loop:
# events with two state keys (uid, ip) and with three (uid, ip, device),
# in orders that put the 30th item of a call at an event's first or
# second key.  Redis' MONITOR shows every call's keys: no event has keys
# in two calls, and each body's events are all answered ok.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use Time::HiRes qw(time sleep);
use RulesNginx;

my $rules = <<'_EOC_';
{"rules": [
  {"id": "u", "kind": "segment", "key": "uid", "type": "count",
   "min": 1, "within": "7d"},
  {"id": "i", "kind": "segment", "key": "ip", "type": "count",
   "min": 1, "within": "7d"},
  {"id": "d", "kind": "segment", "key": "device", "type": "count",
   "min": 1, "within": "7d"}
]}
_EOC_

my $redis = RulesNginx::start_redis();

my $ngx = RulesNginx::start_nginx(
    prefix => "$FindBin::Bin/servroot-058",
    files  => { 'rules.json' => $rules },
    http   => RulesNginx::pixel_http(
        store     => "rules_redis 127.0.0.1:$redis->{port};",
        prefix    => "t058:$$:",
        fields    => ['uid', 'ip', 'device'],
        locations => <<'_EOC_'));
        location = /ev {
            rules on;
            rules_body json;
            rules_time ts;
            add_header X-Status $rules_status always;
            return 204;
        }
_EOC_

# the worker's connection is made at its first event
is((RulesNginx::get($ngx->{port}, '/px?uid=warm&ts=1000'))[0], 204,
   'a first event');

my $mon = RulesNginx::redis_conn($redis->{port});
print $mon "MONITOR\r\n";
is(scalar <$mon>, "+OK\r\n", 'MONITOR');

# A body: one event per key count given (2 or 3), each event's values
# its own (tag and index), so that a key names its event.
sub post_body {
    my ($tag, @nkeys) = @_;
    my @ev;
    for my $i (0 .. $#nkeys) {
        my $e = qq({"uid":"u$tag-$i","ip":"ip$tag-$i","ts":1000);
        $e .= qq(,"device":"d$tag-$i") if $nkeys[$i] == 3;
        push @ev, "$e}";
    }
    my $body = '[' . join(',', @ev) . ']';
    my ($code, $h) = RulesNginx::post_json($ngx->{port}, '/ev', $body);
    return "$code " . ($h->{'x-status'} // '');
}

# MONITOR's lines until every key of the body's events was seen (or 5 s):
# the calls, each a list of its keys' events ("tag-i").
sub calls_of {
    my ($tag, $nitems) = @_;
    my $sel = IO::Select->new($mon);
    my (@calls, $buf, $seen);
    $buf = '';
    $seen = 0;
    my $deadline = time + 5 * RulesMemcheck::slowdown();
    while ($seen < $nitems && time < $deadline) {
        last unless $sel->can_read($deadline - time);
        sysread($mon, $buf, 65536, length $buf) or last;
        while ($buf =~ s/\A([^\n]*)\r\n//) {
            my $line = $1;
            next unless $line =~ /"(?:EVALSHA|RULES\.STORE)" "[0-9a-f]+" "(\d+)" (.*)/i;
            my ($n, $rest) = ($1, $2);
            my @keys = ($rest =~ /"((?:[^"\\]|\\.)*)"/g)[0 .. $n - 1];
            my @ev = map { /\{(?:uid|ip|device):(?:u|ip|d)(\Q$tag\E-\d+)\}/
                           ? $1 : () } @keys;
            next unless @ev;
            $seen += @ev;
            push @calls, \@ev;
        }
    }
    return @calls;
}

my @cases = (
    # the 30th item is an event's second key (uid, ip: then its device)
    [ 'a', 2, (3) x 11 ],
    # the 30th item is an event's first key
    [ 'b', 2, 2, (3) x 11 ],
    # ten three-key events fill a call exactly, the rest go in another
    [ 'c', (3) x 12 ],
    # two-key events only: 15 of them fill a call, an odd event count
    [ 'd', (2) x 17 ],
);

for my $case (@cases) {
    my ($tag, @nkeys) = @$case;
    my $nitems = 0;
    $nitems += $_ for @nkeys;

    is(post_body($tag, @nkeys), '204 ok',
       "body $tag: " . @nkeys . " events, $nitems state keys, answered ok");

    my @calls = calls_of($tag, $nitems);
    my (%in, $keys);
    $keys = 0;
    for my $c (0 .. $#calls) {
        for my $e (@{ $calls[$c] }) {
            $in{$e}{$c} = 1;
            $keys++;
        }
    }

    is($keys, $nitems, "body $tag: every key operation reached Redis");
    cmp_ok(scalar @calls, '>=', 2, "body $tag: in more than one call ("
           . join(' + ', map { scalar @$_ } @calls) . ' keys)');
    my @split = grep { keys %{ $in{$_} } > 1 } sort keys %in;
    is("@split", '', "body $tag: no event has keys in two calls");
    is(scalar keys %in, scalar @nkeys, "body $tag: every event in a call");
}

close $mon;

RulesNginx::stop_nginx($ngx);
unlike(RulesNginx::error_log($ngx), qr/\[(?:alert|emerg|crit)\]/,
       'no alert in the error log');

done_testing();
