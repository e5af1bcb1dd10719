# rules-replay options and input readings whose effect no other file
# checks: --time-member (events timed by another member), --db N (the
# state written in that database), --key-max (a longer key value is not
# evaluated for that key's rules: not invalid), an event without "ts"
# (the current time), an array of one object (read as that object).
# Each part quotes the README line it checks.  Against a private
# redis-server (RulesNginx::start_redis) for --db.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep time);
use RulesNginx;
use RulesReplay;

my $replay = RulesReplay::binary();
-x $replay or plan skip_all => "no $replay";

my $dir = tempdir(CLEANUP => 1);

open my $rf, '>', "$dir/rules.json" or die;
print $rf <<'_EOC_';
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"},
  {"id": "device_seen", "kind": "segment", "key": "device", "type": "count",
   "min": 1, "within": "1h"}
]}
_EOC_
close $rf;

# rules-replay ARGS with the lines given on stdin; returns { rc, out, err };
# rc is undef when it ran over 20 s (killed)
sub run_replay {
    my ($lines, @args) = @_;
    return RulesReplay::run($dir, { in => join '', map { "$_\n" } @$lines },
                            @args);
}

sub results {
    return join '', map { "$_\n" } @_;
}

my $none  = '{"matched":[]}';
my $twice = '{"matched":["twice"]}';


# ---- --time-member -------------------------------------------------------
#
# README: "[--time-member ts]" and "`\"ts\"`, the event time in ms"; the
# option names the member that holds it.

my $r = run_replay([
    '{"uid":"tm","when":1000}',
    '{"uid":"tm","when":2000}',
    '{"uid":"tm","when":3602001}',
    '{"uid":"tm2","when":1000,"ts":5000000}',
    '{"uid":"tm2","when":3700000,"ts":5000001}',
], '--time-member', 'when');
is($r->{rc}, 0, '--time-member: exit 0');
is($r->{out}, results($none, $twice, $none, $none, $none),
   '--time-member when: the times from "when" (1000, 2000 match; '
   . '3602001 is over an hour later), "ts" is not the time');
is($r->{err}, '', '--time-member: nothing on stderr');


# ---- an event without "ts" -----------------------------------------------
#
# README: "Reads events (one JSON object per line: field names to values,
# plus `\"ts\"`, the event time in ms; without it, the current time)"

my $now = int(time * 1000);
$r = run_replay([
    qq({"uid":"now","ts":) . ($now - 600000) . '}',
    '{"uid":"now"}',
    '{"uid":"old","ts":1000}',
    '{"uid":"old"}',
]);
is($r->{rc}, 0, 'no ts: exit 0');
is($r->{out}, results($none, $twice, $none, $none),
   'no ts: the current time (10 minutes after the first event of "now", '
   . 'years after the one of "old")');


# ---- an array of one object ----------------------------------------------
#
# README: "A line that cannot be used (not JSON, or not one object: `[]`
# holds no event; an array of one object is read as that object) gives
# `{\"matched\":[],\"status\":\"invalid\",\"error\":\"...\"}`"

$r = run_replay([
    '[{"uid":"arr","ts":1000}]',
    '{"uid":"arr","ts":2000}',
    '[{"uid":"arr2","ts":1000}]',
    '[ {"uid":"arr2","ts":3602000} ]',
    '[{"uid":"arr3","ts":1000},{"uid":"arr3","ts":2000}]',
]);
is($r->{rc}, 0, 'arrays: exit 0');
my @out = split /\n/, $r->{out};
is(scalar @out, 5, 'arrays: one result per line');
is(join("\n", @out[0 .. 3]), join("\n", $none, $twice, $none, $none),
   'an array of one object: that event, its uid and its ts (the second '
   . 'of arr matches; arr2\'s events are over an hour apart)');
like($out[4] // '', qr/^\{"matched":\[\],"status":"invalid","error":"[^"]+"\}$/,
     'an array of two objects: invalid (not one object)');


# ---- --key-max -------------------------------------------------------------
#
# README: "`--key-max` and `--value-max` 1 to 65535 (as
# `rules_max_key_length` and `rules_max_value_length`)"; and
# rules_max_key_length: "A key value longer than `rules_max_key_length`
# is not evaluated for the rules of that key"; rules_max_value_length:
# "An event with any field value longer than `rules_max_value_length` is
# rejected (`invalid`)."

my @key_lines = (
    '{"uid":"abcdef","device":"d1","ts":1000}',
    '{"uid":"abcdef","ts":2000}',
    '{"uid":"abcde","ts":1000}',
    '{"uid":"abcde","ts":2000}',
    '{"device":"d123456","ts":3000}',
);
$r = run_replay(\@key_lines, '--key-max', '5');
is($r->{rc}, 0, '--key-max 5: exit 0');
is($r->{out},
   results('{"matched":["device_seen"]}', $none, $none, $twice, $none),
   '--key-max 5: a 6-byte uid is not evaluated (its second event does '
   . 'not match), the event is not invalid (its device is), a 5-byte '
   . 'one is');

$r = run_replay(\@key_lines);
is($r->{out},
   results('{"matched":["device_seen"]}', $twice, $none, $twice,
           '{"matched":["device_seen"]}'),
   'the same lines with the default --key-max: every key evaluated');

$r = run_replay(['{"uid":"abcdef","ts":1000}', '{"uid":"abcdefg","ts":1000}'],
                '--value-max', '6');
is($r->{rc}, 0, '--value-max 6: exit 0');
like($r->{out}, qr/^\Q$none\E\n\{"matched":\[\],"status":"invalid","error":"[^"]+"\}\n\z/,
     '--value-max 6: a 7-byte value makes the event invalid, unlike --key-max');


# ---- --db --------------------------------------------------------------------
#
# README: "[--db N]" and "`--db` 0 to 2147483647"; as rules_redis's db=,
# the state in that database.

SKIP: {
    skip 'no redis-server', 6 unless grep { -x "$_/redis-server" }
                                        split /:/, $ENV{PATH};
    my $redis = RulesNginx::start_redis();
    my $port = $redis->{port};
    my $prefix = "t022:$$:";
    my $key = "$prefix\{uid:dbx\}";

    $r = run_replay(['{"uid":"dbx","ts":1000}'],
                    '--redis', "127.0.0.1:$port", '--prefix', $prefix,
                    '--db', '3');
    is("$r->{rc} $r->{out}", "0 $none\n", '--db 3: exit 0, no match yet');

    my $c = RulesNginx::redis_conn($port);
    is(RulesNginx::redis_call($c, 'EXISTS', $key), 0,
       '--db 3: no state in db 0');
    is(RulesNginx::redis_call($c, 'SELECT', '3'), 'OK', 'SELECT 3');
    is(RulesNginx::redis_call($c, 'EXISTS', $key), 1,
       '--db 3: the state is in db 3');
    close $c;

    $r = run_replay(['{"uid":"dbx","ts":2000}'],
                    '--redis', "127.0.0.1:$port", '--prefix', $prefix,
                    '--db', '3');
    is("$r->{rc} $r->{out}", "0 $twice\n",
       '--db 3 again: the second event counts the first one');

    $r = run_replay(['{"uid":"dbx","ts":2000}'],
                    '--redis', "127.0.0.1:$port", '--prefix', $prefix);
    is("$r->{rc} $r->{out}", "0 $none\n",
       'without --db (db 0): that state is not there');
}

done_testing();
