/*
 * Which records a state holds: an update that leaves a rule's record
 * meaning what no record means (a sequence with no partial match and no
 * completion, an absence cancelled) writes no record, and removes the one
 * there was; the state is then unchanged, or smaller.  A state written
 * by an earlier version, with such records in it, still reads the same.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules_engine.h"
#include "rules_state.h"
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


/* The event's one key op applied to state; 0 on success. */
static int
event(const char *type, int64_t now)
{
    rules_limits_t   limits = { 256, 4096 };
    rules_str_t      vals[8];
    rules_buf_t      tmp;
    int64_t          pttl;
    int              fu, ft;

    memset(vals, 0, sizeof(vals));
    fu = rules_field_index(rs, "uid", 3);
    ft = rules_field_index(rs, "type", 4);
    vals[fu].data = (const unsigned char *) "u1";
    vals[fu].len = 2;
    vals[ft].data = (const unsigned char *) type;
    vals[ft].len = strlen(type);

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
        buf[n++] = r ? r->id[0] : '?';
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

    rules_buf_free(&state);
    rules_buf_free(&out);
    rules_buf_free(&matched);
    rules_eventops_free(&eo);
    rules_free(rs);

    return done_testing();
}
