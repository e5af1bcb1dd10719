/*
 * rules_redis_module.so: RULES.STORE, the state script of
 * ngx_http_rules_module (src/rules_script.lua) as a native Redis command.
 *
 *     loadmodule /path/to/rules_redis_module.so
 *
 *     RULES.STORE sha numkeys key... item...
 *
 * takes the arguments of EVALSHA sha numkeys key... item... and gives the
 * same reply and the same effects on the keys, without Lua: each item
 * opens its key once and reads or extends the value in place (no copy
 * of a large value, no Lua strings, no command dispatch per call).  sha
 * must be the SHA1 of the script this module implements (the module and
 * the nginx module come from one build): a client of another version
 * gets an error starting with RULESVERSION and uses EVALSHA.
 *
 * Differences from the script: every argument is checked before any key
 * changes (an error changes nothing), and items no writer sends are
 * refused where the script would take them (a kind it does not know,
 * numbers out of range or not whole, a write or create whose new value
 * is not an R2 value, an argument longer than a value can be); an item
 * that cannot be stored (a value past 512 MB) is an error element before
 * anything of its key changed; an expiry is set as an absolute time (the
 * script's PX wall + n); the effects reach
 * replicas and the AOF as plain commands (SET ... PXAT, APPEND,
 * SETRANGE, PEXPIREAT, DEL), so replicas need no module; they are not
 * built at all when Redis would drop them (no AOF, no replica, no
 * backlog: rules_store_repl.c).  Each effect fires the keyspace event
 * its command fires (set, append, setrange, expire, del), and a key
 * created fires "new" as well (also a value rewritten past 1 MB, made
 * anew: rs_store()).
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "rules_redis_api.h"
#include "rules_store_repl.h"


#define RS_MODULE_NAME       "rules"
#define RS_MODULE_VERSION    1

#define RS_HEADER_LEN        22          /* "R2" gen stamp snaplen */
#define RS_META_LEN          47
#define RS_WALL_LEN          8
#define RS_VALUE_MAX         (512 * 1024 * 1024)   /* Redis' own limit */
/* past this length Redis grows a string by this much, not to twice its
 * length (sds.c's SDS_MAX_PREALLOC), and a cut back does not trim it */
#define RS_PREALLOC_MAX      (1024 * 1024)
/* the buffers kept between calls are let go after a call that grew them
 * past these (a large compaction does not pin its memory) */
#define RS_SCRATCH_KEEP      (1024 * 1024)
#define RS_ITEMS_KEEP        4096
/* a stamp further ahead of Redis' clock is not one a writer set: moved */
#define RS_STAMP_AHEAD_MAX   (2 * 366.0 * 86400 * 1000)

#define RS_APPEND   1
#define RS_READ     2
#define RS_COMPACT  3
#define RS_WRITE    4
#define RS_CREATE   5
#define RS_EXTEND   6


/* src/rules_sha1.c: the SHA1 of src/rules_script.lua, in hex */
const char *rules_script_sha1(void);


typedef struct {
    unsigned     kind;
    unsigned     key;         /* index into the keys, from 0 */
    double       ttl;
    double       pttl;
    double       gen;
    double       newgen;
    double       length;
    size_t       split;
    const char  *arg;
    size_t       arg_len;
} rs_item_t;


typedef struct {
    RedisModuleCtx     *ctx;
    RedisModuleString  *name;
    RedisModuleKey     *key;
    long long           wall;
    int                 replied;     /* the item's reply element is out */
    int                 replicate;   /* effects to replicate: 1, 0, or -1
                                        when not asked yet */
} rs_call_t;


/* per-call arrays and the value being built: Redis runs commands in one
 * thread, so they are kept between calls */
static rs_item_t  *rs_items;
static size_t      rs_items_size;
static char       *rs_scratch;
static size_t      rs_scratch_size;

/* the second of the last "could not be stored" line, and the items since
 * that were not logged */
static long long           rs_error_logged;
static unsigned long long  rs_errors_unlogged;


static uint32_t
rs_get_u32(const char *p)
{
    return (uint32_t) (unsigned char) p[0]
           | (uint32_t) (unsigned char) p[1] << 8
           | (uint32_t) (unsigned char) p[2] << 16
           | (uint32_t) (unsigned char) p[3] << 24;
}


static double
rs_get_d(const char *p)
{
    double    d;
    uint64_t  u;

    /* little-endian bytes, written out so that compilers make one load of
     * them on a little-endian host (a loop stayed a loop of byte loads) */

    u = (uint64_t) rs_get_u32(p) | (uint64_t) rs_get_u32(p + 4) << 32;

    memcpy(&d, &u, sizeof(d));

    return d;
}


static void
rs_put_d(char *p, double d)
{
    uint64_t  u;
    int       i;

    memcpy(&u, &d, sizeof(u));

    for (i = 0; i < 8; i++) {
        p[i] = (char) (u >> (8 * i));
    }
}


static void
rs_put_u32(char *p, uint32_t v)
{
    int  i;

    for (i = 0; i < 4; i++) {
        p[i] = (char) (v >> (8 * i));
    }
}


/*
 * An R2 value, as the reader (rules_value_parse()) and the script (r2())
 * see one: the magic, a whole header, a snapshot within the value, a gen
 * that is a number and a finite stamp.  Anything else is foreign.
 */
static int
rs_r2(const char *v, size_t len)
{
    double  gen, stamp;

    if (v == NULL || len < RS_HEADER_LEN || v[0] != 'R' || v[1] != '2') {
        return 0;
    }

    gen = rs_get_d(v + 2);
    stamp = rs_get_d(v + 10);

    return rs_get_u32(v + 18) <= len - RS_HEADER_LEN
           && !isnan(gen) && isfinite(stamp);
}


/* a whole number of ms that Redis takes as an expiry or a length */
static int
rs_whole(double d, double max)
{
    return d >= 0 && d <= max && d == floor(d);
}


/* Lets go of the buffers kept between calls when a call grew them large. */
static void
rs_release(void)
{
    if (rs_scratch_size > RS_SCRATCH_KEEP) {
        rm.free(rs_scratch);
        rs_scratch = NULL;
        rs_scratch_size = 0;
    }

    if (rs_items_size > RS_ITEMS_KEEP) {
        rm.free(rs_items);
        rs_items = NULL;
        rs_items_size = 0;
    }
}


static char *
rs_scratch_get(size_t size)
{
    char  *p;

    if (size > rs_scratch_size) {
        p = rm.realloc(rs_scratch, size);
        if (p == NULL) {
            return NULL;
        }

        rs_scratch = p;
        rs_scratch_size = size;
    }

    return rs_scratch;
}


/* The key's value when it is a string, else NULL (none, or a foreign
 * type: *foreign set). */
static const char *
rs_value(rs_call_t *c, size_t *len, int *foreign)
{
    int  type;

    type = rm.key_type(c->key);
    *foreign = 0;
    *len = 0;

    if (type == RM_KEYTYPE_STRING) {
        return rm.string_dma(c->key, len, RM_READ);
    }

    if (type != RM_KEYTYPE_EMPTY) {
        *foreign = 1;
    }

    return NULL;
}


/*
 * Whether the effect to come goes to RM_Replicate() (rules_store_repl.c).
 * When not, it is still counted as a change (for the RDB save points and
 * rdb_changes_since_last_save, as RM_Replicate() counts it): by
 * RM_ReplicateVerbatim(), which Redis drops, without a copy, when
 * nothing receives it.
 */
static int
rs_replicating(rs_call_t *c)
{
    if (c->replicate < 0) {
        c->replicate = rs_repl_needed(c->ctx);
    }

    rs_repl_count(c->replicate);

    if (!c->replicate) {
        rm.replicate_verbatim(c->ctx);
    }

    return c->replicate;
}


static void
rs_notify(rs_call_t *c, int type, const char *event)
{
    rm.notify_keyspace_event(c->ctx, type, event, c->name);
}


static void
rs_expire_at(rs_call_t *c, long long at)
{
    rm.set_abs_expire(c->key, at);
    rs_notify(c, RM_NOTIFY_GENERIC, "expire");

    if (rs_replicating(c)) {
        rm.replicate(c->ctx, "PEXPIREAT", "sl", c->name, at);
    }
}


/*
 * The key's string value of cur bytes made n bytes long (a key with no
 * value gets a new string of exactly n bytes).  RM_StringTruncate()
 * reallocates a string cut to less than its unused space at its length,
 * so a value cut to less than half of its allocation keeps no more than
 * it holds.  A growth is not made as APPEND makes one (to twice the new
 * length, so that an aged value of many appends held about as much
 * unused memory as data): the string is grown one byte past n, then cut
 * back, and so reallocated at n.  Unused space left from before (a value
 * cut in place) is used first, with no reallocation.  The price: a
 * growth past that space is two reallocations, and none leaves room for
 * the next.  Past RS_PREALLOC_MAX Redis grows a string by that much, and
 * the cut leaves it so.
 */
static int
rs_resize(rs_call_t *c, size_t cur, size_t n)
{
    if (n == 0 || n > RS_VALUE_MAX) {
        /* (no caller asks for an empty value: an R2 value has a header) */
        return RM_ERR;
    }

    if (rm.key_type(c->key) == RM_KEYTYPE_EMPTY) {
        return rm.string_truncate(c->key, n);
    }

    if (n == cur) {
        return RM_OK;
    }

    if (n > cur && n < RS_VALUE_MAX
        && rm.string_truncate(c->key, n + 1) != RM_OK)
    {
        return RM_ERR;
    }

    return rm.string_truncate(c->key, n);
}


/*
 * The key's value becomes v (not pointing into the key), in place when
 * the old one is a string (rs_resize(): the key keeps its object, and
 * with it its LFU count), else a new string.  A growth past
 * RS_PREALLOC_MAX makes a new string of exactly that size instead (in
 * place it would keep up to that much unused), with the old one's TTL
 * and LFU count.  at: the absolute expiry, or -1 to keep the key's.
 */
static int
rs_store(rs_call_t *c, const char *v, size_t len, long long at)
{
    int        type;
    char      *p;
    size_t     cur;
    long long  keep, freq;

    if (len == 0 || len > RS_VALUE_MAX) {
        /* before the key is deleted below (no caller sends such a value) */
        return RM_ERR;
    }

    keep = RM_NO_EXPIRE;
    freq = -1;
    type = rm.key_type(c->key);
    cur = 0;

    if (type == RM_KEYTYPE_STRING) {
        (void) rm.string_dma(c->key, &cur, RM_READ);

        if (len > cur && len >= RS_PREALLOC_MAX) {
            if (at < 0) {
                keep = rm.get_abs_expire(c->key);
            }

            if (rm.get_lfu(c->key, &freq) != RM_OK) {
                freq = -1;
            }

            rm.delete_key(c->key);
            cur = 0;
        }

    } else if (type != RM_KEYTYPE_EMPTY) {
        rm.delete_key(c->key);
    }

    if (rs_resize(c, cur, len) != RM_OK) {
        return RM_ERR;
    }

    p = rm.string_dma(c->key, &cur, RM_WRITE);
    if (p == NULL || cur != len) {
        return RM_ERR;
    }

    memcpy(p, v, len);
    rs_notify(c, RM_NOTIFY_STRING, "set");

    if (freq >= 0) {
        (void) rm.set_lfu(c->key, freq);
    }

    if (at >= 0) {
        rm.set_abs_expire(c->key, at);
        rs_notify(c, RM_NOTIFY_GENERIC, "expire");

        if (rs_replicating(c)) {
            rm.replicate(c->ctx, "SET", "sbcl", c->name, v, len, "PXAT",
                         at);
        }

    } else {
        if (keep != RM_NO_EXPIRE) {
            rm.set_abs_expire(c->key, keep);
        }

        if (rs_replicating(c)) {
            rm.replicate(c->ctx, "SET", "sbc", c->name, v, len, "KEEPTTL");
        }
    }

    return RM_OK;
}


/*
 * Appends head (may be empty) and body to the string value in place, the
 * value grown to its new length (rs_resize()); returns the value, NULL on
 * failure.
 */
static char *
rs_extend(rs_call_t *c, const char *head, size_t head_len, const char *body,
    size_t body_len)
{
    char    *p;
    size_t   cur, len, n;

    (void) rm.string_dma(c->key, &cur, RM_READ);

    n = cur + head_len + body_len;

    if (rs_resize(c, cur, n) != RM_OK) {
        return NULL;
    }

    p = rm.string_dma(c->key, &len, RM_WRITE);
    if (p == NULL || len != n) {
        return NULL;
    }

    memcpy(p + cur, head, head_len);
    memcpy(p + cur + head_len, body, body_len);
    rs_notify(c, RM_NOTIFY_STRING, "append");

    if (rs_replicating(c)) {
        rm.replicate(c->ctx, "APPEND", "sb", c->name, p + cur,
                     head_len + body_len);
    }

    return p;
}


static void
rs_set_stamp(rs_call_t *c, char *value, double stamp)
{
    rs_put_d(value + 10, stamp);
    rs_notify(c, RM_NOTIFY_STRING, "setrange");

    if (rs_replicating(c)) {
        rm.replicate(c->ctx, "SETRANGE", "slb", c->name, (long long) 10,
                     value + 10, (size_t) 8);
    }
}


/*
 * The script's append(): the value v (NULL: none or foreign, then
 * already deleted) plus the entry wall body.  An R2 value is extended in
 * place; its stamp and TTL move when the entry's ttl reaches past the
 * stamp, and the TTL is set again anyway when reset is 1 (the script's
 * SET of the whole value).  Anything else becomes the snapshot of a new
 * value of gen newgen, its stamp the key's expiry when that is later
 * (an R1 state's TTL covers its records) and reset is 0 (the script's
 * SET has replaced the TTL before its append then).
 */
static int
rs_append(rs_call_t *c, const char *v, size_t vlen, double ttl,
    double newgen, const char *body, size_t body_len, int reset)
{
    char       *p, wallb[RS_WALL_LEN];
    size_t      len;
    double      need, stamp;
    long long   at;

    need = (double) c->wall + ttl;
    rs_put_d(wallb, (double) c->wall);

    if (rs_r2(v, vlen)) {
        stamp = rs_get_d(v + 10);

        p = rs_extend(c, wallb, RS_WALL_LEN, body, body_len);
        if (p == NULL) {
            return RM_ERR;
        }

        if (need > stamp || stamp > (double) c->wall + RS_STAMP_AHEAD_MAX) {
            /* in the script's order (its events too): APPEND, PEXPIRE,
             * SETRANGE */
            stamp = need + floor(ttl / 4);
            rs_expire_at(c, (long long) stamp);
            rs_set_stamp(c, p, stamp);

        } else if (reset) {
            rs_expire_at(c, (long long) stamp);
        }

        return RM_OK;
    }

    /* "R2" newgen stamp snaplen snapshot wall body */

    if (vlen > UINT32_MAX) {
        return RM_ERR;
    }

    len = RS_HEADER_LEN + vlen + RS_WALL_LEN + body_len;
    stamp = need + floor(ttl / 4);

    if (v != NULL && !reset) {
        at = rm.get_abs_expire(c->key);

        if (at != RM_NO_EXPIRE && (double) at > stamp) {
            stamp = (double) at;
        }
    }

    if (len > RS_VALUE_MAX) {
        return RM_ERR;
    }

    p = rs_scratch_get(len);
    if (p == NULL) {
        return RM_ERR;
    }

    p[0] = 'R';
    p[1] = '2';
    rs_put_d(p + 2, newgen);
    rs_put_d(p + 10, stamp);
    rs_put_u32(p + 18, (uint32_t) vlen);

    if (vlen) {
        memcpy(p + RS_HEADER_LEN, v, vlen);
    }

    memcpy(p + RS_HEADER_LEN + vlen, wallb, RS_WALL_LEN);
    memcpy(p + RS_HEADER_LEN + vlen + RS_WALL_LEN, body, body_len);

    return rs_store(c, p, len, (long long) stamp);
}


/*
 * Whether rs_append() of body_len bytes to the value v (NULL: none, or a
 * foreign one, deleted) stays within what a value may be: checked before
 * the item replies or deletes anything, so that an item that cannot be
 * stored is an error element and leaves its key as it was.
 */
static int
rs_append_fits(const char *v, size_t vlen, size_t body_len)
{
    if (!rs_r2(v, vlen)) {
        vlen += RS_HEADER_LEN;
    }

    return vlen + RS_WALL_LEN + body_len <= RS_VALUE_MAX;
}


/* The reply element for a value: a bulk string, or nil. */
static void
rs_reply_value(rs_call_t *c, const char *v, size_t len)
{
    c->replied = 1;

    if (v == NULL) {
        rm.reply_with_null(c->ctx);

    } else {
        rm.reply_with_string_buffer(c->ctx, v, len);
    }
}


static void
rs_reply_int(rs_call_t *c, long long n)
{
    c->replied = 1;
    rm.reply_with_long_long(c->ctx, n);
}


/* The same value the writer based its state on: gen and length. */
static int
rs_same(const char *v, size_t len, const rs_item_t *it, size_t min)
{
    return v != NULL && len >= min && (double) len == it->length
           && v[0] == 'R' && v[1] == '2' && rs_get_d(v + 2) == it->gen;
}


/* write (4) and create (5): the writer's new state, or the append */
static int
rs_item_write(rs_call_t *c, const rs_item_t *it)
{
    int          foreign;
    size_t       vlen;
    long long    at;
    const char  *v;

    v = rs_value(c, &vlen, &foreign);

    if (foreign) {
        /* a key that is not a string is replaced by a value of its own */
        if (!rs_append_fits(NULL, 0, it->split)) {
            return RM_ERR;
        }

        rm.delete_key(c->key);
        rs_notify(c, RM_NOTIFY_GENERIC, "del");
        rs_reply_value(c, NULL, 0);
        return rs_append(c, NULL, 0, it->ttl, it->newgen, it->arg,
                         it->split, 1);
    }

    if (it->kind == RS_CREATE ? v == NULL
                              : rs_same(v, vlen, it, RS_HEADER_LEN)
                                && rs_r2(v, vlen))
    {
        at = it->pttl > 0 ? c->wall + (long long) it->pttl : -1;

        if (rs_store(c, it->arg + it->split, it->arg_len - it->split, at)
            != RM_OK)
        {
            return RM_ERR;
        }

        rs_reply_int(c, 1);
        return RM_OK;
    }

    /* another writer changed it: what an append makes */

    if (!rs_append_fits(v, vlen, it->split)) {
        return RM_ERR;
    }

    rs_reply_value(c, v, vlen);

    return rs_append(c, v, vlen, it->ttl, it->newgen, it->arg, it->split,
                     it->kind == RS_WRITE);
}


/* extend (6): the writer's entry on the value it cached, or the append */
static int
rs_item_extend(rs_call_t *c, const rs_item_t *it)
{
    int          foreign;
    char        *p;
    size_t       vlen;
    const char  *v;

    v = rs_value(c, &vlen, &foreign);

    if (rs_same(v, vlen, it, 10)) {
        p = rs_extend(c, "", 0, it->arg, it->arg_len);
        if (p == NULL) {
            return RM_ERR;
        }

        if (it->pttl > 0) {
            /* the stamp: the writer's clock (the entry's wall) + pttl;
             * in the script's order: APPEND, PEXPIRE, SETRANGE */
            rs_expire_at(c, c->wall + (long long) it->pttl);
            rs_set_stamp(c, p, rs_get_d(it->arg) + it->pttl);
        }

        rs_reply_int(c, 1);
        return RM_OK;
    }

    if (!rs_append_fits(v, vlen, it->arg_len - RS_WALL_LEN)) {
        return RM_ERR;
    }

    if (foreign) {
        rm.delete_key(c->key);
    }

    rs_reply_value(c, v, vlen);

    return rs_append(c, v, vlen, it->ttl, it->newgen,
                     it->arg + RS_WALL_LEN, it->arg_len - RS_WALL_LEN, 0);
}


/* compact (3): the folded snapshot in place of the first length bytes */
static int
rs_item_compact(rs_call_t *c, const rs_item_t *it)
{
    int          foreign;
    char        *p;
    size_t       vlen, len, tail;
    const char  *v;

    v = rs_value(c, &vlen, &foreign);

    if (!rs_r2(v, vlen) || (double) vlen < it->length
        || rs_get_d(v + 2) != it->gen)
    {
        rs_reply_int(c, 0);
        return RM_OK;
    }

    len = (size_t) it->length;
    tail = vlen - len;

    if (it->arg_len > UINT32_MAX
        || RS_HEADER_LEN + it->arg_len + tail > RS_VALUE_MAX)
    {
        return RM_ERR;
    }

    /*
     * The key was opened for reading (a compaction that finds the value
     * changed, or one that cannot be stored, changes nothing, and must not
     * look like a write to WATCH or client tracking): opened again for
     * writing, the value read again
     */

    rm.close_key(c->key);
    c->key = rm.open_key(c->ctx, c->name, RM_READ | RM_WRITE);
    v = rs_value(c, &vlen, &foreign);

    if (it->arg_len == 0 && tail == 0) {
        rm.delete_key(c->key);
        rs_notify(c, RM_NOTIFY_GENERIC, "del");

        if (rs_replicating(c)) {
            rm.replicate(c->ctx, "DEL", "s", c->name);
        }

        rs_reply_int(c, 1);
        return RM_OK;
    }

    p = rs_scratch_get(RS_HEADER_LEN + it->arg_len + tail);
    if (p == NULL) {
        return RM_ERR;
    }

    p[0] = 'R';
    p[1] = '2';
    rs_put_d(p + 2, it->newgen);
    memcpy(p + 10, v + 10, 8);
    rs_put_u32(p + 18, (uint32_t) it->arg_len);
    memcpy(p + RS_HEADER_LEN, it->arg, it->arg_len);
    memcpy(p + RS_HEADER_LEN + it->arg_len, v + len, tail);

    if (rs_store(c, p, RS_HEADER_LEN + it->arg_len + tail, -1) != RM_OK) {
        return RM_ERR;
    }

    rs_reply_int(c, 1);
    return RM_OK;
}


static int
rs_item(rs_call_t *c, const rs_item_t *it)
{
    int          foreign;
    size_t       vlen;
    const char  *v;

    switch (it->kind) {

    case RS_WRITE:
    case RS_CREATE:
        return rs_item_write(c, it);

    case RS_EXTEND:
        return rs_item_extend(c, it);

    case RS_COMPACT:
        return rs_item_compact(c, it);

    case RS_READ:
        v = rs_value(c, &vlen, &foreign);
        rs_reply_value(c, v, vlen);
        return RM_OK;

    default: /* RS_APPEND */
        v = rs_value(c, &vlen, &foreign);

        if (!rs_append_fits(v, vlen, it->arg_len)) {
            return RM_ERR;
        }

        if (foreign) {
            rm.delete_key(c->key);
        }

        rs_reply_value(c, v, vlen);

        return rs_append(c, v, vlen, it->ttl, it->newgen, it->arg,
                         it->arg_len, 0);
    }
}


/* Parses numkeys and the items into rs_items; returns their number, or
 * (size_t) -1 and *err on a malformed call. */
static size_t
rs_parse(RedisModuleString **argv, int argc, long long *numkeys,
    const char **err)
{
    size_t      len, n, i;
    rs_item_t  *it;
    long long   nk;
    const char *s, *m;

    s = rm.string_ptr_len(argv[2], &len);

    /* empty, or longer than any count of arguments could be */

    if (len == 0 || len >= 32) {
        *err = "ERR rules.store: numkeys is not a number";
        return (size_t) -1;
    }

    /* decimal digits only, as EVALSHA's numkeys (no sign, space or NUL) */

    nk = 0;

    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9' || nk > argc) {
            *err = "ERR rules.store: bad numkeys";
            return (size_t) -1;
        }

        nk = nk * 10 + (s[i] - '0');
    }

    if (nk > argc - 3) {
        *err = "ERR rules.store: bad numkeys";
        return (size_t) -1;
    }

    *numkeys = nk;

    n = (size_t) (argc - 3 - nk);

    if (n > rs_items_size) {
        it = rm.realloc(rs_items, n * sizeof(rs_item_t));
        if (it == NULL) {
            *err = "ERR rules.store: out of memory";
            return (size_t) -1;
        }

        rs_items = it;
        rs_items_size = n;
    }

    for (i = 0; i < n; i++) {
        it = &rs_items[i];
        m = rm.string_ptr_len(argv[3 + nk + i], &len);

        if (len < RS_META_LEN) {
            *err = "ERR rules.store: an item is shorter than its 47-byte "
                   "meta";
            return (size_t) -1;
        }

        it->kind = (unsigned char) m[0];
        it->key = (unsigned) ((unsigned char) m[1]
                              | (unsigned char) m[2] << 8);
        it->ttl = rs_get_d(m + 3);
        it->pttl = rs_get_d(m + 11);
        it->gen = rs_get_d(m + 19);
        it->newgen = rs_get_d(m + 27);
        it->length = rs_get_d(m + 35);
        it->split = rs_get_u32(m + 43);
        it->arg = m + RS_META_LEN;
        it->arg_len = len - RS_META_LEN;

        if (it->kind < RS_APPEND || it->kind > RS_EXTEND) {
            *err = "ERR rules.store: unknown item kind";
            return (size_t) -1;
        }

        if (it->key < 1 || it->key > nk) {
            *err = "ERR rules.store: an item's key index is out of range";
            return (size_t) -1;
        }

        it->key--;

        if (it->ttl < 1) {
            it->ttl = 1;
        }

        /* whole ms, as the script's PX needs them */

        if (!rs_whole(it->ttl, 1e15) || !rs_whole(it->pttl, 1e15)
            || !rs_whole(it->length, 1e15) || !isfinite(it->newgen))
        {
            *err = "ERR rules.store: an item's numbers are out of range";
            return (size_t) -1;
        }

        if (it->arg_len > RS_VALUE_MAX) {
            *err = "ERR rules.store: an item's argument is longer than a "
                   "value can be";
            return (size_t) -1;
        }

        if ((it->kind == RS_WRITE || it->kind == RS_CREATE)
            && it->split > it->arg_len)
        {
            *err = "ERR rules.store: an item's split is past its argument";
            return (size_t) -1;
        }

        if ((it->kind == RS_WRITE || it->kind == RS_CREATE)
            && !rs_r2(it->arg + it->split, it->arg_len - it->split))
        {
            *err = "ERR rules.store: a write item's new value is not an "
                   "R2 value";
            return (size_t) -1;
        }

        if (it->kind == RS_CREATE && it->pttl <= 0) {
            *err = "ERR rules.store: a create item needs a pttl";
            return (size_t) -1;
        }

        if (it->kind == RS_EXTEND && it->arg_len < RS_WALL_LEN) {
            *err = "ERR rules.store: an extend item's entry is too short";
            return (size_t) -1;
        }
    }

    return n;
}


static int
rs_store_command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc)
{
    int          rc;
    size_t       n, i, len;
    rs_call_t    c;
    long long    numkeys, k;
    const char  *s, *err;

    if (rm.is_keys_position_request(ctx)) {
        /* Redis Cluster and ACLs: the keys are argv[3 .. 3 + numkeys) */

        if (argc >= 3 && rs_parse(argv, argc, &numkeys, &err)
                         != (size_t) -1)
        {
            for (k = 0; k < numkeys; k++) {
                rm.key_at_pos(ctx, (int) (3 + k));
            }
        }

        rs_release();
        return RM_OK;
    }

    if (argc < 3) {
        return rm.wrong_arity(ctx);
    }

    s = rm.string_ptr_len(argv[1], &len);

    if (len != 40 || strncasecmp(s, rules_script_sha1(), 40) != 0) {
        rm.reply_with_error(ctx, "RULESVERSION this rules_redis_module "
                            "implements another version of the state "
                            "script: use EVALSHA");
        return RM_OK;
    }

    n = rs_parse(argv, argc, &numkeys, &err);

    if (n == (size_t) -1) {
        rm.reply_with_error(ctx, err);
        rs_release();
        return RM_OK;
    }

    c.ctx = ctx;
    c.wall = rm.milliseconds();
    c.replicate = -1;

    rm.reply_with_array(ctx, (long) n + 1);
    rm.reply_with_long_long(ctx, c.wall);

    for (i = 0; i < n; i++) {
        c.replied = 0;
        c.name = argv[3 + rs_items[i].key];
        c.key = rm.open_key(ctx, c.name,
                            rs_items[i].kind == RS_READ
                            || rs_items[i].kind == RS_COMPACT
                            ? RM_READ : RM_READ | RM_WRITE);

        rc = rs_item(&c, &rs_items[i]);

        rm.close_key(c.key);

        if (rc != RM_OK) {
            /* an error element for it (unless its reply is out) and for
             * the items after it: the call broke off here.  Logged at
             * most once a second: a key that cannot grow fails every
             * event on it */

            if (c.wall / 1000 != rs_error_logged) {
                rm.log(ctx, "warning", "rules.store: item %zu of %zu could "
                       "not be stored (value too long) (%llu more since "
                       "the last such line)", i + 1, n, rs_errors_unlogged);
                rs_error_logged = c.wall / 1000;
                rs_errors_unlogged = 0;

            } else {
                rs_errors_unlogged++;
            }

            if (!c.replied) {
                rm.reply_with_error(ctx, "ERR rules.store: not applied");
            }

            for (i++; i < n; i++) {
                rm.reply_with_error(ctx, "ERR rules.store: not applied");
            }

            break;
        }
    }

    rs_release();

    return RM_OK;
}


int
RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc)
{
    if (rules_redis_api_init(ctx, RS_MODULE_NAME, RS_MODULE_VERSION)
        != RM_OK)
    {
        return RM_ERR;
    }

    if (rm.create_command(ctx, "rules.store", rs_store_command,
                          "write deny-oom getkeys-api", 0, 0, 0)
        != RM_OK
        || rs_repl_init(ctx) != RM_OK)
    {
        return RM_ERR;
    }

    rm.log(ctx, "notice", "rules.store ready (state script %s)",
           rules_script_sha1());

    return RM_OK;
}


/* MODULE UNLOAD: the buffers kept between calls go with the module. */
int
RedisModule_OnUnload(RedisModuleCtx *ctx)
{
    rm.free(rs_items);
    rm.free(rs_scratch);

    rs_items = NULL;
    rs_items_size = 0;
    rs_scratch = NULL;
    rs_scratch_size = 0;

    return RM_OK;
}
