/*
 * shuffle_core: the shuffle's per-record work, compiled to WebAssembly.
 *
 * The executors run this WASI command (under wasmtime, as they run guests)
 * after a map's guest and before a reduce's: it parses the map's records,
 * partitions them, sorts them in a bounded buffer, spills, merges, and
 * writes the reducer's sorted input.  No record passes through the host's
 * Python; the host (zerocompute.sandbox.shuffle_core) only orchestrates
 * whole files, and runs the job's combiner between two of these commands.
 *
 * It sees two preopened directories: /s (the task's scratch, read-write)
 * and /o (the map's output directory, read-write, map side only).  Its
 * argv is one command:
 *
 *   sort IN [--from OFFSET --line N] [--plain UNIT] (--once PREFIX | --runs PREFIX | --parts)
 *   merge RUN... (--parts | --units PREFIX)
 *   reduce OUT FILE...
 *   sample IN MAX OUT
 *
 * The job's layout (record form, partitions, named outputs, range split
 * points, sort buffer) is in /s/layout, written by the host.  The command's
 * summary (JSON, one line) goes to stdout; a data error goes to stderr as
 * one line and exits 65, anything else exits 70.
 *
 * Formats:
 *   job form   text (key TAB value NEWLINE) or framed (4-byte big-endian
 *              length, key, 4-byte length, value), as the guests write it.
 *   internal   LEB128 key length, LEB128 value length, key, value: what runs
 *              and map outputs (part-NNNNN, fetched by reducers) hold.
 *   run index  PREFIX-NNNN.idx beside each run: R+1 little-endian u64
 *              offsets, partition p is [idx[p], idx[p+1]).
 *
 * Order: by partition, then key (bytes), then the order records arrived in
 * (a stable sort; merges break ties by run, and runs are numbered in
 * arrival order), so the result is exactly that of a stable sort of the
 * map's output.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_UNITS 1024
#define MAX_PARTS 1024
#define MERGE_FACTOR 64
#define READ_CHUNK (1u << 20)
#define WRITE_CHUNK (1u << 18)
#define MERGE_CHUNK (1u << 16)
#define MERGE_BUDGET (8u << 20)
/* A spill goes through the combiner when at least 1 in COMBINE_WORTH of its records
 * has the key of the record before: the combiner may run zero or more times (as in
 * Hadoop), and a guest's start costs more than folding a few records saves. */
#define COMBINE_WORTH 8
#define EXIT_DATA 65
#define EXIT_SOFTWARE 70

#ifdef __wasm__
/* The host's clock of this thread's CPU time (the executor defines it). */
__attribute__((import_module("zerocompute"), import_name("thread_cpu_ns")))
extern int64_t host_cpu_ns(void);
#else  /* built natively, to profile it */
static int64_t host_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
#endif

/* -- errors ---------------------------------------------------------------------- */
__attribute__((noreturn, format(printf, 2, 3)))
static void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    exit(code);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die(EXIT_SOFTWARE, "out of memory (%zu bytes)", n);
    return p;
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) die(EXIT_SOFTWARE, "out of memory (%zu bytes)", n);
    return q;
}

/* Python's repr() of bytes, cut at `limit` bytes, for error messages that read as
 * the Python shuffle's did. */
static const char *repr(const uint8_t *p, size_t n, size_t limit) {
    static char out[4 * 128 + 8];
    size_t o = 0;
    if (n > limit) n = limit;
    out[o++] = 'b';
    int quote = memchr(p, '\'', n) && !memchr(p, '"', n) ? '"' : '\'';
    out[o++] = (char)quote;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (c == '\\' || c == quote) { out[o++] = '\\'; out[o++] = (char)c; }
        else if (c == '\t') { out[o++] = '\\'; out[o++] = 't'; }
        else if (c == '\n') { out[o++] = '\\'; out[o++] = 'n'; }
        else if (c == '\r') { out[o++] = '\\'; out[o++] = 'r'; }
        else if (c < 32 || c >= 127) o += (size_t)sprintf(out + o, "\\x%02x", c);
        else out[o++] = (char)c;
    }
    out[o++] = (char)quote;
    out[o] = '\0';
    return out;
}

/* -- time spent, by step ---------------------------------------------------------- */
enum { T_PARSE, T_SORT, T_SPILL, T_MERGE, T_STEPS };
static const char *step_names[T_STEPS] = {"partition", "sort", "spill", "merge"};
static int64_t step_wall[T_STEPS], step_cpu[T_STEPS];
static int step_now = -1;
static int64_t step_wall0, step_cpu0;

static int64_t wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Time from now on counts for `step` (the one before ends). */
static void step(int next) {
    int64_t w = wall_ns(), c = host_cpu_ns();
    if (step_now >= 0) {
        step_wall[step_now] += w - step_wall0;
        step_cpu[step_now] += c - step_cpu0;
    }
    step_now = next;
    step_wall0 = w;
    step_cpu0 = c;
}

/* -- CRC32 (zlib's), slice by 8 ------------------------------------------------------ */
static uint32_t crc_table[8][256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

static uint32_t crc32(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n >= 8) {
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + 4, 4);
        a ^= c;
        c = crc_table[7][a & 0xff] ^ crc_table[6][(a >> 8) & 0xff] ^
            crc_table[5][(a >> 16) & 0xff] ^ crc_table[4][a >> 24] ^
            crc_table[3][b & 0xff] ^ crc_table[2][(b >> 8) & 0xff] ^
            crc_table[1][(b >> 16) & 0xff] ^ crc_table[0][b >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* -- small copies and compares, inline: the libc's are calls (memory.copy is even a
 * call out of the sandbox), and most keys and values are a few bytes -- */
static inline uint64_t load64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t load32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static inline void copy_bytes(uint8_t *d, const uint8_t *s, size_t n) {
    if (n >= 8 && n <= 16) {
        uint64_t a = load64(s), b = load64(s + n - 8);
        memcpy(d, &a, 8);
        memcpy(d + n - 8, &b, 8);
    } else if (n >= 4 && n < 8) {
        uint32_t a = load32(s), b = load32(s + n - 4);
        memcpy(d, &a, 4);
        memcpy(d + n - 4, &b, 4);
    } else if (n < 4) {
        if (n) { d[0] = s[0]; d[n / 2] = s[n / 2]; d[n - 1] = s[n - 1]; }
    } else {
        memcpy(d, s, n);
    }
}

/* The first `c` in [p, end), or NULL: sixteen bytes at a time where the build has
 * WebAssembly's SIMD (records are short; a libc memchr call costs more than it scans). */
#ifdef __wasm_simd128__
#include <wasm_simd128.h>
static inline const uint8_t *find_byte(const uint8_t *p, const uint8_t *end, uint8_t c) {
    v128_t needle = wasm_i8x16_splat((int8_t)c);
    while (end - p >= 16) {
        uint32_t mask = wasm_i8x16_bitmask(wasm_i8x16_eq(wasm_v128_load(p), needle));
        if (mask) return p + __builtin_ctz(mask);
        p += 16;
    }
    for (; p < end; p++)
        if (*p == c) return p;
    return NULL;
}
#else
static inline const uint8_t *find_byte(const uint8_t *p, const uint8_t *end, uint8_t c) {
    return memchr(p, c, (size_t)(end - p));
}
#endif

/* -- files ---------------------------------------------------------------------------- */
static int open_or_die(const char *path, int flags) {
    int fd = open(path, flags, 0600);
    if (fd < 0) die(EXIT_SOFTWARE, "cannot open %s: %s", path, strerror(errno));
    return fd;
}

typedef struct {
    int fd;
    uint8_t *buf;
    size_t len, cap;
    uint64_t written;
} writer;

static void w_open(writer *w, const char *path) {
    w->fd = open_or_die(path, O_WRONLY | O_CREAT | O_TRUNC);
    w->cap = WRITE_CHUNK;
    w->buf = xmalloc(w->cap);
    w->len = 0;
    w->written = 0;
}

static void w_flush(writer *w) {
    size_t at = 0;
    while (at < w->len) {
        ssize_t n = write(w->fd, w->buf + at, w->len - at);
        if (n < 0) {
            if (errno == EINTR) continue;
            die(errno == EFBIG ? EXIT_DATA : EXIT_SOFTWARE, "write failed: %s",
                errno == EFBIG ? "the task's output limit was reached" : strerror(errno));
        }
        at += (size_t)n;
    }
    w->len = 0;
}

static inline void w_put(writer *w, const void *p, size_t n) {
    if (w->len + n > w->cap) {
        w_flush(w);
        if (n > w->cap) {  /* a large record: straight through */
            const uint8_t *q = p;
            while (n) {
                ssize_t k = write(w->fd, q, n);
                if (k < 0) {
                    if (errno == EINTR) continue;
                    die(EXIT_SOFTWARE, "write failed: %s", strerror(errno));
                }
                q += k;
                n -= (size_t)k;
                w->written += (uint64_t)k;
            }
            return;
        }
    }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
    w->written += n;
}

static inline void w_byte(writer *w, uint8_t c) {
    if (w->len == w->cap) w_flush(w);
    w->buf[w->len++] = c;
    w->written++;
}

static void w_close(writer *w) {
    w_flush(w);
    if (close(w->fd) != 0) die(EXIT_SOFTWARE, "close failed: %s", strerror(errno));
    free(w->buf);
    w->buf = NULL;
}

static inline void w_varint(writer *w, uint32_t v) {
    while (v >= 0x80) {
        w_byte(w, (uint8_t)(v | 0x80));
        v >>= 7;
    }
    w_byte(w, (uint8_t)v);
}

static inline uint8_t *put_varint(uint8_t *p, uint32_t v) {
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

static inline void w_be32(writer *w, uint32_t v) {
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    w_put(w, b, 4);
}

/* -- the layout of the job's shuffle ------------------------------------------------------ */
enum { FORM_TEXT, FORM_FRAMED };

typedef struct {
    char *name;
    size_t name_len;
    uint32_t first, count;
} unit;

static struct {
    int form;
    uint32_t partitions;
    uint64_t budget;
    int named;
    unit units[MAX_UNITS];
    uint32_t n_units;
    uint32_t unit_of[MAX_PARTS];
    /* A total order: partition p holds keys in [split[p-1], split[p]). */
    uint8_t **split;
    uint32_t *split_len;
    uint32_t n_split;
} L;

static uint8_t *slurp(const char *path, size_t *size) {
    int fd = open_or_die(path, O_RDONLY);
    size_t cap = 4096, len = 0;
    uint8_t *data = xmalloc(cap);
    for (;;) {
        if (len == cap) data = xrealloc(data, cap *= 2);
        ssize_t n = read(fd, data + len, cap - len);
        if (n < 0) die(EXIT_SOFTWARE, "read %s: %s", path, strerror(errno));
        if (n == 0) break;
        len += (size_t)n;
    }
    close(fd);
    *size = len;
    return data;
}

/* /s/layout: lines "form text", "partitions R", "budget B", "unit NAME FIRST COUNT"
 * (named outputs, in order; a plain job has one unit with an empty name), "splits N"
 * and then /s/splits holds N framed keys. */
static void load_layout(void) {
    size_t size;
    char *text = (char *)slurp("/s/layout", &size);
    text = xrealloc(text, size + 1);
    text[size] = '\0';
    L.form = FORM_TEXT;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char word[32];
        if (sscanf(line, "%31s", word) != 1) continue;
        char *rest = line + strlen(word);
        while (*rest == ' ') rest++;
        if (!strcmp(word, "form")) L.form = !strcmp(rest, "framed") ? FORM_FRAMED : FORM_TEXT;
        else if (!strcmp(word, "partitions")) L.partitions = (uint32_t)strtoul(rest, NULL, 10);
        else if (!strcmp(word, "budget")) L.budget = strtoull(rest, NULL, 10);
        else if (!strcmp(word, "named")) L.named = atoi(rest);
        else if (!strcmp(word, "unit")) {
            /* NAME may hold spaces; FIRST and COUNT are the last two words. */
            char *count = strrchr(rest, ' ');
            if (!count || L.n_units == MAX_UNITS) die(EXIT_SOFTWARE, "bad layout line: %s", line);
            *count++ = '\0';
            char *first = strrchr(rest, ' ');
            if (!first) { first = rest; rest = ""; } else *first++ = '\0';
            unit *u = &L.units[L.n_units++];
            u->name = strdup(rest);
            u->name_len = strlen(rest);
            u->first = (uint32_t)strtoul(first, NULL, 10);
            u->count = (uint32_t)strtoul(count, NULL, 10);
        } else if (!strcmp(word, "splits")) {
            L.n_split = (uint32_t)strtoul(rest, NULL, 10);
        }
    }
    if (L.partitions < 1 || L.partitions > MAX_PARTS) die(EXIT_SOFTWARE, "bad partitions");
    if (L.n_units == 0) {
        L.units[0] = (unit){strdup(""), 0, 0, L.partitions};
        L.n_units = 1;
    }
    for (uint32_t u = 0; u < L.n_units; u++)
        for (uint32_t p = L.units[u].first; p < L.units[u].first + L.units[u].count; p++) {
            if (p >= L.partitions) die(EXIT_SOFTWARE, "bad unit");
            L.unit_of[p] = u;
        }
    if (L.n_split) {
        size_t n;
        uint8_t *data = slurp("/s/splits", &n), *p = data, *end = data + n;
        L.split = xmalloc(L.n_split * sizeof *L.split);
        L.split_len = xmalloc(L.n_split * sizeof *L.split_len);
        for (uint32_t i = 0; i < L.n_split; i++) {
            if (end - p < 4) die(EXIT_SOFTWARE, "bad splits");
            uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
            p += 4;
            if ((size_t)(end - p) < len) die(EXIT_SOFTWARE, "bad splits");
            L.split[i] = p;
            L.split_len[i] = len;
            p += len;
        }
    }
    if (L.budget == 0) L.budget = 1;
}

static inline int key_cmp(const uint8_t *a, uint32_t an, const uint8_t *b, uint32_t bn) {
    uint32_t n = an < bn ? an : bn, i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x = __builtin_bswap64(load64(a + i)), y = __builtin_bswap64(load64(b + i));
        if (x != y) return x < y ? -1 : 1;
    }
    for (; i < n; i++)
        if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
    return an < bn ? -1 : an > bn;
}

/* The partition of a plain record of unit `u`. */
static inline uint32_t partition_in(uint32_t u, const uint8_t *key, uint32_t klen) {
    if (L.n_split) {  /* the number of split points <= key (only plain jobs) */
        uint32_t lo = 0, hi = L.n_split;
        while (lo < hi) {
            uint32_t mid = (lo + hi) / 2;
            if (key_cmp(L.split[mid], L.split_len[mid], key, klen) <= 0) lo = mid + 1;
            else hi = mid;
        }
        return lo;
    }
    const unit *un = &L.units[u];
    return un->first + (un->count == 1 ? 0 : crc32(key, klen) % un->count);
}

static uint32_t unit_named(const uint8_t *name, uint32_t len) {
    for (uint32_t u = 0; u < L.n_units; u++)
        if (L.units[u].name_len == len && !memcmp(L.units[u].name, name, len)) return u;
    char known[1024];
    size_t o = 0;
    for (uint32_t u = 0; u < L.n_units && o < sizeof known - 64; u++)
        o += (size_t)snprintf(known + o, sizeof known - o, "%s%s", u ? ", " : "", L.units[u].name);
    die(EXIT_DATA, "a record names no output of this job: %s (outputs: %s)",
        repr(name, len, 64), known);
}

/* -- reading job-form records ---------------------------------------------------------- */
typedef struct {
    int fd;
    uint8_t *buf;
    size_t cap, start, end;
    uint64_t offset;  /* of buf[start] in the file */
    uint64_t size;    /* of the file */
    uint64_t line;    /* lines read so far (text) */
    int eof;
} reader;

static void r_open(reader *r, const char *path, uint64_t offset, uint64_t line) {
    r->fd = open_or_die(path, O_RDONLY);
    off_t size = lseek(r->fd, 0, SEEK_END);
    if (size < 0 || lseek(r->fd, 0, SEEK_SET) < 0)
        die(EXIT_SOFTWARE, "seek %s: %s", path, strerror(errno));
    r->size = (uint64_t)size;
    if (offset && lseek(r->fd, (off_t)offset, SEEK_SET) < 0)
        die(EXIT_SOFTWARE, "seek %s: %s", path, strerror(errno));
    r->cap = READ_CHUNK;
    r->buf = xmalloc(r->cap);
    r->start = r->end = 0;
    r->offset = offset;
    r->line = line;
    r->eof = 0;
}

/* Make at least `need` bytes available from start (fewer only at the end of the file). */
static void r_fill(reader *r, size_t need) {
    if (r->end - r->start >= need || r->eof) return;
    if (r->offset + need > r->size)  /* a length past the end: no bigger buffer than the file */
        need = r->offset < r->size ? (size_t)(r->size - r->offset) + 1 : 1;
    if (r->start) {
        memmove(r->buf, r->buf + r->start, r->end - r->start);
        r->end -= r->start;
        r->start = 0;
    }
    if (need > r->cap) {
        while (r->cap < need) r->cap *= 2;
        r->buf = xrealloc(r->buf, r->cap);
    }
    while (r->end < need && !r->eof) {
        ssize_t n = read(r->fd, r->buf + r->end, r->cap - r->end);
        if (n < 0) {
            if (errno == EINTR) continue;
            die(EXIT_SOFTWARE, "read failed: %s", strerror(errno));
        }
        if (n == 0) r->eof = 1;
        r->end += (size_t)n;
    }
}

static void r_close(reader *r) {
    close(r->fd);
    free(r->buf);
}

typedef struct {
    const uint8_t *key, *value;
    uint32_t klen, vlen;
} rec;

static inline uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The next record of the job's form: 1, or 0 at the end (malformed input dies).
 * The record points into the reader's buffer until the next call. */
static int r_next(reader *r, rec *out) {
    if (L.form == FORM_FRAMED) {
        r_fill(r, 4);
        size_t have = r->end - r->start;
        if (have == 0) return 0;
        if (have < 4) die(EXIT_DATA, "map output is not framed records: truncated framed "
                                     "record: a length is cut short");
        uint32_t klen = be32(r->buf + r->start);
        r_fill(r, 4 + (size_t)klen + 4);
        have = r->end - r->start;
        if (have < 4 + (size_t)klen) die(EXIT_DATA, "map output is not framed records: "
                                                   "truncated framed record: %zu of %u bytes",
                                         have - 4, klen);
        if (have < 8 + (size_t)klen) die(EXIT_DATA, "map output is not framed records: "
                                                   "truncated framed record: a length is cut short");
        uint32_t vlen = be32(r->buf + r->start + 4 + klen);
        size_t total = 8 + (size_t)klen + vlen;
        r_fill(r, total);
        have = r->end - r->start;
        if (have < total) die(EXIT_DATA, "map output is not framed records: truncated framed "
                                         "record: %zu of %u bytes", have - 8 - klen, vlen);
        const uint8_t *p = r->buf + r->start;
        out->key = p + 4;
        out->klen = klen;
        out->value = p + 8 + klen;
        out->vlen = vlen;
        r->start += total;
        r->offset += total;
        return 1;
    }
    for (;;) {
        size_t have = r->end - r->start;
        const uint8_t *nl = find_byte(r->buf + r->start, r->buf + r->end, '\n');
        while (!nl && !r->eof) {
            r_fill(r, have + 1);  /* moves the line to the buffer's start */
            size_t now = r->end - r->start;
            if (now > have) nl = find_byte(r->buf + r->start + have, r->buf + r->end, '\n');
            have = now;
        }
        size_t len;
        const uint8_t *p = r->buf + r->start;
        if (nl) {
            len = (size_t)(nl - p);
            r->start += len + 1;
            r->offset += len + 1;
        } else {
            len = r->end - r->start;
            if (len == 0) return 0;
            r->start += len;
            r->offset += len;
        }
        r->line++;
        if (len == 0) continue;  /* a blank line is no record */
        const uint8_t *tab = find_byte(p, p + len, '\t');
        if (!tab) die(EXIT_DATA, "map output is not text records: line %llu is not "
                                 "key<TAB>value: %s", (unsigned long long)r->line,
                      repr(p, len, 80));
        out->key = p;
        out->klen = (uint32_t)(tab - p);
        out->value = tab + 1;
        out->vlen = (uint32_t)(len - out->klen - 1);
        return 1;
    }
}

/* A named record's (key, value) and its unit: the record's key names the output. */
static uint32_t unpack_named(rec *r) {
    uint32_t u = unit_named(r->key, r->klen);
    if (L.form == FORM_FRAMED) {
        const uint8_t *v = r->value;
        uint32_t n = r->vlen;
        if (n < 4 || be32(v) > n - 4 || n - 4 - be32(v) < 4 ||
            be32(v + 4 + be32(v)) != n - 8 - be32(v))
            die(EXIT_DATA, "map output is not framed records: a named record's value is not "
                           "one framed record");
        r->klen = be32(v);
        r->key = v + 4;
        r->vlen = be32(v + 4 + r->klen);
        r->value = v + 8 + r->klen;
    } else {
        const uint8_t *tab = memchr(r->value, '\t', r->vlen);
        if (!tab) die(EXIT_DATA, "map output is not text records: a named record is "
                                 "name<TAB>key<TAB>value: %s", repr(r->value, r->vlen, 80));
        uint32_t klen = (uint32_t)(tab - r->value);
        r->key = r->value;
        r->vlen = r->vlen - klen - 1;
        r->value = tab + 1;
        r->klen = klen;
    }
    return u;
}

/* -- writing records ---------------------------------------------------------------------- */
static inline void put_internal(writer *w, const rec *r) {
    size_t n = 10 + (size_t)r->klen + r->vlen;
    if (n <= 256) {  /* the common case: one check, straight stores */
        if (w->len + n > w->cap) w_flush(w);
        uint8_t *p = put_varint(put_varint(w->buf + w->len, r->klen), r->vlen);
        copy_bytes(p, r->key, r->klen);
        copy_bytes(p + r->klen, r->value, r->vlen);
        p += r->klen + r->vlen;
        w->written += (size_t)(p - (w->buf + w->len));
        w->len = (size_t)(p - w->buf);
        return;
    }
    w_varint(w, r->klen);
    w_varint(w, r->vlen);
    w_put(w, r->key, r->klen);
    w_put(w, r->value, r->vlen);
}

static inline void put_job_form(writer *w, const rec *r) {
    if (L.form == FORM_FRAMED) {
        w_be32(w, r->klen);
        w_put(w, r->key, r->klen);
        w_be32(w, r->vlen);
        w_put(w, r->value, r->vlen);
        return;
    }
    size_t n = 2 + (size_t)r->klen + r->vlen;
    if (n <= 256) {
        if (w->len + n > w->cap) w_flush(w);
        uint8_t *p = w->buf + w->len;
        copy_bytes(p, r->key, r->klen);
        p[r->klen] = '\t';
        copy_bytes(p + r->klen + 1, r->value, r->vlen);
        p[n - 1] = '\n';
        w->len += n;
        w->written += n;
        return;
    }
    w_put(w, r->key, r->klen);
    w_byte(w, '\t');
    w_put(w, r->value, r->vlen);
    w_byte(w, '\n');
}

/* -- the sort buffer ------------------------------------------------------------------------ */
/* Records sit in the arena as [klen u32][vlen u32][key][value]; the index holds, per
 * record, its partition, the first 8 key bytes (big-endian, zero-padded), its key's
 * length (up to 255) and where it is.  A record whose key fits those 8 bytes and whose
 * value fits 4 lives in its entry alone (INLINE, the value where the arena offset
 * would be): a word count's records never touch the arena, and sorting and writing
 * them reads the index in order instead of the arena at random. */
typedef struct {
    uint64_t prefix;
    uint16_t part;
    uint8_t klen;  /* the key's length, 255 for 255 and more */
    uint8_t vlen;  /* INLINE | the value's length, or the length up to 127 */
    uint32_t off;
} entry;
#define INLINE 0x80


/* One block of the sort buffer's size: records grow from its bottom, their index
 * entries down from its top, and the sort's second array takes the space between
 * (Hadoop's kvbuffer).  The block is allocated once; pages it never reaches are never
 * touched, so a small map output costs a small buffer. */
static uint8_t *block;
static size_t block_cap, arena_len, n_rec;
static size_t buffer_limit;  /* the sort buffer's size: the block may be a little larger */
static entry *index_;  /* the sorted index, once buffer_sort has run */
#define arena block

static inline uint64_t key_prefix(const uint8_t *k, uint32_t n) {
    if (n >= 8) return __builtin_bswap64(load64(k));
    uint64_t v = 0;
    for (uint32_t i = 0; i < n; i++) v |= (uint64_t)k[i] << (56 - 8 * i);
    return v;
}

static inline size_t align16(size_t n) { return (n + 15) & ~(size_t)15; }

/* The block a buffer of these records needs: their bytes (with headers), their index
 * entries and the sort's second array. */
static inline size_t buffer_need(size_t records_bytes, size_t records) {
    return align16(records_bytes) + records * 2 * sizeof(entry);
}

static inline int buffer_full(size_t klen, size_t vlen) {
    size_t size = klen <= 8 && vlen <= 4 ? 0 : 8 + klen + vlen;  /* inline: no arena */
    return n_rec > 0 && buffer_need(arena_len + size, n_rec + 1) > buffer_limit;
}

/* The block comes straight from the linear memory, not from malloc: its allocator asks
 * for about twice a large request, which a sort buffer near the memory limit cannot
 * afford.  A block never shrinks; one grown for a record larger than the buffer is
 * used from then on (rare, and the memory limit still holds). */
static void buffer_reserve(size_t need) {
    size_t cap = align16(L.budget) > align16(need) ? align16(L.budget) : align16(need);
    buffer_limit = cap;
    if (block && block_cap >= cap) return;
    if (cap > UINT32_MAX - (1u << 24)) die(EXIT_DATA, "a record of %zu bytes is larger than "
                                                      "the shuffle can hold", need);
    size_t pages = (cap + 65535) / 65536;
#ifdef __wasm__
    size_t before = __builtin_wasm_memory_grow(0, pages);
    if (before == (size_t)-1)
        die(EXIT_DATA, "the sort buffer (%zu bytes) is more than the task's memory allows", cap);
    block = (uint8_t *)(before * 65536);
#else
    block = xmalloc(pages * 65536);
#endif
    block_cap = pages * 65536;
}

static void buffer_add(uint32_t part, const rec *r) {
    int inline_ = r->klen <= 8 && r->vlen <= 4;
    size_t size = inline_ ? 0 : 8 + (size_t)r->klen + r->vlen;
    if (n_rec == 0) buffer_reserve(buffer_need(size, 1));
    entry *top = (entry *)(block + block_cap);
    if (inline_) {
        entry e = {key_prefix(r->key, r->klen), (uint16_t)part, (uint8_t)r->klen,
                   (uint8_t)(INLINE | r->vlen), 0};
        uint8_t *v = (uint8_t *)&e.off;
        for (uint32_t i = 0; i < r->vlen; i++) v[i] = r->value[i];
        top[-1 - (ptrdiff_t)n_rec] = e;
        n_rec++;
        return;
    }
    uint8_t *p = arena + arena_len;
    memcpy(p, &r->klen, 4);
    memcpy(p + 4, &r->vlen, 4);
    copy_bytes(p + 8, r->key, r->klen);
    copy_bytes(p + 8 + r->klen, r->value, r->vlen);
    top[-1 - (ptrdiff_t)n_rec] = (entry){key_prefix(r->key, r->klen), (uint16_t)part,
                                         (uint8_t)(r->klen < 255 ? r->klen : 255),
                                         (uint8_t)(r->vlen < 127 ? r->vlen : 127),
                                         (uint32_t)arena_len};
    n_rec++;
    arena_len += size;
}

/* A buffered record; an inline one's key and value are copied into `room`. */
static inline rec entry_rec(const entry *e, uint8_t room[16]) {
    rec r;
    if (e->vlen & INLINE) {
        uint64_t be = __builtin_bswap64(e->prefix);
        memcpy(room, &be, 8);
        memcpy(room + 8, &e->off, 4);
        r.key = room;
        r.klen = e->klen;
        r.value = room + 8;
        r.vlen = e->vlen & ~INLINE;
        return r;
    }
    const uint8_t *p = arena + e->off;
    memcpy(&r.klen, p, 4);
    memcpy(&r.vlen, p + 4, 4);
    r.key = p + 8;
    r.value = p + 8 + r.klen;
    return r;
}

static inline int entry_key_cmp(const entry *a, const entry *b) {
    if (a->prefix != b->prefix) return a->prefix < b->prefix ? -1 : 1;
    if (a->klen <= 8 || b->klen <= 8) return a->klen < b->klen ? -1 : a->klen > b->klen;
    uint8_t ra[16], rb[16];
    rec x = entry_rec(a, ra), y = entry_rec(b, rb);
    return key_cmp(x.key + 8, x.klen - 8, y.key + 8, y.klen - 8);
}

/* A stable merge sort by full key, for the few runs of entries whose 8-byte prefixes
 * are equal but whose keys may differ; `tmp` holds n entries. */
static void sort_by_key(entry *a, size_t n, entry *tmp) {
    if (n < 2) return;
    if (n <= 12) {  /* insertion sort: stable, and quick for few */
        for (size_t i = 1; i < n; i++) {
            entry x = a[i];
            size_t j = i;
            while (j > 0 && entry_key_cmp(&a[j - 1], &x) > 0) { a[j] = a[j - 1]; j--; }
            a[j] = x;
        }
        return;
    }
    size_t half = n / 2;
    sort_by_key(a, half, tmp);
    sort_by_key(a + half, n - half, tmp);
    if (entry_key_cmp(&a[half - 1], &a[half]) <= 0) return;
    memcpy(tmp, a, half * sizeof *a);
    size_t i = 0, j = half, k = 0;
    while (i < half && j < n) a[k++] = entry_key_cmp(&a[j], &tmp[i]) < 0 ? a[j++] : tmp[i++];
    while (i < half) a[k++] = tmp[i++];
}

/* The index in arrival order (its entries were written from the block's top down). */
static void buffer_index(void) {
    index_ = (entry *)(block + block_cap) - n_rec;
    for (size_t i = 0, j = n_rec ? n_rec - 1 : 0; i < j; i++, j--) {
        entry t = index_[i]; index_[i] = index_[j]; index_[j] = t;
    }
}

static inline uint32_t group_of(const entry *e, int by_unit) {
    return by_unit ? L.unit_of[e->part] : e->part;
}

static void sort_by_prefix_at(entry *a, size_t n, entry *tmp, int depth) {
    if (n <= 32) {  /* insertion sort: stable */
        for (size_t i = 1; i < n; i++) {
            entry x = a[i];
            size_t j = i;
            while (j > 0 && a[j - 1].prefix > x.prefix) { a[j] = a[j - 1]; j--; }
            a[j] = x;
        }
        return;
    }
    uint64_t first = a[0].prefix, differ = 0;
    for (size_t i = 1; i < n; i++) differ |= a[i].prefix ^ first;
    if (!differ) return;
    int shift = (63 - __builtin_clzll(differ)) & ~7;  /* the highest byte that differs */
    /* One zeroed count array per depth, put back to zero over the bytes used: a call
     * costs the range of its bytes (letters: a few dozen), not 256. */
    static uint32_t counts[9][256];
    uint32_t *count = counts[depth];
    unsigned lo = 255, hi = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned b = (unsigned)(a[i].prefix >> shift) & 0xff;
        count[b]++;
        lo = b < lo ? b : lo;
        hi = b > hi ? b : hi;
    }
    uint32_t start[256], at_[256], sum = 0;
    for (unsigned b = lo; b <= hi; b++) { start[b] = at_[b] = sum; sum += count[b]; }
    for (size_t i = 0; i < n; i++) tmp[at_[(a[i].prefix >> shift) & 0xff]++] = a[i];
    memcpy(a, tmp, n * sizeof *a);
    uint32_t sizes[256];
    for (unsigned b = lo; b <= hi; b++) { sizes[b] = count[b]; count[b] = 0; }
    if (shift == 0) return;
    for (unsigned b = lo; b <= hi; b++)
        if (sizes[b] > 1) sort_by_prefix_at(a + start[b], sizes[b], tmp, depth + 1);
}

/* Stable MSD radix sort of entries by prefix, from the most significant byte in which
 * they differ (found by XOR, so equal leading bytes cost nothing); `tmp` holds n. */
static void sort_by_prefix(entry *a, size_t n, entry *tmp) { sort_by_prefix_at(a, n, tmp, 0); }

/* Sort the index by (partition, key, arrival), or by (unit, key, arrival) for a
 * combiner, which reads each named output's records in key order: a counting sort by
 * partition, a radix sort by key prefix within each (both stable, so arrival order
 * holds among equals), then the full key within runs of equal prefixes whose keys the
 * prefix does not settle. */
static void buffer_sort(int by_unit) {
    if (n_rec < 2) return;
    entry *scratch = (entry *)(block + align16(arena_len));
    static uint32_t count[MAX_PARTS], start[MAX_PARTS];
    uint32_t groups = by_unit ? L.n_units : L.partitions;
    memset(count, 0, groups * sizeof *count);
    for (size_t i = 0; i < n_rec; i++) count[group_of(&index_[i], by_unit)]++;
    uint32_t sum = 0;
    for (uint32_t g = 0; g < groups; g++) { start[g] = sum; sum += count[g]; }
    if (count[group_of(&index_[0], by_unit)] != n_rec) {
        static uint32_t at_[MAX_PARTS];
        memcpy(at_, start, groups * sizeof *at_);
        for (size_t i = 0; i < n_rec; i++) scratch[at_[group_of(&index_[i], by_unit)]++] = index_[i];
        memcpy(index_, scratch, n_rec * sizeof *index_);
    }
    for (uint32_t g = 0; g < groups; g++)
        if (count[g] > 1) sort_by_prefix(index_ + start[g], count[g], scratch);
    /* Equal prefixes: settled when every key there has the same length, up to 8. */
    for (size_t i = 0; i < n_rec;) {
        size_t j = i + 1;
        uint32_t g = group_of(&index_[i], by_unit);
        while (j < n_rec && index_[j].prefix == index_[i].prefix && group_of(&index_[j], by_unit) == g)
            j++;
        if (j - i > 1) {
            uint8_t len0 = index_[i].klen;
            int settled = len0 <= 8;
            for (size_t k = i + 1; settled && k < j; k++) settled = index_[k].klen == len0;
            if (!settled) sort_by_key(index_ + i, j - i, scratch);
        }
        i = j;
    }
}

static void buffer_clear(void) {
    arena_len = 0;
    n_rec = 0;
}

/* Adjacent records with equal keys in the sorted buffer: what a combiner could fold. */
static uint64_t buffer_duplicates(void) {
    uint64_t dups = 0;
    for (size_t i = 1; i < n_rec; i++)
        dups += index_[i].part == index_[i - 1].part && entry_key_cmp(&index_[i - 1], &index_[i]) == 0;
    return dups;
}

/* -- summary ------------------------------------------------------------------------------------ */
static char summary[1 << 16];
static size_t summary_len;

static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    summary_len += (size_t)vsnprintf(summary + summary_len, sizeof summary - summary_len, fmt, ap);
    va_end(ap);
    if (summary_len >= sizeof summary) die(EXIT_SOFTWARE, "summary too long");
}

static void say_times_and_end(void) {
    step(-1);
    say("\"steps\":{");
    for (int s = 0; s < T_STEPS; s++)
        say("%s\"%s\":[%lld,%lld]", s ? "," : "", step_names[s], (long long)step_wall[s],
            (long long)step_cpu[s]);
    say("}}\n");
    fwrite(summary, 1, summary_len, stdout);
    fflush(stdout);
}

/* -- writing a sorted buffer -------------------------------------------------------------------- */
static char run_prefix[256];
static uint32_t n_runs;
static uint64_t parts_bytes[MAX_PARTS];
static uint64_t records_out;  /* written to the parts */

static void write_index(const char *path, const uint64_t *offsets) {
    writer w;
    w_open(&w, path);
    w_put(&w, offsets, (L.partitions + 1) * sizeof *offsets);
    w_close(&w);
}

/* The sorted buffer as a run (internal form, with its partition index). */
static void spill_run(void) {
    char path[300];
    snprintf(path, sizeof path, "%s-%04u", run_prefix, n_runs);
    uint64_t offsets[MAX_PARTS + 1];
    writer w;
    w_open(&w, path);
    size_t i = 0;
    for (uint32_t p = 0; p < L.partitions; p++) {
        offsets[p] = w.written;
        for (; i < n_rec && index_[i].part == p; i++) {
            uint8_t room[16];
            rec r = entry_rec(&index_[i], room);
            put_internal(&w, &r);
        }
    }
    offsets[L.partitions] = w.written;
    w_close(&w);
    snprintf(path, sizeof path, "%s-%04u.idx", run_prefix, n_runs);
    write_index(path, offsets);
    n_runs++;
}

static void part_path(char *path, size_t size, uint32_t p) {
    snprintf(path, size, "/o/part-%05u", p);
}

/* The sorted buffer as the map's final partitions (no run file in between). */
static void write_parts_from_buffer(void) {
    size_t i = 0;
    records_out = n_rec;
    for (uint32_t p = 0; p < L.partitions; p++) {
        char path[64];
        part_path(path, sizeof path, p);
        writer w;
        w_open(&w, path);
        for (; i < n_rec && index_[i].part == p; i++) {
            uint8_t room[16];
            rec r = entry_rec(&index_[i], room);
            put_internal(&w, &r);
        }
        w_close(&w);
        parts_bytes[p] = w.written;
    }
}

/* The sorted buffer in the job's form, one file per unit that has records (what the
 * combiner reads: each unit's records, sorted). */
static void spill_job_form(const char *prefix) {
    size_t i = 0;
    say("\"units\":[");
    int first = 1;
    while (i < n_rec) {
        uint32_t u = L.unit_of[index_[i].part];
        char path[300];
        snprintf(path, sizeof path, "%s.u%04u", prefix, u);
        writer w;
        w_open(&w, path);
        size_t from = i;
        for (; i < n_rec && L.unit_of[index_[i].part] == u; i++) {
            uint8_t room[16];
            rec r = entry_rec(&index_[i], room);
            put_job_form(&w, &r);
        }
        w_close(&w);
        say("%s[%u,%zu]", first ? "" : ",", u, i - from);
        first = 0;
    }
    say("],");
}

/* -- merging ---------------------------------------------------------------------------------------- */
/* A source: a byte range of a file of internal records. */
typedef struct {
    int fd;
    uint64_t pos, end;  /* file offsets still to read */
    uint8_t *buf;
    size_t cap, start, len;
    rec cur;
    uint64_t prefix;
    int live;
} source;

static void s_open(source *s, int fd, uint64_t start, uint64_t end, size_t chunk) {
    s->fd = fd;
    s->pos = start;
    s->end = end;
    s->cap = chunk;
    s->buf = xmalloc(s->cap);
    s->start = s->len = 0;
    s->live = 1;
}

static void s_fill(source *s, size_t need) {
    if (s->len - s->start >= need) return;
    memmove(s->buf, s->buf + s->start, s->len - s->start);
    s->len -= s->start;
    s->start = 0;
    if (need > s->cap) {
        while (s->cap < need) s->cap *= 2;
        s->buf = xrealloc(s->buf, s->cap);
    }
    while (s->len < need && s->pos < s->end) {
        size_t want = s->cap - s->len;
        if (want > s->end - s->pos) want = (size_t)(s->end - s->pos);
        ssize_t n = pread(s->fd, s->buf + s->len, want, (off_t)s->pos);
        if (n < 0) {
            if (errno == EINTR) continue;
            die(EXIT_SOFTWARE, "read failed: %s", strerror(errno));
        }
        if (n == 0) break;
        s->len += (size_t)n;
        s->pos += (uint64_t)n;
    }
}

static inline int read_varint(const uint8_t *p, size_t avail, uint32_t *v, size_t *used) {
    uint32_t x = 0;
    for (size_t i = 0; i < avail && i < 5; i++) {
        x |= (uint32_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) { *v = x; *used = i + 1; return 1; }
    }
    return 0;
}

__attribute__((noreturn)) static void corrupt(void) {
    die(EXIT_DATA, "a map output is damaged (a record is cut short)");
}

/* Advance to the next record; 0 at the end. */
static int s_next(source *s) {
    size_t avail = s->len - s->start;
    if (avail >= 2 && s->buf[s->start] < 0x80 && s->buf[s->start + 1] < 0x80 &&
        avail >= 2 + (size_t)s->buf[s->start] + s->buf[s->start + 1]) {  /* short, in the buffer */
        uint32_t klen = s->buf[s->start], vlen = s->buf[s->start + 1];
        const uint8_t *p = s->buf + s->start + 2;
        s->cur = (rec){p, p + klen, klen, vlen};
        s->prefix = key_prefix(p, klen);
        s->start += 2 + klen + vlen;
        return 1;
    }
    if (avail < 10) s_fill(s, 10);
    avail = s->len - s->start;
    if (avail == 0) { s->live = 0; return 0; }
    uint32_t klen, vlen;
    size_t a, b;
    if (!read_varint(s->buf + s->start, avail, &klen, &a) ||
        !read_varint(s->buf + s->start + a, avail - a, &vlen, &b))
        corrupt();
    size_t total = a + b + (size_t)klen + vlen;
    if (avail < total) {
        s_fill(s, total);
        if (s->len - s->start < total) corrupt();
    }
    const uint8_t *p = s->buf + s->start + a + b;
    s->cur = (rec){p, p + klen, klen, vlen};
    s->prefix = key_prefix(p, klen);
    s->start += total;
    return 1;
}

static inline int s_less(const source *x, int i, const source *y, int j) {
    if (x->prefix != y->prefix) return x->prefix < y->prefix;
    if (x->cur.klen <= 8 || y->cur.klen <= 8)  /* the prefix holds the shorter key whole */
        return x->cur.klen != y->cur.klen ? x->cur.klen < y->cur.klen : i < j;
    int c = key_cmp(x->cur.key + 8, x->cur.klen - 8, y->cur.key + 8, y->cur.klen - 8);
    return c ? c < 0 : i < j;
}

/* A tree of losers over the sources, ordered by (key, source number): a record costs
 * log2(sources) comparisons, half a binary heap's.  Leaves are k..2k-1, the winner is
 * in tree[0], each inner node keeps the loser of the match played there. */
typedef struct {
    source *src;
    int *tree;
    int k;
} merger;

static inline int m_less(const merger *m, int a, int b) {
    const source *x = &m->src[a], *y = &m->src[b];
    if (!x->live) return 0;
    if (!y->live) return 1;
    return s_less(x, a, y, b);
}

static int m_build(merger *m, int node) {
    if (node >= m->k) return node - m->k;
    int l = m_build(m, 2 * node), r = m_build(m, 2 * node + 1);
    if (m_less(m, l, r)) { m->tree[node] = r; return l; }
    m->tree[node] = l;
    return r;
}

static void merge_begin(merger *m, source *src, int n) {
    m->src = src;
    m->k = n;
    m->tree = xmalloc((size_t)(n > 1 ? n : 2) * sizeof *m->tree);
    for (int i = 0; i < n; i++) s_next(&src[i]);
    m->tree[0] = n ? m_build(m, 1) : 0;
}

/* The smallest current record's source, or -1; call merge_advance after using it. */
static inline int merge_top(merger *m) {
    return m->k && m->src[m->tree[0]].live ? m->tree[0] : -1;
}

static inline void merge_advance(merger *m) {
    int winner = m->tree[0];
    s_next(&m->src[winner]);
    for (int node = (winner + m->k) / 2; node >= 1; node /= 2)
        if (m_less(m, m->tree[node], winner)) {
            int t = m->tree[node]; m->tree[node] = winner; winner = t;
        }
    m->tree[0] = winner;
}

/* Runs named on the command line, with their indexes. */
typedef struct {
    int fd;
    uint64_t *idx;
} run;

static run *open_runs(char **paths, int n) {
    run *runs = xmalloc((size_t)n * sizeof *runs);
    for (int i = 0; i < n; i++) {
        runs[i].fd = open_or_die(paths[i], O_RDONLY);
        char path[300];
        snprintf(path, sizeof path, "%s.idx", paths[i]);
        size_t size;
        runs[i].idx = (uint64_t *)slurp(path, &size);
        if (size != (L.partitions + 1) * sizeof(uint64_t)) die(EXIT_SOFTWARE, "bad run index");
    }
    return runs;
}

static void close_runs(run *runs, int n) {
    for (int i = 0; i < n; i++) {
        close(runs[i].fd);
        free(runs[i].idx);
    }
    free(runs);
}

/* Runs merged are gone: a task's scratch holds no more than one copy of its data. */
static void remove_runs(char **paths, int n) {
    for (int i = 0; i < n; i++) {
        char idx[300];
        snprintf(idx, sizeof idx, "%s.idx", paths[i]);
        unlink(paths[i]);
        unlink(idx);
    }
}

typedef void (*emit_fn)(void *ctx, uint32_t part, const rec *r, int same_key);
static void emit_job_form_by_unit(void *ctx, uint32_t part, const rec *r, int same);

/* Merge partitions [first, first + count) of `n` runs into one key order, calling
 * emit per record (equal keys in run order: they are in one partition). */
static void merge_ranges(run *runs, int n, uint32_t first, uint32_t count, emit_fn emit,
                         void *ctx) {
    int sources = n * (int)count;
    source *src = xmalloc((size_t)sources * sizeof *src);
    /* The merge's read buffers share a bounded budget, however many sources. */
    size_t chunk = MERGE_BUDGET / (size_t)(sources ? sources : 1);
    if (chunk > MERGE_CHUNK) chunk = MERGE_CHUNK;
    if (chunk < 4096) chunk = 4096;
    for (int i = 0; i < n; i++)
        for (uint32_t j = 0; j < count; j++)
            s_open(&src[i * (int)count + (int)j], runs[i].fd, runs[i].idx[first + j],
                   runs[i].idx[first + j + 1], chunk);
    merger m;
    merge_begin(&m, src, sources);
    uint32_t p = first;
    uint8_t *last = NULL;
    uint32_t last_len = 0;
    size_t last_cap = 0;
    int have_last = 0;
    for (int top; (top = merge_top(&m)) >= 0; merge_advance(&m)) {
        const rec *r = &src[top].cur;
        if (emit != emit_job_form_by_unit) {  /* only it counts equal keys */
            emit(ctx, p, r, 0);
            continue;
        }
        int same = have_last && key_cmp(last, last_len, r->key, r->klen) == 0;
        emit(ctx, p, r, same);
        if (!same) {
            if (r->klen > last_cap) last = xrealloc(last, last_cap = r->klen);
            memcpy(last, r->key, r->klen);
            last_len = r->klen;
            have_last = 1;
        }
    }
    free(last);
    free(m.tree);
    for (int i = 0; i < sources; i++) free(src[i].buf);
    free(src);
}

static void merge_partition(run *runs, int n, uint32_t p, emit_fn emit, void *ctx) {
    merge_ranges(runs, n, p, 1, emit, ctx);
}

static void emit_internal(void *ctx, uint32_t part, const rec *r, int same) {
    (void)part; (void)same;
    put_internal(ctx, r);
}

static void emit_part(void *ctx, uint32_t part, const rec *r, int same) {
    (void)part; (void)same;
    put_internal(ctx, r);
    records_out++;
}

/* Merge runs MERGE_FACTOR at a time into fewer runs, until few enough remain for one
 * more merge; returns the paths of what is left. */
static char **merge_down(char **paths, int *n) {
    static int round_ = 0;
    while (*n > MERGE_FACTOR) {
        int groups = (*n + MERGE_FACTOR - 1) / MERGE_FACTOR;
        char **next = xmalloc((size_t)groups * sizeof *next);
        for (int g = 0; g < groups; g++) {
            int from = g * MERGE_FACTOR, count = *n - from < MERGE_FACTOR ? *n - from : MERGE_FACTOR;
            run *runs = open_runs(paths + from, count);
            char path[300];
            snprintf(path, sizeof path, "/s/merged-%d-%04d", round_, g);
            uint64_t offsets[MAX_PARTS + 1];
            writer w;
            w_open(&w, path);
            for (uint32_t p = 0; p < L.partitions; p++) {
                offsets[p] = w.written;
                merge_partition(runs, count, p, emit_internal, &w);
            }
            offsets[L.partitions] = w.written;
            w_close(&w);
            close_runs(runs, count);
            for (int i = from; i < from + count; i++) {
                char idx[300];
                snprintf(idx, sizeof idx, "%s.idx", paths[i]);
                unlink(paths[i]);
                unlink(idx);
            }
            next[g] = strdup(path);
            snprintf(path + strlen(path), sizeof path - strlen(path), ".idx");
            write_index(path, offsets);
        }
        round_++;
        paths = next;
        *n = groups;
    }
    return paths;
}

/* Every partition of `n` runs into the map's final part files. */
static void merge_to_parts(char **paths, int n) {
    step(T_MERGE);
    paths = merge_down(paths, &n);
    run *runs = open_runs(paths, n);
    for (uint32_t p = 0; p < L.partitions; p++) {
        char path[64];
        part_path(path, sizeof path, p);
        writer w;
        w_open(&w, path);
        merge_partition(runs, n, p, emit_part, &w);
        w_close(&w);
        parts_bytes[p] = w.written;
    }
    close_runs(runs, n);
    remove_runs(paths, n);
}

static void say_parts(void) {
    say("\"records_out\":%llu,\"parts\":[", (unsigned long long)records_out);
    for (uint32_t p = 0; p < L.partitions; p++)
        say("%s%llu", p ? "," : "", (unsigned long long)parts_bytes[p]);
    say("],");
}

/* -- commands ---------------------------------------------------------------------------------------- */
/* sort IN [--from OFFSET --line N] [--plain UNIT] (--once PREFIX | --runs PREFIX | --parts) */
static int cmd_sort(int argc, char **argv) {
    if (argc < 1) die(EXIT_SOFTWARE, "sort: no input");
    const char *in = argv[0], *once = NULL;
    uint64_t from = 0, line = 0;
    int plain = -1, to_parts = 0;
    snprintf(run_prefix, sizeof run_prefix, "/s/run");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--from") && i + 1 < argc) from = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--line") && i + 1 < argc) line = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--plain") && i + 1 < argc) plain = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--once") && i + 1 < argc) once = argv[++i];
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            snprintf(run_prefix, sizeof run_prefix, "%s", argv[++i]);
        else if (!strcmp(argv[i], "--parts")) to_parts = 1;
        else die(EXIT_SOFTWARE, "sort: bad argument %s", argv[i]);
    }
    if (plain >= (int)L.n_units) die(EXIT_SOFTWARE, "sort: bad unit");
    reader r;
    r_open(&r, in, from, line);
    rec x;
    uint64_t records = 0, spills = 0;
    int stopped = 0;
    step(T_PARSE);
    for (;;) {
        uint64_t before = r.offset, line_before = r.line;
        if (!r_next(&r, &x)) break;
        uint32_t part;
        if (plain >= 0) part = partition_in((uint32_t)plain, x.key, x.klen);
        else if (L.named) part = partition_in(unpack_named(&x), x.key, x.klen);
        else part = partition_in(0, x.key, x.klen);
        if (buffer_full(x.klen, x.vlen)) {
            if (once) {  /* stop before this record: the next command starts from it */
                r.offset = before;
                r.line = line_before;
                stopped = 1;
                break;
            }
            step(T_SORT);
            buffer_index();
            buffer_sort(0);
            step(T_SPILL);
            spill_run();
            buffer_clear();
            spills++;
            step(T_PARSE);
        }
        buffer_add(part, &x);
        records++;
    }
    say("{\"records\":%llu,\"next\":%llu,\"line\":%llu,\"eof\":%s,",
        (unsigned long long)records, (unsigned long long)r.offset,
        (unsigned long long)r.line, stopped ? "false" : "true");
    r_close(&r);
    step(T_SORT);
    if (!block) buffer_reserve(0);
    buffer_index();
    buffer_sort(0);
    spills += n_rec > 0;
    step(T_SPILL);
    uint64_t dups = buffer_duplicates();
    say("\"duplicates\":%llu,", (unsigned long long)dups);
    if (once && dups * COMBINE_WORTH >= n_rec && dups > 0) {
        int several = 0;  /* a unit of several partitions: sorted by key across them */
        for (uint32_t u = 0; u < L.n_units; u++) several |= L.units[u].count > 1;
        if (several) {
            step(T_SORT);
            buffer_sort(1);
            step(T_SPILL);
        }
        spill_job_form(once);  /* for the combiner */
    } else if (to_parts && n_runs == 0 && (!once || !stopped)) {
        write_parts_from_buffer();
        say_parts();
    } else if (once) {
        snprintf(run_prefix, sizeof run_prefix, "%s", once);
        spill_run();
        say("\"runs\":%u,", n_runs);
    } else {
        if (n_rec || n_runs == 0) spill_run();
        if (to_parts) {
            char **paths = xmalloc(n_runs * sizeof *paths);
            for (uint32_t i = 0; i < n_runs; i++) {
                char path[300];
                snprintf(path, sizeof path, "%s-%04u", run_prefix, i);
                paths[i] = strdup(path);
            }
            merge_to_parts(paths, (int)n_runs);
            say_parts();
        } else {
            say("\"runs\":%u,", n_runs);
        }
    }
    say("\"spills\":%llu,", (unsigned long long)spills);
    say_times_and_end();
    return 0;
}

typedef struct {
    writer w;
    int open;
    uint32_t unit;
    uint64_t records, duplicates;
    const char *prefix;
    char summary_units[1 << 14];
    size_t summary_len;
} unit_writer;

static void emit_job_form_by_unit(void *ctx, uint32_t part, const rec *r, int same) {
    unit_writer *uw = ctx;
    uint32_t u = L.unit_of[part];
    if (!uw->open || uw->unit != u) {
        if (uw->open) {
            w_close(&uw->w);
            uw->summary_len += (size_t)snprintf(uw->summary_units + uw->summary_len,
                                                sizeof uw->summary_units - uw->summary_len,
                                                "%s[%u,%llu]", uw->summary_len ? "," : "",
                                                uw->unit, (unsigned long long)uw->records);
        }
        char path[300];
        snprintf(path, sizeof path, "%s.u%04u", uw->prefix, u);
        w_open(&uw->w, path);
        uw->open = 1;
        uw->unit = u;
        uw->records = 0;
    }
    uw->records++;
    uw->duplicates += same;
    put_job_form(&uw->w, r);
}

/* merge RUN... (--parts | --units PREFIX) */
static int cmd_merge(int argc, char **argv) {
    int n = 0, to_parts = 0;
    const char *units = NULL;
    char **paths = xmalloc((size_t)(argc + 1) * sizeof *paths);
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--parts")) to_parts = 1;
        else if (!strcmp(argv[i], "--units") && i + 1 < argc) units = argv[++i];
        else paths[n++] = argv[i];
    }
    if (to_parts) {
        merge_to_parts(paths, n);
        say("{");
        say_parts();
    } else if (units) {
        step(T_MERGE);
        paths = merge_down(paths, &n);
        run *runs = open_runs(paths, n);
        unit_writer *uw = xmalloc(sizeof *uw);
        memset(uw, 0, sizeof *uw);
        uw->prefix = units;
        for (uint32_t u = 0; u < L.n_units; u++)  /* each unit in key order, for the combiner */
            merge_ranges(runs, n, L.units[u].first, L.units[u].count, emit_job_form_by_unit, uw);
        if (uw->open) {
            w_close(&uw->w);
            uw->summary_len += (size_t)snprintf(uw->summary_units + uw->summary_len,
                                                sizeof uw->summary_units - uw->summary_len,
                                                "%s[%u,%llu]", uw->summary_len ? "," : "",
                                                uw->unit, (unsigned long long)uw->records);
        }
        close_runs(runs, n);
        remove_runs(paths, n);
        say("{\"duplicates\":%llu,\"units\":[%s],", (unsigned long long)uw->duplicates,
            uw->summary_units);
    } else {
        die(EXIT_SOFTWARE, "merge: --parts or --units");
    }
    say_times_and_end();
    return 0;
}

static void emit_job_form(void *ctx, uint32_t part, const rec *r, int same) {
    (void)part; (void)same;
    put_job_form(ctx, r);
}

/* reduce OUT FILE...: the sorted map outputs of one partition, merged into the
 * reducer's input (job form).  Each FILE is a whole part file (internal form). */
static int cmd_reduce(int argc, char **argv) {
    if (argc < 1) die(EXIT_SOFTWARE, "reduce: no output");
    const char *out = argv[0];
    int n = argc - 1;
    char **paths = argv + 1;
    step(T_MERGE);
    /* Whole files are runs of one partition: give each a one-partition index. */
    uint32_t saved = L.partitions;
    L.partitions = 1;
    for (int i = 0; i < n; i++) {
        int fd = open_or_die(paths[i], O_RDONLY);
        uint64_t offsets[2] = {0, (uint64_t)lseek(fd, 0, SEEK_END)};
        close(fd);
        char path[300];
        snprintf(path, sizeof path, "%s.idx", paths[i]);
        write_index(path, offsets);
    }
    paths = merge_down(paths, &n);
    run *runs = open_runs(paths, n);
    writer w;
    w_open(&w, out);
    merge_partition(runs, n, 0, emit_job_form, &w);
    w_close(&w);
    close_runs(runs, n);
    remove_runs(paths, n);
    L.partitions = saved;
    say("{\"bytes\":%llu,", (unsigned long long)w.written);
    say_times_and_end();
    return 0;
}

/* sample IN MAX OUT: up to MAX of the keys of IN (plain records), spread evenly over
 * them, framed, for the proxy to choose a total order's split points. */
static int cmd_sample(int argc, char **argv) {
    if (argc < 3) die(EXIT_SOFTWARE, "sample: IN MAX OUT");
    uint64_t max = strtoull(argv[1], NULL, 10);
    step(T_PARSE);
    reader r;
    rec x;
    uint64_t records = 0;
    r_open(&r, argv[0], 0, 0);
    while (r_next(&r, &x)) records++;
    r_close(&r);
    uint64_t every = max && records > max ? (records + max - 1) / max : 1;
    writer w;
    w_open(&w, argv[2]);
    r_open(&r, argv[0], 0, 0);
    uint64_t i = 0, kept = 0;
    while (r_next(&r, &x)) {
        if (i++ % every == 0 && kept < max) {
            w_be32(&w, x.klen);
            w_put(&w, x.key, x.klen);
            kept++;
        }
    }
    r_close(&r);
    w_close(&w);
    say("{\"records\":%llu,\"keys\":%llu,", (unsigned long long)records, (unsigned long long)kept);
    say_times_and_end();
    return 0;
}

int main(int argc, char **argv) {
    crc_init();
    if (argc < 2) die(EXIT_SOFTWARE, "usage: shuffle_core sort|merge|reduce|sample ...");
    load_layout();
    if (!strcmp(argv[1], "sort")) return cmd_sort(argc - 2, argv + 2);
    if (!strcmp(argv[1], "merge")) return cmd_merge(argc - 2, argv + 2);
    if (!strcmp(argv[1], "reduce")) return cmd_reduce(argc - 2, argv + 2);
    if (!strcmp(argv[1], "sample")) return cmd_sample(argc - 2, argv + 2);
    die(EXIT_SOFTWARE, "unknown command %s", argv[1]);
}
