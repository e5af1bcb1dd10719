/*
 * Condition evaluation (SPEC.md section 2, "Conditions").
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE            /* memmem() */
#endif

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rules_internal.h"


#define RULES_NUMBER_STACK_LEN  64


/*
 * SPEC.md's number grammar: an optional sign, digits with an optional
 * fraction (or a fraction alone), an optional exponent; nothing else, not
 * even spaces.  strtod() alone would accept hex, inf, nan and leading
 * spaces, so the text is checked first.  A text beyond the doubles'
 * range ("1e400") is not a number either: it would read as infinity.
 */
int
rules_parse_number(const unsigned char *p, size_t len, double *out)
{
    size_t   i, digits;
    char     stack[RULES_NUMBER_STACK_LEN], *buf, *end;
    double   d;

    i = 0;

    if (i < len && (p[i] == '-' || p[i] == '+')) {
        i++;
    }

    digits = 0;

    while (i < len && p[i] >= '0' && p[i] <= '9') {
        i++;
        digits++;
    }

    if (i < len && p[i] == '.') {
        i++;

        while (i < len && p[i] >= '0' && p[i] <= '9') {
            i++;
            digits++;
        }
    }

    if (digits == 0) {
        return 0;
    }

    if (i < len && (p[i] == 'e' || p[i] == 'E')) {
        i++;

        if (i < len && (p[i] == '-' || p[i] == '+')) {
            i++;
        }

        digits = 0;

        while (i < len && p[i] >= '0' && p[i] <= '9') {
            i++;
            digits++;
        }

        if (digits == 0) {
            return 0;
        }
    }

    if (i != len) {
        return 0;
    }

    if (len < sizeof(stack)) {
        buf = stack;

    } else {
        buf = malloc(len + 1);

        if (buf == NULL) {
            return 0;
        }
    }

    memcpy(buf, p, len);
    buf[len] = '\0';

    d = strtod(buf, &end);

    if (buf != stack) {
        free(buf);
    }

    if (isinf(d)) {
        return 0;
    }

    *out = d;

    return 1;
}


static int
rules_memmem(const unsigned char *h, size_t hlen, const unsigned char *n,
    size_t nlen)
{
    if (nlen == 0) {
        return 1;
    }

    return nlen <= hlen && memmem(h, hlen, n, nlen) != NULL;
}


static int rules_cond_compute(rules_set_t *rs, const rules_cond_t *c,
    const rules_str_t *values);
static int rules_cond_leaf(rules_set_t *rs, const rules_cond_t *c,
    const rules_str_t *values);


int
rules_cond_eval(rules_set_t *rs, const rules_cond_t *c,
    const rules_str_t *values)
{
    size_t  i;

    /* a condition that other rules have too: evaluated once per event */

    if (c->memo && rs->memo_event) {
        i = c->memo - 1;

        if (rs->memo_gen[i] != rs->memo_event) {
            rs->memo_val[i] = (unsigned char) rules_cond_compute(rs, c,
                                                                 values);
            rs->memo_gen[i] = rs->memo_event;
        }

        return rs->memo_val[i];
    }

    return rules_cond_compute(rs, c, values);
}


static int
rules_cond_compute(rules_set_t *rs, const rules_cond_t *c,
    const rules_str_t *values)
{
    size_t  i;

    switch (c->op) {

    case RULES_OP_ALL:
        for (i = 0; i < c->nsub; i++) {
            if (!rules_cond_eval(rs, c->sub[i], values)) {
                return 0;
            }
        }

        return 1;

    case RULES_OP_ANY:
        for (i = 0; i < c->nsub; i++) {
            if (rules_cond_eval(rs, c->sub[i], values)) {
                return 1;
            }
        }

        return 0;

    case RULES_OP_NOT:
        return !rules_cond_eval(rs, c->sub[0], values);

    default:
        return rules_cond_leaf(rs, c, values);
    }
}


static int
rules_cond_leaf(rules_set_t *rs, const rules_cond_t *c,
    const rules_str_t *values)
{
    const rules_str_t  *v;
    double              d;
    unsigned            dummy;
    int                 rc;

    v = &values[c->field];

    if (c->op == RULES_OP_EXISTS) {
        return (v->len > 0) == (c->flag != 0);
    }

    /* every comparison but "exists" is false without a value */

    if (v->len == 0) {
        return 0;
    }

    switch (c->op) {

    case RULES_OP_EQ:
        return v->len == c->str.len
               && memcmp(v->data, c->str.data, v->len) == 0;

    case RULES_OP_NE:
        return !(v->len == c->str.len
                 && memcmp(v->data, c->str.data, v->len) == 0);

    case RULES_OP_IN:
        return rules_strmap_get(c->set, v->data, v->len, &dummy);

    case RULES_OP_PREFIX:
        return v->len >= c->str.len
               && memcmp(v->data, c->str.data, c->str.len) == 0;

    case RULES_OP_SUFFIX:
        return v->len >= c->str.len
               && memcmp(v->data + v->len - c->str.len, c->str.data,
                         c->str.len) == 0;

    case RULES_OP_CONTAINS:
        return rules_memmem(v->data, v->len, c->str.data, c->str.len);

    case RULES_OP_REGEX:
        rc = pcre2_match(c->re, v->data, v->len, 0, 0, rs->match_data,
                         rs->match_ctx);

        if (rc >= 0) {
            return 1;
        }

        if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT
            || rc == PCRE2_ERROR_HEAPLIMIT || rc == PCRE2_ERROR_JIT_STACKLIMIT
            || rc == PCRE2_ERROR_NOMEMORY)
        {
            /* a limit (or no memory for the match): fail safe, count */
            rs->stats.regex_limit_hits++;
        }

        return 0;

    case RULES_OP_GT:
        return rules_parse_number(v->data, v->len, &d) && d > c->num;

    case RULES_OP_GTE:
        return rules_parse_number(v->data, v->len, &d) && d >= c->num;

    case RULES_OP_LT:
        return rules_parse_number(v->data, v->len, &d) && d < c->num;

    case RULES_OP_LTE:
        return rules_parse_number(v->data, v->len, &d) && d <= c->num;

    default:
        return 0;
    }
}


void
rules_cond_free(rules_cond_t *c)
{
    if (c->re) {
        pcre2_code_free(c->re);
        c->re = NULL;
    }

    if (c->set) {
        rules_strmap_free(c->set);
    }
}
