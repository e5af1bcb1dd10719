/*
 * The rewrite phase handler: extracts the request's events, queues their
 * key operations into the worker's next Redis call (ngx_http_rules_batch.c:
 * one EVALSHA per pass of the event loop), waits for the replies or the
 * deadline, and records the result for the variables and the optional
 * fraud rejection.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_rules_module.h"
#include "rules_cache.h"


/* One event: its key operations are answered one by one. */
struct ngx_http_rules_cmd_s {
    ngx_http_rules_op_t          *op;
    ngx_uint_t                    status;     /* of this event */
    ngx_uint_t                    items;      /* operations awaiting reply */
    unsigned                      failed:1;
};


/*
 * The replies of a request's events.  It outlives the request when the
 * request ends first (deadline, client gone): replies then arrive with
 * op->ctx == NULL and only feed the metrics.
 */
struct ngx_http_rules_op_s {
    ngx_http_rules_op_t          *next;       /* in the free list */
    ngx_http_rules_ctx_t         *ctx;
    ngx_http_rules_main_conf_t   *rmcf;
    rules_set_t                  *rules;
    ngx_uint_t                    pending;    /* commands without reply */
    ngx_uint_t                    orphan;     /* request gone early */
    ngx_uint_t                    ncmds;
    ngx_http_rules_cmd_t         *cmds;
};


typedef struct {
    rules_str_t                  *values;     /* nfields per event */
    int64_t                      *ts;
    size_t                        nevents;
    rules_json_events_t           json;
    unsigned                      json_used:1;
} ngx_http_rules_events_t;


/* An event's state keys, by key group. */
typedef struct {
    rules_str_t                  *keys;     /* len 0: the group has no
                                               usable key value */
    uint64_t                     *hashes;   /* rules_cache_hash() */
    uint64_t                     *present;  /* the hashes of those there
                                               are, for prefetching */
    size_t                        npresent;
} ngx_http_rules_keys_t;


/* a field's $arg_ value found by ngx_http_rules_scan_args() */
typedef struct {
    ngx_str_t                     value;         /* data NULL: absent */
    ngx_uint_t                    scanned;       /* 0: read as usual */
} ngx_http_rules_arg_t;


static ngx_int_t ngx_http_rules_evaluate(ngx_http_request_t *r,
    ngx_http_rules_ctx_t *ctx);
static ngx_int_t ngx_http_rules_query_event(ngx_http_request_t *r,
    ngx_http_rules_loc_conf_t *rlcf, rules_set_t *rs,
    ngx_http_rules_events_t *ev);
static ngx_int_t ngx_http_rules_body_events(ngx_http_request_t *r,
    ngx_http_rules_loc_conf_t *rlcf, rules_set_t *rs,
    ngx_http_rules_events_t *ev);
static ngx_int_t ngx_http_rules_event_keys(ngx_http_request_t *r,
    rules_set_t *rs, ngx_http_rules_main_conf_t *rmcf,
    const rules_str_t *values, ngx_http_rules_keys_t *k);
static ngx_int_t ngx_http_rules_send(ngx_http_rules_ctx_t *ctx,
    ngx_http_rules_main_conf_t *rmcf, ngx_http_rules_cmd_t *cmd,
    rules_eventops_t *eo, ngx_http_rules_keys_t *k, int64_t now);
static ngx_int_t ngx_http_rules_unevaluated(ngx_http_rules_ctx_t *ctx,
    ngx_http_rules_main_conf_t *rmcf, ngx_uint_t status, size_t nevents);
static void ngx_http_rules_finish(ngx_http_rules_ctx_t *ctx);
static void ngx_http_rules_wake(ngx_http_rules_ctx_t *ctx);
static void ngx_http_rules_wait(ngx_http_rules_ctx_t *ctx,
    ngx_msec_t timeout);
static void ngx_http_rules_unwait(ngx_http_rules_ctx_t *ctx);
static void ngx_http_rules_deadline_handler(ngx_event_t *ev);
static void ngx_http_rules_timeout(ngx_http_rules_ctx_t *ctx);
static void ngx_http_rules_body_handler(ngx_http_request_t *r);
static void ngx_http_rules_cleanup(void *data);
static ngx_http_rules_op_t *ngx_http_rules_op_alloc(size_t ncmds,
    ngx_log_t *log);
static void ngx_http_rules_op_free(ngx_http_rules_op_t *op);
static ngx_int_t ngx_http_rules_parse_time(ngx_http_request_t *r,
    ngx_str_t *s, int64_t *out);
static ngx_http_rules_arg_t *ngx_http_rules_scan_args(ngx_http_request_t *r,
    ngx_http_rules_loc_conf_t *rlcf);
static ngx_int_t ngx_http_rules_field_value(ngx_http_request_t *r,
    ngx_http_rules_field_t *f, ngx_http_rules_arg_t *arg, rules_str_t *out);


/* per worker, reused by every event */
static rules_eventops_t  ngx_http_rules_eo;
static rules_result_t    ngx_http_rules_event_result;

/*
 * The requests waiting for Redis, oldest first, and one timer for the
 * oldest: every wait lasts rules_redis_timeout (a main-level directive),
 * so the deadlines come in the order the requests started waiting, and a
 * wait costs a queue insertion and removal instead of a timer of its own
 * (two tree operations per request).
 */
static ngx_queue_t       ngx_http_rules_waiting;
static ngx_event_t       ngx_http_rules_deadline;

/*
 * The worker's events whose Redis replies have not all come (an event
 * answered at its deadline still holds its operations until then):
 * rules_redis_max_inflight bounds it.
 */
static ngx_uint_t        ngx_http_rules_events_inflight;

/* the "not received in time" lines (ngx_http_rules_timeout()) */
static ngx_http_rules_log_rate_t  ngx_http_rules_timeout_log;
static ngx_http_rules_log_rate_t  ngx_http_rules_inflight_log;


/*
 * The context survives internal redirects (which clear module contexts)
 * through its pool cleanup, so that an event is evaluated once per
 * request; one found that way is marked redirected.
 */
ngx_http_rules_ctx_t *
ngx_http_rules_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t    *cln;
    ngx_http_rules_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_rules_module);

    if (ctx || !(r->internal || r->filter_finalize)) {
        return ctx;
    }

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_rules_cleanup) {
            ctx = cln->data;

            if (r == r->main) {
                /* not a subrequest, which shares the main pool */
                ctx->redirected = 1;
            }

            ngx_http_set_ctx(r, ctx, ngx_http_rules_module);
            return ctx;
        }
    }

    return NULL;
}


/* The statuses nginx refuses a request with while it reads it. */
static ngx_uint_t
ngx_http_rules_refused(ngx_uint_t status)
{
    switch (status) {
    case NGX_HTTP_BAD_REQUEST:
    case NGX_HTTP_REQUEST_TIME_OUT:
    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
    case NGX_HTTP_REQUEST_URI_TOO_LARGE:
    case NGX_HTTP_REQUEST_HEADER_TOO_LARGE:
    case NGX_HTTPS_CERT_ERROR:
    case NGX_HTTPS_NO_CERT:
    case NGX_HTTP_TO_HTTPS:
    case NGX_HTTP_NOT_IMPLEMENTED:
    case NGX_HTTP_VERSION_NOT_SUPPORTED:
        return 1;

    default:
        return 0;
    }
}


ngx_int_t
ngx_http_rules_handler(ngx_http_request_t *r)
{
    ngx_int_t                    rc;
    ngx_pool_cleanup_t          *cln;
    ngx_http_rules_ctx_t        *ctx;
    ngx_http_rules_loc_conf_t   *rlcf;
    ngx_http_rules_main_conf_t  *rmcf;

    if (r != r->main) {
        return NGX_DECLINED;
    }

    rlcf = ngx_http_get_module_loc_conf(r, ngx_http_rules_module);

    if (!rlcf->enable || (rlcf->fields == NULL && !rlcf->json_body)) {
        /* no fields: "rules on" inherited by a location without any */
        return NGX_DECLINED;
    }

    ctx = ngx_http_rules_get_ctx(r);

    if (ctx) {
        if (ctx->redirected) {
            /*
             * the event was answered (or its body failed) before this
             * internal redirect: an error_page for the rejection status,
             * a try_files fallback; this location serves its own answer
             */
            return NGX_DECLINED;
        }

        if (ctx->done) {
            return ctx->rc;
        }

        if (ctx->waiting || (ctx->body_requested && !ctx->body_read)) {
            return NGX_DONE;
        }

    } else if (r->err_status && ngx_http_rules_refused(r->err_status)) {
        /*
         * an error_page of a request nginx refused before any location
         * evaluated it (malformed, its body over client_max_body_size,
         * too slow): not an event
         */
        return NGX_DECLINED;

    } else {
        rmcf = ngx_http_get_module_main_conf(r, ngx_http_rules_module);

        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_rules_ctx_t));
        if (ctx == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->request = r;
        ctx->rlcf = rlcf;
        ctx->rules = rmcf->rules;
        ctx->rc = NGX_DECLINED;

        ctx->result.words = rules_result_words(ctx->rules);
        ctx->result.matched = ngx_pcalloc(r->pool, ctx->result.words
                                                   * sizeof(uint64_t));
        if (ctx->result.matched == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        cln->handler = ngx_http_rules_cleanup;
        cln->data = ctx;

        ngx_http_set_ctx(r, ctx, ngx_http_rules_module);
    }

    if (rlcf->json_body && (r->method & NGX_HTTP_POST) && !ctx->body_read) {

        if (r->headers_in.content_length_n > (off_t) rlcf->max_body_size) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "rules: event body of %O bytes is over "
                          "rules_max_body_size %uz",
                          r->headers_in.content_length_n,
                          rlcf->max_body_size);

            rmcf = ngx_http_get_module_main_conf(r, ngx_http_rules_module);
            ngx_http_rules_unevaluated(ctx, rmcf,
                                       NGX_HTTP_RULES_STATUS_INVALID, 1);
            ctx->rc = NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;

            return ctx->rc;
        }

        ctx->body_requested = 1;
        r->request_body_in_single_buf = 1;

        rc = ngx_http_read_client_request_body(r,
                                               ngx_http_rules_body_handler);

        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
            return rc;
        }

        ngx_http_finalize_request(r, NGX_DONE);
        return NGX_DONE;
    }

    return ngx_http_rules_evaluate(r, ctx);
}


static void
ngx_http_rules_body_handler(ngx_http_request_t *r)
{
    ngx_http_rules_ctx_t  *ctx;

    ctx = ngx_http_rules_get_ctx(r);

    if (ctx == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ctx->body_read = 1;

    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
}


/*
 * The request's events: one from the rules_field values (query mode), or
 * one per object of a JSON body.  Then one EVALSHA per event.
 */
static ngx_int_t
ngx_http_rules_evaluate(ngx_http_request_t *r, ngx_http_rules_ctx_t *ctx)
{
    size_t                       i, nf, ng, sent;
    int64_t                      now;
    ngx_int_t                    rc;
    ngx_time_t                  *tp;
    rules_set_t                 *rs;
    rules_event_rc_t             erc;
    ngx_http_rules_op_t         *op;
    ngx_http_rules_cmd_t        *cmd;
    ngx_http_rules_keys_t        keys;
    ngx_http_rules_events_t      ev;
    ngx_http_rules_loc_conf_t   *rlcf;
    ngx_http_rules_main_conf_t  *rmcf;

    rlcf = ngx_http_get_module_loc_conf(r, ngx_http_rules_module);
    rmcf = ngx_http_get_module_main_conf(r, ngx_http_rules_module);
    rs = ctx->rules;
    nf = rules_nfields(rs);

    ngx_memzero(&ev, sizeof(ngx_http_rules_events_t));

    if (ctx->body_read) {
        rc = ngx_http_rules_body_events(r, rlcf, rs, &ev);

    } else {
        rc = ngx_http_rules_query_event(r, rlcf, rs, &ev);
    }

    if (rc != NGX_OK) {
        if (ev.json_used) {
            rules_json_events_free(&ev.json);
        }

        if (rc == NGX_ERROR) {
            /* the worker's failure (out of memory), logged by the callee;
             * the body's events when it was parsed, else one */
            return ngx_http_rules_unevaluated(ctx, rmcf,
                                              NGX_HTTP_RULES_STATUS_ERROR,
                                              ev.nevents ? ev.nevents : 1);
        }

        /* invalid input, logged by the callee */
        ngx_http_rules_unevaluated(ctx, rmcf, NGX_HTTP_RULES_STATUS_INVALID,
                                   1);

        if (rc == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE) {
            /* as a body whose Content-Length is over the limit */
            ctx->rc = rc;
        }

        return ctx->rc;
    }

    /* validate every event before anything is applied */

    tp = ngx_timeofday();

    for (i = 0; i < ev.nevents; i++) {
        if (ev.ts[i] < 0) {
            ev.ts[i] = (int64_t) tp->sec * 1000 + tp->msec;
        }

        erc = rules_event_validate(rs, &rmcf->limits, ev.values + i * nf,
                                   ev.ts[i]);

        if (erc == RULES_EVENT_INVALID) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "rules: event %uz rejected: a field value is "
                          "longer than rules_max_value_length %uz",
                          i, rmcf->limits.value_max);

            if (ev.json_used) {
                rules_json_events_free(&ev.json);
            }

            return ngx_http_rules_unevaluated(ctx, rmcf,
                                              NGX_HTTP_RULES_STATUS_INVALID,
                                              1);
        }
    }

    ng = rules_ngroups(rs);
    keys.keys = ngx_palloc(r->pool, ng * sizeof(rules_str_t));
    keys.hashes = ngx_palloc(r->pool, 2 * ng * sizeof(uint64_t));

    op = (keys.keys && keys.hashes)
         ? ngx_http_rules_op_alloc(ev.nevents, r->connection->log) : NULL;

    if (op == NULL) {
        if (ev.json_used) {
            rules_json_events_free(&ev.json);
        }

        /* out of memory, logged by the allocator */
        return ngx_http_rules_unevaluated(ctx, rmcf,
                                          NGX_HTTP_RULES_STATUS_ERROR,
                                          ev.nevents);
    }

    op->ctx = ctx;
    op->rmcf = rmcf;
    op->rules = rs;
    op->pending = 0;
    op->orphan = 0;
    op->ncmds = ev.nevents;
    op->cmds = (ngx_http_rules_cmd_t *) (op + 1);

    for (i = 0; i < ev.nevents; i++) {
        cmd = &op->cmds[i];
        cmd->op = op;
        cmd->items = 0;
        cmd->failed = 0;
        cmd->status = NGX_HTTP_RULES_STATUS_SKIPPED;
    }

    ctx->op = op;
    sent = 0;
    keys.present = keys.hashes + ng;

    for (i = 0; i < ev.nevents; i++) {
        now = ev.ts[i];
        cmd = &op->cmds[i];

        /* the keys' cache slots load while the conditions are evaluated */

        if (ngx_http_rules_event_keys(r, rs, rmcf, ev.values + i * nf, &keys)
            != NGX_OK)
        {
            cmd->status = NGX_HTTP_RULES_STATUS_ERROR;
            ctx->worker_error = 1;
            continue;
        }

        erc = rules_event_build(rs, &rmcf->limits, ev.values + i * nf, now,
                                &ngx_http_rules_eo);

        if (ngx_http_rules_eo.over_limit) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "rules: event %uz: %uz key value(s) longer than "
                          "rules_max_key_length %uz, not evaluated",
                          i, ngx_http_rules_eo.over_limit,
                          rmcf->limits.key_max);
            ngx_http_rules_metrics_key_over_limit(rmcf,
                                               ngx_http_rules_eo.over_limit);
        }

        if (erc == RULES_EVENT_NOMEM || erc == RULES_EVENT_INVALID) {
            /* out of memory (the events were validated before): an
             * error, for rules_on_error, not a skip */
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "rules: event %uz not evaluated: out of memory",
                          i);
            cmd->status = NGX_HTTP_RULES_STATUS_ERROR;
            ctx->worker_error = 1;
            continue;
        }

        if (erc != RULES_EVENT_OK) {
            continue;
        }

        if (ngx_http_rules_send(ctx, rmcf, cmd, &ngx_http_rules_eo, &keys,
                                now)
            == NGX_OK)
        {
            sent++;
        }
    }

    ngx_http_rules_metrics_sync_engine(rmcf);

    if (ev.json_used) {
        rules_json_events_free(&ev.json);
    }

    if (op->pending == 0) {
        ngx_http_rules_finish(ctx);
        return ctx->rc;
    }

    /* wait for the replies, at most rules_redis_timeout */

    ngx_http_rules_wait(ctx, rmcf->timeout);

    /* the rewrite phase checker stops the phases on NGX_DONE */

    ctx->waiting = 1;
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;

    return NGX_DONE;
}


/*
 * The values of the fields that are one $arg_ variable, in one pass over
 * the query string (the variable scans it once per name): for each, the
 * first argument "name=value", the name compared ignoring case, as
 * ngx_http_arg() finds it.  Not for a variable of that name that another
 * module makes (map, js_set: the variable is then not the argument's
 * prefix variable), read as before.  NULL: no such field.
 */
static ngx_http_rules_arg_t *
ngx_http_rules_scan_args(ngx_http_request_t *r,
    ngx_http_rules_loc_conf_t *rlcf)
{
    u_char                      c, *p, *last, *amp, *eq;
    size_t                      len;
    ngx_uint_t                  i, n, left;
    ngx_http_variable_t        *v;
    ngx_http_rules_arg_t       *args;
    ngx_http_rules_field_t     *f;
    ngx_http_core_main_conf_t  *cmcf;

    if (rlcf->fields == NULL || r->args.len == 0) {
        return NULL;
    }

    n = rlcf->fields->nelts;
    f = rlcf->fields->elts;

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_core_module);
    v = cmcf->variables.elts;
    args = NULL;
    left = 0;

    for (i = 0; i < n; i++) {
        if (f[i].arg.len == 0
            || !(v[f[i].var_index].flags & NGX_HTTP_VAR_PREFIX))
        {
            continue;
        }

        if (args == NULL) {
            args = ngx_pcalloc(r->pool, n * sizeof(ngx_http_rules_arg_t));
            if (args == NULL) {
                return NULL;
            }
        }

        args[i].scanned = 1;
        left++;
    }

    p = r->args.data;
    last = p + r->args.len;

    /* memchr(), not ngx_strlchr(): libc's scans a word or a vector at a
     * time (a third of the function's instructions on the benchmark's
     * query strings) */

    while (p < last && left) {
        amp = memchr(p, '&', last - p);
        if (amp == NULL) {
            amp = last;
        }

        eq = memchr(p, '=', amp - p);

        /* no field has an empty name; the names are lowercase, and their
         * first bytes tell most of them apart (single letters, often) */

        if (eq && eq != p) {
            len = eq - p;
            c = ngx_tolower(*p);

            for (i = 0; i < n; i++) {
                if (f[i].arg.len == len && f[i].arg.data[0] == c
                    && args[i].scanned && args[i].value.data == NULL
                    && (len == 1
                        || ngx_strncasecmp(p + 1, f[i].arg.data + 1, len - 1)
                           == 0))
                {
                    args[i].value.data = eq + 1;
                    args[i].value.len = amp - eq - 1;
                    left--;
                }
            }
        }

        p = amp + 1;
    }

    return args;
}


static ngx_int_t
ngx_http_rules_field_value(ngx_http_request_t *r, ngx_http_rules_field_t *f,
    ngx_http_rules_arg_t *arg, rules_str_t *out)
{
    u_char                     *dst, *src;
    ngx_str_t                   value;
    ngx_http_variable_value_t  *vv;

    if (arg && arg->scanned) {
        value = arg->value;

    } else if (f->var_index != NGX_ERROR) {
        vv = ngx_http_get_flushed_variable(r, f->var_index);

        if (vv == NULL || vv->not_found) {
            ngx_str_null(&value);

        } else {
            value.data = vv->data;
            value.len = vv->len;
        }

    } else if (ngx_http_complex_value(r, &f->value, &value) != NGX_OK) {
        return NGX_ERROR;
    }

    if (f->decode && value.len
        && ngx_strlchr(value.data, value.data + value.len, '%'))
    {
        dst = ngx_pnalloc(r->pool, value.len);
        if (dst == NULL) {
            return NGX_ERROR;
        }

        src = value.data;
        value.data = dst;
        ngx_unescape_uri(&dst, &src, value.len, 0);
        value.len = dst - value.data;
    }

    out->data = value.data;
    out->len = value.len;

    return NGX_OK;
}


static ngx_int_t
ngx_http_rules_query_event(ngx_http_request_t *r,
    ngx_http_rules_loc_conf_t *rlcf, rules_set_t *rs,
    ngx_http_rules_events_t *ev)
{
    size_t                   nf;
    ngx_str_t                s;
    ngx_uint_t               i;
    rules_str_t              v;
    ngx_http_rules_arg_t    *args;
    ngx_http_rules_field_t  *f;

    nf = rules_nfields(rs);

    ev->values = ngx_pcalloc(r->pool, (nf + 1) * sizeof(rules_str_t));
    ev->ts = ngx_palloc(r->pool, sizeof(int64_t));

    if (ev->values == NULL || ev->ts == NULL) {
        return NGX_ERROR;
    }

    ev->nevents = 1;
    ev->ts[0] = -1;

    f = rlcf->fields ? rlcf->fields->elts : NULL;
    args = ngx_http_rules_scan_args(r, rlcf);

    for (i = 0; f && i < rlcf->fields->nelts; i++) {
        if (f[i].field < 0 && (ngx_int_t) i != rlcf->time_field) {
            continue;
        }

        if (ngx_http_rules_field_value(r, &f[i], args ? &args[i] : NULL, &v)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (f[i].field >= 0) {
            ev->values[f[i].field] = v;
        }

        if ((ngx_int_t) i == rlcf->time_field) {
            s.data = (u_char *) v.data;
            s.len = v.len;

            if (ngx_http_rules_parse_time(r, &s, &ev->ts[0]) != NGX_OK) {
                return NGX_DECLINED;
            }
        }
    }

    if (rlcf->time_member.data && rlcf->time_field < 0) {
        /* a JSON endpoint's time member, and no body */
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "rules: event rejected: no \"%V\" time",
                      &rlcf->time_member);
        return NGX_DECLINED;
    }

    if (rlcf->time_value) {
        if (ngx_http_complex_value(r, rlcf->time_value, &s) != NGX_OK) {
            return NGX_ERROR;
        }

        if (ngx_http_rules_parse_time(r, &s, &ev->ts[0]) != NGX_OK) {
            return NGX_DECLINED;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_rules_body_events(ngx_http_request_t *r,
    ngx_http_rules_loc_conf_t *rlcf, rules_set_t *rs,
    ngx_http_rules_events_t *ev)
{
    u_char                  *body, *p;
    size_t                   len, nf, k;
    ssize_t                  n;
    ngx_str_t                s;
    ngx_buf_t               *b;
    ngx_uint_t               i;
    ngx_chain_t             *cl;
    rules_str_t              v;
    rules_json_rc_t          jrc;
    ngx_http_rules_arg_t    *args;
    ngx_http_rules_field_t  *f;
    char                     err[RULES_ERR_LEN];
    int64_t                  ts;

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "rules: event rejected: empty body");
        return NGX_DECLINED;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        len += b->in_file ? (size_t) (b->file_last - b->file_pos)
                          : (size_t) (b->last - b->pos);
    }

    if (len == 0) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "rules: event rejected: empty body");
        return NGX_DECLINED;
    }

    if (len > rlcf->max_body_size) {
        /* chunked: no Content-Length told it before the body was read */
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "rules: event rejected: body of %uz bytes is over "
                      "rules_max_body_size %uz", len, rlcf->max_body_size);
        return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
    }

    body = ngx_pnalloc(r->pool, len + 1);
    if (body == NULL) {
        return NGX_ERROR;
    }

    p = body;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (b->in_file) {
            n = ngx_read_file(b->file, p, b->file_last - b->file_pos,
                              b->file_pos);

            if (n == NGX_ERROR) {
                /* ngx_read_file() logged it */
                return NGX_ERROR;
            }

            if (n != b->file_last - b->file_pos) {
                ngx_log_error(NGX_LOG_CRIT, r->connection->log, 0,
                              "rules: read %z of %O body bytes from \"%V\"",
                              n, b->file_last - b->file_pos,
                              &b->file->name);
                return NGX_ERROR;
            }

            p += n;

        } else if (b->last != b->pos) {
            /* (a chunked body ends with an empty last_buf, pos NULL) */
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
        }
    }

    ev->json_used = 1;

    jrc = rules_json_events_parse(rs, (char *) body, len,
                                  (char *) rlcf->time_member.data,
                                  rlcf->max_events, &ev->json, err);

    if (jrc == RULES_JSON_NOMEM) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "rules: event body not parsed: out of memory");
        return NGX_ERROR;
    }

    if (jrc != RULES_JSON_OK) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "rules: event body rejected: %s", err);
        return NGX_DECLINED;
    }

    if (ev->json.nevents == 0) {
        /* "[]": invalid, as rules-replay has it (SPEC.md: a bad body) */
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "rules: event body rejected: no event (an empty "
                      "array)");
        return NGX_DECLINED;
    }

    ev->values = ev->json.values;
    ev->ts = ev->json.ts;
    ev->nevents = ev->json.nevents;
    nf = rules_nfields(rs);

    for (k = 0; k < ev->nevents; k++) {

        if (rlcf->time_member.data && ev->ts[k] < 0) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "rules: event body rejected: event %uz has no "
                          "\"%V\" time", k, &rlcf->time_member);
            return NGX_DECLINED;
        }

        if (rlcf->time_value) {
            if (ngx_http_complex_value(r, rlcf->time_value, &s) != NGX_OK) {
                return NGX_ERROR;
            }

            if (ngx_http_rules_parse_time(r, &s, &ts) != NGX_OK) {
                return NGX_DECLINED;
            }

            ev->ts[k] = ts;
        }
    }

    /*
     * rules_field values fill the fields an event object does not have,
     * and replace those it has with "override" (an empty value then
     * leaves the field without one)
     */

    if (rlcf->fields == NULL) {
        return NGX_OK;
    }

    f = rlcf->fields->elts;
    args = ngx_http_rules_scan_args(r, rlcf);

    for (i = 0; i < rlcf->fields->nelts; i++) {
        if (f[i].field < 0) {
            continue;
        }

        if (ngx_http_rules_field_value(r, &f[i], args ? &args[i] : NULL, &v)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        for (k = 0; k < ev->nevents; k++) {
            if (f[i].override || ev->values[k * nf + f[i].field].len == 0) {
                ev->values[k * nf + f[i].field] = v;
            }
        }
    }

    return NGX_OK;
}


/* An event time from the request; logs why when it is not one. */
static ngx_int_t
ngx_http_rules_parse_time(ngx_http_request_t *r, ngx_str_t *s, int64_t *out)
{
    if (rules_parse_time(s->data, s->len, out) != 0) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "rules: event rejected: time \"%V\" is not a "
                      "non-negative integer of ms", s);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * The state keys of an event's key groups, those rules_event_build()
 * makes key operations for (rules_event_key()), hashed; their state
 * cache slots start loading.
 */
static ngx_int_t
ngx_http_rules_event_keys(ngx_http_request_t *r, rules_set_t *rs,
    ngx_http_rules_main_conf_t *rmcf, const rules_str_t *values,
    ngx_http_rules_keys_t *k)
{
    u_char             *p;
    size_t              g, ng, len;
    const rules_str_t  *v;

    ng = rules_ngroups(rs);
    len = 0;

    for (g = 0; g < ng; g++) {
        v = rules_event_key(rs, &rmcf->limits, values, g);

        if (v) {
            len += rules_state_key_len(rs, rmcf->key_prefix.len,
                                       (unsigned) g, v->len);
        }
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    k->npresent = 0;

    for (g = 0; g < ng; g++) {
        v = rules_event_key(rs, &rmcf->limits, values, g);

        if (v == NULL) {
            k->keys[g].len = 0;
            continue;
        }

        k->keys[g].data = p;
        k->keys[g].len = rules_state_key(rs, (char *) rmcf->key_prefix.data,
                                         rmcf->key_prefix.len, (unsigned) g,
                                         *v, p);
        p += k->keys[g].len;

        k->hashes[g] = rules_cache_hash(k->keys[g].data, k->keys[g].len);
        k->present[k->npresent++] = k->hashes[g];
    }

    ngx_http_rules_batch_prefetch_slots(k->present, k->npresent);

    return NGX_OK;
}


/*
 * Queues the event's key operations into the worker's next Redis call;
 * NGX_ERROR (the event failed) when Redis is not ready or too busy.
 */
static ngx_int_t
ngx_http_rules_send(ngx_http_rules_ctx_t *ctx,
    ngx_http_rules_main_conf_t *rmcf, ngx_http_rules_cmd_t *cmd,
    rules_eventops_t *eo, ngx_http_rules_keys_t *k, int64_t now)
{
    size_t          i, n;
    ngx_int_t       skipped;
    rules_keyop_t  *ko;

    n = eo->nkeyops;

    if (ngx_http_rules_events_inflight >= rmcf->redis_conf.max_inflight) {
        /* a slow Redis fails every new event: at most a line a second */

        skipped = ngx_http_rules_log_due(&ngx_http_rules_inflight_log);

        if (skipped != NGX_DECLINED) {
            ngx_log_error(NGX_LOG_WARN, ctx->request->connection->log, 0,
                          "rules: event refused: %ui events already wait "
                          "for Redis (rules_redis_max_inflight %ui; %i "
                          "more since the last such line)",
                          ngx_http_rules_events_inflight,
                          rmcf->redis_conf.max_inflight, skipped);
        }

        cmd->status = NGX_HTTP_RULES_STATUS_ERROR;
        return NGX_ERROR;
    }

    /* a cluster's nodes are checked when the calls go out */

    if (rmcf->cluster == NULL
        && (rmcf->redis == NULL
            || !ngx_http_rules_redis_accepting(rmcf->redis)))
    {
        cmd->status = NGX_HTTP_RULES_STATUS_ERROR;
        return NGX_ERROR;
    }

    /* the slots have arrived: now the entries they point at */

    ngx_http_rules_batch_prefetch_entries(k->present, k->npresent);

    cmd->status = NGX_HTTP_RULES_STATUS_NONE;   /* awaiting the replies */
    cmd->op->pending++;
    ngx_http_rules_events_inflight++;
    ngx_http_rules_metrics_inflight(rmcf, 1);

    /* items are counted first: a failure may answer them at once */

    cmd->items = n + 1;

    for (i = 0; i < n; i++) {
        ko = &eo->keyops[i];

        /* a key operation always has its group's key (event_keys) */

        if (k->keys[ko->group].len == 0
            || ngx_http_rules_batch_add(cmd, ko->group, ko,
                                        k->keys[ko->group],
                                        k->hashes[ko->group], now)
               != NGX_OK)
        {
            ngx_http_rules_item_reply(cmd, ko->group, NULL, 0, NGX_ERROR);
        }
    }

    ngx_http_rules_batch_event_end();

    /* the guard */
    ngx_http_rules_item_reply(cmd, (unsigned) -1, NULL, 0, NGX_OK);

    return NGX_OK;
}


void
ngx_http_rules_item_reply(ngx_http_rules_cmd_t *cmd, unsigned group,
    const u_char *digests, size_t len, ngx_int_t rc)
{
    ngx_http_rules_main_conf_t  *rmcf;

    rmcf = cmd->op->rmcf;

    ngx_http_rules_item_result(cmd, group, digests, len, rc);
    ngx_http_rules_metrics_flush(rmcf);
    ngx_http_rules_item_done(cmd);
}


void
ngx_http_rules_item_result(ngx_http_rules_cmd_t *cmd, unsigned group,
    const u_char *digests, size_t len, ngx_int_t rc)
{
    size_t                 i;
    rules_set_t           *rs;
    ngx_http_rules_op_t   *op;
    ngx_http_rules_ctx_t  *ctx;

    op = cmd->op;
    ctx = op->ctx;
    rs = op->rules;

    if (rc != NGX_OK) {
        cmd->failed = 1;
        return;
    }

    if (group == (unsigned) -1 || cmd->failed || ctx == NULL) {
        return;
    }

    rules_result_clear(&ngx_http_rules_event_result);
    (void) rules_result_add_digests(rs, &ngx_http_rules_event_result,
                                    digests, len);

    /*
     * An answer that reaches its request counts in the per-rule metrics;
     * one that comes after the deadline was counted as a timeout.
     */

    for (i = 0; i < ctx->result.words; i++) {
        ctx->result.matched[i] |= ngx_http_rules_event_result.matched[i];
    }

    ngx_http_rules_metrics_group(op->rmcf, group,
                                 &ngx_http_rules_event_result);
}


void
ngx_http_rules_item_done(ngx_http_rules_cmd_t *cmd)
{
    ngx_http_rules_op_t         *op;
    ngx_http_rules_ctx_t        *ctx;
    ngx_http_rules_main_conf_t  *rmcf;

    op = cmd->op;
    ctx = op->ctx;
    rmcf = op->rmcf;

    if (--cmd->items) {
        return;
    }

    /* the event's last answer */

    cmd->status = cmd->failed ? NGX_HTTP_RULES_STATUS_ERROR
                              : NGX_HTTP_RULES_STATUS_OK;
    op->pending--;
    ngx_http_rules_events_inflight--;
    ngx_http_rules_metrics_inflight(rmcf, -1);

    if (ctx == NULL) {
        if (op->orphan) {
            /* its client left before the answer: counted now */
            ngx_http_rules_metrics_event(rmcf, cmd->status);
        }

        if (op->pending == 0) {
            ngx_http_rules_op_free(op);
        }

        return;
    }

    if (op->pending == 0 && !ngx_terminate && ctx->waiting) {
        ngx_http_rules_finish(ctx);
        ngx_http_rules_wake(ctx);
    }
}


static void
ngx_http_rules_wait(ngx_http_rules_ctx_t *ctx, ngx_msec_t timeout)
{
    ctx->deadline = ngx_current_msec + timeout;
    ngx_queue_insert_tail(&ngx_http_rules_waiting, &ctx->queue);
    ctx->queued = 1;

    if (!ngx_http_rules_deadline.timer_set) {
        ngx_add_timer(&ngx_http_rules_deadline, timeout);
    }
}


static void
ngx_http_rules_unwait(ngx_http_rules_ctx_t *ctx)
{
    if (!ctx->queued) {
        return;
    }

    ngx_queue_remove(&ctx->queue);
    ctx->queued = 0;

    /* an idle worker keeps no timer: it would hold a graceful exit */

    if (ngx_queue_empty(&ngx_http_rules_waiting)
        && ngx_http_rules_deadline.timer_set)
    {
        ngx_del_timer(&ngx_http_rules_deadline);
    }
}


/* The oldest waits are over: each request goes on without its replies. */
static void
ngx_http_rules_deadline_handler(ngx_event_t *ev)
{
    ngx_queue_t           *q;
    ngx_msec_int_t         left;
    ngx_http_rules_ctx_t  *ctx;

    while (!ngx_queue_empty(&ngx_http_rules_waiting)) {
        q = ngx_queue_head(&ngx_http_rules_waiting);
        ctx = ngx_queue_data(q, ngx_http_rules_ctx_t, queue);

        left = (ngx_msec_int_t) (ctx->deadline - ngx_current_msec);

        if (left > 0) {
            ngx_add_timer(ev, (ngx_msec_t) left);
            return;
        }

        /* finishing it takes it off the queue */
        ngx_http_rules_timeout(ctx);
    }
}


static void
ngx_http_rules_timeout(ngx_http_rules_ctx_t *ctx)
{
    ngx_int_t             skipped;
    ngx_uint_t            i;
    ngx_http_rules_op_t  *op;

    op = ctx->op;

    if (op) {
        for (i = 0; i < op->ncmds; i++) {
            if (op->cmds[i].status == NGX_HTTP_RULES_STATUS_NONE) {
                op->cmds[i].status = NGX_HTTP_RULES_STATUS_TIMEOUT;
            }
        }
    }

    /*
     * At most a line a second, with the count of the others: a Redis
     * that stalls under load times out every waiting request at once
     */

    skipped = ngx_http_rules_log_due(&ngx_http_rules_timeout_log);

    if (skipped != NGX_DECLINED) {
        ngx_log_error(NGX_LOG_WARN, ctx->request->connection->log, 0,
                      "rules: redis reply not received in time "
                      "(%i more since the last such line)", skipped);
    }

    ngx_http_rules_finish(ctx);
    ngx_http_rules_wake(ctx);
}


/*
 * A request whose events were not evaluated: invalid input, or a failure
 * of the worker (out of memory, a body's temporary file not read) that
 * is an "error" as a failed Redis is, answered as rules_on_error says.
 * Each of its events is counted with that status (one when a body could
 * not be parsed).
 */
static ngx_int_t
ngx_http_rules_unevaluated(ngx_http_rules_ctx_t *ctx,
    ngx_http_rules_main_conf_t *rmcf, ngx_uint_t status, size_t nevents)
{
    while (nevents--) {
        ngx_http_rules_metrics_event(rmcf, status);
    }

    if (status == NGX_HTTP_RULES_STATUS_ERROR) {
        ctx->worker_error = 1;
    }

    ctx->status = status;
    ngx_http_rules_finish(ctx);

    return ctx->rc;
}


/*
 * Final status, metrics, fail-open/closed and the phase handler's result.
 * Detaches the context from its pending replies.
 */
static void
ngx_http_rules_finish(ngx_http_rules_ctx_t *ctx)
{
    ngx_uint_t                   i, status, counts[NGX_HTTP_RULES_STATUS_LAST];
    ngx_http_rules_op_t         *op;
    ngx_http_request_t          *r;
    ngx_http_rules_loc_conf_t   *rlcf;
    ngx_http_rules_main_conf_t  *rmcf;

    /* the evaluating location's settings: the request may be elsewhere */
    r = ctx->request;
    rlcf = ctx->rlcf;
    rmcf = ngx_http_get_module_main_conf(r, ngx_http_rules_module);
    op = ctx->op;

    ngx_http_rules_unwait(ctx);

    if (op) {
        ngx_memzero(counts, sizeof(counts));

        for (i = 0; i < op->ncmds; i++) {
            counts[op->cmds[i].status]++;
            ngx_http_rules_metrics_event(rmcf, op->cmds[i].status);
        }

        if (counts[NGX_HTTP_RULES_STATUS_TIMEOUT]) {
            status = NGX_HTTP_RULES_STATUS_TIMEOUT;

        } else if (counts[NGX_HTTP_RULES_STATUS_ERROR]) {
            status = NGX_HTTP_RULES_STATUS_ERROR;

        } else if (counts[NGX_HTTP_RULES_STATUS_OK]) {
            status = NGX_HTTP_RULES_STATUS_OK;

        } else {
            status = NGX_HTTP_RULES_STATUS_SKIPPED;
        }

        ctx->status = status;
        ctx->op = NULL;
        op->ctx = NULL;

        if (op->pending == 0) {
            ngx_http_rules_op_free(op);
        }
    }

    if (ctx->status == NGX_HTTP_RULES_STATUS_ERROR
        || ctx->status == NGX_HTTP_RULES_STATUS_TIMEOUT)
    {
        /* no partial answers: fail open (no match) or closed (fraud) */
        rules_result_clear(&ctx->result);
        ctx->fraud = rlcf->on_error_closed;
        ngx_http_rules_metrics_failed(rmcf, rlcf->on_error_closed);

    } else if (ctx->status == NGX_HTTP_RULES_STATUS_OK) {
        ctx->fraud = rules_result_fraud(ctx->rules, &ctx->result);
    }

    ctx->rc = NGX_DECLINED;

    if (ctx->fraud && rlcf->reject_status) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "rules: event rejected as fraud (%s), status %ui",
                      ctx->status == NGX_HTTP_RULES_STATUS_OK
                      ? "matched a fraud rule"
                      : ctx->worker_error ? "not evaluated, closed"
                                         : "redis failed, closed",
                      rlcf->reject_status);
        ngx_http_rules_metrics_rejected(rmcf);
        ctx->rc = rlcf->reject_status;
    }

    ctx->done = 1;
}


static void
ngx_http_rules_wake(ngx_http_rules_ctx_t *ctx)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    if (!ctx->waiting) {
        return;
    }

    ctx->waiting = 0;
    r = ctx->request;
    c = r->connection;

    if (ctx->redirected
        || ngx_http_get_module_ctx(r, ngx_http_rules_module) != ctx)
    {
        /*
         * an internal redirect while it waited: the client left and
         * post_action took the request elsewhere, which runs on its own
         */
        return;
    }

    /*
     * the wait's ngx_http_test_reading must not outlive it: the phases
     * to come set their own (the upstream module leaves nginx's default
     * in place with proxy_ignore_client_abort on), as limit_req does
     */
    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}


/* The request is going away: pending replies must not touch it. */
static void
ngx_http_rules_cleanup(void *data)
{
    ngx_http_rules_ctx_t *ctx = data;

    ngx_uint_t                   i;
    ngx_http_rules_op_t         *op;
    ngx_http_rules_main_conf_t  *rmcf;

    ngx_http_rules_unwait(ctx);

    op = ctx->op;

    if (op) {
        op->ctx = NULL;

        if (op->pending == 0) {
            ngx_http_rules_op_free(op);

        } else {
            /* events already answered are counted now, the rest later */
            op->orphan = 1;
            rmcf = op->rmcf;

            for (i = 0; i < op->ncmds; i++) {
                if (op->cmds[i].status != NGX_HTTP_RULES_STATUS_NONE) {
                    ngx_http_rules_metrics_event(rmcf, op->cmds[i].status);
                }
            }
        }

        ctx->op = NULL;
    }

    /* ctx->result is in the request's pool */
}


/*
 * An op outlives its request when the request ends first, so it is not in
 * the request's pool; the ops of one event, most requests, are kept for
 * reuse (at most NGX_HTTP_RULES_FREE_OPS of them).
 */

#define NGX_HTTP_RULES_FREE_OPS  256

static ngx_http_rules_op_t  *ngx_http_rules_free_ops;
static ngx_uint_t            ngx_http_rules_nfree_ops;


static ngx_http_rules_op_t *
ngx_http_rules_op_alloc(size_t ncmds, ngx_log_t *log)
{
    ngx_http_rules_op_t  *op;

    if (ncmds == 1 && ngx_http_rules_free_ops) {
        op = ngx_http_rules_free_ops;
        ngx_http_rules_free_ops = op->next;
        ngx_http_rules_nfree_ops--;

        return op;
    }

    return ngx_alloc(sizeof(ngx_http_rules_op_t)
                     + ncmds * sizeof(ngx_http_rules_cmd_t), log);
}


static void
ngx_http_rules_op_free(ngx_http_rules_op_t *op)
{
    if (op->ncmds == 1
        && ngx_http_rules_nfree_ops < NGX_HTTP_RULES_FREE_OPS)
    {
        op->next = ngx_http_rules_free_ops;
        ngx_http_rules_free_ops = op;
        ngx_http_rules_nfree_ops++;
        return;
    }

    ngx_free(op);
}


ngx_int_t
ngx_http_rules_worker_init(rules_set_t *rs, ngx_log_t *log)
{
    if (ngx_http_rules_event_result.matched) {
        /* a start tried again (ngx_http_rules_worker_start()) */
        return NGX_OK;
    }

    ngx_queue_init(&ngx_http_rules_waiting);

    /* the timer's debug messages read data as a connection: no NULL */
    ngx_http_rules_deadline.data = &ngx_http_rules_deadline;
    ngx_http_rules_deadline.handler = ngx_http_rules_deadline_handler;
    ngx_http_rules_deadline.log = log;

    return rules_result_init(rs, &ngx_http_rules_event_result) == 0
           ? NGX_OK : NGX_ERROR;
}


void
ngx_http_rules_worker_exit(void)
{
    ngx_http_rules_op_t  *op;

    rules_result_free(&ngx_http_rules_event_result);
    rules_eventops_free(&ngx_http_rules_eo);

    while (ngx_http_rules_free_ops) {
        op = ngx_http_rules_free_ops;
        ngx_http_rules_free_ops = op->next;
        ngx_free(op);
    }

    ngx_http_rules_nfree_ops = 0;
}
