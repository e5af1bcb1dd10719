# The monitoring examples are valid: the alert rules and the scrape
# configuration pass promtool (Debian's prometheus package), the alerts
# pass their unit tests (t/monitoring/alerts_test.yml), and the Grafana
# dashboard is JSON whose queries name metrics the module serves.

use strict;
use warnings;
use FindBin;
use Test::More;
use JSON::PP;

my $dir = "$FindBin::Bin/../conf-examples/monitoring";
my %served = map { $_ => 1 } qw(
    nginx_rules_events_total nginx_rules_rule_evaluated_total
    nginx_rules_rule_matched_total nginx_rules_fraud_rejected_total
    nginx_rules_failed_total nginx_rules_key_over_limit_total
    nginx_rules_regex_limit_hits_total nginx_rules_redis_round_trip_seconds_bucket
    nginx_rules_redis_round_trip_seconds_sum nginx_rules_redis_round_trip_seconds_count
    nginx_rules_redis_connects_total nginx_rules_redis_reconnects_total
    nginx_rules_redis_noscript_total nginx_rules_inflight_events
    nginx_rules_worker_starts_total nginx_rules_config_loads_total
    nginx_rules_worker_processes nginx_rules_info
    nginx_rules_rules_loaded_timestamp_seconds
    nginx_rules_redis_calls_total nginx_rules_redis_call_items_total
    nginx_rules_redis_native_calls_total nginx_rules_state_writes_total
    nginx_rules_state_write_fallbacks_total nginx_rules_state_compactions_total
    nginx_rules_state_compactions_lost_total
    nginx_rules_state_cache_lookups_total
);

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

for my $file ('alerts.yml', 'grafana-dashboard.json') {
    open my $fh, '<', "$dir/$file" or die "$file: $!";
    local $/;
    my $text = <$fh>;
    my @names = $text =~ /\b(nginx_rules_[a-z_]+)/g;
    ok(@names, "$file uses the module's metrics");
    my @unknown = grep { !$served{$_} } @names;
    is_deeply(\@unknown, [], "$file names no metric the module lacks");
    if ($file =~ /\.json$/) {
        my $d = eval { decode_json($text) };
        ok($d && @{ $d->{panels} }, 'the dashboard is JSON with panels');
    }
}

done_testing();
