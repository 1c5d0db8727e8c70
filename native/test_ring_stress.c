/* test_ring_stress.c -- two-thread stress test of dx_ring (run it under TSan too).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * The producer pushes N frames; frame k carries [u64 seq][u32 len][payload...][u64 checksum]
 * with a length that varies with k (including frames shorter than the header, which carry
 * only part of the seq, and zero-length frames).  The consumer pops them, verifying order,
 * length and checksum; every third frame it first pops into a buffer one byte too small,
 * which must leave the frame in the ring.  A small capacity makes the ring wrap and hit
 * full/empty constantly.  Also runs single-threaded API checks.
 *
 * usage: test_ring_stress [N] [capacity] [slot_bytes]
 */
#include "dx_ring.h"
#include "dx_timer.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);    \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)

static uint64_t N = 5000000;
static uint32_t CAP = 8;
static uint32_t SLOT = 64;

static uint64_t splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint32_t frame_len(uint64_t seq) { return (uint32_t)(splitmix(seq) % (SLOT + 1)); }

/* Deterministic frame content for seq: bytes derived from seq; first 8 bytes = seq. */
static void make_frame(uint64_t seq, unsigned char *buf, uint32_t len)
{
    unsigned char tmp[8];
    memcpy(tmp, &seq, 8);
    for (uint32_t i = 0; i < len; i++)
        buf[i] = i < 8 ? tmp[i] : (unsigned char)(splitmix(seq ^ ((uint64_t)i << 40)) >> 7);
}

static uint64_t checksum(const unsigned char *buf, uint32_t len)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (uint32_t i = 0; i < len; i++)
        h = (h ^ buf[i]) * 1099511628211ULL;
    return h;
}

static dx_ring *ring;
static uint64_t full_hits, empty_hits;

static void *producer(void *arg)
{
    (void)arg;
    unsigned char *buf = malloc(SLOT);
    uint64_t seq = 0;
    while (seq < N) {
        uint32_t len = frame_len(seq);
        make_frame(seq, buf, len);
        int rc;
        while ((rc = dx_ring_push(ring, buf, len)) == DX_RING_EFULL) {
            full_hits++;
            sched_yield();
        }
        CHECK(rc == 0);
        seq++;
    }
    free(buf);
    return NULL;
}

static void *consumer(void *arg)
{
    (void)arg;
    unsigned char *buf = malloc(SLOT);
    unsigned char *want = malloc(SLOT);
    uint64_t seq = 0;
    while (seq < N) {
        uint32_t wl = frame_len(seq);
        int32_t got;
        if (seq % 3 == 1 && wl > 0) {
            got = dx_ring_pop(ring, buf, wl - 1);
            if (got == DX_RING_EMPTY) {
                empty_hits++;
                sched_yield();
                continue;
            }
            CHECK(got == DX_RING_ETOOBIG); /* the frame stays: the pop below gets it */
        }
        got = dx_ring_pop(ring, buf, SLOT);
        if (got == DX_RING_EMPTY) {
            empty_hits++;
            sched_yield();
            continue;
        }
        CHECK(got >= 0);
        if ((uint32_t)got != wl) {
            fprintf(stderr, "seq %" PRIu64 ": len %d, want %u\n", seq, got, wl);
            exit(1);
        }
        make_frame(seq, want, wl);
        if (checksum(buf, wl) != checksum(want, wl) || memcmp(buf, want, wl) != 0) {
            fprintf(stderr, "seq %" PRIu64 ": payload mismatch\n", seq);
            exit(1);
        }
        CHECK(dx_ring_count(ring) <= CAP);
        seq++;
    }
    free(buf);
    free(want);
    return NULL;
}

static void api_checks(void)
{
    CHECK(dx_ring_create(0, 16) == NULL && errno == EINVAL);
    CHECK(dx_ring_create(3, 16) == NULL);
    CHECK(dx_ring_create(131072, 16) == NULL);
    CHECK(dx_ring_create(4, 0) == NULL);
    CHECK(dx_ring_create(4, 65537) == NULL);
    dx_ring *r = dx_ring_create(4, 10);
    CHECK(r != NULL);
    CHECK(dx_ring_count(r) == 0 && dx_ring_free(r) == 4);
    CHECK(dx_ring_push(r, NULL, 0) == 0 && dx_ring_pop(r, NULL, 0) == 0); /* zero-length */
    unsigned char b[16] = "0123456789ABCDE", o[16];
    CHECK(dx_ring_pop(r, o, sizeof o) == DX_RING_EMPTY);
    CHECK(dx_ring_push(r, b, 11) == DX_RING_ETOOBIG);
    CHECK(dx_ring_push(r, NULL, 1) == DX_RING_EINVAL);
    for (uint32_t lap = 0; lap < 1000; lap++) {
        for (uint32_t i = 0; i < 4; i++)
            CHECK(dx_ring_push(r, b + i, (lap + i) % 11) == 0);
        CHECK(dx_ring_push(r, b, 1) == DX_RING_EFULL);
        CHECK(dx_ring_count(r) == 4 && dx_ring_free(r) == 0);
        for (uint32_t i = 0; i < 4; i++) {
            uint32_t n = (lap + i) % 11;
            if (n > 2)
                CHECK(dx_ring_pop(r, o, 2) == DX_RING_ETOOBIG);
            CHECK(dx_ring_pop(r, o, sizeof o) == (int32_t)n);
            CHECK(memcmp(o, b + i, n) == 0);
        }
        CHECK(dx_ring_pop(r, o, sizeof o) == DX_RING_EMPTY);
        CHECK(dx_ring_count(r) == 0 && dx_ring_free(r) == 4);
    }
    CHECK(dx_ring_push(r, b, 10) == 0); /* slot_bytes exactly */
    CHECK(dx_ring_pop(r, o, sizeof o) == 10 && memcmp(o, b, 10) == 0);
    for (uint32_t i = 0; i < 3; i++)
        CHECK(dx_ring_push(r, b, 2) == 0);
    CHECK(dx_ring_flush(r) == 3);
    CHECK(dx_ring_flush(r) == 0);
    CHECK(dx_ring_pop(r, o, sizeof o) == DX_RING_EMPTY);
    CHECK(dx_ring_push(r, b, 1) == 0); /* usable after a flush */
    CHECK(dx_ring_count(r) == 1 && dx_ring_pop(r, o, sizeof o) == 1);
    dx_ring_destroy(r);
    dx_ring_destroy(NULL);

    /* Timer smoke test. */
    if (dx_timerfd_supported()) {
        int fd = dx_timerfd_create();
        CHECK(fd >= 0);
        CHECK(dx_timerfd_clear(fd) == 0);
        CHECK(dx_timerfd_arm_abs_ns(fd, 0) == 0); /* past: fires at once */
        int64_t t0 = dx_monotonic_ns();
        int n = 0;
        while ((n = dx_timerfd_clear(fd)) == 0 && dx_monotonic_ns() - t0 < 1000000000)
            ;
        CHECK(n == 1);
        CHECK(dx_timerfd_arm_abs_ns(fd, dx_monotonic_ns() + 1000000000) == 0);
        CHECK(dx_timerfd_remaining_ns(fd) > 0);
        CHECK(dx_timerfd_disarm(fd) == 0);
        CHECK(dx_timerfd_remaining_ns(fd) == 0);
        CHECK(dx_timerfd_clear(fd) == 0);
        close(fd);
        CHECK(dx_timerfd_clear(fd) == -EBADF);
        CHECK(dx_set_timer_slack_ns(1000) == 0 && dx_get_timer_slack_ns() == 1000);
    }
}

int main(int argc, char **argv)
{
    if (argc > 1)
        N = strtoull(argv[1], NULL, 10);
    if (argc > 2)
        CAP = (uint32_t)strtoul(argv[2], NULL, 10);
    if (argc > 3)
        SLOT = (uint32_t)strtoul(argv[3], NULL, 10);
    api_checks();
    ring = dx_ring_create(CAP, SLOT);
    CHECK(ring != NULL);
    pthread_t pt, ct;
    CHECK(pthread_create(&ct, NULL, consumer, NULL) == 0);
    CHECK(pthread_create(&pt, NULL, producer, NULL) == 0);
    CHECK(pthread_join(pt, NULL) == 0);
    CHECK(pthread_join(ct, NULL) == 0);
    CHECK(dx_ring_count(ring) == 0);
    dx_ring_destroy(ring);
    printf("ok: %" PRIu64 " frames, capacity %u, slot %u bytes; producer saw full %" PRIu64
           "x, consumer saw empty %" PRIu64 "x\n",
           N, CAP, SLOT, full_hits, empty_hits);
    return 0;
}
