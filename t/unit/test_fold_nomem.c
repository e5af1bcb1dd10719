/*
 * Out of memory while a key's value is folded (rules_log_reply(), a
 * worker that did not have the key cached): the fold fails (-1) and the
 * key is not cached, at whichever allocation it runs out.  It used to
 * skip the op it could not apply and go on: the event was answered ok
 * from a state without the entry, and the state cached under the
 * value's own gen and length, so that the key's next whole write
 * replaced the value and the entry was lost for good (t/068 saw it
 * once: a uid's second event without "twice").  The allocations fail on
 * demand (failing_alloc.h): each of the fold's in turn.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules_engine.h"
#include "rules_internal.h"
#include "rules_log.h"
#include "rules_cache.h"
#include "failing_alloc.h"
#include "tap.h"


static const char  rules_json[] =
    "{\"rules\":["
    "{\"id\":\"twice\",\"kind\":\"segment\",\"key\":\"uid\","
    " \"type\":\"count\",\"min\":2,\"within\":\"1h\"},"
    "{\"id\":\"seq\",\"kind\":\"segment\",\"key\":\"uid\","
    " \"type\":\"sequence\",\"steps\":["
    "  {\"where\":{\"field\":\"path\",\"eq\":\"/a\"}},"
    "  {\"where\":{\"field\":\"path\",\"prefix\":\"/b\"}}],"
    " \"within\":\"1h\"}"
    "]}";

#define WALL  1700000000000LL


/* The op of the uid key of an event of u1 at path, at now. */
static const rules_keyop_t *
uid_op(rules_set_t *rs, rules_eventops_t *eo, const char *path, int64_t now)
{
    int             fu, fp;
    rules_str_t     vals[8];
    rules_limits_t  limits = { 256, 4096 };

    memset(vals, 0, sizeof(vals));
    fu = rules_field_index(rs, "uid", 3);
    fp = rules_field_index(rs, "path", 4);
    vals[fu].data = (const unsigned char *) "u1";
    vals[fu].len = 2;
    vals[fp].data = (const unsigned char *) path;
    vals[fp].len = strlen(path);

    if (rules_event_build(rs, &limits, vals, now, eo) != RULES_EVENT_OK
        || eo->nkeyops != 1)
    {
        return NULL;
    }

    return &eo->keyops[0];
}


int
main(void)
{
    int                    rc, cached, clean, twice, seq, wrong, failed;
    long                   k, ran;
    char                   err[RULES_ERR_LEN], ids[64];
    double                 gen, stamp;
    size_t                 len, logged, vlen;
    rules_str_t            key, state;
    rules_set_t           *rs;
    rules_buf_t            matched;
    rules_item_t           item, compact;
    rules_cache_t         *cache;
    rules_result_t         res;
    rules_log_work_t       w;
    rules_eventops_t       eo1, eo2;
    const rules_keyop_t   *op1, *op2;
    unsigned char          value[1024];

    rs = rules_load_buffer(rules_json, sizeof(rules_json) - 1, "fold", err,
                           sizeof(err));
    ok(rs != NULL, "rules load (%s)", rs ? "" : err);

    if (rs == NULL) {
        return done_testing();
    }

    memset(&eo1, 0, sizeof(eo1));
    memset(&eo2, 0, sizeof(eo2));
    op1 = uid_op(rs, &eo1, "/a", 1001000);
    op2 = uid_op(rs, &eo2, "/b", 1002000);
    ok(op1 && op2, "the two events' ops built");

    if (op1 == NULL || op2 == NULL || rules_result_init(rs, &res) != 0) {
        return done_testing();
    }

    /* the value Redis holds after the first event's append to no value:
     * R2 gen stamp snaplen(0), then the entry: wall now oplen op */

    memcpy(value, "R2", 2);
    rules_put_f64(value + 2, 12345.0);
    rules_put_f64(value + 10, (double) WALL + 4500000);
    rules_put_u32(value + 18, 0);
    rules_put_f64(value + 22, (double) WALL);
    rules_put_f64(value + 30, 1001000.0);
    rules_put_u32(value + 38, (uint32_t) op1->op_len);
    memcpy(value + 42, op1->op, op1->op_len);
    vlen = 42 + op1->op_len;

    key.data = (const unsigned char *) "p:{uid:u1}";
    key.len = sizeof("p:{uid:u1}") - 1;

    wrong = 0;
    failed = 0;
    ran = 0;

    /* k = 0: nothing fails; then each allocation of the fold in turn,
     * until the fold makes fewer than k */

    for (k = 0; k < 200; k++) {
        cache = rules_cache_create(1 << 20);
        memset(&w, 0, sizeof(w));
        memset(&matched, 0, sizeof(matched));
        w.known = rs;

        if (cache == NULL
            || rules_log_plan(cache, key.data, key.len,
                              rules_cache_hash(key.data, key.len), op2,
                              1002000, WALL + 5, &w, &matched, &item)
               != 0
            || item.kind != RULES_ITEM_APPEND)
        {
            ok(0, "the second event, not cached, is an append");
            break;
        }

        /* only the k-th allocation fails (none for k = 0) */
        alloc_budget = k - 1;
        alloc_failed = 0;
        fail_once = 1;
        rc = rules_log_reply(cache, key, &item, value, vlen, WALL + 5, &w,
                             &matched, &compact);
        ran = (alloc_failed > 0);
        alloc_budget = -1;

        cached = rules_cache_get(cache, key.data, key.len,
                                 rules_cache_hash(key.data, key.len), &gen,
                                 &len, &stamp, &logged, &clean, &state);

        rules_result_clear(&res);
        ids[0] = '\0';

        if (rc == 0) {
            (void) rules_result_add_digests(rs, &res, matched.data,
                                            matched.len);
            (void) rules_result_ids(rs, &res, ids, sizeof(ids));
        }

        twice = strstr(ids, "twice") != NULL;
        seq = strstr(ids, "seq") != NULL;

        if (k == 0) {
            ok(rc == 0 && twice && seq && cached,
               "nothing failing: the fold matches twice and seq [%s], and "
               "caches the key", ids);

        } else if (rc == 0 && (!twice || !seq)) {
            wrong++;
            printf("# allocation %ld failing: the fold answered [%s]\n",
                   k, ids);

        } else if (rc != 0) {
            failed++;

            if (cached) {
                wrong++;
                printf("# allocation %ld failing: a failed fold left the "
                       "key cached\n", k);
            }
        }

        rules_log_work_free(&w);
        rules_buf_free(&matched);
        rules_cache_free(cache);

        if (k > 0 && !ran) {
            /* the fold made fewer than k allocations */
            break;
        }
    }

    ok(k > 1 && failed > 0, "the fold's allocations failed in turn (%ld, "
       "%d of them failing it)", k - 1, failed);
    is_int(wrong, 0, "no fold short of memory answered without the entry, "
           "or left the key cached");

    rules_result_free(&res);
    rules_eventops_free(&eo1);
    rules_eventops_free(&eo2);
    rules_free(rs);

    return done_testing();
}
