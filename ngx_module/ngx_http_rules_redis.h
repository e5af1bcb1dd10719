/*
 * A persistent, non-blocking Redis connection per worker: hiredis' async
 * API driven by nginx's event loop and timers.
 */

#ifndef NGX_HTTP_RULES_REDIS_H
#define NGX_HTTP_RULES_REDIS_H

#include <ngx_config.h>
#include <ngx_core.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>


/*
 * hiredis' internals relied upon (its callback list, its output buffer
 * and reader, its allocation functions: ngx_http_rules_redis.c and
 * ngx_http_rules_reply.c) are those of 0.14.
 */
#if !(HIREDIS_MAJOR == 0 && HIREDIS_MINOR == 14)
#error "the module's Redis client is written for hiredis 0.14"
#endif


/*
 * The longest unix socket path hiredis 0.14 connects to as given: it
 * copies the path with strncpy() into sun_path less its last byte, which
 * it leaves unset, and passes the whole address, so a path filling the
 * rest (107 bytes) is read on by one byte of whatever was there.
 */
#define NGX_HTTP_RULES_UNIX_PATH_MAX                                         \
    (sizeof(((struct sockaddr_un *) 0)->sun_path) - 2)


/*
 * A log line limited to one a second, with the count of the others:
 * ngx_http_rules_log_due() returns NGX_DECLINED when the line is not due
 * (it is counted), else the number of lines left out since the last.
 */
typedef struct {
    time_t      logged;
    ngx_uint_t  unlogged;
} ngx_http_rules_log_rate_t;


static ngx_inline ngx_int_t
ngx_http_rules_log_due(ngx_http_rules_log_rate_t *lr)
{
    ngx_int_t  n;

    if (ngx_time() == lr->logged) {
        lr->unlogged++;
        return NGX_DECLINED;
    }

    n = (ngx_int_t) lr->unlogged;
    lr->logged = ngx_time();
    lr->unlogged = 0;

    return n;
}


/*
 * Owned by the caller, read for the connection's whole life (the worker's).
 * A zero connect_timeout or reply_timeout disables that watchdog.
 */
typedef struct {
    ngx_str_t                  addr_text;    /* as configured, for logs */
    ngx_str_t                  host;         /* numeric IP, NUL-terminated */
    in_port_t                  port;
    ngx_str_t                  unix_path;    /* NUL-terminated, or empty */
    ngx_str_t                  user;         /* ACL user, or empty */
    ngx_str_t                  password;     /* or empty: no AUTH */
    ngx_int_t                  db;           /* SELECT db; 0: none */
    ngx_flag_t                 db_given;     /* db= seen (db=0 too) */
    ngx_msec_t                 connect_timeout;
    ngx_msec_t                 backoff_min;  /* first reconnect delay */
    ngx_msec_t                 backoff_max;  /* doubling up to this */
    ngx_uint_t                 max_inflight; /* commands awaiting a reply */
    ngx_flag_t                 native;       /* use RULES.STORE when the
                                                server has it */
    ngx_msec_t                 reply_timeout; /* no reply at all for that
                                                 long while replies are due
                                                 (Redis paused, path
                                                 broken): the connection is
                                                 dropped, its commands fail,
                                                 and it is made again */
} ngx_http_rules_redis_conf_t;


/*
 * Called once per command: with the reply (rc NGX_OK; the reply may be a
 * Redis error reply, REDIS_REPLY_ERROR) or without one (reply NULL, rc
 * NGX_ERROR: the connection failed or closed before the reply).  The
 * reply is freed by hiredis after the handler returns.
 *
 * Never called from inside ngx_http_rules_redis_evalsha(); called from
 * the event loop (a read event, a timer) or from
 * ngx_http_rules_redis_destroy().  The handler may send new commands.
 */
typedef void (*ngx_http_rules_redis_handler_pt)(void *data,
    redisReply *reply, ngx_int_t rc);


typedef struct {
    ngx_uint_t                 connects;     /* successful connections
                                                (setup replies received) */
    ngx_uint_t                 reconnects;   /* such connections lost: each
                                                is followed by reconnection
                                                attempts */
    ngx_uint_t                 noscript;     /* NOSCRIPT replies retried */
    ngx_uint_t                 native;       /* calls sent as RULES.STORE */
} ngx_http_rules_redis_stats_t;


typedef struct ngx_http_rules_redis_s  ngx_http_rules_redis_t;


/*
 * In init_process: starts connecting, never blocks (host is a numeric
 * address, resolved at configuration time, or unix_path is set).  NULL
 * only when out of memory; a failed connection is retried with back-off.
 * script and script_sha1 (its 40 hex digits) must outlive it.
 */
ngx_http_rules_redis_t *ngx_http_rules_redis_create(
    ngx_http_rules_redis_conf_t *conf, const char *script,
    const char *script_sha1, ngx_log_t *log);

/*
 * Sends EVALSHA <script_sha1> argv... (argv excludes the command and the
 * SHA: it starts with numkeys).  A NOSCRIPT reply (Redis restarted or
 * SCRIPT FLUSH) resends the same command once as EVAL with the script
 * text, which loads it again.  When conf->native is set and the server
 * has the rules Redis module loaded (redis_module/, RULES.STORE for this
 * script's SHA1: probed on every connection), the command goes as
 * RULES.STORE <script_sha1> argv... instead, the same call without Lua;
 * an error that says the server lacks it resends it once as EVAL, and
 * the connection uses the script from then on.  Returns NGX_OK when queued (the handler
 * will be called exactly once), NGX_DECLINED when the command cannot be
 * sent now (not connected after a failure, backing off, or max_inflight
 * reached: the caller fails the event at once; the handler will not be
 * called).
 *
 * Commands are accepted while the connection is made when no failure is
 * reported (ngx_http_rules_redis_accepting()), and once it is made; the
 * setup commands, queued first, are answered first.  argv and argvlen
 * are copied: they may be freed when the function returns.
 */
ngx_int_t ngx_http_rules_redis_evalsha(ngx_http_rules_redis_t *rd,
    int argc, const char **argv, const size_t *argvlen,
    ngx_http_rules_redis_handler_pt handler, void *data);

/*
 * Writes the commands queued so far now rather than at the end of the
 * event loop's pass (the write event posted when a command is queued),
 * so that Redis starts on them while the worker goes on.  Nothing when
 * no write is pending or the connection is not up.  Never calls a
 * handler, so it may be called from anywhere, a reply's handler
 * included: a write error, or what the socket did not take, is dealt
 * with by the posted write event at the end of the pass.
 */
void ngx_http_rules_redis_write_now(ngx_http_rules_redis_t *rd);

/*
 * The same, with flags: NGX_HTTP_RULES_REDIS_ASKING sends ASKING right
 * before the command, in the same write (a Redis Cluster ASK
 * redirection; again before the EVAL of a NOSCRIPT retry).
 */
#define NGX_HTTP_RULES_REDIS_ASKING  0x01

ngx_int_t ngx_http_rules_redis_evalsha_ex(ngx_http_rules_redis_t *rd,
    ngx_uint_t flags, int argc, const char **argv, const size_t *argvlen,
    ngx_http_rules_redis_handler_pt handler, void *data);

/*
 * Any other command (argv starts with its name, e.g. CLUSTER SLOTS), on
 * the same terms as evalsha, without the NOSCRIPT retry.
 */
ngx_int_t ngx_http_rules_redis_command(ngx_http_rules_redis_t *rd,
    int argc, const char **argv, const size_t *argvlen,
    ngx_http_rules_redis_handler_pt handler, void *data);

/*
 * 1 when connected and ready (AUTH/SELECT/SCRIPT LOAD sent): evalsha
 * accepts commands, up to max_inflight.
 */
ngx_uint_t ngx_http_rules_redis_ready(ngx_http_rules_redis_t *rd);

/*
 * Ready, or making its connection while no failure is reported (the
 * worker's first, or one made again after an idle close): evalsha and
 * command accept commands, which go once it is made.
 */
ngx_uint_t ngx_http_rules_redis_accepting(ngx_http_rules_redis_t *rd);
ngx_uint_t ngx_http_rules_redis_inflight(ngx_http_rules_redis_t *rd);

/* signs that Redis may have lost writes seen by the worker so far (any
 * server: a connection closed, NOSCRIPT, RULES.STORE gone) */
ngx_uint_t ngx_http_rules_redis_loss_count(void);
ngx_http_rules_redis_stats_t *ngx_http_rules_redis_stats(
    ngx_http_rules_redis_t *rd);

/*
 * In exit_process: fails every pending command (handlers get NGX_ERROR,
 * before it returns), closes the connection, deletes the timers and frees
 * everything.  The timers are cancelable and the connection does not
 * keep an exiting worker alive: a graceful shutdown waits only for the
 * requests.  No reconnection is attempted once the worker is exiting.
 */
void ngx_http_rules_redis_destroy(ngx_http_rules_redis_t *rd,
    const char *reason);

/*
 * The reply objects of the module's connections, recycled through a
 * per-worker free list (ngx_http_rules_reply.c); freed at worker exit.
 */
extern redisReplyObjectFunctions  ngx_http_rules_reply_functions;

/*
 * The reader met a reply the module refuses (one no command waits for,
 * an array longer than any the module's commands get): the connection is
 * dropped (the reply function returns NULL, so the reader fails), and
 * this is the reason logged rather than hiredis' "Out of memory".
 */
void ngx_http_rules_redis_bad_reply(redisAsyncContext *ac, const char *fmt,
    ...);

void ngx_http_rules_reply_exit(void);

/*
 * The longest line a reply may have: a status, an error's text, an
 * integer or a length (Redis' and the script's errors take a few hundred
 * bytes at most).  hiredis 0.14 looks for a line's end from its first
 * byte each time more bytes arrive: a line that does not end would cost
 * the worker a scan of all it holds on every read until the reply
 * timeout.  Bulk strings are not lines: their length is known.
 */
#define NGX_HTTP_RULES_REPLY_MAX_LINE      65536

/* checked before each read: a line is refused one read past the bound */
ngx_int_t ngx_http_rules_reply_line_check(redisReader *reader);

/*
 * Blocks set aside for hiredis 0.14's allocations that abort the worker
 * when they fail (ngx_http_rules_reply.c): NGX_OK when n are there.
 */
ngx_int_t ngx_http_rules_hi_reserve(ngx_uint_t n);
ngx_uint_t ngx_http_rules_hi_interposed(void);


#endif /* NGX_HTTP_RULES_REDIS_H */
