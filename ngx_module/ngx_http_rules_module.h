/*
 * ngx_http_rules_module: types shared by the files of ngx_module/.
 */

#ifndef NGX_HTTP_RULES_MODULE_H
#define NGX_HTTP_RULES_MODULE_H

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "rules_engine.h"
#include "rules_json_event.h"
#include "ngx_http_rules_redis.h"
#include "ngx_http_rules_cluster.h"


#define NGX_HTTP_RULES_DEFAULT_PREFIX    "rules:"
#define NGX_HTTP_RULES_DEFAULT_TIMEOUT   50          /* ms */
#define NGX_HTTP_RULES_CONNECT_TIMEOUT   1000        /* ms */
#define NGX_HTTP_RULES_REPLY_TIMEOUT     1000        /* ms */
#define NGX_HTTP_RULES_BACKOFF_MIN       100         /* ms */
#define NGX_HTTP_RULES_BACKOFF_MAX       5000        /* ms */
#define NGX_HTTP_RULES_MAX_INFLIGHT      10000
#define NGX_HTTP_RULES_MAX_BODY_SIZE     (64 * 1024)
#define NGX_HTTP_RULES_MAX_EVENTS        100
#define NGX_HTTP_RULES_METRICS_ZONE_SIZE (1024 * 1024)
#define NGX_HTTP_RULES_STATE_CACHE_SIZE  (32 * 1024 * 1024)


typedef enum {
    NGX_HTTP_RULES_STATUS_NONE = 0,   /* rules not evaluated */
    NGX_HTTP_RULES_STATUS_OK,
    NGX_HTTP_RULES_STATUS_SKIPPED,
    NGX_HTTP_RULES_STATUS_INVALID,
    NGX_HTTP_RULES_STATUS_ERROR,
    NGX_HTTP_RULES_STATUS_TIMEOUT,
    NGX_HTTP_RULES_STATUS_LAST
} ngx_http_rules_status_e;


typedef struct ngx_http_rules_metrics_s  ngx_http_rules_metrics_t;


/* where a directive is, for the errors found after its block is read */
typedef struct {
    u_char                       *file;
    ngx_uint_t                    line;
} ngx_http_rules_where_t;


typedef struct {
    rules_set_t                  *rules;
    ngx_str_t                     rules_file;
    time_t                        rules_loaded;   /* load time */
    ngx_array_t                  *fields_warned;  /* rules_field arrays
                                                     whose startup
                                                     warnings were given */

    ngx_http_rules_redis_conf_t   redis_conf;
    ngx_flag_t                    redis_set;
    ngx_http_rules_cluster_conf_t cluster_conf;   /* rules_redis_cluster */
    ngx_flag_t                    cluster_set;
    ngx_msec_t                    timeout;        /* per event deadline */

    ngx_str_t                     key_prefix;
    ngx_http_rules_where_t        key_prefix_where;
    rules_limits_t                limits;
    size_t                        state_cache_size;
    ngx_flag_t                    shared_distinct;

    ngx_shm_zone_t               *metrics_zone;

    /* per worker: one of them */
    ngx_http_rules_redis_t       *redis;
    ngx_http_rules_cluster_t     *cluster;
} ngx_http_rules_main_conf_t;


typedef struct {
    int                           field;          /* index in the rules */
    ngx_uint_t                    decode;         /* $arg_: percent-decode */
    ngx_uint_t                    override;       /* JSON events: the value
                                                     replaces the member */
    ngx_str_t                     name;
    ngx_http_complex_value_t      value;
    ngx_int_t                     var_index;      /* the value is one
                                                     variable: its index,
                                                     read once; else -1 */
    ngx_str_t                     arg;            /* that variable is
                                                     $arg_<arg> (lowercase):
                                                     read with the others
                                                     in one pass */
    ngx_http_rules_where_t        where;
} ngx_http_rules_field_t;


typedef struct {
    ngx_flag_t                    enable;
    ngx_http_rules_where_t        enable_where;
    ngx_array_t                  *fields;         /* ngx_http_rules_field_t */
    ngx_http_complex_value_t     *time_value;     /* rules_time $var */
    ngx_str_t                     time_member;    /* rules_time name */
    ngx_http_rules_where_t        time_where;
    ngx_int_t                     time_field;     /* query mode: field */
    ngx_uint_t                    on_error_closed;
    ngx_uint_t                    reject_status;  /* 0: off */
    ngx_uint_t                    json_body;
    size_t                        max_body_size;
    ngx_uint_t                    max_events;
} ngx_http_rules_loc_conf_t;


typedef struct ngx_http_rules_op_s   ngx_http_rules_op_t;
typedef struct ngx_http_rules_cmd_s  ngx_http_rules_cmd_t;


typedef struct {
    ngx_http_request_t           *request;
    ngx_http_rules_loc_conf_t    *rlcf;           /* where it is evaluated */
    rules_set_t                  *rules;
    ngx_http_rules_op_t          *op;             /* awaiting replies */
    ngx_queue_t                   queue;          /* in the waiting queue */
    ngx_msec_t                    deadline;       /* of the wait */
    rules_result_t                result;
    ngx_uint_t                    status;         /* ngx_http_rules_status_e */
    ngx_uint_t                    fraud;
    ngx_int_t                     rc;             /* phase handler result */
    ngx_str_t                     matched;        /* built on first use */
    unsigned                      matched_built:1;
    unsigned                      waiting:1;
    unsigned                      queued:1;
    unsigned                      done:1;
    unsigned                      body_requested:1;
    unsigned                      body_read:1;
    unsigned                      redirected:1;   /* an internal redirect
                                                     came after it */
    unsigned                      worker_error:1; /* an event not
                                                     evaluated for the
                                                     worker's failure */
} ngx_http_rules_ctx_t;


extern ngx_module_t  ngx_http_rules_module;


/* ngx_http_rules_handler.c */
ngx_int_t ngx_http_rules_handler(ngx_http_request_t *r);
ngx_http_rules_ctx_t *ngx_http_rules_get_ctx(ngx_http_request_t *r);
ngx_int_t ngx_http_rules_worker_init(rules_set_t *rs, ngx_log_t *log);
void ngx_http_rules_worker_exit(void);
/*
 * The reply to one of an event's key operations: the matched digests
 * (rc NGX_OK), or none (rc NGX_ERROR: Redis failed).  Called once per
 * operation queued with ngx_http_rules_batch_add().
 */
void ngx_http_rules_item_reply(ngx_http_rules_cmd_t *cmd, unsigned group,
    const u_char *digests, size_t len, ngx_int_t rc);
/*
 * The same in two steps, for the items of one Redis reply: first every
 * item's result, then ngx_http_rules_metrics_flush(), then every item
 * done (the event's last one answers its request).  No event of the
 * reply is answered before the last step: its op stays, and a request
 * that goes away meanwhile (another batch failed at once, and an answer
 * closed their shared connection) has op->ctx cleared, which every step
 * reads again.
 */
void ngx_http_rules_item_result(ngx_http_rules_cmd_t *cmd, unsigned group,
    const u_char *digests, size_t len, ngx_int_t rc);
void ngx_http_rules_item_done(ngx_http_rules_cmd_t *cmd);

/* ngx_http_rules_batch.c */
typedef struct {
    ngx_uint_t                    calls;          /* EVALSHA sent */
    ngx_uint_t                    items;          /* items in them */
    ngx_uint_t                    compactions;    /* done */
    ngx_uint_t                    compactions_lost; /* raced or failed */
    ngx_uint_t                    writes;         /* states written whole */
    ngx_uint_t                    write_fallbacks; /* value had changed:
                                                     appended instead */
    ngx_uint_t                    cache_hits;     /* state cache lookups */
    ngx_uint_t                    cache_misses;
    ngx_uint_t                    cache_evicted_misses; /* of the misses:
                                                     keys it had evicted */
} ngx_http_rules_batch_stats_t;

ngx_int_t ngx_http_rules_batch_init(ngx_http_rules_main_conf_t *rmcf,
    ngx_log_t *log);
/* queues a key operation into the worker's next call to Redis */
ngx_int_t ngx_http_rules_batch_add(ngx_http_rules_cmd_t *cmd,
    unsigned group, const rules_keyop_t *ko, rules_str_t key,
    uint64_t key_hash, int64_t now);
/*
 * after the last ngx_http_rules_batch_add() of an event: the calls it
 * filled go out (an event's operations are never split over two calls)
 */
void ngx_http_rules_batch_event_end(void);
/*
 * start loading the cached states of an event's keys (by their hashes),
 * all at once: their slots, then (later) the entries they point at
 */
void ngx_http_rules_batch_prefetch_slots(const uint64_t *hashes, size_t n);
void ngx_http_rules_batch_prefetch_entries(const uint64_t *hashes,
    size_t n);
/* the states this worker's cache evicted to make room, since it started */
size_t ngx_http_rules_batch_evictions(void);
void ngx_http_rules_batch_exit(void);

/* ngx_http_rules_variables.c */
ngx_int_t ngx_http_rules_add_variables(ngx_conf_t *cf);
void ngx_http_rules_variables_exit(void);
ngx_int_t ngx_http_rules_check_variables(ngx_conf_t *cf,
    ngx_http_rules_main_conf_t *rmcf);
const char *ngx_http_rules_status_name(ngx_uint_t status);


/*
 * ngx_http_rules_metrics.c: counters in a shared memory zone, summed
 * over every worker, kept across reloads for rules that stay (by id and
 * digest).  Every function is a no-op when the zone is missing.
 */
ngx_int_t ngx_http_rules_metrics_zone(ngx_conf_t *cf,
    ngx_http_rules_main_conf_t *rmcf, size_t size);
char *ngx_http_rules_metrics_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
/* one event, by final status */
void ngx_http_rules_metrics_event(ngx_http_rules_main_conf_t *rmcf,
    ngx_uint_t status);
/*
 * the rules of a key group were evaluated for an event (its key had a
 * value), and those of them set in matched matched; the counts are
 * added to the shared counters by ngx_http_rules_metrics_flush(), called
 * before the event's request is answered, once for all the events of a
 * Redis reply, and at most once every NGX_HTTP_RULES_METRICS_FLUSH_MSEC
 * (10 ms; a timer adds the rest; a scrape waits for it): one atomic add
 * per rule and flush, not per rule and event;
 * ngx_http_rules_metrics_worker_exit() adds them at once (the worker
 * exits)
 */
void ngx_http_rules_metrics_group(ngx_http_rules_main_conf_t *rmcf,
    unsigned group, const rules_result_t *matched);
void ngx_http_rules_metrics_flush(ngx_http_rules_main_conf_t *rmcf);
void ngx_http_rules_metrics_worker_exit(ngx_http_rules_main_conf_t *rmcf);
/* the monotonic clock, in ns: round trips are timed with it */
uint64_t ngx_http_rules_metrics_now_ns(void);
/* one Redis round trip, in microseconds */
void ngx_http_rules_metrics_round_trip(ngx_http_rules_main_conf_t *rmcf,
    ngx_msec_int_t usec);
/* a request that Redis failed: served open, or marked fraud (closed) */
void ngx_http_rules_metrics_failed(ngx_http_rules_main_conf_t *rmcf,
    ngx_uint_t closed);
void ngx_http_rules_metrics_rejected(ngx_http_rules_main_conf_t *rmcf);
void ngx_http_rules_metrics_key_over_limit(ngx_http_rules_main_conf_t *rmcf,
    ngx_uint_t n);
/* in-flight events: +1 when sent, -1 when answered or abandoned */
void ngx_http_rules_metrics_inflight(ngx_http_rules_main_conf_t *rmcf,
    ngx_int_t delta);
/* Redis (re)connections, NOSCRIPT reloads, RULES.STORE calls: copied
 * from the worker */
void ngx_http_rules_metrics_redis(ngx_http_rules_main_conf_t *rmcf,
    ngx_uint_t connects_delta, ngx_uint_t reconnects_delta,
    ngx_uint_t noscript_delta, ngx_uint_t native_delta);

/* a Redis call sent, or what its reply did (deltas) */
void ngx_http_rules_metrics_batch(ngx_http_rules_main_conf_t *rmcf,
    ngx_http_rules_batch_stats_t *delta);

/* a worker started (init_process) */
void ngx_http_rules_metrics_worker_start(ngx_http_rules_main_conf_t *rmcf);
/* pushes the engine's per-process counters (regex limit hits) */
void ngx_http_rules_metrics_sync_engine(ngx_http_rules_main_conf_t *rmcf);


#endif /* NGX_HTTP_RULES_MODULE_H */
