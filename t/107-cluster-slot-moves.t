# Redis Cluster: two edges of a slot that moves.
#
# 1. A master emptied of its last slot.  Master A (behind a RulesProxy
#    that holds its MOVED replies) serves one slot, that of user U2; the
#    slot moves to B, and a refresh of the map (planned by another MOVED,
#    answered by C) leaves A with no slot at all.  Event 1 of U2 (type b)
#    is in flight at A; event 2 (type c) must wait for event 1's MOVED,
#    so that B applies b then c and the sequence b -> c matches.  It did
#    not wait when A kept no slot (the slot's new calls then went
#    straight to B).
#
# 2. A slot that migrates (MIGRATING on A, IMPORTING on B).  An event
#    whose two state keys (uid and sid) share that slot: a call of the
#    two keys got ASK, then TRYAGAIN from B (not all the keys there yet),
#    and the event failed; a call holds one state key now, and ASK gets
#    each through.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use IO::Select;
use Time::HiRes qw(sleep time);
use RulesGen;
use RulesNginx;
use RulesCluster;
use RulesProxy;

my $dir = tempdir(CLEANUP => 1);

sub cli {
    my ($port, @args) = @_;
    my $out = `redis-cli -p $port @args 2>&1`;
    $out =~ s/\s+$//;
    return $out;
}

# cluster nodes without slots: { port, bus } by name
sub nodes {
    my %n;
    for my $name (@_) {
        my $bus = RulesNginx::free_port();
        mkdir "$dir/$name" or die "$dir/$name: $!";
        my $r = RulesNginx::start_redis(args => [
            '--cluster-enabled', 'yes', '--cluster-port', $bus,
            '--cluster-config-file', "$dir/$name/nodes.conf",
            '--cluster-node-timeout', 1000,
            '--cluster-require-full-coverage', 'no', '--dir', "$dir/$name"]);
        $n{$name} = { port => $r->{port}, bus => $bus };
    }
    return \%n;
}

sub wait_for {
    my ($cond) = @_;
    for (1 .. 100) {
        return 1 if $cond->();
        sleep 0.1;
    }
    return 0;
}

# ---- 1. a master emptied of its last slot --------------------------------

# One attempt; 0 when the map refresh went to A (nginx picks a master of
# its map at random for it, and A's replies are held: then nothing can be
# seen).
sub emptied_master {
    my ($try) = @_;
    my $prefix = "t107a$try:";
    my $n = nodes(map { "$_$try" } qw(A B C));
    my ($A, $B, $C) = map { $n->{"$_$try"}{port} } qw(A B C);

    # U2 in slot S2 (A's only one), U3 in S3 (C's, with S4: C stays a
    # master of the map when S3 moves, so that the refresh goes to A one
    # time in three, not two)
    my (@u2, @u3, $s4);
    for my $i (0 .. 100000) {
        my $s = RulesCluster::key_slot("$prefix\{uid:u$i}");
        if (!@u2) {
            @u2 = ("u$i", $s);
        } elsif (!@u3 && $s != $u2[1]) {
            @u3 = ("u$i", $s);
        } elsif (@u3 && $s != $u2[1] && $s != $u3[1]) {
            $s4 = $s;
            last;
        }
    }

    my $e = 1;
    cli($_, 'CLUSTER', 'SET-CONFIG-EPOCH', $e++) for $A, $B, $C;
    cli($A, 'CLUSTER', 'ADDSLOTS', $u2[1]);
    cli($C, 'CLUSTER', 'ADDSLOTS', $u3[1], $s4);
    my @rest = grep { $_ != $u2[1] && $_ != $u3[1] && $_ != $s4 } 0 .. 16383;
    while (my @chunk = splice @rest, 0, 2000) {
        cli($B, 'CLUSTER', 'ADDSLOTS', @chunk);
    }

    my $proxy = RulesProxy::start(upstream => $A,
                                  log => "$dir/proxy$try.log",
                                  hold_match => qr/^-MOVED /);
    my $P = $proxy->{port};
    cli($A, 'CONFIG', 'SET', 'cluster-announce-bus-port',
        $n->{"A$try"}{bus});
    cli($A, 'CONFIG', 'SET', 'cluster-announce-port', $P);
    cli($A, 'CLUSTER', 'MEET', '127.0.0.1', $_->{port}, $_->{bus})
        for $n->{"B$try"}, $n->{"C$try"};
    ok(wait_for(sub {
        !grep { cli($_, 'CLUSTER', 'INFO') !~ /cluster_state:ok/
                || cli($_, 'CLUSTER', 'SLOTS') !~ /\b$P\b/ } $A, $B, $C }),
       'cluster up, A (one slot) named by the proxy port');
    my %id = map { $_ => cli($_, 'CLUSTER', 'MYID') } $A, $B, $C;

    my $rules = RulesGen::json({ rules => [
        { id => 'bc', kind => 'segment', key => 'uid', type => 'sequence',
          within => '1d', hold => '1d',
          steps => [ { where => { field => 'type', eq => 'b' } },
                     { where => { field => 'type', eq => 'c' } } ] } ] });
    my $ngx = RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-107a",
        workers => 1,
        files   => { 'rules.json' => $rules },
        http    => RulesNginx::pixel_http(
            store   => "rules_redis_cluster 127.0.0.1:$B 127.0.0.1:$C;",
            prefix  => $prefix,
            timeout => '5s',
            fields  => [qw(uid type)]));
    ok(wait_for(sub {
        my $l = RulesNginx::error_log($ngx);
        $l =~ /slot map from/
        && !grep { $l !~ /127\.0\.0\.1:$_: connected/ } $P, $B, $C }),
       'nginx has the map and its connections');

    # S2 (A -> B) and S3 (C -> B); B imports each, so its epoch wins
    for my $m ([$u2[1], $A, $B, $C], [$u3[1], $C, $B, $A]) {
        my ($slot, $from, $to, $other) = @$m;
        cli($to, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $id{$from});
        cli($from, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $id{$to});
        cli($_, 'CLUSTER', 'SETSLOT', $slot, 'NODE', $id{$to})
            for $to, $from, $other;
    }
    ok(wait_for(sub {
        !grep { cli($_, 'CLUSTER', 'SLOTS') =~ /\b$P\b/ } $A, $B, $C }),
       'A serves no slot in any view');

    my $len = length RulesNginx::error_log($ngx);
    ok(RulesProxy::hold($proxy), "the proxy holds A's MOVED replies");
    my $e1 = RulesNginx::send_get($ngx->{port},
                                  "/px?uid=$u2[0]&type=b&ts=1000");
    ok(wait_for(sub { RulesProxy::held($proxy) >= 1 }),
       "event 1 (b) in flight at A, its MOVED held");

    # a MOVED from C plans a refresh of the map: A has no slot in it
    is((RulesNginx::get($ngx->{port}, "/px?uid=$u3[0]&type=x&ts=1500"))[0],
       204, "another user's event, C's MOVED followed");
    my $refreshed = 0;
    for (1 .. 30) {
        $refreshed = substr(RulesNginx::error_log($ngx), $len)
                     =~ /slot map from/;
        last if $refreshed;
        sleep 0.1;
    }

    my $done = 0;
    if ($refreshed) {
        my $e2 = RulesNginx::send_get($ngx->{port},
                                      "/px?uid=$u2[0]&type=c&ts=2000");
        ok(!IO::Select->new($e2)->can_read(0.5),
           "event 2 (c) waits for event 1's MOVED");
        like(RulesProxy::release($proxy, 'all'), qr/^released \d+$/,
             "event 1's MOVED let through");
        is(RulesNginx::pixel_answer($e1), '204 ok []',
           'event 1 applied at B');
        is(RulesNginx::pixel_answer($e2), '204 ok [bc]',
           'event 2 applied after it: b, c matched');
        $done = 1;
    } else {
        note("attempt $try: the refresh went to A, held with event 1");
        RulesProxy::release($proxy, 'all');
        RulesNginx::pixel_answer($e1);
    }

    unlike(RulesNginx::error_log($ngx), qr/\[(alert|crit|emerg)\]/,
           'no alert');
    RulesNginx::stop_nginx($ngx);
    RulesProxy::stop($proxy);
    return $done;
}

my $done = 0;
for my $try (1 .. 12) {
    $done = emptied_master($try) and last;
}
ok($done, 'a refresh answered by another master than A (of 12 attempts)');

# ---- 2. two state keys of one event in a migrating slot --------------------

{
    my $prefix = 't107b:';
    my $n = nodes(qw(M1 M2));
    my ($A, $B) = map { $n->{$_}{port} } qw(M1 M2);
    cli($A, 'CLUSTER', 'SET-CONFIG-EPOCH', 1);
    cli($B, 'CLUSTER', 'SET-CONFIG-EPOCH', 2);
    cli($A, 'CLUSTER', 'ADDSLOTSRANGE', 0, 8191);
    cli($B, 'CLUSTER', 'ADDSLOTSRANGE', 8192, 16383);
    cli($A, 'CLUSTER', 'MEET', '127.0.0.1', $B, $n->{M2}{bus});
    ok(wait_for(sub {
        !grep { cli($_, 'CLUSTER', 'INFO') !~ /cluster_state:ok/
                || cli($_, 'CLUSTER', 'NODES') =~ /handshake/ } $A, $B }),
       'a cluster of two masters');

    # a slot of A holding two users and a sid
    my %users;
    for my $i (0 .. 50000) {
        my $s = RulesCluster::key_slot("$prefix\{uid:u$i}");
        push @{ $users{$s} }, "u$i" if $s < 8192;
    }
    my ($slot, $sid);
    for my $j (0 .. 50000) {
        my $s = RulesCluster::key_slot("$prefix\{sid:s$j}");
        next unless $users{$s} && @{ $users{$s} } >= 2;
        ($slot, $sid) = ($s, "s$j");
        last;
    }
    my ($u1, $u2) = @{ $users{$slot} };

    my $rules = RulesGen::json({ rules => [
        { id => 'cu', kind => 'segment', key => 'uid', type => 'count',
          min => 1, within => '1d' },
        { id => 'cs', kind => 'segment', key => 'sid', type => 'count',
          min => 1, within => '1d' } ] });
    my $ngx = RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-107b",
        workers => 1,
        files   => { 'rules.json' => $rules },
        http    => RulesNginx::pixel_http(
            store   => "rules_redis_cluster 127.0.0.1:$A;",
            prefix  => $prefix,
            timeout => '2s',
            fields  => [qw(uid sid)]));
    ok(wait_for(sub {
        my $l = RulesNginx::error_log($ngx);
        $l =~ /slot map from/ && $l =~ /127\.0\.0\.1:$B: connected/ }),
       'nginx has the map and its connections');

    my %id = map { $_ => cli($_, 'CLUSTER', 'MYID') } $A, $B;
    cli($B, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $id{$A});
    cli($A, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $id{$B});

    my $get = sub {
        RulesNginx::pixel_answer(RulesNginx::send_get($ngx->{port}, $_[0]));
    };
    is($get->("/px?uid=$u1&ts=1000"), '204 ok [cu]',
       "slot $slot migrating: one key, ASK followed");
    is($get->("/px?uid=$u2&sid=$sid&ts=1000"), '204 ok [cu,cs]',
       'two state keys of the slot in one event: both applied');
    unlike(RulesNginx::error_log($ngx), qr/TRYAGAIN/, 'no TRYAGAIN');
    RulesNginx::stop_nginx($ngx);
}

done_testing();
