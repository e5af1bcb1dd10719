/*
 * The folded-state cache: a chained hash table of entries that each hold
 * their key and state inline, on a doubly linked LRU list.
 */

#include <stdlib.h>
#include <string.h>

#include "rules_internal.h"
#include "rules_cache.h"


typedef struct rules_centry_s  rules_centry_t;

struct rules_centry_s {
    rules_centry_t  *hnext;       /* hash chain */
    rules_centry_t  *prev;        /* LRU: towards the most recent */
    rules_centry_t  *next;        /* LRU: towards the least recent */
    uint64_t         hash;
    double           gen;
    double           stamp;
    size_t           length;
    size_t           logged;
    size_t           key_len;
    size_t           state_len;
    size_t           size;        /* allocated, this header included */
    unsigned char    data[];      /* key, then state */
};


struct rules_cache_s {
    rules_centry_t **buckets;
    size_t           nbuckets;
    size_t           entries;
    size_t           bytes;
    size_t           max_bytes;
    rules_centry_t  *head;        /* most recent */
    rules_centry_t  *tail;        /* least recent */
};


#define RULES_CENTRY_SIZE(kl, sl)  (sizeof(rules_centry_t) + (kl) + (sl))


rules_cache_t *
rules_cache_create(size_t max_bytes)
{
    rules_cache_t  *c;

    c = calloc(1, sizeof(rules_cache_t));
    if (c == NULL) {
        return NULL;
    }

    c->max_bytes = max_bytes;
    c->nbuckets = 1024;
    c->buckets = calloc(c->nbuckets, sizeof(rules_centry_t *));

    if (c->buckets == NULL) {
        free(c);
        return NULL;
    }

    return c;
}


static void
rules_cache_unlink(rules_cache_t *c, rules_centry_t *e)
{
    rules_centry_t  **pp;

    for (pp = &c->buckets[e->hash & (c->nbuckets - 1)]; *pp != e;
         pp = &(*pp)->hnext)
    {
        /* void */
    }

    *pp = e->hnext;

    if (e->prev) {
        e->prev->next = e->next;

    } else {
        c->head = e->next;
    }

    if (e->next) {
        e->next->prev = e->prev;

    } else {
        c->tail = e->prev;
    }

    c->entries--;
    c->bytes -= e->size;
    free(e);
}


static rules_centry_t *
rules_cache_find(const rules_cache_t *c, const unsigned char *key,
    size_t key_len, uint64_t hash)
{
    rules_centry_t  *e;

    for (e = c->buckets[hash & (c->nbuckets - 1)]; e; e = e->hnext) {
        if (e->hash == hash && e->key_len == key_len
            && memcmp(e->data, key, key_len) == 0)
        {
            return e;
        }
    }

    return NULL;
}


static void
rules_cache_to_front(rules_cache_t *c, rules_centry_t *e)
{
    if (c->head == e) {
        return;
    }

    /* out of the list */

    if (e->prev) {
        e->prev->next = e->next;
    }

    if (e->next) {
        e->next->prev = e->prev;

    } else {
        c->tail = e->prev;
    }

    /* in at the front */

    e->prev = NULL;
    e->next = c->head;

    if (c->head) {
        c->head->prev = e;
    }

    c->head = e;

    if (c->tail == NULL) {
        c->tail = e;
    }
}


static void
rules_cache_grow(rules_cache_t *c)
{
    size_t            i, n;
    rules_centry_t  **b, *e, *next;

    n = c->nbuckets * 2;
    b = calloc(n, sizeof(rules_centry_t *));

    if (b == NULL) {
        return;     /* longer chains, still correct */
    }

    for (i = 0; i < c->nbuckets; i++) {
        for (e = c->buckets[i]; e; e = next) {
            next = e->hnext;
            e->hnext = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }

    free(c->buckets);
    c->buckets = b;
    c->nbuckets = n;
}


int
rules_cache_get(rules_cache_t *c, const unsigned char *key, size_t key_len,
    double *gen, size_t *length, double *stamp, size_t *logged,
    rules_str_t *state)
{
    rules_centry_t  *e;

    if (c == NULL || c->entries == 0) {
        return 0;
    }

    e = rules_cache_find(c, key, key_len, rules_hash64(key, key_len, 0));

    if (e == NULL) {
        return 0;
    }

    rules_cache_to_front(c, e);

    *gen = e->gen;
    *length = e->length;
    *stamp = e->stamp;
    *logged = e->logged;
    state->data = e->data + e->key_len;
    state->len = e->state_len;

    return 1;
}


int
rules_cache_put(rules_cache_t *c, const unsigned char *key, size_t key_len,
    double gen, size_t length, double stamp, size_t logged,
    const unsigned char *state, size_t state_len)
{
    size_t           size;
    uint64_t         hash;
    rules_centry_t  *e, **b;

    if (c == NULL) {
        return 0;
    }

    hash = rules_hash64(key, key_len, 0);
    e = rules_cache_find(c, key, key_len, hash);
    size = RULES_CENTRY_SIZE(key_len, state_len);

    if (e && size <= e->size && size >= e->size / 2) {
        /* the next state of a key mostly fits where the last one was */
        e->gen = gen;
        e->stamp = stamp;
        e->logged = logged;
        e->length = length;
        e->state_len = state_len;

        if (state_len) {
            memmove(e->data + key_len, state, state_len);
        }

        rules_cache_to_front(c, e);

        return 0;
    }

    if (e) {
        rules_cache_unlink(c, e);
    }

    /* room to grow a little in place */
    size += size / 8;

    if (size > c->max_bytes / 4) {
        return 0;   /* too big to be worth it, or no cache at all */
    }

    while (c->tail && c->bytes + size > c->max_bytes) {
        rules_cache_unlink(c, c->tail);
    }

    e = malloc(size);
    if (e == NULL) {
        return -1;
    }

    e->hash = hash;
    e->gen = gen;
    e->stamp = stamp;
    e->logged = logged;
    e->length = length;
    e->key_len = key_len;
    e->state_len = state_len;
    e->size = size;
    memcpy(e->data, key, key_len);

    if (state_len) {
        memcpy(e->data + key_len, state, state_len);
    }

    if (c->entries >= c->nbuckets) {
        rules_cache_grow(c);
    }

    b = &c->buckets[hash & (c->nbuckets - 1)];
    e->hnext = *b;
    *b = e;

    e->prev = NULL;
    e->next = c->head;

    if (c->head) {
        c->head->prev = e;
    }

    c->head = e;

    if (c->tail == NULL) {
        c->tail = e;
    }

    c->entries++;
    c->bytes += size;

    return 0;
}


void
rules_cache_del(rules_cache_t *c, const unsigned char *key, size_t key_len)
{
    rules_centry_t  *e;

    if (c == NULL || c->entries == 0) {
        return;
    }

    e = rules_cache_find(c, key, key_len, rules_hash64(key, key_len, 0));

    if (e) {
        rules_cache_unlink(c, e);
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


void
rules_cache_free(rules_cache_t *c)
{
    rules_centry_t  *e, *next;

    if (c == NULL) {
        return;
    }

    for (e = c->head; e; e = next) {
        next = e->next;
        free(e);
    }

    free(c->buckets);
    free(c);
}
