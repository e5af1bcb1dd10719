/*
 * ngx_http_rules_module: directives, configuration and process hooks.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_rules_module.h"
#include "rules_state.h"


static ngx_int_t ngx_http_rules_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_rules_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_rules_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_rules_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_rules_create_loc_conf(ngx_conf_t *cf);
static ngx_int_t ngx_http_rules_fields_warn_due(ngx_conf_t *cf,
    ngx_http_rules_main_conf_t *rmcf, ngx_array_t *fields);
static char *ngx_http_rules_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_rules_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_rules_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_rules_redis_cluster(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_rules_redis_auth(ngx_conf_t *cf,
    ngx_http_rules_main_conf_t *rmcf, ngx_str_t *arg, ngx_uint_t db);
static ngx_uint_t ngx_http_rules_field_args(ngx_str_t *v,
    ngx_uint_t *mixed);
static char *ngx_http_rules_field(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_rules_post_where(ngx_conf_t *cf, void *post,
    void *data);
static void ngx_http_rules_where(ngx_conf_t *cf, ngx_http_rules_where_t *w);
static char *ngx_http_rules_time(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_rules_reject_fraud(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_rules_check_bounds(ngx_conf_t *cf, void *post,
    void *data);
static void ngx_http_rules_cleanup_rules(void *data);
static ngx_uint_t ngx_http_rules_prefix_has_tag(ngx_str_t *prefix);
static ngx_int_t ngx_http_rules_init_process(ngx_cycle_t *cycle);
static void ngx_http_rules_worker_start(ngx_http_rules_main_conf_t *rmcf,
    ngx_log_t *log);
static void ngx_http_rules_worker_start_handler(ngx_event_t *ev);
static void ngx_http_rules_exit_process(ngx_cycle_t *cycle);


static ngx_conf_enum_t  ngx_http_rules_on_error[] = {
    { ngx_string("open"), 0 },
    { ngx_string("closed"), 1 },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_rules_body_modes[] = {
    { ngx_string("off"), 0 },
    { ngx_string("json"), 1 },
    { ngx_null_string, 0 }
};


/*
 * A directive's bounds, checked when it is read (the error names it and
 * its line): size, num and msec slots, a machine word each.
 */
typedef struct {
    ngx_conf_post_handler_pt   post_handler;
    size_t                     low;
    size_t                     high;
} ngx_http_rules_bounds_t;


static ngx_http_rules_bounds_t  ngx_http_rules_positive = {
    ngx_http_rules_check_bounds, 1, NGX_MAX_SIZE_T_VALUE
};


static ngx_http_rules_bounds_t  ngx_http_rules_length_bounds = {
    ngx_http_rules_check_bounds, 1, 65535
};


static ngx_http_rules_bounds_t  ngx_http_rules_events_bounds = {
    ngx_http_rules_check_bounds, 1, RULES_MAX_BODY_EVENTS
};


/*
 * Where a directive was read, for an error found after its block: the
 * place is kept in an ngx_http_rules_where_t at this distance from the
 * directive's value.
 */
typedef struct {
    ngx_conf_post_handler_pt   post_handler;
    ptrdiff_t                  where;
} ngx_http_rules_where_post_t;


static ngx_http_rules_where_post_t  ngx_http_rules_enable_post = {
    ngx_http_rules_post_where,
    offsetof(ngx_http_rules_loc_conf_t, enable_where)
        - offsetof(ngx_http_rules_loc_conf_t, enable)
};


static ngx_http_rules_where_post_t  ngx_http_rules_prefix_post = {
    ngx_http_rules_post_where,
    offsetof(ngx_http_rules_main_conf_t, key_prefix_where)
        - offsetof(ngx_http_rules_main_conf_t, key_prefix)
};


static ngx_command_t  ngx_http_rules_commands[] = {

    { ngx_string("rules_file"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_rules_file,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("rules_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_rules_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("rules_redis_cluster"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_rules_redis_cluster,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("rules_redis_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_rules_main_conf_t, timeout),
      &ngx_http_rules_positive },

    { ngx_string("rules_redis_connect_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_rules_main_conf_t, redis_conf.connect_timeout),
      NULL },

    { ngx_string("rules_redis_max_inflight"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_rules_main_conf_t, redis_conf.max_inflight),
      &ngx_http_rules_positive },

    { ngx_string("rules_redis_native"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_rules_main_conf_t, redis_conf.native),
      NULL },

    { ngx_string("rules_shared_distinct"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_rules_main_conf_t, shared_distinct),
      NULL },

    { ngx_string("rules_key_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_rules_main_conf_t, key_prefix),
      &ngx_http_rules_prefix_post },

    { ngx_string("rules_max_key_length"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_rules_main_conf_t, limits.key_max),
      &ngx_http_rules_length_bounds },

    { ngx_string("rules_max_value_length"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_rules_main_conf_t, limits.value_max),
      &ngx_http_rules_length_bounds },

    { ngx_string("rules_state_cache"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_rules_main_conf_t, state_cache_size),
      NULL },

    { ngx_string("rules"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_rules_loc_conf_t, enable),
      &ngx_http_rules_enable_post },

    { ngx_string("rules_field"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE23,
      ngx_http_rules_field,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("rules_time"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_rules_time,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("rules_on_error"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_rules_loc_conf_t, on_error_closed),
      &ngx_http_rules_on_error },

    { ngx_string("rules_reject_fraud"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_rules_reject_fraud,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("rules_body"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_rules_loc_conf_t, json_body),
      &ngx_http_rules_body_modes },

    { ngx_string("rules_max_body_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_rules_loc_conf_t, max_body_size),
      &ngx_http_rules_positive },

    { ngx_string("rules_max_events"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_rules_loc_conf_t, max_events),
      &ngx_http_rules_events_bounds },

    { ngx_string("rules_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_rules_metrics_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_rules_module_ctx = {
    ngx_http_rules_preconfiguration,       /* preconfiguration */
    ngx_http_rules_postconfiguration,      /* postconfiguration */

    ngx_http_rules_create_main_conf,       /* create main configuration */
    ngx_http_rules_init_main_conf,         /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_rules_create_loc_conf,        /* create location configuration */
    ngx_http_rules_merge_loc_conf          /* merge location configuration */
};


ngx_module_t  ngx_http_rules_module = {
    NGX_MODULE_V1,
    &ngx_http_rules_module_ctx,            /* module context */
    ngx_http_rules_commands,               /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_rules_init_process,           /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_rules_exit_process,           /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_rules_preconfiguration(ngx_conf_t *cf)
{
    return ngx_http_rules_add_variables(cf);
}


static ngx_int_t
ngx_http_rules_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_handler_pt         *h;
    ngx_http_core_main_conf_t   *cmcf;
    ngx_http_rules_main_conf_t  *rmcf;

    rmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_rules_module);

    if (ngx_http_rules_check_variables(cf, rmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    /*
     * The rewrite phase: handlers run in reverse order of registration,
     * so this one runs before ngx_http_rewrite_module's, and events are
     * evaluated also in locations that answer with "return".
     */

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_REWRITE_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_rules_handler;

    return NGX_OK;
}


static void *
ngx_http_rules_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_rules_main_conf_t  *rmcf;

    rmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_rules_main_conf_t));
    if (rmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     rmcf->rules = NULL;
     *     rmcf->rules_file = { 0, NULL };
     *     rmcf->redis_set = 0;
     *     rmcf->key_prefix = { 0, NULL };
     *     rmcf->metrics_zone = NULL;
     *     rmcf->redis = NULL;
     *     rmcf->cluster_set = 0;
     *     rmcf->cluster_conf = { NULL, NULL };
     *     rmcf->cluster = NULL;
     */

    rmcf->timeout = NGX_CONF_UNSET_MSEC;
    rmcf->redis_conf.connect_timeout = NGX_CONF_UNSET_MSEC;
    rmcf->redis_conf.max_inflight = NGX_CONF_UNSET_UINT;
    rmcf->redis_conf.native = NGX_CONF_UNSET;
    rmcf->limits.key_max = NGX_CONF_UNSET_SIZE;
    rmcf->limits.value_max = NGX_CONF_UNSET_SIZE;
    rmcf->state_cache_size = NGX_CONF_UNSET_SIZE;
    rmcf->shared_distinct = NGX_CONF_UNSET;

    return rmcf;
}


static char *
ngx_http_rules_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_rules_main_conf_t *rmcf = conf;

    ngx_conf_init_msec_value(rmcf->timeout, NGX_HTTP_RULES_DEFAULT_TIMEOUT);
    ngx_conf_init_msec_value(rmcf->redis_conf.connect_timeout,
                             NGX_HTTP_RULES_CONNECT_TIMEOUT);
    ngx_conf_init_uint_value(rmcf->redis_conf.max_inflight,
                             NGX_HTTP_RULES_MAX_INFLIGHT);
    ngx_conf_init_value(rmcf->redis_conf.native, 1);
    ngx_conf_init_size_value(rmcf->limits.key_max, RULES_DEFAULT_KEY_MAX);
    ngx_conf_init_size_value(rmcf->limits.value_max,
                             RULES_DEFAULT_VALUE_MAX);
    ngx_conf_init_size_value(rmcf->state_cache_size,
                             NGX_HTTP_RULES_STATE_CACHE_SIZE);
    ngx_conf_init_value(rmcf->shared_distinct, 0);

    rmcf->redis_conf.reply_timeout = ngx_max(NGX_HTTP_RULES_REPLY_TIMEOUT,
                                             rmcf->timeout);
    rmcf->redis_conf.backoff_min = NGX_HTTP_RULES_BACKOFF_MIN;
    rmcf->redis_conf.backoff_max = NGX_HTTP_RULES_BACKOFF_MAX;

    if (rmcf->key_prefix.data == NULL) {
        ngx_str_set(&rmcf->key_prefix, NGX_HTTP_RULES_DEFAULT_PREFIX);
    }

    if (rmcf->cluster_set
        && ngx_http_rules_prefix_has_tag(&rmcf->key_prefix))
    {
        /* the default has none: the directive was read, and set where */

        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"rules_key_prefix %V\" holds a hash tag "
                      "(\"{...}\"): with \"rules_redis_cluster\" every key "
                      "would be in its slot, on one master in %s:%ui",
                      &rmcf->key_prefix, rmcf->key_prefix_where.file,
                      rmcf->key_prefix_where.line);
        return NGX_CONF_ERROR;
    }

    if (rmcf->rules) {
        rules_set_sharing(rmcf->rules, (int) rmcf->shared_distinct);

        if (ngx_http_rules_metrics_zone(cf, rmcf,
                                        NGX_HTTP_RULES_METRICS_ZONE_SIZE)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/*
 * Redis Cluster hashes the first "{...}" of a key with at least one byte
 * inside: in the prefix, it would be every key's tag, not "{field:value}".
 */
static ngx_uint_t
ngx_http_rules_prefix_has_tag(ngx_str_t *prefix)
{
    u_char  *lbrace, *rbrace, *last;

    last = prefix->data + prefix->len;
    lbrace = ngx_strlchr(prefix->data, last, '{');

    if (lbrace == NULL) {
        return 0;
    }

    rbrace = ngx_strlchr(lbrace + 1, last, '}');

    return (rbrace != NULL && rbrace > lbrace + 1);
}


static void *
ngx_http_rules_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_rules_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_rules_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->fields = NULL;
     *     conf->time_value = NULL;
     *     conf->time_member = { 0, NULL };
     *     conf->time_where = { NULL, 0 };
     *     conf->enable_where = { NULL, 0 };
     */

    conf->enable = NGX_CONF_UNSET;
    conf->time_field = NGX_CONF_UNSET;
    conf->on_error_closed = NGX_CONF_UNSET_UINT;
    conf->reject_status = NGX_CONF_UNSET_UINT;
    conf->json_body = NGX_CONF_UNSET_UINT;
    conf->max_body_size = NGX_CONF_UNSET_SIZE;
    conf->max_events = NGX_CONF_UNSET_UINT;

    return conf;
}


/*
 * Whether the startup warnings about a rules_field array are due: once
 * per array, as a server's fields are merged into each of its locations.
 * NGX_ERROR on memory exhaustion.
 */
static ngx_int_t
ngx_http_rules_fields_warn_due(ngx_conf_t *cf,
    ngx_http_rules_main_conf_t *rmcf, ngx_array_t *fields)
{
    ngx_uint_t     i;
    ngx_array_t  **a;

    if (fields == NULL) {
        return 0;
    }

    if (rmcf->fields_warned == NULL) {
        rmcf->fields_warned = ngx_array_create(cf->pool, 4,
                                               sizeof(ngx_array_t *));
        if (rmcf->fields_warned == NULL) {
            return NGX_ERROR;
        }
    }

    a = rmcf->fields_warned->elts;

    for (i = 0; i < rmcf->fields_warned->nelts; i++) {
        if (a[i] == fields) {
            return 0;
        }
    }

    a = ngx_array_push(rmcf->fields_warned);
    if (a == NULL) {
        return NGX_ERROR;
    }

    *a = fields;

    return 1;
}


static char *
ngx_http_rules_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_rules_loc_conf_t *prev = parent;
    ngx_http_rules_loc_conf_t *conf = child;

    size_t                       g;
    ngx_int_t                    warn;
    ngx_uint_t                   i, set_here;
    const rules_rule_t          *r;
    const rules_group_t         *gr;
    ngx_http_rules_field_t      *f;
    ngx_http_core_loc_conf_t    *clcf;
    ngx_http_rules_main_conf_t  *rmcf;

    /* "rules on" in this location itself, not inherited */
    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    set_here = (conf->enable != NGX_CONF_UNSET && clcf->name.len != 0);

    if (conf->enable == NGX_CONF_UNSET) {
        conf->enable_where = prev->enable_where;
    }

    ngx_conf_merge_value(conf->enable, prev->enable, 0);
    ngx_conf_merge_uint_value(conf->on_error_closed, prev->on_error_closed,
                              0);
    ngx_conf_merge_uint_value(conf->reject_status, prev->reject_status, 0);
    ngx_conf_merge_uint_value(conf->json_body, prev->json_body, 0);
    ngx_conf_merge_size_value(conf->max_body_size, prev->max_body_size,
                              NGX_HTTP_RULES_MAX_BODY_SIZE);
    ngx_conf_merge_uint_value(conf->max_events, prev->max_events,
                              NGX_HTTP_RULES_MAX_EVENTS);

    if (conf->fields == NULL) {
        conf->fields = prev->fields;
    }

    if (conf->time_value == NULL && conf->time_member.data == NULL) {
        conf->time_value = prev->time_value;
        conf->time_member = prev->time_member;
        conf->time_where = prev->time_where;
    }

    if (!conf->enable) {
        return NGX_CONF_OK;
    }

    rmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_rules_module);

    /* these errors point at "rules on", not at where the merge runs */

    if (rmcf->rules == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"rules on\" needs \"rules_file\" in the http "
                      "block in %s:%ui", conf->enable_where.file,
                      conf->enable_where.line);
        return NGX_CONF_ERROR;
    }

    if (!rmcf->redis_set && !rmcf->cluster_set) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"rules on\" needs \"rules_redis\" or "
                      "\"rules_redis_cluster\" in the http block in %s:%ui",
                      conf->enable_where.file, conf->enable_where.line);
        return NGX_CONF_ERROR;
    }

    if (conf->fields == NULL && !conf->json_body) {

        if (!set_here) {
            /*
             * "rules on" of the server (or an enclosing location) is for
             * the locations that have fields: this one is not evaluated
             */
            return NGX_CONF_OK;
        }

        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"rules on\" in location \"%V\" needs at least one "
                      "\"rules_field\", or \"rules_body json\" in %s:%ui",
                      &clcf->name, conf->enable_where.file,
                      conf->enable_where.line);
        return NGX_CONF_ERROR;
    }

    /* field names to the indexes of the loaded rules */

    f = conf->fields ? conf->fields->elts : NULL;
    conf->time_field = -1;

    /*
     * the warnings are for where the fields are the event (a JSON body's
     * objects carry their own): a JSON location neither warns nor counts
     * as the one place a shared array of fields is warned about
     */

    warn = conf->json_body ? 0
                           : ngx_http_rules_fields_warn_due(cf, rmcf,
                                                            conf->fields);
    if (warn == NGX_ERROR) {
        return NGX_CONF_ERROR;
    }

    for (i = 0; conf->fields && i < conf->fields->nelts; i++) {
        f[i].field = rules_field_index(rmcf->rules, (char *) f[i].name.data,
                                       f[i].name.len);

        if (warn && f[i].field < 0
            && !(conf->time_member.len == f[i].name.len
                 && ngx_strncmp(conf->time_member.data, f[i].name.data,
                                f[i].name.len) == 0))
        {
            ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                          "rules_field \"%V\" is not used by any rule of "
                          "\"%V\" in %s:%ui", &f[i].name, &rmcf->rules_file,
                          f[i].where.file, f[i].where.line);
        }

        if (conf->time_member.len == f[i].name.len
            && ngx_strncmp(conf->time_member.data, f[i].name.data,
                           f[i].name.len) == 0)
        {
            conf->time_field = i;
        }
    }

    if (conf->time_member.data && !conf->json_body && conf->time_field < 0) {
        /* told where the directive is, not where the merge runs */
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"rules_time %V\" names no \"rules_field\" %s%V%s "
                      "(use a variable, such as $arg_ts, or define the "
                      "field) in %s:%ui",
                      &conf->time_member,
                      clcf->name.len ? "of location \"" : "at server level",
                      &clcf->name, clcf->name.len ? "\"" : "",
                      conf->time_where.file, conf->time_where.line);
        return NGX_CONF_ERROR;
    }

    /*
     * a key no rules_field gives: its rules are never evaluated here (a
     * JSON body's objects may carry it); told where the fields are, the
     * place to add it
     */

    for (g = 0; warn && g < rules_ngroups(rmcf->rules); g++) {
        gr = rules_group(rmcf->rules, g);

        for (i = 0; i < conf->fields->nelts; i++) {
            if (f[i].field == (int) gr->key_field) {
                break;
            }
        }

        if (i == conf->fields->nelts) {
            r = rules_rule(rmcf->rules, gr->rules[0]);
            ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                          "no \"rules_field %s\" %s%V%s: its rules are not "
                          "evaluated there (%uz rule%s keyed on it: \"%s\"%s) "
                          "in %s:%ui",
                          rules_field_name(rmcf->rules, gr->key_field),
                          clcf->name.len ? "in location \"" : "at server level",
                          &clcf->name, clcf->name.len ? "\"" : "",
                          gr->nrules, gr->nrules == 1 ? "" : "s", r->id,
                          gr->nrules == 1 ? "" : ", ...", f[0].where.file,
                          f[0].where.line);
        }
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_rules_file(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_rules_main_conf_t *rmcf = conf;

    char                 err[RULES_ERR_LEN];
    ngx_str_t           *value;
    ngx_pool_cleanup_t  *cln;

    if (rmcf->rules) {
        return "is duplicate";
    }

    value = cf->args->elts;
    rmcf->rules_file = value[1];

    if (ngx_conf_full_name(cf->cycle, &rmcf->rules_file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_CONF_ERROR;
    }

    rmcf->rules = rules_load_file((char *) rmcf->rules_file.data, err,
                                  sizeof(err));

    if (rmcf->rules == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s", err);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_rules_cleanup_rules;
    cln->data = rmcf->rules;
    rmcf->rules_loaded = ngx_time();

    return NGX_CONF_OK;
}


static void
ngx_http_rules_cleanup_rules(void *data)
{
    rules_free(data);
}


/*
 * rules_redis 127.0.0.1:6379 | unix:/path [password=P] [user=U] [db=N];
 *
 * A host name is resolved now, at configuration time: workers connect
 * to the numeric address and never resolve names.
 */
static char *
ngx_http_rules_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_rules_main_conf_t *rmcf = conf;

    u_char      *p;
    size_t       len;
    ngx_str_t   *value;
    ngx_url_t    u;
    ngx_uint_t   i;

    if (rmcf->redis_set) {
        return "is duplicate";
    }

    if (rmcf->cluster_set) {
        return "cannot be used with \"rules_redis_cluster\"";
    }

    value = cf->args->elts;
    rmcf->redis_conf.addr_text = value[1];

    if (value[1].len > 5 && ngx_strncmp(value[1].data, "unix:", 5) == 0) {
        len = value[1].len - 5;

        if (len > NGX_HTTP_RULES_UNIX_PATH_MAX) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "too long path in \"rules_redis %V\" "
                               "(at most %uz bytes)", &value[1],
                               (size_t) NGX_HTTP_RULES_UNIX_PATH_MAX);
            return NGX_CONF_ERROR;
        }

        p = ngx_pnalloc(cf->pool, len + 1);
        if (p == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memcpy(p, value[1].data + 5, len);
        p[len] = '\0';

        rmcf->redis_conf.unix_path.data = p;
        rmcf->redis_conf.unix_path.len = len;

    } else {
        ngx_memzero(&u, sizeof(ngx_url_t));

        u.url = value[1];

        if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
            if (u.err) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%s in \"rules_redis %V\"", u.err,
                                   &value[1]);
            }

            return NGX_CONF_ERROR;
        }

        if (u.no_port || u.naddrs == 0 || u.uri.len) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"rules_redis %V\" needs host:port or "
                               "unix:/path", &value[1]);
            return NGX_CONF_ERROR;
        }

        p = ngx_pnalloc(cf->pool, NGX_SOCKADDR_STRLEN + 1);
        if (p == NULL) {
            return NGX_CONF_ERROR;
        }

        len = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, p,
                            NGX_SOCKADDR_STRLEN, 0);
        p[len] = '\0';

        rmcf->redis_conf.host.data = p;
        rmcf->redis_conf.host.len = len;
        rmcf->redis_conf.port = u.port;
    }

    for (i = 2; i < cf->args->nelts; i++) {
        if (ngx_http_rules_redis_auth(cf, rmcf, &value[i], 1)
            != NGX_CONF_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    if (rmcf->redis_conf.user.len && rmcf->redis_conf.password.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"rules_redis\": \"user=\" needs \"password=\"");
        return NGX_CONF_ERROR;
    }

    rmcf->redis_set = 1;

    return NGX_CONF_OK;
}


/*
 * rules_redis_cluster host:port [host:port...] [password=P] [user=U];
 *
 * Seed nodes: any of them gives the slot map (CLUSTER SLOTS), which
 * names the masters.  Names are resolved now; unix sockets and db= do
 * not exist in a cluster.
 */
static char *
ngx_http_rules_redis_cluster(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_rules_main_conf_t *rmcf = conf;

    u_char                         *p;
    size_t                          len;
    ngx_str_t                      *value;
    ngx_url_t                       u;
    ngx_uint_t                      i;
    ngx_http_rules_cluster_seed_t  *seed;

    if (rmcf->cluster_set) {
        return "is duplicate";
    }

    if (rmcf->redis_set) {
        return "cannot be used with \"rules_redis\"";
    }

    value = cf->args->elts;

    rmcf->cluster_conf.redis = &rmcf->redis_conf;
    rmcf->cluster_conf.seeds = ngx_array_create(cf->pool, 4,
                                       sizeof(ngx_http_rules_cluster_seed_t));
    if (rmcf->cluster_conf.seeds == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strlchr(value[i].data, value[i].data + value[i].len, '=')) {
            if (ngx_http_rules_redis_auth(cf, rmcf, &value[i], 0)
                != NGX_CONF_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (value[i].len >= 5 && ngx_strncmp(value[i].data, "unix:", 5) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"rules_redis_cluster\" needs host:port "
                               "seed nodes, not \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        ngx_memzero(&u, sizeof(ngx_url_t));

        u.url = value[i];

        if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
            if (u.err) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%s in \"rules_redis_cluster %V\"",
                                   u.err, &value[i]);
            }

            return NGX_CONF_ERROR;
        }

        if (u.no_port || u.naddrs == 0 || u.uri.len) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"rules_redis_cluster\" needs host:port "
                               "seed nodes, not \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        seed = ngx_array_push(rmcf->cluster_conf.seeds);
        if (seed == NULL) {
            return NGX_CONF_ERROR;
        }

        p = ngx_pnalloc(cf->pool, NGX_SOCKADDR_STRLEN + 1);
        if (p == NULL) {
            return NGX_CONF_ERROR;
        }

        len = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, p,
                            NGX_SOCKADDR_STRLEN, 0);
        p[len] = '\0';

        seed->addr_text = value[i];
        seed->host.data = p;
        seed->host.len = len;
        seed->port = u.port;
    }

    if (rmcf->cluster_conf.seeds->nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"rules_redis_cluster\" needs at least one "
                           "host:port seed node");
        return NGX_CONF_ERROR;
    }

    if (rmcf->redis_conf.user.len && rmcf->redis_conf.password.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"rules_redis_cluster\": \"user=\" needs "
                           "\"password=\"");
        return NGX_CONF_ERROR;
    }

    seed = rmcf->cluster_conf.seeds->elts;
    rmcf->redis_conf.addr_text = seed[0].addr_text;

    rmcf->cluster_set = 1;

    return NGX_CONF_OK;
}


/* password=, user= and, but for a cluster, db= */
static char *
ngx_http_rules_redis_auth(ngx_conf_t *cf, ngx_http_rules_main_conf_t *rmcf,
    ngx_str_t *arg, ngx_uint_t db)
{
    ngx_str_t   s;
    ngx_int_t   n;
    char       *name;

    name = db ? "rules_redis" : "rules_redis_cluster";

    if (arg->len > 9 && ngx_strncmp(arg->data, "password=", 9) == 0) {
        if (rmcf->redis_conf.password.data) {
            goto duplicate;
        }

        s.data = arg->data + 9;
        s.len = arg->len - 9;
        rmcf->redis_conf.password = s;
        return NGX_CONF_OK;
    }

    if (arg->len > 5 && ngx_strncmp(arg->data, "user=", 5) == 0) {
        if (rmcf->redis_conf.user.data) {
            goto duplicate;
        }

        s.data = arg->data + 5;
        s.len = arg->len - 5;
        rmcf->redis_conf.user = s;
        return NGX_CONF_OK;
    }

    if (db && arg->len > 3 && ngx_strncmp(arg->data, "db=", 3) == 0) {
        n = ngx_atoi(arg->data + 3, arg->len - 3);

        if (n != NGX_ERROR && rmcf->redis_conf.db_given) {
            goto duplicate;
        }

        if (n != NGX_ERROR && n <= 65535) {
            rmcf->redis_conf.db = n;
            rmcf->redis_conf.db_given = 1;
            return NGX_CONF_OK;
        }
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\" of \"%s\": "
                       "expected password=, user=%s", arg, name,
                       db ? " or db=N (0 to 65535)" : " (a cluster has no db=)");
    return NGX_CONF_ERROR;

duplicate:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "duplicate parameter \"%V\" of \"%s\"", arg, name);
    return NGX_CONF_ERROR;
}


/*
 * 1 when every variable of a rules_field value is a $arg_ one (and there
 * is one); *mixed: $arg_ variables and others.
 */
static ngx_uint_t
ngx_http_rules_field_args(ngx_str_t *v, ngx_uint_t *mixed)
{
    u_char      *p, *last;
    ngx_uint_t   args, others;

    args = 0;
    others = 0;
    p = v->data;
    last = v->data + v->len;

    while (p < last) {
        if (*p++ != '$' || p == last) {
            continue;
        }

        if (*p == '{') {
            p++;
        }

        if (last - p > 4 && ngx_strncasecmp(p, (u_char *) "arg_", 4) == 0) {
            args++;

        } else {
            others++;
        }
    }

    *mixed = (args && others);

    return (args && !others);
}


static char *
ngx_http_rules_field(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_rules_loc_conf_t *rlcf = conf;

    u_char                             ch;
    ngx_str_t                         *value, name;
    ngx_uint_t                         i, mixed;
    ngx_http_rules_field_t            *f;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;

    if (value[1].len == 0) {
        return "needs a non-empty field name";
    }

    if (cf->args->nelts == 4
        && !(value[3].len == 8
             && ngx_strncmp(value[3].data, "override", 8) == 0))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\" (only \"override\" "
                           "may follow the value)", &value[3]);
        return NGX_CONF_ERROR;
    }

    if (rlcf->fields == NULL) {
        rlcf->fields = ngx_array_create(cf->pool, 8,
                                        sizeof(ngx_http_rules_field_t));
        if (rlcf->fields == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    f = rlcf->fields->elts;

    for (i = 0; i < rlcf->fields->nelts; i++) {
        if (f[i].name.len == value[1].len
            && ngx_strncmp(f[i].name.data, value[1].data, value[1].len) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate rules_field \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    f = ngx_array_push(rlcf->fields);
    if (f == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_http_rules_where(cf, &f->where);

    f->name = value[1];
    f->field = -1;
    f->override = (cf->args->nelts == 4);
    ngx_str_null(&f->arg);

    /*
     * query arguments are matched percent-decoded: a value whose
     * variables are all $arg_ ones (in any case, as nginx reads variable
     * names) is decoded; one that mixes them with others is not (the
     * others' bytes would change), and says so
     */
    f->decode = ngx_http_rules_field_args(&value[2], &mixed);

    if (mixed) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "rules_field \"%V\": \"%V\" mixes $arg_ "
                           "variables with others: not percent-decoded "
                           "(give the query argument a field of its own)",
                           &value[1], &value[2]);
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[2];
    ccv.complex_value = &f->value;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /*
     * A value that is one variable ("$arg_uid", "${arg_uid}") is read
     * as that variable (flushed, as a complex value flushes it): a
     * complex value evaluates it twice, its length then its bytes, and
     * $arg_ variables are not cached: each is a scan of the query string.
     */

    f->var_index = NGX_ERROR;
    name = value[2];

    if (name.len > 1 && name.data[0] == '$') {
        name.data++;
        name.len--;

        if (name.len > 2 && name.data[0] == '{'
            && name.data[name.len - 1] == '}')
        {
            name.data++;
            name.len -= 2;
        }

        for (i = 0; i < name.len; i++) {
            ch = name.data[i];

            if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
                  || (ch >= '0' && ch <= '9') || ch == '_'))
            {
                break;
            }
        }

        if (i == name.len) {
            f->var_index = ngx_http_get_variable_index(cf, &name);

            if (f->var_index == NGX_ERROR) {
                return NGX_CONF_ERROR;
            }

            if (name.len > 4
                && ngx_strncasecmp(name.data, (u_char *) "arg_", 4) == 0)
            {
                f->arg.len = name.len - 4;
                f->arg.data = ngx_pnalloc(cf->pool, f->arg.len);
                if (f->arg.data == NULL) {
                    return NGX_CONF_ERROR;
                }

                ngx_strlow(f->arg.data, name.data + 4, f->arg.len);
            }
        }
    }

    return NGX_CONF_OK;
}


/*
 * rules_time $variable;  the time of every event of the request
 * rules_time name;       a field (query mode) or a member of each JSON
 *                        event (body mode)
 */
static char *
ngx_http_rules_time(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_rules_loc_conf_t *rlcf = conf;

    ngx_str_t                         *value;
    ngx_http_compile_complex_value_t   ccv;

    if (rlcf->time_value || rlcf->time_member.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0) {
        return "needs a variable or a field name";
    }

    if (ngx_http_script_variables_count(&value[1]) == 0) {
        /* NUL-terminated for the JSON parser */
        rlcf->time_member.data = (u_char *) ngx_pcalloc(cf->pool,
                                                        value[1].len + 1);
        if (rlcf->time_member.data == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memcpy(rlcf->time_member.data, value[1].data, value[1].len);
        rlcf->time_member.len = value[1].len;
        ngx_http_rules_where(cf, &rlcf->time_where);

        return NGX_CONF_OK;
    }

    rlcf->time_value = ngx_palloc(cf->pool,
                                  sizeof(ngx_http_complex_value_t));
    if (rlcf->time_value == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = rlcf->time_value;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* rules on|off, rules_key_prefix: where the directive is */
static char *
ngx_http_rules_post_where(ngx_conf_t *cf, void *post, void *data)
{
    ngx_http_rules_where_post_t  *wp = post;

    ngx_http_rules_where(cf, (ngx_http_rules_where_t *)
                                 ((u_char *) data + wp->where));

    return NGX_CONF_OK;
}


/* the file and line of the directive being read */
static void
ngx_http_rules_where(ngx_conf_t *cf, ngx_http_rules_where_t *w)
{
    w->file = cf->conf_file->file.name.data;
    w->line = cf->conf_file->line;
}


static char *
ngx_http_rules_reject_fraud(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_rules_loc_conf_t *rlcf = conf;

    ngx_str_t  *value;
    ngx_int_t   status;

    if (rlcf->reject_status != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0) {
        rlcf->reject_status = 0;
        return NGX_CONF_OK;
    }

    status = ngx_atoi(value[1].data, value[1].len);

    if (status < 400 || status > 599) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid status \"%V\" of \"rules_reject_fraud\": "
                           "\"off\" or a code from 400 to 599", &value[1]);
        return NGX_CONF_ERROR;
    }

    rlcf->reject_status = status;

    return NGX_CONF_OK;
}


static char *
ngx_http_rules_check_bounds(ngx_conf_t *cf, void *post, void *data)
{
    ngx_http_rules_bounds_t  *b = post;

    size_t  *sp = data;
    u_char  *msg;

    if (*sp >= b->low && *sp <= b->high) {
        return NGX_CONF_OK;
    }

    if (b->high == NGX_MAX_SIZE_T_VALUE) {
        return "must be positive";
    }

    msg = ngx_pnalloc(cf->pool, sizeof("must be between  and ")
                                + 2 * NGX_SIZE_T_LEN);
    if (msg == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_sprintf(msg, "must be between %uz and %uz%Z", b->low, b->high);

    return (char *) msg;
}


/*
 * A worker short of memory for its Redis client (the state cache, the
 * connection) goes on without it, its events answered "error" as with
 * Redis down, and tries again every NGX_HTTP_RULES_START_RETRY ms:
 * nginx never starts again a worker whose init_process failed.
 */
#define NGX_HTTP_RULES_START_RETRY  1000

static ngx_event_t                  ngx_http_rules_start_ev;
static ngx_http_rules_main_conf_t  *ngx_http_rules_start_rmcf;
static ngx_uint_t                   ngx_http_rules_start_failures;


static ngx_int_t
ngx_http_rules_init_process(ngx_cycle_t *cycle)
{
    ngx_http_rules_main_conf_t  *rmcf;

    /*
     * the cache manager and loader run init_process too: they serve no
     * request, so they count nothing and connect to no Redis
     */

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    rmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_rules_module);

    if (rmcf == NULL || rmcf->rules == NULL) {
        return NGX_OK;
    }

    /* every worker counts, with or without a Redis to talk to */
    ngx_http_rules_metrics_worker_start(rmcf);

    if (!rmcf->redis_set && !rmcf->cluster_set) {
        return NGX_OK;
    }

    /* the timer's debug messages read data as a connection: no NULL */
    ngx_http_rules_start_ev.data = &ngx_http_rules_start_ev;
    ngx_http_rules_start_ev.handler = ngx_http_rules_worker_start_handler;
    ngx_http_rules_start_ev.log = cycle->log;
    ngx_http_rules_start_ev.cancelable = 1;
    ngx_http_rules_start_rmcf = rmcf;

    ngx_http_rules_worker_start(rmcf, cycle->log);

    return NGX_OK;
}


/* Each step keeps what it made: a try again goes on from there. */
static void
ngx_http_rules_worker_start(ngx_http_rules_main_conf_t *rmcf, ngx_log_t *log)
{
    if (ngx_http_rules_worker_init(rmcf->rules, log) == NGX_OK
        && ngx_http_rules_batch_init(rmcf, log) == NGX_OK)
    {
        if (rmcf->cluster_set) {
            rmcf->cluster = ngx_http_rules_cluster_create(&rmcf->cluster_conf,
                                                          rules_script_text,
                                                          rules_script_sha1(),
                                                          log);

        } else {
            rmcf->redis = ngx_http_rules_redis_create(&rmcf->redis_conf,
                                                      rules_script_text,
                                                      rules_script_sha1(),
                                                      log);
        }

        if (rmcf->cluster || rmcf->redis) {
            if (ngx_http_rules_start_failures) {
                ngx_log_error(NGX_LOG_NOTICE, log, 0,
                              "rules: Redis client started, after %ui "
                              "tries short of memory",
                              ngx_http_rules_start_failures);
            }

            return;
        }
    }

    if (ngx_http_rules_start_failures++ == 0) {
        ngx_log_error(NGX_LOG_ALERT, log, 0,
                      "rules: no memory to start the Redis client, events "
                      "answered \"error\" until it starts; trying again "
                      "every %d ms", NGX_HTTP_RULES_START_RETRY);
    }

    ngx_add_timer(&ngx_http_rules_start_ev, NGX_HTTP_RULES_START_RETRY);
}


static void
ngx_http_rules_worker_start_handler(ngx_event_t *ev)
{
    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    ngx_http_rules_worker_start(ngx_http_rules_start_rmcf, ev->log);
}


static void
ngx_http_rules_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_rules_main_conf_t  *rmcf;

    rmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_rules_module);

    if (rmcf == NULL) {
        return;
    }

    /* the connection's counters since the last event or timer */
    ngx_http_rules_metrics_sync_engine(rmcf);

    if (ngx_http_rules_start_ev.timer_set) {
        ngx_del_timer(&ngx_http_rules_start_ev);
    }

    if (!rmcf->redis_set && !rmcf->cluster_set) {
        ngx_http_rules_metrics_worker_exit(rmcf);
        return;
    }

    /*
     * the calls in flight fail first, then those never sent (no client
     * when a start short of memory made none: nothing was sent)
     */

    if (rmcf->cluster) {
        ngx_http_rules_cluster_destroy(rmcf->cluster);
        rmcf->cluster = NULL;

    } else if (rmcf->redis) {
        ngx_http_rules_redis_destroy(rmcf->redis, "worker exiting");
        rmcf->redis = NULL;
    }

    /* calls never sent fail too, and count in the worker's slot */
    ngx_http_rules_batch_exit();

    /* the state cache's evictions since the sync above */
    ngx_http_rules_metrics_sync_engine(rmcf);

    /* the per-rule counts of the answers, not added yet; the worker's
     * slot in the metrics zone */
    ngx_http_rules_metrics_worker_exit(rmcf);

    ngx_http_rules_worker_exit();
    ngx_http_rules_reply_exit();
    ngx_http_rules_variables_exit();
}
