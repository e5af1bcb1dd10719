/*
 * Per-key state: the binary format shared by the C state machines
 * (rules_state.c) and the Redis script (rules_script.c).
 *
 * All numbers are little-endian; "d" is an IEEE-754 double (every time is
 * an integer number of ms below 2^53, so doubles hold them exactly),
 * "H" an unsigned 16-bit, "I" an unsigned 32-bit, "B" a byte.  Time -1
 * means "none".  These are the struct.pack formats of Redis' Lua.
 *
 * Operation (one ARGV string per key, built by rules_event_build()): the
 * entries of the rules of the key's group that the event touches,
 * concatenated:
 *
 *     entry    = digest(8 bytes) type(B) ttl(d) params
 *     count    : min(H) within(d)                      -- add one event
 *     distinct : min(H) within(d) vlen(H) value        -- add the value
 *     absence  : action(B: 1 cancel, 2 trigger) after(d) within(d)
 *     sequence : nsteps(B) strict(I) within(d) hold(d) mask(I)
 *     shared   : within(d) vlen(H) value m(H) then m times (digest(8)
 *                min(H))                   -- type 5: add the value
 *
 * A count or distinct rule is touched when its "where" holds (distinct:
 * and the field has a value), an absence rule when "cancel" or "trigger"
 * holds, a sequence rule when at least one step's "where" holds.
 *
 * With sharing on (rules_set_sharing(), rules_shared_distinct; since
 * 2026-12-04), distinct rules are written as shared entries: the
 * distinct rules of a key that differ only in id, kind and min share one
 * record (at most RULES_SHARE_MAX_MEMBERS of them), named by a digest of
 * their definition without those members; the entry, written once for
 * all of them, lists each rule's digest and min.  Type 2 entries are
 * still read (logs written before).
 *
 * State (the Redis string value of the key): "R1" then records:
 *
 *     record   = digest(8) type(B) expire(d) from(d) until(d) plen(H)
 *                payload(plen bytes)
 *     count    : n(H) then n times t(d), the n largest times, descending
 *     distinct : n(H) then n times (t(d) vlen(H) value), by last-seen
 *                time descending (ties: most recently added first)
 *     absence  : armed(B) t_arm(d)
 *     sequence : nsteps(B) tc(d) fresh(B) then S[1..nsteps-1](d) then
 *                F[1..nsteps-1](d)
 *     shared   : a distinct payload, kept for the largest min of its
 *                rules, then m(H) and m times (digest(8) until(d)): each
 *                rule's digest and the end of its matched interval (0:
 *                not matched; it starts at -1), then j(H) and j times
 *                (digest(8) join(d)): the rules that joined the record
 *                after it began (added, or edited) count only the values
 *                last seen at or after their join time (the time of
 *                their first event there, or the record's latest value's
 *                + 1 ms when that is not earlier), as a fresh record
 *                would; a join goes once no older value is left.  The
 *                record's from/until span its rules'.
 *
 * A distinct payload holds at most RULES_RECORD_MAX_PAYLOAD bytes (the
 * payload length is 16-bit): the oldest values beyond are dropped.
 *
 * expire is the wall-clock ms after which the record is dropped (set to
 * wall + ttl when the record is written).  The record is matched at time
 * now iff from <= now < until, or (sequence) it completed on this event;
 * a shared record's rule iff now < its until.
 *
 * Sequence: S[i] is the latest start time of a partial match that reached
 * step i, F[i] the same among partial matches whose step-i event is the
 * key's previous event (needed by strict steps); tc the last completion.
 *
 * Applying an operation:
 *   1. Records whose expire <= wall are dropped.
 *   2. Each entry replaces its rule's record by the updated one (a new
 *      record when there was none); each other sequence record with a
 *      non-empty F gets F cleared (the event breaks strict chains).  An
 *      updated record that holds nothing (a sequence with no completion
 *      and no partial match, an absence cancelled) means what no record
 *      means: it is not written, and the rule's record, if any, goes.
 *      (Writers before 2026-12-04 wrote them; a reader keeps them until
 *      their rule's next update.)
 *   3. The reply lists the digests of the matched records (of a shared
 *      record: of its matched rules), in record order.  The state is
 *      written back only when it changed, with PEXPIRE max(expire) -
 *      wall; an empty state deletes the key.
 *   New records are appended after the kept ones, in entry order.
 */

#ifndef RULES_STATE_H
#define RULES_STATE_H

#include <string.h>

#include "rules_engine.h"


#define RULES_STATE_MAGIC      "R1"
#define RULES_STATE_MAGIC_LEN  2

/* a record (and entry) type besides the rule types: a shared distinct */
#define RULES_RECORD_SHARED    5

/* a record's payload length is 16-bit */
#define RULES_RECORD_MAX_PAYLOAD  65535

/*
 * A state of more records, or an operation of more entries, does not
 * parse (a state holds a record per rule and key, an operation an entry
 * per rule the event touches: RULES_MAX_RULES each, from a few rule
 * files at most); the bound keeps a large foreign value from costing
 * the reader many times its size.
 */
#define RULES_STATE_MAX_RECORDS   65536
#define RULES_OP_MAX_ENTRIES      65536

#define RULES_ACTION_CANCEL    1
#define RULES_ACTION_TRIGGER   2


/* A growable byte buffer. */
typedef struct {
    unsigned char  *data;
    size_t          len;
    size_t          size;
} rules_buf_t;

int rules_buf_grow(rules_buf_t *b, size_t more);
void rules_buf_free(rules_buf_t *b);


/*
 * Room for more bytes past b->len (0, or -1 when the allocation fails or
 * the length would pass SIZE_MAX / 2), and more bytes appended: inline,
 * as an event's states and its call are written by a few dozen small
 * appends, nearly all into room already there (rules_buf_grow() is the
 * rare path).
 */
static inline int
rules_buf_reserve(rules_buf_t *b, size_t more)
{
    if (more <= b->size - b->len) {
        return 0;
    }

    return rules_buf_grow(b, more);
}


static inline int
rules_buf_append(rules_buf_t *b, const void *p, size_t len)
{
    if (rules_buf_reserve(b, len) != 0) {
        return -1;
    }

    if (len) {
        memcpy(b->data + b->len, p, len);
    }

    b->len += len;

    return 0;
}


/*
 * Apply one key operation to a state.  state/state_len is the current
 * state (state_len == 0: no state).  On success returns 0, writes the
 * new state into *out (out->len == 0: delete the key), sets *changed,
 * *pttl (ms, for PEXPIRE) and appends the matched digests to *matched
 * (NULL: the matches are not asked for, and not computed).
 * Returns -1 on a malformed state or on memory exhaustion, -2 on a
 * malformed op.
 */
int rules_state_apply(const unsigned char *state, size_t state_len,
    const unsigned char *op, size_t op_len, int64_t now, int64_t wall,
    rules_buf_t *out, int *changed, int64_t *pttl, rules_buf_t *matched);

/*
 * The same, dropping besides the records of rules that known does not
 * have (by digest): a removed or edited rule's state goes with the key's
 * next write instead of lingering until it expires.
 */
int rules_state_apply_known(const unsigned char *state, size_t state_len,
    const unsigned char *op, size_t op_len, int64_t now, int64_t wall,
    const rules_set_t *known, rules_buf_t *out, int *changed, int64_t *pttl,
    rules_buf_t *matched);

/*
 * A state held parsed from one operation to the next, as a fold applies
 * a log: each operation costs the records it touches plus a copy of the
 * others, not a parse and a check of the whole state.
 *
 * rules_state_work_load() takes a state (state_len 0: none); it returns
 * 0, 1 when the state does not parse (w then holds no state: a caller
 * starts afresh), -1 on memory exhaustion.  The records point into
 * state, which must stay as it is while w uses it.
 *
 * rules_state_work_apply() applies one operation to w's state, as
 * rules_state_apply_known() does; w then holds the new state, in *out
 * (which must not be the buffer w's state is in, and must stay as it is
 * while w uses it).  On -2 (a malformed op) or -1 (no memory) w holds the
 * state it held.
 */
typedef struct rules_state_work_s  rules_state_work_t;

rules_state_work_t *rules_state_work_create(void);
void rules_state_work_free(rules_state_work_t *w);
int rules_state_work_load(rules_state_work_t *w, const unsigned char *state,
    size_t state_len);
/*
 * rules_state_work_load() of a state that this code wrote under the rule
 * set it is given next (a state cache's clean entry): the records are
 * taken as well-formed and known, not checked again.
 */
int rules_state_work_load_own(rules_state_work_t *w,
    const unsigned char *state, size_t state_len);

/*
 * Lets go of w's arrays when a large state or operation grew them past
 * what a usual one needs (the next use grows them again as needed).
 */
void rules_state_work_trim(rules_state_work_t *w);

int rules_state_work_apply(rules_state_work_t *w, const unsigned char *op,
    size_t op_len, int64_t now, int64_t wall, const rules_set_t *known,
    rules_buf_t *out, int *changed, int64_t *pttl, rules_buf_t *matched);

/*
 * rules_state_apply_known() on w's arrays, which it keeps (no allocation
 * once they have grown): the state loaded, then the op applied; w then
 * holds the new state, in *out.
 */
int rules_state_apply_work(rules_state_work_t *w, const unsigned char *state,
    size_t state_len, const unsigned char *op, size_t op_len, int64_t now,
    int64_t wall, const rules_set_t *known, rules_buf_t *out, int *changed,
    int64_t *pttl, rules_buf_t *matched);

/* Checks a state blob's structure; 0 when well-formed. */
int rules_state_validate(const unsigned char *state, size_t state_len);


/* The Redis script (rules_script.c) and the SHA1 hex of its text. */
extern const char  rules_script_text[];
const char *rules_script_sha1(void);

/* SHA1 of a buffer as 40 lowercase hex digits and a NUL (rules_sha1.c). */
void rules_sha1_hex(const unsigned char *p, size_t len, char out[41]);

#endif /* RULES_STATE_H */
