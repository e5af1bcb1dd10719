package RulesReplay;

# build/rules-replay run as a command by the tests (t/021, t/022): its
# input, output and error in files of a directory of the test's own,
# which holds the rules file (rules.json).

use strict;
use warnings;
use FindBin;
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);

# the binary (RULES_REPLAY, or the build's)
sub binary {
    return $ENV{RULES_REPLAY} // "$FindBin::Bin/../build/rules-replay";
}

sub slurp {
    my ($path) = @_;
    open my $fh, '<', $path or return '';
    local $/;
    my $s = <$fh>;
    return $s // '';
}

# Waits for a child, killing it after $secs; its exit code, or undef
# when it had to be killed.
sub wait_child {
    my ($pid, $secs) = @_;
    my $deadline = time + $secs;
    while (time < $deadline) {
        return $? >> 8 if waitpid($pid, WNOHANG) == $pid;
        sleep 0.02;
    }
    kill 'KILL', $pid;
    waitpid $pid, 0;
    return undef;
}

# rules-replay --rules $dir/rules.json ARGS with stdin from $opt{in} (a
# string) or $opt{stdin} (a path); stdout to a file or $opt{stdout};
# $opt{memory_kb}: its address space limited so (the shell's ulimit -v);
# $opt{no_rules}: without the --rules option.
# Returns { rc, out, err, secs }; rc is undef when it ran over 20 s.
sub run {
    my ($dir, $opt, @args) = @_;
    my $stdin = $opt->{stdin} // "$dir/stdin";
    if (defined $opt->{in}) {
        open my $fh, '>', $stdin or die;
        print $fh $opt->{in};
        close $fh;
    }
    my $start = time;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDIN, '<', $stdin or POSIX::_exit(126);
        open STDOUT, '>', $opt->{stdout} // "$dir/stdout"
            or POSIX::_exit(126);
        open STDERR, '>', "$dir/stderr" or POSIX::_exit(126);
        my @cmd = (binary(),
                   $opt->{no_rules} ? () : ('--rules', "$dir/rules.json"),
                   @args);
        @cmd = ('/bin/sh', '-c', 'ulimit -v "$0" && exec "$@"',
                $opt->{memory_kb}, @cmd) if $opt->{memory_kb};
        exec(@cmd) or POSIX::_exit(127);
    }
    my $rc = wait_child($pid, 20);
    return { rc => $rc, secs => time - $start,
             out => $opt->{stdout} ? '' : slurp("$dir/stdout"),
             err => slurp("$dir/stderr") };
}

1;
