package Test::Nginx::Socket;

# A small runner for Test::Nginx::Socket's block format, for machines
# where the upstream Test::Nginx is not installed (it is not packaged in
# Debian).  Built on Test::Base, like upstream; the .t files of this
# repository run unchanged under either.  See t/lib/README.md for what
# it supports and where it differs.

use Test::Base -Base;

use Cwd qw(abs_path cwd);
use File::Path qw(make_path remove_tree);
use File::Spec;
use IO::Select;
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);
use RulesMemcheck;
use RulesNative;

our $VERSION = '0.01';

our @EXPORT = qw(
    run_tests run_test repeat_each no_shuffle no_long_string log_level
    workers master_on master_off worker_connections no_root_location
    env_to_nginx html_dir server_root server_port server_addr
    add_block_preprocessor config_preamble use_hup no_check_leak
    check_accum_error_log
    $ServerPort $ServerAddr $ServerRoot $ServRoot $HtmlDir $LogLevel
    $NoNginxManager $RepeatEach $UseValgrind
);

our $ServerAddr = '127.0.0.1';
our $ServerPort = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT}
                  || &_free_port();
our $ServRoot = $ENV{TEST_NGINX_SERVROOT} || File::Spec->rel2abs('t/servroot');
our $ServerRoot = $ServRoot;
our $HtmlDir = "$ServRoot/html";
our $LogLevel = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';
our $RepeatEach = 1;
our $NoNginxManager = 0;
our $UseValgrind = $ENV{TEST_NGINX_USE_VALGRIND};
our $UseAsan = $ENV{TEST_NGINX_USE_ASAN};

$ENV{TEST_NGINX_SERVER_PORT} = $ServerPort;
$ENV{TEST_NGINX_PORT} ||= $ServerPort;
$ENV{TEST_NGINX_HTML_DIR} ||= $HtmlDir;
$ENV{TEST_NGINX_SERVROOT} ||= $ServRoot;

my $Workers = 1;
my $CheckAccumErrLog = 0;
my $MasterOn = ($ENV{TEST_NGINX_MASTER_PROCESS} // 'on') eq 'on';
my $WorkerConnections = 64;
my $NoRootLocation = 0;
my $ConfigPreamble = '';
my @EnvToNginx;
my @BlockPreprocessors;
my $NginxPid;
my $ValgrindPid;

sub _free_port (@) {
    my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                  LocalPort => 0, ReuseAddr => 1)
        or die "cannot find a free port: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

sub repeat_each (@) {
    $RepeatEach = shift if @_;
    return $RepeatEach;
}

sub no_shuffle () { }
sub no_long_string () { }
sub no_check_leak () { }
sub use_hup () { }
sub check_accum_error_log () { $CheckAccumErrLog = 1 }
sub log_level ($) { $LogLevel = shift }
sub workers ($) { $Workers = shift }
sub master_on () { $MasterOn = 1 }
sub master_off () { $MasterOn = 0 }
sub worker_connections ($) { $WorkerConnections = shift }
sub no_root_location () { $NoRootLocation = 1 }
sub env_to_nginx (@) { push @EnvToNginx, @_ }
sub html_dir () { $HtmlDir }
sub server_root () { $ServRoot }
sub server_port () { $ServerPort }
sub server_addr () { $ServerAddr }
sub config_preamble ($) { $ConfigPreamble = shift }
sub add_block_preprocessor (&) { push @BlockPreprocessors, shift }

sub _expand_env (@) {
    my ($text, $block) = @_;
    return $text unless defined $text;
    $text =~ s{\$(TEST_NGINX_[_A-Z0-9]+)}{
        defined $ENV{$1} ? $ENV{$1}
            : Test::More::BAIL_OUT("No environment $1 defined.")
    }ge;
    return $text;
}

sub _bin () {
    return $ENV{TEST_NGINX_BINARY} || 'nginx';
}

sub _write_config (@) {
    my ($block) = @_;

    remove_tree($ServRoot);
    make_path("$ServRoot/conf", "$ServRoot/logs", "$ServRoot/html");

    my $main = _expand_env($block->main_config // '');
    my $http = _expand_env($block->http_config // '');
    my $config = _expand_env($block->config // '');
    my $level = $block->log_level // $LogLevel;

    my $load = '';
    for my $m (split ' ', $ENV{TEST_NGINX_LOAD_MODULES} // '') {
        $load .= "load_module $m;\n";
    }

    my $env = join '', map { "env $_;\n" } @EnvToNginx;
    my $user = $> == 0 ? "user root;\n" : '';
    my ($daemon, $master) = ('on', $MasterOn ? 'on' : 'off');
    my $workers = $Workers;

    if ($UseValgrind) {
        ($daemon, $master, $workers) = ('off', 'off', 1);
    }

    my $root = $NoRootLocation ? '' : <<"_EOC_";
        location / {
            root $HtmlDir;
            index index.html index.htm;
        }
_EOC_

    open my $fh, '>', "$ServRoot/conf/nginx.conf"
        or die "cannot write nginx.conf: $!";
    print $fh <<"_EOC_";
$load${user}worker_processes $workers;
daemon $daemon;
master_process $master;
error_log logs/error.log $level;
pid logs/nginx.pid;
$env
$main

http {
    access_log logs/access.log;
    default_type text/plain;
    keepalive_timeout 68;

$http

    server {
        listen $ServerAddr:$ServerPort;
        server_name localhost;
        client_max_body_size 30M;

$ConfigPreamble
        # Begin test case config...
$config
        # End test case config.

$root    }
}

events {
    accept_mutex off;
    worker_connections $WorkerConnections;
}
_EOC_
    close $fh;

    if (defined(my $files = $block->user_files)) {
        $files = _expand_env($files);
        my @files = ref $files eq 'ARRAY' ? @$files
                  : map { [ /\A(\S+)\n(.*)\z/s ] } split /^>>> /m, $files;
        for my $f (@files) {
            my ($name, $content) = @$f;
            next unless defined $name && length $name;
            my $path = "$HtmlDir/$name";
            my ($dir) = $path =~ m{^(.*)/};
            make_path($dir);
            open my $out, '>', $path or die "$path: $!";
            print $out $content // '';
            close $out;
        }
    }
}

sub _nginx_pid (@) {
    open my $fh, '<', "$ServRoot/logs/nginx.pid" or return;
    my $pid = <$fh>;
    close $fh;
    return $pid && $pid =~ /^(\d+)/ ? $1 : undef;
}

sub _wait_exit (@) {
    my ($pid, $secs) = @_;
    my $deadline = time + $secs;
    while (time < $deadline) {
        waitpid($pid, WNOHANG);
        return 1 unless kill 0, $pid;
        sleep 0.02;
    }
    return 0;
}

sub _stop_nginx (@) {
    if ($ValgrindPid) {
        kill 'QUIT', $ValgrindPid;
        _wait_exit($ValgrindPid, 20) or kill 'KILL', $ValgrindPid;
        waitpid $ValgrindPid, 0;
        undef $ValgrindPid;
    }

    my $pid = $NginxPid // _nginx_pid();
    undef $NginxPid;
    return unless $pid;
    kill 'QUIT', $pid;
    return if _wait_exit($pid, 3 * RulesMemcheck::slowdown());
    kill 'TERM', $pid;
    return if _wait_exit($pid, 2);
    kill 'KILL', $pid;
    _wait_exit($pid, 1);
}

# Starts nginx; returns (ok, output of a failed start).
sub _start_nginx (@) {
    my $bin = _bin();
    my @cmd = ($bin, '-p', "$ServRoot/", '-c', 'conf/nginx.conf');

    if ($UseValgrind) {
        my @vg = RulesMemcheck::valgrind_cmd("$ServRoot/logs");
        my $pid = fork();
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            open STDOUT, '>', "$ServRoot/logs/stdout.log";
            open STDERR, '>', "$ServRoot/logs/stderr.log";
            exec(@vg, @cmd) or POSIX::_exit(127);
        }
        $ValgrindPid = $pid;
        for (1 .. 300) {
            return (1, '') if IO::Socket::INET->new(
                PeerAddr => "$ServerAddr:$ServerPort");
            if (waitpid($pid, WNOHANG) == $pid) {
                undef $ValgrindPid;
                return (0, _slurp("$ServRoot/logs/stderr.log"));
            }
            sleep 0.05;
        }
        return (0, 'nginx under valgrind did not start listening');
    }

    my $out = `@cmd 2>&1`;
    return (0, $out) if $? != 0;

    for (1 .. 100 * RulesMemcheck::slowdown()) {
        my $pid = _nginx_pid();
        if ($pid) {
            $NginxPid = $pid;
            return (1, $out)
                if IO::Socket::INET->new(PeerAddr => "$ServerAddr:$ServerPort");
        }
        sleep 0.02;
    }

    return (0, "nginx did not start listening on $ServerPort\n$out");
}

sub _slurp (@) {
    my ($path) = @_;
    open my $fh, '<', $path or return '';
    binmode $fh;
    local $/;
    my $data = <$fh>;
    close $fh;
    return $data // '';
}

sub _parse_timeout (@) {
    my ($t) = @_;
    return 3 unless defined $t;
    $t =~ s/\s+//g;
    return $1 / 1000 if $t =~ /^([\d.]+)ms$/;
    $t =~ s/s$//;
    return $t;
}

# The request text of one request: raw bytes ready to send.
sub _build_request (@) {
    my ($block, $req, $keepalive) = @_;

    my ($first, $body) = split /\n/, $req, 2;
    $first =~ s/^\s+//;
    my ($meth, $uri, $proto) = split ' ', $first;
    $proto //= 'HTTP/1.1';
    $body =~ s/\n\z// if defined $body;

    my $more = $block->more_headers // '';
    $more = _expand_env($more);
    my %have;
    my @headers;
    for my $line (split /\n/, $more) {
        next unless $line =~ /\S/;
        my ($k) = $line =~ /^([^:]+):/;
        $have{ lc $k } = 1 if defined $k;
        push @headers, $line;
    }

    my $r = "$meth $uri $proto\r\n";
    $r .= "Host: localhost\r\n" unless $have{host};
    $r .= "Connection: " . ($keepalive ? 'keep-alive' : 'close') . "\r\n"
        unless $have{connection} || $proto eq 'HTTP/1.0';
    if (defined $body && length $body && !$have{'content-length'}
        && !$have{'transfer-encoding'})
    {
        $r .= "Content-Length: " . length($body) . "\r\n";
    }
    $r .= "$_\r\n" for @headers;
    $r .= "\r\n";
    $r .= $body if defined $body;

    return $r;
}

# Reads HTTP responses from a socket; returns a list of hashrefs, or an
# error string as the last element.
sub _read_responses (@) {
    my ($sock, $count, $timeout) = @_;
    my $buf = '';
    my @res;
    my $sel = IO::Select->new($sock);
    my $deadline = time + $timeout;
    my $eof = 0;

    while (@res < $count) {
        my $r = _parse_one(\$buf, $eof);
        if ($r) {
            push @res, $r;
            next;
        }
        return (@res, $eof ? 'ERROR: connection closed early'
                           : 'ERROR: client socket timed out')
            if $eof || time >= $deadline;
        my $left = $deadline - time;
        if ($sel->can_read($left > 0 ? $left : 0)) {
            my $n = sysread $sock, $buf, 65536, length $buf;
            $eof = 1 if !$n;
        }
    }

    return @res;
}

sub _parse_one (@) {
    my ($bufref, $eof) = @_;
    my $i = index $$bufref, "\r\n\r\n";
    return if $i < 0;
    my $head = substr $$bufref, 0, $i;
    my @lines = split /\r\n/, $head;
    my $status_line = shift @lines;
    my ($code) = $status_line =~ m{^HTTP/\d\.\d (\d+)} or return;
    my (%h, @order);
    for (@lines) {
        my ($k, $v) = /^([^:]+):\s*(.*)$/ or next;
        my $lk = lc $k;
        if (exists $h{$lk}) { $h{$lk} .= ", $v" } else { $h{$lk} = $v }
    }
    my $rest = substr $$bufref, $i + 4;
    my $body;
    my $consumed;

    if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
        my $pos = 0;
        $body = '';
        while (1) {
            my $j = index $rest, "\r\n", $pos;
            return if $j < 0;
            my $size = hex substr($rest, $pos, $j - $pos);
            if ($size == 0) {
                my $end = index $rest, "\r\n", $j + 2;
                return if $end < 0;
                $consumed = $end + 2;
                last;
            }
            return if length($rest) < $j + 2 + $size + 2;
            $body .= substr $rest, $j + 2, $size;
            $pos = $j + 2 + $size + 2;
        }
    } elsif (defined $h{'content-length'}) {
        my $len = $h{'content-length'};
        return if length($rest) < $len;
        $body = substr $rest, 0, $len;
        $consumed = $len;
    } elsif ($code == 204 || $code == 304 || $code =~ /^1/) {
        $body = '';
        $consumed = 0;
    } else {
        return unless $eof;
        $body = $rest;
        $consumed = length $rest;
    }

    $$bufref = substr $rest, $consumed;
    return { code => $code, headers => \%h, body => $body };
}

sub _send_all (@) {
    my ($sock, $data) = @_;
    my $off = 0;
    while ($off < length $data) {
        my $n = syswrite $sock, $data, length($data) - $off, $off;
        return 0 unless defined $n;
        $off += $n;
    }
    return 1;
}

# Sends the block's requests; $each->($i, $n, $response) after each
# response (after all of them for pipelined requests, which share one
# connection), in order.
sub _run_requests (@) {
    my ($block, $each) = @_;
    my $timeout = _parse_timeout($block->timeout
                                 // $ENV{TEST_NGINX_TIMEOUT});

    my $connect = sub {
        IO::Socket::INET->new(PeerAddr => "$ServerAddr:$ServerPort",
                              Timeout => $timeout);
    };

    if (defined(my $p = $block->pipelined_requests)) {
        my @reqs = ref $p ? @$p : ($p);
        my @res;
        if (my $sock = $connect->()) {
            my $data = '';
            for my $i (0 .. $#reqs) {
                $data .= _build_request($block, _expand_env($reqs[$i]),
                                        $i < $#reqs);
            }
            @res = _send_all($sock, $data)
                   ? _read_responses($sock, scalar @reqs, $timeout)
                   : ("ERROR: send: $!");
        } else {
            @res = ("ERROR: connect: $!");
        }
        $each->($_, scalar @res, $res[$_]) for 0 .. $#res;
        return;
    }

    my @raw;
    if (defined(my $raw = $block->raw_request)) {
        @raw = ref $raw ? @$raw : ($raw);
    } else {
        my $req = $block->request;
        return unless defined $req;
        my @reqs = ref $req ? @$req : ($req);
        @raw = map { _build_request($block, _expand_env($_), 0) } @reqs;
    }

    for my $i (0 .. $#raw) {
        my $res;
        if (my $sock = $connect->()) {
            if (_send_all($sock, $raw[$i])) {
                my @r = _read_responses($sock, 1, $timeout);
                $res = $r[0] // 'ERROR: no response';
            } else {
                $res = "ERROR: send: $!";
            }
            close $sock;
        } else {
            $res = "ERROR: connect: $!";
        }
        $each->($i, scalar @raw, $res);
    }
}

# a per-request section's value for request $i of $n: with several
# requests it must be an array, as upstream's get_indexed_value() wants
# (it bails out otherwise)
sub _nth (@) {
    my ($name, $v, $i, $n) = @_;
    return $v->[$i] if ref $v eq 'ARRAY';
    Test::More::BAIL_OUT("$name - You asked for many requests, the "
                         . "expected results should be arrays as well.")
        if $n > 1 && defined $v;
    return $v;
}

sub _check_response (@) {
    my ($block, $name, $res, $i, $n) = @_;
    my $sfx = $n > 1 ? " (req $i)" : '';

    if (!ref $res) {
        if ($res =~ /timed out/ && defined $block->abort) {
            return;
        }
        Test::More::fail("$name - request$sfx: $res");
        return;
    }

    my $code = _nth($name, scalar $block->error_code, $i, $n);
    $code = 200 unless defined $code && length $code;
    $code =~ s/\s+//g;
    Test::More::is($res->{code}, $code, "$name - status code ok$sfx");

    if (defined(my $hdrs = _nth($name, scalar $block->response_headers,
                              $i, $n)))
    {
        for my $line (split /\n/, $hdrs) {
            next unless $line =~ /\S/;
            if ($line =~ /^\s*!\s*([^:\s]+)\s*$/) {
                Test::More::ok(!defined $res->{headers}{ lc $1 },
                               "$name - header $1 not present$sfx");
                next;
            }
            my ($k, $v) = $line =~ /^\s*([^:]+?)\s*:\s?(.*)$/ or next;
            Test::More::is($res->{headers}{ lc $k }, $v,
                           "$name - header $k ok$sfx");
        }
    }

    if (defined(my $hdrs = _nth($name, scalar $block->response_headers_like,
                              $i, $n)))
    {
        for my $line (split /\n/, $hdrs) {
            my ($k, $v) = $line =~ /^\s*([^:]+?)\s*:\s?(.*)$/ or next;
            Test::More::like($res->{headers}{ lc $k } // '', qr/$v/,
                             "$name - header $k like ok$sfx");
        }
    }

    if (defined(my $body = _nth($name, scalar $block->response_body,
                              $i, $n)))
    {
        Test::More::is($res->{body}, _expand_env($body),
                       "$name - response_body - response is expected$sfx");
    }

    if (defined(my $like = _nth($name, scalar $block->response_body_like,
                              $i, $n)))
    {
        my $re = ref $like eq 'Regexp' ? $like : qr/$like/s;
        Test::More::like($res->{body}, $re,
                         "$name - response_body_like - response is "
                         . "expected$sfx");
    }
}

sub _patterns (@) {
    my ($v) = @_;
    return () unless defined $v;
    return @$v if ref $v eq 'ARRAY';
    return ($v) if ref $v eq 'Regexp';
    return grep { /\S/ } split /\n/, $v;
}

sub _check_log (@) {
    my ($block, $name, $log) = @_;

    for my $p (_patterns(scalar $block->error_log)) {
        if (ref $p eq 'Regexp') {
            Test::More::ok($log =~ $p, "$name - pattern \"$p\" should match "
                                       . "a line in error.log");
        } else {
            Test::More::ok(index($log, $p) >= 0,
                           "$name - pattern \"$p\" should match a line in "
                           . "error.log");
        }
    }

    for my $p (_patterns(scalar $block->no_error_log)) {
        if (ref $p eq 'Regexp') {
            Test::More::ok($log !~ $p, "$name - pattern \"$p\" should not "
                                       . "match any line in error.log");
        } else {
            Test::More::ok(index($log, $p) < 0,
                           "$name - pattern \"$p\" should not match any "
                           . "line in error.log")
                or Test::More::diag(join "\n",
                                    grep { index($_, $p) >= 0 }
                                    split /\n/, $log);
        }
    }
}

# The native pass (t/native/, RulesNative): a block whose nginx stores
# states in the Redis with the rules Redis module waits (2 s at most) for
# a worker's connection to have answered the RULES.STORE probe, so that
# its first events go as RULES.STORE too, not as EVALSHA (a block whose
# Redis is meant to be unreachable just waits the 2 s).
sub _wait_native ($) {
    my ($log_path) = @_;
    my $port = $ENV{TEST_NGINX_REDIS_NATIVE_PORT};

    return unless $RulesNative::Active && $port;
    return unless _slurp("$ServRoot/conf/nginx.conf")
                  =~ /^\s*rules_redis\s+127\.0\.0\.1:$port\b/m;

    for (1 .. 100 * RulesMemcheck::slowdown()) {
        return if _slurp($log_path)
                  =~ /connected \(states stored with RULES\.STORE\)/;
        sleep 0.02;
    }
}

sub run_test ($) {
    my ($block) = @_;
    my $name = $block->name;

    $_->($block) for @BlockPreprocessors;

    if (defined $block->init) {
        eval $block->init;
        die "init failed: $@" if $@;
    }

    _stop_nginx();
    _write_config($block);

    my $log_path = "$ServRoot/logs/error.log";
    my ($ok, $out) = _start_nginx();

    if (defined $block->must_die) {
        Test::More::ok(!$ok, "$name - nginx must die");
        _stop_nginx() if $ok;
        _check_log($block, $name, $out . _slurp($log_path));
        RulesMemcheck::check("$ServRoot/logs", $name);
        return;
    }

    unless ($ok) {
        Test::More::fail("$name - nginx failed to start: $out");
        _stop_nginx();
        RulesMemcheck::check("$ServRoot/logs", $name);
        return;
    }

    _wait_native($log_path);

    # As upstream: the error log is checked after each request but the
    # last (after --- wait) and once more after them all (after --- wait
    # again), each time against what was logged since the previous check
    # (from this block's nginx's start the first time), or against the
    # whole log after check_accum_error_log().
    my $logged = 0;
    my $check_log = sub {
        if (defined(my $wait = $block->wait)) {
            sleep $wait;
        }
        return unless defined $block->error_log
                      || defined $block->no_error_log;
        # the log may lag the response by a few milliseconds
        sleep 0.05;
        my $log = _slurp($log_path);
        my $new = $CheckAccumErrLog ? $log : substr($log, $logged);
        $logged = length $log;
        _check_log($block, $name, $new);
    };

    _run_requests($block, sub {
        my ($i, $n, $res) = @_;
        _check_response($block, $name, $res, $i, $n)
            unless defined $block->ignore_response;
        $check_log->() if $i < $n - 1;
    });
    $check_log->();

    # leaks are reported when the processes exit
    if ($UseValgrind || $UseAsan) {
        _stop_nginx();
        RulesMemcheck::check("$ServRoot/logs", $name);
    }
}

sub run_tests () {
    for my $block (Test::Base::blocks()) {
        for my $r (1 .. $RepeatEach) {
            run_test($block);
        }
    }
    _stop_nginx() unless $ENV{TEST_NGINX_NO_CLEAN};
}

END {
    _stop_nginx() unless $ENV{TEST_NGINX_NO_CLEAN};
}

1;
