/*
 * libFuzzer: state deserialization and the state machines.  The input is
 * split at the first "\xff\xff\xff\xff" into a state blob (as if read
 * from Redis: anything may be there) and an operation.  The blob is also
 * read as a stored value (R2: a snapshot and a log, rules_log.h), folded
 * with the operation, as a reply to the module's call would be.
 */

#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "rules_engine.h"
#include "rules_state.h"
#include "rules_log.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t  *sep;
    size_t          slen;
    rules_buf_t     out, matched;
    int             changed;
    int64_t         pttl;

    memset(&out, 0, sizeof(out));
    memset(&matched, 0, sizeof(matched));

    sep = memmem(data, size, "\xff\xff\xff\xff", 4);
    slen = sep ? (size_t) (sep - data) : size;

    (void) rules_state_validate(data, slen);
    (void) rules_state_apply(data, slen, sep ? sep + 4 : NULL,
                             sep ? size - slen - 4 : 0, 1000, 2000, &out,
                             &changed, &pttl, &matched);

    if (out.len) {
        /* what the machines write must read back */
        if (rules_state_validate(out.data, out.len) != 0) {
            abort();
        }
    }

    /* the same bytes as an R2 value, folded with the operation */

    {
        rules_log_work_t  w;
        rules_log_info_t  info;

        memset(&w, 0, sizeof(w));
        matched.len = 0;

        (void) rules_log_validate(data, slen);

        if (rules_log_fold(data, slen, sep ? sep + 4 : NULL,
                           sep ? size - slen - 4 : 0, 1000, 2000, 1, 7,
                           &w, &matched, &info)
            == 0
            && w.state->len
            && rules_state_validate(w.state->data, w.state->len) != 0)
        {
            abort();
        }

        rules_log_work_free(&w);
    }

    rules_buf_free(&out);
    rules_buf_free(&matched);

    return 0;
}
