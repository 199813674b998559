/* tests/check_config.c -- config files: syntax, schema, errors, --set, dump, doc.
 *
 * The schema below is also the example whose generated table doc/config.md
 * carries (test_doc_matches_markdown keeps the two in sync). */
#include "core/config.h"
#include "tests/testutil.h"

#include <math.h>

/* ------------------------------------------------------------ schema */

typedef struct data_cfg {
    char path[64];
    int64_t batch;
    int64_t seed;
    bool shuffle;
    char splits[3][8];
    size_t nsplits;
} data_cfg;

typedef struct optim_cfg {
    int method;
    double lr;
    double momentum;
    double weight_decay;
    int64_t milestones[4];
    size_t nmilestones;
    double betas[2];
    size_t nbetas;
} optim_cfg;

typedef struct quant_cfg {
    int method;
    int64_t bits;
    bool per_channel;
} quant_cfg;

static const char *const s_optims[] = {"sgd", "adam", "adamw", NULL};
static const char *const s_quants[] = {"none", "lsq", "dorefa", "lqnet", NULL};

static const eq_config_key s_data_keys[] = {
    EQ_CONFIG_STRING_KEY(data_cfg, path, EQ_CONFIG_REQUIRED, "dataset directory"),
    EQ_CONFIG_INT_KEY(data_cfg, batch, "32", 1, 4096, "global batch size"),
    EQ_CONFIG_INT_KEY(data_cfg, seed, "0", INT64_MIN, INT64_MAX, "sampler seed"),
    EQ_CONFIG_BOOL_KEY(data_cfg, shuffle, "true", "shuffle the train split every epoch"),
    EQ_CONFIG_STRING_LIST_KEY(data_cfg, splits, nsplits, "train, val", 1, "splits to read"),
};

static const eq_config_key s_optim_keys[] = {
    EQ_CONFIG_ENUM_KEY(optim_cfg, method, "sgd", s_optims, "optimiser"),
    EQ_CONFIG_FLOAT_KEY(optim_cfg, lr, "0.1", 0, 10, "base learning rate"),
    EQ_CONFIG_FLOAT_KEY(optim_cfg, momentum, "0.9", 0, 1, "SGD momentum"),
    EQ_CONFIG_FLOAT_KEY(optim_cfg, weight_decay, "1e-4", 0, INFINITY, "L2 penalty | decoupled for adamw"),
    EQ_CONFIG_INT_LIST_KEY(optim_cfg, milestones, nmilestones, "30, 60", 0, 0, 1000,
                           "epochs where lr drops 10x"),
    EQ_CONFIG_FLOAT_LIST_KEY(optim_cfg, betas, nbetas, "0.9, 0.999", 2, 0, 1, "Adam betas"),
};

static const eq_config_key s_quant_keys[] = {
    EQ_CONFIG_ENUM_KEY(quant_cfg, method, "none", s_quants, "quantizer"),
    EQ_CONFIG_INT_KEY(quant_cfg, bits, "4", 1, 8, "bit width"),
    EQ_CONFIG_BOOL_KEY(quant_cfg, per_channel, "false", "one scale per output channel"),
};

typedef struct all_cfg {
    data_cfg data;
    optim_cfg optim;
    quant_cfg wt, fm;
    eq_config_section secs[4];
} all_cfg;

static void s_bind(all_cfg *c)
{
    memset(c, 0xa5, sizeof *c); /* defaults must overwrite everything */
    eq_config_section secs[4] = {
        {"data", "Where samples come from.", s_data_keys, EQ_CONFIG_NKEYS(s_data_keys), &c->data},
        {"optim", "Optimiser.", s_optim_keys, EQ_CONFIG_NKEYS(s_optim_keys), &c->optim},
        {"quant.wt", "Weight quantizer.", s_quant_keys, EQ_CONFIG_NKEYS(s_quant_keys), &c->wt},
        {"quant.fm", "Activation quantizer.", s_quant_keys, EQ_CONFIG_NKEYS(s_quant_keys), &c->fm},
    };
    memcpy(c->secs, secs, sizeof secs);
}

static eq_status s_parse(all_cfg *c, const char *text, const char *const *sets, size_t nsets, eq_err *err)
{
    s_bind(c);
    eq_err_clear(err);
    return eq_config_parse_buffer(c->secs, 4, "exp.cfg", text, strlen(text), sets, nsets, err);
}

static char *s_write(const char *dir, const char *name, const char *text, size_t len)
{
    char *path = malloc(4200);
    ck_assert_ptr_nonnull(path);
    snprintf(path, 4200, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(text, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
    return path;
}

/* ----------------------------------------------------------- defaults */

START_TEST(test_schema_valid)
{
    all_cfg c;
    eq_err err;
    s_bind(&c);
    ck_assert_int_eq(eq_config_check_schema(c.secs, 4, &err), EQ_OK);
}
END_TEST

START_TEST(test_defaults_applied)
{
    all_cfg c;
    eq_err err;
    const char *sets[] = {"data.path=/d"};
    ck_assert_msg(s_parse(&c, "", sets, 1, &err) == EQ_OK, "%s", err.msg);
    ck_assert_str_eq(c.data.path, "/d");
    ck_assert_int_eq(c.data.batch, 32);
    ck_assert_int_eq(c.data.seed, 0);
    ck_assert(c.data.shuffle);
    ck_assert_uint_eq(c.data.nsplits, 2);
    ck_assert_str_eq(c.data.splits[0], "train");
    ck_assert_str_eq(c.data.splits[1], "val");
    ck_assert_str_eq(c.data.splits[2], ""); /* unused items are zeroed */
    ck_assert_int_eq(c.optim.method, 0);
    ck_assert(c.optim.lr == 0.1 && c.optim.momentum == 0.9 && c.optim.weight_decay == 1e-4);
    ck_assert_uint_eq(c.optim.nmilestones, 2);
    ck_assert_int_eq(c.optim.milestones[0], 30);
    ck_assert_int_eq(c.optim.milestones[1], 60);
    ck_assert_int_eq(c.optim.milestones[2], 0);
    ck_assert_uint_eq(c.optim.nbetas, 2);
    ck_assert(c.optim.betas[0] == 0.9 && c.optim.betas[1] == 0.999);
    ck_assert_int_eq(c.wt.method, 0);
    ck_assert_int_eq(c.wt.bits, 4);
    ck_assert(!c.wt.per_channel);
    ck_assert_int_eq(c.fm.bits, 4);

    /* eq_config_defaults alone: required keys zeroed */
    s_bind(&c);
    ck_assert_int_eq(eq_config_defaults(c.secs, 4, &err), EQ_OK);
    ck_assert_str_eq(c.data.path, "");
    ck_assert_int_eq(c.data.batch, 32);
}
END_TEST

/* ------------------------------------------------------------ parsing */

START_TEST(test_file_values_comments_whitespace)
{
    char *dir = eq_test_scratch("config");
    static const char text[] = "\xEF\xBB\xBF# experiment\r\n"
                               "   ; another comment\n"
                               "\n"
                               "[ data ]\n"
                               "\tpath\t=   /srv/fashion mnist#1 ; not a comment   \r\n"
                               "batch=256\n"
                               "seed = -9223372036854775808\n"
                               "shuffle = OFF\n"
                               "splits = \"a, b\" ,  c  ,\"\"\n"
                               "[optim]\n"
                               "method = adamw\n"
                               "lr = 2.5e-3\n"
                               "milestones =\n"
                               "betas = 0, 1\n"
                               "[quant.wt]\n"
                               "bits = 2\n"
                               "per_channel = yes\n"
                               "[quant.fm]\n"
                               "method = lsq\n"
                               "[optim]\n"
                               "momentum = +0.5"; /* no final newline; section reopened */
    char *path = s_write(dir, "exp.cfg", text, sizeof text - 1);
    all_cfg c;
    eq_err err;
    s_bind(&c);
    ck_assert_msg(eq_config_load(c.secs, 4, path, NULL, 0, &err) == EQ_OK, "%s", err.msg);
    ck_assert_str_eq(c.data.path, "/srv/fashion mnist#1 ; not a comment");
    ck_assert_int_eq(c.data.batch, 256);
    ck_assert_int_eq(c.data.seed, INT64_MIN);
    ck_assert(!c.data.shuffle);
    ck_assert_uint_eq(c.data.nsplits, 3);
    ck_assert_str_eq(c.data.splits[0], "a, b");
    ck_assert_str_eq(c.data.splits[1], "c");
    ck_assert_str_eq(c.data.splits[2], "");
    ck_assert_int_eq(c.optim.method, 2);
    ck_assert(c.optim.lr == 2.5e-3);
    ck_assert(c.optim.momentum == 0.5);
    ck_assert_uint_eq(c.optim.nmilestones, 0);
    ck_assert_int_eq(c.optim.milestones[0], 0); /* the default's items do not linger */
    ck_assert(c.optim.betas[0] == 0 && c.optim.betas[1] == 1);
    ck_assert_int_eq(c.wt.bits, 2);
    ck_assert(c.wt.per_channel);
    ck_assert_int_eq(c.wt.method, 0);
    ck_assert_int_eq(c.fm.method, 1);
    ck_assert_int_eq(c.fm.bits, 4);
    free(path);
    eq_test_scratch_rm(dir);
}
END_TEST

START_TEST(test_quoted_strings)
{
    all_cfg c;
    eq_err err;
    ck_assert_msg(s_parse(&c, "[data]\npath = \"  a\\\"b\\\\c\\n\\t\\r\\x41 \"  \n", NULL, 0, &err) == EQ_OK,
                  "%s", err.msg);
    ck_assert_str_eq(c.data.path, "  a\"b\\c\n\t\rA ");
    ck_assert_int_eq(s_parse(&c, "[data]\npath =\n", NULL, 0, &err), EQ_OK);
    ck_assert_str_eq(c.data.path, "");
}
END_TEST

START_TEST(test_overrides_win)
{
    all_cfg c;
    eq_err err;
    const char *text = "[data]\npath = /a\n[optim]\nlr = 0.5\n";
    const char *sets[] = {"optim.lr=0.25", " quant.wt.bits = 3 ", "optim.lr=0.125", "data.splits=x,y,z"};
    ck_assert_msg(s_parse(&c, text, sets, 4, &err) == EQ_OK, "%s", err.msg);
    ck_assert(c.optim.lr == 0.125); /* the later --set wins */
    ck_assert_int_eq(c.wt.bits, 3);
    ck_assert_int_eq(c.fm.bits, 4); /* sections sharing keys stay separate */
    ck_assert_uint_eq(c.data.nsplits, 3);
    ck_assert_str_eq(c.data.splits[2], "z");

    /* a required key may come from --set alone */
    const char *req[] = {"data.path=/from/set"};
    ck_assert_msg(s_parse(&c, "[optim]\n", req, 1, &err) == EQ_OK, "%s", err.msg);
    ck_assert_str_eq(c.data.path, "/from/set");

    /* eq_config_set on already-filled structs */
    ck_assert_int_eq(eq_config_set(c.secs, 4, "quant.fm.method=dorefa", &err), EQ_OK);
    ck_assert_int_eq(c.fm.method, 2);
    ck_assert_int_eq(eq_config_set(c.secs, 4, "quant.fm.method=x", &err), EQ_ERR_INVALID);
    ck_assert_str_eq(err.msg, "--set quant.fm.method=x: [quant.fm] method: \"x\" is not a choice "
                              "(expected one of: none, lsq, dorefa, lqnet)");
}
END_TEST

START_TEST(test_discarded_section)
{
    /* A section with dst NULL is checked but its values go nowhere. */
    quant_cfg wt;
    eq_config_section secs[2] = {
        {"quant.wt", NULL, s_quant_keys, EQ_CONFIG_NKEYS(s_quant_keys), &wt},
        {"quant.fm", NULL, s_quant_keys, EQ_CONFIG_NKEYS(s_quant_keys), NULL},
    };
    const char *ok = "[quant.fm]\nbits = 8\n[quant.wt]\nbits = 5\n";
    eq_err err;
    ck_assert_int_eq(eq_config_parse_buffer(secs, 2, "q.cfg", ok, strlen(ok), NULL, 0, &err), EQ_OK);
    ck_assert_int_eq(wt.bits, 5);
    char *out;
    ck_assert_int_eq(eq_config_dump(secs, 2, &out, NULL, &err), EQ_OK);
    ck_assert_str_eq(out, "[quant.wt]\nmethod = none\nbits = 5\nper_channel = false\n");
    free(out);
    const char *bad = "[quant.fm]\nbits = 9\n";
    ck_assert_int_eq(eq_config_parse_buffer(secs, 2, "q.cfg", bad, strlen(bad), NULL, 0, &err),
                     EQ_ERR_INVALID);
    ck_assert_str_eq(err.msg, "q.cfg:2: [quant.fm] bits: 9 is out of range (expected int in [1, 8])");
}
END_TEST

/* ------------------------------------------------------------- errors */

typedef struct err_case {
    const char *text;
    const char *set; /* NULL: none */
    eq_status code;
    const char *msg;
} err_case;

#define D "[data]\npath = /d\n" /* two lines that satisfy the required key */

static const err_case s_errs[] = {
    /* unknown section, with and without a suggestion */
    {D "[optm]\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:3: unknown section [optm], did you mean [optim]? "
     "(expected one of: [data], [optim], [quant.wt], [quant.fm])"},
    {D "[quant.w]\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:3: unknown section [quant.w], did you mean [quant.wt]? "
     "(expected one of: [data], [optim], [quant.wt], [quant.fm])"},
    {"[model]\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:1: unknown section [model] (expected one of: [data], [optim], [quant.wt], [quant.fm])"},
    /* unknown key */
    {D "[optim]\nlrr = 1\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [optim] unknown key \"lrr\", did you mean \"lr\"? "
     "(expected one of: method, lr, momentum, weight_decay, milestones, betas)"},
    {D "[optim]\nMomentum = 1\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [optim] unknown key \"Momentum\", did you mean \"momentum\"? "
     "(expected one of: method, lr, momentum, weight_decay, milestones, betas)"},
    {D "[quant.wt]\nwidth = 1\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [quant.wt] unknown key \"width\" (expected one of: method, bits, per_channel)"},
    /* bad int, bad float: the example from the issue, on line 12 */
    {D "[data]\nbatch = 12x\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [data] batch: \"12x\" is not an integer (expected int in [1, 4096])"},
    {D "[data]\nbatch = 1.5\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [data] batch: \"1.5\" is not an integer (expected int in [1, 4096])"},
    {D "[data]\nseed = 9223372036854775808\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [data] seed: 9223372036854775808 is out of range (expected int)"},
    {D "\n\n\n\n\n# lines\n# to\n# twelve\n[optim]\nlr = fast\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:12: [optim] lr: \"fast\" is not a number (expected float in [0, 10])"},
    {D "[optim]\nlr = 0.1.2\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [optim] lr: \"0.1.2\" is not a number (expected float in [0, 10])"},
    {D "[optim]\nlr = nan\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [optim] lr: \"nan\" is not a number (expected float in [0, 10])"},
    {D "[optim]\nlr = 0x1p3\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [optim] lr: \"0x1p3\" is not a number (expected float in [0, 10])"},
    {D "[optim]\nweight_decay = 1e999\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [optim] weight_decay: \"1e999\" is too large (expected float >= 0)"},
    {D "[optim]\nlr =\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [optim] lr: \"\" is not a number (expected float in [0, 10])"},
    /* out of range */
    {D "[data]\nbatch = 0\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [data] batch: 0 is out of range (expected int in [1, 4096])"},
    {D "[optim]\nlr = 10.5\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [optim] lr: 10.5 is out of range (expected float in [0, 10])"},
    {D "[optim]\nweight_decay = -1e-9\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [optim] weight_decay: -1e-9 is out of range (expected float >= 0)"},
    /* bad enum, bad bool */
    {D "[optim]\nmethod = sgdd\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [optim] method: \"sgdd\" is not a choice, did you mean \"sgd\"? "
     "(expected one of: sgd, adam, adamw)"},
    {D "[optim]\nmethod = rmsprop\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [optim] method: \"rmsprop\" is not a choice (expected one of: sgd, adam, adamw)"},
    {D "[data]\nshuffle = maybe\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [data] shuffle: \"maybe\" is not a bool (expected true/false, yes/no, on/off or 1/0)"},
    /* lists */
    {D "[optim]\nmilestones = 1, 2, 3, 4, 5\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [optim] milestones: more than 4 items "
     "(expected comma-separated list of at most 4 items, each an int in [0, 1000])"},
    {D "[optim]\nmilestones = 1, x\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [optim] milestones: item 2: \"x\" is not an integer "
     "(expected comma-separated list of at most 4 items, each an int in [0, 1000])"},
    {D "[optim]\nmilestones = 1,,3\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [optim] milestones: item 2: empty item "
     "(expected comma-separated list of at most 4 items, each an int in [0, 1000])"},
    {D "[optim]\nmilestones = 1, 2000\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [optim] milestones: item 2: 2000 is out of range "
     "(expected comma-separated list of at most 4 items, each an int in [0, 1000])"},
    {D "[optim]\nbetas = 0.9\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [optim] betas: only 1 item "
     "(expected comma-separated list of 2 items, each a float in [0, 1])"},
    {D "[data]\nsplits =\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [data] splits: only 0 items "
     "(expected comma-separated list of 1 to 3 items, each of at most 7 bytes)"},
    {D "[data]\nsplits = train, validation\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:4: [data] splits: item 2: 10 bytes long "
     "(expected comma-separated list of 1 to 3 items, each of at most 7 bytes)"},
    {D "[data]\nsplits = \"a\" b\n", NULL, EQ_ERR_PARSE,
     "exp.cfg:4: [data] splits: item 1: text after the closing quote "
     "(expected comma-separated list of 1 to 3 items, each of at most 7 bytes)"},
    /* strings */
    {"[data]\npath = 0123456789012345678901234567890123456789012345678901234567890123\n", NULL,
     EQ_ERR_INVALID, "exp.cfg:2: [data] path: value is 64 bytes long (expected string of at most 63 bytes)"},
    {"[data]\npath = \"abc\n", NULL, EQ_ERR_PARSE,
     "exp.cfg:2: [data] path: unterminated quoted string (expected string of at most 63 bytes)"},
    {"[data]\npath = \"a\\qb\"\n", NULL, EQ_ERR_PARSE,
     "exp.cfg:2: [data] path: bad escape \\q in quoted string, want \\\\ \\\" \\n \\t \\r or \\xHH "
     "(expected string of at most 63 bytes)"},
    {"[data]\npath = \"a\\x4\"\n", NULL, EQ_ERR_PARSE,
     "exp.cfg:2: [data] path: bad escape \\x in quoted string, want two hex digits "
     "(expected string of at most 63 bytes)"},
    {"[data]\npath = \"a\\x00\"\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:2: [data] path: \\x00 in quoted string: strings cannot hold NUL "
     "(expected string of at most 63 bytes)"},
    {"[data]\npath = \"a\" b\n", NULL, EQ_ERR_PARSE,
     "exp.cfg:2: [data] path: text after the closing quote (expected string of at most 63 bytes)"},
    /* duplicate key (also across a reopened section) */
    {D "[optim]\nlr = 1\nlr = 2\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:5: [optim] lr: duplicate key, first set on line 4 (expected each key once per section)"},
    {D "[optim]\nlr = 1\n[data]\n[optim]\nlr = 2\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:7: [optim] lr: duplicate key, first set on line 4 (expected each key once per section)"},
    /* missing required key, with and without its section in the file */
    {"[optim]\n", NULL, EQ_ERR_INVALID,
     "exp.cfg: [data] path: required key is missing (expected string of at most 63 bytes)"},
    {"\n[data]\nbatch = 2\n", NULL, EQ_ERR_INVALID,
     "exp.cfg:2: [data] path: required key is missing (expected string of at most 63 bytes)"},
    /* syntax */
    {D "[optim]\nlr 0.1\n", NULL, EQ_ERR_PARSE,
     "exp.cfg:4: syntax error: \"lr 0.1\" (expected key = value, [section] or a # comment)"},
    {D "[optim\n", NULL, EQ_ERR_PARSE,
     "exp.cfg:3: syntax error: unterminated section header \"[optim\" (expected [name])"},
    {D "[optim] # no inline comments\n", NULL, EQ_ERR_PARSE,
     "exp.cfg:3: syntax error: text after ] in \"[optim] # no inline comments\" "
     "(expected [name] alone on its line)"},
    {D "[]\n", NULL, EQ_ERR_PARSE,
     "exp.cfg:3: syntax error: bad section name \"\" (expected letters, digits, '_', '-' and '.')"},
    {D "[optim]\nl r = 1\n", NULL, EQ_ERR_PARSE,
     "exp.cfg:4: syntax error: bad key \"l r\" (expected letters, digits, '_' and '-' before '=')"},
    {D "[optim]\n= 1\n", NULL, EQ_ERR_PARSE,
     "exp.cfg:4: syntax error: bad key \"\" (expected letters, digits, '_' and '-' before '=')"},
    {"lr = 1\n", NULL, EQ_ERR_PARSE,
     "exp.cfg:1: key \"lr\" is outside any section (expected a [section] line first)"},
    /* --set */
    {D, "optim.lr=fast", EQ_ERR_INVALID,
     "--set optim.lr=fast: [optim] lr: \"fast\" is not a number (expected float in [0, 10])"},
    {D, "optim.lrr=1", EQ_ERR_INVALID,
     "--set optim.lrr=1: [optim] unknown key \"lrr\", did you mean \"lr\"? "
     "(expected one of: method, lr, momentum, weight_decay, milestones, betas)"},
    {D, "optm.lr=1", EQ_ERR_INVALID,
     "--set optm.lr=1: unknown section [optm], did you mean [optim]? "
     "(expected one of: [data], [optim], [quant.wt], [quant.fm])"},
    {D, "quant.bits=1", EQ_ERR_INVALID,
     "--set quant.bits=1: unknown section [quant] "
     "(expected one of: [data], [optim], [quant.wt], [quant.fm])"},
    {D, "optim.lr", EQ_ERR_PARSE, "--set optim.lr: syntax error (expected --set section.key=value)"},
    {D, "lr=1", EQ_ERR_PARSE, "--set lr=1: syntax error (expected --set section.key=value)"},
    {D, ".lr=1", EQ_ERR_PARSE, "--set .lr=1: syntax error (expected --set section.key=value)"},
    {D, "optim.=1", EQ_ERR_PARSE, "--set optim.=1: syntax error (expected --set section.key=value)"},
    {D, "optim.l r=1", EQ_ERR_PARSE, "--set optim.l r=1: syntax error (expected --set section.key=value)"},
    {D, "quant.wt.bits=0", EQ_ERR_INVALID,
     "--set quant.wt.bits=0: [quant.wt] bits: 0 is out of range (expected int in [1, 8])"},
    /* a file's value cannot hold a line break, so a --set's cannot either
     * (eqctl run --set "train.out_dir=a<LF>b" made such a directory) */
    {D, "data.path=/a\nb", EQ_ERR_PARSE,
     "--set data.path=/a\\x0ab: line break in the value (expected one line; quote it and write \\n for a "
     "newline in a string)"},
    {D, "data.path=\"/a\r\"", EQ_ERR_PARSE,
     "--set data.path=\"/a\\x0d\": line break in the value (expected one line; quote it and write \\n for a "
     "newline in a string)"},
};

START_TEST(test_error_messages)
{
    const err_case *e = &s_errs[_i];
    all_cfg c;
    eq_err err;
    const char *sets[1] = {e->set};
    eq_status st = s_parse(&c, e->text, sets, e->set ? 1 : 0, &err);
    ck_assert_msg(st == e->code, "case %d: status %s, want %s (%s)", _i, eq_status_str(st),
                  eq_status_str(e->code), err.msg);
    ck_assert_int_eq(err.code, e->code);
    ck_assert_str_eq(err.msg, e->msg);
}
END_TEST

typedef struct long_cfg {
    char v[65536];
} long_cfg;

START_TEST(test_long_lines)
{
    /* Values may be long: lines up to 65536 bytes are fine, longer is an error. */
    static const eq_config_key keys[] = {EQ_CONFIG_STRING_KEY(long_cfg, v, "", "long value")};
    static long_cfg dst;
    eq_config_section sec = {"s", NULL, keys, 1, &dst};
    size_t n = 70000;
    char *text = malloc(n);
    ck_assert_ptr_nonnull(text);
    memcpy(text, "[s]\nv = ", 8);
    memset(text + 8, 'x', n - 8);
    eq_err err;
    /* line 2 is exactly EQ_CONFIG_MAX_LINE bytes, then the file ends */
    ck_assert_msg(eq_config_parse_buffer(&sec, 1, "long.cfg", text, 4 + EQ_CONFIG_MAX_LINE, NULL, 0, &err) ==
                      EQ_OK,
                  "%s", err.msg);
    ck_assert_uint_eq(strlen(dst.v), EQ_CONFIG_MAX_LINE - 4);
    /* same with a CRLF ending: the CR does not count */
    text[4 + EQ_CONFIG_MAX_LINE] = '\r';
    text[5 + EQ_CONFIG_MAX_LINE] = '\n';
    ck_assert_int_eq(eq_config_parse_buffer(&sec, 1, "long.cfg", text, 6 + EQ_CONFIG_MAX_LINE, NULL, 0, &err),
                     EQ_OK);
    /* one byte more is an error naming the line and its length */
    text[4 + EQ_CONFIG_MAX_LINE] = 'x';
    ck_assert_int_eq(eq_config_parse_buffer(&sec, 1, "long.cfg", text, 5 + EQ_CONFIG_MAX_LINE, NULL, 0, &err),
                     EQ_ERR_PARSE);
    ck_assert_str_eq(err.msg, "long.cfg:2: line is 65537 bytes long (expected at most 65536)");
    memset(text + 4 + EQ_CONFIG_MAX_LINE, 'x', n - 4 - EQ_CONFIG_MAX_LINE);
    ck_assert_int_eq(eq_config_parse_buffer(&sec, 1, "long.cfg", text, n, NULL, 0, &err), EQ_ERR_PARSE);
    ck_assert_str_eq(err.msg, "long.cfg:2: line is 69996 bytes long (expected at most 65536)");
    free(text);
}
END_TEST

START_TEST(test_nul_byte_and_missing_file)
{
    all_cfg c;
    eq_err err;
    s_bind(&c);
    static const char text[] = "[data]\npath = a\0b\n";
    ck_assert_int_eq(eq_config_parse_buffer(c.secs, 4, "bin.cfg", text, sizeof text - 1, NULL, 0, &err),
                     EQ_ERR_PARSE);
    ck_assert_str_eq(err.msg, "bin.cfg:2: NUL byte in line (expected text)");

    char *dir = eq_test_scratch("config");
    char path[4200], want[4400];
    snprintf(path, sizeof path, "%s/nope.cfg", dir);
    ck_assert_int_eq(eq_config_load(c.secs, 4, path, NULL, 0, &err), EQ_ERR_NOTFOUND);
    snprintf(want, sizeof want, "%s: cannot open config file: No such file or directory", path);
    ck_assert_str_eq(err.msg, want);
    /* a directory is not a config file either */
    ck_assert_int_eq(eq_config_load(c.secs, 4, dir, NULL, 0, &err), EQ_ERR_IO);
    ck_assert_ptr_nonnull(strstr(err.msg, dir));

    /* a file over EQ_CONFIG_MAX_FILE is refused (sparse, so cheap to make) */
    char *big = s_write(dir, "big.cfg", "", 0);
    ck_assert_int_eq(truncate(big, (off_t)EQ_CONFIG_MAX_FILE + 1), 0);
    ck_assert_int_eq(eq_config_load(c.secs, 4, big, NULL, 0, &err), EQ_ERR_LIMIT);
    snprintf(want, sizeof want, "%s: config file is larger than 16777216 bytes", big);
    ck_assert_str_eq(err.msg, want);
    free(big);

    /* errors in a real file name the path as given */
    char *p = s_write(dir, "bad.cfg", "[data]\npath = x\nbatch = -3\n", 27);
    ck_assert_int_eq(eq_config_load(c.secs, 4, p, NULL, 0, &err), EQ_ERR_INVALID);
    snprintf(want, sizeof want, "%s:3: [data] batch: -3 is out of range (expected int in [1, 4096])", p);
    ck_assert_str_eq(err.msg, want);
    free(p);
    eq_test_scratch_rm(dir);
}
END_TEST

START_TEST(test_long_user_text_is_cut)
{
    /* a huge unknown key or value is shown cut, never flooding the message */
    all_cfg c;
    eq_err err;
    char text[400];
    snprintf(text, sizeof text, "[data]\npath = x\nbatch = %0200d\n", 7);
    ck_assert_int_eq(s_parse(&c, text, NULL, 0, &err), EQ_ERR_INVALID);
    ck_assert_str_eq(
        err.msg,
        "exp.cfg:3: [data] batch: \"000000000000000000000000000000000000000000000000000000000000...\" "
        "is out of range (expected int in [1, 4096])");
    ck_assert_int_eq(s_parse(&c, "[data]\npath = \x01\xff\n", NULL, 0, &err), EQ_OK);
    ck_assert_int_eq(s_parse(&c, "[data]\nbatch = \x01\xff\n", NULL, 0, &err), EQ_ERR_INVALID);
    ck_assert_str_eq(err.msg,
                     "exp.cfg:2: [data] batch: \"\\x01\\xff\" is not an integer (expected int in [1, 4096])");
}
END_TEST

/* --------------------------------------------------------------- dump */

START_TEST(test_dump_exact_and_round_trip)
{
    all_cfg a, b;
    eq_err err;
    const char *text = "[data]\n"
                       "path = \"  lead, \\\"q\\\" \\\\ \\x01 tab\\t\"\n"
                       "splits = \"x,y\", \" z\", \"\"\n"
                       "seed = -5\n"
                       "[optim]\nlr = 0.3\nweight_decay = 1e-300\nmilestones = 1000\n"
                       "[quant.fm]\nmethod = lqnet\nper_channel = on\n";
    ck_assert_msg(s_parse(&a, text, NULL, 0, &err) == EQ_OK, "%s", err.msg);
    char *out;
    size_t len;
    ck_assert_int_eq(eq_config_dump(a.secs, 4, &out, &len, &err), EQ_OK);
    ck_assert_uint_eq(len, strlen(out));
    ck_assert_str_eq(out, "[data]\n"
                          "path = \"  lead, \\\"q\\\" \\\\ \\x01 tab\\t\"\n"
                          "batch = 32\n"
                          "seed = -5\n"
                          "shuffle = true\n"
                          "splits = \"x,y\", \" z\", \"\"\n"
                          "\n[optim]\n"
                          "method = sgd\n"
                          "lr = 0.3\n"
                          "momentum = 0.9\n"
                          "weight_decay = 1e-300\n"
                          "milestones = 1000\n"
                          "betas = 0.9, 0.999\n"
                          "\n[quant.wt]\n"
                          "method = none\n"
                          "bits = 4\n"
                          "per_channel = false\n"
                          "\n[quant.fm]\n"
                          "method = lqnet\n"
                          "bits = 4\n"
                          "per_channel = true\n");
    /* reading the dump back gives the same values, and the same dump */
    ck_assert_msg(s_parse(&b, out, NULL, 0, &err) == EQ_OK, "%s", err.msg);
    ck_assert_str_eq(b.data.path, a.data.path);
    ck_assert_uint_eq(b.data.nsplits, 3);
    for (int i = 0; i < 3; i++)
        ck_assert_str_eq(b.data.splits[i], a.data.splits[i]);
    ck_assert(b.optim.weight_decay == 1e-300);
    char *out2;
    ck_assert_int_eq(eq_config_dump(b.secs, 4, &out2, NULL, &err), EQ_OK);
    ck_assert_str_eq(out2, out);
    free(out);
    free(out2);
}
END_TEST

START_TEST(test_dump_float_precision)
{
    all_cfg a, b;
    eq_err err;
    ck_assert_int_eq(s_parse(&a, "[data]\npath=p\n", NULL, 0, &err), EQ_OK);
    double vals[] = {0.1 + 0.2, 1.0 / 3.0, 5e-324, 10.0, 0.0};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        a.optim.lr = vals[i];
        char *out;
        ck_assert_int_eq(eq_config_dump(a.secs, 4, &out, NULL, &err), EQ_OK);
        ck_assert_msg(s_parse(&b, out, NULL, 0, &err) == EQ_OK, "%s", err.msg);
        ck_assert_msg(b.optim.lr == vals[i], "lr %.17g read back as %.17g", vals[i], b.optim.lr);
        free(out);
    }
}
END_TEST

START_TEST(test_dump_refuses_bad_values)
{
    all_cfg a;
    eq_err err;
    char *out = (char *)1;
    ck_assert_int_eq(s_parse(&a, "[data]\npath=p\n", NULL, 0, &err), EQ_OK);
    a.optim.lr = 20;
    ck_assert_int_eq(eq_config_dump(a.secs, 4, &out, NULL, &err), EQ_ERR_INVALID);
    ck_assert_ptr_null(out);
    ck_assert_str_eq(err.msg,
                     "config dump: [optim] lr: value 20 is out of range (expected float in [0, 10])");
    a.optim.lr = 1;
    a.wt.method = 7;
    ck_assert_int_eq(eq_config_dump(a.secs, 4, &out, NULL, &err), EQ_ERR_INVALID);
    ck_assert_str_eq(err.msg, "config dump: [quant.wt] method: enum index 7 is out of range "
                              "(expected one of: none, lsq, dorefa, lqnet)");
    a.wt.method = 1;
    a.optim.nmilestones = 5;
    ck_assert_int_eq(eq_config_dump(a.secs, 4, &out, NULL, &err), EQ_ERR_INVALID);
    a.optim.nmilestones = 1;
    memset(a.data.path, 'x', sizeof a.data.path);
    ck_assert_int_eq(eq_config_dump(a.secs, 4, &out, NULL, &err), EQ_ERR_INVALID);
    ck_assert_str_eq(err.msg, "config dump: [data] path: string is not terminated "
                              "(expected string of at most 63 bytes)");
}
END_TEST

/* ------------------------------------------------------------- schema */

typedef struct one_cfg {
    int64_t n;
    int64_t m;
} one_cfg;

START_TEST(test_bad_schemas)
{
    eq_err err;
    one_cfg dst;
    const eq_config_key bad_default[] = {EQ_CONFIG_INT_KEY(one_cfg, n, "11", 0, 10, "n")};
    const eq_config_key empty_range[] = {EQ_CONFIG_INT_KEY(one_cfg, n, "1", 5, 4, "n")};
    const eq_config_key dup[] = {EQ_CONFIG_INT_KEY(one_cfg, n, "1", 0, 4, "n"),
                                 EQ_CONFIG_INT_KEY(one_cfg, n, "1", 0, 4, "n")};
    const eq_config_key ok[] = {EQ_CONFIG_INT_KEY(one_cfg, n, "1", 0, 4, "n")};
    eq_config_section s1 = {"a", NULL, bad_default, 1, &dst};
    ck_assert_int_eq(eq_config_check_schema(&s1, 1, &err), EQ_ERR_INTERNAL);
    ck_assert_str_eq(err.msg, "config schema [a] n: bad default: 11 is out of range");
    ck_assert_int_eq(eq_config_parse_buffer(&s1, 1, "x", "", 0, NULL, 0, &err), EQ_ERR_INTERNAL);
    eq_config_section s2 = {"a", NULL, empty_range, 1, &dst};
    ck_assert_int_eq(eq_config_check_schema(&s2, 1, &err), EQ_ERR_INTERNAL);
    ck_assert_str_eq(err.msg, "config schema [a] n: empty range");
    eq_config_section s3 = {"a", NULL, dup, 2, &dst};
    ck_assert_int_eq(eq_config_check_schema(&s3, 1, &err), EQ_ERR_INTERNAL);
    ck_assert_str_eq(err.msg, "config schema [a]: duplicate key n");
    eq_config_section s4[2] = {{"a", NULL, ok, 1, &dst}, {"a", NULL, ok, 1, &dst}};
    ck_assert_int_eq(eq_config_check_schema(s4, 2, &err), EQ_ERR_INTERNAL);
    ck_assert_str_eq(err.msg, "config schema: duplicate section [a]");
    eq_config_section s5 = {"a..b", NULL, ok, 1, &dst};
    ck_assert_int_eq(eq_config_check_schema(&s5, 1, &err), EQ_ERR_INTERNAL);
    eq_config_section s6 = {"a.b", NULL, ok, 1, &dst};
    ck_assert_int_eq(eq_config_check_schema(&s6, 1, &err), EQ_OK);
    ck_assert_int_eq(eq_config_check_schema(NULL, 0, &err), EQ_OK);
    /* offsets and sizes come from the struct */
    const eq_config_key m[] = {EQ_CONFIG_INT_KEY(one_cfg, m, "3", 0, 4, "m")};
    ck_assert_uint_eq(m[0].offset, offsetof(one_cfg, m));
}
END_TEST

/* ---------------------------------------------------------------- doc */

static const char s_doc_want[] =
    "### [data]\n"
    "\n"
    "Where samples come from.\n"
    "\n"
    "| key | type | default | range / choices | doc |\n"
    "| --- | --- | --- | --- | --- |\n"
    "| `path` | string | *required* | at most 63 bytes | dataset directory |\n"
    "| `batch` | int | `32` | [1, 4096] | global batch size |\n"
    "| `seed` | int | `0` | any | sampler seed |\n"
    "| `shuffle` | bool | `true` | true, false | shuffle the train split every epoch |\n"
    "| `splits` | string list | `train, val` | 1 to 3 items of at most 7 bytes | splits to read |\n"
    "\n"
    "### [optim]\n"
    "\n"
    "Optimiser.\n"
    "\n"
    "| key | type | default | range / choices | doc |\n"
    "| --- | --- | --- | --- | --- |\n"
    "| `method` | enum | `sgd` | `sgd`, `adam`, `adamw` | optimiser |\n"
    "| `lr` | float | `0.1` | [0, 10] | base learning rate |\n"
    "| `momentum` | float | `0.9` | [0, 1] | SGD momentum |\n"
    "| `weight_decay` | float | `1e-4` | >= 0 | L2 penalty \\| decoupled for adamw |\n"
    "| `milestones` | int list | `30, 60` | at most 4 items, each in [0, 1000] | epochs where lr drops 10x "
    "|\n"
    "| `betas` | float list | `0.9, 0.999` | 2 items, each in [0, 1] | Adam betas |\n"
    "\n"
    "### [quant.wt]\n"
    "\n"
    "Weight quantizer.\n"
    "\n"
    "| key | type | default | range / choices | doc |\n"
    "| --- | --- | --- | --- | --- |\n"
    "| `method` | enum | `none` | `none`, `lsq`, `dorefa`, `lqnet` | quantizer |\n"
    "| `bits` | int | `4` | [1, 8] | bit width |\n"
    "| `per_channel` | bool | `false` | true, false | one scale per output channel |\n"
    "\n"
    "### [quant.fm]\n"
    "\n"
    "Activation quantizer.\n"
    "\n"
    "| key | type | default | range / choices | doc |\n"
    "| --- | --- | --- | --- | --- |\n"
    "| `method` | enum | `none` | `none`, `lsq`, `dorefa`, `lqnet` | quantizer |\n"
    "| `bits` | int | `4` | [1, 8] | bit width |\n"
    "| `per_channel` | bool | `false` | true, false | one scale per output channel |\n";

START_TEST(test_doc_generator)
{
    all_cfg c;
    eq_err err;
    s_bind(&c);
    char *out;
    size_t len;
    ck_assert_int_eq(eq_config_doc(c.secs, 4, &out, &len, &err), EQ_OK);
    ck_assert_uint_eq(len, strlen(out));
    ck_assert_str_eq(out, s_doc_want);
    free(out);
}
END_TEST

/* doc/config.md carries the same table between two marker lines. */
START_TEST(test_doc_matches_markdown)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/doc/config.md", eq_test_srcdir());
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    static char md[1 << 16];
    size_t n = fread(md, 1, sizeof md - 1, f);
    fclose(f);
    md[n] = '\0';
    const char *begin = "<!-- BEGIN example schema: generated by eq_config_doc() -->\n";
    const char *b = strstr(md, begin);
    ck_assert_msg(b != NULL, "begin marker missing in %s", path);
    b += strlen(begin);
    const char *e = strstr(b, "<!-- END example schema -->");
    ck_assert_msg(e != NULL, "end marker missing in %s", path);
    ck_assert_uint_eq((size_t)(e - b), strlen(s_doc_want));
    ck_assert_msg(memcmp(b, s_doc_want, strlen(s_doc_want)) == 0,
                  "doc/config.md example table differs from eq_config_doc() output");
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("parse");
    tcase_add_test(tc, test_schema_valid);
    tcase_add_test(tc, test_defaults_applied);
    tcase_add_test(tc, test_file_values_comments_whitespace);
    tcase_add_test(tc, test_quoted_strings);
    tcase_add_test(tc, test_overrides_win);
    tcase_add_test(tc, test_discarded_section);
    suite_add_tcase(s, tc);
    tc = tcase_create("errors");
    tcase_add_loop_test(tc, test_error_messages, 0, (int)(sizeof s_errs / sizeof s_errs[0]));
    tcase_add_test(tc, test_long_lines);
    tcase_add_test(tc, test_nul_byte_and_missing_file);
    tcase_add_test(tc, test_long_user_text_is_cut);
    tcase_add_test(tc, test_bad_schemas);
    suite_add_tcase(s, tc);
    tc = tcase_create("dump_doc");
    tcase_add_test(tc, test_dump_exact_and_round_trip);
    tcase_add_test(tc, test_dump_float_precision);
    tcase_add_test(tc, test_dump_refuses_bad_values);
    tcase_add_test(tc, test_doc_generator);
    tcase_add_test(tc, test_doc_matches_markdown);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
