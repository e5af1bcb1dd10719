# Sourced by bench/run.sh when BENCH_CLUSTER=N (N >= 1): a Redis Cluster
# of N masters without replicas on loopback ports, slots split evenly
# (CLUSTER MEET and ADDSLOTSRANGE, so that 1 and 2 masters work too), in
# place of the single Redis.  Sets redis_directive (for nginx.conf) and
# redis_ports (whose INFO the benchmark sums); cluster_stop stops every
# server by PID.

cluster_pids=()
redis_ports=

cluster_start() {
    local n=$1 i port bus first= first_bus= from to
    redis_ports=
    for i in $(seq "$n"); do
        port=$(free_port)
        bus=$(free_port)
        mkdir -p "$out/redis/n$i"
        redis-server --port "$port" --cluster-port "$bus" --bind 127.0.0.1 \
            --cluster-enabled yes --cluster-config-file "$out/redis/n$i/nodes.conf" \
            --save '' --appendonly no --daemonize no --dir "$out/redis/n$i" \
            --loadmodule "$redis_module" \
            > "$out/redis/n$i/redis.log" 2>&1 &
        cluster_pids+=($!)
        for _ in $(seq 50); do
            redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
            sleep 0.1
        done
        redis_ports="$redis_ports $port"
        [ -n "$first" ] || { first=$port; first_bus=$bus; }
    done
    i=0
    for port in $redis_ports; do
        [ "$port" = "$first" ] || redis-cli -p "$port" cluster meet 127.0.0.1 "$first" "$first_bus" > /dev/null
        from=$((16384 * i / n))
        to=$((16384 * (i + 1) / n - 1))
        redis-cli -p "$port" cluster addslotsrange "$from" "$to" > /dev/null
        i=$((i + 1))
    done
    local ok=0
    for _ in $(seq 200); do
        ok=1
        for port in $redis_ports; do
            redis-cli -p "$port" cluster info | grep -q 'cluster_state:ok' || ok=0
            [ "$(redis-cli -p "$port" cluster nodes | grep -c master)" = "$n" ] || ok=0
        done
        [ "$ok" = 1 ] && break
        sleep 0.1
    done
    [ "$ok" = 1 ] || { echo "bench: the Redis Cluster is not ready" >&2; exit 1; }
    redis_directive="rules_redis_cluster 127.0.0.1:$first;"
    echo "== Redis Cluster: $n master(s) on ports$redis_ports"
}

cluster_stop() {
    local pid
    for pid in "${cluster_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    cluster_pids=()
}
