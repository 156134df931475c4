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

/* 1 when the job's records are framed, 0 for text. */
static int zc_framed(void) {
    const char *form = getenv("ZEROCOMPUTE_RECORDS");
    return form != NULL && strcmp(form, "framed") == 0;
}

static int zc__put_len(FILE *out, uint32_t n) {
    unsigned char b[4] = {n >> 24, n >> 16, n >> 8, n};
    return fwrite(b, 1, 4, out) == 4 ? 0 : -1;
}

/* Write one record; -1 on a write error or a text key with a tab or newline. */
static int zc_emit(FILE *out, const void *key, uint32_t key_len, const void *value,
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

static int zc__reserve(char **buf, size_t *cap, size_t need) {
    if (need + 1 <= *cap) return 0;
    size_t size = *cap ? *cap : 64;
    while (size < need + 1) size *= 2;
    char *grown = realloc(*buf, size);
    if (!grown) return -1;
    *buf = grown;
    *cap = size;
    return 0;
}

static int zc__get_len(FILE *in, uint32_t *n, int first) {
    unsigned char b[4];
    size_t got = fread(b, 1, 4, in);
    if (got == 0 && first) return 0;
    if (got != 4) return -1;
    *n = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    return 1;
}

/* Read the next record: 1 when one was read, 0 at the end, -1 on malformed input.
 * Key and value are NUL-terminated for convenience (they may hold NULs too). */
static int zc_next(FILE *in, zc_record *r) {
    if (zc_framed()) {
        int got = zc__get_len(in, &r->key_len, 1);
        if (got <= 0) return got;
        if (zc__reserve(&r->key, &r->key_cap, r->key_len) ||
            fread(r->key, 1, r->key_len, in) != r->key_len ||
            zc__get_len(in, &r->value_len, 0) != 1 ||
            zc__reserve(&r->value, &r->value_cap, r->value_len) ||
            fread(r->value, 1, r->value_len, in) != r->value_len)
            return -1;
        r->key[r->key_len] = r->value[r->value_len] = '\0';
        return 1;
    }
    size_t len = 0;
    int c;
    while ((c = fgetc(in)) != EOF && c != '\n') {
        if (zc__reserve(&r->key, &r->key_cap, len + 1)) return -1;
        r->key[len++] = (char)c;
    }
    if (c == EOF && len == 0) return 0;
    char *tab = memchr(r->key, '\t', len);
    if (!tab) return -1;
    uint32_t key_len = (uint32_t)(tab - r->key), value_len = (uint32_t)(len - key_len - 1);
    if (zc__reserve(&r->value, &r->value_cap, value_len)) return -1;
    memcpy(r->value, tab + 1, value_len);
    r->key_len = key_len;
    r->value_len = value_len;
    r->key[key_len] = r->value[value_len] = '\0';
    return 1;
}

static void zc_free(zc_record *r) {
    free(r->key);
    free(r->value);
    memset(r, 0, sizeof *r);
}

#endif
