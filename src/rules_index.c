/*
 * The condition index: which rules an event can touch, so that a large
 * rule set evaluates only those.
 *
 * A rule is touched when its "touch condition" holds: "where" (count,
 * distinct), "trigger" or "cancel" (absence), any step's "where"
 * (sequence).  At load time each rule gets a set of (field, value) pairs
 * such that the touch condition can only hold when the event's field
 * has one of those values exactly:
 *
 *     eq       the pair itself
 *     in       one pair per string of the list
 *     prefix   the pair "starts with", looked up with the event's value
 *              cut at each prefix length the field has
 *     all      the most selective set among its members that have one:
 *              the least likely to hold for an event whose values are
 *              spread evenly over the values the rules name, a pair
 *              counting 1/n for a field with n values (n prefixes)
 *              named in the file; on a tie the one of fewer pairs, then
 *              the first
 *     any      the union of its members' sets (none if one has none)
 *     others   none (not, ne, prefix, numbers, exists, ...)
 *
 * A rule without such a set (or with a regex anywhere, so that the
 * regex limit counter sees the same evaluations) is always a candidate.
 * An event's candidates are the rules always evaluated plus those listed
 * under its field values; the others are not touched, exactly as if
 * their conditions had been evaluated (rules_event_build() keeps the
 * file order and everything else the same).
 */

#include <stdlib.h>
#include <string.h>

#include "rules_internal.h"


typedef struct {
    unsigned           field;
    unsigned           prefix;     /* the value starts with it */
    rules_str_t        value;
} rules_pair_t;


typedef struct {
    rules_pair_t      *p;
    size_t             n;
    size_t             size;
} rules_pairs_t;


/*
 * The values (and prefixes) the rules' pairs name, per field: how
 * selective a pair is, for the choice among the members of an "all".
 */
typedef struct {
    rules_strmap_t    *values;     /* per field index */
    rules_strmap_t    *prefixes;
    size_t             nfields;
} rules_pair_stats_t;


static int
rules_pairs_add(rules_pairs_t *ps, unsigned field, unsigned prefix,
    const unsigned char *data, size_t len)
{
    if (rules_grow(&ps->p, &ps->size, ps->n, sizeof(rules_pair_t), 8) != 0) {
        return -1;
    }

    ps->p[ps->n].field = field;
    ps->p[ps->n].prefix = prefix;
    ps->p[ps->n].value.data = data;
    ps->p[ps->n].value.len = len;
    ps->n++;

    return 0;
}


static int
rules_cond_has_regex(const rules_cond_t *c)
{
    size_t  i;

    if (c == NULL) {
        return 0;
    }

    if (c->op == RULES_OP_REGEX) {
        return 1;
    }

    for (i = 0; i < c->nsub; i++) {
        if (rules_cond_has_regex(c->sub[i])) {
            return 1;
        }
    }

    return 0;
}


/*
 * The expected share of events a set of pairs lets through, values
 * taken as spread evenly over those the rules name.
 */
static double
rules_pairs_cost(const rules_pair_stats_t *st, const rules_pairs_t *ps)
{
    size_t                 i, n;
    double                 cost;
    const rules_strmap_t  *m;

    cost = 0;

    for (i = 0; i < ps->n; i++) {
        m = ps->p[i].prefix ? &st->prefixes[ps->p[i].field]
                            : &st->values[ps->p[i].field];
        n = m->n ? m->n : 1;
        cost += 1.0 / (double) n;
    }

    return cost;
}


/*
 * Appends c's necessary pairs to out: 1 when c has a set (possibly
 * empty: c never holds), 0 when it has none, -1 on memory exhaustion.
 */
static int
rules_cond_pairs(const rules_pair_stats_t *st, const rules_cond_t *c,
    rules_pairs_t *out)
{
    int            rc, best_rc;
    size_t         i, start;
    double         cost, best_cost;
    rules_pairs_t  sub, best;

    switch (c->op) {

    case RULES_OP_EQ:
        /* an empty value never equals: eq "" never holds */
        if (c->str.len && rules_pairs_add(out, c->field, 0, c->str.data,
                                          c->str.len) != 0)
        {
            return -1;
        }

        return 1;

    case RULES_OP_PREFIX:
        /* "" prefixes every value: no set */
        if (c->str.len == 0) {
            return 0;
        }

        return rules_pairs_add(out, c->field, 1, c->str.data, c->str.len)
               == 0 ? 1 : -1;

    case RULES_OP_IN:
        for (i = 0; i <= c->set->mask; i++) {
            if (c->set->keys[i].data != NULL && c->set->keys[i].len
                && rules_pairs_add(out, c->field, 0, c->set->keys[i].data,
                                   c->set->keys[i].len) != 0)
            {
                return -1;
            }
        }

        return 1;

    case RULES_OP_ALL:
        memset(&best, 0, sizeof(rules_pairs_t));
        best_rc = 0;
        best_cost = 0;

        for (i = 0; i < c->nsub; i++) {
            memset(&sub, 0, sizeof(rules_pairs_t));
            rc = rules_cond_pairs(st, c->sub[i], &sub);

            if (rc < 0) {
                free(sub.p);
                free(best.p);
                return -1;
            }

            cost = (rc == 1) ? rules_pairs_cost(st, &sub) : 0;

            if (rc == 1
                && (best_rc == 0 || cost < best_cost
                    || (cost == best_cost && sub.n < best.n)))
            {
                free(best.p);
                best = sub;
                best_rc = 1;
                best_cost = cost;

            } else {
                free(sub.p);
            }
        }

        for (i = 0; best_rc && i < best.n; i++) {
            if (rules_pairs_add(out, best.p[i].field, best.p[i].prefix,
                                best.p[i].value.data, best.p[i].value.len)
                != 0)
            {
                free(best.p);
                return -1;
            }
        }

        free(best.p);

        return best_rc;

    case RULES_OP_ANY:
        start = out->n;

        for (i = 0; i < c->nsub; i++) {
            rc = rules_cond_pairs(st, c->sub[i], out);

            if (rc != 1) {
                out->n = start;
                return rc;
            }
        }

        return 1;

    default:
        return 0;
    }
}


/* The rule's pairs: 1 (set), 0 (always a candidate), -1 (no memory). */
static int
rules_rule_pairs(const rules_pair_stats_t *st, const rules_rule_t *r,
    rules_pairs_t *out)
{
    int                  rc;
    size_t               i, n;
    rules_cond_t        *own[2];
    rules_cond_t *const *conds;

    /* the touch condition: any of conds */

    switch (r->type) {

    case RULES_TYPE_COUNT:
    case RULES_TYPE_DISTINCT:
        if (r->where == NULL) {
            return 0;           /* every event */
        }

        own[0] = r->where;
        conds = own;
        n = 1;
        break;

    case RULES_TYPE_ABSENCE:
        own[0] = r->trigger;
        own[1] = r->cancel;
        conds = own;
        n = 2;
        break;

    default:
        conds = r->steps;
        n = r->nsteps;
        break;
    }

    for (i = 0; i < n; i++) {
        if (rules_cond_has_regex(conds[i])) {
            return 0;
        }
    }

    for (i = 0; i < n; i++) {
        rc = rules_cond_pairs(st, conds[i], out);

        if (rc != 1) {
            return rc;
        }
    }

    return 1;
}


/* Adds the values and prefixes c's leaves name to st: 0, -1 (no memory). */
static int
rules_cond_count(rules_pair_stats_t *st, const rules_cond_t *c)
{
    size_t  i;

    if (c == NULL) {
        return 0;
    }

    switch (c->op) {

    case RULES_OP_EQ:
    case RULES_OP_PREFIX:
        return (c->str.len == 0
                || rules_strmap_put(c->op == RULES_OP_EQ
                                    ? &st->values[c->field]
                                    : &st->prefixes[c->field],
                                    c->str.data, c->str.len, 0)
                   >= 0)
               ? 0 : -1;

    case RULES_OP_IN:
        for (i = 0; i <= c->set->mask; i++) {
            if (c->set->keys[i].data != NULL && c->set->keys[i].len
                && rules_strmap_put(&st->values[c->field],
                                    c->set->keys[i].data,
                                    c->set->keys[i].len, 0)
                   < 0)
            {
                return -1;
            }
        }

        return 0;

    case RULES_OP_ALL:
    case RULES_OP_ANY:
        for (i = 0; i < c->nsub; i++) {
            if (rules_cond_count(st, c->sub[i]) != 0) {
                return -1;
            }
        }

        return 0;

    default:
        return 0;
    }
}


static void
rules_pair_stats_free(rules_pair_stats_t *st)
{
    size_t  i;

    /* either array may be missing: the other's allocation failed */

    for (i = 0; st->values && st->prefixes && i < st->nfields; i++) {
        rules_strmap_free(&st->values[i]);
        rules_strmap_free(&st->prefixes[i]);
    }

    free(st->values);
    free(st->prefixes);
}


/* The values and prefixes every rule's touch condition names, per field. */
static int
rules_pair_stats(const rules_set_t *rs, rules_pair_stats_t *st)
{
    size_t               i, k;
    const rules_rule_t  *r;

    st->nfields = rs->nfields;
    st->values = calloc(rs->nfields + 1, sizeof(rules_strmap_t));
    st->prefixes = calloc(rs->nfields + 1, sizeof(rules_strmap_t));

    if (st->values == NULL || st->prefixes == NULL) {
        return -1;
    }

    for (i = 0; i < rs->nfields; i++) {
        if (rules_strmap_init(&st->values[i], 16) != 0
            || rules_strmap_init(&st->prefixes[i], 16) != 0)
        {
            return -1;
        }
    }

    for (i = 0; i < rs->nrules; i++) {
        r = &rs->rules[i];

        if (rules_cond_count(st, r->where) != 0
            || rules_cond_count(st, r->trigger) != 0
            || rules_cond_count(st, r->cancel) != 0)
        {
            return -1;
        }

        for (k = 0; r->type == RULES_TYPE_SEQUENCE && k < r->nsteps; k++) {
            if (rules_cond_count(st, r->steps[k]) != 0) {
                return -1;
            }
        }
    }

    return 0;
}


static rules_index_field_t *
rules_index_field(rules_index_t *ix, unsigned field)
{
    size_t                i;
    rules_index_field_t  *f;

    for (i = 0; i < ix->nfields; i++) {
        if (ix->fields[i].field == field) {
            return &ix->fields[i];
        }
    }

    if (rules_grow(&ix->fields, &ix->fields_size, ix->nfields,
                   sizeof(rules_index_field_t), 8)
        != 0)
    {
        return NULL;
    }

    f = &ix->fields[ix->nfields];
    memset(f, 0, sizeof(rules_index_field_t));
    f->field = field;

    if (rules_strmap_init(&f->values, 16) != 0
        || rules_strmap_init(&f->prefixes, 16) != 0)
    {
        rules_strmap_free(&f->values);
        return NULL;
    }

    ix->nfields++;

    return f;
}


static int
rules_index_add(rules_index_t *ix, const rules_pair_t *pair, unsigned rule)
{
    int                   rc;
    unsigned              pi;
    size_t                i;
    rules_str_t           value;
    rules_strmap_t       *map;
    rules_posting_t      *p;
    rules_index_field_t  *f;

    f = rules_index_field(ix, pair->field);
    if (f == NULL) {
        return -1;
    }

    value = pair->value;
    map = pair->prefix ? &f->prefixes : &f->values;

    if (pair->prefix) {
        /* the event's value is looked up cut at each prefix length */

        for (i = 0; i < f->nlens && f->lens[i] != value.len; i++) {
            /* void */
        }

        if (i == f->nlens) {
            if (rules_grow(&f->lens, &f->lens_size, f->nlens, sizeof(size_t),
                           4)
                != 0)
            {
                return -1;
            }

            f->lens[f->nlens++] = value.len;
        }
    }

    if (!rules_strmap_get(map, value.data, value.len, &pi)) {
        if (rules_grow(&ix->postings, &ix->postings_size, ix->npostings,
                       sizeof(rules_posting_t), 64)
            != 0)
        {
            return -1;
        }

        pi = (unsigned) ix->npostings;
        rc = rules_strmap_put(map, value.data, value.len, pi);

        if (rc < 0) {
            return -1;
        }

        memset(&ix->postings[pi], 0, sizeof(rules_posting_t));
        ix->npostings++;
    }

    p = &ix->postings[pi];

    if (p->n && p->rules[p->n - 1] == rule) {
        return 0;       /* the rule names the value twice */
    }

    if (rules_grow(&p->rules, &p->size, p->n, sizeof(unsigned), 4) != 0) {
        return -1;
    }

    p->rules[p->n++] = rule;

    return 0;
}


int
rules_index_build(rules_set_t *rs)
{
    int                  rc;
    size_t               i, k;
    rules_pairs_t        ps;
    rules_index_t       *ix = &rs->index;
    rules_pair_stats_t   st;

    if (rules_result_init(rs, &ix->always) != 0
        || rules_result_init(rs, &ix->cand) != 0)
    {
        return -1;
    }

    memset(&st, 0, sizeof(rules_pair_stats_t));

    if (rules_pair_stats(rs, &st) != 0) {
        rules_pair_stats_free(&st);
        return -1;
    }

    memset(&ps, 0, sizeof(rules_pairs_t));

    for (i = 0; i < rs->nrules; i++) {
        ps.n = 0;
        rc = rules_rule_pairs(&st, &rs->rules[i], &ps);

        if (rc < 0) {
            free(ps.p);
            rules_pair_stats_free(&st);
            return -1;
        }

        if (rc == 0 || ps.n > RULES_INDEX_MAX_PAIRS) {
            rules_result_set(&ix->always, i);
            ix->nalways++;
            continue;
        }

        for (k = 0; k < ps.n; k++) {
            if (rules_index_add(ix, &ps.p[k], (unsigned) i) != 0)
            {
                free(ps.p);
                rules_pair_stats_free(&st);
                return -1;
            }
        }
    }

    free(ps.p);
    rules_pair_stats_free(&st);

    /*
     * the rules of each key group, as bitmaps: an event walks its group's
     * word by word, masked by its candidates when the index is on
     */

    ix->groups = calloc(rs->ngroups ? rs->ngroups : 1, sizeof(rules_result_t));
    ix->writers = calloc(rs->ngroups ? rs->ngroups : 1,
                         sizeof(rules_result_t));

    if (ix->groups == NULL || ix->writers == NULL) {
        return -1;
    }

    ix->ngroups = rs->ngroups;

    for (i = 0; i < rs->ngroups; i++) {
        if (rules_result_init(rs, &ix->groups[i]) != 0
            || rules_result_init(rs, &ix->writers[i]) != 0)
        {
            return -1;
        }
    }

    for (i = 0; i < rs->nrules; i++) {
        rules_result_set(&ix->groups[rs->rules[i].group], i);

        /*
         * with sharing on, a shared record's entry is written by its
         * first rule only (rules_event_entry()): the event skips the
         * others without looking at them
         */

        if (rs->rules[i].type != RULES_TYPE_DISTINCT
            || rs->rules[i].share < 0
            || rs->shares[rs->rules[i].share].leader == i)
        {
            rules_result_set(&ix->writers[rs->rules[i].group], i);
        }
    }

    ix->use = rs->nrules >= RULES_INDEX_MIN_RULES;

    return 0;
}


void
rules_index_free(rules_index_t *ix)
{
    size_t  i;

    for (i = 0; i < ix->nfields; i++) {
        rules_strmap_free(&ix->fields[i].values);
        rules_strmap_free(&ix->fields[i].prefixes);
        free(ix->fields[i].lens);
    }

    for (i = 0; i < ix->npostings; i++) {
        free(ix->postings[i].rules);
    }

    free(ix->fields);
    free(ix->postings);
    rules_result_free(&ix->always);
    rules_result_free(&ix->cand);

    for (i = 0; i < ix->ngroups; i++) {
        rules_result_free(&ix->groups[i]);

        if (ix->writers) {
            rules_result_free(&ix->writers[i]);
        }
    }

    free(ix->groups);
    free(ix->writers);
    memset(ix, 0, sizeof(rules_index_t));
}


static void
rules_index_mark(rules_index_t *ix, const rules_posting_t *p)
{
    size_t  k;

    for (k = 0; k < p->n; k++) {
        rules_result_set(&ix->cand, p->rules[k]);
    }
}


const rules_result_t *
rules_index_candidates(rules_set_t *rs, const rules_str_t *values)
{
    size_t                 i, l;
    unsigned               pi;
    const rules_str_t     *v;
    rules_index_t         *ix = &rs->index;
    rules_index_field_t   *f;

    memcpy(ix->cand.matched, ix->always.matched,
           ix->always.words * sizeof(uint64_t));

    for (i = 0; i < ix->nfields; i++) {
        f = &ix->fields[i];
        v = &values[f->field];

        if (v->len == 0) {
            continue;
        }

        if (rules_strmap_get(&f->values, v->data, v->len, &pi)) {
            rules_index_mark(ix, &ix->postings[pi]);
        }

        for (l = 0; l < f->nlens; l++) {
            if (f->lens[l] <= v->len
                && rules_strmap_get(&f->prefixes, v->data, f->lens[l], &pi))
            {
                rules_index_mark(ix, &ix->postings[pi]);
            }
        }
    }

    return &ix->cand;
}


void
rules_set_indexing(rules_set_t *rs, int on)
{
    rs->index.use = on ? 1 : 0;
}


size_t
rules_index_always(const rules_set_t *rs)
{
    return rs->index.nalways;
}
