/*
 * Metrics: counters in a shared memory zone, updated atomically by every
 * worker, served by "rules_metrics" in the Prometheus text format.
 *
 * The zone holds the global counters and one slot per rule, identified by
 * the rule's id and digest.  A worker keeps its per-rule evaluation
 * counts, per key group, and its match counts, per rule, and adds them to
 * the slots (ngx_http_rules_metrics_flush(), called with each Redis reply
 * before its events are answered) at most once per
 * NGX_HTTP_RULES_METRICS_FLUSH_MSEC: at once when its last addition is
 * older, else from a timer that fires after that (and when the worker
 * exits).  An atomic add per rule and event was 5 % of a worker's time
 * with 1000 rules; one per rule and reply still 4-5 % (groups of 333
 * rules, about 100 of them matched per event); once a millisecond 1.9 %
 * with their aged states (a reply every 0.2 ms), hence every 10 ms.  A
 * worker holds a slot in the zone (its pid) where it writes since when
 * its counts wait for the timer: a scrape adds its own worker's counts,
 * then waits (checking every NGX_HTTP_RULES_METRICS_WAIT_MSEC,
 * NGX_HTTP_RULES_METRICS_WAIT_MAX ms at most) until no worker holds
 * counts that waited from before the scrape arrived, so that every event
 * answered before it is in it; the counts deferred since do not hold it
 * (under load the workers keep deferring new ones), nor those of a
 * worker that died (its pid is gone: its slot is freed).  A worker
 * without a slot (all
 * NGX_HTTP_RULES_METRICS_DEFER_SLOTS held) adds its counts with every
 * reply.  The slot also holds the worker's events waiting for Redis (the
 * nginx_rules_inflight_events gauge sums the live workers' and those of
 * the workers without a slot): a worker killed with events waiting takes
 * them with it instead of leaving them in the gauge.  Each configuration
 * cycle builds, in its own memory, an index
 * from its rules (file order) to their slots: a rule
 * that stays across a reload keeps its slot, so the workers of the old
 * and of the new configuration count into the same counters and nothing
 * is lost while the old workers finish their requests; an edited rule
 * (new digest) gets a new slot and starts at 0.  A slot is freed at the
 * first reload after the workers of a configuration without its rule
 * have started (they mark their cycle "live"): by then only workers of
 * older cycles, which have had a whole reload to finish, could use it.
 * A reload that fails after the zone was set up loses nothing: no worker
 * of it starts, the running workers keep their index and the slots.
 *
 * When the zone's size changes (the rule file grew past what it can
 * hold), nginx makes a new zone; the counters are then copied from the
 * previous one, which stays mapped until the cycle is committed.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_rules_module.h"


/*
 * The counters are ngx_atomic_t words, added to by every worker: 32 bits
 * on a 32-bit platform, where the round trips' sum in microseconds would
 * wrap within minutes and go backwards (a counter reset to Prometheus).
 */
#if (NGX_PTR_SIZE != 8)
#error "ngx_http_rules_module needs a 64-bit platform (its shared counters are ngx_atomic_t)"
#endif


#define NGX_HTTP_RULES_METRICS_BUCKETS  13

/* a worker adds its per-rule counts at most this often (ms) */
#define NGX_HTTP_RULES_METRICS_FLUSH_MSEC   10
/* a worker's connection and engine counters reach the zone at least this
 * often (ms), events or not */
#define NGX_HTTP_RULES_METRICS_SYNC_MSEC    1000
/* a scrape waits for the workers that defer theirs: it checks every
 * millisecond, for 100 ms at most (timer_resolution may space the checks
 * out; the bound is in time, not in checks) */
#define NGX_HTTP_RULES_METRICS_WAIT_MSEC    1
#define NGX_HTTP_RULES_METRICS_WAIT_MAX     100
/* workers (old and new ones during a reload) that may defer their counts */
#define NGX_HTTP_RULES_METRICS_DEFER_SLOTS  256
/* a worker whose counts have waited this long (ms: three of its timer's
 * periods) may have died with them: a scrape checks its pid */
#define NGX_HTTP_RULES_METRICS_DEFER_STALE  30

/* a zone written by another layout of these structures is not read */
#define NGX_HTTP_RULES_METRICS_MAGIC                                         \
    (0x52554c45534d0000ULL + sizeof(ngx_http_rules_metrics_shm_t) * 256     \
     + sizeof(ngx_http_rules_metrics_slot_t))


/* one rule's counters, found again by id and digest after a reload */
typedef struct {
    ngx_queue_t                         queue;
    ngx_uint_t                          gen;      /* latest cycle using it */
    ngx_uint_t                          kept;     /* the cycle that found
                                                     the running one using
                                                     it */
    uint64_t                            digest;
    ngx_atomic_t                        evaluated;
    ngx_atomic_t                        matched;
    u_char                              id[RULES_ID_MAX_LEN + 1];
} ngx_http_rules_metrics_slot_t;


/* a worker's deferred per-rule counts: since when (monotonic ms; 0:
 * none waiting), and who (0: a free slot); and its events waiting for
 * Redis, which go with the slot when the worker dies or exits */
typedef struct {
    ngx_atomic_t                        pid;
    ngx_atomic_t                        since;
    ngx_atomic_t                        inflight;
    ngx_atomic_t                        gen;      /* the holder's cycle */
} ngx_http_rules_metrics_defer_t;


/* the counters that a new zone copies from the previous one */
typedef struct {
    ngx_atomic_t                        events[NGX_HTTP_RULES_STATUS_LAST];
    ngx_atomic_t                        rejected;
    ngx_atomic_t                        failed_open;
    ngx_atomic_t                        failed_closed;
    ngx_atomic_t                        key_over_limit;
    ngx_atomic_t                        regex_limit_hits;
    ngx_atomic_t                        rtt_buckets[
                                           NGX_HTTP_RULES_METRICS_BUCKETS + 1];
    ngx_atomic_t                        rtt_sum_usec;
    ngx_atomic_t                        connects;
    ngx_atomic_t                        reconnects;
    ngx_atomic_t                        noscript;
    ngx_atomic_t                        native;
    ngx_atomic_t                        calls;
    ngx_atomic_t                        call_items;
    ngx_atomic_t                        writes;
    ngx_atomic_t                        write_fallbacks;
    ngx_atomic_t                        compactions;
    ngx_atomic_t                        compactions_lost;
    ngx_atomic_t                        cache_hits;
    ngx_atomic_t                        cache_misses;
    ngx_atomic_t                        cache_evicted_misses;
    ngx_atomic_t                        cache_evictions;
    ngx_atomic_t                        worker_starts;
    ngx_atomic_t                        config_loads;
    ngx_atomic_t                        cluster_moved;
    ngx_atomic_t                        cluster_ask;
    ngx_atomic_t                        cluster_refreshes;
    ngx_atomic_t                        cluster_refresh_errors;
} ngx_http_rules_metrics_counters_t;


typedef struct {
    uint64_t                            magic;
    ngx_http_rules_metrics_counters_t   c;

    /* events waiting for Redis of this zone's workers that hold no
     * slot (the others count theirs in their slot): not copied */
    ngx_atomic_t                        inflight;

    /* the workers whose per-rule counts may wait for their timer: not
     * copied */
    ngx_http_rules_metrics_defer_t      defer[
                                           NGX_HTTP_RULES_METRICS_DEFER_SLOTS];

    /* written by the master (zone init) under the pool's mutex */
    ngx_uint_t                          generation;   /* latest cycle */
    ngx_queue_t                         slots;

    /* the latest cycle whose workers started */
    ngx_atomic_t                        live;
} ngx_http_rules_metrics_shm_t;


/* per configuration cycle (the shm zone's data) */
struct ngx_http_rules_metrics_s {
    ngx_http_rules_main_conf_t         *rmcf;
    ngx_cycle_t                        *cycle;
    ngx_slab_pool_t                    *shpool;
    ngx_http_rules_metrics_shm_t       *sh;
    ngx_uint_t                          gen;
    ngx_uint_t                          nrules;
    ngx_http_rules_metrics_slot_t     **slots;    /* by rule, file order */

    /*
     * This worker's evaluations not added to the slots yet, by key group
     * (ngx_http_rules_metrics_flush()), and the groups that have some;
     * its matches, by rule, and the rules that have some.
     */
    ngx_uint_t                          ngroups;
    ngx_uint_t                         *pending;
    ngx_uint_t                         *dirty;
    ngx_uint_t                          ndirty;
    ngx_uint_t                         *pending_matched;
    ngx_uint_t                         *dirty_matched;
    ngx_uint_t                          ndirty_matched;

    /* when they were last added; the timer that adds them later, and
     * whether they wait for it; this worker's slot (NULL: none, they
     * never wait) */
    ngx_msec_t                          last_flush;
    ngx_event_t                         flush_ev;
    ngx_uint_t                          deferred;
    ngx_http_rules_metrics_defer_t     *defer;

    /* the timer that adds this worker's Redis and engine counters */
    ngx_event_t                         sync_ev;

    /* this worker took a slot (and gave it back at exit: its events
     * waiting for Redis are no longer counted anywhere) */
    ngx_uint_t                          had_slot;
};


/* a scrape waiting for the workers that defer their counts */
typedef struct {
    ngx_event_t                         ev;
    ngx_http_request_t                 *r;
    ngx_msec_t                          arrived;   /* monotonic ms */
} ngx_http_rules_metrics_wait_t;


static ngx_int_t ngx_http_rules_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_http_rules_metrics_shm_t *ngx_http_rules_metrics_old_zone(
    ngx_http_rules_metrics_t *m, ngx_shm_zone_t *shm_zone);
static ngx_int_t ngx_http_rules_metrics_index(ngx_http_rules_metrics_t *m,
    ngx_http_rules_metrics_t *om, ngx_http_rules_metrics_shm_t *from,
    ngx_log_t *log);
static ngx_uint_t ngx_http_rules_metrics_drop(ngx_http_rules_metrics_t *m,
    ngx_uint_t after, ngx_uint_t before);
static ngx_http_rules_metrics_slot_t *ngx_http_rules_metrics_slot_alloc(
    ngx_http_rules_metrics_t *m, ngx_log_t *log);
static ngx_http_rules_metrics_t *ngx_http_rules_metrics_ctx(
    ngx_http_rules_main_conf_t *rmcf);
static void ngx_http_rules_metrics_add(ngx_http_rules_metrics_t *m);
static void ngx_http_rules_metrics_defer_claim(ngx_http_rules_metrics_t *m);
static ngx_msec_t ngx_http_rules_metrics_clock(void);
static ngx_uint_t ngx_http_rules_metrics_oldest(
    ngx_http_rules_metrics_shm_t *sh, ngx_uint_t live);
static ngx_uint_t ngx_http_rules_metrics_dead(ngx_atomic_uint_t pid);
static void ngx_http_rules_metrics_defer_free(
    ngx_http_rules_metrics_defer_t *d, ngx_atomic_uint_t pid,
    ngx_atomic_uint_t since);
static ngx_uint_t ngx_http_rules_metrics_deferred(
    ngx_http_rules_metrics_shm_t *sh, ngx_msec_t arrived);
static void ngx_http_rules_metrics_flush_handler(ngx_event_t *ev);
static void ngx_http_rules_metrics_sync_handler(ngx_event_t *ev);
static void ngx_http_rules_metrics_wait_handler(ngx_event_t *ev);
static void ngx_http_rules_metrics_wait_cleanup(void *data);
static ngx_int_t ngx_http_rules_metrics_send(ngx_http_request_t *r);
static ngx_int_t ngx_http_rules_metrics_handler(ngx_http_request_t *r);
static void ngx_http_rules_metrics_sync_cluster(
    ngx_http_rules_main_conf_t *rmcf, ngx_http_rules_metrics_shm_t *sh);
static u_char *ngx_http_rules_metrics_label(u_char *p, u_char *last,
    u_char *s, size_t len);
static size_t ngx_http_rules_metrics_utf8_len(u_char *s, size_t len);
static u_char *ngx_http_rules_metrics_per_rule(u_char *p, u_char *last,
    ngx_http_rules_metrics_t *m, const char *name, const char *help,
    ngx_atomic_uint_t *matched);


static ngx_str_t  ngx_http_rules_metrics_zone_name =
    ngx_string("ngx_http_rules_metrics");


/* round-trip histogram bounds, microseconds, and their "le" labels */
static ngx_uint_t  ngx_http_rules_rtt_bounds[NGX_HTTP_RULES_METRICS_BUCKETS] =
{
    100, 250, 500, 750, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
    250000, 1000000
};

static const char  *ngx_http_rules_rtt_labels[NGX_HTTP_RULES_METRICS_BUCKETS] =
{
    "0.0001", "0.00025", "0.0005", "0.00075", "0.001", "0.0025", "0.005",
    "0.01", "0.025", "0.05", "0.1", "0.25", "1"
};

static const char  *ngx_http_rules_kind_names[] = { "segment", "fraud" };

static const char  *ngx_http_rules_type_names[] = {
    "", "count", "distinct", "absence", "sequence"
};


/* ---- the zone ------------------------------------------------------ */


ngx_int_t
ngx_http_rules_metrics_zone(ngx_conf_t *cf, ngx_http_rules_main_conf_t *rmcf,
    size_t size)
{
    size_t                     need, n;
    ngx_http_rules_metrics_t  *m;

    n = rmcf->rules ? rules_count(rmcf->rules) : 0;

    /*
     * Room for every rule twice (the rules of the running workers and the
     * edited ones of the new cycle) and the pool's own pages.  The size
     * only grows in powers of two from the default, so that a reload with
     * a few rules more or less reuses the zone.
     */

    need = sizeof(ngx_http_rules_metrics_shm_t)
           + 2 * n * ngx_align(sizeof(ngx_http_rules_metrics_slot_t), 128)
           + 64 * 1024;

    if (size < 8 * ngx_pagesize) {
        size = 8 * ngx_pagesize;
    }

    while (size < need) {
        size *= 2;
    }

    m = ngx_pcalloc(cf->pool, sizeof(ngx_http_rules_metrics_t));
    if (m == NULL) {
        return NGX_ERROR;
    }

    m->rmcf = rmcf;
    m->cycle = cf->cycle;
    m->nrules = n;

    m->slots = ngx_pcalloc(cf->pool, (n ? n : 1)
                                     * sizeof(ngx_http_rules_metrics_slot_t *));
    if (m->slots == NULL) {
        return NGX_ERROR;
    }

    m->ngroups = rmcf->rules ? rules_ngroups(rmcf->rules) : 0;

    m->pending = ngx_pcalloc(cf->pool, (m->ngroups ? m->ngroups : 1)
                                       * sizeof(ngx_uint_t));
    m->dirty = ngx_pcalloc(cf->pool, (m->ngroups ? m->ngroups : 1)
                                     * sizeof(ngx_uint_t));
    m->pending_matched = ngx_pcalloc(cf->pool,
                                     (n ? n : 1) * sizeof(ngx_uint_t));
    m->dirty_matched = ngx_pcalloc(cf->pool,
                                   (n ? n : 1) * sizeof(ngx_uint_t));

    if (m->pending == NULL || m->dirty == NULL || m->pending_matched == NULL
        || m->dirty_matched == NULL)
    {
        return NGX_ERROR;
    }

    m->flush_ev.handler = ngx_http_rules_metrics_flush_handler;
    m->flush_ev.data = m;
    m->flush_ev.log = &cf->cycle->new_log;
    m->flush_ev.cancelable = 1;

    m->sync_ev.handler = ngx_http_rules_metrics_sync_handler;
    m->sync_ev.data = m;
    m->sync_ev.log = &cf->cycle->new_log;
    m->sync_ev.cancelable = 1;

    rmcf->metrics_zone = ngx_shared_memory_add(cf,
                                          &ngx_http_rules_metrics_zone_name,
                                          size, &ngx_http_rules_module);
    if (rmcf->metrics_zone == NULL) {
        return NGX_ERROR;
    }

    if (rmcf->metrics_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "rules metrics zone \"%V\" is already defined",
                           &ngx_http_rules_metrics_zone_name);
        return NGX_ERROR;
    }

    rmcf->metrics_zone->init = ngx_http_rules_metrics_init_zone;
    rmcf->metrics_zone->data = m;

    return NGX_OK;
}


/*
 * Runs in the master (and in "nginx -t") before the workers fork.  data
 * is the previous cycle's ngx_http_rules_metrics_t when nginx reuses the
 * zone (same name, size and tag).
 */
static ngx_int_t
ngx_http_rules_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_rules_metrics_t *om = data;

    size_t                         len;
    ngx_int_t                      rc;
    ngx_slab_pool_t               *shpool;
    ngx_http_rules_metrics_t      *m;
    ngx_http_rules_metrics_shm_t  *sh, *from;

    m = shm_zone->data;
    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;
    m->shpool = shpool;

    if (om && om->shpool == shpool) {

        /* a reload: the same zone, counters and slots */

        m->sh = om->sh;

        return ngx_http_rules_metrics_index(m, om, NULL, shm_zone->shm.log);
    }

    if (shm_zone->shm.exists) {
        m->sh = shpool->data;

        return ngx_http_rules_metrics_index(m, NULL, NULL, shm_zone->shm.log);
    }

    /* a new zone: the first start, or the size changed */

    from = om ? om->sh : ngx_http_rules_metrics_old_zone(m, shm_zone);

    ngx_shmtx_lock(&shpool->mutex);

    sh = ngx_slab_calloc_locked(shpool, sizeof(ngx_http_rules_metrics_shm_t));

    len = sizeof(" in rules metrics zone \"\"") + shm_zone->shm.name.len;
    shpool->log_ctx = ngx_slab_alloc_locked(shpool, len);

    ngx_shmtx_unlock(&shpool->mutex);

    if (sh == NULL || shpool->log_ctx == NULL) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "rules metrics zone \"%V\" is too small",
                      &shm_zone->shm.name);
        return NGX_ERROR;
    }

    ngx_sprintf(shpool->log_ctx, " in rules metrics zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* the slot allocation logs its own failure */
    shpool->log_nomem = 0;

    sh->magic = NGX_HTTP_RULES_METRICS_MAGIC;
    ngx_queue_init(&sh->slots);

    if (from) {
        sh->c = from->c;
        sh->generation = from->generation;
        sh->live = from->live;
    }

    shpool->data = sh;
    m->sh = sh;

    rc = ngx_http_rules_metrics_index(m, NULL, from, shm_zone->shm.log);

    if (rc == NGX_OK && from) {
        ngx_log_error(NGX_LOG_NOTICE, shm_zone->shm.log, 0,
                      "rules metrics zone \"%V\" resized to %uz bytes, "
                      "counters copied", &shm_zone->shm.name,
                      shm_zone->shm.size);
    }

    return rc;
}


/*
 * The zone of the running configuration when nginx did not reuse it (its
 * size changed): still mapped in the master while the new cycle is set
 * up.  Read only if it has this layout.
 */
static ngx_http_rules_metrics_shm_t *
ngx_http_rules_metrics_old_zone(ngx_http_rules_metrics_t *m,
    ngx_shm_zone_t *shm_zone)
{
    u_char                        *start, *end;
    ngx_uint_t                     i;
    ngx_cycle_t                   *old;
    ngx_list_part_t               *part;
    ngx_shm_zone_t                *zone;
    ngx_slab_pool_t               *shpool;
    ngx_http_rules_metrics_shm_t  *sh;

    old = m->cycle->old_cycle;

    if (old == NULL || ngx_is_init_cycle(old)) {
        return NULL;
    }

    part = &old->shared_memory.part;
    zone = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            zone = part->elts;
            i = 0;
        }

        if (zone[i].shm.name.len != shm_zone->shm.name.len
            || ngx_strncmp(zone[i].shm.name.data, shm_zone->shm.name.data,
                           shm_zone->shm.name.len)
               != 0
            || zone[i].shm.addr == NULL)
        {
            continue;
        }

        shpool = (ngx_slab_pool_t *) zone[i].shm.addr;
        sh = shpool->data;

        start = zone[i].shm.addr;
        end = start + zone[i].shm.size;

        if ((u_char *) sh > start
            && (u_char *) sh + sizeof(ngx_http_rules_metrics_shm_t) <= end
            && sh->magic == NGX_HTTP_RULES_METRICS_MAGIC)
        {
            return sh;
        }

        return NULL;
    }
}


/*
 * A new cycle: drop the slots no running worker uses, find the slots of
 * the rules that stay, make slots for the others (copying their counters
 * from the previous zone when it is a new one).  om: the running
 * configuration (the master's, its workers started or about to), when
 * the zone is the same.
 */
static ngx_int_t
ngx_http_rules_metrics_index(ngx_http_rules_metrics_t *m,
    ngx_http_rules_metrics_t *om, ngx_http_rules_metrics_shm_t *from,
    ngx_log_t *log)
{
    size_t                          i;
    ngx_int_t                       rc;
    ngx_uint_t                      live;
    ngx_queue_t                    *q;
    rules_set_t                    *rs;
    const rules_rule_t             *rule;
    ngx_http_rules_metrics_shm_t   *sh;
    ngx_http_rules_metrics_slot_t  *slot, *oslot;

    sh = m->sh;
    rs = m->rmcf->rules;
    rc = NGX_OK;

    if (sh == NULL || sh->magic != NGX_HTTP_RULES_METRICS_MAGIC) {
        ngx_log_error(NGX_LOG_EMERG, log, 0,
                      "rules metrics zone is not initialized");
        return NGX_ERROR;
    }

    ngx_shmtx_lock(&m->shpool->mutex);

    m->gen = ++sh->generation;
    live = sh->live;

    /*
     * The running configuration's slots are never dropped: its workers
     * count into them, and keep doing so if this reload fails.
     */

    if (om) {
        for (i = 0; i < om->nrules; i++) {
            if (om->slots[i]) {
                om->slots[i]->kept = m->gen;
            }
        }

        /*
         * the slots made by reloads that failed since the running one: no
         * worker has them (not from "live": until the running one's
         * workers start, live is older, and a slot that only workers still
         * finishing their requests have may carry a later gen, raised by
         * a configuration in between)
         */

        (void) ngx_http_rules_metrics_drop(m, om->gen, m->gen);
    }

    /*
     * Slots of rules that the running workers do not have: removed or
     * edited before their configuration was loaded, and no worker of an
     * older cycle still running (one finishing its requests, two reloads
     * later) could count into them.
     */

    (void) ngx_http_rules_metrics_drop(m, 0,
                                       ngx_http_rules_metrics_oldest(sh,
                                                                     live));

    /*
     * the rules that stay keep their slot: the running workers' (a slot
     * of an older cycle is a version the running workers replaced: a
     * rule edited back to it starts at 0, as any edited rule, instead of
     * taking up the count it had then)
     */

    for (q = ngx_queue_head(&sh->slots);
         q != ngx_queue_sentinel(&sh->slots);
         q = ngx_queue_next(q))
    {
        slot = ngx_queue_data(q, ngx_http_rules_metrics_slot_t, queue);

        /*
         * with the running configuration known, its slots only: a reload
         * (that may fail) never raises the gen of a slot that only older
         * workers have
         */

        if (om ? slot->kept != m->gen : slot->gen < live) {
            continue;
        }

        rule = rules_find_id(rs, (char *) slot->id, ngx_strlen(slot->id));

        if (rule && rule->digest == slot->digest
            && m->slots[rule->index] == NULL)
        {
            m->slots[rule->index] = slot;
            slot->gen = m->gen;
        }
    }

    /* new or edited rules start at 0 */

    for (i = 0; i < m->nrules; i++) {

        if (m->slots[i]) {
            continue;
        }

        slot = ngx_http_rules_metrics_slot_alloc(m, log);
        if (slot == NULL) {
            rc = NGX_ERROR;
            goto done;
        }

        rule = rules_rule(rs, i);

        ngx_memcpy(slot->id, rule->id, rule->id_len);
        slot->id[rule->id_len] = '\0';
        slot->digest = rule->digest;
        slot->gen = m->gen;

        ngx_queue_insert_tail(&sh->slots, &slot->queue);

        m->slots[i] = slot;
    }

    /* a new zone: the counters of the rules that stay are copied */

    if (from == NULL) {
        goto done;
    }

    for (q = ngx_queue_head(&from->slots);
         q != ngx_queue_sentinel(&from->slots);
         q = ngx_queue_next(q))
    {
        oslot = ngx_queue_data(q, ngx_http_rules_metrics_slot_t, queue);

        if (oslot->gen < from->live) {
            continue;
        }

        rule = rules_find_id(rs, (char *) oslot->id, ngx_strlen(oslot->id));

        if (rule && rule->digest == oslot->digest) {
            slot = m->slots[rule->index];
            slot->evaluated = oslot->evaluated;
            slot->matched = oslot->matched;
        }
    }

done:

    ngx_shmtx_unlock(&m->shpool->mutex);

    return rc;
}


/*
 * The oldest cycle with a running worker: live, or older for a worker
 * still finishing its requests (one that holds a slot of the defer
 * table; the workers beyond it are not seen).
 */
static ngx_uint_t
ngx_http_rules_metrics_oldest(ngx_http_rules_metrics_shm_t *sh,
    ngx_uint_t live)
{
    ngx_uint_t                       i, oldest;
    ngx_atomic_uint_t                pid, gen;
    ngx_http_rules_metrics_defer_t  *d;

    oldest = live;

    for (i = 0; i < NGX_HTTP_RULES_METRICS_DEFER_SLOTS; i++) {
        d = &sh->defer[i];
        pid = d->pid;
        gen = d->gen;

        if (pid != 0 && gen < oldest && !ngx_http_rules_metrics_dead(pid)) {
            oldest = gen;
        }
    }

    return oldest;
}


/*
 * Frees the slots last used by a cycle after "after" and before "before"
 * that the running configuration does not use; locked.
 */
static ngx_uint_t
ngx_http_rules_metrics_drop(ngx_http_rules_metrics_t *m, ngx_uint_t after,
    ngx_uint_t before)
{
    ngx_uint_t                      n;
    ngx_queue_t                    *q, *next;
    ngx_http_rules_metrics_shm_t   *sh;
    ngx_http_rules_metrics_slot_t  *slot;

    sh = m->sh;
    n = 0;

    for (q = ngx_queue_head(&sh->slots);
         q != ngx_queue_sentinel(&sh->slots);
         q = next)
    {
        next = ngx_queue_next(q);
        slot = ngx_queue_data(q, ngx_http_rules_metrics_slot_t, queue);

        if (slot->gen > after && slot->gen < before && slot->kept != m->gen) {
            ngx_queue_remove(q);
            ngx_slab_free_locked(m->shpool, slot);
            n++;
        }
    }

    return n;
}


/*
 * A slot; when the zone is full, the slots of the configurations before
 * the running one go early (workers finishing their requests may still
 * count into them), never the running one's.
 */
static ngx_http_rules_metrics_slot_t *
ngx_http_rules_metrics_slot_alloc(ngx_http_rules_metrics_t *m, ngx_log_t *log)
{
    ngx_uint_t                      n;
    ngx_http_rules_metrics_slot_t  *slot;

    slot = ngx_slab_calloc_locked(m->shpool,
                                  sizeof(ngx_http_rules_metrics_slot_t));
    if (slot) {
        return slot;
    }

    n = ngx_http_rules_metrics_drop(m, 0, m->gen);

    if (n) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "rules metrics zone is full: dropped the counters of "
                      "%ui rules of the previous configuration early", n);

        slot = ngx_slab_calloc_locked(m->shpool,
                                      sizeof(ngx_http_rules_metrics_slot_t));
        if (slot) {
            return slot;
        }
    }

    ngx_log_error(NGX_LOG_EMERG, log, 0,
                  "rules metrics zone: not enough shared memory for %uz "
                  "rules", m->nrules);

    return NULL;
}


static ngx_http_rules_metrics_t *
ngx_http_rules_metrics_ctx(ngx_http_rules_main_conf_t *rmcf)
{
    ngx_http_rules_metrics_t  *m;

    if (rmcf == NULL || rmcf->metrics_zone == NULL) {
        return NULL;
    }

    m = rmcf->metrics_zone->data;

    return (m && m->sh) ? m : NULL;
}


static ngx_inline ngx_http_rules_metrics_shm_t *
ngx_http_rules_metrics_sh(ngx_http_rules_main_conf_t *rmcf)
{
    ngx_http_rules_metrics_t  *m;

    m = ngx_http_rules_metrics_ctx(rmcf);

    return m ? m->sh : NULL;
}


/* ---- counting ------------------------------------------------------ */


void
ngx_http_rules_metrics_event(ngx_http_rules_main_conf_t *rmcf,
    ngx_uint_t status)
{
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh && status < NGX_HTTP_RULES_STATUS_LAST) {
        (void) ngx_atomic_fetch_add(&sh->c.events[status], 1);
    }
}


void
ngx_http_rules_metrics_group(ngx_http_rules_main_conf_t *rmcf,
    unsigned group, const rules_result_t *matched)
{
    size_t                     w, words;
    uint64_t                   bits;
    ngx_uint_t                 rule;
    const uint64_t            *mask;
    ngx_http_rules_metrics_t  *m;

    m = ngx_http_rules_metrics_ctx(rmcf);

    if (m == NULL || group >= m->ngroups) {
        return;
    }

    mask = rules_group_mask(rmcf->rules, group);
    if (mask == NULL) {
        return;
    }

    /* the evaluations wait for ngx_http_rules_metrics_flush() */

    if (m->pending[group]++ == 0) {
        m->dirty[m->ndirty++] = group;
    }

    /* the matches wait as well, the group's only (a bit may be another
     * group's) */

    words = ngx_min(matched->words, rules_result_words(rmcf->rules));

    for (w = 0; w < words; w++) {
        for (bits = matched->matched[w] & mask[w]; bits; bits &= bits - 1) {
            rule = w * 64 + (ngx_uint_t) __builtin_ctzll(bits);

            /* the worker's own rule set indexes the slots found for it */

            if (rule >= m->nrules) {
                continue;
            }

            if (m->pending_matched[rule]++ == 0) {
                m->dirty_matched[m->ndirty_matched++] = rule;
            }
        }
    }
}


void
ngx_http_rules_metrics_flush(ngx_http_rules_main_conf_t *rmcf)
{
    ngx_http_rules_metrics_t  *m;

    m = ngx_http_rules_metrics_ctx(rmcf);

    if (m == NULL || (m->ndirty == 0 && m->ndirty_matched == 0)) {
        return;
    }

    if (m->defer == NULL
        || ngx_current_msec - m->last_flush
           >= NGX_HTTP_RULES_METRICS_FLUSH_MSEC)
    {
        ngx_http_rules_metrics_add(m);
        return;
    }

    if (!m->deferred) {
        m->deferred = 1;
        m->defer->since = ngx_http_rules_metrics_clock();
    }

    if (!m->flush_ev.timer_set) {
        ngx_add_timer(&m->flush_ev, NGX_HTTP_RULES_METRICS_FLUSH_MSEC);
    }
}


/* exit_process: the counts not added yet, and the slot given back */
void
ngx_http_rules_metrics_worker_exit(ngx_http_rules_main_conf_t *rmcf)
{
    ngx_http_rules_metrics_t  *m;

    m = ngx_http_rules_metrics_ctx(rmcf);

    if (m == NULL) {
        return;
    }

    ngx_http_rules_metrics_add(m);

    if (m->defer) {
        m->defer->inflight = 0;
        (void) ngx_atomic_cmp_set(&m->defer->pid, (ngx_atomic_uint_t) ngx_pid,
                                  0);
        m->defer = NULL;
    }
}


/* CLOCK_MONOTONIC in ns, read now (a call's round trip) */
uint64_t
ngx_http_rules_metrics_now_ns(void)
{
#if (NGX_HAVE_CLOCK_MONOTONIC)
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
#else
    struct timeval   tv;

    ngx_gettimeofday(&tv);

    return (uint64_t) tv.tv_sec * 1000000000 + tv.tv_usec * 1000;
#endif
}


/* The same clock in ms, never 0 (the time of a scrape's arrival, and of
 * a deferral, across workers; 0 is "none") */
static ngx_msec_t
ngx_http_rules_metrics_clock(void)
{
    ngx_msec_t  ms;

    ms = (ngx_msec_t) (ngx_http_rules_metrics_now_ns() / 1000000);

    return ms ? ms : 1;
}


/*
 * Whether a worker holds per-rule counts that have waited since before a
 * scrape arrived (or in its millisecond).  Counts deferred later are of
 * events answered after it; a worker whose counts have waited for more
 * than NGX_HTTP_RULES_METRICS_DEFER_STALE ms while its timer should have
 * added them after NGX_HTTP_RULES_METRICS_FLUSH_MSEC is checked: if it
 * died, they died with it, and its slot is freed.
 */
static ngx_uint_t
ngx_http_rules_metrics_deferred(ngx_http_rules_metrics_shm_t *sh,
    ngx_msec_t arrived)
{
    ngx_uint_t                       i;
    ngx_msec_t                       since, now;
    ngx_atomic_uint_t                pid;
    ngx_http_rules_metrics_defer_t  *d;

    now = 0;

    for (i = 0; i < NGX_HTTP_RULES_METRICS_DEFER_SLOTS; i++) {
        d = &sh->defer[i];
        since = d->since;

        if (since == 0 || (ngx_msec_int_t) (since - arrived) > 0) {
            continue;
        }

        if (now == 0) {
            now = ngx_http_rules_metrics_clock();
        }

        pid = d->pid;

        if (now - since > NGX_HTTP_RULES_METRICS_DEFER_STALE
            && ngx_http_rules_metrics_dead(pid))
        {
            ngx_http_rules_metrics_defer_free(d, pid, since);
            continue;
        }

        return 1;
    }

    /* no count waits: the counters read next hold every one added */
    ngx_memory_barrier();

    return 0;
}


/* Whether the process that held a slot is gone (0: a free slot). */
static ngx_uint_t
ngx_http_rules_metrics_dead(ngx_atomic_uint_t pid)
{
    return pid == 0
           || (kill((ngx_pid_t) pid, 0) == -1 && ngx_errno == NGX_ESRCH);
}


/*
 * A dead worker's slot freed, as read (pid, since): a worker that took
 * it meanwhile, and the time its counts wait since, are left alone.  The
 * dead worker's events waiting for Redis are not read any more (a free
 * slot's are not), and the next holder sets the count to 0.
 */
static void
ngx_http_rules_metrics_defer_free(ngx_http_rules_metrics_defer_t *d,
    ngx_atomic_uint_t pid, ngx_atomic_uint_t since)
{
    if (pid == 0) {
        return;
    }

    (void) ngx_atomic_cmp_set(&d->since, since, 0);
    (void) ngx_atomic_cmp_set(&d->pid, pid, 0);
}


static void
ngx_http_rules_metrics_flush_handler(ngx_event_t *ev)
{
    ngx_http_rules_metrics_add(ev->data);
}


/*
 * Events push the counters of their worker's connection (connections
 * made and lost, ...); a worker without events (a Redis restart while
 * it idles) pushes them from this timer.
 */
static void
ngx_http_rules_metrics_sync_handler(ngx_event_t *ev)
{
    ngx_http_rules_metrics_t  *m = ev->data;

    ngx_http_rules_metrics_sync_engine(m->rmcf);
    ngx_add_timer(&m->sync_ev, NGX_HTTP_RULES_METRICS_SYNC_MSEC);
}


/* The worker's per-rule counts added to the slots, now. */
static void
ngx_http_rules_metrics_add(ngx_http_rules_metrics_t *m)
{
    size_t                 k;
    ngx_uint_t             i, rule, n;
    const rules_group_t   *g;

    m->last_flush = ngx_current_msec;

    if (m->flush_ev.timer_set) {
        ngx_del_timer(&m->flush_ev);
    }

    for (i = 0; i < m->ndirty; i++) {
        g = rules_group(m->rmcf->rules, m->dirty[i]);
        n = m->pending[m->dirty[i]];
        m->pending[m->dirty[i]] = 0;

        for (k = 0; k < g->nrules; k++) {
            rule = g->rules[k];

            if (rule < m->nrules) {
                (void) ngx_atomic_fetch_add(&m->slots[rule]->evaluated,
                                            (ngx_atomic_int_t) n);
            }
        }
    }

    m->ndirty = 0;

    for (i = 0; i < m->ndirty_matched; i++) {
        rule = m->dirty_matched[i];

        (void) ngx_atomic_fetch_add(&m->slots[rule]->matched,
                                    (ngx_atomic_int_t) m->pending_matched[rule]);
        m->pending_matched[rule] = 0;
    }

    m->ndirty_matched = 0;

    if (m->deferred) {
        /* after the adds: a scrape that sees none waiting sees them */
        ngx_memory_barrier();
        m->deferred = 0;
        m->defer->since = 0;
    }
}


void
ngx_http_rules_metrics_round_trip(ngx_http_rules_main_conf_t *rmcf,
    ngx_msec_int_t usec)
{
    ngx_uint_t                     i;
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh == NULL) {
        return;
    }

    if (usec < 0) {
        usec = 0;
    }

    for (i = 0; i < NGX_HTTP_RULES_METRICS_BUCKETS; i++) {
        if ((ngx_uint_t) usec <= ngx_http_rules_rtt_bounds[i]) {
            break;
        }
    }

    /* the count is the sum of the buckets: always equal to +Inf */

    (void) ngx_atomic_fetch_add(&sh->c.rtt_buckets[i], 1);
    (void) ngx_atomic_fetch_add(&sh->c.rtt_sum_usec, (ngx_atomic_int_t) usec);
}


void
ngx_http_rules_metrics_failed(ngx_http_rules_main_conf_t *rmcf,
    ngx_uint_t closed)
{
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh) {
        (void) ngx_atomic_fetch_add(closed ? &sh->c.failed_closed
                                           : &sh->c.failed_open, 1);
    }
}


void
ngx_http_rules_metrics_rejected(ngx_http_rules_main_conf_t *rmcf)
{
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh) {
        (void) ngx_atomic_fetch_add(&sh->c.rejected, 1);
    }
}


void
ngx_http_rules_metrics_key_over_limit(ngx_http_rules_main_conf_t *rmcf,
    ngx_uint_t n)
{
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh && n) {
        (void) ngx_atomic_fetch_add(&sh->c.key_over_limit, n);
    }
}


/*
 * A worker's events waiting for Redis are counted in its slot, which a
 * worker that dies without giving it back (killed, crashed) loses with
 * them: the gauge does not keep them.  A worker without a slot counts in
 * the zone's counter.
 */
void
ngx_http_rules_metrics_inflight(ngx_http_rules_main_conf_t *rmcf,
    ngx_int_t delta)
{
    ngx_atomic_t              *n;
    ngx_http_rules_metrics_t  *m;

    m = ngx_http_rules_metrics_ctx(rmcf);

    if (m == NULL) {
        return;
    }

    if (m->defer) {
        n = &m->defer->inflight;

    } else if (!m->had_slot) {
        n = &m->sh->inflight;

    } else {
        /* exiting: the slot went back with the count */
        return;
    }

    /* two's complement: adding -1 subtracts one */
    (void) ngx_atomic_fetch_add(n, (ngx_atomic_int_t) delta);
}


/* The events waiting for Redis: of the live workers with a slot, and of
 * those without one. */
static ngx_atomic_int_t
ngx_http_rules_metrics_inflight_sum(ngx_http_rules_metrics_shm_t *sh)
{
    ngx_uint_t                       i;
    ngx_atomic_int_t                 sum, n;
    ngx_atomic_uint_t                pid, since;
    ngx_http_rules_metrics_defer_t  *d;

    sum = (ngx_atomic_int_t) sh->inflight;

    for (i = 0; i < NGX_HTTP_RULES_METRICS_DEFER_SLOTS; i++) {
        d = &sh->defer[i];

        /* since before pid, as ngx_http_rules_metrics_defer_free()
         * expects: read after, it could be a new holder's */
        since = d->since;
        pid = d->pid;
        n = (ngx_atomic_int_t) d->inflight;

        if (pid == 0 || n == 0) {
            continue;
        }

        if (ngx_http_rules_metrics_dead(pid)) {
            /* killed, or crashed, with events waiting */
            ngx_http_rules_metrics_defer_free(d, pid, since);
            continue;
        }

        sum += n;
    }

    return sum;
}


void
ngx_http_rules_metrics_redis(ngx_http_rules_main_conf_t *rmcf,
    ngx_uint_t connects_delta, ngx_uint_t reconnects_delta,
    ngx_uint_t noscript_delta, ngx_uint_t native_delta)
{
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh == NULL) {
        return;
    }

    if (connects_delta) {
        (void) ngx_atomic_fetch_add(&sh->c.connects, connects_delta);
    }

    if (reconnects_delta) {
        (void) ngx_atomic_fetch_add(&sh->c.reconnects, reconnects_delta);
    }

    if (noscript_delta) {
        (void) ngx_atomic_fetch_add(&sh->c.noscript, noscript_delta);
    }

    if (native_delta) {
        (void) ngx_atomic_fetch_add(&sh->c.native, native_delta);
    }
}


/*
 * A slot for this worker's deferred counts: the first one free.  The
 * slots of workers that died (killed, crashed: they never gave theirs
 * back) are freed on the way, and so is one that holds this pid (a dead
 * worker's, the pid reused), whose counts a scrape would otherwise wait
 * for while this worker lives.  None left: the worker adds its counts
 * with every reply.
 */
static void
ngx_http_rules_metrics_defer_claim(ngx_http_rules_metrics_t *m)
{
    ngx_uint_t                       i;
    ngx_atomic_uint_t                pid, self, since;
    ngx_http_rules_metrics_defer_t  *d;

    self = (ngx_atomic_uint_t) ngx_pid;

    for (i = 0; i < NGX_HTTP_RULES_METRICS_DEFER_SLOTS; i++) {
        d = &m->sh->defer[i];
        since = d->since;
        pid = d->pid;

        if (pid == self || (pid && ngx_http_rules_metrics_dead(pid))) {
            ngx_http_rules_metrics_defer_free(d, pid, since);
            pid = d->pid;
        }

        if (pid == 0 && m->defer == NULL
            && ngx_atomic_cmp_set(&d->pid, 0, self))
        {
            /* a reload that reads the previous holder's gen meanwhile
             * takes an older one: it frees less, never too much */
            d->gen = m->gen;
            d->since = 0;
            d->inflight = 0;
            m->defer = d;
            m->had_slot = 1;
        }
    }

    if (m->defer == NULL) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "rules metrics: all %d slots of the zone are held, "
                      "this worker adds its per-rule counts with every "
                      "Redis reply", NGX_HTTP_RULES_METRICS_DEFER_SLOTS);
    }
}


/*
 * init_process of a worker (the cache manager and loader count nothing,
 * and exit without exit_process): counts the start, claims a slot, and
 * marks this cycle as running; the first worker of a cycle counts a
 * configuration load (the start or a reload), so that worker starts
 * beyond worker_processes per load are respawns after a crash.
 */
void
ngx_http_rules_metrics_worker_start(ngx_http_rules_main_conf_t *rmcf)
{
    ngx_atomic_uint_t              live;
    ngx_http_rules_metrics_t      *m;
    ngx_http_rules_metrics_shm_t  *sh;

    m = ngx_http_rules_metrics_ctx(rmcf);

    if (m == NULL) {
        return;
    }

    sh = m->sh;

    (void) ngx_atomic_fetch_add(&sh->c.worker_starts, 1);

    ngx_http_rules_metrics_defer_claim(m);
    ngx_add_timer(&m->sync_ev, NGX_HTTP_RULES_METRICS_SYNC_MSEC);

    for ( ;; ) {
        live = sh->live;

        if (live >= m->gen) {
            break;
        }

        if (ngx_atomic_cmp_set(&sh->live, live, m->gen)) {
            (void) ngx_atomic_fetch_add(&sh->c.config_loads, 1);
            break;
        }
    }
}


/* The engine and the Redis connection count per process: push deltas. */
/* A Redis call sent (and the state cache lookups of its items), or its
 * reply's writes and compactions. */
void
ngx_http_rules_metrics_batch(ngx_http_rules_main_conf_t *rmcf,
    ngx_http_rules_batch_stats_t *d)
{
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh == NULL) {
        return;
    }

#define ngx_http_rules_metrics_add(counter, field)                           \
    if (d->field) {                                                          \
        (void) ngx_atomic_fetch_add(&sh->c.counter,                          \
                                    (ngx_atomic_int_t) d->field);            \
    }

    ngx_http_rules_metrics_add(calls, calls);
    ngx_http_rules_metrics_add(call_items, items);
    ngx_http_rules_metrics_add(writes, writes);
    ngx_http_rules_metrics_add(write_fallbacks, write_fallbacks);
    ngx_http_rules_metrics_add(compactions, compactions);
    ngx_http_rules_metrics_add(compactions_lost, compactions_lost);
    ngx_http_rules_metrics_add(cache_hits, cache_hits);
    ngx_http_rules_metrics_add(cache_misses, cache_misses);
    ngx_http_rules_metrics_add(cache_evicted_misses, cache_evicted_misses);

#undef ngx_http_rules_metrics_add
}


void
ngx_http_rules_metrics_sync_engine(ngx_http_rules_main_conf_t *rmcf)
{
    static uint64_t                regex_seen;
    static rules_set_t            *regex_rules;
    static size_t                  evictions_seen;
    static ngx_uint_t              connects_seen, reconnects_seen,
                                   noscript_seen, native_seen;
    size_t                         evictions;
    uint64_t                       hits;
    ngx_http_rules_redis_stats_t  *rst;
    ngx_http_rules_metrics_shm_t  *sh;

    sh = ngx_http_rules_metrics_sh(rmcf);

    if (sh == NULL) {
        return;
    }

    hits = rules_stats(rmcf->rules)->regex_limit_hits;

    if (rmcf->rules != regex_rules) {
        /* a reload with master_process off: new rules, counted from 0 */
        regex_rules = rmcf->rules;
        regex_seen = 0;
    }

    if (hits > regex_seen) {
        (void) ngx_atomic_fetch_add(&sh->c.regex_limit_hits,
                                    (ngx_atomic_int_t) (hits - regex_seen));
        regex_seen = hits;
    }

    /* the cache's count only grows (its last, once freed at exit) */
    evictions = ngx_http_rules_batch_evictions();

    if (evictions > evictions_seen) {
        (void) ngx_atomic_fetch_add(&sh->c.cache_evictions,
                            (ngx_atomic_int_t) (evictions - evictions_seen));
        evictions_seen = evictions;
    }

    if (rmcf->cluster) {
        ngx_http_rules_metrics_sync_cluster(rmcf, sh);
        return;
    }

    if (rmcf->redis == NULL) {
        return;
    }


    rst = ngx_http_rules_redis_stats(rmcf->redis);

    if (rst->connects != connects_seen || rst->reconnects != reconnects_seen
        || rst->noscript != noscript_seen || rst->native != native_seen)
    {
        ngx_http_rules_metrics_redis(rmcf, rst->connects - connects_seen,
                                     rst->reconnects - reconnects_seen,
                                     rst->noscript - noscript_seen,
                                     rst->native - native_seen);
        connects_seen = rst->connects;
        reconnects_seen = rst->reconnects;
        noscript_seen = rst->noscript;
        native_seen = rst->native;
    }
}


/* Redis Cluster: the connections of every node, and the redirections. */
static void
ngx_http_rules_metrics_sync_cluster(ngx_http_rules_main_conf_t *rmcf,
    ngx_http_rules_metrics_shm_t *sh)
{
    static ngx_http_rules_cluster_stats_t   seen;
    ngx_http_rules_cluster_stats_t         *cst;

    cst = ngx_http_rules_cluster_stats(rmcf->cluster);

    if (ngx_memcmp(cst, &seen, sizeof(seen)) == 0) {
        return;
    }

    ngx_http_rules_metrics_redis(rmcf, cst->connects - seen.connects,
                                 cst->reconnects - seen.reconnects,
                                 cst->noscript - seen.noscript,
                                 cst->native - seen.native);

    (void) ngx_atomic_fetch_add(&sh->c.cluster_moved,
                                cst->moved - seen.moved);
    (void) ngx_atomic_fetch_add(&sh->c.cluster_ask, cst->ask - seen.ask);
    (void) ngx_atomic_fetch_add(&sh->c.cluster_refreshes,
                                cst->refreshes - seen.refreshes);
    (void) ngx_atomic_fetch_add(&sh->c.cluster_refresh_errors,
                                cst->refresh_errors - seen.refresh_errors);

    seen = *cst;
}


/* ---- the exposition ------------------------------------------------ */


char *
ngx_http_rules_metrics_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler == ngx_http_rules_metrics_handler) {
        return "is duplicate";
    }

    clcf->handler = ngx_http_rules_metrics_handler;

    return NGX_CONF_OK;
}


/*
 * A label value with \, " and newline escaped, and each byte that is not
 * part of valid UTF-8 written as U+FFFD (Prometheus refuses a scrape with
 * a label that is not UTF-8): at most 3 bytes per byte.
 */
static u_char *
ngx_http_rules_metrics_label(u_char *p, u_char *last, u_char *s, size_t len)
{
    size_t   i, n;

    for (i = 0; i < len && last - p >= 3; i++) {

        if (s[i] == '\\' || s[i] == '"') {
            *p++ = '\\';
            *p++ = s[i];

        } else if (s[i] == '\n') {
            *p++ = '\\';
            *p++ = 'n';

        } else if (s[i] < 0x80) {
            *p++ = s[i];

        } else {
            n = ngx_http_rules_metrics_utf8_len(&s[i], len - i);

            if (n == 0 || (size_t) (last - p) < n) {
                /* (an incomplete or invalid sequence: one byte of it) */
                p = ngx_cpymem(p, "\xef\xbf\xbd", 3);
                continue;
            }

            p = ngx_cpymem(p, &s[i], n);
            i += n - 1;
        }
    }

    return p;
}


/*
 * The length of the well-formed UTF-8 sequence at s (RFC 3629: no
 * overlong form, no surrogate, nothing above U+10FFFF), 2 to 4; 0 if
 * there is none.  (nginx's ngx_utf8_decode() takes any byte of 0x80 and
 * above as a continuation, and lead bytes up to 0xfd.)
 */
static size_t
ngx_http_rules_metrics_utf8_len(u_char *s, size_t len)
{
    size_t   n, k;
    u_char   lo, hi;

    lo = 0x80;
    hi = 0xbf;

    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        n = 2;

    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        n = 3;

        if (s[0] == 0xe0) {
            lo = 0xa0;                      /* no overlong form */

        } else if (s[0] == 0xed) {
            hi = 0x9f;                      /* no surrogate */
        }

    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        n = 4;

        if (s[0] == 0xf0) {
            lo = 0x90;                      /* no overlong form */

        } else if (s[0] == 0xf4) {
            hi = 0x8f;                      /* U+10FFFF at most */
        }

    } else {
        return 0;
    }

    if (len < n || s[1] < lo || s[1] > hi) {
        return 0;
    }

    for (k = 2; k < n; k++) {
        if (s[k] < 0x80 || s[k] > 0xbf) {
            return 0;
        }
    }

    return n;
}


/*
 * One per-rule counter family: evaluated (matched is NULL), or matched,
 * from the counts read before the evaluated ones (see
 * ngx_http_rules_metrics_send()).
 */
static u_char *
ngx_http_rules_metrics_per_rule(u_char *p, u_char *last,
    ngx_http_rules_metrics_t *m, const char *name, const char *help,
    ngx_atomic_uint_t *matched)
{
    ngx_uint_t                      i;
    const char                     *kind, *type;
    const rules_rule_t             *rule;
    ngx_http_rules_metrics_slot_t  *slot;

    p = ngx_slprintf(p, last, "# HELP nginx_rules_rule_%s_total %s\n"
                     "# TYPE nginx_rules_rule_%s_total counter\n",
                     name, help, name);

    for (i = 0; i < m->nrules; i++) {
        rule = rules_rule(m->rmcf->rules, i);
        slot = m->slots[i];

        kind = rule->kind == RULES_KIND_FRAUD ? ngx_http_rules_kind_names[1]
                                              : ngx_http_rules_kind_names[0];
        type = (ngx_uint_t) rule->type <= RULES_TYPE_SEQUENCE
               ? ngx_http_rules_type_names[rule->type] : "";

        p = ngx_slprintf(p, last, "nginx_rules_rule_%s_total{rule=\"%*s\","
                         "kind=\"%s\",type=\"%s\"} %uA\n", name,
                         rule->id_len, rule->id, kind, type,
                         matched ? matched[i] : slot->evaluated);
    }

    return p;
}


static ngx_int_t
ngx_http_rules_metrics_handler(ngx_http_request_t *r)
{
    ngx_int_t                       rc;
    ngx_msec_t                      arrived;
    ngx_pool_cleanup_t             *cln;
    ngx_http_rules_metrics_t       *m;
    ngx_http_rules_main_conf_t     *rmcf;
    ngx_http_rules_metrics_wait_t  *w;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    rmcf = ngx_http_get_module_main_conf(r, ngx_http_rules_module);
    m = ngx_http_rules_metrics_ctx(rmcf);

    if (m == NULL) {
        return ngx_http_rules_metrics_send(r);
    }

    ngx_http_rules_metrics_add(m);

    arrived = ngx_http_rules_metrics_clock();

    if (!ngx_http_rules_metrics_deferred(m->sh, arrived)) {
        return ngx_http_rules_metrics_send(r);
    }

    /* other workers' counts wait for their timers: so does the scrape */

    w = ngx_pcalloc(r->pool, sizeof(ngx_http_rules_metrics_wait_t));
    if (w == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /*
     * the request may be freed while it waits (a terminated request: a
     * broken chunked body being discarded, worker_shutdown_timeout): the
     * timer goes with its pool
     */

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_rules_metrics_wait_cleanup;
    cln->data = w;

    w->r = r;
    w->arrived = arrived;
    w->ev.handler = ngx_http_rules_metrics_wait_handler;
    w->ev.data = w;
    w->ev.log = r->connection->log;

    ngx_add_timer(&w->ev, NGX_HTTP_RULES_METRICS_WAIT_MSEC);
    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_rules_metrics_wait_cleanup(void *data)
{
    ngx_http_rules_metrics_wait_t  *w = data;

    if (w->ev.timer_set) {
        ngx_del_timer(&w->ev);
    }
}


static void
ngx_http_rules_metrics_wait_handler(ngx_event_t *ev)
{
    ngx_connection_t               *c;
    ngx_http_request_t             *r;
    ngx_http_rules_metrics_t       *m;
    ngx_http_rules_metrics_wait_t  *w;

    w = ev->data;
    r = w->r;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    m = ngx_http_rules_metrics_ctx(
            ngx_http_get_module_main_conf(r, ngx_http_rules_module));

    if (m) {
        /* this worker's own, deferred since */
        ngx_http_rules_metrics_add(m);

        if (ngx_http_rules_metrics_deferred(m->sh, w->arrived)
            && ngx_http_rules_metrics_clock() - w->arrived
               < NGX_HTTP_RULES_METRICS_WAIT_MAX)
        {
            ngx_add_timer(ev, NGX_HTTP_RULES_METRICS_WAIT_MSEC);
            return;
        }
    }

    ngx_http_finalize_request(r, ngx_http_rules_metrics_send(r));
    ngx_http_run_posted_requests(c);
}


/* The metrics, rendered and sent. */
static ngx_int_t
ngx_http_rules_metrics_send(ngx_http_request_t *r)
{
    u_char                         *p, *last;
    size_t                          size;
    ngx_int_t                       rc;
    ngx_buf_t                      *b;
    ngx_uint_t                      i;
    ngx_chain_t                     out;
    ngx_atomic_uint_t               cum, rtt_sum, *matched;
    ngx_core_conf_t                *ccf;
    ngx_http_rules_metrics_t       *m;
    ngx_http_rules_main_conf_t     *rmcf;
    ngx_http_rules_metrics_shm_t   *sh;

    rmcf = ngx_http_get_module_main_conf(r, ngx_http_rules_module);
    m = ngx_http_rules_metrics_ctx(rmcf);

    ngx_http_rules_metrics_sync_engine(rmcf);

    /*
     * The fixed text is under 7.5K with every number at its longest; a
     * per-rule line under 160 bytes besides the id.
     */

    size = 8192;

    if (m) {
        size += 3 * rmcf->rules_file.len
                + m->nrules * 2 * (160 + RULES_ID_MAX_LEN);
    }

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->last;
    last = b->end;

    if (m == NULL) {
        p = ngx_cpymem(p, "# no rules_file: no rules metrics\n",
                       sizeof("# no rules_file: no rules metrics\n") - 1);
        goto send;
    }

    sh = m->sh;

    matched = ngx_palloc(r->pool, (m->nrules + 1) * sizeof(ngx_atomic_uint_t));
    if (matched == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_slprintf(p, last,
        "# HELP nginx_rules_info The loaded rules file.\n"
        "# TYPE nginx_rules_info gauge\n"
        "nginx_rules_info{rules_file=\"");
    p = ngx_http_rules_metrics_label(p, last, rmcf->rules_file.data,
                                     rmcf->rules_file.len);
    p = ngx_slprintf(p, last, "\",digest=\"%s\",rules=\"%uz\"} 1\n",
                     rules_file_digest(rmcf->rules), m->nrules);

    p = ngx_slprintf(p, last,
        "# HELP nginx_rules_rules_loaded_timestamp_seconds When the rules "
        "file was loaded.\n"
        "# TYPE nginx_rules_rules_loaded_timestamp_seconds gauge\n"
        "nginx_rules_rules_loaded_timestamp_seconds %T\n",
        rmcf->rules_loaded);

    p = ngx_slprintf(p, last,
        "# HELP nginx_rules_events_total Events by final status.\n"
        "# TYPE nginx_rules_events_total counter\n");

    for (i = NGX_HTTP_RULES_STATUS_OK; i < NGX_HTTP_RULES_STATUS_LAST; i++) {
        p = ngx_slprintf(p, last,
                         "nginx_rules_events_total{status=\"%s\"} %uA\n",
                         ngx_http_rules_status_name(i), sh->c.events[i]);
    }

    /*
     * A rule's matched counts are read before its evaluated ones: the
     * workers add an event to evaluated before they add it to matched, so
     * a scrape never shows a rule matched more often than evaluated
     * while another worker adds its counts (the families are printed
     * one after the other)
     */

    for (i = 0; i < m->nrules; i++) {
        matched[i] = m->slots[i]->matched;
    }

    ngx_memory_barrier();

    p = ngx_http_rules_metrics_per_rule(p, last, m, "evaluated",
            "Events evaluated against the rule (its key had a value).",
            NULL);
    p = ngx_http_rules_metrics_per_rule(p, last, m, "matched",
            "Events for which the rule matched.", matched);

    p = ngx_slprintf(p, last,
        "# HELP nginx_rules_fraud_rejected_total Requests rejected as "
        "fraud.\n"
        "# TYPE nginx_rules_fraud_rejected_total counter\n"
        "nginx_rules_fraud_rejected_total %uA\n"
        "# HELP nginx_rules_failed_total Requests whose events failed "
        "(Redis, or the worker out of memory), by rules_on_error mode.\n"
        "# TYPE nginx_rules_failed_total counter\n"
        "nginx_rules_failed_total{mode=\"open\"} %uA\n"
        "nginx_rules_failed_total{mode=\"closed\"} %uA\n"
        "# HELP nginx_rules_key_over_limit_total Key values longer than "
        "rules_max_key_length, not evaluated.\n"
        "# TYPE nginx_rules_key_over_limit_total counter\n"
        "nginx_rules_key_over_limit_total %uA\n"
        "# HELP nginx_rules_regex_limit_hits_total Regex matches stopped "
        "by the PCRE2 match limit.\n"
        "# TYPE nginx_rules_regex_limit_hits_total counter\n"
        "nginx_rules_regex_limit_hits_total %uA\n",
        sh->c.rejected, sh->c.failed_open, sh->c.failed_closed,
        sh->c.key_over_limit, sh->c.regex_limit_hits);

    p = ngx_slprintf(p, last,
        "# HELP nginx_rules_redis_round_trip_seconds Redis round trip of "
        "one call (the events of a pass of a worker's event loop).\n"
        "# TYPE nginx_rules_redis_round_trip_seconds histogram\n");

    cum = 0;

    for (i = 0; i < NGX_HTTP_RULES_METRICS_BUCKETS; i++) {
        cum += sh->c.rtt_buckets[i];
        p = ngx_slprintf(p, last,
                         "nginx_rules_redis_round_trip_seconds_bucket"
                         "{le=\"%s\"} %uA\n", ngx_http_rules_rtt_labels[i],
                         cum);
    }

    cum += sh->c.rtt_buckets[NGX_HTTP_RULES_METRICS_BUCKETS];

    /* read once: its seconds and microseconds from one value */
    rtt_sum = sh->c.rtt_sum_usec;

    p = ngx_slprintf(p, last,
        "nginx_rules_redis_round_trip_seconds_bucket{le=\"+Inf\"} %uA\n"
        "nginx_rules_redis_round_trip_seconds_sum %uA.%06uA\n"
        "nginx_rules_redis_round_trip_seconds_count %uA\n",
        cum, rtt_sum / 1000000, rtt_sum % 1000000, cum);

    p = ngx_slprintf(p, last,
        "# HELP nginx_rules_redis_connects_total Redis connections made.\n"
        "# TYPE nginx_rules_redis_connects_total counter\n"
        "nginx_rules_redis_connects_total %uA\n"
        "# HELP nginx_rules_redis_reconnects_total Redis connections lost "
        "and made again.\n"
        "# TYPE nginx_rules_redis_reconnects_total counter\n"
        "nginx_rules_redis_reconnects_total %uA\n"
        "# HELP nginx_rules_redis_noscript_total Script reloads after "
        "NOSCRIPT.\n"
        "# TYPE nginx_rules_redis_noscript_total counter\n"
        "nginx_rules_redis_noscript_total %uA\n"
        "# HELP nginx_rules_redis_native_calls_total Of the calls, those "
        "sent as RULES.STORE (the rules Redis module).\n"
        "# TYPE nginx_rules_redis_native_calls_total counter\n"
        "nginx_rules_redis_native_calls_total %uA\n"
        "# HELP nginx_rules_redis_calls_total State calls sent (each "
        "carries the key operations of the events of one pass of a "
        "worker's event loop).\n"
        "# TYPE nginx_rules_redis_calls_total counter\n"
        "nginx_rules_redis_calls_total %uA\n"
        "# HELP nginx_rules_redis_call_items_total Key operations and "
        "compactions in them.\n"
        "# TYPE nginx_rules_redis_call_items_total counter\n"
        "nginx_rules_redis_call_items_total %uA\n"
        "# HELP nginx_rules_state_writes_total Key states computed by a "
        "worker and stored whole.\n"
        "# TYPE nginx_rules_state_writes_total counter\n"
        "nginx_rules_state_writes_total %uA\n"
        "# HELP nginx_rules_state_write_fallbacks_total Such writes that "
        "found the key changed by another writer (appended instead).\n"
        "# TYPE nginx_rules_state_write_fallbacks_total counter\n"
        "nginx_rules_state_write_fallbacks_total %uA\n"
        "# HELP nginx_rules_state_compactions_total Key logs folded back "
        "into a snapshot.\n"
        "# TYPE nginx_rules_state_compactions_total counter\n"
        "nginx_rules_state_compactions_total %uA\n"
        "# HELP nginx_rules_state_compactions_lost_total Compactions that "
        "another writer made moot, or that failed.\n"
        "# TYPE nginx_rules_state_compactions_lost_total counter\n"
        "nginx_rules_state_compactions_lost_total %uA\n"
        "# HELP nginx_rules_state_cache_lookups_total Lookups of the keys "
        "events write in the workers' state caches: hit (the worker "
        "computes the state) or miss (the event is appended).\n"
        "# TYPE nginx_rules_state_cache_lookups_total counter\n"
        "nginx_rules_state_cache_lookups_total{result=\"hit\"} %uA\n"
        "nginx_rules_state_cache_lookups_total{result=\"miss\"} %uA\n"
        "# HELP nginx_rules_state_cache_evicted_misses_total State cache "
        "misses of keys that the worker's cache had evicted to make room "
        "(a larger rules_state_cache would have hit them).\n"
        "# TYPE nginx_rules_state_cache_evicted_misses_total counter\n"
        "nginx_rules_state_cache_evicted_misses_total %uA\n"
        "# HELP nginx_rules_state_cache_evictions_total States the "
        "workers' caches evicted to make room.\n"
        "# TYPE nginx_rules_state_cache_evictions_total counter\n"
        "nginx_rules_state_cache_evictions_total %uA\n"
        "# HELP nginx_rules_inflight_events Events waiting for Redis.\n"
        "# TYPE nginx_rules_inflight_events gauge\n"
        "nginx_rules_inflight_events %A\n"
        "# HELP nginx_rules_worker_starts_total Worker processes started "
        "(reloads and restarts).\n"
        "# TYPE nginx_rules_worker_starts_total counter\n"
        "nginx_rules_worker_starts_total %uA\n"
        "# HELP nginx_rules_config_loads_total Configurations whose workers "
        "started (the start and every reload).\n"
        "# TYPE nginx_rules_config_loads_total counter\n"
        "nginx_rules_config_loads_total %uA\n",
        sh->c.connects, sh->c.reconnects, sh->c.noscript, sh->c.native,
        sh->c.calls, sh->c.call_items, sh->c.writes, sh->c.write_fallbacks,
        sh->c.compactions, sh->c.compactions_lost, sh->c.cache_hits,
        sh->c.cache_misses, sh->c.cache_evicted_misses,
        sh->c.cache_evictions,
        ngx_http_rules_metrics_inflight_sum(sh), sh->c.worker_starts,
        sh->c.config_loads);

    if (rmcf->cluster_set) {
        p = ngx_slprintf(p, last,
            "# HELP nginx_rules_cluster_redirects_total Redis Cluster "
            "redirections followed.\n"
            "# TYPE nginx_rules_cluster_redirects_total counter\n"
            "nginx_rules_cluster_redirects_total{type=\"moved\"} %uA\n"
            "nginx_rules_cluster_redirects_total{type=\"ask\"} %uA\n"
            "# HELP nginx_rules_cluster_slot_refreshes_total Redis Cluster "
            "slot map refreshes (CLUSTER SLOTS), by result.\n"
            "# TYPE nginx_rules_cluster_slot_refreshes_total counter\n"
            "nginx_rules_cluster_slot_refreshes_total{result=\"ok\"} %uA\n"
            "nginx_rules_cluster_slot_refreshes_total{result=\"error\"} "
            "%uA\n",
            sh->c.cluster_moved, sh->c.cluster_ask, sh->c.cluster_refreshes,
            sh->c.cluster_refresh_errors);
    }

    ccf = (ngx_core_conf_t *) ngx_get_conf(ngx_cycle->conf_ctx,
                                           ngx_core_module);

    p = ngx_slprintf(p, last,
        "# HELP nginx_rules_worker_processes The worker_processes "
        "setting.\n"
        "# TYPE nginx_rules_worker_processes gauge\n"
        "nginx_rules_worker_processes %i\n",
        ccf->worker_processes);

    if (p == last) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "rules metrics: %uz bytes are not enough", size);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

send:

    b->last = p;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type,
                "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = sizeof("text/plain") - 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
