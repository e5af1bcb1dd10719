# rules_redis_cluster: accepted configurations, every configuration error
# "nginx -t" must refuse, and a seed that is not a cluster node.

use Test::Nginx::Socket 'no_plan';

no_shuffle();
# a block's error_log patterns are looked for in its whole log after each
# of its requests (upstream checks the log after every request)
check_accum_error_log();
run_tests();

__DATA__

=== TEST 1: rules_redis_cluster and rules_redis are mutually exclusive
--- http_config
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    rules_redis_cluster 127.0.0.1:7000;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
"rules_redis_cluster" directive cannot be used with "rules_redis"



=== TEST 2: rules_redis after rules_redis_cluster
--- http_config
    rules_redis_cluster 127.0.0.1:7000 127.0.0.1:7001;
    rules_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
"rules_redis" directive cannot be used with "rules_redis_cluster"



=== TEST 3: rules_redis_cluster twice
--- http_config
    rules_redis_cluster 127.0.0.1:7000;
    rules_redis_cluster 127.0.0.1:7001;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
"rules_redis_cluster" directive is duplicate



=== TEST 4: a unix socket is not a cluster seed
--- http_config
    rules_redis_cluster unix:/tmp/redis.sock;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
"rules_redis_cluster" needs host:port seed nodes, not "unix:/tmp/redis.sock"



=== TEST 5: a seed without a port
--- http_config
    rules_redis_cluster 127.0.0.1:7000 127.0.0.1;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
"rules_redis_cluster" needs host:port seed nodes, not "127.0.0.1"



=== TEST 6: a cluster has no db=
--- http_config
    rules_redis_cluster 127.0.0.1:7000 db=1;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
invalid parameter "db=1" of "rules_redis_cluster": expected password=, user= (a cluster has no db=)



=== TEST 7: options but no seed
--- http_config
    rules_redis_cluster password=secret;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
"rules_redis_cluster" needs at least one host:port seed node



=== TEST 8: user= without password=
--- http_config
    rules_redis_cluster 127.0.0.1:7000 user=app;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
"rules_redis_cluster": "user=" needs "password="



=== TEST 9: an empty password
--- http_config
    rules_redis_cluster 127.0.0.1:7000 password=;
--- config
    location = /px { return 204; }
--- must_die
--- error_log
invalid parameter "password=" of "rules_redis_cluster"



=== TEST 10: a full configuration is accepted (a prefix with braces but no hash tag too); a seed that is not a cluster node fails events at once (fail-open), says why, and counts its failed slot map refreshes
--- http_config
    rules_redis_cluster 127.0.0.1:$TEST_NGINX_REDIS_PORT localhost:$TEST_NGINX_REDIS_PORT;
    rules_redis_timeout 100ms;
    rules_key_prefix "t100{}:{";
    rules_file ../html/rules.json;
    limit_req_zone $server_name zone=t100pause:1m rate=1r/s;
--- config
    location = /px {
        rules on;
        rules_field uid $arg_uid;
        add_header X-Rules "[$rules_matched]" always;
        add_header X-Status $rules_status always;
        return 204;
    }
    location = /metrics { rules_metrics; }
    # the second request here waits a second (limit_req, in the preaccess
    # phase, delays it): the first slot map refresh (from a timer, 100 ms
    # after the start) has failed by then
    location = /pause {
        limit_req zone=t100pause burst=1;
        empty_gif;
    }
--- user_files
>>> rules.json
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"}
]}
--- request eval
["GET /px?uid=t100", "GET /pause", "GET /pause", "GET /metrics"]
--- wait: 0.5
--- error_code eval
[204, 200, 200, 200]
--- response_headers eval
["X-Rules: []\nX-Status: error", "", "", ""]
--- response_body_like eval
["", "", "", qr/\A(?=.*^nginx_rules_cluster_redirects_total\{type="ask"\} 0$)(?=.*^nginx_rules_cluster_slot_refreshes_total\{result="ok"\} 0$)(?=.*^nginx_rules_cluster_slot_refreshes_total\{result="error"\} [1-9]\d*$)(?=.*^nginx_rules_events_total\{status="error"\} 1$)(?=.*^nginx_rules_failed_total\{mode="open"\} 1$)/ms]
--- error_log
slot map refresh failed: CLUSTER SLOTS: ERR This instance has cluster support disabled
--- no_error_log
[alert]



=== TEST 11: a rules_key_prefix with a hash tag would put every key in one slot; the error points at the directive, not at the http block's end
--- http_config
    rules_redis_cluster 127.0.0.1:7000;
    include ../html/prefix.conf;
--- config
    location = /px { return 204; }
--- user_files
>>> prefix.conf
# the prefix
rules_key_prefix "app{rules}:";
--- must_die
--- error_log eval
qr{"rules_key_prefix app\{rules\}:" holds a hash tag \("\{\.\.\.\}"\): with "rules_redis_cluster" every key would be in its slot, on one master in \S*/html/prefix\.conf:2$}m
