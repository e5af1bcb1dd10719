/*
 * Which records a state holds: an update that leaves a rule's record
 * meaning what no record means (a sequence with no partial match and no
 * completion, an absence cancelled) writes no record, and removes the one
 * there was; the state is then unchanged, or smaller.  A state written
 * by an earlier version, with such records in it, still reads the same.
 */

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules_engine.h"
#include "rules_state.h"
#include "rules_log.h"
#include "tap.h"


#define WALL  1000000000000LL

static const char  *rules_json =
    "{\"rules\":["
    "{\"id\":\"seq\",\"kind\":\"segment\",\"key\":\"uid\","
    " \"type\":\"sequence\",\"steps\":["
    "  {\"where\":{\"field\":\"type\",\"eq\":\"view\"}},"
    "  {\"where\":{\"field\":\"type\",\"eq\":\"cart\"},\"strict\":true},"
    "  {\"where\":{\"field\":\"type\",\"eq\":\"purchase\"}}],"
    " \"within\":\"1h\",\"hold\":\"1d\"},"
    "{\"id\":\"abs\",\"kind\":\"segment\",\"key\":\"uid\","
    " \"type\":\"absence\","
    " \"trigger\":{\"field\":\"type\",\"eq\":\"view\"},"
    " \"cancel\":{\"field\":\"type\",\"eq\":\"purchase\"},"
    " \"after\":\"10m\",\"within\":\"7d\"}"
    "]}";

static rules_set_t       *rs;
static rules_eventops_t   eo;
static rules_buf_t        state, out, matched;
static int                changed;
static size_t             value_max = 4096;

static const char *records(void);


/* The event's one key op applied to state; 0 on success. */
static int
event_path(const char *type, const char *path, int64_t now)
{
    rules_limits_t   limits = { 256, value_max };
    rules_str_t      vals[8];
    rules_buf_t      tmp;
    int64_t          pttl;
    int              fu, ft, fp;

    memset(vals, 0, sizeof(vals));
    fu = rules_field_index(rs, "uid", 3);
    ft = rules_field_index(rs, "type", 4);
    fp = rules_field_index(rs, "path", 4);
    vals[fu].data = (const unsigned char *) "u1";
    vals[fu].len = 2;

    if (ft >= 0) {
        vals[ft].data = (const unsigned char *) type;
        vals[ft].len = strlen(type);
    }

    if (fp >= 0 && path) {
        vals[fp].data = (const unsigned char *) path;
        vals[fp].len = strlen(path);
    }

    if (rules_event_build(rs, &limits, vals, now, &eo) != RULES_EVENT_OK
        || eo.nkeyops != 1)
    {
        return -1;
    }

    matched.len = 0;

    if (rules_state_apply(state.data, state.len, eo.keyops[0].op,
                          eo.keyops[0].op_len, now, WALL + now, &out,
                          &changed, &pttl, &matched)
        != 0)
    {
        return -1;
    }

    if (changed) {
        tmp = state;
        state = out;
        out = tmp;
    }

    return 0;
}


static int
event(const char *type, int64_t now)
{
    return event_path(type, NULL, now);
}


/* The ids of the rules matched by the last event, in file order. */
static const char *
matched_ids(void)
{
    static char          buf[64];
    const rules_rule_t  *r;
    size_t               i, j, n;

    n = 0;

    for (i = 0; i < rules_count(rs); i++) {
        r = rules_rule(rs, i);

        for (j = 0; j < matched.len; j += 8) {
            if (memcmp(matched.data + j, r->digest_bytes, 8) == 0
                && n + 2 < sizeof(buf))
            {
                buf[n++] = r->id[0];
                break;
            }
        }
    }

    buf[n] = '\0';

    return buf;
}


static rules_set_t *
load(const char *json)
{
    char  err[RULES_ERR_LEN];

    rules_set_t *set = rules_load_buffer(json, strlen(json), "records", err,
                                         sizeof(err));
    if (set == NULL) {
        printf("# %s\n", err);
    }

    return set;
}


/*
 * Distinct rules that differ only in id, kind and min share one record;
 * a rule that joins it later (added, or edited: a new digest) counts
 * from its first event, as a fresh record would.
 */
static void
shared_records(void)
{
    rules_set_t  *first, *second;

#define DISTINCT(id, kind, min)                                             \
    "{\"id\":\"" id "\",\"kind\":\"" kind "\",\"key\":\"uid\","              \
    "\"type\":\"distinct\",\"field\":\"path\",\"min\":" min ","               \
    "\"within\":\"1h\"}"

    first = load("{\"rules\":[" DISTINCT("a", "segment", "2") ","
                  DISTINCT("c", "fraud", "3") "]}");
    second = load("{\"rules\":[" DISTINCT("a", "segment", "2") ","
                  DISTINCT("b", "segment", "2") ","
                  DISTINCT("c", "fraud", "3") "]}");
    ok(first && second, "distinct rule files load");

    if (first == NULL || second == NULL) {
        rules_free(first);
        rules_free(second);
        return;
    }

    rules_set_sharing(first, 1);
    rules_set_sharing(second, 1);

    rs = first;
    state.len = 0;
    ok(event_path("x", "/1", 1000) == 0 && event_path("x", "/2", 2000) == 0,
       "two paths applied");
    is_str(records(), "S", "rules a and c: one shared record");
    is_str(matched_ids(), "a", "a (min 2) matched, c (min 3) not");

    /* a reload adds b, which differs from a in its id only */

    rs = second;
    ok(event_path("x", "/3", 3000) == 0, "a third path applied");
    is_str(records(), "S", "rules a, b and c: still one record");
    is_str(matched_ids(), "ac", "a and c matched on the record's history; "
           "b, added, counts from its first event: not yet");
    ok(event_path("x", "/4", 4000) == 0, "a fourth path applied");
    is_str(matched_ids(), "abc", "b matched on its own two paths");
    ok(event_path("x", "/4", 3700000) == 0, "the fourth path again, an "
           "hour on");
    is_str(matched_ids(), "", "each window holds one path: none matched");

    /* a rule that joins on an event older than the record's values */

    rs = first;
    state.len = 0;
    ok(event_path("x", "/1", 5000) == 0 && event_path("x", "/2", 6000) == 0,
       "two paths at 5 and 6 s");
    rs = second;
    ok(event_path("x", "/3", 1000) == 0, "a third path, at 1 s, after b "
       "is added");
    is_str(matched_ids(), "ac", "b counts from after the record's latest "
           "value: not matched on the history from before it");

    rs = NULL;
    rules_free(first);
    rules_free(second);
}


/* A file of one rule, its distinct records shared or not. */
static rules_set_t *
load_distinct(const char *rule, int share)
{
    char          json[512];
    rules_set_t  *set;

    snprintf(json, sizeof(json), "{\"rules\":[%s]}", rule);
    set = load(json);
    ok(set != NULL, "%s loads", rule);

    if (set) {
        rules_set_sharing(set, share);
    }

    return set;
}


/* A distinct record's values beyond 64 KB: the oldest dropped. */
static void
large_values(int share)
{
    char   path[4001], *big;
    int    i, rc;

    rs = load_distinct(DISTINCT("a", "segment", "20"), share);

    if (rs == NULL) {
        return;
    }

    state.len = 0;
    rc = 0;
    memset(path, 'v', sizeof(path) - 1);
    path[sizeof(path) - 1] = '\0';

    for (i = 0; i < 20; i++) {
        path[0] = (char) ('A' + i);
        rc |= event_path("x", path, 1000 + i);
        rc |= rules_state_validate(state.data, state.len);
    }

    ok(rc == 0, "20 values of 4000 bytes applied, the state well-formed "
       "after each");
    ok(state.len > 60000 && state.len < 65536 + 64,
       "the state holds as many as fit in 64 KB (%zu bytes)", state.len);
    is_str(matched_ids(), "", "min 20 of them do not fit: not matched");

    path[0] = 'T';
    ok(event_path("x", path, 2000) == 0, "the latest value again");
    ok(rules_state_validate(state.data, state.len) == 0,
       "still well-formed");

    rules_free(rs);

    /* a value that cannot fit at all: the others are kept */

    rs = load_distinct(DISTINCT("a", "segment", "2"), share);

    if (rs == NULL) {
        return;
    }

    state.len = 0;
    value_max = 65535;
    big = malloc(65531);

    if (big) {
        memset(big, 'w', 65530);
        big[65530] = '\0';
    }

    ok(big && event_path("x", "/a", 1000) == 0
       && event_path("x", "/b", 2000) == 0, "two short values");
    is_str(matched_ids(), "a", "matched");
    ok(big && event_path("x", big, 3000) == 0, "a value of 65530 bytes");
    is_str(matched_ids(), "a", "still matched: the value that cannot be "
           "kept is not, the others are");
    ok(rules_state_validate(state.data, state.len) == 0, "well-formed");
    free(big);
    value_max = 4096;

    rules_free(rs);
    rs = NULL;
}


/* The records of the state: digests of "seq" (s) and "abs" (a), in order. */
static const char *
records(void)
{
    static char           buf[64];
    const unsigned char  *p, *end;
    const rules_rule_t   *r;
    size_t                n;

    n = 0;
    p = state.data + RULES_STATE_MAGIC_LEN;
    end = state.data + state.len;

    while (state.len && p + 35 <= end && n + 1 < sizeof(buf)) {
        r = rules_find_digest(rs, p);
        buf[n++] = p[8] == RULES_RECORD_SHARED ? 'S' : r ? r->id[0] : '?';
        p += 35 + (p[33] | p[34] << 8);
    }

    buf[n] = '\0';

    return buf;
}


/*
 * Appends the record a writer before 2026-12-04 wrote for "seq" on a
 * purchase with nothing to complete: no completion, no partial match.
 */
static int
empty_sequence_record(rules_buf_t *b)
{
    unsigned char        rec[35 + 42];
    const rules_rule_t  *r;
    double               v;
    int                  i;

    r = rules_find_id(rs, "seq", 3);

    if (r == NULL) {
        return -1;
    }

    memset(rec, 0, sizeof(rec));
    memcpy(rec, r->digest_bytes, 8);
    rec[8] = RULES_TYPE_SEQUENCE;
    v = (double) (WALL + 86400000LL * 3);
    memcpy(rec + 9, &v, 8);                 /* expire */
    rec[33] = 42;                           /* plen */
    rec[35] = 3;                            /* nsteps */
    v = -1;

    for (i = 0; i < 5; i++) {               /* tc, then S[1..2], F[1..2] */
        memcpy(rec + 35 + (i ? 10 + 8 * (i - 1) : 1), &v, 8);
    }

    return rules_buf_append(b, rec, sizeof(rec));
}


/* the bytes the heap holds in use, mapped blocks included */
static size_t
heap_in_use(void)
{
    struct mallinfo2  mi;

    mi = mallinfo2();

    return mi.uordblks + mi.hblkhd;
}


/*
 * A large foreign value under a state key ("R1" and 35 MB of garbage):
 * it starts a state of its own, and costs neither a dozen times its size
 * (record arrays sized at one record per 35 bytes) nor memory kept after
 * the next fold.  And a state of more than RULES_STATE_MAX_RECORDS
 * records does not parse.
 */
static void
foreign_values(void)
{
    size_t             base, len, i;
    unsigned char     *v, rec[37];
    rules_buf_t        st = { NULL, 0, 0 };
    rules_log_work_t   w;
    rules_log_info_t   info;
    static const unsigned char  small[] = "R1";

    memset(&w, 0, sizeof(w));
    len = 35 << 20;
    v = malloc(len);
    ok(v != NULL, "a 35 MB value");

    if (v == NULL) {
        return;
    }

    memset(v, 0xff, len);
    memcpy(v, "R1", 2);

    ok(rules_log_fold(small, 2, NULL, 0, 1000, 1000, 0, 0, &w, NULL, &info)
       == 0, "a fold of a small value");
    base = heap_in_use();

    ok(rules_log_fold(v, len, NULL, 0, 1000, 1000, 0, 0, &w, NULL, &info)
       == 0, "a fold of a 35 MB foreign value");
    is_int(w.state->len, 0, "it is no state");
    ok(heap_in_use() < base + len + (64 << 20),
       "it costs its copy and bounded record arrays (%zu MB over)",
       (heap_in_use() - base) >> 20);

    ok(rules_log_fold(small, 2, NULL, 0, 1000, 1000, 0, 0, &w, NULL, &info)
       == 0, "the next fold");
    ok(heap_in_use() < base + (1 << 20),
       "after it, nothing of the large one is kept (%zu KB over)",
       (heap_in_use() > base ? heap_in_use() - base : 0) >> 10);

    free(v);
    rules_log_work_free(&w);

    /* count records of no time (digest, type 1, expire, from, until,
     * plen 2, n 0) */

    memset(rec, 0, sizeof(rec));
    rec[8] = RULES_TYPE_COUNT;
    rec[33] = 2;

    ok(rules_buf_append(&st, RULES_STATE_MAGIC, RULES_STATE_MAGIC_LEN) == 0,
       "a state");

    for (i = 0; i < RULES_STATE_MAX_RECORDS; i++) {
        rec[0] = (unsigned char) i;
        rec[1] = (unsigned char) (i >> 8);
        rec[2] = (unsigned char) (i >> 16);

        if (rules_buf_append(&st, rec, sizeof(rec)) != 0) {
            break;
        }
    }

    is_int(rules_state_validate(st.data, st.len), 0,
           "a state of RULES_STATE_MAX_RECORDS records parses");
    ok(rules_buf_append(&st, rec, sizeof(rec)) == 0, "one more record");
    is_int(rules_state_validate(st.data, st.len), -1,
           "a state of one more does not");

    rules_buf_free(&st);
}


int
main(void)
{
    char  err[RULES_ERR_LEN];

    rs = rules_load_buffer(rules_json, strlen(rules_json), "records", err,
                           sizeof(err));
    ok(rs != NULL, "rules load (%s)", rs ? "" : err);

    if (rs == NULL) {
        return 1;
    }

    /* no state: a purchase touches both rules, and leaves nothing */

    ok(event("purchase", 1000) == 0, "purchase applied");
    is_int(changed, 0, "a purchase with nothing to complete or cancel: "
           "unchanged");
    is_int(state.len, 0, "and no state written");

    /* a cart with no view before it: the strict step has nothing to extend */

    ok(event("cart", 2000) == 0, "cart applied");
    is_int(changed, 0, "a cart that continues no match: unchanged");

    /* a view starts the sequence and arms the absence */

    ok(event("view", 3000) == 0, "view applied");
    is_int(changed, 1, "a view: changed");
    is_str(records(), "sa", "a view: a sequence and an absence record");

    /* a cart, then a purchase: it completes the sequence (kept: its
     * hold) and cancels the absence (removed) */

    ok(event("cart", 3500) == 0, "cart applied");
    is_str(records(), "sa", "a cart after the view: the sequence goes on");
    ok(event("purchase", 4000) == 0, "purchase applied");
    is_int(changed, 1, "a purchase after a view: changed");
    is_str(records(), "s", "the completed sequence kept, the cancelled "
           "absence removed");
    is_int(matched.len, 8, "the sequence matched");

    /* a second purchase: the sequence has no partial match left, but its
     * completion is held: the record stays */

    ok(event("purchase", 5000) == 0, "purchase applied");
    is_str(records(), "s", "a held completion stays");

    /* an earlier version's state: the sequence's record holding nothing */

    state.len = 0;
    ok(rules_buf_append(&state, RULES_STATE_MAGIC, RULES_STATE_MAGIC_LEN)
       == 0 && empty_sequence_record(&state) == 0, "an earlier state made");
    ok(event("page", 6000) == 0, "page applied");
    is_int(changed, 0, "an event that touches no rule: unchanged");
    is_str(records(), "s", "an untouched record holding nothing is kept "
           "as it is");
    ok(event("purchase", 7000) == 0, "purchase applied");
    is_int(changed, 1, "the rule's next update: changed");
    is_int(state.len, 0, "the record goes, and the key with it");
    is_int(matched.len, 0, "nothing matched");

    rules_free(rs);
    shared_records();
    large_values(0);
    large_values(1);
    foreign_values();

    rules_buf_free(&state);
    rules_buf_free(&out);
    rules_buf_free(&matched);
    rules_eventops_free(&eo);

    return done_testing();
}
