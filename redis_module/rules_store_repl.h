/*
 * Whether RULES.STORE's effects have anywhere to go (rules_store_repl.c).
 */

#ifndef RULES_STORE_REPL_H
#define RULES_STORE_REPL_H

#include "rules_redis_api.h"


/* Registers the watch (OnLoad); RM_ERR when Redis refuses a part. */
int rs_repl_init(RedisModuleCtx *ctx);

/*
 * 1 when a command's effects must go through RM_Replicate() now: the AOF
 * is on, or a replica or a replication backlog may exist; 0 when Redis
 * would drop them.  Constant for the length of one command.
 */
int rs_repl_needed(RedisModuleCtx *ctx);

/* Counts the effects replicated and skipped (INFO rules). */
void rs_repl_count(int replicated);

#endif /* RULES_STORE_REPL_H */
