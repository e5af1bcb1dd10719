/*
 * Every condition operator and combinator of SPEC.md, with the missing
 * and empty rules, the number grammar, byte-exact matching and the regex
 * match limit.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rules_engine.h"
#include "tap.h"


static rules_set_t  *rs;
static rules_str_t   vals[8];


/* Loads one count rule whose "where" is cond over field "f". */
static const rules_cond_t *
load_cond(const char *cond)
{
    char    *json, err[RULES_ERR_LEN];
    size_t   size;

    rules_free(rs);
    size = strlen(cond) + 256;
    json = malloc(size);
    snprintf(json, size, "{\"rules\":[{\"id\":\"c\",\"kind\":"
             "\"segment\",\"key\":\"k\",\"type\":\"count\",\"min\":1,"
             "\"within\":\"1s\",\"where\":%s}]}", cond);
    rs = rules_load_buffer(json, strlen(json), "test", err, sizeof(err));
    free(json);

    if (rs == NULL) {
        printf("# cannot load %s: %s\n", cond, err);
        exit(1);
    }

    return rules_rule(rs, 0)->where;
}


/* Evaluates with field f = value (len -1: missing). */
static int
eval_f(const rules_cond_t *c, const char *value, int len)
{
    int  f;

    memset(vals, 0, sizeof(vals));
    f = rules_field_index(rs, "f", 1);

    if (f >= 0 && value) {
        vals[f].data = (const unsigned char *) value;
        vals[f].len = len < 0 ? strlen(value) : (size_t) len;
    }

    return rules_cond_eval(rs, c, vals);
}


/*
 * An event that no "where" accepts still reads its key's state: an empty
 * op, which must be a valid pointer (memcpy() of zero bytes from NULL is
 * undefined), also on a fresh rules_eventops_t.
 */
static void
test_empty_op(void)
{
    int                f, k;
    rules_limits_t     limits = { 256, 4096 };
    rules_eventops_t   eo;
    rules_event_rc_t   rc;

    (void) load_cond("{\"field\":\"f\",\"eq\":\"yes\"}");

    memset(vals, 0, sizeof(vals));
    memset(&eo, 0, sizeof(eo));
    f = rules_field_index(rs, "f", 1);
    k = rules_field_index(rs, "k", 1);
    vals[f].data = (const unsigned char *) "no";
    vals[f].len = 2;
    vals[k].data = (const unsigned char *) "user";
    vals[k].len = 4;

    rc = rules_event_build(rs, &limits, vals, 1000, &eo);
    ok(rc == RULES_EVENT_OK && eo.nkeyops == 1,
       "empty op: the key is still read");
    ok(eo.nkeyops == 1 && eo.keyops[0].op_len == 0
       && eo.keyops[0].op != NULL,
       "empty op: zero bytes at a valid pointer");

    rules_eventops_free(&eo);
}


static void
test_numbers(void)
{
    static const char *yes[] = { "12", "-3.5", ".5", "1e2", "+4", "0",
                                 "1E-3", "5.", "007", "1e-400", NULL };
    static const char *no[] = { "0x10", "inf", "nan", " 5", "5 ", "5abc",
                                "", "-", ".", "e5", "1e", "1e+", "--1",
                                "Infinity", "1,5", "1e400", "-1e400", NULL };
    double       d;
    int          i;

    for (i = 0; yes[i]; i++) {
        ok(rules_parse_number((const unsigned char *) yes[i],
                              strlen(yes[i]), &d), "\"%s\" is a number",
           yes[i]);
    }

    for (i = 0; no[i]; i++) {
        ok(!rules_parse_number((const unsigned char *) no[i], strlen(no[i]),
                               &d), "\"%s\" is not a number", no[i]);
    }

    ok(rules_parse_number((const unsigned char *) "-3.5", 4, &d) && d == -3.5,
       "-3.5 reads as -3.5");
    ok(rules_parse_number((const unsigned char *) "1e2", 3, &d) && d == 100,
       "1e2 reads as 100");
}


int
main(void)
{
    const rules_cond_t  *c;
    static char          big[2000000];
    char                *p;
    int                  i, hits;
    clock_t              t0;
    double               secs;

    test_numbers();
    test_empty_op();

    c = load_cond("{\"field\":\"f\",\"eq\":\"abc\"}");
    ok(eval_f(c, "abc", -1), "eq: equal");
    ok(!eval_f(c, "abcd", -1), "eq: longer");
    ok(!eval_f(c, "ABC", -1), "eq: byte-exact, case matters");
    ok(!eval_f(c, NULL, 0), "eq: missing is false");
    ok(!eval_f(c, "", 0), "eq: empty is false");

    c = load_cond("{\"field\":\"f\",\"eq\":\"a\\u0000b\"}");
    ok(eval_f(c, "a\0b", 3), "eq: a value with a NUL byte");
    ok(!eval_f(c, "a", 1), "eq: NUL is not the end of the value");

    c = load_cond("{\"field\":\"f\",\"ne\":\"abc\"}");
    ok(eval_f(c, "abd", -1), "ne: different");
    ok(!eval_f(c, "abc", -1), "ne: equal");
    ok(!eval_f(c, NULL, 0), "ne: missing is false");
    ok(!eval_f(c, "", 0), "ne: empty is false");

    c = load_cond("{\"field\":\"f\",\"prefix\":\"/sale\"}");
    ok(eval_f(c, "/sale/x", -1), "prefix: yes");
    ok(eval_f(c, "/sale", -1), "prefix: the whole value");
    ok(!eval_f(c, "/sal", -1), "prefix: shorter");
    ok(!eval_f(c, "x/sale", -1), "prefix: not at the start");

    c = load_cond("{\"field\":\"f\",\"suffix\":\".js\"}");
    ok(eval_f(c, "a.js", -1), "suffix: yes");
    ok(!eval_f(c, "a.jsx", -1), "suffix: no");
    ok(!eval_f(c, "js", -1), "suffix: shorter");

    c = load_cond("{\"field\":\"f\",\"contains\":\"bot\"}");
    ok(eval_f(c, "Googlebot/2.1", -1), "contains: yes");
    ok(!eval_f(c, "Mozilla", -1), "contains: no");
    ok(!eval_f(c, NULL, 0), "contains: missing is false");

    c = load_cond("{\"field\":\"f\",\"regex\":\"^[a-z]+[0-9]$\"}");
    ok(eval_f(c, "abc1", -1), "regex: match");
    ok(!eval_f(c, "abc12", -1), "regex: anchored by the pattern only");
    c = load_cond("{\"field\":\"f\",\"regex\":\"b.t\"}");
    ok(eval_f(c, "a robot!", -1), "regex: unanchored");
    ok(eval_f(c, "b\nt", -1) == 0, "regex: . does not match newline");
    ok(eval_f(c, "\xff\xfe" "bot", 5), "regex: invalid UTF-8 is fine");
    ok(!eval_f(c, "", 0), "regex: empty is false");

    /* the match limit: a catastrophic pattern fails safe and is counted */
    c = load_cond("{\"field\":\"f\",\"regex\":\"^(a+)+$\"}");
    memset(big, 'a', 5000);
    big[5000] = 'b';
    hits = (int) rules_stats(rs)->regex_limit_hits;
    t0 = clock();
    ok(!eval_f(c, big, 5001), "regex: catastrophic backtracking is false");
    secs = (double) (clock() - t0) / CLOCKS_PER_SEC;
    ok(rules_stats(rs)->regex_limit_hits == (uint64_t) hits + 1,
       "regex: the match limit hit is counted");
    ok(secs < 2, "regex: stopped quickly (%.3fs)", secs);

    c = load_cond("{\"field\":\"f\",\"gt\":10}");
    ok(eval_f(c, "11", -1), "gt: 11 > 10");
    ok(!eval_f(c, "10", -1), "gt: 10 > 10 is false");
    ok(eval_f(c, "1e2", -1), "gt: 1e2 > 10");
    ok(!eval_f(c, "0x10", -1), "gt: hex is not a number");
    ok(!eval_f(c, " 11", -1), "gt: leading space is not a number");
    ok(!eval_f(c, "11abc", -1), "gt: trailing text is not a number");
    ok(!eval_f(c, "inf", -1), "gt: inf is not a number");
    ok(!eval_f(c, NULL, 0), "gt: missing is false");
    c = load_cond("{\"field\":\"f\",\"gte\":-3.5}");
    ok(eval_f(c, "-3.5", -1), "gte: equal");
    ok(!eval_f(c, "-3.6", -1), "gte: below");
    c = load_cond("{\"field\":\"f\",\"lt\":0.5}");
    ok(eval_f(c, ".4", -1), "lt: .4 < 0.5");
    ok(!eval_f(c, ".5", -1), "lt: .5 < 0.5 is false");
    c = load_cond("{\"field\":\"f\",\"lte\":0.5}");
    ok(eval_f(c, ".5", -1), "lte: equal");
    ok(!eval_f(c, "nan", -1), "lte: nan is not a number");

    c = load_cond("{\"field\":\"f\",\"exists\":true}");
    ok(eval_f(c, "x", -1), "exists true: a value");
    ok(!eval_f(c, NULL, 0), "exists true: missing");
    ok(!eval_f(c, "", 0), "exists true: empty is no value");
    c = load_cond("{\"field\":\"f\",\"exists\":false}");
    ok(!eval_f(c, "x", -1), "exists false: a value");
    ok(eval_f(c, NULL, 0), "exists false: missing");
    ok(eval_f(c, "", 0), "exists false: empty");

    c = load_cond("{\"all\":[{\"field\":\"f\",\"prefix\":\"a\"},"
                  "{\"field\":\"f\",\"suffix\":\"z\"}]}");
    ok(eval_f(c, "abz", -1), "all: both");
    ok(!eval_f(c, "abc", -1), "all: one");
    c = load_cond("{\"any\":[{\"field\":\"f\",\"eq\":\"a\"},"
                  "{\"field\":\"f\",\"eq\":\"b\"}]}");
    ok(eval_f(c, "b", -1), "any: one");
    ok(!eval_f(c, "c", -1), "any: none");
    c = load_cond("{\"not\":{\"field\":\"f\",\"eq\":\"a\"}}");
    ok(eval_f(c, "b", -1), "not: negates");
    ok(eval_f(c, NULL, 0), "not: of a false comparison on a missing field");
    c = load_cond("{\"not\":{\"any\":[{\"all\":[{\"field\":\"f\","
                  "\"gt\":1},{\"field\":\"f\",\"lt\":5}]},"
                  "{\"field\":\"f\",\"eq\":\"x\"}]}}");
    ok(!eval_f(c, "3", -1), "nested: 3 is in (1,5)");
    ok(!eval_f(c, "x", -1), "nested: x");
    ok(eval_f(c, "7", -1), "nested: 7");

    /* in: 100k strings, O(1) lookups */
    p = big;
    p += sprintf(p, "{\"field\":\"f\",\"in\":[");
    for (i = 0; i < 100000; i++) {
        p += sprintf(p, "%s\"v%d\"", i ? "," : "", i);
    }
    sprintf(p, "]}");
    c = load_cond(big);
    ok(eval_f(c, "v0", -1) && eval_f(c, "v99999", -1) && eval_f(c, "v5000", -1),
       "in: members of a 100k list");
    ok(!eval_f(c, "v100000", -1) && !eval_f(c, "v", -1),
       "in: non-members of a 100k list");
    ok(!eval_f(c, "", 0), "in: empty is false");

    t0 = clock();
    hits = 0;
    for (i = 0; i < 1000000; i++) {
        char  v[16];
        int   n = snprintf(v, sizeof(v), "v%d", i % 200000);
        hits += eval_f(c, v, n);
    }
    secs = (double) (clock() - t0) / CLOCKS_PER_SEC;
    is_int(hits, 500000, "in: 1M lookups, half of them hits");
    printf("# in: 1M lookups in a 100k list: %.3fs\n", secs);

    rules_free(rs);

    return done_testing();
}
