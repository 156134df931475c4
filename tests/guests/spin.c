/*
 * spin: a CPU-bound guest: a known amount of work, no I/O to speak of.
 *
 *   spin N    N million rounds of a xorshift generator, then print the result
 *
 * A node whose CPU is contended takes longer for the same N, whatever its
 * free task slots say: what the scheduler benchmark's CPU-skew scenario shows.
 */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>

int main(int argc, char **argv) {
    long rounds = (argc > 1 ? atol(argv[1]) : 10) * 1000000L;
    volatile uint64_t x = 88172645463325252ULL;
    uint64_t y = x;
    for (long i = 0; i < rounds; i++) {
        y ^= y << 13;
        y ^= y >> 7;
        y ^= y << 17;
    }
    x = y;
    printf("%llu\n", (unsigned long long)x);
    return 0;
}
