/*
 * The worker's batcher: the key operations of every event a worker
 * evaluates in one pass of its event loop go to Redis in one EVALSHA,
 * sent from a posted event once the pass has handled its I/O; a call
 * that fills up (RULES_BATCH_MAX_ITEMS) is sent and written once the
 * event being queued is complete (ngx_http_rules_batch_event_end()), so
 * that Redis works on it while the pass goes on.  An event's key
 * operations are never split over two calls: with one Redis, an event
 * is applied whole or not at all.  Every event still waits exactly one
 * round trip, and Redis pays the call's fixed cost and its read and
 * write once for many events.
 *
 * Each item's reply (the key's value before the append) is folded here
 * with the engine (src/rules_log.h) into the event's matched rules; a
 * fold that went through a long log queues a compaction into the next
 * call.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_rules_module.h"
#include "rules_log.h"
#include "rules_cache.h"


typedef struct {
    ngx_http_rules_cmd_t         *cmd;        /* NULL: a compaction */
    unsigned                      group;
    size_t                        matched;    /* write: offset of the
                                                 digests it will match,
                                                 in batch->matched */
    size_t                        nmatched;
} ngx_http_rules_item_t;


typedef struct ngx_http_rules_batch_s  ngx_http_rules_batch_t;

struct ngx_http_rules_batch_s {
    ngx_http_rules_batch_t       *next;       /* free list, or full list */
    ngx_queue_t                   queue;      /* being filled */
    ngx_uint_t                    full;       /* in the full list */
    ngx_uint_t                    slot;       /* cluster: of its keys */
    ngx_http_rules_main_conf_t   *rmcf;
    rules_batch_t                 b;
    rules_buf_t                   matched;    /* of the write items */
    ngx_http_rules_item_t        *items;
    size_t                        items_size;
    const char                  **argv;
    size_t                       *argvlen;
    size_t                        argv_size;
    uint64_t                      start;      /* ns, monotonic */
};


typedef struct {
    ngx_http_rules_main_conf_t   *rmcf;
    ngx_http_rules_batch_t      **cur;        /* being filled, by slot */
    ngx_uint_t                    nslots;     /* 1, or a cluster's 16384 */
    ngx_queue_t                   filling;    /* those in cur */
    ngx_http_rules_batch_t       *free;
    ngx_uint_t                    nfree;
    ngx_http_rules_batch_t       *full;       /* filled by the event being
                                                 queued: sent at its end */
    ngx_event_t                   flush;
    rules_log_work_t              work;
    rules_buf_t                   matched;
    rules_cache_t                *cache;      /* folded states */
    ngx_uint_t                    losses;     /* signs of lost writes
                                                 seen before its entries
                                                 (closes, NOSCRIPT) */
    ngx_http_rules_batch_stats_t  lookups;    /* of it, not counted yet */
    size_t                        evictions;  /* the cache's, once freed */
    ngx_http_rules_log_rate_t     error_log;  /* unexpected replies */
} ngx_http_rules_batcher_t;


static ngx_str_t  ngx_http_rules_cluster_name = ngx_string("cluster");


/*
 * Batches kept for the next calls: at most this many, each only when its
 * buffer is at most this large (a call of large states grows it to
 * hundreds of KB: kept, sixteen of them would hold MBs idle).
 */
#define NGX_HTTP_RULES_BATCH_FREE_MAX   16
#define NGX_HTTP_RULES_BATCH_KEEP_SIZE  (64 * 1024)


static ngx_http_rules_batcher_t  ngx_http_rules_batcher;


static void ngx_http_rules_batch_flush_handler(ngx_event_t *ev);
static void ngx_http_rules_batch_send(ngx_http_rules_batch_t *batch);
static void ngx_http_rules_batch_unqueue(ngx_http_rules_batch_t *batch);
static void ngx_http_rules_batch_send_now(ngx_http_rules_batch_t *batch);
static ngx_http_rules_batch_t *ngx_http_rules_batch_full_pop(
    ngx_http_rules_batcher_t *bt);
static void ngx_http_rules_batch_reply(void *data, redisReply *reply,
    ngx_int_t rc);
static void ngx_http_rules_batch_fail(ngx_http_rules_batch_t *batch);
static void ngx_http_rules_batch_release(ngx_http_rules_batch_t *batch);


ngx_int_t
ngx_http_rules_batch_init(ngx_http_rules_main_conf_t *rmcf, ngx_log_t *log)
{
    ngx_http_rules_batcher_t  *bt = &ngx_http_rules_batcher;

    if (bt->cache) {
        /* a start tried again (ngx_http_rules_worker_start()) */
        return NGX_OK;
    }

    ngx_memzero(bt, sizeof(ngx_http_rules_batcher_t));

    bt->rmcf = rmcf;
    bt->work.known = rmcf->rules;

    /* on a cluster, the keys of one call must share a slot */

    bt->nslots = rmcf->cluster_set ? 16384 : 1;
    bt->cur = ngx_calloc(bt->nslots * sizeof(ngx_http_rules_batch_t *), log);

    if (bt->cur == NULL) {
        return NGX_ERROR;
    }

    ngx_queue_init(&bt->filling);

    bt->flush.handler = ngx_http_rules_batch_flush_handler;
    bt->flush.data = bt;
    bt->flush.log = log;

    bt->cache = rules_cache_create(rmcf->state_cache_size);

    if (bt->cache == NULL) {
        ngx_log_error(NGX_LOG_EMERG, log, 0,
                      "rules: no memory for the state cache");
        ngx_free(bt->cur);
        bt->cur = NULL;
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_http_rules_batch_t *
ngx_http_rules_batch_current(ngx_uint_t slot)
{
    ngx_http_rules_batch_t    *batch;
    ngx_http_rules_batcher_t  *bt = &ngx_http_rules_batcher;

    if (bt->cur[slot]) {
        return bt->cur[slot];
    }

    if (bt->free) {
        batch = bt->free;
        bt->free = batch->next;
        bt->nfree--;

    } else {
        batch = ngx_calloc(sizeof(ngx_http_rules_batch_t), ngx_cycle->log);
        if (batch == NULL) {
            return NULL;
        }
    }

    batch->next = NULL;
    batch->rmcf = bt->rmcf;
    batch->slot = slot;
    bt->cur[slot] = batch;
    ngx_queue_insert_tail(&bt->filling, &batch->queue);

    return batch;
}


/*
 * A filling batch taken off the filling list, to be sent or failed; it
 * is no more its slot's current one (in cluster mode another batch of
 * the slot, of another key, may be the current one already).
 */
static void
ngx_http_rules_batch_unqueue(ngx_http_rules_batch_t *batch)
{
    ngx_http_rules_batcher_t  *bt = &ngx_http_rules_batcher;

    if (bt->cur[batch->slot] == batch) {
        bt->cur[batch->slot] = NULL;
    }

    ngx_queue_remove(&batch->queue);
}


/*
 * Queues one item; the call goes out at the end of the event loop's pass,
 * or, when the batch is full, at once (a compaction: cmd NULL) or at the
 * end of the item's event (ngx_http_rules_batch_event_end()).
 */
static ngx_int_t
ngx_http_rules_batch_queue(ngx_http_rules_cmd_t *cmd, unsigned group,
    rules_str_t key, const rules_item_t *ri, const rules_buf_t *matched)
{
    long                       item;
    ngx_uint_t                 slot;
    rules_str_t                first;
    rules_item_t               fri;
    ngx_http_rules_item_t     *it;
    ngx_http_rules_batch_t    *batch;
    ngx_http_rules_batcher_t  *bt = &ngx_http_rules_batcher;

    if (bt->nslots > 1) {
        slot = rules_key_slot(key.data, key.len);

        /*
         * Redis Cluster: a call holds one state key.  While its slot
         * migrates, a call of several keys gets ASK, then TRYAGAIN from
         * the importing master when they are not all there yet; one of a
         * single key always goes through.  Another key of the slot (two
         * users, or two key fields, that share it) takes a call of its
         * own; the one filling goes out with the pass as before.
         */

        batch = bt->cur[slot];

        if (batch && rules_batch_items(&batch->b)) {
            rules_batch_item(&batch->b, 0, &first, &fri);

            if (first.len != key.len
                || ngx_memcmp(first.data, key.data, key.len) != 0)
            {
                bt->cur[slot] = NULL;
            }
        }

    } else {
        slot = 0;
    }

    batch = ngx_http_rules_batch_current(slot);
    if (batch == NULL) {
        return NGX_ERROR;
    }

    if (rules_batch_items(&batch->b) == batch->items_size) {
        size_t                  size;
        ngx_http_rules_item_t  *items;

        size = batch->items_size ? batch->items_size * 2 : 64;
        items = ngx_alloc(size * sizeof(ngx_http_rules_item_t),
                          ngx_cycle->log);
        if (items == NULL) {
            return NGX_ERROR;
        }

        if (batch->items) {
            ngx_memcpy(items, batch->items,
                       batch->items_size * sizeof(ngx_http_rules_item_t));
            ngx_free(batch->items);
        }

        batch->items = items;
        batch->items_size = size;
    }

    item = rules_batch_add(&batch->b, key.data, key.len, ri);
    if (item < 0) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "rules: no memory for a Redis call");
        return NGX_ERROR;
    }

    it = &batch->items[item];
    it->cmd = cmd;
    it->group = group;
    it->matched = batch->matched.len;
    it->nmatched = 0;

    if (matched && matched->len) {
        if (rules_buf_append(&batch->matched, matched->data, matched->len)
            != 0)
        {
            /* the item is in the call: answer it as failed */
            it->cmd = NULL;
            ngx_http_rules_item_reply(cmd, group, NULL, 0, NGX_ERROR);
            return NGX_OK;
        }

        it->nmatched = matched->len;
    }

    if (rules_batch_items(&batch->b) >= RULES_BATCH_MAX_ITEMS
        || rules_batch_bytes(&batch->b) >= RULES_BATCH_MAX_BYTES)
    {
        if (!batch->full) {
            if (cmd == NULL) {
                ngx_http_rules_batch_send_now(batch);
                return NGX_OK;
            }

            /*
             * the event's other items go into this call too: it may
             * exceed the bounds by one event's items
             */

            batch->full = 1;
            batch->next = bt->full;
            bt->full = batch;
        }
    }

    if (!bt->flush.posted) {
        ngx_post_event(&bt->flush, &ngx_posted_events);
    }

    return NGX_OK;
}


/*
 * A full call goes out now, not at the end of the pass: Redis works on it
 * while this pass evaluates the next events.
 */
static void
ngx_http_rules_batch_send_now(ngx_http_rules_batch_t *batch)
{
    ngx_uint_t                   slot;
    ngx_http_rules_main_conf_t  *rmcf;

    /* the send may release the batch */

    slot = batch->slot;
    rmcf = batch->rmcf;

    ngx_http_rules_batch_unqueue(batch);
    ngx_http_rules_batch_send(batch);

    if (rmcf->cluster) {
        ngx_http_rules_cluster_write_now(rmcf->cluster, slot);

    } else if (rmcf->redis) {
        ngx_http_rules_redis_write_now(rmcf->redis);
    }
}


/* The next batch of the full list, taken off it; NULL: none. */
static ngx_http_rules_batch_t *
ngx_http_rules_batch_full_pop(ngx_http_rules_batcher_t *bt)
{
    ngx_http_rules_batch_t  *batch;

    batch = bt->full;

    if (batch) {
        bt->full = batch->next;
        batch->next = NULL;
        batch->full = 0;
    }

    return batch;
}


void
ngx_http_rules_batch_event_end(void)
{
    ngx_http_rules_batch_t    *batch;
    ngx_http_rules_batcher_t  *bt = &ngx_http_rules_batcher;

    /*
     * A send that fails answers its events at once, which may queue (and
     * end) other events: each batch is taken off the list before it goes.
     */

    while ((batch = ngx_http_rules_batch_full_pop(bt)) != NULL) {
        ngx_http_rules_batch_send_now(batch);
    }
}


void
ngx_http_rules_batch_prefetch_slots(const uint64_t *hashes, size_t n)
{
    rules_cache_prefetch_slots(ngx_http_rules_batcher.cache, hashes, n);
}


void
ngx_http_rules_batch_prefetch_entries(const uint64_t *hashes, size_t n)
{
    rules_cache_prefetch_entries(ngx_http_rules_batcher.cache, hashes, n);
}


size_t
ngx_http_rules_batch_evictions(void)
{
    ngx_http_rules_batcher_t  *bt = &ngx_http_rules_batcher;

    return bt->cache ? rules_cache_evictions(bt->cache) : bt->evictions;
}


ngx_int_t
ngx_http_rules_batch_add(ngx_http_rules_cmd_t *cmd, unsigned group,
    const rules_keyop_t *ko, rules_str_t key, uint64_t key_hash, int64_t now)
{
    ngx_uint_t                 losses;
    ngx_time_t                *tp;
    rules_item_t               ri;
    ngx_http_rules_batcher_t  *bt = &ngx_http_rules_batcher;

    losses = ngx_http_rules_redis_loss_count();

    if (bt->losses != losses) {
        /*
         * a connection was lost, or Redis lost its scripts: it may have
         * restarted from an older snapshot or failed over, and hold other
         * values of the cached gens and lengths; the keys are read again
         */
        bt->losses = losses;
        rules_cache_clear(bt->cache);
    }

    tp = ngx_timeofday();

    if (rules_log_plan(bt->cache, key.data, key.len, key_hash, ko, now,
                       (int64_t) tp->sec * 1000 + tp->msec, &bt->work,
                       &bt->matched, &ri)
        != 0)
    {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "rules: no memory for the state cache");
        return NGX_ERROR;
    }

    switch (ri.lookup) {

    case RULES_LOOKUP_HIT:
        bt->lookups.cache_hits++;
        break;

    case RULES_LOOKUP_MISS:
        bt->lookups.cache_misses++;
        bt->lookups.cache_evicted_misses += (ri.evicted != 0);
        break;

    default: /* RULES_LOOKUP_NONE */
        break;
    }

    if (ngx_http_rules_batch_queue(cmd, group, key, &ri,
                                   RULES_ITEM_COMPUTED(ri.kind)
                                   ? &bt->matched : NULL)
        != NGX_OK)
    {
        /* the cache took a state that will not be sent */
        rules_cache_del(bt->cache, key.data, key.len);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_rules_batch_flush_handler(ngx_event_t *ev)
{
    ngx_queue_t               *q;
    ngx_http_rules_batch_t    *batch;
    ngx_http_rules_batcher_t  *bt = ev->data;

    /*
     * (the full list is empty but while an event is being queued; its
     * batches, all in filling, go out with the others)
     */

    while (ngx_http_rules_batch_full_pop(bt)) { /* void */ }

    /*
     * A failed send answers its events at once; what that queues (a
     * compaction, say) joins the list and goes out in this same loop.
     */

    while (!ngx_queue_empty(&bt->filling)) {
        q = ngx_queue_head(&bt->filling);
        batch = ngx_queue_data(q, ngx_http_rules_batch_t, queue);
        ngx_http_rules_batch_unqueue(batch);
        ngx_http_rules_batch_send(batch);
    }
}


static void
ngx_http_rules_batch_send(ngx_http_rules_batch_t *batch)
{
    size_t                        argc;
    ngx_int_t                     rc;
    ngx_http_rules_main_conf_t   *rmcf;
    ngx_http_rules_batch_stats_t  d;
    char                          nbuf[32];

    rmcf = batch->rmcf;

    if (rules_batch_items(&batch->b) == 0) {
        ngx_http_rules_batch_release(batch);
        return;
    }

    argc = rules_batch_argc(&batch->b);

    if (argc > batch->argv_size) {
        if (batch->argv) {
            ngx_free(batch->argv);
            ngx_free(batch->argvlen);
            batch->argv = NULL;
            batch->argvlen = NULL;
            batch->argv_size = 0;
        }

        batch->argv = ngx_alloc(argc * sizeof(char *), ngx_cycle->log);
        batch->argvlen = ngx_alloc(argc * sizeof(size_t), ngx_cycle->log);

        if (batch->argv == NULL || batch->argvlen == NULL) {
            ngx_http_rules_batch_fail(batch);
            return;
        }

        batch->argv_size = argc;
    }

    rules_batch_argv(&batch->b, nbuf, batch->argv, batch->argvlen);

    batch->start = ngx_http_rules_metrics_now_ns();

    rc = NGX_DECLINED;

    if (rmcf->cluster) {
        rc = ngx_http_rules_cluster_evalsha(rmcf->cluster, (int) argc,
                                            batch->argv, batch->argvlen,
                                            ngx_http_rules_batch_reply,
                                            batch);

    } else if (rmcf->redis) {
        rc = ngx_http_rules_redis_evalsha(rmcf->redis, (int) argc,
                                          batch->argv, batch->argvlen,
                                          ngx_http_rules_batch_reply, batch);
    }

    if (rc != NGX_OK) {
        /* not connected, or too many calls in flight: logged there */
        ngx_http_rules_batch_fail(batch);
        return;
    }

    d = ngx_http_rules_batcher.lookups;
    ngx_memzero(&ngx_http_rules_batcher.lookups,
                sizeof(ngx_http_rules_batch_stats_t));
    d.calls = 1;
    d.items = rules_batch_items(&batch->b);
    ngx_http_rules_metrics_batch(rmcf, &d);
}


static void
ngx_http_rules_batch_reply(void *data, redisReply *reply, ngx_int_t rc)
{
    ngx_http_rules_batch_t *batch = data;

    size_t                       i, n;
    int64_t                      wall;
    ngx_int_t                    skipped;
    ngx_str_t                    detail;
    redisReply                  *el;
    rules_str_t                  key;
    rules_item_t                 ri, compact;
    ngx_http_rules_item_t        *it;
    ngx_http_rules_batcher_t     *bt = &ngx_http_rules_batcher;
    ngx_http_rules_main_conf_t   *rmcf;
    ngx_http_rules_batch_stats_t  d;

    rmcf = batch->rmcf;
    n = rules_batch_items(&batch->b);
    ngx_memzero(&d, sizeof(ngx_http_rules_batch_stats_t));

    if (rc != NGX_OK || reply == NULL) {
        ngx_http_rules_batch_fail(batch);
        return;
    }

    /*
     * Redis' wall clock, then one reply per item; a clock out of the
     * stamps' range would expire every record at the fold.  detail.data
     * stays NULL for a reply that will do.
     */

    ngx_str_null(&detail);

    if (reply->type == REDIS_REPLY_ERROR) {
        detail.len = reply->len;
        detail.data = (u_char *) reply->str;

    } else if (reply->type != REDIS_REPLY_ARRAY || reply->elements != n + 1
               || reply->element[0]->type != REDIS_REPLY_INTEGER)
    {
        ngx_str_set(&detail, "");

    } else if (reply->element[0]->integer < 0
               || reply->element[0]->integer > RULES_MAX_TS_MS)
    {
        ngx_str_set(&detail, "Redis' clock is not a time");
    }

    if (detail.data) {
        /* at most a line a second: a Redis out of memory fails them all */

        skipped = ngx_http_rules_log_due(&bt->error_log);

        if (skipped != NGX_DECLINED) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "rules redis %V: unexpected reply to the state call: "
                          "%V (%i more since the last such line)",
                          rmcf->cluster ? &ngx_http_rules_cluster_name
                                        : &rmcf->redis_conf.addr_text,
                          &detail, skipped);
        }

        ngx_http_rules_batch_fail(batch);
        return;
    }

    ngx_http_rules_metrics_round_trip(rmcf, (ngx_msec_int_t)
                     ((ngx_http_rules_metrics_now_ns() - batch->start) / 1000));

    wall = (int64_t) reply->element[0]->integer;

    for (i = 0; i < n; i++) {
        it = &batch->items[i];
        el = reply->element[i + 1];
        rules_batch_item(&batch->b, i, &key, &ri);

        if (ri.kind == RULES_ITEM_COMPACT) {
            if (el->type == REDIS_REPLY_INTEGER && el->integer == 1) {
                d.compactions++;

            } else {
                d.compactions_lost++;
            }

            continue;
        }

        if (RULES_ITEM_COMPUTED(ri.kind) && el->type == REDIS_REPLY_INTEGER
            && el->integer == 1)
        {
            /* the state computed when the event was queued is stored */
            d.writes++;

            if (it->cmd) {
                ngx_http_rules_item_result(it->cmd, it->group,
                                           batch->matched.data + it->matched,
                                           it->nmatched, NGX_OK);
            }

            continue;
        }

        if (el->type != REDIS_REPLY_STRING && el->type != REDIS_REPLY_NIL) {
            rules_cache_del(bt->cache, key.data, key.len);

            if (it->cmd) {
                ngx_http_rules_item_result(it->cmd, it->group, NULL, 0,
                                           NGX_ERROR);
            }

            continue;
        }

        if (RULES_ITEM_COMPUTED(ri.kind)) {
            d.write_fallbacks++;
        }

        if (rules_log_reply(bt->cache, key, &ri,
                            el->type == REDIS_REPLY_STRING
                            ? (u_char *) el->str : NULL,
                            el->type == REDIS_REPLY_STRING ? el->len : 0,
                            wall, &bt->work, &bt->matched, &compact)
            != 0)
        {
            ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                          "rules: no memory to fold a key's state");

            if (it->cmd) {
                ngx_http_rules_item_result(it->cmd, it->group, NULL, 0,
                                           NGX_ERROR);
            }

            continue;
        }

        if (compact.kind
            && ngx_http_rules_batch_queue(NULL, 0, key, &compact, NULL)
               != NGX_OK)
        {
            d.compactions_lost++;
        }

        if (it->cmd) {
            ngx_http_rules_item_result(it->cmd, it->group,
                                       bt->matched.data, bt->matched.len,
                                       NGX_OK);
        }
    }

    ngx_http_rules_metrics_flush(rmcf);
    ngx_http_rules_metrics_batch(rmcf, &d);

    /*
     * Then the events are answered: this may run their requests' phases,
     * which may queue new items (into other batches).
     */

    for (i = 0; i < n; i++) {
        it = &batch->items[i];

        if (it->cmd) {
            ngx_http_rules_item_done(it->cmd);
        }
    }

    ngx_http_rules_batch_release(batch);
}


static void
ngx_http_rules_batch_fail(ngx_http_rules_batch_t *batch)
{
    size_t                     i, n;
    rules_str_t                key;
    rules_item_t               ri;
    ngx_http_rules_item_t     *it;
    ngx_http_rules_batcher_t  *bt = &ngx_http_rules_batcher;

    n = rules_batch_items(&batch->b);

    for (i = 0; i < n; i++) {
        it = &batch->items[i];

        /* the cache took states that may not be stored */
        rules_batch_item(&batch->b, i, &key, &ri);
        rules_cache_del(bt->cache, key.data, key.len);

        if (it->cmd) {
            ngx_http_rules_item_reply(it->cmd, it->group, NULL, 0,
                                      NGX_ERROR);
        }
    }

    ngx_http_rules_batch_release(batch);
}


static void
ngx_http_rules_batch_free(ngx_http_rules_batch_t *batch)
{
    rules_batch_free(&batch->b);
    rules_buf_free(&batch->matched);

    if (batch->items) {
        ngx_free(batch->items);
    }

    if (batch->argv) {
        ngx_free(batch->argv);
        ngx_free(batch->argvlen);
    }

    ngx_free(batch);
}


static void
ngx_http_rules_batch_release(ngx_http_rules_batch_t *batch)
{
    ngx_http_rules_batcher_t  *bt = &ngx_http_rules_batcher;

    if (bt->nfree >= NGX_HTTP_RULES_BATCH_FREE_MAX || bt->rmcf == NULL
        || batch->b.data.size > NGX_HTTP_RULES_BATCH_KEEP_SIZE)
    {
        ngx_http_rules_batch_free(batch);
        return;
    }

    rules_batch_reset(&batch->b);
    batch->matched.len = 0;
    batch->next = bt->free;
    bt->free = batch;
    bt->nfree++;
}


/* After the Redis connection is gone: fails what was never sent. */
void
ngx_http_rules_batch_exit(void)
{
    ngx_queue_t               *q;
    ngx_http_rules_batch_t    *batch;
    ngx_http_rules_batcher_t  *bt = &ngx_http_rules_batcher;

    if (bt->flush.posted) {
        ngx_delete_posted_event(&bt->flush);
    }

    bt->rmcf = NULL;

    while (ngx_http_rules_batch_full_pop(bt)) { /* void */ }

    while (bt->cur && !ngx_queue_empty(&bt->filling)) {
        q = ngx_queue_head(&bt->filling);
        batch = ngx_queue_data(q, ngx_http_rules_batch_t, queue);
        ngx_http_rules_batch_unqueue(batch);
        ngx_http_rules_batch_fail(batch);
    }

    if (bt->cur) {
        ngx_free(bt->cur);
        bt->cur = NULL;
    }

    while (bt->free) {
        batch = bt->free;
        bt->free = batch->next;
        ngx_http_rules_batch_free(batch);
    }

    bt->nfree = 0;

    rules_log_work_free(&bt->work);
    rules_buf_free(&bt->matched);
    bt->evictions = rules_cache_evictions(bt->cache);
    rules_cache_free(bt->cache);
    bt->cache = NULL;
}
