/*
 * Engine micro-benchmark: events per second through the nginx-independent
 * engine (conditions, key operations, state machines on in-memory state),
 * for SPEC.md's five example rules and for 1000 generated rules of mixed
 * types.  Reports medians of several runs; no target is asserted here.
 *
 *   build/bench/engine_bench [events] [runs]
 */

#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rules_engine.h"
#include "rules_state.h"
#include "bench_common.h"


#define NUSERS    100000
#define NIPS      3000
#define NDEVICES  3000
#define NSLOTS    (1 << 18)


static const char *spec_rules =
"{\"rules\": ["
"{\"id\":\"visited_twice_week\",\"kind\":\"segment\",\"key\":\"uid\",\"type\":\"count\","
" \"where\":{\"field\":\"type\",\"eq\":\"page\"},\"min\":2,\"within\":\"7d\"},"
"{\"id\":\"viewed_not_carted\",\"kind\":\"segment\",\"key\":\"uid\",\"type\":\"absence\","
" \"trigger\":{\"all\":[{\"field\":\"type\",\"eq\":\"view\"},{\"field\":\"product\",\"eq\":\"P42\"}]},"
" \"cancel\":{\"all\":[{\"field\":\"type\",\"eq\":\"cart\"},{\"field\":\"product\",\"eq\":\"P42\"}]},"
" \"after\":\"0s\",\"within\":\"30d\"},"
"{\"id\":\"home_sale_buy\",\"kind\":\"segment\",\"key\":\"uid\",\"type\":\"sequence\","
" \"steps\":[{\"where\":{\"field\":\"path\",\"eq\":\"/home\"}},"
"           {\"where\":{\"field\":\"path\",\"prefix\":\"/sale\"}},"
"           {\"where\":{\"all\":[{\"field\":\"type\",\"eq\":\"purchase\"},{\"field\":\"product\",\"eq\":\"P42\"}]}}],"
" \"within\":\"1h\",\"hold\":\"30d\"},"
"{\"id\":\"ip_burst\",\"kind\":\"fraud\",\"key\":\"ip\",\"type\":\"count\",\"min\":21,\"within\":\"10s\"},"
"{\"id\":\"device_many_users\",\"kind\":\"fraud\",\"key\":\"device\",\"type\":\"distinct\","
" \"field\":\"uid\",\"min\":5,\"within\":\"1h\"}"
"]}";


/* 1000 rules of mixed types over the same fields and keys. */
static char *
generated_rules(int n)
{
    static const char  *types[] = { "page", "view", "cart", "purchase",
                                    "click" };
    static const char  *keys[] = { "uid", "uid", "uid", "ip", "device" };
    char               *buf, *p;
    int                 i;

    buf = malloc((size_t) n * 600 + 64);
    p = buf + sprintf(buf, "{\"rules\":[");

    for (i = 0; i < n; i++) {
        const char *key = keys[i % 5];
        const char *t = types[bench_rnd(5)];
        int         prod = bench_rnd(50);

        switch (i % 4) {
        case 0:
            p += sprintf(p, "%s{\"id\":\"g%d\",\"kind\":\"segment\",\"key\":"
                         "\"%s\",\"type\":\"count\",\"where\":{\"all\":["
                         "{\"field\":\"type\",\"eq\":\"%s\"},{\"field\":"
                         "\"product\",\"eq\":\"P%d\"}]},\"min\":%d,"
                         "\"within\":\"%dh\"}", i ? "," : "", i, key, t,
                         prod, 1 + bench_rnd(5), 1 + bench_rnd(48));
            break;
        case 1:
            p += sprintf(p, "%s{\"id\":\"g%d\",\"kind\":\"fraud\",\"key\":"
                         "\"%s\",\"type\":\"distinct\",\"field\":\"path\","
                         "\"where\":{\"field\":\"type\",\"in\":[\"%s\","
                         "\"click\"]},\"min\":%d,\"within\":\"10m\"}",
                         i ? "," : "", i, key, t, 2 + bench_rnd(10));
            break;
        case 2:
            p += sprintf(p, "%s{\"id\":\"g%d\",\"kind\":\"segment\",\"key\":"
                         "\"%s\",\"type\":\"absence\",\"trigger\":{\"all\":["
                         "{\"field\":\"type\",\"eq\":\"view\"},{\"field\":"
                         "\"product\",\"eq\":\"P%d\"}]},\"cancel\":{\"all\":["
                         "{\"field\":\"type\",\"eq\":\"purchase\"},{\"field\":"
                         "\"product\",\"eq\":\"P%d\"}]},\"within\":\"7d\"}",
                         i ? "," : "", i, key, prod, prod);
            break;
        default:
            p += sprintf(p, "%s{\"id\":\"g%d\",\"kind\":\"segment\",\"key\":"
                         "\"%s\",\"type\":\"sequence\",\"steps\":["
                         "{\"where\":{\"field\":\"path\",\"prefix\":\"/c%d\"}},"
                         "{\"where\":{\"field\":\"product\",\"eq\":\"P%d\"},"
                         "\"strict\":true},{\"where\":{\"field\":\"type\","
                         "\"eq\":\"purchase\"}}],\"within\":\"1h\","
                         "\"hold\":\"1d\"}", i ? "," : "", i, key, prod % 10,
                         prod);
            break;
        }
    }

    sprintf(p, "]}");

    return buf;
}


static int
cmp_double(const void *a, const void *b)
{
    double  x = *(const double *) a, y = *(const double *) b;

    return x < y ? -1 : x > y;
}


/* Returns events per second of one run over nev events. */
static double
run(rules_set_t *rs, int nev, double *evals_per_event)
{
    static const char  *types[] = { "page", "view", "cart", "purchase",
                                    "click" };
    static const char  *paths[] = { "/home", "/sale", "/sale/x", "/c1",
                                    "/c2", "/p/1" };
    rules_limits_t      limits = { 256, 4096 };
    rules_eventops_t    eo;
    rules_buf_t         out, matched, tmp, *st;
    rules_state_work_t *sw;
    rules_str_t        *vals;
    unsigned char       key[160];
    char                uid[16], ip[16], dev[16], prod[8];
    const char         *type;
    size_t              nf, k, klen, evaluated;
    int                 i, changed;
    bench_fields_t      f;
    int64_t             pttl, now;
    struct timespec     t0, t1;

    memset(&eo, 0, sizeof(eo));
    memset(&out, 0, sizeof(out));

    sw = rules_state_work_create();
    if (sw == NULL) {
        fprintf(stderr, "no memory\n");
        exit(1);
    }

    memset(&matched, 0, sizeof(matched));

    nf = rules_nfields(rs);
    vals = calloc(nf + 1, sizeof(rules_str_t));
    bench_fields(rs, &f);

    now = 1700000000000LL;
    evaluated = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);

    for (i = 0; i < nev; i++) {
        now += bench_rnd(20);

        snprintf(uid, sizeof(uid), "u%u", bench_rnd(NUSERS));
        snprintf(ip, sizeof(ip), "10.0.%u.%u", bench_rnd(NIPS) / 250,
                 bench_rnd(250));
        snprintf(dev, sizeof(dev), "d%u", bench_rnd(NDEVICES));
        snprintf(prod, sizeof(prod), "P%u", bench_rnd(50));

        /* the type picked before the path, as always */
        type = types[bench_rnd(5)];
        bench_event(vals, &f, uid, ip, dev, type, prod, paths[bench_rnd(6)]);

        if (rules_event_build(rs, &limits, vals, now, &eo)
            != RULES_EVENT_OK)
        {
            continue;
        }

        for (k = 0; k < eo.nkeyops; k++) {
            evaluated += rules_group(rs, eo.keyops[k].group)->nrules;
            klen = rules_state_key(rs, "", 0, eo.keyops[k].group,
                                   eo.keyops[k].key_value, key);
            st = bench_store(key, klen);
            matched.len = 0;

            /* as the module does: the state parsed into a work it keeps */

            if (rules_state_apply_work(sw, st->data, st->len,
                                       eo.keyops[k].op, eo.keyops[k].op_len,
                                       now, now, NULL, &out, &changed, &pttl,
                                       &matched)
                != 0)
            {
                continue;
            }

            if (changed) {
                tmp = *st;
                *st = out;
                out = tmp;
            }
        }
    }

    clock_gettime(CLOCK_MONOTONIC, &t1);

    rules_buf_free(&out);
    rules_buf_free(&matched);
    rules_state_work_free(sw);
    rules_eventops_free(&eo);
    free(vals);

    *evals_per_event = (double) evaluated / nev;

    return nev / ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
}


static void
bench(const char *name, const char *json, int nev, int runs, int index)
{
    char          err[RULES_ERR_LEN];
    rules_set_t  *rs;
    double        eps[16], epe = 0;
    int           r;

    rs = rules_load_buffer(json, strlen(json), name, err, sizeof(err));

    if (rs == NULL) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }

    if (index >= 0) {
        rules_set_indexing(rs, index);
    }

    /* as bench/run.sh's nginx: rules_shared_distinct on */
    rules_set_sharing(rs, 1);

    /* one run first, not measured: the heap grows to its size */

    for (r = -1; r < runs; r++) {
        bench_store_clear();

        if (r < 0) {
            (void) run(rs, nev, &epe);
            continue;
        }

        eps[r] = run(rs, nev, &epe);
    }

    qsort(eps, runs, sizeof(double), cmp_double);

    printf("%-22s %6zu rules  %10.0f events/s  %12.0f rules x events/s"
           "  (%.1f rules per event; median of %d runs of %d events)\n",
           name, rules_count(rs), eps[runs / 2], eps[runs / 2] * epe, epe,
           runs, nev);

    rules_free(rs);
}


int
main(int argc, char **argv)
{
    int    nev, runs;
    char  *gen;

    if (argc > 1 && strcmp(argv[1], "--dump-generated") == 0) {
        /* the 1000 rules of the load benchmark (bench/run.sh) */
        gen = generated_rules(1000);
        puts(gen);
        free(gen);
        return 0;
    }

    nev = argc > 1 ? atoi(argv[1]) : 200000;
    runs = argc > 2 ? atoi(argv[2]) : 5;

    if (runs > 15) {
        runs = 15;
    }

    /*
     * As in a worker that has run a while: glibc raises its mmap
     * threshold after the first large blocks are freed, and later ones
     * come from the heap.  Without this, whichever rule set ran first
     * paid a page fault per large state buffer and looked a third
     * slower (the index slower than none, as the second of the two).
     */
    (void) mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
    (void) mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024);

    bench_store_init(NSLOTS);
    gen = generated_rules(1000);

    bench("SPEC.md examples", spec_rules, nev, runs, -1);
    bench("1000 generated rules", gen, nev / 10, runs, -1);
    bench("the same, no index", gen, nev / 10, runs, 0);

    free(gen);

    return 0;
}
