# Two nginx instances sharing one Redis Cluster give the same per-key
# results as one: a random stream sent alternately to each matches
# rules-replay's results event by event, and parallel events for keys on
# every master, spread over both instances, lose no update (exactly one
# event per key sees its count reach the minimum).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use POSIX ();
use RulesGen;
use RulesNginx;
use RulesCluster;

my $replay = $ENV{RULES_REPLAY} // "$FindBin::Bin/../build/rules-replay";
-x $replay or plan skip_all => "no $replay";

my $dir = tempdir(CLEANUP => 1);
my $cluster = RulesCluster->new;
my $seeds = $cluster->seeds;

sub uri_escape {
    my ($s) = @_;
    $s =~ s/([^A-Za-z0-9_~-])/sprintf('%%%02X', ord $1)/ge;
    return $s;
}

my $gen = RulesGen->new(9200);
my $spread = RulesGen->new(92);
my $rules = $gen->rules(6);
push @{ $rules->{rules} },
    { id => 'reached', kind => 'segment', key => 'uid', type => 'count',
      min => 100, within => '1d', where => { field => 'type', eq => 'par' } };
my $rules_json = RulesGen::json($rules);
my $events = $gen->events(200);

for my $e (@$events) {
    $e->{uid} .= '-' . $spread->rand_int(6) if exists $e->{uid};
    $e->{ip} .= $spread->rand_int(4) if exists $e->{ip};
}

open my $ef, '>', "$dir/events.jsonl" or die;
print $ef RulesGen::json($_), "\n" for @$events;
close $ef;
open my $rf, '>', "$dir/rules.json" or die;
print $rf $rules_json;
close $rf;

open my $fh, '-|', $replay, '--rules', "$dir/rules.json", "$dir/events.jsonl"
    or die;
my @expected = map { /"matched":\[([^\]]*)\]/ ? $1 : 'BAD' } <$fh>;
close $fh;
s/"//g for @expected;

my @fields = qw(uid ip type product path n);

my @ngx;
for my $name (qw(a b)) {
    push @ngx, RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-102$name",
        workers => $name eq 'a' ? 2 : 1,
        files   => { 'rules.json' => $rules_json },
        http    => RulesNginx::pixel_http(
            store   => "rules_redis_cluster $seeds;",
            timeout => '5s',
            prefix  => 't102:',
            fields  => \@fields));
}

ok($cluster->wait_nginx_ready($ngx[0], 2), 'nginx a: workers ready');
ok($cluster->wait_nginx_ready($ngx[1], 1), 'nginx b: worker ready');

# one stream, its events sent to a and b in turn

my ($bad, %statuses);
for my $i (0 .. $#$events) {
    my $e = $events->[$i];
    my $q = join '&', map { "$_=" . uri_escape($e->{$_}) } sort keys %$e;
    my ($st, $h) = RulesNginx::get($ngx[$i % 2]{port}, "/px?$q");
    $statuses{ $h->{'x-status'} // 'none' }++;
    my $got = $h->{'x-rules'} // '';
    next if $got eq $expected[$i];
    $bad //= "event $i (nginx " . ($i % 2 ? 'b' : 'a') . ") "
             . RulesGen::json($e) . "\n  nginx:  [$got]\n  replay: [$expected[$i]]";
}
ok(!$bad, 'two nginx in turn and rules-replay agree on every event')
    or diag($bad);
ok(!$statuses{error} && !$statuses{timeout}, 'no Redis error or timeout')
    or diag(explain(\%statuses));

# parallel events: 3 users whose keys are on 3 different masters, 100
# events each, from 6 clients, 3 on each nginx

my (%by_master, @users);
for my $i (0 .. 1000) {
    my $slot = RulesCluster::key_slot("t102:{uid:par$i}");
    my $m = $cluster->slot_master($slot);
    next if $by_master{$m}++;
    push @users, "par$i";
    last if @users == 3;
}
is(scalar @users, 3, 'three users on three masters');

my $N = 100;
my $CLIENTS = 6;
my @jobs;
for my $u (@users) {
    push @jobs, map { [$u, $_] } 0 .. $N - 1;
}

my @pids;
for my $c (0 .. $CLIENTS - 1) {
    my $pid = fork();
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open my $out, '>', "$dir/client$c" or die;
        for (my $j = $c; $j < @jobs; $j += $CLIENTS) {
            my ($u, $i) = @{ $jobs[$j] };
            my ($st, $h) = RulesNginx::get($ngx[$c % 2]{port},
                "/px?uid=$u&type=par&ts=" . (2_000_000_000 + $i));
            print $out join("\t", $u, $h->{'x-status'} // '',
                            $h->{'x-rules'} // ''), "\n";
        }
        close $out;
        POSIX::_exit(0);
    }
    push @pids, $pid;
}
waitpid $_, 0 for @pids;

my (%reached, %pstatus, $lines);
for my $c (0 .. $CLIENTS - 1) {
    open my $in, '<', "$dir/client$c" or die;
    while (<$in>) {
        chomp;
        my ($u, $s, $r) = split /\t/, $_, 3;
        $lines++;
        $pstatus{$s}++;
        $reached{$u}++ if ",$r," =~ /,reached,/;
    }
}
is($lines, 3 * $N, 'every parallel event answered');
is_deeply([sort keys %pstatus], ['ok'], 'every parallel event ok')
    or diag(explain(\%pstatus));
is_deeply(\%reached, { map { $_ => 1 } @users },
          'per user, exactly one event sees the count reach 100: no lost '
          . 'update across the two instances');

for my $n (@ngx) {
    unlike(RulesNginx::error_log($n), qr/\[(alert|crit|emerg)\]/,
           "$n->{prefix}: no alert in the error log");
    RulesNginx::stop_nginx($n);
}

done_testing();
