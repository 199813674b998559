/*
 * core/clock.h -- clocks.  Durations and deadlines use the monotonic clock
 * (never jumps); timestamps for humans use the wall clock.
 */
#ifndef EQ_CLOCK_H
#define EQ_CLOCK_H

#include <stddef.h>
#include <stdint.h>

uint64_t eq_clock_ns(void);     /* CLOCK_MONOTONIC, nanoseconds */
uint64_t eq_clock_ms(void);     /* CLOCK_MONOTONIC, milliseconds */
double eq_clock_sec(void);      /* CLOCK_MONOTONIC, seconds */
uint64_t eq_wall_ms(void);      /* CLOCK_REALTIME, ms since the Unix epoch */
void eq_sleep_ms(uint64_t ms);  /* sleeps the whole duration despite signals */
struct timespec;
/* *ts = CLOCK_REALTIME now + ms: the absolute deadline that
 * pthread_cond_timedwait takes (with a default condition variable). */
void eq_clock_deadline(struct timespec *ts, uint64_t ms);
/* A remaining time for progress lines: "4m07s", "2h13m", or "?" when
 * negative, NaN or beyond ~115 days. */
void eq_clock_fmt_eta(double seconds, char *buf, size_t cap);

#endif
