/* A small record parser with two bugs, as C libraries have. Calling code
 * like this without letting it take the program down is what loky is for:
 * see examples/ffi.rs. Built by the root package's build.rs.
 *
 * A record is "key=value" with a decimal value. parse_record stores the
 * value in the field named by the key and returns it.
 *
 * Bug 1: an unknown key has no field; the NULL pointer the lookup returns
 *        is written through (SIGSEGV).
 * Bug 2: a value that is not a number fails a check that calls abort()
 *        (SIGABRT).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int64_t temperature;
static int64_t pressure;
static int64_t humidity;

struct field {
    const char *name;
    int64_t *slot;
};

static struct field fields[] = {
    {"temperature", &temperature},
    {"pressure", &pressure},
    {"humidity", &humidity},
    {"", NULL}, /* the end of the table, and what an unknown key gets */
};

static int64_t *lookup(const char *key, size_t key_len) {
    struct field *f = fields;
    for (; f->slot != NULL; f++) {
        if (strlen(f->name) == key_len && memcmp(f->name, key, key_len) == 0) {
            break;
        }
    }
    return f->slot; /* NULL for an unknown key: the bug */
}

int64_t parse_record(const char *text, size_t len) {
    const char *eq = memchr(text, '=', len);
    const char *digits = eq ? eq + 1 : text + len;
    if (digits == text + len) {
        fprintf(stderr, "parse_record: no value in record\n");
        abort();
    }
    int64_t value = 0;
    for (const char *p = digits; p < text + len; p++) {
        if (*p < '0' || *p > '9') {
            fprintf(stderr, "parse_record: '%c' is not a digit\n", *p);
            abort();
        }
        value = value * 10 + (*p - '0');
    }
    /* volatile: the compiler must not see that the pointer may be NULL,
     * or it would put a trap of its own there; this is a real store to
     * address 0, as in a real bug. */
    int64_t *volatile slot = lookup(text, (size_t)(eq - text));
    *slot = value; /* SIGSEGV when the key is unknown */
    return value;
}
