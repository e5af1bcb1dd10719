# Hostile input: huge, binary and protocol-like values, thousands of
# arguments, values crafted against regexes, absurd times.  Each gets a
# defined status and one log line, and no other key's state changes.

use Test::Nginx::Socket 'no_plan';

our $RulesFile = <<'_EOC_';
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"},
  {"id": "evil_ua", "kind": "fraud", "key": "ip", "type": "count",
   "where": {"field": "ua", "regex": "^(a+)+$"}, "min": 1, "within": "1h"}
]}
_EOC_

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value('http_config', <<'_EOC_') unless defined $block->http_config;
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_redis_timeout 500ms;
    rules_key_prefix "t053:";
    rules_file ../html/rules.json;
_EOC_
    $block->set_value('config', <<'_EOC_') unless defined $block->config;
    large_client_header_buffers 4 128k;
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        rules_field ip  $arg_ip;
        rules_field ua  $arg_ua;
        rules_time $arg_ts;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        empty_gif;
    }
    location = /metrics { rules_metrics; }
_EOC_
    $block->set_value('user_files', ">>> rules.json\n$RulesFile")
        unless defined $block->user_files;
});

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a 64 KB query string: the value is over the limit, invalid
--- request eval
"GET /px?uid=t053-1&ts=1&ip=" . ("9" x 65536)
--- response_headers
X-Status: invalid
--- error_log
longer than rules_max_value_length 4096
--- no_error_log
[alert]
[crit]



=== TEST 2: NUL, CR, LF and invalid UTF-8 in values are just bytes
--- request eval
[
  "GET /px?uid=t053-2%00%0D%0A%FF%FE&ts=1",
  "GET /px?uid=t053-2%00%0D%0A%FF%FE&ts=2",
  "GET /px?uid=t053-2&ts=3",
]
--- response_headers eval
[
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: [twice]",
  "X-Status: ok\nX-Rules: []",
]
--- no_error_log
[error]



=== TEST 3: a key value made of Redis protocol touches no other key
The value, sent as a state key "t053:{uid:<value>}", holds whole Redis
commands: padding arguments, then a DEL of the victim's own state key
(its exact name and length). Were a value's bytes ever read as protocol
(a bulk length that stops at the first CR, an inline command), that DEL
would run and the victim's next visit would be its first again, not
"twice".
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_redis_timeout 500ms;
    rules_key_prefix "t053:";
    rules_max_key_length 1024;
    rules_file ../html/rules.json;
--- request eval
my $inj = "x\r\n" . ("\$1\r\nx\r\n" x 40)
    . "*1\r\n\$4\r\nPING\r\n"
    . "*2\r\n\$3\r\nDEL\r\n\$22\r\nt053:{uid:t053-victim}\r\n";
(my $enc = $inj) =~ s/([^A-Za-z0-9_.-])/sprintf("%%%02X", ord $1)/ge;
[
  "GET /px?uid=t053-victim&ts=1",
  "GET /px?uid=$enc&ts=2",
  "GET /px?uid=}{uid:t053-victim}&ts=3",
  "GET /px?uid=t053-victim&ts=4",
]
--- response_headers eval
[
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: [twice]",
]
--- no_error_log
[error]



=== TEST 4: thousands of query arguments
--- request eval
"GET /px?" . CORE::join("&", map { "a$_=$_" } 1 .. 5000) . "&uid=t053-4&ts=1"
--- response_headers
X-Status: ok
--- no_error_log
[error]



=== TEST 5: a value crafted against a regex: false, fast, counted
--- request eval
[
  "GET /px?uid=t053-5&ip=192.0.2.55&ts=1&ua=" . ("a" x 4000) . "b",
  "GET /px?uid=t053-5&ip=192.0.2.55&ts=2&ua=aaaa",
]
--- timeout: 2
--- response_headers eval
[
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: [twice,evil_ua]",
]
--- no_error_log
[error]



=== TEST 6: the regex limit hit shows in the metrics
--- request eval
[
  "GET /px?uid=t053-6&ip=192.0.2.56&ts=1&ua=" . ("a" x 4000) . "b",
  "GET /metrics",
]
--- error_code eval
[200, 200]
--- response_body_like eval
[qr/^GIF/, qr/^nginx_rules_regex_limit_hits_total [1-9]/m]



=== TEST 7: absurd rules_time values
--- request eval
[
  "GET /px?uid=t053-7&ts=9007199254740992",
  "GET /px?uid=t053-7&ts=18446744073709551617",
  "GET /px?uid=t053-7&ts=1e3",
  "GET /px?uid=t053-7&ts=%2B5",
  "GET /px?uid=t053-7&ts=0",
  "GET /px?uid=t053-7&ts=9007199254740991",
]
--- response_headers eval
[
  "X-Status: invalid",
  "X-Status: invalid",
  "X-Status: invalid",
  "X-Status: invalid",
  "X-Status: ok\nX-Rules: []",
  "X-Status: ok\nX-Rules: []",
]
--- no_error_log
[error]



=== TEST 8: binary garbage as a JSON body
--- config
    location = /events {
        rules on;
        rules_body json;
        add_header X-Status $rules_status always;
        return 204;
    }
--- request eval
"POST /events\n\x00\xff\xfe{\"uid\":\x01}"
--- error_code: 204
--- response_headers
X-Status: invalid
--- error_log
rules: event body rejected: invalid JSON
--- no_error_log
[alert]



=== TEST 9: a malformed request line is answered by nginx, not by us
--- raw_request eval
"GET /px?uid=t053-9 HTTP/1.1\r\nHost: localhost\r\nContent-Length: x\r\n\r\n"
--- error_code: 400
--- no_error_log
[alert]
[crit]
