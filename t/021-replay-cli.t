# rules-replay as a command-line tool: blank lines, lines with no event
# ("[]"), read and write errors, numeric options, the input line named
# by the errors that end a run, and --timeout: a Redis that resets the
# connection mid-stream, or stops answering (SIGSTOP), mid-stream or
# from the start; usage errors, files that cannot be opened, a Redis that
# cannot be connected to, refuses AUTH or SELECT, on TCP or unix:PATH,
# and error replies to an event's call (OOM, READONLY, NOPERM).  Against
# a private redis-server (RulesNginx::start_redis), which the tests cut
# off and stop.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);
use RulesNginx;
use RulesReplay;

my $replay = RulesReplay::binary();
-x $replay or plan skip_all => "no $replay";

my $dir = tempdir(CLEANUP => 1);

open my $rf, '>', "$dir/rules.json" or die;
print $rf '{"rules": [{ "id": "twice", "kind": "segment", "key": "uid", '
    . '"type": "count", "where": {"field": "type", "eq": "page"}, '
    . '"min": 2, "within": "7d" }]}';
close $rf;

my $page1 = '{"uid":"u1","type":"page","ts":1000}';
my $page2 = '{"uid":"u1","type":"page","ts":2000}';

# rules-replay ARGS (RulesReplay::run, in this file's directory)
sub run_replay { return RulesReplay::run($dir, @_) }

# rules-replay ARGS reading a pipe: the lines of @$before, then once
# Redis holds a state key of the prefix, $cut->(), then the lines of
# @$after.  Returns { rc, out, err, secs }.
sub run_cut {
    my ($port, $prefix, $before, $cut, $after, @args) = @_;
    pipe my $rd, my $wr or die "pipe: $!";
    my $start = time;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        close $wr;
        open STDIN, '<&', $rd or POSIX::_exit(126);
        open STDOUT, '>', "$dir/stdout" or POSIX::_exit(126);
        open STDERR, '>', "$dir/stderr" or POSIX::_exit(126);
        exec($replay, '--rules', "$dir/rules.json",
             '--redis', "127.0.0.1:$port", '--prefix', $prefix, @args)
            or POSIX::_exit(127);
    }
    close $rd;
    $wr->autoflush(1);
    print $wr "$_\n" for @$before;
    RulesNginx::poll(10, sub {
        my $keys = RulesNginx::redis_call($port, 'KEYS', "$prefix*");
        ref $keys eq 'ARRAY' && @$keys;
    }, undef, 0.02);
    $cut->();
    local $SIG{PIPE} = 'IGNORE';
    print $wr "$_\n" for @$after;
    close $wr;
    my $rc = RulesReplay::wait_child($pid, 20);
    return { rc => $rc, secs => time - $start,
             out => RulesReplay::slurp("$dir/stdout"), err => RulesReplay::slurp("$dir/stderr") };
}


# blank lines: empty, or spaces and tabs only (also before a CR)

my $r = run_replay({ in => "\n  \t \n\t\r\n$page1\n \n$page2\n" });
is($r->{rc}, 0, 'blank lines: exit 0');
is($r->{out}, qq({"matched":[]}\n{"matched":["twice"]}\n),
   'blank lines: skipped, one result per event');
is($r->{err}, '', 'blank lines: nothing on stderr');


# a dry run's store holds every key: more keys than its first table's
# buckets (65536) grow the table, and every key is still found (each
# user's second page view matches, the first ones none)

{
    my $n = 140000;
    my $in = join '', map { qq({"uid":"g$_","type":"page","ts":1000}\n) } 1 .. $n;
    $in .= join '', map { qq({"uid":"g$_","type":"page","ts":2000}\n) } reverse 1 .. $n;
    $r = run_replay({ in => $in });
    is($r->{rc}, 0, "a dry run of $n keys: exit 0");
    my @lines = split /\n/, $r->{out};
    is(scalar @lines, 2 * $n, "a dry run of $n keys: a result per event");
    is(scalar(grep { $_ eq '{"matched":[]}' } @lines[0 .. $n - 1]), $n,
       "a dry run of $n keys: no first view matches");
    is(scalar(grep { $_ eq '{"matched":["twice"]}' } @lines[$n .. 2 * $n - 1]),
       $n, "a dry run of $n keys: every second view matches (each key "
           . "found after the table grew)");
}


# a line with no event ("[]"): invalid, and nothing read past the
# parser's arrays (under valgrind when it is installed)

my @valgrind = grep { -x "$_/valgrind" } split /:/, $ENV{PATH};
$r = run_replay({ in => "[]\n$page1\n [ ] \n" });
is($r->{rc}, 0, '[]: exit 0');
is($r->{out}, qq({"matched":[],"status":"invalid","error":"no event: a line )
   . qq(holds one JSON object"}\n{"matched":[]}\n)
   . qq({"matched":[],"status":"invalid","error":"no event: a line )
   . qq(holds one JSON object"}\n),
   '[]: an invalid result line, then the next event');

SKIP: {
    skip 'no valgrind', 1 unless @valgrind;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDIN, '<', "$dir/stdin" or POSIX::_exit(126);
        open STDOUT, '>', '/dev/null' or POSIX::_exit(126);
        open STDERR, '>', "$dir/valgrind" or POSIX::_exit(126);
        exec("$valgrind[0]/valgrind", '-q', '--error-exitcode=99',
             $replay, '--rules', "$dir/rules.json")
            or POSIX::_exit(127);
    }
    is(RulesReplay::wait_child($pid, 60), 0, '[]: no invalid read under valgrind')
        or diag(RulesReplay::slurp("$dir/valgrind"));
}


# read and write errors end the run with exit 1: stdout a full disk (a
# few results, then enough to fill stdio's buffer), the input a directory

SKIP: {
    skip 'no /dev/full', 4 unless -c '/dev/full';

    $r = run_replay({ in => "$page1\n$page2\n", stdout => '/dev/full' });
    is($r->{rc}, 1, 'stdout /dev/full: exit 1');
    my $at_end = 'rules-replay: at the end of the input';
    like($r->{err}, qr/^$at_end: cannot write the results: \S/,
         'stdout /dev/full: the error');

    $r = run_replay({ in => "$page1\n" x 5000, stdout => '/dev/full' });
    is($r->{rc}, 1, 'stdout /dev/full, 5000 lines: exit 1');
    like($r->{err}, qr/^rules-replay: line \d+: cannot write the results/,
         'stdout /dev/full, 5000 lines: stops at the line that failed');
}

$r = run_replay({}, $dir);
is($r->{rc}, 1, 'a directory as EVENTS.jsonl: exit 1');
like($r->{err}, qr/^rules-replay: line 1: cannot read \Q$dir\E: \S/,
     'a directory as EVENTS.jsonl: the error');

$r = run_replay({ stdin => $dir });
is($r->{rc}, 1, 'a directory as stdin: exit 1');
like($r->{err}, qr/^rules-replay: line 1: cannot read stdin: \S/,
     'a directory as stdin: the error');


# memory exhausted ends the run with exit 1 and the line, never taken
# for the end of the input or for an invalid line: a line longer than
# the memory left (the reader's buffer), and one the reader holds but
# the JSON parser cannot copy (jansson reports its failed allocations as
# a syntax error, or reads past the text it could not save)

# The limits hold the plain binary's address space (about 5 MB here):
# not one under a wrapper (valgrind, a script) or with a preloaded
# allocator, which reserve more.

my $elf = do {
    open my $bin, '<', $replay or die "$replay: $!";
    read($bin, my $magic, 4) // die "$replay: $!";
    $magic eq "\x7fELF";
};

SKIP: {
    skip 'the memory limits need the plain binary (no wrapper, no '
         . 'LD_PRELOAD)', 7 if !$elf || $ENV{LD_PRELOAD};

    for my $case (['reading', 40 << 20, 40000,
                   qr/^rules-replay: line 2: out of memory reading stdin$/],
                  ['parsing', 20 << 20, 64000,
                   qr/^rules-replay: line 2: out of memory$/]) {
        my ($what, $len, $kb, $re) = @$case;
        $r = run_replay({ in => "$page1\n" . '{"uid":"u2","junk":"'
                                . ('x' x $len) . qq("}\n$page2\n),
                          memory_kb => $kb });
        is($r->{rc}, 1, "out of memory $what a line of $len bytes: exit 1");
        like($r->{err}, $re, "out of memory $what: the line, on stderr");
        is($r->{out}, qq({"matched":[]}\n),
           "out of memory $what: the results before it, none after");
    }

    $r = run_replay({ in => "$page1\n" x 3, memory_kb => 40000 });
    is_deeply([$r->{rc}, $r->{err}], [0, ''],
              'the same memory limit: a run of short lines ends well');
}


# an invalid line's error names the column: the parser's line (always 1
# within one input line) is not given as if it were the input's

$r = run_replay({ in => "$page1\nnot json\n" });
is($r->{rc}, 0, 'not JSON: exit 0');
my $invalid = qr/\{"matched":\[\],"status":"invalid","error":"([^"]*)"\}/;
like($r->{out}, qr/\A\{"matched":\[\]\}\n$invalid\n\z/,
     'not JSON: an invalid result line');
my ($error) = $r->{out} =~ $invalid;
like($error, qr/\Ainvalid JSON at column \d+: \S/,
     'not JSON: the column, and no line of the parser');


# --user alone: a usage error, as rules_redis' "user=" without "password="

$r = run_replay({ in => "$page1\n" }, '--redis', '127.0.0.1:1', '--user',
                'u');
is_deeply([$r->{rc}, $r->{err}, $r->{out}],
          [2, "rules-replay: --user needs --password\n", ''],
          '--user without --password: exit 2, the error, no results');


# numeric options: digits only, in range; else exit 2 (a usage error)
# naming the option

for my $bad (['--db', 'abc'], ['--db', '-1'], ['--db', '1x'],
             ['--db', '99999999999999999999'], ['--key-max', '-1'],
             ['--key-max', '0'], ['--key-max', '65536'],
             ['--value-max', ''], ['--value-max', ' 5'], ['--cache', '1k'],
             ['--cache', '-1'], ['--writers', '0'], ['--writers', '2x'],
             ['--extend-min', '+5'], ['--redis', '127.0.0.1:63x'],
             ['--redis', '127.0.0.1:0'],
             ['--redis-cluster', '127.0.0.1:7000,127.0.0.1:7x'],
             ['--redis-cluster', ''], ['--redis-cluster', '127.0.0.1:7000,'],
             ['--redis-cluster', ',127.0.0.1:7000'],
             ['--redis-cluster', '127.0.0.1:7000,,127.0.0.1:7001'],
             ['--redis-cluster', '[::1:7000'], ['--redis', '[::1]'],
             ['--redis', 'a]:7000'], ['--redis', '[]:7000']) {
    my $name = "@$bad";
    my $opt = $bad->[0];
    $r = run_replay({ in => "$page1\n" }, @$bad);
    is($r->{rc}, 2, "$name: exit 2");
    like($r->{err}, qr/^rules-replay: invalid \Q$opt\E "/,
         "$name: the error names the option");
    is($r->{out}, '', "$name: no results");
}

$r = run_replay({ in => "$page1\n$page2\n" }, '--key-max', '65535',
                '--value-max', '1', '--cache', '0', '--writers', '1024',
                '--extend-min', '0');
is($r->{rc}, 0, 'numeric options at their bounds: exit 0');
my $over = qq({"matched":[],"status":"invalid","error":"a value is over )
           . qq(a limit"}\n);
is($r->{out}, $over x 2,
   'numeric options at their bounds: --value-max 1 applies');


# a Redis that cuts the connection mid-stream: the error names the line

SKIP: {
    skip 'no redis-server', 15 unless grep { -x "$_/redis-server" }
                                     split /:/, $ENV{PATH};

    my $redis = RulesNginx::start_redis();
    my $port = $redis->{port};

    $r = run_cut($port, "cli:$$:reset:", ['', $page1, ''],
                 sub { RulesNginx::redis_call($port, 'CLIENT', 'KILL',
                                              'TYPE', 'normal') },
                 [$page2]);
    is($r->{rc}, 1, 'connection reset: exit 1');
    like($r->{err}, qr/^rules-replay: line 4: redis: \S/,
         'connection reset: the error names the input line');
    is($r->{out}, qq({"matched":[]}\n), 'connection reset: the results '
       . 'before it');

    # --timeout: a Redis stopped (SIGSTOP) mid-stream, then from the start
    # (the connection, INFO cluster, --state, a cluster seed)

    my $stopped = 0;
    $r = run_cut($port, "cli:$$:stop:", ['', $page1, ''],
                 sub { kill 'STOP', $redis->{pid}; $stopped = 1 },
                 [$page2], '--timeout', 500);
    is($r->{rc}, 1, 'redis stopped mid-stream: exit 1');
    my $silent = 'no answer within 500 ms (--timeout)';
    # the call was written whole: Redis may apply it once it runs again
    like($r->{err}, qr/^rules-replay: line 4: redis: \Q$silent\E after the call was sent: the event may have been applied; stopping \(check the keys of this line, then replay from the next one\)$/m,
         'redis stopped mid-stream: the timeout, at the input line, and '
         . 'that the event may have been applied');
    ok(defined $r->{rc} && $r->{secs} < 10,
       sprintf('redis stopped mid-stream: ended in %.1f s', $r->{secs}));

    my $addr = "127.0.0.1:$port";
    for my $case (["--redis $addr", "redis $addr: INFO cluster failed",
                   '--redis', $addr],
                  ["--state", "redis $addr: INFO cluster failed",
                   '--redis', $addr, '--state', 'k'],
                  ["--redis-cluster $addr", "redis cluster node $addr",
                   '--redis-cluster', $addr]) {
        my ($name, $error, @args) = @$case;
        $r = run_replay({ in => "$page1\n" }, '--timeout', 300, @args);
        is($r->{rc}, 1, "redis stopped, $name: exit 1");
        $silent = 'no answer within 300 ms (--timeout)';
        like($r->{err}, qr/^rules-replay: \Q$error: $silent\E$/m,
             "redis stopped, $name: the error");
        ok(defined $r->{rc} && $r->{secs} < 10,
           sprintf("redis stopped, $name: ended in %.1f s", $r->{secs}));
    }

    kill 'CONT', $redis->{pid} if $stopped;
}

# the compactions due at the end are sent: 8 events of one key, without
# a cache (each appends and folds the log), leave its log folded (they
# were dropped: 8 entries stayed); and a user that may not run
# RULES.STORE (NOPERM) has the events stored with the script, as nginx
# does (the run ended at line 1)

SKIP: {
    skip 'no redis-server', 6 unless grep { -x "$_/redis-server" }
                                    split /:/, $ENV{PATH};
    my $module = $ENV{RULES_REDIS_MODULE}
                 // "$FindBin::Bin/../build/rules_redis_module.so";
    # (MODULE UNLOAD, below, needs the MODULE command)
    my $redis = RulesNginx::start_redis(
        -f $module ? (args => ['--loadmodule', $module,
                               '--enable-module-command', 'yes']) : ());
    my $port = $redis->{port};
    my $in = join '', map { qq({"uid":"c1","type":"page","ts":${_}000}\n) }
                      1 .. 8;
    $r = run_replay({ in => $in }, '--redis', "127.0.0.1:$port",
                    '--prefix', "cli:$$:end:", '--cache', 0);
    is($r->{rc}, 0, 'eight events, no cache: exit 0');
    my $v = RulesNginx::redis_call($port, 'GET', "cli:$$:end:{uid:c1}") // '';
    ok(length $v >= 22 && substr($v, 0, 2) eq 'R2'
       && unpack('V', substr($v, 18, 4)) == length($v) - 22,
       'the key is stored folded, no log entry left (the last compaction '
       . 'was sent at the end)');

    SKIP: {
        skip "no $module", 9 unless -f $module;
        is(RulesNginx::redis_call($port, 'ACL', 'SETUSER', 'app', 'on',
                                  '>apppw', '~*', '&*', '+@all',
                                  '-rules.store'), 'OK',
           'a user without RULES.STORE');
        $r = run_replay({ in => "$page1\n$page2\n" },
                        '--redis', "127.0.0.1:$port", '--user', 'app',
                        '--password', 'apppw', '--prefix', "cli:$$:acl:");
        is($r->{rc}, 0, 'NOPERM on RULES.STORE: exit 0') or diag($r->{err});
        is($r->{out}, qq({"matched":[]}\n{"matched":["twice"]}\n),
           'NOPERM on RULES.STORE: stored with the script');
        like(RulesNginx::redis_call($port, 'GET', "cli:$$:acl:{uid:u1}")
             // '', qr/^R2/, 'NOPERM on RULES.STORE: the key is there');

        # A server that stops taking RULES.STORE (a failover to a node
        # without the module: here MODULE UNLOAD) may have lost writes:
        # the cached states go, as in nginx.  u1's first page view is
        # cached; then its stored time is moved 10 days back (the value's
        # gen and length unchanged, as a write lost in a failover can
        # leave them) and the script loaded, as nginx workers would have
        # (no NOSCRIPT to forget the states).  Another user's event takes
        # the fallback; u1's second view then folds the stored value (one
        # view in 7 days: no match), where the stale cache matched.
        my $prefix = "cli:$$:lost:";
        my $key = "$prefix\{uid:u1}";
        my $day = 86400000;
        my @ev = map { qq({"uid":"$_->[0]","type":"page","ts":$_->[1]}) }
                 ['u1', 20 * $day], ['u2', 20 * $day + 1],
                 ['u1', 20 * $day + 2];
        open my $lf, '<', "$FindBin::Bin/../src/rules_script.lua" or die;
        my $script = do { local $/; <$lf> };
        close $lf;
        RulesNginx::redis_call($port, 'CONFIG', 'RESETSTAT');
        my $moved = '';
        $r = run_cut($port, $prefix, [$ev[0]], sub {
            is(RulesNginx::redis_call($port, 'MODULE', 'UNLOAD', 'rules'),
               'OK', 'the rules Redis module unloaded mid-run');
            RulesNginx::redis_call($port, 'SCRIPT', 'LOAD', $script);
            my $v = RulesNginx::redis_call($port, 'GET', $key) // '';
            # "R2" gen stamp snaplen (22 bytes), then the entry: wall, now
            $moved = length $v >= 38 ? unpack('d<', substr($v, 30, 8)) : '';
            RulesNginx::redis_call($port, 'SETRANGE', $key, 30,
                                   pack('d<', 10 * $day));
        }, [@ev[1, 2]]);
        is($moved, 20 * $day, "u1's stored event time, moved back");
        is($r->{rc}, 0, 'RULES.STORE gone mid-run: exit 0') or diag($r->{err});
        is($r->{out}, qq({"matched":[]}\n) x 3, 'RULES.STORE gone mid-run: '
           . "u1's second view folds what Redis holds (its cache forgotten)");
        my $stats = RulesNginx::redis_call($port, 'INFO', 'commandstats');
        ok($stats =~ /cmdstat_evalsha:calls=[2-9],/
           && $stats !~ /cmdstat_eval:/,
           'the two events after it went as EVALSHA, no NOSCRIPT (the '
           . 'script the test loaded is the replay\'s)') or diag($stats);
        RulesNginx::redis_call($port, 'MODULE', 'LOAD', $module);
    }
}

# --db with --redis to a cluster node: the usage error (exit 2), not a
# failed SELECT (exit 1)
SKIP: {
    skip 'no redis-server', 2 unless grep { -x "$_/redis-server" }
                                    split /:/, $ENV{PATH};
    my $node = RulesNginx::start_redis(args => [
        '--cluster-enabled', 'yes',
        '--cluster-config-file', "$dir/nodes-021.conf",
        '--cluster-port', RulesNginx::free_port()]);
    $r = run_replay({ in => "$page1\n" }, '--redis',
                    "127.0.0.1:$node->{port}", '--db', 3);
    is($r->{rc}, 2, '--db to a cluster node: exit 2');
    like($r->{err}, qr/a Redis Cluster has no --db/,
         '--db to a cluster node: the usage error');
}

# a reader that goes away (| head -1) is a write error: exit 1 and a
# message (SIGPIPE killed it silently, 141)
{
    open my $fh, '>', "$dir/many" or die;
    print $fh "$page1\n" x 200000;
    close $fh;
    my $cmd = "'$replay' --rules '$dir/rules.json' < '$dir/many' "
              . "2>'$dir/pipe-err' | head -1 >/dev/null; "
              . 'echo "rc=${PIPESTATUS[0]}"';
    open my $ph, '-|', 'bash', '-c', $cmd or die "bash: $!";
    my $out = do { local $/; <$ph> } // '';
    close $ph;
    like($out, qr/rc=1$/, 'a reader that goes away: exit 1') or diag($out);
    like(RulesReplay::slurp("$dir/pipe-err"), qr/^rules-replay: /m,
         'a reader that goes away: a message');
}

for my $bad (qw(0 -1 abc 3600001)) {
    $r = run_replay({ in => "$page1\n" }, '--timeout', $bad);
    is($r->{rc}, 2, "--timeout $bad: exit 2");
    like($r->{err}, qr/^rules-replay: invalid --timeout "/,
         "--timeout $bad: the error names the option");
}


# usage errors: exit 2, the usage on stderr (after what getopt said),
# no results: an unknown option, an option without its value, no
# --rules, two input files, --redis with --redis-cluster, --state
# without --redis; and --help (the usage, exit 2, as the README says)

my $usage = qr/^usage: rules-replay --rules FILE \[--redis HOST:PORT\|unix:PATH\]$/m;
for my $case (['an unknown option', qr/unrecognized option '--bogus'/,
               {}, '--bogus'],
              ['--prefix without its value',
               qr/option '--prefix' requires an argument/, {}, '--prefix'],
              ['no --rules', undef, { no_rules => 1 }],
              ['two input files', undef, {}, "$dir/stdin", "$dir/stdin"],
              ['--redis and --redis-cluster', undef, {}, '--redis',
               '127.0.0.1:1', '--redis-cluster', '127.0.0.1:1'],
              ['--state without --redis', undef, {}, '--state', 'k'],
              ['--help', undef, {}, '--help']) {
    my ($name, $said, $opt, @args) = @$case;
    $r = run_replay({ in => "$page1\n", %$opt }, @args);
    is($r->{rc}, 2, "$name: exit 2");
    like($r->{err}, $usage, "$name: the usage on stderr");
    like($r->{err}, $said, "$name: what is wrong, before it") if $said;
    unlike($r->{err}, qr/^rules-replay: /m, "$name: no other error")
        unless $said;
    is($r->{out}, '', "$name: no results");
}


# files that cannot be opened: exit 1, the file and why

$r = run_replay({ in => "$page1\n" }, '--rules', "$dir/none.json");
is_deeply([$r->{rc}, $r->{out}], [1, ''], 'no rules file: exit 1, no results');
like($r->{err}, qr/^rules-replay: rules file "\Q$dir\E\/none\.json": cannot open: \S/,
     'no rules file: the error names it');

$r = run_replay({}, "$dir/none.jsonl");
is_deeply([$r->{rc}, $r->{out}], [1, ''],
          'no EVENTS.jsonl: exit 1, no results');
like($r->{err}, qr/^rules-replay: \Q$dir\E\/none\.jsonl: \S.*\n\z/,
     'no EVENTS.jsonl: the error names it');


# a Redis that cannot be connected to (a port nothing listens on, a unix
# socket that is not there): exit 1, the address, before any line

for my $addr ('127.0.0.1:' . RulesNginx::free_port(), "unix:$dir/none.sock") {
    $r = run_replay({ in => "$page1\n" }, '--redis', $addr);
    is_deeply([$r->{rc}, $r->{out}], [1, ''],
              "cannot connect to $addr: exit 1, no results");
    like($r->{err}, qr/^rules-replay: cannot connect to redis \Q$addr\E: \S.*\n\z/,
         "cannot connect to $addr: the error, with no input line");
}

# a unix socket path of 107 bytes (hiredis would read one byte past it):
# a usage error, before any connection
{
    my $long = 'unix:/' . ('p' x 106);
    $r = run_replay({ in => "$page1\n" }, '--redis', $long);
    is_deeply([$r->{rc}, $r->{out}], [2, ''],
              'a unix path of 107 bytes: exit 2, no results');
    like($r->{err}, qr/^rules-replay: invalid --redis "\Q$long\E": a unix path of at most 106 bytes\n\z/,
         'a unix path of 107 bytes: the error says the limit');
}


# a Redis with a password and 4 databases, on TCP and a unix socket
# (unix:PATH): the state written through the socket, in the --db given;
# a wrong password, an unknown user, no password, a --db past the
# databases (the replay and --state): exit 1 and the error

SKIP: {
    skip 'no redis-server', 19 unless grep { -x "$_/redis-server" }
                                     split /:/, $ENV{PATH};
    my $sock = "$dir/redis.sock";
    my $redis = RulesNginx::start_redis(args => [
        '--unixsocket', $sock, '--requirepass', 'pw', '--databases', 4]);
    my $port = $redis->{port};
    my $prefix = "cli:$$:auth:";
    my $key = "$prefix\{uid:u1}";
    RulesNginx::poll(5, sub { -S $sock }, undef, 0.02);

    $r = run_replay({ in => "$page1\n$page2\n" }, '--redis', "unix:$sock",
                    '--password', 'pw', '--db', 2, '--prefix', $prefix);
    is($r->{rc}, 0, 'unix:PATH --db 2: exit 0') or diag($r->{err});
    is($r->{out}, qq({"matched":[]}\n{"matched":["twice"]}\n),
       'unix:PATH --db 2: the second view matches (the first one stored)');
    my $c = RulesNginx::redis_conn($port);
    is(RulesNginx::redis_call($c, 'AUTH', 'pw'), 'OK', 'AUTH');
    is(RulesNginx::redis_call($c, 'EXISTS', $key), 0,
       'unix:PATH --db 2: no state in db 0');
    RulesNginx::redis_call($c, 'SELECT', 2);
    like(RulesNginx::redis_call($c, 'GET', $key) // '', qr/^R2/,
         'unix:PATH --db 2: the state in db 2');
    close $c;

    $r = run_replay({}, '--redis', "unix:$sock", '--password', 'pw',
                    '--db', 2, '--state', $key);
    is($r->{rc}, 0, '--state through unix:PATH: exit 0');
    like($r->{out}, qr/^R1/, '--state through unix:PATH: the folded state');

    for my $case (['a wrong password', "127.0.0.1:$port", '--password',
                   'bad'],
                  ['an unknown user', "unix:$sock", '--user', 'nobody',
                   '--password', 'pw']) {
        my ($name, $addr, @auth) = @$case;
        $r = run_replay({ in => "$page1\n" }, '--redis', $addr, @auth,
                        '--prefix', $prefix);
        is_deeply([$r->{rc}, $r->{out}], [1, ''],
                  "$name ($addr): exit 1, no results");
        like($r->{err}, qr/^rules-replay: redis AUTH failed: WRONGPASS .*\n\z/,
             "$name: the error, with no input line");
    }

    $r = run_replay({ in => "\n$page1\n" }, '--redis', "127.0.0.1:$port",
                    '--prefix', $prefix);
    is_deeply([$r->{rc}, $r->{out}], [1, ''],
              'no password: exit 1, no results');
    like($r->{err}, qr/^rules-replay: line 2: redis: NOAUTH .*\n\z/,
         'no password: NOAUTH at the first event\'s line');

    for my $case (['--redis', "127.0.0.1:$port"],
                  ['--redis', "unix:$sock"],
                  ['--redis', "127.0.0.1:$port", '--state', $key]) {
        my $name = "--db 4 of 4 databases, @$case";
        $r = run_replay({ in => "$page1\n" }, @$case, '--password', 'pw',
                        '--db', 4, '--prefix', $prefix);
        is_deeply([$r->{rc}, $r->{out}], [1, ''], "$name: exit 1, no results");
        is($r->{err}, "rules-replay: redis SELECT failed: ERR DB index is "
                      . "out of range\n", "$name: the error");
    }
}


# an error reply to an event's call ends the run at its line, with
# Redis' error, and the results before it: a Redis out of memory
# (maxmemory) mid-stream, a replica (READONLY), a user that may not run
# scripts (NOPERM; RULES.STORE unknown there, the script tried)

SKIP: {
    skip 'no redis-server', 12 unless grep { -x "$_/redis-server" }
                                     split /:/, $ENV{PATH};
    my $redis = RulesNginx::start_redis();
    my $port = $redis->{port};

    $r = run_cut($port, "cli:$$:oom:", [$page1],
                 sub { RulesNginx::redis_call($port, 'CONFIG', 'SET',
                                              'maxmemory', 1) },
                 ['', $page2]);
    RulesNginx::redis_call($port, 'CONFIG', 'SET', 'maxmemory', 0);
    is($r->{rc}, 1, 'OOM mid-stream: exit 1');
    like($r->{err}, qr/^rules-replay: line 3: redis: OOM command not allowed .*\n\z/,
         'OOM mid-stream: the error at the input line');
    is($r->{out}, qq({"matched":[]}\n), 'OOM mid-stream: the results before it');

    my $replica = RulesNginx::start_redis(args => ['--replicaof', '127.0.0.1',
                                                   $port]);
    $r = run_replay({ in => "$page1\n" }, '--redis',
                    "127.0.0.1:$replica->{port}", '--prefix', "cli:$$:ro:");
    is_deeply([$r->{rc}, $r->{out}], [1, ''], 'a replica: exit 1, no results');
    like($r->{err}, qr/^rules-replay: line 1: redis: READONLY You can't write against a read only replica\..*\n\z/,
         'a replica: READONLY, at the line');
    is(RulesNginx::redis_call($replica->{port}, 'EXISTS',
                              "cli:$$:ro:{uid:u1}"), 0,
       'a replica: nothing written there');

    is(RulesNginx::redis_call($port, 'ACL', 'SETUSER', 'noscript', 'on',
                              '>nspw', '~*', '&*', '+@all', '-@scripting'),
       'OK', 'a user without scripts');
    $r = run_replay({ in => "$page1\n" }, '--redis', "127.0.0.1:$port",
                    '--user', 'noscript', '--password', 'nspw',
                    '--prefix', "cli:$$:noperm:");
    is_deeply([$r->{rc}, $r->{out}], [1, ''],
              'no scripts allowed: exit 1, no results');
    like($r->{err}, qr/^rules-replay: line 1: redis: NOPERM .*'evalsha'.*\n\z/,
         'no scripts allowed: NOPERM for EVALSHA, at the line');

    # no error for a state key of another type: not ours, replaced by
    # the first event's state (README, as nginx does: t/066)
    my $key = "cli:$$:hash:{uid:u1}";
    RulesNginx::redis_call($port, 'HSET', $key, 'f', 'v');
    $r = run_replay({ in => "$page1\n$page2\n" }, '--redis',
                    "127.0.0.1:$port", '--prefix', "cli:$$:hash:");
    is_deeply([$r->{rc}, $r->{err}], [0, ''],
              'a hash at the state key: exit 0, no error');
    is($r->{out}, qq({"matched":[]}\n{"matched":["twice"]}\n),
       'a hash at the state key: replaced, the events counted from none');
    like(RulesNginx::redis_call($port, 'GET', $key) // '', qr/^R2/,
         'a hash at the state key: a state string now');
}

done_testing();
