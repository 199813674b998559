/* core/log.c -- timestamped text or JSON log lines to a replaceable sink. */
#include "core/log.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static struct {
    eq_log_level level;
    int json;
    int rank;
    char role[32];
    eq_log_sink_fn sink;
    void *user;
    pthread_mutex_t mu;
} s_log = { EQ_LOG_INFO, 0, -1, "", NULL, NULL, PTHREAD_MUTEX_INITIALIZER };

static const char *const s_level_names[EQ_LOG_LEVEL_COUNT] = { "debug", "info", "warn", "error", "off" };
static const char *const s_level_tags[EQ_LOG_LEVEL_COUNT] = { "DEBUG", "INFO ", "WARN ", "ERROR", "OFF  " };

void eq_log_set_level(eq_log_level level) { s_log.level = level; }
eq_log_level eq_log_get_level(void) { return s_log.level; }
void eq_log_set_json(int on) { s_log.json = on ? 1 : 0; }

const char *eq_log_level_name(eq_log_level level)
{
    return (unsigned)level < EQ_LOG_LEVEL_COUNT ? s_level_names[level] : "?";
}

int eq_log_level_parse(const char *name, eq_log_level *out)
{
    for (int i = 0; i < EQ_LOG_LEVEL_COUNT; i++)
        if (strcmp(name, s_level_names[i]) == 0) {
            *out = (eq_log_level)i;
            return 0;
        }
    return -1;
}

void eq_log_set_role(const char *role, int rank)
{
    snprintf(s_log.role, sizeof s_log.role, "%s", role ? role : "");
    s_log.rank = rank;
}

void eq_log_set_sink(eq_log_sink_fn fn, void *user)
{
    pthread_mutex_lock(&s_log.mu);
    s_log.sink = fn;
    s_log.user = user;
    pthread_mutex_unlock(&s_log.mu);
}

/* Append `s` JSON-escaped to buf[*n..cap). */
static void s_json_escape(char *buf, int cap, int *n, const char *s)
{
    for (; *s && *n < cap - 7; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[(*n)++] = '\\';
            buf[(*n)++] = (char)c;
        } else if (c == '\n') {
            buf[(*n)++] = '\\';
            buf[(*n)++] = 'n';
        } else if (c < 0x20) {
            *n += snprintf(buf + *n, (size_t)(cap - *n), "\\u%04x", c);
        } else {
            buf[(*n)++] = (char)c;
        }
    }
    buf[*n] = '\0';
}

int eq_log_format(char *buf, int cap, eq_log_level level, const char *msg)
{
    struct timespec ts;
    struct tm tm;
    char when[40];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int w = (int)strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + w, sizeof when - (size_t)w, ".%03ldZ", ts.tv_nsec / 1000000L);
    if ((unsigned)level >= EQ_LOG_LEVEL_COUNT) level = EQ_LOG_ERROR;

    int n;
    if (s_log.json) {
        n = snprintf(buf, (size_t)cap, "{\"ts\":\"%s\",\"level\":\"%s\"", when, s_level_names[level]);
        if (s_log.role[0] && n < cap) n += snprintf(buf + n, (size_t)(cap - n), ",\"role\":\"%s\"", s_log.role);
        if (s_log.rank >= 0 && n < cap) n += snprintf(buf + n, (size_t)(cap - n), ",\"rank\":%d", s_log.rank);
        if (n < cap) n += snprintf(buf + n, (size_t)(cap - n), ",\"msg\":\"");
        if (n >= cap) n = cap - 1;
        s_json_escape(buf, cap - 2, &n, msg);
        n += snprintf(buf + n, (size_t)(cap - n), "\"}");
    } else {
        char who[48] = "";
        if (s_log.role[0] && s_log.rank >= 0)
            snprintf(who, sizeof who, " %s[%d]", s_log.role, s_log.rank);
        else if (s_log.role[0])
            snprintf(who, sizeof who, " %s", s_log.role);
        n = snprintf(buf, (size_t)cap, "%s %s%s %s", when, s_level_tags[level], who, msg);
    }
    if (n >= cap) n = cap - 1;
    return n;
}

void eq_logv(eq_log_level level, const char *fmt, va_list ap)
{
    if (level < s_log.level || level >= EQ_LOG_OFF) return;
    char msg[2048], line[4352];
    vsnprintf(msg, sizeof msg, fmt, ap);
    int n = eq_log_format(line, (int)sizeof line, level, msg);
    pthread_mutex_lock(&s_log.mu);
    if (s_log.sink) {
        s_log.sink(level, line, s_log.user);
    } else {
        line[n] = '\n';
        ssize_t r = write(STDERR_FILENO, line, (size_t)n + 1);
        (void)r;
    }
    pthread_mutex_unlock(&s_log.mu);
}

void eq_log(eq_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    eq_logv(level, fmt, ap);
    va_end(ap);
}
