# rules_redis with password=, user= (Redis 6+ ACL), db= and a unix
# socket (also one of the longest path taken), against a real
# redis-server that requires them.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use RulesNginx;

my $dir = tempdir(CLEANUP => 1);
my $sock = "$dir/redis.sock";
my $redis = RulesNginx::start_redis(args => [
    '--requirepass', 'sesame',
    '--unixsocket', $sock, '--unixsocketperm', '777',
    '--user', 'app', 'on', '>apppw', '~t064:*', '+@all',
]);

my $rules = <<'_EOC_';
{"rules": [{"id": "twice", "kind": "segment", "key": "uid",
            "type": "count", "min": 2, "within": "1h"}]}
_EOC_

sub run_with {
    my ($name, $redis_line) = @_;
    my $ngx = RulesNginx::start_nginx(
        prefix => "$FindBin::Bin/servroot-064",
        files  => { 'rules.json' => $rules },
        http   => <<"_EOC_");
    $redis_line
    rules_redis_timeout 1s;
    rules_key_prefix "t064:";
    rules_file ../html/rules.json;
    server {
        listen 127.0.0.1:\$PORT;
        location = /px {
            rules on;
            rules_field uid \$arg_uid;
            rules_time \$arg_ts;
            add_header X-Rules \$rules_matched always;
            add_header X-Status \$rules_status always;
            return 204;
        }
    }
_EOC_
    my @r;
    for my $i (1 .. 2) {
        my ($st, $h);
        for (1 .. 50) {     # the first event may race the connection
            ($st, $h) = RulesNginx::get($ngx->{port}, "/px?uid=$name&ts=$i");
            last if ($h->{'x-status'} // '') eq 'ok' || $i > 1;
            select undef, undef, undef, 0.05;
        }
        push @r, [$h->{'x-status'} // '', $h->{'x-rules'} // ''];
    }
    my $log = RulesNginx::error_log($ngx);
    RulesNginx::stop_nginx($ngx);
    return (\@r, $log);
}

my ($r, $log) = run_with('pw', "rules_redis 127.0.0.1:$redis->{port} password=sesame;");
is_deeply($r, [['ok', ''], ['ok', 'twice']], 'password=: AUTH, events ok');

($r, $log) = run_with('acl', "rules_redis 127.0.0.1:$redis->{port} user=app password=apppw;");
is_deeply($r, [['ok', ''], ['ok', 'twice']], 'user= password=: ACL AUTH, events ok');

($r, $log) = run_with('unixdb', "rules_redis unix:$sock password=sesame db=3;");
is_deeply($r, [['ok', ''], ['ok', 'twice']], 'unix: socket and db=3, events ok');

my $keys = `redis-cli -s $sock -a sesame --no-auth-warning -n 3 keys 't064:*' 2>&1`;
like($keys, qr/^t064:\{uid:unixdb\}$/m, 'the state is in db 3');
$keys = `redis-cli -s $sock -a sesame --no-auth-warning -n 0 keys 't064:*unixdb*' 2>&1`;
unlike($keys, qr/unixdb/, 'and not in db 0');

($r, $log) = run_with('bad', "rules_redis 127.0.0.1:$redis->{port} password=wrong;");
is($r->[1][0], 'error', 'a wrong password: events fail (error), fast');
like($log, qr/rules redis 127\.0\.0\.1:\d+: AUTH failed: WRONGPASS/,
     'and the log says AUTH failed, with the address');

($r, $log) = run_with('nopw', "rules_redis 127.0.0.1:$redis->{port};");
is($r->[1][0], 'error', 'no password for a server that wants one: error');
like($log, qr/NOAUTH|Authentication required/, 'and the log says why');

# The longest unix socket path taken (106 bytes: hiredis 0.14 leaves the
# socket address's last byte unset, so a 107-byte path would be read on
# by one byte), a Redis listening there: events ok.
{
    my $ldir = tempdir(CLEANUP => 1);
    my $long = "$ldir/" . ('s' x (106 - length($ldir) - 1));
    is(length $long, 106, 'a socket path of 106 bytes');
    RulesNginx::start_redis(args => ['--unixsocket', $long,
                                     '--unixsocketperm', '777']);
    ($r, $log) = run_with('long', "rules_redis unix:$long;");
    is_deeply($r, [['ok', ''], ['ok', 'twice']],
              'a unix socket path of 106 bytes: events ok');
}

done_testing();
