# Directives: accepted configurations, and every configuration error that
# "nginx -t" must refuse with a clear message.

use Test::Nginx::Socket 'no_plan';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: the module loads and a full configuration is accepted
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT db=0;
    rules_redis_timeout 2s;
    rules_redis_connect_timeout 500ms;
    rules_redis_max_inflight 1000;
    rules_key_prefix "t030:";
    rules_max_key_length 128;
    rules_max_value_length 1024;
    rules_state_cache 1m;
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        rules_field type $arg_e;
        rules_time $arg_ts;
        rules_on_error closed;
        rules_reject_fraud 429;
        rules_body off;
        rules_max_body_size 16k;
        rules_max_events 10;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        add_header X-Twice $rules_match_twice always;
        return 204;
    }
--- user_files
>>> rules.json
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "where": {"field": "type", "eq": "page"}, "min": 2, "within": "1h"}
]}
--- request
GET /px?uid=t030-1&e=page&ts=1000
--- error_code: 204
--- response_headers
X-Rules: []
X-Status: ok
X-Twice: 0
--- no_error_log
[error]



=== TEST 2: rules on without rules_file: the error points at "rules on"
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location = /px {
        include ../html/on.conf;
        return 204;
    }
--- user_files
>>> on.conf
rules_field uid $arg_uid;
rules on;
--- must_die
--- error_log eval
qr{"rules on" needs "rules_file" in the http block in \S*/html/on\.conf:2$}m



=== TEST 3: rules on without rules_redis
--- http_config
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        return 204;
    }
--- user_files
>>> rules.json
{"rules": [{"id": "a", "kind": "segment", "key": "uid", "type": "count",
            "min": 1, "within": "1s"}]}
--- must_die
--- error_log
"rules on" needs "rules_redis" or "rules_redis_cluster" in the http block



=== TEST 4: a broken rules file names the rule and the member
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_file ../html/rules.json;
--- config
    location = /px { return 204; }
--- user_files
>>> rules.json
{"rules": [
  {"id": "ok_rule", "kind": "segment", "key": "uid", "type": "count",
   "min": 1, "within": "1s"},
  {"id": "bad_rule", "kind": "segment", "key": "uid", "type": "count",
   "min": 0, "within": "1s"}
]}
--- must_die
--- error_log eval
qr/rule #1 "bad_rule": member "min": must be between 1 and \d+, not 0/



=== TEST 5: a rules file that is not JSON gives line and column
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_file ../html/rules.json;
--- config
    location = /px { return 204; }
--- user_files
>>> rules.json
{"rules": [
  {"id": "a" "kind": "segment"}
]}
--- must_die
--- error_log eval
qr/rules file ".*rules\.json": line 2, column \d+: /



=== TEST 6: an invalid regex is refused with PCRE2's reason
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_file ../html/rules.json;
--- config
    location = /px { return 204; }
--- user_files
>>> rules.json
{"rules": [
  {"id": "re", "kind": "fraud", "key": "ip", "type": "count", "min": 1,
   "within": "1s", "where": {"field": "ua", "regex": "(unclosed"}}
]}
--- must_die
--- error_log eval
qr/rule #0 "re": member "where\.regex": invalid regex at offset 9: missing closing parenthesis/



=== TEST 7: a missing rules file
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_file ../html/nope.json;
--- config
    location = /px { return 204; }
--- must_die
--- error_log eval
qr/rules file ".*nope\.json": cannot open: No such file or directory/



=== TEST 8: rules_redis with an unknown parameter
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT pasword=x;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
invalid parameter "pasword=x" of "rules_redis": expected password=, user= or db=N (0 to 65535)



=== TEST 9: rules_redis without a port
--- http_config
    rules_redis 127.0.0.1;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
"rules_redis 127.0.0.1" needs host:port or unix:/path



=== TEST 10: rules_redis user= without password=
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT user=app;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
"rules_redis": "user=" needs "password="



=== TEST 11: rules_redis db out of range
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT db=-1;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
invalid parameter "db=-1" of "rules_redis"



=== TEST 12: rules_reject_fraud with a status that is not an error
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location = /px { rules_reject_fraud 200; return 204; }
--- must_die
--- error_log
invalid status "200" of "rules_reject_fraud": "off" or a code from 400 to 599



=== TEST 13: rules_on_error takes open or closed
--- config
    location = /px { rules_on_error maybe; return 204; }
--- must_die
--- error_log
invalid value "maybe"



=== TEST 14: $rules_match_<id> must name a rule
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_file ../html/rules.json;
--- config
    location = /px {
        add_header X-M $rules_match_nosuchrule;
        return 204;
    }
--- user_files
>>> rules.json
{"rules": [{"id": "a", "kind": "segment", "key": "uid", "type": "count",
            "min": 1, "within": "1s"}]}
--- must_die
--- error_log eval
qr/variable "\$rules_match_nosuchrule": no rule "nosuchrule" in ".*rules\.json"/



=== TEST 15: rules_time naming a field the location does not define: the error names the directive's own file and line (an included file), not the end of the block where the check runs
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        include ../html/time.conf;
        return 204;
    }
--- user_files
>>> rules.json
{"rules": [{"id": "a", "kind": "segment", "key": "uid", "type": "count",
            "min": 1, "within": "1s"}]}
>>> time.conf
# the time of the events

rules_time ts;
--- must_die
--- error_log eval
qr{"rules_time ts" names no "rules_field" of location "/px" \(use a variable, such as \$arg_ts, or define the field\) in \S*/html/time\.conf:3$}m



=== TEST 16: rules_time at server level, rules on there, no such field
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_file ../html/rules.json;
--- config
    rules on;
    rules_field uid $arg_uid;
    include ../html/time.conf;

    location = /px {
        rules off;
        return 204;
    }
--- user_files
>>> rules.json
{"rules": [{"id": "a", "kind": "segment", "key": "uid", "type": "count",
            "min": 1, "within": "1s"}]}
>>> time.conf
rules_time ts;
--- must_die
--- error_log eval
qr{"rules_time ts" names no "rules_field" at server level \(.*\) in \S*/html/time\.conf:1$}m



=== TEST 17: rules on without any rules_field: the error points at "rules on" (here in an included file), not at the end of the http block where the check runs
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_file ../html/rules.json;
--- config
    location = /px {
        include ../html/on.conf;
        return 204;
    }
--- user_files
>>> rules.json
{"rules": [{"id": "a", "kind": "segment", "key": "uid", "type": "count",
            "min": 1, "within": "1s"}]}
>>> on.conf

rules on;
--- must_die
--- error_log eval
qr{"rules on" in location "/px" needs at least one "rules_field", or "rules_body json" in \S*/html/on\.conf:2$}m



=== TEST 18: rules_max_events above the limit
--- config
    location = /px { rules_max_events 5000; return 204; }
--- must_die
--- error_log
"rules_max_events" directive must be between 1 and 1000



=== TEST 19: a duplicate rules_field
--- config
    location = /px {
        rules_field uid $arg_uid;
        rules_field uid $cookie_uid;
        return 204;
    }
--- must_die
--- error_log
duplicate rules_field "uid"



=== TEST 20: a rules_field no rule uses is a warning, not an error (the warning, written before the error log is opened, is checked in the output of nginx -t: t/055)
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_redis_timeout 5s;
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        rules_field colour $arg_c;
        add_header X-Status $rules_status always;
        return 204;
    }
--- user_files
>>> rules.json
{"rules": [{"id": "a", "kind": "segment", "key": "uid", "type": "count",
            "min": 1, "within": "1s"}]}
--- request
GET /px?uid=t030-19&c=red
--- error_code: 204
--- response_headers
X-Status: ok



=== TEST 21: rules_max_key_length out of bounds
--- config
    location = /px { return 204; }
--- http_config
    rules_max_key_length 100000;
--- must_die
--- error_log
"rules_max_key_length" directive must be between 1 and 65535



=== TEST 22: rules_redis_timeout of zero
--- http_config
    rules_redis_timeout 0;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
"rules_redis_timeout" directive must be positive



=== TEST 23: rules_state_cache takes a size
--- http_config
    rules_state_cache lots;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
"rules_state_cache" directive invalid value



=== TEST 24: rules_state_cache 0: every event appends to the key's log (each lookup a miss, no whole-state write; the worker folds the log it gets back and, at 8 entries, compacts it), results unchanged
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_key_prefix "t030-23:";
    rules_redis_timeout 5s;
    rules_state_cache 0;
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        rules_field type $arg_e;
        rules_time $arg_ts;
        add_header X-Rules "[$rules_matched]" always;
        return 204;
    }
    location = /metrics { rules_metrics; }
--- user_files
>>> rules.json
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "where": {"field": "type", "eq": "page"}, "min": 2, "within": "1h"}
]}
--- request eval
[
  "GET /px?uid=t030-23&e=page&ts=1000",
  "GET /px?uid=t030-23&e=click&ts=2000",
  "GET /px?uid=t030-23&e=page&ts=3000",
  "GET /px?uid=t030-23&e=click&ts=" . (1000 + 3600000),
  # 7 more page views: the 9th gets a log of 8 entries back
  map({ "GET /px?uid=t030-23&e=page&ts=" . (4000000 + $_) } 0 .. 6),
  # on the same connection to Redis after the compaction: its reply
  # comes after the compaction's
  "GET /px?uid=t030-23b&e=page&ts=1000",
  "GET /metrics",
]
--- response_headers eval
[
  "X-Rules: []",
  "X-Rules: []",
  "X-Rules: [twice]",
  "X-Rules: []",
  "X-Rules: []",
  ("X-Rules: [twice]") x 6,
  "X-Rules: []",
  "",
]
--- error_code eval
[(204) x 12, 200]
--- response_body_like eval
[(qr/\A\z/) x 12,
 qr/\A(?=.*^nginx_rules_state_cache_lookups_total\{result="hit"\} 0$)(?=.*^nginx_rules_state_cache_lookups_total\{result="miss"\} 10$)(?=.*^nginx_rules_state_writes_total 0$)(?=.*^nginx_rules_state_compactions_total 1$)(?=.*^nginx_rules_state_compactions_lost_total 0$)(?=.*^nginx_rules_events_total\{status="ok"\} 12$)/ms]
--- no_error_log
[error]



=== TEST 25: rules_shared_distinct takes on or off
--- http_config
    rules_shared_distinct sometimes;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
invalid value "sometimes" in "rules_shared_distinct" directive



=== TEST 26: rules_shared_distinct on: distinct rules that differ only in min share a record, each matched on its own min
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_key_prefix "t030-25:";
    rules_redis_timeout 5s;
    rules_shared_distinct on;
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field device $arg_d;
        rules_field uid $arg_uid;
        rules_time $arg_ts;
        add_header X-Rules "[$rules_matched]" always;
        return 204;
    }
--- user_files
>>> rules.json
{"rules": [
  {"id": "two_users", "kind": "segment", "key": "device",
   "type": "distinct", "field": "uid", "min": 2, "within": "1h"},
  {"id": "three_users", "kind": "fraud", "key": "device",
   "type": "distinct", "field": "uid", "min": 3, "within": "1h"}
]}
--- request eval
[
  "GET /px?d=t030-25&uid=a&ts=1000",
  "GET /px?d=t030-25&uid=b&ts=2000",
  "GET /px?d=t030-25&uid=b&ts=2500",
  "GET /px?d=t030-25&uid=c&ts=3000",
  "GET /px?d=t030-25&uid=c&ts=" . (1500 + 3600000),
]
--- response_headers eval
[
  "X-Rules: []",
  "X-Rules: [two_users]",
  "X-Rules: [two_users]",
  "X-Rules: [two_users,three_users]",
  "X-Rules: [two_users]",
]
--- error_code eval
[204, 204, 204, 204, 204]
--- no_error_log
[error]



=== TEST 27: $rules_match_<id> refused when two ids differ only in case (nginx variable names ignore case)
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_file ../html/rules.json;
--- config
    location = /px {
        add_header X-M $rules_match_Twice;
        return 204;
    }
--- user_files
>>> rules.json
{"rules": [{"id": "Twice", "kind": "segment", "key": "uid", "type": "count",
            "min": 2, "within": "1s"},
           {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
            "min": 2, "within": "1m"}]}
--- must_die
--- error_log eval
qr/variable "\$rules_match_twice": rule ids in ".*rules\.json" differ only in case from "twice", and nginx variable names ignore case/



=== TEST 28: a rule's key field name with ':' is refused (state keys are {field:value}: "a" = "b:c" and "a:b" = "c" would share one)
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_file ../html/rules.json;
--- config
    location = /px { return 204; }
--- user_files
>>> rules.json
{"rules": [
  {"id": "by_ab", "kind": "segment", "key": "a:b", "type": "count",
   "min": 1, "within": "1s"}
]}
--- must_die
--- error_log eval
qr/rule #0 "by_ab": member "key": must not contain ':'/



=== TEST 29: $rules_match_ with no id is refused
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_file ../html/rules.json;
--- config
    location = /px {
        add_header X-M $rules_match_;
        return 204;
    }
--- user_files
>>> rules.json
{"rules": [{"id": "a", "kind": "segment", "key": "uid", "type": "count",
            "min": 1, "within": "1s"}]}
--- must_die
--- error_log eval
qr/variable "\$rules_match_" names no rule/



=== TEST 30: a rules_redis parameter given twice is refused
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT password=a password=b;
    rules_file ../html/rules.json;
--- config
    location = /px { return 204; }
--- user_files
>>> rules.json
{"rules": [{"id": "a", "kind": "segment", "key": "uid", "type": "count",
            "min": 1, "within": "1s"}]}
--- must_die
--- error_log
duplicate parameter "password=b" of "rules_redis"



=== TEST 31: rules_metrics twice in a location is refused
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_file ../html/rules.json;
--- config
    location = /metrics { rules_metrics; rules_metrics; }
--- user_files
>>> rules.json
{"rules": [{"id": "a", "kind": "segment", "key": "uid", "type": "count",
            "min": 1, "within": "1s"}]}
--- must_die
--- error_log
"rules_metrics" directive is duplicate



=== TEST 32: db= given twice is refused, db=0 first too (the later one won)
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT db=0 db=3;
    rules_file ../html/rules.json;
--- config
    location = /px { return 204; }
--- user_files
>>> rules.json
{"rules": [{"id": "a", "kind": "segment", "key": "uid", "type": "count",
            "min": 1, "within": "1s"}]}
--- must_die
--- error_log
duplicate parameter "db=3" of "rules_redis"



=== TEST 33: rules_file given twice is refused at the second one (the second file is not read: it does not exist)
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    include ../html/files.conf;
--- config
    location = /px { return 204; }
--- user_files
>>> rules.json
{"rules": [{"id": "a", "kind": "segment", "key": "uid", "type": "count",
            "min": 1, "within": "1s"}]}
>>> files.conf
rules_file ../html/rules.json;
rules_file ../html/nope.json;
--- must_die
--- error_log eval
qr{"rules_file" directive is duplicate in \S*/html/files\.conf:2$}m
--- no_error_log
nope.json



=== TEST 34: rules_redis given twice is refused at the second one
--- http_config
    include ../html/redis.conf;
--- config
    location = /px { return 204; }
--- user_files
>>> redis.conf
rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;

rules_redis 127.0.0.1:6380;
--- must_die
--- error_log eval
qr{"rules_redis" directive is duplicate in \S*/html/redis\.conf:3$}m



=== TEST 35: rules_redis with user= twice is refused
--- http_config
    include ../html/redis.conf;
--- config
    location = /px { return 204; }
--- user_files
>>> redis.conf
rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT
            password=a user=app user=other;
--- must_die
--- error_log eval
qr{duplicate parameter "user=other" of "rules_redis" in \S*/html/redis\.conf:2$}m



=== TEST 36: rules_time given twice in a location is refused, a name and then a variable too
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location = /px {
        include ../html/time.conf;
        return 204;
    }
--- user_files
>>> time.conf
rules_field ts $arg_ts;
rules_time ts;
rules_time $arg_ts;
--- must_die
--- error_log eval
qr{"rules_time" directive is duplicate in \S*/html/time\.conf:3$}m



=== TEST 37: rules_time "" is refused
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location = /px {
        include ../html/time.conf;
        return 204;
    }
--- user_files
>>> time.conf
rules_time "";
--- must_die
--- error_log eval
qr{"rules_time" directive needs a variable or a field name in \S*/html/time\.conf:1$}m



=== TEST 38: rules_reject_fraud given twice in a location is refused, "off" first too
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location = /px {
        include ../html/reject.conf;
        return 204;
    }
--- user_files
>>> reject.conf
rules_reject_fraud off;
rules_reject_fraud 429;
--- must_die
--- error_log eval
qr{"rules_reject_fraud" directive is duplicate in \S*/html/reject\.conf:2$}m



=== TEST 39: rules_field with an empty name is refused
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location = /px {
        include ../html/field.conf;
        return 204;
    }
--- user_files
>>> field.conf
rules_field uid $arg_uid;
rules_field "" $arg_x;
--- must_die
--- error_log eval
qr{"rules_field" directive needs a non-empty field name in \S*/html/field\.conf:2$}m



=== TEST 40: a rules_redis_cluster seed that is not a URL nginx can parse (a port over 65535) is refused with nginx's reason
--- http_config
    include ../html/cluster.conf;
--- config
    location = /px { return 204; }
--- user_files
>>> cluster.conf
rules_redis_cluster 127.0.0.1:7000 127.0.0.1:99999;
--- must_die
--- error_log eval
qr{invalid port in "rules_redis_cluster 127\.0\.0\.1:99999" in \S*/html/cluster\.conf:1$}m



=== TEST 41: a rules_redis unix socket path of 107 bytes is refused (hiredis would read one byte past it: at most 106)
--- http_config
    include ../html/redis.conf;
--- config
    location = /px { return 204; }
--- user_files
>>> redis.conf
rules_redis unix:/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa;
--- must_die
--- error_log eval
qr{too long path in "rules_redis unix:/a{106}" \(at most 106 bytes\) in \S*/html/redis\.conf:1$}m



=== TEST 42: a rules_redis unix socket path of 106 bytes is taken (nginx -t passes; nothing listens there)
--- http_config
    rules_redis unix:/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa;
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        return 204;
    }
--- user_files
>>> rules.json
{"rules": [{"id": "a", "kind": "segment", "key": "uid", "type": "count",
            "min": 1, "within": "1s"}]}
--- request
GET /px?uid=x
--- error_code: 204



=== TEST 43: rules_field takes "override" after the value, and nothing else
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location = /px {
        include ../html/field.conf;
        return 204;
    }
--- user_files
>>> field.conf
rules_field uid $arg_uid override;
rules_field ip $remote_addr overide;
--- must_die
--- error_log eval
qr{invalid parameter "overide" \(only "override" may follow the value\) in \S*/html/field\.conf:2$}m
