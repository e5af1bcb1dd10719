/* libFuzzer: the rule loader on arbitrary bytes. */

#include <stddef.h>
#include <stdint.h>

#include "rules_engine.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char          err[RULES_ERR_LEN];
    rules_set_t  *rs;

    rs = rules_load_buffer((const char *) data, size, "fuzz", err,
                           sizeof(err));
    rules_free(rs);

    return 0;
}
