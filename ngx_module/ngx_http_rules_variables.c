/*
 * $rules_matched, $rules_fraud, $rules_status and $rules_match_<id>.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_rules_module.h"


#define NGX_HTTP_RULES_MATCH_PREFIX  "rules_match_"


/*
 * The worker's buffer for $rules_matched: the ids are written once, here,
 * then copied into the request's pool at their length (two passes over
 * about 100 matched rules with 1000 rules were 3 % of a worker).
 */
static u_char  *ngx_http_rules_ids_buf;
static size_t   ngx_http_rules_ids_size;


static ngx_int_t ngx_http_rules_matched_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static size_t ngx_http_rules_matched_ids(ngx_http_rules_ctx_t *ctx);
static ngx_int_t ngx_http_rules_fraud_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_rules_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_rules_match_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


/*
 * Not cacheable: their value changes once the event is evaluated (at the
 * start of the rewrite phase, then again when Redis answers), and a
 * variable read earlier must not pin the value before the evaluation.
 */
static ngx_http_variable_t  ngx_http_rules_vars[] = {

    { ngx_string("rules_matched"), NULL, ngx_http_rules_matched_variable,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("rules_fraud"), NULL, ngx_http_rules_fraud_variable,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("rules_status"), NULL, ngx_http_rules_status_variable,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string(NGX_HTTP_RULES_MATCH_PREFIX), NULL,
      ngx_http_rules_match_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE|NGX_HTTP_VAR_PREFIX, 0 },

      ngx_http_null_variable
};


static ngx_str_t  ngx_http_rules_status_names[] = {
    ngx_string(""),
    ngx_string("ok"),
    ngx_string("skipped"),
    ngx_string("invalid"),
    ngx_string("error"),
    ngx_string("timeout")
};


ngx_int_t
ngx_http_rules_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_rules_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/*
 * Every $rules_match_<id> the configuration uses must name a rule of the
 * rules file: a typo fails "nginx -t" instead of reading "0" forever.
 * nginx lowercases variable names, so the id is found with case ignored,
 * and refused when two ids of the file differ only in case.
 */
ngx_int_t
ngx_http_rules_check_variables(ngx_conf_t *cf,
    ngx_http_rules_main_conf_t *rmcf)
{
    int                         ambiguous;
    size_t                      plen;
    ngx_uint_t                  i;
    ngx_http_variable_t        *v;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);
    plen = sizeof(NGX_HTTP_RULES_MATCH_PREFIX) - 1;

    v = cmcf->variables.elts;

    for (i = 0; i < cmcf->variables.nelts; i++) {
        if (v[i].name.len < plen
            || ngx_strncmp(v[i].name.data, NGX_HTTP_RULES_MATCH_PREFIX, plen)
               != 0)
        {
            continue;
        }

        if (v[i].name.len == plen) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "variable \"$%V\" names no rule (use "
                          "\"$%V<id>\")", &v[i].name, &v[i].name);
            return NGX_ERROR;
        }

        if (rmcf->rules == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "variable \"$%V\" needs \"rules_file\"",
                          &v[i].name);
            return NGX_ERROR;
        }

        if (rules_find_id_nocase(rmcf->rules, (char *) v[i].name.data + plen,
                                 v[i].name.len - plen, &ambiguous)
            != NULL)
        {
            continue;
        }

        if (ambiguous) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "variable \"$%V\": rule ids in \"%V\" differ "
                          "only in case from \"%*s\", and nginx variable "
                          "names ignore case",
                          &v[i].name, &rmcf->rules_file,
                          v[i].name.len - plen, v[i].name.data + plen);
            return NGX_ERROR;
        }

        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "variable \"$%V\": no rule \"%*s\" in \"%V\"",
                      &v[i].name, v[i].name.len - plen,
                      v[i].name.data + plen, &rmcf->rules_file);
        return NGX_ERROR;
    }

    return NGX_OK;
}


const char *
ngx_http_rules_status_name(ngx_uint_t status)
{
    if (status >= NGX_HTTP_RULES_STATUS_LAST) {
        status = NGX_HTTP_RULES_STATUS_NONE;
    }

    return (const char *) ngx_http_rules_status_names[status].data;
}


static ngx_http_rules_ctx_t *
ngx_http_rules_done_ctx(ngx_http_request_t *r)
{
    ngx_http_rules_ctx_t  *ctx;

    ctx = ngx_http_rules_get_ctx(r->main);

    return (ctx && ctx->done) ? ctx : NULL;
}


static ngx_int_t
ngx_http_rules_matched_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    size_t                 len;
    u_char                *p;
    ngx_http_rules_ctx_t  *ctx;

    ctx = ngx_http_rules_done_ctx(r);

    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    if (ctx == NULL) {
        v->len = 0;
        v->data = (u_char *) "";
        return NGX_OK;
    }

    if (!ctx->matched_built) {
        len = ngx_http_rules_matched_ids(ctx);

        if (len) {
            p = ngx_pnalloc(r->main->pool, len);
            if (p == NULL) {
                return NGX_ERROR;
            }

            if (len <= ngx_http_rules_ids_size) {
                ngx_memcpy(p, ngx_http_rules_ids_buf, len);

            } else {
                /* no memory for the worker's buffer: a second pass */
                (void) rules_result_ids(ctx->rules, &ctx->result, (char *) p,
                                        len);
            }

            ctx->matched.data = p;
        }

        ctx->matched.len = len;
        ctx->matched_built = 1;
    }

    v->len = ctx->matched.len;
    v->data = ctx->matched.len ? ctx->matched.data : (u_char *) "";

    return NGX_OK;
}


/*
 * The matched ids, written into the worker's buffer (grown when they do
 * not fit, and written again); returns their length.
 */
static size_t
ngx_http_rules_matched_ids(ngx_http_rules_ctx_t *ctx)
{
    size_t   len, size;
    u_char  *buf;

    len = rules_result_ids(ctx->rules, &ctx->result,
                           (char *) ngx_http_rules_ids_buf,
                           ngx_http_rules_ids_size);

    if (len <= ngx_http_rules_ids_size) {
        return len;
    }

    size = ngx_align(len, 4096);
    buf = malloc(size);

    if (buf == NULL) {
        return len;
    }

    free(ngx_http_rules_ids_buf);
    ngx_http_rules_ids_buf = buf;
    ngx_http_rules_ids_size = size;

    return rules_result_ids(ctx->rules, &ctx->result, (char *) buf, size);
}


void
ngx_http_rules_variables_exit(void)
{
    free(ngx_http_rules_ids_buf);
    ngx_http_rules_ids_buf = NULL;
    ngx_http_rules_ids_size = 0;
}


static ngx_int_t
ngx_http_rules_fraud_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_rules_ctx_t  *ctx;

    ctx = ngx_http_rules_done_ctx(r);

    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->len = 1;
    v->data = (u_char *) ((ctx && ctx->fraud) ? "1" : "0");

    return NGX_OK;
}


static ngx_int_t
ngx_http_rules_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_uint_t             status;
    ngx_http_rules_ctx_t  *ctx;

    ctx = ngx_http_rules_done_ctx(r);
    status = ctx ? ctx->status : NGX_HTTP_RULES_STATUS_NONE;

    if (status >= NGX_HTTP_RULES_STATUS_LAST) {
        status = NGX_HTTP_RULES_STATUS_NONE;
    }

    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->len = ngx_http_rules_status_names[status].len;
    v->data = ngx_http_rules_status_names[status].data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_rules_match_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t *name = (ngx_str_t *) data;

    int                    ambiguous;
    size_t                 plen;
    const rules_rule_t    *rule;
    ngx_http_rules_ctx_t  *ctx;

    plen = sizeof(NGX_HTTP_RULES_MATCH_PREFIX) - 1;
    ctx = ngx_http_rules_done_ctx(r);
    rule = NULL;

    if (ctx && name->len > plen) {
        rule = rules_find_id_nocase(ctx->rules, (char *) name->data + plen,
                                    name->len - plen, &ambiguous);
    }

    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->len = 1;
    v->data = (u_char *) ((rule && rules_result_is_set(&ctx->result,
                                                       rule->index))
                          ? "1" : "0");

    return NGX_OK;
}
