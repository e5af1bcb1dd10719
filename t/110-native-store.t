# The rules Redis module (redis_module/, RULES.STORE) against the script
# it replaces (src/rules_script.lua): random calls of every item kind,
# on values of every shape (none, R2 of the right and of a wrong
# generation or length, a foreign string, another type), go to both, on
# two sets of keys of one Redis: the replies and the stored values must
# be the same, up to the wall-clock times each call wrote.  Then nginx
# end to end: it finds the module and stores with it, stores with the
# script when told to (rules_redis_native off), and goes on with the
# script when the module is unloaded under it.  Every malformed call is
# refused with its own error and changes nothing; an item that would
# grow a value past 512 MB is "not applied" (so are the items after it),
# logged at most once a second.  And a replica without the module gets
# the same values as its master (effects replication), whether written
# before it came (the module then builds no effects), while it was
# there, or while its link was down; an AOF gets them all.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use File::Temp ();
use RulesNginx;

my $module = $ENV{RULES_REDIS_MODULE}
    // "$FindBin::Bin/../build/rules_redis_module.so";
my $replay = $ENV{RULES_REPLAY} // "$FindBin::Bin/../build/rules-replay";
-f $module or plan skip_all => "no $module (make)";

my $redis = RulesNginx::start_redis(
    args => ['--loadmodule', $module, '--enable-module-command', 'yes']);
my $port = $redis->{port};
my $r = RulesNginx::redis_conn($port);

open my $sf, '<', "$FindBin::Bin/../src/rules_script.lua" or die $!;
my $script = do { local $/; <$sf> };
close $sf;
my $sha = RulesNginx::redis_call($r, 'SCRIPT', 'LOAD', $script);
like($sha, qr/^[0-9a-f]{40}\z/, 'the script loads');

# ---- the module against the script, call by call ----------------------

srand($ENV{RULES_NATIVE_SEED} // 110);

my @pool = map { "k$_" } 1 .. 3;
my $tolerance = 1000;      # ms between the two calls' clocks, at most

sub now_ms { int(time() * 1000) }

sub rand_bytes { join '', map { chr(int(rand(256))) } 1 .. $_[0] }

sub body {
    my $op = rand_bytes(int(rand(24)));
    return pack('d<V', 1_000_000 + int(rand(1e6)), length $op) . $op;
}

sub r2_value {
    my ($gen) = @_;
    my $snap = rand(3) < 1 ? '' : rand_bytes(1 + int(rand(30)));
    # a stamp 10 s away from any call's clock + ttl: whether an entry's
    # ttl reaches past it does not depend on the ms a call ran in
    return 'R2' . pack('d<d<V', $gen, now_ms() + 3_610_000, length $snap)
           . $snap;
}

# the gen and length of a value, as a writer that cached it would send
sub cached {
    my ($v) = @_;
    return (int(rand(1 << 30)), int(rand(400)))
        unless defined $v && !ref $v && length($v) >= 10 && rand(10) < 7;
    return (unpack('d<', substr($v, 2, 8)), length $v);
}

sub item {
    my ($values) = @_;
    my $k = 1 + int(rand(@pool));
    my $kind = (1, 2, 3, 4, 4, 4, 5, 5, 6, 6)[int(rand(10))];
    my ($gen, $len) = cached($values->{ $pool[$k - 1] });
    # (no ttl under a second: a key that expires between the two calls
    # and the checks would make the comparison racy)
    my $ttl = (1000, 60_000, 3_600_000, 86_400_000)[int(rand(4))];
    my $newgen = int(rand(2**52));
    my ($pttl, $arg, $split) = (0, body(), 0);

    if ($kind == 4 || $kind == 5) {
        $pttl = $kind == 5 || rand(2) < 1 ? 1000 + int(rand(1e7)) : 0;
        $split = length $arg;
        $arg .= r2_value($newgen);
    } elsif ($kind == 6) {
        $pttl = rand(2) < 1 ? 1000 + int(rand(1e7)) : 0;
        $arg = pack('d<', now_ms()) . $arg;
    } elsif ($kind == 3) {
        $arg = rand(4) < 1 ? '' : rand_bytes(1 + int(rand(40)));
        $len = length($values->{ $pool[$k - 1] } // '') if rand(3) < 1;
    }

    my $meta = pack('Cvd<d<d<d<d<V', $kind, $k, $ttl, $pttl, $gen, $newgen,
                    $len, $split);
    return $meta . $arg;
}

# the fields of an R2 value that hold a wall-clock time: the stamp, and
# each log entry's wall; (offsets) or () when it is not a whole R2 value
sub clock_fields {
    my ($v) = @_;
    return () unless defined $v && length($v) >= 22 && substr($v, 0, 2) eq 'R2';
    my @f = (10);
    my $pos = 22 + unpack('V', substr($v, 18, 4));
    while ($pos + 20 <= length $v) {
        push @f, $pos;
        $pos += 20 + unpack('V', substr($v, $pos + 16, 4));
    }
    return $pos == length $v ? @f : ();
}

# the same value, but for clock fields no more than $tolerance apart
sub same_value {
    my ($a, $b) = @_;
    return !defined $b if !defined $a;
    return 0 if !defined $b || ref $a || ref $b || length $a != length $b;
    return 1 if $a eq $b;
    my @f = clock_fields($a);
    return 0 unless @f && join(',', @f) eq join(',', clock_fields($b));
    my ($ma, $mb) = ($a, $b);
    for my $o (@f) {
        my ($ta, $tb) = map { unpack('d<', substr($_, $o, 8)) } $a, $b;
        # a stamp (or an extend's entry) may be the caller's clock: equal
        return 0 if abs($ta - $tb) > $tolerance;
        substr($ma, $o, 8) = substr($mb, $o, 8) = "\0" x 8;
    }
    return $ma eq $mb;
}

sub show {
    my ($v) = @_;
    return 'nil' unless defined $v;
    return "error($v->{err})" if ref $v eq 'HASH';
    return unpack('H*', $v);
}

my $nan = "\0\0\0\0\0\0\xf8\x7f";

# the meta of an append (kind 1) to the first key
sub append_meta {
    my ($ttl) = @_;
    return pack('Cvd<d<d<d<d<V', 1, 1, $ttl, 0, 0, 7, 0, 0);
}

my @bad_r2 = (
    'R2-D2 and C-3PO are droids from Star Wars',
    'R2' . pack('d<', 5) . $nan . pack('V', 0),
    'R2' . pack('d<d<V', 5, 9**9**9, 0),
    'R2' . $nan . pack('d<V', now_ms() + 3_610_000, 0),
    'R2' . pack('d<d<V', 5, 1e18, 0),
    # an R2 value, but with a stamp no writer sets (a fraction of a ms):
    # a write that finds it made the script's SET ... PX fail
    'R2' . pack('d<d<V', 5, now_ms() + 3_610_000.5, 0),
);

my ($calls, $diffs, %kinds) = (0, 0);
my $steps = $ENV{RULES_NATIVE_STEPS} // 400;

STEP: for my $step (1 .. $steps) {
    my %values = map { $_ => RulesNginx::redis_call($r, 'GET', "s:$_") }
                 @pool;

    # now and then, a value of another shape on both sides: another
    # type, a foreign string, nothing, or one that starts as R2 values do
    # and is not one (a snapshot past its end, a gen that is not a
    # number, a stamp that is not finite), or an R2 value whose stamp is
    # too far ahead to be a writer's
    if (rand(8) < 1) {
        my $k = $pool[int(rand(@pool))];
        my $what = int(rand(3 + @bad_r2));
        my $v = $what == 1 ? 'R1 legacy state'
              : $what >= 3 ? $bad_r2[$what - 3]
              : undef;
        # a legacy state has a TTL of its own, now and then one longer
        # than an append's (2 h: between 60 s's and 1 d's)
        my @px = $what == 1 && rand(2) < 1 ? ('PX', 7_200_000) : ();
        for my $side ('s', 'm') {
            RulesNginx::redis_call($r, 'DEL', "$side:$k");
            RulesNginx::redis_call($r, 'HSET', "$side:$k", 'f', 'v')
                if $what == 0;
            RulesNginx::redis_call($r, 'SET', "$side:$k", $v, @px)
                if defined $v;
        }
        $values{$k} = $v;
    }

    my @items = map { item(\%values) } 1 .. 1 + int(rand(4));
    $kinds{ ord $_ }++ for @items;

    my $script_reply = RulesNginx::redis_call($r, 'EVALSHA', $sha,
        scalar @pool, (map { "s:$_" } @pool), @items);
    my $module_reply = RulesNginx::redis_call($r, 'RULES.STORE', $sha,
        scalar @pool, (map { "m:$_" } @pool), @items);
    $calls++;

    my @why;
    if (ref $script_reply ne 'ARRAY' || ref $module_reply ne 'ARRAY') {
        push @why, 'replies: ' . show($script_reply) . ' / '
                   . show($module_reply)
            unless ref $script_reply eq 'HASH' && ref $module_reply eq 'HASH';
    } elsif (@$script_reply != @$module_reply) {
        push @why, 'reply lengths differ';
    } else {
        push @why, 'walls differ'
            if abs($script_reply->[0] - $module_reply->[0]) > $tolerance;
        for my $i (1 .. $#$script_reply) {
            push @why, "reply $i: " . show($script_reply->[$i]) . ' / '
                       . show($module_reply->[$i])
                unless same_value($script_reply->[$i], $module_reply->[$i]);
        }
    }

    for my $k (@pool) {
        my ($ts, $tm) = map { RulesNginx::redis_call($r, 'TYPE', "$_:$k") }
                        's', 'm';
        push @why, "$k: type $ts / $tm" if $ts ne $tm;
        next if $ts ne 'string';
        my ($vs, $vm) = map { RulesNginx::redis_call($r, 'GET', "$_:$k") }
                        's', 'm';
        push @why, "$k: " . show($vs) . ' / ' . show($vm)
            unless same_value($vs, $vm);
        my ($ps, $pm) = map { RulesNginx::redis_call($r, 'PTTL', "$_:$k") }
                        's', 'm';
        push @why, "$k: pttl $ps / $pm"
            if ($ps < 0) != ($pm < 0) || abs($ps - $pm) > $tolerance;
    }

    if (@why) {
        $diffs++;
        fail("step $step: the module and the script agree");
        diag("items: ", join(' ', map { unpack('H*', $_) } @items));
        diag($_) for @why;
        last STEP if $diffs >= 3;
    }
}

is($diffs, 0, "$calls calls: same replies, values and TTLs from the "
              . 'module and the script');
ok((keys %kinds) == 6, 'every item kind was sent') or diag(explain(\%kinds));

# A value of an earlier format (an R1 state) becomes the snapshot of an
# R2 value at its first append, and keeps its TTL when that reaches
# further than the append's ttl: the TTL covers every record it holds, the
# ttl only the event's rules (it was cut to the ttl's, and the key with
# its longer records expired early).  Each item kind that appends to what
# it finds: an append, a create that finds a value, an extend that finds
# another.
for my $cmd ('EVALSHA', 'RULES.STORE') {
    for my $kind (1, 5, 6) {
        for my $case ([7_200_000, 60_000, 7_200_000],
                      [5_000, 60_000, 75_000])
        {
            my ($px, $ttl, $want) = @$case;
            my $what = "$cmd, kind $kind, a legacy state of PX $px, ttl $ttl";
            RulesNginx::redis_call($r, 'SET', 's:legacy', "R1\0legacy",
                                   'PX', $px);
            my $arg = $kind == 6 ? pack('d<', now_ms()) . body() : body();
            my ($pttl, $split) = (0, 0);
            if ($kind == 5) {
                ($pttl, $split) = (60_000, length $arg);
                $arg .= r2_value(11);
            }
            my $reply = RulesNginx::redis_call($r, $cmd, $sha, 1, 's:legacy',
                pack('Cvd<d<d<d<d<V', $kind, 1, $ttl, $pttl, 7, 11, 9,
                     $split) . $arg);
            is(ref $reply eq 'ARRAY' ? $reply->[1] : show($reply),
               "R1\0legacy", "$what: the reply is the value found");
            my $v = RulesNginx::redis_call($r, 'GET', 's:legacy');
            is(substr($v // '', 22, 9), "R1\0legacy",
               "$what: it is the new value's snapshot");
            my $left = RulesNginx::redis_call($r, 'PTTL', 's:legacy');
            my $stamp = length($v // '') >= 18
                        ? unpack('d<', substr($v, 10, 8)) - now_ms() : -1;
            ok(abs($left - $want) < 60_000 && abs($stamp - $want) < 60_000,
               "$what: TTL and stamp about $want ms") or
                diag("PTTL $left, stamp in $stamp ms");
        }
    }
}
RulesNginx::redis_call($r, 'DEL', 's:legacy');

# malformed calls change nothing and say why
for my $bad (
    [ 'wrong SHA', ['0' x 40, 0], qr/^RULESVERSION/ ],
    [ 'bad numkeys', [$sha, 'x'], qr/numkeys/ ],
    # decimal digits only, as EVALSHA's (strtoll took these)
    map({ [ 'numkeys "' . s/\0/\\0/gr . '"', [$sha, $_, 's:k1',
                                 pack('Cvd<d<d<d<d<V', 1, 1, 60000, 0, 0,
                                      0, 0, 0) . 'x'], qr/bad numkeys/ ] }
        (" 1", "+1", "1\0junk", "1 ")),
    # an item is its 47-byte meta, then its argument
    [ 'an item of one byte', [$sha, 1, 's:k1', 'x'],
      qr/^ERR rules\.store: an item is shorter than its 47-byte meta\z/ ],
    [ 'an item of 46 bytes', [$sha, 1, 's:k1',
                              substr(append_meta(60000), 0, 46)],
      qr/^ERR rules\.store: an item is shorter than its 47-byte meta\z/ ],
    [ 'a good item, then one of 46 bytes', [$sha, 1, 's:k1',
        append_meta(60000) . 'x', substr(append_meta(60000), 0, 46)],
      qr/^ERR rules\.store: an item is shorter than its 47-byte meta\z/ ],
    [ 'key index 0', [$sha, 1, 's:k1',
                      pack('Cvd<d<d<d<d<V', 1, 0, 1, 0, 0, 0, 0, 0)],
      qr/out of range/ ],
    [ 'kind 9', [$sha, 1, 's:k1',
                 pack('Cvd<d<d<d<d<V', 9, 1, 1, 0, 0, 0, 0, 0)],
      qr/unknown item kind/ ],
    [ 'split past the argument', [$sha, 1, 's:k1',
        pack('Cvd<d<d<d<d<V', 4, 1, 1, 0, 0, 0, 0, 99) . 'ab'],
      qr/split/ ],
    # (a create's empty new value was acknowledged, no key made, and
    # SET k "" replicated)
    [ 'create of an empty value', [$sha, 1, 's:k1',
        pack('Cvd<d<d<d<d<V', 5, 1, 1, 60000, 0, 0, 0, 3) . 'abc'],
      qr/not an R2 value/ ],
    [ 'write of a value that is not R2', [$sha, 1, 's:k1',
        pack('Cvd<d<d<d<d<V', 4, 1, 1, 0, 0, 0, 0, 3) . 'abcdef'],
      qr/not an R2 value/ ],
    # the exact error each remaining check gives; every call below would
    # otherwise store (a valid append to s:k1 but for the one flaw)
    [ 'no numkeys', [$sha, ''],
      qr/^ERR rules\.store: numkeys is not a number\z/ ],
    # 32 digits: the number they spell (1) would be a good one
    [ 'numkeys of 32 digits', [$sha, '0' x 31 . '1', 's:k1',
                               append_meta(60000) . 'x'],
      qr/^ERR rules\.store: numkeys is not a number\z/ ],
    [ 'numkeys past the keys given', [$sha, 4, 's:k1',
                                      append_meta(60000) . 'x'],
      qr/^ERR rules\.store: bad numkeys\z/ ],
    # the numbers Redis could not take as an expiry or a length, each
    map({ [ "item numbers: $_->[0]", [$sha, 1, 's:k1',
            pack('Cvd<d<d<d<d<V', 1, 1, @{$_}[1 .. 5], 0) . 'x'],
            qr/^ERR rules\.store: an item's numbers are out of range\z/ ] }
        ([ 'ttl 1.5 ms', 1.5, 0, 0, 0, 0 ],
         [ 'ttl past 1e15 ms', 2e15, 0, 0, 0, 0 ],
         [ 'ttl NaN', unpack('d<', $nan), 0, 0, 0, 0 ],
         [ 'pttl -1', 60000, -1, 0, 0, 0 ],
         [ 'pttl 0.5', 60000, 0.5, 0, 0, 0 ],
         [ 'length 0.5', 60000, 0, 0, 0, 0.5 ],
         [ 'length -1', 60000, 0, 0, 0, -1 ],
         [ 'newgen infinite', 60000, 0, 0, 9**9**9, 0 ],
         [ 'newgen NaN', 60000, 0, 0, unpack('d<', $nan), 0 ])),
    # (without the check, a create of a key not there made one that
    # never expires)
    [ 'create without a pttl', [$sha, 1, 's:k1',
        pack('Cvd<d<d<d<d<V', 5, 1, 60000, 0, 0, 6, 0, 0) . r2_value(6)],
      qr/^ERR rules\.store: a create item needs a pttl\z/ ],
    [ 'extend of 7 bytes', [$sha, 1, 's:k1',
        pack('Cvd<d<d<d<d<V', 6, 1, 60000, 0, 0, 6, 0, 0) . 'abcdefg'],
      qr/^ERR rules\.store: an extend item's entry is too short\z/ ],
    # fewer than sha and numkeys
    [ 'no arguments', [],
      qr/^ERR wrong number of arguments for 'rules\.store' command\z/ ],
    [ 'the sha alone', [$sha],
      qr/^ERR wrong number of arguments for 'rules\.store' command\z/ ],
) {
    my ($name, $args, $re) = @$bad;
    my $before = RulesNginx::redis_call($r, 'DUMP', 's:k1');
    my $reply = RulesNginx::redis_call($r, 'RULES.STORE', @$args);
    ok(ref $reply eq 'HASH' && $reply->{err} =~ $re, "$name: an error")
        or diag(explain($reply));
    is_deeply(RulesNginx::redis_call($r, 'DUMP', 's:k1'), $before,
              "$name: nothing changed");
}

# An argument longer than a value can be (512 MB): refused before any key
# changes.  Redis takes one only with proto-max-bulk-len raised; the
# command is written in pieces (not one 512 MB string more)
{
    RulesNginx::redis_call($r, 'CONFIG', 'SET', 'proto-max-bulk-len',
                           1 << 30);
    my $before = RulesNginx::redis_call($r, 'DUMP', 's:k1');
    my $long = RulesNginx::redis_conn($port);
    my $arg = 'x' x (512 * 1024 * 1024 + 1);
    my @args = ('RULES.STORE', $sha, 1, 's:k1');
    my $meta = append_meta(60000);
    print $long '*' . (@args + 1) . "\r\n",
                map({ '$' . length($_) . "\r\n$_\r\n" } @args),
                '$' . (length($meta) + length($arg)) . "\r\n", $meta;
    print $long $arg, "\r\n";
    undef $arg;
    my $reply = RulesNginx::_redis_reply($long);
    close $long;
    is_deeply($reply, { err => 'ERR rules.store: an item\'s argument is '
                               . 'longer than a value can be' },
              'an argument of 512 MB + 1: an error');
    is_deeply(RulesNginx::redis_call($r, 'DUMP', 's:k1'), $before,
              'an argument of 512 MB + 1: nothing changed');
    RulesNginx::redis_call($r, 'CONFIG', 'SET', 'proto-max-bulk-len',
                           512 * 1024 * 1024);
}

# An item whose value would pass 512 MB is an error element, and its key
# stays as it was (it was answered as stored, the value it replaced sent
# back, and a foreign key deleted on the master alone)
{
    my $big = 512 * 1024 * 1024 - 12;
    RulesNginx::redis_call($r, 'SETRANGE', 's:big', $big - 1, 'x');
    my $reply = RulesNginx::redis_call($r, 'RULES.STORE', $sha, 1, 's:big',
        pack('Cvd<d<d<d<d<V', 1, 1, 60000, 0, 0, 7, 0, 0) . body());
    ok(ref $reply eq 'ARRAY' && @$reply == 2 && ref $reply->[1] eq 'HASH'
       && $reply->[1]{err} =~ /not applied/,
       'an append past 512 MB: an error element')
        or diag(ref $reply eq 'ARRAY'
                ? explain([map { ref $_ ? $_ : length($_ // '') } @$reply])
                : explain($reply));
    is(RulesNginx::redis_call($r, 'STRLEN', 's:big'), $big,
       'an append past 512 MB: the value as it was');
    RulesNginx::redis_call($r, 'DEL', 's:big');
}

# Every way an item finds a value it cannot grow past 512 MB (the R2
# value of 512 MB - 12 of a Redis of its own, with a log file): the item
# is a "not applied" error element, and so is every item after it in the
# call (the call broke off there), while the items before it stay
# applied.  Each such item is logged at most once a second (a key that
# cannot grow fails every event on it): the next line says how many were
# not
{
    my $logdir = File::Temp::tempdir('rules-log-XXXXXX', TMPDIR => 1,
                                     CLEANUP => 1);
    my $logfile = "$logdir/redis.log";
    my $lredis = RulesNginx::start_redis(
        args => ['--loadmodule', $module, '--logfile', $logfile]);
    my $lc = RulesNginx::redis_conn($lredis->{port});
    my $big = 512 * 1024 * 1024 - 12;
    my $head = 'R2' . pack('d<d<V', 5, now_ms() + 3_610_000, 0);
    RulesNginx::redis_call($lc, 'SETRANGE', 's:r2', $big - 1, 'x');
    RulesNginx::redis_call($lc, 'SETRANGE', 's:r2', 0, $head);

    # the keys s:ok (index 1) and s:r2 (2); a call that leaves a reply
    # short would leave the test waiting
    my $store = sub {
        local $SIG{ALRM} = sub { die "RULES.STORE: no whole reply\n" };
        alarm 30;
        my $reply = RulesNginx::redis_call($lc, 'RULES.STORE', $sha, 2,
                                           's:ok', 's:r2', @_);
        alarm 0;
        return $reply;
    };
    my $meta = sub {       # kind, key, gen, length
        my ($kind, $k, $gen, $len, $split) = @_;
        return pack('Cvd<d<d<d<d<V', $kind, $k, 60000, 0, $gen, 7, $len,
                    $split // 0);
    };
    my $r2_as_was = sub {
        my ($name) = @_;
        is(RulesNginx::redis_call($lc, 'STRLEN', 's:r2'), $big,
           "$name: the value's length as it was");
        is(RulesNginx::redis_call($lc, 'GETRANGE', 's:r2', 0, 21), $head,
           "$name: its header as it was");
        is(RulesNginx::redis_call($lc, 'PTTL', 's:r2'), -1,
           "$name: no TTL, as before");
    };
    my $not_applied = { err => 'ERR rules.store: not applied' };

    # the log lines the failures must give (as rules_store_module.c
    # decides, from the wall each reply tells): a line when the second
    # of the call's wall is not the last line's, else one more unlogged
    my ($logged_sec, $unlogged, @want) = (0, 0);
    my $failed = sub {
        my ($reply, $item, $n) = @_;
        my $sec = int($reply->[0] / 1000);
        if ($sec != $logged_sec) {
            push @want, "item $item of $n could not be stored (value too "
                        . "long) ($unlogged more since the last such line)";
            ($logged_sec, $unlogged) = ($sec, 0);
        } else {
            $unlogged++;
        }
    };

    my @b = map { body() } 1 .. 3;
    my $reply = $store->($meta->(1, 1, 0, 0) . $b[0],
                         $meta->(1, 2, 0, 0) . $b[1],
                         $meta->(1, 1, 0, 0) . $b[2]);
    is_deeply($reply, [$reply->[0], undef, $not_applied, $not_applied],
              'append, append past 512 MB, append: the first stored, the '
              . 'others not applied')
        or diag(explain($reply));
    $failed->($reply, 2, 3);
    my $ok = RulesNginx::redis_call($lc, 'GET', 's:ok');
    is(length($ok // ''), 22 + 8 + length $b[0],
       'the first item\'s key holds its entry alone');
    is(substr($ok // '', -length $b[0]), $b[0], 'its entry');
    $r2_as_was->('an append past 512 MB');

    for my $case (
        [ 'a write that finds another value',
          [$meta->(4, 2, 99, $big, length $b[0]), $b[0] . r2_value(9)] ],
        [ 'an extend of the value it cached',
          [$meta->(6, 2, 5, $big), pack('d<', now_ms()) . $b[1]] ],
        [ 'an extend that finds another value',
          [$meta->(6, 2, 6, $big), pack('d<', now_ms()) . $b[1]] ],
        [ 'a compaction to a longer snapshot',
          [$meta->(3, 2, 5, 22), 'c' x 100] ],
    ) {
        my ($name, $item) = @$case;
        my $reply = $store->(join '', @$item);
        is_deeply($reply, [$reply->[0], $not_applied],
                  "$name, past 512 MB: not applied")
            or diag(explain(ref $reply ne 'ARRAY' ? $reply
                            : [map { ref $_ ? $_ : length($_ // '') }
                               @$reply]));
        $failed->($reply, 1, 1) if ref $reply eq 'ARRAY';
        $r2_as_was->("$name, past 512 MB");
    }

    # (the calls above take ms: more failures in the second of the last
    # line only if all of them fell each into a second of its own)
    for (1 .. 20) {
        last if $unlogged;
        $failed->($store->($meta->(1, 2, 0, 0) . $b[1]), 1, 1);
    }
    cmp_ok($unlogged, '>', 0, "$unlogged failures in the second of the "
                              . 'last line');
    # the next second: a line, with their count
    sleep 1.1;
    $failed->($store->($meta->(1, 2, 0, 0) . $b[1]), 1, 1);
    like($want[-1], qr/\([1-9]\d* more since/,
         'the last line to come counts failures not logged');

    my @lines;
    my $lines = sub {
        open my $lf, '<', $logfile or return 0;
        @lines = map { /<rules> rules\.store: (.*)$/ ? $1 : () } <$lf>;
        close $lf;
        return @lines >= @want;
    };
    RulesNginx::poll(5, $lines);
    is_deeply(\@lines, \@want, scalar(@want) . ' log lines, the ones '
              . 'expected')
        or diag(explain(\@lines), explain(\@want));
    close $lc;
    RulesNginx::stop_pid($lredis->{pid});
}

# A large compaction does not leave its buffer in Redis' memory
{
    my $v = r2_value(5);
    RulesNginx::redis_call($r, 'SET', 's:c', $v);
    my $used = sub {
        RulesNginx::redis_call($r, 'INFO', 'memory') =~ /^used_memory:(\d+)/m;
        return $1;
    };
    my $before = $used->();
    my $big = RulesNginx::redis_conn($port);
    my $reply = RulesNginx::redis_call($big, 'RULES.STORE', $sha, 1, 's:c',
        pack('Cvd<d<d<d<d<V', 3, 1, 60000, 0, 5, 6, 0 + length $v, 0)
        . 'y' x (8 << 20));
    is_deeply($reply->[1], 1, 'an 8 MB compaction is applied');
    close $big;
    RulesNginx::redis_call($r, 'DEL', 's:c');
    my $after;
    for (1 .. 50) {
        $after = $used->();
        last if $after < $before + (1 << 20);
        sleep 0.1;
    }
    cmp_ok($after, '<', $before + (1 << 20),
           'after it, Redis holds no more than a MB more than before');
}

# Appends grow a value to its length, not as APPEND grows a string (to
# twice its new length): an aged value of many appends held about as
# much unused memory as data.  Appends (kind 1) and the extends of a
# writer that cached the value (kind 6), 100-byte bodies, up to ~8 KB:
# what Redis holds for the key stays within the allocator's size classes
# (25 %) of the value's length, and a key's own overhead
{
    RulesNginx::redis_call($r, 'SET', 's:g', r2_value(8));
    my ($worst, $at, $extended) = (0, 0, 0);

    for my $i (1 .. 80) {
        my $v = RulesNginx::redis_call($r, 'GET', 's:g');
        my $body = pack('d<V', 1_000_000 + $i, 88) . ('b' x 88);
        my ($meta, $arg);
        if ($i % 2) {
            ($meta, $arg) = (pack('Cvd<d<d<d<d<V', 1, 1, 60000, 0, 0, 9, 0, 0),
                             $body);
        } else {
            $meta = pack('Cvd<d<d<d<d<V', 6, 1, 60000, 0,
                         unpack('d<', substr($v, 2, 8)), 9, length $v, 0);
            $arg = pack('d<', now_ms()) . $body;
        }
        my $reply = RulesNginx::redis_call($r, 'RULES.STORE', $sha, 1, 's:g',
                                           $meta . $arg);
        $extended++ if ref $reply eq 'ARRAY' && !($i % 2)
                       && ($reply->[1] // '') eq '1';

        my $len = RulesNginx::redis_call($r, 'STRLEN', 's:g');
        next if $len < 1024;
        my $ratio = (RulesNginx::redis_call($r, 'MEMORY', 'USAGE', 's:g')
                     - 256) / $len;
        ($worst, $at) = ($ratio, $len) if $ratio > $worst;
    }

    is($extended, 40, 'every extend found the value it cached');
    cmp_ok(RulesNginx::redis_call($r, 'STRLEN', 's:g'), '>', 8000,
           'the value grew past 8 KB');
    cmp_ok($worst, '<=', 1.3, 'Redis held at most 1.3 times the value\'s '
           . 'length (+ 256 bytes) after each append')
        or diag("at $at bytes: $worst");
    RulesNginx::redis_call($r, 'DEL', 's:g');
}

# Whole writes (kind 4, by a writer that cached the value) change a value
# in place too: grown to its length and cut back to it, the key's TTL kept
# when the write sets none, and its object kept, so its LFU count (a state
# written on every event is a hot key, not a new one each time it grows:
# under allkeys-lfu a new object would be an eviction candidate)
{
    my %was = map {
        $_ => RulesNginx::redis_call($r, 'CONFIG', 'GET', $_)->[1]
    } 'maxmemory-policy', 'lfu-log-factor';
    is(RulesNginx::redis_call($r, 'CONFIG', 'SET', 'maxmemory-policy',
                              'allkeys-lfu'), 'OK', 'allkeys-lfu set');
    is(RulesNginx::redis_call($r, 'CONFIG', 'SET', 'lfu-log-factor', '0'),
       'OK', 'an LFU count that counts every access');
    RulesNginx::redis_call($r, 'SET', 's:w', r2_value(8), 'PX', 3_600_000);
    my ($written, $same, $freq, $held, $cut) = (0, 0);
    # the worst ratio of what Redis holds for the key, less 256 bytes, to
    # the value's length, and the length it was seen at: growing, cut
    my %worst = (grown => [0, 0], cut => [0, 0]);

    # a whole write of a new value with a snapshot of $size bytes
    my $write = sub {
        my ($size, $newgen) = @_;
        my $v = RulesNginx::redis_call($r, 'GET', 's:w');
        my $new = 'R2' . pack('d<d<V', $newgen, now_ms() + 3_610_000, $size)
                  . ('w' x $size);
        my $entry = body();
        my $meta = pack('Cvd<d<d<d<d<V', 4, 1, 60000, 0,
                        unpack('d<', substr($v, 2, 8)), $newgen, length $v,
                        length $entry);
        my $reply = RulesNginx::redis_call($r, 'RULES.STORE', $sha, 1, 's:w',
                                           $meta . $entry . $new);
        $written++ if ref $reply eq 'ARRAY' && ($reply->[1] // '') eq '1';
        $same++ if RulesNginx::redis_call($r, 'GET', 's:w') eq $new;
        # what Redis holds for the key, less 256 bytes, over the length
        return (RulesNginx::redis_call($r, 'MEMORY', 'USAGE', 's:w') - 256)
               / length $new;
    };

    # 100 bytes more each time up to 4 KB, then 155 bytes less, to 900,
    # then 100 bytes more again, 4 times
    for my $i (1 .. 64) {
        my $size = $i <= 40 ? 100 * $i
                 : $i <= 60 ? 4000 - 155 * ($i - 40)
                 : 900 + 100 * ($i - 60);
        $held = $write->($size, 9 + $i);
        $freq = RulesNginx::redis_call($r, 'OBJECT', 'FREQ', 's:w')
            if $i == 40;
        $cut = $held if $i == 60;
        next if $size < 1000;
        my $w = $worst{ $i <= 40 ? 'grown' : 'cut' };
        @$w = ($held, $size + 22) if $held > $w->[0];
    }

    is($written, 64, 'every whole write found the value it cached');
    is($same, 64, 'and left the value it sent');
    cmp_ok(RulesNginx::redis_call($r, 'PTTL', 's:w'), '>', 3_000_000,
           'the TTL set before the writes is kept');
    like($freq, qr/^\d+\z/, 'OBJECT FREQ answers a count');
    cmp_ok($freq, '>=', 40, 'after 40 writes that each grew the value, '
           . 'its LFU count is at least 40: the key kept its object')
        or diag("OBJECT FREQ $freq");
    cmp_ok($worst{grown}[0], '<=', 1.3, 'Redis held at most 1.3 times the '
           . 'value\'s length (+ 256 bytes) after each write that grew it')
        or diag("at $worst{grown}[1] bytes: $worst{grown}[0]");
    # a cut reallocates the string once less than half of it is used
    cmp_ok($worst{cut}[0], '<=', 2.1, 'and at most about twice after each '
           . 'one that cut it, or grew it into what a cut left')
        or diag("at $worst{cut}[1] bytes: $worst{cut}[0]");
    cmp_ok($cut, '<=', 1.3, 'and at most 1.3 times after the cuts from 4 '
           . 'KB to 900 bytes') or diag($cut);

    # past 1 MB Redis grows a string by 1 MB, which the cut back would not
    # trim: such a growth makes a new string of its length, with the old
    # one's TTL and LFU count
    $freq = RulesNginx::redis_call($r, 'OBJECT', 'FREQ', 's:w');
    $held = $write->(1_500_000, 100);
    cmp_ok($held, '<=', 1.25, 'a write that grew the value to 1.5 MB left '
           . 'it held at its length (in place: with 1 MB more)')
        or diag($held);
    is($written, 65, 'it was a whole write');
    is($same, 65, 'which left the value it sent');
    cmp_ok(RulesNginx::redis_call($r, 'PTTL', 's:w'), '>', 3_000_000,
           'the key kept its TTL');
    cmp_ok(RulesNginx::redis_call($r, 'OBJECT', 'FREQ', 's:w'), '>=', $freq,
           'and its LFU count');
    RulesNginx::redis_call($r, 'DEL', 's:w');
    RulesNginx::redis_call($r, 'CONFIG', 'SET', $_, $was{$_}) for keys %was;
}

# Effects fire the keyspace events their commands fire, as the script's
# do; a compaction that changes nothing does not touch a WATCH
{
    RulesNginx::redis_call($r, 'CONFIG', 'SET', 'notify-keyspace-events',
                           'KA');
    my $sub = RulesNginx::redis_conn($port);
    RulesNginx::redis_call($sub, 'PSUBSCRIBE', '__keyspace@0__:s:ev*');
    my $store;
    # the same calls, to the module (RULES.STORE) or the script (EVALSHA),
    # on keys of their own; the events their keys got, in order
    my $events_of = sub {
        my ($cmd, $k) = @_;
        $store = sub {
            my ($key, @item) = @_;     # an item: its meta, its argument
            RulesNginx::redis_call($r, $cmd, $sha, 1, $key, join '', @item);
        };
        $store->("s:ev$k", pack('Cvd<d<d<d<d<V', 1, 1, 60000, 0, 0, 7, 0, 0),
                 body());
        my $v = RulesNginx::redis_call($r, 'GET', "s:ev$k");
        $store->("s:ev$k", pack('Cvd<d<d<d<d<V', 6, 1, 60000, 120000, 7, 7,
                                length $v, 0), pack('d<', now_ms()) . body());
        $store->("s:ev${k}x", pack('Cvd<d<d<d<d<V', 3, 1, 60000, 0, 9, 9, 0,
                                   0), '');
        # (a PING's pong follows the events: sent without reading a reply)
        print $sub "*1\r\n\$4\r\nPING\r\n";
        my @events;
        while (1) {
            my $m = RulesNginx::_redis_reply($sub);
            last if ref $m eq 'ARRAY' && lc($m->[0]) eq 'pong';
            push @events, "$m->[2]:$m->[3]" if ref $m eq 'ARRAY'
                                               && $m->[0] eq 'pmessage';
        }
        s/^__keyspace\@0__:s:ev\d+// for @events;
        return \@events;
    };
    my $script_events = $events_of->('EVALSHA', 3);
    is_deeply($events_of->('RULES.STORE', 1), $script_events,
              'keyspace events as the script fires them (' . join(' ',
              @$script_events) . '); none for a compaction of nothing');
    is_deeply($script_events, [':set', ':expire', ':append', ':expire',
                               ':setrange'],
              'which are set and expire, then append, expire and setrange')
        or diag(explain($script_events));
    close $sub;
    RulesNginx::redis_call($r, 'CONFIG', 'SET', 'notify-keyspace-events', '');

    my $w = RulesNginx::redis_conn($port);
    RulesNginx::redis_call($w, 'WATCH', 's:ev1');
    $store->('s:ev1', pack('Cvd<d<d<d<d<V', 3, 1, 60000, 0, 1234, 9, 0, 0),
             'zz');
    RulesNginx::redis_call($w, 'MULTI');
    RulesNginx::redis_call($w, 'PING');
    is_deeply(RulesNginx::redis_call($w, 'EXEC'), ['PONG'],
              'a compaction that finds another value leaves a WATCH alone');
    RulesNginx::redis_call($w, 'WATCH', 's:ev1');
    my $v = RulesNginx::redis_call($r, 'GET', 's:ev1');
    $store->('s:ev1', pack('Cvd<d<d<d<d<V', 3, 1, 60000, 0, 7, 9,
                           length $v, 0), 'zz');
    RulesNginx::redis_call($w, 'MULTI');
    RulesNginx::redis_call($w, 'PING');
    is(RulesNginx::redis_call($w, 'EXEC'), undef,
       'a compaction that applies aborts the WATCHing transaction');
    close $w;
    RulesNginx::redis_call($r, 'DEL', 's:ev1');
}

# ---- nginx finds the module and stores with it ------------------------

my $rules = <<'_EOC_';
{"rules": [
  {"id": "twice", "kind": "segment", "key": "uid", "type": "count",
   "min": 2, "within": "1h"},
  {"id": "burst", "kind": "fraud", "key": "ip", "type": "count",
   "min": 3, "within": "10s"}
]}
_EOC_

sub calls {
    my %c;
    my $info = RulesNginx::redis_call($r, 'INFO', 'commandstats');
    $c{$1} = $2 while $info =~ /^cmdstat_(\S+?):calls=(\d+)/mg;
    return { store => $c{'rules.store'} // 0, evalsha => $c{evalsha} // 0,
             eval => $c{eval} // 0 };
}

sub nginx_with {
    my ($name, $extra) = @_;
    return RulesNginx::start_nginx(
        prefix  => "$FindBin::Bin/servroot-110-$name",
        workers => 1,
        files   => { 'rules.json' => $rules },
        http    => RulesNginx::pixel_http(
            store  => "rules_redis 127.0.0.1:$port;",
            prefix => "t110$name:",
            extra  => $extra,
            fields => ['uid', 'ip']));
}

# events of two users on one ip: (matched ids) after each
sub run_events {
    my ($ngx, $tag) = @_;
    my @got;
    for my $i (1 .. 4) {
        my $uid = $i % 2 ? "a$tag" : "b$tag";
        my ($st, $h) = RulesNginx::get($ngx->{port},
            "/px?uid=$uid&ip=ip$tag&ts=" . (1000 * $i));
        push @got, ($h->{'x-status'} // 'none') . ':' . ($h->{'x-rules'} // '');
    }
    return \@got;
}

my $expected = ['ok:', 'ok:', 'ok:twice,burst', 'ok:twice,burst'];

sub wait_connected {
    my ($ngx) = @_;
    RulesNginx::wait_log($ngx, qr/rules redis \S+: connected/);
}

# A state key holding a value that starts as R2 values do and is not one
# (or one whose stamp no writer set): the events are evaluated on a state
# of their own and the key gets a TTL.  (A snapshot past the value's end
# made the reader and Redis disagree on what the value was: every write
# was refused, nothing matched, and the key never expired.)
sub bad_values {
    my ($ngx, $store, $prefix) = @_;
    for my $i (0 .. $#bad_r2) {
        my $uid = "bad$i";
        RulesNginx::redis_call($r, 'SET', "$prefix\{uid:$uid}", $bad_r2[$i]);
        my @got;
        for my $e (1 .. 3) {
            my ($st, $h) = RulesNginx::get($ngx->{port},
                                           "/px?uid=$uid&ts=" . (1000 * $e));
            push @got, ($h->{'x-status'} // 'none') . ':'
                       . ($h->{'x-rules'} // '');
        }
        is_deeply(\@got, ['ok:', 'ok:twice', 'ok:twice'],
                  "$store, bad R2 value $i: the events count from nothing");
        my $pttl = RulesNginx::redis_call($r, 'PTTL', "$prefix\{uid:$uid}");
        cmp_ok($pttl, '>', 0, "$store, bad R2 value $i: the key has a TTL");
    }
}

my $ngx = nginx_with('native', '');
wait_connected($ngx);
my $c0 = calls();
is_deeply(run_events($ngx, 1), $expected, 'nginx with the module: results');
my $c1 = calls();
cmp_ok($c1->{store} - $c0->{store}, '>=', 4, 'stored with RULES.STORE');
is($c1->{evalsha} - $c0->{evalsha}, 0, 'no EVALSHA');
like(RulesNginx::error_log($ngx),
     qr/connected \(states stored with RULES\.STORE\)/,
     'the log says which way states are stored');

sub metrics {
    my ($ngx) = @_;
    my (undef, undef, $body) = RulesNginx::get($ngx->{port}, '/metrics');
    my %m = $body =~ /^(nginx_rules_redis_(?:native_)?calls_total) (\d+)$/mg;
    return ($m{nginx_rules_redis_native_calls_total} // -1,
            $m{nginx_rules_redis_calls_total} // -1);
}
my ($native1, $calls1) = metrics($ngx);
cmp_ok($native1, '>=', 4, "nginx_rules_redis_native_calls_total: $native1");
is($native1, $calls1, 'every call was a RULES.STORE');

# the module unloaded under nginx: the call goes again as EVAL, the next
# ones as EVALSHA, and nothing is lost
is(RulesNginx::redis_call($r, 'MODULE', 'UNLOAD', 'rules'), 'OK',
   'the module unloaded');
is_deeply(run_events($ngx, 2), $expected, 'without the module: results');
my $c2 = calls();
cmp_ok($c2->{eval} - $c1->{eval}, '>=', 1, 'the first call again as EVAL');
cmp_ok($c2->{evalsha} - $c1->{evalsha}, '>=', 3, 'EVALSHA from then on');
like(RulesNginx::error_log($ngx), qr/RULES\.STORE refused .*using the script/,
     'the switch is logged');
my ($native2, $calls2) = metrics($ngx);
cmp_ok($native2 - $native1, '<=', 1, 'no RULES.STORE after the refusal');
cmp_ok($calls2 - $calls1, '>=', 4, 'the calls went on');
RulesNginx::stop_nginx($ngx);

is(RulesNginx::redis_call($r, 'MODULE', 'LOAD', $module), 'OK',
   'the module loaded again');

$ngx = nginx_with('script', 'rules_redis_native off;');
wait_connected($ngx);
my $c3 = calls();
is_deeply(run_events($ngx, 3), $expected, 'rules_redis_native off: results');
my $c4 = calls();
is($c4->{store}, $c3->{store}, 'no RULES.STORE');
cmp_ok($c4->{evalsha} - $c3->{evalsha}, '>=', 4, 'EVALSHA');
is((metrics($ngx))[0], 0, 'nginx_rules_redis_native_calls_total 0');
like(RulesNginx::error_log($ngx),
     qr/\[notice\].*: connected \(states stored with the script\)$/m,
     'the log says at notice that states are stored with the script');
bad_values($ngx, 'script', 't110script:');
RulesNginx::stop_nginx($ngx);

$ngx = nginx_with('native', '');
wait_connected($ngx);
bad_values($ngx, 'module', 't110native:');
RulesNginx::stop_nginx($ngx);

# ---- effects: skipped with nowhere to go, a replica without the module

# rules_* fields of INFO rules (the module's effect counters)
sub rules_info {
    my ($conn) = @_;
    my %f = RulesNginx::redis_call($conn, 'INFO', 'rules')
            =~ /^rules_(\w+):(\d+)/mg;
    return \%f;
}

sub wait_info {
    my ($conn, $field, $want) = @_;
    return RulesNginx::poll(5, sub {
        (rules_info($conn)->{$field} // -1) == $want;
    }) ? 1 : 0;
}

# the master's stream applied by the replica (WAIT counts only this
# connection's writes; after a diskless full sync, the master streams
# once the replica's first REPLCONF ACK came)
sub wait_stream {
    my ($master, $replica) = @_;
    my ($moff) = RulesNginx::redis_call($master, 'INFO', 'replication')
                 =~ /master_repl_offset:(\d+)/;
    my $roff = -1;
    for (1 .. 300) {
        ($roff) = (RulesNginx::redis_call($replica, 'INFO', 'replication')
                   // '') =~ /slave_repl_offset:(\d+)/;
        return 1 if defined $roff && $roff >= $moff;
        sleep 0.1;
    }
    diag("replica offset " . ($roff // 'none') . ", master's $moff");
    return 0;
}

sub wait_link {
    my ($master, $replica) = @_;
    my $link = '';
    for (1 .. 300) {
        $link = RulesNginx::redis_call($replica, 'INFO', 'replication') // '';
        return 1 if $link =~ /master_link_status:up/
                    && RulesNginx::redis_call($master, 'INFO', 'replication')
                       =~ /^slave0:.*state=online/m;
        sleep 0.1;
    }
    diag($link);
    return 0;
}

# the keys matching pattern hold the same values and TTLs on a and b
sub same_keys {
    my ($a, $b, $pattern, $name) = @_;
    my @keys = sort @{ RulesNginx::redis_call($a, 'KEYS', $pattern) };
    cmp_ok(scalar @keys, '>', 20, "$name: " . scalar(@keys) . ' state keys');
    my ($same, $ttl, $shown) = (0, 0, 0);
    for my $k (@keys) {
        my ($va, $vb) = map { RulesNginx::redis_call($_, 'GET', $k) } $a, $b;
        if (($va // '') eq ($vb // 'none')) {
            $same++;
        } elsif (++$shown <= 3) {
            diag("$k: " . show($va) . ' / ' . show($vb));
        }
        my ($pa, $pb) = map { RulesNginx::redis_call($_, 'PTTL', $k) } $a, $b;
        $ttl++ if $pa > 0 && $pb > 0 && abs($pa - $pb) < $tolerance;
    }
    is($same, scalar @keys, "$name: the same values");
    is($ttl, scalar @keys, "$name: the same TTLs");
}

SKIP: {
    skip "no $replay", 41 unless -x $replay;

    my $dir = "$FindBin::Bin/servroot-110-native";
    open my $rf, '>', "$dir/rules.json" or die;
    print $rf $rules;
    close $rf;
    my $events = join '', map {
        sprintf qq({"uid":"u%d","ip":"i%d","ts":%d}\n),
                $_ % 17, $_ % 5, 1000 * $_
    } 1 .. 600;
    open my $ef, '>', "$dir/events.jsonl" or die;
    print $ef $events;
    close $ef;

    my $replay_into = sub {
        my ($p, $prefix, @args) = @_;
        system("$replay --rules $dir/rules.json --redis 127.0.0.1:$p "
               . "--prefix $prefix @args $dir/events.jsonl > /dev/null") == 0
            or die "rules-replay failed";
    };

    # no replica, no backlog, no AOF: Redis would drop the effects, the
    # module does not build them
    ok(wait_info($r, 'replication_known_off', 1),
       'no replica and no backlog: replication known off');
    my $changes = sub {
        (RulesNginx::redis_call($_[0], 'INFO', 'persistence') // '')
            =~ /rdb_changes_since_last_save:(\d+)/;
        return $1 // -1;
    };
    my $i0 = rules_info($r);
    my $d0 = $changes->($r);
    $replay_into->($port, 'early:');
    my $i1 = rules_info($r);
    my $skipped = $i1->{effects_skipped} - $i0->{effects_skipped};
    cmp_ok($skipped, '>', 100, "effects skipped: $skipped");
    is($i1->{effects_replicated}, $i0->{effects_replicated},
       'none replicated');
    # (the RDB save points count changes: a skipped effect is one)
    cmp_ok($changes->($r) - $d0, '>=', $skipped,
           'each skipped effect counted as a change');

    # no 5 s wait for more replicas before the first full sync
    RulesNginx::redis_call($r, 'CONFIG', 'SET', 'repl-diskless-sync-delay',
                           0);
    my $replica = RulesNginx::start_redis(
        args => ['--replicaof', '127.0.0.1', $port]);
    my $rr = RulesNginx::redis_conn($replica->{port});
    ok(wait_link($r, $rr), 'the replica is in sync');
    is(rules_info($r)->{replication_known_off}, 0,
       'a replica: replication on');

    for my $args ([], ['--cache', 1_000_000], ['--writers', 3],
                  ['--writers', 3, '--extend-min', 1])
    {
        $replay_into->($port, 'repl:', @$args);
    }
    my $i2 = rules_info($r);
    is($i2->{effects_skipped}, $i1->{effects_skipped},
       'with a replica: none skipped');
    cmp_ok($i2->{effects_replicated}, '>', $i1->{effects_replicated},
           'effects replicated');
    ok(wait_stream($r, $rr), 'the replica applied the stream');
    same_keys($r, $rr, 'early:*', 'written before the replica (full sync)');
    same_keys($r, $rr, 'repl:*', 'written with the replica');

    # a compaction of a whole value to nothing deletes the key: the DEL
    # reaches the replica too
    my $cv = r2_value(5);
    RulesNginx::redis_call($r, 'SET', 'cdel:k', $cv);
    ok(wait_stream($r, $rr)
       && RulesNginx::redis_call($rr, 'EXISTS', 'cdel:k') == 1,
       'a value on the replica');
    is_deeply(RulesNginx::redis_call($r, 'RULES.STORE', $sha, 1, 'cdel:k',
                  pack('Cvd<d<d<d<d<V', 3, 1, 60000, 0, 5, 6, length $cv,
                       0))->[1],
              1, 'its compaction to nothing is applied');
    is(RulesNginx::redis_call($r, 'EXISTS', 'cdel:k'), 0,
       'the key is gone on the master');
    ok(wait_stream($r, $rr), 'the replica applied the stream');
    is(RulesNginx::redis_call($rr, 'EXISTS', 'cdel:k'), 0,
       'and on the replica');

    # the link breaks; writes meanwhile reach the replica through the
    # backlog (a partial resync): they must be in it
    my ($partial0) = RulesNginx::redis_call($r, 'INFO', 'stats')
                     =~ /sync_partial_ok:(\d+)/;
    RulesNginx::redis_call($r, 'CLIENT', 'KILL', 'TYPE', 'replica');
    $replay_into->($port, 'gap:');
    ok(wait_link($r, $rr), 'the replica is back');
    my ($partial1) = RulesNginx::redis_call($r, 'INFO', 'stats')
                     =~ /sync_partial_ok:(\d+)/;
    cmp_ok($partial1, '>', $partial0, 'by a partial resync');
    ok(wait_stream($r, $rr), 'the replica applied the stream');
    same_keys($r, $rr, 'gap:*', 'written while the link was down');

    # the replica gone, the backlog stays (repl-backlog-ttl): a replica
    # may resume from it, so effects still go to it
    RulesNginx::stop_pid($replica->{pid});
    sleep 0.5;
    my $i3 = rules_info($r);
    $replay_into->($port, 'late:');
    my $i4 = rules_info($r);
    is($i4->{replication_known_off}, 0, 'a backlog: replication on');
    is($i4->{effects_skipped}, $i3->{effects_skipped},
       'with a backlog: none skipped');

    # a Redis of its own, replication known off: the AOF switched on at
    # run time gets every effect; made a replica, then a master again, it
    # keeps the backlog its sync made: replication stays on
    my $solo = RulesNginx::start_redis(args => ['--loadmodule', $module]);
    my $rs = RulesNginx::redis_conn($solo->{port});
    ok(wait_info($rs, 'replication_known_off', 1), 'alone: known off');
    RulesNginx::redis_call($rs, 'CONFIG', 'SET', 'appendonly', 'yes');
    my $s0 = rules_info($rs);
    $replay_into->($solo->{port}, 'aofrt:');
    my $s1 = rules_info($rs);
    is($s1->{effects_skipped}, $s0->{effects_skipped},
       'AOF switched on: none skipped');
    cmp_ok($s1->{effects_replicated}, '>', $s0->{effects_replicated},
           'AOF switched on: effects to it');
    RulesNginx::redis_call($rs, 'CONFIG', 'SET', 'appendonly', 'no');
    # a replica has no backlog until its first sync: not taken as off
    # meanwhile (serverCron asks INFO 10 times a second)
    RulesNginx::redis_call($rs, 'REPLICAOF', '127.0.0.1',
                           RulesNginx::free_port());
    is(rules_info($rs)->{replication_known_off}, 0,
       'made a replica: replication on at once');
    sleep 0.5;
    is(rules_info($rs)->{replication_known_off}, 0,
       'a replica of a master it cannot reach yet: still on');
    RulesNginx::redis_call($rs, 'REPLICAOF', '127.0.0.1', $port);
    ok(wait_link($r, $rs), 'it synced');
    RulesNginx::redis_call($rs, 'REPLICAOF', 'NO', 'ONE');
    sleep 0.5;
    my $s2 = rules_info($rs);
    is($s2->{replication_known_off}, 0,
       'a master again, with a backlog: replication on');
    $replay_into->($solo->{port}, 'promoted:');
    is(rules_info($rs)->{effects_skipped}, $s2->{effects_skipped},
       'a master again: none skipped');
    close $rs;
    RulesNginx::stop_pid($solo->{pid});

    # PSYNC renamed: the filter would not see a sync, so never off
    my $renamed = RulesNginx::start_redis(
        args => ['--loadmodule', $module, '--rename-command', 'PSYNC',
                 'XPSYNC']);
    my $rn = RulesNginx::redis_conn($renamed->{port});
    sleep 0.5;
    $replay_into->($renamed->{port}, 'renamed:');
    my $n1 = rules_info($rn);
    is($n1->{replication_known_off}, 0, 'PSYNC renamed: never known off');
    is($n1->{effects_skipped}, 0, 'PSYNC renamed: none skipped');
    close $rn;
    RulesNginx::stop_pid($renamed->{pid});

    # the AOF: every effect goes to it, and a restart from it gives the
    # same values
    my $aof_dir = File::Temp::tempdir('rules-aof-XXXXXX', TMPDIR => 1,
                                      CLEANUP => 1);
    my @aof_args = ('--loadmodule', $module, '--appendonly', 'yes',
                    '--appendfsync', 'always', '--dir', $aof_dir);
    my $aof = RulesNginx::start_redis(args => \@aof_args);
    my $ra = RulesNginx::redis_conn($aof->{port});
    sleep 0.5;
    $replay_into->($aof->{port}, 'aof:');
    my $i5 = rules_info($ra);
    is($i5->{effects_skipped}, 0, 'with the AOF: none skipped');
    cmp_ok($i5->{effects_replicated}, '>', 100, 'effects to the AOF');
    my %before = map { $_ => RulesNginx::redis_call($ra, 'GET', $_) }
                 @{ RulesNginx::redis_call($ra, 'KEYS', 'aof:*') };
    close $ra;
    RulesNginx::stop_pid($aof->{pid});
    $aof = RulesNginx::start_redis(port => $aof->{port}, args => \@aof_args);
    $ra = RulesNginx::redis_conn($aof->{port});
    for (1 .. 300) {    # it answers LOADING until the AOF is read
        last if (RulesNginx::redis_call($ra, 'INFO', 'persistence') // '')
                =~ /^loading:0/m;
        sleep 0.1;
    }
    my $back = 0;
    for my $k (keys %before) {
        $back++ if (RulesNginx::redis_call($ra, 'GET', $k) // '')
                   eq $before{$k};
    }
    cmp_ok(scalar keys %before, '>', 20,
           scalar(keys %before) . ' keys before the restart');
    is($back, scalar keys %before, 'the same values after a restart from '
                                   . 'the AOF');
}

# COMMAND renamed: the module cannot ask whether SYNC and PSYNC are
# there by those names (its COMMAND INFO call fails), so it takes them as
# renamed: effects are always replicated, replication never known off
{
    my $cr = RulesNginx::start_redis(
        args => ['--loadmodule', $module, '--rename-command', 'COMMAND',
                 'XCOMMAND']);
    my $rc = RulesNginx::redis_conn($cr->{port});
    sleep 0.5;      # serverCron, 10 times a second, asked INFO meanwhile
    my $reply;
    for my $i (1 .. 5) {
        $reply = RulesNginx::redis_call($rc, 'RULES.STORE', $sha, 1, "c:$i",
                                        append_meta(60000) . body());
    }
    is_deeply(ref $reply eq 'ARRAY' ? $reply->[1] : $reply, undef,
              'COMMAND renamed: RULES.STORE stores');
    my $ci = rules_info($rc);
    is($ci->{replication_known_off}, 0, 'COMMAND renamed: never known off');
    is($ci->{effects_skipped}, 0, 'COMMAND renamed: none skipped');
    cmp_ok($ci->{effects_replicated}, '>=', 5,
           'COMMAND renamed: effects replicated');
    close $rc;
    RulesNginx::stop_pid($cr->{pid});
}

done_testing();
