/*
 * Allocations that fail on demand, for the unit tests of what the engine
 * does short of memory: malloc(), realloc() and calloc() are wrapped
 * (glibc's own are __libc_malloc() and the like; jansson allocates with
 * malloc()).  Included by one test program each: it defines them.
 *
 *     alloc_budget  the allocations let through before one fails; -1: all
 *     alloc_failed  the allocations that failed so far
 *     calloc_only   only calloc() fails
 *     fail_once     the allocations after the failed one pass (with
 *                   alloc_budget = k - 1: only the k-th fails)
 */

#ifndef FAILING_ALLOC_H
#define FAILING_ALLOC_H

#include <stddef.h>


extern void *__libc_realloc(void *p, size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_malloc(size_t size);


static long  alloc_budget = -1;
static long  alloc_failed;
static int   calloc_only;
static int   fail_once;


static int
alloc_fails(void)
{
    if (alloc_budget < 0) {
        return 0;
    }

    if (alloc_budget == 0) {
        alloc_failed++;

        if (fail_once) {
            alloc_budget = -1;
        }

        return 1;
    }

    alloc_budget--;
    return 0;
}


void *
realloc(void *p, size_t size)
{
    return !calloc_only && alloc_fails() ? NULL : __libc_realloc(p, size);
}


void *
calloc(size_t n, size_t size)
{
    return alloc_fails() ? NULL : __libc_calloc(n, size);
}


void *
malloc(size_t size)
{
    return !calloc_only && alloc_fails() ? NULL : __libc_malloc(size);
}

#endif /* FAILING_ALLOC_H */
