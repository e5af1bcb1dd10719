/*
 * The rule loader: every load error names the rule (index and id), the
 * member and, for JSON syntax errors, the line and column; the SPEC.md
 * examples load with the right values; digests follow definitions.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules_engine.h"
#include "tap.h"


#define R(body)  "{\"rules\":[{\"id\":\"ok\",\"kind\":\"segment\",\"key\":" \
                 "\"uid\",\"type\":\"count\",\"min\":1,\"within\":\"1s\"}," \
                 body "]}"
#define COUNT(extra) R("{\"id\":\"bad\",\"kind\":\"segment\",\"key\":\"uid\"," \
                       "\"type\":\"count\",\"within\":\"1s\",\"min\":2" extra "}")
#define SEQ(steps) R("{\"id\":\"bad\",\"kind\":\"segment\",\"key\":\"uid\"," \
                     "\"type\":\"sequence\",\"within\":\"1h\",\"steps\":" steps "}")
#define WHERE(c) COUNT(",\"where\":" c)


static const struct {
    const char  *json;
    const char  *want[3];
} cases[] = {
    { "not json", { "line 1, column", NULL } },
    { "{\"rules\": [\n  {\"id\": \"a\" \"kind\": 1}\n]}", { "line 2, column", NULL } },
    { "[]", { "top level must be an object", NULL } },
    { "{}", { "member \"rules\" must be an array", NULL } },
    { "{\"rules\":{}}", { "member \"rules\" must be an array", NULL } },
    { "{\"rules\":[],\"x\":1}", { "unknown top-level member \"x\"", NULL } },
    { R("42"), { "rule #1: ", "must be an object", NULL } },
    { R("{\"kind\":\"segment\"}"), { "rule #1: ", "member \"id\": is required", NULL } },
    { R("{\"id\":\"\"}"), { "rule #1: ", "member \"id\": must match", NULL } },
    { R("{\"id\":\"a-b\"}"), { "rule #1: ", "member \"id\": must match", NULL } },
    { R("{\"id\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}"),
      { "member \"id\": must match [A-Za-z0-9_]{1,64}", NULL } },
    { R("{\"id\":\"ok\",\"kind\":\"segment\",\"key\":\"uid\",\"type\":\"count\",\"min\":1,\"within\":\"1s\"}"),
      { "rule #1 \"ok\": ", "member \"id\": duplicate id \"ok\"", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"both\",\"key\":\"uid\",\"type\":\"count\",\"min\":1,\"within\":\"1s\"}"),
      { "rule #1 \"bad\": member \"kind\": must be \"segment\" or \"fraud\"", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"type\":\"count\",\"min\":1,\"within\":\"1s\"}"),
      { "rule #1 \"bad\": member \"key\": is required", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"often\"}"),
      { "rule #1 \"bad\": member \"type\": unknown type \"often\"", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\",\"min\":1,\"within\":\"1s\",\"colour\":1}"),
      { "rule #1 \"bad\": member \"colour\": unknown member for a rule of type \"count\"", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"sequence\",\"within\":\"1s\",\"where\":{},\"steps\":[]}"),
      { "member \"where\": unknown member for a rule of type \"sequence\"", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\",\"within\":\"1s\"}"),
      { "rule #1 \"bad\": member \"min\": is required", NULL } },
    { COUNT(",\"min\":0"), { "duplicate object key", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\",\"min\":0,\"within\":\"1s\"}"),
      { "rule #1 \"bad\": member \"min\": must be between 1 and 1000, not 0", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\",\"min\":1.5,\"within\":\"1s\"}"),
      { "member \"min\": must be an integer", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\",\"min\":1001,\"within\":\"1s\"}"),
      { "member \"min\": must be between 1 and 1000, not 1001", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\",\"min\":1}"),
      { "member \"within\": is required", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\",\"min\":1,\"within\":\"7\"}"),
      { "member \"within\": invalid duration \"7\"", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\",\"min\":1,\"within\":\"7x\"}"),
      { "member \"within\": invalid duration \"7x\"", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\",\"min\":1,\"within\":\"-1s\"}"),
      { "member \"within\": invalid duration \"-1s\"", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\",\"min\":1,\"within\":\"1.5s\"}"),
      { "member \"within\": invalid duration \"1.5s\"", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\",\"min\":1,\"within\":\"\"}"),
      { "member \"within\": invalid duration \"\"", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\",\"min\":1,\"within\":7}"),
      { "member \"within\": must be a duration string", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\",\"min\":1,\"within\":\"99999999999d\"}"),
      { "member \"within\": invalid duration", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\",\"min\":1,\"within\":\"367d\"}"),
      { "member \"within\": \"367d\" is longer than the limit of 366d", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\",\"min\":1,\"within\":\"0s\"}"),
      { "member \"within\": \"0s\" must be positive", NULL } },
    { SEQ("[]"), { "rule #1 \"bad\": member \"steps\": must be a non-empty array", NULL } },
    { SEQ("{}"), { "member \"steps\": must be a non-empty array", NULL } },
    { SEQ("[{\"where\":{\"field\":\"a\",\"eq\":\"x\"},\"strict\":true}]"),
      { "member \"steps[0].strict\": the first step cannot be strict", NULL } },
    { SEQ("[{\"where\":{\"field\":\"a\",\"eq\":\"x\"}},{\"strict\":true}]"),
      { "member \"steps[1].where\": is required", NULL } },
    { SEQ("[{\"where\":{\"field\":\"a\",\"eq\":\"x\"},\"when\":1}]"),
      { "member \"steps[0].when\": unknown member of a step", NULL } },
    /* a NUL ends a C string: "count\u0000zz" is not "count" */
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\\u0000zz\",\"min\":1,\"within\":\"1s\"}"),
      { "member \"type\": must be one of", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\\u0000x\",\"key\":\"uid\",\"type\":\"count\",\"min\":1,\"within\":\"1s\"}"),
      { "member \"kind\": must be \"segment\" or \"fraud\"", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"type\":\"count\",\"min\":1,\"within\":\"10s\\u0000abc\"}"),
      { "member \"within\": must be a duration string", NULL } },
    /* comparisons are byte-exact: no UTF mode from the pattern */
    { WHERE("{\"field\":\"ua\",\"regex\":\"(*UTF)bot\"}"),
      { "member \"where.regex\": invalid regex at offset", "UTF is disabled", NULL } },
    { WHERE("{\"field\":\"ua\",\"regex\":\"(unclosed\"}"),
      { "member \"where.regex\": invalid regex at offset 9: missing closing parenthesis", NULL } },
    { WHERE("{\"field\":\"a\",\"eq\":\"x\",\"ne\":\"y\"}"),
      { "member \"where\": a condition has exactly one operator", NULL } },
    { WHERE("{\"field\":\"a\"}"), { "member \"where\": a condition needs an operator", NULL } },
    { WHERE("{\"field\":\"a\",\"like\":\"x\"}"), { "member \"where.like\": unknown operator", NULL } },
    { WHERE("{\"eq\":\"x\"}"), { "member \"where.field\": is required", NULL } },
    { WHERE("{\"field\":\"a\",\"in\":[\"x\",2]}"),
      { "member \"where.in\": must be an array of strings (entry 1 is not a string)", NULL } },
    { WHERE("{\"field\":\"a\",\"in\":\"x\"}"), { "member \"where.in\": must be an array of strings", NULL } },
    { WHERE("{\"field\":\"a\",\"gt\":\"5\"}"), { "member \"where.gt\": must be a number", NULL } },
    { WHERE("{\"field\":\"a\",\"exists\":1}"), { "member \"where.exists\": must be true or false", NULL } },
    { WHERE("{\"all\":{}}"), { "member \"where.all\": must be a non-empty array of conditions", NULL } },
    { WHERE("{\"any\":[]}"), { "member \"where.any\": must be a non-empty array of conditions", NULL } },
    { WHERE("{\"not\":[]}"), { "member \"where.not\": a condition must be an object", NULL } },
    { WHERE("{\"all\":[{\"field\":\"a\",\"eq\":\"x\"}],\"field\":\"b\"}"),
      { "member \"where\": \"all\", \"any\" and \"not\" stand alone", NULL } },
    { WHERE("{\"all\":[{\"any\":[{\"field\":\"a\",\"eq\":1}]}]}"),
      { "member \"where.all[0].any[0].eq\": must be a string", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"d\",\"type\":\"distinct\",\"min\":2,\"within\":\"1h\"}"),
      { "member \"field\": is required", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"d\",\"type\":\"absence\",\"within\":\"1h\",\"cancel\":{\"field\":\"a\",\"eq\":\"x\"}}"),
      { "member \"trigger\": is required", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"d\",\"type\":\"absence\",\"within\":\"1h\",\"after\":\"2h\",\"trigger\":{\"field\":\"a\",\"eq\":\"x\"},\"cancel\":{\"field\":\"a\",\"eq\":\"y\"}}"),
      { "member \"after\": must be shorter than \"within\"", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"\",\"type\":\"count\",\"min\":1,\"within\":\"1s\"}"),
      { "member \"key\": must be a non-empty string", NULL } },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"a:b\",\"type\":\"count\",\"min\":1,\"within\":\"1s\"}"),
      { "rule #1 \"bad\": member \"key\": must not contain ':' (state keys are {field:value})", NULL } },
    { NULL, { NULL } }
};


/*
 * Load errors checked whole: the exact text a user sees, rule and member
 * path included.
 */
#define F  "rules file \"t.json\": "
#define ABS(extra) R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"d\"," \
                     "\"type\":\"absence\",\"within\":\"1h\"" extra "}")
#define STEP_A  "{\"where\":{\"field\":\"a\",\"eq\":\"x\"}}"

static const struct {
    const char  *json;
    const char  *err;
} exact[] = {
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"uid\",\"min\":1,\"within\":\"1s\"}"),
      F "rule #1 \"bad\": member \"type\": is required" },
    { R("{\"id\":\"bad\",\"key\":\"uid\",\"type\":\"count\",\"min\":1,\"within\":\"1s\"}"),
      F "rule #1 \"bad\": member \"kind\": is required" },
    { ABS(",\"trigger\":{\"field\":\"a\",\"eq\":\"x\"}"),
      F "rule #1 \"bad\": member \"cancel\": is required" },
    { ABS(",\"trigger\":{\"field\":\"a\"},\"cancel\":{\"field\":\"a\",\"eq\":\"y\"}"),
      F "rule #1 \"bad\": member \"trigger\": a condition needs an operator "
        "(eq, ne, in, prefix, suffix, contains, regex, gt, gte, lt, lte, "
        "exists) or all/any/not" },
    { ABS(",\"trigger\":{\"field\":\"a\",\"eq\":\"x\"},\"cancel\":[]"),
      F "rule #1 \"bad\": member \"cancel\": a condition must be an object" },
    { ABS(",\"trigger\":{\"field\":\"a\",\"eq\":\"x\"},\"cancel\":{\"field\":\"a\",\"eq\":\"y\"},\"after\":\"soon\""),
      F "rule #1 \"bad\": member \"after\": invalid duration \"soon\": an "
        "integer and a unit (ms, s, m, h, d), at most 366d" },
    { R("{\"id\":\"bad\",\"kind\":\"segment\",\"key\":\"uid\",\"type\":\"sequence\",\"within\":\"1h\"}"),
      F "rule #1 \"bad\": member \"steps\": is required" },
    { R("{\"id\":\"bad\",\"kind\":\"segment\",\"key\":\"uid\",\"type\":\"sequence\",\"within\":\"1h\",\"hold\":30,\"steps\":[" STEP_A "]}"),
      F "rule #1 \"bad\": member \"hold\": must be a duration string "
        "such as \"500ms\", \"10s\", \"5m\", \"1h\" or \"7d\"" },
    { SEQ("[" STEP_A ",\"b\"]"),
      F "rule #1 \"bad\": member \"steps[1]\": must be an object with "
        "\"where\" and optional \"strict\"" },
    { SEQ("[" STEP_A ",{\"where\":{\"field\":\"a\",\"eq\":\"y\"},\"strict\":\"yes\"}]"),
      F "rule #1 \"bad\": member \"steps[1].strict\": must be true or false" },
    { SEQ("[" STEP_A ",{\"where\":{\"field\":\"a\",\"gt\":\"5\"}}]"),
      F "rule #1 \"bad\": member \"steps[1].where.gt\": must be a number" },
    { WHERE("{\"any\":[{\"field\":\"a\",\"eq\":\"x\"},{\"field\":\"a\\u0000b\",\"eq\":\"x\"}]}"),
      F "rule #1 \"bad\": member \"where.any[1].field\": a field name "
        "cannot contain a NUL byte" },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"u\\u0000id\",\"type\":\"count\",\"min\":1,\"within\":\"1s\"}"),
      F "rule #1 \"bad\": member \"key\": a field name cannot contain a NUL "
        "byte" },
    { R("{\"id\":\"bad\",\"kind\":\"fraud\",\"key\":\"d\",\"type\":\"distinct\",\"field\":\"uid\\u0000\",\"min\":2,\"within\":\"1h\"}"),
      F "rule #1 \"bad\": member \"field\": a field name cannot contain a "
        "NUL byte" },
    { WHERE("{\"field\":\"ua\",\"regex\":[\"bot\"]}"),
      F "rule #1 \"bad\": member \"where.regex\": must be a string (a PCRE2 "
        "pattern)" },
    { WHERE("{\"field\":\"\",\"eq\":\"x\"}"),
      F "rule #1 \"bad\": member \"where.field\": must be a non-empty string" },
    { WHERE("{\"not\":{\"field\":7,\"eq\":\"x\"}}"),
      F "rule #1 \"bad\": member \"where.not.field\": must be a non-empty "
        "string" },
    /*
     * Two rules that differ only in their ids, whose definitions hash to
     * one digest: made for this test, by solving rules_hash64() for the
     * id's bytes 16 to 23 (any other pair would take 2^32 tries); it
     * needs the same hash, salt and json_dumps() text as the loader.
     */
    { "{\"rules\":["
      "{\"id\":\"aAAAAAAAABBBBBBBB\",\"kind\":\"segment\",\"key\":\"uid\","
      "\"type\":\"count\",\"min\":1,\"within\":\"1s\"},"
      "{\"id\":\"aNk7La0ZKNg_5qc9J\",\"kind\":\"segment\",\"key\":\"uid\","
      "\"type\":\"count\",\"min\":1,\"within\":\"1s\"}]}",
      F "rule #1 \"aNk7La0ZKNg_5qc9J\": has the same definition digest as "
        "rule \"aAAAAAAAABBBBBBBB\" (a 64-bit collision: rename one of "
        "them)" },
    { NULL, NULL }
};


static const char spec_rules[] =
"{\"rules\": ["
"  { \"id\": \"visited_twice_week\", \"kind\": \"segment\", \"key\": \"uid\","
"    \"type\": \"count\", \"where\": {\"field\": \"type\", \"eq\": \"page\"},"
"    \"min\": 2, \"within\": \"7d\" },"
"  { \"id\": \"viewed_not_carted\", \"kind\": \"segment\", \"key\": \"uid\","
"    \"type\": \"absence\","
"    \"trigger\": {\"all\": [{\"field\": \"type\", \"eq\": \"view\"}, {\"field\": \"product\", \"eq\": \"P42\"}]},"
"    \"cancel\":  {\"all\": [{\"field\": \"type\", \"eq\": \"cart\"}, {\"field\": \"product\", \"eq\": \"P42\"}]},"
"    \"after\": \"0s\", \"within\": \"30d\" },"
"  { \"id\": \"home_sale_buy\", \"kind\": \"segment\", \"key\": \"uid\","
"    \"type\": \"sequence\","
"    \"steps\": [ {\"where\": {\"field\": \"path\", \"eq\": \"/home\"}},"
"               {\"where\": {\"field\": \"path\", \"prefix\": \"/sale\"}},"
"               {\"where\": {\"all\": [{\"field\": \"type\", \"eq\": \"purchase\"},"
"                                  {\"field\": \"product\", \"eq\": \"P42\"}]}} ],"
"    \"within\": \"1h\", \"hold\": \"30d\" },"
"  { \"id\": \"ip_burst\", \"kind\": \"fraud\", \"key\": \"ip\","
"    \"type\": \"count\", \"min\": 21, \"within\": \"10s\" },"
"  { \"id\": \"device_many_users\", \"kind\": \"fraud\", \"key\": \"device\","
"    \"type\": \"distinct\", \"field\": \"uid\", \"min\": 5, \"within\": \"1h\" }"
"]}";


/* Ids found with case ignored, as nginx's lowercased variable names. */
static void
ids_without_case(void)
{
    int                  amb;
    char                 err[RULES_ERR_LEN];
    rules_set_t         *rs;
    static const char    json[] =
        "{\"rules\":["
        "{\"id\":\"Twice\",\"kind\":\"segment\",\"key\":\"uid\","
        "\"type\":\"count\",\"min\":2,\"within\":\"1h\"},"
        "{\"id\":\"TWICE\",\"kind\":\"segment\",\"key\":\"uid\","
        "\"type\":\"count\",\"min\":2,\"within\":\"1d\"},"
        "{\"id\":\"OnceAWeek\",\"kind\":\"segment\",\"key\":\"uid\","
        "\"type\":\"count\",\"min\":1,\"within\":\"7d\"}]}";

    rs = rules_load_buffer(json, strlen(json), "case", err, sizeof(err));
    ok(rs != NULL, "ids that differ only in case load");

    if (rs == NULL) {
        printf("# %s\n", err);
        return;
    }

    ok(rules_find_id(rs, "Twice", 5) == rules_rule(rs, 0)
       && rules_find_id(rs, "TWICE", 5) == rules_rule(rs, 1)
       && rules_find_id(rs, "twice", 5) == NULL, "exact lookup keeps case");
    ok(rules_find_id_nocase(rs, "onceaweek", 9, &amb) == rules_rule(rs, 2)
       && !amb, "lowercased id found");
    ok(rules_find_id_nocase(rs, "ONCEaweek", 9, &amb) == rules_rule(rs, 2),
       "any case found");
    ok(rules_find_id_nocase(rs, "twice", 5, &amb) == NULL && amb,
       "two ids that differ only in case: ambiguous");
    ok(rules_find_id_nocase(rs, "thrice", 6, &amb) == NULL && !amb,
       "unknown id: absent, not ambiguous");
    ok(rules_find_id_nocase(rs, "", 0, &amb) == NULL && !amb, "empty id");

    rules_free(rs);
}


/* Matched ids and the fraud flag, with the bitmap over three words. */
static void
results_over_words(void)
{
    char            *json, err[RULES_ERR_LEN], ids[256];
    size_t           i, len, n;
    rules_set_t     *rs;
    rules_result_t   res;
    static const size_t  set[] = { 0, 63, 64, 127, 129 };

    json = malloc(130 * 160 + 32);
    len = sprintf(json, "{\"rules\":[");

    for (i = 0; i < 130; i++) {
        len += sprintf(json + len, "%s{\"id\":\"a%zu\",\"kind\":\"%s\","
                       "\"key\":\"uid\",\"type\":\"count\",\"min\":%zu,"
                       "\"within\":\"1h\"}", i ? "," : "", i,
                       i == 100 ? "fraud" : "segment", i + 1);
    }

    sprintf(json + len, "]}");
    rs = rules_load_buffer(json, strlen(json), "130", err, sizeof(err));
    free(json);
    ok(rs != NULL, "130 rules load");

    if (rs == NULL) {
        printf("# %s\n", err);
        return;
    }

    rules_result_init(rs, &res);

    for (i = 0; i < sizeof(set) / sizeof(set[0]); i++) {
        rules_result_add_digests(rs, &res, rules_rule(rs, set[i])->digest_bytes,
                                 8);
    }

    n = rules_result_ids(rs, &res, ids, sizeof(ids));
    ids[n < sizeof(ids) ? n : sizeof(ids) - 1] = '\0';
    is_str(ids, "a0,a63,a64,a127,a129", "matched ids across words, in "
           "file order");
    is_int(rules_result_ids(rs, &res, ids, 4), n,
           "a short buffer: the length needed");
    ok(!rules_result_fraud(rs, &res), "no fraud rule matched");

    rules_result_add_digests(rs, &res, rules_rule(rs, 100)->digest_bytes, 8);
    ok(rules_result_fraud(rs, &res), "fraud rule a100 matched");

    rules_result_clear(&res);
    is_int(rules_result_ids(rs, &res, ids, sizeof(ids)), 0, "none matched");

    rules_result_free(&res);
    rules_free(rs);
}


static void
refused_exact(const char *what, const char *json, size_t len,
    const char *want)
{
    char          err[RULES_ERR_LEN];
    rules_set_t  *rs;

    err[0] = '\0';
    rs = rules_load_buffer(json, len, "t.json", err, sizeof(err));
    ok(rs == NULL, "%s: refused", what);
    rules_free(rs);
    is_str(err, want, "%s: the message", what);
}


static void
loads(const char *what, const char *json, size_t len)
{
    char          err[RULES_ERR_LEN];
    rules_set_t  *rs;

    err[0] = '\0';
    rs = rules_load_buffer(json, len, "t.json", err, sizeof(err));
    ok(rs != NULL, "%s: loads", what);

    if (rs == NULL) {
        printf("# %s\n", err);
    }

    rules_free(rs);
}


/*
 * The limits of Hardening's table, each refused one past it with the
 * rule and member, and accepted at it (but for the in list's million).
 */
static void
limits(void)
{
    char    *json, want[RULES_ERR_LEN];
    size_t   len, i, n;

    json = malloc(16 * 1000 * 1000);

    if (json == NULL) {
        ok(0, "memory for the limits' files");
        return;
    }

    /* rules in a file: 10000 */

    for (n = 10000; n <= 10001; n++) {
        len = sprintf(json, "{\"rules\":[");

        for (i = 0; i < n; i++) {
            len += sprintf(json + len, "%s{\"id\":\"r%zu\",\"kind\":"
                           "\"segment\",\"key\":\"uid\",\"type\":\"count\","
                           "\"min\":1,\"within\":\"%zus\"}", i ? "," : "",
                           i, i % 100 + 1);
        }

        len += sprintf(json + len, "]}");

        if (n == 10000) {
            loads("10000 rules", json, len);

        } else {
            refused_exact("10001 rules", json, len,
                          F "10001 rules, more than the limit of 10000");
        }
    }

    /* steps of a sequence: 32 */

    for (n = 32; n <= 33; n++) {
        len = sprintf(json, R("{\"id\":\"bad\",\"kind\":\"segment\",\"key\":"
                              "\"uid\",\"type\":\"sequence\",\"within\":"
                              "\"1h\",\"steps\":["));

        /* R()'s closing "]}" comes after the rule: cut it, put it back */
        len -= 2;

        for (i = 0; i < n; i++) {
            len += sprintf(json + len, "%s{\"where\":{\"field\":\"a\","
                           "\"eq\":\"%zu\"}}", i ? "," : "", i);
        }

        len += sprintf(json + len, "]}]}");

        if (n == 32) {
            loads("32 steps", json, len);

        } else {
            refused_exact("33 steps", json, len,
                          F "rule #1 \"bad\": member \"steps\": 33 steps, "
                          "more than the limit of 32");
        }
    }

    /* distinct field names: 256, "uid" and f0 to f254; f255 is one more */

    for (n = 255; n <= 256; n++) {
        len = sprintf(json, WHERE("{\"any\":["));
        len -= 3;       /* "}]}": the where and the rule are closed below */

        for (i = 0; i < n; i++) {
            len += sprintf(json + len, "%s{\"field\":\"f%zu\",\"exists\":"
                           "true}", i ? "," : "", i);
        }

        len += sprintf(json + len, "]}}]}");

        if (n == 255) {
            loads("256 field names", json, len);

        } else {
            refused_exact("257 field names", json, len,
                          F "rule #1 \"bad\": member \"where.any[255].field\": "
                          "more than 256 distinct field names in the file");
        }
    }

    /* condition nesting: 32 levels, "where" and 31 "not" in it */

    for (n = 31; n <= 32; n++) {
        len = sprintf(json, WHERE(""));
        len -= 3;       /* "}]}": cut after "where": */

        for (i = 0; i < n; i++) {
            len += sprintf(json + len, "{\"not\":");
        }

        len += sprintf(json + len, "{\"field\":\"a\",\"eq\":\"x\"}");

        for (i = 0; i < n; i++) {
            json[len++] = '}';
        }

        len += sprintf(json + len, "}]}");

        if (n == 31) {
            loads("conditions 32 deep", json, len);

        } else {
            strcpy(want, F "rule #1 \"bad\": member \"where");

            for (i = 0; i < n; i++) {
                strcat(want, ".not");
            }

            strcat(want, "\": conditions nested deeper than 32");
            refused_exact("conditions 33 deep", json, len, want);
        }
    }

    /* entries of an in list: 1000000 (checked before they are read) */

    len = sprintf(json, WHERE("{\"field\":\"a\",\"in\":["));
    len -= 3;

    for (i = 0; i < 1000001; i++) {
        len += sprintf(json + len, "%s\"%zu\"", i ? "," : "", i % 10);
    }

    len += sprintf(json + len, "]}}]}");
    refused_exact("an in list of 1000001", json, len,
                  F "rule #1 \"bad\": member \"where.in\": 1000001 entries, "
                  "more than the limit of 1000000");

    free(json);
}


int
main(void)
{
    char                 err[RULES_ERR_LEN], edited[8192], *p;
    rules_set_t         *rs, *rs2;
    const rules_rule_t  *r;
    const rules_group_t *g;
    int                  i, k;

    for (i = 0; cases[i].json; i++) {
        err[0] = '\0';
        rs = rules_load_buffer(cases[i].json, strlen(cases[i].json),
                               "t.json", err, sizeof(err));
        ok(rs == NULL, "case %d is refused", i);
        rules_free(rs);

        for (k = 0; k < 3 && cases[i].want[k]; k++) {
            like_str(err, cases[i].want[k], "case %d: message names it", i);
        }

        like_str(err, "rules file \"t.json\": ", "case %d: and the file", i);
    }

    for (i = 0; exact[i].json; i++) {
        char  what[32];

        snprintf(what, sizeof(what), "exact case %d", i);
        refused_exact(what, exact[i].json, strlen(exact[i].json),
                      exact[i].err);
    }

    limits();

    rs = rules_load_buffer(spec_rules, strlen(spec_rules), "spec", err,
                           sizeof(err));
    ok(rs != NULL, "SPEC.md's example rules load");
    if (rs == NULL) {
        printf("# %s\n", err);
        return done_testing();
    }

    is_int(rules_count(rs), 5, "five rules");
    r = rules_rule(rs, 0);
    is_str(r->id, "visited_twice_week", "rule 0 id");
    is_int(r->type, RULES_TYPE_COUNT, "rule 0 type");
    is_int(r->min, 2, "rule 0 min");
    is_int(r->within, 7LL * 86400 * 1000, "rule 0 within in ms");
    is_int(r->ttl, 7LL * 86400 * 1000, "rule 0 ttl");
    r = rules_rule(rs, 1);
    is_int(r->type, RULES_TYPE_ABSENCE, "rule 1 type");
    is_int(r->after, 0, "rule 1 after");
    r = rules_rule(rs, 2);
    is_int(r->nsteps, 3, "rule 2 has 3 steps");
    is_int(r->hold, 30LL * 86400 * 1000, "rule 2 hold");
    is_int(r->ttl, 30LL * 86400 * 1000, "rule 2 ttl is the longer of within and hold");
    r = rules_rule(rs, 3);
    is_int(r->kind, RULES_KIND_FRAUD, "rule 3 is fraud");
    r = rules_rule(rs, 4);
    is_str(rules_field_name(rs, r->distinct_field), "uid", "rule 4 counts uids");

    is_int(rules_ngroups(rs), 3, "three key groups: uid, ip, device");
    g = rules_group(rs, 0);
    is_str(rules_field_name(rs, g->key_field), "uid", "group 0 is uid");
    ok(g->nrules == 3 && g->rules[0] == 0 && g->rules[1] == 1
       && g->rules[2] == 2, "group 0 holds rules 0, 1, 2 in file order");
    ok(rules_field_index(rs, "product", 7) >= 0, "field product is known");
    ok(rules_field_index(rs, "colour", 6) < 0, "field colour is not");
    ok(rules_find_id(rs, "ip_burst", 8) == rules_rule(rs, 3), "find by id");
    ok(rules_find_digest(rs, rules_rule(rs, 2)->digest_bytes)
       == rules_rule(rs, 2), "find by digest");

    for (i = 0, k = 0; i < 5; i++) {
        unsigned char  d[8];

        k += rules_find_digest(rs, rules_rule(rs, i)->digest_bytes)
             == rules_rule(rs, i);
        memcpy(d, rules_rule(rs, i)->digest_bytes, 8);
        d[i] ^= 0x10;
        k += rules_find_digest(rs, d) == NULL;
    }

    is_int(k, 10, "every rule found by its digest, no other digest found");

    for (i = 0; i < 5; i++) {
        for (k = i + 1; k < 5; k++) {
            ok(rules_rule(rs, i)->digest != rules_rule(rs, k)->digest,
               "rules %d and %d have different digests", i, k);
        }
    }

    rs2 = rules_load_buffer(spec_rules, strlen(spec_rules), "again", err,
                            sizeof(err));
    ok(rs2 && rules_rule(rs2, 2)->digest == rules_rule(rs, 2)->digest,
       "the same definition gives the same digest");
    rules_free(rs2);

    snprintf(edited, sizeof(edited), "%s", spec_rules);
    p = strstr(edited, "\"min\": 21");
    p[8] = '2';
    rs2 = rules_load_buffer(edited, strlen(edited), "edited", err,
                            sizeof(err));
    ok(rs2 && rules_rule(rs2, 3)->digest != rules_rule(rs, 3)->digest,
       "an edited rule gets a new digest");
    ok(rs2 && rules_rule(rs2, 0)->digest == rules_rule(rs, 0)->digest,
       "the rules that did not change keep theirs");
    rules_free(rs2);
    rules_free(rs);

    results_over_words();
    ids_without_case();

    return done_testing();
}
