/*
 * The stored value of a state key (format R2) and the EVALSHA protocol
 * of the state script (rules_script.lua).
 *
 * Redis does not run the state machines: it keeps, per state key, a
 * snapshot and the log of the operations applied since, and the script
 * only appends.  The reader (the module, rules-replay --redis) folds the
 * log over the snapshot, parsed once (rules_state_work_apply(), the same
 * code as the in-process engine, one entry after the other), and now and
 * then writes the folded state back as
 * the new snapshot (a compaction, guarded by the value's generation).
 * One event costs Redis a GET and an APPEND per state key, whatever the
 * number of rules.
 *
 * Value (all numbers little-endian, as in rules_state.h):
 *
 *     value    = "R2" gen(d) stamp(d) snaplen(I) snapshot log
 *     snapshot = an R1 state (rules_state.h), or nothing
 *     log      = entries, in the order Redis applied them
 *     entry    = wall(d) now(d) oplen(I) op
 *
 * gen is a random 52-bit integer chosen by the writer of the snapshot
 * (an append keeps it): a value with the same gen and length is the same
 * value.  stamp is the wall-clock ms up to which the key's TTL was last
 * set: an item whose ttl reaches past it sets the TTL to ttl * 5/4 and
 * the stamp with it, so most items leave the TTL alone and the TTL
 * always covers every record the key holds.  wall is Redis' TIME when
 * the entry was appended (one per call), now the event time.  A value
 * that is not R2 (none, or an R1 state written by an earlier version)
 * becomes the snapshot of a new R2 value on the first append, with the
 * key's TTL when that reaches further than the append's (it covers every
 * record of the R1 state; ttl only the event's rules).  Not on a write
 * (kind 4) that finds one: its SET has replaced the TTL (an earlier
 * version's writer wrote the key after the writer cached it).
 *
 * EVALSHA sha numkeys KEYS... ARGV...: KEYS are the distinct state keys
 * of the call; ARGV holds one string per item, in order: its 47-byte
 * meta, then its argument (the script and RULES.STORE split them; one
 * string rather than two saves Redis an argument object per item):
 *
 *     item     = meta argument
 *     meta     = kind(B) key(H: 1-based index into KEYS) ttl(d) pttl(d)
 *                gen(d) newgen(d) length(d) split(I)
 *     body     = now(d) oplen(I) op: an event's entry, without its wall
 *
 *     append   : kind 1; the argument is the body.  Appends wall
 *                and the body (a missing or foreign value becomes a new
 *                one, of gen newgen); replies the value before (nil: none)
 *     read     : kind 2 (an event that touches no rule of the key, in a
 *                group without strict steps: nothing to write); the
 *                argument is a body, unused; replies the value
 *     compact  : kind 3; the argument is a snapshot that folds the
 *                value's first length bytes.  When the value still has
 *                that gen and is at least that long, it becomes "R2"
 *                newgen stamp snapshot tail (the entries appended since)
 *                and the reply is 1; otherwise nothing changes and the
 *                reply is 0.  An empty snapshot and no tail delete the key.
 *     write    : kind 4; the argument is the body (split bytes)
 *                then the whole new value, "R2" newgen stamp snaplen
 *                state, that the writer computed by applying the body to
 *                the value it cached (gen, length).  One SET ... GET
 *                stores it (PX pttl, or KEEPTTL when pttl is 0: the
 *                key's TTL already reaches the stamp); when the value it
 *                replaced was that one the reply is 1, otherwise the
 *                replaced value plus the entry is put back, as an append
 *                would have made it, and the reply is the value before.
 *     extend   : kind 6; the argument is a whole entry, wall(d)
 *                (the writer's clock) then the body.  When the value is
 *                still the one the writer cached (gen, length), the entry
 *                is appended (GETRANGE, STRLEN, APPEND: no large value
 *                moves), the TTL set when pttl is not 0 (the stamp then
 *                becomes the entry's wall + pttl), and the reply is 1;
 *                otherwise the body
 *                is appended as by an append item, and the reply is the
 *                value before.  Used instead of write for large states,
 *                while the log is short.
 *     create   : kind 5; as write, for a key the writer has no value of:
 *                the new value is the body applied to no state, stored
 *                with SET ... NX GET; when the key existed, nothing was
 *                set and the item is an append (the reply is the value).
 *                Writers since 2026-12-03 send an append for a key they
 *                have not cached (most are stored already: evicted, or
 *                written before the worker started); Redis still takes
 *                create from the writers of earlier versions.
 *
 * The reply is an array: Redis' wall time (ms), then one element per
 * item.  Items are applied in order; an item sees the items before it.
 */

#ifndef RULES_LOG_H
#define RULES_LOG_H

#include "rules_state.h"


#define RULES_VALUE_MAGIC        "R2"
#define RULES_VALUE_HEADER_LEN   22      /* magic gen stamp snaplen */
#define RULES_ENTRY_WALL_LEN     8
#define RULES_BODY_HEADER_LEN    12      /* now(d) oplen(I) */
#define RULES_META_LEN           47

/* a fold that applied this many entries asks for a compaction */
#define RULES_LOG_COMPACT_ENTRIES  8
/* and so does a value this long with at least two entries */
#define RULES_LOG_COMPACT_BYTES    4096

/*
 * A call that holds this many items (ten events with three state keys
 * each, as SPEC.md's rules have), or bytes, is sent and written at once,
 * rather than at the end of the event loop's pass, once the event that
 * reached the bound is in it whole (an event is never split over two
 * calls): Redis works on it while the worker evaluates the pass's next
 * events, instead of each waiting for the other.  The README's
 * benchmark section: 30 items against 12, 21, 45 and 1024 (the cap
 * before 2026-12-03).
 */
#define RULES_BATCH_MAX_ITEMS    30
#define RULES_BATCH_MAX_BYTES    (1024 * 1024)


/* the kinds this writer sends (create, kind 5, only Redis still takes) */
typedef enum {
    RULES_ITEM_APPEND = 1,
    RULES_ITEM_READ = 2,
    RULES_ITEM_COMPACT = 3,
    RULES_ITEM_WRITE = 4,
    RULES_ITEM_EXTEND = 6
} rules_item_kind_t;


/* write and extend: the state was computed by the writer */
#define RULES_ITEM_COMPUTED(kind)                                          \
    ((kind) == RULES_ITEM_WRITE || (kind) == RULES_ITEM_EXTEND)

/* a cached state whose value is longer is extended, not rewritten */
#define RULES_LOG_EXTEND_MIN     1024


/* What the state cache answered for a writing item (rules_log_plan). */
typedef enum {
    RULES_LOOKUP_NONE = 0,            /* not looked up: a read */
    RULES_LOOKUP_HIT,                 /* cached: write or extend */
    RULES_LOOKUP_MISS                 /* not cached: append */
} rules_lookup_t;


/* One item of a call. */
typedef struct {
    rules_item_kind_t     kind;
    rules_lookup_t        lookup;
    int                   evicted;    /* a miss of a key the cache had
                                         evicted (rules_cache_evicted()) */
    int64_t               now;
    int64_t               wall;       /* extend: the writer's clock */
    double                ttl;        /* of the op's rules */
    double                pttl;       /* write, create: the new value's
                                         TTL; 0: keep the key's */
    double                gen;
    double                newgen;
    double                length;
    const unsigned char  *op;         /* append, read, write */
    size_t                op_len;
    const unsigned char  *state;      /* compact, write */
    size_t                state_len;
    uint64_t              key_hash;   /* rules_cache_hash() of the key;
                                         0: not known (computed) */
} rules_item_t;


/* What a fold learnt about the stored value, for a compaction. */
typedef struct {
    int          r2;        /* the value is (now) an R2 value */
    double       gen;
    size_t       length;    /* of the value once the item is applied */
    size_t       entries;   /* log entries in it */
    int          damaged;   /* a malformed log: entries were skipped */
} rules_log_info_t;


/* the bytes a fold's buffers keep for the next (rules_log_fold()) */
#define RULES_LOG_WORK_KEEP      (1024 * 1024)

/* Buffers a fold reuses; state holds the folded state afterwards. */
typedef struct {
    rules_buf_t        a;
    rules_buf_t        b;
    rules_buf_t       *state;
    rules_state_work_t *parsed;   /* state, parsed (made when needed) */
    const rules_set_t *known;     /* the rules in use: the records of
                                     others are dropped; NULL: kept */
    size_t             extend_min; /* 0: RULES_LOG_EXTEND_MIN */
    int                computed;  /* state is an op's result (a fold) */
} rules_log_work_t;

void rules_log_work_free(rules_log_work_t *w);

/*
 * The state of a key after an item: value/value_len is the item's reply
 * (value == NULL: none), op/op_len the event's operation, wall the
 * reply's wall time, appended 1 for an append item (or a write that
 * fell back to one: newgen is the gen a new value got), 0 for a read.
 * Appends the matched digests to *matched; w->state is the new state
 * (len 0: empty).  With op NULL, w->state is the stored state as it
 * is, the log folded.  Returns -1 on memory exhaustion only: a damaged
 * value's log is applied up to the damage.
 */
int rules_log_fold(const unsigned char *value, size_t value_len,
    const unsigned char *op, size_t op_len, int64_t now, int64_t wall,
    int appended, double newgen, rules_log_work_t *w, rules_buf_t *matched,
    rules_log_info_t *info);

/* A fresh random gen (52 bits), different in every process. */
double rules_log_newgen(void);

typedef struct rules_cache_s  rules_cache_t;

/*
 * The item for an event's key operation ko on key: a write (or an
 * extend) when the cache holds the key (the new state is computed from
 * the cached one, with wall the local clock; its matched digests are in
 * *matched and count if the reply is 1; the cache takes the new state at
 * once, so that the key's next event chains on it), else an append (the
 * value comes back to fold), or a read when the operation writes
 * nothing; item->lookup says whether the cache held the key, and
 * item->evicted whether a miss was of a key the cache had evicted to
 * make room (rules_cache_evicted()).  key_hash: rules_cache_hash() of
 * the key.
 * item->state points into w until the next call: add the item to the
 * batch first.  -1: no memory.
 */
int rules_log_plan(rules_cache_t *cache, const unsigned char *key,
    size_t key_len, uint64_t key_hash, const rules_keyop_t *ko, int64_t now,
    int64_t wall, rules_log_work_t *w, rules_buf_t *matched,
    rules_item_t *item);

/*
 * A reply to an event's item that is a value (a write's fallback, an
 * append, a read; value NULL: nil): folds it into *matched, updates the
 * cache, and sets *compact to a compaction item when the log is long
 * (compact->kind 0: none; its state points into w).  -1: no memory.
 */
int rules_log_reply(rules_cache_t *cache, rules_str_t key,
    const rules_item_t *item, const unsigned char *value, size_t value_len,
    int64_t wall, rules_log_work_t *w, rules_buf_t *matched,
    rules_item_t *compact);

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

/* Adds an item; returns its index, or -1 on memory exhaustion (the batch
 * is then as it was). */
long rules_batch_add(rules_batch_t *b, const unsigned char *key,
    size_t key_len, const rules_item_t *item);

size_t rules_batch_items(const rules_batch_t *b);
size_t rules_batch_bytes(const rules_batch_t *b);

/* What rules_batch_add() was given for an item (op, state point in). */
void rules_batch_item(const rules_batch_t *b, size_t i, rules_str_t *key,
    rules_item_t *item);

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
