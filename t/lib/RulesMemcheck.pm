package RulesMemcheck;

# Memory checking of the nginx processes a test starts, shared by the
# Test::Nginx runner (t/lib/Test/Nginx/Socket.pm) and RulesNginx.pm:
#
#   TEST_NGINX_USE_VALGRIND=1   nginx runs under valgrind's memcheck, one
#                               log per process (valgrind.<pid>.log)
#   TEST_NGINX_USE_ASAN=1       nginx is tools/nginx-asan (the ASan/UBSan
#                               runtime preloaded into /usr/sbin/nginx,
#                               the module built with -fsanitize), which
#                               writes asan.<pid> and ubsan.<pid> logs
#
# check($dir, $name) looks at the logs in $dir once nginx has exited and
# adds one test: a failure lists what was found.

use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname);

my $Root = abs_path(dirname(__FILE__) . '/../..');

sub valgrind { return $ENV{TEST_NGINX_USE_VALGRIND} ? 1 : 0 }
sub asan     { return $ENV{TEST_NGINX_USE_ASAN} ? 1 : 0 }
sub active   { return valgrind() || asan() }

# How much slower nginx is: timeouts of the tests scale with it.
sub slowdown {
    return valgrind() ? 20 : asan() ? 3 : 1;
}

# The valgrind command that precedes nginx's: it follows the forks
# (daemon, workers), one log per process.
sub valgrind_cmd {
    my ($logdir) = @_;
    my @vg = ('valgrind', '--tool=memcheck', '--leak-check=full',
              '--show-possibly-lost=no', '--num-callers=30',
              '--keep-debuginfo=yes',
              "--log-file=$logdir/valgrind.%p.log");
    my $supp = "$Root/t/valgrind.suppress";
    push @vg, "--suppressions=$supp" if -f $supp;
    return @vg;
}

sub _slurp {
    my ($path) = @_;
    open my $fh, '<', $path or return '';
    local $/;
    my $data = <$fh>;
    close $fh;
    return $data // '';
}

# memcheck errors and definite leaks in every valgrind log of $dir
sub valgrind_problems {
    my ($dir) = @_;
    my @bad;
    for my $f (sort glob "$dir/valgrind*.log") {
        my $log = _slurp($f);
        my $n = (split m{/}, $f)[-1];
        push @bad, "$n: $1"
            while $log =~ /(==\d+== (?:Invalid|Conditional|Syscall param|Mismatched|Source and destination|Argument)[^\n]*\n(?:==\d+==    [^\n]*\n){0,10})/g;
        push @bad, "$n: $1"
            if $log =~ /(==\d+==\s+definitely lost: [1-9][\d,]* bytes[^\n]*)/;
        # the allocation stacks of the first definite leaks
        my $k = 0;
        while ($log =~ /^(==\d+== [^\n]*definitely lost in loss record[^\n]*\n(?:==\d+==    [^\n]*\n){1,12})/mg
               && $k++ < 3)
        {
            push @bad, "$n:\n$1";
        }
    }
    return @bad;
}

# A frame of the module or of the engine: function names, the .so, or the
# sources (with debug information, frames name the file).
my $Ours = qr{ngx_http_rules_module\.so|\bin (?:ngx_http_rules_|rules_)|/(?:ngx_module|src)/[a-z_]+\.c:};

# Every ASan report and UBSan runtime error in $dir, except leaks that do
# not involve the module: nginx itself does not free, at exit, what it
# allocated outside its pools (a worker's connections and events from
# ngx_event_process_init, the environment copy of ngx_set_environment);
# its binary has no symbols, so these cannot be suppressed by name, and a
# leak counts when one of the frames of its allocation stack is ours.
sub sanitizer_problems {
    my ($dir) = @_;
    my @bad;

    # once UBSan has reported, the runtimes write to stderr whatever
    # their log_path: nginx's stderr is the error log
    for my $f (sort(glob("$dir/asan.*"), glob("$dir/ubsan.*")),
               "$dir/error.log")
    {
        my $log = _slurp($f);
        my $n = (split m{/}, $f)[-1];

        push @bad, "$n: $1" while $log =~ /^(.*runtime error:.*)$/mg;

        for my $report (split /^={20,}\n/m, $log) {
            my ($head) = $report =~ /^(==\d+==\s*(?:ERROR|WARNING): \w*Sanitizer.*)$/m
                or next;
            my @frames = $report =~ /^\s+(#\d+ .*)$/mg;

            if ($head !~ /LeakSanitizer: detected memory leaks/) {
                push @bad, "$n: $head\n    "
                           . join("\n    ", @frames[0 .. ($#frames < 11 ? $#frames : 11)]);
                next;
            }

            for my $leak (split /\n(?=(?:Direct|Indirect) leak of )/, $report) {
                next unless $leak =~ /^((?:Direct|Indirect) leak of [^\n]*)/;
                my $what = $1;
                @frames = $leak =~ /^\s+(#\d+ .*)$/mg;
                next unless grep { /$Ours/ } @frames;
                push @bad, "$n: $what\n    "
                           . join("\n    ", @frames[0 .. ($#frames < 11 ? $#frames : 11)]);
            }
        }
    }

    return @bad;
}

sub problems {
    my ($dir) = @_;
    return valgrind() ? valgrind_problems($dir)
         : asan() ? sanitizer_problems($dir)
         : ();
}

# One test: what valgrind or the sanitizers found in $dir (after nginx
# exited).  Nothing when neither is in use.
sub check {
    my ($dir, $name) = @_;
    return unless active();
    my $tool = valgrind() ? 'valgrind' : 'ASan/UBSan';
    my @bad = problems($dir);
    Test::More::ok(!@bad, "$name - $tool reports no error")
        or Test::More::diag("$tool ($dir):\n"
                            . join("\n", @bad[0 .. ($#bad < 9 ? $#bad : 9)]));
    return !@bad;
}

1;
