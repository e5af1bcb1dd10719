/*
 * The part of the Redis module API (Redis >= 6.2, documented at
 * redis.io/docs/reference/modules/modules-api-ref) that RULES.STORE uses.
 * Debian ships no redismodule.h, so the few entry points are declared
 * here, by their documented signatures.
 *
 * Redis hands a module its functions by name: the first member of the
 * context given to RedisModule_OnLoad is a lookup function,
 * int (*)(const char *name, void *ptr), that stores the function called
 * "RedisModule_<name>" into *ptr.  rules_redis_api_init() fills the
 * table below through it.
 */

#ifndef RULES_REDIS_API_H
#define RULES_REDIS_API_H

#include <stddef.h>


#define RM_OK                    0
#define RM_ERR                   1
#define RM_APIVER_1              1

#define RM_READ                  (1 << 0)
#define RM_WRITE                 (1 << 1)

#define RM_KEYTYPE_EMPTY         0
#define RM_KEYTYPE_STRING        1

#define RM_NO_EXPIRE             (-1)

#define RM_CTX_FLAGS_SLAVE       (1 << 3)
#define RM_CTX_FLAGS_AOF         (1 << 6)

#define RM_CMDFILTER_NOSELF      (1 << 0)

#define RM_EVENT_ROLE_CHANGED    0
#define RM_EVENT_LOADING         3
#define RM_EVENT_CRON_LOOP       8

#define RM_REPLY_ARRAY           3

#define RM_NOTIFY_GENERIC        (1 << 2)
#define RM_NOTIFY_STRING         (1 << 3)


typedef struct RedisModuleCtx     RedisModuleCtx;
typedef struct RedisModuleKey     RedisModuleKey;
typedef struct RedisModuleString  RedisModuleString;
typedef struct RedisModuleServerInfoData  RedisModuleServerInfoData;
typedef struct RedisModuleCommandFilterCtx  RedisModuleCommandFilterCtx;
typedef struct RedisModuleCommandFilter  RedisModuleCommandFilter;
typedef struct RedisModuleInfoCtx  RedisModuleInfoCtx;
typedef struct RedisModuleCallReply  RedisModuleCallReply;

typedef struct {
    unsigned long long  id;
    unsigned long long  dataver;
} rules_rm_event_t;

typedef void (*rules_rm_filter_pt)(RedisModuleCommandFilterCtx *fctx);
typedef void (*rules_rm_event_pt)(RedisModuleCtx *ctx, rules_rm_event_t eid,
    unsigned long long subevent, void *data);
typedef void (*rules_rm_info_pt)(RedisModuleInfoCtx *ctx,
    int for_crash_report);

typedef int (*rules_rm_cmd_pt)(RedisModuleCtx *ctx, RedisModuleString **argv,
    int argc);


typedef struct {
    int (*create_command)(RedisModuleCtx *ctx, const char *name,
        rules_rm_cmd_pt func, const char *flags, int first, int last,
        int step);
    void (*set_module_attribs)(RedisModuleCtx *ctx, const char *name,
        int ver, int apiver);
    int (*is_module_name_busy)(const char *name);
    void (*log)(RedisModuleCtx *ctx, const char *level, const char *fmt,
        ...);

    int (*is_keys_position_request)(RedisModuleCtx *ctx);
    void (*key_at_pos)(RedisModuleCtx *ctx, int pos);

    const char *(*string_ptr_len)(const RedisModuleString *s, size_t *len);

    void *(*open_key)(RedisModuleCtx *ctx, RedisModuleString *name,
        int mode);
    void (*close_key)(RedisModuleKey *key);
    int (*key_type)(RedisModuleKey *key);
    int (*delete_key)(RedisModuleKey *key);
    char *(*string_dma)(RedisModuleKey *key, size_t *len, int mode);
    int (*string_truncate)(RedisModuleKey *key, size_t newlen);
    long long (*get_abs_expire)(RedisModuleKey *key);
    int (*set_abs_expire)(RedisModuleKey *key, long long expire);
    int (*get_lfu)(RedisModuleKey *key, long long *freq);
    int (*set_lfu)(RedisModuleKey *key, long long freq);

    long long (*milliseconds)(void);

    int (*reply_with_array)(RedisModuleCtx *ctx, long len);
    int (*reply_with_long_long)(RedisModuleCtx *ctx, long long ll);
    int (*reply_with_null)(RedisModuleCtx *ctx);
    int (*reply_with_string_buffer)(RedisModuleCtx *ctx, const char *buf,
        size_t len);
    int (*reply_with_error)(RedisModuleCtx *ctx, const char *err);
    int (*wrong_arity)(RedisModuleCtx *ctx);

    int (*replicate)(RedisModuleCtx *ctx, const char *cmd, const char *fmt,
        ...);
    int (*replicate_verbatim)(RedisModuleCtx *ctx);
    int (*notify_keyspace_event)(RedisModuleCtx *ctx, int type,
        const char *event, RedisModuleString *key);
    int (*get_context_flags)(RedisModuleCtx *ctx);
    RedisModuleCallReply *(*call)(RedisModuleCtx *ctx, const char *cmd,
        const char *fmt, ...);
    int (*call_reply_type)(RedisModuleCallReply *reply);
    size_t (*call_reply_length)(RedisModuleCallReply *reply);
    RedisModuleCallReply *(*call_reply_array_element)(
        RedisModuleCallReply *reply, size_t idx);
    void (*free_call_reply)(RedisModuleCallReply *reply);
    RedisModuleServerInfoData *(*get_server_info)(RedisModuleCtx *ctx,
        const char *section);
    long long (*server_info_get_field_signed)(
        RedisModuleServerInfoData *data, const char *field, int *out_err);
    void (*free_server_info)(RedisModuleCtx *ctx,
        RedisModuleServerInfoData *data);
    RedisModuleCommandFilter *(*register_command_filter)(RedisModuleCtx *ctx,
        rules_rm_filter_pt filter, int flags);
    int (*command_filter_args_count)(RedisModuleCommandFilterCtx *fctx);
    RedisModuleString *(*command_filter_arg_get)(
        RedisModuleCommandFilterCtx *fctx, int pos);
    int (*subscribe_to_server_event)(RedisModuleCtx *ctx,
        rules_rm_event_t event, rules_rm_event_pt callback);
    int (*register_info_func)(RedisModuleCtx *ctx, rules_rm_info_pt cb);
    int (*info_add_section)(RedisModuleInfoCtx *ctx, const char *name);
    int (*info_add_field_long_long)(RedisModuleInfoCtx *ctx,
        const char *field, long long value);

    void *(*alloc)(size_t bytes);
    void *(*realloc)(void *ptr, size_t bytes);
    void (*free)(void *ptr);
} rules_redis_api_t;


extern rules_redis_api_t  rm;

/* Fills rm from the context of RedisModule_OnLoad; RM_ERR if one lacks. */
int rules_redis_api_init(RedisModuleCtx *ctx, const char *name, int ver);

#endif /* RULES_REDIS_API_H */
