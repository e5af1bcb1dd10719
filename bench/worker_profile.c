/*
 * The worker's engine path, for instruction counts (bench/callgrind.sh,
 * make bench-callgrind): the engine calls an nginx worker makes per event
 * (ngx_http_rules_handler.c, ngx_http_rules_batch.c, ngx_http_rules_reply.c:
 * validate, the state keys and their hashes, rules_event_build(),
 * rules_log_plan() per key, calls of about 30 items, rules_log_reply()
 * with compactions queued, the result's digests and ids), with the state
 * cache, against an in-process stand-in for Redis that follows
 * rules_log.h's items (fake_redis_*(): subtract it).  Events as
 * bench/pixel.lua's.  Under callgrind only the events after the warm-up
 * are counted (--instr-atstart=no): unlike wall-clock numbers on a
 * shared VM, the count is the same from run to run within a few
 * instructions per event.
 *
 *   worker_profile RULES.json warmup events [cache_mb]
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <valgrind/callgrind.h>

#include "rules_engine.h"
#include "rules_state.h"
#include "rules_log.h"
#include "rules_cache.h"
#include "bench_common.h"


#define NSLOTS  (1 << 20)


static double
get_f64(const unsigned char *p)
{
    double  d;

    memcpy(&d, p, 8);
    return d;
}


static void
put_f64(unsigned char *p, double d)
{
    memcpy(p, &d, 8);
}


static void
put_u32(unsigned char *p, uint32_t v)
{
    memcpy(p, &v, 4);
}


static int
is_r2(const rules_buf_t *v)
{
    return v->len >= RULES_VALUE_HEADER_LEN
           && memcmp(v->data, "R2", 2) == 0;
}


/* appends wall + body (now oplen op) to the value, making it R2 */
static void
fake_redis_append(rules_buf_t *v, const rules_item_t *it, int64_t wall)
{
    unsigned char  h[RULES_VALUE_HEADER_LEN + 20];
    rules_buf_t    nv;
    double         stamp;

    if (!is_r2(v)) {
        memset(&nv, 0, sizeof(nv));
        memcpy(h, "R2", 2);
        put_f64(h + 2, it->newgen);
        put_f64(h + 10, 0);
        put_u32(h + 18, (uint32_t) v->len);
        rules_buf_append(&nv, h, RULES_VALUE_HEADER_LEN);
        rules_buf_append(&nv, v->data, v->len);
        rules_buf_free(v);
        *v = nv;
    }

    stamp = get_f64(v->data + 10);

    if ((double) wall + it->ttl > stamp) {
        put_f64(v->data + 10, (double) wall + it->ttl * 5 / 4);
    }

    put_f64(h, (double) wall);
    put_f64(h + 8, (double) it->now);
    put_u32(h + 16, (uint32_t) it->op_len);
    rules_buf_append(v, h, 20);
    rules_buf_append(v, it->op, it->op_len);
}


/*
 * One item: *one set when the reply is the integer 1 (or 0: *zero),
 * else *reply is the value before (len 0 and *nil: none).
 */
static __attribute__((noinline)) void
fake_redis_item(const rules_str_t *key, const rules_item_t *it, int64_t wall,
    int *one, int *nil, rules_buf_t *reply)
{
    rules_buf_t    *v;
    rules_buf_t     nv;
    unsigned char   h[RULES_VALUE_HEADER_LEN];
    int             match;

    v = bench_store(key->data, key->len);
    *one = 0;
    *nil = 0;
    reply->len = 0;

    match = is_r2(v) && get_f64(v->data + 2) == it->gen
            && (double) v->len == it->length;

    switch (it->kind) {

    case RULES_ITEM_COMPACT:
        if (is_r2(v) && get_f64(v->data + 2) == it->gen
            && (double) v->len >= it->length)
        {
            memset(&nv, 0, sizeof(nv));

            if (it->state_len == 0 && (double) v->len == it->length) {
                v->len = 0;
                *one = 1;
                return;
            }

            memcpy(h, "R2", 2);
            put_f64(h + 2, it->newgen);
            memcpy(h + 10, v->data + 10, 8);
            put_u32(h + 18, (uint32_t) it->state_len);
            rules_buf_append(&nv, h, RULES_VALUE_HEADER_LEN);
            rules_buf_append(&nv, it->state, it->state_len);
            rules_buf_append(&nv, v->data + (size_t) it->length,
                             v->len - (size_t) it->length);
            rules_buf_free(v);
            *v = nv;
            *one = 1;
        }

        return;

    case RULES_ITEM_WRITE:
        if (match) {
            v->len = 0;
            rules_buf_append(v, it->state, it->state_len);
            *one = 1;
            return;
        }

        break;

    case RULES_ITEM_EXTEND:
        if (match) {
            fake_redis_append(v, it, it->wall);
            *one = 1;
            return;
        }

        break;

    default:
        break;
    }

    if (v->len == 0) {
        *nil = 1;

    } else {
        rules_buf_append(reply, v->data, v->len);
    }

    if (it->kind != RULES_ITEM_READ) {
        fake_redis_append(v, it, wall);
    }
}


/* ---- the worker's side --------------------------------------------- */


typedef struct {
    unsigned        group;
    size_t          matched;    /* offset into bmatched */
    size_t          nmatched;
    int             event;      /* -1: a compaction */
} witem_t;


static rules_cache_t     *cache;
static rules_log_work_t   work;
static rules_buf_t        wmatched;
static rules_batch_t      batch;
static rules_buf_t        bmatched;
static witem_t            items[4096];
static rules_result_t     evres, reqres[64];
static rules_buf_t        rbuf;
static size_t             nhits, nmisses, nevicted, nwrites, nfall,
                          ncompact;


static void
queue(const rules_str_t *key, const rules_item_t *ri, int event,
    unsigned group, rules_buf_t *m)
{
    long  i;

    i = rules_batch_add(&batch, key->data, key->len, ri);

    if (i < 0) {
        abort();
    }

    items[i].group = group;
    items[i].event = event;
    items[i].matched = bmatched.len;
    items[i].nmatched = m ? m->len : 0;

    if (m) {
        rules_buf_append(&bmatched, m->data, m->len);
    }
}


static void
item_result(const rules_set_t *rs, int event, const unsigned char *d,
    size_t len)
{
    size_t  w;

    if (event < 0) {
        return;
    }

    rules_result_clear(&evres);
    (void) rules_result_add_digests(rs, &evres, d, len);

    for (w = 0; w < evres.words; w++) {
        reqres[event % 64].matched[w] |= evres.matched[w];
    }
}


static void defer_compact(const rules_str_t *k, const rules_item_t *c);


static void
send_batch(const rules_set_t *rs, int64_t wall)
{
    size_t         i, n;
    rules_str_t    key;
    rules_item_t   ri, compact;
    int            one, nil;

    n = rules_batch_items(&batch);

    /* the replies, then the module's reply handler */

    for (i = 0; i < n; i++) {
        rules_batch_item(&batch, i, &key, &ri);
        fake_redis_item(&key, &ri, wall, &one, &nil, &rbuf);

        if (ri.kind == RULES_ITEM_COMPACT) {
            continue;
        }

        if (RULES_ITEM_COMPUTED(ri.kind) && one) {
            nwrites++;
            item_result(rs, items[i].event,
                        bmatched.data + items[i].matched,
                        items[i].nmatched);
            continue;
        }

        if (RULES_ITEM_COMPUTED(ri.kind)) {
            nfall++;
        }

        if (rules_log_reply(cache, key, &ri, nil ? NULL : rbuf.data,
                            nil ? 0 : rbuf.len, wall, &work, &wmatched,
                            &compact)
            != 0)
        {
            abort();
        }

        if (compact.kind) {
            ncompact++;
            defer_compact(&key, &compact);
        }

        item_result(rs, items[i].event, wmatched.data, wmatched.len);
    }

    rules_batch_reset(&batch);
    bmatched.len = 0;
}


typedef struct {
    unsigned char  key[512];
    size_t         key_len;
    rules_item_t   item;
    rules_buf_t    state;
} deferred_t;

static deferred_t  deferred[4096];
static size_t      ndeferred;


static void
defer_compact(const rules_str_t *k, const rules_item_t *c)
{
    deferred_t  *d = &deferred[ndeferred++];

    memcpy(d->key, k->data, k->len);
    d->key_len = k->len;
    d->item = *c;
    d->state.len = 0;
    rules_buf_append(&d->state, c->state, c->state_len);
    d->item.state = d->state.data;
}


static void
flush_deferred(void)
{
    size_t       i;
    rules_str_t  k;

    for (i = 0; i < ndeferred; i++) {
        k.data = deferred[i].key;
        k.len = deferred[i].key_len;
        queue(&k, &deferred[i].item, -1, 0, NULL);
    }

    ndeferred = 0;
}


static char *
read_file(const char *path, size_t *len)
{
    FILE  *f;
    char  *buf;
    long   n;

    f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        exit(1);
    }

    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc(n + 1);
    *len = fread(buf, 1, n, f);
    buf[*len] = '\0';
    fclose(f);

    return buf;
}


int
main(int argc, char **argv)
{
    static const char  *types[] = { "page", "page", "page", "page", "view",
                                    "view", "click", "cart", "purchase" };
    static const char  *paths[] = { "/home", "/sale", "/sale/summer",
                                    "/p/1", "/p/2", "/blog", "/cart" };
    char                err[RULES_ERR_LEN], uid[16], ip[24], dev[16],
                        prod[8], ids[65536];
    const char         *prefix = "bench:gen:on:on:";
    const char         *type;
    char               *json;
    size_t              len, nf, ng, g, k, plen, total, npresent, matched_ids;
    rules_set_t        *rs;
    rules_limits_t      limits = { 256, 4096 };
    rules_eventops_t    eo;
    rules_str_t        *vals, keys[16];
    const rules_str_t  *v;
    uint64_t            hashes[16], present[16];
    unsigned char       kbuf[4096], *p;
    rules_item_t        ri;
    int                 i, nwarm, nev;
    bench_fields_t      f;
    int64_t             now;
    size_t              cache_mb;

    if (argc < 4) {
        fprintf(stderr, "usage: worker_profile RULES warmup events "
                "[cache_mb]\n");
        return 1;
    }

    /* a fixed key for the cache's hash: the same probes, and so the same
     * instruction counts, from run to run */
    rules_cache_hash_key_set((const uint64_t[2]) { 1, 2 });

    json = read_file(argv[1], &len);
    nwarm = atoi(argv[2]);
    nev = atoi(argv[3]);
    cache_mb = argc > 4 ? (size_t) atoi(argv[4]) : 32;

    rs = rules_load_buffer(json, len, argv[1], err, sizeof(err));
    if (rs == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }

    rules_set_sharing(rs, 1);

    bench_store_init(NSLOTS);
    cache = rules_cache_create(cache_mb << 20);
    work.known = rs;
    rules_result_init(rs, &evres);

    for (i = 0; i < 64; i++) {
        rules_result_init(rs, &reqres[i]);
    }

    memset(&eo, 0, sizeof(eo));
    nf = rules_nfields(rs);
    ng = rules_ngroups(rs);
    vals = calloc(nf + 1, sizeof(rules_str_t));
    bench_fields(rs, &f);

    now = 1700000000000LL;
    matched_ids = 0;
    plen = strlen(prefix);

    for (i = 0; i < nwarm + nev; i++) {
        if (i == nwarm) {
            fprintf(stderr, "warm: hits %zu misses %zu (of evicted keys "
                    "%zu) writes %zu fallbacks %zu compactions %zu\n",
                    nhits, nmisses, nevicted, nwrites, nfall, ncompact);
            nhits = nmisses = nevicted = nwrites = nfall = ncompact = 0;
            CALLGRIND_START_INSTRUMENTATION;
        }

        now += (i % 30 == 0);

        snprintf(uid, sizeof(uid), "u%u", bench_rnd(100000));
        snprintf(ip, sizeof(ip), "10.%u.%u.%u", bench_rnd(4), bench_rnd(256),
                 bench_rnd(3));
        snprintf(dev, sizeof(dev), "d%u", bench_rnd(3000));
        snprintf(prod, sizeof(prod), "P%u", 40 + bench_rnd(5));

        /* the type picked before the path, as always */
        type = types[bench_rnd(9)];
        bench_event(vals, &f, uid, ip, dev, type, prod, paths[bench_rnd(7)]);

        if (rules_event_validate(rs, &limits, vals, now) != RULES_EVENT_OK) {
            abort();
        }

        /* ngx_http_rules_event_keys() */

        total = 0;

        for (g = 0; g < ng; g++) {
            v = rules_event_key(rs, &limits, vals, g);

            if (v) {
                total += rules_state_key_len(rs, plen, (unsigned) g, v->len);
            }
        }

        p = kbuf;
        npresent = 0;

        for (g = 0; g < ng; g++) {
            v = rules_event_key(rs, &limits, vals, g);

            if (v == NULL) {
                keys[g].len = 0;
                continue;
            }

            keys[g].data = p;
            keys[g].len = rules_state_key(rs, prefix, plen, (unsigned) g, *v,
                                          p);
            p += keys[g].len;
            hashes[g] = rules_cache_hash(keys[g].data, keys[g].len);
            present[npresent++] = hashes[g];
        }

        rules_cache_prefetch_slots(cache, present, npresent);

        if (rules_event_build(rs, &limits, vals, now, &eo)
            != RULES_EVENT_OK)
        {
            continue;
        }

        rules_cache_prefetch_entries(cache, present, npresent);
        rules_result_clear(&reqres[i % 64]);

        for (k = 0; k < eo.nkeyops; k++) {
            rules_keyop_t  *ko = &eo.keyops[k];

            if (rules_log_plan(cache, keys[ko->group].data,
                               keys[ko->group].len, hashes[ko->group], ko,
                               now, now, &work, &wmatched, &ri)
                != 0)
            {
                abort();
            }

            if (ri.lookup == RULES_LOOKUP_HIT) {
                nhits++;

            } else if (ri.lookup == RULES_LOOKUP_MISS) {
                nmisses++;
                nevicted += (ri.evicted != 0);
            }

            queue(&keys[ko->group], &ri, i % 64, ko->group,
                  RULES_ITEM_COMPUTED(ri.kind) ? &wmatched : NULL);
        }

        /* a call of about 30 items, replied at once */

        if (rules_batch_items(&batch) >= 30) {
            send_batch(rs, now);
            flush_deferred();

            /* the requests' $rules_matched */
            matched_ids += rules_result_ids(rs, &reqres[i % 64], ids,
                                            sizeof(ids));
        }
    }

    send_batch(rs, now);
    CALLGRIND_STOP_INSTRUMENTATION;

    fprintf(stderr, "run: hits %zu misses %zu (of evicted keys %zu) writes "
            "%zu fallbacks %zu compactions %zu cache entries %zu bytes %zu "
            "evictions %zu ids %zu\n", nhits, nmisses, nevicted, nwrites,
            nfall, ncompact, rules_cache_entries(cache),
            rules_cache_bytes(cache), rules_cache_evictions(cache),
            matched_ids);

    return 0;
}
