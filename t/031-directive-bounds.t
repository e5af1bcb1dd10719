# Directive bounds and readings of the README that t/030 leaves out:
# the limits refused by "nginx -t" with their messages, a host name in
# rules_redis, rules_redis_connect_timeout 0, rules_time with a plain
# name in query mode, the percent-decoding of $arg_* fields ("+" kept,
# an invalid escape loses its bytes) and the inheritance of rules_field.
# Each test quotes the README line it checks.

use Test::Nginx::Socket 'no_plan';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: rules_max_value_length 0 is refused
# README: "rules_max_key_length, rules_max_value_length ... Both 1 to 65535."
--- http_config
    rules_max_value_length 0;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
"rules_max_value_length" directive must be between 1 and 65535



=== TEST 2: rules_max_value_length above 65535 is refused
# README: "Both 1 to 65535."
--- http_config
    rules_max_value_length 65536;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
"rules_max_value_length" directive must be between 1 and 65535



=== TEST 3: rules_max_value_length 65535 and rules_max_key_length 1 are accepted
# README: "Both 1 to 65535."
--- http_config
    rules_max_value_length 65535;
    rules_max_key_length 1;
--- config
    location = /px { return 204; }
--- request
GET /px
--- error_code: 204



=== TEST 4: rules_max_key_length 0 is refused
# README: "Both 1 to 65535."
--- http_config
    rules_max_key_length 0;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
"rules_max_key_length" directive must be between 1 and 65535



=== TEST 5: rules_max_events 0 is refused
# README: "more than `rules_max_events` objects (1 to 1000) make it `invalid`"
--- config
    location = /px { rules_max_events 0; return 204; }
--- must_die
--- error_log
"rules_max_events" directive must be between 1 and 1000



=== TEST 6: rules_redis db=65536 is refused
# README: "`db=` (0 to 65535) sends `SELECT`"
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT db=65536;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
invalid parameter "db=65536" of "rules_redis": expected password=, user= or db=N (0 to 65535)



=== TEST 7: rules_redis db=65535 is accepted by nginx -t
# README: "`db=` (0 to 65535) sends `SELECT`"
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT db=65535;
--- config
    location = /px { return 204; }
--- request
GET /px
--- error_code: 204



=== TEST 8: rules_reject_fraud 600 is refused
# README: "Rejects an event matched by a fraud rule ... with `status` (400–599)"
--- config
    location = /px { rules_reject_fraud 600; return 204; }
--- must_die
--- error_log
invalid status "600" of "rules_reject_fraud": "off" or a code from 400 to 599



=== TEST 9: rules_reject_fraud 399 is refused
# README: "with `status` (400–599)"
--- config
    location = /px { rules_reject_fraud 399; return 204; }
--- must_die
--- error_log
invalid status "399" of "rules_reject_fraud": "off" or a code from 400 to 599



=== TEST 10: rules_reject_fraud 400 and 599 are accepted
# README: "with `status` (400–599)"
--- config
    location = /a { rules_reject_fraud 400; return 204; }
    location = /b { rules_reject_fraud 599; return 204; }
--- request
GET /a
--- error_code: 204



=== TEST 11: rules_redis_connect_timeout 0 is accepted: no limit, events evaluated
# README: "How long a connection attempt may take (0: no limit but the kernel's)."
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_redis_connect_timeout 0;
    rules_redis_timeout 5s;
    rules_key_prefix "t031-11:";
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        rules_time $arg_ts;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        return 204;
    }
--- user_files
>>> rules.json
{"rules": [{"id": "twice", "kind": "segment", "key": "uid", "type": "count",
            "min": 2, "within": "1h"}]}
--- request eval
[
  "GET /px?uid=t031-11&ts=1000",
  "GET /px?uid=t031-11&ts=2000",
]
--- error_code eval
[204, 204]
--- response_headers eval
[
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: [twice]",
]
--- no_error_log
[error]



=== TEST 12: a host name in rules_redis: resolved, events evaluated end to end
# README: "The Redis server: `host:port` or `unix:/path`. A host name is
# resolved once, at configuration time (workers never resolve names)."
--- http_config
    rules_redis localhost:$TEST_NGINX_REDIS_PORT;
    rules_redis_timeout 5s;
    rules_key_prefix "t031-12:";
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        rules_time $arg_ts;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        return 204;
    }
--- user_files
>>> rules.json
{"rules": [{"id": "twice", "kind": "segment", "key": "uid", "type": "count",
            "min": 2, "within": "1h"}]}
--- request eval
[
  "GET /px?uid=t031-12&ts=1000",
  "GET /px?uid=t031-12&ts=2000",
]
--- error_code eval
[204, 204]
--- response_headers eval
[
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: [twice]",
]
--- no_error_log
[error]



=== TEST 13: a host name that does not resolve is refused by nginx -t
# README: "A host name is resolved once, at configuration time"
--- http_config
    rules_redis no-such-host.invalid:6379;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
host not found in "rules_redis no-such-host.invalid:6379"



=== TEST 14: rules_time with a plain name in query mode: the time from that rules_field
# README: "with a plain name, from that field (query mode, the
# `rules_field` of that name) ... must be present, or the event is `invalid`"
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_redis_timeout 5s;
    rules_key_prefix "t031-14:";
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        rules_field when $arg_t;
        rules_time when;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        return 204;
    }
--- user_files
>>> rules.json
{"rules": [{"id": "twice", "kind": "segment", "key": "uid", "type": "count",
            "min": 2, "within": "1h"}]}
--- request eval
[
  "GET /px?uid=t031-14&t=1000",
  "GET /px?uid=t031-14&t=0002000",
  "GET /px?uid=t031-14&t=" . (2000 + 3600000),
  "GET /px?uid=t031-14",
  "GET /px?uid=t031-14&t=12x",
]
--- error_code eval
[204, 204, 204, 204, 204]
--- response_headers eval
[
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: [twice]",
  "X-Status: ok\nX-Rules: []",
  "X-Status: invalid\nX-Rules: []",
  "X-Status: invalid\nX-Rules: []",
]
--- no_error_log
[error]



=== TEST 15: $arg_* fields: "+" is kept, an invalid escape and a trailing "%" lose their bytes
# README: "Values made of `$arg_*` variables only ... are percent-decoded
# (`%XX`; `+` is kept; as nginx's own unescaping, an invalid escape such
# as `%4z` or a trailing `%` loses its bytes)"
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_redis_timeout 5s;
    rules_key_prefix "t031-15:";
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        rules_time $arg_ts;
        add_header X-Rules "[$rules_matched]" always;
        return 204;
    }
--- user_files
>>> rules.json
{"rules": [{"id": "twice", "kind": "segment", "key": "uid", "type": "count",
            "min": 2, "within": "1h"}]}
--- request eval
[
  "GET /px?uid=t031-a+b&ts=1000",
  "GET /px?uid=t031-a%2Bb&ts=2000",
  "GET /px?uid=t031-c+d&ts=1000",
  "GET /px?uid=t031-c%20d&ts=2000",
  "GET /px?uid=t031-e%4z&ts=1000",
  "GET /px?uid=t031-e&ts=2000",
  "GET /px?uid=t031-f%&ts=1000",
  "GET /px?uid=t031-f&ts=2000",
]
--- error_code eval
[204, 204, 204, 204, 204, 204, 204, 204]
--- response_headers eval
[
  "X-Rules: []",
  "X-Rules: [twice]",
  "X-Rules: []",
  "X-Rules: []",
  "X-Rules: []",
  "X-Rules: [twice]",
  "X-Rules: []",
  "X-Rules: [twice]",
]
--- no_error_log
[error]



=== TEST 16: a location with one rules_field of its own inherits none of the server's
# README: "a level's `rules_field` directives replace all of those of the
# enclosing levels: a location with one `rules_field` of its own inherits none."
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_redis_timeout 5s;
    rules_key_prefix "t031-16:";
    rules_file ../html/rules.json;
--- config
    rules_field uid $arg_uid;
    rules_time $arg_ts;
    location = /inherits {
        rules on;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        return 204;
    }
    location = /own {
        rules on;
        rules_field page $arg_p;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        return 204;
    }
--- user_files
>>> rules.json
{"rules": [
  {"id": "uid_seen", "kind": "segment", "key": "uid", "type": "count",
   "min": 1, "within": "1h"},
  {"id": "page_seen", "kind": "segment", "key": "page", "type": "count",
   "min": 1, "within": "1h"}
]}
--- request eval
[
  "GET /inherits?uid=t031-16a&p=t031-16a&ts=1000",
  "GET /own?uid=t031-16b&p=t031-16b&ts=1000",
  "GET /own?uid=t031-16c&ts=1000",
]
--- error_code eval
[204, 204, 204]
--- response_headers eval
[
  "X-Status: ok\nX-Rules: [uid_seen]",
  "X-Status: ok\nX-Rules: [page_seen]",
  "X-Status: skipped\nX-Rules: []",
]
--- no_error_log
[error]
