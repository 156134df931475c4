/*
 * algorithms: the MapReduce paper's examples as one WASI guest, on zerocompute.h.
 *
 *   algorithms grep-map PATTERN   each line that contains PATTERN: (line, 1)
 *   algorithms url-map            web-log lines "METHOD URL STATUS": (URL, 1)
 *   algorithms links-map          lines "SOURCE TARGET...": (TARGET, "SOURCE") for each
 *   algorithms index-map          each word of the document: (word, "<document>")
 *   algorithms sum                records with integer values: one (key, total) per key
 *   algorithms join               records with JSON string values: one (key, "a,b,...")
 *                                 per key, the distinct values sorted
 *
 * Values are written as JSON, as the Python guest SDK writes them, so that C
 * and Python guests may be mixed in one job.  The document of index-map is
 * the last path component of ZEROCOMPUTE_INPUT.
 */
#include <ctype.h>
#include "zerocompute.h"

static int emit_str(const char *key, size_t klen, const char *value, size_t vlen) {
    /* A JSON string of plain text (what these examples emit needs no escaping). */
    char buf[4096];
    if (vlen + 2 > sizeof buf) return -1;
    buf[0] = '"';
    memcpy(buf + 1, value, vlen);
    buf[vlen + 1] = '"';
    return zc_emit(stdout, key, (uint32_t)klen, buf, (uint32_t)(vlen + 2));
}

static int lines(int (*each)(char *line, size_t len, void *arg), void *arg) {
    char line[65536];
    while (fgets(line, sizeof line, stdin)) {
        size_t len = strcspn(line, "\n");
        line[len] = '\0';
        if (len && each(line, len, arg)) return 65;
    }
    return 0;
}

static int grep_line(char *line, size_t len, void *pattern) {
    return strstr(line, pattern) ? zc_emit(stdout, line, (uint32_t)len, "1", 1) : 0;
}

static int url_line(char *line, size_t len, void *arg) {
    (void)len; (void)arg;
    char *url = strchr(line, ' ');
    if (!url) return 0;
    url++;
    size_t n = strcspn(url, " ");
    return n ? zc_emit(stdout, url, (uint32_t)n, "1", 1) : 0;
}

static int links_line(char *line, size_t len, void *arg) {
    (void)len; (void)arg;
    char *source = strtok(line, " ");
    char *target;
    while (source && (target = strtok(NULL, " ")))
        if (emit_str(target, strlen(target), source, strlen(source))) return -1;
    return 0;
}

static int index_line(char *line, size_t len, void *document) {
    for (size_t i = 0; i < len;) {
        while (i < len && !isalnum((unsigned char)line[i])) i++;
        size_t start = i;
        while (i < len && isalnum((unsigned char)line[i])) {
            line[i] = (char)tolower((unsigned char)line[i]);
            i++;
        }
        if (i > start && emit_str(line + start, i - start, document, strlen(document)))
            return -1;
    }
    return 0;
}

static int by_string(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reduce every run of equal keys: sum integers, or join distinct strings. */
static int reduce(int join) {
    zc_record r = {0};
    char *key = NULL;
    size_t key_len = 0, count = 0, cap = 0;
    char **values = NULL;
    long long total = 0;
    int got;
    for (;;) {
        got = zc_next(stdin, &r);
        int same = got == 1 && key && r.key_len == key_len && memcmp(r.key, key, key_len) == 0;
        if (key && !same) {
            char out[65536];
            size_t n = 0;
            if (join) {
                qsort(values, count, sizeof *values, by_string);
                out[n++] = '"';
                for (size_t i = 0; i < count; i++) {
                    if (i && strcmp(values[i], values[i - 1]) == 0) continue;
                    size_t l = strlen(values[i]);
                    if (n + l + 3 > sizeof out) return 67;
                    if (n > 1) out[n++] = ',';
                    memcpy(out + n, values[i], l);
                    n += l;
                }
                out[n++] = '"';
            } else {
                n = (size_t)snprintf(out, sizeof out, "%lld", total);
            }
            if (zc_emit(stdout, key, (uint32_t)key_len, out, (uint32_t)n)) return 65;
            for (size_t i = 0; i < count; i++) free(values[i]);
            count = 0;
            total = 0;
            free(key);
            key = NULL;
        }
        if (got != 1) break;
        if (!key) {
            key = malloc(r.key_len + 1);
            memcpy(key, r.key, r.key_len + 1);
            key_len = r.key_len;
        }
        if (join) {
            if (count == cap) {
                cap = cap ? 2 * cap : 16;
                values = realloc(values, cap * sizeof *values);
            }
            const char *v = r.value;
            size_t l = r.value_len;
            if (l >= 2 && v[0] == '"' && v[l - 1] == '"') { v++; l -= 2; }
            values[count] = malloc(l + 1);
            memcpy(values[count], v, l);
            values[count++][l] = '\0';
        } else {
            total += atoll(r.value);
        }
    }
    zc_free(&r);
    free(values);
    return got < 0 ? 66 : 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "grep-map") == 0 && argc > 2) return lines(grep_line, argv[2]);
    if (strcmp(mode, "url-map") == 0) return lines(url_line, NULL);
    if (strcmp(mode, "links-map") == 0) return lines(links_line, NULL);
    if (strcmp(mode, "index-map") == 0) {
        const char *input = getenv("ZEROCOMPUTE_INPUT");
        const char *slash = input ? strrchr(input, '/') : NULL;
        return lines(index_line, (void *)(slash ? slash + 1 : "?"));
    }
    if (strcmp(mode, "sum") == 0) return reduce(0);
    if (strcmp(mode, "join") == 0) return reduce(1);
    fprintf(stderr, "usage: algorithms grep-map PATTERN | url-map | links-map | index-map | "
                    "sum | join\n");
    return 64;
}
