# Resharding under traffic.  First, step by step with CLUSTER SETSLOT
# MIGRATING/IMPORTING and MIGRATE, so that ASK (a migrated key, a new
# key) and then MOVED are exercised deterministically; then redis-cli
# --cluster reshard moves 2000 slots while a bounded load runs.  Every
# event is answered "ok" and every result equals rules-replay's.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use POSIX ();
use Time::HiRes qw(sleep time);
use RulesGen;
use RulesNginx;
use RulesCluster;

my $replay = $ENV{RULES_REPLAY} // "$FindBin::Bin/../build/rules-replay";
-x $replay or plan skip_all => "no $replay";

my $dir = tempdir(CLEANUP => 1);
my $cluster = RulesCluster->new;
my $seeds = $cluster->seeds;
my $prefix = 't103:';

sub uri_escape {
    my ($s) = @_;
    $s =~ s/([^A-Za-z0-9_~-])/sprintf('%%%02X', ord $1)/ge;
    return $s;
}

sub replay {
    my ($rules, $events) = @_;
    open my $rf, '>', "$dir/rules.json" or die;
    print $rf $rules;
    close $rf;
    open my $ef, '>', "$dir/events.jsonl" or die;
    print $ef RulesGen::json($_), "\n" for @$events;
    close $ef;
    open my $fh, '-|', $replay, '--rules', "$dir/rules.json",
        "$dir/events.jsonl" or die;
    my @r = map { /"matched":\[([^\]]*)\]/ ? $1 : 'BAD' } <$fh>;
    close $fh;
    s/"//g for @r;
    return \@r;
}

sub start_nginx {
    my ($rules, @fields) = @_;
    return RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-103",
        workers => 2,
        files   => { 'rules.json' => $rules },
        http    => RulesNginx::pixel_http(
            store  => "rules_redis_cluster $seeds;",
            prefix => $prefix,
            fields => \@fields));
}

sub send_event {
    my ($ngx, $e) = @_;
    my $q = join '&', map { "$_=" . uri_escape($e->{$_}) } sort keys %$e;
    my ($st, $h) = RulesNginx::get($ngx->{port}, "/px?$q");
    return [$st, $h->{'x-status'} // '', $h->{'x-rules'} // ''];
}

sub compare {
    my ($name, $rules, $events, $got) = @_;
    my $expected = replay($rules, $events);
    my ($bad, %st);
    for my $i (0 .. $#$events) {
        $st{ $got->[$i][1] }++;
        next if $got->[$i][0] == 204 && $got->[$i][2] eq $expected->[$i];
        $bad //= "event $i " . RulesGen::json($events->[$i])
                 . "\n  nginx:  [$got->[$i][2]] (HTTP $got->[$i][0], "
                 . "status $got->[$i][1])\n  replay: [$expected->[$i]]";
    }
    ok(!$bad, "$name: every result equals rules-replay's ("
              . scalar(@$events) . " events)") or diag($bad);
    ok(!$st{error} && !$st{timeout} && !$st{''},
       "$name: every event answered, no error or timeout")
        or diag(explain(\%st));
}

sub metric {
    my ($ngx, $re) = @_;
    my (undef, undef, $body) = RulesNginx::get($ngx->{port}, '/metrics');
    return $body =~ /^$re (\d+)$/m ? $1 : -1;
}

# ---- 1. ASK and MOVED, step by step ----------------------------------

my $rules1 = RulesGen::json({ rules => [
    { id => 'c3', kind => 'segment', key => 'uid', type => 'count',
      min => 3, within => '1d' },
    { id => 'seq', kind => 'segment', key => 'uid', type => 'sequence',
      within => '1d', hold => '1d',
      steps => [ { where => { field => 'type', eq => 'a' } },
                 { where => { field => 'type', eq => 'b' } } ] },
] });

# three users whose state keys share one slot
my (%by_slot, @k, $slot);
for my $i (0 .. 100000) {
    my $s = RulesCluster::key_slot("$prefix\{uid:k$i}");
    push @{ $by_slot{$s} }, "k$i";
    if (@{ $by_slot{$s} } == 3) {
        ($slot, @k) = ($s, @{ $by_slot{$s} });
        last;
    }
}
ok(defined $slot, "three users in slot $slot: @k");

my $src = $cluster->slot_master($slot);
my ($dst) = grep { $_ != $src } sort keys %{ $cluster->masters };
my ($src_id, $dst_id) = map { $cluster->node_id($_) } $src, $dst;

my $ngx = start_nginx($rules1, qw(uid type));
ok($cluster->wait_nginx_ready($ngx, 2), 'workers ready');

my (@events, @got);
my $ts = 1_000_000;
my $ev = sub {
    my ($uid, $type) = @_;
    my $e = { uid => $uid, type => $type, ts => $ts += 1000 };
    push @events, $e;
    push @got, send_event($ngx, $e);
    return $got[-1];
};

$ev->($k[0], 'a') for 1 .. 2;
$ev->($k[1], 'a');

is($cluster->cli($dst, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $src_id),
   'OK', "slot $slot importing on $dst");
is($cluster->cli($src, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $dst_id),
   'OK', "slot $slot migrating on $src");
is($cluster->cli($src, 'MIGRATE', '127.0.0.1', $dst, "$prefix\{uid:$k[0]}",
                 0, 5000), 'OK', "$k[0] migrated");

# the target forgets the script: the ASK'd EVALSHA gets NOSCRIPT, and
# the EVAL that follows needs ASKING again
is($cluster->cli($dst, 'SCRIPT', 'FLUSH'), 'OK', "scripts flushed on $dst");

my $r = $ev->($k[0], 'b');          # on the target: ASK, NOSCRIPT, EVAL
is($r->[2], 'c3,seq', "$k[0] (migrated): its state followed it (ASK, "
                      . 'then NOSCRIPT answered by ASKING + EVAL)');
$r = $ev->($k[1], 'a');             # still on the source
is($r->[1], 'ok', "$k[1] (not migrated yet): served by the source");
$r = $ev->($k[2], 'a');             # a new key: created on the target
is($r->[1], 'ok', "$k[2] (new): served by the target (ASK)");
$ev->($k[$_ % 3], 'a') for 1 .. 6;

ok(metric($ngx, 'nginx_rules_cluster_redirects_total\{type="ask"\}') >= 2,
   'ASK redirections counted');
SKIP: {
    # (the native pass, t/native/: RULES.STORE has no script to lose)
    skip 'states stored with RULES.STORE', 1 if $RulesNative::Active;
    ok(metric($ngx, 'nginx_rules_redis_noscript_total') >= 1,
       'the NOSCRIPT counted');
}
is(metric($ngx, 'nginx_rules_cluster_redirects_total\{type="moved"\}'), 0,
   'no MOVED so far: the EVAL after NOSCRIPT went with ASKING');

is($cluster->cli($src, 'MIGRATE', '127.0.0.1', $dst, "$prefix\{uid:$k[1]}",
                 0, 5000), 'OK', "$k[1] migrated");
for my $port ($dst, $src, grep { $_ != $src && $_ != $dst }
                                keys %{ $cluster->masters })
{
    $cluster->cli($port, 'CLUSTER', 'SETSLOT', $slot, 'NODE', $dst_id);
}
ok($cluster->wait_ok(20), "slot $slot now served by $dst");

$ev->($k[$_ % 3], $_ % 2 ? 'a' : 'b') for 1 .. 12;   # MOVED, then direct

ok(metric($ngx, 'nginx_rules_cluster_redirects_total\{type="moved"\}') >= 1,
   'MOVED redirections counted');
is(join(',', map { $cluster->cli($dst, 'EXISTS', "$prefix\{uid:$_}") } @k),
   '1,1,1', 'the three keys are on the new master');
is($cluster->cli($src, 'CLUSTER', 'COUNTKEYSINSLOT', $slot), '0',
   'and none is left on the old one');

compare('step by step', $rules1, \@events, \@got);
RulesNginx::stop_nginx($ngx);

# ---- 2. redis-cli --cluster reshard under load -----------------------

$prefix = 't103b:';
my $gen = RulesGen->new(9300);
my $rules2 = RulesGen::json($gen->rules(6));
my $stream = $gen->events(6000);

# half of the users in the first 2000 slots of the source, which move
$src = (sort keys %{ $cluster->masters })[0];
($dst) = grep { $_ != $src } sort keys %{ $cluster->masters };
($src_id, $dst_id) = map { $cluster->node_id($_) } $src, $dst;
my @moving;
for my $line (split /\n/, $cluster->cli($src, 'CLUSTER', 'NODES')) {
    my @f = split ' ', $line;
    next unless $f[2] =~ /myself/;
    for my $range (grep { !/^\[/ } @f[8 .. $#f]) {
        my ($a, $b) = split /-/, $range;
        push @moving, $a .. ($b // $a);
    }
}
my %moving = map { $_ => 1 } @moving[0 .. 1999];
my (@in, @out);
for my $i (0 .. 100000) {
    my $u = "v$i";
    my $in = $moving{ RulesCluster::key_slot("$prefix\{uid:$u}") };
    push @in, $u if $in && @in < 20;
    push @out, $u if !$in && @out < 20;
    last if @in == 20 && @out == 20;
}
my @users = (@in, @out);
my $pick = RulesGen->new(93);
for my $e (@$stream) {
    $e->{uid} = $users[ $pick->rand_int(scalar @users) ] if exists $e->{uid};
    $e->{ip} .= $pick->rand_int(4) if exists $e->{ip};
}

$ngx = start_nginx($rules2, qw(uid ip type product path n));
ok($cluster->wait_nginx_ready($ngx, 2), 'workers ready (reshard)');

my $stop = "$dir/stop";
my $pid = fork();
die "fork: $!" unless defined $pid;
if ($pid == 0) {
    open my $out, '>', "$dir/load" or die;
    my $t0 = time;
    for my $e (@$stream) {
        last if -e $stop || time - $t0 > 40;
        print $out join("\t", @{ send_event($ngx, $e) }), "\n";
    }
    close $out;
    POSIX::_exit(0);
}

sleep 0.5;
my $t0 = time;
my $out = `redis-cli --cluster reshard 127.0.0.1:$src --cluster-from $src_id --cluster-to $dst_id --cluster-slots 2000 --cluster-yes 2>&1`;
my $reshard_rc = $?;
my $secs = time - $t0;
ok($reshard_rc == 0, sprintf('redis-cli --cluster reshard moved 2000 slots '
                             . 'in %.1f s under load', $secs))
    or diag(substr($out, -2000));
ok($cluster->wait_ok(30), 'the cluster is ok after the reshard');
sleep 0.5;
open my $sf, '>', $stop or die;
close $sf;
waitpid $pid, 0;

open my $in, '<', "$dir/load" or die;
my @load = map { chomp; [split /\t/, $_, 3] } <$in>;
close $in;
$_->[2] //= '' for @load;
ok(@load > 100, scalar(@load) . ' events sent during the reshard');
my @sent = @$stream[0 .. $#load];
compare('reshard under load', $rules2, \@sent, \@load);

my $moved_keys = grep {
    $cluster->cli($dst, 'EXISTS', "$prefix\{uid:$_}") eq '1'
} @in;
ok($moved_keys > 0, "$moved_keys keys of the moved slots are on the new "
                    . 'master');
ok(metric($ngx, 'nginx_rules_cluster_redirects_total\{type="moved"\}') > 0,
   'MOVED redirections followed during the reshard');

unlike(RulesNginx::error_log($ngx), qr/\[(alert|crit|emerg)\]/,
       'no alert in the error log');

# the map changes of the reshard, logged: all of them at info and above,
# at most one a second per worker at notice (there were several)
my (%notice, $maps);
for (split /\n/, RulesNginx::error_log($ngx)) {
    next unless /^(\S+ \S+) \[(\w+)\] (\d+)#\d+: .*slot map from/;
    $maps++;
    $notice{"$3 $1"}++ if $2 eq 'notice';
}
cmp_ok($maps, '>', 2, "the reshard's map changes are logged ($maps)");
my ($most) = sort { $b <=> $a } values %notice;
cmp_ok($most // 0, '<=', 1, 'at most one of them a second per worker at '
                            . 'notice');
RulesNginx::stop_nginx($ngx);

done_testing();
