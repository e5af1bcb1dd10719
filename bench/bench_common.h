/*
 * What the engine's bench drivers share (engine_bench.c,
 * worker_profile.c): a random source, an in-memory store of values by
 * key (open addressing), and the pixel's fields set by name.
 */

#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules_engine.h"
#include "rules_state.h"


#define BENCH_KEY_MAX  128


typedef struct {
    unsigned char  key[BENCH_KEY_MAX];
    size_t         key_len;
    rules_buf_t    value;
    int            used;
} bench_slot_t;


typedef struct {
    int            uid;
    int            ip;
    int            device;
    int            type;
    int            product;
    int            path;
} bench_fields_t;


static unsigned long long   bench_rng = 88172645463325252ULL;
static bench_slot_t        *bench_slots;
static size_t               bench_nslots;


/* xorshift: the same sequence on every run (the generated rules too) */
static inline unsigned
bench_rnd(unsigned n)
{
    bench_rng ^= bench_rng << 13;
    bench_rng ^= bench_rng >> 7;
    bench_rng ^= bench_rng << 17;
    return (unsigned) (bench_rng % n);
}


/* nslots: a power of two, more than the keys the run makes */
static inline void
bench_store_init(size_t nslots)
{
    bench_slots = calloc(nslots, sizeof(bench_slot_t));

    if (bench_slots == NULL) {
        fprintf(stderr, "bench: no memory for %zu slots\n", nslots);
        exit(1);
    }

    bench_nslots = nslots;
}


/* The value of a key, made empty when the key is new. */
static inline rules_buf_t *
bench_store(const unsigned char *key, size_t len)
{
    size_t              i;
    unsigned long long  h = 1469598103934665603ULL;

    if (len > BENCH_KEY_MAX) {
        fprintf(stderr, "bench: a key of %zu bytes\n", len);
        exit(1);
    }

    for (i = 0; i < len; i++) {
        h = (h ^ key[i]) * 1099511628211ULL;
    }

    for (i = h & (bench_nslots - 1); ; i = (i + 1) & (bench_nslots - 1)) {
        if (!bench_slots[i].used) {
            bench_slots[i].used = 1;
            memcpy(bench_slots[i].key, key, len);
            bench_slots[i].key_len = len;
            return &bench_slots[i].value;
        }

        if (bench_slots[i].key_len == len
            && memcmp(bench_slots[i].key, key, len) == 0)
        {
            return &bench_slots[i].value;
        }
    }
}


static inline void
bench_store_clear(void)
{
    size_t  i;

    for (i = 0; i < bench_nslots; i++) {
        rules_buf_free(&bench_slots[i].value);
        bench_slots[i].used = 0;
    }
}


/* The pixel's fields in rs (-1: no rule reads it). */
static inline void
bench_fields(const rules_set_t *rs, bench_fields_t *f)
{
    f->uid = rules_field_index(rs, "uid", 3);
    f->ip = rules_field_index(rs, "ip", 2);
    f->device = rules_field_index(rs, "device", 6);
    f->type = rules_field_index(rs, "type", 4);
    f->product = rules_field_index(rs, "product", 7);
    f->path = rules_field_index(rs, "path", 4);
}


/* An event's values (a field no rule reads is left out). */
static inline void
bench_event(rules_str_t *vals, const bench_fields_t *f, const char *uid,
    const char *ip, const char *device, const char *type,
    const char *product, const char *path)
{
    int          i;
    const int    fields[] = { f->uid, f->ip, f->device, f->type, f->product,
                              f->path };
    const char  *values[] = { uid, ip, device, type, product, path };

    for (i = 0; i < 6; i++) {
        if (fields[i] >= 0) {
            vals[fields[i]].data = (const unsigned char *) values[i];
            vals[fields[i]].len = strlen(values[i]);
        }
    }
}


#endif /* BENCH_COMMON_H */
