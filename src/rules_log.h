/*
 * The stored value of a state key (format R2) and the EVALSHA protocol
 * of the state script (rules_script.lua).
 *
 * Redis does not run the state machines: it keeps, per state key, a
 * snapshot and the log of the operations applied since, and the script
 * only appends.  The reader (the module, rules-replay --redis) folds the
 * log over the snapshot with rules_state_apply(), the same code as the
 * in-process engine, and now and then writes the folded state back as
 * the new snapshot (a compaction, guarded by the value's generation).
 * One event costs Redis a GET and an APPEND per state key, whatever the
 * number of rules.
 *
 * Value (all numbers little-endian, as in rules_state.h):
 *
 *     value    = "R2" gen(I) stamp(d) snaplen(I) snapshot log
 *     snapshot = an R1 state (rules_state.h), or nothing
 *     log      = entries, in the order Redis applied them
 *     entry    = wall(d) now(d) oplen(I) op
 *
 * gen changes with every compaction; a new value starts with
 * gen = wall mod 2^32.  stamp is the wall-clock ms up to which the key's
 * TTL was last set: an append whose ttl reaches past it sets the TTL to
 * ttl * 5/4 (PEXPIRE) and the stamp with it, so most appends leave the
 * TTL alone and the key's TTL always covers every record it holds.
 * wall is Redis' TIME when the entry was appended (one per call), now
 * the event time.  A value that is not R2 (none, or an R1 state written
 * by an earlier version) becomes the snapshot of a new R2 value on the
 * first append.
 *
 * EVALSHA sha numkeys KEYS... ARGV...: KEYS are the distinct state keys
 * of the call; ARGV holds two strings per item, in order:
 *
 *     meta     = kind(B) key(H: 1-based index into KEYS) x(d) y(d)
 *     append   : kind 1, x = ttl of the op's rules (ms); the second
 *                string is the entry body now(d) oplen(I) op; the item's
 *                reply is the value before the append (nil when none)
 *     read     : kind 2 (an event that touches no rule of the key, in a
 *                group without strict steps: nothing to write); the
 *                second string is a body as for append, unused by the
 *                script; the reply is the value
 *     compact  : kind 3, x = gen, y = the length of the value prefix the
 *                snapshot folds; the second string is the snapshot.
 *                When the value still has that gen and is at least that
 *                long, it becomes "R2" gen+1 stamp snapshot tail (the
 *                entries appended after the prefix), and the reply is 1;
 *                otherwise nothing changes and the reply is 0.  An empty
 *                snapshot and no tail delete the key.
 *
 * The reply is an array: Redis' wall time (ms), then one element per
 * item.  Items are applied in order; an item sees the items before it.
 */

#ifndef RULES_LOG_H
#define RULES_LOG_H

#include "rules_state.h"


#define RULES_VALUE_MAGIC        "R2"
#define RULES_VALUE_HEADER_LEN   18      /* magic gen stamp snaplen */
#define RULES_ENTRY_WALL_LEN     8
#define RULES_BODY_HEADER_LEN    12      /* now(d) oplen(I) */
#define RULES_META_LEN           19      /* kind(B) key(H) x(d) y(d) */

/* a fold that applied this many entries asks for a compaction */
#define RULES_LOG_COMPACT_ENTRIES  4
/* and so does a value this long with at least two entries */
#define RULES_LOG_COMPACT_BYTES    4096

#define RULES_BATCH_MAX_ITEMS    1024    /* items of one call */
#define RULES_BATCH_MAX_BYTES    (1024 * 1024)


typedef enum {
    RULES_ITEM_APPEND = 1,
    RULES_ITEM_READ = 2,
    RULES_ITEM_COMPACT = 3
} rules_item_kind_t;


/* What a fold learnt about the stored value, for a compaction. */
typedef struct {
    int          r2;        /* the value is (now) an R2 value */
    uint32_t     gen;
    size_t       length;    /* of the value once the item is applied */
    size_t       entries;   /* log entries in it */
    int          damaged;   /* a malformed log: entries were skipped */
} rules_log_info_t;


/* Buffers a fold reuses; state holds the folded state afterwards. */
typedef struct {
    rules_buf_t  a;
    rules_buf_t  b;
    rules_buf_t  scratch;
    rules_buf_t *state;
} rules_log_work_t;

void rules_log_work_free(rules_log_work_t *w);

/*
 * The state of a key after an item: value/value_len is the item's reply
 * (value == NULL: none), op/op_len the event's operation, wall the
 * reply's wall time, appended 1 for an append item, 0 for a read item.
 * Appends the matched digests to *matched; w->state is the new state
 * (len 0: empty).  With op NULL, w->state is the stored state as it
 * is, the log folded.  Returns -1 on memory exhaustion only: a damaged
 * value's log is applied up to the damage.
 */
int rules_log_fold(const unsigned char *value, size_t value_len,
    const unsigned char *op, size_t op_len, int64_t now, int64_t wall,
    int appended, rules_log_work_t *w, rules_buf_t *matched,
    rules_log_info_t *info);

/* 1 when the fold's result should be written back as the snapshot. */
int rules_log_wants_compaction(const rules_log_info_t *info);

/* Checks an R2 value's structure (snapshot and log); 0 when well-formed. */
int rules_log_validate(const unsigned char *value, size_t value_len);


/* The items of one EVALSHA, built incrementally. */
typedef struct {
    rules_buf_t      data;        /* keys and arguments, back to back */
    size_t          *key_off;
    size_t          *key_len;
    size_t           nkeys;
    size_t           keys_size;
    size_t          *arg_off;
    size_t          *arg_len;
    size_t           nargs;
    size_t           args_size;
    uint32_t        *table;       /* key index + 1 by hash, 0: free */
    size_t           table_size;
} rules_batch_t;

/*
 * Adds an item; returns its index, or -1 on memory exhaustion.  append
 * and read: p is the op (now is written before it); compact: p is the
 * snapshot, x the gen and y the prefix length.
 */
long rules_batch_add(rules_batch_t *b, rules_item_kind_t kind,
    const unsigned char *key, size_t key_len, int64_t now, double x,
    double y, const unsigned char *p, size_t len);

size_t rules_batch_items(const rules_batch_t *b);
size_t rules_batch_bytes(const rules_batch_t *b);

/* The key and the second argument (body or snapshot) of an item. */
rules_str_t rules_batch_key(const rules_batch_t *b, size_t item);
rules_str_t rules_batch_op(const rules_batch_t *b, size_t item);
int64_t rules_batch_now(const rules_batch_t *b, size_t item);

/*
 * The EVALSHA arguments after the SHA: numkeys, keys, arguments;
 * rules_batch_argc() of them.  numkeys is written into nbuf (32 bytes).
 * The pointers are valid until the next add or reset.
 */
size_t rules_batch_argc(const rules_batch_t *b);
void rules_batch_argv(const rules_batch_t *b, char nbuf[32],
    const char **argv, size_t *argvlen);

void rules_batch_reset(rules_batch_t *b);
void rules_batch_free(rules_batch_t *b);

#endif /* RULES_LOG_H */
