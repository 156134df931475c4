/*
 * zerocompute.h: key/value records in the job's record form, for C guests.
 * Header-only; the dev cluster's builds (zerocompute.guests.build_c_guest)
 * find it on the include path: #include "zerocompute.h".
 *
 * The form is the job's ("records" in the manifest, ZEROCOMPUTE_RECORDS in
 * the guest's environment):
 *
 *   text    key<TAB>value<NEWLINE>: the key may hold neither a tab nor a
 *           newline; the value is written as given (write JSON, a number or
 *           a quoted string, if Python guests are to read it as such)
 *   framed  4-byte big-endian key length, key bytes, 4-byte value length,
 *           value bytes: any bytes at all
 *
 *   zc_record r = {0};
 *   while (zc_next(stdin, &r) == 1) zc_emit(stdout, r.key, r.key_len, r.value, r.value_len);
 *   zc_free(&r);
 *
 * zc_next reads ahead a MiB at a time: do not mix it with other reads of the same
 * stream.  Build with -msimd128 (zerocompute.guests does) and records are checked
 * and split sixteen bytes a step.
 *
 * MapReduce guests write one fold function, a combine or reduce of one key's
 * values into one value, and use it on both sides:
 *
 *   static int sum(const char *key, uint32_t key_len, zc_values *values) {
 *       long total = 0;
 *       const char *v; uint32_t n;
 *       while (zc_value(values, &v, &n)) total += zc_long(v, n);
 *       return zc_result_long(values, total);
 *   }
 *   map:     zc_mapper m; zc_map_begin(&m, stdout, sum, "reduce");
 *            ... zc_map_emit(&m, word, len, "1", 1); ...
 *            return zc_map_end(&m);
 *   reduce:  return zc_reduce(stdin, stdout, sum);
 *
 * zc_map_emit writes each record as it comes, unless the job's combiner is this
 * same program run in the mode that folds with the function (the task gives the
 * combiner's first argument in ZEROCOMPUTE_COMBINER; "reduce" above): then it keeps each
 * key's values in memory and folds them with the function (in-mapper
 * combining), writing one record per key when the map ends or when what it
 * keeps passes the job's sort buffer (ZEROCOMPUTE_SORT_BUFFER).
 */
#ifndef ZEROCOMPUTE_H
#define ZEROCOMPUTE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *key;
    uint32_t key_len;
    char *value;
    uint32_t value_len;
    size_t key_cap, value_cap; /* bytes allocated: the buffers grow, never shrink */
} zc_record;

/* 1 when the job's records are framed, 0 for text (looked up once: getenv scans the
 * whole environment, and this is asked per record). */
static inline int zc_framed(void) {
    static int framed = -1;
    if (framed < 0) {
        const char *form = getenv("ZEROCOMPUTE_RECORDS");
        framed = form != NULL && strcmp(form, "framed") == 0;
    }
    return framed;
}

/* Count amount of group/name for the job's counters (Hadoop Streaming's
 * "reporter:counter:" stderr line: the host takes it out of stderr and sums it;
 * zerocompute/counters.py).  Group and name: no commas, no newlines.  0 or -1. */
static inline int zc_increment_counter(const char *group, const char *name, long amount) {
    if (fprintf(stderr, "reporter:counter:%s,%s,%ld\n", group, name, amount) < 0) return -1;
    return fflush(stderr) == 0 ? 0 : -1;
}

static inline int zc__put_len(FILE *out, uint32_t n) {
    unsigned char b[4] = {n >> 24, n >> 16, n >> 8, n};
    return fwrite(b, 1, 4, out) == 4 ? 0 : -1;
}

/* Write one record; -1 on a write error or a text key with a tab or newline. */
static inline int zc_emit(FILE *out, const void *key, uint32_t key_len, const void *value,
                   uint32_t value_len) {
    if (zc_framed()) {
        if (zc__put_len(out, key_len) || fwrite(key, 1, key_len, out) != key_len ||
            zc__put_len(out, value_len) || fwrite(value, 1, value_len, out) != value_len)
            return -1;
        return 0;
    }
    if (memchr(key, '\t', key_len) || memchr(key, '\n', key_len) ||
        memchr(value, '\n', value_len))
        return -1;
    if (fwrite(key, 1, key_len, out) != key_len || fputc('\t', out) == EOF ||
        fwrite(value, 1, value_len, out) != value_len || fputc('\n', out) == EOF)
        return -1;
    return 0;
}

static inline int zc__reserve(char **buf, size_t *cap, size_t need) {
    if (need + 1 <= *cap) return 0;
    size_t size = *cap ? *cap : 64;
    while (size < need + 1) size *= 2;
    char *grown = realloc(*buf, size);
    if (!grown) return -1;
    *buf = grown;
    *cap = size;
    return 0;
}

/* -- checking text records fast ------------------------------------------------------ */
/* Whether bytes hold `a` or `b`: sixteen at a time where the build has WebAssembly's
 * SIMD (-msimd128, as zerocompute.guests builds), else the libc's memchr. */
#ifdef __wasm_simd128__
#include <wasm_simd128.h>
static inline int zc__has(const void *p, uint32_t n, char a, char b) {
    const unsigned char *q = p;
    v128_t va = wasm_i8x16_splat(a), vb = wasm_i8x16_splat(b);
    for (; n >= 16; q += 16, n -= 16) {
        v128_t v = wasm_v128_load(q);
        if (wasm_v128_any_true(wasm_v128_or(wasm_i8x16_eq(v, va), wasm_i8x16_eq(v, vb))))
            return 1;
    }
    for (; n; q++, n--)
        if (*q == (unsigned char)a || *q == (unsigned char)b) return 1;
    return 0;
}
static inline const char *zc__find(const char *p, size_t n, char c) {
    v128_t vc = wasm_i8x16_splat(c);
    for (; n >= 16; p += 16, n -= 16) {
        uint32_t mask = wasm_i8x16_bitmask(wasm_i8x16_eq(wasm_v128_load(p), vc));
        if (mask) return p + __builtin_ctz(mask);
    }
    for (; n; p++, n--)
        if (*p == c) return p;
    return NULL;
}
#else
static inline int zc__has(const void *p, uint32_t n, char a, char b) {
    return memchr(p, a, n) != NULL || memchr(p, b, n) != NULL;
}

static inline const char *zc__find(const char *p, size_t n, char c) { return memchr(p, c, n); }
#endif

/* zc_next's read-ahead: a MiB of the stream at a time (a stdio call per record, or
 * per byte, costs more than the record).  Do not mix zc_next with other reads of the
 * same stream. */
static struct {
    FILE *in;
    char *buf;
    size_t start, end, cap;
    int eof, error;
} zc__in;

/* At least `need` bytes from start (fewer only at the stream's end). */
static inline int zc__fill(FILE *in, size_t need) {
    if (zc__in.in != in) {
        zc__in.in = in;
        zc__in.start = zc__in.end = 0;
        zc__in.eof = zc__in.error = 0;
    }
    if (zc__in.end - zc__in.start >= need || zc__in.eof) return 0;
    if (zc__in.start) {
        memmove(zc__in.buf, zc__in.buf + zc__in.start, zc__in.end - zc__in.start);
        zc__in.end -= zc__in.start;
        zc__in.start = 0;
    }
    if (need < (1u << 20)) need = 1u << 20;
    if (need > zc__in.cap) {
        char *grown = realloc(zc__in.buf, need);
        if (!grown) return -1;
        zc__in.buf = grown;
        zc__in.cap = need;
    }
    while (zc__in.end < zc__in.cap && !zc__in.eof) {
        size_t got = fread(zc__in.buf + zc__in.end, 1, zc__in.cap - zc__in.end, in);
        if (got == 0) {
            zc__in.eof = 1;
            zc__in.error = ferror(in);
        }
        zc__in.end += got;
        if (got && zc__in.end - zc__in.start >= need) break;
    }
    return 0;
}

static inline int zc__keep(char **buf, size_t *cap, const char *from, uint32_t n) {
    if (zc__reserve(buf, cap, n)) return -1;
    memcpy(*buf, from, n);
    (*buf)[n] = '\0';
    return 0;
}

/* Read the next record: 1 when one was read, 0 at the end, -1 on malformed input.
 * Key and value are NUL-terminated for convenience (they may hold NULs too). */
static inline int zc_next(FILE *in, zc_record *r) {
    if (zc_framed()) {
        if (zc__fill(in, 8)) return -1;
        size_t have = zc__in.end - zc__in.start;
        if (have == 0) return zc__in.error ? -1 : 0;
        const unsigned char *p = (const unsigned char *)zc__in.buf + zc__in.start;
        if (have < 4) return -1;
        uint32_t klen = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        if (zc__fill(in, (size_t)klen + 8)) return -1;
        have = zc__in.end - zc__in.start;
        p = (const unsigned char *)zc__in.buf + zc__in.start;
        if (have < (size_t)klen + 8) return -1;
        const unsigned char *q = p + 4 + klen;
        uint32_t vlen = (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3];
        if (zc__fill(in, (size_t)klen + vlen + 8)) return -1;
        have = zc__in.end - zc__in.start;
        p = (const unsigned char *)zc__in.buf + zc__in.start;
        if (have < (size_t)klen + vlen + 8) return -1;
        if (zc__keep(&r->key, &r->key_cap, (const char *)p + 4, klen) ||
            zc__keep(&r->value, &r->value_cap, (const char *)p + 8 + klen, vlen))
            return -1;
        r->key_len = klen;
        r->value_len = vlen;
        zc__in.start += (size_t)klen + vlen + 8;
        return 1;
    }
    /* A line: up to its newline (or the stream's end), split at its first tab. */
    if (zc__fill(in, 1)) return -1;
    size_t scanned = 0;
    const char *nl;
    for (;;) {
        const char *from = zc__in.buf + zc__in.start;
        size_t have = zc__in.end - zc__in.start;
        nl = zc__find(from + scanned, have - scanned, '\n');
        if (nl || zc__in.eof) break;
        scanned = have;
        if (zc__fill(in, have + 1)) return -1;
    }
    const char *line = zc__in.buf + zc__in.start;
    size_t len = nl ? (size_t)(nl - line) : zc__in.end - zc__in.start;
    if (!nl && len == 0) return zc__in.error ? -1 : 0;
    const char *tab = zc__find(line, len, '\t');
    if (!tab) return -1;
    uint32_t key_len = (uint32_t)(tab - line), value_len = (uint32_t)(len - key_len - 1);
    if (zc__keep(&r->key, &r->key_cap, line, key_len) ||
        zc__keep(&r->value, &r->value_cap, tab + 1, value_len))
        return -1;
    r->key_len = key_len;
    r->value_len = value_len;
    zc__in.start += len + (nl ? 1 : 0);
    return 1;
}

static inline void zc_free(zc_record *r) {
    free(r->key);
    free(r->value);
    memset(r, 0, sizeof *r);
}

/* -- grouped values ------------------------------------------------------------------------ */
/* One key's values, as a fold function reads them: from memory (a map's kept values)
 * or from a reducer's sorted input. */
typedef struct zc_values {
    /* kept in memory: [u32 length][bytes] after one another */
    const char *mem;
    size_t mem_len, mem_at;
    /* streamed: the reader's record, the key of the group, whether the group ended */
    FILE *in;
    zc_record *r;
    const char *key;
    uint32_t key_len;
    int pending, ended, status;
    /* the result */
    char *result;
    uint32_t result_len;
    size_t result_cap;
    int has_result;
} zc_values;

typedef int (*zc_fold_fn)(const char *key, uint32_t key_len, zc_values *values);

/* The next value of the key: 1 (value and len set), or 0 when there are no more. */
static inline int zc_value(zc_values *v, const char **value, uint32_t *len) {
    if (v->mem) {
        if (v->mem_at + 4 > v->mem_len) return 0;
        uint32_t n;
        memcpy(&n, v->mem + v->mem_at, 4);
        *value = v->mem + v->mem_at + 4;
        *len = n;
        v->mem_at += 4 + (size_t)n;
        return 1;
    }
    if (v->ended) return 0;
    if (!v->pending) {
        int got = zc_next(v->in, v->r);
        if (got < 0) v->status = -1;
        if (got <= 0) { v->ended = 2; return 0; }  /* the input's end */
        if (v->r->key_len != v->key_len || memcmp(v->r->key, v->key, v->key_len)) {
            v->ended = 1;  /* the next key's first record: kept for the next group */
            v->pending = 1;
            return 0;
        }
    }
    v->pending = 0;
    *value = v->r->value;
    *len = v->r->value_len;
    return 1;
}

/* The key's folded value (a fold sets at most one; without one the key is dropped). */
static inline int zc_result(zc_values *v, const void *value, uint32_t len) {
    if (zc__reserve(&v->result, &v->result_cap, len)) return -1;
    memcpy(v->result, value, len);
    v->result_len = len;
    v->has_result = 1;
    return 0;
}

static inline int zc_result_long(zc_values *v, long n) {
    char buf[24], *p = buf + sizeof buf;  /* by hand: snprintf costs more than a fold */
    unsigned long u = n < 0 ? 0ul - (unsigned long)n : (unsigned long)n;
    do { *--p = (char)('0' + u % 10); u /= 10; } while (u);
    if (n < 0) *--p = '-';
    return zc_result(v, p, (uint32_t)(buf + sizeof buf - p));
}

/* A decimal integer value (as the SDKs write numbers). */
static inline long zc_long(const char *p, uint32_t n) {
    long sign = 1, total = 0;
    uint32_t i = 0;
    if (n && p[0] == '-') { sign = -1; i = 1; }
    for (; i < n && p[i] >= '0' && p[i] <= '9'; i++) total = total * 10 + (p[i] - '0');
    return sign * total;
}

/* Records on `in` sorted by key, each key's values folded by `fold` into one record on
 * `out`: the reducer's (or a combiner's) whole job.  0, or 65 on malformed input or a
 * failed fold or write. */
static inline int zc_reduce(FILE *in, FILE *out, zc_fold_fn fold) {
    zc_record r = {0};
    zc_values v = {0};
    char *key = NULL;
    size_t key_cap = 0;
    int got = zc_next(in, &r), status = 0;
    while (got == 1) {
        if (zc__reserve(&key, &key_cap, r.key_len)) { status = 65; break; }
        memcpy(key, r.key, r.key_len);
        v.in = in; v.r = &r; v.key = key; v.key_len = r.key_len;
        v.pending = 1; v.ended = 0; v.has_result = 0;
        if (fold(key, r.key_len, &v) != 0) { status = 65; break; }
        const char *ignored; uint32_t n;
        while (zc_value(&v, &ignored, &n)) {}  /* values the fold did not read */
        if (v.status < 0) { status = 65; break; }
        if (v.has_result && zc_emit(out, key, v.key_len, v.result, v.result_len)) {
            status = 65;
            break;
        }
        got = v.ended == 1 ? 1 : 0;
    }
    if (got < 0) status = 65;
    free(key);
    free(v.result);
    zc_free(&r);
    return fflush(out) == 0 ? status : 65;
}

/* -- the map side: emitting, with in-mapper combining ------------------------------------- */
/* One key kept in memory: short keys live in the entry itself (no allocation, no
 * second place to read when the key comes again).  Entries are dense, in the order
 * their keys first came (a frequent key comes early: the ones used most sit together
 * in the cache); the probe table beside them is small slots of a hash tag and an
 * index, so that a probe reads 8 bytes, not an entry. */
#define ZC_INLINE_KEY 24
typedef struct {
    uint64_t hash;
    uint32_t key_len, count;
    char inline_key[ZC_INLINE_KEY];
    char *long_key;
    char *values;  /* [u32 length][bytes] ... */
    size_t values_len, values_cap;
} zc__kept;

/* The mapper's own output buffer: records are copied into it and it goes out in one
 * fwrite when full (a stdio call per record costs more than the record). */
#define ZC_OUT_BUFFER (1u << 16)

typedef struct zc_mapper {
    FILE *out;
    zc_fold_fn fold;   /* NULL: records go straight out */
    zc__kept *entries;
    struct zc__slot { uint32_t tag, index; } *slots;  /* index 0: empty; else entry + 1 */
    size_t capacity, used, entries_cap, bytes, budget;
    int framed, failed;
    char *buf;
    size_t buf_len;
} zc_mapper;

static inline int zc__drain(zc_mapper *m) {
    if (m->buf_len && fwrite(m->buf, 1, m->buf_len, m->out) != m->buf_len) return -1;
    m->buf_len = 0;
    return 0;
}

/* One record into the mapper's buffer, in the job's form (-1: it cannot be written). */
static inline int zc__put(zc_mapper *m, const void *key, uint32_t key_len, const void *value,
                          uint32_t value_len) {
    size_t n = (size_t)key_len + value_len + (m->framed ? 8 : 2);
    if (!m->framed && (zc__has(key, key_len, '\t', '\n') || zc__has(value, value_len, '\n', '\n')))
        return -1;
    if (m->buf_len + n > ZC_OUT_BUFFER && zc__drain(m)) return -1;
    if (n > ZC_OUT_BUFFER) return zc_emit(m->out, key, key_len, value, value_len);
    char *p = m->buf + m->buf_len;
    if (m->framed) {
        unsigned char l[4] = {key_len >> 24, key_len >> 16, key_len >> 8, key_len};
        memcpy(p, l, 4);
        memcpy(p + 4, key, key_len);
        unsigned char v[4] = {value_len >> 24, value_len >> 16, value_len >> 8, value_len};
        memcpy(p + 4 + key_len, v, 4);
        memcpy(p + 8 + key_len, value, value_len);
    } else {
        memcpy(p, key, key_len);
        p[key_len] = '\t';
        memcpy(p + key_len + 1, value, value_len);
        p[key_len + 1 + value_len] = '\n';
    }
    m->buf_len += n;
    return 0;
}

/* Values kept for one key before they are folded into one. */
#define ZC_FOLD_AFTER 64

/* Equal bytes, compared inline (keys are short; a libc call costs more). */
static inline int zc__same(const char *a, const void *b, uint32_t n) {
    const char *q = b;
    for (uint32_t i = 0; i < n; i++)
        if (a[i] != q[i]) return 0;
    return 1;
}

/* A multiply-xor hash, eight bytes a step. */
static inline uint64_t zc__hash(const char *p, uint32_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    uint64_t w = 0;
    for (uint32_t i = 0; i < n; i++) w |= (uint64_t)(unsigned char)p[i] << (8 * i);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 29);
}

static inline const char *zc__key(const zc__kept *k) {
    return k->key_len <= ZC_INLINE_KEY ? k->inline_key : k->long_key;
}

/* `fold` is what this program's `mode` runs (NULL: no combining). */
static inline int zc_map_begin(zc_mapper *m, FILE *out, zc_fold_fn fold, const char *mode) {
    memset(m, 0, sizeof *m);
    m->out = out;
    m->framed = zc_framed();
    m->buf = malloc(ZC_OUT_BUFFER);
    if (!m->buf) return -1;
    const char *combiner = getenv("ZEROCOMPUTE_COMBINER");
    if (fold && mode && combiner && strcmp(combiner, mode) == 0) {
        const char *budget = getenv("ZEROCOMPUTE_SORT_BUFFER");
        m->fold = fold;
        m->budget = budget ? strtoull(budget, NULL, 10) : (64u << 20);
        if (m->budget < 4096) m->budget = 4096;
    }
    return 0;
}

static inline int zc__fold_kept(zc_mapper *m, zc__kept *k) {
    zc_values v = {0};
    v.mem = k->values;
    v.mem_len = k->values_len;
    if (m->fold(zc__key(k), k->key_len, &v) != 0) { free(v.result); return -1; }
    k->values_len = 0;
    k->count = 0;
    if (v.has_result) {
        size_t need = 4 + (size_t)v.result_len;
        if (need > k->values_cap) {
            char *grown = realloc(k->values, need);
            if (!grown) { free(v.result); return -1; }
            m->bytes += need - k->values_cap;
            k->values = grown;
            k->values_cap = need;
        }
        memcpy(k->values, &v.result_len, 4);
        memcpy(k->values + 4, v.result, v.result_len);
        k->values_len = need;
        k->count = 1;
    }
    free(v.result);
    return 0;
}

/* Write out everything kept (each key's values folded into one) and forget it. */
static inline int zc__flush(zc_mapper *m) {
    for (size_t i = 0; i < m->used; i++) {
        zc__kept *k = &m->entries[i];
        if (k->count > 1 && zc__fold_kept(m, k)) return -1;
        if (k->count == 1) {
            uint32_t n;
            memcpy(&n, k->values, 4);
            if (zc__put(m, zc__key(k), k->key_len, k->values + 4, n)) return -1;
        }
        free(k->long_key);
        free(k->values);
    }
    memset(m->entries, 0, m->used * sizeof *m->entries);
    memset(m->slots, 0, m->capacity * sizeof *m->slots);
    m->used = m->bytes = 0;
    return 0;
}

static inline int zc__grow(zc_mapper *m) {
    if (m->used == m->entries_cap) {
        size_t cap = m->entries_cap ? m->entries_cap * 2 : 512;
        zc__kept *grown = realloc(m->entries, cap * sizeof *grown);
        if (!grown) return -1;
        memset(grown + m->entries_cap, 0, (cap - m->entries_cap) * sizeof *grown);
        m->entries = grown;
        m->entries_cap = cap;
    }
    if ((m->used + 1) * 2 <= m->capacity) return 0;
    free(m->slots);
    m->capacity = m->capacity ? m->capacity * 2 : 1024;
    m->slots = calloc(m->capacity, sizeof *m->slots);
    if (!m->slots) return -1;
    for (size_t i = 0; i < m->used; i++) {
        size_t j = m->entries[i].hash & (m->capacity - 1);
        while (m->slots[j].index) j = (j + 1) & (m->capacity - 1);
        m->slots[j].tag = (uint32_t)(m->entries[i].hash >> 32);
        m->slots[j].index = (uint32_t)i + 1;
    }
    return 0;
}

/* Emit one map record (see the top of this file); -1 on failure. */
static inline int zc_map_emit(zc_mapper *m, const void *key, uint32_t key_len, const void *value,
                       uint32_t value_len) {
    if (!m->fold) return zc__put(m, key, key_len, value, value_len);
    if ((m->used == m->entries_cap || (m->used + 1) * 2 > m->capacity) && zc__grow(m))
        return -1;
    uint64_t h = zc__hash(key, key_len);
    uint32_t tag = (uint32_t)(h >> 32);
    size_t j = h & (m->capacity - 1);
    zc__kept *k = NULL;
    for (; m->slots[j].index; j = (j + 1) & (m->capacity - 1)) {
        if (m->slots[j].tag != tag) continue;
        zc__kept *e = &m->entries[m->slots[j].index - 1];
        if (e->key_len == key_len && zc__same(zc__key(e), key, key_len)) { k = e; break; }
    }
    if (!k) {
        k = &m->entries[m->used];
        m->slots[j].tag = tag;
        m->slots[j].index = (uint32_t)++m->used;
        if (key_len > ZC_INLINE_KEY) {
            k->long_key = malloc(key_len);
            if (!k->long_key) return -1;
        }
        memcpy(key_len <= ZC_INLINE_KEY ? k->inline_key : k->long_key, key, key_len);
        k->key_len = key_len;
        k->hash = h;
        m->bytes += key_len + sizeof *k + 16;
    }
    size_t need = k->values_len + 4 + value_len;
    if (need > k->values_cap) {
        size_t cap = k->values_cap ? k->values_cap * 2 : 32;
        while (cap < need) cap *= 2;
        char *grown = realloc(k->values, cap);
        if (!grown) return -1;
        m->bytes += cap - k->values_cap;
        k->values = grown;
        k->values_cap = cap;
    }
    char *to = k->values + k->values_len;
    memcpy(to, &value_len, 4);
    if (value_len <= 8) {  /* a few bytes (a count): no call */
        for (uint32_t i = 0; i < value_len; i++) to[4 + i] = ((const char *)value)[i];
    } else {
        memcpy(to + 4, value, value_len);
    }
    k->values_len = need;
    if (++k->count >= ZC_FOLD_AFTER && zc__fold_kept(m, k)) return -1;
    if (m->bytes > m->budget && zc__flush(m)) return -1;
    return 0;
}

/* The map's end: what is kept goes out.  0, or 65 on failure. */
static inline int zc_map_end(zc_mapper *m) {
    int failed = m->fold && m->entries ? zc__flush(m) : 0;
    free(m->entries);
    free(m->slots);
    m->entries = NULL;
    m->slots = NULL;
    failed = failed || zc__drain(m);
    free(m->buf);
    m->buf = NULL;
    return failed || fflush(m->out) ? 65 : 0;
}

#endif
