/*
 * records: exercises zerocompute.h in either record form.
 *
 *   records emit   each input line L becomes the record (L + "\0\t\n", "1");
 *                  in the text form such a key cannot be written: exit 65
 *   records echo   read records from stdin and write them back unchanged
 *   records count  count lines and bytes with zc_increment_counter, write "done"
 */
#include "zerocompute.h"

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "echo";
    if (strcmp(mode, "emit") == 0) {
        char line[4096];
        while (fgets(line, sizeof line - 3, stdin)) {
            size_t n = strcspn(line, "\n");
            memcpy(line + n, "\0\t\n", 3);
            if (zc_emit(stdout, line, (uint32_t)(n + 3), "1", 1)) return 65;
        }
        return 0;
    }
    if (strcmp(mode, "count") == 0) {
        char line[4096];
        fputs("counting\n", stderr);
        while (fgets(line, sizeof line, stdin)) {
            if (zc_increment_counter("input", "lines", 1) ||
                zc_increment_counter("input", "bytes", (long)strlen(line))) return 67;
        }
        fputs("done\n", stderr);
        return 0;
    }
    zc_record r = {0};
    int got;
    while ((got = zc_next(stdin, &r)) == 1)
        if (zc_emit(stdout, r.key, r.key_len, r.value, r.value_len)) return 65;
    zc_free(&r);
    return got < 0 ? 66 : 0;
}
