# The module's results equal rules-replay's: a few hundred random events
# go through nginx (query mode, rules_time) and through rules-replay's
# in-memory engine, and every event's matched set is compared.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use RulesGen;
use RulesNginx;

my $replay = $ENV{RULES_REPLAY} // "$FindBin::Bin/../build/rules-replay";
my $redis_port = $ENV{TEST_NGINX_REDIS_PORT}
    or plan skip_all => 'TEST_NGINX_REDIS_PORT is not set';
-x $replay or plan skip_all => "no $replay";

my $dir = tempdir(CLEANUP => 1);

sub uri_escape {
    my ($s) = @_;
    $s =~ s/([^A-Za-z0-9_~-])/sprintf('%%%02X', ord $1)/ge;
    return $s;
}

for my $round (1 .. 3) {
    my $gen = RulesGen->new(7000 + $round);
    my $rules = $gen->rules(6);
    my $events = $gen->events(150);
    my $rules_json = RulesGen::json($rules);

    open my $ef, '>', "$dir/events.jsonl" or die;
    print $ef RulesGen::json($_), "\n" for @$events;
    close $ef;
    open my $rf, '>', "$dir/rules.json" or die;
    print $rf $rules_json;
    close $rf;

    open my $fh, '-|', $replay, '--rules', "$dir/rules.json",
        "$dir/events.jsonl" or die;
    my @expected = map { /"matched":\[([^\]]*)\]/ ? $1 : 'BAD' } <$fh>;
    close $fh;
    s/"//g for @expected;

    my $fields = join "\n", map { "rules_field $_ \$arg_$_;" }
                                qw(uid ip type product path n);
    my $ngx = RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-060",
        workers => 2,
        files   => { 'rules.json' => $rules_json },
        http    => <<"_EOC_");
    rules_redis 127.0.0.1:$redis_port;
    rules_redis_timeout 2s;
    rules_key_prefix "t060:$$:$round:";
    rules_file ../html/rules.json;
    server {
        listen 127.0.0.1:\$PORT;
        location = /px {
            rules on;
            $fields
            rules_time \$arg_ts;
            add_header X-Rules \$rules_matched always;
            add_header X-Status \$rules_status always;
            return 204;
        }
    }
_EOC_

    my ($bad, $statuses) = (undef, {});
    for my $i (0 .. $#$events) {
        my $e = $events->[$i];
        my $q = join '&', map { "$_=" . uri_escape($e->{$_}) } sort keys %$e;
        my ($st, $h) = RulesNginx::get($ngx->{port}, "/px?$q");
        $statuses->{ $h->{'x-status'} // 'none' }++;
        my $got = $h->{'x-rules'} // '';
        next if $got eq $expected[$i];
        $bad //= "event $i " . RulesGen::json($e)
                 . "\n  nginx:  [$got] (status "
                 . ($h->{'x-status'} // '?') . ")\n  replay: [$expected[$i]]";
    }

    ok(!$bad, "round $round: nginx and rules-replay agree on "
              . scalar(@$events) . " events")
        or diag("rules: $rules_json\n$bad");
    ok(!$statuses->{error} && !$statuses->{timeout},
       "round $round: no Redis error or timeout")
        or diag(explain($statuses));
    unlike(RulesNginx::error_log($ngx), qr/\[(alert|crit|emerg)\]/,
           "round $round: no alert in the error log");
    RulesNginx::stop_nginx($ngx);
}

done_testing();
