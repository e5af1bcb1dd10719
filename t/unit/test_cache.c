/*
 * The folded-state cache (src/rules_cache.c): lookups, replacement,
 * deletion, the byte bound with CLOCK eviction (the entries not looked up
 * since they were stored go first, oldest first), growth and deletion in
 * a large table, prefetching, random runs against a simple model,
 * without and with eviction, and the keys known as evicted; the keyed
 * hash (SipHash-2-4: the paper's test vector; a random key per process).
 * The tests after those of the hash set a fixed key, so that which keys
 * share a place in the table of evicted keys is the same every run.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules_internal.h"
#include "rules_cache.h"
#include "tap.h"


#define MODEL_KEYS  300


typedef struct {
    int      present;
    double   gen;
    size_t   length;
    size_t   state_len;
    char     state[64];
} model_t;


typedef struct {
    size_t   bad;             /* hits (or misses) the model disagrees with */
    size_t   over;            /* operations after which bytes > bound */
    size_t   hits;
    size_t   present;         /* keys the model holds at the end */
} run_t;


/*
 * A key that hashes as another under the engine's fixed hash
 * (rules_hash64(), whatever its seed), as a client could have made one:
 * each 8-byte word w goes in as F(w) = rotl(w * K2, 31) * K1, which can
 * be inverted.  Words b1, b2 with F(b1) = F(a1) ^ 2^36 and F(b2) = F(a2)
 * ^ 2^63 give the state after a1 a2 and after b1 b2 the same value: the
 * first difference becomes the top bit (rotl 27), which * 5 + K3 leaves
 * alone, and the second cancels it.
 */
static uint64_t
inverse(uint64_t x)
{
    uint64_t  inv;
    int       i;

    for (inv = x, i = 0; i < 6; i++) {
        inv *= 2 - x * inv;
    }

    return inv;
}


static uint64_t
word_in(uint64_t w)
{
    w *= 0xc2b2ae3d27d4eb4fULL;
    w = (w << 31) | (w >> 33);
    return w * 0x9e3779b97f4a7c15ULL;
}


static uint64_t
word_for(uint64_t f)
{
    f *= inverse(0x9e3779b97f4a7c15ULL);
    f = (f >> 31) | (f << 33);
    return f * inverse(0xc2b2ae3d27d4eb4fULL);
}


static void
colliding_keys(unsigned char a[24], unsigned char b[24])
{
    uint64_t  a1, a2, b1, b2;
    int       i;

    memcpy(a, "{uid:u1}", 8);
    memcpy(b, "{uid:u1}", 8);
    a1 = 0x4141414141414141ULL;
    a2 = 0x4242424242424242ULL;
    b1 = word_for(word_in(a1) ^ (1ULL << 36));
    b2 = word_for(word_in(a2) ^ (1ULL << 63));

    for (i = 0; i < 8; i++) {
        a[8 + i] = (unsigned char) (a1 >> (8 * i));
        a[16 + i] = (unsigned char) (a2 >> (8 * i));
        b[8 + i] = (unsigned char) (b1 >> (8 * i));
        b[16 + i] = (unsigned char) (b2 >> (8 * i));
    }
}


static uint64_t
hash_of(const char *key)
{
    return rules_cache_hash((const unsigned char *) key, strlen(key));
}


static int
get(rules_cache_t *c, const char *key, double *gen, size_t *length,
    rules_str_t *state)
{
    int     hit, clean;
    double  stamp;
    size_t  logged;

    hit = rules_cache_get(c, (const unsigned char *) key, strlen(key),
                          hash_of(key), gen, length, &stamp, &logged, &clean,
                          state);

    /* put() says clean for odd lengths: the flag comes back with them */

    if (hit && clean != (int) (*length & 1)) {
        *gen = -1;
    }

    return hit;
}


static int
put(rules_cache_t *c, const char *key, double gen, size_t length,
    const char *state)
{
    return rules_cache_put(c, (const unsigned char *) key, strlen(key),
                           hash_of(key), gen, length, 0, 0,
                           (int) (length & 1), (const unsigned char *) state,
                           strlen(state));
}


/* The bytes one entry of this key and state takes in a cache. */
static size_t
entry_bytes(const char *key, const char *state)
{
    size_t          n;
    rules_cache_t  *c;

    c = rules_cache_create(1 << 20);
    put(c, key, 1, 1, state);
    n = rules_cache_bytes(c);
    rules_cache_free(c);

    return n;
}


/*
 * 200000 random puts (half), deletions and lookups on MODEL_KEYS keys,
 * against a model.  A hit must be the key's latest put; a miss of a key
 * the model has counts as bad too unless the cache evicts (bound > 0).
 */
static run_t
run_model(rules_cache_t *c, size_t bound)
{
    size_t    i, k, length;
    long      clock;
    double    gen;
    char      key[32], state[64];
    int       hit;
    run_t     run;
    model_t   m[MODEL_KEYS];
    rules_str_t  st;

    memset(m, 0, sizeof(m));
    memset(&run, 0, sizeof(run));

    for (clock = 1; clock <= 200000; clock++) {
        k = (size_t) rand() % MODEL_KEYS;
        snprintf(key, sizeof(key), "key:%zu", k);

        switch (rand() % 4) {

        case 0:
        case 1:
            snprintf(state, sizeof(state), "s%zu-%ld%.*s", k, clock,
                     (int) (clock % 40),
                     "........................................");
            put(c, key, (double) clock, (size_t) clock, state);
            m[k].present = 1;
            m[k].gen = (double) clock;
            m[k].length = (size_t) clock;
            strcpy(m[k].state, state);
            m[k].state_len = strlen(state);
            break;

        case 2:
            rules_cache_del(c, (const unsigned char *) key, strlen(key));
            m[k].present = 0;
            break;

        default:
            hit = get(c, key, &gen, &length, &st);
            run.hits += hit;

            if (hit ? (!m[k].present || gen != m[k].gen
                       || length != m[k].length
                       || st.len != m[k].state_len
                       || memcmp(st.data, m[k].state, st.len) != 0)
                    : (m[k].present && bound == 0))
            {
                run.bad++;
            }
        }

        run.over += bound && rules_cache_bytes(c) > bound;
    }

    for (i = 0; i < MODEL_KEYS; i++) {
        run.present += m[i].present;
    }

    return run;
}


int
main(void)
{
    rules_cache_t  *c;
    rules_str_t     st;
    double          gen;
    size_t          length, i, bad, size;
    char            key[32], state[64];
    run_t           run;

    /* SipHash-2-4, key 00..0f, message 00..0e (Aumasson, Bernstein) */
    {
        unsigned char  msg[64];
        uint64_t       k[2], h1, h2;

        k[0] = 0x0706050403020100ULL;
        k[1] = 0x0f0e0d0c0b0a0908ULL;

        for (i = 0; i < sizeof(msg); i++) {
            msg[i] = (unsigned char) i;
        }

        ok(rules_siphash(k, msg, 15) == 0xa129ca6149be45e5ULL,
           "SipHash-2-4: the paper's test vector");
        ok(rules_siphash(k, msg, 0) == 0x726fdb47dd0e0e31ULL,
           "SipHash-2-4: the empty message");
        ok(rules_siphash(k, msg, 8) == 0x93f5f5799a932462ULL,
           "SipHash-2-4: one whole word");

        {
            unsigned char  ka[24], kb[24];

            colliding_keys(ka, kb);
            ok(memcmp(ka, kb, 24) != 0
               && rules_hash64(ka, 24, 0) == rules_hash64(kb, 24, 0)
               && rules_hash64(ka, 24, 12345) == rules_hash64(kb, 24, 12345),
               "two keys a client can make collide under the fixed hash, "
               "whatever its seed");
            ok(rules_cache_hash(ka, 24) != rules_cache_hash(kb, 24),
               "not under the cache's hash");
        }

        rules_cache_hash_key_set(NULL);
        h1 = hash_of("{uid:u1}");
        ok(h1 == hash_of("{uid:u1}"), "a key's hash is the same each time");
        rules_cache_hash_key_set(NULL);
        h2 = hash_of("{uid:u1}");
        ok(h1 != h2, "and another under another random key (the "
           "process's: a client cannot make keys collide)");

        /* (one under which the twenty keys evicted below each have a
         * place of their own in the table of evicted keys) */
        k[0] = 19;
        k[1] = 2;
        rules_cache_hash_key_set(k);
    }

    c = rules_cache_create(1 << 20);
    ok(c != NULL, "created");

    ok(!get(c, "a", &gen, &length, &st), "an empty cache misses");

    is_int(put(c, "a", 7, 40, "state-a"), 0, "put");
    ok(get(c, "a", &gen, &length, &st), "then hits");
    ok(gen == 7 && length == 40 && st.len == 7
       && memcmp(st.data, "state-a", 7) == 0, "with what was put");

    put(c, "a", 8, 41, "state-a2");
    ok(get(c, "a", &gen, &length, &st) && gen == 8 && st.len == 8,
       "a put replaces");
    is_int(rules_cache_entries(c), 1, "one entry");

    put(c, "e", 1, 1, "");
    ok(get(c, "e", &gen, &length, &st) && st.len == 0, "an empty state");

    rules_cache_del(c, (const unsigned char *) "a", 1);
    ok(!get(c, "a", &gen, &length, &st), "a deleted key misses");
    rules_cache_del(c, (const unsigned char *) "zz", 2);
    is_int(rules_cache_entries(c), 1, "deleting a missing key is harmless");

    /* cleared: every key misses, and the cache takes new ones */

    for (i = 0; i < 3000; i++) {
        snprintf(key, sizeof(key), "c%zu", i);
        put(c, key, (double) i, i, "0123456789");
    }

    rules_cache_clear(c);
    is_int(rules_cache_entries(c), 0, "cleared: no entry");
    is_int(rules_cache_bytes(c), 0, "cleared: no byte");
    ok(!get(c, "c7", &gen, &length, &st) && !get(c, "e", &gen, &length, &st),
       "cleared: the keys miss");
    put(c, "c7", 9, 9, "again");
    ok(get(c, "c7", &gen, &length, &st) && gen == 9 && st.len == 5,
       "cleared: a put then hits");

    rules_cache_free(c);

    /* the bound: the least recently used go first */

    size = 4096;
    c = rules_cache_create(size);

    for (i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "k%zu", i);
        put(c, key, (double) i, i, "0123456789");
    }

    ok(rules_cache_bytes(c) <= size, "bytes stay within the bound (%zu)",
       rules_cache_bytes(c));
    ok(get(c, "k99", &gen, &length, &st), "the latest entry is there");
    ok(!get(c, "k0", &gen, &length, &st), "the oldest is gone");

    /* the oldest left is touched: the next put evicts the one after it */

    for (i = 0; i < 100 && !get(c, (snprintf(key, sizeof(key), "k%zu", i),
                                     key), &gen, &length, &st); i++)
    {
        /* void */
    }

    put(c, "new", 1, 1, "0123456789");
    ok(get(c, key, &gen, &length, &st), "a touched entry stays (%s)", key);
    snprintf(key, sizeof(key), "k%zu", i + 1);
    ok(!get(c, key, &gen, &length, &st), "the least recent goes (%s)", key);

    memset(state, 'x', sizeof(state) - 1);
    state[sizeof(state) - 1] = '\0';
    rules_cache_free(c);

    c = rules_cache_create(200);
    put(c, "big", 1, 1, state);
    ok(!get(c, "big", &gen, &length, &st),
       "a state over a quarter of the bound is not kept");
    rules_cache_free(c);

    c = rules_cache_create(0);
    put(c, "a", 1, 1, "s");
    ok(!get(c, "a", &gen, &length, &st), "size 0 keeps nothing");
    rules_cache_free(c);

    /* random operations against a model, with no eviction */

    srand(42);
    c = rules_cache_create(64 << 20);
    run = run_model(c, 0);
    is_int(run.bad, 0, "200000 random operations agree with the model");
    is_int(rules_cache_entries(c), run.present, "and so does the entry count");
    rules_cache_free(c);

    /* the same under a small bound: a hit is never stale */

    c = rules_cache_create(8192);
    run = run_model(c, 8192);
    is_int(run.bad, 0, "with eviction, every hit is the latest put");
    is_int(run.over, 0, "and the bytes stay within the bound");
    ok(run.hits > 1000 && rules_cache_entries(c) > 10,
       "and the cache still holds keys (%zu hits, %zu entries)", run.hits,
       rules_cache_entries(c));
    rules_cache_free(c);

    /*
     * small and large states in turn under a tight bound (the large ones
     * evict several small ones, the small ones fill the holes): each
     * read back, then every one still there
     */

    {
        char    sbuf[1024], kbuf[32];
        size_t  len, bad = 0, over = 0, kept = 0, j;

        c = rules_cache_create(4096);

        for (j = 0; j < 400; j++) {
            len = (j % 5 == 4) ? 800 : 100 + (j % 4) * 60;
            snprintf(kbuf, sizeof(kbuf), "k%zu", j);
            memset(sbuf, 'a' + (int) (j % 26), len);
            sbuf[len] = '\0';
            put(c, kbuf, (double) j, j, sbuf);

            if (!get(c, kbuf, &gen, &length, &st) || st.len != len
                || memcmp(st.data, sbuf, len) != 0)
            {
                bad++;
            }

            over += rules_cache_bytes(c) > 4096;
        }

        for (j = 0; j < 400; j++) {
            snprintf(kbuf, sizeof(kbuf), "k%zu", j);

            if (!get(c, kbuf, &gen, &length, &st)) {
                continue;
            }

            kept++;
            len = (j % 5 == 4) ? 800 : 100 + (j % 4) * 60;

            if (length != j || st.len != len || st.data[0] != 'a' + j % 26
                || st.data[len - 1] != 'a' + j % 26)
            {
                bad++;
            }
        }

        is_int(bad, 0, "states of 100 to 800 bytes in turn: each reads back "
               "whole");
        is_int(over, 0, "and the bytes stay within the bound");
        ok(kept > 3, "and the last ones are kept (%zu)", kept);
        rules_cache_free(c);
    }

    /* a large table: growth, then deletion of every other key */

    c = rules_cache_create(64 << 20);

    for (i = 0; i < 20000; i++) {
        snprintf(key, sizeof(key), "user:%zu", i);
        snprintf(state, sizeof(state), "v%zu", i);
        put(c, key, (double) i, i, state);
    }

    for (i = 1; i < 20000; i += 2) {
        snprintf(key, sizeof(key), "user:%zu", i);
        rules_cache_del(c, (const unsigned char *) key, strlen(key));
    }

    for (i = 0, bad = 0; i < 20000; i++) {
        int hit;

        snprintf(key, sizeof(key), "user:%zu", i);
        snprintf(state, sizeof(state), "v%zu", i);
        hit = get(c, key, &gen, &length, &st);

        if (hit != (i % 2 == 0)
            || (hit && (gen != (double) i || st.len != strlen(state)
                        || memcmp(st.data, state, st.len) != 0)))
        {
            bad++;
        }
    }

    is_int(bad, 0, "20000 keys, half deleted: the rest all found");
    is_int(rules_cache_entries(c), 10000, "10000 entries left");

    {
        uint64_t     h[3];
        const char  *keys[3] = { "user:0", "user:1", "nobody" };

        for (i = 0; i < 3; i++) {
            h[i] = hash_of(keys[i]);
        }

        rules_cache_prefetch_slots(c, h, 3);
        rules_cache_prefetch_entries(c, h, 3);
        rules_cache_prefetch_slots(NULL, h, 3);
        rules_cache_prefetch_entries(NULL, h, 3);
    }

    ok(get(c, "user:0", &gen, &length, &st) && gen == 0
       && !get(c, "user:1", &gen, &length, &st),
       "prefetching changes nothing");
    rules_cache_free(c);

    /*
     * Nor does it count as a lookup for eviction: an entry that was only
     * prefetched goes first, as one never looked up; one looked up gets
     * its second chance.  A cache of ten entries, eight stored, one of
     * them prefetched (pass 0) or looked up (pass 1), then eight more.
     */
    {
        int        pass, kept[2];
        uint64_t   h;
        size_t     one;

        one = entry_bytes("old:0", "state-0123456789");

        for (pass = 0; pass < 2; pass++) {
            c = rules_cache_create(10 * one + one / 2);

            for (i = 0; i < 8; i++) {
                snprintf(key, sizeof(key), "old:%zu", i);
                put(c, key, 1, 1, "state-0123456789");
            }

            if (pass == 0) {
                h = hash_of("old:0");
                rules_cache_prefetch_slots(c, &h, 1);
                rules_cache_prefetch_entries(c, &h, 1);

            } else {
                (void) get(c, "old:0", &gen, &length, &st);
            }

            for (i = 0; i < 8; i++) {
                snprintf(key, sizeof(key), "new:%zu", i);
                put(c, key, 1, 1, "state-0123456789");
            }

            kept[pass] = get(c, "old:0", &gen, &length, &st);
            rules_cache_free(c);
        }

        ok(!kept[0] && kept[1], "a prefetched entry is evicted as one not "
           "looked up; a looked-up one stays");
    }

    /*
     * Evicted keys: a cache of ten entries, thirty keys stored once each.
     * The misses of the twenty evicted ones say so, once each; a key
     * never stored, or still cached, does not; a key stored again after
     * its eviction is forgotten, and so is every one after a clear.
     */
    {
        size_t  one, evicted, hits, again;

        one = entry_bytes("ev:0", "state-0123456789");
        c = rules_cache_create(10 * one + one / 2);
        ok(!rules_cache_evicted(c, hash_of("ev:0"))
           && rules_cache_evictions(c) == 0, "nothing evicted at first");

        for (i = 0; i < 30; i++) {
            snprintf(key, sizeof(key), "ev:%zu", i);
            put(c, key, 1, 1, "state-0123456789");
        }

        is_int(rules_cache_evictions(c), 20,
               "thirty keys in a cache of ten: twenty evicted");

        for (i = 0, evicted = 0, hits = 0, again = 0; i < 20; i++) {
            snprintf(key, sizeof(key), "ev:%zu", i);
            hits += get(c, key, &gen, &length, &st);
            evicted += rules_cache_evicted(c, hash_of(key));
            again += rules_cache_evicted(c, hash_of(key));
        }

        ok(hits == 0 && evicted == 20 && again == 0,
           "each evicted key's miss is known as one, once (%zu hits, "
           "%zu evicted, %zu again)", hits, evicted, again);
        ok(!rules_cache_evicted(c, hash_of("ev:25"))
           && !rules_cache_evicted(c, hash_of("never")),
           "a cached key and one never stored are not");

        /* ev:20..29 evicted by ten new keys; ev:20 then stored again */

        for (i = 0; i < 10; i++) {
            snprintf(key, sizeof(key), "ev2:%zu", i);
            put(c, key, 1, 1, "state-0123456789");
        }

        put(c, "ev:20", 1, 1, "state-0123456789");
        ok(!rules_cache_evicted(c, hash_of("ev:20")),
           "a key stored again is forgotten");
        ok(!get(c, "ev:21", &gen, &length, &st)
           && rules_cache_evicted(c, hash_of("ev:21")),
           "the others of that round are known");

        rules_cache_clear(c);
        ok(!rules_cache_evicted(c, hash_of("ev:22")),
           "a clear forgets them");
        is_int(rules_cache_evictions(c), 31,
               "evictions are counted, not cleared");
        ok(!rules_cache_evicted(NULL, hash_of("ev:22")),
           "no cache: nothing evicted");

        /* a clear forgets them also when no entry is left */

        for (i = 0; i < 30; i++) {
            snprintf(key, sizeof(key), "ev3:%zu", i);
            put(c, key, 1, 1, "state-0123456789");
        }

        for (i = 20; i < 30; i++) {
            snprintf(key, sizeof(key), "ev3:%zu", i);
            rules_cache_del(c, (const unsigned char *) key, strlen(key));
        }

        rules_cache_clear(c);
        ok(rules_cache_entries(c) == 0
           && !rules_cache_evicted(c, hash_of("ev3:0")),
           "a clear of a cache with no entry forgets them too");
        rules_cache_free(c);
    }

    /*
     * The table of evicted keys grows with the slots.  Two caches built
     * alike: 150 states of 500 bytes in 64 KB (about fifty evicted, the
     * table made with 1024 places); the second then drops them and takes
     * 600 small ones, so its slots (and the table) grow, with no more
     * eviction.  Both know the same evicted keys.
     */
    {
        int     pass;
        size_t  known[2], evictions[2], entries = 0;
        char    big[501];

        memset(big, 'b', 500);
        big[500] = '\0';

        for (pass = 0; pass < 2; pass++) {
            c = rules_cache_create(64 * 1024);

            for (i = 0; i < 150; i++) {
                snprintf(key, sizeof(key), "g:%zu", i);
                put(c, key, 1, 1, big);
            }

            if (pass == 1) {
                for (i = 0; i < 150; i++) {
                    snprintf(key, sizeof(key), "g:%zu", i);
                    rules_cache_del(c, (const unsigned char *) key,
                                    strlen(key));
                }

                for (i = 0; i < 600; i++) {
                    snprintf(key, sizeof(key), "small:%zu", i);
                    put(c, key, 1, 1, "");
                }

                entries = rules_cache_entries(c);
            }

            evictions[pass] = rules_cache_evictions(c);

            for (i = 0, known[pass] = 0; i < 150; i++) {
                snprintf(key, sizeof(key), "g:%zu", i);
                known[pass] += rules_cache_evicted(c, hash_of(key));
            }

            rules_cache_free(c);
        }

        ok(entries > 512 && evictions[1] == evictions[0],
           "the second cache's slots grew with no more eviction (%zu "
           "entries, %zu and %zu evictions)", entries, evictions[0],
           evictions[1]);
        ok(known[0] > 40 && known[1] == known[0],
           "the keys evicted before the growth are known after it (%zu "
           "and %zu)", known[0], known[1]);
    }

    return done_testing();
}
