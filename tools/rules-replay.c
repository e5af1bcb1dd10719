/*
 * rules-replay: applies a stream of JSON events to a rule file, with the
 * engine of ngx_http_rules_module, and prints one result line per event.
 *
 *   rules-replay --rules FILE [--redis ADDR | --redis-cluster H:P[,H:P]]
 *                [--prefix P] [--password PW [--user U]] [--db N]
 *                [--key-max N] [--value-max N] [--timeout MS] [EVENTS.jsonl]
 *
 * Without --redis the state lives in memory (dry runs, verification);
 * with it, each event is applied to Redis with the module's own script
 * call (one EVALSHA over the event's state keys; rules_log.h), which
 * rebuilds state.  A Redis Cluster (--redis-cluster, or a --redis node
 * with cluster support enabled) gets one EVALSHA per key, to the master
 * of its slot, as the module sends them; MOVED and ASK are followed.
 * Every connection has a timeout (--timeout, of the connect and of each
 * reply), which ends the run.
 */

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <hiredis/hiredis.h>

#include "rules_engine.h"
#include "rules_state.h"
#include "rules_log.h"
#include "rules_cache.h"
#include "rules_json_event.h"


#define REPLAY_DEFAULT_PREFIX  "rules:"
#define REPLAY_MAX_NODES       64
#define REPLAY_MAX_TRIES       100      /* per key; 100 ms apart when idle */
#define REPLAY_WAIT_MS         10000    /* per key: a failover waited out */

#define REPLAY_MAX_DB          2147483647
#define REPLAY_MAX_LENGTH      65535    /* as rules_max_key_length */
#define REPLAY_MAX_BYTES       ((uint64_t) 1 << 40)
#define REPLAY_MAX_WRITERS     1024
#define REPLAY_DEFAULT_TIMEOUT 10000    /* ms: connect, and each reply */
#define REPLAY_MAX_TIMEOUT     3600000
/* hiredis 0.14 leaves sun_path's last byte unset: a 107-byte path is read
 * on by one byte (as rules_redis) */
#define REPLAY_UNIX_PATH_MAX                                                \
    ((int) sizeof(((struct sockaddr_un *) 0)->sun_path) - 2)


typedef struct replay_entry_s  replay_entry_t;

struct replay_entry_s {
    replay_entry_t  *next;
    unsigned char   *key;
    size_t           key_len;
    uint64_t         hash;
    rules_buf_t      state;
};


/*
 * The in-memory store's table: grown 4 times once it holds as many keys
 * as buckets (a dry run of millions of keys keeps short chains).
 */
#define REPLAY_STORE_BUCKETS  65536
#define REPLAY_STORE_GROWTH   4


/* a Redis Cluster node: blocking connections are fine in a tool */
typedef struct {
    char               host[256];
    int                port;
    redisContext      *c;
} replay_node_t;


typedef struct {
    redisReply        *el;
    int64_t            wall;       /* Redis' time in that call */
} replay_reply_t;


typedef struct {
    rules_set_t       *rs;
    rules_limits_t     limits;
    const char        *prefix;
    size_t             prefix_len;

    /* in-memory store */
    replay_entry_t   **buckets;
    size_t             nbuckets;
    size_t             nkeys;

    /* Redis */
    redisContext      *redis;
    const char        *addr;       /* --redis */
    const char        *user;
    const char        *password;
    struct timeval     timeout;    /* --timeout, of every connection */
    long long          deadline;   /* ms: a cluster call's connects end by
                                      then (0: none) */
    uint64_t           timeout_ms;

    int                native;     /* RULES.STORE (the rules Redis
                                      module) until refused */
    int                sent;       /* the last call was written whole */

    /* Redis Cluster */
    int                cluster;
    replay_node_t      nodes[REPLAY_MAX_NODES];
    size_t             nnodes;
    short              slots[RULES_CLUSTER_SLOTS];   /* node, or -1 */

    rules_eventops_t   eo;
    rules_result_t     res;
    rules_buf_t        out;
    rules_buf_t        matched;
    unsigned char     *keys;
    size_t             keys_size;
    rules_batch_t      batch;      /* the call being built */
    rules_batch_t      next;       /* compactions for the next call */
    rules_log_work_t   work;
    rules_state_work_t *parsed;    /* the in-memory store's applies */
    rules_cache_t     *cache;      /* folded states, as the module's */
    replay_reply_t    *replies;    /* of the last call(s), per item */
    redisReply       **owners;     /* the replies to free */
    size_t             nowners;
    rules_cache_t    **caches;     /* --writers: one per simulated writer */
    size_t             ncaches;
    size_t             nevents;
} replay_t;


/*
 * The input line being replayed (0: none yet), named by the errors
 * that end a run; after the last line, the compactions still due.
 */
static size_t  replay_lineno;
static int     replay_at_end;


static void
usage(void)
{
    fprintf(stderr,
        "usage: rules-replay --rules FILE [--redis HOST:PORT|unix:PATH]\n"
        "                    [--redis-cluster HOST:PORT[,HOST:PORT...]]\n"
        "                    [--password PW [--user USER]] [--db N]\n"
        "                    [--prefix PREFIX] [--key-max N] "
        "[--value-max N]\n"
        "                    [--time-member NAME] [--cache BYTES] "
        "[--writers N] [--extend-min BYTES]\n"
        "                    [--timeout MS] "
        "[--no-native] [--no-index] [--shared-distinct]\n"
        "                    [EVENTS.jsonl]\n"
        "       rules-replay --rules FILE --redis ADDR|--redis-cluster SEEDS "
        "[auth options]\n"
        "                    --state KEY\n"
        "                    (prints the key's state, its log folded)\n");
    exit(2);
}


/* "rules-replay: line N: ...": an error that ends the run */
static void
replay_error(const char *fmt, ...)
{
    va_list  args;

    fputs("rules-replay: ", stderr);

    if (replay_at_end) {
        fputs("at the end of the input: ", stderr);

    } else if (replay_lineno) {
        fprintf(stderr, "line %zu: ", replay_lineno);
    }

    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);

    fputc('\n', stderr);
}


/*
 * The decimal number of s[0..len): digits only, min to max (max below
 * 2^60); or -1.
 */
static int
replay_number(const char *s, size_t len, uint64_t min, uint64_t max,
    uint64_t *n)
{
    size_t    i;
    uint64_t  v;

    if (len == 0) {
        return -1;
    }

    v = 0;

    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }

        v = v * 10 + (uint64_t) (s[i] - '0');

        if (v > max) {
            return -1;
        }
    }

    if (v < min) {
        return -1;
    }

    *n = v;

    return 0;
}


/* A numeric option, or exit 2 as for a usage error. */
static uint64_t
option_number(const char *name, const char *s, uint64_t min, uint64_t max)
{
    uint64_t  n;

    if (replay_number(s, strlen(s), min, max, &n) != 0) {
        replay_error("invalid --%s \"%s\": a number from %llu to %llu",
                     name, s, (unsigned long long) min,
                     (unsigned long long) max);
        exit(2);
    }

    return n;
}


/* No reply within --timeout (or no connection). */
static int
redis_timed_out(redisContext *c)
{
#ifdef REDIS_ERR_TIMEOUT
    if (c->err == REDIS_ERR_TIMEOUT) {
        return 1;
    }
#endif

    /* hiredis 0.14: SO_RCVTIMEO, SO_SNDTIMEO and the connect's poll() */

    return c->err == REDIS_ERR_IO
           && (strcmp(c->errstr, strerror(EAGAIN)) == 0
               || strcmp(c->errstr, strerror(EWOULDBLOCK)) == 0
               || strcmp(c->errstr, strerror(ETIMEDOUT)) == 0);
}


/* Why a call on c failed: the error, or the timeout that ran out */
static const char *
redis_error(replay_t *rp, redisContext *c)
{
    static char  buf[64];

    if (c == NULL) {
        return "out of memory";
    }

    if (redis_timed_out(c)) {
        snprintf(buf, sizeof(buf), "no answer within %llu ms (--timeout)",
                 (unsigned long long) rp->timeout_ms);
        return buf;
    }

    return c->errstr;
}


static int64_t
wall_ms(void)
{
    struct timeval  tv;

    gettimeofday(&tv, NULL);

    return (int64_t) tv.tv_sec * 1000 + tv.tv_usec / 1000;
}


static uint64_t
hash_bytes(const unsigned char *p, size_t len)
{
    uint64_t  h;
    size_t    i;

    h = 1469598103934665603ULL;

    for (i = 0; i < len; i++) {
        h = (h ^ p[i]) * 1099511628211ULL;
    }

    return h;
}


/* Moves every entry into a table REPLAY_STORE_GROWTH times larger. */
static void
store_grow(replay_t *rp)
{
    replay_entry_t  **buckets, *e, *next;
    size_t            i, n;

    n = rp->nbuckets * REPLAY_STORE_GROWTH;
    buckets = calloc(n, sizeof(replay_entry_t *));

    if (buckets == NULL) {
        replay_error("out of memory");
        exit(1);
    }

    for (i = 0; i < rp->nbuckets; i++) {
        for (e = rp->buckets[i]; e; e = next) {
            next = e->next;
            e->next = buckets[e->hash % n];
            buckets[e->hash % n] = e;
        }
    }

    free(rp->buckets);
    rp->buckets = buckets;
    rp->nbuckets = n;
}


static replay_entry_t *
store_get(replay_t *rp, const unsigned char *key, size_t len)
{
    uint64_t          h;
    replay_entry_t   *e, **b;

    h = hash_bytes(key, len);

    for (e = rp->buckets[h % rp->nbuckets]; e; e = e->next) {
        if (e->hash == h && e->key_len == len
            && memcmp(e->key, key, len) == 0)
        {
            return e;
        }
    }

    if (rp->nkeys >= rp->nbuckets) {
        store_grow(rp);
    }

    e = calloc(1, sizeof(replay_entry_t));

    if (e == NULL || (e->key = malloc(len ? len : 1)) == NULL) {
        replay_error("out of memory");
        exit(1);
    }

    memcpy(e->key, key, len);
    e->key_len = len;
    e->hash = h;
    b = &rp->buckets[h % rp->nbuckets];
    e->next = *b;
    *b = e;
    rp->nkeys++;

    return e;
}


static void
store_free(replay_t *rp)
{
    replay_entry_t  *e, *next;
    size_t           i;

    for (i = 0; i < rp->nbuckets; i++) {
        for (e = rp->buckets[i]; e; e = next) {
            next = e->next;
            rules_buf_free(&e->state);
            free(e->key);
            free(e);
        }
    }

    free(rp->buckets);
}


/* Builds the state keys of the event's key operations into rp->keys. */
static void
build_keys(replay_t *rp, size_t *offs, size_t *lens)
{
    rules_keyop_t  *ko;
    size_t          i, total, off;

    total = 0;

    for (i = 0; i < rp->eo.nkeyops; i++) {
        ko = &rp->eo.keyops[i];
        total += rules_state_key_len(rp->rs, rp->prefix_len, ko->group,
                                     ko->key_value.len);
    }

    if (total > rp->keys_size) {
        free(rp->keys);
        rp->keys = malloc(total);
        rp->keys_size = total;

        if (rp->keys == NULL) {
            replay_error("out of memory");
            exit(1);
        }
    }

    off = 0;

    for (i = 0; i < rp->eo.nkeyops; i++) {
        ko = &rp->eo.keyops[i];
        offs[i] = off;
        lens[i] = rules_state_key(rp->rs, rp->prefix, rp->prefix_len,
                                  ko->group, ko->key_value, rp->keys + off);
        off += lens[i];
    }
}


static int
apply_memory(replay_t *rp, int64_t now, size_t *offs, size_t *lens)
{
    replay_entry_t  *e;
    rules_buf_t      tmp;
    size_t           i;
    int              changed;
    int64_t          pttl;

    for (i = 0; i < rp->eo.nkeyops; i++) {
        e = store_get(rp, rp->keys + offs[i], lens[i]);
        rp->matched.len = 0;

        if (rules_state_apply_work(rp->parsed, e->state.data, e->state.len,
                                   rp->eo.keyops[i].op,
                                   rp->eo.keyops[i].op_len, now, wall_ms(),
                                   rp->rs, &rp->out, &changed, &pttl,
                                   &rp->matched)
            != 0)
        {
            replay_error("cannot apply an event");
            return -1;
        }

        if (changed) {
            tmp = e->state;
            e->state = rp->out;
            rp->out = tmp;
        }

        rules_result_add_digests(rp->rs, &rp->res, rp->matched.data,
                                 rp->matched.len);
    }

    return 0;
}


static void
swap_batches(replay_t *rp)
{
    rules_batch_t  tmp;

    tmp = rp->batch;
    rp->batch = rp->next;
    rp->next = tmp;
}


static int send_batch(replay_t *rp);
static void free_replies(replay_t *rp);


/*
 * Forgets every writer's cached states: after a lost connection, a
 * NOSCRIPT or a server that no longer takes RULES.STORE, Redis may have
 * restarted from an older snapshot or failed over, and hold other values
 * of the cached gens and lengths (as nginx).
 */
static void
replay_caches_clear(replay_t *rp)
{
    size_t  i;

    for (i = 0; i < rp->ncaches; i++) {
        rules_cache_clear(rp->caches[i]);
    }
}

static redisReply *cluster_call_wait(replay_t *rp, int key, int read_only,
    int argc, const char **argv, size_t *argvlen);
static redisReply *cluster_call(replay_t *rp, int key, int read_only,
    int argc, const char **argv, size_t *argvlen);


/*
 * What an error that ends the run after a call was written says: Redis
 * may have applied it, and replaying its line again would apply the
 * event twice.
 */
#define REPLAY_RESUME                                                        \
    "(check the keys of this line, then replay from the next one)"
#define REPLAY_SENT                                                          \
    " after the call was sent: the event may have been applied; stopping "   \
    REPLAY_RESUME


/*
 * Writes what c has queued, whole; 1 when it was, 0 on an error (the
 * call may have left in part).
 */
static int
redis_write_all(redisContext *c)
{
    int  done;

    do {
        if (redisBufferWrite(c, &done) != REDIS_OK) {
            return 0;
        }
    } while (!done);

    return 1;
}


/*
 * A call on the one Redis, written whole before its reply is read, so
 * that a failure says whether the call left (rp->sent): one that did may
 * have been applied.
 */
static redisReply *
redis_eval(replay_t *rp, const char *cmd, int argc, const char **argv,
    size_t *argvlen)
{
    redisReply  *reply;

    argv[0] = cmd;
    argvlen[0] = strlen(cmd);

    rp->sent = redisAppendCommandArgv(rp->redis, argc, argv, argvlen)
               == REDIS_OK
               && redis_write_all(rp->redis);

    if (!rp->sent
        || redisGetReply(rp->redis, (void **) &reply) != REDIS_OK)
    {
        return NULL;
    }

    return reply;
}


/*
 * One EVALSHA: the compactions due from earlier replies, then the event's
 * items (append, or read for a key the event does not change).  Each
 * item's reply is folded here, with the engine (rules_log.h).
 */
static int
apply_redis(replay_t *rp, int64_t now, size_t *offs, size_t *lens)
{
    redisReply     *el;
    rules_str_t     key;
    rules_item_t    item, compact;
    rules_buf_t    *saved;
    size_t          i, first, n;
    int             rc;

    n = rp->eo.nkeyops;
    first = rules_batch_items(&rp->batch);

    /* --writers N: the events go round robin to N writers' caches */
    rp->cache = rp->caches[rp->nevents++ % rp->ncaches];

    saved = calloc(n, sizeof(rules_buf_t));
    if (saved == NULL) {
        replay_error("out of memory");
        exit(1);
    }

    for (i = 0; i < n; i++) {
        if (rules_log_plan(rp->cache, rp->keys + offs[i], lens[i],
                           rules_cache_hash(rp->keys + offs[i], lens[i]),
                           &rp->eo.keyops[i], now, wall_ms(), &rp->work,
                           &saved[i], &item)
            != 0
            || rules_batch_add(&rp->batch, rp->keys + offs[i], lens[i],
                               &item)
               < 0)
        {
            replay_error("out of memory");
            exit(1);
        }
    }

    rc = send_batch(rp);

    for (i = 0; rc == 0 && i < n; i++) {
        el = rp->replies[first + i].el;
        rules_batch_item(&rp->batch, first + i, &key, &item);

        if (RULES_ITEM_COMPUTED(item.kind) && el->type == REDIS_REPLY_INTEGER
            && el->integer == 1)
        {
            /* the state computed here is the stored one */
            rules_result_add_digests(rp->rs, &rp->res, saved[i].data,
                                     saved[i].len);
            continue;
        }

        if (el->type != REDIS_REPLY_STRING && el->type != REDIS_REPLY_NIL) {
            replay_error("redis: unexpected reply to key %zu of the event%s"
                         "%.*s (the keys before it are applied)", i + 1,
                         el->type == REDIS_REPLY_ERROR ? ": " : "",
                         el->type == REDIS_REPLY_ERROR ? (int) el->len : 0,
                         el->type == REDIS_REPLY_ERROR ? el->str : "");
            rc = -1;
            break;
        }

        if (rules_log_reply(rp->cache, key, &item,
                            el->type == REDIS_REPLY_STRING
                            ? (unsigned char *) el->str : NULL,
                            (size_t) el->len, rp->replies[first + i].wall,
                            &rp->work, &rp->matched, &compact)
            != 0
            || (compact.kind
                && rules_batch_add(&rp->next, key.data, key.len, &compact)
                   < 0))
        {
            replay_error("out of memory");
            exit(1);
        }

        rules_result_add_digests(rp->rs, &rp->res, rp->matched.data,
                                 rp->matched.len);
    }

    free_replies(rp);

    for (i = 0; i < n; i++) {
        rules_buf_free(&saved[i]);
    }

    free(saved);

    /* the compactions go with the next event */

    rules_batch_reset(&rp->batch);
    swap_batches(rp);

    return rc;
}


/*
 * One EVALSHA of the items of b (on a cluster, to the master of their
 * slot); the reply has the wall time and one element per item.
 */
static redisReply *
call_batch(replay_t *rp, rules_batch_t *b)
{
    redisReply   *reply;
    const char  **argv;
    size_t       *argvlen, argc;
    char          nbuf[32];

    argc = 2 + rules_batch_argc(b);
    argv = malloc(argc * sizeof(char *));
    argvlen = malloc(argc * sizeof(size_t));

    if (argv == NULL || argvlen == NULL) {
        replay_error("out of memory");
        exit(1);
    }

    /*
     * EVALSHA sha numkeys key... item...: the module's call; or the same
     * as RULES.STORE when the server has the rules Redis module (until
     * a server says it has not: then the script, from then on).
     */

    rules_batch_argv(b, nbuf, argv + 2, argvlen + 2);

again:

    argv[0] = rp->native ? "RULES.STORE" : "EVALSHA";
    argvlen[0] = strlen(argv[0]);
    argv[1] = rules_script_sha1();
    argvlen[1] = 40;

    if (rp->native) {
        reply = rp->cluster ? cluster_call(rp, 3, 0, (int) argc, argv,
                                           argvlen)
                            : redis_eval(rp, "RULES.STORE", (int) argc, argv,
                                         argvlen);

        if (reply && reply->type == REDIS_REPLY_ERROR
            && (strncmp(reply->str, "ERR unknown command", 19) == 0
                || strncmp(reply->str, "RULESVERSION", 12) == 0
                || strncmp(reply->str, "NOPERM", 6) == 0))
        {
            /* a server without the module: one that failed over or
             * restarted may have lost writes, as after a NOSCRIPT */
            if (strncmp(reply->str, "NOPERM", 6) != 0) {
                replay_caches_clear(rp);
            }

            freeReplyObject(reply);
            rp->native = 0;
            goto again;
        }

    } else if (rp->cluster) {
        /* follows MOVED and ASK, and NOSCRIPT with EVAL */
        reply = cluster_call(rp, 3, 0, (int) argc, argv, argvlen);

    } else {
        reply = redis_eval(rp, "EVALSHA", (int) argc, argv, argvlen);

        if (reply && reply->type == REDIS_REPLY_ERROR
            && strncmp(reply->str, "NOSCRIPT", 8) == 0)
        {
            /* a Redis that lost its scripts may have lost writes: the
             * cached states go, as in nginx */
            replay_caches_clear(rp);
            freeReplyObject(reply);
            argv[1] = rules_script_text;
            argvlen[1] = strlen(rules_script_text);
            reply = redis_eval(rp, "EVAL", (int) argc, argv, argvlen);
        }
    }

    free(argv);
    free(argvlen);

    if (reply == NULL) {
        /* cluster_call() has said why */

        if (rp->cluster) {
            return NULL;
        }

        if (rp->sent) {
            replay_error("redis: %s" REPLAY_SENT, redis_error(rp, rp->redis));
            return NULL;
        }

        replay_error("redis: %s", redis_error(rp, rp->redis));

        return NULL;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        replay_error("redis: %s", reply->str);
        freeReplyObject(reply);
        return NULL;
    }

    if (reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 1 + rules_batch_items(b)
        || reply->element[0]->type != REDIS_REPLY_INTEGER)
    {
        replay_error("redis: unexpected reply");
        freeReplyObject(reply);
        return NULL;
    }

    return reply;
}


/*
 * Sends rp->batch: one call, or on a cluster one call per item (the
 * keys of a call must share a slot).  rp->replies[i] is item i's reply.
 */
static int
send_batch(replay_t *rp)
{
    size_t         i, n;
    redisReply    *reply;
    rules_str_t    key;
    rules_item_t   item;
    rules_batch_t  one;

    n = rules_batch_items(&rp->batch);

    free(rp->replies);
    free(rp->owners);
    rp->replies = calloc(n ? n : 1, sizeof(replay_reply_t));
    rp->owners = calloc(n ? n : 1, sizeof(redisReply *));
    rp->nowners = 0;

    if (rp->replies == NULL || rp->owners == NULL) {
        replay_error("out of memory");
        exit(1);
    }

    if (!rp->cluster) {
        reply = call_batch(rp, &rp->batch);

        if (reply == NULL) {
            return -1;
        }

        rp->owners[rp->nowners++] = reply;

        for (i = 0; i < n; i++) {
            rp->replies[i].el = reply->element[1 + i];
            rp->replies[i].wall = (int64_t) reply->element[0]->integer;
        }

        return 0;
    }

    memset(&one, 0, sizeof(rules_batch_t));

    for (i = 0; i < n; i++) {
        rules_batch_item(&rp->batch, i, &key, &item);
        rules_batch_reset(&one);

        if (rules_batch_add(&one, key.data, key.len, &item) < 0) {
            replay_error("out of memory");
            exit(1);
        }

        reply = call_batch(rp, &one);

        if (reply == NULL) {
            if (i > 0) {
                /* one call per key: the keys before it were stored */
                replay_error("redis cluster: %zu of this line's %zu key "
                             "operations were stored before this one "
                             "failed " REPLAY_RESUME, i, n);
            }

            rules_batch_free(&one);
            return -1;
        }

        rp->owners[rp->nowners++] = reply;
        rp->replies[i].el = reply->element[1];
        rp->replies[i].wall = (int64_t) reply->element[0]->integer;
    }

    rules_batch_free(&one);

    return 0;
}


static void
free_replies(replay_t *rp)
{
    size_t  i;

    for (i = 0; i < rp->nowners; i++) {
        freeReplyObject(rp->owners[i]);
    }

    rp->nowners = 0;
}


/*
 * The compactions still due, at the end (apply_redis() left them in
 * rp->batch for the next event): the stored state is folded.
 */
static int
flush_compactions(replay_t *rp)
{
    if (rules_batch_items(&rp->batch) == 0) {
        return 0;
    }

    if (send_batch(rp) != 0) {
        return -1;
    }

    free_replies(rp);
    rules_batch_reset(&rp->batch);

    return 0;
}


/* ---- Redis Cluster --------------------------------------------------- */


static long long
replay_now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


static void
replay_sleep_ms(long ms)
{
    struct timespec  ts;

    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000;
    nanosleep(&ts, NULL);
}


/* The node of host:port, added when new; -1 when the table is full. */
static int
cluster_node(replay_t *rp, const char *host, size_t len, int port)
{
    replay_node_t  *n;
    size_t          i;

    if (len == 0 || len >= sizeof(rp->nodes[0].host)) {
        return -1;
    }

    for (i = 0; i < rp->nnodes; i++) {
        n = &rp->nodes[i];

        if (n->port == port && strlen(n->host) == len
            && memcmp(n->host, host, len) == 0)
        {
            return (int) i;
        }
    }

    if (rp->nnodes == REPLAY_MAX_NODES) {
        replay_error("more than %d cluster nodes", REPLAY_MAX_NODES);
        return -1;
    }

    n = &rp->nodes[rp->nnodes];
    memcpy(n->host, host, len);
    n->host[len] = '\0';
    n->port = port;
    n->c = NULL;

    return (int) rp->nnodes++;
}


/* A node's connection goes: so do the cached states (as in nginx, a
 * lost connection may mean a node that restarted or failed over). */
static void
cluster_drop(replay_t *rp, int i)
{
    if (rp->nodes[i].c) {
        redisFree(rp->nodes[i].c);
        rp->nodes[i].c = NULL;
        replay_caches_clear(rp);
    }
}


/*
 * 1 when an idle connection is closed or broken (the node died since its
 * last answer: its FIN or reset is there) or holds bytes nothing asked
 * for: a call written to it would be lost unread, not maybe applied.
 */
static int
cluster_conn_gone(redisContext *c)
{
    char           b;
    ssize_t        n;
    struct pollfd  pfd;

    pfd.fd = c->fd;
    pfd.events = POLLIN;
    pfd.revents = 0;

    if (poll(&pfd, 1, 0) <= 0) {
        return 0;
    }

    if (pfd.revents & (POLLERR | POLLHUP | POLLNVAL)) {
        return 1;
    }

    n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);

    return n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
}


static int
redis_auth(replay_t *rp, redisContext *c)
{
    redisReply  *reply;

    if (rp->password == NULL) {
        return 0;
    }

    reply = rp->user ? redisCommand(c, "AUTH %s %s", rp->user, rp->password)
                     : redisCommand(c, "AUTH %s", rp->password);

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        replay_error("redis AUTH failed: %s",
                     reply ? reply->str : redis_error(rp, c));

        if (reply) {
            freeReplyObject(reply);
        }

        return -1;
    }

    freeReplyObject(reply);

    return 0;
}


/*
 * A node's connection is dropped when it fails (a failover is waited
 * out), but a node that does not answer a command within --timeout ends
 * the run.  A node that cannot be connected to (refused, or no answer to
 * the connect) is a failed node: the next seed, or a failover, is tried.
 */
static void
cluster_timeout(replay_t *rp, int i, redisContext *c)
{
    if (c && redis_timed_out(c)) {
        replay_error("redis cluster node %s:%d: %s", rp->nodes[i].host,
                     rp->nodes[i].port, redis_error(rp, c));
        exit(1);
    }
}


static redisContext *
cluster_conn(replay_t *rp, int i)
{
    struct timeval   tv;
    long long        left;
    replay_node_t   *n;

    n = &rp->nodes[i];

    if (n->c) {
        return n->c;
    }

    /* a node that drops packets costs a connect timeout: within the
     * call's time to wait for a failover, not --timeout each try */

    tv = rp->timeout;

    if (rp->deadline) {
        left = rp->deadline - replay_now_ms();

        if (left <= 0) {
            return NULL;
        }

        if (left < (long long) tv.tv_sec * 1000 + tv.tv_usec / 1000) {
            tv.tv_sec = left / 1000;
            tv.tv_usec = (left % 1000) * 1000;
        }
    }

    n->c = redisConnectWithTimeout(n->host, n->port, tv);

    if (n->c == NULL || n->c->err
        || redisSetTimeout(n->c, rp->timeout) != REDIS_OK)
    {
        if (n->c) {
            redisFree(n->c);
            n->c = NULL;
        }

        return NULL;
    }

    if (redis_auth(rp, n->c) != 0) {
        exit(1);
    }

    return n->c;
}


/* The slot map from the first node that gives one. */
static int
cluster_refresh(replay_t *rp)
{
    redisContext  *c;
    redisReply    *reply, *e, *m;
    size_t         i, j, n;
    long long      s;
    int            node;

    n = rp->nnodes;

    for (i = 0; i < n; i++) {
        c = cluster_conn(rp, (int) i);

        if (c == NULL) {
            continue;
        }

        reply = redisCommand(c, "CLUSTER SLOTS");

        if (reply == NULL) {
            cluster_timeout(rp, (int) i, c);
            cluster_drop(rp, (int) i);
            continue;
        }

        if (reply->type != REDIS_REPLY_ARRAY) {
            freeReplyObject(reply);
            continue;
        }

        for (s = 0; s < RULES_CLUSTER_SLOTS; s++) {
            rp->slots[s] = -1;
        }

        for (j = 0; j < reply->elements; j++) {
            e = reply->element[j];

            /* start end [host port ...] ...: a range that is not one
             * (negative, past the last slot, reversed) is skipped */
            if (e->type != REDIS_REPLY_ARRAY || e->elements < 3
                || e->element[0]->type != REDIS_REPLY_INTEGER
                || e->element[1]->type != REDIS_REPLY_INTEGER
                || e->element[0]->integer < 0
                || e->element[1]->integer >= RULES_CLUSTER_SLOTS
                || e->element[0]->integer > e->element[1]->integer
                || e->element[2]->type != REDIS_REPLY_ARRAY
                || e->element[2]->elements < 2
                || e->element[2]->element[0]->type != REDIS_REPLY_STRING
                || e->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
            {
                continue;
            }

            m = e->element[2];

            if (m->element[0]->len == 0) {
                node = (int) i;     /* an unknown endpoint: this node */

            } else {
                node = cluster_node(rp, m->element[0]->str,
                                    m->element[0]->len,
                                    (int) m->element[1]->integer);
            }

            if (node < 0) {
                continue;
            }

            for (s = e->element[0]->integer;
                 s <= e->element[1]->integer;
                 s++)
            {
                rp->slots[s] = (short) node;
            }
        }

        freeReplyObject(reply);

        return 0;
    }

    return -1;
}


/* "MOVED 3999 127.0.0.1:6381": the node named, or -1. */
static int
cluster_redirect_node(replay_t *rp, int from, const char *str, size_t len)
{
    const char  *p, *last, *host, *colon;

    last = str + len;
    p = memchr(str, ' ', len);

    if (p == NULL) {
        return -1;
    }

    host = memchr(p + 1, ' ', last - p - 1);

    if (host == NULL) {
        return -1;
    }

    host++;

    for (colon = last - 1; colon >= host && *colon != ':'; colon--) {
        /* void */
    }

    if (colon < host) {
        return -1;
    }

    if (colon == host) {
        return cluster_node(rp, rp->nodes[from].host,
                            strlen(rp->nodes[from].host), atoi(colon + 1));
    }

    return cluster_node(rp, host, colon - host, atoi(colon + 1));
}


/*
 * A command on the master of the slot of its key, argv[key] (EVALSHA sha
 * 1 key ...: 3), following MOVED and ASK; waits out a failover or a
 * cluster that is down for a while (CLUSTERDOWN, TRYAGAIN, lost
 * connections), for REPLAY_WAIT_MS at most, connects included
 * (rp->deadline).  A read_only command whose answer was lost is sent
 * again; any other ends the run (it may have been applied).
 */
static redisReply *
cluster_call(replay_t *rp, int key, int read_only, int argc,
    const char **argv, size_t *argvlen)
{
    redisReply  *reply;

    rp->deadline = replay_now_ms() + REPLAY_WAIT_MS;
    reply = cluster_call_wait(rp, key, read_only, argc, argv, argvlen);
    rp->deadline = 0;

    return reply;
}


static redisReply *
cluster_call_wait(replay_t *rp, int key, int read_only, int argc,
    const char **argv, size_t *argvlen)
{
    redisContext  *c;
    redisReply    *reply, *ok;
    unsigned       slot;
    int            i, asking, tries, sent;

    slot = rules_key_slot((const unsigned char *) argv[key], argvlen[key]);
    asking = -1;

    for (tries = 0;
         tries < REPLAY_MAX_TRIES && replay_now_ms() < rp->deadline;
         tries++)
    {
        i = asking >= 0 ? asking : rp->slots[slot];

        if (i < 0) {
            /* a new map and the call to its node are one try (a failed
             * try waits 100 ms: REPLAY_MAX_TRIES last REPLAY_WAIT_MS) */

            if (cluster_refresh(rp) != 0 || rp->slots[slot] < 0) {
                replay_sleep_ms(100);
                continue;
            }

            i = rp->slots[slot];
        }

        c = cluster_conn(rp, i);

        if (c == NULL) {
            rp->slots[slot] = -1;
            asking = -1;
            replay_sleep_ms(100);
            continue;
        }

        if (cluster_conn_gone(c)) {
            /* nothing written: a failed node, as if it refused to connect */
            cluster_drop(rp, i);
            rp->slots[slot] = -1;
            asking = -1;
            continue;
        }

        /* (ASKING and the command back to back) written whole, then read */

        sent = 0;
        reply = NULL;

        if ((asking < 0 || redisAppendCommand(c, "ASKING") == REDIS_OK)
            && redisAppendCommandArgv(c, argc, argv, argvlen) == REDIS_OK)
        {
            sent = redis_write_all(c);
        }

        if (sent && asking >= 0) {
            if (redisGetReply(c, (void **) &ok) == REDIS_OK) {
                if (redisGetReply(c, (void **) &reply) != REDIS_OK) {
                    reply = NULL;
                }

                if (reply && ok->type == REDIS_REPLY_ERROR) {
                    /* ASKING refused (an ACL): the command came back
                     * MOVED; the refusal is the answer */
                    freeReplyObject(reply);
                    reply = ok;

                } else {
                    freeReplyObject(ok);
                }
            }

        } else if (sent && redisGetReply(c, (void **) &reply) != REDIS_OK) {
            reply = NULL;
        }

        if (reply == NULL) {
            if (sent && !read_only) {
                /*
                 * the call reached the node and its answer was lost (the
                 * node died, or failed over): it may have been applied,
                 * and sending it again would apply the event twice
                 */
                replay_error("redis cluster node %s:%d: %s" REPLAY_SENT,
                             rp->nodes[i].host, rp->nodes[i].port,
                             redis_error(rp, c));
                exit(1);
            }

            cluster_timeout(rp, i, c);
            cluster_drop(rp, i);
            rp->slots[slot] = -1;
            asking = -1;
            replay_sleep_ms(100);
            continue;
        }

        if (reply->type != REDIS_REPLY_ERROR) {
            return reply;
        }

        if (strncmp(reply->str, "MOVED ", 6) == 0) {
            rp->slots[slot] = (short) cluster_redirect_node(rp, i, reply->str,
                                                            reply->len);
            asking = -1;

        } else if (strncmp(reply->str, "ASK ", 4) == 0) {
            asking = cluster_redirect_node(rp, i, reply->str, reply->len);

        } else if (strncmp(reply->str, "NOSCRIPT", 8) == 0
                   && strcmp(argv[0], "EVALSHA") == 0)
        {
            /* a node that lost its scripts may have lost writes */
            replay_caches_clear(rp);
            argv[0] = "EVAL";
            argvlen[0] = 4;
            argv[1] = rules_script_text;
            argvlen[1] = strlen(rules_script_text);

        } else if (strncmp(reply->str, "CLUSTERDOWN", 11) == 0
                   || strncmp(reply->str, "TRYAGAIN", 8) == 0
                   || strncmp(reply->str, "LOADING", 7) == 0)
        {
            rp->slots[slot] = -1;
            asking = -1;
            replay_sleep_ms(100);

        } else {
            return reply;
        }

        freeReplyObject(reply);
    }

    replay_error("redis cluster: slot %u: no answer after %d tries or "
                 "%d ms", slot, tries, REPLAY_WAIT_MS);

    return NULL;
}


/*
 * "HOST:PORT" from p to end, split at the last colon; an IPv6 host may be
 * written in brackets, "[::1]:6379", as nginx's.  -1: not one (no host,
 * a bracket without its pair, a port out of 1-65535).
 */
static int
replay_address(const char *p, const char *end, const char **host,
    size_t *len, uint64_t *port)
{
    const char  *q, *colon;

    colon = NULL;

    for (q = p; q < end; q++) {
        if (*q == ':') {
            colon = q;
        }
    }

    if (colon == NULL) {
        return -1;
    }

    *host = p;
    *len = (size_t) (colon - p);

    if (*len && ((*host)[0] == '[') != ((*host)[*len - 1] == ']')) {
        return -1;
    }

    if (*len >= 2 && (*host)[0] == '[') {
        (*host)++;
        *len -= 2;
    }

    if (*len == 0) {
        return -1;
    }

    return replay_number(colon + 1, end - colon - 1, 1, 65535, port);
}


/* Seeds "host:port[,host:port...]", then the slot map. */
static void
cluster_start(replay_t *rp, const char *seeds)
{
    const char  *p, *end, *host;
    size_t       i, len;
    uint64_t     port;

    rp->cluster = 1;

    for (i = 0; i < RULES_CLUSTER_SLOTS; i++) {
        rp->slots[i] = -1;
    }

    /* every entry a seed: an empty one (",,", a trailing comma) is not */

    for (p = seeds; ; p = end + 1) {
        end = strchr(p, ',');

        if (end == NULL) {
            end = p + strlen(p);
        }

        if (replay_address(p, end, &host, &len, &port) != 0
            || cluster_node(rp, host, len, (int) port) < 0)
        {
            replay_error("invalid --redis-cluster \"%s\": "
                         "HOST:PORT[,HOST:PORT...]", seeds);
            exit(2);
        }

        if (*end == '\0') {
            break;
        }
    }

    if (cluster_refresh(rp) != 0) {
        replay_error("no slot map from the cluster nodes %s", seeds);
        exit(1);
    }
}


/* SELECT db (0: nothing to do); a failure ends the run. */
static void
redis_select(replay_t *rp, redisContext *c, long db)
{
    redisReply  *reply;

    if (db == 0) {
        return;
    }

    reply = redisCommand(c, "SELECT %ld", db);

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        replay_error("redis SELECT failed: %s",
                     reply ? reply->str : redis_error(rp, c));
        exit(1);
    }

    freeReplyObject(reply);
}


/* --redis to a node with cluster support enabled: a cluster. */
static int
redis_is_cluster(replay_t *rp, redisContext *c)
{
    redisReply  *reply;
    int          yes;

    reply = redisCommand(c, "INFO cluster");

    if (reply == NULL) {
        replay_error("redis %s: INFO cluster failed: %s", rp->addr,
                     redis_error(rp, c));
        exit(1);
    }

    yes = reply->type == REDIS_REPLY_STRING
          && strstr(reply->str, "cluster_enabled:1") != NULL;

    freeReplyObject(reply);

    return yes;
}


static void
cluster_free(replay_t *rp)
{
    size_t  i;

    for (i = 0; i < rp->nnodes; i++) {
        cluster_drop(rp, (int) i);
    }
}


/*
 * "invalid JSON at line 1, column 7: ..." as "invalid JSON at column 7:
 * ...": the parser counts the lines of what it was given, one input line
 * here, so its line is always 1 and would read as the input's.
 */
static void
json_column_only(char *err)
{
    size_t             n;
    static const char  at[] = "invalid JSON at ", line[] = "line 1, ";

    n = sizeof(at) - 1;

    if (strncmp(err, at, n) == 0
        && strncmp(err + n, line, sizeof(line) - 1) == 0)
    {
        memmove(err + n, err + n + sizeof(line) - 1,
                strlen(err + n + sizeof(line) - 1) + 1);
    }
}


static void
print_result(replay_t *rp, const char *status, const char *error)
{
    size_t  i, first;

    first = 1;
    fputs("{\"matched\":[", stdout);

    for (i = 0; i < rules_count(rp->rs); i++) {
        if (rules_result_is_set(&rp->res, i)) {
            printf("%s\"%s\"", first ? "" : ",", rules_rule(rp->rs, i)->id);
            first = 0;
        }
    }

    fputs("]", stdout);

    if (status) {
        printf(",\"status\":\"%s\"", status);
    }

    if (error) {
        fputs(",\"error\":\"", stdout);

        for ( /* void */ ; *error; error++) {
            if (*error == '"' || *error == '\\') {
                putchar('\\');
            }

            putchar((unsigned char) *error >= 0x20 ? *error : ' ');
        }

        putchar('"');
    }

    fputs("}\n", stdout);
}


static int
replay_line(replay_t *rp, const char *line, size_t len,
    const char *time_member, int use_redis)
{
    rules_json_events_t   ev;
    rules_json_rc_t       jrc;
    rules_event_rc_t      erc;
    char                  err[RULES_ERR_LEN];
    size_t               *offs, *lens, n;
    int64_t               now;
    int                   rc;

    rules_result_clear(&rp->res);

    jrc = rules_json_events_parse(rp->rs, line, len, time_member, 1, &ev,
                                  err);

    if (jrc == RULES_JSON_NOMEM) {
        replay_error("out of memory");
        exit(1);
    }

    if (jrc != RULES_JSON_OK) {
        if (jrc == RULES_JSON_BAD_JSON) {
            json_column_only(err);
        }

        print_result(rp, "invalid", err);
        rules_json_events_free(&ev);
        return 0;
    }

    if (ev.nevents != 1) {
        /* "[]": no event, and no values to read */
        print_result(rp, "invalid", "no event: a line holds one JSON "
                     "object");
        rules_json_events_free(&ev);
        return 0;
    }

    now = ev.ts[0] >= 0 ? ev.ts[0] : wall_ms();

    erc = rules_event_build(rp->rs, &rp->limits, ev.values, now, &rp->eo);

    if (erc == RULES_EVENT_NOMEM) {
        replay_error("out of memory");
        exit(1);
    }

    if (erc == RULES_EVENT_INVALID) {
        print_result(rp, "invalid", "a value is over a limit");
        rules_json_events_free(&ev);
        return 0;
    }

    if (erc == RULES_EVENT_SKIPPED) {
        print_result(rp, NULL, NULL);
        rules_json_events_free(&ev);
        return 0;
    }

    n = rp->eo.nkeyops;
    offs = malloc(n * sizeof(size_t));
    lens = malloc(n * sizeof(size_t));

    if (offs == NULL || lens == NULL) {
        replay_error("out of memory");
        exit(1);
    }

    build_keys(rp, offs, lens);

    rc = use_redis ? apply_redis(rp, now, offs, lens)
                   : apply_memory(rp, now, offs, lens);

    free(offs);
    free(lens);
    rules_json_events_free(&ev);

    if (rc != 0) {
        return -1;
    }

    print_result(rp, NULL, NULL);

    return 0;
}


static redisContext *
redis_connect(replay_t *rp, const char *addr, long db)
{
    redisContext  *c;
    const char    *h;
    char           host[256];
    size_t         len;
    uint64_t       port;

    if (strncmp(addr, "unix:", 5) == 0) {
        if (strlen(addr + 5) > (size_t) REPLAY_UNIX_PATH_MAX) {
            replay_error("invalid --redis \"%s\": a unix path of at most "
                         "%d bytes", addr, REPLAY_UNIX_PATH_MAX);
            exit(2);
        }

        c = redisConnectUnixWithTimeout(addr + 5, rp->timeout);

    } else {
        if (replay_address(addr, addr + strlen(addr), &h, &len, &port) != 0
            || len >= sizeof(host))
        {
            replay_error("invalid --redis \"%s\": HOST:PORT or unix:PATH",
                         addr);
            exit(2);
        }

        memcpy(host, h, len);
        host[len] = '\0';
        c = redisConnectWithTimeout(host, (int) port, rp->timeout);
    }

    /* the timeout of the connect, then of every reply */

    if (c == NULL || c->err || redisSetTimeout(c, rp->timeout) != REDIS_OK) {
        replay_error("cannot connect to redis %s: %s", addr,
                     redis_error(rp, c));
        exit(1);
    }

    if (redis_auth(rp, c) != 0) {
        exit(1);
    }

    redis_select(rp, c, db);

    return c;
}


/* The results written so far are out (stdout on a full disk, say) */
static int
write_check(void)
{
    if (fflush(stdout) == 0 && !ferror(stdout)) {
        return 0;
    }

    replay_error("cannot write the results: %s", strerror(errno));

    return 1;
}


/*
 * --state KEY: the key's stored state, its log folded (an R1 state,
 * rules_state.h), raw on stdout, with the records of every rule, in the
 * file or not; nothing when there is none.
 */
static int
print_state(replay_t *rp, const char *key)
{
    size_t             argvlen[2];
    const char        *argv[2];
    redisReply        *reply;
    rules_log_info_t   info;

    if (rp->cluster) {
        /* from the master of its slot, MOVED and ASK followed */
        argv[0] = "GET";
        argvlen[0] = 3;
        argv[1] = key;
        argvlen[1] = strlen(key);

        reply = cluster_call(rp, 1, 1, 2, argv, argvlen);

        if (reply == NULL) {
            /* cluster_call() has said why */
            return 1;
        }

    } else {
        reply = redisCommand(rp->redis, "GET %s", key);
    }

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        replay_error("redis GET failed: %s",
                     reply ? reply->str : redis_error(rp, rp->redis));
        freeReplyObject(reply);
        return 1;
    }

    if (reply->type == REDIS_REPLY_STRING) {
        /* what is stored: the records of every rule, known or not */
        rp->work.known = NULL;

        if (rules_log_fold((unsigned char *) reply->str, reply->len, NULL, 0,
                           0, 0, 0, 0, &rp->work, NULL, &info)
            != 0)
        {
            replay_error("out of memory");
            return 1;
        }

        fwrite(rp->work.state->data, 1, rp->work.state->len, stdout);
    }

    freeReplyObject(reply);
    rules_log_work_free(&rp->work);

    return write_check();
}


/*
 * --redis (a Redis, or a node of a cluster: a seed) or --redis-cluster:
 * connected, the db selected, or the cluster's slot map read; the
 * cluster's seeds, or NULL.  A failure ends the run.
 */
static const char *
replay_connect(replay_t *rp, const char *redis, const char *cluster,
    long db)
{
    if (redis && !cluster) {
        /* (the db once it is known not to be a cluster node) */
        rp->redis = redis_connect(rp, redis, 0);

        if (strncmp(redis, "unix:", 5) != 0
            && redis_is_cluster(rp, rp->redis))
        {
            cluster = redis;
            redisFree(rp->redis);
            rp->redis = NULL;

        } else {
            redis_select(rp, rp->redis, db);
        }
    }

    if (cluster) {
        if (db) {
            replay_error("a Redis Cluster has no --db");
            exit(2);
        }

        cluster_start(rp, cluster);
    }

    return cluster;
}


/* What replay_connect() made (or, without Redis, the in-memory store). */
static void
replay_disconnect(replay_t *rp)
{
    if (rp->cluster) {
        cluster_free(rp);

    } else if (rp->redis) {
        redisFree(rp->redis);

    } else {
        store_free(rp);
    }
}


int
main(int argc, char **argv)
{
    static struct option  opts[] = {
        { "rules", required_argument, NULL, 'r' },
        { "redis", required_argument, NULL, 'R' },
        { "redis-cluster", required_argument, NULL, 'C' },
        { "password", required_argument, NULL, 'p' },
        { "user", required_argument, NULL, 'u' },
        { "db", required_argument, NULL, 'd' },
        { "prefix", required_argument, NULL, 'P' },
        { "key-max", required_argument, NULL, 'k' },
        { "value-max", required_argument, NULL, 'v' },
        { "time-member", required_argument, NULL, 't' },
        { "state", required_argument, NULL, 's' },
        { "cache", required_argument, NULL, 'c' },
        { "writers", required_argument, NULL, 'w' },
        { "extend-min", required_argument, NULL, 'e' },
        { "timeout", required_argument, NULL, 'T' },
        { "no-native", no_argument, NULL, 'N' },
        { "no-index", no_argument, NULL, 'I' },
        { "shared-distinct", no_argument, NULL, 'S' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    replay_t     rp;
    const char  *rules, *redis, *password, *user, *time_member, *state;
    const char  *cluster;
    char         err[RULES_ERR_LEN];
    char        *line;
    size_t       cap;
    ssize_t      len;
    FILE        *in;
    const char  *in_name;
    long         db;
    int          c, rc, no_index, shared, read_errno;
    size_t       cache_size, writers, i;

    rules = NULL;
    redis = NULL;
    cluster = NULL;
    password = NULL;
    user = NULL;
    time_member = "ts";
    state = NULL;
    cache_size = 64 * 1024 * 1024;
    writers = 1;
    db = 0;
    no_index = 0;
    shared = 0;

    memset(&rp, 0, sizeof(rp));
    rp.prefix = REPLAY_DEFAULT_PREFIX;
    rp.limits.key_max = RULES_DEFAULT_KEY_MAX;
    rp.limits.value_max = RULES_DEFAULT_VALUE_MAX;
    rp.timeout_ms = REPLAY_DEFAULT_TIMEOUT;

    /* a reader that goes away (| head) is a write error: exit 1 */
    (void) signal(SIGPIPE, SIG_IGN);

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'r': rules = optarg; break;
        case 'R': redis = optarg; break;
        case 'C': cluster = optarg; break;
        case 'p': password = optarg; break;
        case 'u': user = optarg; break;
        case 'd':
            db = (long) option_number("db", optarg, 0, REPLAY_MAX_DB);
            break;
        case 'P': rp.prefix = optarg; break;
        case 'k':
            rp.limits.key_max = option_number("key-max", optarg, 1,
                                              REPLAY_MAX_LENGTH);
            break;
        case 'v':
            rp.limits.value_max = option_number("value-max", optarg, 1,
                                                REPLAY_MAX_LENGTH);
            break;
        case 't': time_member = optarg; break;
        case 's': state = optarg; break;
        case 'c':
            cache_size = option_number("cache", optarg, 0, REPLAY_MAX_BYTES);
            break;
        case 'w':
            writers = option_number("writers", optarg, 1,
                                    REPLAY_MAX_WRITERS);
            break;
        case 'e':
            rp.work.extend_min = option_number("extend-min", optarg, 0,
                                               REPLAY_MAX_BYTES);
            break;
        case 'T':
            rp.timeout_ms = option_number("timeout", optarg, 1,
                                          REPLAY_MAX_TIMEOUT);
            break;
        case 'N': rp.native = -1; break;
        case 'I': no_index = 1; break;
        case 'S': shared = 1; break;
        default: usage();
        }
    }

    if (rules == NULL || argc - optind > 1 || (redis && cluster)) {
        usage();
    }

    if (user && password == NULL) {
        /* as rules_redis' "user=" without "password=" */
        replay_error("--user needs --password");
        exit(2);
    }

    rp.addr = redis;
    rp.user = user;
    rp.password = password;
    rp.timeout.tv_sec = (time_t) (rp.timeout_ms / 1000);
    rp.timeout.tv_usec = (suseconds_t) (rp.timeout_ms % 1000 * 1000);
    rp.native = rp.native == 0;

    rp.prefix_len = strlen(rp.prefix);

    rp.rs = rules_load_file(rules, err, sizeof(err));

    if (rp.rs == NULL) {
        replay_error("%s", err);
        return 1;
    }

    rules_set_sharing(rp.rs, shared);

    if (no_index) {
        rules_set_indexing(rp.rs, 0);
    }

    rp.work.known = rp.rs;
    rp.parsed = rules_state_work_create();

    if (rp.parsed == NULL) {
        replay_error("no memory");
        return 1;
    }

    if (optind < argc) {
        in_name = argv[optind];
        in = fopen(in_name, "r");

        if (in == NULL) {
            replay_error("%s: %s", argv[optind], strerror(errno));
            return 1;
        }

    } else {
        in_name = "stdin";
        in = stdin;
    }

    if (state) {
        if (redis == NULL && cluster == NULL) {
            usage();
        }

        replay_connect(&rp, redis, cluster, db);
        rc = print_state(&rp, state);

        replay_disconnect(&rp);
        rules_state_work_free(rp.parsed);
        rules_free(rp.rs);

        return rc;
    }

    if (redis || cluster) {
        rp.ncaches = writers;
        rp.caches = calloc(rp.ncaches, sizeof(rules_cache_t *));

        for (i = 0; rp.caches && i < rp.ncaches; i++) {
            rp.caches[i] = rules_cache_create(cache_size);

            if (rp.caches[i] == NULL) {
                break;
            }
        }

        if (rp.caches == NULL || i < rp.ncaches) {
            replay_error("out of memory");
            return 1;
        }
    }

    if (redis || cluster) {
        cluster = replay_connect(&rp, redis, cluster, db);

        if (cluster) {
            redis = cluster;
        }

    } else {
        rp.nbuckets = REPLAY_STORE_BUCKETS;
        rp.buckets = calloc(rp.nbuckets, sizeof(replay_entry_t *));
    }

    if ((!redis && rp.buckets == NULL)
        || rules_result_init(rp.rs, &rp.res) != 0)
    {
        replay_error("out of memory");
        return 1;
    }

    line = NULL;
    cap = 0;
    rc = 0;

    while ((len = getline(&line, &cap, in)) != -1) {
        replay_lineno++;

        /* a blank line (JSON whitespace only) is no event */

        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'
                           || line[len - 1] == ' ' || line[len - 1] == '\t'))
        {
            len--;
        }

        if (len == 0) {
            continue;
        }

        if (replay_line(&rp, line, (size_t) len, time_member,
                        redis != NULL)
            != 0)
        {
            rc = 1;
            break;
        }

        /* a write error stops the run at once: the results are lost */

        if (ferror(stdout)) {
            replay_error("cannot write the results: %s", strerror(errno));
            rc = 1;
            break;
        }
    }

    read_errno = errno;

    if (rc == 0 && (ferror(in) || !feof(in))) {
        /*
         * the line that could not be read (a directory: line 1); a line
         * too long for the memory (getline()'s ENOMEM sets neither the
         * end nor the error) is not the end of the input
         */
        replay_lineno++;

        if (read_errno == ENOMEM) {
            replay_error("out of memory reading %s", in_name);

        } else {
            replay_error("cannot read %s: %s", in_name,
                         strerror(read_errno));
        }

        rc = 1;
    }

    replay_at_end = 1;

    if (rc == 0 && write_check() != 0) {
        rc = 1;
    }

    fflush(stdout);
    free(line);

    if (in != stdin) {
        fclose(in);
    }

    if ((rp.redis || rp.cluster) && rc == 0 && flush_compactions(&rp) != 0) {
        rc = 1;
    }

    replay_disconnect(&rp);

    free(rp.keys);
    rules_buf_free(&rp.out);
    rules_buf_free(&rp.matched);
    rules_eventops_free(&rp.eo);
    free(rp.replies);
    free(rp.owners);
    rules_batch_free(&rp.batch);
    rules_batch_free(&rp.next);
    rules_log_work_free(&rp.work);
    rules_state_work_free(rp.parsed);
    for (i = 0; i < rp.ncaches; i++) {
        rules_cache_free(rp.caches[i]);
    }

    free(rp.caches);
    rules_result_free(&rp.res);
    rules_free(rp.rs);

    return rc;
}
