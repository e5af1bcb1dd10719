/*
 * The state machines (rules_event_build + rules_state_apply) against a
 * brute-force evaluator written directly from SPEC.md's definitions,
 * which keeps every event of every key and recomputes each rule's
 * predicate from scratch, on many random rule files and event streams
 * (equal times and out-of-order times included).
 *
 * Conditions are evaluated by the engine in both (they have their own
 * tests); this compares what the state machines make of them.  Every
 * event's ops are also built with the condition index (rules_index.c)
 * and without it: they must be the same, byte for byte, and the index
 * is on for the comparison with the brute force.
 *
 * The same ops, with their own wall clocks (so that records expire), are
 * also logged per key the way Redis keeps them (an R2 value: a snapshot
 * and the entries since) and folded from time to time: the fold, which
 * parses the snapshot once for the whole log, must give the state and
 * the matches that applying the ops one by one gives, byte for byte, with
 * every rule known, none checked, or only another rule file's known (so
 * that every record not touched is dropped).
 *
 *   RULES_RANDOM_SEED=n RULES_RANDOM_ITERS=n build/unit/test_state_random
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules_engine.h"
#include "rules_internal.h"
#include "rules_log.h"
#include "tap.h"


#define NFIELDS     6           /* uid ip a b c n */
#define MAXEV       160
#define MAXRULES    24      /* beyond 8 pairs per key: the hashed pairing */
#define WALL        1000000000000LL

static const char *field_names[NFIELDS] = { "uid", "ip", "a", "b", "c",
                                            "n" };
static const char *alpha[] = { "x", "y", "z", "xy", "" };
static const char *nums[] = { "1", "2", "3", "-1", "x", "" };

static unsigned long long  rng;    /* the rules and events */
static unsigned long long  frng;   /* the fold check's own draws */


/* 0 .. n-1 from the linear congruential stream *state */
static unsigned
rnd_of(unsigned long long *state, unsigned n)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (unsigned) ((*state >> 33) % n);
}


static unsigned
rnd(unsigned n)
{
    return rnd_of(&rng, n);
}


/* ---- random rules --------------------------------------------------- */

static int
gen_cond(char *p, size_t size, int depth)
{
    int          r, f;
    const char  *v;

    r = rnd(depth < 2 ? 10 : 7);
    f = 2 + rnd(3);
    v = alpha[rnd(4)];

    switch (r) {
    case 0:
    case 1:
        return snprintf(p, size, "{\"field\":\"%s\",\"eq\":\"%s\"}",
                        field_names[f], v);
    case 2:
        return snprintf(p, size, "{\"field\":\"%s\",\"ne\":\"%s\"}",
                        field_names[f], v);
    case 3:
        return snprintf(p, size, "{\"field\":\"%s\",\"in\":[\"%s\",\"%s\"]}",
                        field_names[f], v, alpha[rnd(4)]);
    case 4:
        return snprintf(p, size, "{\"field\":\"%s\",\"prefix\":\"x\"}",
                        field_names[f]);
    case 5:
        return snprintf(p, size, "{\"field\":\"n\",\"gte\":2}");
    case 6:
        return snprintf(p, size, "{\"field\":\"%s\",\"exists\":%s}",
                        field_names[f], rnd(2) ? "true" : "false");
    case 7: {
        char  a[512], b[512];

        gen_cond(a, sizeof(a), depth + 1);
        gen_cond(b, sizeof(b), depth + 1);
        return snprintf(p, size, "{\"all\":[%s,%s]}", a, b);
    }
    case 8: {
        char  a[512], b[512];

        gen_cond(a, sizeof(a), depth + 1);
        gen_cond(b, sizeof(b), depth + 1);
        return snprintf(p, size, "{\"any\":[%s,%s]}", a, b);
    }
    default: {
        char  a[512];

        gen_cond(a, sizeof(a), depth + 1);
        return snprintf(p, size, "{\"not\":%s}", a);
    }
    }
}


static void
gen_rules(char *out, size_t size, int n)
{
    char    c1[1200], c2[1200], steps[6000], shared[1400];
    size_t  len, sl;
    int     i, k, nsteps, type;

    len = snprintf(out, size, "{\"rules\":[");
    shared[0] = '\0';

    for (i = 0; i < n; i++) {
        type = 1 + rnd(4);
        len += snprintf(out + len, size - len,
                        "%s{\"id\":\"r%d\",\"kind\":\"%s\",\"key\":\"%s\"",
                        i ? "," : "", i, rnd(4) ? "segment" : "fraud",
                        rnd(3) ? "uid" : "ip");

        switch (type) {
        case RULES_TYPE_DISTINCT:
            if (shared[0] && rnd(2)) {
                /* differs from an earlier one only in min (and id, kind):
                 * they share a record */
                len += snprintf(out + len, size - len,
                                ",\"type\":\"distinct\",\"min\":%u%s",
                                1 + rnd(4), shared);
                break;
            }

            /* fall through */

        case RULES_TYPE_COUNT:
            sl = len;
            len += snprintf(out + len, size - len,
                            ",\"type\":\"%s\",\"min\":%u,\"within\":\"%ums\"",
                            type == RULES_TYPE_COUNT ? "count" : "distinct",
                            1 + rnd(4), 1 + rnd(25));
            if (type == RULES_TYPE_DISTINCT) {
                len += snprintf(out + len, size - len, ",\"field\":\"%s\"",
                                field_names[2 + rnd(3)]);
            }
            if (rnd(3)) {
                gen_cond(c1, sizeof(c1), 0);
                len += snprintf(out + len, size - len, ",\"where\":%s", c1);
            }
            if (type == RULES_TYPE_DISTINCT) {
                /* the members after min, for a later rule to share */
                snprintf(shared, sizeof(shared), "%s",
                         strchr(strstr(out + sl, "\"min\":"), ','));
            }
            break;

        case RULES_TYPE_ABSENCE: {
            unsigned  within = 2 + rnd(25);

            gen_cond(c1, sizeof(c1), 0);
            gen_cond(c2, sizeof(c2), 0);
            len += snprintf(out + len, size - len,
                            ",\"type\":\"absence\",\"trigger\":%s,"
                            "\"cancel\":%s,\"within\":\"%ums\"", c1, c2,
                            within);
            if (rnd(2)) {
                len += snprintf(out + len, size - len, ",\"after\":\"%ums\"",
                                rnd(within));
            }
            break;
        }

        default:
            nsteps = 1 + rnd(4);
            sl = 0;
            for (k = 0; k < nsteps; k++) {
                gen_cond(c1, sizeof(c1), 1);
                sl += snprintf(steps + sl, sizeof(steps) - sl,
                               "%s{\"where\":%s%s}", k ? "," : "", c1,
                               (k > 0 && rnd(3) == 0) ? ",\"strict\":true"
                                                      : "");
            }
            len += snprintf(out + len, size - len,
                            ",\"type\":\"sequence\",\"steps\":[%s],"
                            "\"within\":\"%ums\"", steps, 1 + rnd(30));
            if (rnd(2)) {
                len += snprintf(out + len, size - len, ",\"hold\":\"%ums\"",
                                rnd(20));
            }
            break;
        }

        len += snprintf(out + len, size - len, "}");
    }

    snprintf(out + len, size - len, "]}");
}


/* ---- events ---------------------------------------------------------- */

typedef struct {
    const char  *v[NFIELDS];
    int64_t      t;
} event_t;


static void
gen_events(event_t *ev, int n)
{
    int      i, f;
    int64_t  t;

    t = 1000;

    for (i = 0; i < n; i++) {
        unsigned  r = rnd(10);

        if (r < 2) {
            /* same time */
        } else if (r < 9) {
            t += rnd(6);
        } else {
            t -= rnd(15);
            if (t < 0) {
                t = 0;
            }
        }

        ev[i].t = t;
        ev[i].v[0] = rnd(8) ? (rnd(2) ? "u1" : "u2") : "";
        ev[i].v[1] = rnd(8) ? (rnd(2) ? "i1" : "i2") : "";

        for (f = 2; f < 5; f++) {
            ev[i].v[f] = alpha[rnd(5)];
        }

        ev[i].v[5] = nums[rnd(6)];
    }
}


static void
values_of(rules_set_t *rs, const event_t *e, rules_str_t *vals)
{
    size_t  i;
    int     f;

    for (i = 0; i < rules_nfields(rs); i++) {
        vals[i].data = NULL;
        vals[i].len = 0;
    }

    for (f = 0; f < NFIELDS; f++) {
        int idx = rules_field_index(rs, field_names[f],
                                    strlen(field_names[f]));
        if (idx >= 0) {
            vals[idx].data = (const unsigned char *) e->v[f];
            vals[idx].len = strlen(e->v[f]);
        }
    }
}


/* ---- the brute force, from SPEC.md --------------------------------- */

typedef struct {
    int      idx[MAXEV];      /* events of this key, arrival order */
    int      n;
    int      last_completion; /* position in idx, or -1 */
    int64_t  tc;
    int      has_tc;
} history_t;

static rules_set_t  *brs;
static event_t      *bev;
static rules_str_t   bvals[MAXEV][16];


static int
cond(const rules_cond_t *c, int e)
{
    return c == NULL || rules_cond_eval(brs, c, bvals[e]);
}


/* exists e1..ek of steps 0..k-1 ending at position pos, starting after
 * the last completion, with t(j) - t(e1) < within */
static int
chain(const rules_rule_t *r, history_t *h, int k, int pos, int64_t tj)
{
    int  p;

    if (pos <= h->last_completion || !cond(r->steps[k], h->idx[pos])) {
        return 0;
    }

    if (k == 0) {
        return tj - bev[h->idx[pos]].t < r->within;
    }

    if ((r->strict_mask >> k) & 1) {
        return chain(r, h, k - 1, pos - 1, tj);
    }

    for (p = pos - 1; p > h->last_completion; p--) {
        if (chain(r, h, k - 1, p, tj)) {
            return 1;
        }
    }

    return 0;
}


static int
brute_matched(const rules_rule_t *r, history_t *h, int64_t now)
{
    int  i, j, count, armed, nd;
    int64_t  tarm;
    const rules_str_t  *v, *w;

    switch (r->type) {

    case RULES_TYPE_COUNT:
        count = 0;
        for (i = 0; i < h->n; i++) {
            if (cond(r->where, h->idx[i]) && now - bev[h->idx[i]].t < r->within)
            {
                count++;
            }
        }
        return count >= (int) r->min;

    case RULES_TYPE_DISTINCT:
        /* distinct values with an occurrence inside the window */
        nd = 0;
        for (i = 0; i < h->n; i++) {
            v = &bvals[h->idx[i]][r->distinct_field];
            if (v->len == 0 || !cond(r->where, h->idx[i])
                || !(now - bev[h->idx[i]].t < r->within))
            {
                continue;
            }
            /* first such occurrence of this value? */
            for (j = 0; j < i; j++) {
                w = &bvals[h->idx[j]][r->distinct_field];
                if (w->len == v->len && memcmp(w->data, v->data, v->len) == 0
                    && cond(r->where, h->idx[j])
                    && now - bev[h->idx[j]].t < r->within)
                {
                    break;
                }
            }
            if (j == i) {
                nd++;
            }
        }
        return nd >= (int) r->min;

    case RULES_TYPE_ABSENCE:
        armed = 0;
        tarm = 0;
        for (i = 0; i < h->n; i++) {
            if (cond(r->cancel, h->idx[i])) {
                armed = 0;
            } else if (cond(r->trigger, h->idx[i])) {
                armed = 1;
                tarm = bev[h->idx[i]].t;
            }
        }
        return armed && r->after <= now - tarm && now - tarm < r->within;

    default:
        /* completions are tracked as events arrive (see main loop) */
        return 0;
    }
}


/* ---- the engine side: an in-memory map of state blobs ---------------- */

typedef struct {
    char          key[128];
    rules_buf_t   state;
    rules_buf_t   fstate;   /* the ops applied one by one, with walls */
    rules_buf_t   snap;     /* fstate when the log was last folded */
    rules_buf_t   log;      /* the entries since */
    int           nlog;
} slot_t;

static slot_t  slots[64];
static int     nslots;


static slot_t *
slot_of(const char *key)
{
    int  i;

    for (i = 0; i < nslots; i++) {
        if (strcmp(slots[i].key, key) == 0) {
            return &slots[i];
        }
    }

    memset(&slots[nslots], 0, sizeof(slot_t));
    snprintf(slots[nslots].key, sizeof(slots[nslots].key), "%s", key);

    return &slots[nslots++];
}


/* ---- the log fold against the ops applied one by one ----------------- */

static unsigned
frnd(unsigned n)
{
    return rnd_of(&frng, n);
}


static int
buf_same(const rules_buf_t *a, const rules_buf_t *b)
{
    return a->len == b->len
           && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}


static int
buf_set(rules_buf_t *b, const rules_buf_t *from)
{
    b->len = 0;
    return rules_buf_append(b, from->data, from->len);
}


/* The slot's R2 value: its snapshot and its log. */
static int
fold_value(const slot_t *sl, rules_buf_t *v)
{
    unsigned char  h[RULES_VALUE_HEADER_LEN];

    memcpy(h, RULES_VALUE_MAGIC, 2);
    rules_put_f64(h + 2, 7.0);
    rules_put_f64(h + 10, 0.0);
    rules_put_u32(h + 18, (uint32_t) sl->snap.len);

    v->len = 0;

    return rules_buf_append(v, h, sizeof(h))
           || rules_buf_append(v, sl->snap.data, sl->snap.len)
           || rules_buf_append(v, sl->log.data, sl->log.len);
}


/*
 * Applies op to the slot one by one, and either logs it or folds the log
 * (with op as the event's own, or before it); 0 when the fold and the
 * ops one by one differ.
 */
static int
fold_check(unsigned long long seed, slot_t *sl, const rules_keyop_t *ko,
    int64_t now, int64_t wall, const rules_set_t *known,
    rules_log_work_t *w)
{
    static rules_buf_t  out, m1, m2, v;
    unsigned char       h[20];
    int                 changed, with_op;
    int64_t             pttl;
    rules_log_info_t    info;

    with_op = sl->nlog > 0 && frnd(4) == 0;
    m2.len = 0;

    if (rules_state_apply_known(sl->fstate.data, sl->fstate.len, ko->op,
                                ko->op_len, now, wall, known, &out, &changed,
                                &pttl, &m2)
        != 0)
    {
        printf("# seed %llu: rules_state_apply_known failed\n", seed);
        return 0;
    }

    if (with_op) {
        m1.len = 0;
        w->known = known;

        if (fold_value(sl, &v) != 0
            || rules_log_fold(v.data, v.len, ko->op, ko->op_len, now, wall,
                              1, 0, w, &m1, &info)
               != 0)
        {
            printf("# seed %llu: fold failed\n", seed);
            return 0;
        }

        if (!buf_same(w->state, &out) || !buf_same(&m1, &m2))
        {
            printf("# seed %llu: a log of %d entries and an op: the fold "
                   "differs (state %zu/%zu bytes, matched %zu/%zu)\n",
                   seed, sl->nlog, w->state->len, out.len, m1.len, m2.len);
            return 0;
        }
    }

    if (buf_set(&sl->fstate, &out) != 0) {
        return 0;
    }

    if (with_op) {
        sl->nlog = 0;
        sl->log.len = 0;
        return buf_set(&sl->snap, &sl->fstate) == 0;
    }

    rules_put_f64(h, (double) wall);
    rules_put_f64(h + 8, (double) now);
    rules_put_u32(h + 16, (uint32_t) ko->op_len);

    if (rules_buf_append(&sl->log, h, sizeof(h)) != 0
        || rules_buf_append(&sl->log, ko->op, ko->op_len) != 0)
    {
        return 0;
    }

    if (++sl->nlog < 1 + (int) frnd(10)) {
        return 1;
    }

    w->known = known;

    if (fold_value(sl, &v) != 0
        || rules_log_fold(v.data, v.len, NULL, 0, 0, 0, 0, 0, w, &m1, &info)
           != 0)
    {
        printf("# seed %llu: fold failed\n", seed);
        return 0;
    }

    if (!buf_same(w->state, &sl->fstate)
        || info.entries != (size_t) sl->nlog)
    {
        printf("# seed %llu: a log of %d entries: the fold differs "
               "(state %zu/%zu bytes)\n", seed, sl->nlog, w->state->len,
               sl->fstate.len);
        return 0;
    }

    sl->nlog = 0;
    sl->log.len = 0;

    return buf_set(&sl->snap, &sl->fstate) == 0;
}


static int
run_round(unsigned long long seed, int nrules, int nevents)
{
    static char        json[65536];
    static event_t     ev[MAXEV];
    static history_t   hist[MAXRULES][2][2];   /* rule, key field, value */
    char               err[RULES_ERR_LEN], key[128], got[512], want[512];
    rules_limits_t     limits = { 256, 4096 };
    rules_eventops_t   eo, eo_ref;
    rules_event_rc_t   rc, rc_ref;
    rules_result_t     res;
    rules_buf_t        out, matched, tmp, *st;
    size_t             i, k;
    int                e, changed, ok_round, ri, kf, kv, p;
    int64_t            pttl;
    const rules_rule_t *r;
    history_t          *h;
    rules_set_t        *other;
    const rules_set_t  *known;
    slot_t             *sl;
    static char         other_json[65536];
    rules_log_work_t    work;

    rng = seed;
    gen_rules(json, sizeof(json), nrules);
    gen_events(ev, nevents);

    brs = rules_load_buffer(json, strlen(json), "random", err, sizeof(err));

    if (brs == NULL) {
        printf("# seed %llu: generated rules do not load: %s\n", seed, err);
        return 0;
    }

    /* for the fold: the rules known, none, or another file's */

    frng = seed;
    gen_rules(other_json, sizeof(other_json), 1 + (int) frnd(MAXRULES));
    other = rules_load_buffer(other_json, strlen(other_json), "other", err,
                              sizeof(err));

    if (other == NULL) {
        printf("# seed %llu: generated rules do not load: %s\n", seed, err);
        rules_free(brs);
        return 0;
    }

    known = frnd(3) == 0 ? NULL : frnd(2) ? brs : other;

    /* distinct rules with shared records, or each with its own */
    rules_set_sharing(brs, (int) frnd(4) != 0);
    memset(&work, 0, sizeof(work));

    bev = ev;
    memset(hist, 0, sizeof(hist));
    memset(&eo, 0, sizeof(eo));
    memset(&eo_ref, 0, sizeof(eo_ref));
    memset(&out, 0, sizeof(out));
    memset(&matched, 0, sizeof(matched));
    rules_result_init(brs, &res);

    for (ri = 0; ri < MAXRULES; ri++) {
        for (kf = 0; kf < 2; kf++) {
            for (kv = 0; kv < 2; kv++) {
                hist[ri][kf][kv].last_completion = -1;
            }
        }
    }

    nslots = 0;
    ok_round = 1;

    for (e = 0; e < nevents && ok_round; e++) {
        values_of(brs, &ev[e], bvals[e]);

        /* the engine, with the condition index and without: the same ops */

        rules_set_indexing(brs, 0);
        rc_ref = rules_event_build(brs, &limits, bvals[e], ev[e].t, &eo_ref);
        rules_set_indexing(brs, 1);
        rc = rules_event_build(brs, &limits, bvals[e], ev[e].t, &eo);

        if (rc != rc_ref || eo.nkeyops != eo_ref.nkeyops) {
            printf("# seed %llu: event %d: the index changes the ops\n",
                   seed, e);
            ok_round = 0;
            break;
        }

        for (k = 0; k < eo.nkeyops; k++) {
            const rules_keyop_t  *a = &eo.keyops[k], *b = &eo_ref.keyops[k];

            if (a->group != b->group || a->op_len != b->op_len
                || a->ttl != b->ttl || a->writes != b->writes
                || a->key_value.len != b->key_value.len
                || (a->op_len && memcmp(a->op, b->op, a->op_len) != 0))
            {
                printf("# seed %llu: event %d: the index changes op %zu\n",
                       seed, e, k);
                ok_round = 0;
            }
        }

        if (!ok_round) {
            break;
        }

        rules_result_clear(&res);

        if (rc == RULES_EVENT_OK) {
            for (k = 0; k < eo.nkeyops; k++) {
                size_t klen = rules_state_key(brs, "", 0, eo.keyops[k].group,
                                              eo.keyops[k].key_value,
                                              (unsigned char *) key);
                key[klen] = '\0';
                sl = slot_of(key);
                st = &sl->state;
                matched.len = 0;

                if (rules_state_apply(st->data, st->len, eo.keyops[k].op,
                                      eo.keyops[k].op_len, ev[e].t, WALL,
                                      &out, &changed, &pttl, &matched) != 0)
                {
                    printf("# seed %llu: rules_state_apply failed\n", seed);
                    return 0;
                }

                if (changed) {
                    tmp = *st;
                    *st = out;
                    out = tmp;
                }

                if (!fold_check(seed, sl, &eo.keyops[k], ev[e].t,
                                WALL + ev[e].t + (int64_t) frnd(7) - 3,
                                known, &work))
                {
                    ok_round = 0;
                }

                rules_result_add_digests(brs, &res, matched.data,
                                         matched.len);
            }
        }

        /* the brute force */

        got[0] = '\0';
        want[0] = '\0';

        for (i = 0; i < rules_count(brs); i++) {
            r = rules_rule(brs, i);
            kf = strcmp(rules_field_name(brs, r->key_field), "uid") ? 1 : 0;

            if (ev[e].v[kf][0] == '\0') {
                continue;     /* no key value: not evaluated */
            }

            kv = ev[e].v[kf][1] == '2' ? 1 : 0;
            h = &hist[i][kf][kv];
            h->idx[h->n++] = e;

            if (r->type == RULES_TYPE_SEQUENCE) {
                int completed = 0;

                p = h->n - 1;
                if (chain(r, h, (int) r->nsteps - 1, p, ev[e].t)) {
                    completed = 1;
                    h->last_completion = p;
                    if (!h->has_tc || ev[e].t > h->tc) {
                        h->tc = ev[e].t;     /* the latest completion */
                    }
                    h->has_tc = 1;
                }

                if (completed
                    || (h->has_tc && r->hold > 0 && ev[e].t - h->tc < r->hold))
                {
                    strcat(want, r->id);
                    strcat(want, " ");
                }

            } else if (brute_matched(r, h, ev[e].t)) {
                strcat(want, r->id);
                strcat(want, " ");
            }
        }

        for (i = 0; i < rules_count(brs); i++) {
            if (rules_result_is_set(&res, i)) {
                strcat(got, rules_rule(brs, i)->id);
                strcat(got, " ");
            }
        }

        if (strcmp(got, want) != 0) {
            printf("# seed %llu: event %d (t=%lld uid=%s ip=%s a=%s b=%s "
                   "c=%s n=%s)\n#   engine: [%s]\n#   brute:  [%s]\n"
                   "#   rules: %s\n", seed, e, (long long) ev[e].t,
                   ev[e].v[0], ev[e].v[1], ev[e].v[2], ev[e].v[3], ev[e].v[4],
                   ev[e].v[5], got, want, json);
            ok_round = 0;
        }
    }

    for (p = 0; p < nslots; p++) {
        rules_buf_free(&slots[p].state);
        rules_buf_free(&slots[p].fstate);
        rules_buf_free(&slots[p].snap);
        rules_buf_free(&slots[p].log);
    }

    rules_log_work_free(&work);
    rules_free(other);

    rules_buf_free(&out);
    rules_buf_free(&matched);
    rules_eventops_free(&eo);
    rules_eventops_free(&eo_ref);
    rules_result_free(&res);
    rules_free(brs);

    return ok_round;
}


int
main(void)
{
    unsigned long long  seed, first;
    const char         *s;
    int                 iters, i, passed;

    s = getenv("RULES_RANDOM_SEED");
    first = s ? strtoull(s, NULL, 10) : 1;
    s = getenv("RULES_RANDOM_ITERS");
    iters = s ? atoi(s) : 3000;

    passed = 0;

    for (i = 0; i < iters; i++) {
        seed = first + (unsigned long long) i;
        if (run_round(seed, 1 + (int) (seed % MAXRULES), 40 + (int) (seed % 120)))
        {
            passed++;
        } else {
            break;
        }
    }

    is_int(passed, iters, "%d random rule files and streams: the state "
           "machines agree with the brute force on every event, and the "
           "logs of their ops fold to the states the ops make one by one",
           iters);

    return done_testing();
}
