# The module's results equal rules-replay's: a few hundred random events
# go through nginx (query mode, rules_time) and through rules-replay's
# in-memory engine, and every event's matched set is compared.  Rounds 4
# and 5 run without the state cache (rules_state_cache 0) and with a
# second writer (rules-replay --redis, on the same keys) taking every
# other run of events, so that nginx's cached states go stale.  Round 6
# has 100 rules, so that nginx evaluates each event through the
# condition index (from 64 rules), and rules-replay runs without it
# (--no-index).  Round 7 runs with a 1 KB state cache, which evicts all
# the time (the events of keys not cached are appended), and the metrics
# count its hits and misses.  Rounds 8 and 9 turn rules_shared_distinct
# on (rules-replay --shared-distinct), with distinct rules that differ
# only in min, id and kind (they share a record); round 9 without the
# state cache and with a second writer, as round 5.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use JSON::PP;
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

# n rules with distinct definitions (a file may not hold two)
sub distinct_rules {
    my ($gen, $n) = @_;
    my (%seen, @out);
    my $json = JSON::PP->new->canonical;
    for my $r (@{ $gen->rules(3 * $n)->{rules} }) {
        my %def = %$r;
        delete $def{id};
        next if $seen{ $json->encode(\%def) }++;
        $r->{id} = 'r' . (@out + 1);
        push @out, $r;
        last if @out == $n;
    }
    return { rules => \@out };
}

# each distinct rule, and copies of it that differ in min, id and kind
sub with_shared {
    my ($gen) = @_;
    my ($set, @out);
    do {
        $set = $gen->rules(8);
    } until grep { $_->{type} eq 'distinct' } @{ $set->{rules} };
    for my $r (@{ $set->{rules} }) {
        push @out, $r;
        next unless $r->{type} eq 'distinct';
        for my $k (1 .. 2) {
            my %copy = %$r;
            $copy{id} = "$r->{id}_s$k";
            $copy{kind} = $gen->rand_int(2) ? 'fraud' : 'segment';
            $copy{min} = 1 + $gen->rand_int(4);
            push @out, \%copy;
        }
    }
    return { rules => \@out };
}

# The record types (rules_state.h) of the states stored under a prefix,
# their logs folded (rules-replay --state), and how many of each.
sub stored_types {
    my ($set, $prefix) = @_;
    my (%types, @keys);
    my $cursor = 0;
    do {
        my $r = RulesNginx::redis_call($redis_port, 'SCAN', $cursor,
                                       'MATCH', "$prefix*", 'COUNT', 1000);
        $cursor = $r->[0];
        push @keys, @{ $r->[1] };
    } while ($cursor ne '0');
    open my $rf, '>', "$dir/state-rules.json" or die;
    print $rf RulesGen::json($set);
    close $rf;
    for my $key (@keys) {
        open my $st, '-|', $replay, '--rules', "$dir/state-rules.json",
            '--redis', "127.0.0.1:$redis_port", '--state', $key or die;
        binmode $st;
        local $/;
        my $state = <$st> // '';
        close $st;
        my $off = 2;
        while ($off + 35 <= length $state) {
            $types{ ord substr($state, $off + 8, 1) }++;
            $off += 35 + unpack('v', substr($state, $off + 33, 2));
        }
    }
    return \%types;
}

for my $round (1 .. 9) {
    my $cache = ($round == 4 || $round == 9) ? 'rules_state_cache 0;'
              : $round == 7 ? 'rules_state_cache 1k;' : '';
    my $shared = $round >= 8;
    $cache .= ' rules_shared_distinct on;' if $shared;
    my @shared_opt = $shared ? ('--shared-distinct') : ();
    my $other_writer = $round == 5 || $round == 9;
    my $gen = RulesGen->new(7000 + $round);
    my $rules = $round == 6 ? distinct_rules($gen, 100)
              : $shared ? with_shared($gen)
              : $gen->rules(6);
    my $events = $gen->events(150);
    my $rules_json = RulesGen::json($rules);

    open my $ef, '>', "$dir/events.jsonl" or die;
    print $ef RulesGen::json($_), "\n" for @$events;
    close $ef;
    open my $rf, '>', "$dir/rules.json" or die;
    print $rf $rules_json;
    close $rf;

    open my $fh, '-|', $replay, '--rules', "$dir/rules.json", @shared_opt,
        ($round == 6 ? ('--no-index') : ()), "$dir/events.jsonl" or die;
    my @expected = map { /"matched":\[([^\]]*)\]/ ? $1 : 'BAD' } <$fh>;
    close $fh;
    s/"//g for @expected;

    my $ngx = RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-060",
        workers => 2,
        files   => { 'rules.json' => $rules_json },
        http    => RulesNginx::pixel_http(
            store  => "rules_redis 127.0.0.1:$redis_port;",
            prefix => "t060:$$:$round:",
            extra  => $cache,
            fields => [qw(uid ip type product path n)]));

    my ($bad, $statuses) = (undef, {});
    my $next_switch = 0;
    my $to_replay = 0;
    for my $i (0 .. $#$events) {
        my $e = $events->[$i];
        if ($other_writer && $i == $next_switch) {
            $to_replay = !$to_replay;
            $next_switch = $i + 1 + $gen->rand_int(6);
        }
        if ($other_writer && $to_replay) {
            open my $one, '>', "$dir/one.jsonl" or die;
            print $one RulesGen::json($e), "\n";
            close $one;
            open my $rp, '-|', $replay, '--rules', "$dir/rules.json",
                @shared_opt, '--redis', "127.0.0.1:$redis_port",
                '--prefix', "t060:$$:$round:", "$dir/one.jsonl" or die;
            my $line = <$rp> // '';
            close $rp;
            my $got = $line =~ /"matched":\[([^\]]*)\]/ ? $1 : 'BAD';
            $got =~ s/"//g;
            $statuses->{replay}++;
            next if $got eq $expected[$i];
            $bad //= "event $i " . RulesGen::json($e)
                     . "\n  the other writer: [$got]\n  replay: [$expected[$i]]";
            next;
        }
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
    ok($statuses->{replay}, "round $round: the other writer took events")
        if $other_writer;
    if ($round == 7) {
        my (undef, undef, $m) = RulesNginx::get($ngx->{port}, '/metrics');
        my %lookups = ($m // '') =~
            /^nginx_rules_state_cache_lookups_total\{result="(\w+)"\} (\d+)$/mg;
        ok(($lookups{miss} // 0) > 0 && ($lookups{hit} // 0) > 0,
           "round $round: the small cache hit and missed")
            or diag(explain(\%lookups));
    }
    my $records = stored_types($rules, "t060:$$:$round:");
    if ($shared) {
        ok($records->{5} && !$records->{2},
           "round $round: the distinct rules' states are shared records")
            or diag(explain($records));
    } elsif (grep { $_->{type} eq 'distinct' } @{ $rules->{rules} }) {
        ok($records->{2} && !$records->{5},
           "round $round: rules_shared_distinct off (the default): a "
           . "record per distinct rule")
            or diag(explain($records));
    }
    unlike(RulesNginx::error_log($ngx), qr/\[(alert|crit|emerg)\]/,
           "round $round: no alert in the error log");
    RulesNginx::stop_nginx($ngx);
}

done_testing();
