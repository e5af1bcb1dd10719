# rules-replay --redis-cluster on a private Redis Cluster (3 masters, no
# replicas) whose slots move, whose scripts go and whose nodes stop,
# die or come back, in the middle of a replay (its input a pipe, fed
# line by line):
#
# 1. seeds: a dead one before a cluster node (the next one tried), and
#    none a cluster node (a plain Redis, a dead port): no slot map;
# 2. MOVED: a slot moved (its key migrated) between two events of a
#    user: the next event follows MOVED to the new master, its state
#    there; --state of the key follows it too (through the seeds or the
#    old master);
# 3. ASK: a slot migrating; a new key is created on the importing node
#    (ASKING), its next event asked there again, an old key still served
#    by the source;
# 4. NOSCRIPT: every master's scripts flushed: EVAL instead of EVALSHA;
# 5. a master stopped (SIGSTOP) after the call was written: the run ends
#    (the event may have been applied), naming the line and the node;
# 6. a master killed and restarted (its RDB kept): the closed connection
#    is a failed node, nothing written; the event waits for the node and
#    is applied once (the third event matches min 3, not the second);
# 7. a key refused (NOPERM: a user that may write the uid keys only)
#    after the event's other key was stored: the run ends saying so;
# 8. a master killed for good: the key's 10 s wait ends the run.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use POSIX ();
use Time::HiRes qw(sleep time);
use RulesNginx;
use RulesReplay;
use RulesCluster;

my $replay = RulesReplay::binary();
-x $replay or plan skip_all => "no $replay";

my $dir = tempdir(CLEANUP => 1);
open my $rf, '>', "$dir/rules.json" or die;
print $rf '{"rules": ['
    . '{"id": "twice", "kind": "segment", "key": "uid", "type": "count", '
    . '"min": 2, "within": "7d"}, '
    . '{"id": "thrice", "kind": "segment", "key": "uid", "type": "count", '
    . '"min": 3, "within": "7d"}]}';
close $rf;

my $cluster = RulesCluster->new(replicas => 0);
my $seeds = join ',', split ' ', $cluster->seeds;

my $none = '{"matched":[]}';
my $twice = '{"matched":["twice"]}';
my $thrice = '{"matched":["twice","thrice"]}';

sub ev { qq({"uid":"$_[0]","ts":$_[1]}) }

sub results { join '', map { "$_\n" } @_ }

# rules-replay --redis-cluster SEEDS ARGS, its input a pipe: returns the
# run, to feed() lines to, then finish().
sub start_run {
    my (@args) = @_;
    pipe my $rd, my $wr or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        close $wr;
        open STDIN, '<&', $rd or POSIX::_exit(126);
        open STDOUT, '>', "$dir/stdout" or POSIX::_exit(126);
        open STDERR, '>', "$dir/stderr" or POSIX::_exit(126);
        exec($replay, '--rules', "$dir/rules.json", '--redis-cluster',
             $seeds, @args)
            or POSIX::_exit(127);
    }
    close $rd;
    return { pid => $pid, wr => $wr, start => time };
}

# (unbuffered: a run that ended early leaves no data for the next fork()
# to flush into its pipe, and a SIGPIPE)
sub feed {
    my ($run, @lines) = @_;
    local $SIG{PIPE} = 'IGNORE';
    syswrite $run->{wr}, join '', map { "$_\n" } @lines;
}

# the end of the input; { rc, out, err, secs } (rc undef: killed at 20 s)
sub finish {
    my ($run) = @_;
    close $run->{wr};
    my $rc = RulesReplay::wait_child($run->{pid}, 20);
    return { rc => $rc, secs => time - $run->{start},
             out => RulesReplay::slurp("$dir/stdout"),
             err => RulesReplay::slurp("$dir/stderr") };
}

# a whole run of the lines
sub run_lines {
    my ($lines, @args) = @_;
    my $run = start_run(@args);
    feed($run, @$lines);
    return finish($run);
}

# the key on the node on $port (the event before it applied)
sub wait_key {
    my ($port, $key) = @_;
    return RulesNginx::poll(10, sub { $cluster->cli($port, 'EXISTS', $key) },
                            sub { $_[0] eq '1' }, 0.02) eq '1';
}

# a user ("${name}N") whose key is in $slot, or the first one anywhere
sub user_in_slot {
    my ($prefix, $name, $slot) = @_;
    for my $i (0 .. 200000) {
        return "$name$i" if !defined $slot
            || RulesCluster::key_slot("$prefix\{uid:$name$i}") == $slot;
    }
    die "no user in slot $slot";
}

# the masters other than the one on $_[0]
sub others { grep { $_ != $_[0] } sort keys %{ $cluster->masters } }


# ---- 1. seeds ----------------------------------------------------------------

{
    my $prefix = 't111a:';
    my $dead = '127.0.0.1:' . RulesNginx::free_port();
    my $r = RulesReplay::run($dir, { in => results(ev('s1', 1000),
                                                   ev('s1', 2000)) },
                             '--redis-cluster', "$dead,$seeds",
                             '--prefix', $prefix);
    is($r->{rc}, 0, 'a dead seed first: exit 0') or diag($r->{err});
    is($r->{out}, results($none, $twice),
       'a dead seed first: the next one gave the map');

    my $plain = RulesNginx::start_redis();
    my $list = "127.0.0.1:$plain->{port},$dead";
    $r = RulesReplay::run($dir, { in => results(ev('s1', 3000)) },
                          '--redis-cluster', $list, '--prefix', $prefix);
    is_deeply([$r->{rc}, $r->{out}], [1, ''],
              'no seed a cluster node: exit 1, no results');
    is($r->{err}, "rules-replay: no slot map from the cluster nodes $list\n",
       'no seed a cluster node: the error');
    is(RulesNginx::redis_call($plain->{port}, 'DBSIZE'), 0,
       'nothing written to the plain Redis');
}


# ---- 2. MOVED ------------------------------------------------------------------

{
    my $prefix = 't111b:';
    my $u = user_in_slot($prefix, 'm');
    my $key = "$prefix\{uid:$u}";
    my $slot = RulesCluster::key_slot($key);
    my $A = $cluster->slot_master($slot);
    my ($B, $C) = others($A);
    my %id = map { $_ => $cluster->node_id($_) } $A, $B, $C;

    my $run = start_run('--prefix', $prefix);
    feed($run, ev($u, 1000));
    ok(wait_key($A, $key), "MOVED: event 1 stored on $A");

    $cluster->cli($B, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $id{$A});
    $cluster->cli($A, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $id{$B});
    is($cluster->cli($A, 'MIGRATE', '127.0.0.1', $B, $key, 0, 5000), 'OK',
       "MOVED: the key migrated to $B");
    $cluster->cli($_, 'CLUSTER', 'SETSLOT', $slot, 'NODE', $id{$B})
        for $B, $A, $C;
    like($cluster->cli($A, 'EXISTS', $key), qr/^MOVED $slot 127\.0\.0\.1:$B$/,
         "MOVED: $A answers MOVED for slot $slot");

    feed($run, ev($u, 2000), ev($u, 3000));
    my $r = finish($run);
    is($r->{rc}, 0, 'MOVED: exit 0') or diag($r->{err});
    is($r->{out}, results($none, $twice, $thrice),
       'MOVED: events 2 and 3 applied at the new master, to the migrated '
       . 'state');
    is($r->{err}, '', 'MOVED: nothing on stderr');
    is($cluster->cli($A, 'CLUSTER', 'COUNTKEYSINSLOT', $slot), '0',
       'MOVED: nothing written to the old master');

    # --state of the key: from its new master, through the seeds or
    # through the old master (MOVED followed); a key not stored: nothing
    my @got;
    for my $via (['--redis-cluster', $seeds], ['--redis', "127.0.0.1:$A"],
                 ['--redis', "127.0.0.1:$B"]) {
        my $s = RulesReplay::run($dir, { in => '' }, @$via, '--prefix',
                                 $prefix, '--state', $key);
        is_deeply([$s->{rc}, $s->{err}], [0, ''],
                  "MOVED: --state through @$via: exit 0")
            or diag($s->{err});
        push @got, $s->{out};
    }
    like($got[0], qr/^R1/, 'MOVED: --state: the folded state');
    is_deeply([@got[1, 2]], [$got[0], $got[0]],
              'MOVED: --state: the same through the old master and the '
              . 'new one');
    my $s = RulesReplay::run($dir, { in => '' }, '--redis-cluster', $seeds,
                             '--state', "$prefix\{uid:nobody}");
    is_deeply([$s->{rc}, $s->{out}, $s->{err}], [0, '', ''],
              'MOVED: --state of a key not stored: nothing, exit 0');
    $s = RulesReplay::run($dir, { in => '' }, '--redis-cluster', $seeds,
                          '--db', 1, '--state', $key);
    is_deeply([$s->{rc}, $s->{out}, $s->{err}],
              [2, '', "rules-replay: a Redis Cluster has no --db\n"],
              'MOVED: --state with --db on a cluster: exit 2, said');
    ok($cluster->wait_ok(20), 'the cluster settled');
}


# ---- 3. ASK ----------------------------------------------------------------------

{
    my $prefix = 't111c:';
    my $w = user_in_slot($prefix, 'w');
    my $wkey = "$prefix\{uid:$w}";
    my $slot = RulesCluster::key_slot($wkey);
    my $v = user_in_slot($prefix, 'v', $slot);
    my $vkey = "$prefix\{uid:$v}";
    my $A = $cluster->slot_master($slot);
    my ($B, $C) = others($A);
    my %id = map { $_ => $cluster->node_id($_) } $A, $B, $C;

    my $r = run_lines([ev($w, 1000)], '--prefix', $prefix);
    is("$r->{rc} $r->{out}", "0 $none\n", "ASK: $w stored on $A first");

    $cluster->cli($B, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $id{$A});
    $cluster->cli($A, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $id{$B});
    like($cluster->cli($A, 'EXISTS', $vkey), qr/^ASK $slot 127\.0\.0\.1:$B$/,
         "ASK: slot $slot migrating from $A to $B");

    $r = run_lines([ev($v, 1000), ev($v, 2000), ev($w, 2000)],
                   '--prefix', $prefix);
    is($r->{rc}, 0, 'ASK: exit 0') or diag($r->{err});
    is($r->{out}, results($none, $twice, $twice),
       "ASK: the new user's two events both on $B (the second found the "
       . "first), the old user's on $A");
    is($r->{err}, '', 'ASK: nothing on stderr');
    my $c = RulesNginx::redis_conn($B);
    RulesNginx::redis_call($c, 'ASKING');
    is(RulesNginx::redis_call($c, 'EXISTS', $vkey), 1,
       "ASK: the new key on $B");
    close $c;
    is($cluster->cli($A, 'CLUSTER', 'COUNTKEYSINSLOT', $slot), '1',
       "ASK: only the old key on $A");

    is($cluster->cli($A, 'MIGRATE', '127.0.0.1', $B, $wkey, 0, 5000), 'OK',
       "ASK: the old key migrated");
    $cluster->cli($_, 'CLUSTER', 'SETSLOT', $slot, 'NODE', $id{$B})
        for $B, $A, $C;
    ok($cluster->wait_ok(20), 'the cluster settled');
}


# ---- 4. NOSCRIPT ------------------------------------------------------------------

{
    my $prefix = 't111d:';
    my @users = $cluster->users_on_masters($prefix, 'n', 3);
    my @masters = sort keys %{ $cluster->masters };
    my $scripts = sub {
        join ',', map { $cluster->cli($_, 'INFO', 'memory')
                        =~ /number_of_cached_scripts:(\d+)/ ? $1 : '?' }
                  @masters;
    };
    is(join(',', map { $cluster->cli($_, 'SCRIPT', 'FLUSH') } @masters),
       'OK,OK,OK', 'NOSCRIPT: every master\'s scripts flushed');
    is($scripts->(), '0,0,0', 'NOSCRIPT: no script left');

    my $r = run_lines([map { (ev($_, 1000), ev($_, 2000)) } @users],
                      '--prefix', $prefix);
    is($r->{rc}, 0, 'NOSCRIPT: exit 0') or diag($r->{err});
    is($r->{out}, results(($none, $twice) x 3),
       'NOSCRIPT: every event applied, on the 3 masters');
    is($r->{err}, '', 'NOSCRIPT: nothing on stderr');
    is($scripts->(), '1,1,1', 'NOSCRIPT: the script sent with EVAL to each');
}


# ---- 5. a master stopped after the call was written -----------------------------

{
    my $prefix = 't111e:';
    my $u = user_in_slot($prefix, 'x');
    my $key = "$prefix\{uid:$u}";
    my $A = $cluster->slot_master(RulesCluster::key_slot($key));

    my $run = start_run('--prefix', $prefix, '--timeout', 500);
    feed($run, ev($u, 1000));
    ok(wait_key($A, $key), "stopped: event 1 stored on $A");
    kill 'STOP', $cluster->node_by_port($A)->{pid};
    $run->{start} = time;
    feed($run, '', ev($u, 2000), ev($u, 3000));
    my $r = finish($run);
    kill 'CONT', $cluster->node_by_port($A)->{pid};
    is($r->{rc}, 1, 'stopped: exit 1');
    is($r->{err}, "rules-replay: line 3: redis cluster node 127.0.0.1:$A: no "
                  . 'answer within 500 ms (--timeout) after the call was '
                  . 'sent: the event may have been applied; stopping (check '
                  . "the keys of this line, then replay from the next one)\n",
       'stopped: the error names the line and the node');
    is($r->{out}, results($none), 'stopped: the results before it');
    ok(defined $r->{rc} && $r->{secs} < 5,
       sprintf('stopped: ended in %.1f s', $r->{secs}));
    ok($cluster->wait_ok(20), 'the cluster settled');
}


# ---- 6. a master killed, then restarted ---------------------------------------------

{
    my $prefix = 't111f:';
    my $u = user_in_slot($prefix, 'k');
    my $key = "$prefix\{uid:$u}";
    my $A = $cluster->slot_master(RulesCluster::key_slot($key));
    my $n = $cluster->node_by_port($A);

    my $run = start_run('--prefix', $prefix);
    feed($run, ev($u, 1000));
    ok(wait_key($A, $key), "killed: event 1 stored on $A");
    is($cluster->cli($A, 'SAVE'), 'OK', "killed: $A saved to its RDB");
    $cluster->kill_node($A);
    feed($run, ev($u, 2000), ev($u, 3000));

    # the replay tries while the node is down (its connection closed,
    # then refused), then gets it back
    sleep 0.3;
    my $r = RulesNginx::start_redis(port => $A, args => [
        '--cluster-enabled', 'yes', '--cluster-port', $n->{bus},
        '--cluster-config-file', "$n->{dir}/nodes.conf",
        '--cluster-node-timeout', 1000,
        '--cluster-require-full-coverage', 'no',
        '--dir', $n->{dir}, '--logfile', "$n->{dir}/redis.log"]);
    $n->{pid} = $r->{pid};
    delete $n->{dead};

    $r = finish($run);
    is($r->{rc}, 0, 'killed and restarted: exit 0') or diag($r->{err});
    is($r->{out}, results($none, $twice, $thrice),
       'killed and restarted: each event applied once, after the restart');
    is($r->{err}, '', 'killed and restarted: nothing on stderr');
    ok($cluster->wait_ok(20), 'the cluster settled');
}


# ---- 7. a key refused after the event's other key was stored --------------------

{
    my $prefix = 't111h:';
    open my $hf, '>', "$dir/rules-h.json" or die;
    print $hf '{"rules": ['
        . '{"id": "twice", "kind": "segment", "key": "uid", "type": "count", '
        . '"min": 2, "within": "7d"}, '
        . '{"id": "dev", "kind": "segment", "key": "device", '
        . '"type": "count", "min": 2, "within": "7d"}]}';
    close $hf;
    for my $port (sort keys %{ $cluster->masters }) {
        $cluster->cli($port, 'ACL', 'SETUSER', 'half', 'on', '>halfpw',
                      "~$prefix\{uid:*", '+@all');
    }
    my $r = RulesReplay::run($dir,
        { in => qq({"uid":"h1","device":"d1","ts":1000}\n), no_rules => 1 },
        '--rules', "$dir/rules-h.json", '--redis-cluster', $seeds,
        '--user', 'half', '--password', 'halfpw', '--prefix', $prefix);
    is($r->{rc}, 1, 'a key refused after another was stored: exit 1');
    like($r->{err}, qr/^rules-replay: line 1: redis: NOPERM .*\nrules-replay: line 1: redis cluster: 1 of this line's 2 key operations were stored before this one failed \(check the keys of this line, then replay from the next one\)\n\z/,
         'a key refused after another was stored: the error, and how many '
         . 'were stored');
    my $key = "$prefix\{uid:h1}";
    like($cluster->cli($cluster->slot_master(RulesCluster::key_slot($key)),
                       'GET', $key) // '', qr/^R2/,
         'a key refused after another was stored: that one is there');
    $cluster->cli($_, 'ACL', 'DELUSER', 'half')
        for sort keys %{ $cluster->masters };
}


# ---- 8. a master killed for good ----------------------------------------------------

{
    my $prefix = 't111g:';
    my $u = user_in_slot($prefix, 'g');
    my $key = "$prefix\{uid:$u}";
    my $slot = RulesCluster::key_slot($key);
    my $A = $cluster->slot_master($slot);
    $cluster->kill_node($A);
    my $r = run_lines(['', ev($u, 1000)], '--prefix', $prefix);
    is($r->{rc}, 1, 'a master gone: exit 1');
    like($r->{err}, qr/^rules-replay: line 2: redis cluster: slot $slot: no answer after \d+ tries or 10000 ms\n\z/,
         'a master gone: the error, at the line');
    is($r->{out}, '', 'a master gone: no result');
    ok(defined $r->{rc} && $r->{secs} > 9 && $r->{secs} < 15,
       sprintf('a master gone: waited %.1f s (10 s)', $r->{secs}));
}

done_testing();
