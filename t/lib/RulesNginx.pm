package RulesNginx;

# Starts and stops an nginx with the module, and a private redis-server,
# for the plain Test::More tests that need what Test::Nginx blocks
# cannot express: parallel clients, reloads, Redis restarts.  Every
# process started here is stopped by PID, also when a test dies.

use strict;
use warnings;
use Cwd qw(abs_path);
use File::Path qw(make_path remove_tree);
use File::Temp ();
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);
use RulesMemcheck;
use RulesNative;

my @Started;    # [kind, pid or pidfile]

sub free_port {
    my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                  LocalPort => 0, ReuseAddr => 1)
        or die "cannot bind a loopback port: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

# Calls $get, pausing $every seconds (0.05) between calls, until $done
# holds for what it returned ($done: by default, that the value is true)
# or $secs seconds have passed (no default; the caller scales them for
# valgrind: the last call may end a pause and a call later); returns
# what $get returned last.
sub poll {
    my ($secs, $get, $done, $every) = @_;
    $done //= sub { $_[0] };
    my $deadline = time + $secs;
    while (1) {
        my $v = $get->();
        return $v if $done->($v) || time >= $deadline;
        sleep($every // 0.05);
    }
}

sub wait_port {
    my ($port, $secs) = @_;
    return poll($secs // 5,
                sub { IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") },
                undef, 0.02) ? 1 : 0;
}

# A private redis-server: returns { port, pid }.  Without a given port, a
# server that cannot bind the free port it was given (another process
# took it meanwhile, e.g. a cluster node's bus port) is started again on
# another one.
sub start_redis {
    my (%opt) = @_;
    for my $try (1 .. ($opt{port} ? 1 : 5)) {
        my $port = $opt{port} // free_port();
        # a directory of its own: a replica writes the RDB it receives
        my $dir = File::Temp::tempdir('rules-redis-XXXXXX', TMPDIR => 1,
                                      CLEANUP => 1);
        my $pid = fork();
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            open STDOUT, '>', '/dev/null';
            exec('redis-server', '--port', $port, '--bind', '127.0.0.1',
                 '--save', '', '--appendonly', 'no', '--daemonize', 'no',
                 '--dir', $dir, RulesNative::server_args(),
                 @{ $opt{args} // [] })
                or POSIX::_exit(127);
        }
        push @Started, ['pid', $pid];
        return { port => $port, pid => $pid } if wait_port($port);
        kill 'KILL', $pid;
        waitpid $pid, 0;
        warn "redis-server did not start on $port (try $try)\n";
    }
    die "redis-server did not start";
}


# A process the test forked (load generator, proxy): stopped at the end
# like the others, if the test has not stopped it.
sub track_pid {
    my ($pid) = @_;
    push @Started, ['pid', $pid];
}

# One Redis command on a new connection; returns the first line of the
# reply (e.g. "+OK"), or undef.
sub redis_cmd {
    my ($port, @args) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port",
                                  Timeout => 5)
        or return undef;
    my $cmd = '*' . @args . "\r\n";
    $cmd .= '$' . length($_) . "\r\n$_\r\n" for @args;
    print $s $cmd;
    my $line = <$s>;
    close $s;
    $line =~ s/\r?\n\z// if defined $line;
    return $line;
}

# A connection to Redis for redis_call().
sub redis_conn {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port",
                                  Timeout => 5)
        or die "redis 127.0.0.1:$port: $!";
    return $s;
}

# One command on a connection (from redis_conn, or a port: a new one);
# returns the whole reply: a string, a number, undef (nil), an array
# reference, or { err => "message" }.  Binary-safe both ways.
sub redis_call {
    my ($s, @args) = @_;
    $s = redis_conn($s) unless ref $s;
    my $cmd = '*' . @args . "\r\n";
    $cmd .= '$' . length($_) . "\r\n$_\r\n" for @args;
    print $s $cmd;
    return _redis_reply($s);
}

sub _redis_reply {
    my ($s) = @_;
    my $line = <$s> // die "redis: connection closed";
    $line =~ s/\r\n\z//;
    my ($t, $v) = (substr($line, 0, 1), substr($line, 1));
    return $v if $t eq '+';
    return { err => $v } if $t eq '-';
    return $v + 0 if $t eq ':';
    if ($t eq '$') {
        return undef if $v < 0;
        my $buf = '';
        while (length($buf) < $v + 2) {
            read($s, $buf, $v + 2 - length($buf), length($buf))
                or die "redis: short read";
        }
        return substr($buf, 0, $v);
    }
    if ($t eq '*') {
        return undef if $v < 0;
        return [ map { _redis_reply($s) } 1 .. $v ];
    }
    die "redis: unexpected reply line '$line'";
}

# The worker processes of an nginx (children of its master).
sub worker_pids {
    my ($ngx) = @_;
    my $master = nginx_pid($ngx) or return ();
    my @w;
    for my $stat (glob '/proc/[0-9]*/stat') {
        open my $fh, '<', $stat or next;
        my $line = <$fh> // '';
        close $fh;
        # pid (comm) state ppid ...
        next unless $line =~ /^(\d+) \(.*\) \S+ (\d+) / && $2 == $master;
        my $pid = $1;
        # not the cache manager or loader (proxy_cache_path)
        if (open my $cf, '<', "/proc/$pid/cmdline") {
            my $cmd = <$cf> // '';
            close $cf;
            next if $cmd =~ /cache (manager|loader) process/;
        }
        push @w, $pid;
    }
    return sort { $a <=> $b } @w;
}

# Whether a process is gone, or a zombie (a killed worker until the
# master has reaped it).
sub zombie {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/stat" or return 1;
    my $line = <$fh> // '';
    close $fh;
    return $line =~ /^\d+ \(.*\) Z /;
}

# A worker other than the pids given (one the master started after a
# worker was killed), waiting up to 5 s (times the valgrind slowdown)
# for it; undef: none.
sub new_worker {
    my ($ngx, @not) = @_;
    my %not = map { $_ => 1 } @not;
    my $new = sub {
        (grep { !$not{$_} && !zombie($_) } worker_pids($ngx))[0];
    };
    return poll(5 * RulesMemcheck::slowdown(), $new, undef, 0.02);
}

# Open descriptors and resident memory (kB) of a process.
sub fd_count {
    my ($pid) = @_;
    opendir my $d, "/proc/$pid/fd" or return undef;
    my $n = grep { !/^\./ } readdir $d;
    closedir $d;
    return $n;
}

sub rss_kb {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/status" or return undef;
    while (<$fh>) {
        return $1 if /^VmRSS:\s+(\d+) kB/;
    }
    return undef;
}

sub stop_pid {
    my ($pid, $sig) = @_;
    return unless $pid;
    kill 'CONT', $pid;
    kill $sig // 'TERM', $pid;
    return if poll(5, sub { waitpid($pid, WNOHANG) != 0 });
    kill 'KILL', $pid;
    waitpid $pid, 0;
}

sub module_path {
    my $mods = $ENV{TEST_NGINX_LOAD_MODULES}
        // abs_path("$FindBin::Bin/../build/nginx/ngx_http_rules_module.so");
    return $mods;
}

# nginx with the given http{} body (and main-context directives, main;
# the events{} body, events: worker_connections 4096 by default);
# returns { port, prefix }.
sub start_nginx {
    my (%opt) = @_;
    my $prefix = abs_path($opt{prefix} // "t/servroot-plain") ;
    $prefix //= $opt{prefix};
    remove_tree($prefix);
    make_path("$prefix/conf", "$prefix/logs", "$prefix/html");
    my $port = $opt{port} // free_port();
    my $workers = $opt{workers} // 1;
    my $load = join '', map { "load_module $_;\n" } split ' ', module_path();
    my $user = $> == 0 ? "user root;\n" : '';
    my $http = $opt{http};
    $http =~ s/\$PORT\b/$port/g;
    my $main = $opt{main} // '';
    my $events = $opt{events} // 'worker_connections 4096;';

    for my $name (keys %{ $opt{files} // {} }) {
        open my $fh, '>', "$prefix/html/$name" or die "$name: $!";
        print $fh $opt{files}{$name};
        close $fh;
    }

    open my $fh, '>', "$prefix/conf/nginx.conf" or die $!;
    print $fh <<"_EOC_";
$load${user}worker_processes $workers;
daemon on;
master_process on;
pid logs/nginx.pid;
error_log logs/error.log info;
$main
events { $events }
http {
    access_log off;
$http
}
_EOC_
    close $fh;

    my $bin = $ENV{TEST_NGINX_BINARY} // 'nginx';

    # what nginx says while it starts (startup warnings: t/059 has
    # locations without some keys' fields on purpose) goes to a file of
    # its own, shown when it does not start
    open my $stderr, '>&', \*STDERR or die "stderr: $!";
    open STDERR, '>', "$prefix/logs/start.log" or die "start.log: $!";
    my $rc = system(nginx_command($prefix));
    open STDERR, '>&', $stderr or die "stderr: $!";
    if ($rc != 0) {
        open my $log, '<', "$prefix/logs/start.log";
        my $said = $log ? join('', <$log>) : '';
        die "nginx did not start: ${said}see $prefix/logs/error.log";
    }
    push @Started, ['nginx', "$prefix/logs/nginx.pid"];
    wait_port($port, 5 * RulesMemcheck::slowdown())
        or die "nginx is not listening on $port";

    # the master listens before it forks: its workers may not exist yet
    my $ngx = { port => $port, prefix => $prefix, bin => $bin };
    my $started = sub { my @w = worker_pids($ngx); scalar @w };
    poll(5 * RulesMemcheck::slowdown(), $started, sub { $_[0] >= $workers },
         0.02);
    return $ngx;
}

# The command that runs nginx with the prefix and more arguments (-t):
# under valgrind when TEST_NGINX_USE_VALGRIND is set (see RulesMemcheck).
sub nginx_command {
    my ($prefix, @args) = @_;
    my $bin = $ENV{TEST_NGINX_BINARY} // 'nginx';
    my @vg = RulesMemcheck::valgrind()
             ? RulesMemcheck::valgrind_cmd("$prefix/logs") : ();
    return (@vg, $bin, @args, '-p', "$prefix/", '-c', 'conf/nginx.conf');
}

sub nginx_pid {
    my ($ngx) = @_;
    open my $fh, '<', "$ngx->{prefix}/logs/nginx.pid" or return;
    my $pid = <$fh>;
    chomp $pid if defined $pid;
    return $pid;
}

sub reload_nginx {
    my ($ngx) = @_;
    my $pid = nginx_pid($ngx) or die "no nginx pid";
    kill 'HUP', $pid;
}

# Stops nginx and, under valgrind or ASan, adds a test: what they found
# in its processes.
sub stop_nginx {
    my ($ngx) = @_;
    my $pid = nginx_pid($ngx) or return;
    kill 'QUIT', $pid;
    kill 'KILL', $pid unless wait_gone($pid, 10 * RulesMemcheck::slowdown());
    RulesMemcheck::check("$ngx->{prefix}/logs", "nginx $ngx->{prefix}");
}

sub error_log {
    my ($ngx) = @_;
    open my $fh, '<', "$ngx->{prefix}/logs/error.log" or return '';
    local $/;
    return <$fh>;
}

# How many times nginx's error log matches $re.
sub log_count {
    my ($ngx, $re) = @_;
    return scalar(() = error_log($ngx) =~ /$re/mg);
}

# nginx's error log once it matches $re, or as it is after $secs seconds
# (by default 5, times the valgrind slowdown).
sub wait_log {
    my ($ngx, $re, $secs) = @_;
    return poll($secs // 5 * RulesMemcheck::slowdown(),
                sub { error_log($ngx) }, sub { $_[0] =~ $re });
}

# True once the process $pid is gone, within $secs seconds (kill 0: a
# child of ours that exited stays until reaped; for nginx masters, which
# are not).
sub wait_gone {
    my ($pid, $secs) = @_;
    return poll($secs, sub { !kill(0, $pid) });
}

# Until the worker's connection is made and has asked the server for
# RULES.STORE (events sent before that go as EVALSHA): true when the
# error log says the connection uses RULES.STORE ($native) or not.
sub wait_connected {
    my ($ngx, $native) = @_;
    my $want = $native
        ? qr/: connected \(states stored with RULES\.STORE\)$/m
        : qr/: connected \(states stored with the script\)$/m;
    return wait_log($ngx, $want) =~ $want ? 1 : 0;
}

# The http block of a pixel endpoint, /px: every field from the query
# string ($arg_<name>), the time from ts (time: another value, or '' for
# the server's clock), X-Rules and X-Status headers, 204; and /metrics.
# store: the rules_redis or rules_redis_cluster line; extra: more of the
# http block; locations: more of the server; listen: the listen
# directive's parameters (reuseport).
sub pixel_http {
    my (%o) = @_;
    my $fields = join "\n", map { "rules_field $_ \$arg_$_;" }
                                 @{ $o{fields} };
    my $time = $o{time} // '$arg_ts';
    $time = $time eq '' ? '' : "rules_time $time;";
    my $timeout = $o{timeout} // '2s';
    my $extra = $o{extra} // '';
    my $locations = $o{locations} // '';
    my $listen = $o{listen} ? " $o{listen}" : '';
    return <<"_EOC_";
    $o{store}
    rules_redis_timeout $timeout;
    rules_key_prefix "$o{prefix}";
    rules_file ../html/rules.json;
    $extra
    server {
        listen 127.0.0.1:\$PORT$listen;
        location = /px {
            rules on;
            $fields
            $time
            add_header X-Rules \$rules_matched always;
            add_header X-Status \$rules_status always;
            return 204;
        }
        location = /metrics { rules_metrics; }
        $locations
    }
_EOC_
}

# A sample's value from the nginx's /metrics (name with its labels, as
# printed), undef when there is none.
sub metric {
    my ($ngx, $name) = @_;
    my (undef, undef, $body) = get($ngx->{port}, '/metrics');
    return $body =~ /^\Q$name\E (\S+)$/m ? $1 : undef;
}

# A file written whole (a rules file or nginx.conf a test edits).
sub write_file {
    my ($path, $text) = @_;
    open my $fh, '>', $path or die "$path: $!";
    print $fh $text;
    close $fh or die "$path: $!";
}

# Every sample of one scrape of /metrics: { 'name{labels}' => value }, a
# sample without labels named 'name{}'.
sub metrics_all {
    my ($ngx) = @_;
    my (undef, undef, $body) = get($ngx->{port}, '/metrics');
    my %s;
    for (split /\n/, $body) {
        next if /^#/;
        /^(\S+) (\S+)$/ or next;
        my ($k, $v) = ($1, $2);
        $k .= '{}' unless $k =~ /\}$/;
        $s{$k} = $v;
    }
    return \%s;
}

# One HTTP/1.0 GET; returns (status, \%headers, body).
sub get {
    my ($port, $uri, $timeout) = @_;
    my $s = send_get($port, $uri, $timeout) or return (0, {}, "connect: $!");
    return read_response($s);
}

# A GET sent on a connection of its own, its answer read later
# (read_response): the socket, or undef when the connection fails.
sub send_get {
    my ($port, $uri, $timeout) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port",
                                  Timeout => $timeout // 5)
        or return;
    print $s "GET $uri HTTP/1.0\r\nHost: localhost\r\n\r\n";
    return $s;
}

# The whole answer on a socket, which is closed; (status, \%headers, body).
sub read_response {
    my ($s) = @_;
    local $/;
    my $resp = <$s> // '';
    close $s;
    return parse_response($resp);
}

# The answer of a pixel location (pixel_http) on a socket, the socket
# closed: "status X-Status [X-Rules]".
sub pixel_answer {
    my ($st, $h) = read_response(@_);
    return "$st " . ($h->{'x-status'} // '-') . ' [' . ($h->{'x-rules'} // '')
           . ']';
}

# GET /px?$query (pixel_http) on a connection of its own: "status
# X-Status [X-Rules]".
sub pixel {
    my ($ngx, $query) = @_;
    my $s = send_get($ngx->{port}, "/px?$query") or return "0 - []";
    return pixel_answer($s);
}

# One HTTP/1.0 POST of a JSON body; returns (status, \%headers, body).
sub post_json {
    my ($port, $uri, $json, $timeout) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port",
                                  Timeout => $timeout // 5)
        or return (0, {}, "connect: $!");
    print $s "POST $uri HTTP/1.0\r\nHost: localhost\r\n"
        . "Content-Type: application/json\r\n"
        . "Content-Length: " . length($json) . "\r\n\r\n$json";
    local $/;
    my $resp = <$s> // '';
    close $s;
    return parse_response($resp);
}

sub parse_response {
    my ($resp) = @_;
    my ($head, $body) = split /\r\n\r\n/, $resp, 2;
    return (0, {}, '') unless defined $head;
    my @lines = split /\r\n/, $head;
    my ($status) = (shift(@lines) // '') =~ m{^HTTP/\S+ (\d+)};
    my %h;
    for (@lines) {
        my ($k, $v) = /^([^:]+):\s*(.*)$/ or next;
        $h{lc $k} = $v;
    }
    return ($status // 0, \%h, $body // '');
}

END {
    my $status = $?;
    for my $p (reverse @Started) {
        if ($p->[0] eq 'pid') {
            stop_pid($p->[1]);
        } elsif (-f $p->[1]) {
            open my $fh, '<', $p->[1] or next;
            my $pid = <$fh>;
            next unless $pid && $pid =~ /^(\d+)/;
            $pid = $1;
            kill 'QUIT', $pid;
            kill 'KILL', $pid
                unless wait_gone($pid, 5 * RulesMemcheck::slowdown());
        }
    }
    $? = $status;
}

1;
