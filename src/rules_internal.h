/*
 * Engine internals shared by the files of src/.
 */

#ifndef RULES_INTERNAL_H
#define RULES_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "rules_engine.h"


/* ---- hashing and string tables (rules_hash.c) ---------------------- */

uint64_t rules_hash64(const void *p, size_t len, uint64_t seed);
uint64_t rules_siphash(const uint64_t key[2], const void *data, size_t len);

/*
 * Room for element n of a growable array: arrayp points at the array's
 * pointer, *size is its capacity in elements of elem bytes.  When n is
 * past it, the array is reallocated at twice the size (first, for an
 * empty one), doubled again until n fits.  -1 on memory exhaustion, the
 * array as it was.
 */
int rules_grow(void *arrayp, size_t *size, size_t n, size_t elem,
    size_t first);

/*
 * An open-addressing table of byte strings, each mapped to an unsigned
 * value.  Built at load time, read-only afterwards.
 */
/* ids_nocase's value for ids that differ only in case */
#define RULES_ID_AMBIGUOUS  0xffffffffu

#define RULES_MIN(a, b)  ((a) < (b) ? (a) : (b))

typedef struct {
    rules_str_t       *keys;       /* data == NULL: empty slot */
    unsigned          *vals;
    size_t             mask;       /* slots - 1 */
    size_t             n;
    uint64_t           seed;
} rules_strmap_t;

int rules_strmap_init(rules_strmap_t *m, size_t expected);
/* Returns 1 if inserted, 0 if the key was already there, -1 on ENOMEM. */
int rules_strmap_put(rules_strmap_t *m, const unsigned char *key,
    size_t len, unsigned val);
/* Replaces the value of a key already there: 1, else 0. */
int rules_strmap_set(rules_strmap_t *m, const unsigned char *key,
    size_t len, unsigned val);
/* Returns 1 and sets *val when found. */
int rules_strmap_get(const rules_strmap_t *m, const unsigned char *key,
    size_t len, unsigned *val);
void rules_strmap_free(rules_strmap_t *m);


/* ---- jansson's allocations (rules_json_alloc.c) --------------------- */

/* Around calls into jansson: end returns 1 if one of its allocations
 * failed in between (whatever the calls returned: out of memory). */
void rules_json_begin(void);
int rules_json_end(void);


/* ---- conditions (rules_cond.c) ------------------------------------- */

typedef enum {
    RULES_OP_EQ = 1,
    RULES_OP_NE,
    RULES_OP_IN,
    RULES_OP_PREFIX,
    RULES_OP_SUFFIX,
    RULES_OP_CONTAINS,
    RULES_OP_REGEX,
    RULES_OP_GT,
    RULES_OP_GTE,
    RULES_OP_LT,
    RULES_OP_LTE,
    RULES_OP_EXISTS,
    RULES_OP_ALL,
    RULES_OP_ANY,
    RULES_OP_NOT
} rules_op_t;


struct rules_cond_s {
    rules_op_t         op;
    unsigned           field;
    rules_str_t        str;        /* eq, ne, prefix, suffix, contains */
    double             num;        /* gt, gte, lt, lte */
    int                flag;       /* exists */
    rules_strmap_t    *set;        /* in */
    pcre2_code        *re;         /* regex */
    rules_cond_t     **sub;        /* all, any, not */
    size_t             nsub;
    unsigned           memo;       /* 1 + its place in the set's memo,
                                      shared by the conditions written
                                      the same; 0: none (a regex in it) */
};


/* ---- results (rules_event.c) --------------------------------------- */

static inline void
rules_result_set(rules_result_t *res, size_t rule)
{
    res->matched[rule / 64] |= (uint64_t) 1 << (rule % 64);
}


/* ---- the condition index (rules_index.c) --------------------------- */

typedef struct {
    unsigned          *rules;      /* rule indices, ascending */
    size_t             n;
    size_t             size;
} rules_posting_t;


typedef struct {
    unsigned           field;
    rules_strmap_t     values;     /* value -> posting index */
    rules_strmap_t     prefixes;   /* prefix -> posting index */
    size_t            *lens;       /* the prefixes' distinct lengths */
    size_t             nlens;
    size_t             lens_size;
} rules_index_field_t;


typedef struct {
    rules_index_field_t  *fields;
    size_t                nfields;
    size_t                fields_size;
    rules_posting_t      *postings;
    size_t                npostings;
    size_t                postings_size;
    rules_result_t        always;   /* rules evaluated for every event */
    size_t                nalways;
    rules_result_t        cand;     /* an event's candidates */
    rules_result_t       *groups;   /* per key group: its rules, which
                                       rules_event_build() walks (with
                                       the index on or off) */
    rules_result_t       *writers;  /* the same without the distinct
                                       rules whose shared record another
                                       rule writes: what it walks with
                                       sharing on */
    size_t                ngroups;
    int                   use;
} rules_index_t;


int rules_index_build(rules_set_t *rs);
void rules_index_free(rules_index_t *ix);
/* the rules an event can touch, valid until the next call */
const rules_result_t *rules_index_candidates(rules_set_t *rs,
    const rules_str_t *values);


/* ---- the rule set -------------------------------------------------- */

/*
 * A record shared by distinct rules of one key that differ only in id,
 * kind and min (rules_state.h, RULES_RECORD_SHARED): its digest, and the
 * members part of its entries, made once.
 */
typedef struct {
    unsigned char          digest[8];
    unsigned               leader;      /* the first rule, which writes
                                           the entry */
    unsigned               nmembers;
    unsigned char         *members;     /* n(H), then digest(8) min(H)
                                           each */
    size_t                 members_len;
} rules_share_t;


struct rules_set_s {
    rules_rule_t          *rules;
    size_t                 nrules;

    char                 **field_names;
    size_t                 nfields;
    rules_strmap_t         fields;      /* name -> index */

    rules_group_t         *groups;
    size_t                 ngroups;

    rules_strmap_t         ids;         /* id -> rule index */
    rules_strmap_t         ids_nocase;  /* lowercased id -> rule index, or
                                           RULES_ID_AMBIGUOUS */
    rules_strmap_t         digests;     /* digest bytes -> rule index */

    /*
     * The same for lookups, with the digests inline (a state's every
     * record is looked up): open addressing on the digest's low bits,
     * which are uniform (a hash of the rule's definition).
     */
    uint64_t              *digest_keys;
    unsigned              *digest_vals; /* rule index + 1, 0: free */
    size_t                 digest_mask;

    char                   digest_hex[17];

    /* the fraud rules, a bit each (rules_result_fraud()) */
    uint64_t              *fraud;

    /*
     * The ids one after the other, rule i's at id_off[i] up to
     * id_off[i + 1]: rules_result_ids() reads about 100 of them per
     * event with 1000 rules, a cache line or two each in the rules.
     */
    char                  *id_text;
    uint32_t              *id_off;

    rules_share_t         *shares;
    size_t                 nshares;
    int                    share_on;    /* distinct rules write shared
                                           entries */
    rules_strmap_t         share_digests; /* digest bytes -> share index */

    rules_index_t          index;

    /*
     * Conditions written the same (a leaf's JSON, keys sorted; a
     * combinator's members) in several places share one result per
     * event: while rules_event_build runs (memo_event not 0), a
     * condition's result is kept with the event's number and read back by
     * its other places.  Conditions with a regex are not shared (each
     * evaluation counts toward the match limit statistics).
     */
    rules_strmap_t         conds;       /* memo text -> memo + 1, while
                                           loading */
    size_t                 nmemo;
    uint32_t              *memo_gen;    /* the event a result is of */
    unsigned char         *memo_val;
    uint32_t               memo_event;  /* 0: no memo in use */
    uint32_t               memo_events; /* events numbered so far */

    pcre2_match_context   *match_ctx;
    pcre2_match_data      *match_data;
    pcre2_jit_stack       *jit_stack;

    rules_engine_stats_t   stats;

    /* every allocation of the set, freed by rules_free() */
    void                 **allocs;
    size_t                 nallocs;
    size_t                 allocs_size;

    /* conditions owning a regex or a string set */
    rules_cond_t         **owners;
    size_t                 nowners;
    size_t                 owners_size;
};


/*
 * rules_cond_eval() of one of a rule's conditions, given its memo place
 * as the rule holds it: a condition that another rule of the event has
 * evaluated already is not read at all (among hundreds of rules, the
 * rule is in the cache, its condition seldom is).
 */
static inline int
rules_cond_eval_memo(rules_set_t *rs, const rules_cond_t *c, unsigned memo,
    const rules_str_t *values)
{
    if (memo && rs->memo_event && rs->memo_gen[memo - 1] == rs->memo_event) {
        return rs->memo_val[memo - 1];
    }

    return rules_cond_eval(rs, c, values);
}


void *rules_set_alloc(rules_set_t *rs, size_t size);
char *rules_set_strdup(rules_set_t *rs, const char *s, size_t len);
int rules_set_track_cond(rules_set_t *rs, rules_cond_t *c);
void rules_cond_free(rules_cond_t *c);


/* ---- little-endian packing shared by the event and state code ------ */

static inline void
rules_put_u16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char) v;
    p[1] = (unsigned char) (v >> 8);
}


static inline void
rules_put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char) v;
    p[1] = (unsigned char) (v >> 8);
    p[2] = (unsigned char) (v >> 16);
    p[3] = (unsigned char) (v >> 24);
}


/*
 * A double is packed as its 8 bytes, little-endian: on a little-endian
 * host that is its memory form, one load or store (gcc does not merge
 * the byte loops, and the state code reads and writes three doubles per
 * record).
 */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define RULES_F64_NATIVE  1
#endif


static inline void
rules_put_f64(unsigned char *p, double d)
{
#if (RULES_F64_NATIVE)
    __builtin_memcpy(p, &d, 8);
#else
    uint64_t  v;
    int       i;

    __builtin_memcpy(&v, &d, 8);

    for (i = 0; i < 8; i++) {
        p[i] = (unsigned char) (v >> (8 * i));
    }
#endif
}


/*
 * The index + 1 of the rule with a digest (its 8 bytes, big-endian), 0
 * when no rule has it: inline, as a reply's every digest is looked up.
 */
static inline unsigned
rules_digest_lookup(const rules_set_t *rs, const unsigned char *digest)
{
    size_t    j;
    uint64_t  d;

    d = (uint64_t) digest[0] << 56 | (uint64_t) digest[1] << 48
        | (uint64_t) digest[2] << 40 | (uint64_t) digest[3] << 32
        | (uint64_t) digest[4] << 24 | (uint64_t) digest[5] << 16
        | (uint64_t) digest[6] << 8 | (uint64_t) digest[7];

    for (j = d & rs->digest_mask; rs->digest_vals[j];
         j = (j + 1) & rs->digest_mask)
    {
        if (rs->digest_keys[j] == d) {
            return rs->digest_vals[j];
        }
    }

    return 0;
}


static inline unsigned
rules_get_u16(const unsigned char *p)
{
    return (unsigned) p[0] | ((unsigned) p[1] << 8);
}


static inline uint32_t
rules_get_u32(const unsigned char *p)
{
    return (uint32_t) p[0] | ((uint32_t) p[1] << 8)
           | ((uint32_t) p[2] << 16) | ((uint32_t) p[3] << 24);
}


static inline double
rules_get_f64(const unsigned char *p)
{
    double    d;
#if !(RULES_F64_NATIVE)
    uint64_t  v;
    int       i;

    v = 0;

    for (i = 0; i < 8; i++) {
        v |= (uint64_t) p[i] << (8 * i);
    }

    __builtin_memcpy(&d, &v, 8);
#else
    __builtin_memcpy(&d, p, 8);
#endif

    return d;
}


/*
 * Two 8-byte rule digests are equal: one load and compare each, not a
 * call (gcc calls memcmp for these, and the pairing of entries with
 * records makes one per record and entry).
 */
static inline int
rules_digest_eq(const unsigned char *a, const unsigned char *b)
{
    uint64_t  x, y;

    __builtin_memcpy(&x, a, 8);
    __builtin_memcpy(&y, b, 8);

    return x == y;
}

#endif /* RULES_INTERNAL_H */
