/*
 * SHA-1 (FIPS 180-4), only to name the Redis script as EVALSHA does.
 */

#include <string.h>

#include "rules_state.h"


#define RULES_ROL(v, n)  (((v) << (n)) | ((v) >> (32 - (n))))


static void
rules_sha1_block(uint32_t h[5], const unsigned char *p)
{
    uint32_t  w[80], a, b, c, d, e, f, k, t;
    int       i;

    for (i = 0; i < 16; i++) {
        w[i] = ((uint32_t) p[4 * i] << 24) | ((uint32_t) p[4 * i + 1] << 16)
               | ((uint32_t) p[4 * i + 2] << 8) | (uint32_t) p[4 * i + 3];
    }

    for (i = 16; i < 80; i++) {
        w[i] = RULES_ROL(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    }

    a = h[0];
    b = h[1];
    c = h[2];
    d = h[3];
    e = h[4];

    for (i = 0; i < 80; i++) {
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5a827999;

        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ed9eba1;

        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8f1bbcdc;

        } else {
            f = b ^ c ^ d;
            k = 0xca62c1d6;
        }

        t = RULES_ROL(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = RULES_ROL(b, 30);
        b = a;
        a = t;
    }

    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}


void
rules_sha1_hex(const unsigned char *p, size_t len, char out[41])
{
    static const char  hex[] = "0123456789abcdef";
    uint32_t           h[5];
    unsigned char      block[64];
    uint64_t           bits;
    size_t             i, rest;

    h[0] = 0x67452301;
    h[1] = 0xefcdab89;
    h[2] = 0x98badcfe;
    h[3] = 0x10325476;
    h[4] = 0xc3d2e1f0;

    for (i = 0; i + 64 <= len; i += 64) {
        rules_sha1_block(h, p + i);
    }

    rest = len - i;
    memset(block, 0, sizeof(block));
    memcpy(block, p + i, rest);
    block[rest] = 0x80;

    if (rest >= 56) {
        rules_sha1_block(h, block);
        memset(block, 0, sizeof(block));
    }

    bits = (uint64_t) len * 8;

    for (i = 0; i < 8; i++) {
        block[63 - i] = (unsigned char) (bits >> (8 * i));
    }

    rules_sha1_block(h, block);

    for (i = 0; i < 20; i++) {
        out[2 * i] = hex[(h[i / 4] >> (24 - 8 * (i % 4)) >> 4) & 0xf];
        out[2 * i + 1] = hex[(h[i / 4] >> (24 - 8 * (i % 4))) & 0xf];
    }

    out[40] = '\0';
}


const char *
rules_script_sha1(void)
{
    static char  sha1[41];

    if (sha1[0] == '\0') {
        rules_sha1_hex((const unsigned char *) rules_script_text,
                       strlen(rules_script_text), sha1);
    }

    return sha1;
}
