# rules_metrics: a scrape never shows a rule matched more often than it
# was evaluated.  The two families are printed one after the other, while
# the other workers go on adding their counts (evaluated, then matched):
# a rule's matched count read after its evaluated one could include
# events its evaluated count did not.  Here 3000 rules match every event
# they evaluate (a count of 1), two workers take events more than 10 ms
# apart (each adds its counts with each reply, at any moment of the other
# one's scrape), and no scrape may show the first rule matched more often
# than evaluated.  (With the matched counts read after the evaluated
# ones, 2 of 1374 scrapes in 10 s did: the chance grows with the rules,
# whose lines the window is.)

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX ();
use Time::HiRes qw(sleep time);
use RulesNginx;
use RulesMemcheck;

my $NRULES = 3000;
my $CLIENTS = 2;
my $SECS = 15;

my $rules = '{"rules": [' . join(",\n", map {
    qq({"id": "r$_", "kind": "segment", "key": "uid", "type": "count", )
    . qq("min": 1, "within": "1h"})
} 1 .. $NRULES) . "]}\n";

my $redis = RulesNginx::start_redis();
my $ngx = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-046",
    workers => 2,
    files   => { 'rules.json' => $rules },
    # (reuseport: the kernel spreads the connections over both workers,
    # so that one adds its counts while the other renders a scrape)
    http    => RulesNginx::pixel_http(
        store   => "rules_redis 127.0.0.1:$redis->{port};",
        timeout => '5s',
        prefix  => "t046:$$:",
        fields  => ['uid'],
        listen  => 'reuseport'));

is(RulesNginx::pixel($ngx, 'uid=first&ts=1000'), '204 ok ['
   . join(',', map { "r$_" } 1 .. $NRULES) . ']',
   'an event matches every rule');

# clients that keep both workers busy until told to stop
my $stop = "$ngx->{prefix}/logs/stop";
my @pids;
for my $c (1 .. $CLIENTS) {
    my $pid = fork();
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        my $i = 0;
        until (-e $stop) {
            $i++;
            RulesNginx::get($ngx->{port}, "/px?uid=u$c-" . ($i % 50)
                            . "&ts=" . (2000 + $i));
            # each worker's events more than 10 ms apart: it adds its
            # counts with each reply (not from its timer, which a scrape
            # would wait for), at any moment of a scrape's rendering
            sleep 0.011;
        }
        POSIX::_exit(0);
    }
    push @pids, $pid;
}

# A rule's matched and evaluated counts are printed a family apart: an
# addition made between the two reads shows when the matched count is
# read last.  Rule r1 is read at the start of each family: any addition
# while its family is printed falls between its two reads.
my $l1 = '{rule="r1",kind="segment",type="count"}';
my ($scrapes, $bad, $first, $last, $example) = (0, 0);
my $until = time + $SECS;
while (time < $until) {
    my (undef, undef, $body) = RulesNginx::get($ngx->{port}, '/metrics');
    my ($ev) = $body =~ /^nginx_rules_rule_evaluated_total\Q$l1\E (\d+)$/m;
    my ($m) = $body =~ /^nginx_rules_rule_matched_total\Q$l1\E (\d+)$/m;
    next unless defined $ev && defined $m;
    $scrapes++;
    $first //= $ev;
    $last = $ev;
    if ($m > $ev) {
        $bad++;
        $example //= "scrape $scrapes: r1 matched $m of $ev evaluated";
    }
}

RulesNginx::write_file($stop, '');
waitpid $_, 0 for @pids;

cmp_ok($scrapes, '>', 100, "$scrapes scrapes in $SECS s");
cmp_ok(($last // 0) - ($first // 0), '>', 100,
       'the counts grew while the scrapes ran');
is($bad, 0, 'no scrape under load showed r1 matched more often than '
            . 'evaluated') or diag("$bad scrapes, the first: $example");

# at rest, every event counted in both
my $s = RulesNginx::metrics_all($ngx);
my $l = '{rule="r1",kind="segment",type="count"}';
is($s->{"nginx_rules_rule_matched_total$l"},
   $s->{"nginx_rules_rule_evaluated_total$l"},
   'at rest: matched equals evaluated (a count of 1 matches each event)');
unlike(RulesNginx::error_log($ngx), qr/\[(alert|crit|emerg)\]/,
       'no alert in the error log');

RulesNginx::stop_nginx($ngx);
done_testing();
