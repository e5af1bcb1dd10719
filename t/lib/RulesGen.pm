package RulesGen;

# Random rule files and event streams for the differential tests: the
# same stream goes through rules-replay's in-memory engine, through Redis
# (rules-replay --redis) and through nginx, and the results must agree.

use strict;
use warnings;
use JSON::PP ();
use RulesNative;

our @FIELDS = qw(type product path n);
our %ALPHABET = (
    type    => [qw(page view cart purchase)],
    product => [qw(P1 P2 P3)],
    path    => ['/home', '/sale', '/sale/x', '/cart'],
    n       => [qw(1 2 3 -1 0.5 x)],
);

sub new {
    my ($class, $seed) = @_;
    my $self = bless { seed => $seed, state => $seed || 1 }, $class;
    return $self;
}

# A small deterministic generator (the same streams on every perl).
sub rand_int {
    my ($self, $n) = @_;
    $self->{state} = ($self->{state} * 1103515245 + 12345) % 2147483648;
    return int(($self->{state} / 2147483648) * $n);
}

sub pick {
    my ($self, $list) = @_;
    return $list->[ $self->rand_int(scalar @$list) ];
}

sub cond {
    my ($self, $depth) = @_;
    my $r = $self->rand_int($depth > 1 ? 8 : 10);
    if ($r == 8) {
        return { all => [ map { $self->cond($depth + 1) } 1 .. 2 ] };
    }
    if ($r == 9) {
        return { any => [ map { $self->cond($depth + 1) } 1 .. 2 ] };
    }
    my $field = $self->pick(\@FIELDS);
    my $value = $self->pick($ALPHABET{$field});
    return { field => $field, eq => $value } if $r <= 2;
    return { field => $field, ne => $value } if $r == 3;
    return { field => $field, in => [ $value, $self->pick($ALPHABET{$field}) ] }
        if $r == 4;
    return { field => $field, prefix => substr($value, 0, 2) } if $r == 5;
    return { field => 'n', gt => 0.7 } if $r == 6;
    return { not => { field => $field, exists => JSON::PP::true } };
}

# Windows are whole seconds and events seconds apart: a state record's
# TTL runs on the wall clock from its last write (SPEC.md), so windows
# must outlast the test's own run time.
sub duration {
    my ($self, $max) = @_;
    return (1 + $self->rand_int($max)) . 's';
}

sub rules {
    my ($self, $n) = @_;
    my @rules;
    for my $i (1 .. $n) {
        my $type = $self->pick([qw(count distinct absence sequence)]);
        my %r = (
            id   => "r$i",
            kind => $self->rand_int(4) ? 'segment' : 'fraud',
            key  => $self->rand_int(3) ? 'uid' : 'ip',
            type => $type,
        );
        if ($type eq 'count' || $type eq 'distinct') {
            $r{min} = 1 + $self->rand_int(4);
            $r{within} = $self->duration(60);
            $r{where} = $self->cond(0) if $self->rand_int(3);
            $r{field} = $self->pick([qw(product path type)])
                if $type eq 'distinct';
        } elsif ($type eq 'absence') {
            $r{trigger} = $self->cond(0);
            $r{cancel} = $self->cond(0);
            my $within = 2 + $self->rand_int(60);
            $r{within} = "${within}s";
            $r{after} = $self->rand_int($within) . 's' if $self->rand_int(2);
        } else {
            my $steps = 1 + $self->rand_int(4);
            $r{steps} = [
                map {
                    my %s = (where => $self->cond(1));
                    $s{strict} = JSON::PP::true
                        if $_ > 1 && !$self->rand_int(3);
                    \%s;
                } 1 .. $steps
            ];
            $r{within} = $self->duration(80);
            $r{hold} = $self->rand_int(40) . 's' if $self->rand_int(2);
        }
        push @rules, \%r;
    }
    return { rules => \@rules };
}

sub events {
    my ($self, $n, $base) = @_;
    my @ev;
    my $t = $base // 1_000_000_000;
    for (1 .. $n) {
        my $r = $self->rand_int(10);
        $t += 1000 * ($r < 2 ? 0 : $r < 9 ? $self->rand_int(8)
                                          : -$self->rand_int(20));
        $t = 0 if $t < 0;
        my %e = (ts => $t);
        $e{uid} = $self->pick([qw(u1 u2 u3)]) if $self->rand_int(10);
        $e{ip} = $self->pick([qw(10.0.0.1 10.0.0.2)]) if $self->rand_int(10);
        for my $f (@FIELDS) {
            $e{$f} = $self->pick($ALPHABET{$f}) if $self->rand_int(3);
        }
        push @ev, \%e;
    }
    return \@ev;
}

sub json {
    my ($data) = @_;
    return JSON::PP->new->canonical->encode($data);
}

1;
