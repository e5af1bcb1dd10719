/*
 * A persistent, non-blocking Redis connection per worker: hiredis' async
 * API driven by nginx's event loop and timers.
 *
 * hiredis owns the socket and its buffers; an ngx_connection_t wraps the
 * descriptor so that epoll (or kqueue) tells hiredis when to read and
 * write.  Events are level-triggered: hiredis reads one buffer per call.
 * Commands from every request of an event loop iteration are written in
 * one go when the socket becomes writable: pipelining for free.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_rules_redis.h"


typedef enum {
    NGX_HTTP_RULES_REDIS_DISCONNECTED = 0,
    NGX_HTTP_RULES_REDIS_CONNECTING,
    NGX_HTTP_RULES_REDIS_CONNECTED
} ngx_http_rules_redis_state_e;


struct ngx_http_rules_redis_s {
    ngx_http_rules_redis_conf_t   *conf;
    const char                    *script;
    size_t                         script_len;
    const char                    *sha1;
    ngx_log_t                     *log;

    redisAsyncContext             *ac;
    ngx_connection_t              *conn;
    ngx_uint_t                     state;

    ngx_event_t                    connect_timer;
    ngx_event_t                    reconnect_timer;
    ngx_event_t                    reply_timer;

    ngx_msec_t                     backoff;
    ngx_uint_t                     failures;    /* attempts since success */
    ngx_uint_t                     inflight;
    ngx_uint_t                     destroying;

    ngx_http_rules_redis_stats_t   stats;
};


/* One command: the caller's handler, and its arguments for a retry. */
typedef struct {
    ngx_http_rules_redis_t            *rd;
    ngx_http_rules_redis_handler_pt    handler;
    void                              *data;
    ngx_uint_t                         retried;
    int                                argc;     /* with command and sha */
    const char                       **argv;
    size_t                            *argvlen;
} ngx_http_rules_redis_cmd_t;


static void ngx_http_rules_redis_connect(ngx_http_rules_redis_t *rd);
static void ngx_http_rules_redis_lost(ngx_http_rules_redis_t *rd);
static void ngx_http_rules_redis_schedule(ngx_http_rules_redis_t *rd);
static void ngx_http_rules_redis_connect_timeout(ngx_event_t *ev);
static void ngx_http_rules_redis_reconnect(ngx_event_t *ev);
static void ngx_http_rules_redis_reply_timeout(ngx_event_t *ev);
static void ngx_http_rules_redis_on_connect(const redisAsyncContext *ac,
    int status);
static void ngx_http_rules_redis_on_disconnect(const redisAsyncContext *ac,
    int status);
static void ngx_http_rules_redis_setup_reply(redisAsyncContext *ac,
    void *r, void *privdata);
static void ngx_http_rules_redis_reply(redisAsyncContext *ac, void *r,
    void *privdata);
static void ngx_http_rules_redis_done(ngx_http_rules_redis_cmd_t *cmd,
    redisReply *reply, ngx_int_t rc);
static void ngx_http_rules_redis_read_handler(ngx_event_t *ev);
static void ngx_http_rules_redis_write_handler(ngx_event_t *ev);
static void ngx_http_rules_redis_add_read(void *privdata);
static void ngx_http_rules_redis_del_read(void *privdata);
static void ngx_http_rules_redis_add_write(void *privdata);
static void ngx_http_rules_redis_del_write(void *privdata);
static void ngx_http_rules_redis_cleanup(void *privdata);


/* setup commands' privdata: what they are, for the log */
static char  ngx_http_rules_redis_auth[] = "AUTH";
static char  ngx_http_rules_redis_select[] = "SELECT";
static char  ngx_http_rules_redis_load[] = "SCRIPT LOAD";


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
    rd->script = script;
    rd->script_len = ngx_strlen(script);
    rd->sha1 = script_sha1;
    rd->log = log;
    rd->backoff = conf->backoff_min;

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

    ngx_http_rules_redis_connect(rd);

    return rd;
}


static void
ngx_http_rules_redis_connect(ngx_http_rules_redis_t *rd)
{
    const char                    *argv[3];
    size_t                         argvlen[3];
    char                           db[NGX_INT_T_LEN + 1];
    redisAsyncContext             *ac;
    ngx_connection_t              *c;
    ngx_http_rules_redis_conf_t   *conf;

    conf = rd->conf;

    if (conf->unix_path.len) {
        ac = redisAsyncConnectUnix((char *) conf->unix_path.data);

    } else {
        /* a numeric address: no name resolution in the worker */
        ac = redisAsyncConnect((char *) conf->host.data, (int) conf->port);
    }

    if (ac == NULL) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "rules redis %V: cannot allocate a connection",
                      &conf->addr_text);
        ngx_http_rules_redis_schedule(rd);
        return;
    }

    if (ac->err) {
        if (rd->failures++ == 0 || rd->backoff >= conf->backoff_max) {
            ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                          "rules redis %V: connect failed: %s",
                          &conf->addr_text, ac->errstr);
        }

        redisAsyncFree(ac);
        ngx_http_rules_redis_schedule(rd);
        return;
    }

    c = ngx_get_connection(ac->c.fd, rd->log);
    if (c == NULL) {
        redisAsyncFree(ac);
        ngx_http_rules_redis_schedule(rd);
        return;
    }

    c->data = rd;
    c->read->handler = ngx_http_rules_redis_read_handler;
    c->write->handler = ngx_http_rules_redis_write_handler;
    c->read->log = rd->log;
    c->write->log = rd->log;

    rd->ac = ac;
    rd->conn = c;
    rd->state = NGX_HTTP_RULES_REDIS_CONNECTING;

    ac->data = rd;
    ac->ev.data = rd;
    ac->ev.addRead = ngx_http_rules_redis_add_read;
    ac->ev.delRead = ngx_http_rules_redis_del_read;
    ac->ev.addWrite = ngx_http_rules_redis_add_write;
    ac->ev.delWrite = ngx_http_rules_redis_del_write;
    ac->ev.cleanup = ngx_http_rules_redis_cleanup;

    redisAsyncSetConnectCallback(ac, ngx_http_rules_redis_on_connect);
    redisAsyncSetDisconnectCallback(ac, ngx_http_rules_redis_on_disconnect);

    /*
     * Setup commands are buffered now and go first once connected; the
     * events queued behind them are answered in order.
     */

    if (conf->password.len) {
        if (conf->user.len) {
            argv[1] = (char *) conf->user.data;
            argvlen[1] = conf->user.len;
            argv[2] = (char *) conf->password.data;
            argvlen[2] = conf->password.len;

        } else {
            argv[1] = (char *) conf->password.data;
            argvlen[1] = conf->password.len;
        }

        argv[0] = "AUTH";
        argvlen[0] = 4;

        redisAsyncCommandArgv(ac, ngx_http_rules_redis_setup_reply,
                              ngx_http_rules_redis_auth,
                              conf->user.len ? 3 : 2, argv, argvlen);
    }

    if (conf->db) {
        argv[0] = "SELECT";
        argvlen[0] = 6;
        argv[1] = db;
        argvlen[1] = ngx_sprintf((u_char *) db, "%i", conf->db)
                     - (u_char *) db;

        redisAsyncCommandArgv(ac, ngx_http_rules_redis_setup_reply,
                              ngx_http_rules_redis_select, 2, argv, argvlen);
    }

    argv[0] = "SCRIPT";
    argvlen[0] = 6;
    argv[1] = "LOAD";
    argvlen[1] = 4;
    argv[2] = rd->script;
    argvlen[2] = rd->script_len;

    redisAsyncCommandArgv(ac, ngx_http_rules_redis_setup_reply,
                          ngx_http_rules_redis_load, 3, argv, argvlen);

    ngx_add_timer(&rd->connect_timer, conf->connect_timeout);
}


static void
ngx_http_rules_redis_on_connect(const redisAsyncContext *ac, int status)
{
    ngx_http_rules_redis_t  *rd = ac->data;

    if (rd->connect_timer.timer_set) {
        ngx_del_timer(&rd->connect_timer);
    }

    if (status != REDIS_OK) {
        if (rd->failures++ == 0 || rd->backoff >= rd->conf->backoff_max) {
            ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                          "rules redis %V: connect failed: %s",
                          &rd->conf->addr_text,
                          ac->errstr ? ac->errstr : "unknown error");
        }

        /* hiredis frees the context after this callback */
        ngx_http_rules_redis_lost(rd);
        return;
    }

    rd->state = NGX_HTTP_RULES_REDIS_CONNECTED;
    rd->stats.connects++;

    if (rd->failures) {
        ngx_log_error(NGX_LOG_WARN, rd->log, 0,
                      "rules redis %V: connected again after %ui attempts",
                      &rd->conf->addr_text, rd->failures);

    } else {
        ngx_log_error(NGX_LOG_INFO, rd->log, 0,
                      "rules redis %V: connected", &rd->conf->addr_text);
    }

    rd->failures = 0;
    rd->backoff = rd->conf->backoff_min;
}


static void
ngx_http_rules_redis_on_disconnect(const redisAsyncContext *ac, int status)
{
    ngx_http_rules_redis_t  *rd = ac->data;

    if (rd->ac != ac) {
        /* already dropped on purpose (timeout) */
        return;
    }

    if (!rd->destroying) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "rules redis %V: connection lost: %s",
                      &rd->conf->addr_text,
                      (status == REDIS_OK || ac->errstr == NULL
                       || ac->errstr[0] == '\0')
                      ? "closed" : ac->errstr);
        rd->stats.reconnects++;
    }

    ngx_http_rules_redis_lost(rd);
}


/* The context is gone or going: forget it and plan a new connection. */
static void
ngx_http_rules_redis_lost(ngx_http_rules_redis_t *rd)
{
    rd->ac = NULL;
    rd->state = NGX_HTTP_RULES_REDIS_DISCONNECTED;

    if (rd->connect_timer.timer_set) {
        ngx_del_timer(&rd->connect_timer);
    }

    if (rd->reply_timer.timer_set) {
        ngx_del_timer(&rd->reply_timer);
    }

    ngx_http_rules_redis_schedule(rd);
}


static void
ngx_http_rules_redis_schedule(ngx_http_rules_redis_t *rd)
{
    if (rd->destroying || ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    if (rd->reconnect_timer.timer_set) {
        return;
    }

    ngx_add_timer(&rd->reconnect_timer, rd->backoff);

    rd->backoff *= 2;

    if (rd->backoff > rd->conf->backoff_max) {
        rd->backoff = rd->conf->backoff_max;
    }
}


static void
ngx_http_rules_redis_reconnect(ngx_event_t *ev)
{
    ngx_http_rules_redis_t  *rd = ev->data;

    if (rd->ac == NULL && !rd->destroying) {
        ngx_http_rules_redis_connect(rd);
    }
}


static void
ngx_http_rules_redis_connect_timeout(ngx_event_t *ev)
{
    ngx_http_rules_redis_t  *rd = ev->data;

    redisAsyncContext  *ac;

    if (rd->failures++ == 0 || rd->backoff >= rd->conf->backoff_max) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "rules redis %V: connect timed out after %M ms",
                      &rd->conf->addr_text, rd->conf->connect_timeout);
    }

    ac = rd->ac;

    /* not connected: no disconnect callback; pending commands fail */
    ngx_http_rules_redis_lost(rd);

    if (ac) {
        redisAsyncFree(ac);
    }
}


/*
 * No reply for reply_timeout while commands wait: the server is paused
 * or the path is broken.  The connection is dropped (its commands fail)
 * and made again, so that memory stays bounded and service resumes.
 */
static void
ngx_http_rules_redis_reply_timeout(ngx_event_t *ev)
{
    ngx_http_rules_redis_t  *rd = ev->data;

    redisAsyncContext  *ac;

    if (rd->ac == NULL || rd->inflight == 0) {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                  "rules redis %V: no reply for %M ms with %ui commands "
                  "waiting, reconnecting", &rd->conf->addr_text,
                  rd->conf->reply_timeout, rd->inflight);

    ac = rd->ac;
    rd->stats.reconnects++;

    /* forgotten first: the disconnect callback finds nothing to do */
    ngx_http_rules_redis_lost(rd);
    redisAsyncFree(ac);
}


static void
ngx_http_rules_redis_setup_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    redisReply              *reply = r;
    ngx_http_rules_redis_t  *rd = ac->data;
    const char              *what = privdata;

    if (reply == NULL) {
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "rules redis %V: %s failed: %*s",
                      &rd->conf->addr_text, what, (size_t) reply->len,
                      reply->str);

        if (what != ngx_http_rules_redis_load) {
            /* without AUTH or SELECT nothing can work: start again */
            redisAsyncFree(ac);
        }

        return;
    }

    if (what == ngx_http_rules_redis_load
        && (reply->type != REDIS_REPLY_STRING || reply->len != 40
            || ngx_strncmp(reply->str, rd->sha1, 40) != 0))
    {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "rules redis %V: SCRIPT LOAD returned an unexpected "
                      "digest", &rd->conf->addr_text);
    }
}


ngx_int_t
ngx_http_rules_redis_evalsha(ngx_http_rules_redis_t *rd, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_rules_redis_handler_pt handler, void *data)
{
    u_char                      *p;
    size_t                       size;
    ngx_int_t                    i;
    ngx_http_rules_redis_cmd_t  *cmd;

    if (rd->ac == NULL || rd->state == NGX_HTTP_RULES_REDIS_DISCONNECTED
        || rd->inflight >= rd->conf->max_inflight)
    {
        return NGX_DECLINED;
    }

    /* one block: the command, its argv and a copy of the arguments */

    size = sizeof(ngx_http_rules_redis_cmd_t)
           + (argc + 2) * (sizeof(char *) + sizeof(size_t));

    for (i = 0; i < argc; i++) {
        size += argvlen[i];
    }

    cmd = ngx_alloc(size, rd->log);
    if (cmd == NULL) {
        return NGX_DECLINED;
    }

    cmd->rd = rd;
    cmd->handler = handler;
    cmd->data = data;
    cmd->retried = 0;
    cmd->argc = argc + 2;
    cmd->argv = (const char **) (cmd + 1);
    cmd->argvlen = (size_t *) (cmd->argv + argc + 2);

    cmd->argv[0] = "EVALSHA";
    cmd->argvlen[0] = 7;
    cmd->argv[1] = rd->sha1;
    cmd->argvlen[1] = 40;

    p = (u_char *) (cmd->argvlen + argc + 2);

    for (i = 0; i < argc; i++) {
        cmd->argv[i + 2] = (char *) p;
        cmd->argvlen[i + 2] = argvlen[i];
        p = ngx_cpymem(p, argv[i], argvlen[i]);
    }

    if (redisAsyncCommandArgv(rd->ac, ngx_http_rules_redis_reply, cmd,
                              cmd->argc, cmd->argv, cmd->argvlen)
        != REDIS_OK)
    {
        ngx_free(cmd);
        return NGX_DECLINED;
    }

    if (rd->inflight++ == 0) {
        ngx_add_timer(&rd->reply_timer, rd->conf->reply_timeout);
    }

    return NGX_OK;
}


static void
ngx_http_rules_redis_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    redisReply                  *reply = r;
    ngx_http_rules_redis_cmd_t  *cmd = privdata;
    ngx_http_rules_redis_t      *rd = cmd->rd;

    if (reply == NULL) {
        ngx_http_rules_redis_done(cmd, NULL, NGX_ERROR);
        return;
    }

    /* a reply: the server is alive, the watchdog starts again */

    if (rd->inflight > 1) {
        ngx_add_timer(&rd->reply_timer, rd->conf->reply_timeout);
    }

    if (reply->type == REDIS_REPLY_ERROR && !cmd->retried
        && reply->len >= 8 && ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0)
    {
        /* Redis restarted or SCRIPT FLUSH: EVAL runs and loads it */

        rd->stats.noscript++;
        cmd->retried = 1;
        cmd->argv[0] = "EVAL";
        cmd->argvlen[0] = 4;
        cmd->argv[1] = rd->script;
        cmd->argvlen[1] = rd->script_len;

        ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                      "rules redis %V: script not loaded (NOSCRIPT), "
                      "sending it again", &rd->conf->addr_text);

        if (redisAsyncCommandArgv(ac, ngx_http_rules_redis_reply, cmd,
                                  cmd->argc, cmd->argv, cmd->argvlen)
            == REDIS_OK)
        {
            return;
        }

        ngx_http_rules_redis_done(cmd, NULL, NGX_ERROR);
        return;
    }

    ngx_http_rules_redis_done(cmd, reply, NGX_OK);
}


static void
ngx_http_rules_redis_done(ngx_http_rules_redis_cmd_t *cmd,
    redisReply *reply, ngx_int_t rc)
{
    ngx_http_rules_redis_t  *rd = cmd->rd;

    if (--rd->inflight == 0 && rd->reply_timer.timer_set) {
        ngx_del_timer(&rd->reply_timer);
    }

    cmd->handler(cmd->data, reply, rc);
    ngx_free(cmd);
}


ngx_uint_t
ngx_http_rules_redis_ready(ngx_http_rules_redis_t *rd)
{
    return rd->state == NGX_HTTP_RULES_REDIS_CONNECTED;
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
ngx_http_rules_redis_destroy(ngx_http_rules_redis_t *rd)
{
    rd->destroying = 1;

    if (rd->reconnect_timer.timer_set) {
        ngx_del_timer(&rd->reconnect_timer);
    }

    if (rd->connect_timer.timer_set) {
        ngx_del_timer(&rd->connect_timer);
    }

    if (rd->reply_timer.timer_set) {
        ngx_del_timer(&rd->reply_timer);
    }

    if (rd->ac) {
        /* pending commands are called back with NGX_ERROR */
        redisAsyncFree(rd->ac);
        rd->ac = NULL;
    }

    ngx_free(rd);
}


/* ---- the event loop adapter ---------------------------------------- */


static void
ngx_http_rules_redis_read_handler(ngx_event_t *ev)
{
    ngx_connection_t        *c = ev->data;
    ngx_http_rules_redis_t  *rd = c->data;

    if (rd->ac) {
        redisAsyncHandleRead(rd->ac);
    }
}


static void
ngx_http_rules_redis_write_handler(ngx_event_t *ev)
{
    ngx_connection_t        *c = ev->data;
    ngx_http_rules_redis_t  *rd = c->data;

    if (rd->ac) {
        redisAsyncHandleWrite(rd->ac);
    }
}


static void
ngx_http_rules_redis_add_read(void *privdata)
{
    ngx_http_rules_redis_t  *rd = privdata;

    if (rd->conn && !rd->conn->read->active) {
        if (ngx_add_event(rd->conn->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ALERT, rd->log, 0,
                          "rules redis: cannot add a read event");
        }
    }
}


static void
ngx_http_rules_redis_del_read(void *privdata)
{
    ngx_http_rules_redis_t  *rd = privdata;

    if (rd->conn && rd->conn->read->active) {
        (void) ngx_del_event(rd->conn->read, NGX_READ_EVENT, 0);
    }
}


static void
ngx_http_rules_redis_add_write(void *privdata)
{
    ngx_http_rules_redis_t  *rd = privdata;

    if (rd->conn && !rd->conn->write->active) {
        if (ngx_add_event(rd->conn->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ALERT, rd->log, 0,
                          "rules redis: cannot add a write event");
        }
    }
}


static void
ngx_http_rules_redis_del_write(void *privdata)
{
    ngx_http_rules_redis_t  *rd = privdata;

    if (rd->conn && rd->conn->write->active) {
        (void) ngx_del_event(rd->conn->write, NGX_WRITE_EVENT, 0);
    }
}


/* hiredis frees the context and will close the descriptor itself. */
static void
ngx_http_rules_redis_cleanup(void *privdata)
{
    ngx_http_rules_redis_t  *rd = privdata;

    ngx_connection_t  *c;

    c = rd->conn;

    if (c == NULL) {
        return;
    }

    rd->conn = NULL;

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }

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
    c->fd = (ngx_socket_t) -1;
}
