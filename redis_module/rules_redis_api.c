/*
 * The Redis module API table (rules_redis_api.h), filled by name.
 */

#include <stdint.h>

#include "rules_redis_api.h"


rules_redis_api_t  rm;


typedef int (*rules_rm_get_api_pt)(const char *name, void *ptr);


static const struct {
    const char  *name;
    size_t       offset;
} rules_redis_api_names[] = {

#define RULES_RM_API(name, member)                                        \
    { "RedisModule_" name, offsetof(rules_redis_api_t, member) }

    RULES_RM_API("CreateCommand", create_command),
    RULES_RM_API("SetModuleAttribs", set_module_attribs),
    RULES_RM_API("IsModuleNameBusy", is_module_name_busy),
    RULES_RM_API("Log", log),
    RULES_RM_API("IsKeysPositionRequest", is_keys_position_request),
    RULES_RM_API("KeyAtPos", key_at_pos),
    RULES_RM_API("StringPtrLen", string_ptr_len),
    RULES_RM_API("OpenKey", open_key),
    RULES_RM_API("CloseKey", close_key),
    RULES_RM_API("KeyType", key_type),
    RULES_RM_API("DeleteKey", delete_key),
    RULES_RM_API("StringDMA", string_dma),
    RULES_RM_API("StringTruncate", string_truncate),
    RULES_RM_API("GetAbsExpire", get_abs_expire),
    RULES_RM_API("SetAbsExpire", set_abs_expire),
    RULES_RM_API("GetLFU", get_lfu),
    RULES_RM_API("SetLFU", set_lfu),
    RULES_RM_API("Milliseconds", milliseconds),
    RULES_RM_API("ReplyWithArray", reply_with_array),
    RULES_RM_API("ReplyWithLongLong", reply_with_long_long),
    RULES_RM_API("ReplyWithNull", reply_with_null),
    RULES_RM_API("ReplyWithStringBuffer", reply_with_string_buffer),
    RULES_RM_API("ReplyWithError", reply_with_error),
    RULES_RM_API("WrongArity", wrong_arity),
    RULES_RM_API("Replicate", replicate),
    RULES_RM_API("ReplicateVerbatim", replicate_verbatim),
    RULES_RM_API("NotifyKeyspaceEvent", notify_keyspace_event),
    RULES_RM_API("GetContextFlags", get_context_flags),
    RULES_RM_API("Call", call),
    RULES_RM_API("CallReplyType", call_reply_type),
    RULES_RM_API("CallReplyLength", call_reply_length),
    RULES_RM_API("CallReplyArrayElement", call_reply_array_element),
    RULES_RM_API("FreeCallReply", free_call_reply),
    RULES_RM_API("GetServerInfo", get_server_info),
    RULES_RM_API("ServerInfoGetFieldSigned", server_info_get_field_signed),
    RULES_RM_API("FreeServerInfo", free_server_info),
    RULES_RM_API("RegisterCommandFilter", register_command_filter),
    RULES_RM_API("CommandFilterArgsCount", command_filter_args_count),
    RULES_RM_API("CommandFilterArgGet", command_filter_arg_get),
    RULES_RM_API("SubscribeToServerEvent", subscribe_to_server_event),
    RULES_RM_API("RegisterInfoFunc", register_info_func),
    RULES_RM_API("InfoAddSection", info_add_section),
    RULES_RM_API("InfoAddFieldLongLong", info_add_field_long_long),
    RULES_RM_API("Alloc", alloc),
    RULES_RM_API("Realloc", realloc),
    RULES_RM_API("Free", free)

#undef RULES_RM_API
};


int
rules_redis_api_init(RedisModuleCtx *ctx, const char *name, int ver)
{
    size_t               i;
    rules_rm_get_api_pt  get_api;

    /* the context's first member: Redis' lookup by name */
    get_api = (rules_rm_get_api_pt) (uintptr_t) ((void **) ctx)[0];

    for (i = 0; i < sizeof(rules_redis_api_names)
                    / sizeof(rules_redis_api_names[0]); i++)
    {
        if (get_api(rules_redis_api_names[i].name,
                    (char *) &rm + rules_redis_api_names[i].offset)
            != RM_OK)
        {
            /* an older Redis: no logging function to tell it with yet */
            return RM_ERR;
        }
    }

    if (rm.is_module_name_busy(name)) {
        return RM_ERR;
    }

    rm.set_module_attribs(ctx, name, ver, RM_APIVER_1);

    return RM_OK;
}
