/*
 * From an event's field values to its key operations, and from replies
 * back to matched rules.
 */

#include <stdlib.h>
#include <string.h>

#include "rules_internal.h"
#include "rules_state.h"


#define RULES_ENTRY_HEADER_LEN  (8 + 1 + 8)
#define RULES_ENTRY_MAX_LEN     (RULES_ENTRY_HEADER_LEN + 1 + 4 + 8 + 8 + 4)


static int
rules_eo_reserve(rules_eventops_t *eo, size_t more)
{
    unsigned char  *p;
    size_t          size;

    if (eo->buf_len + more <= eo->buf_size) {
        return 0;
    }

    size = eo->buf_size ? eo->buf_size : 1024;

    while (size < eo->buf_len + more) {
        size *= 2;
    }

    p = realloc(eo->buf, size);

    if (p == NULL) {
        return -1;
    }

    eo->buf = p;
    eo->buf_size = size;

    return 0;
}


static unsigned char *
rules_entry_header(unsigned char *p, const rules_rule_t *r)
{
    memcpy(p, r->digest_bytes, 8);
    p[8] = (unsigned char) r->type;
    rules_put_f64(p + 9, (double) r->ttl);

    return p + RULES_ENTRY_HEADER_LEN;
}


/*
 * The entry of a shared distinct record (rules_state.h): the value, and
 * the digest and min of each rule sharing it.
 */
static int
rules_event_shared(const rules_share_t *sh, const rules_rule_t *r,
    const rules_str_t *dv, rules_eventops_t *eo)
{
    unsigned char  *p;

    if (rules_eo_reserve(eo, RULES_ENTRY_HEADER_LEN + 10 + dv->len
                             + sh->members_len)
        != 0)
    {
        return -1;
    }

    p = eo->buf + eo->buf_len;
    memcpy(p, sh->digest, 8);
    p[8] = RULES_RECORD_SHARED;
    rules_put_f64(p + 9, (double) r->ttl);
    p += RULES_ENTRY_HEADER_LEN;
    rules_put_f64(p, (double) r->within);
    rules_put_u16(p + 8, (unsigned) dv->len);
    memcpy(p + 10, dv->data, dv->len);
    memcpy(p + 10 + dv->len, sh->members, sh->members_len);
    eo->buf_len = p + 10 + dv->len + sh->members_len - eo->buf;

    return 0;
}


/*
 * Appends the rule's entry when the event touches the rule.  Returns -1
 * on memory exhaustion.
 */
static int
rules_event_entry(rules_set_t *rs, const rules_rule_t *r,
    const rules_str_t *values, rules_eventops_t *eo)
{
    unsigned char        *p;
    const rules_str_t    *dv;
    const rules_share_t  *sh;
    uint32_t              mask;
    unsigned              i, action;

    switch (r->type) {

    case RULES_TYPE_COUNT:
        if (r->where
            && !rules_cond_eval_memo(rs, r->where, r->where_memo, values))
        {
            return 0;
        }

        if (rules_eo_reserve(eo, RULES_ENTRY_MAX_LEN) != 0) {
            return -1;
        }

        p = rules_entry_header(eo->buf + eo->buf_len, r);
        rules_put_u16(p, r->min);
        rules_put_f64(p + 2, (double) r->within);
        eo->buf_len = p + 10 - eo->buf;

        return 0;

    case RULES_TYPE_DISTINCT:
        sh = (rs->share_on && r->share >= 0) ? &rs->shares[r->share] : NULL;

        if (sh && sh->leader != r->index) {
            /* its shared record's first rule writes the entry */
            return 0;
        }

        dv = &values[r->distinct_field];

        if (dv->len == 0
            || (r->where
                && !rules_cond_eval_memo(rs, r->where, r->where_memo,
                                         values)))
        {
            return 0;
        }

        if (sh) {
            return rules_event_shared(sh, r, dv, eo);
        }

        if (rules_eo_reserve(eo, RULES_ENTRY_MAX_LEN + dv->len) != 0) {
            return -1;
        }

        p = rules_entry_header(eo->buf + eo->buf_len, r);
        rules_put_u16(p, r->min);
        rules_put_f64(p + 2, (double) r->within);
        rules_put_u16(p + 10, (unsigned) dv->len);
        memcpy(p + 12, dv->data, dv->len);
        eo->buf_len = p + 12 + dv->len - eo->buf;

        return 0;

    case RULES_TYPE_ABSENCE:
        if (rules_cond_eval_memo(rs, r->cancel, r->cancel_memo, values)) {
            action = RULES_ACTION_CANCEL;

        } else if (rules_cond_eval_memo(rs, r->trigger, r->trigger_memo,
                                        values))
        {
            action = RULES_ACTION_TRIGGER;

        } else {
            return 0;
        }

        if (rules_eo_reserve(eo, RULES_ENTRY_MAX_LEN) != 0) {
            return -1;
        }

        p = rules_entry_header(eo->buf + eo->buf_len, r);
        p[0] = (unsigned char) action;
        rules_put_f64(p + 1, (double) r->after);
        rules_put_f64(p + 9, (double) r->within);
        eo->buf_len = p + 17 - eo->buf;

        return 0;

    case RULES_TYPE_SEQUENCE:
        mask = 0;

        for (i = 0; i < r->nsteps; i++) {
            if (rules_cond_eval_memo(rs, r->steps[i], r->step_memo[i],
                                     values))
            {
                mask |= (uint32_t) 1 << i;
            }
        }

        if (mask == 0) {
            return 0;
        }

        if (rules_eo_reserve(eo, RULES_ENTRY_MAX_LEN) != 0) {
            return -1;
        }

        p = rules_entry_header(eo->buf + eo->buf_len, r);
        p[0] = (unsigned char) r->nsteps;
        rules_put_u32(p + 1, r->strict_mask);
        rules_put_f64(p + 5, (double) r->within);
        rules_put_f64(p + 13, (double) r->hold);
        rules_put_u32(p + 21, mask);
        eo->buf_len = p + 25 - eo->buf;

        return 0;
    }

    return 0;
}


const rules_str_t *
rules_event_key(const rules_set_t *rs, const rules_limits_t *limits,
    const rules_str_t *values, size_t g)
{
    const rules_str_t  *v;

    v = &values[rs->groups[g].key_field];

    return (v->len != 0 && v->len <= limits->key_max) ? v : NULL;
}


rules_event_rc_t
rules_event_validate(const rules_set_t *rs, const rules_limits_t *limits,
    const rules_str_t *values, int64_t now)
{
    size_t  i, value_max;

    if (now < 0 || now > RULES_MAX_TS_MS) {
        return RULES_EVENT_INVALID;
    }

    /* a distinct value is stored with a 16-bit length */

    value_max = limits->value_max;

    if (value_max > 65535) {
        value_max = 65535;
    }

    for (i = 0; i < rs->nfields; i++) {
        if (values[i].len > value_max) {
            return RULES_EVENT_INVALID;
        }
    }

    return RULES_EVENT_OK;
}


rules_event_rc_t
rules_event_build(rules_set_t *rs, const rules_limits_t *limits,
    const rules_str_t *values, int64_t now, rules_eventops_t *eo)
{
    int64_t               ttl;
    uint64_t              bits;
    const rules_rule_t   *r, *next;
    const rules_group_t  *g;
    const rules_str_t    *key;
    const rules_result_t *cand, *gr;
    rules_keyop_t        *ko;
    size_t                i, w, start, before;

    eo->nkeyops = 0;
    eo->buf_len = 0;
    eo->over_limit = 0;

    if (rules_event_validate(rs, limits, values, now) != RULES_EVENT_OK) {
        return RULES_EVENT_INVALID;
    }

    /* a buffer even when every op is empty: no op is a NULL pointer */

    if (eo->buf == NULL && rules_eo_reserve(eo, 1) != 0) {
        return RULES_EVENT_NOMEM;
    }

    if (eo->keyops_size < rs->ngroups) {
        ko = realloc(eo->keyops, rs->ngroups * sizeof(rules_keyop_t));

        if (ko == NULL) {
            return RULES_EVENT_NOMEM;
        }

        eo->keyops = ko;
        eo->keyops_size = rs->ngroups;
    }

    /* a large set evaluates only the rules the values can touch */
    cand = rs->index.use ? rules_index_candidates(rs, values) : NULL;

    /* the event's number for the memo of shared conditions */

    if (++rs->memo_events == 0) {
        memset(rs->memo_gen, 0, (rs->nmemo + 1) * sizeof(uint32_t));
        rs->memo_events = 1;
    }

    rs->memo_event = rs->memo_events;

    for (i = 0; i < rs->ngroups; i++) {
        g = &rs->groups[i];
        key = rules_event_key(rs, limits, values, i);

        if (key == NULL) {
            /* counted when it is there but too long */
            eo->over_limit += (values[g->key_field].len != 0);
            continue;
        }

        start = eo->buf_len;
        ttl = 0;

        /*
         * the group's rules, lowest bit (first in the file) first, as the
         * group lists them; with the index, only the candidates (the
         * rules whose conditions can hold); with sharing, not the
         * distinct rules whose shared record another rule writes
         */

        gr = rs->share_on ? &rs->index.writers[i] : &rs->index.groups[i];

        for (w = 0; w < gr->words; w++) {
            bits = cand ? gr->matched[w] & cand->matched[w] : gr->matched[w];

            while (bits) {
                r = &rs->rules[w * 64 + (size_t) __builtin_ctzll(bits)];
                bits &= bits - 1;
                before = eo->buf_len;

                /* the next candidate's first two lines, while this one
                 * is evaluated */

                if (bits) {
                    next = &rs->rules[w * 64 + (size_t) __builtin_ctzll(bits)];
                    __builtin_prefetch(next);
                    __builtin_prefetch((const char *) next + 64);
                }

                if (rules_event_entry(rs, r, values, eo) != 0) {
                    rs->memo_event = 0;
                    eo->nkeyops = 0;
                    eo->buf_len = 0;
                    return RULES_EVENT_NOMEM;
                }

                if (eo->buf_len != before && r->ttl > ttl) {
                    ttl = r->ttl;
                }
            }
        }

        ko = &eo->keyops[eo->nkeyops++];
        ko->group = (unsigned) i;
        ko->key_value = *key;
        ko->op_off = start;
        ko->op_len = eo->buf_len - start;
        ko->ttl = ttl;
        ko->writes = (ko->op_len || g->strict_mask) ? 1 : 0;
    }

    rs->memo_event = 0;

    /* the buffer may have moved while it grew */

    for (i = 0; i < eo->nkeyops; i++) {
        eo->keyops[i].op = eo->buf + eo->keyops[i].op_off;
    }

    return eo->nkeyops ? RULES_EVENT_OK : RULES_EVENT_SKIPPED;
}


void
rules_eventops_free(rules_eventops_t *eo)
{
    free(eo->buf);
    free(eo->keyops);
    memset(eo, 0, sizeof(rules_eventops_t));
}


/* ---- state keys ---------------------------------------------------- */


size_t
rules_state_key_len(const rules_set_t *rs, size_t prefix_len,
    unsigned group, size_t value_len)
{
    return prefix_len + 3
           + strlen(rs->field_names[rs->groups[group].key_field])
           + value_len;
}


size_t
rules_state_key(const rules_set_t *rs, const char *prefix,
    size_t prefix_len, unsigned group, rules_str_t value,
    unsigned char *out)
{
    const char     *field;
    size_t          flen;
    unsigned char  *p;

    field = rs->field_names[rs->groups[group].key_field];
    flen = strlen(field);

    p = out;
    memcpy(p, prefix, prefix_len);
    p += prefix_len;
    *p++ = '{';
    memcpy(p, field, flen);
    p += flen;
    *p++ = ':';
    memcpy(p, value.data, value.len);
    p += value.len;
    *p++ = '}';

    return p - out;
}


int
rules_parse_time(const unsigned char *p, size_t len, int64_t *out)
{
    size_t   i, digits;
    int64_t  v;

    if (len == 0) {
        return -1;
    }

    v = 0;
    digits = 0;

    for (i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return -1;
        }

        if (v == 0 && p[i] == '0') {
            continue;               /* leading zeros */
        }

        /* 2^53 - 1 has 16 digits: no overflow before the check */

        if (++digits > 16) {
            return -1;
        }

        v = v * 10 + (p[i] - '0');
    }

    if (v > RULES_MAX_TS_MS) {
        return -1;
    }

    *out = v;

    return 0;
}


/* ---- results ------------------------------------------------------- */


size_t
rules_result_words(const rules_set_t *rs)
{
    /* one word at least: no rule still gets a bitmap */
    return rs->nrules ? (rs->nrules + 63) / 64 : 1;
}


int
rules_result_init(const rules_set_t *rs, rules_result_t *res)
{
    res->words = rules_result_words(rs);
    res->matched = calloc(res->words, sizeof(uint64_t));

    return res->matched ? 0 : -1;
}


void
rules_result_clear(rules_result_t *res)
{
    memset(res->matched, 0, res->words * sizeof(uint64_t));
}


void
rules_result_free(rules_result_t *res)
{
    free(res->matched);
    res->matched = NULL;
    res->words = 0;
}


int
rules_result_add_digests(const rules_set_t *rs, rules_result_t *res,
    const unsigned char *digests, size_t len)
{
    size_t    i;
    unsigned  k;

    if (len % 8) {
        return -1;
    }

    /* the table gives the rule's index: the rules need not be read (a
     * reply names about a hundred rules per event with 1000 rules) */

    for (i = 0; i < len; i += 8) {
        k = rules_digest_lookup(rs, digests + i);

        if (k) {
            rules_result_set(res, k - 1);
        }
    }

    return 0;
}


int
rules_result_is_set(const rules_result_t *res, size_t rule)
{
    return rule / 64 < res->words
           && (res->matched[rule / 64] >> (rule % 64)) & 1;
}


int
rules_result_fraud(const rules_set_t *rs, const rules_result_t *res)
{
    size_t  w;

    /* a mask: not a look at each matched rule (about 100 with 1000 rules) */

    for (w = 0; w < res->words && w <= rs->nrules / 64; w++) {
        if (res->matched[w] & rs->fraud[w]) {
            return 1;
        }
    }

    return 0;
}


size_t
rules_result_ids(const rules_set_t *rs, const rules_result_t *res,
    char *out, size_t size)
{
    size_t    w, i, n, len;
    uint64_t  bits;

    n = 0;

    for (w = 0; w < res->words; w++) {
        for (bits = res->matched[w]; bits; bits &= bits - 1) {
            i = w * 64 + (size_t) __builtin_ctzll(bits);

            if (i >= rs->nrules) {
                return n;
            }

            if (n) {
                if (n < size) {
                    out[n] = ',';
                }

                n++;
            }

            len = rs->id_off[i + 1] - rs->id_off[i];

            if (n + len <= size) {
                memcpy(out + n, rs->id_text + rs->id_off[i], len);
            }

            n += len;
        }
    }

    return n;
}
