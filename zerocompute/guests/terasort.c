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
    char record[RECORD + 1];
    zc_mapper m;
    zc_map_begin(&m, stdout, NULL, NULL);
    while (fread(record, 1, RECORD, stdin) == RECORD) {
        if (record[RECORD - 2] != '\r' || record[RECORD - 1] != '\n') {
            fprintf(stderr, "terasort: not a gensort ASCII record\n");
            return 65;
        }
        if (zc_map_emit(&m, record, KEY, record + KEY, RECORD - KEY - 2)) return 65;
    }
    return zc_map_end(&m);
}

static int reduce(void) {
    zc_record r = {0};
    int got;
    while ((got = zc_next(stdin, &r)) == 1) {
        if (fwrite(r.key, 1, r.key_len, stdout) != r.key_len ||
            fwrite(r.value, 1, r.value_len, stdout) != r.value_len ||
            fwrite("\r\n", 1, 2, stdout) != 2)
            return 65;
    }
    zc_free(&r);
    return got < 0 ? 65 : fflush(stdout) ? 65 : 0;
}

int main(int argc, char **argv) {
    static char inbuf[1 << 16], outbuf[1 << 16];
    setvbuf(stdin, inbuf, _IOFBF, sizeof inbuf);
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "map") == 0) return map();
    if (strcmp(mode, "reduce") == 0) return reduce();
    fprintf(stderr, "usage: terasort map|reduce\n");
    return 64;
}
