/*
 * The folded-state cache: an open-addressing hash table (linear probing,
 * each slot holding the key's hash and the entry) of entries that hold
 * their key and state inline, evicted by CLOCK over the order in which
 * they were stored.
 *
 * Every event looks up a few random keys of a large cache, so a lookup
 * is bound by memory latency: it reads the slot and the entry, and a hit
 * sets the entry's reference bit, where a list-ordered LRU would also
 * touch the two neighbours it unlinks from (two more cache misses).
 * rules_cache_prefetch_slots() and rules_cache_prefetch_entries() let a
 * caller start the loads of all the keys of an event at once, and do
 * other work while they run.
 *
 * Eviction: the ring holds the entries in the order they were stored
 * (a replaced entry goes to the back).  The oldest is evicted when its
 * reference bit is clear; when it is set, the bit is cleared and the
 * entry goes to the back (a second chance).  So an entry that was not
 * looked up since it was stored goes first, oldest first, and an entry
 * looked up since stays for one more round.
 *
 * Evicted keys: the hashes of the keys evicted last are kept in a
 * direct-mapped table with as many places as the cache has slots (made
 * at the first eviction, 8 bytes a place): a miss on one of them is a
 * miss that a larger cache would have hit (rules_cache_evicted()), what
 * tells a cache too small for its keys from keys seen for the first
 * time.  A later eviction whose hash falls on the same place replaces
 * it: a key evicted n evictions ago is still known with a probability
 * of about e^(-n / places), and there are two places per entry or more
 * (at least 1024), so the count is a lower bound (of the keys that a
 * cache twice as large would have kept, about 80-90 % are known).  A key
 * stored again is forgotten, and so is every one when the cache is
 * cleared.  Like the slots, the table is not counted in max_bytes.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>

#include "rules_internal.h"
#include "rules_cache.h"


/*
 * The key of rules_cache_hash(), random, made at its first call in the
 * process (a worker's first event), unless rules_cache_hash_key_set()
 * gave one.
 */
static uint64_t  rules_cache_key[2];
static int       rules_cache_keyed;


typedef struct {
    uint64_t         hash;
    size_t           key_len;
    size_t           state_len;
    size_t           size;        /* allocated, this header included */
    size_t           ring;        /* position in the ring */
    double           gen;
    double           stamp;
    size_t           length;
    size_t           logged;
    unsigned         ref;         /* looked up since the last sweep */
    unsigned         clean;       /* the state is the writer's own
                                     (rules_cache_put()) */
    unsigned char    data[];      /* key, then state */
} rules_centry_t;


typedef struct {
    uint64_t         hash;
    rules_centry_t  *e;           /* NULL: free */
} rules_cslot_t;


struct rules_cache_s {
    rules_cslot_t   *slots;
    size_t           mask;        /* slots - 1 */
    size_t           entries;
    size_t           bytes;
    size_t           max_bytes;

    /* the ring: entries by the time they were stored, NULL: a hole */
    rules_centry_t **ring;
    size_t           ring_mask;   /* ring size - 1 */
    size_t           head;        /* the oldest, counted from the start */
    size_t           tail;        /* where the next one goes */

    /* the hashes of evicted keys, by hash & ghost_mask (0: none), NULL
     * before the first eviction; entries evicted */
    uint64_t        *ghost;
    size_t           ghost_mask;
    size_t           evictions;
};


#define RULES_CACHE_MIN_SLOTS  1024


rules_cache_t *
rules_cache_create(size_t max_bytes)
{
    rules_cache_t  *c;

    c = calloc(1, sizeof(rules_cache_t));
    if (c == NULL) {
        return NULL;
    }

    c->max_bytes = max_bytes;
    c->mask = RULES_CACHE_MIN_SLOTS - 1;
    c->slots = calloc(RULES_CACHE_MIN_SLOTS, sizeof(rules_cslot_t));
    c->ring_mask = RULES_CACHE_MIN_SLOTS - 1;
    c->ring = calloc(RULES_CACHE_MIN_SLOTS, sizeof(rules_centry_t *));

    if (c->slots == NULL || c->ring == NULL) {
        free(c->slots);
        free(c->ring);
        free(c);
        return NULL;
    }

    return c;
}


static rules_cslot_t *
rules_cache_find(const rules_cache_t *c, const unsigned char *key,
    size_t key_len, uint64_t hash)
{
    size_t           i;
    rules_cslot_t   *s;
    rules_centry_t  *e;

    for (i = hash & c->mask; ; i = (i + 1) & c->mask) {
        s = &c->slots[i];
        e = s->e;

        if (e == NULL) {
            return NULL;
        }

        if (s->hash == hash && e->key_len == key_len
            && memcmp(e->data, key, key_len) == 0)
        {
            return s;
        }
    }
}


/* Frees a slot; the entries after it that belong before it move back. */
static void
rules_cache_slot_free(rules_cache_t *c, rules_cslot_t *s)
{
    size_t  i, j, home;

    i = s - c->slots;

    for (j = (i + 1) & c->mask; c->slots[j].e; j = (j + 1) & c->mask) {
        home = c->slots[j].hash & c->mask;

        /* j's entry may fill i when its home is not in (i, j] */

        if (((j - home) & c->mask) >= ((j - i) & c->mask)) {
            c->slots[i] = c->slots[j];
            i = j;
        }
    }

    c->slots[i].e = NULL;
    c->slots[i].hash = 0;
}


static void
rules_cache_remove(rules_cache_t *c, rules_cslot_t *s)
{
    rules_centry_t  *e;

    e = s->e;
    rules_cache_slot_free(c, s);
    c->ring[e->ring & c->ring_mask] = NULL;

    c->entries--;
    c->bytes -= e->size;
    free(e);
}


/* Makes room for one more entry in the ring; -1 on memory exhaustion. */
static int
rules_cache_ring_room(rules_cache_t *c)
{
    size_t            i, n, size;
    rules_centry_t  **ring, *e;

    /* the holes left by removals at the front go first */

    while (c->head != c->tail && c->ring[c->head & c->ring_mask] == NULL) {
        c->head++;
    }

    size = c->ring_mask + 1;

    if (c->tail - c->head < size) {
        return 0;
    }

    /* full: copy the live entries, in order, into a ring twice as large
     * when more than half of it is live */

    if (c->entries > size / 2) {
        size *= 2;
    }

    ring = calloc(size, sizeof(rules_centry_t *));
    if (ring == NULL) {
        return -1;
    }

    for (n = 0, i = c->head; i != c->tail; i++) {
        e = c->ring[i & c->ring_mask];

        if (e) {
            e->ring = n;
            ring[n++] = e;
        }
    }

    free(c->ring);
    c->ring = ring;
    c->ring_mask = size - 1;
    c->head = 0;
    c->tail = n;

    return 0;
}


static void
rules_cache_ring_push(rules_cache_t *c, rules_centry_t *e)
{
    e->ring = c->tail;
    c->ring[c->tail & c->ring_mask] = e;
    c->tail++;
}


/*
 * Makes or regrows the table of evicted keys to as many places as the
 * cache has slots, keeping what it held (each hash at its new place);
 * without memory the table stays as it was (the count is a lower bound).
 */
static void
rules_cache_ghost_size(rules_cache_t *c)
{
    size_t     i, n;
    uint64_t  *ghost;

    n = c->mask + 1;

    if (c->ghost && c->ghost_mask + 1 == n) {
        return;
    }

    ghost = calloc(n, sizeof(uint64_t));
    if (ghost == NULL) {
        return;
    }

    if (c->ghost) {
        for (i = 0; i <= c->ghost_mask; i++) {
            if (c->ghost[i]) {
                ghost[c->ghost[i] & (n - 1)] = c->ghost[i];
            }
        }

        free(c->ghost);
    }

    c->ghost = ghost;
    c->ghost_mask = n - 1;
}


/* Evicts entries, oldest unreferenced first, until size more bytes fit. */
static void
rules_cache_evict(rules_cache_t *c, size_t size)
{
    size_t           i;
    rules_centry_t  *e;

    if (c->entries && c->bytes + size > c->max_bytes && c->ghost == NULL) {
        rules_cache_ghost_size(c);
    }

    while (c->entries && c->bytes + size > c->max_bytes) {
        i = c->head++ & c->ring_mask;
        e = c->ring[i];

        if (e == NULL) {
            continue;
        }

        c->ring[i] = NULL;

        if (e->ref) {
            /* a second chance, at the back: the ring has room, as a
             * slot was just freed at its front */
            e->ref = 0;
            rules_cache_ring_push(c, e);
            continue;
        }

        if (c->ghost) {
            c->ghost[e->hash & c->ghost_mask] = e->hash;
        }

        c->evictions++;
        rules_cache_remove(c, rules_cache_find(c, e->data, e->key_len,
                                               e->hash));
    }
}


static int
rules_cache_grow(rules_cache_t *c)
{
    size_t           i, j, n;
    rules_cslot_t   *slots, *old;

    n = (c->mask + 1) * 2;
    slots = calloc(n, sizeof(rules_cslot_t));

    if (slots == NULL) {
        return -1;
    }

    old = c->slots;

    for (i = 0; i <= c->mask; i++) {
        if (old[i].e == NULL) {
            continue;
        }

        for (j = old[i].hash & (n - 1); slots[j].e; j = (j + 1) & (n - 1)) {
            /* void */
        }

        slots[j] = old[i];
    }

    free(old);
    c->slots = slots;
    c->mask = n - 1;

    if (c->ghost) {
        rules_cache_ghost_size(c);
    }

    return 0;
}


/*
 * State keys are chosen by clients (a query argument, a JSON member): an
 * unkeyed hash lets one send keys that all fall on one run of slots, and
 * make every lookup of the worker walk it (about 3 ms each once 30000 of
 * them are cached).  SipHash under a random key per process cannot be
 * made to collide without the key.
 */
uint64_t
rules_cache_hash(const unsigned char *key, size_t key_len)
{
    if (!rules_cache_keyed) {
        rules_cache_hash_key_set(NULL);
    }

    return rules_siphash(rules_cache_key, key, key_len);
}


void
rules_cache_hash_key_set(const uint64_t key[2])
{
    uint64_t         seed[2];
    struct timespec  ts, mono;

    rules_cache_keyed = 1;

    if (key) {
        rules_cache_key[0] = key[0];
        rules_cache_key[1] = key[1];
        return;
    }

    /* the kernel's random bytes; never waiting for them (a worker) */

    if (getrandom(rules_cache_key, sizeof(rules_cache_key), GRND_NONBLOCK)
        == (ssize_t) sizeof(rules_cache_key))
    {
        return;
    }

    /* (only before the kernel's pool is ready, early at boot) */

    clock_gettime(CLOCK_REALTIME, &ts);
    clock_gettime(CLOCK_MONOTONIC, &mono);
    seed[0] = (uint64_t) ts.tv_sec * 1000000000 + (uint64_t) ts.tv_nsec;
    seed[1] = ((uint64_t) getpid() << 32)
              ^ ((uint64_t) mono.tv_sec * 1000000000
                 + (uint64_t) mono.tv_nsec)
              ^ (uint64_t) (uintptr_t) &ts;
    rules_cache_key[0] = rules_hash64(seed, sizeof(seed), 1);
    rules_cache_key[1] = rules_hash64(seed, sizeof(seed), 2);
}


void
rules_cache_prefetch_slots(rules_cache_t *c, const uint64_t *hash, size_t n)
{
    size_t  i;

    if (c == NULL || c->entries == 0) {
        return;
    }

    for (i = 0; i < n; i++) {
        __builtin_prefetch(&c->slots[hash[i] & c->mask]);
    }
}


void
rules_cache_prefetch_entries(rules_cache_t *c, const uint64_t *hash,
    size_t n)
{
    size_t          i, line;
    rules_cslot_t  *s;

    if (c == NULL || c->entries == 0) {
        return;
    }

    /*
     * The first slot of each key's probe (where it is, nearly always)
     * and the lines a lookup and a state read touch: the header, the
     * key, the state's start.  A prefetch past the entry's end is
     * harmless (it never faults).
     */

    for (i = 0; i < n; i++) {
        s = &c->slots[hash[i] & c->mask];

        if (s->e && s->hash == hash[i]) {
            for (line = 0; line < RULES_CACHE_PREFETCH_LINES; line++) {
                __builtin_prefetch((char *) s->e + 64 * line);
            }
        }
    }
}


int
rules_cache_get(rules_cache_t *c, const unsigned char *key, size_t key_len,
    uint64_t hash, double *gen, size_t *length, double *stamp, size_t *logged,
    int *clean, rules_str_t *state)
{
    rules_cslot_t   *s;
    rules_centry_t  *e;

    if (c == NULL || c->entries == 0) {
        return 0;
    }

    s = rules_cache_find(c, key, key_len, hash);

    if (s == NULL) {
        return 0;
    }

    e = s->e;
    e->ref = 1;

    *gen = e->gen;
    *length = e->length;
    *stamp = e->stamp;
    *logged = e->logged;
    *clean = (int) e->clean;
    state->data = e->data + e->key_len;
    state->len = e->state_len;

    return 1;
}


int
rules_cache_put(rules_cache_t *c, const unsigned char *key, size_t key_len,
    uint64_t hash, double gen, size_t length, double stamp, size_t logged,
    int clean, const unsigned char *state, size_t state_len)
{
    size_t           size, i;
    rules_cslot_t   *s;
    rules_centry_t  *e;

    if (c == NULL) {
        return 0;
    }

    s = rules_cache_find(c, key, key_len, hash);
    size = sizeof(rules_centry_t) + key_len + state_len;

    if (s && size <= s->e->size && size >= s->e->size / 2) {
        /* the next state of a key mostly fits where the last one was */
        e = s->e;
        e->gen = gen;
        e->stamp = stamp;
        e->logged = logged;
        e->clean = (clean != 0);
        e->length = length;
        e->state_len = state_len;

        if (state_len) {
            memmove(e->data + key_len, state, state_len);
        }

        return 0;
    }

    if (s) {
        rules_cache_remove(c, s);
    }

    /* room to grow a little in place */
    size += size / 8;

    if (size > c->max_bytes / 4) {
        return 0;   /* too big to be worth it, or no cache at all */
    }

    rules_cache_evict(c, size);

    if ((c->entries + 1) * 2 > c->mask + 1 && rules_cache_grow(c) != 0) {
        return -1;
    }

    if (rules_cache_ring_room(c) != 0) {
        return -1;
    }

    e = malloc(size);
    if (e == NULL) {
        return -1;
    }

    e->hash = hash;
    e->gen = gen;
    e->stamp = stamp;
    e->logged = logged;
    e->clean = (clean != 0);
    e->length = length;
    e->key_len = key_len;
    e->state_len = state_len;
    e->size = size;
    e->ref = 0;
    memcpy(e->data, key, key_len);

    if (state_len) {
        memcpy(e->data + key_len, state, state_len);
    }

    for (i = hash & c->mask; c->slots[i].e; i = (i + 1) & c->mask) {
        /* void */
    }

    if (c->ghost && c->ghost[hash & c->ghost_mask] == hash) {
        c->ghost[hash & c->ghost_mask] = 0;
    }

    c->slots[i].hash = hash;
    c->slots[i].e = e;
    rules_cache_ring_push(c, e);

    c->entries++;
    c->bytes += size;

    return 0;
}


void
rules_cache_del(rules_cache_t *c, const unsigned char *key, size_t key_len)
{
    rules_cslot_t  *s;

    if (c == NULL || c->entries == 0) {
        return;
    }

    s = rules_cache_find(c, key, key_len, rules_cache_hash(key, key_len));

    if (s) {
        rules_cache_remove(c, s);
    }
}


size_t
rules_cache_entries(const rules_cache_t *c)
{
    return c ? c->entries : 0;
}


size_t
rules_cache_bytes(const rules_cache_t *c)
{
    return c ? c->bytes : 0;
}


size_t
rules_cache_evictions(const rules_cache_t *c)
{
    return c ? c->evictions : 0;
}


int
rules_cache_evicted(rules_cache_t *c, uint64_t hash)
{
    uint64_t  *g;

    if (c == NULL || c->ghost == NULL || hash == 0) {
        return 0;
    }

    g = &c->ghost[hash & c->ghost_mask];

    if (*g != hash) {
        return 0;
    }

    /* counted once: the miss stores the key again */
    *g = 0;

    return 1;
}


void
rules_cache_clear(rules_cache_t *c)
{
    size_t  i;

    if (c == NULL) {
        return;
    }

    /* the misses after a clear are the clear's, not the size's */
    if (c->ghost) {
        memset(c->ghost, 0, (c->ghost_mask + 1) * sizeof(uint64_t));
    }

    if (c->entries == 0) {
        return;
    }

    for (i = 0; i <= c->mask; i++) {
        free(c->slots[i].e);
    }

    memset(c->slots, 0, (c->mask + 1) * sizeof(rules_cslot_t));
    memset(c->ring, 0, (c->ring_mask + 1) * sizeof(rules_centry_t *));

    c->entries = 0;
    c->bytes = 0;
    c->head = 0;
    c->tail = 0;
}


void
rules_cache_free(rules_cache_t *c)
{
    size_t  i;

    if (c == NULL) {
        return;
    }

    for (i = 0; i <= c->mask; i++) {
        free(c->slots[i].e);
    }

    free(c->slots);
    free(c->ring);
    free(c->ghost);
    free(c);
}
