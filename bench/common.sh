# Sourced by the bench scripts: what they share.

# bench_path_of NAME PATH: PATH made absolute, from where the script was
# started (it changes directory afterwards); NAME, the script's, starts
# the error when there is no such file.
bench_path_of() {
    realpath -e -- "$2" 2> /dev/null \
        || { echo "$1: $2 missing (make)" >&2; return 1; }
}

# bench_paths NAME RULES DEFAULT_MODULE [MODULE...]: sets rules to RULES
# and the array modules to the MODULEs given (DEFAULT_MODULE when none),
# each made absolute by bench_path_of.
bench_paths() {
    local name=$1 default=$3 m p
    rules=$(bench_path_of "$name" "$2") || return 1
    modules=()
    shift 3 || return 1
    for m in "${@:-$default}"; do
        p=$(bench_path_of "$name" "$m") || return 1
        modules+=("$p")
    done
}

# bench_px_location: nginx's /px location, SPEC.md's fields read from the
# arguments bench/pixel.lua sends, the matched rules in X-Rules.
bench_px_location() {
    cat <<'CONF'
        location = /px {
            rules on;
            rules_field uid     $arg_uid;
            rules_field ip      $arg_ip;
            rules_field device  $arg_d;
            rules_field type    $arg_e;
            rules_field product $arg_p;
            rules_field path    $arg_u;
            add_header X-Rules $rules_matched always;
            empty_gif;
        }
CONF
}

# bench_redis_unix NAME SOCK DIR MODULE [WRAPPER...]: a redis-server (run
# under WRAPPER, valgrind for instance, when one is given) with MODULE
# loaded, listening on the unix socket SOCK only, its files and its log
# in DIR (made anew); sets redis_pid, and returns once it answers PING,
# or 1 with its log's tail when it does not within a minute.
bench_redis_unix() {
    local name=$1 sock=$2 dir=$3 module=$4
    shift 4
    rm -rf "$dir" "$sock" && mkdir -p "$dir"
    "$@" redis-server --port 0 --unixsocket "$sock" --save '' \
        --appendonly no --dir "$dir" --loadmodule "$module" \
        > "$dir/log" 2>&1 &
    redis_pid=$!
    for _ in $(seq 600); do
        kill -0 "$redis_pid" 2> /dev/null || break
        redis-cli -s "$sock" ping 2> /dev/null | grep -q PONG && return 0
        sleep 0.1
    done
    echo "$name: Redis did not start with $module:" >&2
    tail -20 "$dir/log" >&2
    return 1
}

# bench_stop_nginx: the nginx of nginx_pid, if any, asked to finish
# (QUIT), up to a minute (one under valgrind writes its files then), then
# killed, reaped when it is the script's own child; nginx_pid cleared.
bench_stop_nginx() {
    [ -n "${nginx_pid:-}" ] || return 0
    kill -QUIT "$nginx_pid" 2> /dev/null || true
    for _ in $(seq 600); do
        kill -0 "$nginx_pid" 2> /dev/null || break
        sleep 0.1
    done
    kill -KILL "$nginx_pid" 2> /dev/null || true
    wait "$nginx_pid" 2> /dev/null || true
    nginx_pid=
}

# bench_start_nginx DIR: nginx started with DIR/nginx.conf, DIR its
# prefix; sets nginx_pid once the pid file is there (nginx returns before
# its daemon writes it), or returns 1.
bench_start_nginx() {
    /usr/sbin/nginx -p "$1/" -c nginx.conf || return 1
    for _ in $(seq 100); do
        [ -s "$1/logs/nginx.pid" ] && break
        sleep 0.05
    done
    nginx_pid=$(cat "$1/logs/nginx.pid") || return 1
}

# bench_nginx_cpu PID: the CPU seconds (user+sys) PID's children (nginx's
# workers) used so far
bench_nginx_cpu() {
    local p
    for p in $(pgrep -P "$1" || true); do cat "/proc/$p/stat"; done | perl -ane '
        # the fields after the command name (which may hold spaces)
        s/^.*\) //; @f = split; $t += $f[11] + $f[12];
        END { printf "%.2f\n", ($t // 0) / '"$(getconf CLK_TCK)"' }'
}

# bench_redis_stat COMMANDS: from the INFO all of one or more Redis on
# stdin, "calls usec failed cpu": the calls, usec and failed calls of the
# commands COMMANDS (a regex: evalsha|rules\.store) and the CPU seconds
# (user+sys) of the servers
bench_redis_stat() {
    tr -d '\r' | BENCH_CMDS=$1 perl -ne '
        $c += $1, $u += $2 if /^cmdstat_(?:$ENV{BENCH_CMDS}):calls=(\d+),usec=(\d+)/;
        $f += $1 if /^cmdstat_(?:$ENV{BENCH_CMDS}):.*failed_calls=(\d+)/;
        $cpu += $1 if /^used_cpu_(?:user|sys):([\d.]+)/;
        END { printf "%d %d %d %.6f\n", $c // 0, $u // 0, $f // 0, $cpu }'
}

# bench_wrk_requests CONNS SECS SCRIPT URL LOG: wrk's completed requests
# over SECS seconds (its output in LOG; on its failure, shown, and 1)
bench_wrk_requests() {
    wrk -t1 -c"$1" -d"${2}s" -s "$3" "$4" > "$5" 2>&1 \
        || { cat "$5" >&2; return 1; }
    sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' "$5"
}

# bench_median: the median of the numbers on stdin, one a line
bench_median() {
    sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'
}
