/*
 * wordcount: a WASI guest for zerocompute, in the Hadoop-Streaming style.
 *
 *   wordcount count    stdin: text   stdout: "word\tcount" lines, sorted by word
 *   wordcount map      stdin: text   stdout: "word\t1" per word, in input order (or,
 *                      when the job's combiner is this program, "word\tcount" per
 *                      word, counted in memory: zerocompute.h's in-mapper combining)
 *   wordcount reduce   stdin: "word\tcount" lines sorted by word
 *                      stdout: "word\tcount" with equal words summed
 *   wordcount scan     stdin: text   stdout: the number of words (reads and splits
 *                      every byte, writes no records: what any word count must do)
 *
 * A word is a run of ASCII letters and digits, lower-cased; every other byte
 * separates words (the same rule as re.findall(rb"[A-Za-z0-9]+", data)).
 */
#include "zerocompute.h"

struct entry { char *word; long count; };

static struct entry *table;
static size_t capacity, used;

static int is_word_byte(int c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static unsigned long hash(const char *s) {
    unsigned long h = 5381;
    while (*s) h = h * 33 + (unsigned char)*s++;
    return h;
}

static void die(const char *why) {
    fprintf(stderr, "wordcount: %s\n", why);
    exit(2);
}

static void grow(void) {
    size_t old = capacity;
    struct entry *was = table;
    capacity = capacity ? capacity * 2 : 1024;
    table = calloc(capacity, sizeof *table);
    if (!table) die("out of memory");
    used = 0;
    for (size_t i = 0; i < old; i++) {
        if (!was[i].word) continue;
        size_t j = hash(was[i].word) & (capacity - 1);
        while (table[j].word) j = (j + 1) & (capacity - 1);
        table[j] = was[i];
        used++;
    }
    free(was);
}

static void add(const char *word, long n) {
    if ((used + 1) * 2 > capacity) grow();
    size_t j = hash(word) & (capacity - 1);
    while (table[j].word) {
        if (strcmp(table[j].word, word) == 0) { table[j].count += n; return; }
        j = (j + 1) & (capacity - 1);
    }
    table[j].word = strdup(word);
    if (!table[j].word) die("out of memory");
    table[j].count = n;
    used++;
}

static int by_word(const void *a, const void *b) {
    return strcmp(((const struct entry *)a)->word, ((const struct entry *)b)->word);
}

/* Reads the next word into a growing buffer; returns its length or -1 at end. */
static long next_word(char **buf, size_t *size) {
    int c;
    size_t len = 0;
    while ((c = getchar()) != EOF && !is_word_byte(c)) {}
    if (c == EOF) return -1;
    do {
        if (len + 1 >= *size) {
            *size = *size ? *size * 2 : 64;
            *buf = realloc(*buf, *size);
            if (!*buf) die("out of memory");
        }
        (*buf)[len++] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : (char)c;
    } while ((c = getchar()) != EOF && is_word_byte(c));
    (*buf)[len] = '\0';
    return (long)len;
}

static int count(void) {
    char *buf = NULL;
    size_t size = 0;
    while (next_word(&buf, &size) >= 0) add(buf, 1);
    size_t n = 0;
    for (size_t i = 0; i < capacity; i++)
        if (table[i].word) table[n++] = table[i];
    qsort(table, n, sizeof *table, by_word);
    for (size_t i = 0; i < n; i++) printf("%s\t%ld\n", table[i].word, table[i].count);
    return 0;
}

static int sum(const char *key, uint32_t key_len, zc_values *values) {
    (void)key; (void)key_len;
    long total = 0;
    const char *v;
    uint32_t n;
    while (zc_value(values, &v, &n)) total += zc_long(v, n);
    return zc_result_long(values, total);
}

static int map(void) {
    char *buf = NULL;
    size_t size = 0;
    long len;
    zc_mapper m;
    zc_map_begin(&m, stdout, sum, "reduce");
    while ((len = next_word(&buf, &size)) >= 0)
        if (zc_map_emit(&m, buf, (uint32_t)len, "1", 1)) die("cannot write a record");
    return zc_map_end(&m);
}

static int scan(void) {
    char *buf = NULL;
    size_t size = 0;
    long words = 0;
    while (next_word(&buf, &size) >= 0) words++;
    printf("%ld\n", words);
    return 0;
}

int main(int argc, char **argv) {
    /* Large reads: one read per 64 KiB instead of per 1 KiB (BUFSIZ) of input. */
    static char inbuf[1 << 16], outbuf[1 << 16];
    setvbuf(stdin, inbuf, _IOFBF, sizeof inbuf);
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    const char *mode = argc > 1 ? argv[1] : "count";
    if (strcmp(mode, "count") == 0) return count();
    if (strcmp(mode, "map") == 0) return map();
    if (strcmp(mode, "reduce") == 0) return zc_reduce(stdin, stdout, sum);
    if (strcmp(mode, "scan") == 0) return scan();
    fprintf(stderr, "usage: wordcount count|map|reduce|scan\n");
    return 64;
}
