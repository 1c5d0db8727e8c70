/* dx_timer.h -- precise absolute-deadline wake-ups for an event loop (Linux timerfd).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * The timerfd is CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC.  Arm it with an absolute
 * deadline in nanoseconds (same clock as dx_monotonic_ns), wait for it to become readable
 * (epoll / trio.lowlevel.wait_readable), then dx_timerfd_clear it.  hrtimers behind a
 * timerfd are not subject to the millisecond granularity of epoll_wait's timeout.
 *
 * All int-returning functions return >= 0 on success and -errno on failure; on platforms
 * without timerfd they return -ENOSYS (dx_monotonic_ns still works on any POSIX system).
 * Functions are thread-safe in the sense of the underlying syscalls.
 *
 * native/_build_ring.py reads this header as the cffi cdef of duplexd._native: everything
 * declared here is visible to Python.  The last section holds what only tests call.
 */
#ifndef DX_TIMER_H
#define DX_TIMER_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 if timerfd is available on this build, else 0. */
int dx_timerfd_supported(void);

/* Create a CLOCK_MONOTONIC timerfd (nonblocking, close-on-exec).  Returns fd or -errno. */
int dx_timerfd_create(void);

/* Arm fd to expire once at the absolute CLOCK_MONOTONIC time deadline_ns.  A deadline at or
 * before now fires immediately (deadline_ns <= 0 is treated as 1 ns, since a zero it_value
 * would disarm).  Re-arming replaces the previous deadline.  Returns 0 or -errno. */
int dx_timerfd_arm_abs_ns(int fd, int64_t deadline_ns);

/* Disarm fd (a pending, unread expiration stays readable until cleared).  0 or -errno. */
int dx_timerfd_disarm(int fd);

/* Nonblocking read of the expiration counter: returns the number of expirations since the
 * last clear (clamped to INT32_MAX), 0 if none, or -errno. */
int dx_timerfd_clear(int fd);

/* prctl(PR_SET_TIMERSLACK, ns) for the CALLING thread (affects nanosleep/poll/epoll timeouts
 * of that thread, not timerfd expirations).  Note ns == 0 resets to the thread's default
 * slack; use 1 for the minimum.  Returns 0 or -errno. */
int dx_set_timer_slack_ns(unsigned long ns);

/* ---- Test / diagnostics only ---------------------------------------------------------
 * duplexd does not call these.  tests/test_timer.py (through duplexd._native) and
 * native/test_ring_stress.c use them to look at a timer and the clock from outside. */

/* Remaining time of an armed timer in ns (0 if disarmed), or -errno. */
int64_t dx_timerfd_remaining_ns(int fd);

/* CLOCK_MONOTONIC now, in nanoseconds. */
int64_t dx_monotonic_ns(void);

/* prctl(PR_GET_TIMERSLACK) for the calling thread, or -errno. */
int64_t dx_get_timer_slack_ns(void);

#ifdef __cplusplus
}
#endif

#endif /* DX_TIMER_H */
