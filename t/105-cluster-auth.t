# rules_redis_cluster with password= (every node's requirepass) and with
# user= (an ACL user made on every node), a wrong password (events fail
# at once, the reason is logged), and rules-replay --redis-cluster
# --password against the same cluster.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use RulesNginx;
use RulesCluster;

my $replay = $ENV{RULES_REPLAY} // "$FindBin::Bin/../build/rules-replay";
-x $replay or plan skip_all => "no $replay";

my $dir = tempdir(CLEANUP => 1);
my $cluster = RulesCluster->new(replicas => 0, password => 'sesame');
for my $port ($cluster->ports) {
    is($cluster->cli($port, 'ACL', 'SETUSER', 'app', 'on', '>apppw', '~*',
                     '&*', '+@all'), 'OK', "ACL user app on $port");
}

my $rules = '{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"}
]}';

# users whose keys are on every master
my @users = $cluster->users_on_masters('t105:', 'a', 3);

sub run_with {
    my ($name, $auth) = @_;
    my $seed = $cluster->seed;
    return RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-105",
        workers => 1,
        files   => { 'rules.json' => $rules },
        http    => <<"_EOC_");
    rules_redis_cluster $seed $auth;
    rules_redis_timeout 1s;
    rules_key_prefix "t105:$name:";
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
}

sub px {
    my ($ngx, $q) = @_;
    my ($st, $h) = RulesNginx::get($ngx->{port}, "/px?$q");
    return join ' ', $h->{'x-status'} // '', $h->{'x-rules'} // '';
}

for my $case (['pw', 'password=sesame'], ['acl', 'user=app password=apppw']) {
    my ($name, $auth) = @$case;
    my $ngx = run_with($name, $auth);
    ok($cluster->wait_nginx_ready($ngx, 1), "$name: worker ready");
    my @got = map { (px($ngx, "uid=$_&ts=1000"), px($ngx, "uid=$_&ts=2000")) }
                  @users;
    is_deeply(\@got, [ map { ('ok ', 'ok twice') } @users ],
              "$name: events on every master, state kept ($auth)");
    $cluster->cli($_, 'SCRIPT', 'FLUSH') for $cluster->ports;
    @got = map { px($ngx, "uid=$_&ts=3000") } @users;
    is_deeply(\@got, [ map { 'ok twice' } @users ],
              "$name: scripts flushed on every node: NOSCRIPT answered");
    unlike(RulesNginx::error_log($ngx), qr/\[(alert|crit|emerg)\]|AUTH failed/,
           "$name: no alert, no AUTH failure");
    RulesNginx::stop_nginx($ngx);
}

my $ngx = run_with('bad', 'password=wrong');
is(px($ngx, 'uid=x&ts=1'), 'error ', 'wrong password: events fail at once');
my $log = '';
for (1 .. 50) {
    $log = RulesNginx::error_log($ngx);
    last if $log =~ /AUTH failed/;
    select undef, undef, undef, 0.1;
}
like($log, qr/rules redis 127\.0\.0\.1:\d+: AUTH failed: WRONGPASS/,
     'wrong password: the AUTH failure is logged');
RulesNginx::stop_nginx($ngx);

open my $rf, '>', "$dir/rules.json" or die;
print $rf $rules;
close $rf;
open my $ef, '>', "$dir/events.jsonl" or die;
print $ef map { qq({"uid":"$_","ts":1000}\n{"uid":"$_","ts":2000}\n) } @users;
close $ef;
my $out = `$replay --rules $dir/rules.json --redis-cluster ${\ $cluster->seed } --password sesame --prefix t105:replay: $dir/events.jsonl`;
is($out, join('', map { qq({"matched":[]}\n{"matched":["twice"]}\n) } @users),
   'rules-replay --redis-cluster --password');

done_testing();
