/*
 * A persistent, non-blocking Redis connection per worker: hiredis' async
 * API driven by nginx's event loop and timers.
 *
 * hiredis owns the socket, its buffers and the descriptor; an
 * ngx_connection_t (taken from the worker's pool of connections) wraps
 * the descriptor so that the event module tells hiredis when to read and
 * write.  The events are level-triggered: hiredis reads one buffer per
 * redisAsyncHandleRead(), so an edge-triggered event would stall with
 * replies left in the socket.  Commands from every request of an event
 * loop iteration go out in one write at the end of that iteration (the
 * write event is posted, not registered, while the socket takes it all):
 * pipelining for free.  A call that fills up is written at once instead
 * (ngx_http_rules_redis_write_now()).
 *
 * Life of a connection:
 *
 *   connect()  redisAsyncConnect() (numeric address or unix socket: it
 *              never blocks), AUTH, SELECT, SCRIPT LOAD and the probe
 *              of RULES.STORE (an empty call: an array when the rules
 *              Redis module is loaded, else an error) are queued at
 *              once and sent first when the connection is made;
 *              connect_timer runs.  Commands are accepted already,
 *              behind them, unless a failure has been reported (Redis
 *              down: events fail at once then).
 *   on_connect the connection is made: commands are accepted from now on
 *              and queued behind the setup commands, which Redis answers
 *              first; the last setup reply completes the setup.  Until
 *              the probe's reply, calls go as EVALSHA.
 *   cleanup    hiredis frees the context, whatever the reason (error, EOF,
 *              or our redisAsyncFree()), always after calling back every
 *              pending command with a NULL reply: the connection is
 *              released and a new one is planned after the back-off.
 *
 * Everything that drops a connection on purpose (timeouts, a failed setup
 * command, exit) goes through ngx_http_rules_redis_fail(), and every end
 * of a context, planned or not, through ngx_http_rules_redis_closed().
 *
 * hiredis 0.14 specifics relied upon here: it has no connect timeout
 * (connect_timer does it); the disconnect callback runs only for contexts
 * that were connected, so the end of a context is taken from the cleanup
 * hook, which always runs; the connect callback runs outside hiredis'
 * "in callback" guard (after the context is marked connected), so the
 * context must not be freed from it; redisAsyncFree() from a reply
 * callback is deferred until that callback returns.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_rules_redis.h"


/*
 * Command blocks kept for the next commands: at most this many, and this
 * many bytes in all (calls of large states are hundreds of KB: kept
 * after a burst of them in flight, they would hold tens of MB idle).
 */
#define NGX_HTTP_RULES_REDIS_FREE_MAX    128
#define NGX_HTTP_RULES_REDIS_FREE_BYTES  (1024 * 1024)
#define NGX_HTTP_RULES_REDIS_BLOCK       256    /* their size unit */

/* room for a command's head: *<argc>, RULES.STORE (or EVALSHA), the SHA1 */
#define NGX_HTTP_RULES_REDIS_HEAD        96

/* an argument of len bytes in the protocol's form */
#define NGX_HTTP_RULES_REDIS_ARG_LEN(len)                                     \
    (sizeof("$" CRLF CRLF) - 1 + NGX_SIZE_T_LEN + (len))
#define NGX_HTTP_RULES_REDIS_REASON_LEN  256

/*
 * A connection Redis closes with nothing pending after it lasted this
 * long (Redis' idle "timeout") is made again at once, not after the
 * back-off; sooner (a server or proxy that keeps closing them), after it.
 */
#define NGX_HTTP_RULES_IDLE_RECONNECT    1000   /* ms */

/*
 * hiredis 0.14 makes a new empty buffer, unchecked, where it could empty
 * one in place: its output buffer after a whole write (a failure leaves
 * it NULL: the worker crashes), its reader's buffer after a reply when
 * more than 16 KB of it is unused (a failure aborts the worker).  The
 * module writes the output itself and empties both in place
 * (ngx_http_rules_redis_flush(), ngx_http_rules_redis_read_handler()),
 * and lets a buffer go only past this size, and only when a new one
 * could be made; hiredis' own write after the connect callback finds an
 * empty spare buffer (ngx_http_rules_redis_on_connect()).
 */
#define NGX_HTTP_RULES_REDIS_BUF_KEEP    (16 * 1024)


typedef enum {
    NGX_HTTP_RULES_REDIS_IDLE = 0,          /* no context: backing off */
    NGX_HTTP_RULES_REDIS_CONNECTING,        /* connect() in progress */
    NGX_HTTP_RULES_REDIS_CONNECTED          /* commands accepted */
} ngx_http_rules_redis_state_e;


typedef enum {
    NGX_HTTP_RULES_REDIS_AUTH = 0,
    NGX_HTTP_RULES_REDIS_SELECT,
    NGX_HTTP_RULES_REDIS_LOAD,
    NGX_HTTP_RULES_REDIS_PROBE
} ngx_http_rules_redis_setup_e;


typedef struct ngx_http_rules_redis_cmd_s  ngx_http_rules_redis_cmd_t;


/* hiredis' queue before a command (ngx_http_rules_redis_queued()) */
typedef struct {
    redisCallback                     *tail;
    size_t                             obuf_len;
} ngx_http_rules_redis_mark_t;

/*
 * One command, allocated in one block with its arguments (kept for the
 * EVAL retry after NOSCRIPT): the struct, room for the head of the
 * command (its length, and for a script call its name and the script's
 * SHA1), then the caller's arguments in the protocol's form, so that
 * hiredis only copies the command into its output buffer.
 */
struct ngx_http_rules_redis_cmd_s {
    ngx_http_rules_redis_t            *rd;
    ngx_http_rules_redis_handler_pt    handler;
    void                              *data;
    ngx_http_rules_redis_cmd_t        *next;        /* in the free list */
    size_t                             size;        /* of the block */
    u_char                            *args;        /* the arguments */
    size_t                             args_len;
    int                                argc;        /* with EVALSHA, sha */
    unsigned                           retried:1;
    unsigned                           asking:1;    /* ASKING first */
    unsigned                           raw:1;       /* not an EVALSHA */
    unsigned                           native:1;    /* as RULES.STORE */
};


struct ngx_http_rules_redis_s {
    ngx_http_rules_redis_conf_t       *conf;
    ngx_log_t                         *log;

    const char                        *script;
    size_t                             script_len;
    const char                        *sha1;

    redisAsyncContext                 *ac;
    ngx_uint_t                         state;

    ngx_event_t                        connect_timer;
    ngx_event_t                        reconnect_timer;
    ngx_event_t                        reply_timer;

    ngx_uint_t                         waiting;     /* replies expected */
    ngx_uint_t                         inflight;    /* of them, commands */
    ngx_uint_t                         failed;      /* commands lost */
    ngx_msec_t                         last_reply;  /* or first command */

    ngx_msec_t                         backoff;     /* next delay */
    ngx_msec_t                         backoff_min;
    ngx_msec_t                         backoff_max;
    ngx_uint_t                         attempts;    /* failed in a row */
    ngx_msec_t                         down_since;
    ngx_msec_t                         established_at;

    ngx_http_rules_redis_cmd_t        *free;
    ngx_uint_t                         nfree;
    size_t                             free_bytes;

    unsigned                           closing:1;   /* being freed */
    unsigned                           planned:1;   /* by us: reason set */
    unsigned                           established:1;
    unsigned                           down:1;      /* failure reported */
    unsigned                           idle_close:1; /* by Redis, idle */
    unsigned                           noscript_logged:1;
    unsigned                           destroying:1;
    unsigned                           native:1;    /* RULES.STORE works */
    unsigned                           writing:1;   /* in HandleWrite */
    unsigned                           carried:1;   /* a state call, on
                                                       this connection */

    /*
     * hiredis' output buffer while hiredis holds the spare, an empty one,
     * instead (ngx_http_rules_redis_on_connect())
     */
    sds                                held;
    sds                                spare;

    ngx_http_rules_log_rate_t          nomem_log;   /* commands not sent */
    ngx_http_rules_log_rate_t          full_log;    /* calls over the bound */

    ngx_str_t                          reason;      /* of the last close */
    uint32_t                           logged_kind; /* last one logged */
    u_char                             reason_buf[
                                           NGX_HTTP_RULES_REDIS_REASON_LEN];

    ngx_http_rules_redis_stats_t       stats;
};


/*
 * Signs that Redis may have lost writes, seen by the worker: connections
 * that were made and closed since, for any reason, and NOSCRIPT or
 * RULES.STORE gone on a connection that stayed (a restart or failover
 * behind a proxy).  After one, what a writer cached may not be what
 * Redis holds (a restart from an older snapshot, a failover to a replica
 * that missed writes), and a value of the cached gen and length may be
 * another one.
 */
static ngx_uint_t  ngx_http_rules_redis_losses;

/*
 * The worker's hiredis contexts (all connections of a cluster): each
 * needs two of the blocks set aside for hiredis when it is freed
 * (ngx_http_rules_hi_reserve()), a connect three more.
 */
static ngx_uint_t  ngx_http_rules_redis_contexts;
static ngx_uint_t  ngx_http_rules_redis_hi_checked;

#define NGX_HTTP_RULES_REDIS_HI_CONNECT  3
#define NGX_HTTP_RULES_REDIS_HI_FREE     2


static void ngx_http_rules_redis_connect(ngx_http_rules_redis_t *rd);
static ngx_int_t ngx_http_rules_redis_setup(ngx_http_rules_redis_t *rd,
    redisAsyncContext *ac);
static ngx_int_t ngx_http_rules_redis_setup_command(ngx_http_rules_redis_t *rd,
    redisAsyncContext *ac, ngx_uint_t kind, int argc, const char **argv,
    const size_t *argvlen);
static void ngx_http_rules_redis_fail(ngx_http_rules_redis_t *rd,
    const char *fmt, ...);
static void ngx_http_rules_redis_set_reason(ngx_http_rules_redis_t *rd,
    const char *fmt, ...);
static void ngx_http_rules_redis_vreason(ngx_http_rules_redis_t *rd,
    const char *fmt, va_list args);
static void ngx_http_rules_redis_closed(ngx_http_rules_redis_t *rd);
static uint32_t ngx_http_rules_redis_kind(ngx_str_t *reason);
static void ngx_http_rules_redis_established(ngx_http_rules_redis_t *rd);
static void ngx_http_rules_redis_connect_timeout(ngx_event_t *ev);
static void ngx_http_rules_redis_reconnect(ngx_event_t *ev);
static void ngx_http_rules_redis_reply_timeout(ngx_event_t *ev);
static void ngx_http_rules_redis_replied(ngx_http_rules_redis_t *rd);
static void ngx_http_rules_redis_on_connect(const redisAsyncContext *ac,
    int status);
static void ngx_http_rules_redis_setup_reply(redisAsyncContext *ac,
    void *r, void *privdata);
static void ngx_http_rules_redis_reply(redisAsyncContext *ac, void *r,
    void *privdata);
static ngx_int_t ngx_http_rules_redis_queue(ngx_http_rules_redis_t *rd,
    ngx_uint_t flags, ngx_uint_t evalsha, int argc, const char **argv,
    const size_t *argvlen, ngx_http_rules_redis_handler_pt handler,
    void *data);
static ngx_int_t ngx_http_rules_redis_send(ngx_http_rules_redis_t *rd,
    ngx_http_rules_redis_cmd_t *cmd);
static void ngx_http_rules_redis_asking_reply(redisAsyncContext *ac,
    void *r, void *privdata);
static void ngx_http_rules_redis_done(ngx_http_rules_redis_cmd_t *cmd,
    redisReply *reply, ngx_int_t rc);
static u_char *ngx_http_rules_redis_arg(u_char *p, const char *arg,
    size_t len);
static ngx_int_t ngx_http_rules_redis_send_formatted(
    ngx_http_rules_redis_t *rd, ngx_http_rules_redis_cmd_t *cmd);
static ngx_http_rules_redis_cmd_t *ngx_http_rules_redis_cmd_alloc(
    ngx_http_rules_redis_t *rd, size_t size);
static void ngx_http_rules_redis_cmd_free(ngx_http_rules_redis_t *rd,
    ngx_http_rules_redis_cmd_t *cmd);
static ngx_uint_t ngx_http_rules_redis_error_is(redisReply *reply,
    const char *prefix);
static ngx_int_t ngx_http_rules_redis_mark(redisAsyncContext *ac,
    ngx_http_rules_redis_mark_t *m);
static ngx_int_t ngx_http_rules_redis_queued(ngx_http_rules_redis_t *rd,
    redisAsyncContext *ac, ngx_http_rules_redis_mark_t *m, int rc);

static void ngx_http_rules_redis_flush(redisAsyncContext *ac);
static void ngx_http_rules_redis_read_handler(ngx_event_t *rev);
static void ngx_http_rules_redis_write_handler(ngx_event_t *wev);
static void ngx_http_rules_redis_add_read(void *privdata);
static void ngx_http_rules_redis_del_read(void *privdata);
static void ngx_http_rules_redis_add_write(void *privdata);
static void ngx_http_rules_redis_del_write(void *privdata);
static void ngx_http_rules_redis_cleanup(void *privdata);


static const char  *ngx_http_rules_redis_setup_name[] = {
    "AUTH",
    "SELECT",
    "SCRIPT LOAD",
    "RULES.STORE"
};


ngx_http_rules_redis_t *
ngx_http_rules_redis_create(ngx_http_rules_redis_conf_t *conf,
    const char *script, const char *script_sha1, ngx_log_t *log)
{
    ngx_http_rules_redis_t  *rd;

    rd = ngx_calloc(sizeof(ngx_http_rules_redis_t), log);
    if (rd == NULL) {
        return NULL;
    }

    rd->conf = conf;
    rd->log = log;
    rd->script = script;
    rd->script_len = ngx_strlen(script);
    rd->sha1 = script_sha1;

    rd->backoff_min = ngx_max(conf->backoff_min, 1);
    rd->backoff_max = ngx_max(conf->backoff_max, rd->backoff_min);
    rd->backoff = rd->backoff_min;

    /*
     * Cancelable timers: a graceful shutdown does not wait for them (only
     * requests keep an exiting worker alive), and exit_process deletes
     * them.
     */

    rd->connect_timer.handler = ngx_http_rules_redis_connect_timeout;
    rd->connect_timer.data = rd;
    rd->connect_timer.log = log;
    rd->connect_timer.cancelable = 1;

    rd->reconnect_timer.handler = ngx_http_rules_redis_reconnect;
    rd->reconnect_timer.data = rd;
    rd->reconnect_timer.log = log;
    rd->reconnect_timer.cancelable = 1;

    rd->reply_timer.handler = ngx_http_rules_redis_reply_timeout;
    rd->reply_timer.data = rd;
    rd->reply_timer.log = log;
    rd->reply_timer.cancelable = 1;

    ngx_str_null(&rd->reason);

    ngx_http_rules_redis_connect(rd);

    return rd;
}


static void
ngx_http_rules_redis_connect(ngx_http_rules_redis_t *rd)
{
    redisAsyncContext            *ac;
    ngx_connection_t             *c;
    ngx_http_rules_redis_conf_t  *conf;

    conf = rd->conf;

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, rd->log, 0,
                   "rules redis %V: connecting", &conf->addr_text);

    /* EVALSHA until this connection's probe says otherwise */
    rd->native = 0;

    if (ngx_http_rules_hi_reserve(NGX_HTTP_RULES_REDIS_HI_CONNECT
                                  + NGX_HTTP_RULES_REDIS_HI_FREE
                                    * (ngx_http_rules_redis_contexts + 1))
        != NGX_OK)
    {
        /* hiredis would abort the worker on the allocations it misses */
        ngx_http_rules_redis_set_reason(rd, "cannot allocate a context");
        ngx_http_rules_redis_closed(rd);
        return;
    }

    if (rd->spare == NULL) {
        /* kept from one connection to the next */
        rd->spare = sdsempty();

        if (rd->spare == NULL) {
            ngx_http_rules_redis_set_reason(rd,
                                            "cannot allocate a context");
            ngx_http_rules_redis_closed(rd);
            return;
        }
    }

    /* a numeric address or a path: no name resolution, never blocks */

    if (conf->unix_path.len) {
        ac = redisAsyncConnectUnix((const char *) conf->unix_path.data);

    } else {
        ac = redisAsyncConnect((const char *) conf->host.data,
                               (int) conf->port);
    }

    if (ac == NULL) {
        ngx_http_rules_redis_set_reason(rd, "cannot allocate a context");
        ngx_http_rules_redis_closed(rd);
        return;
    }

    if (!ngx_http_rules_redis_hi_checked) {
        ngx_http_rules_redis_hi_checked = 1;

        if (!ngx_http_rules_hi_interposed()) {
            ngx_log_error(NGX_LOG_WARN, rd->log, 0,
                          "rules redis: hiredis does not call the module's "
                          "hi_malloc() (another module or library loaded "
                          "hiredis first): hiredis aborts the worker when "
                          "one of its allocations fails");
        }
    }

    if (ac->err) {
        ngx_http_rules_redis_set_reason(rd, "connect failed: %s",
                                        ac->errstr);
        redisAsyncFree(ac);
        ngx_http_rules_redis_closed(rd);
        return;
    }

    /* until the cleanup hook, or its free below */
    ngx_http_rules_redis_contexts++;

    ac->c.reader->fn = &ngx_http_rules_reply_functions;
    ac->c.reader->privdata = ac;

    /* its buffer is let go here (ngx_http_rules_redis_read_handler()) */
    ac->c.reader->maxbuf = 0;

    if (conf->unix_path.len == 0 && redisEnableKeepAlive(&ac->c) != REDIS_OK)
    {
        /* not fatal: only an idle connection through a NAT may suffer */

        ngx_log_error(NGX_LOG_WARN, rd->log, 0,
                      "rules redis %V: cannot enable TCP keepalive: %s",
                      &conf->addr_text, ac->c.errstr);

        ac->c.err = 0;
        ac->c.errstr[0] = '\0';
    }

    c = ngx_get_connection(ac->c.fd, rd->log);

    if (c == NULL) {
        ngx_http_rules_redis_set_reason(rd, "no free connection "
                                        "(worker_connections)");
        redisAsyncFree(ac);
        ngx_http_rules_redis_contexts--;
        ngx_http_rules_redis_closed(rd);
        return;
    }

    c->data = ac;
    c->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);

    c->read->handler = ngx_http_rules_redis_read_handler;
    c->write->handler = ngx_http_rules_redis_write_handler;
    c->read->log = rd->log;
    c->write->log = rd->log;

    ac->data = rd;
    ac->ev.data = c;
    ac->ev.addRead = ngx_http_rules_redis_add_read;
    ac->ev.delRead = ngx_http_rules_redis_del_read;
    ac->ev.addWrite = ngx_http_rules_redis_add_write;
    ac->ev.delWrite = ngx_http_rules_redis_del_write;
    ac->ev.cleanup = ngx_http_rules_redis_cleanup;

    (void) redisAsyncSetConnectCallback(ac, ngx_http_rules_redis_on_connect);

    rd->ac = ac;
    rd->state = NGX_HTTP_RULES_REDIS_CONNECTING;
    rd->closing = 0;
    rd->planned = 0;
    rd->established = 0;
    rd->noscript_logged = 0;

    if (conf->connect_timeout) {
        ngx_add_timer(&rd->connect_timer, conf->connect_timeout);
    }

    /*
     * Queuing the setup commands registers the write event, which tells
     * when the connection is made.
     */

    if (ngx_http_rules_redis_setup(rd, ac) != NGX_OK) {
        ngx_http_rules_redis_fail(rd, "cannot queue the setup commands");
    }
}


/*
 * AUTH, SELECT and SCRIPT LOAD, in this order, ahead of every command.
 * hiredis keeps them in its output buffer until the connection is made.
 */
static ngx_int_t
ngx_http_rules_redis_setup(ngx_http_rules_redis_t *rd, redisAsyncContext *ac)
{
    int                           argc;
    char                          db[NGX_INT_T_LEN];
    size_t                        argvlen[3];
    const char                   *argv[3];
    ngx_http_rules_redis_conf_t  *conf;

    conf = rd->conf;

    if (conf->password.len) {
        argv[0] = "AUTH";
        argvlen[0] = sizeof("AUTH") - 1;
        argc = 1;

        if (conf->user.len) {
            /* Redis 6 ACL */
            argv[argc] = (const char *) conf->user.data;
            argvlen[argc++] = conf->user.len;
        }

        argv[argc] = (const char *) conf->password.data;
        argvlen[argc++] = conf->password.len;

        if (ngx_http_rules_redis_setup_command(rd, ac,
                                               NGX_HTTP_RULES_REDIS_AUTH,
                                               argc, argv, argvlen)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (conf->db) {
        argv[0] = "SELECT";
        argvlen[0] = sizeof("SELECT") - 1;
        argv[1] = db;
        argvlen[1] = ngx_sprintf((u_char *) db, "%i", conf->db)
                     - (u_char *) db;

        if (ngx_http_rules_redis_setup_command(rd, ac,
                                               NGX_HTTP_RULES_REDIS_SELECT,
                                               2, argv, argvlen)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    argv[0] = "SCRIPT";
    argvlen[0] = sizeof("SCRIPT") - 1;
    argv[1] = "LOAD";
    argvlen[1] = sizeof("LOAD") - 1;
    argv[2] = rd->script;
    argvlen[2] = rd->script_len;

    if (ngx_http_rules_redis_setup_command(rd, ac, NGX_HTTP_RULES_REDIS_LOAD,
                                           3, argv, argvlen)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (!conf->native) {
        return NGX_OK;
    }

    /* an empty call: no key, no item */

    argv[0] = "RULES.STORE";
    argvlen[0] = sizeof("RULES.STORE") - 1;
    argv[1] = rd->sha1;
    argvlen[1] = 40;
    argv[2] = "0";
    argvlen[2] = 1;

    return ngx_http_rules_redis_setup_command(rd, ac,
                                              NGX_HTTP_RULES_REDIS_PROBE,
                                              3, argv, argvlen);
}


/* A setup command queued, whole or not at all; its reply awaited. */
static ngx_int_t
ngx_http_rules_redis_setup_command(ngx_http_rules_redis_t *rd,
    redisAsyncContext *ac, ngx_uint_t kind, int argc, const char **argv,
    const size_t *argvlen)
{
    int                           rc;
    ngx_http_rules_redis_mark_t   mark;

    if (ngx_http_rules_redis_mark(ac, &mark) != NGX_OK) {
        return NGX_ERROR;
    }

    rc = redisAsyncCommandArgv(ac, ngx_http_rules_redis_setup_reply,
                               (void *) (uintptr_t) kind, argc, argv,
                               argvlen);

    if (ngx_http_rules_redis_queued(rd, ac, &mark, rc) != NGX_OK) {
        return NGX_ERROR;
    }

    rd->waiting++;

    return NGX_OK;
}


static void
ngx_http_rules_redis_on_connect(const redisAsyncContext *ac, int status)
{
    u_char                  *p;
    ngx_err_t                err;
    ngx_http_rules_redis_t  *rd;

    err = ngx_socket_errno;
    rd = ac->data;

    if (status != REDIS_OK) {

        /*
         * hiredis frees the context right after this callback (pending
         * commands are called back, then the cleanup hook runs); it must
         * not be freed here.
         */

        rd->closing = 1;
        rd->planned = 1;

        if (ac->c.err) {
            ngx_http_rules_redis_set_reason(rd, "connect failed: %s",
                                            ac->c.errstr);

        } else {
            ngx_http_rules_redis_set_reason(rd, "connect failed");

            if (err) {
                p = ngx_slprintf(rd->reason.data + rd->reason.len,
                                 rd->reason_buf
                                 + NGX_HTTP_RULES_REDIS_REASON_LEN,
                                 " (%d: ", err);
                p = ngx_strerror(err, p, rd->reason_buf
                                         + NGX_HTTP_RULES_REDIS_REASON_LEN
                                         - p);
                p = ngx_slprintf(p, rd->reason_buf
                                    + NGX_HTTP_RULES_REDIS_REASON_LEN, ")");
                rd->reason.len = p - rd->reason.data;
            }
        }

        return;
    }

    /* hiredis 0.14: no redisAsyncFree() in this callback either */

    if (rd->connect_timer.timer_set) {
        ngx_del_timer(&rd->connect_timer);
    }

    rd->state = NGX_HTTP_RULES_REDIS_CONNECTED;

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, rd->log, 0,
                   "rules redis %V: connection made",
                   &rd->conf->addr_text);

    /*
     * The setup commands (and the calls queued behind them), before
     * hiredis writes them: its write follows this callback.
     */
    ngx_http_rules_redis_flush((redisAsyncContext *) ac);

    if (rd->writing && rd->spare && ac->c.err == 0 && sdslen(ac->c.obuf))
    {

        /*
         * The socket did not take them all.  hiredis' write, right after
         * this callback in redisAsyncHandleWrite(), would replace the
         * buffer by an unchecked sdsempty() if it took the rest (NULL
         * when memory is short: a crash).  It is given the spare, empty
         * buffer instead, and finds nothing to write; the write handler
         * puts this one back once hiredis returns, and the rest goes
         * when the socket takes it.  (When the read event saw the
         * connection made, hiredis writes nothing after this callback.)
         */

        rd->held = ac->c.obuf;
        ((redisAsyncContext *) ac)->c.obuf = rd->spare;
        rd->spare = NULL;
    }

    /* the setup commands wait for their replies from now on */

    rd->last_reply = ngx_current_msec;

    if (rd->waiting && rd->conf->reply_timeout
        && !rd->reply_timer.timer_set)
    {
        ngx_add_timer(&rd->reply_timer, rd->conf->reply_timeout);
    }
}


static void
ngx_http_rules_redis_setup_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    redisReply              *reply = r;
    ngx_uint_t               what;
    ngx_http_rules_redis_t  *rd;

    rd = ac->data;
    what = (ngx_uint_t) (uintptr_t) privdata;

    rd->waiting--;

    if (reply == NULL || rd->closing) {
        /* the context is going away: the cleanup hook will tell */
        rd->closing = 1;
        return;
    }

    rd->last_reply = ngx_current_msec;

    if (what == NGX_HTTP_RULES_REDIS_PROBE) {

        /*
         * The last setup command.  No module, another version of it, or
         * no permission for it (ACL): the script.  Another error (a
         * cluster node not serving yet) says nothing: RULES.STORE is
         * tried, and the first call it fails goes again as EVAL.
         */

        rd->native = 1;

        if (ngx_http_rules_redis_error_is(reply, "ERR unknown command")
            || ngx_http_rules_redis_error_is(reply, "RULESVERSION")
            || ngx_http_rules_redis_error_is(reply, "NOPERM")
            || (reply->type != REDIS_REPLY_ERROR
                && reply->type != REDIS_REPLY_ARRAY))
        {
            rd->native = 0;

            ngx_log_error(NGX_LOG_INFO, rd->log, 0,
                          "rules redis %V: RULES.STORE not available "
                          "(%*s), states stored with the script",
                          &rd->conf->addr_text,
                          (size_t) (reply->type == REDIS_REPLY_ERROR
                                    ? ngx_min(reply->len, 128) : 0),
                          reply->str);
        }

        ngx_http_rules_redis_established(rd);
        ngx_http_rules_redis_replied(rd);
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {

        /*
         * Without AUTH or SELECT nothing can work, and a refused SCRIPT
         * LOAD means the same (NOAUTH, NOPERM), or a server not ready
         * (LOADING, BUSY), or a spontaneous error before it closes the
         * connection ("max number of clients reached"): the connection
         * is dropped and made again after the back-off.
         */

        ngx_http_rules_redis_fail(rd, "%s failed: %*s",
                                  ngx_http_rules_redis_setup_name[what],
                                  (size_t) reply->len, reply->str);
        return;

    } else if (what == NGX_HTTP_RULES_REDIS_LOAD
               && (reply->type != REDIS_REPLY_STRING || reply->len != 40
                   || ngx_strncasecmp((u_char *) reply->str,
                                      (u_char *) rd->sha1, 40)
                      != 0))
    {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "rules redis %V: SCRIPT LOAD returned \"%*s\" "
                      "instead of the script's SHA1 %s",
                      &rd->conf->addr_text,
                      (size_t) (reply->type == REDIS_REPLY_STRING
                                ? ngx_min((size_t) reply->len, 64) : 0),
                      reply->type == REDIS_REPLY_STRING ? reply->str : "",
                      rd->sha1);
    }

    if (what == NGX_HTTP_RULES_REDIS_LOAD && !rd->conf->native) {
        /* the last setup command */
        ngx_http_rules_redis_established(rd);
    }

    ngx_http_rules_redis_replied(rd);
}


static void
ngx_http_rules_redis_established(ngx_http_rules_redis_t *rd)
{
    const char  *how;
    ngx_uint_t   level;

    rd->established = 1;
    rd->stats.connects++;

    how = rd->native ? " (states stored with RULES.STORE)"
                     : " (states stored with the script)";

    if (rd->down) {
        ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                      "rules redis %V: connected again, %M ms after the "
                      "failure (%ui failed attempt%s)%s",
                      &rd->conf->addr_text,
                      (ngx_msec_t) (ngx_current_msec - rd->down_since),
                      rd->attempts, rd->attempts == 1 ? "" : "s", how);

    } else {
        level = rd->idle_close ? NGX_LOG_INFO : NGX_LOG_NOTICE;

        ngx_log_error(level, rd->log, 0, "rules redis %V: connected%s",
                      &rd->conf->addr_text, how);
    }

    rd->down = 0;
    rd->idle_close = 0;
    rd->attempts = 0;
    rd->logged_kind = 0;
    rd->established_at = ngx_current_msec;
}


ngx_int_t
ngx_http_rules_redis_evalsha(ngx_http_rules_redis_t *rd, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_rules_redis_handler_pt handler, void *data)
{
    return ngx_http_rules_redis_queue(rd, 0, 1, argc, argv, argvlen,
                                      handler, data);
}


ngx_int_t
ngx_http_rules_redis_evalsha_ex(ngx_http_rules_redis_t *rd, ngx_uint_t flags,
    int argc, const char **argv, const size_t *argvlen,
    ngx_http_rules_redis_handler_pt handler, void *data)
{
    return ngx_http_rules_redis_queue(rd, flags, 1, argc, argv, argvlen,
                                      handler, data);
}


ngx_int_t
ngx_http_rules_redis_command(ngx_http_rules_redis_t *rd, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_rules_redis_handler_pt handler, void *data)
{
    return ngx_http_rules_redis_queue(rd, 0, 0, argc, argv, argvlen,
                                      handler, data);
}


/*
 * One command: EVALSHA <sha> argv... (evalsha) or argv as given, put in
 * the protocol's form into one block, preceded by ASKING when asked to.
 */
static ngx_int_t
ngx_http_rules_redis_queue(ngx_http_rules_redis_t *rd, ngx_uint_t flags,
    ngx_uint_t evalsha, int argc, const char **argv, const size_t *argvlen,
    ngx_http_rules_redis_handler_pt handler, void *data)
{
    int                          i;
    u_char                      *p;
    size_t                       size;
    ngx_int_t                    skipped;
    ngx_http_rules_redis_cmd_t  *cmd;

    if (!ngx_http_rules_redis_accepting(rd)) {
        return NGX_DECLINED;
    }

    if (rd->inflight >= rd->conf->max_inflight) {
        /*
         * with a cluster, before the worker's bound on events: an event
         * makes a call per state key, and the keys of many events may
         * have one master
         */
        skipped = ngx_http_rules_log_due(&rd->full_log);

        if (skipped != NGX_DECLINED) {
            ngx_log_error(NGX_LOG_WARN, rd->log, 0,
                          "rules redis %V: call refused: %ui calls already "
                          "wait for a reply (rules_redis_max_inflight %ui; "
                          "%i more since the last such line)",
                          &rd->conf->addr_text, rd->inflight,
                          rd->conf->max_inflight, skipped);
        }

        return NGX_DECLINED;
    }

    if (argc < 1 || argc > 65536) {
        return NGX_DECLINED;
    }

    /* and a NUL: hiredis looks for the command's name with strchr() */
    size = sizeof(ngx_http_rules_redis_cmd_t) + NGX_HTTP_RULES_REDIS_HEAD + 1;

    for (i = 0; i < argc; i++) {
        size += NGX_HTTP_RULES_REDIS_ARG_LEN(argvlen[i]);
    }

    cmd = ngx_http_rules_redis_cmd_alloc(rd, size);
    if (cmd == NULL) {
        return NGX_DECLINED;
    }

    cmd->rd = rd;
    cmd->handler = handler;
    cmd->data = data;
    cmd->argc = argc + (evalsha ? 2 : 0);
    cmd->retried = 0;
    cmd->asking = (flags & NGX_HTTP_RULES_REDIS_ASKING) ? 1 : 0;
    cmd->raw = evalsha ? 0 : 1;
    cmd->native = (evalsha && rd->native) ? 1 : 0;
    cmd->args = (u_char *) (cmd + 1) + NGX_HTTP_RULES_REDIS_HEAD;

    p = cmd->args;

    for (i = 0; i < argc; i++) {
        p = ngx_http_rules_redis_arg(p, argv[i], argvlen[i]);
    }

    cmd->args_len = p - cmd->args;
    *p = '\0';

    if (ngx_http_rules_redis_send(rd, cmd) != NGX_OK) {
        ngx_http_rules_redis_cmd_free(rd, cmd);
        return NGX_DECLINED;
    }

    rd->inflight++;
    rd->stats.native += cmd->native;
    rd->carried |= evalsha ? 1 : 0;

    return NGX_OK;
}


/*
 * Queues the command (and ASKING right before it, in the same write: a
 * Redis Cluster ASK redirection), counts the replies due and starts the
 * reply watchdog with the first one.
 */
static ngx_int_t
ngx_http_rules_redis_send(ngx_http_rules_redis_t *rd,
    ngx_http_rules_redis_cmd_t *cmd)
{
    ngx_int_t                     rc;
    ngx_uint_t                    waiting;
    ngx_http_rules_redis_mark_t   mark;

    waiting = rd->waiting;

    if (cmd->asking) {
        if (ngx_http_rules_redis_mark(rd->ac, &mark) != NGX_OK) {
            return NGX_ERROR;
        }

        rc = redisAsyncCommand(rd->ac, ngx_http_rules_redis_asking_reply,
                               NULL, "ASKING");

        if (ngx_http_rules_redis_queued(rd, rd->ac, &mark, (int) rc)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        rd->waiting++;
    }

    /* the protocol's form: binary safe, never a format string */

    rc = ngx_http_rules_redis_send_formatted(rd, cmd);

    if (rc == NGX_OK) {
        rd->waiting++;
    }

    /* an ASKING queued alone is harmless: its reply is counted, and
     * watched like any other */

    if (waiting == 0 && rd->waiting) {
        /* the reply watchdog counts from the first command waiting */

        rd->last_reply = ngx_current_msec;

        if (rd->conf->reply_timeout && !rd->reply_timer.timer_set) {
            ngx_add_timer(&rd->reply_timer, rd->conf->reply_timeout);
        }
    }

    return rc;
}


/* The reply to ASKING: "+OK"; the command's own reply tells the rest. */
static void
ngx_http_rules_redis_asking_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    redisReply              *reply = r;
    ngx_http_rules_redis_t  *rd;

    rd = ac->data;

    rd->waiting--;

    if (reply == NULL) {
        rd->closing = 1;
        return;
    }

    rd->last_reply = ngx_current_msec;

    ngx_http_rules_redis_replied(rd);
}


static void
ngx_http_rules_redis_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    redisReply                  *reply = r;
    ngx_http_rules_redis_t      *rd;
    ngx_http_rules_redis_cmd_t  *cmd;

    cmd = privdata;
    rd = cmd->rd;

    rd->waiting--;

    if (reply == NULL) {
        /* the context is being freed: every pending command comes here */
        rd->closing = 1;
        rd->failed++;
        ngx_http_rules_redis_done(cmd, NULL, NGX_ERROR);
        return;
    }

    rd->last_reply = ngx_current_msec;

    if (!cmd->retried && cmd->native
        && (ngx_http_rules_redis_error_is(reply, "RULESVERSION")
            || ngx_http_rules_redis_error_is(reply, "ERR unknown command")))
    {
        /*
         * The module went away (a failover to a replica without it) or
         * changed behind the connection: the call goes again as EVAL,
         * and the connection's next calls as EVALSHA.
         */

        if (rd->native) {
            rd->native = 0;
            ngx_http_rules_redis_losses++;
            ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                          "rules redis %V: RULES.STORE refused (%*s), "
                          "using the script", &rd->conf->addr_text,
                          (size_t) ngx_min(reply->len, 128), reply->str);
        }

        cmd->retried = 1;
        cmd->native = 0;

        if (!rd->closing && ngx_http_rules_redis_send(rd, cmd) == NGX_OK) {
            return;
        }

        ngx_http_rules_redis_replied(rd);
        ngx_http_rules_redis_done(cmd, NULL, NGX_ERROR);
        return;
    }

    if (!cmd->retried && !cmd->raw
        && ngx_http_rules_redis_error_is(reply, "NOSCRIPT"))
    {

        /*
         * Redis lost the script (SCRIPT FLUSH, a failover, a restart
         * behind a proxy): the same arguments go again as EVAL, which
         * runs the script and loads it for the next EVALSHA.  The retry
         * goes behind the commands sent meanwhile: in that rare window
         * two events of one key may be applied out of order.
         */

        rd->stats.noscript++;
        cmd->retried = 1;

        /*
         * a Redis that lost its scripts may have lost writes: the state
         * cache goes (the calls already planned on it, this one among
         * them, are sent as they are)
         */
        ngx_http_rules_redis_losses++;

        if (!rd->noscript_logged) {
            rd->noscript_logged = 1;
            ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                          "rules redis %V: script not loaded (NOSCRIPT), "
                          "sending it again", &rd->conf->addr_text);
        }

        if (!rd->closing && ngx_http_rules_redis_send(rd, cmd) == NGX_OK) {
            return;
        }

        ngx_http_rules_redis_replied(rd);
        ngx_http_rules_redis_done(cmd, NULL, NGX_ERROR);
        return;
    }

    if (!cmd->raw && reply->type != REDIS_REPLY_ARRAY
        && reply->type != REDIS_REPLY_ERROR)
    {
        /*
         * The script and RULES.STORE answer with an array or an error:
         * anything else is another command's reply (a server, or a
         * proxy, out of step), and so would be every reply after it.
         */

        ngx_http_rules_redis_fail(rd, "replies out of step (a state call "
                                  "answered with %s)",
                                  reply->type == REDIS_REPLY_STATUS
                                  ? "a status"
                                  : reply->type == REDIS_REPLY_INTEGER
                                    ? "an integer"
                                    : reply->type == REDIS_REPLY_NIL
                                      ? "nil" : "a string");
        rd->failed++;
        ngx_http_rules_redis_replied(rd);
        ngx_http_rules_redis_done(cmd, NULL, NGX_ERROR);
        return;
    }

    if (!cmd->retried) {
        /* EVALSHA works again: a later NOSCRIPT is news */
        rd->noscript_logged = 0;
    }

    ngx_http_rules_redis_replied(rd);
    ngx_http_rules_redis_done(cmd, reply, NGX_OK);
}


/* The caller's handler, once; its block goes back to the free list. */
static void
ngx_http_rules_redis_done(ngx_http_rules_redis_cmd_t *cmd,
    redisReply *reply, ngx_int_t rc)
{
    void                             *data;
    ngx_http_rules_redis_t           *rd;
    ngx_http_rules_redis_handler_pt   handler;

    rd = cmd->rd;
    handler = cmd->handler;
    data = cmd->data;

    rd->inflight--;

    /* freed first: the handler may send a command and reuse the block */

    ngx_http_rules_redis_cmd_free(rd, cmd);

    handler(data, reply, rc);
}


/* A reply arrived: the watchdog is needed only while replies are due. */
static void
ngx_http_rules_redis_replied(ngx_http_rules_redis_t *rd)
{
    if (rd->waiting == 0 && rd->reply_timer.timer_set) {
        ngx_del_timer(&rd->reply_timer);
    }
}


/*
 * No reply for reply_timeout while replies are due: Redis is paused or
 * the path is broken.  The connection is dropped (its commands fail at
 * once) and made again, so that memory stays bounded and service resumes
 * as soon as Redis answers.  The timer is not moved on every reply: the
 * time of the last one is checked here.
 */
static void
ngx_http_rules_redis_reply_timeout(ngx_event_t *ev)
{
    ngx_msec_t               elapsed;
    ngx_http_rules_redis_t  *rd;

    rd = ev->data;

    if (rd->ac == NULL || rd->closing || rd->waiting == 0
        || rd->state != NGX_HTTP_RULES_REDIS_CONNECTED)
    {
        return;
    }

    elapsed = ngx_current_msec - rd->last_reply;

    if (elapsed < rd->conf->reply_timeout) {
        ngx_add_timer(&rd->reply_timer, rd->conf->reply_timeout - elapsed);
        return;
    }

    ngx_http_rules_redis_fail(rd, "no reply for %M ms, %ui command%s "
                              "waiting", elapsed, rd->waiting,
                              rd->waiting == 1 ? "" : "s");
}


static void
ngx_http_rules_redis_connect_timeout(ngx_event_t *ev)
{
    ngx_http_rules_redis_t  *rd;

    rd = ev->data;

    if (rd->ac == NULL || rd->closing) {
        return;
    }

    ngx_http_rules_redis_fail(rd, "connect timed out (%M ms)",
                              rd->conf->connect_timeout);
}


static void
ngx_http_rules_redis_reconnect(ngx_event_t *ev)
{
    ngx_http_rules_redis_t  *rd;

    rd = ev->data;

    if (rd->ac || rd->destroying || ngx_exiting || ngx_terminate
        || ngx_quit)
    {
        return;
    }

    ngx_http_rules_redis_connect(rd);
}


/*
 * Drops the connection on purpose.  Pending commands are called back
 * with NGX_ERROR and the cleanup hook ends the connection; inside a
 * hiredis callback, hiredis does all this right after the callback
 * returns.
 */
static void
ngx_http_rules_redis_fail(ngx_http_rules_redis_t *rd, const char *fmt, ...)
{
    va_list  args;

    if (rd->ac == NULL || rd->closing) {
        /* already going away */
        return;
    }

    va_start(args, fmt);
    ngx_http_rules_redis_vreason(rd, fmt, args);
    va_end(args);

    rd->closing = 1;
    rd->planned = 1;

    redisAsyncFree(rd->ac);
}


void
ngx_http_rules_redis_bad_reply(redisAsyncContext *ac, const char *fmt, ...)
{
    va_list                  args;
    ngx_http_rules_redis_t  *rd;

    rd = (ac != NULL) ? ac->data : NULL;

    if (rd == NULL || rd->ac != ac || rd->planned) {
        return;
    }

    va_start(args, fmt);
    ngx_http_rules_redis_vreason(rd, fmt, args);
    va_end(args);

    rd->planned = 1;
}


static void
ngx_http_rules_redis_set_reason(ngx_http_rules_redis_t *rd,
    const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    ngx_http_rules_redis_vreason(rd, fmt, args);
    va_end(args);
}


static void
ngx_http_rules_redis_vreason(ngx_http_rules_redis_t *rd, const char *fmt,
    va_list args)
{
    u_char  *p;

    p = ngx_vslprintf(rd->reason_buf,
                      rd->reason_buf + NGX_HTTP_RULES_REDIS_REASON_LEN,
                      fmt, args);

    rd->reason.data = rd->reason_buf;
    rd->reason.len = p - rd->reason_buf;
}


/*
 * The context is gone (or was never made): every pending command has
 * been called back.  Log once per change, plan the next attempt.
 */
static void
ngx_http_rules_redis_closed(ngx_http_rules_redis_t *rd)
{
    uint32_t     kind;
    ngx_msec_t   delay;
    ngx_uint_t   level, planned, idle, at_once;

    planned = rd->planned;

    if (rd->state == NGX_HTTP_RULES_REDIS_CONNECTED && rd->carried) {
        /*
         * it carried state calls (one never made read nothing): Redis
         * may have restarted or failed over behind it.  One that carried
         * none (a cluster seed that is a replica) says nothing of the
         * values cached, and the cache stays.
         */
        ngx_http_rules_redis_losses++;
    }

    rd->carried = 0;

    rd->ac = NULL;
    rd->state = NGX_HTTP_RULES_REDIS_IDLE;
    rd->closing = 0;
    rd->planned = 0;
    rd->waiting = 0;

    if (rd->connect_timer.timer_set) {
        ngx_del_timer(&rd->connect_timer);
    }

    if (rd->reply_timer.timer_set) {
        ngx_del_timer(&rd->reply_timer);
    }

    if (rd->destroying || ngx_exiting || ngx_terminate || ngx_quit) {
        ngx_log_error(NGX_LOG_INFO, rd->log, 0,
                      "rules redis %V: connection closed (%V), "
                      "%ui command%s failed", &rd->conf->addr_text,
                      &rd->reason, rd->failed, rd->failed == 1 ? "" : "s");
        rd->established = 0;
        rd->failed = 0;
        return;
    }

    /*
     * Closed by Redis with nothing pending: most likely its idle
     * "timeout", and nothing failed.  After a connection that lasted, it
     * is made again at once, the back-off left as it is, so that the next
     * events find one; soon after it was made (a server or proxy that
     * keeps closing them), after the back-off.  If Redis is really gone,
     * the attempt says so.
     */

    idle = rd->established && rd->failed == 0 && !planned;
    at_once = idle && ngx_current_msec - rd->established_at
                      >= NGX_HTTP_RULES_IDLE_RECONNECT;

    if (at_once) {
        delay = 1;

    } else {

        /*
         * The back-off starts again from backoff_min after a connection
         * that lasted; one lost soon after it was made goes on doubling
         * it.
         */

        if (rd->established
            && ngx_current_msec - rd->established_at >= rd->backoff_max)
        {
            rd->backoff = rd->backoff_min;
        }

        /* up to a quarter less: workers and hosts do not retry in step */

        delay = rd->backoff
                - (ngx_msec_t) ngx_random() % (rd->backoff / 4 + 1);

        if (delay < rd->backoff_min) {
            delay = rd->backoff_min;
        }

        rd->backoff *= 2;

        if (rd->backoff > rd->backoff_max) {
            rd->backoff = rd->backoff_max;
        }
    }

    if (idle) {
        rd->established = 0;
        rd->idle_close = 1;
        rd->stats.reconnects++;

        if (at_once) {
            /* routine (Redis' timeout, a proxy's idle timeout): as the
             * "connected" that follows it */
            ngx_log_error(NGX_LOG_INFO, rd->log, 0,
                          "rules redis %V: connection closed while idle: "
                          "%V, reconnecting",
                          &rd->conf->addr_text, &rd->reason);

        } else {
            ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                          "rules redis %V: connection closed while idle: "
                          "%V, reconnecting in %M ms",
                          &rd->conf->addr_text, &rd->reason, delay);
        }

    } else if (rd->established) {
        rd->established = 0;
        rd->stats.reconnects++;

        rd->down = 1;
        rd->down_since = ngx_current_msec;

        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "rules redis %V: connection lost: %V, %ui command%s "
                      "failed, reconnecting in %M ms",
                      &rd->conf->addr_text, &rd->reason, rd->failed,
                      rd->failed == 1 ? "" : "s", delay);

    } else {
        rd->attempts++;

        if (!rd->down) {
            rd->down = 1;
            rd->down_since = ngx_current_msec;
        }

        /*
         * Attempts 1, 2, 4, 8...: a few lines, however long it lasts,
         * and one whenever the kind of failure changes.
         */

        kind = ngx_http_rules_redis_kind(&rd->reason);

        if ((rd->attempts & (rd->attempts - 1)) == 0
            || kind != rd->logged_kind)
        {
            rd->logged_kind = kind;

            level = (rd->attempts == 1
                     && (rd->stats.connects == 0 || rd->idle_close))
                    ? NGX_LOG_ERR : NGX_LOG_WARN;

            if (rd->failed) {
                /* commands waited in a first connection never made */
                ngx_log_error(level, rd->log, 0,
                              "rules redis %V: %V (%ui failed attempt%s), "
                              "%ui command%s failed, retrying in %M ms",
                              &rd->conf->addr_text, &rd->reason,
                              rd->attempts, rd->attempts == 1 ? "" : "s",
                              rd->failed, rd->failed == 1 ? "" : "s",
                              delay);

            } else {
                ngx_log_error(level, rd->log, 0,
                              "rules redis %V: %V (%ui failed attempt%s), "
                              "retrying in %M ms", &rd->conf->addr_text,
                              &rd->reason, rd->attempts,
                              rd->attempts == 1 ? "" : "s", delay);
            }
        }
    }

    rd->failed = 0;

    ngx_add_timer(&rd->reconnect_timer, delay);
}


/*
 * The kind of a failure: its text, numbers aside (a time or a count
 * differs from one attempt to the next).  The text, not its format: one
 * format carries hiredis' or Redis' own words, and "connect failed:
 * Connection refused" then "connect failed: Can't create socket: Too
 * many open files" are two causes.
 */
static uint32_t
ngx_http_rules_redis_kind(ngx_str_t *reason)
{
    u_char    *p, *last;
    uint32_t   crc;

    ngx_crc32_init(crc);

    last = reason->data + reason->len;

    for (p = reason->data; p < last; p++) {
        if (*p < '0' || *p > '9') {
            ngx_crc32_update(&crc, p, 1);
        }
    }

    ngx_crc32_final(crc);

    return crc;
}


ngx_uint_t
ngx_http_rules_redis_ready(ngx_http_rules_redis_t *rd)
{
    return rd->state == NGX_HTTP_RULES_REDIS_CONNECTED && !rd->closing;
}


/*
 * Ready, or making a connection while no failure is reported: the
 * worker's first connection, or one made again after an idle close.  Its
 * commands are queued behind the setup commands and go when it is made
 * (or fail with it); after a failure, while Redis is down, events fail
 * at once instead.
 */
ngx_uint_t
ngx_http_rules_redis_accepting(ngx_http_rules_redis_t *rd)
{
    if (rd->closing || rd->ac == NULL
        || (rd->ac->c.flags & (REDIS_DISCONNECTING|REDIS_FREEING)))
    {
        return 0;
    }

    return rd->state == NGX_HTTP_RULES_REDIS_CONNECTED
           || (rd->state == NGX_HTTP_RULES_REDIS_CONNECTING && !rd->down);
}


ngx_uint_t
ngx_http_rules_redis_loss_count(void)
{
    return ngx_http_rules_redis_losses;
}


ngx_uint_t
ngx_http_rules_redis_inflight(ngx_http_rules_redis_t *rd)
{
    return rd->inflight;
}


ngx_http_rules_redis_stats_t *
ngx_http_rules_redis_stats(ngx_http_rules_redis_t *rd)
{
    return &rd->stats;
}


void
ngx_http_rules_redis_destroy(ngx_http_rules_redis_t *rd, const char *reason)
{
    ngx_http_rules_redis_cmd_t  *cmd;

    rd->destroying = 1;

    if (rd->reconnect_timer.timer_set) {
        ngx_del_timer(&rd->reconnect_timer);
    }

    if (rd->ac) {
        /* pending commands: handlers called with NGX_ERROR, right now */
        ngx_http_rules_redis_fail(rd, "%s", reason);
    }

    /* the cleanup hook has run: nothing refers to rd any more */

    if (rd->connect_timer.timer_set) {
        ngx_del_timer(&rd->connect_timer);
    }

    if (rd->reply_timer.timer_set) {
        ngx_del_timer(&rd->reply_timer);
    }

    while (rd->free) {
        cmd = rd->free;
        rd->free = cmd->next;
        ngx_free(cmd);
    }

    if (rd->spare) {
        sdsfree(rd->spare);
    }

    ngx_free(rd);
}


/*
 * One argument in the protocol's form: $<length> CRLF <bytes> CRLF (the
 * length's digits written here: a call has dozens of arguments, and
 * ngx_sprintf() showed in the profile).
 */
static u_char *
ngx_http_rules_redis_arg(u_char *p, const char *arg, size_t len)
{
    u_char   digits[NGX_SIZE_T_LEN];
    size_t   n, i, v;

    *p++ = '$';

    /* the keys of a call: one or two digits; its items (a 47-byte meta
     * and a body): mostly three */

    if (len < 10) {
        *p++ = (u_char) ('0' + len);

    } else if (len < 100) {
        *p++ = (u_char) ('0' + len / 10);
        *p++ = (u_char) ('0' + len % 10);

    } else if (len < 1000) {
        *p++ = (u_char) ('0' + len / 100);
        *p++ = (u_char) ('0' + len / 10 % 10);
        *p++ = (u_char) ('0' + len % 10);

    } else {
        n = 0;
        v = len;

        do {
            digits[n++] = (u_char) ('0' + v % 10);
            v /= 10;
        } while (v);

        for (i = n; i > 0; i--) {
            *p++ = digits[i - 1];
        }
    }

    *p++ = CR;
    *p++ = LF;
    p = ngx_cpymem(p, arg, len);
    *p++ = CR;
    *p++ = LF;

    return p;
}


/*
 * Sends the command: its head (the number of arguments; for a script
 * call, EVALSHA or RULES.STORE and the script's SHA1, or, retried, EVAL
 * and the script) written right before its arguments, the whole in one
 * piece that hiredis copies into its output buffer (NUL-terminated, as
 * its own formatting leaves it).  The script does not fit in the room
 * left for the head: a retry is put together apart.
 */
static ngx_int_t
ngx_http_rules_redis_send_formatted(ngx_http_rules_redis_t *rd,
    ngx_http_rules_redis_cmd_t *cmd)
{
    int                           rc;
    size_t                        len, head_len;
    u_char                       *p, *buf, head[NGX_HTTP_RULES_REDIS_HEAD];
    ngx_http_rules_redis_mark_t   mark;

    if (ngx_http_rules_redis_mark(rd->ac, &mark) != NGX_OK) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(head, "*%d" CRLF, cmd->argc);

    if (!cmd->raw && !cmd->retried) {
        p = cmd->native
            ? ngx_http_rules_redis_arg(p, "RULES.STORE",
                                       sizeof("RULES.STORE") - 1)
            : ngx_http_rules_redis_arg(p, "EVALSHA", sizeof("EVALSHA") - 1);
        p = ngx_http_rules_redis_arg(p, rd->sha1, 40);
    }

    head_len = p - head;

    if (!cmd->raw && cmd->retried) {
        /* EVAL <script> <the same arguments> */

        len = head_len + NGX_HTTP_RULES_REDIS_ARG_LEN(sizeof("EVAL") - 1)
              + NGX_HTTP_RULES_REDIS_ARG_LEN(rd->script_len) + cmd->args_len
              + 1;

        buf = ngx_alloc(len, rd->log);
        if (buf == NULL) {
            return NGX_ERROR;
        }

        p = ngx_cpymem(buf, head, head_len);
        p = ngx_http_rules_redis_arg(p, "EVAL", sizeof("EVAL") - 1);
        p = ngx_http_rules_redis_arg(p, rd->script, rd->script_len);
        p = ngx_cpymem(p, cmd->args, cmd->args_len);
        *p = '\0';

        rc = redisAsyncFormattedCommand(rd->ac, ngx_http_rules_redis_reply,
                                        cmd, (const char *) buf,
                                        p - buf);
        ngx_free(buf);

    } else {
        p = cmd->args - head_len;
        ngx_memcpy(p, head, head_len);

        rc = redisAsyncFormattedCommand(rd->ac, ngx_http_rules_redis_reply,
                                        cmd, (const char *) p,
                                        head_len + cmd->args_len);
    }

    return ngx_http_rules_redis_queued(rd, rd->ac, &mark, rc);
}


/*
 * hiredis 0.14 queues a command in two steps and checks neither: a
 * callback it cannot record leaves the command without one (its reply
 * would be given to the next command's callback), and a command it
 * cannot append to its buffer leaves a callback waiting for a reply
 * that never comes, the context in error.  So the queue is marked before
 * a command and checked after it, and what either step left is undone:
 * a command is queued whole or not at all, and the connection goes on.
 */
static ngx_int_t
ngx_http_rules_redis_mark(redisAsyncContext *ac,
    ngx_http_rules_redis_mark_t *m)
{
    if (ac->c.err) {
        return NGX_ERROR;
    }

    m->tail = ac->replies.tail;
    m->obuf_len = sdslen(ac->c.obuf);

    return NGX_OK;
}


static ngx_int_t
ngx_http_rules_redis_queued(ngx_http_rules_redis_t *rd,
    redisAsyncContext *ac, ngx_http_rules_redis_mark_t *m, int rc)
{
    ngx_int_t       skipped;
    redisCallback  *cb;

    cb = ac->replies.tail;

    if (ac->c.err == 0 && cb != m->tail) {
        /* both steps done: queued, its callback will be called */
        return NGX_OK;
    }

    if (ac->c.err == 0 && rc != REDIS_OK) {
        /* refused before either step: disconnecting, or formatting */

        if (ac->c.flags & (REDIS_DISCONNECTING|REDIS_FREEING)) {
            return NGX_ERROR;
        }

        goto nomem;
    }

    if (cb != m->tail) {
        /* recorded, not appended */

        if (m->tail) {
            m->tail->next = NULL;

        } else {
            ac->replies.head = NULL;
        }

        ac->replies.tail = m->tail;
        free(cb);
    }

    if (ac->c.err == 0) {
        /* appended, not recorded */
        sdssetlen(ac->c.obuf, m->obuf_len);
        ac->c.obuf[m->obuf_len] = '\0';

    } else {
        /* the buffer is as it was */
        ac->c.err = 0;
        ac->c.errstr[0] = '\0';
    }

nomem:

    /* at most a line a second: short of memory, every command fails */

    skipped = ngx_http_rules_log_due(&rd->nomem_log);

    if (skipped != NGX_DECLINED) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "rules redis %V: out of memory in hiredis, a command "
                      "not sent (%i more since the last such line)",
                      &rd->conf->addr_text, skipped);
    }

    return NGX_ERROR;
}


static ngx_http_rules_redis_cmd_t *
ngx_http_rules_redis_cmd_alloc(ngx_http_rules_redis_t *rd, size_t size)
{
    ngx_http_rules_redis_cmd_t  *cmd;

    cmd = rd->free;

    if (cmd) {
        rd->free = cmd->next;
        rd->nfree--;
        rd->free_bytes -= cmd->size;

        if (cmd->size >= size) {
            return cmd;
        }

        ngx_free(cmd);
    }

    size = ngx_align(size, NGX_HTTP_RULES_REDIS_BLOCK);

    cmd = ngx_alloc(size, rd->log);
    if (cmd == NULL) {
        return NULL;
    }

    cmd->size = size;

    return cmd;
}


static void
ngx_http_rules_redis_cmd_free(ngx_http_rules_redis_t *rd,
    ngx_http_rules_redis_cmd_t *cmd)
{
    if (rd->nfree >= NGX_HTTP_RULES_REDIS_FREE_MAX
        || rd->free_bytes + cmd->size > NGX_HTTP_RULES_REDIS_FREE_BYTES)
    {
        ngx_free(cmd);
        return;
    }

    cmd->next = rd->free;
    rd->free = cmd;
    rd->nfree++;
    rd->free_bytes += cmd->size;
}


static ngx_uint_t
ngx_http_rules_redis_error_is(redisReply *reply, const char *prefix)
{
    size_t  len;

    len = ngx_strlen(prefix);

    return reply->type == REDIS_REPLY_ERROR
           && (size_t) reply->len >= len
           && ngx_strncmp(reply->str, prefix, len) == 0;
}


/* ---- the event loop adapter ---------------------------------------- */


/*
 * After redisAsyncHandleRead() or redisAsyncHandleWrite() the context
 * and the connection may be gone (hiredis frees them on an error): the
 * handlers touch nothing afterwards but rd, which outlives them, and the
 * context while rd->held says it is there.
 */

static void
ngx_http_rules_redis_read_handler(ngx_event_t *rev)
{
    sds                      buf;
    redisReader             *reader;
    ngx_connection_t        *c;
    redisAsyncContext       *ac;
    ngx_http_rules_redis_t  *rd;

    c = rev->data;
    ac = c->data;
    rd = ac->data;

    if (c->close) {
        /* worker_shutdown_timeout: nginx closes every connection */
        ngx_http_rules_redis_fail(rd, "closed at worker shutdown");
        return;
    }

    reader = ac->c.reader;

    if (ngx_http_rules_reply_line_check(reader) != NGX_OK) {
        ngx_http_rules_redis_fail(rd, "a reply line of more than %d bytes "
                                  "(the module takes %d at most)",
                                  NGX_HTTP_RULES_REPLY_MAX_LINE,
                                  NGX_HTTP_RULES_REPLY_MAX_LINE);
        return;
    }

    if (reader->len == 0
        && sdsavail(reader->buf) > NGX_HTTP_RULES_REDIS_BUF_KEEP)
    {
        /* as hiredis would, with its allocation checked */

        buf = sdsempty();

        if (buf) {
            sdsfree(reader->buf);
            reader->buf = buf;
            reader->pos = 0;
        }
    }

    redisAsyncHandleRead(ac);
}


static void
ngx_http_rules_redis_write_handler(ngx_event_t *wev)
{
    ngx_connection_t        *c;
    redisAsyncContext       *ac;
    ngx_http_rules_redis_t  *rd;

    c = wev->data;
    ac = c->data;
    rd = ac->data;

    if ((ac->c.flags & REDIS_CONNECTED) && ac->c.err == 0) {
        ngx_http_rules_redis_flush(ac);

        if (ac->c.err == 0) {
            /*
             * As redisAsyncHandleWrite() would go on, without its second
             * write: one that takes the rest replaces the buffer by an
             * unchecked sdsempty().  What the socket did not take waits
             * for the registered write event.
             */

            if (sdslen(ac->c.obuf) == 0) {
                ngx_http_rules_redis_del_write(c);

            } else {
                rd->writing = 1;
                ngx_http_rules_redis_add_write(c);
                rd->writing = 0;
            }

            ngx_http_rules_redis_add_read(c);

            return;
        }
    }

    /*
     * Connecting (the setup commands are written by the connect
     * callback), or a write error, which hiredis reports and closes on:
     * rd outlives the context, which this call may free.
     */

    rd->writing = 1;
    redisAsyncHandleWrite(ac);
    rd->writing = 0;

    if (rd->held) {

        /*
         * The context is there (the cleanup hook frees rd->held with it),
         * and it is this one: one context at a time.  The socket was
         * full a moment ago: the write event is registered.
         */

        rd->spare = ac->c.obuf;      /* still empty: nothing came between */
        ac->c.obuf = rd->held;
        rd->held = NULL;

        rd->writing = 1;
        ngx_http_rules_redis_add_write(c);
        rd->writing = 0;
    }
}


/*
 * Writes hiredis' output buffer and empties it in place; hiredis then
 * finds nothing to write, or what the socket did not take.  A write
 * error is left in the context as hiredis would leave it, so that it
 * reports this cause, not that of a second write.  Only once connected,
 * and never frees the context.
 */
static void
ngx_http_rules_redis_flush(redisAsyncContext *ac)
{
    sds            buf;
    u_char        *p;
    ssize_t        n;
    ngx_err_t      err;
    redisContext  *c;

    c = &ac->c;

    if (c->err || !(c->flags & REDIS_CONNECTED) || sdslen(c->obuf) == 0) {
        return;
    }

    n = write(c->fd, c->obuf, sdslen(c->obuf));

    if (n == -1) {
        err = ngx_errno;

        if (err != NGX_EAGAIN && err != NGX_EINTR) {
            /* as redisBufferWrite(): hiredis reports this very cause */
            c->err = REDIS_ERR_IO;
            p = ngx_strerror(err, (u_char *) c->errstr,
                             sizeof(c->errstr) - 1);
            *p = '\0';
        }

        return;
    }

    if (n == 0) {
        return;
    }

    sdsrange(c->obuf, (int) n, -1);

    if (sdslen(c->obuf) == 0
        && sdsalloc(c->obuf) > NGX_HTTP_RULES_REDIS_BUF_KEEP)
    {
        buf = sdsempty();

        if (buf) {
            sdsfree(c->obuf);
            c->obuf = buf;
        }
    }
}


/*
 * Only the socket write (redisBufferWrite() never frees the context, and
 * this may run inside a reply's callback, when the call it fills is a
 * compaction): an error, or what the socket did not take, is left to the
 * posted write event at the end of the pass.
 */
void
ngx_http_rules_redis_write_now(ngx_http_rules_redis_t *rd)
{
    ngx_connection_t   *c;
    redisAsyncContext  *ac;

    ac = rd->ac;

    if (ac == NULL || rd->writing || rd->closing
        || !(ac->c.flags & REDIS_CONNECTED)
        || (ac->c.flags & (REDIS_DISCONNECTING|REDIS_FREEING)))
    {
        return;
    }

    c = ac->ev.data;

    if (c == NULL || !c->write->posted) {
        return;
    }

    ngx_http_rules_redis_flush(ac);

    if (ac->c.err == 0 && sdslen(ac->c.obuf) == 0) {
        /* as redisAsyncHandleWrite() after a whole write */
        ngx_delete_posted_event(c->write);
        ngx_http_rules_redis_add_read(c);
    }
}


/*
 * Level-triggered on every event method (NGX_LEVEL_EVENT: no EPOLLET, no
 * EV_CLEAR).  With one-shot methods (event ports) the event is inactive
 * again after it fired: hiredis asks for it again after each read and
 * after each partial write, and it is added again then.
 */

static void
ngx_http_rules_redis_add_read(void *privdata)
{
    ngx_connection_t  *c = privdata;

    if (c->read->active) {
        return;
    }

    if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                      "rules redis: cannot add the read event of #%d",
                      c->fd);
    }
}


static void
ngx_http_rules_redis_del_read(void *privdata)
{
    ngx_connection_t  *c = privdata;

    if (!c->read->active) {
        return;
    }

    if (ngx_del_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                      "rules redis: cannot delete the read event of #%d",
                      c->fd);
    }
}


/*
 * A connected socket is almost always writable: the commands queued in a
 * pass of the event loop are written at the end of that pass (the write
 * event is posted; a full call is written before, by
 * ngx_http_rules_redis_write_now()), rather than registering the write
 * event (two epoll_ctl per call) and writing in the next pass.  The
 * write event is registered while connecting, and when that write could
 * not write it all (hiredis asks again from inside it).
 */
static void
ngx_http_rules_redis_add_write(void *privdata)
{
    ngx_connection_t  *c = privdata;

    redisAsyncContext       *ac;
    ngx_http_rules_redis_t  *rd;

    if (c->write->active) {
        return;
    }

    ac = c->data;
    rd = ac->data;

    if ((ac->c.flags & REDIS_CONNECTED) && !rd->writing) {
        if (!c->write->posted) {
            ngx_post_event(c->write, &ngx_posted_events);
        }

        return;
    }

    if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                      "rules redis: cannot add the write event of #%d",
                      c->fd);
    }
}


static void
ngx_http_rules_redis_del_write(void *privdata)
{
    ngx_connection_t  *c = privdata;

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    if (!c->write->active) {
        return;
    }

    if (ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                      "rules redis: cannot delete the write event of #%d",
                      c->fd);
    }
}


/*
 * hiredis is freeing the context (every pending command has been called
 * back) and closes the descriptor right after: the connection goes back
 * to the pool without closing it.
 */
static void
ngx_http_rules_redis_cleanup(void *privdata)
{
    ngx_connection_t  *c = privdata;

    redisAsyncContext       *ac;
    ngx_http_rules_redis_t  *rd;

    ac = c->data;
    rd = ac->data;

    if (rd->held) {
        /* the context's output, out of its sight: hiredis freed the spare */
        sdsfree(rd->held);
        rd->held = NULL;
    }

    /* no more calls into the adapter for this context */

    ac->ev.addRead = NULL;
    ac->ev.delRead = NULL;
    ac->ev.addWrite = NULL;
    ac->ev.delWrite = NULL;
    ac->ev.cleanup = NULL;
    ac->ev.data = NULL;

    ngx_http_rules_redis_del_read(c);
    ngx_http_rules_redis_del_write(c);

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    ngx_free_connection(c);

    /* hiredis closes it; stale events of this iteration see fd -1 */
    c->fd = (ngx_socket_t) -1;

    /* (the allocations freeing it needs are behind it) */
    ngx_http_rules_redis_contexts--;

    if (ac != rd->ac) {
        return;
    }

    if (!rd->planned) {
        /* hiredis' own decision: an I/O error, EOF, an error reply */

        if (ac->c.err) {
            ngx_http_rules_redis_set_reason(rd, "%s", ac->c.errstr);

        } else {
            ngx_http_rules_redis_set_reason(rd, "connection closed");
        }
    }

    ngx_http_rules_redis_closed(rd);
}
