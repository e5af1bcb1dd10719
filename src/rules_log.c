/*
 * R2 values: folding a key's log over its snapshot, and the items of
 * one EVALSHA of the state script.  rules_log.h documents the format.
 */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <time.h>
#include <unistd.h>

#include "rules_internal.h"
#include "rules_cache.h"
#include "rules_log.h"


typedef struct {
    const unsigned char  *snap;
    size_t                snap_len;
    const unsigned char  *log;
    size_t                log_len;
    double                gen;
} rules_value_t;


/* 1 and the parts when value is an R2 value with a whole snapshot. */
static int
rules_value_parse(const unsigned char *value, size_t len, rules_value_t *v)
{
    size_t  snap_len;
    double  gen;

    if (value == NULL || len < RULES_VALUE_HEADER_LEN
        || memcmp(value, RULES_VALUE_MAGIC, 2) != 0)
    {
        return 0;
    }

    snap_len = rules_get_u32(value + 18);

    if (snap_len > len - RULES_VALUE_HEADER_LEN) {
        return 0;
    }

    /* as the script's r2() and RULES.STORE's rs_r2(): else foreign */

    gen = rules_get_f64(value + 2);

    if (isnan(gen) || !isfinite(rules_get_f64(value + 10))) {
        return 0;
    }

    v->gen = gen;
    v->snap = value + RULES_VALUE_HEADER_LEN;
    v->snap_len = snap_len;
    v->log = v->snap + snap_len;
    v->log_len = len - RULES_VALUE_HEADER_LEN - snap_len;

    return 1;
}


/*
 * The next entry of a log; 1 when there is a well-formed one, 0 at the
 * end, -1 when the rest is damaged.
 */
static int
rules_log_next(const unsigned char **p, const unsigned char *end,
    int64_t *now, int64_t *wall, const unsigned char **op, size_t *op_len)
{
    size_t   len;
    double   w, n;

    if (*p == end) {
        return 0;
    }

    if ((size_t) (end - *p) < RULES_ENTRY_WALL_LEN + RULES_BODY_HEADER_LEN) {
        return -1;
    }

    w = rules_get_f64(*p);
    n = rules_get_f64(*p + 8);
    len = rules_get_u32(*p + 16);

    if (!(w >= 0 && w <= (double) RULES_MAX_TS_MS)
        || !(n >= 0 && n <= (double) RULES_MAX_TS_MS)
        || len > (size_t) (end - *p) - 20)
    {
        return -1;
    }

    *wall = (int64_t) w;
    *now = (int64_t) n;
    *op = *p + 20;
    *op_len = len;
    *p += 20 + len;

    return 1;
}


/* w->parsed, made on first use. */
static rules_state_work_t *
rules_log_parsed(rules_log_work_t *w)
{
    if (w->parsed == NULL) {
        w->parsed = rules_state_work_create();
    }

    return w->parsed;
}


/*
 * w->state (the bytes of a value's snapshot, or of a value that is not
 * R2) parsed into w->parsed; a state that does not parse becomes empty.
 */
static int
rules_log_load(rules_log_work_t *w)
{
    int  rc;

    if (rules_log_parsed(w) == NULL) {
        return -1;
    }

    rc = rules_state_work_load(w->parsed, w->state->data, w->state->len);

    if (rc == 1) {
        w->state->len = 0;
        rc = 0;
    }

    return rc;
}


/*
 * Applies one op to w->state, the result becomes w->state; a malformed
 * op leaves the state as it was (0), and so does no memory for it, but
 * that is -1: a fold that went on without the op would answer its event,
 * and cache the state under the value's gen and length, as if the op
 * were in it.
 */
static int
rules_log_apply(rules_log_work_t *w, const unsigned char *op, size_t op_len,
    int64_t now, int64_t wall, rules_buf_t *matched)
{
    int           changed, rc;
    int64_t       pttl;
    rules_buf_t  *out;

    out = (w->state == &w->a) ? &w->b : &w->a;

    rc = rules_state_work_apply(w->parsed, op, op_len, now, wall, w->known,
                                out, &changed, &pttl, matched);

    if (rc == 0) {
        w->state = out;
        w->computed = 1;
    }

    return (rc == -1) ? -1 : 0;
}


int
rules_log_fold(const unsigned char *value, size_t value_len,
    const unsigned char *op, size_t op_len, int64_t now, int64_t wall,
    int appended, double newgen, rules_log_work_t *w, rules_buf_t *matched,
    rules_log_info_t *info)
{
    int                   rc;
    int64_t               enow, ewall;
    size_t                eop_len;
    rules_value_t         v;
    const unsigned char  *p, *end, *eop;

    memset(info, 0, sizeof(rules_log_info_t));

    /* what a large value (a foreign one, say) grew is let go now */

    if (w->a.size > RULES_LOG_WORK_KEEP) {
        rules_buf_free(&w->a);
    }

    if (w->b.size > RULES_LOG_WORK_KEEP) {
        rules_buf_free(&w->b);
    }

    rules_state_work_trim(w->parsed);

    w->a.len = 0;
    w->b.len = 0;
    w->state = &w->a;
    w->computed = 0;

    if (rules_value_parse(value, value_len, &v)) {
        info->r2 = 1;
        info->gen = v.gen;
        info->length = value_len;

        if (rules_buf_append(&w->a, v.snap, v.snap_len) != 0
            || rules_log_load(w) != 0)
        {
            return -1;
        }

        p = v.log;
        end = v.log + v.log_len;

        for ( ;; ) {
            rc = rules_log_next(&p, end, &enow, &ewall, &eop, &eop_len);

            if (rc == 0) {
                break;
            }

            if (rc < 0) {
                info->damaged = 1;
                break;
            }

            /* an entry before the event's own: its matches are not asked */
            if (rules_log_apply(w, eop, eop_len, enow, ewall, NULL) != 0) {
                return -1;
            }

            info->entries++;
        }

    } else {
        /* none, or not R2: the script makes it the snapshot of a new one */
        if ((value && rules_buf_append(&w->a, value, value_len) != 0)
            || rules_log_load(w) != 0)
        {
            return -1;
        }

        if (appended) {
            info->r2 = 1;
            info->gen = newgen;
            info->length = RULES_VALUE_HEADER_LEN + (value ? value_len : 0);
        }
    }

    if (op == NULL) {
        /* the stored state as it is (none when it does not parse) */
        return 0;
    }

    if (appended) {
        info->length += RULES_ENTRY_WALL_LEN + RULES_BODY_HEADER_LEN
                        + op_len;
        info->entries++;
    }

    return rules_log_apply(w, op, op_len, now, wall, matched);
}


int
rules_log_wants_compaction(const rules_log_info_t *info)
{
    if (!info->r2) {
        return 0;
    }

    return info->damaged
           || info->entries >= RULES_LOG_COMPACT_ENTRIES
           || (info->entries >= 2 && info->length >= RULES_LOG_COMPACT_BYTES);
}


int
rules_log_validate(const unsigned char *value, size_t value_len)
{
    int                   rc;
    int64_t               now, wall;
    size_t                op_len;
    rules_value_t         v;
    const unsigned char  *p, *op;

    if (!rules_value_parse(value, value_len, &v)) {
        return -1;
    }

    if (v.snap_len && rules_state_validate(v.snap, v.snap_len) != 0) {
        return -1;
    }

    p = v.log;

    while ((rc = rules_log_next(&p, v.log + v.log_len, &now, &wall, &op,
                                &op_len))
           > 0)
    {
        /* nothing */
    }

    return rc;
}


void
rules_log_work_free(rules_log_work_t *w)
{
    rules_buf_free(&w->a);
    rules_buf_free(&w->b);
    rules_state_work_free(w->parsed);
    w->parsed = NULL;
    w->state = NULL;
}


double
rules_log_newgen(void)
{
    static uint64_t  x;

    if (x == 0) {
        x = (uint64_t) time(NULL) * 0x9e3779b97f4a7c15ULL
            ^ ((uint64_t) getpid() << 32) ^ (uint64_t) (uintptr_t) &x;
        x |= 1;
    }

    /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;

    return (double) ((x * 0x2545f4914f6cdd1dULL) >> 12);
}


/* ---- planning an event's items and reading their replies ------------ */


int
rules_log_plan(rules_cache_t *cache, const unsigned char *key,
    size_t key_len, uint64_t key_hash, const rules_keyop_t *ko, int64_t now,
    int64_t wall, rules_log_work_t *w, rules_buf_t *matched,
    rules_item_t *item)
{
    int           changed, clean, rc;
    double        gen, stamp;
    size_t        length, logged;
    int64_t       pttl;
    rules_str_t   cached;
    rules_buf_t  *out, *v;

    memset(item, 0, sizeof(rules_item_t));
    item->now = now;
    item->ttl = (double) ko->ttl;
    item->op = ko->op;
    item->op_len = ko->op_len;
    item->newgen = rules_log_newgen();
    item->key_hash = key_hash;

    if (!ko->writes) {
        item->kind = RULES_ITEM_READ;
        return 0;
    }

    if (!rules_cache_get(cache, key, key_len, key_hash, &gen, &length,
                         &stamp, &logged, &clean, &cached))
    {
        /*
         * Not cached: the event is appended, and the value before it
         * comes back to fold.  A state computed here from no state would
         * be right for a new key only; for a key stored already (evicted
         * from the cache, or written before this worker started) it
         * would be computed, sent and refused for nothing.
         */
        item->kind = RULES_ITEM_APPEND;
        item->lookup = RULES_LOOKUP_MISS;
        item->evicted = rules_cache_evicted(cache, key_hash);
        matched->len = 0;
        return 0;
    }

    item->kind = RULES_ITEM_WRITE;
    item->lookup = RULES_LOOKUP_HIT;
    item->gen = gen;
    item->length = (double) length;

    /* the next state, computed here */

    out = &w->a;
    w->state = out;
    matched->len = 0;

    if (rules_log_parsed(w) == NULL) {
        return -1;
    }

    /*
     * A clean state (computed here, under these rules) is loaded without
     * checking it again; any other that does not parse is taken as none.
     */

    rc = (clean && w->known)
         ? rules_state_work_load_own(w->parsed, cached.data, cached.len)
         : rules_state_work_load(w->parsed, cached.data, cached.len);

    if (rc >= 0) {
        rc = rules_state_work_apply(w->parsed, ko->op, ko->op_len, now, wall,
                                    w->known, out, &changed, &pttl, matched);
    }

    if (rc != 0) {
        /* a malformed op, or no memory: ask for the value */
        rules_cache_del(cache, key, key_len);
        item->kind = RULES_ITEM_APPEND;
        matched->len = 0;
        return 0;
    }

    /*
     * The TTL must reach the longest record's expiry: kept when the key's
     * reaches it already, else set a quarter beyond it.
     */

    if (pttl < 1) {
        pttl = 1;
    }

    if (stamp >= (double) (wall + pttl)) {
        item->pttl = 0;

    } else {
        pttl += pttl / 4;
        item->pttl = (double) pttl;
        stamp = (double) (wall + pttl);
    }

    /*
     * A large state is extended with the entry (which carries this
     * clock, so that a reader folds it to the same state) rather than
     * rewritten, until its log is due for folding.
     */

    if (RULES_VALUE_HEADER_LEN + out->len
        >= (w->extend_min ? w->extend_min : RULES_LOG_EXTEND_MIN)
        && logged + 1 < RULES_LOG_COMPACT_ENTRIES)
    {
        item->kind = RULES_ITEM_EXTEND;
        item->wall = wall;        /* the stamp is wall + pttl */
        length += RULES_ENTRY_WALL_LEN + RULES_BODY_HEADER_LEN + ko->op_len;

        return rules_cache_put(cache, key, key_len, key_hash, gen, length,
                               stamp, logged + 1, w->known != NULL,
                               out->data, out->len);
    }

    v = &w->b;
    v->len = 0;

    if (rules_buf_reserve(v, RULES_VALUE_HEADER_LEN + out->len) != 0) {
        return -1;
    }

    memcpy(v->data, RULES_VALUE_MAGIC, 2);
    rules_put_f64(v->data + 2, item->newgen);
    rules_put_f64(v->data + 10, stamp);
    rules_put_u32(v->data + 18, (uint32_t) out->len);

    if (out->len) {
        memcpy(v->data + RULES_VALUE_HEADER_LEN, out->data, out->len);
    }

    v->len = RULES_VALUE_HEADER_LEN + out->len;

    item->state = v->data;
    item->state_len = v->len;

    /* optimistic: the next event of the key chains on it */

    return rules_cache_put(cache, key, key_len, key_hash, item->newgen,
                           v->len, stamp, 0, w->known != NULL, out->data,
                           out->len);
}


int
rules_log_reply(rules_cache_t *cache, rules_str_t key,
    const rules_item_t *item, const unsigned char *value, size_t value_len,
    int64_t wall, rules_log_work_t *w, rules_buf_t *matched,
    rules_item_t *compact)
{
    int               appended, clean;
    uint64_t          hash;
    rules_log_info_t  info;

    compact->kind = 0;
    appended = (item->kind != RULES_ITEM_READ);
    matched->len = 0;

    if (rules_log_fold(value, value_len, item->op, item->op_len, item->now,
                       wall, appended, item->newgen, w, matched, &info)
        != 0)
    {
        rules_cache_del(cache, key.data, key.len);
        return -1;
    }

    hash = rules_cache_hash(key.data, key.len);

    /* the fold's state is clean once an op was applied to it here */
    clean = (w->known != NULL && w->computed);

    if (!rules_log_wants_compaction(&info)) {
        if (!info.r2 || info.damaged) {
            rules_cache_del(cache, key.data, key.len);
            return 0;
        }

        return rules_cache_put(cache, key.data, key.len, hash, info.gen,
                               info.length, 0, info.entries, clean,
                               w->state->data, w->state->len);
    }

    memset(compact, 0, sizeof(rules_item_t));
    compact->key_hash = hash;
    compact->kind = RULES_ITEM_COMPACT;
    compact->gen = info.gen;
    compact->length = (double) info.length;
    compact->newgen = rules_log_newgen();
    compact->state = w->state->data;
    compact->state_len = w->state->len;

    /*
     * The cache takes the compacted value at once (optimistic, as for a
     * write: a tail appended since fails the compaction).
     */

    return rules_cache_put(cache, key.data, key.len, hash, compact->newgen,
                           RULES_VALUE_HEADER_LEN + w->state->len, 0, 0,
                           clean, w->state->data, w->state->len);
}


/* ---- the items of one call ------------------------------------------ */


static int
rules_batch_grow(size_t **a, size_t **b, size_t *size, size_t n)
{
    size_t  *na, *nb, ns;

    if (n < *size) {
        return 0;
    }

    ns = *size ? *size * 2 : 64;

    na = realloc(*a, ns * sizeof(size_t));
    if (na == NULL) {
        return -1;
    }

    *a = na;

    nb = realloc(*b, ns * sizeof(size_t));
    if (nb == NULL) {
        return -1;
    }

    *b = nb;
    *size = ns;

    return 0;
}


static int
rules_batch_rehash(rules_batch_t *b, size_t size)
{
    size_t     i, h;
    uint32_t  *t;

    t = calloc(size, sizeof(uint32_t));
    if (t == NULL) {
        return -1;
    }

    for (i = 0; i < b->nkeys; i++) {
        h = rules_cache_hash(b->data.data + b->key_off[i], b->key_len[i]);

        for (h &= size - 1; t[h]; h = (h + 1) & (size - 1)) { /* void */ }

        t[h] = (uint32_t) i + 1;
    }

    free(b->table);
    b->table = t;
    b->table_size = size;

    return 0;
}


/* The 1-based index of the key in KEYS, added when new; 0: no memory. */
static size_t
rules_batch_key_index(rules_batch_t *b, const unsigned char *key,
    size_t key_len, uint64_t hash)
{
    size_t  h, i, off;

    if (2 * (b->nkeys + 1) > b->table_size
        && rules_batch_rehash(b, b->table_size ? b->table_size * 2 : 64)
           != 0)
    {
        return 0;
    }

    if (hash == 0) {
        hash = rules_cache_hash(key, key_len);
    }

    for (h = hash & (b->table_size - 1); b->table[h];
         h = (h + 1) & (b->table_size - 1))
    {
        i = b->table[h] - 1;

        if (b->key_len[i] == key_len
            && memcmp(b->data.data + b->key_off[i], key, key_len) == 0)
        {
            return i + 1;
        }
    }

    if (rules_batch_grow(&b->key_off, &b->key_len, &b->keys_size, b->nkeys)
        != 0)
    {
        return 0;
    }

    off = b->data.len;

    if (rules_buf_append(&b->data, key, key_len) != 0) {
        return 0;
    }

    b->key_off[b->nkeys] = off;
    b->key_len[b->nkeys] = key_len;
    b->table[h] = (uint32_t) ++b->nkeys;

    return b->nkeys;
}


/* The item's key (added when new), then its argument: meta and body. */
static long
rules_batch_put(rules_batch_t *b, const unsigned char *key, size_t key_len,
    const rules_item_t *item)
{
    size_t         k, off, split;
    unsigned char  meta[RULES_META_LEN], body[RULES_BODY_HEADER_LEN];

    k = rules_batch_key_index(b, key, key_len, item->key_hash);

    if (k == 0
        || rules_batch_grow(&b->arg_off, &b->arg_len, &b->args_size,
                            b->nargs)
           != 0)
    {
        return -1;
    }

    split = (item->kind == RULES_ITEM_COMPACT)
            ? 0 : RULES_BODY_HEADER_LEN + item->op_len;

    if (item->kind == RULES_ITEM_EXTEND) {
        split += RULES_ENTRY_WALL_LEN;
    }

    meta[0] = (unsigned char) item->kind;
    rules_put_u16(meta + 1, (unsigned) k);
    rules_put_f64(meta + 3, item->ttl);
    rules_put_f64(meta + 11, item->pttl);
    rules_put_f64(meta + 19, item->gen);
    rules_put_f64(meta + 27, item->newgen);
    rules_put_f64(meta + 35, item->length);
    rules_put_u32(meta + 43, (uint32_t) split);

    off = b->data.len;

    if (rules_buf_append(&b->data, meta, RULES_META_LEN) != 0) {
        return -1;
    }

    if (item->kind == RULES_ITEM_EXTEND) {
        rules_put_f64(body, (double) item->wall);

        if (rules_buf_append(&b->data, body, RULES_ENTRY_WALL_LEN) != 0) {
            return -1;
        }
    }

    if (item->kind != RULES_ITEM_COMPACT) {
        rules_put_f64(body, (double) item->now);
        rules_put_u32(body + 8, (uint32_t) item->op_len);

        if (rules_buf_append(&b->data, body, RULES_BODY_HEADER_LEN) != 0
            || rules_buf_append(&b->data, item->op, item->op_len) != 0)
        {
            return -1;
        }
    }

    if ((item->kind == RULES_ITEM_COMPACT || item->kind == RULES_ITEM_WRITE)
        && rules_buf_append(&b->data, item->state, item->state_len) != 0)
    {
        return -1;
    }

    b->arg_off[b->nargs] = off;
    b->arg_len[b->nargs] = b->data.len - off;

    return (long) b->nargs++;
}


/*
 * Takes back what a failed rules_batch_add() added: the bytes, and the
 * key when it was new (the last one in the table, so no other key's
 * probe passes its slot).
 */
static void
rules_batch_undo(rules_batch_t *b, size_t nkeys, size_t len)
{
    size_t  h;

    if (b->nkeys > nkeys) {
        for (h = 0; h < b->table_size; h++) {
            if (b->table[h] == b->nkeys) {
                b->table[h] = 0;
                break;
            }
        }

        b->nkeys = nkeys;
    }

    b->data.len = len;
}


long
rules_batch_add(rules_batch_t *b, const unsigned char *key, size_t key_len,
    const rules_item_t *item)
{
    long    i;
    size_t  nkeys, len;

    if (item->op_len > 0xffffffff) {
        return -1;
    }

    nkeys = b->nkeys;
    len = b->data.len;

    i = rules_batch_put(b, key, key_len, item);

    if (i < 0) {
        rules_batch_undo(b, nkeys, len);
    }

    return i;
}


size_t
rules_batch_items(const rules_batch_t *b)
{
    return b->nargs;
}


size_t
rules_batch_bytes(const rules_batch_t *b)
{
    return b->data.len;
}


void
rules_batch_item(const rules_batch_t *b, size_t i, rules_str_t *key,
    rules_item_t *item)
{
    size_t                k, split;
    const unsigned char  *meta, *arg;

    meta = b->data.data + b->arg_off[i];
    arg = meta + RULES_META_LEN;
    k = rules_get_u16(meta + 1) - 1;

    key->data = b->data.data + b->key_off[k];
    key->len = b->key_len[k];

    memset(item, 0, sizeof(rules_item_t));
    item->kind = (rules_item_kind_t) meta[0];
    item->ttl = rules_get_f64(meta + 3);
    item->pttl = rules_get_f64(meta + 11);
    item->gen = rules_get_f64(meta + 19);
    item->newgen = rules_get_f64(meta + 27);
    item->length = rules_get_f64(meta + 35);
    split = rules_get_u32(meta + 43);

    if (item->kind == RULES_ITEM_EXTEND) {
        item->wall = (int64_t) rules_get_f64(arg);
        arg += RULES_ENTRY_WALL_LEN;
        split -= RULES_ENTRY_WALL_LEN;
    }

    if (item->kind != RULES_ITEM_COMPACT) {
        item->now = (int64_t) rules_get_f64(arg);
        item->op = arg + RULES_BODY_HEADER_LEN;
        item->op_len = split - RULES_BODY_HEADER_LEN;
    }

    if (item->kind == RULES_ITEM_COMPACT || item->kind == RULES_ITEM_WRITE) {
        item->state = arg + split;
        item->state_len = b->arg_len[i] - RULES_META_LEN - split;
    }
}


size_t
rules_batch_argc(const rules_batch_t *b)
{
    return 1 + b->nkeys + b->nargs;
}


void
rules_batch_argv(const rules_batch_t *b, char nbuf[32], const char **argv,
    size_t *argvlen)
{
    size_t  i, n;

    argvlen[0] = (size_t) snprintf(nbuf, 32, "%zu", b->nkeys);
    argv[0] = nbuf;
    n = 1;

    for (i = 0; i < b->nkeys; i++, n++) {
        argv[n] = (const char *) b->data.data + b->key_off[i];
        argvlen[n] = b->key_len[i];
    }

    for (i = 0; i < b->nargs; i++, n++) {
        argv[n] = (const char *) b->data.data + b->arg_off[i];
        argvlen[n] = b->arg_len[i];
    }
}


void
rules_batch_reset(rules_batch_t *b)
{
    b->data.len = 0;
    b->nkeys = 0;
    b->nargs = 0;

    if (b->table) {
        memset(b->table, 0, b->table_size * sizeof(uint32_t));
    }
}


void
rules_batch_free(rules_batch_t *b)
{
    rules_buf_free(&b->data);
    free(b->key_off);
    free(b->key_len);
    free(b->arg_off);
    free(b->arg_len);
    free(b->table);
    memset(b, 0, sizeof(rules_batch_t));
}
