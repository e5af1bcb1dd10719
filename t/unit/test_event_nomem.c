/*
 * Out of memory while an event is evaluated, a JSON body parsed or an
 * item added to a call: the engine says so (RULES_EVENT_NOMEM,
 * RULES_JSON_NOMEM, -1), distinct from an invalid event, and what it
 * reuses stays usable (a call is as it was before the item).  The allocations fail
 * on demand (failing_alloc.h).
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "rules_engine.h"
#include "rules_internal.h"
#include "rules_json_event.h"
#include "rules_log.h"
#include "failing_alloc.h"
#include "tap.h"


static const char  rules_json[] =
    "{\"rules\":["
    "{\"id\":\"twice\",\"kind\":\"segment\",\"key\":\"uid\","
    "\"type\":\"count\",\"where\":{\"field\":\"type\",\"eq\":\"page\"},"
    "\"min\":2,\"within\":\"7d\"},"
    "{\"id\":\"burst\",\"kind\":\"fraud\",\"key\":\"ip\",\"type\":\"count\","
    "\"min\":21,\"within\":\"10s\"},"
    "{\"id\":\"many\",\"kind\":\"fraud\",\"key\":\"device\","
    "\"type\":\"distinct\",\"field\":\"uid\",\"min\":5,\"within\":\"1h\"}"
    "]}";


static rules_set_t     *rs;
static rules_str_t      vals[8];
static rules_limits_t   limits = { 256, 4096 };


static void
set_field(const char *name, const char *value)
{
    int  f;

    f = rules_field_index(rs, name, strlen(name));

    if (f < 0) {
        printf("# no field %s\n", name);
        exit(1);
    }

    vals[f].data = (const unsigned char *) value;
    vals[f].len = strlen(value);
}


/* The event's operations, for comparing two builds. */
static size_t
ops_text(const rules_eventops_t *eo, unsigned char *out, size_t size)
{
    size_t  i, n;

    n = 0;

    for (i = 0; i < eo->nkeyops; i++) {
        if (n + eo->keyops[i].op_len + 1 > size) {
            return (size_t) -1;
        }

        out[n++] = (unsigned char) eo->keyops[i].group;
        memcpy(out + n, eo->keyops[i].op, eo->keyops[i].op_len);
        n += eo->keyops[i].op_len;
    }

    return n;
}


/*
 * Each allocation of a build, in turn, fails on a fresh rules_eventops_t:
 * RULES_EVENT_NOMEM with no operation left in it, and the next build on
 * the same one gives what a build that never failed gives.
 */
static void
test_event_build(void)
{
    long               k, nomem;
    size_t             want_len, got_len;
    rules_event_rc_t   rc;
    rules_eventops_t   ref, eo;
    unsigned char      want[4096], got[4096];

    memset(vals, 0, sizeof(vals));
    set_field("uid", "u1");
    set_field("ip", "10.0.0.1");
    set_field("device", "d1");
    set_field("type", "page");

    memset(&ref, 0, sizeof(ref));
    rc = rules_event_build(rs, &limits, vals, 1000, &ref);
    ok(rc == RULES_EVENT_OK && ref.nkeyops == 3,
       "reference build: three key operations");
    want_len = ops_text(&ref, want, sizeof(want));

    nomem = 0;

    for (k = 0; k < 16; k++) {
        memset(&eo, 0, sizeof(eo));

        alloc_budget = k;
        rc = rules_event_build(rs, &limits, vals, 1000, &eo);
        alloc_budget = -1;

        if (rc == RULES_EVENT_OK) {
            break;
        }

        nomem++;
        ok(rc == RULES_EVENT_NOMEM && eo.nkeyops == 0,
           "allocation %ld fails: RULES_EVENT_NOMEM, no operation", k + 1);

        rc = rules_event_build(rs, &limits, vals, 1000, &eo);
        got_len = ops_text(&eo, got, sizeof(got));
        ok(rc == RULES_EVENT_OK && got_len == want_len
           && memcmp(got, want, want_len) == 0,
           "allocation %ld failed: the next build is whole", k + 1);

        rules_eventops_free(&eo);
    }

    ok(nomem >= 2 && k < 16, "%ld allocations of a build each failed", nomem);

    /* an operation that grows a used buffer past its size */

    memset(&eo, 0, sizeof(eo));
    rc = rules_event_build(rs, &limits, vals, 1000, &eo);
    set_field("uid", "a-value-of-two-hundred-bytes-..........................."
              "........................................................."
              "...........................................................");
    eo.buf_size = eo.buf_len;           /* full: the next entry grows it */

    alloc_budget = 0;
    rc = rules_event_build(rs, &limits, vals, 1000, &eo);
    alloc_budget = -1;
    ok(rc == RULES_EVENT_NOMEM && eo.nkeyops == 0,
       "a buffer that cannot grow mid-event: RULES_EVENT_NOMEM, no operation");

    rc = rules_event_build(rs, &limits, vals, 1000, &eo);
    ok(rc == RULES_EVENT_OK && eo.nkeyops == 3,
       "and the next build on it is whole");

    rules_eventops_free(&eo);
    rules_eventops_free(&ref);
}


/*
 * The body parsed with its first allocation (from "first") failing, then
 * the next, and so on, while each parse says out of memory; returns the
 * count at which one ended otherwise (or none failed), its code in *rc.
 */
static long
parse_failing_each(const char *body, long first, rules_json_rc_t *rc,
    char *err)
{
    long                  k;
    rules_json_events_t   ev;

    for (k = first; k < 4000; k++) {
        alloc_budget = k;
        alloc_failed = 0;
        *rc = rules_json_events_parse(rs, body, strlen(body), NULL, 10, &ev,
                                      err);
        alloc_budget = -1;
        rules_json_events_free(&ev);

        if (alloc_failed == 0 || *rc != RULES_JSON_NOMEM) {
            break;
        }
    }

    return k;
}


/* json_string() with its allocation failing (the later ones would not) */
static json_t *
json_string_failing(const char *value)
{
    json_t  *j;

    fail_once = 1;
    alloc_budget = 0;
    j = json_string(value);
    alloc_budget = -1;
    fail_once = 0;

    return j;
}


static void
test_json(void)
{
    long                  k;
    char                  err[RULES_ERR_LEN];
    rules_json_rc_t       rc;
    rules_json_events_t   ev;
    static const char     body[] =
        "[{\"uid\":\"u1\",\"type\":\"page\",\"n\":12},"
        "{\"uid\":\"u2\",\"type\":\"view\",\"ip\":\"10.0.0.2\"}]";
    char                  long_body[4200];
    json_t               *a, *b, *c;

    /* a string that grows jansson's buffer eight times */

    memcpy(long_body, "{\"uid\":\"", 8);
    memset(long_body + 8, 'x', 4096);
    memcpy(long_body + 8 + 4096, "\"}", 3);

    rc = rules_json_events_parse(rs, body, strlen(body), NULL, 10, &ev, err);
    ok(rc == RULES_JSON_OK && ev.nevents == 2, "the body parses");
    rules_json_events_free(&ev);

    /* jansson's first allocation */

    alloc_budget = 0;
    rc = rules_json_events_parse(rs, body, strlen(body), NULL, 10, &ev, err);
    alloc_budget = -1;
    is_int(rc, RULES_JSON_NOMEM, "jansson out of memory: RULES_JSON_NOMEM, "
           "not invalid JSON (%s)", err);
    rules_json_events_free(&ev);

    /*
     * each of jansson's allocations in turn: out of memory every time
     * (jansson's lexer reports some as a syntax error; rules_json_alloc.c
     * tells), and the parse never succeeds with one missing
     */

    k = parse_failing_each(body, 1, &rc, err);

    ok(rc == RULES_JSON_OK && alloc_failed == 0 && k > 1,
       "each of the parse's %ld allocations failed: out of memory every "
       "time, never invalid JSON (%s)", k, err);

    /*
     * one allocation fails and the later ones would not: jansson's lexer
     * goes on without the character it could not save, and its string
     * scanner then reads the cut text past its end (ASan: a heap
     * overflow); the failure kept for the rest of the parse ends it
     */

    fail_once = 1;
    k = parse_failing_each(long_body, 0, &rc, err);
    fail_once = 0;

    ok(rc == RULES_JSON_OK && alloc_failed == 0 && k > 1,
       "a long string's allocations failed one at a time (%ld): out of "
       "memory every time (%s)", k, err);

    /* the failure kept: the next allocation fails though malloc() would
     * give it; jansson's own functions back after the end */

    rules_json_begin();
    a = json_string_failing("first");
    b = json_string("second");
    k = rules_json_end();
    c = json_string("after");

    ok(a == NULL && b == NULL && k == 1 && c != NULL,
       "after a failed allocation jansson's next one fails too, and the "
       "end tells (%ld); the calls after the end allocate", k);

    json_decref(a);
    json_decref(b);
    json_decref(c);

    /* nested: the inner end tells, the failure holds to the outer one */

    rules_json_begin();
    rules_json_begin();
    a = json_string_failing("first");
    k = rules_json_end();
    b = json_string("second");
    k = k * 10 + rules_json_end();
    c = json_string("after");

    ok(a == NULL && b == NULL && k == 11 && c != NULL,
       "nested: the inner end tells, the outer pair stays failed and "
       "tells (%ld); the calls after it allocate", k);

    json_decref(a);
    json_decref(b);
    json_decref(c);

    /* the engine's own (calloc()) after jansson's: out of memory */

    calloc_only = 1;

    for (k = 0; k < 2; k++) {
        alloc_budget = k;
        rc = rules_json_events_parse(rs, body, strlen(body), NULL, 10, &ev,
                                     err);
        alloc_budget = -1;
        rules_json_events_free(&ev);
        is_int(rc, RULES_JSON_NOMEM, "the events' arrays out of memory (%ld): "
               "RULES_JSON_NOMEM", k + 1);
    }

    calloc_only = 0;
}


/*
 * The rules file: out of memory in jansson is said as such, never as a
 * syntax error at a place of the file, nor loaded with a rule whose copy
 * lost a member (one allocation failing, the later ones passing, as
 * above).
 */
static void
test_rules_file(void)
{
    long          k, said;
    char          err[RULES_ERR_LEN];
    rules_set_t  *r;

    said = 0;
    fail_once = 1;

    for (k = 0; k < 4000; k++) {
        alloc_budget = k;
        alloc_failed = 0;
        r = rules_load_buffer(rules_json, strlen(rules_json), "test", err,
                              sizeof(err));
        alloc_budget = -1;

        if (alloc_failed == 0) {
            break;
        }

        if (r != NULL || strstr(err, "out of memory") == NULL) {
            /* loaded without one of its allocations (a copy or a dump of
             * a rule short of a member), or a syntax error said */
            break;
        }

        said++;
    }

    fail_once = 0;

    ok(alloc_failed == 0 && r != NULL && said == k && k > 1,
       "each of the rules file's %ld allocations failed in turn: out of "
       "memory every time (%ld), never loaded without it nor a syntax "
       "error (%s)", k, said, r && alloc_failed == 0 ? "" : err);

    if (r) {
        rules_free(r);
    }
}


/* A call's whole argv as one text, for comparing two calls. */
static size_t
batch_text(const rules_batch_t *b, unsigned char *out, size_t size)
{
    char          nbuf[32];
    size_t        i, n, argc;
    static size_t       lens[512];
    static const char  *argv[512];

    argc = rules_batch_argc(b);

    if (argc > 512) {
        return (size_t) -1;
    }

    rules_batch_argv(b, nbuf, argv, lens);

    n = 0;

    for (i = 0; i < argc; i++) {
        if (n + lens[i] + 1 > size) {
            return (size_t) -1;
        }

        memcpy(out + n, argv[i], lens[i]);
        n += lens[i];
        out[n++] = '|';
    }

    return n;
}


/* The key table holds each key once, and nothing else. */
static int
batch_table_sound(const rules_batch_t *b)
{
    size_t  h, used;

    used = 0;

    for (h = 0; h < b->table_size; h++) {
        if (b->table[h] > b->nkeys) {
            return 0;
        }

        used += (b->table[h] != 0);
    }

    return used == b->nkeys;
}


/*
 * Items of every kind added to a call, each with every allocation it
 * makes failing in turn (the key's table grown, the key's and arguments'
 * arrays, the bytes): each failure leaves the call as it was (no key
 * without an item, no bytes, a sound table), for new keys and keys seen
 * before, and the call finally built is the one built without failures.
 */
static void
test_batch_add(void)
{
    long                  i, k, rc, fails, kept, seen_fails, grown_fails;
    size_t                n, nref, nkeys, nargs, bytes, tsize;
    rules_item_t          item;
    rules_batch_t         b, ref;
    static unsigned char  op[4096], state[8192], t1[1 << 20], t2[1 << 20];
    static const rules_item_kind_t  kinds[] = {
        RULES_ITEM_WRITE, RULES_ITEM_APPEND, RULES_ITEM_EXTEND,
        RULES_ITEM_COMPACT, RULES_ITEM_READ
    };
    char                  key[32];

    memset(op, 'o', sizeof(op));
    memset(state, 's', sizeof(state));
    memset(&b, 0, sizeof(rules_batch_t));
    memset(&ref, 0, sizeof(rules_batch_t));

    fails = 0;
    kept = 0;
    seen_fails = 0;
    grown_fails = 0;

    for (i = 0; i < 100; i++) {
        memset(&item, 0, sizeof(rules_item_t));
        item.kind = kinds[i % 5];
        item.now = 1000 + i;
        item.wall = 2000 + i;
        item.ttl = 60;
        item.gen = (double) i;
        item.newgen = (double) i + 1;
        item.op = op;
        item.op_len = 50 + (size_t) (i * 37 % 4000);
        item.state = state;
        item.state_len = 100 + (size_t) (i * 997 % 8000);

        /* every fourth item a key seen before; 75 keys: the table grows */
        snprintf(key, sizeof(key), "key-%ld", i % 4 == 3 ? i - 2 : i);

        if (rules_batch_add(&ref, (const unsigned char *) key, strlen(key),
                            &item)
            != i)
        {
            break;
        }

        for (k = 0; ; k++) {
            nkeys = b.nkeys;
            nargs = b.nargs;
            bytes = rules_batch_bytes(&b);
            tsize = b.table_size;

            fail_once = 1;
            alloc_budget = k;
            alloc_failed = 0;
            rc = rules_batch_add(&b, (const unsigned char *) key,
                                 strlen(key), &item);
            alloc_budget = -1;
            fail_once = 0;

            if (alloc_failed == 0) {
                break;
            }

            fails++;
            seen_fails += (i % 4 == 3);
            grown_fails += (b.table_size > tsize);

            if (rc == -1 && b.nkeys == nkeys && b.nargs == nargs
                && rules_batch_bytes(&b) == bytes && batch_table_sound(&b))
            {
                kept++;
            }
        }

        if (rc != i) {
            break;
        }
    }

    nref = batch_text(&ref, t1, sizeof(t1));
    n = batch_text(&b, t2, sizeof(t2));

    ok(i == 100 && kept == fails && seen_fails > 0 && grown_fails > 0,
       "100 items added with each of their %ld allocations failing in "
       "turn (%ld for a key seen before, %ld after the table grew): the "
       "call as it was after each failure (%ld)", fails, seen_fails,
       grown_fails, kept);
    ok(n != (size_t) -1 && n == nref && memcmp(t1, t2, n) == 0
       && b.nkeys == ref.nkeys && batch_table_sound(&b),
       "the call built through the failures is the one built without "
       "(%zu keys, %zu bytes of arguments)", b.nkeys, n);

    rules_batch_free(&b);
    rules_batch_free(&ref);
}

int
main(void)
{
    char  err[RULES_ERR_LEN];

    rs = rules_load_buffer(rules_json, strlen(rules_json), "test", err,
                           sizeof(err));

    if (rs == NULL) {
        printf("# cannot load the rules: %s\n", err);
        return 1;
    }

    test_event_build();
    test_json();
    test_rules_file();
    test_batch_add();

    rules_free(rs);

    return done_testing();
}
