/* dx_timer.c -- see dx_timer.h.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#define _GNU_SOURCE 1
#include "dx_timer.h"

#include <errno.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <sys/prctl.h>
#include <sys/timerfd.h>
#define DX_HAVE_TIMERFD 1
#else
#define DX_HAVE_TIMERFD 0
#endif

int64_t dx_monotonic_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return -(int64_t)errno;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int dx_timerfd_supported(void) { return DX_HAVE_TIMERFD; }

#if DX_HAVE_TIMERFD

int dx_timerfd_create(void)
{
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int dx_timerfd_arm_abs_ns(int fd, int64_t deadline_ns)
{
    if (deadline_ns <= 0)
        deadline_ns = 1; /* it_value == 0 would disarm; 1 ns is long past: fires now */
    struct itimerspec its = {
        .it_interval = {0, 0},
        .it_value = {(time_t)(deadline_ns / 1000000000), (long)(deadline_ns % 1000000000)},
    };
    return timerfd_settime(fd, TFD_TIMER_ABSTIME, &its, NULL) != 0 ? -errno : 0;
}

int dx_timerfd_disarm(int fd)
{
    struct itimerspec its = {{0, 0}, {0, 0}};
    return timerfd_settime(fd, 0, &its, NULL) != 0 ? -errno : 0;
}

int dx_timerfd_clear(int fd)
{
    uint64_t n;
    for (;;) {
        ssize_t got = read(fd, &n, sizeof n);
        if (got == (ssize_t)sizeof n)
            return n > INT32_MAX ? INT32_MAX : (int)n;
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        return got < 0 ? -errno : -EIO;
    }
}

int64_t dx_timerfd_remaining_ns(int fd)
{
    struct itimerspec its;
    if (timerfd_gettime(fd, &its) != 0)
        return -(int64_t)errno;
    return (int64_t)its.it_value.tv_sec * 1000000000 + its.it_value.tv_nsec;
}

int dx_set_timer_slack_ns(unsigned long ns)
{
    return prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0) != 0 ? -errno : 0;
}

int64_t dx_get_timer_slack_ns(void)
{
    int rc = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    return rc < 0 ? -(int64_t)errno : (int64_t)rc;
}

#else /* !DX_HAVE_TIMERFD */

int dx_timerfd_create(void) { return -ENOSYS; }
int dx_timerfd_arm_abs_ns(int fd, int64_t deadline_ns) { (void)fd; (void)deadline_ns; return -ENOSYS; }
int dx_timerfd_disarm(int fd) { (void)fd; return -ENOSYS; }
int dx_timerfd_clear(int fd) { (void)fd; return -ENOSYS; }
int64_t dx_timerfd_remaining_ns(int fd) { (void)fd; return -ENOSYS; }
int dx_set_timer_slack_ns(unsigned long ns) { (void)ns; return -ENOSYS; }
int64_t dx_get_timer_slack_ns(void) { return -ENOSYS; }

#endif
