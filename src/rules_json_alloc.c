/*
 * jansson's allocations while the engine uses it (a rules file parsed,
 * its rules copied and dumped; an event body or a replayed line parsed):
 * a failed allocation makes every later one fail too, until
 * rules_json_end(), which tells the caller.
 *
 * jansson 2.14 does not always stop at a failed allocation: its lexer
 * drops a character it could not save and goes on, reports the end of the
 * text as "invalid token", and its string scanner then reads the cut text
 * past its end; json_copy() leaves out a member it could not add.  Out of
 * memory would be taken for bad input, overrun the heap, or give a rule a
 * digest that is not its own.  With the failure kept, the next allocation
 * fails too and the call ends there, and the caller learns that it was
 * memory, not the input.
 *
 * Ours only between the two calls, and only in place of jansson's own
 * (malloc and free): a program whose other code gave jansson functions of
 * its own keeps them, unprotected.  free() stays jansson's either way.
 * The calls nest (only the outermost pair installs and reports).  One
 * thread at a time: a worker, the master reading its configuration and
 * rules-replay each use jansson on one thread; another module calling
 * jansson on a thread of its own meanwhile would share the failure.
 */

#include <stdlib.h>
#include <jansson.h>

#include "rules_internal.h"


static unsigned  rules_json_depth;
static unsigned  rules_json_ours;
static unsigned  rules_json_failed;


static void *
rules_json_malloc(size_t size)
{
    void  *p;

    /* installed only between rules_json_begin() and rules_json_end() */

    if (rules_json_failed) {
        return NULL;
    }

    p = malloc(size);

    if (p == NULL) {
        rules_json_failed = 1;
    }

    return p;
}


void
rules_json_begin(void)
{
    json_malloc_t  m;
    json_free_t    f;

    if (rules_json_depth++) {
        return;
    }

    json_get_alloc_funcs(&m, &f);

    if (m == malloc && f == free) {
        json_set_alloc_funcs(rules_json_malloc, free);
        rules_json_ours = 1;
    }

    rules_json_failed = 0;
}


int
rules_json_end(void)
{
    int  failed;

    failed = (int) rules_json_failed;

    if (rules_json_depth == 0 || --rules_json_depth) {
        /* an inner pair: the outermost one reports too */
        return failed;
    }

    if (rules_json_ours) {
        json_set_alloc_funcs(malloc, free);
        rules_json_ours = 0;
    }

    rules_json_failed = 0;

    return failed;
}
