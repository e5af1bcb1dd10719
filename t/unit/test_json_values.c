/*
 * The values a JSON event gives its fields (README "rules_body",
 * rules_json_event.h): a string as is, a number as one decimal text
 * whatever its spelling, true/false as "true"/"false", null, objects and
 * arrays no value; a number the parser cannot hold (an integer beyond a
 * signed 64-bit one, a real beyond the doubles), in any member, used or
 * not, makes the whole body bad JSON.  Exact strings, byte for byte.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules_engine.h"
#include "rules_json_event.h"
#include "tap.h"


static const char  rules_json[] =
    "{\"rules\":[{\"id\":\"r\",\"kind\":\"segment\",\"key\":\"uid\","
    "\"type\":\"count\",\"min\":1,\"within\":\"1h\",\"where\":{\"all\":["
    "{\"field\":\"a\",\"exists\":true},{\"field\":\"b\",\"exists\":true},"
    "{\"field\":\"c\",\"exists\":true}]}}]}";


static rules_set_t  *rs;
static char          got[RULES_ERR_LEN + 64];


/*
 * The text field "name" of event i has after parsing body, "(none)" when
 * it has no value (a NULL data pointer), or "(rc N: err)" when the body
 * does not parse.
 */
static const char *
value_of(const char *body, size_t i, const char *name)
{
    int                   f;
    char                  err[RULES_ERR_LEN];
    rules_str_t          *v;
    rules_json_rc_t       rc;
    rules_json_events_t   ev;

    rc = rules_json_events_parse(rs, body, strlen(body), "ts", 10, &ev, err);

    if (rc != RULES_JSON_OK) {
        snprintf(got, sizeof(got), "(rc %d: %s)", (int) rc, err);
        rules_json_events_free(&ev);
        return got;
    }

    f = rules_field_index(rs, name, strlen(name));

    if (f < 0 || i >= ev.nevents) {
        snprintf(got, sizeof(got), "(no field %s in event %zu)", name, i);
        rules_json_events_free(&ev);
        return got;
    }

    v = &ev.values[i * rules_nfields(rs) + f];

    if (v->data == NULL) {
        snprintf(got, sizeof(got), "(none%s)", v->len ? ", with a length" : "");

    } else if (v->len >= sizeof(got)) {
        snprintf(got, sizeof(got), "(%zu bytes)", v->len);

    } else {
        memcpy(got, v->data, v->len);
        got[v->len] = '\0';
    }

    rules_json_events_free(&ev);
    return got;
}


/* the value of field "a" of a one-event body {"a": json} */
static const char *
a_is(const char *json)
{
    static char  body[256];

    snprintf(body, sizeof(body), "{\"uid\": \"u\", \"a\": %s, \"ts\": 1}",
             json);
    return value_of(body, 0, "a");
}


/* parse and return the result code only, with nevents in *n */
static rules_json_rc_t
parse_rc(const char *body, size_t *n, char *err)
{
    rules_json_rc_t       rc;
    rules_json_events_t   ev;

    rc = rules_json_events_parse(rs, body, strlen(body), "ts", 10, &ev, err);
    *n = ev.nevents;
    rules_json_events_free(&ev);
    return rc;
}


static void
test_literals(void)
{
    is_str(a_is("true"), "true", "true gives \"true\"");
    is_str(a_is("false"), "false", "false gives \"false\"");
    is_str(a_is("null"), "(none)", "null gives no value");
    is_str(a_is("{}"), "(none)", "an empty object gives no value");
    is_str(a_is("{\"x\": \"y\"}"), "(none)", "an object gives no value");
    is_str(a_is("[]"), "(none)", "an empty array gives no value");
    is_str(a_is("[\"x\", 1, true]"), "(none)", "an array gives no value");
    is_str(a_is("\"true\""), "true", "a string as is");
    is_str(a_is("\"\""), "", "an empty string is an empty value, not none");
    is_str(a_is("\" 007 \""), " 007 ", "a string is not trimmed or read");
    is_str(a_is("\"caf\\u00e9\""), "caf\xc3\xa9", "\\u escapes as UTF-8");
}


static void
test_numbers(void)
{
    is_str(a_is("0"), "0", "0 gives \"0\"");
    is_str(a_is("-0"), "0", "-0 is 0");
    is_str(a_is("12"), "12", "12 gives \"12\"");
    is_str(a_is("-3"), "-3", "-3 gives \"-3\"");
    is_str(a_is("100"), "100", "100 gives \"100\"");
    is_str(a_is("100.0"), "100", "100.0 gives 100");
    is_str(a_is("1e2"), "100", "1e2 gives 100");
    is_str(a_is("1E2"), "100", "1E2 gives 100");
    is_str(a_is("-3.5"), "-3.5", "-3.5 gives \"-3.5\"");
    is_str(a_is("0.25"), "0.25", "0.25 gives \"0.25\"");
    is_str(a_is("2.5e-1"), "0.25", "2.5e-1 gives 0.25");
    is_str(a_is("0.1"), "0.1", "0.1, the shortest text that reads back");
    is_str(a_is("1.5e20"), "1.5e+20", "1.5e20 (beyond 64 bits) gives 1.5e+20");
    is_str(a_is("1e100"), "1e+100", "1e100 gives 1e+100");
    is_str(a_is("1.7976931348623157e308"), "1.7976931348623157e+308",
           "the largest double, all 17 digits");
    is_str(a_is("9223372036854775807"), "9223372036854775807",
           "the largest signed 64-bit integer");
    is_str(a_is("-9223372036854775808"), "-9223372036854775808",
           "the smallest signed 64-bit integer");
    is_str(a_is("1234567890123456789"), "1234567890123456789",
           "a 19-digit integer keeps every digit");
    is_str(a_is("9.2233720368547758e18"), "9.223372036854776e+18",
           "a real equal to 2^63 is beyond the integers: %%g text");
}


static void
test_several(void)
{
    const char  *body;

    body = "{\"uid\": \"u\", \"a\": 1, \"x\": 777, \"b\": 2.5, \"c\": true,"
           " \"ts\": 1}";
    is_str(value_of(body, 0, "a"), "1", "several numbers: a");
    is_str(value_of(body, 0, "b"), "2.5", "several numbers: b");
    is_str(value_of(body, 0, "c"), "true", "several numbers: c");

    body = "[{\"uid\": \"u\", \"a\": 11, \"b\": false, \"ts\": 1},"
           " {\"uid\": \"v\", \"a\": 22, \"c\": null, \"ts\": 2}]";
    is_str(value_of(body, 0, "a"), "11", "an array: event 0 a");
    is_str(value_of(body, 0, "b"), "false", "an array: event 0 b");
    is_str(value_of(body, 0, "c"), "(none)", "an array: event 0 has no c");
    is_str(value_of(body, 1, "a"), "22", "an array: event 1 a");
    is_str(value_of(body, 1, "b"), "(none)", "an array: event 1 has no b");
    is_str(value_of(body, 1, "c"), "(none)", "an array: event 1 c is null");
    is_str(value_of(body, 1, "uid"), "v", "an array: event 1 uid");
}


static void
test_too_big(void)
{
    static const char  *bad[] = {
        "{\"uid\": \"u\", \"a\": 9223372036854775808, \"ts\": 1}",
        "{\"uid\": \"u\", \"a\": -9223372036854775809, \"ts\": 1}",
        "{\"uid\": \"u\", \"a\": 1e400, \"ts\": 1}",
        "{\"uid\": \"u\", \"a\": -1e400, \"ts\": 1}",
        /* in a member that is no field */
        "{\"uid\": \"u\", \"unused\": 9223372036854775808, \"ts\": 1}",
        "{\"uid\": \"u\", \"unused\": 1e400, \"ts\": 1}",
        /* nested, in a value that gives no field a value */
        "{\"uid\": \"u\", \"a\": [1e400], \"ts\": 1}",
        /* in the second event: the first is not kept either */
        "[{\"uid\": \"u\", \"a\": 1, \"ts\": 1},"
        " {\"uid\": \"u\", \"a\": 99999999999999999999, \"ts\": 2}]",
    };
    char             err[RULES_ERR_LEN];
    size_t           i, n;
    rules_json_rc_t  rc;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rc = parse_rc(bad[i], &n, err);
        is_int(rc, RULES_JSON_BAD_JSON, "too big a number is bad JSON: %s",
               bad[i]);
        is_int(n, 0, "  and gives no event");
        like_str(err, "invalid JSON at line 1, column ",
                 "  with the place in the error");
    }

    /* what is just within the limits parses */
    rc = parse_rc("{\"uid\": \"u\", \"unused\": 9223372036854775807, "
                  "\"a\": 1e308, \"ts\": 1}", &n, err);
    is_int(rc, RULES_JSON_OK, "2^63 - 1 and 1e308 are held");
    is_int(n, 1, "  one event");
}


/* the time member: an integer, a number with no fraction, digits */
static void
test_time(void)
{
    size_t                i;
    char                  body[256], err[RULES_ERR_LEN];
    rules_json_rc_t       rc;
    rules_json_events_t   ev;

    static const struct {
        const char  *ts;
        int64_t      want;      /* -1: the event is refused */
    } cases[] = {
        { "1700000000000", 1700000000000LL },
        { "1.7e12", 1700000000000LL },
        { "1700000000000.0", 1700000000000LL },
        { "0.0", 0 },
        { "9007199254740991", 9007199254740991LL },
        { "9007199254740991.0", 9007199254740991LL },
        { "\"0017\"", 17 },
        { "1.5", -1 },
        { "1e-3", -1 },
        { "-1.0", -1 },
        { "-1", -1 },
        { "9007199254740992.0", -1 },
        { "1e300", -1 },
        { "\"1.5\"", -1 },
        { "true", -1 },
        { "null", -1 },
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(body, sizeof(body), "{\"uid\": \"u\", \"ts\": %s}",
                 cases[i].ts);

        rc = rules_json_events_parse(rs, body, strlen(body), "ts", 10, &ev,
                                     err);

        if (cases[i].want < 0) {
            is_int(rc, RULES_JSON_BAD_TIME, "\"ts\": %s is refused",
                   cases[i].ts);

        } else {
            is_int(rc, RULES_JSON_OK, "\"ts\": %s is a time", cases[i].ts);
            ok(rc == RULES_JSON_OK && ev.ts[0] == cases[i].want,
               "  of %lld ms", (long long) cases[i].want);
        }

        rules_json_events_free(&ev);
    }
}


int
main(void)
{
    char  err[RULES_ERR_LEN];

    rs = rules_load_buffer(rules_json, strlen(rules_json), "test", err,
                           sizeof(err));

    if (rs == NULL) {
        printf("# cannot load the rules: %s\n", err);
        return 1;
    }

    test_literals();
    test_numbers();
    test_several();
    test_too_big();
    test_time();

    rules_free(rs);

    return done_testing();
}
