/*
 * Redis Cluster key slots: CRC16 (the XMODEM variant Redis uses:
 * polynomial 0x1021, initial value 0, no reflection, no final xor) of the
 * key's hash tag, modulo 16384.  Used by the module's cluster client and
 * by rules-replay --redis-cluster.
 */

#include "rules_engine.h"


static uint16_t  rules_crc16_table[256];
static int       rules_crc16_ready;


static void
rules_crc16_init(void)
{
    uint16_t  crc;
    unsigned  i, bit;

    for (i = 0; i < 256; i++) {
        crc = (uint16_t) (i << 8);

        for (bit = 0; bit < 8; bit++) {
            crc = (crc & 0x8000) ? (uint16_t) ((crc << 1) ^ 0x1021)
                                 : (uint16_t) (crc << 1);
        }

        rules_crc16_table[i] = crc;
    }

    rules_crc16_ready = 1;
}


uint16_t
rules_crc16(const unsigned char *p, size_t len)
{
    uint16_t  crc;
    size_t    i;

    if (!rules_crc16_ready) {
        /* idempotent: a race between threads writes the same values */
        rules_crc16_init();
    }

    crc = 0;

    for (i = 0; i < len; i++) {
        crc = (uint16_t) ((crc << 8)
                          ^ rules_crc16_table[((crc >> 8) ^ p[i]) & 0xff]);
    }

    return crc;
}


/*
 * Redis' rule: when the key has a '{', and a '}' after it, and something
 * between the first '{' and the first '}' after it, only that is hashed;
 * otherwise the whole key.
 */
unsigned
rules_key_slot(const unsigned char *key, size_t len)
{
    size_t  open, close;

    for (open = 0; open < len; open++) {
        if (key[open] == '{') {
            break;
        }
    }

    if (open < len) {
        for (close = open + 1; close < len; close++) {
            if (key[close] == '}') {
                break;
            }
        }

        if (close < len && close != open + 1) {
            key += open + 1;
            len = close - open - 1;
        }
    }

    return rules_crc16(key, len) & (RULES_CLUSTER_SLOTS - 1);
}
