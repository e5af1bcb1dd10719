/*
 * The state machines of count, distinct, absence and sequence rules over
 * the binary state of one key (format and algorithm: rules_state.h).
 * rules_script.c runs the same algorithm inside Redis.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rules_internal.h"
#include "rules_state.h"


#define RULES_RECORD_HEADER_LEN  (8 + 1 + 8 + 8 + 8 + 2)
#define RULES_NONE               (-1.0)

/* rules_apply_entry(): the updated record holds nothing */
#define RULES_RECORD_NONE        1


typedef struct {
    const unsigned char  *p;          /* the whole record */
    size_t                len;
    const unsigned char  *digest;
    unsigned              type;
    double                expire;
    double                from;
    double                until;
    const unsigned char  *payload;
    size_t                plen;
    size_t                off;        /* in the state being written */
    int                   entry;      /* the entry touching it, or -1 */
    int                   known;      /* the rule set has its digest: 1,
                                         0, or -1 when not looked up */
} rules_record_t;


typedef struct {
    const unsigned char  *digest;
    unsigned              type;
    double                ttl;
    const unsigned char  *params;
    size_t                plen;
    unsigned              max;        /* shared: its rules' largest min */
    int                   record;     /* its record, or -1 */
} rules_entry_t;


int
rules_buf_grow(rules_buf_t *b, size_t more)
{
    unsigned char  *p;
    size_t          size, need;

    if (more <= b->size - b->len) {
        return 0;
    }

    if (more > SIZE_MAX / 2 - b->len) {
        return -1;
    }

    need = b->len + more;
    size = b->size ? b->size : 256;

    while (size < need) {
        size *= 2;
    }

    p = realloc(b->data, size);

    if (p == NULL) {
        return -1;
    }

    b->data = p;
    b->size = size;

    return 0;
}


/*
 * A digest (8 bytes) appended to a list of matched digests: inline, as
 * a state's every matched record and shared rule appends one (about a
 * hundred per event with 1000 rules), mostly into room already there.
 */
static inline int
rules_buf_append_digest(rules_buf_t *b, const unsigned char *d)
{
    if (rules_buf_reserve(b, 8) != 0) {
        return -1;
    }

    memcpy(b->data + b->len, d, 8);
    b->len += 8;

    return 0;
}


void
rules_buf_free(rules_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->size = 0;
}


/* ---- parsing ------------------------------------------------------- */


/* The payload length a record's type implies, or (size_t) -1. */
static size_t
rules_payload_check(unsigned type, const unsigned char *p, size_t plen)
{
    size_t    n, i, off, vlen;
    unsigned  steps;

    switch (type) {

    case RULES_TYPE_COUNT:
        if (plen < 2) {
            return (size_t) -1;
        }

        n = rules_get_u16(p);

        return 2 + 8 * n;

    case RULES_TYPE_DISTINCT:
        if (plen < 2) {
            return (size_t) -1;
        }

        n = rules_get_u16(p);
        off = 2;

        for (i = 0; i < n; i++) {
            if (off + 10 > plen) {
                return (size_t) -1;
            }

            vlen = rules_get_u16(p + off + 8);
            off += 10 + vlen;
        }

        return off;

    case RULES_RECORD_SHARED:
        off = rules_payload_check(RULES_TYPE_DISTINCT, p, plen);

        if (off == (size_t) -1 || off + 2 > plen) {
            return (size_t) -1;
        }

        off += 2 + 16 * (size_t) rules_get_u16(p + off);

        if (off + 2 > plen) {
            return (size_t) -1;
        }

        return off + 2 + 16 * (size_t) rules_get_u16(p + off);

    case RULES_TYPE_ABSENCE:
        return 9;

    case RULES_TYPE_SEQUENCE:
        if (plen < 1) {
            return (size_t) -1;
        }

        steps = p[0];

        if (steps < 1 || steps > RULES_MAX_STEPS) {
            return (size_t) -1;
        }

        return 1 + 8 + 1 + 16 * (steps - 1);

    default:
        /* a type of a later version: kept and matched by its interval */
        return plen;
    }
}


/*
 * Room for the records of a state of len bytes: one per record header it
 * could hold, at most RULES_STATE_MAX_RECORDS (a state with more does
 * not parse: a large foreign value must not cost a dozen times its size
 * in record arrays).
 */
static size_t
rules_state_records_bound(size_t len)
{
    return RULES_MIN(len / RULES_RECORD_HEADER_LEN + 1,
                     RULES_STATE_MAX_RECORDS);
}


/* how far ahead of the record being read a state's lines are fetched */
#define RULES_PARSE_PREFETCH  8192


/*
 * Returns the number of records, or -1 when the state is malformed or
 * holds more than max (at most RULES_STATE_MAX_RECORDS, however large
 * recs is).
 * own: the state is the writer's own (rules_state_work_load_own()): the
 * records' payloads are not checked again, and each is known.
 */
static int
rules_parse_state(const unsigned char *s, size_t len, rules_record_t *recs,
    size_t max, int own)
{
    size_t           off, n, pf;
    rules_record_t  *r;

    if (len == 0) {
        return 0;
    }

    if (len < RULES_STATE_MAGIC_LEN
        || memcmp(s, RULES_STATE_MAGIC, RULES_STATE_MAGIC_LEN) != 0)
    {
        return -1;
    }

    max = RULES_MIN(max, RULES_STATE_MAX_RECORDS);

    /*
     * A state of hundreds of records (1000 rules on one key) is
     * kilobytes that the cache holds cold, and each record is found
     * through the length of the one before: its lines are asked for up
     * to RULES_PARSE_PREFETCH bytes ahead, many at once, not one cache
     * miss after another.
     */

    off = RULES_STATE_MAGIC_LEN;
    pf = 64;
    n = 0;

    while (off < len) {
        if (pf < off) {
            /* past a long record: not the lines it skipped */
            pf = off;
        }

        for ( /* void */ ; pf < len && pf < off + RULES_PARSE_PREFETCH;
             pf += 64)
        {
            __builtin_prefetch(s + pf);
        }

        if (len - off < RULES_RECORD_HEADER_LEN || n == max) {
            return -1;
        }

        r = &recs[n];
        r->p = s + off;
        r->digest = s + off;
        r->type = s[off + 8];
        r->expire = rules_get_f64(s + off + 9);
        r->from = rules_get_f64(s + off + 17);
        r->until = rules_get_f64(s + off + 25);
        r->plen = rules_get_u16(s + off + 33);
        r->payload = s + off + RULES_RECORD_HEADER_LEN;
        r->entry = -1;
        r->known = own ? 1 : -1;

        if (len - off - RULES_RECORD_HEADER_LEN < r->plen
            || (!own
                && rules_payload_check(r->type, r->payload, r->plen)
                   != r->plen))
        {
            return -1;
        }

        r->len = RULES_RECORD_HEADER_LEN + r->plen;
        off += r->len;
        n++;
    }

    return (int) n;
}


int
rules_state_validate(const unsigned char *state, size_t state_len)
{
    rules_record_t  *recs;
    size_t           max;
    int              n;

    max = rules_state_records_bound(state_len);
    recs = malloc(max * sizeof(rules_record_t));

    if (recs == NULL) {
        return -1;
    }

    n = rules_parse_state(state, state_len, recs, max, 0);
    free(recs);

    return n < 0 ? -1 : 0;
}


static size_t
rules_entry_params_len(unsigned type, const unsigned char *p, size_t avail)
{
    size_t  vlen;

    switch (type) {

    case RULES_TYPE_COUNT:
        return 10;

    case RULES_TYPE_DISTINCT:
        if (avail < 12) {
            return (size_t) -1;
        }

        return 12 + rules_get_u16(p + 10);

    case RULES_TYPE_ABSENCE:
        return 17;

    case RULES_TYPE_SEQUENCE:
        return 25;

    case RULES_RECORD_SHARED:
        if (avail < 10) {
            return (size_t) -1;
        }

        vlen = rules_get_u16(p + 8);

        if (avail < 12 + vlen) {
            return (size_t) -1;
        }

        return 12 + vlen + 10 * (size_t) rules_get_u16(p + 10 + vlen);

    default:
        return (size_t) -1;
    }
}


/*
 * A shared entry's rules: 1 to RULES_SHARE_MAX_MEMBERS, each min valid.
 * Returns their largest min (what rules_apply_shared() keeps the values
 * for), 0 when not valid.
 */
static unsigned
rules_shared_entry_check(const unsigned char *params)
{
    const unsigned char  *em;
    unsigned              n, i, m, max;

    em = params + 10 + rules_get_u16(params + 8);
    n = rules_get_u16(em);

    if (n < 1 || n > RULES_SHARE_MAX_MEMBERS) {
        return 0;
    }

    max = 1;

    for (i = 0; i < n; i++) {
        m = rules_get_u16(em + 2 + 10 * i + 8);

        if (m < 1 || m > RULES_MAX_MIN) {
            return 0;
        }

        if (m > max) {
            max = m;
        }
    }

    return max;
}


static int
rules_parse_op(const unsigned char *op, size_t len, rules_entry_t *ents,
    size_t max)
{
    size_t          off, n, plen;
    rules_entry_t  *e;

    /* (RULES_OP_MAX_ENTRIES at most, however large ents is) */
    max = RULES_MIN(max, RULES_OP_MAX_ENTRIES);
    off = 0;
    n = 0;

    while (off < len) {
        if (len - off < 17 || n == max) {
            return -1;
        }

        e = &ents[n];
        e->digest = op + off;
        e->type = op[off + 8];
        e->ttl = rules_get_f64(op + off + 9);
        e->params = op + off + 17;
        e->record = -1;

        plen = rules_entry_params_len(e->type, e->params, len - off - 17);

        if (plen == (size_t) -1 || len - off - 17 < plen) {
            return -1;
        }

        if (e->type == RULES_TYPE_SEQUENCE
            && (e->params[0] < 1 || e->params[0] > RULES_MAX_STEPS))
        {
            return -1;
        }

        if ((e->type == RULES_TYPE_COUNT || e->type == RULES_TYPE_DISTINCT)
            && (rules_get_u16(e->params) == 0
                || rules_get_u16(e->params) > RULES_MAX_MIN))
        {
            return -1;
        }

        if (e->type == RULES_RECORD_SHARED) {
            e->max = rules_shared_entry_check(e->params);

            if (e->max == 0) {
                return -1;
            }
        }

        e->plen = plen;
        off += 17 + plen;
        n++;
    }

    return (int) n;
}


/* ---- the state machines -------------------------------------------- */


/*
 * Each writes the updated payload of one rule at the end of out and sets
 * the record's matched interval; *now_matched is set when the rule is
 * matched by this event regardless of the interval (a completion).
 */

static int
rules_apply_count(const rules_entry_t *e, const rules_record_t *r,
    double now, rules_buf_t *out, double *from, double *until)
{
    unsigned        min, n, k, i, pos;
    double          within, t;
    unsigned char  *p;

    min = rules_get_u16(e->params);
    within = rules_get_f64(e->params + 2);
    n = r ? rules_get_u16(r->payload) : 0;

    /* the min largest times, descending, with now inserted */

    if (rules_buf_reserve(out, 2 + 8 * ((size_t) n + 1)) != 0) {
        return -1;
    }

    p = out->data + out->len + 2;
    k = 0;
    pos = 0;

    for (i = 0; i < n && k < min; i++) {
        t = rules_get_f64(r->payload + 2 + 8 * i);

        if (pos == 0 && now >= t) {
            rules_put_f64(p + 8 * k++, now);
            pos = 1;

            if (k == min) {
                break;
            }
        }

        rules_put_f64(p + 8 * k++, t);
    }

    if (pos == 0 && k < min) {
        rules_put_f64(p + 8 * k++, now);
    }

    rules_put_u16(out->data + out->len, k);

    if (k >= min) {
        *from = RULES_NONE;
        *until = rules_get_f64(p + 8 * (min - 1)) + within;

    } else {
        *from = 0;
        *until = 0;
    }

    out->len += 2 + 8 * (size_t) k;

    return 0;
}


/*
 * A distinct list (n(H), then n times t(d) vlen(H) value, by last-seen
 * time descending; q: its values, NULL: none) with value seen at now,
 * written at the end of out: at most max values, and at most budget
 * bytes of them (the oldest beyond are dropped: a record's payload is
 * 16-bit).  The times written go to ts.  Returns the number written, -1
 * on memory exhaustion.
 */
static int
rules_distinct_values(const unsigned char *q, unsigned n,
    const unsigned char *value, size_t vlen, double now, unsigned max,
    size_t budget, rules_buf_t *out, double *ts)
{
    unsigned              k, i;
    double                t, tnew;
    const unsigned char  *p, *found;
    size_t                qlen, start, plen, end;
    int                   placed;

    /* the value's previous last-seen time, if it is kept */

    tnew = now;
    found = NULL;

    for (i = 0, p = q; i < n; i++) {
        qlen = rules_get_u16(p + 8);

        if (found == NULL && qlen == vlen && memcmp(p + 10, value, vlen) == 0)
        {
            t = rules_get_f64(p);

            if (t > tnew) {
                tnew = t;
            }

            found = p;
        }

        p += 10 + qlen;
    }

    plen = p - q;

    if (rules_buf_reserve(out, 2 + plen + 10 + vlen) != 0) {
        return -1;
    }

    start = out->len;
    end = start + 2 + budget;
    out->len += 2;
    k = 0;
    placed = 0;

    for (i = 0; i <= n && k < max; i++) {
        if (i < n) {
            qlen = rules_get_u16(q + 8);
            t = rules_get_f64(q);

        } else {
            qlen = 0;
            t = 0;
        }

        if (!placed && (i == n || tnew >= t)) {
            placed = 1;

            /* a value that does not fit is not kept; the others are */

            if (out->len + 10 + vlen <= end) {
                rules_put_f64(out->data + out->len, tnew);
                rules_put_u16(out->data + out->len + 8, (unsigned) vlen);
                memcpy(out->data + out->len + 10, value, vlen);
                out->len += 10 + vlen;
                ts[k++] = tnew;

                if (k == max) {
                    break;
                }
            }
        }

        if (i == n) {
            break;
        }

        if (q != found) {
            if (out->len + 10 + qlen > end) {
                break;
            }

            memcpy(out->data + out->len, q, 10 + qlen);
            out->len += 10 + qlen;
            ts[k++] = t;
        }

        q += 10 + qlen;
    }

    rules_put_u16(out->data + start, k);

    return (int) k;
}


static int
rules_apply_distinct(const rules_entry_t *e, const rules_record_t *r,
    double now, rules_buf_t *out, double *from, double *until)
{
    unsigned  min;
    double    within, ts[RULES_MAX_MIN];
    int       k;

    min = rules_get_u16(e->params);
    within = rules_get_f64(e->params + 2);

    k = rules_distinct_values(r ? r->payload + 2 : NULL,
                              r ? rules_get_u16(r->payload) : 0,
                              e->params + 12, rules_get_u16(e->params + 10),
                              now, min, RULES_RECORD_MAX_PAYLOAD - 2, out,
                              ts);
    if (k < 0) {
        return -1;
    }

    if ((unsigned) k >= min) {
        *from = RULES_NONE;
        *until = ts[min - 1] + within;

    } else {
        *from = 0;
        *until = 0;
    }

    return 0;
}


/*
 * A shared distinct record's rules (digest(8) until(d) each) and their
 * number; with joins not NULL, its joins (digest(8) join(d) each) and
 * their number.
 */
static const unsigned char *
rules_shared_members(const unsigned char *payload, unsigned *n,
    const unsigned char **joins, unsigned *nj)
{
    const unsigned char  *q;
    unsigned              i, nv;

    nv = rules_get_u16(payload);
    q = payload + 2;

    for (i = 0; i < nv; i++) {
        q += 10 + rules_get_u16(q + 8);
    }

    *n = rules_get_u16(q);

    if (joins) {
        *joins = q + 2 + 16 * (size_t) *n + 2;
        *nj = rules_get_u16(*joins - 2);
    }

    return q + 2;
}


/* The rules of an untouched shared record matched at now. */
static int
rules_shared_matched(const rules_record_t *r, double now,
    rules_buf_t *matched)
{
    const unsigned char  *rm;
    unsigned              n, i;

    rm = rules_shared_members(r->payload, &n, NULL, NULL);

    for (i = 0; i < n; i++, rm += 16) {
        if (now < rules_get_f64(rm + 8)
            && rules_buf_append_digest(matched, rm) != 0)
        {
            return -1;
        }
    }

    return 0;
}


/*
 * The index of digest d among n items of size bytes at base, looked for
 * from *c on (the next one is mostly the one after the last found); -1:
 * not there.
 */
static int
rules_shared_find(const unsigned char *base, unsigned n, size_t size,
    const unsigned char *d, unsigned *c)
{
    unsigned  i, at;

    /* no division per step: it was half of rules_apply_shared() */

    at = *c;

    for (i = 0; i < n; i++, at++) {
        if (at >= n) {
            at = 0;
        }

        if (rules_digest_eq(base + size * at, d)) {
            *c = at + 1;
            return (int) at;
        }
    }

    return -1;
}


/*
 * A member of a shared record written at *p: its digest d and the time
 * its rule matches until (u, 0: no match), noted in matched and until.
 */
static inline int
rules_shared_member_put(unsigned char **p, const unsigned char *d, double u,
    double now, rules_buf_t *matched, double *until)
{
    memcpy(*p, d, 8);
    rules_put_f64(*p + 8, u);
    *p += 16;

    if (matched && now < u && rules_buf_append_digest(matched, d) != 0) {
        return -1;
    }

    if (u > *until) {
        *until = u;
    }

    return 0;
}


/*
 * A shared distinct record: the list kept for the largest min of the
 * rules sharing it, then each rule's digest and the end of its matched
 * interval (0: not matched; the start is always RULES_NONE), then the
 * joins: the rules that joined the record after it began (added, or
 * edited) count only the values last seen at or after their join time
 * (their first event's, or just after the record's latest value: every
 * value from before the join is older), as a fresh record would hold; a
 * join goes once no older value is left.
 * The rules matched are appended to *matched; the record's interval
 * spans theirs.
 */
static int
rules_apply_shared(const rules_entry_t *e, const rules_record_t *r,
    double now, rules_buf_t *out, double *from, double *until,
    rules_buf_t *matched)
{
    unsigned              nm, rn, rj, nj, j, m, max, c, cj;
    double                within, u, oldest, newest, ts[RULES_MAX_MIN];
    double                joins[RULES_SHARE_MAX_MEMBERS];
    const unsigned char  *em, *rm, *rjoins, *d;
    unsigned char        *p, *pj;
    size_t                vlen;
    int                   k, at, same;

    within = rules_get_f64(e->params);
    vlen = rules_get_u16(e->params + 8);
    em = e->params + 10 + vlen;
    nm = rules_get_u16(em);
    em += 2;

    rn = 0;
    rj = 0;
    rjoins = NULL;
    rm = r ? rules_shared_members(r->payload, &rn, &rjoins, &rj) : NULL;

    /* the record's latest value: a rule joining now counts after it */
    newest = (r && rules_get_u16(r->payload)) ? rules_get_f64(r->payload + 2)
                                               : RULES_NONE;

    /* the largest min (rules_parse_op() found it) */

    max = e->max;

    /*
     * Mostly the record's rules are the entry's, in the same order, and
     * none joined: nobody joins, no join is looked up.
     */

    same = (rj == 0 && (rm == NULL || rn == nm));

    for (j = 0; same && rm && j < nm; j++) {
        same = rules_digest_eq(rm + 16 * (size_t) j, em + 10 * (size_t) j);
    }

    /* each rule's join time (RULES_NONE: none) */

    nj = 0;
    c = 0;
    cj = 0;

    for (j = 0; !same && j < nm; j++) {
        d = em + 10 * j;
        joins[j] = RULES_NONE;

        if (rm && rules_shared_find(rm, rn, 16, d, &c) < 0) {
            /* joins now */
            joins[j] = newest >= now ? newest + 1 : now;

        } else if (rj) {
            at = rules_shared_find(rjoins, rj, 16, d, &cj);

            if (at >= 0) {
                joins[j] = rules_get_f64(rjoins + 16 * (size_t) at + 8);
            }
        }

        nj += (joins[j] >= 0);
    }

    k = rules_distinct_values(r ? r->payload + 2 : NULL,
                              r ? rules_get_u16(r->payload) : 0,
                              e->params + 10, vlen, now, max,
                              RULES_RECORD_MAX_PAYLOAD - 6
                              - 16 * (size_t) (nm + nj),
                              out, ts);

    if (k < 0 || rules_buf_reserve(out, 4 + 16 * (size_t) (nm + nj)) != 0) {
        return -1;
    }

    oldest = k ? ts[k - 1] : RULES_NONE;

    /* the members, then the joins */

    p = out->data + out->len;
    rules_put_u16(p, nm);
    p += 2;
    pj = p + 16 * (size_t) nm + 2;
    nj = 0;
    *until = 0;

    for (j = 0; same && j < nm; j++, em += 10) {
        /* no joins: the loop below, joins[j] being RULES_NONE */
        m = rules_get_u16(em + 8);
        u = ((unsigned) k >= m && ts[m - 1] >= RULES_NONE)
            ? ts[m - 1] + within : 0;

        if (rules_shared_member_put(&p, em, u, now, matched, until) != 0) {
            return -1;
        }
    }

    for (j = 0; !same && j < nm; j++, em += 10) {
        d = em;
        m = rules_get_u16(em + 8);

        if (joins[j] >= 0 && oldest >= joins[j]) {
            /* no value seen before it is left */
            joins[j] = RULES_NONE;
        }

        if (joins[j] >= 0) {
            memcpy(pj, d, 8);
            rules_put_f64(pj + 8, joins[j]);
            pj += 16;
            nj++;
        }

        u = ((unsigned) k >= m && ts[m - 1] >= joins[j])
            ? ts[m - 1] + within : 0;

        if (rules_shared_member_put(&p, d, u, now, matched, until) != 0) {
            return -1;
        }
    }

    rules_put_u16(p, nj);
    out->len = pj - out->data;
    *from = *until > 0 ? RULES_NONE : 0;

    return 0;
}


static int
rules_apply_absence(const rules_entry_t *e, const rules_record_t *r,
    double now, rules_buf_t *out, double *from, double *until)
{
    unsigned char  *p;
    double          after, within;

    (void) r;

    after = rules_get_f64(e->params + 1);
    within = rules_get_f64(e->params + 9);

    if (rules_buf_reserve(out, 9) != 0) {
        return -1;
    }

    p = out->data + out->len;
    out->len += 9;

    if (e->params[0] == RULES_ACTION_CANCEL) {
        p[0] = 0;
        rules_put_f64(p + 1, RULES_NONE);
        *from = 0;
        *until = 0;
        return 0;
    }

    p[0] = 1;
    rules_put_f64(p + 1, now);
    *from = now + after;
    *until = now + within;

    return 0;
}


static int
rules_apply_sequence(const rules_entry_t *e, const rules_record_t *r,
    double now, rules_buf_t *out, double *from, double *until,
    int *completed)
{
    unsigned        n, i;
    uint32_t        strict, mask;
    double          within, hold, tc, cand;
    double          S[RULES_MAX_STEPS], F[RULES_MAX_STEPS];
    double          nS[RULES_MAX_STEPS], nF[RULES_MAX_STEPS];
    unsigned char  *p;
    int             fresh;

    n = e->params[0];
    strict = rules_get_u32(e->params + 1);
    within = rules_get_f64(e->params + 5);
    hold = rules_get_f64(e->params + 13);
    mask = rules_get_u32(e->params + 21);

    tc = RULES_NONE;

    for (i = 0; i + 1 < n; i++) {
        S[i] = RULES_NONE;
        F[i] = RULES_NONE;
    }

    if (r && r->payload[0] == n) {
        tc = rules_get_f64(r->payload + 1);

        for (i = 0; i + 1 < n; i++) {
            S[i] = rules_get_f64(r->payload + 10 + 8 * i);
            F[i] = rules_get_f64(r->payload + 10 + 8 * (n - 1) + 8 * i);
        }
    }

    *completed = 0;

    for (i = 0; i + 1 < n; i++) {
        nS[i] = S[i];
        nF[i] = RULES_NONE;
    }

    /* one event advances each partial match by at most one step */

    for (i = 0; i < n; i++) {
        if (!((mask >> i) & 1)) {
            continue;
        }

        if (i == 0) {
            cand = now;

        } else {
            cand = ((strict >> i) & 1) ? F[i - 1] : S[i - 1];
        }

        if (cand < 0) {
            continue;
        }

        if (i == n - 1) {
            if (now - cand < within) {
                *completed = 1;
            }

            continue;
        }

        if (cand > nS[i]) {
            nS[i] = cand;
        }

        if (cand > nF[i]) {
            nF[i] = cand;
        }
    }

    if (*completed) {
        /*
         * every partial match is discarded; this event starts nothing.
         * tc is the latest completion time: a completion that arrives
         * with an older time than an earlier one (out-of-order times)
         * does not shorten the hold of that one.
         */
        if (now > tc) {
            tc = now;
        }

        for (i = 0; i + 1 < n; i++) {
            nS[i] = RULES_NONE;
            nF[i] = RULES_NONE;
        }
    }

    if (rules_buf_reserve(out, 10 + 16 * (size_t) (n - 1)) != 0) {
        return -1;
    }

    fresh = 0;

    for (i = 0; i + 1 < n; i++) {
        if (nF[i] >= 0) {
            fresh = 1;
        }
    }

    p = out->data + out->len;
    p[0] = (unsigned char) n;
    rules_put_f64(p + 1, tc);
    p[9] = (unsigned char) fresh;

    for (i = 0; i + 1 < n; i++) {
        rules_put_f64(p + 10 + 8 * i, nS[i]);
        rules_put_f64(p + 10 + 8 * (n - 1) + 8 * i, nF[i]);
    }

    out->len += 10 + 16 * (size_t) (n - 1);

    if (tc >= 0 && hold > 0) {
        *from = RULES_NONE;
        *until = tc + hold;

    } else {
        *from = 0;
        *until = 0;
    }

    return 0;
}


/* ---- applying an operation ----------------------------------------- */


static int
rules_write_header(rules_buf_t *out, const unsigned char *digest,
    unsigned type, double expire, size_t *at)
{
    if (rules_buf_reserve(out, RULES_RECORD_HEADER_LEN) != 0) {
        return -1;
    }

    *at = out->len;
    memcpy(out->data + out->len, digest, 8);
    out->data[out->len + 8] = (unsigned char) type;
    rules_put_f64(out->data + out->len + 9, expire);
    out->len += RULES_RECORD_HEADER_LEN;

    return 0;
}


static void
rules_finish_header(rules_buf_t *out, size_t at, double from, double until)
{
    rules_put_f64(out->data + at + 17, from);
    rules_put_f64(out->data + at + 25, until);
    rules_put_u16(out->data + at + 33,
                  (unsigned) (out->len - at - RULES_RECORD_HEADER_LEN));
}


/*
 * A sequence with no partial match and no completion, an absence
 * cancelled: a payload that means what no record means.  Such records
 * are not written (writers before 2026-12-04 wrote them: they are read as
 * they are, and go at their rule's next update).
 */
static int
rules_record_holds_nothing(const rules_entry_t *e, const unsigned char *p)
{
    unsigned  n, i;

    switch (e->type) {

    case RULES_TYPE_ABSENCE:
        return p[0] == 0;

    case RULES_TYPE_SEQUENCE:
        n = p[0];

        if (rules_get_f64(p + 1) >= 0) {
            return 0;
        }

        for (i = 0; i + 1 < n; i++) {
            if (rules_get_f64(p + 10 + 8 * i) >= 0) {
                return 0;
            }
        }

        return 1;

    default:
        return 0;
    }
}


/*
 * Entry e, applied to no record, makes one that holds nothing: a cancel,
 * or a sequence's later steps only (a purchase touches every sequence
 * that ends with one; most have no partial match to complete).
 */
static int
rules_entry_makes_nothing(const rules_entry_t *e)
{
    switch (e->type) {

    case RULES_TYPE_ABSENCE:
        return e->params[0] == RULES_ACTION_CANCEL;

    case RULES_TYPE_SEQUENCE:
        return !(rules_get_u32(e->params + 21) & 1);

    default:
        return 0;
    }
}


/*
 * Writes entry e's record updated from r (NULL: none) and appends its
 * digest to *matched when it matches.  Returns 0, RULES_RECORD_NONE when
 * the updated record holds nothing (nothing written), -1 on memory
 * exhaustion.
 */
static int
rules_apply_entry(const rules_entry_t *e, const rules_record_t *r,
    double now, double wall, rules_buf_t *out, rules_buf_t *matched)
{
    size_t  at;
    double  from, until;
    int     rc, completed;

    if (r && r->type != e->type) {
        r = NULL;
    }

    if (r == NULL && rules_entry_makes_nothing(e)) {
        return RULES_RECORD_NONE;
    }

    if (rules_write_header(out, e->digest, e->type, wall + e->ttl, &at)
        != 0)
    {
        return -1;
    }

    completed = 0;

    switch (e->type) {

    case RULES_TYPE_COUNT:
        rc = rules_apply_count(e, r, now, out, &from, &until);
        break;

    case RULES_TYPE_DISTINCT:
        rc = rules_apply_distinct(e, r, now, out, &from, &until);
        break;

    case RULES_TYPE_ABSENCE:
        rc = rules_apply_absence(e, r, now, out, &from, &until);
        break;

    case RULES_RECORD_SHARED:
        rc = rules_apply_shared(e, r, now, out, &from, &until, matched);
        break;

    default:
        rc = rules_apply_sequence(e, r, now, out, &from, &until, &completed);
        break;
    }

    if (rc != 0) {
        return -1;
    }

    if (rules_record_holds_nothing(e, out->data + at + RULES_RECORD_HEADER_LEN)
        && !completed)
    {
        /* the same as no record: not written */
        out->len = at;
        return RULES_RECORD_NONE;
    }

    rules_finish_header(out, at, from, until);

    if (e->type == RULES_RECORD_SHARED) {
        /* its rules' matches are appended already */
        return 0;
    }

    if (matched && (completed || (from <= now && now < until))) {
        return rules_buf_append_digest(matched, e->digest);
    }

    return 0;
}


/* An untouched sequence record whose strict chains this event breaks. */
static int
rules_break_chains(const rules_record_t *r, rules_buf_t *out)
{
    unsigned        n, i;
    unsigned char  *p;

    if (rules_buf_append(out, r->p, r->len) != 0) {
        return -1;
    }

    p = out->data + out->len - r->plen;
    n = p[0];
    p[9] = 0;

    for (i = 0; i + 1 < n; i++) {
        rules_put_f64(p + 10 + 8 * (n - 1) + 8 * i, RULES_NONE);
    }

    return 0;
}


/* ---- a state held parsed across operations --------------------------- */


/* A slot of the pairing's hash: a digest and its first entry (-1: none). */
typedef struct {
    uint64_t         digest;
    int              head;
} rules_pair_slot_t;


/* the array elements a work keeps between uses (rules_state_work_trim()) */
#define RULES_WORK_KEEP  4096


struct rules_state_work_s {
    rules_record_t     *recs;       /* the state's records */
    rules_record_t     *next;       /* the next state's, being written */
    size_t              nrecs;
    size_t              recs_size;  /* of both */
    rules_entry_t      *ents;
    size_t              ents_size;
    rules_pair_slot_t  *slots;      /* pairing: a hash of the entries */
    size_t              slots_size;
    int                *chain;      /* the entries of one digest, in order */
    size_t              chain_size;
};


rules_state_work_t *
rules_state_work_create(void)
{
    return calloc(1, sizeof(rules_state_work_t));
}


void
rules_state_work_free(rules_state_work_t *w)
{
    if (w == NULL) {
        return;
    }

    free(w->recs);
    free(w->next);
    free(w->ents);
    free(w->slots);
    free(w->chain);
    free(w);
}


void
rules_state_work_trim(rules_state_work_t *w)
{
    if (w == NULL) {
        return;
    }

    if (w->recs_size > RULES_WORK_KEEP) {
        free(w->recs);
        free(w->next);
        w->recs = NULL;
        w->next = NULL;
        w->recs_size = 0;
        w->nrecs = 0;
    }

    if (w->ents_size > RULES_WORK_KEEP) {
        free(w->ents);
        w->ents = NULL;
        w->ents_size = 0;
    }

    if (w->slots_size > RULES_WORK_KEEP) {
        free(w->slots);
        w->slots = NULL;
        w->slots_size = 0;
    }

    if (w->chain_size > RULES_WORK_KEEP) {
        free(w->chain);
        w->chain = NULL;
        w->chain_size = 0;
    }
}


/*
 * Makes the array at arrayp hold at least n elements of elem bytes (the
 * room is nearly always there: checked here, inline, before the call).
 */
static inline int
rules_work_fit(void *arrayp, size_t *size, size_t n, size_t elem)
{
    return n <= *size ? 0 : rules_grow(arrayp, size, n - 1, elem, 32);
}


/* Both record arrays hold n records. */
static int
rules_work_fit_recs(rules_state_work_t *w, size_t n)
{
    size_t  size;

    size = w->recs_size;

    if (rules_work_fit(&w->recs, &size, n, sizeof(rules_record_t)) != 0) {
        return -1;
    }

    if (rules_work_fit(&w->next, &w->recs_size, n, sizeof(rules_record_t))
        != 0)
    {
        return -1;
    }

    return 0;
}


static int
rules_work_load(rules_state_work_t *w, const unsigned char *state,
    size_t state_len, int own)
{
    int  nr;

    w->nrecs = 0;

    if (rules_work_fit_recs(w, rules_state_records_bound(state_len)) != 0) {
        return -1;
    }

    nr = rules_parse_state(state, state_len, w->recs, w->recs_size, own);

    if (nr < 0) {
        return 1;
    }

    w->nrecs = (size_t) nr;

    return 0;
}


int
rules_state_work_load(rules_state_work_t *w, const unsigned char *state,
    size_t state_len)
{
    return rules_work_load(w, state, state_len, 0);
}


int
rules_state_work_load_own(rules_state_work_t *w, const unsigned char *state,
    size_t state_len)
{
    return rules_work_load(w, state, state_len, 1);
}


/*
 * Pairs each entry with its record: entry i (in order) with the first
 * record of its digest not paired yet (the k-th entry of a digest with
 * its k-th record, whichever side is walked).  A state of hundreds of
 * records (1000 rules on one key) meets ops of hundreds of entries:
 * beyond a few pairs to try, the smaller side is put in a hash table by
 * digest (the items of one digest chained in order) and the other side
 * looked up in it, not compared with every item.
 */
static int
rules_pair_entries(rules_state_work_t *w, int ne)
{
    int                 i, j, ie, ir, nr, nh, no, by_recs, *chain;
    size_t              size, h, mask;
    uint64_t            d;
    rules_pair_slot_t  *slots;
    rules_record_t     *recs;
    rules_entry_t      *ents;

    recs = w->recs;
    nr = (int) w->nrecs;
    ents = w->ents;

    for (j = 0; j < nr; j++) {
        recs[j].entry = -1;
    }

    if ((size_t) nr * (size_t) ne <= 64) {
        for (i = 0; i < ne; i++) {
            for (j = 0; j < nr; j++) {
                if (recs[j].entry < 0
                    && rules_digest_eq(recs[j].digest, ents[i].digest))
                {
                    recs[j].entry = i;
                    ents[i].record = j;
                    break;
                }
            }
        }

        return 0;
    }

    /*
     * At most a quarter full, the digests of the smaller side in the
     * slots: an item of the other side without a pair (most of them) is
     * told so by a probe or two.  The side hashed is mostly the records:
     * an op of a key of many rules touches tens of them (a few hundred
     * entries: a table of a thousand slots to clear, for a state of
     * about ten records).
     */

    by_recs = (nr <= ne);
    nh = by_recs ? nr : ne;
    no = by_recs ? ne : nr;

    for (size = 16; size < (size_t) nh * 4; size <<= 1) { /* void */ }

    if (rules_work_fit(&w->slots, &w->slots_size, size,
                       sizeof(rules_pair_slot_t))
        != 0
        || rules_work_fit(&w->chain, &w->chain_size, (size_t) nh,
                          sizeof(int))
           != 0)
    {
        return -1;
    }

    mask = size - 1;
    slots = w->slots;
    chain = w->chain;

    for (h = 0; h < size; h++) {
        slots[h].head = -1;
    }

    /* chains in order: inserted from the last item to the first */

    for (i = nh - 1; i >= 0; i--) {
        memcpy(&d, by_recs ? recs[i].digest : ents[i].digest, 8);

        for (h = (d * 0x9e3779b97f4a7c15ULL) >> 32 & mask;
             slots[h].head >= 0 && slots[h].digest != d;
             h = (h + 1) & mask)
        { /* void */ }

        slots[h].digest = d;
        chain[i] = slots[h].head;
        slots[h].head = i;
    }

    for (j = 0; j < no; j++) {
        memcpy(&d, by_recs ? ents[j].digest : recs[j].digest, 8);

        for (h = (d * 0x9e3779b97f4a7c15ULL) >> 32 & mask;
             slots[h].head >= 0 && slots[h].digest != d;
             h = (h + 1) & mask)
        { /* void */ }

        /* the first item of the hashed side with j's digest not paired */

        for (i = slots[h].head;
             i >= 0 && (by_recs ? recs[i].entry : ents[i].record) >= 0;
             i = chain[i])
        { /* void */ }

        if (i >= 0) {
            ie = by_recs ? j : i;
            ir = by_recs ? i : j;
            recs[ir].entry = ie;
            ents[ie].record = ir;
        }
    }

    return 0;
}


/*
 * The next state's record written at out + at (by this code: its
 * header needs no checks); known is the rule set's verdict on its
 * digest, when looked up already.
 */
static void
rules_work_wrote(rules_state_work_t *w, size_t n, const rules_buf_t *out,
    size_t at, int known)
{
    rules_record_t       *r;
    const unsigned char  *s;

    r = &w->next[n];
    s = out->data + at;
    r->off = at;
    r->type = s[8];
    r->expire = rules_get_f64(s + 9);
    r->from = rules_get_f64(s + 17);
    r->until = rules_get_f64(s + 25);
    r->plen = rules_get_u16(s + 33);
    r->len = RULES_RECORD_HEADER_LEN + r->plen;
    r->known = known;
}


/* A record of the state that goes to the next one as it is. */
static void
rules_work_kept(rules_state_work_t *w, size_t n, const rules_record_t *r,
    size_t at)
{
    w->next[n] = *r;
    w->next[n].off = at;
}


int
rules_state_work_apply(rules_state_work_t *w, const unsigned char *op,
    size_t op_len, int64_t now_ms, int64_t wall_ms, const rules_set_t *known,
    rules_buf_t *out, int *changed, int64_t *pttl, rules_buf_t *matched)
{
    size_t                i, j, n, at, start, run_len;
    int                   ne, rc, k;
    double                now, wall, expire, max_expire;
    rules_record_t       *r, *recs, *tmp;
    const unsigned char  *run;

    now = (double) now_ms;
    wall = (double) wall_ms;
    out->len = 0;
    *changed = 0;
    *pttl = 0;

    if (rules_work_fit(&w->ents, &w->ents_size,
                       RULES_MIN(op_len / 17 + 1, RULES_OP_MAX_ENTRIES),
                       sizeof(rules_entry_t))
        != 0)
    {
        return -1;
    }

    ne = rules_parse_op(op, op_len, w->ents, w->ents_size);

    if (ne < 0) {
        /* a malformed op, told from no memory (-1) */
        return -2;
    }

    if (rules_work_fit_recs(w, w->nrecs + (size_t) ne) != 0
        || rules_pair_entries(w, ne) != 0)
    {
        return -1;
    }

    recs = w->recs;

    rc = rules_buf_append(out, RULES_STATE_MAGIC, RULES_STATE_MAGIC_LEN);
    start = out->len;
    max_expire = 0;
    n = 0;

    /* records kept as they are, contiguous in the state, go in one copy */
    run = NULL;
    run_len = 0;

    for (j = 0; rc == 0 && j < w->nrecs; j++) {
        r = &recs[j];

        if (r->expire <= wall) {
            *changed = 1;
            continue;
        }

        if (known && r->entry < 0) {
            if (r->known < 0) {
                r->known = rules_known_digest(known, r->digest);
            }

            if (!r->known) {
                /* a rule that is no more (removed or edited) */
                *changed = 1;
                continue;
            }
        }

        if (r->entry < 0
            && !(r->type == RULES_TYPE_SEQUENCE && r->payload[9]))
        {
            if (run_len == 0 || run + run_len != r->p) {
                if (run_len) {
                    rc = rules_buf_append(out, run, run_len);
                }

                run = r->p;
                run_len = 0;
            }

            rules_work_kept(w, n++, r, out->len + run_len);
            run_len += r->len;
            expire = r->expire;

        } else {
            if (run_len) {
                rc = rules_buf_append(out, run, run_len);
                run_len = 0;

                if (rc != 0) {
                    break;
                }
            }

            *changed = 1;
            at = out->len;

            if (r->entry >= 0) {
                rc = rules_apply_entry(&w->ents[r->entry], r, now, wall, out,
                                       matched);
                expire = wall + w->ents[r->entry].ttl;

            } else {
                /* an untouched sequence whose strict chains this event
                 * breaks */
                rc = rules_break_chains(r, out);
                expire = r->expire;
            }

            if (rc == RULES_RECORD_NONE) {
                /* the record goes */
                rc = 0;
                expire = 0;

            } else if (rc == 0) {
                rules_work_wrote(w, n++, out, at, r->known);
            }
        }

        /* an untouched record is matched by its interval */

        if (rc == 0 && matched && r->entry < 0 && r->from <= now
            && now < r->until)
        {
            rc = (r->type == RULES_RECORD_SHARED)
                 ? rules_shared_matched(r, now, matched)
                 : rules_buf_append_digest(matched, r->digest);
        }

        if (expire > max_expire) {
            max_expire = expire;
        }
    }

    if (rc == 0 && run_len) {
        rc = rules_buf_append(out, run, run_len);
    }

    for (k = 0; rc == 0 && k < ne; k++) {
        if (w->ents[k].record >= 0 && recs[w->ents[k].record].expire > wall) {
            continue;
        }

        if (rules_entry_makes_nothing(&w->ents[k])) {
            /*
             * no record, as before (what rules_apply_entry() returns for
             * it, told without the call: a purchase touches tens of
             * sequences that end with one, most without a partial match)
             */
            continue;
        }

        at = out->len;
        rc = rules_apply_entry(&w->ents[k], NULL, now, wall, out, matched);

        if (rc == RULES_RECORD_NONE) {
            /* no record, as before */
            rc = 0;
            continue;
        }

        *changed = 1;

        if (rc == 0) {
            rules_work_wrote(w, n++, out, at, -1);
        }

        if (wall + w->ents[k].ttl > max_expire) {
            max_expire = wall + w->ents[k].ttl;
        }
    }

    if (rc != 0) {
        /* w still holds the state it held */
        return -1;
    }

    /* w holds the new state: its records point into out */

    for (i = 0; i < n; i++) {
        r = &w->next[i];
        r->p = out->data + r->off;
        r->digest = r->p;
        r->payload = r->p + RULES_RECORD_HEADER_LEN;
    }

    tmp = w->recs;
    w->recs = w->next;
    w->next = tmp;
    w->nrecs = n;

    if (out->len == start) {
        out->len = 0;

    } else {
        /* a stored expire may be anything: keep the TTL in range */
        max_expire -= wall;

        if (!(max_expire >= 1)) {
            max_expire = 1;

        } else if (max_expire > (double) RULES_MAX_DURATION_MS) {
            max_expire = (double) RULES_MAX_DURATION_MS;
        }

        *pttl = (int64_t) max_expire;
    }

    return 0;
}


int
rules_state_apply(const unsigned char *state, size_t state_len,
    const unsigned char *op, size_t op_len, int64_t now_ms, int64_t wall_ms,
    rules_buf_t *out, int *changed, int64_t *pttl, rules_buf_t *matched)
{
    return rules_state_apply_known(state, state_len, op, op_len, now_ms,
                                   wall_ms, NULL, out, changed, pttl,
                                   matched);
}


int
rules_state_apply_known(const unsigned char *state, size_t state_len,
    const unsigned char *op, size_t op_len, int64_t now_ms, int64_t wall_ms,
    const rules_set_t *known, rules_buf_t *out, int *changed, int64_t *pttl,
    rules_buf_t *matched)
{
    int                  rc;
    rules_state_work_t  *w;

    w = rules_state_work_create();
    if (w == NULL) {
        return -1;
    }

    rc = rules_state_apply_work(w, state, state_len, op, op_len, now_ms,
                                wall_ms, known, out, changed, pttl, matched);

    rules_state_work_free(w);

    return rc;
}


int
rules_state_apply_work(rules_state_work_t *w, const unsigned char *state,
    size_t state_len, const unsigned char *op, size_t op_len, int64_t now_ms,
    int64_t wall_ms, const rules_set_t *known, rules_buf_t *out, int *changed,
    int64_t *pttl, rules_buf_t *matched)
{
    int  rc, bad;

    bad = rules_state_work_load(w, state, state_len);

    if (bad < 0) {
        return -1;
    }

    rc = rules_state_work_apply(w, op, op_len, now_ms, wall_ms, known, out,
                                changed, pttl, matched);

    if (rc == 0 && bad) {
        /* not ours or damaged: started afresh */
        *changed = 1;
    }

    return rc;
}
