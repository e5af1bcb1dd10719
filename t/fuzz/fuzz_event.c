/*
 * libFuzzer: condition evaluation and key operations, and the JSON event
 * parser, over a rule set using every operator.  The input is both a
 * JSON body and, split at NUL bytes, the values of the fields.
 */

#include <stdlib.h>
#include <string.h>

#include "rules_engine.h"
#include "rules_state.h"
#include "rules_json_event.h"


static const char rules[] =
"{\"rules\":["
"{\"id\":\"a\",\"kind\":\"segment\",\"key\":\"uid\",\"type\":\"count\",\"min\":2,"
" \"within\":\"1h\",\"where\":{\"any\":[{\"field\":\"t\",\"eq\":\"x\"},"
" {\"field\":\"t\",\"ne\":\"y\"},{\"field\":\"p\",\"in\":[\"a\",\"b\"]},"
" {\"field\":\"p\",\"prefix\":\"/s\"},{\"field\":\"p\",\"suffix\":\"z\"},"
" {\"field\":\"p\",\"contains\":\"q\"},{\"not\":{\"field\":\"n\",\"gt\":1.5}},"
" {\"all\":[{\"field\":\"n\",\"lte\":9},{\"field\":\"n\",\"gte\":-9}]},"
" {\"field\":\"n\",\"lt\":0},{\"field\":\"u\",\"exists\":false},"
" {\"field\":\"u\",\"regex\":\"^(a|b)+c?[0-9]{2,}$\"}]}},"
"{\"id\":\"b\",\"kind\":\"fraud\",\"key\":\"ip\",\"type\":\"distinct\","
" \"field\":\"u\",\"min\":3,\"within\":\"1m\"},"
"{\"id\":\"c\",\"kind\":\"segment\",\"key\":\"uid\",\"type\":\"absence\","
" \"trigger\":{\"field\":\"t\",\"eq\":\"v\"},\"cancel\":{\"field\":\"t\",\"eq\":\"c\"},"
" \"within\":\"1d\"},"
"{\"id\":\"d\",\"kind\":\"segment\",\"key\":\"uid\",\"type\":\"sequence\","
" \"steps\":[{\"where\":{\"field\":\"p\",\"eq\":\"/h\"}},{\"where\":{\"field\":\"p\","
" \"prefix\":\"/s\"},\"strict\":true}],\"within\":\"1h\",\"hold\":\"1d\"}]}";

static rules_set_t       *rs;
static rules_eventops_t   eo;


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char                  err[RULES_ERR_LEN];
    rules_str_t           vals[16];
    rules_limits_t        limits = { 64, 1024 };
    rules_json_events_t   ev;
    size_t                i, f, start;

    if (rs == NULL) {
        rs = rules_load_buffer(rules, sizeof(rules) - 1, "fuzz", err,
                               sizeof(err));
        if (rs == NULL) {
            abort();
        }
    }

    /* the input as field values */

    memset(vals, 0, sizeof(vals));
    f = 0;
    start = 0;

    for (i = 0; i <= size && f < rules_nfields(rs); i++) {
        if (i == size || data[i] == 0) {
            vals[f].data = data + start;
            vals[f].len = i - start;
            f++;
            start = i + 1;
        }
    }

    (void) rules_event_build(rs, &limits, vals, 1000, &eo);

    /* the input as a JSON body */

    if (rules_json_events_parse(rs, (const char *) data, size, "ts", 100,
                                &ev, err)
        == RULES_JSON_OK)
    {
        for (i = 0; i < ev.nevents; i++) {
            (void) rules_event_build(rs, &limits,
                                     ev.values + i * rules_nfields(rs),
                                     ev.ts[i] < 0 ? 0 : ev.ts[i], &eo);
        }
    }

    rules_json_events_free(&ev);

    return 0;
}
