/*
 * Redis Cluster key slots: the CRC16 check value and slots that a Redis
 * 7.0 server gave for the same keys (CLUSTER KEYSLOT), hash tag corner
 * cases included.
 */

#include <stdio.h>
#include <string.h>

#include "rules_engine.h"
#include "tap.h"


static const struct {
    const char  *key;
    unsigned     slot;
} vectors[] = {
    { "foo", 12182 },
    { "bar", 5061 },
    { "123456789", 12739 },
    { "{user1000}.following", 3443 },
    { "{user1000}.followers", 3443 },
    { "foo{}{bar}", 8363 },         /* empty tag: the whole key */
    { "foo{{bar}}zap", 4015 },      /* tag "{bar" */
    { "foo{bar}{zap}", 5061 },      /* the first tag: "bar" */
    { "{}", 15257 },
    { "{", 4092 },
    { "}", 12090 },
    { "", 0 },
    { "a{b", 13340 },               /* no '}' after the '{' */
    { "a}b{c}", 7365 },             /* a '}' before the '{' is ignored */
    { "rules:{uid:u1}", 14244 },
    { "rules:{ip:10.0.0.1}", 8862 },
    { "x{y}", 12222 },
};


int
main(void)
{
    size_t  i;

    is_int(rules_crc16((const unsigned char *) "123456789", 9), 0x31c3,
           "CRC16/XMODEM check value of \"123456789\" is 0x31c3");

    for (i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
        is_int(rules_key_slot((const unsigned char *) vectors[i].key,
                              strlen(vectors[i].key)),
               vectors[i].slot, "slot of \"%s\" is %u", vectors[i].key,
               vectors[i].slot);
    }

    /* binary keys: NUL bytes and braces as data */
    is_int(rules_key_slot((const unsigned char *) "p{a\0b}q", 7),
           rules_key_slot((const unsigned char *) "a\0b", 3),
           "a tag with a NUL byte is hashed whole");

    return done_testing();
}
