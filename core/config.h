/*
 * core/config.h -- experiment config files: `[section]` / `key = value`
 * text checked against schema tables that fill the caller's C structs.
 *
 * A schema is a table of eq_config_key per section.  Each entry binds a key
 * to a field of the caller's struct (offsetof + a type checked at compile
 * time by the EQ_CONFIG_* macros below), with its default (as config text),
 * range or choices, and a one-line doc.  Parsing applies every default
 * first, then the file, then `--set section.key=value` overrides, then
 * checks that required keys were given.  All storage is inline in the
 * caller's struct (bounded char arrays and arrays + size_t counts), so a
 * parsed config owns no heap memory and can be copied with `=`.
 *
 * Syntax (doc/config.md is the user-facing reference):
 *   # comment            full-line comments start with # or ;
 *   [quant.wt]           section names: letters, digits, _ - .
 *   bits = 4             keys: letters, digits, _ -; whitespace around
 *   lr = 0.1             key and value is ignored
 *   path = "  x, y\n"    strings may be double-quoted (escapes \\ \" \n
 *                        \t \r \xHH); unquoted text is taken verbatim
 *   milestones = 30, 60  lists are comma-separated; string list items may
 *                        be quoted to contain commas
 * Lines may be up to EQ_CONFIG_MAX_LINE bytes; a longer line is an error.
 *
 * Errors: the first mistake stops parsing and is reported as
 *   FILE:LINE: <what> (expected <form>)
 * e.g. `exp.cfg:12: [optim] lr: "fast" is not a number (expected float in
 * [0, 10])`; overrides are named as `--set optim.lr=fast: ...`.  Codes:
 * EQ_ERR_PARSE for syntax (no '=', unterminated '[', bad quoting, overlong
 * line, NUL byte, malformed --set), EQ_ERR_INVALID for unknown sections or
 * keys (with a "did you mean" for near misses), bad values, duplicate keys
 * and missing required keys, EQ_ERR_NOTFOUND / EQ_ERR_IO / EQ_ERR_LIMIT for
 * a file that is missing, unreadable or larger than EQ_CONFIG_MAX_FILE,
 * EQ_ERR_NOMEM, and EQ_ERR_INTERNAL for an invalid schema (a programming
 * error that eq_config_check_schema() reports in tests).  After an error
 * the structs hold a mix of defaults and parsed values: do not use them.
 *
 * Thread safety: functions keep no global state; concurrent calls are safe
 * as long as they do not write the same structs.  Number parsing uses
 * strtod, so the process must use the "C" locale for LC_NUMERIC (the
 * default unless setlocale() changed it).
 */
#ifndef EQ_CONFIG_H
#define EQ_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

/* Longest accepted line, in bytes without the line ending. */
#define EQ_CONFIG_MAX_LINE 65536
/* Largest config file eq_config_load() reads. */
#define EQ_CONFIG_MAX_FILE (16u << 20)

typedef enum eq_config_type {
    EQ_CONFIG_BOOL,        /* bool; true/false, yes/no, on/off, 1/0 */
    EQ_CONFIG_INT,         /* int64_t, decimal */
    EQ_CONFIG_FLOAT,       /* double, finite */
    EQ_CONFIG_STRING,      /* char[size], NUL-terminated */
    EQ_CONFIG_ENUM,        /* int: index into choices */
    EQ_CONFIG_INT_LIST,    /* int64_t[max_count] + size_t count */
    EQ_CONFIG_FLOAT_LIST,  /* double[max_count] + size_t count */
    EQ_CONFIG_STRING_LIST, /* char[max_count][size] + size_t count */
    EQ_CONFIG_TYPE_COUNT
} eq_config_type;

/* One key of a section.  Write entries with the EQ_CONFIG_* macros. */
typedef struct eq_config_key {
    const char *name; /* key name (the struct field's name) */
    eq_config_type type;
    size_t offset;               /* offsetof(struct, field) */
    size_t size;                 /* string: sizeof field; string list: size of one item */
    size_t count_offset;         /* lists: offsetof(struct, count field), a size_t */
    size_t min_count, max_count; /* lists: bounds on the number of items */
    int64_t int_min, int_max;    /* int, int list: inclusive range of each value */
    double float_min, float_max; /* float, float list: inclusive range (may be +-INFINITY) */
    const char *const *choices;  /* enum: NULL-terminated names */
    const char *def;             /* default as config text; NULL: the key is required */
    const char *doc;             /* one line, shown in doc/config.md */
} eq_config_key;

/* A section: its name in the file, its keys, and where values go.  Several
 * sections may share one key table ([quant.wt] and [quant.fm]). */
typedef struct eq_config_section {
    const char *name; /* "optim", "quant.wt" */
    const char *doc;  /* one line (may be NULL) */
    const eq_config_key *keys;
    size_t nkeys;
    void *dst; /* caller's struct; NULL: validate and discard */
} eq_config_section;

#define EQ_CONFIG_REQUIRED ((const char *)0)

/* Compile-time checks used by the macros: field F of struct T has type TY,
 * and is (or is not) an array. */
#define EQ_CONFIG__ASSERT(c, m)                                                                              \
    (0 * sizeof(struct {                                                                                     \
         _Static_assert(c, m);                                                                               \
         char c_;                                                                                            \
     }))
#define EQ_CONFIG__IS(T, F, TY)                                                                              \
    EQ_CONFIG__ASSERT(_Generic(&((T *)0)->F, TY * : 1, default : 0), #F " must be " #TY)
#define EQ_CONFIG__ARRAY(T, F)                                                                               \
    EQ_CONFIG__ASSERT(!__builtin_types_compatible_p(__typeof__(((T *)0)->F), __typeof__(&((T *)0)->F[0])),   \
                      #F " must be an array")
#define EQ_CONFIG__COUNT(T, N)  (offsetof(T, N) + EQ_CONFIG__IS(T, N, size_t))
#define EQ_CONFIG__NITEMS(T, F) (sizeof(((T *)0)->F) / sizeof(((T *)0)->F[0]))

/* bool F; DEF e.g. "false". */
#define EQ_CONFIG_BOOL_KEY(T, F, DEF, DOC)                                                                   \
    {                                                                                                        \
        .name = #F, .type = EQ_CONFIG_BOOL, .offset = offsetof(T, F) + EQ_CONFIG__IS(T, F, bool),            \
        .def = (DEF), .doc = (DOC)                                                                           \
    }
/* int64_t F in [LO, HI] (INT64_MIN/INT64_MAX for no bound). */
#define EQ_CONFIG_INT_KEY(T, F, DEF, LO, HI, DOC)                                                            \
    {                                                                                                        \
        .name = #F, .type = EQ_CONFIG_INT, .offset = offsetof(T, F) + EQ_CONFIG__IS(T, F, int64_t),          \
        .int_min = (LO), .int_max = (HI), .def = (DEF), .doc = (DOC)                                         \
    }
/* double F in [LO, HI] (-INFINITY/INFINITY for no bound). */
#define EQ_CONFIG_FLOAT_KEY(T, F, DEF, LO, HI, DOC)                                                          \
    {                                                                                                        \
        .name = #F, .type = EQ_CONFIG_FLOAT, .offset = offsetof(T, F) + EQ_CONFIG__IS(T, F, double),         \
        .float_min = (LO), .float_max = (HI), .def = (DEF), .doc = (DOC)                                     \
    }
/* char F[N]: strings of at most N-1 bytes. */
#define EQ_CONFIG_STRING_KEY(T, F, DEF, DOC)                                                                 \
    {                                                                                                        \
        .name = #F, .type = EQ_CONFIG_STRING,                                                                \
        .offset = offsetof(T, F) + EQ_CONFIG__IS(T, F[0], char) + EQ_CONFIG__ARRAY(T, F),                    \
        .size = sizeof(((T *)0)->F), .def = (DEF), .doc = (DOC)                                              \
    }
/* int F: index into CHOICES, a NULL-terminated array of names. */
#define EQ_CONFIG_ENUM_KEY(T, F, DEF, CHOICES, DOC)                                                          \
    {                                                                                                        \
        .name = #F, .type = EQ_CONFIG_ENUM, .offset = offsetof(T, F) + EQ_CONFIG__IS(T, F, int),             \
        .choices = (CHOICES), .def = (DEF), .doc = (DOC)                                                     \
    }
/* int64_t F[N] + size_t NF: MINN..N items, each in [LO, HI]. */
#define EQ_CONFIG_INT_LIST_KEY(T, F, NF, DEF, MINN, LO, HI, DOC)                                             \
    {                                                                                                        \
        .name = #F, .type = EQ_CONFIG_INT_LIST,                                                              \
        .offset = offsetof(T, F) + EQ_CONFIG__IS(T, F[0], int64_t) + EQ_CONFIG__ARRAY(T, F),                 \
        .count_offset = EQ_CONFIG__COUNT(T, NF), .min_count = (MINN), .max_count = EQ_CONFIG__NITEMS(T, F),  \
        .int_min = (LO), .int_max = (HI), .def = (DEF), .doc = (DOC)                                         \
    }
/* double F[N] + size_t NF: MINN..N items, each in [LO, HI]. */
#define EQ_CONFIG_FLOAT_LIST_KEY(T, F, NF, DEF, MINN, LO, HI, DOC)                                           \
    {                                                                                                        \
        .name = #F, .type = EQ_CONFIG_FLOAT_LIST,                                                            \
        .offset = offsetof(T, F) + EQ_CONFIG__IS(T, F[0], double) + EQ_CONFIG__ARRAY(T, F),                  \
        .count_offset = EQ_CONFIG__COUNT(T, NF), .min_count = (MINN), .max_count = EQ_CONFIG__NITEMS(T, F),  \
        .float_min = (LO), .float_max = (HI), .def = (DEF), .doc = (DOC)                                     \
    }
/* char F[N][M] + size_t NF: MINN..N items of at most M-1 bytes. */
#define EQ_CONFIG_STRING_LIST_KEY(T, F, NF, DEF, MINN, DOC)                                                  \
    {                                                                                                        \
        .name = #F, .type = EQ_CONFIG_STRING_LIST,                                                           \
        .offset = offsetof(T, F) + EQ_CONFIG__IS(T, F[0][0], char) + EQ_CONFIG__ARRAY(T, F) +                \
                  EQ_CONFIG__ARRAY(T, F[0]),                                                                 \
        .size = sizeof(((T *)0)->F[0]), .count_offset = EQ_CONFIG__COUNT(T, NF), .min_count = (MINN),        \
        .max_count = EQ_CONFIG__NITEMS(T, F), .def = (DEF), .doc = (DOC)                                     \
    }

#define EQ_CONFIG_NKEYS(keys) (sizeof(keys) / sizeof((keys)[0]))

/* Check a schema: names well-formed and unique, ranges and list bounds
 * consistent, enum choices present, every default valid for its key.
 * Returns EQ_OK or EQ_ERR_INTERNAL naming the section and key.  The parse
 * functions run it first; tests should call it on every program's schema. */
eq_status eq_config_check_schema(const eq_config_section *secs, size_t nsecs, eq_err *err);

/* Write every key's default into the sections' dst structs (sections with
 * dst NULL are skipped).  Required keys are zeroed.  Errors as
 * eq_config_check_schema. */
eq_status eq_config_defaults(const eq_config_section *secs, size_t nsecs, eq_err *err);

/* Parse `len` bytes of `text` (need not be NUL-terminated; `name` is used as
 * FILE in messages): apply defaults, the text, then the `nsets` overrides in
 * `sets` ("section.key=value", later ones win), then check required keys.
 * `sets` may be NULL when nsets is 0.  Errors as described at the top. */
eq_status eq_config_parse_buffer(const eq_config_section *secs, size_t nsecs, const char *name,
                                 const char *text, size_t len, const char *const *sets, size_t nsets,
                                 eq_err *err);

/* As eq_config_parse_buffer, reading the file at `path` (named in messages
 * as given). */
eq_status eq_config_load(const eq_config_section *secs, size_t nsecs, const char *path,
                         const char *const *sets, size_t nsets, eq_err *err);

/* Apply one "section.key=value" override to the dst structs (no defaults, no
 * required check): for a program that changes a setting at run time.
 * Errors name `--set ARG` as the source. */
eq_status eq_config_set(const eq_config_section *secs, size_t nsecs, const char *arg, eq_err *err);

/* Write the effective config held in the dst structs as config text that
 * eq_config_parse_buffer() reads back to the same values: every section
 * with a dst, every key, in schema order.  On success *out is a
 * NUL-terminated malloc'd string the caller owns and frees; *len (may be
 * NULL) is its length.  Fails with EQ_ERR_INVALID when a struct holds a
 * value its key cannot express (out of range, bad enum index, count too
 * large, unterminated string), EQ_ERR_NOMEM. */
eq_status eq_config_dump(const eq_config_section *secs, size_t nsecs, char **out, size_t *len, eq_err *err);

/* Write markdown documentation for the sections (dst is not used): per
 * section a "### [name]" heading, its doc line, and a table with columns
 * key, type, default, range / choices, doc.  *out as for eq_config_dump. */
eq_status eq_config_doc(const eq_config_section *secs, size_t nsecs, char **out, size_t *len, eq_err *err);

/* Name of a type as used in docs and messages ("int list"). */
const char *eq_config_type_str(eq_config_type t);

#endif
