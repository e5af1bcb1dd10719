/*
 * When RULES.STORE replicates its effects.
 *
 * Redis drops what a command replicates, at the end of the command, when
 * nothing would receive it: no AOF, and neither a replica nor a
 * replication backlog (shouldPropagate() in server.c).  RM_Replicate()
 * still looks the command up by name and copies its arguments first:
 * with SPEC.md's rules, about a sixth of Redis' CPU per event.
 * RULES.STORE skips it in the same case, and only when that case is
 * known for sure:
 *
 *   - the AOF: RM_GetContextFlags(), asked at every command (cheap);
 *   - replicas and the backlog: INFO replication (connected_slaves,
 *     repl_backlog_active), too costly for every command, is asked from
 *     serverCron (10 times a second) while replication is not known to
 *     be off; it is known off from an answer of 0 and 0 on a master
 *     (a replica has no backlog until its first sync: never taken as
 *     off) until anything that could make a backlog happens, which sets
 *     it unknown again before it happens:
 *       - SYNC or PSYNC from any client (a replica's sync creates the
 *         backlog inside the command): a command filter, which Redis
 *         runs before the command;
 *       - a role change (REPLICAOF, FAILOVER, a cluster failover): a
 *         server event;
 *       - loading a dataset (a restart, DEBUG RELOAD: a master may make
 *         a backlog for its replicas' PSYNC): a server event.
 *     Module load starts unknown.  The filter knows SYNC and PSYNC by
 *     those names: when either is renamed (rename-command, seen at load
 *     by COMMAND INFO), replication is never taken as off.
 *
 * Unknown replicates, as does anything unclear (INFO without a field).
 * What is not replicated is still counted as a change, for the RDB save
 * points (rules_store_module.c).
 */

#include <string.h>
#include <strings.h>

#include "rules_store_repl.h"


#define RS_REPL_UNKNOWN  0
#define RS_REPL_OFF      1


static int         rs_repl_state = RS_REPL_UNKNOWN;
static int         rs_repl_always;    /* SYNC or PSYNC renamed */
static long long   rs_repl_replicated;
static long long   rs_repl_skipped;


static void
rs_repl_filter(RedisModuleCommandFilterCtx *fctx)
{
    size_t                    len;
    const char               *name;
    const RedisModuleString  *arg;

    if (rs_repl_state == RS_REPL_UNKNOWN
        || rm.command_filter_args_count(fctx) < 1)
    {
        return;
    }

    arg = rm.command_filter_arg_get(fctx, 0);
    if (arg == NULL) {
        return;
    }

    name = rm.string_ptr_len(arg, &len);

    if ((len == 4 && strncasecmp(name, "sync", 4) == 0)
        || (len == 5 && strncasecmp(name, "psync", 5) == 0))
    {
        rs_repl_state = RS_REPL_UNKNOWN;
    }
}


static void
rs_repl_unknown(RedisModuleCtx *ctx, rules_rm_event_t eid,
    unsigned long long subevent, void *data)
{
    rs_repl_state = RS_REPL_UNKNOWN;
}


static void
rs_repl_cron(RedisModuleCtx *ctx, rules_rm_event_t eid,
    unsigned long long subevent, void *data)
{
    int                         err;
    long long                   slaves, backlog;
    RedisModuleServerInfoData  *info;

    if (rs_repl_state == RS_REPL_OFF || rs_repl_always
        || (rm.get_context_flags(ctx) & RM_CTX_FLAGS_SLAVE))
    {
        return;
    }

    info = rm.get_server_info(ctx, "replication");
    if (info == NULL) {
        return;
    }

    slaves = rm.server_info_get_field_signed(info, "connected_slaves", &err);

    if (err == RM_OK) {
        backlog = rm.server_info_get_field_signed(info,
                                                  "repl_backlog_active",
                                                  &err);

        if (err == RM_OK && slaves == 0 && backlog == 0) {
            rs_repl_state = RS_REPL_OFF;
        }
    }

    rm.free_server_info(ctx, info);
}


static void
rs_repl_info(RedisModuleInfoCtx *ctx, int for_crash_report)
{
    rm.info_add_section(ctx, "replication");
    rm.info_add_field_long_long(ctx, "effects_replicated",
                                rs_repl_replicated);
    rm.info_add_field_long_long(ctx, "effects_skipped", rs_repl_skipped);
    rm.info_add_field_long_long(ctx, "replication_known_off",
                                rs_repl_state == RS_REPL_OFF);
}


/* Whether COMMAND INFO knows each of the names (NULL-terminated). */
static int
rs_repl_commands_known(RedisModuleCtx *ctx, const char **names)
{
    int                    known;
    size_t                 i;
    RedisModuleCallReply  *reply, *info;

    for (i = 0; names[i]; i++) {
        reply = rm.call(ctx, "COMMAND", "cc", "INFO", names[i]);
        if (reply == NULL) {
            return 0;
        }

        known = 0;

        if (rm.call_reply_type(reply) == RM_REPLY_ARRAY
            && rm.call_reply_length(reply) == 1)
        {
            info = rm.call_reply_array_element(reply, 0);
            known = (info != NULL
                     && rm.call_reply_type(info) == RM_REPLY_ARRAY);
        }

        rm.free_call_reply(reply);

        if (!known) {
            return 0;
        }
    }

    return 1;
}


int
rs_repl_init(RedisModuleCtx *ctx)
{
    static const char  *sync_commands[] = { "sync", "psync", NULL };

    rules_rm_event_t  role = { RM_EVENT_ROLE_CHANGED, 1 };
    rules_rm_event_t  loading = { RM_EVENT_LOADING, 1 };
    rules_rm_event_t  cron = { RM_EVENT_CRON_LOOP, 1 };

    rs_repl_state = RS_REPL_UNKNOWN;
    rs_repl_always = !rs_repl_commands_known(ctx, sync_commands);

    if (rs_repl_always) {
        rm.log(ctx, "notice", "rules.store: SYNC or PSYNC is renamed, "
               "or COMMAND INFO does not tell: effects are always "
               "replicated");
    }

    if (rm.register_command_filter(ctx, rs_repl_filter, RM_CMDFILTER_NOSELF)
        == NULL
        || rm.subscribe_to_server_event(ctx, role, rs_repl_unknown) != RM_OK
        || rm.subscribe_to_server_event(ctx, loading, rs_repl_unknown)
           != RM_OK
        || rm.subscribe_to_server_event(ctx, cron, rs_repl_cron) != RM_OK
        || rm.register_info_func(ctx, rs_repl_info) != RM_OK)
    {
        return RM_ERR;
    }

    return RM_OK;
}


int
rs_repl_needed(RedisModuleCtx *ctx)
{
    return rs_repl_state != RS_REPL_OFF
           || (rm.get_context_flags(ctx) & RM_CTX_FLAGS_AOF);
}


void
rs_repl_count(int replicated)
{
    if (replicated) {
        rs_repl_replicated++;

    } else {
        rs_repl_skipped++;
    }
}
