# Inline evaluation end to end: a real nginx, a real Redis, real requests.
# Every test uses its own user/ip/device values, so Redis state from other
# tests cannot interfere.

use Test::Nginx::Socket 'no_plan';
# run as t/native/ (a link to this file): the Redis with the rules Redis
# module, under any runner (t/lib/RulesNative.pm)
use FindBin;
use lib "$FindBin::Bin/lib";
use RulesNative;

our $RulesFile = <<'_EOC_';
{"rules": [
  {"id": "visited_twice_week", "kind": "segment", "key": "uid",
   "type": "count", "where": {"field": "type", "eq": "page"},
   "min": 2, "within": "7d"},
  {"id": "viewed_not_carted", "kind": "segment", "key": "uid",
   "type": "absence",
   "trigger": {"all": [{"field": "type", "eq": "view"}, {"field": "product", "eq": "P42"}]},
   "cancel":  {"all": [{"field": "type", "eq": "cart"}, {"field": "product", "eq": "P42"}]},
   "after": "0s", "within": "30d"},
  {"id": "home_sale_buy", "kind": "segment", "key": "uid",
   "type": "sequence",
   "steps": [ {"where": {"field": "path", "eq": "/home"}},
              {"where": {"field": "path", "prefix": "/sale"}},
              {"where": {"all": [{"field": "type", "eq": "purchase"},
                                 {"field": "product", "eq": "P42"}]}} ],
   "within": "1h", "hold": "30d"},
  {"id": "ip_burst", "kind": "fraud", "key": "ip",
   "type": "count", "min": 3, "within": "10s"},
  {"id": "device_many_users", "kind": "fraud", "key": "device",
   "type": "distinct", "field": "uid", "min": 3, "within": "1h"}
]}
_EOC_

our $HttpConfig = <<'_EOC_';
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_redis_timeout 500ms;
    rules_key_prefix "t050:";
    rules_file ../html/rules.json;
_EOC_

our $PixelConfig = <<'_EOC_';
    location = /px {
        rules on;
        rules_field uid     $arg_uid;
        rules_field ip      $arg_ip;
        rules_field device  $arg_d;
        rules_field type    $arg_e;
        rules_field product $arg_p;
        rules_field path    $arg_u;
        rules_time $arg_ts;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Fraud $rules_fraud always;
        add_header X-Status $rules_status always;
        empty_gif;
    }
    location = /metrics { rules_metrics; }
_EOC_

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value('http_config', $HttpConfig)
        unless defined $block->http_config;
    $block->set_value('config', $PixelConfig) unless defined $block->config;
    $block->set_value('user_files', ">>> rules.json\n$RulesFile")
        unless defined $block->user_files;
});

# a metrics response holding each of these lines, exactly
sub has_lines {
    my $re = join '', map { "(?=.*^\Q$_\E\$)" } @_;
    return qr/\A$re/ms;
}

no_shuffle();
# a block's error_log patterns are looked for in its whole log after each
# of its requests (upstream checks the log after every request)
check_accum_error_log();
run_tests();

__DATA__

=== TEST 1: count: the second page view in a week matches
--- request eval
[
  "GET /px?uid=t050-1&e=page&ts=1000000",
  "GET /px?uid=t050-1&e=page&ts=2000000",
  "GET /px?uid=t050-1&e=click&ts=3000000",
  "GET /px?uid=t050-1&e=click&ts=" . (1000000 + 7 * 86400000 - 1),
  "GET /px?uid=t050-1&e=click&ts=" . (2000000 + 7 * 86400000),
  "GET /metrics",
]
--- response_headers eval
[
  "X-Rules: []\nX-Status: ok",
  "X-Rules: [visited_twice_week]\nX-Status: ok",
  "X-Rules: [visited_twice_week]",
  "X-Rules: [visited_twice_week]",
  "X-Rules: []",
  "",
]
--- error_code eval
[200, 200, 200, 200, 200, 200]
--- response_body_like eval
[(qr/^GIF89a/) x 5,
 # one key, one worker: the first page view misses the state cache and
 # is appended, the second is computed in the worker and written whole;
 # the clicks touch no rule of the key (no "page"): read, not looked up
 main::has_lines(
   'nginx_rules_events_total{status="ok"} 5',
   'nginx_rules_rule_evaluated_total{rule="visited_twice_week",kind="segment",type="count"} 5',
   'nginx_rules_rule_matched_total{rule="visited_twice_week",kind="segment",type="count"} 3',
   'nginx_rules_state_cache_lookups_total{result="miss"} 1',
   'nginx_rules_state_cache_lookups_total{result="hit"} 1',
   'nginx_rules_state_writes_total 1',
   'nginx_rules_state_write_fallbacks_total 0',
 )]
--- no_error_log
[error]



=== TEST 2: absence: viewed P42 and not carted, until the cart
--- request eval
[
  "GET /px?uid=t050-2&e=view&p=P42&ts=1000",
  "GET /px?uid=t050-2&e=view&p=P7&ts=2000",
  "GET /px?uid=t050-2&e=cart&p=P42&ts=3000",
  "GET /px?uid=t050-2&e=view&p=P42&ts=4000",
  "GET /px?uid=t050-2&e=view&ts=" . (4000 + 30 * 86400000),
]
--- response_headers eval
[
  "X-Rules: [viewed_not_carted]",
  "X-Rules: [viewed_not_carted]",
  "X-Rules: []",
  "X-Rules: [viewed_not_carted]",
  "X-Rules: []",
]
--- no_error_log
[error]



=== TEST 3: sequence: home, then sale, then purchase of P42, held 30d
--- request eval
[
  "GET /px?uid=t050-3&u=/home&ts=1000",
  "GET /px?uid=t050-3&u=/about&ts=2000",
  "GET /px?uid=t050-3&u=/sale/shoes&ts=3000",
  "GET /px?uid=t050-3&e=purchase&p=P42&ts=4000",
  "GET /px?uid=t050-3&e=page&ts=5000",
  "GET /px?uid=t050-3&e=page&ts=" . (4000 + 30 * 86400000),
]
--- response_headers eval
[
  "X-Rules: []",
  "X-Rules: []",
  "X-Rules: []",
  "X-Rules: [home_sale_buy]",
  "X-Rules: [home_sale_buy]",
  "X-Rules: []",
]
--- no_error_log
[error]



=== TEST 4: sequence: the steps must happen within 1h
--- request eval
[
  "GET /px?uid=t050-4&u=/home&ts=1000",
  "GET /px?uid=t050-4&u=/sale&ts=2000",
  "GET /px?uid=t050-4&e=purchase&p=P42&ts=3601000",
]
--- response_headers eval
[
  "X-Rules: []",
  "X-Rules: []",
  "X-Rules: []",
]



=== TEST 5: fraud: the third hit of an ip in 10s (the 4000 event is out at 14000), and distinct users on a device
--- request eval
[
  "GET /px?uid=a&ip=198.51.100.5&d=dev-t050-5&ts=1000",
  "GET /px?uid=b&ip=198.51.100.5&d=dev-t050-5&ts=2000",
  "GET /px?uid=c&ip=198.51.100.6&d=dev-t050-5&ts=3000",
  "GET /px?uid=b&ip=198.51.100.5&ts=4000",
  "GET /px?uid=b&ip=198.51.100.5&ts=14000",
]
--- response_headers eval
[
  "X-Rules: []\nX-Fraud: 0",
  "X-Rules: []\nX-Fraud: 0",
  "X-Rules: [device_many_users]\nX-Fraud: 1",
  "X-Rules: [ip_burst]\nX-Fraud: 1",
  "X-Rules: []\nX-Fraud: 0",
]



=== TEST 6: no key field: skipped
--- request eval
["GET /px?e=page&ts=1", "GET /metrics"]
--- response_headers eval
["X-Rules: []\nX-Status: skipped\nX-Fraud: 0", ""]
--- response_body_like eval
[qr/^GIF89a/,
 main::has_lines(
   'nginx_rules_events_total{status="skipped"} 1',
   'nginx_rules_events_total{status="ok"} 0',
   'nginx_rules_redis_calls_total 0',
 )]



=== TEST 7: query arguments are matched percent-decoded
--- request eval
[
  "GET /px?uid=t050%2D7&u=%2Fhome&ts=1000",
  "GET /px?uid=t050-7&u=/sale%2Fx&ts=2000",
  "GET /px?uid=t050-7&e=purchase&p=%50%34%32&ts=3000",
]
--- response_headers eval
[
  "X-Rules: []",
  "X-Rules: []",
  "X-Rules: [home_sale_buy]",
]



=== TEST 8: rules_time that is not a non-negative integer: invalid
--- request eval
[
  "GET /px?uid=t050-8&e=page&ts=-5",
  "GET /px?uid=t050-8&e=page&ts=12abc",
  "GET /px?uid=t050-8&e=page&ts=99999999999999999999",
  "GET /px?uid=t050-8&e=page&ts=9007199254740992",
  "GET /px?uid=t050-8z&e=page&ts=000000000000000000000000005",
  "GET /px?uid=t050-8z&e=page&ts=0009007199254740991",
  "GET /metrics",
]
--- response_headers eval
[
  "X-Status: invalid\nX-Rules: []",
  "X-Status: invalid",
  "X-Status: invalid",
  "X-Status: invalid",
  "X-Status: ok",
  "X-Status: ok",
  "",
]
--- error_code eval
[200, 200, 200, 200, 200, 200, 200]
--- response_body_like eval
[(qr/^GIF89a/) x 6,
 main::has_lines(
   'nginx_rules_events_total{status="invalid"} 4',
   'nginx_rules_events_total{status="ok"} 2',
   'nginx_rules_rule_evaluated_total{rule="visited_twice_week",kind="segment",type="count"} 2',
 )]
--- error_log
time "-5" is not a non-negative integer of ms



=== TEST 9: $rules_match_<id>, $rules_fraud in headers, a map and the access log (the log is read back)
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_key_prefix "t050:";
    rules_file ../html/rules.json;
    map $rules_match_visited_twice_week $segment {
        1       "returning";
        default "new";
    }
    log_format rules '$request_uri matched=[$rules_matched] status=$rules_status fraud=$rules_fraud twice=$rules_match_visited_twice_week burst=$rules_match_ip_burst segment=$segment';
--- config
    location = /px {
        rules on;
        rules_field uid  $arg_uid;
        rules_field ip   $arg_ip;
        rules_field type $arg_e;
        rules_time $arg_ts;
        access_log logs/rules.log rules;
        add_header X-Twice $rules_match_visited_twice_week always;
        add_header X-Burst $rules_match_ip_burst always;
        add_header X-Fraud $rules_fraud always;
        add_header X-Segment $segment always;
        return 204;
    }
    # the access log written by the requests before (one worker: each
    # request's log line is written before the next request is read)
    location = /rules.log {
        access_log off;
        root logs;
        default_type text/plain;
    }
--- request eval
[
  "GET /px?uid=t050-9&e=page&ip=203.0.113.9&ts=1000",
  "GET /px?uid=t050-9&e=page&ip=203.0.113.9&ts=2000",
  "GET /px?uid=t050-9b&ip=203.0.113.9&ts=3000",
  "GET /rules.log",
]
--- error_code eval
[204, 204, 204, 200]
--- response_headers eval
[
  "X-Twice: 0\nX-Burst: 0\nX-Fraud: 0\nX-Segment: new",
  "X-Twice: 1\nX-Burst: 0\nX-Fraud: 0\nX-Segment: returning",
  "X-Twice: 0\nX-Burst: 1\nX-Fraud: 1\nX-Segment: new",
  "",
]
--- response_body eval
[
  "", "", "",
  "/px?uid=t050-9&e=page&ip=203.0.113.9&ts=1000 matched=[] status=ok fraud=0 twice=0 burst=0 segment=new\n"
  . "/px?uid=t050-9&e=page&ip=203.0.113.9&ts=2000 matched=[visited_twice_week] status=ok fraud=0 twice=1 burst=0 segment=returning\n"
  . "/px?uid=t050-9b&ip=203.0.113.9&ts=3000 matched=[ip_burst] status=ok fraud=1 twice=0 burst=1 segment=new\n",
]



=== TEST 10: segments passed to an upstream in a request header
--- config
    location = /px {
        rules on;
        rules_field uid  $arg_uid;
        rules_field type $arg_e;
        rules_time $arg_ts;
        proxy_set_header X-Segments $rules_matched;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/echo;
    }
    location = /echo {
        return 200 "segments=[$http_x_segments]\n";
    }
--- request eval
[
  "GET /px?uid=t050-10&e=page&ts=1000",
  "GET /px?uid=t050-10&e=page&ts=2000",
]
--- response_body eval
[
  "segments=[]\n",
  "segments=[visited_twice_week]\n",
]



=== TEST 11: fraud rejection with a chosen status
The last request reads the error log: the third event's rejection is
logged once (the log is checked after each request, and the first ones
come before it).
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        rules_field ip  $arg_ip;
        rules_time $arg_ts;
        rules_reject_fraud 429;
        add_header X-Rules "[$rules_matched]" always;
        empty_gif;
    }
    location = /metrics { rules_metrics; }
    location = /log {
        default_type text/plain;
        alias logs/error.log;
    }
--- request eval
[
  "GET /px?uid=x&ip=203.0.113.11&ts=1000",
  "GET /px?uid=x&ip=203.0.113.11&ts=1001",
  "GET /px?uid=x&ip=203.0.113.11&ts=1002",
  "GET /px?uid=x&ip=203.0.113.12&ts=1003",
  "GET /metrics",
  "GET /log",
]
--- error_code eval
[200, 200, 429, 200, 200, 200]
--- response_body_like eval
[qr/^GIF89a/, qr/^GIF89a/, qr/429 Too Many Requests/, qr/^GIF89a/,
 main::has_lines(
   'nginx_rules_fraud_rejected_total 1',
   'nginx_rules_rule_matched_total{rule="ip_burst",kind="fraud",type="count"} 1',
   'nginx_rules_events_total{status="ok"} 4',
   'nginx_rules_failed_total{mode="open"} 0',
   'nginx_rules_failed_total{mode="closed"} 0',
 ),
 qr/\A(?:(?!event rejected as fraud)[\s\S])*rules: event rejected as fraud \(matched a fraud rule\), status 429[^\n]*\n(?:(?!event rejected as fraud)[\s\S])*\z/]



=== TEST 12: a key value over rules_max_key_length is not evaluated
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_key_prefix "t050:";
    rules_max_key_length 8;
    rules_file ../html/rules.json;
--- request eval
["GET /px?uid=0123456789abcdef&e=page&ts=1",
 "GET /px?uid=01234567&ip=0123456789&d=0123456789abcdef&ts=1",
 "GET /metrics"]
--- response_headers eval
["X-Status: skipped\nX-Rules: []", "X-Status: ok\nX-Rules: []", ""]
--- response_body_like eval
[qr/^GIF89a/, qr/^GIF89a/,
 # uid in the first event, ip and device in the second (uid has 8 bytes)
 main::has_lines(
   'nginx_rules_key_over_limit_total 3',
   'nginx_rules_events_total{status="skipped"} 1',
   'nginx_rules_events_total{status="ok"} 1',
   'nginx_rules_rule_evaluated_total{rule="visited_twice_week",kind="segment",type="count"} 1',
   'nginx_rules_rule_evaluated_total{rule="ip_burst",kind="fraud",type="count"} 0',
   'nginx_rules_rule_evaluated_total{rule="device_many_users",kind="fraud",type="distinct"} 0',
 )]
--- error_log
key value(s) longer than rules_max_key_length 8, not evaluated



=== TEST 13: a value over rules_max_value_length makes the event invalid
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_key_prefix "t050:";
    rules_max_value_length 16;
    rules_file ../html/rules.json;
--- request eval
["GET /px?uid=t050-13&e=page&ts=1&u=/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
 "GET /metrics"]
--- response_headers eval
["X-Status: invalid", ""]
--- response_body_like eval
[qr/^GIF89a/,
 main::has_lines(
   'nginx_rules_events_total{status="invalid"} 1',
   'nginx_rules_events_total{status="ok"} 0',
   'nginx_rules_redis_calls_total 0',
 )]
--- error_log
longer than rules_max_value_length 16



=== TEST 14: rules off in a nested location
--- config
    location /px {
        rules on;
        rules_field uid $arg_uid;
        rules_field type $arg_e;
        add_header X-Status "[$rules_status]" always;
        location = /px/off {
            rules off;
            return 204;
        }
        return 204;
    }
--- request eval
["GET /px/on?uid=t050-14&e=page", "GET /px/off?uid=t050-14&e=page"]
--- error_code eval
[204, 204]
--- response_headers eval
["X-Status: [ok]", "X-Status: []"]



=== TEST 15: evaluated once per request, also across an internal redirect
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        rules_field ip  $arg_ip;
        rules_time $arg_ts;
        try_files /nonexistent =404;
        error_page 404 = /target;
    }
    location = /target {
        rules on;
        rules_field uid $arg_uid;
        rules_field ip  $arg_ip;
        rules_time $arg_ts;
        add_header X-Rules "[$rules_matched]" always;
        return 200 "target\n";
    }
--- request eval
[
  "GET /px?uid=y&ip=203.0.113.15&ts=5000",
  "GET /px?uid=y&ip=203.0.113.15&ts=5001",
  "GET /px?uid=y&ip=203.0.113.15&ts=5002",
]
--- response_headers eval
[
  "X-Rules: []",
  "X-Rules: []",
  "X-Rules: [ip_burst]",
]
--- response_body eval
["target\n", "target\n", "target\n"]



=== TEST 16: a field made of several variables, one in braces, and an unset one
--- config
    location = /px {
        rules on;
        rules_field uid  "${arg_site}:$arg_uid";
        rules_field type ${arg_e};
        rules_field ip   "$arg_none";
        rules_time $arg_ts;
        add_header X-Rules "[$rules_matched]" always;
        empty_gif;
    }
--- request eval
[
  "GET /px?uid=t050-16&site=a&e=page&ts=1000",
  "GET /px?uid=t050-16&site=b&e=page&ts=2000",
  "GET /px?uid=t050-16&site=a&e=%70age&ts=3000",
]
--- response_headers eval
[
  "X-Rules: []",
  "X-Rules: []",
  "X-Rules: [visited_twice_week]",
]



=== TEST 17: $arg_ fields read as nginx reads $arg_: the first of repeated arguments, names in any case, an argument without "=", with an empty name, a longer name or another name of that length and first letter skipped
--- request eval
[
  "GET /px?uid=t050-17&e=click&e=page&ts=1000",
  "GET /px?UID=t050-17&E=page&Ts=2000",
  "GET /px?uxd=t050-17x&=click&uid=t050-17&e&xe=click&e=page&ts=3000",
  "GET /px?uid=t050-17b&e=&e=page&ts=4000",
  "GET /px?uid=t050-17b&e=page&ts=5000",
]
--- response_headers eval
[
  "X-Rules: []\nX-Status: ok",
  "X-Rules: []\nX-Status: ok",
  "X-Rules: [visited_twice_week]\nX-Status: ok",
  "X-Rules: []\nX-Status: ok",
  "X-Rules: []\nX-Status: ok",
]



=== TEST 18: a variable named like an argument but made by map is that variable, not the argument
--- http_config eval
$::HttpConfig . <<'_EOC_';
    map $arg_other $arg_e {
        default click;
    }
_EOC_
--- request eval
[
  "GET /px?uid=t050-18&e=page&ts=1000",
  "GET /px?uid=t050-18&e=page&ts=2000",
]
--- response_headers eval
[
  "X-Rules: []",
  "X-Rules: []",
]



=== TEST 19: $rules_match_<id> of ids with capitals: nginx lowercases variable names, the rule is found with case ignored
--- user_files
>>> rules.json
{"rules": [
  {"id": "VisitedTwice", "kind": "segment", "key": "uid",
   "type": "count", "min": 2, "within": "7d"},
  {"id": "Once", "kind": "segment", "key": "uid",
   "type": "count", "min": 1, "within": "7d"}
]}
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        rules_time $arg_ts;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Twice $rules_match_VisitedTwice always;
        add_header X-Twice-Low $rules_match_visitedtwice always;
        add_header X-Once $rules_match_ONCE always;
        return 204;
    }
--- request eval
[
  "GET /px?uid=t050-19&ts=1000",
  "GET /px?uid=t050-19&ts=2000",
]
--- response_headers eval
[
  "X-Rules: [Once]\nX-Twice: 0\nX-Twice-Low: 0\nX-Once: 1",
  "X-Rules: [VisitedTwice,Once]\nX-Twice: 1\nX-Twice-Low: 1\nX-Once: 1",
]
--- error_code eval
[204, 204]
--- no_error_log
[error]



=== TEST 20: rules_reject_fraud with error_page: the error page's location, under the same "rules on", serves the page with the rejection status
--- config
    rules on;
    rules_field uid $arg_uid;
    rules_field ip  $arg_ip;
    rules_time $arg_ts;
    rules_reject_fraud 429;
    error_page 429 /blocked;
    location = /px {
        empty_gif;
    }
    location = /blocked {
        internal;
        add_header X-Fraud $rules_fraud always;
        add_header X-Rules "[$rules_matched]" always;
        return 200 "blocked\n";
    }
--- request eval
[
  "GET /px?uid=x&ip=203.0.113.20&ts=1000",
  "GET /px?uid=x&ip=203.0.113.20&ts=1001",
  "GET /px?uid=x&ip=203.0.113.20&ts=1002",
]
--- error_code eval
[200, 200, 429]
--- response_body_like eval
[
  "^GIF89a",
  "^GIF89a",
  "^blocked\n\\z",
]
--- response_headers eval
[
  "!X-Fraud\n!X-Rules",
  "!X-Fraud\n!X-Rules",
  "X-Fraud: 1\nX-Rules: [ip_burst]",
]



=== TEST 21: "rules on" in the server block, fields in a location: that location is evaluated, one without fields is not
--- config
    rules on;
    location = /px {
        rules_field uid  $arg_uid;
        rules_field type $arg_e;
        rules_time $arg_ts;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status "[$rules_status]" always;
        return 204;
    }
    location = /health {
        add_header X-Status "[$rules_status]" always;
        return 204;
    }
--- request eval
[
  "GET /px?uid=t050-21&e=page&ts=1000",
  "GET /health?uid=t050-21&e=page&ts=1500",
  "GET /px?uid=t050-21&e=page&ts=2000",
]
--- error_code eval
[204, 204, 204]
--- response_headers eval
[
  "X-Rules: []\nX-Status: [ok]",
  "X-Status: []",
  "X-Rules: [visited_twice_week]\nX-Status: [ok]",
]
--- no_error_log
[error]



=== TEST 22: $ARG_ fields (variable names in any case) are percent-decoded as $arg_ ones; a value mixing $arg_ with another variable is not (the other's bytes would change)
--- config
    location = /px {
        rules on;
        rules_field uid  $ARG_UID;
        rules_field type ${Arg_E};
        rules_time $arg_ts;
        add_header X-Rules "[$rules_matched]" always;
        return 204;
    }
    location ^~ /mixed/ {
        rules on;
        rules_field uid  "$arg_uid$request_uri";
        rules_field type $arg_e;
        add_header X-Rules "[$rules_matched]" always;
        return 204;
    }
--- request eval
[
  "GET /px?uid=t050%2D22&e=%70age&ts=1000",
  "GET /px?uid=t050-22&e=page&ts=2000",
  "GET /mixed/t050m%41?uid=x&e=page",
  "GET /mixed/t050mA?uid=x&e=page",
]
--- error_code eval
[204, 204, 204, 204]
--- response_headers eval
[
  "X-Rules: []",
  "X-Rules: [visited_twice_week]",
  "X-Rules: []",
  "X-Rules: []",
]



=== TEST 23: rules_reject_fraud off in a location turns off the server's rejection: the fraud event is served, $rules_fraud still 1; a location that inherits the server's 429 rejects
README (rules_reject_fraud): "Default: rules_reject_fraud off",
"Context: http, server, location". /px and /strict count the same ip
(one key, one rule): the third and fourth events are fraud in both.
--- config
    rules on;
    rules_field uid $arg_uid;
    rules_field ip  $arg_ip;
    rules_time $arg_ts;
    rules_reject_fraud 429;
    location = /px {
        rules_reject_fraud off;
        add_header X-Fraud $rules_fraud always;
        add_header X-Rules "[$rules_matched]" always;
        empty_gif;
    }
    location = /strict {
        add_header X-Fraud $rules_fraud always;
        add_header X-Rules "[$rules_matched]" always;
        empty_gif;
    }
    location = /metrics { rules_metrics; }
--- request eval
[
  "GET /px?uid=x&ip=203.0.113.23&ts=1000",
  "GET /px?uid=x&ip=203.0.113.23&ts=1001",
  "GET /px?uid=x&ip=203.0.113.23&ts=1002",
  "GET /strict?uid=x&ip=203.0.113.23&ts=1003",
  "GET /metrics",
]
--- error_code eval
[200, 200, 200, 429, 200]
--- response_headers eval
[
  "X-Fraud: 0\nX-Rules: []",
  "X-Fraud: 0\nX-Rules: []",
  "X-Fraud: 1\nX-Rules: [ip_burst]",
  "X-Fraud: 1\nX-Rules: [ip_burst]",
  "",
]
--- response_body_like eval
[qr/^GIF89a/, qr/^GIF89a/, qr/^GIF89a/, qr/429 Too Many Requests/,
 main::has_lines(
   'nginx_rules_fraud_rejected_total 1',
   'nginx_rules_rule_matched_total{rule="ip_burst",kind="fraud",type="count"} 2',
 )]
--- no_error_log
[error]
