/*
 * sleepy: a guest that takes a known time without using the CPU.
 *
 *   sleepy MS          sleep MS milliseconds (WASI poll_oneoff), then copy stdin to stdout
 *   sleepy MS stamp    first print "started <seconds since the epoch>" (when it began)
 *
 * On a small test machine many such tasks model many busy hosts: what they
 * occupy is the object servers' task slots, which is what placement decides.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
    long ms = argc > 1 ? atol(argv[1]) : 100;
    if (argc > 2 && strcmp(argv[2], "stamp") == 0) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        printf("started %lld.%06ld\n", (long long)now.tv_sec, now.tv_nsec / 1000);
    }
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) fwrite(buf, 1, n, stdout);
    return 0;
}
