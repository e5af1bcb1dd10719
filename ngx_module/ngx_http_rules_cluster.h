/*
 * A Redis Cluster client per worker, on top of ngx_http_rules_redis_t:
 * one persistent non-blocking connection per master, the slot map learnt
 * with CLUSTER SLOTS, MOVED and ASK redirections followed.
 */

#ifndef NGX_HTTP_RULES_CLUSTER_H
#define NGX_HTTP_RULES_CLUSTER_H

#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_rules_redis.h"


/* a seed node, as configured: host:port resolved at configuration time */
typedef struct {
    ngx_str_t                      addr_text;
    ngx_str_t                      host;       /* numeric, NUL-terminated */
    in_port_t                      port;
} ngx_http_rules_cluster_seed_t;


/*
 * Owned by the caller for the cluster's whole life.  Every connection
 * takes its settings (password, user, timeouts, back-off, max_inflight
 * per node) from the template; its address from the slot map.
 */
typedef struct {
    ngx_http_rules_redis_conf_t   *redis;      /* template */
    ngx_array_t                   *seeds;      /* of seed_t, at least one */
} ngx_http_rules_cluster_conf_t;


/* counters since the worker started (connections: over every node) */
typedef struct {
    ngx_uint_t                     moved;      /* MOVED redirections */
    ngx_uint_t                     ask;        /* ASK redirections */
    ngx_uint_t                     refreshes;  /* slot maps received */
    ngx_uint_t                     refresh_errors;
    ngx_uint_t                     connects;
    ngx_uint_t                     reconnects;
    ngx_uint_t                     noscript;
    ngx_uint_t                     native;     /* calls as RULES.STORE */
} ngx_http_rules_cluster_stats_t;


typedef struct ngx_http_rules_cluster_s  ngx_http_rules_cluster_t;


/*
 * In init_process: connects to the seeds and asks one of them for the
 * slot map; never blocks.  NULL only when out of memory.
 */
ngx_http_rules_cluster_t *ngx_http_rules_cluster_create(
    ngx_http_rules_cluster_conf_t *conf, const char *script,
    const char *script_sha1, ngx_log_t *log);

/*
 * EVALSHA on the master of the slot of the call's keys: argv starts with
 * numkeys, then the keys (argv[1] is the first), as for
 * ngx_http_rules_redis_evalsha().  Every key must hash to the same slot
 * (Redis refuses CROSSSLOT).  MOVED (the map is updated and refreshed)
 * and ASK (ASKING, then the command, on the target's connection) are
 * followed, up to a few redirections; a NOSCRIPT is answered by EVAL on
 * that node.  The handler sees the final reply.
 *
 * NGX_DECLINED when the command cannot be sent now: keys in several
 * slots, slot map not known while refreshes fail, slot not served, its
 * master not connected after a failure (a refresh of the map is
 * planned), or max_inflight reached.  Before the worker's first map, and
 * to a master making its first connection, the command waits.
 * The handler is then not called; otherwise it is called exactly once,
 * never from inside this function.
 */
ngx_int_t ngx_http_rules_cluster_evalsha(ngx_http_rules_cluster_t *cl,
    int argc, const char **argv, const size_t *argvlen,
    ngx_http_rules_redis_handler_pt handler, void *data);

/*
 * ngx_http_rules_redis_write_now() on the connection of the master of
 * slot, when it has one.
 */
void ngx_http_rules_cluster_write_now(ngx_http_rules_cluster_t *cl,
    ngx_uint_t slot);

ngx_http_rules_cluster_stats_t *ngx_http_rules_cluster_stats(
    ngx_http_rules_cluster_t *cl);

/*
 * In exit_process: fails every pending command (handlers get NGX_ERROR
 * before it returns), closes every connection, frees everything.
 */
void ngx_http_rules_cluster_destroy(ngx_http_rules_cluster_t *cl);

#endif /* NGX_HTTP_RULES_CLUSTER_H */
