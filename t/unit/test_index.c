/*
 * The condition index's choice among the members of an "all": the most
 * selective one (a pair weighs 1/n for a field with n values named in
 * the file), so that an event's candidates are the rules of its product,
 * not every rule of its type.  Whatever the choice, the candidates are a
 * superset of the rules an event touches (test_state_random checks the
 * ops with the index and without).
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules_engine.h"
#include "rules_internal.h"
#include "tap.h"


#define NRULES     100
#define NPRODUCTS  50


static rules_set_t  *rs;
static rules_str_t   vals[8];


static void
set_value(const char *field, const char *value)
{
    int  f;

    f = rules_field_index(rs, field, strlen(field));

    if (f < 0) {
        printf("# no field %s\n", field);
        exit(1);
    }

    vals[f].data = (const unsigned char *) value;
    vals[f].len = strlen(value);
}


/* The candidates for type and product, as a count; *first: the lowest. */
static int
candidates(const char *type, const char *product, int *first)
{
    int                    n;
    size_t                 i;
    const rules_result_t  *cand;

    memset(vals, 0, sizeof(vals));
    set_value("type", type);
    set_value("product", product);

    cand = rules_index_candidates(rs, vals);
    n = 0;
    *first = -1;

    for (i = 0; i < rules_count(rs); i++) {
        if (cand->matched[i / 64] & ((uint64_t) 1 << (i % 64))) {
            if (n++ == 0) {
                *first = (int) i;
            }
        }
    }

    return n;
}


int
main(void)
{
    int     i, n, first;
    char   *json, *p, err[RULES_ERR_LEN];
    size_t  size;

    /*
     * 100 count rules "type is page and product is P<i % 50>", the type
     * named first: 50 products against one type
     */

    size = NRULES * 200 + 64;
    json = malloc(size);
    p = json + sprintf(json, "{\"rules\":[");

    for (i = 0; i < NRULES; i++) {
        p += sprintf(p, "%s{\"id\":\"r%d\",\"kind\":\"segment\","
                     "\"key\":\"uid\",\"type\":\"count\",\"min\":%d,"
                     "\"within\":\"1h\",\"where\":{\"all\":["
                     "{\"field\":\"type\",\"eq\":\"page\"},"
                     "{\"field\":\"product\",\"eq\":\"P%d\"}]}}",
                     i ? "," : "", i, 1 + i / NPRODUCTS, i % NPRODUCTS);
    }

    sprintf(p, "]}");

    rs = rules_load_buffer(json, strlen(json), "test", err, sizeof(err));
    free(json);

    if (rs == NULL) {
        printf("# cannot load the rules: %s\n", err);
        return 1;
    }

    rules_set_indexing(rs, 1);

    n = candidates("page", "P7", &first);
    is_int(n, 2, "page of P7: the two rules of P7 are the candidates");
    is_int(first, 7, "the first is r7");

    n = candidates("page", "P99", &first);
    is_int(n, 0, "page of a product no rule names: no candidate");

    n = candidates("view", "P7", &first);
    is_int(n, 2, "view of P7: the rules of P7 (a superset: the type is "
           "checked when they are evaluated)");

    rules_free(rs);

    return done_testing();
}
