/*
 * A Redis Cluster client per worker.
 *
 * Each master of the slot map has a node with its own persistent,
 * non-blocking, pipelined connection (ngx_http_rules_redis_t: AUTH and
 * SCRIPT LOAD on every new connection, reconnection with back-off, reply
 * watchdog).  A command goes to the master of the slot of its keys.
 *
 *   slot map   CLUSTER SLOTS, sent to a connected master (to a seed at
 *              start, or when no master is connected), always from a
 *              timer, never more often than every REFRESH_MIN ms (the
 *              interval doubles while refreshes fail, up to REFRESH_MAX,
 *              and while they bring the same map, up to REFRESH_SAME:
 *              a master down until its replica is promoted is asked
 *              about by every event of its slots).  It is asked for
 *              at start, on MOVED, on CLUSTERDOWN, and when a command
 *              finds its master not connected or loses its connection
 *              (a failover: the old master is gone until the map names
 *              the promoted replica).
 *   MOVED      the slot belongs to another master from now on: the map
 *              entry is changed at once, a refresh is planned, and the
 *              command is sent again to that master.
 *   ASK        the slot is being migrated and the key is already on the
 *              target: ASKING and the command go to the target's
 *              connection back to back; the map is not changed.
 *   drain      when a slot changes master (MOVED, or a refresh while the
 *              old one still serves slots) and the old master has
 *              commands in flight, the slot's new commands are held, in
 *              order, until the old master has answered all of those,
 *              and the slot has no command left in flight anywhere (one
 *              sent on after MOVED may come back MOVED again, the slot
 *              having moved twice within its round trip; one sent again
 *              after NOSCRIPT): the ones that come back MOVED are sent
 *              again first, so a key's commands reach the new master in
 *              the order they were made.
 *   start      the commands made before the worker's first map wait for
 *              it, in order (and go to masters still making their first
 *              connection, queued behind its setup), unless a refresh
 *              has failed: a new worker (a reload) fails no event while
 *              it learns the map, and a cluster that is down fails them
 *              at once.  The map is asked for as soon as a seed is
 *              connected (a seed that never answers does not hold it).
 *   nodes      found or made by address; a node that serves no slot and
 *              has been idle for GC_IDLE ms is closed (a former master
 *              after a failover, a seed that is a replica), from a timer.
 *
 * Nodes are never freed from a hiredis callback (that would free a
 * context inside its own callback): only from timers and at exit.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "rules_engine.h"
#include "ngx_http_rules_cluster.h"


#define NGX_HTTP_RULES_CLUSTER_REFRESH_MIN    100    /* ms */
#define NGX_HTTP_RULES_CLUSTER_CONNECT_POLL   5      /* ms */
#define NGX_HTTP_RULES_CLUSTER_REFRESH_MAX    2000   /* ms */
#define NGX_HTTP_RULES_CLUSTER_REFRESH_SAME   1000   /* ms */
#define NGX_HTTP_RULES_CLUSTER_GC_IDLE        5000   /* ms */
#define NGX_HTTP_RULES_CLUSTER_CHECK          1000   /* ms */
#define NGX_HTTP_RULES_CLUSTER_LOG_EVERY      1000   /* ms */
#define NGX_HTTP_RULES_CLUSTER_MAX_REDIRECTS  5
/*
 * The most masters a slot map may name: Redis Cluster is designed for
 * up to 1000 nodes.  Each is a connection of every worker, made when the
 * map comes; a map naming more (a node that is not Redis, a corrupted
 * stream: 16384 single-slot ranges, each its own master) is refused
 * whole, before any is made.
 */
#define NGX_HTTP_RULES_CLUSTER_MAX_MASTERS   1000
#define NGX_HTTP_RULES_CLUSTER_HOST_LEN       NGX_SOCKADDR_STRLEN


typedef struct ngx_http_rules_cluster_node_s  ngx_http_rules_cluster_node_t;

struct ngx_http_rules_cluster_node_s {
    ngx_http_rules_cluster_node_t     *next;
    ngx_http_rules_cluster_t          *cluster;
    ngx_http_rules_redis_t            *rd;
    ngx_http_rules_redis_conf_t        conf;    /* the template, and: */
    in_port_t                          port;
    ngx_uint_t                         slots;   /* served, in the map */
    ngx_uint_t                         sent;    /* commands, ever */
    ngx_uint_t                         answered;
    ngx_queue_t                        drains;  /* slots it lost, by mark */
    ngx_msec_t                         last_used;
    u_char                             host[
                                         NGX_HTTP_RULES_CLUSTER_HOST_LEN + 1];
    u_char                             addr[
                                         NGX_HTTP_RULES_CLUSTER_HOST_LEN + 9];
};


/* a slot whose new commands wait until its former master has answered
 * mark commands (its sent count when the slot left) */
typedef struct {
    ngx_queue_t                        queue;
    ngx_uint_t                         slot;
    ngx_uint_t                         mark;
} ngx_http_rules_cluster_drain_t;


/* one command, in one block with a copy of its arguments */
typedef struct {
    ngx_http_rules_cluster_t          *cluster;
    ngx_http_rules_cluster_node_t     *node;    /* sent to */
    ngx_http_rules_redis_handler_pt    handler;
    void                              *data;
    const char                       **argv;
    size_t                            *argvlen;
    int                                argc;
    ngx_uint_t                         slot;
    ngx_uint_t                         redirects;
    ngx_uint_t                         counted;  /* in slot_inflight */
    ngx_queue_t                        queue;   /* held while draining,
                                                   or before the first
                                                   map */
} ngx_http_rules_cluster_cmd_t;


struct ngx_http_rules_cluster_s {
    ngx_http_rules_cluster_conf_t     *conf;
    ngx_log_t                         *log;
    const char                        *script;
    const char                        *sha1;

    ngx_http_rules_cluster_node_t     *nodes;
    ngx_http_rules_cluster_node_t     *refresh_node;   /* asked */
    ngx_uint_t                         mapped;         /* slots served */
    ngx_uint_t                         masters;

    ngx_event_t                        refresh_timer;
    ngx_event_t                        gc_timer;
    ngx_event_t                        check_timer;
    ngx_msec_t                         last_refresh;
    ngx_msec_t                         refresh_interval;
    ngx_msec_t                         failure_logged;
    ngx_uint_t                         failures_unlogged;

    ngx_queue_t                        held;     /* commands, in order */
    ngx_queue_t                        unmapped; /* before the first map */

    ngx_http_rules_cluster_stats_t     stats;
    ngx_http_rules_redis_stats_t       gone;     /* of freed nodes */

    unsigned                           refreshing:1;   /* in flight */
    unsigned                           refresh_failing:1;  /* logged */
    unsigned                           destroying:1;
    unsigned                           hostname_logged:1;
    unsigned                           port_logged:1;

    /* the second of the last map change logged at notice: the others of
     * that second go at info (a resharding refreshes the map often) */
    time_t                             map_noticed;
    time_t                             unserved_warned;

    /* the master of each slot, or NULL; and a scratch map */
    ngx_http_rules_cluster_node_t     *slots[RULES_CLUSTER_SLOTS];
    ngx_http_rules_cluster_node_t     *next_slots[RULES_CLUSTER_SLOTS];

    /* the former master a slot's new commands wait for, or NULL */
    ngx_http_rules_cluster_node_t     *drain_from[RULES_CLUSTER_SLOTS];

    /*
     * Each slot's commands sent and not done yet, wherever they are (a
     * command sent again after MOVED, ASK or NOSCRIPT stays one): a
     * slot's held commands go only once none is left, so one that the
     * old master sent elsewhere (and that may come back MOVED again, the
     * slot having moved twice within its round trip) reaches the new
     * master before them.
     */
    uint32_t                           slot_inflight[RULES_CLUSTER_SLOTS];

    /* slots drained (to_release), the ones whose held commands go now
     * (releasing: one walk of the held list for all of them, not one
     * per slot), and drained ones waiting for their slot_inflight to
     * reach 0 (inflight_wait) */
    uint64_t                           to_release[RULES_CLUSTER_SLOTS / 64];
    uint64_t                           releasing[RULES_CLUSTER_SLOTS / 64];
    uint64_t                           inflight_wait[RULES_CLUSTER_SLOTS / 64];
    ngx_uint_t                         to_release_n;
    ngx_uint_t                         in_release;
};


#define ngx_http_rules_cluster_bit_test(map, s)                            \
    ((map)[(s) / 64] & ((uint64_t) 1 << ((s) % 64)))
#define ngx_http_rules_cluster_bit_set(map, s)                             \
    (map)[(s) / 64] |= ((uint64_t) 1 << ((s) % 64))
#define ngx_http_rules_cluster_bit_clear(map, s)                           \
    (map)[(s) / 64] &= ~((uint64_t) 1 << ((s) % 64))


/* a slot range's master, as the slot map names it */
typedef struct {
    u_char                            *host;
    size_t                             len;
    in_port_t                          port;
} ngx_http_rules_cluster_addr_t;


static ngx_http_rules_cluster_node_t *ngx_http_rules_cluster_node(
    ngx_http_rules_cluster_t *cl, u_char *host, size_t len, in_port_t port);
static void ngx_http_rules_cluster_node_free(ngx_http_rules_cluster_t *cl,
    ngx_http_rules_cluster_node_t *node, const char *reason);
static ngx_uint_t ngx_http_rules_cluster_numeric(u_char *host, size_t len);
static void ngx_http_rules_cluster_plan_refresh(ngx_http_rules_cluster_t *cl);
static void ngx_http_rules_cluster_refresh(ngx_event_t *ev);
static ngx_int_t ngx_http_rules_cluster_seeds(ngx_http_rules_cluster_t *cl);
static void ngx_http_rules_cluster_refresh_failed(
    ngx_http_rules_cluster_t *cl, const char *what, ngx_str_t *detail);
static void ngx_http_rules_cluster_slots_reply(void *data,
    redisReply *reply, ngx_int_t rc);
static ngx_int_t ngx_http_rules_cluster_slots_parse(
    ngx_http_rules_cluster_t *cl, redisReply *reply, ngx_uint_t *nchanged,
    const char **why);
static ngx_int_t ngx_http_rules_cluster_range_master(
    ngx_http_rules_cluster_t *cl, redisReply *range,
    ngx_http_rules_cluster_addr_t *addr, ngx_uint_t log);
static ngx_int_t ngx_http_rules_cluster_count_masters(
    ngx_http_rules_cluster_t *cl, redisReply *reply);
static int ngx_libc_cdecl ngx_http_rules_cluster_addr_cmp(const void *one,
    const void *two);
static void ngx_http_rules_cluster_gc(ngx_event_t *ev);
static void ngx_http_rules_cluster_check(ngx_event_t *ev);
static ngx_int_t ngx_http_rules_cluster_send(ngx_http_rules_cluster_cmd_t *cmd,
    ngx_http_rules_cluster_node_t *node, ngx_uint_t flags);
static void ngx_http_rules_cluster_reply(void *data, redisReply *reply,
    ngx_int_t rc);
static void ngx_http_rules_cluster_answer(ngx_http_rules_cluster_cmd_t *cmd,
    redisReply *reply, ngx_int_t rc);
static void ngx_http_rules_cluster_drain(ngx_http_rules_cluster_t *cl,
    ngx_uint_t slot, ngx_http_rules_cluster_node_t *old);
static void ngx_http_rules_cluster_drained(ngx_http_rules_cluster_t *cl,
    ngx_http_rules_cluster_node_t *node, ngx_uint_t all);
static void ngx_http_rules_cluster_release_later(ngx_http_rules_cluster_t *cl,
    ngx_uint_t slot);
static void ngx_http_rules_cluster_release(ngx_http_rules_cluster_t *cl);
static void ngx_http_rules_cluster_unmapped_go(ngx_http_rules_cluster_t *cl);
static void ngx_http_rules_cluster_go(ngx_http_rules_cluster_t *cl,
    ngx_http_rules_cluster_cmd_t *cmd);
static ngx_int_t ngx_http_rules_cluster_redirect(
    ngx_http_rules_cluster_cmd_t *cmd, redisReply *reply, ngx_uint_t ask);
static void ngx_http_rules_cluster_done(ngx_http_rules_cluster_cmd_t *cmd,
    redisReply *reply, ngx_int_t rc);
static ngx_uint_t ngx_http_rules_cluster_error_is(redisReply *reply,
    const char *prefix);
static void ngx_http_rules_cluster_failure(ngx_http_rules_cluster_t *cl,
    const char *fmt, ...);


ngx_http_rules_cluster_t *
ngx_http_rules_cluster_create(ngx_http_rules_cluster_conf_t *conf,
    const char *script, const char *script_sha1, ngx_log_t *log)
{
    ngx_http_rules_cluster_t  *cl;

    cl = ngx_calloc(sizeof(ngx_http_rules_cluster_t), log);
    if (cl == NULL) {
        return NULL;
    }

    cl->conf = conf;
    cl->log = log;
    cl->script = script;
    cl->sha1 = script_sha1;
    cl->refresh_interval = NGX_HTTP_RULES_CLUSTER_REFRESH_MIN;
    ngx_queue_init(&cl->held);
    ngx_queue_init(&cl->unmapped);

    /* cancelable: a graceful shutdown waits only for the requests */

    cl->refresh_timer.handler = ngx_http_rules_cluster_refresh;
    cl->refresh_timer.data = cl;
    cl->refresh_timer.log = log;
    cl->refresh_timer.cancelable = 1;

    cl->gc_timer.handler = ngx_http_rules_cluster_gc;
    cl->gc_timer.data = cl;
    cl->gc_timer.log = log;
    cl->gc_timer.cancelable = 1;

    cl->check_timer.handler = ngx_http_rules_cluster_check;
    cl->check_timer.data = cl;
    cl->check_timer.log = log;
    cl->check_timer.cancelable = 1;

    ngx_add_timer(&cl->check_timer, NGX_HTTP_RULES_CLUSTER_CHECK);

    if (ngx_http_rules_cluster_seeds(cl) != NGX_OK) {
        ngx_http_rules_cluster_destroy(cl);
        return NULL;
    }

    /* as soon as a seed is connected */
    cl->last_refresh = ngx_current_msec - cl->refresh_interval;
    ngx_http_rules_cluster_plan_refresh(cl);

    return cl;
}


/* The node of host:port, made (and connecting) when it is new. */
static ngx_http_rules_cluster_node_t *
ngx_http_rules_cluster_node(ngx_http_rules_cluster_t *cl, u_char *host,
    size_t len, in_port_t port)
{
    u_char                         *p;
    ngx_http_rules_cluster_node_t  *node;

    for (node = cl->nodes; node; node = node->next) {
        if (node->port == port && ngx_strlen(node->host) == len
            && ngx_strncmp(node->host, host, len) == 0)
        {
            return node;
        }
    }

    if (len == 0 || len > NGX_HTTP_RULES_CLUSTER_HOST_LEN) {
        return NULL;
    }

    node = ngx_calloc(sizeof(ngx_http_rules_cluster_node_t), cl->log);
    if (node == NULL) {
        return NULL;
    }

    node->cluster = cl;
    node->port = port;
    ngx_queue_init(&node->drains);
    node->last_used = ngx_current_msec;

    ngx_memcpy(node->host, host, len);
    node->host[len] = '\0';

    if (ngx_strlchr(host, host + len, ':')) {
        p = ngx_sprintf(node->addr, "[%*s]:%d", len, host, (int) port);

    } else {
        p = ngx_sprintf(node->addr, "%*s:%d", len, host, (int) port);
    }

    node->conf = *cl->conf->redis;
    node->conf.addr_text.data = node->addr;
    node->conf.addr_text.len = p - node->addr;
    node->conf.host.data = node->host;
    node->conf.host.len = len;
    node->conf.port = port;
    ngx_str_null(&node->conf.unix_path);
    node->conf.db = 0;

    node->rd = ngx_http_rules_redis_create(&node->conf, cl->script, cl->sha1,
                                           cl->log);
    if (node->rd == NULL) {
        ngx_free(node);
        return NULL;
    }

    node->next = cl->nodes;
    cl->nodes = node;

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, cl->log, 0,
                   "rules redis cluster: node %s", node->addr);

    return node;
}


/* Never from a hiredis callback: the node's pending commands fail now. */
static void
ngx_http_rules_cluster_node_free(ngx_http_rules_cluster_t *cl,
    ngx_http_rules_cluster_node_t *node, const char *reason)
{
    ngx_uint_t                       i;
    ngx_http_rules_redis_stats_t    *st;
    ngx_http_rules_cluster_node_t  **pn;

    for (pn = &cl->nodes; *pn; pn = &(*pn)->next) {
        if (*pn == node) {
            *pn = node->next;
            break;
        }
    }

    if (cl->refresh_node == node) {
        cl->refresh_node = NULL;
    }

    if (node->slots) {
        for (i = 0; i < RULES_CLUSTER_SLOTS; i++) {
            if (cl->slots[i] == node) {
                cl->slots[i] = NULL;
                cl->mapped--;
            }
        }
    }

    /* the counters of its connections stay in the totals */

    st = ngx_http_rules_redis_stats(node->rd);
    cl->gone.connects += st->connects;
    cl->gone.reconnects += st->reconnects;
    cl->gone.noscript += st->noscript;
    cl->gone.native += st->native;

    ngx_http_rules_redis_destroy(node->rd, reason);

    /* its commands failed above: nothing left to wait for */
    ngx_http_rules_cluster_drained(cl, node, 1);

    ngx_free(node);
}


/*
 * Workers never resolve names: a node must be given by its address, as
 * the C library reads one without a lookup (hiredis hands the host to
 * getaddrinfo(): "1.2.3." or "010.0.0.1", which nginx's own parser
 * takes, would be looked up, or read in octal).
 */
static ngx_uint_t
ngx_http_rules_cluster_numeric(u_char *host, size_t len)
{
    u_char  buf[NGX_INET6_ADDRSTRLEN + 1], addr[16];

    /* (a NUL in it: the C library would read the address before it) */

    if (len == 0 || len >= sizeof(buf)
        || ngx_strlchr(host, host + len, '\0') != NULL)
    {
        return 0;
    }

    ngx_memcpy(buf, host, len);
    buf[len] = '\0';

    if (inet_pton(AF_INET, (char *) buf, addr) == 1) {
        return 1;
    }

#if (NGX_HAVE_INET6)
    if (inet_pton(AF_INET6, (char *) buf, addr) == 1) {
        return 1;
    }
#endif

    return 0;
}


/* ---- the slot map -------------------------------------------------- */


/*
 * A refresh soon: at once when the last one is older than the interval,
 * else when it is; nothing when one is planned or in flight.  From a
 * timer only, so that it may be asked for from anywhere.
 */
static void
ngx_http_rules_cluster_plan_refresh(ngx_http_rules_cluster_t *cl)
{
    ngx_msec_t  elapsed, delay;

    if (cl->destroying || cl->refreshing || cl->refresh_timer.timer_set) {
        return;
    }

    elapsed = ngx_current_msec - cl->last_refresh;
    delay = elapsed >= cl->refresh_interval
            ? 1 : cl->refresh_interval - elapsed;

    ngx_add_timer(&cl->refresh_timer, delay);
}


static void
ngx_http_rules_cluster_refresh(ngx_event_t *ev)
{
    size_t                          argvlen[2];
    ngx_int_t                       masters;
    ngx_uint_t                      n;
    const char                     *argv[2];
    ngx_http_rules_cluster_t       *cl;
    ngx_http_rules_cluster_node_t  *node, *pick;

    cl = ev->data;

    if (cl->refreshing || cl->destroying) {
        return;
    }

    /*
     * A connected master, starting at a random one: the refreshes of
     * the workers are spread over the cluster; else any connected node;
     * else the seeds (made again if they were closed), and while one is
     * still making its connection, soon again (a seed that never answers
     * does not hold the map: the first one connected gives it).
     */

    pick = NULL;

    for (masters = 1; masters >= 0 && pick == NULL; masters--) {
        n = 0;

        for (node = cl->nodes; node; node = node->next) {
            if (ngx_http_rules_redis_ready(node->rd)
                && (node->slots || !masters))
            {
                n++;
            }
        }

        if (n == 0) {
            continue;
        }

        n = (ngx_uint_t) ngx_random() % n;

        for (node = cl->nodes; node; node = node->next) {
            if (ngx_http_rules_redis_ready(node->rd)
                && (node->slots || !masters)
                && n-- == 0)
            {
                pick = node;
                break;
            }
        }
    }

    if (pick == NULL) {
        if (ngx_http_rules_cluster_seeds(cl) != NGX_OK) {
            ngx_http_rules_cluster_refresh_failed(cl,
                                    "cannot make the seed connections", NULL);
            return;
        }

        cl->last_refresh = ngx_current_msec;

        for (node = cl->nodes; node; node = node->next) {
            if (ngx_http_rules_redis_accepting(node->rd)) {
                /* connecting: soon again, without counting a failure */
                ngx_add_timer(&cl->refresh_timer,
                              NGX_HTTP_RULES_CLUSTER_CONNECT_POLL);
                return;
            }
        }

        /* every node failed its last connection (each tries again after
         * its back-off) */
        ngx_http_rules_cluster_refresh_failed(cl, "no node can be reached",
                                              NULL);
        return;
    }

    argv[0] = "CLUSTER";
    argvlen[0] = sizeof("CLUSTER") - 1;
    argv[1] = "SLOTS";
    argvlen[1] = sizeof("SLOTS") - 1;

    cl->last_refresh = ngx_current_msec;

    if (ngx_http_rules_redis_command(pick->rd, 2, argv, argvlen,
                                     ngx_http_rules_cluster_slots_reply, cl)
        != NGX_OK)
    {
        ngx_http_rules_cluster_refresh_failed(cl,
                                    "cannot send CLUSTER SLOTS", NULL);
        return;
    }

    cl->refreshing = 1;
    cl->refresh_node = pick;
    pick->last_used = ngx_current_msec;

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, cl->log, 0,
                   "rules redis cluster: CLUSTER SLOTS to %s", pick->addr);
}


/* No node is connected: the seeds, to start again from them. */
static ngx_int_t
ngx_http_rules_cluster_seeds(ngx_http_rules_cluster_t *cl)
{
    ngx_uint_t                      i;
    ngx_http_rules_cluster_seed_t  *seed;

    seed = cl->conf->seeds->elts;

    for (i = 0; i < cl->conf->seeds->nelts; i++) {
        if (ngx_http_rules_cluster_node(cl, seed[i].host.data,
                                        seed[i].host.len, seed[i].port)
            == NULL)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* Logged once until a refresh works again; the interval doubles. */
static void
ngx_http_rules_cluster_refresh_failed(ngx_http_rules_cluster_t *cl,
    const char *what, ngx_str_t *detail)
{
    cl->stats.refresh_errors++;

    if (!cl->refresh_failing) {
        cl->refresh_failing = 1;

        if (detail) {
            ngx_log_error(NGX_LOG_WARN, cl->log, 0,
                          "rules redis cluster: slot map refresh failed: "
                          "%s: %V; retrying", what, detail);

        } else {
            ngx_log_error(NGX_LOG_WARN, cl->log, 0,
                          "rules redis cluster: slot map refresh failed: "
                          "%s; retrying", what);
        }
    }

    cl->refresh_interval *= 2;

    if (cl->refresh_interval > NGX_HTTP_RULES_CLUSTER_REFRESH_MAX) {
        cl->refresh_interval = NGX_HTTP_RULES_CLUSTER_REFRESH_MAX;
    }

    ngx_http_rules_cluster_plan_refresh(cl);

    /* the commands waiting for a first map fail, and the next ones at
     * once (refresh_failing), until a map comes */

    ngx_http_rules_cluster_unmapped_go(cl);
}


static void
ngx_http_rules_cluster_slots_reply(void *data, redisReply *reply,
    ngx_int_t rc)
{
    ngx_http_rules_cluster_t *cl = data;

    ngx_str_t    detail;
    ngx_uint_t   changed;
    const char  *why;

    cl->refreshing = 0;

    if (cl->destroying) {
        return;
    }

    if (rc != NGX_OK || reply == NULL) {
        ngx_http_rules_cluster_refresh_failed(cl, "connection lost", NULL);
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        detail.data = (u_char *) reply->str;
        detail.len = ngx_min((size_t) reply->len, 200);
        ngx_http_rules_cluster_refresh_failed(cl, "CLUSTER SLOTS", &detail);
        return;
    }

    if (ngx_http_rules_cluster_slots_parse(cl, reply, &changed, &why)
        != NGX_OK)
    {
        ngx_http_rules_cluster_refresh_failed(cl, why, NULL);
        return;
    }

    cl->stats.refreshes++;

    /*
     * The same map again: the next one later, up to REFRESH_SAME (the
     * check of every second still finds a promoted replica within it).
     */

    cl->refresh_interval = changed
                           ? NGX_HTTP_RULES_CLUSTER_REFRESH_MIN
                           : ngx_min(cl->refresh_interval * 2,
                                     NGX_HTTP_RULES_CLUSTER_REFRESH_SAME);

    if (cl->refresh_failing) {
        cl->refresh_failing = 0;
        ngx_log_error(NGX_LOG_NOTICE, cl->log, 0,
                      "rules redis cluster: slot map refreshed again");
    }

    ngx_http_rules_cluster_unmapped_go(cl);
}


/*
 * CLUSTER SLOTS: [start, end, [host, port, id, ...], replicas...] per
 * range.  The whole reply's structure is checked before the map changes;
 * a range whose master has no usable address ("?", a host name, a port
 * out of range such as a TLS-only node's 0) is left out, so its slots are
 * not served until a later map names one.  An empty or nil host
 * (cluster-preferred-endpoint-type unknown-endpoint) is the node that
 * answered.
 */
static ngx_int_t
ngx_http_rules_cluster_slots_parse(ngx_http_rules_cluster_t *cl,
    redisReply *reply, ngx_uint_t *nchanged, const char **why)
{
    size_t                          i;
    long long                       start, end, total;
    ngx_int_t                       n;
    ngx_uint_t                      s, changed, mapped, masters, level;
    redisReply                     *e;
    ngx_http_rules_cluster_addr_t   addr;
    ngx_http_rules_cluster_node_t  *node, *old, *from;

    static u_char                   buf[80];

    *why = "unexpected reply to CLUSTER SLOTS";

    if (reply->type != REDIS_REPLY_ARRAY) {
        return NGX_ERROR;
    }

    total = 0;

    for (i = 0; i < reply->elements; i++) {
        e = reply->element[i];

        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3
            || e->element[0]->type != REDIS_REPLY_INTEGER
            || e->element[1]->type != REDIS_REPLY_INTEGER
            || e->element[2]->type != REDIS_REPLY_ARRAY
            || e->element[2]->elements < 2
            || (e->element[2]->element[0]->type != REDIS_REPLY_STRING
                && e->element[2]->element[0]->type != REDIS_REPLY_NIL)
            || e->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
        {
            return NGX_ERROR;
        }

        start = e->element[0]->integer;
        end = e->element[1]->integer;

        if (start < 0 || end < start || end >= RULES_CLUSTER_SLOTS) {
            return NGX_ERROR;
        }

        /*
         * each slot in one range at most: so the map below writes at
         * most RULES_CLUSTER_SLOTS slots, whatever the reply (ranges that
         * overlap are not a cluster's map); and it makes at most
         * NGX_HTTP_RULES_CLUSTER_MAX_MASTERS nodes, counted below
         */

        total += end - start + 1;

        if (total > RULES_CLUSTER_SLOTS) {
            return NGX_ERROR;
        }
    }

    /* no more than as many masters as ranges: most maps are not counted */

    if (reply->elements > NGX_HTTP_RULES_CLUSTER_MAX_MASTERS) {
        n = ngx_http_rules_cluster_count_masters(cl, reply);

        if (n == NGX_ERROR) {
            *why = "CLUSTER SLOTS: not read: out of memory";
            return NGX_ERROR;
        }

        if (n > NGX_HTTP_RULES_CLUSTER_MAX_MASTERS) {
            ngx_snprintf(buf, sizeof(buf),
                         "CLUSTER SLOTS: %i masters, more than %d%Z", n,
                         NGX_HTTP_RULES_CLUSTER_MAX_MASTERS);
            *why = (const char *) buf;
            return NGX_ERROR;
        }
    }

    from = cl->refresh_node;
    ngx_memzero(cl->next_slots, sizeof(cl->next_slots));

    for (i = 0; i < reply->elements; i++) {
        e = reply->element[i];

        if (ngx_http_rules_cluster_range_master(cl, e, &addr, 1) != NGX_OK) {
            continue;
        }

        node = ngx_http_rules_cluster_node(cl, addr.host, addr.len,
                                           addr.port);
        if (node == NULL) {
            return NGX_ERROR;
        }

        for (s = (ngx_uint_t) e->element[0]->integer;
             s <= (ngx_uint_t) e->element[1]->integer;
             s++)
        {
            cl->next_slots[s] = node;
        }
    }

    /* the new map */

    for (node = cl->nodes; node; node = node->next) {
        node->slots = 0;
    }

    mapped = 0;
    masters = 0;

    for (s = 0; s < RULES_CLUSTER_SLOTS; s++) {
        node = cl->next_slots[s];

        if (node) {
            mapped++;

            if (node->slots++ == 0) {
                masters++;
            }
        }
    }

    changed = 0;

    for (s = 0; s < RULES_CLUSTER_SLOTS; s++) {
        node = cl->next_slots[s];
        old = cl->slots[s];

        if (old == node) {
            continue;
        }

        changed++;
        cl->slots[s] = node;

        if (old && ngx_http_rules_redis_accepting(old->rd)) {
            /*
             * its commands of the slot come back MOVED (resharding, even
             * of its last slot, or a manual failover): the slot's new
             * ones wait for them, also when they wait in its first
             * connection, still being made.  A master whose connection
             * is gone (a failover) had its commands fail: nothing to
             * wait for.
             */
            ngx_http_rules_cluster_drain(cl, s, old);
        }
    }

    level = (cl->stats.refreshes == 0 || ngx_time() == cl->map_noticed)
            ? NGX_LOG_INFO : NGX_LOG_NOTICE;
    cl->mapped = mapped;
    cl->masters = masters;

    if (changed && level == NGX_LOG_NOTICE) {
        cl->map_noticed = ngx_time();
    }

    /* (the first map too: one without a slot changes none) */

    if (changed || cl->stats.refreshes == 0) {
        ngx_log_error(level, cl->log, 0,
                      "rules redis cluster: slot map from %s: %ui "
                      "master%s, %ui slot%s changed%s",
                      from ? from->addr : (u_char *) "?", masters,
                      masters == 1 ? "" : "s", changed,
                      changed == 1 ? "" : "s",
                      mapped == RULES_CLUSTER_SLOTS
                      ? "" : ", some slots not served");

        if (mapped != RULES_CLUSTER_SLOTS
            && ngx_time() != cl->unserved_warned)
        {
            cl->unserved_warned = ngx_time();
            ngx_log_error(NGX_LOG_WARN, cl->log, 0,
                          "rules redis cluster: %ui of %d slots have no "
                          "master: their events fail",
                          RULES_CLUSTER_SLOTS - mapped, RULES_CLUSTER_SLOTS);
        }
    }

    /* nodes that serve nothing are closed once idle */

    for (node = cl->nodes; node; node = node->next) {
        if (node->slots == 0) {
            if (!cl->gc_timer.timer_set) {
                ngx_add_timer(&cl->gc_timer, NGX_HTTP_RULES_CLUSTER_GC_IDLE);
            }

            break;
        }
    }

    *nchanged = changed;

    return NGX_OK;
}


/*
 * The master of a slot range of CLUSTER SLOTS (checked for its shape),
 * or NGX_DECLINED when it has no usable address ("?", a host name, a
 * port out of range such as a TLS-only node's 0; logged once, when "log"
 * is set: for the map taken, not the one counted): the range's slots
 * are then not served.  An empty or nil host is the node that answered.
 */
static ngx_int_t
ngx_http_rules_cluster_range_master(ngx_http_rules_cluster_t *cl,
    redisReply *range, ngx_http_rules_cluster_addr_t *addr, ngx_uint_t log)
{
    u_char      *last, host[3 * 64];
    size_t       len;
    long long    port;
    redisReply  *m;

    m = range->element[2];
    port = m->element[1]->integer;

    if (m->element[0]->type == REDIS_REPLY_NIL) {
        addr->host = (u_char *) "";
        addr->len = 0;

    } else {
        addr->host = (u_char *) m->element[0]->str;
        addr->len = m->element[0]->len;
    }

    if (port < 1 || port > 65535) {
        if (log && !cl->port_logged) {
            cl->port_logged = 1;
            ngx_log_error(NGX_LOG_ERR, cl->log, 0,
                          "rules redis cluster: the master of slots "
                          "%L-%L has port %L (a node with a TLS port "
                          "only?): those slots are not served",
                          range->element[0]->integer,
                          range->element[1]->integer, port);
        }

        return NGX_DECLINED;
    }

    addr->port = (in_port_t) port;

    if (addr->len == 0 && cl->refresh_node) {
        /* an unknown endpoint: the node that answered */
        addr->host = cl->refresh_node->host;
        addr->len = ngx_strlen(cl->refresh_node->host);
    }

    if (!ngx_http_rules_cluster_numeric(addr->host, addr->len)) {
        if (log && !cl->hostname_logged) {
            cl->hostname_logged = 1;

            /* its first 64 bytes, escaped: any byte may come in a reply */
            len = ngx_min(addr->len, 64);
            last = (u_char *) ngx_escape_uri(host, addr->host, len,
                                             NGX_ESCAPE_URI_COMPONENT);

            ngx_log_error(NGX_LOG_ERR, cl->log, 0,
                          "rules redis cluster: the master of slots "
                          "%L-%L is \"%*s\"%s, not an IP address "
                          "(cluster-preferred-endpoint-type must be "
                          "\"ip\"): those slots are not served",
                          range->element[0]->integer,
                          range->element[1]->integer, last - host, host,
                          addr->len > len ? "..." : "");
        }

        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * The distinct masters a slot map names (its ranges' addresses sorted),
 * or NGX_ERROR when out of memory.
 */
static ngx_int_t
ngx_http_rules_cluster_count_masters(ngx_http_rules_cluster_t *cl,
    redisReply *reply)
{
    size_t                          i, n;
    ngx_int_t                       masters;
    ngx_http_rules_cluster_addr_t  *addrs;

    addrs = ngx_alloc(reply->elements * sizeof(ngx_http_rules_cluster_addr_t),
                      cl->log);
    if (addrs == NULL) {
        return NGX_ERROR;
    }

    n = 0;

    for (i = 0; i < reply->elements; i++) {
        if (ngx_http_rules_cluster_range_master(cl, reply->element[i],
                                                &addrs[n], 0)
            == NGX_OK)
        {
            n++;
        }
    }

    ngx_qsort(addrs, n, sizeof(ngx_http_rules_cluster_addr_t),
              ngx_http_rules_cluster_addr_cmp);

    masters = (n > 0);

    for (i = 1; i < n; i++) {
        if (ngx_http_rules_cluster_addr_cmp(&addrs[i - 1], &addrs[i]) != 0) {
            masters++;
        }
    }

    ngx_free(addrs);

    return masters;
}


static int ngx_libc_cdecl
ngx_http_rules_cluster_addr_cmp(const void *one, const void *two)
{
    const ngx_http_rules_cluster_addr_t  *a = one;
    const ngx_http_rules_cluster_addr_t  *b = two;

    if (a->port != b->port) {
        return a->port < b->port ? -1 : 1;
    }

    if (a->len != b->len) {
        return a->len < b->len ? -1 : 1;
    }

    return ngx_memcmp(a->host, b->host, a->len);
}


/* Closes the nodes that serve no slot and have been idle for a while. */
static void
ngx_http_rules_cluster_gc(ngx_event_t *ev)
{
    ngx_uint_t                      left;
    ngx_http_rules_cluster_t       *cl;
    ngx_http_rules_cluster_node_t  *node, *next;

    cl = ev->data;

    if (cl->destroying || cl->mapped == 0) {
        /* no map: the seeds may be all there is to ask */
        return;
    }

    left = 0;

    for (node = cl->nodes; node; node = next) {
        next = node->next;

        if (node->slots) {
            continue;
        }

        if (node == cl->refresh_node && cl->refreshing) {
            left++;
            continue;
        }

        if (ngx_http_rules_redis_inflight(node->rd)
            || ngx_current_msec - node->last_used
               < NGX_HTTP_RULES_CLUSTER_GC_IDLE)
        {
            left++;
            continue;
        }

        ngx_log_error(NGX_LOG_INFO, cl->log, 0,
                      "rules redis cluster: closing %s: it serves no slot",
                      node->addr);

        ngx_http_rules_cluster_node_free(cl, node, "it serves no slot");
    }

    if (left) {
        ngx_add_timer(&cl->gc_timer, NGX_HTTP_RULES_CLUSTER_GC_IDLE);
    }
}


/*
 * Every second: a master of the map without a connection (killed, a
 * failover under way) or slots without a master make a refresh, with or
 * without traffic, so that a promoted replica is found by every worker.
 */
static void
ngx_http_rules_cluster_check(ngx_event_t *ev)
{
    ngx_http_rules_cluster_t       *cl;
    ngx_http_rules_cluster_node_t  *node;

    cl = ev->data;

    if (cl->destroying) {
        return;
    }

    if (cl->mapped != RULES_CLUSTER_SLOTS) {
        ngx_http_rules_cluster_plan_refresh(cl);

    } else {
        for (node = cl->nodes; node; node = node->next) {
            if (node->slots && !ngx_http_rules_redis_ready(node->rd)) {
                ngx_http_rules_cluster_plan_refresh(cl);
                break;
            }
        }
    }

    ngx_add_timer(&cl->check_timer, NGX_HTTP_RULES_CLUSTER_CHECK);
}


/* ---- commands ------------------------------------------------------ */


ngx_int_t
ngx_http_rules_cluster_evalsha(ngx_http_rules_cluster_t *cl, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_rules_redis_handler_pt handler, void *data)
{
    int                             i;
    u_char                         *p;
    size_t                          size;
    ngx_int_t                       nkeys, rc;
    ngx_uint_t                      slot, unmapped;
    ngx_http_rules_cluster_cmd_t   *cmd;
    ngx_http_rules_cluster_node_t  *node;

    if (argc < 2 || argc > 65536) {
        return NGX_DECLINED;
    }

    nkeys = ngx_atoi((u_char *) argv[0], argvlen[0]);

    if (nkeys < 1 || nkeys >= argc) {
        ngx_log_error(NGX_LOG_ALERT, cl->log, 0,
                      "rules redis cluster: a command without keys");
        return NGX_DECLINED;
    }

    slot = rules_key_slot((const unsigned char *) argv[1], argvlen[1]);

    for (i = 2; i <= nkeys; i++) {
        if (rules_key_slot((const unsigned char *) argv[i], argvlen[i])
            != slot)
        {
            ngx_log_error(NGX_LOG_ALERT, cl->log, 0,
                          "rules redis cluster: the keys of one command "
                          "are in several slots");
            return NGX_DECLINED;
        }
    }

    node = cl->slots[slot];
    unmapped = 0;

    if (cl->drain_from[slot] == NULL
        && (node == NULL || !ngx_http_rules_redis_accepting(node->rd)))
    {
        ngx_http_rules_cluster_plan_refresh(cl);

        if (cl->stats.refreshes || cl->refresh_failing || cl->destroying) {
            /* a slot not served (a map came), its master unreachable, or
             * no map while refreshes fail */
            return NGX_DECLINED;
        }

        /* the worker's first map is on its way: the command waits */
        unmapped = 1;
    }

    size = sizeof(ngx_http_rules_cluster_cmd_t)
           + argc * (sizeof(const char *) + sizeof(size_t));

    for (i = 0; i < argc; i++) {
        size += argvlen[i];
    }

    cmd = ngx_alloc(size, cl->log);
    if (cmd == NULL) {
        return NGX_DECLINED;
    }

    cmd->cluster = cl;
    cmd->handler = handler;
    cmd->data = data;
    cmd->argc = argc;
    cmd->slot = slot;
    cmd->redirects = 0;
    cmd->counted = 0;
    cmd->argv = (const char **) (cmd + 1);
    cmd->argvlen = (size_t *) (cmd->argv + argc);

    p = (u_char *) (cmd->argvlen + argc);

    for (i = 0; i < argc; i++) {
        cmd->argv[i] = (const char *) p;
        cmd->argvlen[i] = argvlen[i];
        p = ngx_cpymem(p, argv[i], argvlen[i]);
    }

    if (unmapped) {
        cmd->node = NULL;
        ngx_queue_insert_tail(&cl->unmapped, &cmd->queue);
        return NGX_OK;
    }

    if (cl->drain_from[slot]) {
        /* after the commands the former master sends back */
        cmd->node = NULL;
        ngx_queue_insert_tail(&cl->held, &cmd->queue);
        return NGX_OK;
    }

    rc = ngx_http_rules_cluster_send(cmd, node, 0);

    if (rc != NGX_OK) {
        ngx_free(cmd);
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_rules_cluster_send(ngx_http_rules_cluster_cmd_t *cmd,
    ngx_http_rules_cluster_node_t *node, ngx_uint_t flags)
{
    ngx_int_t  rc;

    rc = ngx_http_rules_redis_evalsha_ex(node->rd, flags, cmd->argc,
                                         cmd->argv, cmd->argvlen,
                                         ngx_http_rules_cluster_reply, cmd);
    if (rc == NGX_OK) {
        cmd->node = node;
        node->sent++;
        node->last_used = ngx_current_msec;

        if (!cmd->counted) {
            cmd->counted = 1;
            node->cluster->slot_inflight[cmd->slot]++;
        }
    }

    return rc;
}


static void
ngx_http_rules_cluster_reply(void *data, redisReply *reply, ngx_int_t rc)
{
    ngx_http_rules_cluster_cmd_t *cmd = data;

    ngx_http_rules_cluster_t       *cl;
    ngx_http_rules_cluster_node_t  *node;

    /* nodes are not freed from callbacks: node outlives the command */

    cl = cmd->cluster;
    node = cmd->node;
    node->answered++;

    ngx_http_rules_cluster_answer(cmd, reply, rc);

    if (!ngx_queue_empty(&node->drains)) {
        ngx_http_rules_cluster_drained(cl, node, 0);
    }
}


static void
ngx_http_rules_cluster_answer(ngx_http_rules_cluster_cmd_t *cmd,
    redisReply *reply, ngx_int_t rc)
{
    ngx_http_rules_cluster_t  *cl;

    cl = cmd->cluster;

    if (rc != NGX_OK || reply == NULL) {
        /* the connection is lost: perhaps the master with it */
        ngx_http_rules_cluster_plan_refresh(cl);
        ngx_http_rules_cluster_done(cmd, NULL, NGX_ERROR);
        return;
    }

    if (reply->type != REDIS_REPLY_ERROR || cl->destroying) {
        ngx_http_rules_cluster_done(cmd, reply, NGX_OK);
        return;
    }

    if (ngx_http_rules_cluster_error_is(reply, "MOVED ")) {
        cl->stats.moved++;

        if (ngx_http_rules_cluster_redirect(cmd, reply, 0) == NGX_OK) {
            return;
        }

    } else if (ngx_http_rules_cluster_error_is(reply, "ASK ")) {
        cl->stats.ask++;

        if (ngx_http_rules_cluster_redirect(cmd, reply, 1) == NGX_OK) {
            return;
        }

    } else if (ngx_http_rules_cluster_error_is(reply, "CLUSTERDOWN")
               || ngx_http_rules_cluster_error_is(reply, "TRYAGAIN")
               || ngx_http_rules_cluster_error_is(reply, "LOADING"))
    {
        /* the cluster's state, not the command's: no need to log each */

        ngx_http_rules_cluster_failure(cl, "%s: %*s", cmd->node->addr,
                                       ngx_min((size_t) reply->len, 200),
                                       reply->str);
        ngx_http_rules_cluster_plan_refresh(cl);

    } else {
        /* the command's own error (a script error): the caller logs it */
        ngx_http_rules_cluster_done(cmd, reply, NGX_OK);
        return;
    }

    /* a failure of the cluster, logged above: the command fails */

    ngx_http_rules_cluster_done(cmd, NULL, NGX_ERROR);
}


/*
 * "MOVED <slot> <host>:<port>" or "ASK <slot> <host>:<port>" (an empty
 * host: the node that answered).  NGX_OK when the command is on its way
 * to the node named; otherwise the caller hands the reply to the
 * command's handler.
 */
static ngx_int_t
ngx_http_rules_cluster_redirect(ngx_http_rules_cluster_cmd_t *cmd,
    redisReply *reply, ngx_uint_t ask)
{
    u_char                         *p, *last, *host, *colon;
    size_t                          len;
    ngx_int_t                       slot, port;
    ngx_http_rules_cluster_t       *cl;
    ngx_http_rules_cluster_node_t  *node, *old;

    cl = cmd->cluster;
    p = (u_char *) reply->str;
    last = p + reply->len;

    /* the slot */

    p = ngx_strlchr(p, last, ' ');
    if (p == NULL) {
        goto invalid;
    }

    host = ngx_strlchr(++p, last, ' ');
    if (host == NULL) {
        goto invalid;
    }

    slot = ngx_atoi(p, host - p);
    host++;

    /* host:port, the port after the last colon (IPv6 hosts have some) */

    for (colon = last - 1; colon >= host && *colon != ':'; colon--) {
        /* void */
    }

    if (colon < host || slot == NGX_ERROR || slot >= RULES_CLUSTER_SLOTS) {
        goto invalid;
    }

    if ((ngx_uint_t) slot != cmd->slot) {
        /*
         * Redis names the slot of the call's key: another one is a node
         * (or a proxy) out of step, whose word must not move that slot
         */
        ngx_http_rules_cluster_failure(cl, "cannot follow \"%*s\": the "
                                       "call's slot is %ui",
                                       ngx_min((size_t) reply->len, 200),
                                       reply->str, cmd->slot);
        ngx_http_rules_cluster_plan_refresh(cl);
        return NGX_ERROR;
    }

    port = ngx_atoi(colon + 1, last - colon - 1);

    if (port < 1 || port > 65535) {
        goto invalid;
    }

    len = colon - host;

    if (len == 0) {
        host = cmd->node->host;
        len = ngx_strlen(host);
    }

    if (!ngx_http_rules_cluster_numeric(host, len)) {
        goto invalid;
    }

    node = ngx_http_rules_cluster_node(cl, host, len, (in_port_t) port);
    if (node == NULL) {
        ngx_http_rules_cluster_failure(cl, "slot %i: cannot make a node "
                                       "for %*s", slot, len, host);
        return NGX_ERROR;
    }

    if (!ask) {
        /* the slot has moved for good: to the new master from now on */

        old = cl->slots[slot];

        if (cmd->node != node) {
            /* the commands it still has for the slot come back too */
            ngx_http_rules_cluster_drain(cl, slot, cmd->node);
        }

        if (old != node) {
            if (old) {
                old->slots--;

            } else {
                cl->mapped++;
            }

            node->slots++;
            cl->slots[slot] = node;
        }

        ngx_http_rules_cluster_plan_refresh(cl);
    }

    if (++cmd->redirects > NGX_HTTP_RULES_CLUSTER_MAX_REDIRECTS) {
        ngx_http_rules_cluster_failure(cl, "slot %i: more than %d "
                                       "redirections, the last to %s", slot,
                                       NGX_HTTP_RULES_CLUSTER_MAX_REDIRECTS,
                                       node->addr);
        return NGX_ERROR;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_EVENT, cl->log, 0,
                   "rules redis cluster: %s slot %i to %s",
                   ask ? "ASK" : "MOVED", slot, node->addr);

    /*
     * A node just made is making its first connection: the command waits
     * in it (queued behind its setup); one that failed: the command fails
     * (the event fails open) rather than wait.
     */

    if (!ngx_http_rules_redis_accepting(node->rd)
        || ngx_http_rules_cluster_send(cmd, node,
                                       ask ? NGX_HTTP_RULES_REDIS_ASKING : 0)
           != NGX_OK)
    {
        ngx_http_rules_cluster_failure(cl, "slot %i: cannot follow %s to "
                                       "%s: not ready", slot,
                                       ask ? "ASK" : "MOVED", node->addr);
        return NGX_ERROR;
    }

    return NGX_OK;

invalid:

    ngx_http_rules_cluster_failure(cl, "cannot follow \"%*s\"",
                                   ngx_min((size_t) reply->len, 200),
                                   reply->str);

    return NGX_ERROR;
}


/*
 * The slot's new commands wait until old, which lost it, has answered
 * the commands sent to it so far: those of the slot come back MOVED and
 * are sent to the new master first.  Marks only grow: a node's drains
 * are in mark order.
 */
static void
ngx_http_rules_cluster_drain(ngx_http_rules_cluster_t *cl, ngx_uint_t slot,
    ngx_http_rules_cluster_node_t *old)
{
    ngx_http_rules_cluster_drain_t  *d;

    if (old->answered == old->sent || cl->drain_from[slot] != NULL) {
        return;
    }

    d = ngx_alloc(sizeof(ngx_http_rules_cluster_drain_t), cl->log);
    if (d == NULL) {
        /* the slot's order is not kept, its commands still go */
        return;
    }

    d->slot = slot;
    d->mark = old->sent;
    ngx_queue_insert_tail(&old->drains, &d->queue);
    cl->drain_from[slot] = old;

    ngx_log_debug3(NGX_LOG_DEBUG_EVENT, cl->log, 0,
                   "rules redis cluster: slot %ui waits for %ui commands "
                   "of %s", slot, old->sent - old->answered, old->addr);
}


/* The slots whose mark node has answered (all: node is going away). */
static void
ngx_http_rules_cluster_drained(ngx_http_rules_cluster_t *cl,
    ngx_http_rules_cluster_node_t *node, ngx_uint_t all)
{
    ngx_uint_t                       slot;
    ngx_queue_t                     *q;
    ngx_http_rules_cluster_drain_t  *d;

    while (!ngx_queue_empty(&node->drains)) {
        q = ngx_queue_head(&node->drains);
        d = ngx_queue_data(q, ngx_http_rules_cluster_drain_t, queue);

        if (!all && node->answered < d->mark) {
            break;
        }

        ngx_queue_remove(q);
        slot = d->slot;
        ngx_free(d);

        ngx_http_rules_cluster_release_later(cl, slot);
    }

    if (cl->to_release_n) {
        ngx_http_rules_cluster_release(cl);
    }
}


/* The slot's held commands are to go (ngx_http_rules_cluster_release()). */
static void
ngx_http_rules_cluster_release_later(ngx_http_rules_cluster_t *cl,
    ngx_uint_t slot)
{
    if (!ngx_http_rules_cluster_bit_test(cl->to_release, slot)) {
        ngx_http_rules_cluster_bit_set(cl->to_release, slot);
        cl->to_release_n++;
    }
}


/*
 * The commands held for the drained slots (cl->to_release) go, in the
 * order they were made, to their masters now (or fail, as a command of a
 * slot without a ready master does): one walk of the held list for all
 * of them (a failover that moves thousands of slots drains them in one
 * answer).  A slot that still has commands in flight (sent elsewhere
 * after MOVED or ASK, or again after NOSCRIPT) waits for them
 * (ngx_http_rules_cluster_done()).  The slots stay held while their
 * commands go: a command that a failure's handler makes for one is
 * queued behind them, and sent in a walk of this call.  Not reentered:
 * slots drained meanwhile are taken by the next round of the outer call.
 */
static void
ngx_http_rules_cluster_release(ngx_http_rules_cluster_t *cl)
{
    uint64_t                        bits;
    ngx_uint_t                      found, w, slot;
    ngx_queue_t                    *q, *next;
    ngx_http_rules_cluster_cmd_t   *cmd;

    if (cl->in_release) {
        return;
    }

    cl->in_release = 1;

    while (cl->to_release_n) {

        for (w = 0; w < RULES_CLUSTER_SLOTS / 64; w++) {
            for (bits = cl->to_release[w]; bits; bits &= bits - 1) {
                slot = w * 64 + (ngx_uint_t) __builtin_ctzll(bits);

                if (cl->slot_inflight[slot]) {
                    ngx_http_rules_cluster_bit_set(cl->inflight_wait, slot);

                } else {
                    ngx_http_rules_cluster_bit_set(cl->releasing, slot);
                }
            }

            cl->to_release[w] = 0;
        }

        cl->to_release_n = 0;

        do {
            found = 0;

            for (q = ngx_queue_head(&cl->held);
                 q != ngx_queue_sentinel(&cl->held);
                 q = next)
            {
                next = ngx_queue_next(q);
                cmd = ngx_queue_data(q, ngx_http_rules_cluster_cmd_t, queue);
                slot = cmd->slot;

                if (!ngx_http_rules_cluster_bit_test(cl->releasing, slot)) {
                    continue;
                }

                found = 1;
                ngx_queue_remove(q);
                ngx_http_rules_cluster_go(cl, cmd);
            }

        } while (found);

        for (w = 0; w < RULES_CLUSTER_SLOTS / 64; w++) {
            for (bits = cl->releasing[w]; bits; bits &= bits - 1) {
                slot = w * 64 + (ngx_uint_t) __builtin_ctzll(bits);
                cl->drain_from[slot] = NULL;
            }

            cl->releasing[w] = 0;
        }
    }

    cl->in_release = 0;
}


/*
 * The commands made before the worker's first map go to their masters,
 * in the order they were made, once a map came; they fail when a
 * refresh failed first (no slot has a master yet), or at exit.
 */
static void
ngx_http_rules_cluster_unmapped_go(ngx_http_rules_cluster_t *cl)
{
    ngx_queue_t  *q;

    while (!ngx_queue_empty(&cl->unmapped)) {
        q = ngx_queue_head(&cl->unmapped);
        ngx_queue_remove(q);
        ngx_http_rules_cluster_go(cl,
                   ngx_queue_data(q, ngx_http_rules_cluster_cmd_t, queue));
    }
}


/*
 * A command the worker held (a drained slot's, or one made before the
 * first map) goes to its slot's master now, or fails when the slot has
 * no master that takes commands (a refresh is planned), or at exit.
 */
static void
ngx_http_rules_cluster_go(ngx_http_rules_cluster_t *cl,
    ngx_http_rules_cluster_cmd_t *cmd)
{
    ngx_http_rules_cluster_node_t  *master;

    master = cl->slots[cmd->slot];

    if (cl->destroying || master == NULL
        || !ngx_http_rules_redis_accepting(master->rd)
        || ngx_http_rules_cluster_send(cmd, master, 0) != NGX_OK)
    {
        ngx_http_rules_cluster_plan_refresh(cl);
        ngx_http_rules_cluster_done(cmd, NULL, NGX_ERROR);
    }
}


static void
ngx_http_rules_cluster_done(ngx_http_rules_cluster_cmd_t *cmd,
    redisReply *reply, ngx_int_t rc)
{
    void                             *data;
    ngx_uint_t                        slot;
    ngx_http_rules_cluster_t         *cl;
    ngx_http_rules_redis_handler_pt   handler;

    handler = cmd->handler;
    data = cmd->data;
    cl = cmd->cluster;
    slot = cmd->slot;

    if (cmd->counted && --cl->slot_inflight[slot] == 0
        && ngx_http_rules_cluster_bit_test(cl->inflight_wait, slot))
    {
        /* the last of a drained slot's commands in flight: its held
         * commands go (once this one's handler has its answer) */
        ngx_http_rules_cluster_bit_clear(cl->inflight_wait, slot);
        ngx_http_rules_cluster_release_later(cl, slot);
    }

    ngx_free(cmd);

    handler(data, reply, rc);

    if (cl->to_release_n) {
        /* (inside a release, its next round takes them) */
        ngx_http_rules_cluster_release(cl);
    }
}


static ngx_uint_t
ngx_http_rules_cluster_error_is(redisReply *reply, const char *prefix)
{
    size_t  len;

    len = ngx_strlen(prefix);

    return (size_t) reply->len >= len
           && ngx_strncmp(reply->str, prefix, len) == 0;
}


/*
 * A command failed because of the cluster's state: at most one line a
 * second, however many events it fails, with the count of the others.
 */
static void
ngx_http_rules_cluster_failure(ngx_http_rules_cluster_t *cl,
    const char *fmt, ...)
{
    u_char   *p, buf[NGX_MAX_ERROR_STR];
    va_list   args;

    if (cl->failure_logged
        && ngx_current_msec - cl->failure_logged
           < NGX_HTTP_RULES_CLUSTER_LOG_EVERY)
    {
        cl->failures_unlogged++;
        return;
    }

    va_start(args, fmt);
    p = ngx_vslprintf(buf, buf + sizeof(buf), fmt, args);
    va_end(args);

    if (cl->failures_unlogged) {
        ngx_log_error(NGX_LOG_WARN, cl->log, 0,
                      "rules redis cluster: %*s (and %ui more failure%s "
                      "not logged)", p - buf, buf, cl->failures_unlogged,
                      cl->failures_unlogged == 1 ? "" : "s");

    } else {
        ngx_log_error(NGX_LOG_WARN, cl->log, 0,
                      "rules redis cluster: %*s", p - buf, buf);
    }

    cl->failure_logged = ngx_current_msec;
    cl->failures_unlogged = 0;
}


void
ngx_http_rules_cluster_write_now(ngx_http_rules_cluster_t *cl,
    ngx_uint_t slot)
{
    ngx_http_rules_cluster_node_t  *node;

    node = cl->slots[slot];

    if (node != NULL) {
        ngx_http_rules_redis_write_now(node->rd);
    }
}


ngx_http_rules_cluster_stats_t *
ngx_http_rules_cluster_stats(ngx_http_rules_cluster_t *cl)
{
    ngx_http_rules_redis_stats_t   *st;
    ngx_http_rules_cluster_node_t  *node;

    cl->stats.connects = cl->gone.connects;
    cl->stats.reconnects = cl->gone.reconnects;
    cl->stats.noscript = cl->gone.noscript;
    cl->stats.native = cl->gone.native;

    for (node = cl->nodes; node; node = node->next) {
        st = ngx_http_rules_redis_stats(node->rd);
        cl->stats.connects += st->connects;
        cl->stats.reconnects += st->reconnects;
        cl->stats.noscript += st->noscript;
        cl->stats.native += st->native;
    }

    return &cl->stats;
}


void
ngx_http_rules_cluster_destroy(ngx_http_rules_cluster_t *cl)
{
    cl->destroying = 1;

    if (cl->refresh_timer.timer_set) {
        ngx_del_timer(&cl->refresh_timer);
    }

    if (cl->gc_timer.timer_set) {
        ngx_del_timer(&cl->gc_timer);
    }

    if (cl->check_timer.timer_set) {
        ngx_del_timer(&cl->check_timer);
    }

    /* pending commands: handlers called with NGX_ERROR, right now */

    while (cl->nodes) {
        ngx_http_rules_cluster_node_free(cl, cl->nodes, "worker exiting");
    }

    /* then those that waited for a first map */

    ngx_http_rules_cluster_unmapped_go(cl);

    /* every node released its slots' commands (they failed) as it went */

    ngx_free(cl);
}
