/*
 * core/log.h -- one logging function for every process.
 *
 * Lines go to a sink (default: stderr) as
 *     2026-11-27T11:50:01.123Z INFO  loader[0] message
 * or, with eq_log_set_json(1), as JSON lines
 *     {"ts":"2026-11-27T11:50:01.123Z","level":"info","role":"loader","rank":0,"msg":"..."}
 * The role and rank prefix are process-wide settings made once by main().
 * eq_log is thread-safe (one write per line).
 */
#ifndef EQ_LOG_H
#define EQ_LOG_H

#include <stdarg.h>

typedef enum eq_log_level {
    EQ_LOG_DEBUG = 0,
    EQ_LOG_INFO,
    EQ_LOG_WARN,
    EQ_LOG_ERROR,
    EQ_LOG_OFF,
    EQ_LOG_LEVEL_COUNT
} eq_log_level;

/* Receives one complete, formatted line (without the trailing newline). */
typedef void (*eq_log_sink_fn)(eq_log_level level, const char *line, void *user);

void eq_log(eq_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void eq_logv(eq_log_level level, const char *fmt, va_list ap);

#define eq_debug(...) eq_log(EQ_LOG_DEBUG, __VA_ARGS__)
#define eq_info(...)  eq_log(EQ_LOG_INFO, __VA_ARGS__)
#define eq_warn(...)  eq_log(EQ_LOG_WARN, __VA_ARGS__)
#define eq_error(...) eq_log(EQ_LOG_ERROR, __VA_ARGS__)

/* Messages below `level` are dropped. Default EQ_LOG_INFO. */
void eq_log_set_level(eq_log_level level);
eq_log_level eq_log_get_level(void);
/* Parse "debug", "info", "warn", "error", "off"; returns -1 if unknown. */
int eq_log_level_parse(const char *name, eq_log_level *out);
const char *eq_log_level_name(eq_log_level level);
/* Role ("loader", "trainer", ...; NULL for none) and rank (-1 for none). */
void eq_log_set_role(const char *role, int rank);
/* 1: JSON lines; 0: text lines. */
void eq_log_set_json(int on);
/* Replace the sink; NULL restores stderr. */
void eq_log_set_sink(eq_log_sink_fn fn, void *user);

/* Format the line exactly as the sink would receive it (used by tests). */
int eq_log_format(char *buf, int cap, eq_log_level level, const char *msg);

#endif
