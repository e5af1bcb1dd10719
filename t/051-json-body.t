# JSON body mode: POST one event object or an array of them.

use Test::Nginx::Socket 'no_plan';
# run as t/native/ (a link to this file): the Redis with the rules Redis
# module, under any runner (t/lib/RulesNative.pm)
use FindBin;
use lib "$FindBin::Bin/lib";
use RulesNative;

our $RulesFile = <<'_EOC_';
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "where": {"field": "type", "eq": "page"}, "min": 2, "within": "7d"},
  {"id": "big_spender", "kind": "segment", "key": "uid", "type": "count",
   "where": {"field": "amount", "gte": 100}, "min": 1, "within": "30d"},
  {"id": "ip_burst", "kind": "fraud", "key": "ip", "type": "count",
   "min": 3, "within": "10s"}
]}
_EOC_

# a location whose bodies over 1k nginx writes to a temporary file
our $TempFileConfig = <<'_EOC_';
    location = /events {
        rules on;
        rules_body json;
        rules_time ts;
        rules_max_body_size 16k;
        client_body_buffer_size 1k;
        rules_field ip $arg_ip;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        return 204;
    }
_EOC_

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value('http_config', <<'_EOC_') unless defined $block->http_config;
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_redis_timeout 500ms;
    rules_key_prefix "t051:";
    rules_file ../html/rules.json;
_EOC_
    $block->set_value('config', <<'_EOC_') unless defined $block->config;
    location = /events {
        rules on;
        rules_body json;
        rules_time ts;
        rules_max_body_size 4k;
        rules_max_events 5;
        rules_field ip $arg_ip;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        add_header X-Fraud $rules_fraud always;
        return 204;
    }
_EOC_
    $block->set_value('user_files', ">>> rules.json\n$RulesFile")
        unless defined $block->user_files;
    # one per request: upstream wants an array when there are several
    unless (defined $block->error_code) {
        my $req = $block->request;
        $block->set_value('error_code',
                          ref $req ? [(204) x @$req] : 204);
    }
});

no_shuffle();
# a block's error_log patterns are looked for in its whole log after each
# of its requests (upstream checks the log after every request)
check_accum_error_log();
run_tests();

__DATA__

=== TEST 1: one event object
--- request
POST /events
{"uid": "t051-1", "type": "page", "ts": 1000}
--- error_code: 204
--- response_headers
X-Rules: []
X-Status: ok
--- no_error_log
[error]



=== TEST 2: an array of events is applied in order; the result is their union
--- request
POST /events
[{"uid": "t051-2", "type": "page", "ts": 1000},
 {"uid": "t051-2", "type": "page", "ts": 2000},
 {"uid": "t051-2b", "type": "page", "amount": 250, "ts": 2500}]
--- error_code: 204
--- response_headers
X-Rules: [twice,big_spender]
X-Status: ok



=== TEST 3: numbers compare as numbers; a numeric string too
--- request eval
[
  "POST /events\n{\"uid\": \"t051-3\", \"amount\": 99.5, \"ts\": 1000}",
  "POST /events\n{\"uid\": \"t051-3\", \"amount\": \"1e2\", \"ts\": 2000}",
]
--- response_headers eval
["X-Rules: []", "X-Rules: [big_spender]"]



=== TEST 4: rules_field values fill what the objects do not carry
--- request eval
[
  "POST /events?ip=192.0.2.4\n[{\"uid\": \"a\", \"ts\": 1}, {\"uid\": \"b\", \"ts\": 2}]",
  "POST /events?ip=192.0.2.4\n{\"uid\": \"c\", \"ts\": 3}",
  "POST /events?ip=192.0.2.4\n{\"uid\": \"d\", \"ip\": \"192.0.2.5\", \"ts\": 4}",
]
--- response_headers eval
["X-Fraud: 0", "X-Fraud: 1\nX-Rules: [ip_burst]", "X-Fraud: 0\nX-Rules: []"]



=== TEST 5: a body that is not JSON: invalid, still answered, one log line
The second request reads the error log so far: it holds the rejection
exactly once, and no other line about the event.
--- config
    location = /events {
        rules on;
        rules_body json;
        rules_time ts;
        rules_field ip $arg_ip;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        return 204;
    }
    location = /log {
        default_type text/plain;
        alias logs/error.log;
    }
--- request eval
["POST /events\n{\"uid\": \"t051-5\", \"type\": ", "GET /log"]
--- error_code eval
[204, 200]
--- response_headers eval
["X-Status: invalid\nX-Rules: []", ""]
--- response_body_like eval
["^\$",
 qr/\A(?:(?!rules: event)[\s\S])*rules: event body rejected: invalid JSON at line \d+, column \d+[^\n]*\n(?:(?!rules: event)[\s\S])*\z/]
--- error_log eval
qr/rules: event body rejected: invalid JSON at line \d+, column \d+/
--- no_error_log
[error]



=== TEST 6: an array with a non-object: the whole body is rejected
Nothing is applied: had the valid event 0 been, the next page view of
that user would be the second, and match "twice".
--- request eval
[
  "POST /events\n[{\"uid\": \"t051-6\", \"type\": \"page\", \"ts\": 1}, 42]",
  "POST /events\n{\"uid\": \"t051-6\", \"type\": \"page\", \"ts\": 2}",
]
--- response_headers eval
["X-Status: invalid\nX-Rules: []", "X-Status: ok\nX-Rules: []"]
--- error_log
rules: event body rejected: event 1 is not a JSON object



=== TEST 7: more events than rules_max_events
--- request eval
"POST /events\n[" . ('{"uid": "t051-7", "ts": 1},' x 5) . '{"uid": "t051-7", "ts": 1}]'
--- response_headers
X-Status: invalid
--- error_log
rules: event body rejected: 6 events, more than the limit of 5



=== TEST 8: a body over rules_max_body_size gets 413
--- request eval
"POST /events\n{\"uid\": \"t051-8\", \"pad\": \"" . ("x" x 5000) . "\", \"ts\": 1}"
--- error_code: 413
--- error_log
is over rules_max_body_size 4096



=== TEST 9: an event without its rules_time member is invalid
The whole body: the valid event 0 is not applied either (the next page
view of that user would otherwise match "twice").
--- request eval
[
  "POST /events\n[{\"uid\": \"t051-9\", \"type\": \"page\", \"ts\": 5}, {\"uid\": \"t051-9\"}]",
  "POST /events\n{\"uid\": \"t051-9\", \"type\": \"page\", \"ts\": 6}",
]
--- response_headers eval
["X-Status: invalid\nX-Rules: []", "X-Status: ok\nX-Rules: []"]
--- error_log
event 1 has no "ts" time



=== TEST 10: a time member that is not a valid time
--- request
POST /events
{"uid": "t051-10", "ts": -3}
--- response_headers
X-Status: invalid
--- error_log
"ts" must be a non-negative integer number of ms



=== TEST 11: GET on a JSON endpoint uses the rules_field values
Without a rules_field for the time member, a GET has no time: invalid.
With one, the query's uid, type and ts make the event: two page views
at ts 1000 and 2000 match "twice"; the ts of the query is the event
time (a view at ts 1000 + 7d is outside the first one's window).
--- config
    location = /events {
        rules on;
        rules_body json;
        rules_time ts;
        rules_field ip $arg_ip;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        return 204;
    }
    location = /events-q {
        rules on;
        rules_body json;
        rules_time ts;
        rules_field uid $arg_uid;
        rules_field type $arg_type;
        rules_field ts $arg_ts;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        return 204;
    }
--- request eval
[
  "GET /events?ip=192.0.2.11&uid=t051-11&type=page&ts=1000",
  "GET /events-q?uid=t051-11&type=page&ts=1000",
  "GET /events-q?uid=t051-11&type=view&ts=1500",
  "GET /events-q?uid=t051-11&type=page&ts=2000",
  "GET /events-q?uid=t051-11b&type=page&ts=1000",
  "GET /events-q?uid=t051-11b&type=page&ts=604801000",
  "POST /events-q?uid=t051-11c&type=page&ts=1000\n{\"ts\": 1000}",
  "POST /events-q?uid=t051-11c&type=view&ts=1000\n{\"type\": \"page\", \"ts\": 2000}",
]
--- response_headers eval
[
  "X-Status: invalid\nX-Rules: []",
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: [twice]",
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: [twice]",
]
--- error_log
rules: event rejected: no "ts" time



=== TEST 12: an empty POST body
--- request
POST /events
--- more_headers
Content-Length: 0
--- response_headers
X-Status: invalid
--- error_log
rules: event rejected: empty body



=== TEST 13: duplicate members are refused, not guessed
--- request
POST /events
{"uid": "t051-13", "uid": "someone-else", "ts": 1}
--- response_headers
X-Status: invalid
--- error_log
duplicate object key



=== TEST 14: deeply nested JSON fails cleanly
--- request eval
"POST /events\n" . ("[" x 3000) . ("]" x 3000)
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_key_prefix "t051:";
    rules_file ../html/rules.json;
--- config
    location = /events {
        rules on;
        rules_body json;
        rules_max_body_size 64k;
        rules_field ip $arg_ip;
        add_header X-Status $rules_status always;
        return 204;
    }
--- response_headers
X-Status: invalid
--- error_log
rules: event body rejected: invalid JSON
--- no_error_log
[alert]



=== TEST 15: a chunked body over rules_max_body_size gets 413 too
--- raw_request eval
my $body = "{\"uid\": \"t051-15\", \"pad\": \"" . ("x" x 5000) . "\", \"ts\": 1}";
"POST /events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
. "Transfer-Encoding: chunked\r\n\r\n"
. sprintf("%x\r\n%s\r\n0\r\n\r\n", length $body, $body)
--- error_code: 413
--- response_headers
X-Status: invalid
--- error_log
is over rules_max_body_size 4096



=== TEST 16: more events than one call holds: the calls split at 30 items, and Redis applies them in order
The uid of the last event was seen by the first, two calls before.
--- config
    location = /events {
        rules on;
        rules_body json;
        rules_time ts;
        rules_max_body_size 8k;
        rules_max_events 40;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        return 204;
    }
    location = /metrics { rules_metrics; }
--- request eval
my @ev = map { "{\"uid\": \"t051-16-$_\", \"ip\": \"192.0.2.$_\", \"type\": \""
               . ($_ == 0 ? "page" : "view") . "\", \"ts\": " . (1000 + $_) . "}" }
         0 .. 33;
push @ev, "{\"uid\": \"t051-16-0\", \"ip\": \"192.0.2.99\", \"type\": \"page\", \"ts\": 2000}";
["POST /events\n[" . CORE::join(",", @ev) . "]", "GET /metrics"]
--- error_code eval
[204, 200]
--- response_headers eval
["X-Status: ok\nX-Rules: [twice]", ""]
--- response_body_like eval
["^\$",
 qr/\A(?=.*^nginx_rules_redis_calls_total(?:\{\})? 3$)(?=.*^nginx_rules_redis_call_items_total(?:\{\})? 70$)/ms]
--- no_error_log
[error]



=== TEST 17: a body nginx cannot read (invalid chunked encoding), with an error_page under the same "rules on": the error page answers
--- config
    rules on;
    rules_body json;
    rules_field ip $arg_ip;
    error_page 400 /bad;
    location = /events {
        return 204;
    }
    location = /bad {
        internal;
        add_header X-Status "[$rules_status]" always;
        return 200 "bad body\n";
    }
--- raw_request eval
"POST /events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
. "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
--- error_code: 400
--- response_headers
X-Status: []
--- response_body
bad body
--- error_log
client sent invalid chunked body
--- no_error_log
[alert]



=== TEST 18: a number is one text however the body writes it (100, 100.0, 1e2), so eq and distinct see one value
--- user_files
>>> rules.json
{"rules": [
  {"id": "p100", "kind": "segment", "key": "uid", "type": "count",
   "where": {"field": "price", "eq": "100"}, "min": 1, "within": "1h"},
  {"id": "prices", "kind": "segment", "key": "uid", "type": "distinct",
   "field": "price", "min": 2, "within": "1h"}
]}
--- request eval
[
  "POST /events\n{\"uid\": \"t051-18a\", \"price\": 100.0, \"ts\": 1000}",
  "POST /events\n{\"uid\": \"t051-18b\", \"price\": 1e2, \"ts\": 1000}",
  "POST /events\n{\"uid\": \"t051-18c\", \"price\": 100, \"ts\": 1000}",
  "POST /events\n{\"uid\": \"t051-18c\", \"price\": 100.0, \"ts\": 2000}",
  "POST /events\n{\"uid\": \"t051-18c\", \"price\": 1E2, \"ts\": 3000}",
  "POST /events\n{\"uid\": \"t051-18c\", \"price\": 2.5e-1, \"ts\": 4000}",
]
--- response_headers eval
["X-Rules: [p100]", "X-Rules: [p100]", "X-Rules: [p100]", "X-Rules: [p100]",
 "X-Rules: [p100]", "X-Rules: [p100,prices]"]



=== TEST 19: a time member as a string: leading zeros allowed, as in query mode; over 2^53-1 invalid
--- request eval
[
  "POST /events\n{\"uid\": \"t051-19\", \"ts\": \"000000000000000000000000005\"}",
  "POST /events\n{\"uid\": \"t051-19\", \"ts\": \"0009007199254740991\"}",
  "POST /events\n{\"uid\": \"t051-19\", \"ts\": \"9007199254740992\"}",
]
--- response_headers eval
["X-Status: ok", "X-Status: ok", "X-Status: invalid"]



=== TEST 20: a valid chunked body, in two chunks: read whole, its events applied (the empty buffer that ends a chunked body was copied from a NULL pointer)
--- raw_request eval
my @c = ("[{\"uid\": \"t051-27\", \"type\": \"page\", \"ts\": 1000},",
         " {\"uid\": \"t051-27\", \"type\": \"page\", \"ts\": 2000}]");
"POST /events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
. "Transfer-Encoding: chunked\r\n\r\n"
. CORE::join("", map { sprintf("%x\r\n%s\r\n", length $_, $_) } @c)
. "0\r\n\r\n"
--- error_code: 204
--- response_headers
X-Rules: [twice]
X-Status: ok
--- no_error_log
[error]



=== TEST 21: a body over rules_max_body_size with an error_page 413 to a proxied collector: the collector gets the whole body
--- config
    location = /events {
        rules on;
        rules_body json;
        rules_max_body_size 1k;
        error_page 413 = @collector;
        return 204;
    }
    location @collector {
        rewrite ^ /collect break;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT;
    }
    location = /collect {
        return 200 "collected $content_length bytes\n";
    }
--- request eval
"POST /events\n{\"uid\": \"t051-21\", \"pad\": \"" . ("x" x 2000) . "\"}"
--- error_code: 200
--- response_body
collected 2029 bytes
--- error_log
is over rules_max_body_size 1024
--- no_error_log
[alert]



=== TEST 22: true and false give "true" and "false", numbers their text; null, objects and arrays give no value
--- user_files
>>> rules.json
{"rules": [
  {"id": "yes", "kind": "segment", "key": "uid", "type": "count",
   "where": {"field": "flag", "eq": "true"}, "min": 1, "within": "1h"},
  {"id": "no", "kind": "segment", "key": "uid", "type": "count",
   "where": {"field": "flag", "eq": "false"}, "min": 1, "within": "1h"},
  {"id": "tenth", "kind": "segment", "key": "uid", "type": "count",
   "where": {"field": "n", "eq": "0.1"}, "min": 1, "within": "1h"},
  {"id": "huge", "kind": "segment", "key": "uid", "type": "count",
   "where": {"field": "n", "eq": "1.5e+20"}, "min": 1, "within": "1h"},
  {"id": "neg", "kind": "segment", "key": "uid", "type": "count",
   "where": {"field": "n", "eq": "-3.5"}, "min": 1, "within": "1h"},
  {"id": "max", "kind": "segment", "key": "uid", "type": "count",
   "where": {"field": "n", "eq": "9223372036854775807"}, "min": 1, "within": "1h"},
  {"id": "has_n", "kind": "segment", "key": "uid", "type": "count",
   "where": {"field": "n", "exists": true}, "min": 1, "within": "1h"}
]}
--- request eval
[
  "POST /events\n{\"uid\": \"t051-22a\", \"flag\": true, \"ts\": 1000}",
  "POST /events\n{\"uid\": \"t051-22b\", \"flag\": false, \"ts\": 1000}",
  "POST /events\n{\"uid\": \"t051-22c\", \"n\": 1e-1, \"ts\": 1000}",
  "POST /events\n{\"uid\": \"t051-22d\", \"n\": 1.5e20, \"ts\": 1000}",
  "POST /events\n{\"uid\": \"t051-22e\", \"n\": -35e-1, \"ts\": 1000}",
  "POST /events\n{\"uid\": \"t051-22f\", \"n\": 9223372036854775807, \"ts\": 1000}",
  "POST /events\n{\"uid\": \"t051-22g\", \"n\": null, \"flag\": null, \"ts\": 1000}",
  "POST /events\n{\"uid\": \"t051-22h\", \"n\": {\"v\": 1}, \"flag\": {}, \"ts\": 1000}",
  "POST /events\n{\"uid\": \"t051-22i\", \"n\": [1], \"flag\": [true], \"ts\": 1000}",
  "POST /events\n{\"uid\": \"t051-22j\", \"n\": \"x\", \"ts\": 1000}",
  "POST /events\n{\"uid\": null, \"n\": 1, \"ts\": 1000}",
  "POST /events\n{\"uid\": {\"id\": \"t051-22k\"}, \"n\": 1, \"ts\": 1000}",
  "POST /events\n{\"uid\": [\"t051-22l\"], \"n\": 1, \"ts\": 1000}",
]
--- response_headers eval
[
  "X-Status: ok\nX-Rules: [yes]",
  "X-Status: ok\nX-Rules: [no]",
  "X-Status: ok\nX-Rules: [tenth,has_n]",
  "X-Status: ok\nX-Rules: [huge,has_n]",
  "X-Status: ok\nX-Rules: [neg,has_n]",
  "X-Status: ok\nX-Rules: [max,has_n]",
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: [has_n]",
  "X-Status: skipped\nX-Rules: []",
  "X-Status: skipped\nX-Rules: []",
  "X-Status: skipped\nX-Rules: []",
]
--- no_error_log
[error]



=== TEST 23: a number the parser cannot hold, in any member: the body is invalid and nothing applied; as a string it is a value
Server time (no rules_time), so that no other check (the time member's)
could make these bodies invalid. Had event 0 of a rejected body been
applied, the third page view would be that user's second and match
"twice".
--- config
    location = /events {
        rules on;
        rules_body json;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        return 204;
    }
--- request eval
[
  "POST /events\n[{\"uid\": \"t051-23\", \"type\": \"page\"}, {\"uid\": \"t051-23x\", \"order\": 9223372036854775808}]",
  "POST /events\n[{\"uid\": \"t051-23\", \"type\": \"page\"}, {\"uid\": \"t051-23x\", \"amount\": 1e400}]",
  "POST /events\n{\"uid\": \"t051-23\", \"type\": \"page\", \"amount\": -9223372036854775809}",
  "POST /events\n{\"uid\": \"t051-23\", \"type\": \"page\"}",
  "POST /events\n{\"uid\": \"t051-23\", \"type\": \"page\", \"order\": \"9223372036854775808\", \"amount\": \"1e400\"}",
]
--- response_headers eval
[
  "X-Status: invalid\nX-Rules: []",
  "X-Status: invalid\nX-Rules: []",
  "X-Status: invalid\nX-Rules: []",
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: [twice]",
]
--- error_log eval
[qr/rules: event body rejected: invalid JSON at line 1, column \d+/]
--- no_error_log
[error]



=== TEST 24: a body larger than client_body_buffer_size: nginx writes it to a temporary file, the module reads it back whole
--- config eval
$::TempFileConfig
--- request eval
"POST /events\n"
. "[{\"uid\": \"t051-24\", \"type\": \"page\", \"pad\": \"" . ("x" x 3000) . "\", \"ts\": 1000},\n"
. " {\"uid\": \"t051-24\", \"type\": \"page\", \"pad\": \"" . ("y" x 3000) . "\", \"ts\": 2000}]"
--- response_headers
X-Rules: [twice]
X-Status: ok
--- error_log
a client request body is buffered to a temporary file
--- no_error_log
[error]



=== TEST 25: the same, chunked, in chunks that end mid-event
--- config eval
$::TempFileConfig
--- raw_request eval
my $body = "[{\"uid\": \"t051-25\", \"type\": \"page\", \"pad\": \"" . ("x" x 3000) . "\", \"ts\": 1000},\n"
         . " {\"uid\": \"t051-25\", \"type\": \"page\", \"pad\": \"" . ("y" x 3000) . "\", \"ts\": 2000}]";
my @chunks = (substr($body, 0, 700), substr($body, 700, 2500), substr($body, 3200));
"POST /events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
. "Transfer-Encoding: chunked\r\n\r\n"
. CORE::join('', map { sprintf("%x\r\n%s\r\n", length $_, $_) } @chunks)
. "0\r\n\r\n"
--- response_headers
X-Rules: [twice]
X-Status: ok
--- error_log
a client request body is buffered to a temporary file
--- no_error_log
[error]



=== TEST 26: rules_time $variable: the variable's time is every event's; a member of that name is no time then
README (rules_time): "with a variable (`$arg_ts`, ...), for every event
of the request". The first body's two events both happen at ?ts=1000 (a
"ts" member is an ordinary member here): the second is the user's
second page view within 7d. Had the later member time or the clock been
used, the two would be years apart. Then another user's views 8 days
apart by ?ts= do not match, a third one a second later does: the times
are the variable's, not the clock's (all three would be now).
--- config
    location = /events {
        rules on;
        rules_body json;
        rules_time $arg_ts;
        rules_field ip $arg_ip;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        return 204;
    }
--- request eval
[
  "POST /events?ts=1000\n[{\"uid\": \"t051-var26\", \"type\": \"page\"},\n {\"uid\": \"t051-var26\", \"type\": \"page\", \"ts\": 99999999999}]",
  "POST /events?ts=1000\n{\"uid\": \"t051-var26b\", \"type\": \"page\"}",
  "POST /events?ts=691201000\n{\"uid\": \"t051-var26b\", \"type\": \"page\"}",
  "POST /events?ts=691202000\n{\"uid\": \"t051-var26b\", \"type\": \"page\"}",
]
--- response_headers eval
[
  "X-Status: ok\nX-Rules: [twice]",
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: [twice]",
]
--- no_error_log
[error]



=== TEST 27: rules_time $variable with a value that is not a time, or none: the body's events are invalid, none applied
README (rules_time): "must be present, or the event is `invalid`". Had
any event of the first two bodies been applied, the third request's
page view would match "twice". The last request reads the error log: one
line per rejected body, naming the variable's value.
--- config
    location = /events {
        rules on;
        rules_body json;
        rules_time $arg_ts;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        return 204;
    }
    location = /log {
        default_type text/plain;
        alias logs/error.log;
    }
--- request eval
[
  "POST /events?ts=12x\n[{\"uid\": \"t051-var27\", \"type\": \"page\"},\n {\"uid\": \"t051-var27\", \"type\": \"page\"}]",
  "POST /events\n{\"uid\": \"t051-var27\", \"type\": \"page\", \"ts\": 1000}",
  "POST /events?ts=2000\n{\"uid\": \"t051-var27\", \"type\": \"page\"}",
  "GET /log",
]
--- error_code eval
[204, 204, 204, 200]
--- response_headers eval
[
  "X-Status: invalid\nX-Rules: []",
  "X-Status: invalid\nX-Rules: []",
  "X-Status: ok\nX-Rules: []",
  "",
]
--- response_body_like eval
["^\$", "^\$", "^\$",
 qr/\A(?:(?!rules: event)[\s\S])*rules: event rejected: time "12x" is not a non-negative integer of ms[^\n]*\n(?:(?!rules: event)[\s\S])*rules: event rejected: time "" is not a non-negative integer of ms[^\n]*\n(?:(?!rules: event)[\s\S])*\z/]
--- no_error_log
[error]



=== TEST 28: a POST without Content-Length (nor chunked): no body to read, the event is invalid
nginx reads no body at all (not even an empty one, as for
"Content-Length: 0" in TEST 12).
--- raw_request eval
"POST /events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
--- response_headers
X-Status: invalid
X-Rules: []
--- error_log
rules: event rejected: empty body
--- no_error_log
[error]



=== TEST 29: rules_field ... override: the value replaces the member an event object carries, and an empty value leaves the field without one
Without override the body's "ip" members would spread the events over
three addresses (TEST 4) and the last body's would be the fourth event of
192.0.2.14: the body cannot set the field.
--- config
    location = /events {
        rules on;
        rules_body json;
        rules_time ts;
        rules_field ip $arg_ip override;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Fraud $rules_fraud always;
        return 204;
    }
--- request eval
[
  "POST /events?ip=192.0.2.14\n[{\"uid\": \"a\", \"ip\": \"192.0.2.99\", \"ts\": 1}, {\"uid\": \"b\", \"ip\": \"192.0.2.98\", \"ts\": 2}]",
  "POST /events?ip=192.0.2.14\n{\"uid\": \"c\", \"ip\": \"192.0.2.97\", \"ts\": 3}",
  "POST /events\n{\"uid\": \"d\", \"ip\": \"192.0.2.14\", \"ts\": 4}",
]
--- response_headers eval
["X-Fraud: 0", "X-Fraud: 1\nX-Rules: [ip_burst]", "X-Fraud: 0\nX-Rules: []"]
--- no_error_log
[error]



=== TEST 30: an empty array is no event: invalid, with its log line (as rules-replay has it)
--- request
POST /events
[]
--- response_headers
X-Status: invalid
X-Rules: []
--- error_log
rules: event body rejected: no event (an empty array)
--- no_error_log
[error]



=== TEST 31: a time member written as a number with no fraction is a time (1.5e3, 2500.0); one with a fraction is not
--- request eval
[
  "POST /events\n{\"uid\": \"t051-real\", \"type\": \"page\", \"ts\": 1000.5}",
  "POST /events\n{\"uid\": \"t051-real\", \"type\": \"page\", \"ts\": 1.5e3}",
  "POST /events\n{\"uid\": \"t051-real\", \"type\": \"page\", \"ts\": 2500.0}",
]
--- response_headers eval
["X-Status: invalid\nX-Rules: []", "X-Status: ok\nX-Rules: []", "X-Status: ok\nX-Rules: [twice]"]
--- error_log
rules: event body rejected: event 0: "ts" must be a non-negative integer number of ms, at most 2^53 - 1
--- no_error_log
[error]
