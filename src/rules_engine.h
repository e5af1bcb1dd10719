/*
 * ngx_http_rules_module: the nginx-independent rule engine.
 *
 * The engine loads a rule file (SPEC.md section 2), evaluates the rule
 * conditions of one event, and turns the event into one "key operation"
 * per key group (rules sharing a key field).  A key operation is applied
 * to the key's state blob in process, always (rules_state_apply(), or
 * rules_state_work_apply() on a state held parsed; rules_state.h
 * documents the format): Redis only stores the states and the logs of
 * the operations applied since (rules_log.h), through the script in
 * rules_script.c or the rules Redis module.
 */

#ifndef RULES_ENGINE_H
#define RULES_ENGINE_H

#include <stddef.h>
#include <stdint.h>


/* Named limits.  Each one is enforced and documented in the README. */
#define RULES_ID_MAX_LEN         64      /* [A-Za-z0-9_]{1,64} */
#define RULES_MAX_RULES          10000
#define RULES_MAX_FIELDS         256     /* distinct field names in a file */
#define RULES_MAX_STEPS          32      /* steps of a sequence rule */
#define RULES_MAX_MIN            1000    /* "min" of count and distinct */
#define RULES_SHARE_MAX_MEMBERS  256     /* rules sharing a distinct record */
#define RULES_MAX_IN_ENTRIES     1000000 /* strings of one "in" list */
#define RULES_MAX_COND_DEPTH     32      /* nesting of all/any/not */
#define RULES_MAX_DURATION_MS    (366LL * 86400 * 1000)  /* 366d */
#define RULES_MAX_TS_MS          9007199254740991LL      /* 2^53 - 1 */
#define RULES_DEFAULT_KEY_MAX    256     /* bytes of a key value */
#define RULES_DEFAULT_VALUE_MAX  4096    /* bytes of any field value */
#define RULES_REGEX_MATCH_LIMIT  100000  /* PCRE2 match limit */
#define RULES_REGEX_DEPTH_LIMIT  1000    /* PCRE2 depth limit */
#define RULES_INDEX_MIN_RULES    64      /* rules from which an event
                                            evaluates only the rules its
                                            field values can touch */
#define RULES_INDEX_MAX_PAIRS    256     /* (field, value) pairs indexed
                                            per rule; more: always
                                            evaluated */

#define RULES_ERR_LEN            512


typedef enum {
    RULES_KIND_SEGMENT = 0,
    RULES_KIND_FRAUD
} rules_kind_t;


typedef enum {
    RULES_TYPE_COUNT = 1,
    RULES_TYPE_DISTINCT = 2,
    RULES_TYPE_ABSENCE = 3,
    RULES_TYPE_SEQUENCE = 4
} rules_type_t;


/* A string that is not NUL-terminated; len == 0 means "no value". */
typedef struct {
    const unsigned char  *data;
    size_t                len;
} rules_str_t;


typedef struct rules_cond_s  rules_cond_t;
typedef struct rules_set_s   rules_set_t;


typedef struct {
    /*
     * The fields an event reads first (the type, the condition, the
     * parameters that go into the entry), then the steps, then the
     * names: an event that evaluates hundreds of rules touches two
     * cache lines of each instead of four.
     */
    rules_type_t       type;
    rules_kind_t       kind;

    unsigned           key_field;        /* field index of "key" */
    unsigned           group;            /* key group index */
    unsigned           distinct_field;   /* distinct: field index */
    int                share;            /* index in the set; -1: none */
    size_t             index;            /* position in the file */
    unsigned           min;              /* count, distinct */
    unsigned           nsteps;
    uint32_t           strict_mask;      /* bit i: steps[i] is strict */

    rules_cond_t      *where;            /* count, distinct; NULL: all */
    rules_cond_t      *trigger;          /* absence */
    rules_cond_t      *cancel;           /* absence */

    /* the conditions' memo places (rules_cond_t.memo), read from here */
    unsigned           where_memo;
    unsigned           trigger_memo;
    unsigned           cancel_memo;

    int64_t            within;           /* ms */
    int64_t            after;            /* ms, absence */
    int64_t            hold;             /* ms, sequence */
    int64_t            ttl;              /* ms, longest window or hold */

    uint64_t           digest;           /* of the rule's definition */
    unsigned char      digest_bytes[8];  /* big-endian digest */

    /*
     * distinct: the rules of one key that differ only in id, kind and
     * min share one record (rules_state.h), the share's
     */
    uint64_t           share_key;        /* digest without those */

    unsigned           step_memo[RULES_MAX_STEPS];
    rules_cond_t      *steps[RULES_MAX_STEPS];  /* sequence */

    size_t             id_len;
    char               id[RULES_ID_MAX_LEN + 1];
    char               digest_hex[17];
} rules_rule_t;


/* The rules sharing one key field, in file order. */
typedef struct {
    unsigned           key_field;
    unsigned          *rules;
    size_t             nrules;
    uint32_t           strict_mask;      /* OR of its rules': nonzero when
                                            every event breaks chains */
} rules_group_t;


/* Counters the engine bumps; the module exports them as metrics. */
typedef struct {
    uint64_t           regex_limit_hits;  /* match limit or JIT stack hit */
} rules_engine_stats_t;


/* ---- loading ------------------------------------------------------- */

/*
 * Load and validate a rule file.  On error, returns NULL and writes a
 * message into err that names the file, the rule (index and id), the
 * member and, where jansson gives one, the line:column.
 */
rules_set_t *rules_load_file(const char *path, char *err, size_t errlen);
rules_set_t *rules_load_buffer(const char *buf, size_t len,
    const char *name, char *err, size_t errlen);
void rules_free(rules_set_t *rs);

size_t rules_count(const rules_set_t *rs);
const rules_rule_t *rules_rule(const rules_set_t *rs, size_t i);
size_t rules_ngroups(const rules_set_t *rs);
const rules_group_t *rules_group(const rules_set_t *rs, size_t g);
/* group g's rules as bits, rules_result_words() words; NULL: no group */
const uint64_t *rules_group_mask(const rules_set_t *rs, size_t g);

/* Field names referenced by the rules, indexed 0 .. nfields-1. */
size_t rules_nfields(const rules_set_t *rs);
const char *rules_field_name(const rules_set_t *rs, size_t i);
/* Returns the field index, or -1 when no rule references the name. */
int rules_field_index(const rules_set_t *rs, const char *name, size_t len);

/* Rule lookup by id or by state digest; NULL when absent. */
const rules_rule_t *rules_find_id(const rules_set_t *rs, const char *id,
    size_t len);
/*
 * The same by id with case ignored (nginx lowercases variable names);
 * NULL when absent, or when ids that differ only in case share it
 * (*ambiguous set to 1).
 */
const rules_rule_t *rules_find_id_nocase(const rules_set_t *rs,
    const char *id, size_t len, int *ambiguous);
const rules_rule_t *rules_find_digest(const rules_set_t *rs,
    const unsigned char digest[8]);
/* A record's digest is a rule's or a shared record's of the set: 1, else 0. */
int rules_known_digest(const rules_set_t *rs, const unsigned char digest[8]);

/*
 * The condition index (rules_index.c): on by default from
 * RULES_INDEX_MIN_RULES rules; the results are the same either way (the
 * tests compare them).  rules_index_always() is the number of rules
 * evaluated for every event, whatever its values.
 */
void rules_set_indexing(rules_set_t *rs, int on);

/*
 * Shared distinct records (rules_state.h): off by default, as versions
 * before 2026-12-04 cannot read their entries (turn them on once every
 * writer and reader of the Redis runs this version).  Records of both
 * kinds are read either way.
 */
void rules_set_sharing(rules_set_t *rs, int on);
size_t rules_index_always(const rules_set_t *rs);

/* Digest of the whole file (hex), and the engine's counters. */
const char *rules_file_digest(const rules_set_t *rs);
rules_engine_stats_t *rules_stats(rules_set_t *rs);


/* ---- conditions ---------------------------------------------------- */

/*
 * values[i] is the value of field i (rules_field_name(rs, i)); len == 0
 * means the field has no value (missing or empty).
 */
int rules_cond_eval(rules_set_t *rs, const rules_cond_t *c,
    const rules_str_t *values);

/* SPEC.md's number grammar; returns 1 and sets *out when it is one. */
int rules_parse_number(const unsigned char *p, size_t len, double *out);


/* ---- events -------------------------------------------------------- */

/*
 * An event time: decimal digits only (leading zeros allowed), 0 to
 * RULES_MAX_TS_MS; returns 0 and sets *out when it is one, -1 when not.
 * The module's rules_time, JSON bodies and rules-replay share it.
 */
int rules_parse_time(const unsigned char *p, size_t len, int64_t *out);

typedef enum {
    RULES_EVENT_OK = 0,        /* at least one key operation */
    RULES_EVENT_SKIPPED,       /* no rule applied */
    RULES_EVENT_INVALID,       /* bad time or a value over a limit */
    RULES_EVENT_NOMEM          /* out of memory (rules_event_build()) */
} rules_event_rc_t;


typedef struct {
    size_t             key_max;    /* bytes of a key value */
    size_t             value_max;  /* bytes of any field value */
} rules_limits_t;


/* One key operation: the state key and the encoded op (rules_state.h). */
typedef struct {
    unsigned           group;
    rules_str_t        key_value;  /* points into the event's values */
    unsigned char     *op;         /* encoded operation */
    size_t             op_len;
    size_t             op_off;     /* internal: op's offset in the buffer */
    int64_t            ttl;        /* longest ttl of the op's rules, ms */
    unsigned           writes:1;   /* the op changes state: it touches a
                                      rule, or the group has strict
                                      steps (every event breaks chains) */
} rules_keyop_t;


typedef struct {
    rules_keyop_t     *keyops;     /* one per group with a key value */
    size_t             nkeyops;
    size_t             over_limit; /* key values over key_max, skipped */

    /* internal buffers, reused across events */
    unsigned char     *buf;
    size_t             buf_len;
    size_t             buf_size;
    size_t             keyops_size;
} rules_eventops_t;


/*
 * RULES_EVENT_INVALID when now is out of range or a value is longer than
 * limits->value_max; RULES_EVENT_OK otherwise.  Cheap: no condition is
 * evaluated.
 */
rules_event_rc_t rules_event_validate(const rules_set_t *rs,
    const rules_limits_t *limits, const rules_str_t *values, int64_t now);

/*
 * Evaluate the conditions of one event and build its key operations.
 * now is the event time in ms (0 .. RULES_MAX_TS_MS).  eo is reused
 * across calls; free it with rules_eventops_free().  RULES_EVENT_INVALID
 * as rules_event_validate(); RULES_EVENT_NOMEM when eo cannot grow (eo
 * stays usable, holding no operation).
 */
rules_event_rc_t rules_event_build(rules_set_t *rs,
    const rules_limits_t *limits, const rules_str_t *values, int64_t now,
    rules_eventops_t *eo);
void rules_eventops_free(rules_eventops_t *eo);

/*
 * The value of key group g's key field in an event when it is one
 * rules_event_build() makes a key operation for (not empty, not longer
 * than limits->key_max); NULL otherwise.
 */
const rules_str_t *rules_event_key(const rules_set_t *rs,
    const rules_limits_t *limits, const rules_str_t *values, size_t g);

/*
 * The Redis key of a key group and value:
 *     <prefix>{<field name>:<value>}
 * written into out (size at least rules_state_key_len()); the braces make
 * the field and value the Redis Cluster hash tag.
 */
size_t rules_state_key_len(const rules_set_t *rs, size_t prefix_len,
    unsigned group, size_t value_len);
size_t rules_state_key(const rules_set_t *rs, const char *prefix,
    size_t prefix_len, unsigned group, rules_str_t value,
    unsigned char *out);

/*
 * Redis Cluster: the slot of a key (CRC16 of its hash tag, modulo 16384,
 * as Redis' keyHashSlot) and the CRC16 itself (XMODEM: 0x1021, init 0).
 */
#define RULES_CLUSTER_SLOTS  16384

unsigned rules_key_slot(const unsigned char *key, size_t len);
uint16_t rules_crc16(const unsigned char *p, size_t len);


/* ---- results ------------------------------------------------------- */

/*
 * A result: which rules matched.  matched is a bitmap of rules_count()
 * bits.  rules_result_add_digests() adds the rules named by a reply (a
 * string of concatenated 8-byte digests); unknown digests are ignored.
 */
typedef struct {
    uint64_t          *matched;
    size_t             words;
} rules_result_t;

int rules_result_init(const rules_set_t *rs, rules_result_t *res);
/* words of a result's bitmap (at least 1), for a caller that allocates it */
size_t rules_result_words(const rules_set_t *rs);
void rules_result_clear(rules_result_t *res);
void rules_result_free(rules_result_t *res);
int rules_result_add_digests(const rules_set_t *rs, rules_result_t *res,
    const unsigned char *digests, size_t len);
int rules_result_is_set(const rules_result_t *res, size_t rule);
/* 1 if a fraud rule matched. */
int rules_result_fraud(const rules_set_t *rs, const rules_result_t *res);
/*
 * Matched ids, comma-separated, in file order, into out (at most size
 * bytes); returns the length needed.
 */
size_t rules_result_ids(const rules_set_t *rs, const rules_result_t *res,
    char *out, size_t size);


#endif /* RULES_ENGINE_H */
