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

# bench_stop_nginx PID: nginx asked to finish (QUIT), up to a minute (one
# under valgrind writes its files then), then killed; reaped when it is
# the script's own child.
bench_stop_nginx() {
    kill -QUIT "$1" 2> /dev/null || true
    for _ in $(seq 600); do
        kill -0 "$1" 2> /dev/null || break
        sleep 0.1
    done
    kill -KILL "$1" 2> /dev/null || true
    wait "$1" 2> /dev/null || true
}
