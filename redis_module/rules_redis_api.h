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


typedef struct RedisModuleCtx     RedisModuleCtx;
typedef struct RedisModuleKey     RedisModuleKey;
typedef struct RedisModuleString  RedisModuleString;

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

    void *(*alloc)(size_t bytes);
    void *(*realloc)(void *ptr, size_t bytes);
    void (*free)(void *ptr);
} rules_redis_api_t;


extern rules_redis_api_t  rm;

/* Fills rm from the context of RedisModule_OnLoad; RM_ERR if one lacks. */
int rules_redis_api_init(RedisModuleCtx *ctx, const char *name, int ver);

#endif /* RULES_REDIS_API_H */
