/*
 * Loading and strict validation of a rule file (SPEC.md section 2).
 */

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "rules_internal.h"


#define RULES_DIGEST_SALT  "ngx_http_rules_module state v1\n"
#define RULES_SHARE_SALT   "ngx_http_rules_module shared distinct v1\n"
#define RULES_PATH_LEN     256


typedef struct {
    rules_set_t   *rs;
    const char    *name;       /* file name for messages */
    char          *err;
    size_t         errlen;
    size_t         index;      /* rule being loaded */
    const char    *id;         /* its id once known */
} rules_loader_t;


static void rules_loader_error(rules_loader_t *ld, const char *member,
    const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int rules_load_rule(rules_loader_t *ld, json_t *rule, size_t i);
static const char *rules_json_cstring(json_t *j);
static rules_cond_t *rules_load_cond(rules_loader_t *ld, json_t *j,
    const char *path, unsigned depth);
static int rules_memo_cond(rules_loader_t *ld, rules_cond_t *c, char *text,
    const char *path);
static int rules_memo_combinator(rules_loader_t *ld, rules_cond_t *c,
    const char *name, const char *path);
static char *rules_memo_text(const rules_cond_t *c, const char *name);
static void rules_memo_done(rules_set_t *rs);
static int rules_build_memo_places(rules_set_t *rs);
static int rules_load_duration(rules_loader_t *ld, json_t *rule,
    const char *member, int required, int64_t min, int64_t *out);
static int rules_field(rules_loader_t *ld, const char *member,
    const char *name, size_t len, unsigned *index);
static int rules_build_result_tables(rules_set_t *rs);
static int rules_build_groups(rules_set_t *rs);
static int rules_build_digest_table(rules_set_t *rs);
static int rules_build_shares(rules_set_t *rs);
static void rules_digest_bytes(uint64_t d, unsigned char out[8]);


static void
rules_loader_error(rules_loader_t *ld, const char *member, const char *fmt,
    ...)
{
    va_list  args;
    size_t   n;
    int      rc;

    if (ld->id) {
        rc = snprintf(ld->err, ld->errlen, "rules file \"%s\": rule #%zu "
                      "\"%s\": ", ld->name, ld->index, ld->id);

    } else {
        rc = snprintf(ld->err, ld->errlen, "rules file \"%s\": rule #%zu: ",
                      ld->name, ld->index);
    }

    n = rc > 0 ? (size_t) rc : 0;

    if (member && n < ld->errlen) {
        rc = snprintf(ld->err + n, ld->errlen - n, "member \"%s\": ", member);
        n += rc > 0 ? (size_t) rc : 0;
    }

    if (n < ld->errlen) {
        va_start(args, fmt);
        vsnprintf(ld->err + n, ld->errlen - n, fmt, args);
        va_end(args);
    }
}


static void
rules_file_error(rules_loader_t *ld, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
rules_file_error(rules_loader_t *ld, const char *fmt, ...)
{
    va_list  args;
    int      rc;
    size_t   n;

    rc = snprintf(ld->err, ld->errlen, "rules file \"%s\": ", ld->name);
    n = rc > 0 ? (size_t) rc : 0;

    if (n < ld->errlen) {
        va_start(args, fmt);
        vsnprintf(ld->err + n, ld->errlen - n, fmt, args);
        va_end(args);
    }
}


void *
rules_set_alloc(rules_set_t *rs, size_t size)
{
    void  *p;

    if (rules_grow(&rs->allocs, &rs->allocs_size, rs->nallocs,
                   sizeof(void *), 64)
        != 0)
    {
        return NULL;
    }

    p = calloc(1, size ? size : 1);

    if (p == NULL) {
        return NULL;
    }

    rs->allocs[rs->nallocs++] = p;

    return p;
}


char *
rules_set_strdup(rules_set_t *rs, const char *s, size_t len)
{
    char  *p;

    p = rules_set_alloc(rs, len + 1);

    if (p == NULL) {
        return NULL;
    }

    memcpy(p, s, len);
    p[len] = '\0';

    return p;
}


int
rules_set_track_cond(rules_set_t *rs, rules_cond_t *c)
{
    if (rules_grow(&rs->owners, &rs->owners_size, rs->nowners,
                   sizeof(rules_cond_t *), 16)
        != 0)
    {
        return -1;
    }

    rs->owners[rs->nowners++] = c;

    return 0;
}


void
rules_free(rules_set_t *rs)
{
    size_t  i;

    if (rs == NULL) {
        return;
    }

    for (i = 0; i < rs->nowners; i++) {
        rules_cond_free(rs->owners[i]);
    }

    free(rs->owners);

    rules_strmap_free(&rs->fields);
    rules_strmap_free(&rs->ids);
    rules_strmap_free(&rs->ids_nocase);
    rules_strmap_free(&rs->digests);
    rules_strmap_free(&rs->share_digests);
    rules_memo_done(rs);
    free(rs->digest_keys);
    free(rs->digest_vals);
    rules_index_free(&rs->index);

    if (rs->match_data) {
        pcre2_match_data_free(rs->match_data);
    }

    if (rs->match_ctx) {
        pcre2_match_context_free(rs->match_ctx);
    }

    if (rs->jit_stack) {
        pcre2_jit_stack_free(rs->jit_stack);
    }

    for (i = 0; i < rs->nallocs; i++) {
        free(rs->allocs[i]);
    }

    free(rs->allocs);
    free(rs);
}


/*
 * nginx lowercases variable names, so $rules_match_<id> finds its rule
 * by the lowercased id; two ids that differ only in case share a key
 * marked ambiguous.
 */
static int
rules_put_id_nocase(rules_set_t *rs, const rules_rule_t *r, size_t i)
{
    int     rc;
    char   *low;
    size_t  k;

    low = rules_set_alloc(rs, r->id_len + 1);

    if (low == NULL) {
        return -1;
    }

    for (k = 0; k < r->id_len; k++) {
        low[k] = (char) tolower((unsigned char) r->id[k]);
    }

    rc = rules_strmap_put(&rs->ids_nocase, (const unsigned char *) low,
                          r->id_len, (unsigned) i);

    if (rc < 0) {
        return -1;
    }

    if (rc == 0) {
        (void) rules_strmap_set(&rs->ids_nocase, (const unsigned char *) low,
                                r->id_len, RULES_ID_AMBIGUOUS);
    }

    return 0;
}


static rules_set_t *
rules_set_create(void)
{
    rules_set_t  *rs;

    rs = calloc(1, sizeof(rules_set_t));

    if (rs == NULL) {
        return NULL;
    }

    if (rules_strmap_init(&rs->fields, 16) != 0
        || rules_strmap_init(&rs->ids, 16) != 0
        || rules_strmap_init(&rs->ids_nocase, 16) != 0
        || rules_strmap_init(&rs->digests, 16) != 0
        || rules_strmap_init(&rs->share_digests, 16) != 0
        || rules_strmap_init(&rs->conds, 16) != 0)
    {
        rules_free(rs);
        return NULL;
    }

    rs->match_ctx = pcre2_match_context_create(NULL);
    rs->match_data = pcre2_match_data_create(1, NULL);
    rs->jit_stack = pcre2_jit_stack_create(32 * 1024, 512 * 1024, NULL);

    if (rs->match_ctx == NULL || rs->match_data == NULL
        || rs->jit_stack == NULL)
    {
        rules_free(rs);
        return NULL;
    }

    pcre2_set_match_limit(rs->match_ctx, RULES_REGEX_MATCH_LIMIT);
    pcre2_set_depth_limit(rs->match_ctx, RULES_REGEX_DEPTH_LIMIT);
    pcre2_jit_stack_assign(rs->match_ctx, NULL, rs->jit_stack);

    return rs;
}


static rules_set_t *
rules_load_root(json_t *root, const char *name, const char *text,
    size_t text_len, char *err, size_t errlen)
{
    rules_set_t     *rs;
    rules_loader_t   ld;
    json_t          *rules, *rule;
    const char      *member;
    json_t          *value;
    size_t           i;
    uint64_t         h;

    memset(&ld, 0, sizeof(ld));
    ld.name = name;
    ld.err = err;
    ld.errlen = errlen;

    if (!json_is_object(root)) {
        rules_file_error(&ld, "the top level must be an object with "
                         "a \"rules\" array");
        return NULL;
    }

    json_object_foreach(root, member, value) {
        if (strcmp(member, "rules") != 0) {
            rules_file_error(&ld, "unknown top-level member \"%s\"", member);
            return NULL;
        }
    }

    rules = json_object_get(root, "rules");

    if (!json_is_array(rules)) {
        rules_file_error(&ld, "member \"rules\" must be an array");
        return NULL;
    }

    if (json_array_size(rules) > RULES_MAX_RULES) {
        rules_file_error(&ld, "%zu rules, more than the limit of %d",
                         json_array_size(rules), RULES_MAX_RULES);
        return NULL;
    }

    rs = rules_set_create();

    if (rs == NULL) {
        rules_file_error(&ld, "out of memory");
        return NULL;
    }

    ld.rs = rs;
    rs->nrules = json_array_size(rules);
    rs->rules = rules_set_alloc(rs, rs->nrules * sizeof(rules_rule_t));
    rs->field_names = rules_set_alloc(rs, RULES_MAX_FIELDS * sizeof(char *));

    if (rs->rules == NULL || rs->field_names == NULL) {
        rules_file_error(&ld, "out of memory");
        goto failed;
    }

    json_array_foreach(rules, i, rule) {
        ld.index = i;
        ld.id = NULL;

        if (rules_load_rule(&ld, rule, i) != 0) {
            goto failed;
        }
    }

    rules_memo_done(rs);
    rs->memo_gen = rules_set_alloc(rs, (rs->nmemo + 1) * sizeof(uint32_t));
    rs->memo_val = rules_set_alloc(rs, rs->nmemo + 1);

    if (rs->memo_gen == NULL || rs->memo_val == NULL
        || rules_build_result_tables(rs) != 0
        || rules_build_memo_places(rs) != 0
        || rules_build_groups(rs) != 0 || rules_build_digest_table(rs) != 0
        || rules_build_shares(rs) != 0 || rules_index_build(rs) != 0)
    {
        rules_file_error(&ld, "out of memory");
        goto failed;
    }

    h = rules_hash64(text, text_len, 0);
    snprintf(rs->digest_hex, sizeof(rs->digest_hex), "%016llx",
             (unsigned long long) h);

    return rs;

failed:

    rules_free(rs);
    return NULL;
}


rules_set_t *
rules_load_buffer(const char *buf, size_t len, const char *name, char *err,
    size_t errlen)
{
    json_t        *root;
    json_error_t   jerr;
    rules_set_t   *rs;

    /* a failed allocation in jansson, here or in the rules' copies and
     * dumps (which would lose a member unsaid), is out of memory */

    rules_json_begin();
    root = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);

    if (root == NULL) {
        if (rules_json_end()) {
            snprintf(err, errlen, "rules file \"%s\": out of memory", name);

        } else {
            snprintf(err, errlen, "rules file \"%s\": line %d, column %d: "
                     "%s", name, jerr.line, jerr.column, jerr.text);
        }

        return NULL;
    }

    rs = rules_load_root(root, name, buf, len, err, errlen);
    json_decref(root);

    if (rules_json_end()) {
        if (rs) {
            rules_free(rs);
        }

        snprintf(err, errlen, "rules file \"%s\": out of memory", name);
        return NULL;
    }

    return rs;
}


rules_set_t *
rules_load_file(const char *path, char *err, size_t errlen)
{
    FILE         *f;
    char         *buf, *p;
    size_t        len, size, n;
    rules_set_t  *rs;

    f = fopen(path, "rb");

    if (f == NULL) {
        snprintf(err, errlen, "rules file \"%s\": cannot open: %s", path,
                 strerror(errno));
        return NULL;
    }

    len = 0;
    size = 65536;
    buf = malloc(size);

    while (buf != NULL) {
        n = fread(buf + len, 1, size - len, f);
        len += n;

        if (len < size) {
            break;
        }

        size *= 2;
        p = realloc(buf, size);

        if (p == NULL) {
            free(buf);
            buf = NULL;
            break;
        }

        buf = p;
    }

    if (buf == NULL || ferror(f)) {
        snprintf(err, errlen, "rules file \"%s\": cannot read: %s", path,
                 buf ? strerror(errno) : "out of memory");
        free(buf);
        fclose(f);
        return NULL;
    }

    fclose(f);

    rs = rules_load_buffer(buf, len, path, err, errlen);
    free(buf);

    return rs;
}


/* ---- one rule ------------------------------------------------------ */


static const char *rules_members_common[] = {
    "id", "kind", "key", "type", NULL
};

static const char *rules_members_count[] = { "where", "min", "within", NULL };
static const char *rules_members_distinct[] = {
    "where", "field", "min", "within", NULL
};
static const char *rules_members_absence[] = {
    "trigger", "cancel", "after", "within", NULL
};
static const char *rules_members_sequence[] = {
    "steps", "within", "hold", NULL
};

static const char *rules_type_names[] = {
    NULL, "count", "distinct", "absence", "sequence"
};


static int
rules_member_known(const char **list, const char *name)
{
    for ( /* void */ ; *list; list++) {
        if (strcmp(*list, name) == 0) {
            return 1;
        }
    }

    return 0;
}


static int
rules_id_valid(const char *id, size_t len)
{
    size_t  i;
    char    ch;

    if (len == 0 || len > RULES_ID_MAX_LEN) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        ch = id[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
              || (ch >= '0' && ch <= '9') || ch == '_'))
        {
            return 0;
        }
    }

    return 1;
}


static int
rules_load_min(rules_loader_t *ld, json_t *rule, unsigned *out)
{
    json_t     *j;
    json_int_t  v;

    j = json_object_get(rule, "min");

    if (j == NULL) {
        rules_loader_error(ld, "min", "is required");
        return -1;
    }

    if (!json_is_integer(j)) {
        rules_loader_error(ld, "min", "must be an integer");
        return -1;
    }

    v = json_integer_value(j);

    if (v < 1 || v > RULES_MAX_MIN) {
        rules_loader_error(ld, "min", "must be between 1 and %d, not %lld",
                           RULES_MAX_MIN, (long long) v);
        return -1;
    }

    *out = (unsigned) v;

    return 0;
}


static int
rules_load_key_string(rules_loader_t *ld, json_t *rule, const char *member,
    unsigned *field)
{
    json_t  *j;

    j = json_object_get(rule, member);

    if (j == NULL) {
        rules_loader_error(ld, member, "is required");
        return -1;
    }

    if (!json_is_string(j) || json_string_length(j) == 0) {
        rules_loader_error(ld, member, "must be a non-empty string "
                           "(a field name)");
        return -1;
    }

    return rules_field(ld, member, json_string_value(j),
                       json_string_length(j), field);
}


static int
rules_load_rule(rules_loader_t *ld, json_t *rule, size_t i)
{
    rules_set_t   *rs;
    rules_rule_t  *r;
    json_t        *j, *steps, *step, *sj, *copy;
    const char    *member, *s, **members;
    char           path[RULES_PATH_LEN];
    char          *dump;
    size_t         k, n;
    unsigned       idx;
    int            rc;

    rs = ld->rs;
    r = &rs->rules[i];
    r->index = i;

    if (!json_is_object(rule)) {
        rules_loader_error(ld, NULL, "must be an object");
        return -1;
    }

    /* id first, so that every later message names the rule */

    j = json_object_get(rule, "id");

    if (j == NULL) {
        rules_loader_error(ld, "id", "is required");
        return -1;
    }

    if (!json_is_string(j)
        || !rules_id_valid(json_string_value(j), json_string_length(j)))
    {
        rules_loader_error(ld, "id", "must match [A-Za-z0-9_]{1,%d}",
                           RULES_ID_MAX_LEN);
        return -1;
    }

    r->id_len = json_string_length(j);
    memcpy(r->id, json_string_value(j), r->id_len);
    r->id[r->id_len] = '\0';
    ld->id = r->id;

    rc = rules_strmap_put(&rs->ids, (const unsigned char *) r->id, r->id_len,
                          (unsigned) i);

    if (rc < 0) {
        rules_loader_error(ld, NULL, "out of memory");
        return -1;
    }

    if (rc == 0) {
        rules_loader_error(ld, "id", "duplicate id \"%s\"", r->id);
        return -1;
    }

    if (rules_put_id_nocase(rs, r, i) != 0) {
        rules_loader_error(ld, NULL, "out of memory");
        return -1;
    }

    /* type decides which members are allowed */

    j = json_object_get(rule, "type");

    if (j == NULL) {
        rules_loader_error(ld, "type", "is required");
        return -1;
    }

    s = rules_json_cstring(j);

    if (s == NULL) {
        rules_loader_error(ld, "type", "must be one of \"count\", "
                           "\"distinct\", \"absence\", \"sequence\"");
        return -1;
    }

    for (k = RULES_TYPE_COUNT; k <= RULES_TYPE_SEQUENCE; k++) {
        if (strcmp(s, rules_type_names[k]) == 0) {
            r->type = (rules_type_t) k;
            break;
        }
    }

    switch (r->type) {
    case RULES_TYPE_COUNT:
        members = rules_members_count;
        break;
    case RULES_TYPE_DISTINCT:
        members = rules_members_distinct;
        break;
    case RULES_TYPE_ABSENCE:
        members = rules_members_absence;
        break;
    case RULES_TYPE_SEQUENCE:
        members = rules_members_sequence;
        break;
    default:
        rules_loader_error(ld, "type", "unknown type \"%s\": must be one of "
                           "\"count\", \"distinct\", \"absence\", "
                           "\"sequence\"", s);
        return -1;
    }

    json_object_foreach(rule, member, j) {
        if (!rules_member_known(rules_members_common, member)
            && !rules_member_known(members, member))
        {
            rules_loader_error(ld, member, "unknown member for a rule of "
                               "type \"%s\"", rules_type_names[r->type]);
            return -1;
        }
    }

    j = json_object_get(rule, "kind");
    s = j ? rules_json_cstring(j) : NULL;

    if (j == NULL) {
        rules_loader_error(ld, "kind", "is required");
        return -1;
    }

    if (s && strcmp(s, "segment") == 0) {
        r->kind = RULES_KIND_SEGMENT;

    } else if (s && strcmp(s, "fraud") == 0) {
        r->kind = RULES_KIND_FRAUD;

    } else {
        rules_loader_error(ld, "kind", "must be \"segment\" or \"fraud\"");
        return -1;
    }

    if (rules_load_key_string(ld, rule, "key", &r->key_field) != 0) {
        return -1;
    }

    /*
     * The state key is prefix{field:value}: a ':' in the key field's name
     * would let two fields share a key ("a" = "b:c" and "a:b" = "c").
     * (Field names hold no NUL: rules_field() refuses them.)
     */

    if (strchr(rs->field_names[r->key_field], ':') != NULL) {
        rules_loader_error(ld, "key", "must not contain ':' (state keys "
                           "are {field:value})");
        return -1;
    }

    if (rules_load_duration(ld, rule, "within", 1, 1, &r->within) != 0) {
        return -1;
    }

    r->ttl = r->within;

    switch (r->type) {

    case RULES_TYPE_DISTINCT:
        if (rules_load_key_string(ld, rule, "field", &r->distinct_field)
            != 0)
        {
            return -1;
        }

        /* fall through */

    case RULES_TYPE_COUNT:
        if (rules_load_min(ld, rule, &r->min) != 0) {
            return -1;
        }

        j = json_object_get(rule, "where");

        if (j) {
            r->where = rules_load_cond(ld, j, "where", 0);

            if (r->where == NULL) {
                return -1;
            }
        }

        break;

    case RULES_TYPE_ABSENCE:
        j = json_object_get(rule, "trigger");

        if (j == NULL) {
            rules_loader_error(ld, "trigger", "is required");
            return -1;
        }

        r->trigger = rules_load_cond(ld, j, "trigger", 0);

        if (r->trigger == NULL) {
            return -1;
        }

        j = json_object_get(rule, "cancel");

        if (j == NULL) {
            rules_loader_error(ld, "cancel", "is required");
            return -1;
        }

        r->cancel = rules_load_cond(ld, j, "cancel", 0);

        if (r->cancel == NULL) {
            return -1;
        }

        if (rules_load_duration(ld, rule, "after", 0, 0, &r->after) != 0) {
            return -1;
        }

        if (r->after >= r->within) {
            rules_loader_error(ld, "after", "must be shorter than "
                               "\"within\", or the rule can never match");
            return -1;
        }

        break;

    case RULES_TYPE_SEQUENCE:
        if (rules_load_duration(ld, rule, "hold", 0, 0, &r->hold) != 0) {
            return -1;
        }

        if (r->hold > r->ttl) {
            r->ttl = r->hold;
        }

        steps = json_object_get(rule, "steps");

        if (steps == NULL) {
            rules_loader_error(ld, "steps", "is required");
            return -1;
        }

        if (!json_is_array(steps) || json_array_size(steps) == 0) {
            rules_loader_error(ld, "steps", "must be a non-empty array");
            return -1;
        }

        n = json_array_size(steps);

        if (n > RULES_MAX_STEPS) {
            rules_loader_error(ld, "steps", "%zu steps, more than the "
                               "limit of %d", n, RULES_MAX_STEPS);
            return -1;
        }

        r->nsteps = (unsigned) n;

        json_array_foreach(steps, k, step) {
            snprintf(path, sizeof(path), "steps[%zu]", k);

            if (!json_is_object(step)) {
                rules_loader_error(ld, path, "must be an object with "
                                   "\"where\" and optional \"strict\"");
                return -1;
            }

            json_object_foreach(step, member, sj) {
                if (strcmp(member, "where") != 0
                    && strcmp(member, "strict") != 0)
                {
                    snprintf(path, sizeof(path), "steps[%zu].%s", k,
                             member);
                    rules_loader_error(ld, path, "unknown member of a step");
                    return -1;
                }
            }

            sj = json_object_get(step, "strict");

            if (sj) {
                snprintf(path, sizeof(path), "steps[%zu].strict", k);

                if (!json_is_boolean(sj)) {
                    rules_loader_error(ld, path, "must be true or false");
                    return -1;
                }

                if (json_is_true(sj)) {
                    if (k == 0) {
                        rules_loader_error(ld, path, "the first step cannot "
                                           "be strict");
                        return -1;
                    }

                    r->strict_mask |= (uint32_t) 1 << k;
                }
            }

            snprintf(path, sizeof(path), "steps[%zu].where", k);
            sj = json_object_get(step, "where");

            if (sj == NULL) {
                rules_loader_error(ld, path, "is required");
                return -1;
            }

            r->steps[k] = rules_load_cond(ld, sj, path, 0);

            if (r->steps[k] == NULL) {
                return -1;
            }
        }

        break;
    }

    /* the digest names the rule's state: any edit starts it fresh */

    dump = json_dumps(rule, JSON_COMPACT | JSON_SORT_KEYS);

    if (dump == NULL) {
        rules_loader_error(ld, NULL, "out of memory");
        return -1;
    }

    n = strlen(dump);
    r->digest = rules_hash64(dump, n,
                             rules_hash64(RULES_DIGEST_SALT,
                                          sizeof(RULES_DIGEST_SALT) - 1, 0));
    free(dump);

    rules_digest_bytes(r->digest, r->digest_bytes);

    snprintf(r->digest_hex, sizeof(r->digest_hex), "%016llx",
             (unsigned long long) r->digest);

    rc = rules_strmap_put(&rs->digests, r->digest_bytes, 8, (unsigned) i);

    if (rc < 0) {
        rules_loader_error(ld, NULL, "out of memory");
        return -1;
    }

    if (rc == 0) {
        (void) rules_strmap_get(&rs->digests, r->digest_bytes, 8, &idx);
        rules_loader_error(ld, NULL, "has the same definition digest as "
                           "rule \"%s\" (a 64-bit collision: rename "
                           "one of them)", rs->rules[idx].id);
        return -1;
    }

    r->share = -1;

    if (r->type != RULES_TYPE_DISTINCT) {
        return 0;
    }

    /* the rules that differ only in these share one record */

    copy = json_copy(rule);

    if (copy == NULL) {
        rules_loader_error(ld, NULL, "out of memory");
        return -1;
    }

    (void) json_object_del(copy, "id");
    (void) json_object_del(copy, "kind");
    (void) json_object_del(copy, "min");
    dump = json_dumps(copy, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(copy);

    if (dump == NULL) {
        rules_loader_error(ld, NULL, "out of memory");
        return -1;
    }

    r->share_key = rules_hash64(dump, strlen(dump),
                                rules_hash64(RULES_SHARE_SALT,
                                             sizeof(RULES_SHARE_SALT) - 1,
                                             0));
    free(dump);

    return 0;
}


/* ---- durations ----------------------------------------------------- */


/*
 * A JSON string member read as a C string: NULL when it is not a string
 * or holds a NUL (the file is parsed with JSON_ALLOW_NUL, and "count\u0000x"
 * must not read as "count").
 */
static const char *
rules_json_cstring(json_t *j)
{
    const char  *s;

    s = json_string_value(j);

    if (s == NULL || strlen(s) != json_string_length(j)) {
        return NULL;
    }

    return s;
}


static int
rules_load_duration(rules_loader_t *ld, json_t *rule, const char *member,
    int required, int64_t min, int64_t *out)
{
    json_t      *j;
    const char  *s, *p;
    int64_t      v, unit;

    j = json_object_get(rule, member);

    if (j == NULL) {
        if (required) {
            rules_loader_error(ld, member, "is required");
            return -1;
        }

        *out = 0;
        return 0;
    }

    s = rules_json_cstring(j);

    if (s == NULL) {
        rules_loader_error(ld, member, "must be a duration string such as "
                           "\"500ms\", \"10s\", \"5m\", \"1h\" or \"7d\"");
        return -1;
    }

    v = 0;

    for (p = s; *p >= '0' && *p <= '9'; p++) {
        v = v * 10 + (*p - '0');

        if (v > RULES_MAX_DURATION_MS) {
            goto invalid;
        }
    }

    if (p == s) {
        goto invalid;
    }

    if (strcmp(p, "ms") == 0) {
        unit = 1;

    } else if (strcmp(p, "s") == 0) {
        unit = 1000;

    } else if (strcmp(p, "m") == 0) {
        unit = 60 * 1000;

    } else if (strcmp(p, "h") == 0) {
        unit = 3600 * 1000;

    } else if (strcmp(p, "d") == 0) {
        unit = 86400 * 1000;

    } else {
        goto invalid;
    }

    if (v > RULES_MAX_DURATION_MS / unit) {
        rules_loader_error(ld, member, "\"%s\" is longer than the limit "
                           "of 366d", s);
        return -1;
    }

    v *= unit;

    if (v < min) {
        rules_loader_error(ld, member, "\"%s\" must be positive", s);
        return -1;
    }

    *out = v;

    return 0;

invalid:

    rules_loader_error(ld, member, "invalid duration \"%s\": an integer "
                       "and a unit (ms, s, m, h, d), at most 366d", s);
    return -1;
}


/* ---- fields -------------------------------------------------------- */


/* member: where the name is, for messages ("key", "where.field") */
static int
rules_field(rules_loader_t *ld, const char *member, const char *name,
    size_t len, unsigned *index)
{
    rules_set_t  *rs;
    char         *copy;
    int           rc;

    rs = ld->rs;

    if (memchr(name, '\0', len) != NULL) {
        rules_loader_error(ld, member, "a field name cannot contain a NUL "
                           "byte");
        return -1;
    }

    if (rules_strmap_get(&rs->fields, (const unsigned char *) name, len,
                         index))
    {
        return 0;
    }

    if (rs->nfields == RULES_MAX_FIELDS) {
        rules_loader_error(ld, member, "more than %d distinct field names "
                           "in the file", RULES_MAX_FIELDS);
        return -1;
    }

    copy = rules_set_strdup(rs, name, len);

    if (copy == NULL) {
        rules_loader_error(ld, member, "out of memory");
        return -1;
    }

    rc = rules_strmap_put(&rs->fields, (const unsigned char *) copy, len,
                          (unsigned) rs->nfields);

    if (rc < 0) {
        rules_loader_error(ld, member, "out of memory");
        return -1;
    }

    rs->field_names[rs->nfields] = copy;
    *index = (unsigned) rs->nfields++;

    return 0;
}


/* ---- conditions ---------------------------------------------------- */


static const struct {
    const char  *name;
    rules_op_t   op;
} rules_ops[] = {
    { "eq", RULES_OP_EQ },
    { "ne", RULES_OP_NE },
    { "in", RULES_OP_IN },
    { "prefix", RULES_OP_PREFIX },
    { "suffix", RULES_OP_SUFFIX },
    { "contains", RULES_OP_CONTAINS },
    { "regex", RULES_OP_REGEX },
    { "gt", RULES_OP_GT },
    { "gte", RULES_OP_GTE },
    { "lt", RULES_OP_LT },
    { "lte", RULES_OP_LTE },
    { "exists", RULES_OP_EXISTS },
    { NULL, 0 }
};


static rules_cond_t *
rules_load_combinator(rules_loader_t *ld, json_t *j, rules_op_t op,
    const char *name, const char *path, unsigned depth)
{
    rules_cond_t  *c;
    json_t        *v, *sub;
    char           subpath[RULES_PATH_LEN];
    size_t         k;

    c = rules_set_alloc(ld->rs, sizeof(rules_cond_t));

    if (c == NULL) {
        rules_loader_error(ld, path, "out of memory");
        return NULL;
    }

    c->op = op;
    v = json_object_get(j, name);

    if (op == RULES_OP_NOT) {
        snprintf(subpath, sizeof(subpath), "%s.not", path);
        c->sub = rules_set_alloc(ld->rs, sizeof(rules_cond_t *));

        if (c->sub == NULL) {
            rules_loader_error(ld, path, "out of memory");
            return NULL;
        }

        c->nsub = 1;
        c->sub[0] = rules_load_cond(ld, v, subpath, depth + 1);

        if (c->sub[0] == NULL
            || rules_memo_combinator(ld, c, name, path) != 0)
        {
            return NULL;
        }

        return c;
    }

    snprintf(subpath, sizeof(subpath), "%s.%s", path, name);

    if (!json_is_array(v) || json_array_size(v) == 0) {
        rules_loader_error(ld, subpath, "must be a non-empty array of "
                           "conditions");
        return NULL;
    }

    c->nsub = json_array_size(v);
    c->sub = rules_set_alloc(ld->rs, c->nsub * sizeof(rules_cond_t *));

    if (c->sub == NULL) {
        rules_loader_error(ld, path, "out of memory");
        return NULL;
    }

    json_array_foreach(v, k, sub) {
        snprintf(subpath, sizeof(subpath), "%s.%s[%zu]", path, name, k);
        c->sub[k] = rules_load_cond(ld, sub, subpath, depth + 1);

        if (c->sub[k] == NULL) {
            return NULL;
        }
    }

    if (rules_memo_combinator(ld, c, name, path) != 0) {
        return NULL;
    }

    return c;
}


static int
rules_load_in(rules_loader_t *ld, rules_cond_t *c, json_t *v,
    const char *path)
{
    json_t         *s;
    unsigned char  *buf;
    size_t          k, total, len;

    if (!json_is_array(v)) {
        rules_loader_error(ld, path, "must be an array of strings");
        return -1;
    }

    if (json_array_size(v) > RULES_MAX_IN_ENTRIES) {
        rules_loader_error(ld, path, "%zu entries, more than the limit "
                           "of %d", json_array_size(v), RULES_MAX_IN_ENTRIES);
        return -1;
    }

    total = 0;

    json_array_foreach(v, k, s) {
        if (!json_is_string(s)) {
            rules_loader_error(ld, path, "must be an array of strings "
                               "(entry %zu is not a string)", k);
            return -1;
        }

        total += json_string_length(s);
    }

    /* one block holds every string of the list */

    buf = rules_set_alloc(ld->rs, total);
    c->set = rules_set_alloc(ld->rs, sizeof(rules_strmap_t));

    if (buf == NULL || c->set == NULL
        || rules_strmap_init(c->set, json_array_size(v)) != 0)
    {
        rules_loader_error(ld, path, "out of memory");
        return -1;
    }

    if (rules_set_track_cond(ld->rs, c) != 0) {
        rules_strmap_free(c->set);
        rules_loader_error(ld, path, "out of memory");
        return -1;
    }

    json_array_foreach(v, k, s) {
        len = json_string_length(s);
        memcpy(buf, json_string_value(s), len);

        if (rules_strmap_put(c->set, buf, len, 1) < 0) {
            rules_loader_error(ld, path, "out of memory");
            return -1;
        }

        buf += len;
    }

    return 0;
}


static int
rules_load_regex(rules_loader_t *ld, rules_cond_t *c, json_t *v,
    const char *path)
{
    int          errcode;
    PCRE2_SIZE   erroffset;
    PCRE2_UCHAR  msg[256];

    if (!json_is_string(v)) {
        rules_loader_error(ld, path, "must be a string (a PCRE2 pattern)");
        return -1;
    }

    /*
     * Byte-exact, as every comparison: a pattern may not turn UTF mode on
     * with (*UTF) (a client's invalid UTF-8 would then fail every match,
     * counted as a limit hit)
     */

    c->re = pcre2_compile((PCRE2_SPTR) json_string_value(v),
                          json_string_length(v), PCRE2_NEVER_UTF, &errcode,
                          &erroffset, NULL);

    if (c->re == NULL) {
        pcre2_get_error_message(errcode, msg, sizeof(msg));
        rules_loader_error(ld, path, "invalid regex at offset %zu: %s",
                           (size_t) erroffset, (char *) msg);
        return -1;
    }

    if (rules_set_track_cond(ld->rs, c) != 0) {
        pcre2_code_free(c->re);
        c->re = NULL;
        rules_loader_error(ld, path, "out of memory");
        return -1;
    }

    /* without JIT support, matching falls back to the interpreter */
    (void) pcre2_jit_compile(c->re, PCRE2_JIT_COMPLETE);

    return 0;
}


static rules_cond_t *
rules_load_cond(rules_loader_t *ld, json_t *j, const char *path,
    unsigned depth)
{
    rules_cond_t  *c;
    json_t        *v, *field;
    const char    *member, *opname;
    char           oppath[RULES_PATH_LEN];
    size_t         nmembers, k;
    rules_op_t     op;

    if (depth >= RULES_MAX_COND_DEPTH) {
        rules_loader_error(ld, path, "conditions nested deeper than %d",
                           RULES_MAX_COND_DEPTH);
        return NULL;
    }

    if (!json_is_object(j)) {
        rules_loader_error(ld, path, "a condition must be an object");
        return NULL;
    }

    nmembers = json_object_size(j);

    if (json_object_get(j, "all") || json_object_get(j, "any")
        || json_object_get(j, "not"))
    {
        if (nmembers != 1) {
            rules_loader_error(ld, path, "\"all\", \"any\" and \"not\" "
                               "stand alone in their condition object");
            return NULL;
        }

        if (json_object_get(j, "all")) {
            return rules_load_combinator(ld, j, RULES_OP_ALL, "all", path,
                                         depth);
        }

        if (json_object_get(j, "any")) {
            return rules_load_combinator(ld, j, RULES_OP_ANY, "any", path,
                                         depth);
        }

        return rules_load_combinator(ld, j, RULES_OP_NOT, "not", path, depth);
    }

    field = NULL;
    op = 0;
    opname = NULL;
    v = NULL;

    json_object_foreach(j, member, v) {
        if (strcmp(member, "field") == 0) {
            field = v;
            continue;
        }

        for (k = 0; rules_ops[k].name; k++) {
            if (strcmp(member, rules_ops[k].name) == 0) {
                break;
            }
        }

        if (rules_ops[k].name == NULL) {
            snprintf(oppath, sizeof(oppath), "%s.%s", path, member);
            rules_loader_error(ld, oppath, "unknown operator");
            return NULL;
        }

        if (opname) {
            rules_loader_error(ld, path, "a condition has exactly one "
                               "operator, not \"%s\" and \"%s\"", opname,
                               member);
            return NULL;
        }

        op = rules_ops[k].op;
        opname = rules_ops[k].name;
    }

    if (opname == NULL) {
        rules_loader_error(ld, path, "a condition needs an operator (eq, "
                           "ne, in, prefix, suffix, contains, regex, gt, "
                           "gte, lt, lte, exists) or all/any/not");
        return NULL;
    }

    snprintf(oppath, sizeof(oppath), "%s.field", path);

    if (field == NULL) {
        rules_loader_error(ld, oppath, "is required");
        return NULL;
    }

    if (!json_is_string(field) || json_string_length(field) == 0) {
        rules_loader_error(ld, oppath, "must be a non-empty string");
        return NULL;
    }

    c = rules_set_alloc(ld->rs, sizeof(rules_cond_t));

    if (c == NULL) {
        rules_loader_error(ld, path, "out of memory");
        return NULL;
    }

    c->op = op;

    if (rules_field(ld, oppath, json_string_value(field),
                    json_string_length(field), &c->field)
        != 0)
    {
        return NULL;
    }

    snprintf(oppath, sizeof(oppath), "%s.%s", path, opname);
    v = json_object_get(j, opname);

    switch (op) {

    case RULES_OP_EQ:
    case RULES_OP_NE:
    case RULES_OP_PREFIX:
    case RULES_OP_SUFFIX:
    case RULES_OP_CONTAINS:
        if (!json_is_string(v)) {
            rules_loader_error(ld, oppath, "must be a string");
            return NULL;
        }

        c->str.len = json_string_length(v);
        c->str.data = (unsigned char *)
                      rules_set_strdup(ld->rs, json_string_value(v),
                                       c->str.len);

        if (c->str.data == NULL) {
            rules_loader_error(ld, oppath, "out of memory");
            return NULL;
        }

        break;

    case RULES_OP_IN:
        if (rules_load_in(ld, c, v, oppath) != 0) {
            return NULL;
        }

        break;

    case RULES_OP_REGEX:
        if (rules_load_regex(ld, c, v, oppath) != 0) {
            return NULL;
        }

        break;

    case RULES_OP_GT:
    case RULES_OP_GTE:
    case RULES_OP_LT:
    case RULES_OP_LTE:
        if (!json_is_number(v)) {
            rules_loader_error(ld, oppath, "must be a number");
            return NULL;
        }

        c->num = json_number_value(v);
        break;

    case RULES_OP_EXISTS:
        if (!json_is_boolean(v)) {
            rules_loader_error(ld, oppath, "must be true or false");
            return NULL;
        }

        c->flag = json_is_true(v);
        break;

    default:
        break;
    }

    if (op != RULES_OP_REGEX
        && rules_memo_cond(ld, c, json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS),
                           path)
           != 0)
    {
        return NULL;
    }

    return c;
}


/*
 * Gives a condition without a regex its place in the set's memo, shared
 * with every condition of the same text (malloc'd, taken): a leaf's JSON
 * (members sorted), or a combinator's name and its members' places, as
 * "all(3,7)".  Such conditions have the same result for an event.
 */
static int
rules_memo_cond(rules_loader_t *ld, rules_cond_t *c, char *text,
    const char *path)
{
    int            rc;
    size_t         len;
    unsigned       memo;
    rules_set_t   *rs;

    rs = ld->rs;

    if (text == NULL) {
        rules_loader_error(ld, path, "out of memory");
        return -1;
    }

    len = strlen(text);

    if (rules_strmap_get(&rs->conds, (const unsigned char *) text, len,
                         &memo))
    {
        free(text);
        c->memo = memo;
        return 0;
    }

    /* the map keeps the text until rules_memo_done() */

    rc = rules_strmap_put(&rs->conds, (const unsigned char *) text, len,
                          (unsigned) rs->nmemo + 1);

    if (rc < 0) {
        free(text);
        rules_loader_error(ld, path, "out of memory");
        return -1;
    }

    c->memo = (unsigned) ++rs->nmemo;

    return 0;
}


/* A combinator is shared when nothing in it is a regex. */
static int
rules_memo_combinator(rules_loader_t *ld, rules_cond_t *c, const char *name,
    const char *path)
{
    size_t  k;

    for (k = 0; k < c->nsub; k++) {
        if (c->sub[k]->memo == 0) {
            return 0;
        }
    }

    return rules_memo_cond(ld, c, rules_memo_text(c, name), path);
}


/* A combinator's memo text, from its members' places (all have one). */
static char *
rules_memo_text(const rules_cond_t *c, const char *name)
{
    char    *text, *p;
    size_t   k;

    /* "name(" and up to 10 digits and a comma or ")" a member */

    text = malloc(strlen(name) + 2 + c->nsub * 11 + 1);
    if (text == NULL) {
        return NULL;
    }

    p = text + sprintf(text, "%s(", name);

    for (k = 0; k < c->nsub; k++) {
        p += sprintf(p, "%u%c", c->sub[k]->memo, k + 1 < c->nsub ? ',' : ')');
    }

    return text;
}


/* The texts of the shared conditions are only needed while loading. */
static void
rules_memo_done(rules_set_t *rs)
{
    size_t  i;

    if (rs->conds.keys) {
        for (i = 0; i <= rs->conds.mask; i++) {
            free((void *) rs->conds.keys[i].data);
        }
    }

    rules_strmap_free(&rs->conds);
}


/* ---- groups and accessors ------------------------------------------ */


/* Each rule holds its conditions' memo places (rules_cond_eval_memo()). */
static int
rules_build_memo_places(rules_set_t *rs)
{
    size_t         i, k;
    rules_rule_t  *r;

    for (i = 0; i < rs->nrules; i++) {
        r = &rs->rules[i];

        r->where_memo = r->where ? r->where->memo : 0;
        r->trigger_memo = r->trigger ? r->trigger->memo : 0;
        r->cancel_memo = r->cancel ? r->cancel->memo : 0;

        for (k = 0; k < r->nsteps; k++) {
            r->step_memo[k] = r->steps[k] ? r->steps[k]->memo : 0;
        }
    }

    return 0;
}


/*
 * What reading a result needs, apart from the rules: the fraud rules as
 * a mask (rules_result_fraud()), and the ids one after the other
 * (rules_result_ids()).
 */
static int
rules_build_result_tables(rules_set_t *rs)
{
    size_t  i;

    rs->fraud = rules_set_alloc(rs, (rs->nrules / 64 + 1) * sizeof(uint64_t));
    rs->id_text = rules_set_alloc(rs, rs->nrules * RULES_ID_MAX_LEN);
    rs->id_off = rules_set_alloc(rs, (rs->nrules + 1) * sizeof(uint32_t));

    if (rs->fraud == NULL || rs->id_text == NULL || rs->id_off == NULL) {
        return -1;
    }

    for (i = 0; i < rs->nrules; i++) {
        if (rs->rules[i].kind == RULES_KIND_FRAUD) {
            rs->fraud[i / 64] |= (uint64_t) 1 << (i % 64);
        }

        memcpy(rs->id_text + rs->id_off[i], rs->rules[i].id,
               rs->rules[i].id_len);
        rs->id_off[i + 1] = rs->id_off[i] + (uint32_t) rs->rules[i].id_len;
    }

    return 0;
}


static int
rules_build_groups(rules_set_t *rs)
{
    size_t         i, g;
    rules_group_t *grp;
    int           *group_of_field;

    group_of_field = rules_set_alloc(rs, RULES_MAX_FIELDS * sizeof(int));
    rs->groups = rules_set_alloc(rs, (rs->nrules + 1)
                                     * sizeof(rules_group_t));

    if (group_of_field == NULL || rs->groups == NULL) {
        return -1;
    }

    for (i = 0; i < RULES_MAX_FIELDS; i++) {
        group_of_field[i] = -1;
    }

    for (i = 0; i < rs->nrules; i++) {
        if (group_of_field[rs->rules[i].key_field] < 0) {
            group_of_field[rs->rules[i].key_field] = (int) rs->ngroups;
            rs->groups[rs->ngroups].key_field = rs->rules[i].key_field;
            rs->ngroups++;
        }

        g = (size_t) group_of_field[rs->rules[i].key_field];
        rs->rules[i].group = (unsigned) g;
        rs->groups[g].nrules++;
    }

    for (g = 0; g < rs->ngroups; g++) {
        grp = &rs->groups[g];
        grp->rules = rules_set_alloc(rs, grp->nrules * sizeof(unsigned));

        if (grp->rules == NULL) {
            return -1;
        }

        grp->nrules = 0;
    }

    for (i = 0; i < rs->nrules; i++) {
        grp = &rs->groups[rs->rules[i].group];
        grp->rules[grp->nrules++] = (unsigned) i;
        grp->strict_mask |= rs->rules[i].strict_mask;
    }

    return 0;
}


size_t
rules_count(const rules_set_t *rs)
{
    return rs->nrules;
}


const rules_rule_t *
rules_rule(const rules_set_t *rs, size_t i)
{
    return i < rs->nrules ? &rs->rules[i] : NULL;
}


size_t
rules_ngroups(const rules_set_t *rs)
{
    return rs->ngroups;
}


const rules_group_t *
rules_group(const rules_set_t *rs, size_t g)
{
    return g < rs->ngroups ? &rs->groups[g] : NULL;
}


const uint64_t *
rules_group_mask(const rules_set_t *rs, size_t g)
{
    return g < rs->index.ngroups ? rs->index.groups[g].matched : NULL;
}


size_t
rules_nfields(const rules_set_t *rs)
{
    return rs->nfields;
}


const char *
rules_field_name(const rules_set_t *rs, size_t i)
{
    return i < rs->nfields ? rs->field_names[i] : NULL;
}


int
rules_field_index(const rules_set_t *rs, const char *name, size_t len)
{
    unsigned  v;

    if (rules_strmap_get(&rs->fields, (const unsigned char *) name, len, &v))
    {
        return (int) v;
    }

    return -1;
}


const rules_rule_t *
rules_find_id(const rules_set_t *rs, const char *id, size_t len)
{
    unsigned  v;

    if (rules_strmap_get(&rs->ids, (const unsigned char *) id, len, &v)) {
        return &rs->rules[v];
    }

    return NULL;
}


const rules_rule_t *
rules_find_id_nocase(const rules_set_t *rs, const char *id, size_t len,
    int *ambiguous)
{
    char      low[RULES_ID_MAX_LEN];
    size_t    k;
    unsigned  v;

    *ambiguous = 0;

    if (len == 0 || len > RULES_ID_MAX_LEN) {
        return NULL;
    }

    for (k = 0; k < len; k++) {
        low[k] = (char) tolower((unsigned char) id[k]);
    }

    if (!rules_strmap_get(&rs->ids_nocase, (const unsigned char *) low, len,
                          &v))
    {
        return NULL;
    }

    if (v == RULES_ID_AMBIGUOUS) {
        *ambiguous = 1;
        return NULL;
    }

    return &rs->rules[v];
}


/* A 64-bit digest as the 8 big-endian bytes states name it by. */
static void
rules_digest_bytes(uint64_t d, unsigned char out[8])
{
    int  k;

    for (k = 0; k < 8; k++) {
        out[k] = (unsigned char) (d >> (56 - 8 * k));
    }
}


/*
 * The shared records of the distinct rules: one per share key (key,
 * where, field and within), in file order, of at most
 * RULES_SHARE_MAX_MEMBERS rules (a share key's further rules start
 * another).  A reload keeps each unchanged rule in the record it was in,
 * unless a share key with more than RULES_SHARE_MAX_MEMBERS rules gains
 * or loses one before it (the rule then moves, and starts fresh).
 */
static int
rules_build_shares(rules_set_t *rs)
{
    size_t          i, nd;
    unsigned        idx, chunk;
    uint64_t        d;
    unsigned char   c[4], *p;
    rules_rule_t   *r;
    rules_share_t  *sh;
    int             rc;

    nd = 0;

    for (i = 0; i < rs->nrules; i++) {
        nd += (rs->rules[i].type == RULES_TYPE_DISTINCT);
    }

    if (nd == 0) {
        return 0;
    }

    rs->shares = rules_set_alloc(rs, nd * sizeof(rules_share_t));

    if (rs->shares == NULL) {
        return -1;
    }

    for (i = 0; i < rs->nrules; i++) {
        r = &rs->rules[i];

        if (r->type != RULES_TYPE_DISTINCT) {
            continue;
        }

        for (chunk = 0; /* void */; chunk++) {
            rules_put_u32(c, chunk);
            d = rules_hash64(c, 4, r->share_key);
            sh = &rs->shares[rs->nshares];
            rules_digest_bytes(d, sh->digest);

            if (rules_strmap_get(&rs->share_digests, sh->digest, 8, &idx)) {
                if (rs->shares[idx].nmembers == RULES_SHARE_MAX_MEMBERS) {
                    continue;
                }

                r->share = (int) idx;
                rs->shares[idx].nmembers++;
                break;
            }

            rc = rules_strmap_put(&rs->share_digests, sh->digest, 8,
                                  (unsigned) rs->nshares);

            if (rc < 0) {
                return -1;
            }

            sh->leader = (unsigned) i;
            sh->nmembers = 1;
            r->share = (int) rs->nshares++;
            break;
        }
    }

    for (i = 0; i < rs->nshares; i++) {
        sh = &rs->shares[i];
        sh->members_len = 2 + 10 * (size_t) sh->nmembers;
        sh->members = rules_set_alloc(rs, sh->members_len);

        if (sh->members == NULL) {
            return -1;
        }

        rules_put_u16(sh->members, sh->nmembers);
        sh->nmembers = 0;       /* counted again as the members are put */
    }

    for (i = 0; i < rs->nrules; i++) {
        r = &rs->rules[i];

        if (r->share < 0) {
            continue;
        }

        sh = &rs->shares[r->share];
        p = sh->members + 2 + 10 * (size_t) sh->nmembers++;
        memcpy(p, r->digest_bytes, 8);
        rules_put_u16(p + 8, r->min);
    }

    return 0;
}


void
rules_set_sharing(rules_set_t *rs, int on)
{
    rs->share_on = on;
}


int
rules_known_digest(const rules_set_t *rs, const unsigned char digest[8])
{
    unsigned  idx;

    return rules_find_digest(rs, digest) != NULL
           || rules_strmap_get(&rs->share_digests, digest, 8, &idx);
}


static int
rules_build_digest_table(rules_set_t *rs)
{
    size_t    i, j, size;

    for (size = 16; size < rs->nrules * 2; size *= 2) { /* void */ }

    rs->digest_keys = calloc(size, sizeof(uint64_t));
    rs->digest_vals = calloc(size, sizeof(unsigned));

    if (rs->digest_keys == NULL || rs->digest_vals == NULL) {
        return -1;
    }

    rs->digest_mask = size - 1;

    for (i = 0; i < rs->nrules; i++) {
        for (j = rs->rules[i].digest & rs->digest_mask;
             rs->digest_vals[j];
             j = (j + 1) & rs->digest_mask)
        {
            /* void */
        }

        rs->digest_keys[j] = rs->rules[i].digest;
        rs->digest_vals[j] = (unsigned) i + 1;
    }

    return 0;
}


const rules_rule_t *
rules_find_digest(const rules_set_t *rs, const unsigned char digest[8])
{
    unsigned  i;

    i = rules_digest_lookup(rs, digest);

    return i ? &rs->rules[i - 1] : NULL;
}


const char *
rules_file_digest(const rules_set_t *rs)
{
    return rs->digest_hex;
}


rules_engine_stats_t *
rules_stats(rules_set_t *rs)
{
    return &rs->stats;
}
