/*
 * hostile: a WASI guest for the sandbox tests.  The first line of its input
 * says how to misbehave; any other input is copied to stdout (a healthy task).
 *
 *   loop          spin forever
 *   membomb       allocate and touch memory until malloc fails, then abort
 *   recurse       recurse without bound
 *   trap          store outside linear memory
 *   stdout        write to stdout forever
 *   stderr        write to stderr forever
 *   open PATH...  try to open each PATH; print what could be read
 *   env           print the whole environment
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

extern char **environ;

static volatile int sink;
static void *volatile blocks;  /* keeps every block live: no allocation elision */

static int recurse(int n) {
    char pad[256];
    memset(pad, n, sizeof pad);
    return recurse(n + 1) + pad[n % 256];
}

static void copy_rest(const char *first) {
    fputs(first, stdout);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) fwrite(buf, 1, n, stdout);
}

int main(void) {
    static char line[4096];
    if (!fgets(line, sizeof line, stdin)) return 0;
    char cmd[4096];
    strcpy(cmd, line);
    cmd[strcspn(cmd, "\n")] = 0;

    if (strcmp(cmd, "loop") == 0) { for (;;) sink++; }
    if (strcmp(cmd, "membomb") == 0) {
        for (;;) {
            char *p = malloc(1 << 20);
            if (!p) { fprintf(stderr, "malloc failed\n"); abort(); }
            memset(p, 1, 1 << 20);
            *(void **)p = blocks;
            blocks = p;
        }
    }
    if (strcmp(cmd, "recurse") == 0) return recurse(0);
    if (strcmp(cmd, "trap") == 0) { *(volatile int *)0xfffffff0u = 1; return 0; }
    if (strcmp(cmd, "stdout") == 0) {
        static char block[65536];
        memset(block, 'x', sizeof block);
        for (;;) fwrite(block, 1, sizeof block, stdout);
    }
    if (strcmp(cmd, "stderr") == 0) {
        static char block[65536];
        for (size_t i = 0; i + 16 <= sizeof block; i += 16) memcpy(block + i, "noise line 0123\n", 16);
        for (;;) fwrite(block, 1, sizeof block, stderr);
    }
    if (strncmp(cmd, "open ", 5) == 0) {
        int opened = 0;
        for (char *path = strtok(cmd + 5, " "); path; path = strtok(NULL, " ")) {
            FILE *f = fopen(path, "r");
            if (!f) {
                fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
                continue;
            }
            opened++;
            char buf[256];
            size_t n = fread(buf, 1, sizeof buf, f);
            printf("READ %s: %.*s\n", path, (int)n, buf);
            fclose(f);
        }
        return opened ? 0 : 1;
    }
    if (strcmp(cmd, "env") == 0) {
        for (char **e = environ; *e; e++) printf("%s\n", *e);
        return 0;
    }
    copy_rest(line);
    return 0;
}
