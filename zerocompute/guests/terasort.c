/*
 * terasort: the TeraSort benchmark's map and reduce, as a WASI guest.
 *
 *   terasort map      stdin: gensort's ASCII records (100 bytes: a 10-byte key, 88
 *                     bytes, CR LF); stdout: "key\tvalue" per record, the value the
 *                     record's other 88 bytes
 *   terasort reduce   stdin: those records sorted by key; stdout: the records again,
 *                     as gensort wrote them (an identity reduce)
 *
 * With "reduce": {"partitioner": "range"}, part-00000, part-00001, ... read in
 * order are the input sorted (doc/shuffle.md, "Total order").
 */
#include "zerocompute.h"

#define KEY 10
#define RECORD 100

static int map(void) {
    static char block[RECORD * 10000];  /* ten thousand records a read */
    zc_mapper m;
    size_t got;
    zc_map_begin(&m, stdout, NULL, NULL);
    while ((got = fread(block, 1, sizeof block, stdin)) > 0) {
        if (got % RECORD) {
            fprintf(stderr, "terasort: the input is not whole 100-byte records\n");
            return 65;
        }
        for (char *record = block; record < block + got; record += RECORD) {
            if (record[RECORD - 2] != '\r' || record[RECORD - 1] != '\n') {
                fprintf(stderr, "terasort: not a gensort ASCII record\n");
                return 65;
            }
            if (zc_map_emit(&m, record, KEY, record + KEY, RECORD - KEY - 2)) return 65;
        }
    }
    return zc_map_end(&m);
}

static int reduce(void) {
    zc_record r = {0};
    char record[RECORD];
    int got;
    while ((got = zc_next(stdin, &r)) == 1) {
        if (r.key_len != KEY || r.value_len != RECORD - KEY - 2) {
            fprintf(stderr, "terasort: a record that is not gensort's\n");
            return 65;
        }
        memcpy(record, r.key, KEY);  /* the record as gensort wrote it: one write */
        memcpy(record + KEY, r.value, RECORD - KEY - 2);
        record[RECORD - 2] = '\r';
        record[RECORD - 1] = '\n';
        if (fwrite(record, 1, RECORD, stdout) != RECORD) return 65;
    }
    zc_free(&r);
    return got < 0 ? 65 : fflush(stdout) ? 65 : 0;
}

int main(int argc, char **argv) {
    static char inbuf[1 << 20], outbuf[1 << 20];
    setvbuf(stdin, inbuf, _IOFBF, sizeof inbuf);
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "map") == 0) return map();
    if (strcmp(mode, "reduce") == 0) return reduce();
    fprintf(stderr, "usage: terasort map|reduce\n");
    return 64;
}
