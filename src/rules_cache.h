/*
 * A process-local cache of folded key states: key -> (gen, length,
 * TTL stamp, log entries in the value, state), bounded in bytes; the
 * entries not looked up since they were stored go first, oldest first
 * (CLOCK, rules_cache.c).  It lets a writer that saw a key last compute
 * the key's next state itself and replace the stored value in one step
 * when the value is still the one it saw (rules_log.h, "write" items);
 * any other writer's change makes that check fail, so a stale entry
 * costs a fallback, never a wrong state.
 */

#ifndef RULES_CACHE_H
#define RULES_CACHE_H

#include "rules_engine.h"


typedef struct rules_cache_s  rules_cache_t;


/* max_bytes 0: a cache that holds nothing (every lookup misses). */
rules_cache_t *rules_cache_create(size_t max_bytes);
void rules_cache_free(rules_cache_t *c);

/*
 * The hash the calls below take with a key (always this function's):
 * SipHash under a key of the process, random unless set by
 * rules_cache_hash_key_set() (key NULL: a random one), which tests use
 * to make the hashes the same from run to run.
 */
uint64_t rules_cache_hash(const unsigned char *key, size_t key_len);
void rules_cache_hash_key_set(const uint64_t key[2]);

/*
 * 1 and the entry when the key is cached (the state pointer is valid
 * until the next put or del); 0 otherwise.  hash: rules_cache_hash() of
 * the key.  *clean is what the put said of the state.
 */
int rules_cache_get(rules_cache_t *c, const unsigned char *key,
    size_t key_len, uint64_t hash, double *gen, size_t *length,
    double *stamp, size_t *logged, int *clean, rules_str_t *state);

/*
 * Start loading what looking up these keys (by their hashes) reads, so
 * that the cache misses of an event's keys overlap instead of following
 * each other: first the slots, then, once those have had time to
 * arrive, the entries they point at (RULES_CACHE_PREFETCH_LINES lines
 * of each).  Neither changes anything; the second reads the slots.
 */
#define RULES_CACHE_PREFETCH_LINES  4

void rules_cache_prefetch_slots(rules_cache_t *c, const uint64_t *hash,
    size_t n);
void rules_cache_prefetch_entries(rules_cache_t *c, const uint64_t *hash,
    size_t n);

/*
 * Replaces the key's entry; -1 on memory exhaustion (the key is gone).
 * clean: the state is the writer's own, computed by the state machines
 * under the rules the cache's user keeps (rules_log.c): well-formed,
 * and holding no record of another rule set, so that its next use may
 * skip both checks.
 */
int rules_cache_put(rules_cache_t *c, const unsigned char *key,
    size_t key_len, uint64_t hash, double gen, size_t length, double stamp,
    size_t logged, int clean, const unsigned char *state, size_t state_len);

void rules_cache_del(rules_cache_t *c, const unsigned char *key,
    size_t key_len);

/* Drops every entry (the tables keep their sizes). */
void rules_cache_clear(rules_cache_t *c);

/* entries and bytes held, entries evicted to make room, for metrics */
size_t rules_cache_entries(const rules_cache_t *c);
size_t rules_cache_bytes(const rules_cache_t *c);
size_t rules_cache_evictions(const rules_cache_t *c);

/*
 * After a miss on the key of this hash: 1 when the cache evicted the key
 * to make room (one of the keys evicted last: a table of the hashes, as
 * many as the cache has slots, rules_cache.c), a miss a larger cache
 * would have hit; the key is then forgotten, so that a miss counts once.
 * 0 for a key never cached, or evicted long ago, or dropped otherwise.
 * rules_cache_clear() forgets them all.
 */
int rules_cache_evicted(rules_cache_t *c, uint64_t hash);

#endif /* RULES_CACHE_H */
