/*
 * hiredis' reply objects, recycled: the reader makes one redisReply per
 * element of a reply (an EVALSHA or RULES.STORE call of ten events
 * answers with an array of thirty-odd), and hiredis frees each reply
 * tree right after its callback.  With its default functions that is a
 * calloc and a free per element, a few percent of a worker with
 * SPEC.md's rules; here the structures go back to a per-worker free list
 * (at most NGX_HTTP_RULES_REPLY_FREE of them) instead.  So do the
 * strings' buffers, by size class (powers of two from 64 bytes to
 * 64 KB, at most NGX_HTTP_RULES_REPLY_STR_BYTES bytes kept per class):
 * with large rule sets each call brings back a state value of a few
 * kilobytes per key not cached, and malloc and free of those were 3-4 %
 * of a worker with the benchmark's 1000 rules.  Longer strings and the
 * element vectors are allocated as hiredis allocates them.
 *
 * The objects are hiredis' own redisReply, filled as its default
 * functions fill them (read.h documents the reader's interface), so the
 * module reads replies as before.
 */

#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_rules_redis.h"


#define NGX_HTTP_RULES_REPLY_FREE       4096

/*
 * The most elements an array reply may have: a call's reply has one per
 * item (RULES_BATCH_MAX_ITEMS) and one more, CLUSTER SLOTS one per slot
 * range (16384 at most).  hiredis 0.14 accepts counts up to 2^31 - 1,
 * and the vector is allocated before the first element arrives (16 GB
 * there): a server that is not Redis, or a corrupted stream, must not
 * make the worker do that.  And at most NGX_HTTP_RULES_REPLY_MAX_TOTAL
 * elements in all the arrays of one reply (CLUSTER SLOTS of 16384 ranges
 * with a master and five replicas each: about 540000), so that nested
 * arrays cannot multiply the first bound.
 *
 * Debian's hiredis 0.14.1 refuses a count above 2^31 - 1 itself
 * ("Multi-bulk length out of range"); an upstream 0.14.1 without that fix
 * hands createArray() such a count cut to an int (2^31 arrives negative,
 * 2^32 as 0) and then stores that many elements: so a negative count,
 * and an element beyond its array's length, are refused here too.
 */
#define NGX_HTTP_RULES_REPLY_MAX_ELEMENTS  65536
#define NGX_HTTP_RULES_REPLY_MAX_TOTAL     (1024 * 1024)

/* string buffers: classes of 2^6 .. 2^16 bytes */
#define NGX_HTTP_RULES_REPLY_STR_SHIFT  6
#define NGX_HTTP_RULES_REPLY_STR_CLASSES  11
#define NGX_HTTP_RULES_REPLY_STR_BYTES  (128 * 1024)
/* the size of class c's buffers */
#define NGX_HTTP_RULES_REPLY_STR_SIZE(c)                                     \
    ((size_t) 1 << (NGX_HTTP_RULES_REPLY_STR_SHIFT + (c)))


static redisReply  *ngx_http_rules_reply_free_list;
static ngx_uint_t   ngx_http_rules_reply_nfree;

/* free buffers of each class, chained through their first bytes */
static void        *ngx_http_rules_reply_str_free[
                        NGX_HTTP_RULES_REPLY_STR_CLASSES];
static size_t       ngx_http_rules_reply_str_kept[
                        NGX_HTTP_RULES_REPLY_STR_CLASSES];


static void *ngx_http_rules_reply_string(const redisReadTask *task,
    char *str, size_t len);
static void *ngx_http_rules_reply_array(const redisReadTask *task,
    int elements);
static void *ngx_http_rules_reply_integer(const redisReadTask *task,
    long long value);
static void *ngx_http_rules_reply_nil(const redisReadTask *task);
static void ngx_http_rules_reply_free(void *obj);
static ngx_int_t ngx_http_rules_reply_fits(const redisReadTask *task);
static ngx_int_t ngx_http_rules_reply_str_class(size_t size);
static char *ngx_http_rules_reply_str_alloc(size_t size);
static void ngx_http_rules_reply_str_free_buf(char *buf, size_t size);


redisReplyObjectFunctions  ngx_http_rules_reply_functions = {
    ngx_http_rules_reply_string,
    ngx_http_rules_reply_array,
    ngx_http_rules_reply_integer,
    ngx_http_rules_reply_nil,
    ngx_http_rules_reply_free
};


/* A zeroed reply of the task's type, linked into its parent array. */
static redisReply *
ngx_http_rules_reply_create(const redisReadTask *task, int type)
{
    redisReply         *r, *parent;
    redisAsyncContext  *ac;

    /*
     * A reply that no command waits for (a server that is not Redis, a
     * proxy out of step): hiredis would assert, and the worker abort.
     * An error reply it handles itself (it drops the connection with the
     * error's text); any other fails the reader, so hiredis drops the
     * connection, with the reason set here.  The reader's privdata is
     * the context (ngx_http_rules_redis_connect()).
     */

    if (ngx_http_rules_reply_fits(task) != NGX_OK) {
        return NULL;
    }

    if (task->parent == NULL && type != REDIS_REPLY_ERROR) {
        ac = task->privdata;

        if (ac != NULL && ac->replies.head == NULL) {
            ngx_http_rules_redis_bad_reply(ac, "a reply to no command (not "
                                           "a Redis server, or a proxy "
                                           "out of step)");
            return NULL;
        }
    }

    r = ngx_http_rules_reply_free_list;

    if (r) {
        /* the free list is chained through the element field */
        ngx_http_rules_reply_free_list = (redisReply *) r->element;
        ngx_http_rules_reply_nfree--;

    } else {
        r = malloc(sizeof(redisReply));
        if (r == NULL) {
            return NULL;
        }
    }

    ngx_memzero(r, sizeof(redisReply));
    r->type = type;

    if (task->parent) {
        parent = task->parent->obj;
        parent->element[task->idx] = r;
    }

    return r;
}


/*
 * The task's place in its parent array is within the array's vector: an
 * element beyond the count createArray() was given (a hiredis without
 * Debian's fix cut a count of 2^32 or more to an int) is refused.
 */
static ngx_int_t
ngx_http_rules_reply_fits(const redisReadTask *task)
{
    redisReply  *parent;

    if (task->parent == NULL) {
        return NGX_OK;
    }

    parent = task->parent->obj;

    if (parent == NULL || task->idx < 0
        || (size_t) task->idx >= parent->elements)
    {
        ngx_http_rules_redis_bad_reply(task->privdata, "an array reply with "
                                       "more elements than its length "
                                       "(a length of 2^32 or more)");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * NGX_OK unless the reader's unread bytes begin with a line longer than
 * NGX_HTTP_RULES_REPLY_MAX_LINE that has not ended.  Its first bytes are
 * those of the line hiredis is reading (a bulk string's too: the reader
 * keeps its length line until the whole string is there).
 */
ngx_int_t
ngx_http_rules_reply_line_check(redisReader *reader)
{
    u_char  *p, *last;

    if (reader->len - reader->pos <= NGX_HTTP_RULES_REPLY_MAX_LINE + 2) {
        return NGX_OK;
    }

    p = (u_char *) reader->buf + reader->pos;
    last = p + NGX_HTTP_RULES_REPLY_MAX_LINE + 2;

    for ( ;; ) {
        p = ngx_strlchr(p, last - 1, '\r');

        if (p == NULL) {
            return NGX_ERROR;
        }

        if (p[1] == '\n') {
            return NGX_OK;
        }

        p++;
    }
}


static void *
ngx_http_rules_reply_string(const redisReadTask *task, char *str, size_t len)
{
    char        *buf;
    redisReply  *r;

    if (task->type != REDIS_REPLY_STRING
        && len > NGX_HTTP_RULES_REPLY_MAX_LINE)
    {
        ngx_http_rules_redis_bad_reply(task->privdata, "a reply line of %uz "
                                       "bytes (the module takes %d at "
                                       "most)", len,
                                       NGX_HTTP_RULES_REPLY_MAX_LINE);
        return NULL;
    }

    buf = ngx_http_rules_reply_str_alloc(len + 1);
    if (buf == NULL) {
        return NULL;
    }

    r = ngx_http_rules_reply_create(task, task->type);
    if (r == NULL) {
        ngx_http_rules_reply_str_free_buf(buf, len + 1);
        return NULL;
    }

    ngx_memcpy(buf, str, len);
    buf[len] = '\0';
    r->str = buf;
    r->len = len;

    return r;
}


static void *
ngx_http_rules_reply_array(const redisReadTask *task, int elements)
{
    redisReply          **element;
    redisReply           *r, *root;
    redisReadTask        *t;

    element = NULL;

    if (elements < 0) {
        /* a hiredis without Debian's fix cut 2^31 or more to an int */
        ngx_http_rules_redis_bad_reply(task->privdata, "an array reply of "
                                       "2^31 or more elements (the module "
                                       "takes %d at most)",
                                       NGX_HTTP_RULES_REPLY_MAX_ELEMENTS);
        return NULL;
    }

    if (elements > NGX_HTTP_RULES_REPLY_MAX_ELEMENTS) {
        ngx_http_rules_redis_bad_reply(task->privdata, "an array reply of %d "
                                       "elements (the module takes %d at "
                                       "most)", elements,
                                       NGX_HTTP_RULES_REPLY_MAX_ELEMENTS);
        return NULL;
    }

    /*
     * The elements of every array of the reply, counted in the root
     * array's integer field (an array's own is not used otherwise).
     */

    root = NULL;

    for (t = task->parent; t; t = t->parent) {
        root = t->obj;
    }

    if (root) {
        if (root->integer + elements > NGX_HTTP_RULES_REPLY_MAX_TOTAL) {
            ngx_http_rules_redis_bad_reply(task->privdata, "a reply of more "
                                           "than %d elements in all its "
                                           "arrays",
                                           NGX_HTTP_RULES_REPLY_MAX_TOTAL);
            return NULL;
        }

        root->integer += elements;
    }

    if (elements > 0) {
        element = calloc((size_t) elements, sizeof(redisReply *));
        if (element == NULL) {
            return NULL;
        }
    }

    r = ngx_http_rules_reply_create(task, REDIS_REPLY_ARRAY);
    if (r == NULL) {
        free(element);
        return NULL;
    }

    r->element = element;
    r->elements = (size_t) elements;

    if (root == NULL) {
        r->integer = elements;
    }

    return r;
}


static void *
ngx_http_rules_reply_integer(const redisReadTask *task, long long value)
{
    redisReply  *r;

    r = ngx_http_rules_reply_create(task, REDIS_REPLY_INTEGER);
    if (r == NULL) {
        return NULL;
    }

    r->integer = value;

    return r;
}


static void *
ngx_http_rules_reply_nil(const redisReadTask *task)
{
    return ngx_http_rules_reply_create(task, REDIS_REPLY_NIL);
}


/* A reply and, for an array, its elements (hiredis frees trees only). */
static void
ngx_http_rules_reply_free(void *obj)
{
    size_t       i;
    redisReply  *r = obj;

    if (r == NULL) {
        return;
    }

    if (r->type == REDIS_REPLY_ARRAY) {
        for (i = 0; i < r->elements; i++) {
            ngx_http_rules_reply_free(r->element[i]);
        }
    }

    free(r->element);

    if (r->str) {
        ngx_http_rules_reply_str_free_buf(r->str, r->len + 1);
    }

    if (ngx_http_rules_reply_nfree >= NGX_HTTP_RULES_REPLY_FREE) {
        free(r);
        return;
    }

    r->element = (redisReply **) ngx_http_rules_reply_free_list;
    ngx_http_rules_reply_free_list = r;
    ngx_http_rules_reply_nfree++;
}


/* The class of a buffer of size bytes; -1: none (malloc and free). */
static ngx_int_t
ngx_http_rules_reply_str_class(size_t size)
{
    ngx_int_t  c;

    if (size > NGX_HTTP_RULES_REPLY_STR_SIZE(NGX_HTTP_RULES_REPLY_STR_CLASSES
                                             - 1))
    {
        return -1;
    }

    for (c = 0; size > NGX_HTTP_RULES_REPLY_STR_SIZE(c); c++) { /* void */ }

    return c;
}


static char *
ngx_http_rules_reply_str_alloc(size_t size)
{
    void       *buf;
    ngx_int_t   c;

    c = ngx_http_rules_reply_str_class(size);

    if (c < 0) {
        return malloc(size);
    }

    buf = ngx_http_rules_reply_str_free[c];

    if (buf) {
        ngx_http_rules_reply_str_free[c] = *(void **) buf;
        ngx_http_rules_reply_str_kept[c] -= NGX_HTTP_RULES_REPLY_STR_SIZE(c);
        return buf;
    }

    return malloc(NGX_HTTP_RULES_REPLY_STR_SIZE(c));
}


/* A buffer from ngx_http_rules_reply_str_alloc(size), kept or freed. */
static void
ngx_http_rules_reply_str_free_buf(char *buf, size_t size)
{
    size_t     csize;
    ngx_int_t  c;

    c = ngx_http_rules_reply_str_class(size);

    if (c < 0) {
        free(buf);
        return;
    }

    csize = NGX_HTTP_RULES_REPLY_STR_SIZE(c);

    if (ngx_http_rules_reply_str_kept[c] + csize
        > NGX_HTTP_RULES_REPLY_STR_BYTES)
    {
        free(buf);
        return;
    }

    *(void **) buf = ngx_http_rules_reply_str_free[c];
    ngx_http_rules_reply_str_free[c] = buf;
    ngx_http_rules_reply_str_kept[c] += csize;
}


/*
 * hiredis 0.14.1 aborts the worker when one of a few small allocations
 * fails (hi_malloc() and hi_strdup(), its alloc.c, after CVE-2020-7105):
 * the two dictionaries of every async context (redisAsyncConnect()),
 * the two iterators over them when a context is freed, and the copy of
 * the host or socket path at a connect.  It calls them through the PLT,
 * so these definitions take the place of its own: when malloc() fails
 * they hand out a block set aside beforehand (malloc()ed, so that
 * hiredis frees it with free()), and a connection is attempted only
 * while the blocks set aside cover it and the end of every context
 * (ngx_http_rules_hi_reserve()).  Its other allocations fail as usual.
 */

#define NGX_HTTP_RULES_HI_RESERVE  8        /* at least: 1 KB */
#define NGX_HTTP_RULES_HI_BLOCK    128      /* a dict, a socket path */

static void        *ngx_http_rules_hi_blocks;   /* each links the next */
static ngx_uint_t   ngx_http_rules_hi_nblocks;
static ngx_uint_t   ngx_http_rules_hi_calls;


static void *
ngx_http_rules_hi_block(size_t size)
{
    void  *p;

    if (size > NGX_HTTP_RULES_HI_BLOCK || ngx_http_rules_hi_nblocks == 0) {
        /* as hiredis' own */
        abort();
    }

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "rules redis: out of memory in hiredis, a block set "
                  "aside used");

    p = ngx_http_rules_hi_blocks;
    ngx_http_rules_hi_blocks = *(void **) p;
    ngx_http_rules_hi_nblocks--;

    return p;
}


void *
hi_malloc(size_t size)
{
    void  *p;

    ngx_http_rules_hi_calls++;

    p = malloc(size);

    return p ? p : ngx_http_rules_hi_block(size);
}


char *
hi_strdup(const char *str)
{
    char    *p;
    size_t   len;

    ngx_http_rules_hi_calls++;

    p = strdup(str);

    if (p == NULL) {
        len = ngx_strlen(str) + 1;
        p = ngx_http_rules_hi_block(len);
        ngx_memcpy(p, str, len);
    }

    return p;
}


/*
 * Whether hiredis calls the functions above: not when another object
 * loaded before the module (another module, a preloaded library) gave
 * hiredis its own first.  Asked once a context was made (it calls
 * hi_malloc() for its dictionaries).
 */
ngx_uint_t
ngx_http_rules_hi_interposed(void)
{
    return ngx_http_rules_hi_calls != 0;
}


/*
 * Tops up the blocks set aside to n, and to NGX_HTTP_RULES_HI_RESERVE at
 * least; NGX_OK: there are n of them.  Kept until the worker exits.
 */
ngx_int_t
ngx_http_rules_hi_reserve(ngx_uint_t n)
{
    void        *p;
    ngx_uint_t   want;

    want = ngx_max(n, NGX_HTTP_RULES_HI_RESERVE);

    while (ngx_http_rules_hi_nblocks < want) {
        p = malloc(NGX_HTTP_RULES_HI_BLOCK);
        if (p == NULL) {
            break;
        }

        *(void **) p = ngx_http_rules_hi_blocks;
        ngx_http_rules_hi_blocks = p;
        ngx_http_rules_hi_nblocks++;
    }

    return ngx_http_rules_hi_nblocks >= n ? NGX_OK : NGX_DECLINED;
}


void
ngx_http_rules_reply_exit(void)
{
    void        *buf;
    ngx_uint_t   c;
    redisReply  *r;

    for (c = 0; c < NGX_HTTP_RULES_REPLY_STR_CLASSES; c++) {
        while (ngx_http_rules_reply_str_free[c]) {
            buf = ngx_http_rules_reply_str_free[c];
            ngx_http_rules_reply_str_free[c] = *(void **) buf;
            free(buf);
        }

        ngx_http_rules_reply_str_kept[c] = 0;
    }

    while (ngx_http_rules_reply_free_list) {
        r = ngx_http_rules_reply_free_list;
        ngx_http_rules_reply_free_list = (redisReply *) r->element;
        free(r);
    }

    ngx_http_rules_reply_nfree = 0;

    while (ngx_http_rules_hi_blocks) {
        buf = ngx_http_rules_hi_blocks;
        ngx_http_rules_hi_blocks = *(void **) buf;
        free(buf);
    }

    ngx_http_rules_hi_nblocks = 0;
}
