package RulesNative;

# The native pass of the suite: t/native/ holds symbolic links to the
# test files that store states in Redis, and a file run under that name
# talks to Redis servers that have the rules Redis module loaded
# (redis_module/, RULES.STORE), so that the same tests cover both ways
# a state reaches Redis: the script (EVALSHA) and the module.
#
# t/run-tests.sh starts one shared Redis of each kind and exports
# TEST_NGINX_REDIS_PORT (plain) and TEST_NGINX_REDIS_NATIVE_PORT (with the
# module), and RULES_REDIS_MODULE (the module's path).  Loaded by the
# runner (Test::Nginx::Socket), RulesNginx and RulesGen: when the running
# file is t/native/*.t, TEST_NGINX_REDIS_PORT becomes the native one and
# RulesNginx::start_redis loads the module into the servers it starts.
# The block files that talk to Redis load this themselves, so that under
# the upstream Test::Nginx (which loads nothing of t/lib) their t/native/
# pass does not reuse the plain Redis, where the first pass's states
# would answer the second.

use strict;
use warnings;

our $Active = 0;

if ($0 =~ m{(?:^|/)native/[^/]+\.t\z} && $ENV{RULES_REDIS_MODULE}) {
    $Active = 1;
    $ENV{TEST_NGINX_REDIS_PORT} = $ENV{TEST_NGINX_REDIS_NATIVE_PORT}
        if $ENV{TEST_NGINX_REDIS_NATIVE_PORT};
}

# extra redis-server arguments for a server a test starts itself
sub server_args {
    return $Active ? ('--loadmodule', $ENV{RULES_REDIS_MODULE}) : ();
}

1;
