/*
 * A 64-bit string hash, a read-mostly open-addressing string table, and
 * the growth of the engine's arrays.
 */

#include <stdlib.h>
#include <string.h>

#include "rules_internal.h"


#define RULES_K1  0x9e3779b97f4a7c15ULL
#define RULES_K2  0xc2b2ae3d27d4eb4fULL
#define RULES_K3  0x165667b19e3779f9ULL


static uint64_t
rules_fmix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;

    return h;
}


/*
 * Little-endian: on a little-endian host one load (gcc does not merge
 * the byte loop; state keys and index lookups are hashed per event).
 */
static uint64_t
rules_read64(const unsigned char *p)
{
    uint64_t  v;
#if (RULES_F64_NATIVE)
    __builtin_memcpy(&v, p, 8);
#else
    int       i;

    v = 0;

    for (i = 0; i < 8; i++) {
        v |= (uint64_t) p[i] << (8 * i);
    }
#endif

    return v;
}


#define RULES_ROTL(x, b)  (((x) << (b)) | ((x) >> (64 - (b))))

#define RULES_SIPROUND                                                       \
    do {                                                                     \
        v0 += v1; v1 = RULES_ROTL(v1, 13); v1 ^= v0;                         \
        v0 = RULES_ROTL(v0, 32);                                             \
        v2 += v3; v3 = RULES_ROTL(v3, 16); v3 ^= v2;                         \
        v0 += v3; v3 = RULES_ROTL(v3, 21); v3 ^= v0;                         \
        v2 += v1; v1 = RULES_ROTL(v1, 17); v1 ^= v2;                         \
        v2 = RULES_ROTL(v2, 32);                                             \
    } while (0)


/*
 * SipHash-2-4 (Aumasson and Bernstein) of data under a 128-bit key: a
 * keyed function whose collisions cannot be found without the key, for
 * tables whose keys a client chooses (rules_cache_hash()).  Byte order
 * independent, as the algorithm is defined on little-endian words.
 */
uint64_t
rules_siphash(const uint64_t key[2], const void *data, size_t len)
{
    const unsigned char  *p;
    uint64_t              v0, v1, v2, v3, m;
    size_t                i, tail;

    p = data;
    v0 = 0x736f6d6570736575ULL ^ key[0];
    v1 = 0x646f72616e646f6dULL ^ key[1];
    v2 = 0x6c7967656e657261ULL ^ key[0];
    v3 = 0x7465646279746573ULL ^ key[1];

    for (i = 0; i + 8 <= len; i += 8) {
        m = rules_read64(p + i);
        v3 ^= m;
        RULES_SIPROUND;
        RULES_SIPROUND;
        v0 ^= m;
    }

    m = (uint64_t) len << 56;

    for (tail = 0; i + tail < len; tail++) {
        m |= (uint64_t) p[i + tail] << (8 * tail);
    }

    v3 ^= m;
    RULES_SIPROUND;
    RULES_SIPROUND;
    v0 ^= m;

    v2 ^= 0xff;
    RULES_SIPROUND;
    RULES_SIPROUND;
    RULES_SIPROUND;
    RULES_SIPROUND;

    return v0 ^ v1 ^ v2 ^ v3;
}


/*
 * Byte order independent: the same input gives the same value on every
 * machine, so digests derived from it can name state in Redis.  Not for
 * a table whose keys a client chooses: collisions can be made whatever
 * the seed (rules_siphash()).
 */
uint64_t
rules_hash64(const void *data, size_t len, uint64_t seed)
{
    const unsigned char  *p;
    uint64_t              h, w;
    size_t                i, tail;

    p = data;
    h = seed ^ ((uint64_t) len * RULES_K1);

    for (i = 0; i + 8 <= len; i += 8) {
        w = rules_read64(p + i) * RULES_K2;
        w = (w << 31) | (w >> 33);
        h ^= w * RULES_K1;
        h = ((h << 27) | (h >> 37)) * 5 + RULES_K3;
    }

    tail = len - i;

    if (tail) {
        w = 0;

        while (tail--) {
            w = (w << 8) | p[i + tail];
        }

        w *= RULES_K2;
        w = (w << 31) | (w >> 33);
        h ^= w * RULES_K1;
    }

    return rules_fmix64(h);
}


int
rules_strmap_init(rules_strmap_t *m, size_t expected)
{
    size_t  slots;

    slots = 16;

    while (slots < expected * 2) {
        slots <<= 1;
    }

    m->keys = calloc(slots, sizeof(rules_str_t));
    m->vals = calloc(slots, sizeof(unsigned));

    if (m->keys == NULL || m->vals == NULL) {
        free(m->keys);
        free(m->vals);
        m->keys = NULL;
        m->vals = NULL;
        return -1;
    }

    m->mask = slots - 1;
    m->n = 0;
    m->seed = RULES_K3;

    return 0;
}


static int
rules_strmap_grow(rules_strmap_t *m)
{
    rules_strmap_t  bigger;
    size_t          i;

    if (rules_strmap_init(&bigger, (m->mask + 1)) != 0) {
        return -1;
    }

    for (i = 0; i <= m->mask; i++) {
        if (m->keys[i].data != NULL) {
            (void) rules_strmap_put(&bigger, m->keys[i].data, m->keys[i].len,
                                    m->vals[i]);
        }
    }

    rules_strmap_free(m);
    *m = bigger;

    return 0;
}


/* The table keeps the key pointer: the caller keeps the bytes alive. */
int
rules_strmap_put(rules_strmap_t *m, const unsigned char *key, size_t len,
    unsigned val)
{
    size_t  i;

    if ((m->n + 1) * 2 > m->mask + 1) {
        if (rules_strmap_grow(m) != 0) {
            return -1;
        }
    }

    i = rules_hash64(key, len, m->seed) & m->mask;

    while (m->keys[i].data != NULL) {
        if (m->keys[i].len == len && memcmp(m->keys[i].data, key, len) == 0) {
            return 0;
        }

        i = (i + 1) & m->mask;
    }

    /* a zero-length key still needs a non-NULL pointer to mark the slot */
    m->keys[i].data = len ? key : (const unsigned char *) "";
    m->keys[i].len = len;
    m->vals[i] = val;
    m->n++;

    return 1;
}


/* The value slot of a key, or NULL when it is not there. */
static unsigned *
rules_strmap_find(const rules_strmap_t *m, const unsigned char *key,
    size_t len)
{
    size_t  i;

    if (m->keys == NULL) {
        return NULL;
    }

    i = rules_hash64(key, len, m->seed) & m->mask;

    while (m->keys[i].data != NULL) {
        if (m->keys[i].len == len
            && (len == 0 || memcmp(m->keys[i].data, key, len) == 0))
        {
            return &m->vals[i];
        }

        i = (i + 1) & m->mask;
    }

    return NULL;
}


int
rules_strmap_set(rules_strmap_t *m, const unsigned char *key, size_t len,
    unsigned val)
{
    unsigned  *v;

    v = rules_strmap_find(m, key, len);

    if (v == NULL) {
        return 0;
    }

    *v = val;

    return 1;
}


int
rules_strmap_get(const rules_strmap_t *m, const unsigned char *key,
    size_t len, unsigned *val)
{
    unsigned  *v;

    v = rules_strmap_find(m, key, len);

    if (v == NULL) {
        return 0;
    }

    *val = *v;

    return 1;
}


void
rules_strmap_free(rules_strmap_t *m)
{
    free(m->keys);
    free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
    m->n = 0;
}


int
rules_grow(void *arrayp, size_t *size, size_t n, size_t elem, size_t first)
{
    void    *a;
    size_t   ns;

    if (n < *size) {
        return 0;
    }

    for (ns = *size ? *size * 2 : first; ns <= n; ns *= 2) { /* void */ }

    memcpy(&a, arrayp, sizeof(void *));
    a = realloc(a, ns * elem);

    if (a == NULL) {
        return -1;
    }

    memcpy(arrayp, &a, sizeof(void *));
    *size = ns;

    return 0;
}
