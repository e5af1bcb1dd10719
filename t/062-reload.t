# nginx -s reload keeps serving, and rules that did not change keep their
# state; an edited rule starts fresh, and its old record leaves the key
# with the key's next write.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use RulesNginx;

my $redis_port = $ENV{TEST_NGINX_REDIS_PORT}
    or plan skip_all => 'TEST_NGINX_REDIS_PORT is not set';

my $before = <<'_EOC_';
{"rules": [
  {"id": "kept", "kind": "segment", "key": "uid", "type": "count",
   "min": 3, "within": "1h"},
  {"id": "edited", "kind": "segment", "key": "uid", "type": "count",
   "min": 3, "within": "1h"}
]}
_EOC_
(my $after = $before) =~ s/"min": 3, "within": "1h"\}\n\]/"min": 3, "within": "2h"}\n]/
    or die 'cannot edit the rules';

my $ngx = RulesNginx::start_nginx(
    prefix  => "$FindBin::Bin/servroot-062",
    workers => 2,
    files   => { 'rules.json' => $before },
    http    => <<"_EOC_");
    rules_redis 127.0.0.1:$redis_port;
    rules_redis_timeout 2s;
    rules_key_prefix "t062:$$:";
    rules_file ../html/rules.json;
    server {
        listen 127.0.0.1:\$PORT;
        location = /px {
            rules on;
            rules_field uid \$arg_uid;
            rules_time \$arg_ts;
            add_header X-Rules \$rules_matched always;
            return 204;
        }
    }
_EOC_

my ($st, $h) = RulesNginx::get($ngx->{port}, '/px?uid=u&ts=1000');
is($h->{'x-rules'} // '', '', 'first event: nothing yet');
($st, $h) = RulesNginx::get($ngx->{port}, '/px?uid=u&ts=2000');
is($h->{'x-rules'} // '', '', 'second event: nothing yet');

open my $fh, '>', "$ngx->{prefix}/html/rules.json" or die;
print $fh $after;
close $fh;
RulesNginx::reload_nginx($ngx);

# requests keep being answered while the workers are replaced
my $answered = 0;
for (1 .. 20) {
    my ($s) = RulesNginx::get($ngx->{port}, '/px?uid=other&ts=1');
    $answered++ if $s == 204;
    sleep 0.05;
}
is($answered, 20, 'every request answered during the reload');

RulesNginx::wait_log($ngx, qr/gracefully shutting down/);

($st, $h) = RulesNginx::get($ngx->{port}, '/px?uid=u&ts=3000');
is($h->{'x-rules'} // '', 'kept',
   'the unchanged rule kept its state; the edited one started fresh');

# more events: a worker's write (or a compaction) stores the state it
# computed, without the edited rule's old record; the stored state then
# holds two records (kept, and edited as it is now), not three
for my $i (1 .. 10) {
    RulesNginx::get($ngx->{port}, '/px?uid=u&ts=' . (3000 + $i));
}
my $replay = $ENV{RULES_REPLAY} // "$FindBin::Bin/../build/rules-replay";
SKIP: {
    skip "no $replay", 1 unless -x $replay;
    open my $sf, '-|', $replay, '--rules', "$ngx->{prefix}/html/rules.json",
        '--redis', "127.0.0.1:$redis_port", '--state', "t062:$$:{uid:u}"
        or die;
    binmode $sf;
    local $/;
    my $state = <$sf> // '';
    close $sf;
    # R1, then records: digest(8) type(1) expire from until(3 x 8) plen(2)
    my ($n, $p) = (0, 2);
    while ($p + 35 <= length $state) {
        $n++;
        $p += 35 + unpack('v', substr($state, $p + 33, 2));
    }
    is($n, 2, "two records stored: the edited rule's old one is gone")
        or diag(unpack('H*', $state));
}

unlike(RulesNginx::error_log($ngx), qr/\[(alert|crit|emerg)\]/,
       'no alert in the error log');
RulesNginx::stop_nginx($ngx);
done_testing();
