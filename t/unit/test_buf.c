/*
 * The growable byte buffer every state, operation and call is written
 * into (rules_state.h): appends keep what was there, room grows by
 * doubling from 256 bytes, and a length past SIZE_MAX / 2 (one that would
 * wrap len + more, among them) is refused with the buffer left as it was
 * (the room check is done as size - len, which cannot wrap, not as len +
 * more).
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules_engine.h"
#include "rules_state.h"
#include "tap.h"


int
main(void)
{
    rules_buf_t     b;
    unsigned char   chunk[100], *data;
    size_t          i, size;
    int             same;

    memset(&b, 0, sizeof(b));

    for (i = 0; i < sizeof(chunk); i++) {
        chunk[i] = (unsigned char) i;
    }

    ok(rules_buf_append(&b, chunk, 0) == 0, "an empty append");
    is_int(b.len, 0, "adds nothing");

    ok(rules_buf_reserve(&b, 1) == 0 && b.size == 256,
       "the first room is 256 bytes");

    for (i = 0; i < 10; i++) {
        if (rules_buf_append(&b, chunk, sizeof(chunk)) != 0) {
            break;
        }
    }

    is_int(i, 10, "ten appends of 100 bytes");
    is_int(b.len, 1000, "1000 bytes held");
    is_int(b.size, 1024, "in room doubled to 1024");

    same = 1;

    for (i = 0; i < b.len; i++) {
        same &= b.data[i] == (unsigned char) (i % sizeof(chunk));
    }

    ok(same, "every byte where it was appended");

    ok(rules_buf_reserve(&b, 24) == 0 && b.size == 1024,
       "room to the last byte: no growth");
    ok(rules_buf_reserve(&b, 25) == 0 && b.size == 2048,
       "one byte past it: doubled");

    data = b.data;
    size = b.size;

    ok(rules_buf_reserve(&b, SIZE_MAX) == -1, "SIZE_MAX more refused");
    ok(rules_buf_reserve(&b, SIZE_MAX - b.len + 1) == -1,
       "a length that wraps len + more to 0 refused");
    ok(rules_buf_append(&b, chunk, SIZE_MAX - b.len + 5) == -1,
       "an append that would wrap refused");
    ok(rules_buf_grow(&b, SIZE_MAX / 2) == -1,
       "a length past SIZE_MAX / 2 refused (the doubling cannot wrap)");
    ok(b.data == data && b.size == size && b.len == 1000,
       "the buffer left as it was");

    rules_buf_free(&b);
    ok(b.data == NULL && b.len == 0 && b.size == 0, "freed");

    return done_testing();
}
