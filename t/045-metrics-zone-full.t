# rules_metrics when a reload finds the metrics zone full.  The zone
# holds every rule's counters twice (the running configuration's and a
# reload's edited ones); a worker of an older configuration still
# finishing a long request keeps its rules' counters too, through later
# reloads.  With 3000 rules (the default 1 MB zone holds them twice, not
# three times) edited by reloads while such a worker runs, a reload does
# not fit beside the counters still held: it drops the counters of the
# configurations before the running one early, says so in the error log
# (warn), and goes through; the running workers' counters stay, so a
# reload that fails after that (a listen address in use) still changes
# nothing for them; nginx keeps serving, the new rules count from 0, and
# once the long request ends reloads find room again.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(sleep time);
use RulesNginx;

my $E = 3000;

# $E rules, each edited by $k (a new definition: a new digest)
sub rules_v {
    my ($k) = @_;
    return qq({"rules": [\n) . join(",\n", map {
        qq(  {"id": "e$_", "kind": "segment", "key": "uid", "type": "count", )
        . qq("min": 2, "within": "${k}h"})
    } 1 .. $E) . "\n]}\n";
}

# an upstream that takes the connection and never answers: a request
# proxied to it keeps its worker running after a reload
my $silent = IO::Socket::INET->new(Listen => 5, LocalAddr => '127.0.0.1',
                                   LocalPort => 0, ReuseAddr => 1)
    or die "listen: $!";
my $silent_port = $silent->sockport;

my $redis = RulesNginx::start_redis();
my $ngx = RulesNginx::start_nginx(
    prefix  => $ENV{TEST_NGINX_SERVROOT} // "$FindBin::Bin/servroot-045",
    workers => 1,
    files   => { 'rules.json' => rules_v(1) },
    http    => RulesNginx::pixel_http(
        store     => "rules_redis 127.0.0.1:$redis->{port};",
        prefix    => 't045:',
        timeout   => '10s',
        fields    => ['uid'],
        locations => <<"_EOC_"));
        location = /hold {
            proxy_pass http://127.0.0.1:$silent_port;
            proxy_read_timeout 600s;
        }
_EOC_

my $OK = 'nginx_rules_events_total{status="ok"}';
my $LOADS = 'nginx_rules_config_loads_total{}';
my $FULL = qr/\[warn\] .*rules metrics zone is full: dropped the counters of (\d+) rules of the previous configuration early/;

sub ev { "nginx_rules_rule_evaluated_total{rule=\"e$_[0]\",kind=\"segment\",type=\"count\"}" }

sub metrics { RulesNginx::metrics_all($ngx) }

sub wait_metrics {
    my ($cond, $secs) = @_;
    return RulesNginx::poll($secs // 10, \&metrics, $cond);
}

# the per-rule evaluated counters a scrape shows: how many, their sum
sub evaluated {
    my ($s) = @_;
    my @v = map { $s->{$_} } grep { /^nginx_rules_rule_evaluated_total\{/ }
                                  keys %$s;
    my $sum = 0;
    $sum += $_ for @v;
    return (scalar @v, $sum);
}

sub exits { RulesNginx::log_count($ngx, qr/exited with code 0/) }

# how many old workers have stopped accepting (their listening sockets
# closed: a request of a new configuration goes to its own worker)
sub shutdowns { RulesNginx::log_count($ngx, qr/gracefully shutting down/) }

my $seq = 0;
sub events {
    my ($n) = @_;
    my $ok = 0;
    for (1 .. $n) {
        $seq++;
        my ($st, $h) = RulesNginx::get($ngx->{port},
                                       "/px?uid=u$seq&ts=$seq");
        $ok++ if $st == 204 && ($h->{'x-status'} // '') eq 'ok';
    }
    return $ok;
}

# a reload with these rules; the metrics once its worker started
sub reload_with {
    my ($text) = @_;
    my $loads = metrics()->{$LOADS} // 0;
    RulesNginx::write_file("$ngx->{prefix}/html/rules.json", $text);
    RulesNginx::reload_nginx($ngx);
    # config_loads goes up once the new worker started (after worker_starts)
    my $s = wait_metrics(sub { ($_[0]{$LOADS} // 0) >= $loads + 1 }, 30);
    cmp_ok($s->{$LOADS} // 0, '>=', $loads + 1, 'the reload\'s worker started')
        or diag(RulesNginx::error_log($ngx));
    return $s;
}

is(events(2), 2, 'configuration 1: 2 events answered');
my $s = metrics();
is($s->{ev(7)}, 2, 'e7 evaluated twice');

# a long request on the worker of configuration 1
my $hold = RulesNginx::send_get($ngx->{port}, '/hold', 60)
    or die "connect: $!";
$silent->timeout(10);
my $upstream = $silent->accept or die 'the held request did not arrive';
pass('a request of configuration 1 waits for its upstream');

# ---- configuration 2: every rule edited; 2 x 3000 counters fit ----------

my $shut = shutdowns();
$s = reload_with(rules_v(2));
is($s->{'nginx_rules_config_loads_total{}'}, 2, 'configuration 2 loaded');
# configuration 1's worker cannot exit (its request waits): it stops
# accepting
cmp_ok(RulesNginx::poll(20, \&shutdowns, sub { $_[0] >= $shut + 1 }), '>=',
       $shut + 1, "configuration 1's worker stops accepting");
my $exited;
is(events(1), 1, 'configuration 2: 1 event answered');
$s = metrics();
is($s->{ev(7)}, 1, 'e7 edited: starts at 0, evaluated once');
unlike(RulesNginx::error_log($ngx), $FULL, 'the zone is not full yet');

# ---- a reload that fails once the zone was full ---------------------------
# configuration 3 edits every rule again: beside the 2 x 3000 counters
# held it does not fit, configuration 1's go (its worker only finishes
# its request); then a listen address in use fails the reload: the
# running workers of configuration 2 keep their counters

my $conf = "$ngx->{prefix}/conf/nginx.conf";
my $good = do { open my $fh, '<', $conf or die; local $/; <$fh> };
my $busy = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                 LocalPort => 0, ReuseAddr => 0)
    or die "listen: $!";
(my $bad = $good) =~ s/\}\s*\z/    server { listen 127.0.0.1:@{[$busy->sockport]}; }\n}\n/
    or die 'cannot edit nginx.conf';
RulesNginx::write_file($conf, $bad);
RulesNginx::write_file("$ngx->{prefix}/html/rules.json", rules_v(3));
RulesNginx::reload_nginx($ngx);
my $log = RulesNginx::wait_log($ngx, qr/still could not bind/, 10);
like($log, qr/still could not bind/, 'configuration 3 fails (address in use)');
RulesNginx::write_file($conf, $good);
close $busy;
my ($dropped) = $log =~ $FULL;
is($dropped, $E, "warn: configuration 1's counters dropped early, "
                 . "not the running configuration's");
unlike($log, qr/not enough shared memory/, 'no "not enough shared memory"');

$s = metrics();
is($s->{'nginx_rules_config_loads_total{}'}, 2, 'configuration 2 still runs');
my ($n, $sum) = evaluated($s);
is("$n $sum", "$E $E", "its $E rules keep their counters (1 each)");
is(events(1), 1, 'configuration 2: 1 more event answered');
$s = metrics();
($n, $sum) = evaluated($s);
is($sum, 2 * $E, 'counted by each of its rules (2 each)');
is($s->{ev(7)}, 2, 'e7: 2');
is($s->{ev($E)}, 2, "e$E: 2");

# ---- another reload that fails ---------------------------------------------
# the counters the failed reload made are no worker's: this one frees
# them first, quietly, and fits; the running configuration's counters
# stay whole however many reloads fail (before, a second failed reload
# found the zone full and dropped them too)

$busy = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                              LocalPort => 0, ReuseAddr => 0)
    or die "listen: $!";
($bad = $good) =~ s/\}\s*\z/    server { listen 127.0.0.1:@{[$busy->sockport]}; }\n}\n/
    or die 'cannot edit nginx.conf';
RulesNginx::write_file($conf, $bad);
RulesNginx::write_file("$ngx->{prefix}/html/rules.json", rules_v(5));
RulesNginx::reload_nginx($ngx);
$log = RulesNginx::poll(10, sub { RulesNginx::error_log($ngx) },
                        sub { (() = $_[0] =~ /still could not bind/g) >= 2 });
cmp_ok(scalar(() = $log =~ /still could not bind/g), '>=', 2,
       'configuration 3b (every rule edited again) fails too (address in use)');
RulesNginx::write_file($conf, $good);
close $busy;
$log = RulesNginx::error_log($ngx);
is(scalar(() = $log =~ /$FULL/g), 1, 'the zone was not full: no new warn');
$s = metrics();
is($s->{'nginx_rules_config_loads_total{}'}, 2, 'configuration 2 still runs');
($n, $sum) = evaluated($s);
is("$n $sum", "$E " . 2 * $E, "its $E rules keep their counters (2 each)");
is(events(1), 1, 'configuration 2: 1 more event answered');
$s = metrics();
is($s->{ev(7)}, 3, 'e7: 3');
is($s->{ev($E)}, 3, "e$E: 3");

# ---- configuration 3 again, the address free: it goes through ------------

$exited = exits();
$s = reload_with(rules_v(3));
is($s->{'nginx_rules_config_loads_total{}'}, 3, 'configuration 3 loaded');
# configuration 2's worker, idle, exits; configuration 1's still runs
cmp_ok(RulesNginx::poll(20, \&exits, sub { $_[0] >= $exited + 1 }),
       '>=', $exited + 1, 'the replaced worker exited');
$s = metrics();
($n, $sum) = evaluated($s);
is("$n $sum", "$E 0", "the scrape shows the $E rules of configuration 3, "
                      . 'all at 0');
is($s->{$OK}, 5, 'events_total kept its count');
is(events(2), 2, 'configuration 3: 2 events answered');
$s = metrics();
($n, $sum) = evaluated($s);
is($sum, 2 * $E, 'each of its rules evaluated twice');
is($s->{ev(7)}, 2, 'e7: 2');

# ---- configuration 4, while configuration 1's worker still runs -----------
# configuration 2's counters are still held (a worker of configuration 1,
# older, runs): they go, and the reload goes through

$exited = exits();
$s = reload_with(rules_v(4));
is($s->{'nginx_rules_config_loads_total{}'}, 4, 'configuration 4 loaded');
$log = RulesNginx::error_log($ngx);
my @full = $log =~ /$FULL/g;
is_deeply(\@full, [$E, $E], "warn: configuration 2's counters dropped early");
cmp_ok(RulesNginx::poll(20, \&exits, sub { $_[0] >= $exited + 1 }),
       '>=', $exited + 1, 'the replaced worker exited');
$s = metrics();
($n, $sum) = evaluated($s);
is("$n $sum", "$E 0", "configuration 4's $E rules at 0");
is(events(2), 2, 'configuration 4: 2 events answered');
$s = metrics();
($n, $sum) = evaluated($s);
is($sum, 2 * $E, 'each of its rules evaluated twice');
is($s->{ev(7)}, 2, 'e7: 2');
is($s->{ev($E)}, 2, "e$E: 2");
is($s->{$OK}, 9, 'events_total: 9');

# ---- the long request ends; later reloads find room -----------------------

$exited = exits();
close $upstream;
my ($st) = RulesNginx::read_response($hold);
is($st, 502, 'the held request is answered (its upstream closed)');
RulesNginx::poll(20, \&exits, sub { $_[0] >= $exited + 1 });
cmp_ok(exits(), '>=', $exited + 1, "configuration 1's worker exited");

$exited = exits();
reload_with(rules_v(4));
cmp_ok(RulesNginx::poll(20, \&exits, sub { $_[0] >= $exited + 1 }),
       '>=', $exited + 1, 'the replaced worker exited');
is(metrics()->{ev(7)}, 2, 'a reload with the same rules: e7 keeps its count');
$exited = exits();
reload_with(rules_v(5));
cmp_ok(RulesNginx::poll(20, \&exits, sub { $_[0] >= $exited + 1 }),
       '>=', $exited + 1, 'the replaced worker exited');
$s = metrics();
is($s->{'nginx_rules_config_loads_total{}'}, 6, 'two more reloads');
($n, $sum) = evaluated($s);
is("$n $sum", "$E 0", "an edit of the $E rules: all at 0");
is(events(1), 1, 'configuration 5: 1 event answered');
is(metrics()->{ev(7)}, 1, 'e7: 1');

$log = RulesNginx::error_log($ngx);
is(scalar(() = $log =~ /$FULL/g), 2,
   'the later reloads found room: no more drops');
unlike($log, qr/\[(alert|crit)\]/, 'no alert or crit');
my @emerg = grep { /\[emerg\]/ && !/bind\(\)/ } split /\n/, $log;
is_deeply(\@emerg, [], 'the only emerg is the failed bind');

RulesNginx::stop_nginx($ngx);
done_testing();
