/*
 * JSON events: request bodies and rules-replay's input lines.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "rules_internal.h"
#include "rules_json_event.h"


#define RULES_NUMBER_TEXT_LEN  32


static int rules_json_real(double d, char *p);

static int
rules_json_strbuf(rules_json_events_t *ev, size_t more)
{
    unsigned char  *p;
    size_t          size;

    if (ev->strbuf_len + more <= ev->strbuf_size) {
        return 0;
    }

    /* values point into the buffer, so it never moves: size it once */

    if (ev->strbuf != NULL) {
        return -1;
    }

    size = more;
    p = malloc(size);

    if (p == NULL) {
        return -1;
    }

    ev->strbuf = p;
    ev->strbuf_size = size;

    return 0;
}


/*
 * The time member: a JSON integer, a JSON number with no fraction
 * (1.7e12, 1700000000000.0: jansson gives those as reals), or a string
 * of decimal digits.
 */
static int
rules_json_time(json_t *j, int64_t *out)
{
    const char  *s;
    double       d;
    int64_t      v;
    size_t       len;

    if (json_is_real(j)) {
        d = json_real_value(j);

        /* NaN fails the comparisons; within the range the cast is exact */
        if (!(d >= 0 && d <= (double) RULES_MAX_TS_MS)
            || (double) (int64_t) d != d)
        {
            return -1;
        }

        *out = (int64_t) d;
        return 0;
    }

    if (json_is_integer(j)) {
        v = json_integer_value(j);

        if (v < 0 || v > RULES_MAX_TS_MS) {
            return -1;
        }

        *out = v;
        return 0;
    }

    if (!json_is_string(j)) {
        return -1;
    }

    s = json_string_value(j);
    len = json_string_length(j);

    return rules_parse_time((const unsigned char *) s, len, out);
}


static rules_json_rc_t
rules_json_event(const rules_set_t *rs, json_t *obj, const char *time_member,
    rules_str_t *values, int64_t *ts, rules_json_events_t *ev, char *err,
    size_t index)
{
    const char     *name;
    json_t         *v;
    int             f;
    int             n;
    unsigned char  *p;

    *ts = -1;

    json_object_foreach(obj, name, v) {
        if (time_member && strcmp(name, time_member) == 0) {
            if (rules_json_time(v, ts) != 0) {
                snprintf(err, RULES_ERR_LEN, "event %zu: \"%s\" must be a "
                         "non-negative integer number of ms, at most "
                         "2^53 - 1", index, time_member);
                return RULES_JSON_BAD_TIME;
            }

            continue;
        }

        f = rules_field_index(rs, name, strlen(name));

        if (f < 0) {
            continue;
        }

        switch (json_typeof(v)) {

        case JSON_STRING:
            values[f].data = (const unsigned char *) json_string_value(v);
            values[f].len = json_string_length(v);
            break;

        case JSON_INTEGER:
        case JSON_REAL:
            p = ev->strbuf + ev->strbuf_len;

            if (json_is_integer(v)) {
                n = snprintf((char *) p, RULES_NUMBER_TEXT_LEN, "%lld",
                             (long long) json_integer_value(v));

            } else {
                n = rules_json_real(json_real_value(v), (char *) p);
            }

            values[f].data = p;
            values[f].len = (size_t) n;
            ev->strbuf_len += RULES_NUMBER_TEXT_LEN;
            break;

        case JSON_TRUE:
            values[f].data = (const unsigned char *) "true";
            values[f].len = 4;
            break;

        case JSON_FALSE:
            values[f].data = (const unsigned char *) "false";
            values[f].len = 5;
            break;

        default:
            /* null, objects and arrays give no value */
            break;
        }
    }

    return RULES_JSON_OK;
}


/*
 * A JSON number that is not an integer token (100.0, 1e2, 0.5): a whole
 * value within the integer tokens' range (64 bits) is written as an
 * integer ("100", as the token 100 gives), any other as the shortest "%g"
 * text that reads back as the same double ("0.5", "1.5e+20"), so that
 * one number always gives one text.
 */
static int
rules_json_real(double d, char *p)
{
    int  prec, n;

    if (d >= -9223372036854775808.0 && d < 9223372036854775808.0
        && d == (double) (long long) d)
    {
        return snprintf(p, RULES_NUMBER_TEXT_LEN, "%lld", (long long) d);
    }

    for (prec = 1; prec < 17; prec++) {
        n = snprintf(p, RULES_NUMBER_TEXT_LEN, "%.*g", prec, d);

        if (strtod(p, NULL) == d) {
            return n;
        }
    }

    return snprintf(p, RULES_NUMBER_TEXT_LEN, "%.17g", d);
}


static size_t
rules_json_numbers(json_t *obj)
{
    const char  *name;
    json_t      *v;
    size_t       n;

    n = 0;

    json_object_foreach(obj, name, v) {
        if (json_is_number(v)) {
            n++;
        }
    }

    return n;
}


rules_json_rc_t
rules_json_events_parse(const rules_set_t *rs, const char *buf, size_t len,
    const char *time_member, size_t max_events, rules_json_events_t *ev,
    char *err)
{
    json_t           *root, *obj;
    json_error_t      jerr;
    size_t            i, n, nf, numbers;
    rules_json_rc_t   rc;

    memset(ev, 0, sizeof(rules_json_events_t));
    err[0] = '\0';

    rules_json_begin();
    root = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL,
                      &jerr);

    if (rules_json_end()) {
        if (root) {
            json_decref(root);
        }

        snprintf(err, RULES_ERR_LEN, "out of memory");
        return RULES_JSON_NOMEM;
    }

    if (root == NULL) {
        /* jansson sets no error when its first allocation fails (another
         * program's allocation functions: rules_json_alloc.c) */

        if (json_error_code(&jerr) == json_error_out_of_memory
            || jerr.text[0] == '\0')
        {
            snprintf(err, RULES_ERR_LEN, "out of memory");
            return RULES_JSON_NOMEM;
        }

        snprintf(err, RULES_ERR_LEN, "invalid JSON at line %d, column %d: "
                 "%s", jerr.line, jerr.column, jerr.text);
        return RULES_JSON_BAD_JSON;
    }

    ev->json = root;

    if (json_is_object(root)) {
        n = 1;

    } else if (json_is_array(root)) {
        n = json_array_size(root);

    } else {
        snprintf(err, RULES_ERR_LEN, "the body must be a JSON object or an "
                 "array of objects");
        return RULES_JSON_BAD_JSON;
    }

    if (n > max_events) {
        snprintf(err, RULES_ERR_LEN, "%zu events, more than the limit of "
                 "%zu", n, max_events);
        return RULES_JSON_TOO_MANY;
    }

    numbers = 0;

    for (i = 0; i < n; i++) {
        obj = json_is_array(root) ? json_array_get(root, i) : root;

        if (!json_is_object(obj)) {
            snprintf(err, RULES_ERR_LEN, "event %zu is not a JSON object", i);
            return RULES_JSON_BAD_EVENT;
        }

        numbers += rules_json_numbers(obj);
    }

    nf = rules_nfields(rs);
    ev->values = calloc(n * nf + 1, sizeof(rules_str_t));
    ev->ts = calloc(n + 1, sizeof(int64_t));
    ev->events_size = n;

    if (ev->values == NULL || ev->ts == NULL
        || (numbers
            && rules_json_strbuf(ev, numbers * RULES_NUMBER_TEXT_LEN) != 0))
    {
        snprintf(err, RULES_ERR_LEN, "out of memory");
        return RULES_JSON_NOMEM;
    }

    for (i = 0; i < n; i++) {
        obj = json_is_array(root) ? json_array_get(root, i) : root;

        rc = rules_json_event(rs, obj, time_member, ev->values + i * nf,
                              &ev->ts[i], ev, err, i);

        if (rc != RULES_JSON_OK) {
            return rc;
        }
    }

    ev->nevents = n;

    return RULES_JSON_OK;
}


void
rules_json_events_free(rules_json_events_t *ev)
{
    if (ev->json) {
        json_decref((json_t *) ev->json);
    }

    free(ev->values);
    free(ev->ts);
    free(ev->strbuf);
    memset(ev, 0, sizeof(rules_json_events_t));
}
