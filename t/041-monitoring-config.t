# The monitoring examples are valid: the alert rules and the scrape
# configuration pass promtool (Debian's prometheus package), the alerts
# pass their unit tests (t/monitoring/alerts_test.yml), and the Grafana
# dashboard is JSON whose queries, as the alerts', name only metrics the
# module serves: those of a live scrape of rules_metrics (an nginx with
# the module, a segment and a fraud rule, a few events), so that a
# renamed or dropped metric fails here.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use RulesNginx;

my $dir = "$FindBin::Bin/../conf-examples/monitoring";

my $redis_port = $ENV{TEST_NGINX_REDIS_PORT}
    // RulesNginx::start_redis()->{port};
my $ngx = RulesNginx::start_nginx(
    prefix => "$FindBin::Bin/servroot-041",
    files  => { 'rules.json' => <<'_EOC_' },
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"},
  {"id": "burst", "kind": "fraud", "key": "ip", "type": "count",
   "min": 2, "within": "1h"}
]}
_EOC_
    http => RulesNginx::pixel_http(
        store  => "rules_redis 127.0.0.1:$redis_port;",
        prefix => "t041:$$:",
        fields => [qw(uid ip)],
        extra  => 'rules_reject_fraud 429;'));

# events: matched, rejected as fraud, skipped and invalid ones
my @status = map { (RulesNginx::get($ngx->{port}, $_))[0] }
    "/px?uid=a&ip=192.0.2.1&ts=1000", "/px?uid=a&ip=192.0.2.1&ts=2000",
    "/px?ts=3000", "/px?uid=b&ts=x";
is_deeply(\@status, [204, 429, 204, 204], 'the events are answered');

my ($code, undef, $scrape) = RulesNginx::get($ngx->{port}, '/metrics');
is($code, 200, 'rules_metrics answers');
RulesNginx::stop_nginx($ngx);

# the names of the samples served (a histogram's _bucket, _sum, _count)
my %served;
for (split /\n/, $scrape) {
    $served{$1} = 1 if /^(nginx_rules_[a-z_]+)[{ ]/;
}
ok(keys %served >= 20, 'the scrape has the module\'s metrics')
    or diag($scrape);
ok($served{nginx_rules_rule_matched_total}
   && $served{nginx_rules_redis_round_trip_seconds_bucket},
   'labelled counters and histogram buckets are in the scrape');

SKIP: {
    skip 'promtool is not installed (Debian package prometheus)', 3
        unless system('command -v promtool >/dev/null 2>&1') == 0;
    my $out = `cd $dir && promtool check rules alerts.yml 2>&1`;
    is($?, 0, 'promtool check rules alerts.yml') or diag($out);
    $out = `cd $dir && promtool check config prometheus.yml 2>&1`;
    is($?, 0, 'promtool check config prometheus.yml') or diag($out);
    # each alert fires on its situation and not on normal operation
    $out = `promtool test rules $FindBin::Bin/monitoring/alerts_test.yml 2>&1`;
    is($?, 0, 'promtool test rules: the alerts fire when they should')
        or diag($out);
}

# the alerts' unit tests feed series of those names too
for my $file ('alerts.yml', 'grafana-dashboard.json',
              '../../t/monitoring/alerts_test.yml') {
    open my $fh, '<', "$dir/$file" or die "$file: $!";
    local $/;
    my $text = <$fh>;
    my @names = $text =~ /\b(nginx_rules_[a-z_]+)/g;
    ok(@names, "$file uses the module's metrics");
    my @unknown = grep { !$served{$_} } @names;
    is_deeply(\@unknown, [], "$file names only metrics the module serves")
        or diag("served: " . join ' ', sort keys %served);
    if ($file =~ /\.json$/) {
        my $d = eval { decode_json($text) };
        ok($d && @{ $d->{panels} }, 'the dashboard is JSON with panels');
    }
}

done_testing();
