# A dead or paused Redis: every request is still answered within the
# deadline, open (no match) or closed (fraud, optionally rejected).

use Test::Nginx::Socket 'no_plan';
use IO::Socket::INET;
use POSIX ();

# A loopback port where nothing listens: Redis is down.
my $probe = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                  LocalPort => 0, ReuseAddr => 1)
    or die "cannot bind: $!";
$ENV{TEST_NGINX_DEAD_PORT} = $probe->sockport;
close $probe;

# A real redis-server, stopped with SIGSTOP: connections are accepted by
# the kernel, nothing is ever answered.
$probe = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                               LocalPort => 0, ReuseAddr => 1)
    or die "cannot bind: $!";
my $paused_port = $probe->sockport;
close $probe;

my $paused_pid = fork();
die "fork: $!" unless defined $paused_pid;
if ($paused_pid == 0) {
    open STDOUT, '>', '/dev/null';
    exec('redis-server', '--port', $paused_port, '--bind', '127.0.0.1',
         '--save', '', '--appendonly', 'no', '--daemonize', 'no')
        or POSIX::_exit(127);
}

for (1 .. 100) {
    last if IO::Socket::INET->new(PeerAddr => "127.0.0.1:$paused_port");
    select undef, undef, undef, 0.05;
}
kill 'STOP', $paused_pid;
$ENV{TEST_NGINX_PAUSED_PORT} = $paused_port;

END {
    if ($paused_pid) {
        kill 'CONT', $paused_pid;
        kill 'TERM', $paused_pid;
        waitpid $paused_pid, 0;
    }
}

our $RulesFile = <<'_EOC_';
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "7d"},
  {"id": "ip_burst", "kind": "fraud", "key": "ip", "type": "count",
   "min": 3, "within": "10s"}
]}
_EOC_

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value('user_files', ">>> rules.json\n$RulesFile")
        unless defined $block->user_files;
    $block->set_value('timeout', 3) unless defined $block->timeout;
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

=== TEST 1: Redis down, fail open: served, no match, status error
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_DEAD_PORT;
    rules_redis_timeout 100ms;
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        rules_field ip  $arg_ip;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        add_header X-Fraud $rules_fraud always;
        empty_gif;
    }
    location = /metrics { rules_metrics; }
--- request eval
["GET /px?uid=a&ip=192.0.2.1", "GET /px?uid=a&ip=192.0.2.1",
 "GET /px?uid=a&ip=192.0.2.1", "GET /metrics"]
--- error_code eval
[200, 200, 200, 200]
--- response_headers eval
["X-Rules: []\nX-Status: error\nX-Fraud: 0",
 "X-Rules: []\nX-Status: error\nX-Fraud: 0",
 "X-Rules: []\nX-Status: error\nX-Fraud: 0", ""]
--- response_body_like eval
[qr/^GIF89a/, qr/^GIF89a/, qr/^GIF89a/,
 main::has_lines(
   'nginx_rules_events_total{status="error"} 3',
   'nginx_rules_events_total{status="ok"} 0',
   'nginx_rules_failed_total{mode="open"} 3',
   'nginx_rules_failed_total{mode="closed"} 0',
   'nginx_rules_fraud_rejected_total 0',
   'nginx_rules_rule_evaluated_total{rule="twice",kind="segment",type="count"} 0',
 )]
--- no_error_log
[alert]
[crit]
[emerg]



=== TEST 2: Redis down, fail closed: marked fraud and rejected
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_DEAD_PORT;
    rules_redis_timeout 100ms;
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        rules_on_error closed;
        rules_reject_fraud 403;
        add_header X-Status $rules_status always;
        add_header X-Fraud $rules_fraud always;
        empty_gif;
    }
    location = /metrics { rules_metrics; }
--- request eval
["GET /px?uid=b", "GET /metrics"]
--- error_code eval
[403, 200]
--- response_headers eval
["X-Status: error\nX-Fraud: 1", ""]
--- response_body_like eval
[qr/403 Forbidden/,
 main::has_lines(
   'nginx_rules_events_total{status="error"} 1',
   'nginx_rules_failed_total{mode="closed"} 1',
   'nginx_rules_failed_total{mode="open"} 0',
   'nginx_rules_fraud_rejected_total 1',
 )]
--- error_log
rules: event rejected as fraud (redis failed, closed), status 403



=== TEST 3: Redis down, fail closed without rejection: $rules_fraud is 1
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_DEAD_PORT;
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        rules_on_error closed;
        add_header X-Fraud $rules_fraud always;
        return 204;
    }
--- request
GET /px?uid=c
--- error_code: 204
--- response_headers
X-Fraud: 1



=== TEST 4: Redis paused: answered at the deadline, status timeout
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_PAUSED_PORT;
    rules_redis_timeout 150ms;
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        add_header X-Status $rules_status always;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Fraud $rules_fraud always;
        empty_gif;
    }
    location = /metrics { rules_metrics; }
--- request eval
["GET /px?uid=d", "GET /px?uid=d", "GET /metrics"]
--- timeout: 1
--- error_code eval
[200, 200, 200]
--- response_headers eval
["X-Status: timeout\nX-Rules: []\nX-Fraud: 0",
 "X-Status: timeout\nX-Rules: []\nX-Fraud: 0", ""]
--- response_body_like eval
[qr/^GIF89a/, qr/^GIF89a/,
 main::has_lines(
   'nginx_rules_events_total{status="timeout"} 2',
   'nginx_rules_events_total{status="error"} 0',
   'nginx_rules_failed_total{mode="open"} 2',
   'nginx_rules_failed_total{mode="closed"} 0',
   'nginx_rules_fraud_rejected_total 0',
 )]
--- error_log
rules: redis reply not received in time
--- no_error_log
[alert]



=== TEST 5: Redis paused, fail closed with rejection
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_PAUSED_PORT;
    rules_redis_timeout 100ms;
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        rules_on_error closed;
        rules_reject_fraud 429;
        add_header X-Status $rules_status always;
        empty_gif;
    }
    location = /metrics { rules_metrics; }
--- request eval
["GET /px?uid=e", "GET /metrics"]
--- timeout: 1
--- error_code eval
[429, 200]
--- response_headers eval
["X-Status: timeout", ""]
--- response_body_like eval
[qr/429 Too Many Requests/,
 main::has_lines(
   'nginx_rules_events_total{status="timeout"} 1',
   'nginx_rules_failed_total{mode="closed"} 1',
   'nginx_rules_failed_total{mode="open"} 0',
   'nginx_rules_fraud_rejected_total 1',
 )]



=== TEST 6: Redis paused, JSON body with several events: one deadline
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_PAUSED_PORT;
    rules_redis_timeout 200ms;
    rules_file ../html/rules.json;
--- config
    location = /events {
        rules on;
        rules_body json;
        add_header X-Status $rules_status always;
        return 204;
    }
    location = /metrics { rules_metrics; }
--- request eval
["POST /events\n[{\"uid\": \"f\"}, {\"uid\": \"g\"}, {\"uid\": \"h\", \"ip\": \"192.0.2.9\"}]",
 "GET /metrics"]
--- timeout: 1
--- error_code eval
[204, 200]
--- response_headers eval
["X-Status: timeout", ""]
--- response_body_like eval
[qr/\A\z/,
 main::has_lines(
   'nginx_rules_events_total{status="timeout"} 3',
   'nginx_rules_failed_total{mode="open"} 1',
   'nginx_rules_failed_total{mode="closed"} 0',
 )]



=== TEST 7: the client leaves while its event waits for a paused Redis
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_PAUSED_PORT;
    rules_redis_timeout 2s;
    rules_file ../html/rules.json;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        empty_gif;
    }
--- request
GET /px?uid=i
--- timeout: 0.3
--- abort
--- ignore_response
--- wait: 0.5
--- no_error_log
[alert]
[crit]
