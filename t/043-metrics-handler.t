# The rules_metrics content handler: counters summed over two workers,
# label escaping, methods, headers, and a location without rules.
# (HEAD is checked in t/042-metrics-reload.t: runners differ on a HEAD
# response whose Content-Length announces a body.)
#
# Exact counts assume a fresh nginx (and so a fresh metrics zone) per
# block, the default of Test::Nginx; under TEST_NGINX_USE_HUP the zone
# is kept across blocks, by design, and the counts add up.

use Test::Nginx::Socket 'no_plan';

workers(2);
master_on();

our $RulesFile = <<'_EOC_';
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "where": {"field": "type", "eq": "page"}, "min": 2, "within": "1h"},
  {"id": "busy_device", "kind": "fraud", "key": "device", "type": "distinct",
   "field": "uid", "min": 2, "within": "1h"}
]}
_EOC_

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value('http_config', <<'_EOC_') unless defined $block->http_config;
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_redis_timeout 2s;
    rules_key_prefix "t043:";
    rules_file ../html/rules.json;
_EOC_
    $block->set_value('config', <<'_EOC_') unless defined $block->config;
    location = /px {
        rules on;
        rules_field uid    $arg_uid;
        rules_field device $arg_d;
        rules_field type   $arg_e;
        rules_time $arg_ts;
        add_header X-Status $rules_status always;
        return 204;
    }
    location = /metrics { rules_metrics; }
_EOC_
    $block->set_value('user_files', ">>> rules.json\n$RulesFile")
        unless defined $block->user_files;
});

# a rules file whose name holds a newline (nginx reads "\n" in a quoted
# string as one): made here, as a user file's name cannot hold one
use File::Temp ();
our $NlDir = File::Temp::tempdir(CLEANUP => 1);
{
    open my $fh, '>', "$NlDir/new\nline.json" or die "$NlDir: $!";
    print $fh '{"rules": [{"id": "r1", "kind": "segment", "key": "uid", '
              . '"type": "count", "min": 1, "within": "1s"}]}' . "\n";
    close $fh;
}

# the lines a metrics response must contain
sub has_lines {
    my $re = join '', map { ref $_ ? "(?=.*^$_\$)" : "(?=.*^\Q$_\E\$)" } @_;
    return qr/\A$re/ms;
}

no_shuffle();
run_tests();

__DATA__

=== TEST 1: 12 events over 2 workers add up exactly
--- request eval
[
  (map { "GET /px?uid=t043-1-$$&e=page&ts=" . (1000 + $_) } 1 .. 10),
  "GET /px?uid=t043-1b-$$&d=t043-dev-$$&e=click&ts=2000",
  "GET /px?uid=t043-1c-$$&d=t043-dev-$$&e=click&ts=2001",
  "GET /metrics",
]
--- error_code eval
[(204) x 12, 200]
--- response_headers eval
[("X-Status: ok") x 12, "Content-Type: text/plain; version=0.0.4; charset=utf-8"]
--- response_body_like eval
[
  (qr/\A\z/) x 12,
  main::has_lines(
    'nginx_rules_events_total{status="ok"} 12',
    'nginx_rules_events_total{status="error"} 0',
    'nginx_rules_events_total{status="timeout"} 0',
    'nginx_rules_rule_evaluated_total{rule="twice",kind="segment",type="count"} 12',
    'nginx_rules_rule_matched_total{rule="twice",kind="segment",type="count"} 9',
    'nginx_rules_rule_evaluated_total{rule="busy_device",kind="fraud",type="distinct"} 2',
    'nginx_rules_rule_matched_total{rule="busy_device",kind="fraud",type="distinct"} 1',
    # a round trip per event, and maybe calls carrying compactions only
    qr/nginx_rules_redis_round_trip_seconds_bucket\{le="\+Inf"\} (?:1[2-9]|[2-9]\d)/,
    qr/nginx_rules_redis_round_trip_seconds_count (?:1[2-9]|[2-9]\d)/,
    'nginx_rules_inflight_events 0',
    'nginx_rules_failed_total{mode="open"} 0',
    '# TYPE nginx_rules_redis_round_trip_seconds histogram',
  ),
]
--- no_error_log
[alert]
[crit]



=== TEST 2: the rules file path is escaped in its label
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_file '../html/we"ird\\name.json';
--- user_files
>>> we"ird\name.json
{"rules": [{"id": "r1", "kind": "segment", "key": "uid", "type": "count",
            "min": 1, "within": "1s"}]}
--- request
GET /metrics
--- response_body_like eval
qr{^nginx_rules_info\{rules_file="[^"\n]*/html/we\\"ird\\\\name\.json",digest="[0-9a-f]{16}",rules="1"\} 1$}m
--- no_error_log
[alert]



=== TEST 3: only GET and HEAD
--- request
POST /metrics
hello
--- error_code: 405



=== TEST 4: no rules file: a comment, nothing else
--- http_config
--- config
    location = /metrics { rules_metrics; }
--- user_files
--- request
GET /metrics
--- response_body
# no rules_file: no rules metrics



=== TEST 5: a rules file path that is not UTF-8: each stray byte in its label becomes U+FFFD (Prometheus refuses a scrape with a label that is not UTF-8), valid UTF-8 stays
--- http_config eval
"    rules_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT;\n"
. "    rules_file '../html/r\xff\xc3\xa9\xe2.json';\n"
--- user_files eval
">>> r\xff\xc3\xa9\xe2.json\n"
. '{"rules": [{"id": "r1", "kind": "segment", "key": "uid", "type": "count", '
. '"min": 1, "within": "1s"}]}' . "\n"
--- request
GET /metrics
--- response_body_like eval
qr{^nginx_rules_info\{rules_file="[^"\n]*/html/r\xef\xbf\xbd\xc3\xa9\xef\xbf\xbd\.json",digest="[0-9a-f]{16}",rules="1"\} 1$}m
--- no_error_log
[alert]



=== TEST 6: a rules file path with bytes above 0x7f that are not well-formed UTF-8 (a Latin-1 name, an overlong form, a surrogate, a code point above U+10FFFF, a lead byte of 0xf8): each of their bytes becomes U+FFFD, a well-formed 4-byte character stays
--- http_config eval
"    rules_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT;\n"
. "    rules_file '../html/GR\xd6\xdfE-\xe0\x80\x80-\xed\xa0\x80-\xf4\x90\x80\x80-\xf8\x90\x80\x80-\xf0\x9f\x98\x80.json';\n"
--- user_files eval
">>> GR\xd6\xdfE-\xe0\x80\x80-\xed\xa0\x80-\xf4\x90\x80\x80-\xf8\x90\x80\x80-\xf0\x9f\x98\x80.json\n"
. '{"rules": [{"id": "r1", "kind": "segment", "key": "uid", "type": "count", '
. '"min": 1, "within": "1s"}]}' . "\n"
--- request
GET /metrics
--- response_body_like eval
my $r = "\xef\xbf\xbd";
qr{^nginx_rules_info\{rules_file="[^"\n]*/html/GR$r${r}E-$r$r$r-$r$r$r-$r$r$r$r-$r$r$r$r-\xf0\x9f\x98\x80\.json",digest="[0-9a-f]{16}",rules="1"\} 1$}m
--- no_error_log
[alert]



=== TEST 7: the time the rules file was loaded, in seconds since the epoch: this start's, within the last minute
--- request
GET /metrics
--- response_body_like eval
qr/^nginx_rules_rules_loaded_timestamp_seconds (\d+)$(?(?{ $^N <= time && $^N > time - 60 })|(*FAIL))/m
--- no_error_log
[alert]



=== TEST 8: a rules file path with a newline: escaped as \n in its label (a raw one would end the sample's line)
--- http_config eval
"    rules_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT;\n"
. "    rules_file '$main::NlDir/new\\nline.json';\n"
--- request
GET /metrics
--- response_body_like eval
qr{^nginx_rules_info\{rules_file="\Q$main::NlDir\E/new\\nline\.json",digest="[0-9a-f]{16}",rules="1"\} 1$}m
--- no_error_log
[alert]
