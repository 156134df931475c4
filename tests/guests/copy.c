/*
 * copy: the trivial guest of the scale benchmark: stdin to stdout, nothing else.
 * What a job of it costs beyond writing its outputs is zerocompute's own cost.
 */
#include <stdio.h>

int main(void) {
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) fwrite(buf, 1, n, stdout);
    return 0;
}
