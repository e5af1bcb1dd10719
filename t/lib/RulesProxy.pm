package RulesProxy;

# A TCP proxy for the fault tests, between nginx and Redis: it forwards
# both ways until told to break a connection in the middle of a reply.
#
#   my $proxy = RulesProxy::start(upstream => $redis_port, log => $file);
#   # nginx: rules_redis 127.0.0.1:$proxy->{port};
#   RulesProxy::cut($proxy, 'rst');   # or 'fin', 'junk'
#
# cut() arms the proxy and waits until it acted: the next data that Redis
# sends on any connection is forwarded only in part (half of it: the
# client gets a truncated reply), then the client side is reset (rst:
# SO_LINGER 0, the peer gets ECONNRESET) or closed (fin), and the Redis
# side closed; or (junk) that data is replaced by bytes that are not
# RESP and both sides are left open: the client must give up on its own;
# or (extra) the next data that ends on a reply's end (the proxy follows
# RESP on every connection) is forwarded whole and followed by
# "+OK\r\n", a reply to no command, both sides left open; or (stray)
# "+OK\r\n" is sent at once to every client, whatever is in flight; or
# (raw, with cut($proxy, 'raw', $bytes[, $match])) the next data that
# Redis sends is replaced by those bytes (with a regex $match: in the
# next data that matches it, what it matched), both sides left open; or
# (clock) the next data that starts with a reply that is an array whose
# first element is an integer (a state call's reply: Redis' clock, then
# one per item) gets that integer replaced by -1, the rest forwarded as
# it came.  It returns the line the proxy logged ("rst 37/75": bytes
# forwarded of those received), or undef when nothing happened within
# 5 s (no reply in flight).  arm() takes the same arguments and returns
# at once (the proxy armed for what comes later: a client not started
# yet), and armed($proxy, $how, $secs) waits for that line.
#
# hold() makes the proxy keep what Redis sends (every read is one held
# piece, logged "held <bytes>"; with start(hold_match => qr/.../), from
# the first read that matches on a connection, the ones before go
# through: a connection's replies keep their order); release($proxy, 'one')
# forwards the oldest piece, release($proxy, 'all') forwards them all
# and stops holding.  Each waits for the proxy's log line.
#
# A client whose Redis connection cannot be made is closed at once.  The
# proxy is a forked process, stopped by RulesNginx's END (track_pid) or
# by stop().

use strict;
use warnings;
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Socket qw(SOL_SOCKET SO_LINGER);
use Time::HiRes qw(sleep time);

sub start {
    my (%opt) = @_;
    # (listen: a listening socket of the caller's, to serve from now on)
    my $listen = $opt{listen} // IO::Socket::INET->new(Listen => 128,
                                       LocalAddr => '127.0.0.1',
                                       LocalPort => $opt{port} // 0,
                                       ReuseAddr => 1)
        or die "proxy: cannot listen: $!";
    my $port = $listen->sockport;
    my $log = $opt{log} or die 'RulesProxy::start: log';
    open my $fh, '>', $log or die "$log: $!";
    close $fh;

    my $pid = fork();
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        eval { _run($listen, $opt{upstream}, $log, $opt{hold_match}) };
        POSIX::_exit(0);
    }
    close $listen;
    RulesNginx::track_pid($pid) if defined &RulesNginx::track_pid;
    # its signal handlers are set (a signal before would end it)
    my $deadline = time + 10;
    sleep 0.01 until grep({ $_ eq 'ready' } _lines($log)) || time > $deadline;
    return { pid => $pid, port => $port, log => $log };
}

sub stop {
    my ($proxy) = @_;
    RulesNginx::stop_pid($proxy->{pid});
}

sub _lines {
    my ($log) = @_;
    open my $fh, '<', $log or return ();
    my @l = <$fh>;
    close $fh;
    chomp @l;
    return @l;
}

my %cut_signal = (rst => 'USR1', fin => 'USR2', junk => 'HUP',
                  extra => 'TTIN', stray => 'TTOU', raw => 'VTALRM',
                  clock => 'PROF');

sub cut {
    my ($proxy, $how, @raw) = @_;
    arm($proxy, $how, @raw);
    return armed($proxy, $how);
}

sub arm {
    my ($proxy, $how, @raw) = @_;
    _raw_files($proxy, @raw) if $how eq 'raw';
    _signal($proxy, $cut_signal{$how});
}

sub armed {
    my ($proxy, $how, $secs) = @_;
    return _wait_line($proxy, qr/^$how /, $secs);
}

# a file's bytes, or undef
sub _slurp {
    my ($file) = @_;
    open my $fh, '<', $file or return undef;
    binmode $fh;
    local $/;
    my $bytes = <$fh>;
    close $fh;
    return $bytes // '';
}

# the bytes of a raw fault, and the regex the data it replaces must match
sub _raw_files {
    my ($proxy, $bytes, $match) = @_;
    for (["$proxy->{log}.raw", $bytes], ["$proxy->{log}.match", $match // '']) {
        open my $fh, '>', $_->[0] or die "$_->[0]: $!";
        binmode $fh;
        print $fh $_->[1];
        close $fh;
    }
}

# the proxy's log lines are counted first: _wait_line() looks at those
# that come after
sub _signal {
    my ($proxy, $sig) = @_;
    $proxy->{signalled_at} = () = _lines($proxy->{log});
    kill $sig, $proxy->{pid};
}

# the first line since the last signal that matches $want, within $secs
# (5) seconds, or undef
sub _wait_line {
    my ($proxy, $want, $secs) = @_;
    my $deadline = time + ($secs // 5);
    while (time < $deadline) {
        # the line asked for, not necessarily the last one: replies that
        # arrive meanwhile are logged as held
        my @l = _lines($proxy->{log});
        my ($line) = grep { $_ =~ $want } @l[$proxy->{signalled_at} .. $#l];
        return $line if defined $line;
        sleep 0.01;
    }
    return undef;
}

sub _signal_and_wait {
    my ($proxy, $sig, $want) = @_;
    _signal($proxy, $sig);
    return _wait_line($proxy, $want);
}

sub hold {
    my ($proxy) = @_;
    return _signal_and_wait($proxy, 'WINCH', qr/^holding$/);
}

sub release {
    my ($proxy, $what) = @_;
    return _signal_and_wait($proxy, $what eq 'one' ? 'ALRM' : 'QUIT',
                            qr/^released /);
}

# the pieces held so far
sub held {
    my ($proxy) = @_;
    return scalar grep { /^held / } _lines($proxy->{log});
}

sub _log {
    my ($log, $line) = @_;
    open my $fh, '>>', $log or return;
    print $fh "$line\n";
    close $fh;
}

# The end of the RESP reply at $pos in $b, or undef when it is not all
# there.
sub _resp_end {
    my ($b, $pos) = @_;
    my $nl = index($b, "\r\n", $pos);
    return undef if $nl < 0;
    my ($t, $n) = (substr($b, $pos, 1), substr($b, $pos + 1, $nl - $pos - 1));
    my $p = $nl + 2;
    if ($t eq '$') {
        return $p if $n < 0;
        $p += $n + 2;
        return $p <= length $b ? $p : undef;
    }
    if ($t eq '*') {
        return $p if $n < 0;
        for (1 .. $n) {
            $p = _resp_end($b, $p);
            return undef unless defined $p;
        }
    }
    return $p;
}

# what is left of $b once its whole replies are taken off
sub _resp_tail {
    my ($b) = @_;
    my $p = 0;
    while ($p < length $b) {
        my $e = _resp_end($b, $p);
        last unless defined $e;
        $p = $e;
    }
    return substr($b, $p);
}

sub _run {
    my ($listen, $upstream, $log, $hold_match) = @_;
    my $armed = '';
    my ($holding, $release, @held) = (0, '');
    local $SIG{USR1} = sub { $armed = 'rst' };
    local $SIG{USR2} = sub { $armed = 'fin' };
    local $SIG{HUP} = sub { $armed = 'junk' };
    my ($raw, $match);
    local $SIG{VTALRM} = sub {
        ($raw, $match) = map { _slurp("$log.$_") } qw(raw match);
        $armed = 'raw' if defined $raw && defined $match;
    };
    local $SIG{PROF} = sub { $armed = 'clock' };
    local $SIG{TTIN} = sub { $armed = 'extra' };
    my $stray = 0;
    local $SIG{TTOU} = sub { $stray = 1 };
    local $SIG{WINCH} = sub { $holding = 1; _log($log, 'holding') };
    local $SIG{ALRM} = sub { $release = 'one' };
    local $SIG{QUIT} = sub { $release = 'all' };
    local $SIG{PIPE} = 'IGNORE';
    local $SIG{TERM} = sub { POSIX::_exit(0) };
    _log($log, 'ready');

    my $sel = IO::Select->new($listen);
    my %peer;       # fileno => the other socket
    my %is_up;      # fileno => 1 for Redis' side
    my %tail;       # fileno => Redis' bytes after its last whole reply

    my $close_pair = sub {
        my ($s) = @_;
        my $o = delete $peer{ fileno $s };
        for my $x ($s, $o) {
            next unless $x;
            delete $peer{ fileno $x };
            delete $is_up{ fileno $x };
            delete $tail{ fileno $x };
            $sel->remove($x);
            close $x;
        }
    };

    my $forward = sub {
        my ($o, $buf) = @_;
        my ($off, $n) = (0, length $buf);
        while ($off < $n) {
            my $w = syswrite $o, $buf, $n - $off, $off;
            last unless defined $w;
            $off += $w;
        }
        return $off == $n;
    };

    while (1) {
        if ($stray) {
            my @c = grep { !$is_up{ fileno $_ } }
                    map { $peer{$_} } grep { $is_up{$_} } keys %peer;
            syswrite $_, "+OK\r\n" for @c;
            _log($log, "stray " . scalar(@c) . '/' . scalar(@c));
            $stray = 0;
        }

        if ($release) {
            my @go = $release eq 'one' ? (shift @held) : splice @held;
            $holding = 0 if $release eq 'all';
            for (grep { defined } @go) {
                my ($o, $buf) = @$_;
                $forward->($o, $buf) if defined fileno $o;
            }
            _log($log, "released " . scalar(grep { defined } @go));
            $release = '';
        }

        for my $s ($sel->can_read(0.05)) {
            if ($s == $listen) {
                my $c = $listen->accept or next;
                my $u = IO::Socket::INET->new(
                    PeerAddr => "127.0.0.1:$upstream", Timeout => 1);
                unless ($u) {
                    close $c;
                    next;
                }
                $peer{ fileno $c } = $u;
                $peer{ fileno $u } = $c;
                $is_up{ fileno $u } = 1;
                $sel->add($c, $u);
                next;
            }

            # closed meanwhile, with the other side of its pair
            next unless defined fileno $s;
            my $o = $peer{ fileno $s } or next;
            my $n = sysread $s, my $buf, 65536;
            if (!$n) {
                $close_pair->($s);
                next;
            }

            my $boundary = 0;
            # the data starts a reply (the last ended where it ended)
            my $starts = ($tail{ fileno $s } // '') eq '';
            if ($is_up{ fileno $s }) {
                $tail{ fileno $s } = _resp_tail(($tail{ fileno $s } // '')
                                                . $buf);
                $boundary = $tail{ fileno $s } eq '';
            }

            if ($holding && $is_up{ fileno $s }
                && (!$hold_match || $buf =~ $hold_match
                    || grep { $_->[0] == $o } @held))
            {
                push @held, [$o, $buf];
                _log($log, "held $n");
                next;
            }

            if ($armed eq 'junk' && $is_up{ fileno $s }) {
                # not a RESP type byte: a protocol error for the client
                syswrite $o, "\@junk\r\n";
                _log($log, "junk 0/$n");
                $armed = '';
                next;
            }

            if ($armed eq 'clock' && $is_up{ fileno $s } && $starts
                && $buf =~ s/\A(\*[1-9]\d*\r\n):\d+\r\n/$1:-1\r\n/)
            {
                $forward->($o, $buf);
                _log($log, "clock $n");
                $armed = '';
                next;
            }

            my $out = $raw;
            if ($armed eq 'raw' && $is_up{ fileno $s }
                && ($match eq '' || ($out = $buf) =~ s/$match/$raw/))
            {
                $forward->($o, $out);
                _log($log, 'raw ' . length($out) . " bytes for $n");
                $armed = '';
                next;
            }

            if ($armed eq 'extra' && $is_up{ fileno $s } && $boundary) {
                # a reply to no command after whole replies
                $forward->($o, $buf . "+OK\r\n");
                _log($log, "extra $n/$n");
                $armed = '';
                next;
            }

            if (($armed eq 'rst' || $armed eq 'fin') && $is_up{ fileno $s }) {
                # a reply in flight: half of it, then the break
                my $half = int($n / 2);
                syswrite $o, $buf, $half if $half;
                if ($armed eq 'rst') {
                    setsockopt($o, SOL_SOCKET, SO_LINGER,
                               pack('ii', 1, 0));
                }
                _log($log, "$armed $half/$n");
                $armed = '';
                $close_pair->($s);
                next;
            }

            my $off = 0;
            while ($off < $n) {
                my $w = syswrite $o, $buf, $n - $off, $off;
                last unless defined $w;
                $off += $w;
            }
            $close_pair->($s) if $off < $n;
        }
    }
}

1;
