package RulesCluster;

# A private Redis Cluster on loopback ports for the t/10x tests: 3
# masters and 3 replicas (redis-server --cluster-enabled yes, then
# redis-cli --cluster create --cluster-replicas 1), each node on a free
# port with its bus on another free one (cluster-port), a short
# cluster-node-timeout so that a failover takes about a second.  Every
# server is registered with RulesNginx, which stops it by PID at exit,
# also when a test dies.

use strict;
use warnings;
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep time);
use RulesNginx;

sub new {
    my ($class, %opt) = @_;
    my $masters = $opt{masters} // 3;
    my $replicas = $opt{replicas} // 1;
    my $timeout = $opt{node_timeout} // 1000;
    my $pw = $opt{password};
    my $self = bless { dir => tempdir(CLEANUP => 1), nodes => [],
                       auth => $pw ? ['-a', $pw, '--no-auth-warning'] : [] },
                     $class;

    for my $i (1 .. $masters * (1 + $replicas)) {
        my $bus = RulesNginx::free_port();
        my $dir = "$self->{dir}/n$i";
        mkdir $dir or die "$dir: $!";
        my $r = RulesNginx::start_redis(args => [
            '--cluster-enabled', 'yes',
            '--cluster-port', $bus,
            '--cluster-config-file', "$dir/nodes.conf",
            '--cluster-node-timeout', $timeout,
            '--cluster-require-full-coverage', 'no',
            '--dir', $dir,
            '--logfile', "$dir/redis.log",
            ($pw ? ('--requirepass', $pw, '--masterauth', $pw) : ()),
            @{ $opt{args} // [] },
        ]);
        push @{ $self->{nodes} }, { port => $r->{port}, pid => $r->{pid},
                                    bus => $bus, dir => $dir };
    }

    my @addrs = map { "127.0.0.1:$_->{port}" } @{ $self->{nodes} };
    my $out = `redis-cli @{ $self->{auth} } --cluster create @addrs --cluster-replicas $replicas --cluster-yes 2>&1`;
    $? == 0 or die "redis-cli --cluster create failed:\n$out";
    $self->wait_ok(30) or die "the cluster is not ready:\n"
                              . $self->cli($addrs[0], 'CLUSTER', 'INFO');
    return $self;
}

sub ports { map { $_->{port} } @{ $_[0]{nodes} } }

sub seeds { join ' ', map { "127.0.0.1:$_->{port}" } @{ $_[0]{nodes} } }

sub seed { "127.0.0.1:$_[0]{nodes}[0]{port}" }

# redis-cli against one node ("127.0.0.1:P" or a port); the output.
sub cli {
    my ($self, $node, @args) = @_;
    my $port = $node =~ /:(\d+)$/ ? $1 : $node;
    return redis_cli(@{ $self->{auth} }, '-p', $port, @args);
}

# redis-cli with these arguments; its output, trailing space removed.
sub redis_cli {
    open my $fh, '-|', 'redis-cli', @_ or die "redis-cli: $!";
    local $/;
    my $out = <$fh> // '';
    close $fh;
    $out =~ s/\s+$//;
    return $out;
}

sub alive {
    my ($self) = @_;
    return grep { kill 0, $_->{pid} } @{ $self->{nodes} };
}

# Every live node sees cluster_state:ok, all slots served, and its own
# view of the masters agrees with the others'; replicas are in sync.
sub wait_ok {
    my ($self, $secs) = @_;
    my $deadline = time + ($secs // 30);
    while (time < $deadline) {
        my $good = 1;
        my %maps;
        for my $n ($self->alive) {
            my $info = $self->cli($n->{port}, 'CLUSTER', 'INFO');
            if ($info !~ /cluster_state:ok/ || $info !~ /cluster_slots_ok:16384/) {
                $good = 0;
                last;
            }
            $maps{ join ',', sort map { (split ' ')[1] } grep { /master/ && !/fail/ }
                   split /\n/, $self->cli($n->{port}, 'CLUSTER', 'NODES') } = 1;
            my $repl = $self->cli($n->{port}, 'INFO', 'replication');
            if ($repl =~ /role:slave/ && $repl !~ /master_link_status:up/) {
                $good = 0;
                last;
            }
        }
        return 1 if $good && keys %maps == 1;
        sleep 0.2;
    }
    return 0;
}

# The masters: { id, port } by port.  A node's address is HOST:PORT@CPORT
# (with ",HOSTNAME" after it on Redis 7): the port is the digits before
# the "@", whatever colons an IPv6 host has.
sub masters {
    my ($self) = @_;
    my ($n) = $self->alive;
    my %m;
    for (split /\n/, $self->cli($n->{port}, 'CLUSTER', 'NODES')) {
        my ($id, $addr, $flags) = split ' ';
        next unless $flags =~ /master/ && $flags !~ /fail/;
        my ($port) = $addr =~ /:(\d+)(?=[@,]|$)/;
        $m{$port} = $id;
    }
    return \%m;
}

sub node_id {
    my ($self, $port) = @_;
    return $self->cli($port, 'CLUSTER', 'MYID');
}

sub keyslot {
    my ($self, $key) = @_;
    my ($n) = $self->alive;
    return $self->cli($n->{port}, 'CLUSTER', 'KEYSLOT', $key);
}

# The port of the master serving a slot, as seen by a live node, or by
# the node on $view.
sub slot_master {
    my ($self, $slot, $view) = @_;
    $view //= ($self->alive)[0]{port};
    for my $line (split /\n/, $self->cli($view, 'CLUSTER', 'NODES')) {
        my @f = split ' ', $line;
        next unless $f[2] =~ /master/ && $f[2] !~ /fail/;
        my ($port) = $f[1] =~ /:(\d+)(?=[@,]|$)/;
        for my $r (@f[8 .. $#f]) {
            next if $r =~ /^\[/;
            my ($a, $b) = split /-/, $r;
            $b //= $a;
            return $port if $slot >= $a && $slot <= $b;
        }
    }
    return undef;
}

# CRC16/XMODEM and Redis' hash tag rule, in Perl: the tests pick keys by
# slot without asking a server for each.
sub crc16 {
    my ($s) = @_;
    my $crc = 0;
    for my $b (unpack 'C*', $s) {
        $crc ^= $b << 8;
        for (1 .. 8) {
            $crc = $crc & 0x8000 ? (($crc << 1) ^ 0x1021) & 0xffff
                                 : ($crc << 1) & 0xffff;
        }
    }
    return $crc;
}

sub key_slot {
    my ($key) = @_;
    my $open = index $key, '{';
    if ($open >= 0) {
        my $close = index $key, '}', $open + 1;
        $key = substr $key, $open + 1, $close - $open - 1
            if $close > $open + 1;
    }
    return crc16($key) % 16384;
}

# Every worker of an nginx has the slot map and a connection to each
# master (from its error log at level info): its events can all succeed.
sub wait_nginx_ready {
    my ($self, $ngx, $workers, $secs) = @_;
    my $deadline = time + ($secs // 20);
    while (time < $deadline) {
        my $masters = $self->masters;
        my (%map, %conn);
        for (split /\n/, RulesNginx::error_log($ngx)) {
            $map{$1} = 1 if /\] (\d+)#\d+: rules redis cluster: slot map from/;
            $conn{$1}{$2} = 1
                if /\] (\d+)#\d+: rules redis 127\.0\.0\.1:(\d+): connected/;
        }
        my @ready = grep {
            my $w = $_;
            !grep { !$conn{$w}{$_} } keys %$masters;
        } keys %map;
        return 1 if @ready >= $workers;
        sleep 0.1;
    }
    return 0;
}

# $workers workers of an nginx have connected to the node on $port since
# the error log was $since bytes long (after a failover: to the promoted
# replica, which they learn from the slot map).
sub wait_nginx_connected {
    my ($self, $ngx, $workers, $port, $since, $secs) = @_;
    my $deadline = time + ($secs // 20);
    for (;;) {
        my %w;
        for (split /\n/, substr(RulesNginx::error_log($ngx), $since)) {
            $w{$1} = 1
                if /\] (\d+)#\d+: rules redis 127\.0\.0\.1:$port: connected/;
        }
        return 1 if keys %w >= $workers;
        return 0 if time >= $deadline;
        sleep 0.1;
    }
}

# The replicas have every write of their masters.
sub wait_synced {
    my ($self, $secs) = @_;
    my $deadline = time + ($secs // 20);
    while (time < $deadline) {
        my $synced = 1;
        for my $n ($self->alive) {
            my $info = $self->cli($n->{port}, 'INFO', 'replication');
            next unless $info =~ /role:master/;
            my ($off) = $info =~ /master_repl_offset:(\d+)/;
            for my $slave ($info =~ /^slave\d+:(.*)$/mg) {
                my ($soff) = $slave =~ /offset=(\d+)/;
                $synced = 0 if !defined $soff || $soff < $off;
            }
        }
        return 1 if $synced;
        sleep 0.1;
    }
    return 0;
}

sub node_by_port {
    my ($self, $port) = @_;
    my ($n) = grep { $_->{port} == $port } @{ $self->{nodes} };
    return $n;
}

# $n users ("${name}0", "${name}1", ...) whose state keys
# ("${prefix}{uid:USER}") are on $n different masters, one each.
sub users_on_masters {
    my ($self, $prefix, $name, $n) = @_;
    my (%seen, @users);
    for my $i (0 .. 1000) {
        my $m = $self->slot_master(key_slot("$prefix\{uid:$name$i}"));
        next if $seen{$m}++;
        push @users, "$name$i";
        last if @users == $n;
    }
    return @users;
}

# SIGKILL a node by PID.
sub kill_node {
    my ($self, $port) = @_;
    my $n = $self->node_by_port($port) or die "no node on $port";
    RulesNginx::stop_pid($n->{pid}, 'KILL');
    $n->{dead} = 1;
}

1;
