/*
 * Metrics: counters in a shared memory zone, updated atomically by every
 * worker, served by "rules_metrics" in the Prometheus text format.  On
 * reload the zone is kept (same name, size and tag) and so are the
 * global counters and those of every rule whose id and digest stay.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_rules_module.h"


#define NGX_HTTP_RULES_METRICS_BUCKETS  13


/* round-trip histogram bounds, microseconds */
static ngx_uint_t  ngx_http_rules_rtt_bounds[NGX_HTTP_RULES_METRICS_BUCKETS] = {
    100, 250, 500, 750, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
    250000, 1000000
};

static const char  *ngx_http_rules_rtt_labels[NGX_HTTP_RULES_METRICS_BUCKETS] = {
    "0.0001", "0.00025", "0.0005", "0.00075", "0.001", "0.0025", "0.005",
    "0.01", "0.025", "0.05", "0.1", "0.25", "1"
};


typedef struct {
    u_char                 id[RULES_ID_MAX_LEN + 1];
    u_char                 digest[17];
    ngx_uint_t             kind;
    ngx_uint_t             type;
    ngx_atomic_t           evaluated;
    ngx_atomic_t           matched;
} ngx_http_rules_metrics_rule_t;


typedef struct {
    ngx_atomic_t                    events[NGX_HTTP_RULES_STATUS_LAST];
    ngx_atomic_t                    rejected;
    ngx_atomic_t                    failed_open;
    ngx_atomic_t                    failed_closed;
    ngx_atomic_t                    key_over_limit;
    ngx_atomic_t                    regex_limit_hits;
    ngx_atomic_t                    rtt_buckets[NGX_HTTP_RULES_METRICS_BUCKETS
                                                + 1];
    ngx_atomic_t                    rtt_sum_usec;
    ngx_atomic_t                    rtt_count;
    ngx_atomic_t                    connects;
    ngx_atomic_t                    reconnects;
    ngx_atomic_t                    noscript;
    ngx_atomic_t                    inflight;
    ngx_atomic_t                    worker_starts;

    /* the latest generation's rules, and the one before */
    ngx_uint_t                      nrules;
    ngx_http_rules_metrics_rule_t  *rules;
    ngx_http_rules_metrics_rule_t  *prev;
} ngx_http_rules_metrics_shm_t;


/*
 * Per configuration cycle: workers count into their own generation's
 * array, so that old workers finishing their requests after a reload
 * index the rules they know.
 */
struct ngx_http_rules_metrics_s {
    ngx_http_rules_main_conf_t     *rmcf;
    ngx_slab_pool_t                *shpool;
    ngx_http_rules_metrics_shm_t   *sh;
    ngx_uint_t                      nrules;
    ngx_http_rules_metrics_rule_t  *rules;
};


static ngx_int_t ngx_http_rules_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_rules_metrics_handler(ngx_http_request_t *r);


static ngx_str_t  ngx_http_rules_metrics_zone_name =
    ngx_string("ngx_http_rules_metrics");

static const char  *ngx_http_rules_kind_names[] = { "segment", "fraud" };
static const char  *ngx_http_rules_type_names[] = {
    "", "count", "distinct", "absence", "sequence"
};


static ngx_http_rules_metrics_shm_t *
ngx_http_rules_metrics_sh(ngx_http_rules_main_conf_t *rmcf)
{
    ngx_http_rules_metrics_t  *m;

    if (rmcf == NULL || rmcf->metrics_zone == NULL) {
        return NULL;
    }

    m = rmcf->metrics_zone->data;

    return m->sh;
}


static ngx_http_rules_metrics_t *
ngx_http_rules_metrics_ctx(ngx_http_rules_main_conf_t *rmcf)
{
    return ngx_http_rules_metrics_sh(rmcf) ? rmcf->metrics_zone->data
                                           : NULL;
}


ngx_int_t
ngx_http_rules_metrics_zone(ngx_conf_t *cf, ngx_http_rules_main_conf_t *rmcf,
    size_t size)
{
    size_t                     need;
    ngx_http_rules_metrics_t  *m;

    /* room for every rule twice (a reload allocates before it frees) */

    need = sizeof(ngx_http_rules_metrics_shm_t)
           + 2 * rules_count(rmcf->rules)
             * sizeof(ngx_http_rules_metrics_rule_t)
           + 64 * 1024;

    while (size < need) {
        size *= 2;
    }

    m = ngx_pcalloc(cf->pool, sizeof(ngx_http_rules_metrics_t));
    if (m == NULL) {
        return NGX_ERROR;
    }

    m->rmcf = rmcf;

    rmcf->metrics_zone = ngx_shared_memory_add(cf,
                                          &ngx_http_rules_metrics_zone_name,
                                          size, &ngx_http_rules_module);
    if (rmcf->metrics_zone == NULL) {
        return NGX_ERROR;
    }

    rmcf->metrics_zone->init = ngx_http_rules_metrics_init_zone;
    rmcf->metrics_zone->data = m;

    return NGX_OK;
}


static ngx_int_t
ngx_http_rules_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_rules_metrics_t *om = data;

    size_t                          i, n;
    rules_set_t                    *rs;
    ngx_slab_pool_t                *shpool;
    const rules_rule_t             *rule;
    ngx_http_rules_metrics_t       *m;
    ngx_http_rules_metrics_shm_t   *sh;
    ngx_http_rules_metrics_rule_t  *rules, *old;

    m = shm_zone->data;
    sh = NULL;
    rs = m->rmcf->rules;

    if (om) {
        shpool = om->shpool;
        sh = om->sh;

    } else {
        shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

        if (shm_zone->shm.exists) {
            sh = shpool->data;

        } else {
            sh = ngx_slab_calloc(shpool, sizeof(ngx_http_rules_metrics_shm_t));
            if (sh == NULL) {
                return NGX_ERROR;
            }

            shpool->data = sh;
        }
    }

    m->shpool = shpool;
    m->sh = sh;

    n = rules_count(rs);

    rules = ngx_slab_calloc(shpool,
                      (n ? n : 1) * sizeof(ngx_http_rules_metrics_rule_t));
    if (rules == NULL) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "rules metrics: not enough shared memory for %uz "
                      "rules", n);
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        rule = rules_rule(rs, i);

        ngx_memcpy(rules[i].id, rule->id, rule->id_len + 1);
        ngx_memcpy(rules[i].digest, rule->digest_hex, 17);
        rules[i].kind = rule->kind;
        rules[i].type = rule->type;
    }

    /* a rule that stays (same id and definition) keeps its counters */

    old = sh->rules;

    for (i = 0; old && i < sh->nrules; i++) {
        rule = rules_find_id(rs, (char *) old[i].id,
                             ngx_strlen(old[i].id));

        if (rule && ngx_strcmp(rule->digest_hex, old[i].digest) == 0) {
            rules[rule->index].evaluated = old[i].evaluated;
            rules[rule->index].matched = old[i].matched;
        }
    }

    /*
     * The previous generation's workers may still be finishing requests
     * and counting into their array; the one before that is gone.
     */

    if (sh->prev) {
        ngx_slab_free(shpool, sh->prev);
    }

    sh->prev = old;
    sh->rules = rules;
    sh->nrules = n;

    m->rules = rules;
    m->nrules = n;

    return NGX_OK;
}


/* ---- counting ------------------------------------------------------ */


void
ngx_http_rules_metrics_event(ngx_http_rules_main_conf_t *rmcf,
    ngx_uint_t status)
{
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh && status < NGX_HTTP_RULES_STATUS_LAST) {
        (void) ngx_atomic_fetch_add(&sh->events[status], 1);
    }
}


void
ngx_http_rules_metrics_rule(ngx_http_rules_main_conf_t *rmcf,
    ngx_uint_t rule, ngx_uint_t matched)
{
    ngx_http_rules_metrics_t  *m;

    m = ngx_http_rules_metrics_ctx(rmcf);

    /* the worker's own rule set indexes the array built for it */

    if (m == NULL || rule >= m->nrules) {
        return;
    }

    (void) ngx_atomic_fetch_add(&m->rules[rule].evaluated, 1);

    if (matched) {
        (void) ngx_atomic_fetch_add(&m->rules[rule].matched, 1);
    }
}


void
ngx_http_rules_metrics_round_trip(ngx_http_rules_main_conf_t *rmcf,
    ngx_msec_int_t usec)
{
    ngx_uint_t                     i;
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh == NULL) {
        return;
    }

    if (usec < 0) {
        usec = 0;
    }

    for (i = 0; i < NGX_HTTP_RULES_METRICS_BUCKETS; i++) {
        if ((ngx_uint_t) usec <= ngx_http_rules_rtt_bounds[i]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&sh->rtt_buckets[i], 1);
    (void) ngx_atomic_fetch_add(&sh->rtt_sum_usec, usec);
    (void) ngx_atomic_fetch_add(&sh->rtt_count, 1);
}


void
ngx_http_rules_metrics_failed(ngx_http_rules_main_conf_t *rmcf,
    ngx_uint_t closed)
{
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh) {
        (void) ngx_atomic_fetch_add(closed ? &sh->failed_closed
                                           : &sh->failed_open, 1);
    }
}


void
ngx_http_rules_metrics_rejected(ngx_http_rules_main_conf_t *rmcf)
{
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh) {
        (void) ngx_atomic_fetch_add(&sh->rejected, 1);
    }
}


void
ngx_http_rules_metrics_key_over_limit(ngx_http_rules_main_conf_t *rmcf,
    ngx_uint_t n)
{
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh) {
        (void) ngx_atomic_fetch_add(&sh->key_over_limit, n);
    }
}


void
ngx_http_rules_metrics_inflight(ngx_http_rules_main_conf_t *rmcf,
    ngx_int_t delta)
{
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh) {
        /* two's complement: adding -1 subtracts one */
        (void) ngx_atomic_fetch_add(&sh->inflight, (ngx_atomic_int_t) delta);
    }
}


void
ngx_http_rules_metrics_redis(ngx_http_rules_main_conf_t *rmcf,
    ngx_uint_t connects_delta, ngx_uint_t reconnects_delta,
    ngx_uint_t noscript_delta)
{
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh == NULL) {
        return;
    }

    if (connects_delta) {
        (void) ngx_atomic_fetch_add(&sh->connects, connects_delta);
    }

    if (reconnects_delta) {
        (void) ngx_atomic_fetch_add(&sh->reconnects, reconnects_delta);
    }

    if (noscript_delta) {
        (void) ngx_atomic_fetch_add(&sh->noscript, noscript_delta);
    }
}


void
ngx_http_rules_metrics_worker_start(ngx_http_rules_main_conf_t *rmcf)
{
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh) {
        (void) ngx_atomic_fetch_add(&sh->worker_starts, 1);
    }
}


/* The engine and the Redis connection count per process: push deltas. */
void
ngx_http_rules_metrics_sync_engine(ngx_http_rules_main_conf_t *rmcf)
{
    static uint64_t                regex_seen;
    static ngx_uint_t              connects_seen, reconnects_seen,
                                   noscript_seen;
    uint64_t                       hits;
    ngx_http_rules_redis_stats_t  *rst;
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh == NULL) {
        return;
    }

    hits = rules_stats(rmcf->rules)->regex_limit_hits;

    if (hits != regex_seen) {
        (void) ngx_atomic_fetch_add(&sh->regex_limit_hits,
                                    (ngx_atomic_int_t) (hits - regex_seen));
        regex_seen = hits;
    }

    if (rmcf->redis == NULL) {
        return;
    }

    rst = ngx_http_rules_redis_stats(rmcf->redis);

    if (rst->connects != connects_seen || rst->reconnects != reconnects_seen
        || rst->noscript != noscript_seen)
    {
        ngx_http_rules_metrics_redis(rmcf, rst->connects - connects_seen,
                                     rst->reconnects - reconnects_seen,
                                     rst->noscript - noscript_seen);
        connects_seen = rst->connects;
        reconnects_seen = rst->reconnects;
        noscript_seen = rst->noscript;
    }
}


/* ---- the exposition ------------------------------------------------ */


char *
ngx_http_rules_metrics_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_rules_metrics_handler;

    return NGX_CONF_OK;
}


/* A label value with \, " and newline escaped. */
static u_char *
ngx_http_rules_metrics_label(u_char *p, u_char *s, size_t len)
{
    size_t  i;

    for (i = 0; i < len; i++) {
        if (s[i] == '\\' || s[i] == '"') {
            *p++ = '\\';
            *p++ = s[i];

        } else if (s[i] == '\n') {
            *p++ = '\\';
            *p++ = 'n';

        } else {
            *p++ = s[i];
        }
    }

    return p;
}


/* One per-rule counter family: evaluated (0) or matched (1). */
static u_char *
ngx_http_rules_metrics_per_rule(u_char *p, ngx_http_rules_metrics_t *m,
    const char *name, const char *help, ngx_uint_t matched)
{
    ngx_uint_t                      i;
    ngx_http_rules_metrics_rule_t  *rule;

    p = ngx_sprintf(p, "# HELP nginx_rules_rule_%s_total %s\n"
                    "# TYPE nginx_rules_rule_%s_total counter\n",
                    name, help, name);

    for (i = 0; i < m->nrules; i++) {
        rule = &m->rules[i];
        p = ngx_sprintf(p, "nginx_rules_rule_%s_total{rule=\"%s\","
                        "kind=\"%s\",type=\"%s\"} %uA\n", name, rule->id,
                        ngx_http_rules_kind_names[rule->kind],
                        ngx_http_rules_type_names[rule->type],
                        matched ? rule->matched : rule->evaluated);
    }

    return p;
}


static ngx_int_t
ngx_http_rules_metrics_handler(ngx_http_request_t *r)
{
    u_char                         *p;
    size_t                          size;
    ngx_int_t                       rc;
    ngx_buf_t                      *b;
    ngx_uint_t                      i, cum;
    ngx_chain_t                     out;
    ngx_http_rules_metrics_t       *m;
    ngx_http_rules_main_conf_t     *rmcf;
    ngx_http_rules_metrics_shm_t   *sh;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    rmcf = ngx_http_get_module_main_conf(r, ngx_http_rules_module);
    sh = ngx_http_rules_metrics_sh(rmcf);

    ngx_http_rules_metrics_sync_engine(rmcf);

    size = 8192 + 2 * rmcf->rules_file.len;

    if (sh) {
        m = rmcf->metrics_zone->data;
        size += m->nrules * 2 * (160 + 2 * RULES_ID_MAX_LEN);
    }

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->last;

    if (sh == NULL) {
        p = ngx_cpymem(p, "# no rules_file: no rules metrics\n",
                       sizeof("# no rules_file: no rules metrics\n") - 1);
        goto send;
    }

    p = ngx_sprintf(p,
        "# HELP nginx_rules_info The loaded rules file.\n"
        "# TYPE nginx_rules_info gauge\n"
        "nginx_rules_info{rules_file=\"");
    p = ngx_http_rules_metrics_label(p, rmcf->rules_file.data,
                                     rmcf->rules_file.len);
    p = ngx_sprintf(p, "\",digest=\"%s\",rules=\"%uz\"} 1\n",
                    rules_file_digest(rmcf->rules), rules_count(rmcf->rules));

    p = ngx_sprintf(p,
        "# HELP nginx_rules_rules_loaded_timestamp_seconds When the rules "
        "file was loaded.\n"
        "# TYPE nginx_rules_rules_loaded_timestamp_seconds gauge\n"
        "nginx_rules_rules_loaded_timestamp_seconds %T\n",
        rmcf->rules_loaded);

    p = ngx_sprintf(p,
        "# HELP nginx_rules_events_total Events by final status.\n"
        "# TYPE nginx_rules_events_total counter\n");

    for (i = NGX_HTTP_RULES_STATUS_OK; i < NGX_HTTP_RULES_STATUS_LAST; i++) {
        p = ngx_sprintf(p, "nginx_rules_events_total{status=\"%s\"} %uA\n",
                        ngx_http_rules_status_name(i), sh->events[i]);
    }

    p = ngx_http_rules_metrics_per_rule(p, m, "evaluated",
            "Events evaluated against the rule (its key had a value).", 0);
    p = ngx_http_rules_metrics_per_rule(p, m, "matched",
            "Events for which the rule matched.", 1);

    p = ngx_sprintf(p,
        "# HELP nginx_rules_fraud_rejected_total Requests rejected as "
        "fraud.\n"
        "# TYPE nginx_rules_fraud_rejected_total counter\n"
        "nginx_rules_fraud_rejected_total %uA\n"
        "# HELP nginx_rules_failed_total Requests Redis failed, by "
        "rules_on_error mode.\n"
        "# TYPE nginx_rules_failed_total counter\n"
        "nginx_rules_failed_total{mode=\"open\"} %uA\n"
        "nginx_rules_failed_total{mode=\"closed\"} %uA\n"
        "# HELP nginx_rules_key_over_limit_total Key values longer than "
        "rules_max_key_length, not evaluated.\n"
        "# TYPE nginx_rules_key_over_limit_total counter\n"
        "nginx_rules_key_over_limit_total %uA\n"
        "# HELP nginx_rules_regex_limit_hits_total Regex matches stopped "
        "by the PCRE2 match limit.\n"
        "# TYPE nginx_rules_regex_limit_hits_total counter\n"
        "nginx_rules_regex_limit_hits_total %uA\n",
        sh->rejected, sh->failed_open, sh->failed_closed, sh->key_over_limit,
        sh->regex_limit_hits);

    p = ngx_sprintf(p,
        "# HELP nginx_rules_redis_round_trip_seconds Redis round trip of "
        "one event.\n"
        "# TYPE nginx_rules_redis_round_trip_seconds histogram\n");

    cum = 0;

    for (i = 0; i < NGX_HTTP_RULES_METRICS_BUCKETS; i++) {
        cum += sh->rtt_buckets[i];
        p = ngx_sprintf(p, "nginx_rules_redis_round_trip_seconds_bucket"
                        "{le=\"%s\"} %ui\n", ngx_http_rules_rtt_labels[i],
                        cum);
    }

    cum += sh->rtt_buckets[NGX_HTTP_RULES_METRICS_BUCKETS];

    p = ngx_sprintf(p,
        "nginx_rules_redis_round_trip_seconds_bucket{le=\"+Inf\"} %ui\n"
        "nginx_rules_redis_round_trip_seconds_sum %uA.%06uA\n"
        "nginx_rules_redis_round_trip_seconds_count %uA\n",
        cum, sh->rtt_sum_usec / 1000000, sh->rtt_sum_usec % 1000000,
        sh->rtt_count);

    p = ngx_sprintf(p,
        "# HELP nginx_rules_redis_connects_total Redis connections made.\n"
        "# TYPE nginx_rules_redis_connects_total counter\n"
        "nginx_rules_redis_connects_total %uA\n"
        "# HELP nginx_rules_redis_reconnects_total Redis connections lost "
        "and made again.\n"
        "# TYPE nginx_rules_redis_reconnects_total counter\n"
        "nginx_rules_redis_reconnects_total %uA\n"
        "# HELP nginx_rules_redis_noscript_total Script reloads after "
        "NOSCRIPT.\n"
        "# TYPE nginx_rules_redis_noscript_total counter\n"
        "nginx_rules_redis_noscript_total %uA\n"
        "# HELP nginx_rules_inflight_events Events waiting for Redis.\n"
        "# TYPE nginx_rules_inflight_events gauge\n"
        "nginx_rules_inflight_events %A\n"
        "# HELP nginx_rules_worker_starts_total Worker processes started "
        "(reloads and restarts).\n"
        "# TYPE nginx_rules_worker_starts_total counter\n"
        "nginx_rules_worker_starts_total %uA\n",
        sh->connects, sh->reconnects, sh->noscript,
        (ngx_atomic_int_t) sh->inflight, sh->worker_starts);

send:

    b->last = p;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type,
                "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = sizeof("text/plain") - 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
