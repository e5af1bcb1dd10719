# Every configuration in conf-examples/ but demo.conf and docker.conf
# (those have their own checks: make demo, the Docker build) passes
# "nginx -t" with the built module and the example rules file.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Cwd qw(abs_path);
use File::Path qw(make_path remove_tree);
use RulesNginx;

my $root = abs_path("$FindBin::Bin/..");
my $module = RulesNginx::module_path();
my $redis_port = $ENV{TEST_NGINX_REDIS_PORT}
    or plan skip_all => 'TEST_NGINX_REDIS_PORT is not set';

my @confs = grep { !/demo\.conf$|docker\.conf$/ } glob "$root/conf-examples/*.conf";
ok(@confs >= 4, 'the examples are there');

for my $conf (@confs) {
    my $name = (split m{/}, $conf)[-1];
    my $prefix = "$FindBin::Bin/servroot-070";
    remove_tree($prefix);
    make_path("$prefix/conf", "$prefix/logs");

    open my $in, '<', $conf or die "$conf: $!";
    local $/;
    my $text = <$in>;
    close $in;

    my $port = RulesNginx::free_port();
    $text =~ s{load_module\s+\S+;}{load_module $module;};
    $text =~ s{/etc/nginx/rules\.json}{$root/conf-examples/rules.json}g;
    $text =~ s{/var/log/nginx/}{$prefix/logs/}g;
    $text =~ s{127\.0\.0\.1:6379}{127.0.0.1:$redis_port}g;
    $text =~ s{listen\s+127\.0\.0\.1:\d+;}{listen 127.0.0.1:$port;};
    $text =~ s{worker_processes auto;}{worker_processes 1;\n}
        and $text = ($> == 0 ? "user root;\n" : '') . $text;
    $text = "pid logs/nginx.pid;\nerror_log logs/error.log info;\n" . $text;

    open my $out, '>', "$prefix/conf/nginx.conf" or die;
    print $out $text;
    close $out;

    my $res = `@{[ RulesNginx::nginx_command($prefix, '-t') ]} 2>&1`;
    is($?, 0, "$name: nginx -t passes") or diag($res);
    like($res, qr/syntax is ok/, "$name: syntax is ok");
    RulesMemcheck::check("$prefix/logs", "$name: nginx -t");
}

done_testing();
