/*
 * Events as JSON: the POST body of the module's JSON mode (one object or
 * an array of objects) and the lines of rules-replay's input.
 *
 * A member whose name is a field of the rule set gives that field's
 * value: a string as is, a number as its shortest decimal text (12,
 * -3.5, 1e+100), true/false as "true"/"false"; null, objects and arrays
 * give no value.  Other members are ignored, except the time member (if
 * one is named), which must be a non-negative integer number of ms not
 * above RULES_MAX_TS_MS (a JSON integer or a string of digits).
 */

#ifndef RULES_JSON_EVENT_H
#define RULES_JSON_EVENT_H

#include "rules_engine.h"


#define RULES_MAX_BODY_EVENTS  1000   /* objects in one JSON body */


typedef struct {
    rules_str_t       *values;    /* rules_nfields() per event */
    int64_t           *ts;        /* per event; -1: no time member */
    size_t             nevents;

    /* internal */
    void              *json;      /* the parsed document */
    unsigned char     *strbuf;    /* formatted numbers */
    size_t             strbuf_len;
    size_t             strbuf_size;
    size_t             events_size;
} rules_json_events_t;


typedef enum {
    RULES_JSON_OK = 0,
    RULES_JSON_BAD_JSON,       /* not JSON, or not an object/array */
    RULES_JSON_BAD_EVENT,      /* an array element that is not an object */
    RULES_JSON_TOO_MANY,       /* more than max_events objects */
    RULES_JSON_BAD_TIME,       /* time member not a valid time */
    RULES_JSON_NOMEM
} rules_json_rc_t;


/*
 * Parse buf.  time_member (NULL: none) names the member holding the event
 * time.  On error, err (RULES_ERR_LEN bytes) says why, with the
 * line:column for bad JSON.  Free with rules_json_events_free() whatever
 * the result.
 */
rules_json_rc_t rules_json_events_parse(const rules_set_t *rs,
    const char *buf, size_t len, const char *time_member,
    size_t max_events, rules_json_events_t *ev, char *err);
void rules_json_events_free(rules_json_events_t *ev);

#endif /* RULES_JSON_EVENT_H */
