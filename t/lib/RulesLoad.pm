package RulesLoad;

# A load generator for the fault tests: one forked process keeps many
# keep-alive connections to one or more nginx ports and sends requests at
# a bounded rate (one at a time per connection, no pipelining), and
# measures each one on the client side, from its first byte sent to the
# last byte of its response.
#
#   my $load = RulesLoad::start(ports => [$p1, $p2], conns => 16,
#                               rate => 400, bound => 0.35,
#                               request => sub { my ($seq) = @_; ... },
#                               out => "$dir/load-1");
#   ... faults ...
#   my $stats = RulesLoad::stop($load);
#
# request returns the raw text of request number $seq (HTTP/1.1,
# keep-alive).  stop() asks the generator to send nothing more, lets the
# requests in flight finish (a request not answered in 10 s counts as
# unanswered), waits for it and returns its counts:
#
#   requests    requests answered
#   code        { HTTP status => count }
#   status      { X-Status header => count }
#   late        requests answered after `bound` seconds
#   late_list   [ "latency offset request-line", ... ] (the first 20)
#   failed      connections closed or unusable with a request in flight
#   unanswered  requests with no response after 10 s
#   max, p50, p99   latencies (s)
#   connects    connections opened

use strict;
use warnings;
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep time);

my $HARD_TIMEOUT = 10;

sub start {
    my (%opt) = @_;
    my $out = $opt{out} or die 'RulesLoad::start: out';
    unlink $out;
    my $pid = fork();
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        my $rc = eval { _run(%opt); 0 } // do {
            open my $fh, '>', "$out.err";
            print $fh $@;
            1;
        };
        POSIX::_exit($rc);
    }
    RulesNginx::track_pid($pid) if defined &RulesNginx::track_pid;
    return { pid => $pid, out => $out, started => time };
}

sub stop {
    my ($load) = @_;
    kill 'TERM', $load->{pid};
    my $deadline = time + $HARD_TIMEOUT + 20;
    while (time < $deadline) {
        last if waitpid($load->{pid}, POSIX::WNOHANG()) != 0;
        sleep 0.05;
    }
    if (kill 0, $load->{pid}) {
        kill 'KILL', $load->{pid};
        waitpid $load->{pid}, 0;
    }
    return read_stats($load->{out});
}

sub read_stats {
    my ($out) = @_;
    my %s = (code => {}, status => {}, late_list => []);
    open my $fh, '<', $out or return { %s, error => "no stats ($out): "
                                       . (-f "$out.err" ? `cat $out.err` : '?') };
    while (<$fh>) {
        chomp;
        my ($k, @v) = split /\t/;
        if ($k eq 'code' || $k eq 'status') {
            $s{$k}{ $v[0] } = $v[1];
        } elsif ($k eq 'late_list') {
            push @{ $s{late_list} }, join ' ', @v;
        } else {
            $s{$k} = $v[0];
        }
    }
    close $fh;
    return \%s;
}

sub _run {
    my (%opt) = @_;
    my @ports = @{ $opt{ports} };
    my $nconns = $opt{conns} // 16;
    my $rate = $opt{rate} // 200;
    my $bound = $opt{bound} // 1;
    my $make = $opt{request};

    my $stop = 0;
    local $SIG{TERM} = sub { $stop = 1 };
    local $SIG{PIPE} = 'IGNORE';

    my (@conns, %by_fd);
    for my $i (0 .. $nconns * @ports - 1) {
        push @conns, { port => $ports[$i % @ports], sock => undef,
                       busy => 0, buf => '' };
    }

    my (%code, %status, @lat, @late);
    my ($failed, $unanswered, $connects, $seq) = (0, 0, 0, 0);
    my $t0 = time;
    my $last = $t0;
    my $tokens = 0;
    my $rr = 0;
    my $sel = IO::Select->new;

    my $drop = sub {
        my ($c) = @_;
        if ($c->{sock}) {
            $sel->remove($c->{sock});
            delete $by_fd{ fileno $c->{sock} };
            close $c->{sock};
        }
        $c->{sock} = undef;
        $c->{busy} = 0;
        $c->{buf} = '';
    };

    my $stop_at;

    while (1) {
        my $now = time;

        if ($stop) {
            $stop_at //= $now;
            last unless grep { $_->{busy} } @conns;
        } else {
            $tokens += ($now - $last) * $rate;
            $tokens = @conns if $tokens > @conns;
        }
        $last = $now;

        # new requests on idle connections, as the rate allows, taking
        # the connections in turn
        if (!$stop) {
            for (1 .. @conns) {
                last if $tokens < 1;
                my $c = $conns[ $rr++ % @conns ];
                next if $c->{busy};
                unless ($c->{sock}) {
                    $c->{sock} = IO::Socket::INET->new(
                        PeerAddr => "127.0.0.1:$c->{port}", Timeout => 5);
                    unless ($c->{sock}) {
                        $failed++;
                        $tokens--;
                        next;
                    }
                    $connects++;
                    $sel->add($c->{sock});
                    $by_fd{ fileno $c->{sock} } = $c;
                }
                my $req = $make->($seq++);
                $c->{line} = (split /\r\n/, $req, 2)[0];
                $c->{sent} = time;
                $c->{busy} = 1;
                $tokens--;
                my $off = 0;
                while ($off < length $req) {
                    my $n = syswrite $c->{sock}, $req, length($req) - $off,
                                     $off;
                    unless (defined $n) {
                        $failed++;
                        $drop->($c);
                        last;
                    }
                    $off += $n;
                }
            }
        }

        for my $s ($sel->can_read(0.002)) {
            my $c = $by_fd{ fileno $s } or next;
            my $n = sysread $s, $c->{buf}, 65536, length $c->{buf};
            if (!$n) {
                # closed: by nginx between requests (keepalive), or not
                $failed++ if $c->{busy};
                $drop->($c);
                next;
            }
            next unless $c->{busy};
            my $i = index $c->{buf}, "\r\n\r\n";
            next if $i < 0;
            my $head = substr $c->{buf}, 0, $i;
            my ($cl) = $head =~ /^Content-Length:\s*(\d+)/mi;
            next if length($c->{buf}) < $i + 4 + ($cl // 0);
            my $lat = time - $c->{sent};
            my ($st) = $head =~ m{^HTTP/1\.\d (\d+)};
            my ($xs) = $head =~ /^X-Status:\s*(\S*)/mi;
            $code{ $st // 0 }++;
            $status{ $xs // '' }++;
            push @lat, $lat;
            if ($lat > $bound) {
                push @late, sprintf("%.3f\t%.3f\t%s", $lat,
                                    $c->{sent} - $t0, $c->{line});
            }
            $c->{buf} = substr $c->{buf}, $i + 4 + ($cl // 0);
            $c->{busy} = 0;
            $drop->($c) if $head =~ /^Connection:\s*close/mi;
        }

        # a request that got nothing at all
        $now = time;
        for my $c (@conns) {
            next unless $c->{busy} && $now - $c->{sent} > $HARD_TIMEOUT;
            $unanswered++;
            $drop->($c);
        }
    }

    $_->{sock} && $drop->($_) for @conns;

    @lat = sort { $a <=> $b } @lat;
    my $pct = sub { @lat ? $lat[ int($_[0] * $#lat) ] : 0 };

    open my $out, '>', "$opt{out}.tmp" or die "$opt{out}: $!";
    printf $out "requests\t%d\n", scalar @lat;
    printf $out "late\t%d\n", scalar @late;
    printf $out "failed\t%d\n", $failed;
    printf $out "unanswered\t%d\n", $unanswered;
    printf $out "connects\t%d\n", $connects;
    printf $out "max\t%.4f\n", @lat ? $lat[-1] : 0;
    printf $out "p50\t%.4f\n", $pct->(0.5);
    printf $out "p99\t%.4f\n", $pct->(0.99);
    printf $out "seconds\t%.1f\n", ($stop_at // time) - $t0;
    print $out "code\t$_\t$code{$_}\n" for sort keys %code;
    print $out "status\t$_\t$status{$_}\n" for sort keys %status;
    print $out "late_list\t$_\n" for @late[0 .. ($#late < 19 ? $#late : 19)];
    close $out;
    rename "$opt{out}.tmp", $opt{out} or die "rename: $!";
}

1;
