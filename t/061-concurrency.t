# Many parallel events for one key, spread over two workers, give the same
# final state as the same events applied one after another, and exactly
# one of them sees a count reach its minimum (no lost update).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use RulesNginx;

my $replay = $ENV{RULES_REPLAY} // "$FindBin::Bin/../build/rules-replay";
my $redis_port = $ENV{TEST_NGINX_REDIS_PORT}
    or plan skip_all => 'TEST_NGINX_REDIS_PORT is not set';

my $N = 300;
my $CLIENTS = 10;
my $rules = <<'_EOC_';
{"rules": [
  {"id": "all_kept", "kind": "segment", "key": "uid", "type": "count",
   "min": 1000, "within": "1d"},
  {"id": "reached", "kind": "segment", "key": "uid", "type": "count",
   "min": 300, "within": "1d"},
  {"id": "devices", "kind": "fraud", "key": "uid", "type": "distinct",
   "field": "device", "min": 1000, "within": "1d"}
]}
_EOC_

my $ngx = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-061",
    workers => 2,
    files   => { 'rules.json' => $rules },
    http    => <<"_EOC_");
    rules_redis 127.0.0.1:$redis_port;
    rules_redis_timeout 5s;
    rules_key_prefix "t061:$$:par:";
    rules_file ../html/rules.json;
    server {
        listen 127.0.0.1:\$PORT;
        location = /px {
            rules on;
            rules_field uid \$arg_uid;
            rules_field device \$arg_d;
            rules_time \$arg_ts;
            add_header X-Rules \$rules_matched always;
            add_header X-Status \$rules_status always;
            return 204;
        }
    }
_EOC_

# $CLIENTS processes send the events in parallel, each its own slice
my $dir = tempdir(CLEANUP => 1);
my @pids;
for my $c (0 .. $CLIENTS - 1) {
    my $pid = fork();
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open my $out, '>', "$dir/client$c" or die;
        for (my $i = $c; $i < $N; $i += $CLIENTS) {
            my $ts = 1_000_000 + $i;
            my ($st, $h) = RulesNginx::get($ngx->{port},
                                           "/px?uid=par&d=dev$i&ts=$ts");
            print $out join("\t", $i, $st, $h->{'x-status'} // '',
                            $h->{'x-rules'} // ''), "\n";
        }
        close $out;
        POSIX::_exit(0);
    }
    push @pids, $pid;
}
waitpid $_, 0 for @pids;

my (@results, %status);
for my $c (0 .. $CLIENTS - 1) {
    open my $in, '<', "$dir/client$c" or die;
    while (<$in>) {
        chomp;
        my ($i, $st, $s, $r) = split /\t/, $_, 4;
        push @results, [$i, $st, $s, $r // ''];
        $status{$s}++;
    }
}

is(scalar @results, $N, "$N parallel requests answered");
is($status{ok} // 0, $N, 'every event evaluated with status ok')
    or diag(explain(\%status));
my $reached = grep { $_->[3] =~ /\breached\b/ } @results;
is($reached, 1, 'exactly one event saw the count reach its minimum');

# the same events, one after another, through rules-replay --redis
SKIP: {
    skip "no $replay", 3 unless -x $replay;
    open my $ev, '>', "$dir/events.jsonl" or die;
    for my $i (0 .. $N - 1) {
        printf $ev "{\"uid\":\"par\",\"device\":\"dev%d\",\"ts\":%d}\n",
               $i, 1_000_000 + $i;
    }
    close $ev;
    open my $rf, '>', "$dir/rules.json" or die;
    print $rf $rules;
    close $rf;
    system("$replay --rules $dir/rules.json --redis 127.0.0.1:$redis_port"
           . " --prefix t061:$$:seq: $dir/events.jsonl > /dev/null") == 0
        or die "rules-replay failed";

    # the stored values are logs compacted at different points: compare
    # the states they fold to
    my $par = folded_state("$dir/rules.json", "t061:$$:par:{uid:par}");
    my $seq = folded_state("$dir/rules.json", "t061:$$:seq:{uid:par}");
    ok(length $par, 'parallel state exists');
    is(length $par, length $seq, 'same state size');
    is(strip_expiry($par), strip_expiry($seq),
       'the parallel state equals the sequential one, byte for byte '
       . '(but for expiry times)');
}

RulesNginx::stop_nginx($ngx);
done_testing();

sub folded_state {
    my ($rules_file, $key) = @_;
    open my $fh, '-|', $replay, '--rules', $rules_file, '--redis',
        "127.0.0.1:$redis_port", '--state', $key or die "$replay: $!";
    binmode $fh;
    local $/;
    my $state = <$fh> // '';
    close $fh;
    return $state;
}

# GET a key with a raw RESP exchange (binary-safe)
sub redis_get {
    my ($key) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$redis_port")
        or die "redis: $!";
    print $s "*2\r\n\$3\r\nGET\r\n\$" . length($key) . "\r\n$key\r\n";
    my $line = <$s>;
    return '' unless $line =~ /^\$(\d+)/;
    my $len = $1;
    my $data = '';
    while (length $data < $len + 2) {
        my $n = read $s, $data, $len + 2 - length $data, length $data;
        last unless $n;
    }
    return substr $data, 0, $len;
}

# records: digest(8) type(1) expire(d) from(d) until(d) plen(H) payload
sub strip_expiry {
    my ($s) = @_;
    my $out = substr $s, 0, 2, '';
    while (length $s >= 35) {
        my $plen = unpack 'v', substr($s, 33, 2);
        substr($s, 9, 8) = "\0" x 8;
        $out .= substr $s, 0, 35 + $plen, '';
    }
    return $out . $s;
}
