/* dx_ring.c -- SPSC frame ring; see dx_ring.h for the contract.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * Memory ordering (JACK ringbuffer / kfifo style):
 *   producer: copy frame into slot[w & mask]; store write_idx = w + 1 (release)
 *   consumer: load write_idx (acquire) -> slot contents are visible; copy out;
 *             store read_idx = r + 1 (release) -> producer may now reuse the slot
 *   producer: load read_idx (acquire) before overwriting a slot the consumer has released.
 * Each side also keeps a plain (non-atomic) cached copy of the other side's index on its own
 * cache line, so the shared line is only touched when the cached view says full/empty.
 *
 * The slots (half a megabyte for a session's ring at 48 kHz) are mapped on their own with mmap
 * where there is one: a ring made and freed per session would otherwise come from the malloc
 * heap once glibc has raised its dynamic mmap threshold, and thousands of sessions come and
 * gone leave that heap fragmented (RSS creeping up under `make soak`).
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS under -std=c11 */
#include "dx_ring.h"

#include <errno.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define DX_HAVE_MMAP 1
#endif

#define DX_CACHE_LINE 64

struct dx_ring {
    /* Immutable after create (shared read-only by both threads). */
    uint32_t capacity;
    uint32_t mask;
    uint32_t slot_bytes;
    uint32_t stride;         /* slot_bytes rounded up to 16 */
    unsigned char *data;     /* capacity * stride bytes (data_bytes, mapped on their own) */
    size_t data_bytes;
    uint32_t *lens;          /* capacity lengths */

    /* Producer-owned line. */
    alignas(DX_CACHE_LINE) _Atomic uint64_t write_idx;
    uint64_t read_cache;     /* producer's last view of read_idx */

    /* Consumer-owned line. */
    alignas(DX_CACHE_LINE) _Atomic uint64_t read_idx;
    uint64_t write_cache;    /* consumer's last view of write_idx */

    alignas(DX_CACHE_LINE) char pad_end;
};

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

static unsigned char *alloc_slots(size_t bytes)
{
#ifdef DX_HAVE_MMAP
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : (unsigned char *)p;  /* page-aligned: cache-line aligned */
#else
    return aligned_alloc(DX_CACHE_LINE, bytes);
#endif
}

static void free_slots(unsigned char *p, size_t bytes)
{
    if (p == NULL)
        return;
#ifdef DX_HAVE_MMAP
    munmap(p, bytes);
#else
    (void)bytes;
    free(p);
#endif
}

dx_ring *dx_ring_create(uint32_t capacity, uint32_t slot_bytes)
{
    if (capacity == 0 || capacity > DX_RING_MAX_CAPACITY || (capacity & (capacity - 1)) != 0 ||
        slot_bytes == 0 || slot_bytes > DX_RING_MAX_SLOT_BYTES) {
        errno = EINVAL;
        return NULL;
    }
    dx_ring *r = aligned_alloc(DX_CACHE_LINE, round_up(sizeof *r, DX_CACHE_LINE));
    if (r == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    memset(r, 0, sizeof *r);
    r->capacity = capacity;
    r->mask = capacity - 1;
    r->slot_bytes = slot_bytes;
    r->stride = (uint32_t)round_up(slot_bytes, 16);
    r->data_bytes = round_up((size_t)capacity * r->stride, DX_CACHE_LINE);
    r->data = alloc_slots(r->data_bytes);
    r->lens = calloc(capacity, sizeof *r->lens);
    if (r->data == NULL || r->lens == NULL) {
        free_slots(r->data, r->data_bytes);
        free(r->lens);
        free(r);
        errno = ENOMEM;
        return NULL;
    }
    atomic_init(&r->write_idx, 0);
    atomic_init(&r->read_idx, 0);
    r->read_cache = 0;
    r->write_cache = 0;
    return r;
}

void dx_ring_destroy(dx_ring *r)
{
    if (r == NULL)
        return;
    free_slots(r->data, r->data_bytes);
    free(r->lens);
    free(r);
}

/* Producer: number of free slots starting at w, refreshing the cache only if it says full. */
static inline uint32_t producer_room(dx_ring *r, uint64_t w)
{
    uint64_t room = r->capacity - (w - r->read_cache);
    if (room == 0) {
        r->read_cache = atomic_load_explicit(&r->read_idx, memory_order_acquire);
        room = r->capacity - (w - r->read_cache);
    }
    return (uint32_t)room;
}

int dx_ring_push(dx_ring *r, const void *src, uint32_t n)
{
    if (r == NULL || (src == NULL && n > 0))
        return DX_RING_EINVAL;
    if (n > r->slot_bytes)
        return DX_RING_ETOOBIG;
    uint64_t w = atomic_load_explicit(&r->write_idx, memory_order_relaxed);
    if (producer_room(r, w) == 0)
        return DX_RING_EFULL;
    uint32_t i = (uint32_t)w & r->mask;
    if (n > 0)
        memcpy(r->data + (size_t)i * r->stride, src, n);
    r->lens[i] = n;
    atomic_store_explicit(&r->write_idx, w + 1, memory_order_release);
    return 0;
}

int32_t dx_ring_push_many(dx_ring *r, const void *heads, uint32_t head_bytes,
                          const void *bodies, uint32_t body_bytes, uint32_t n)
{
    if (r == NULL || (heads == NULL && head_bytes > 0 && n > 0) ||
        (bodies == NULL && body_bytes > 0 && n > 0))
        return DX_RING_EINVAL;
    if ((uint64_t)head_bytes + body_bytes > r->slot_bytes)
        return DX_RING_ETOOBIG;
    uint64_t w = atomic_load_explicit(&r->write_idx, memory_order_relaxed);
    uint32_t room = producer_room(r, w);
    if (room < n) { /* the cache may be stale: look at the consumer's index once */
        r->read_cache = atomic_load_explicit(&r->read_idx, memory_order_acquire);
        room = r->capacity - (uint32_t)(w - r->read_cache);
    }
    uint32_t count = n < room ? n : room;
    const unsigned char *h = heads, *b = bodies;
    for (uint32_t k = 0; k < count; k++) {
        uint32_t i = (uint32_t)(w + k) & r->mask;
        unsigned char *slot = r->data + (size_t)i * r->stride;
        if (head_bytes > 0)
            memcpy(slot, h + (size_t)k * head_bytes, head_bytes);
        if (body_bytes > 0)
            memcpy(slot + head_bytes, b + (size_t)k * body_bytes, body_bytes);
        r->lens[i] = head_bytes + body_bytes;
    }
    if (count > 0)
        atomic_store_explicit(&r->write_idx, w + count, memory_order_release);
    return (int32_t)count;
}

/* Consumer: number of visible frames starting at rd, refreshing the cache only if needed. */
static inline uint64_t consumer_avail(dx_ring *r, uint64_t rd)
{
    if (r->write_cache == rd)
        r->write_cache = atomic_load_explicit(&r->write_idx, memory_order_acquire);
    return r->write_cache - rd;
}

int32_t dx_ring_pop(dx_ring *r, void *dst, uint32_t dst_len)
{
    if (r == NULL)
        return DX_RING_EINVAL;
    uint64_t rd = atomic_load_explicit(&r->read_idx, memory_order_relaxed);
    if (consumer_avail(r, rd) == 0)
        return DX_RING_EMPTY;
    uint32_t i = (uint32_t)rd & r->mask;
    uint32_t n = r->lens[i];
    if (n > dst_len)
        return DX_RING_ETOOBIG;
    if (n > 0) {
        if (dst == NULL)
            return DX_RING_EINVAL;
        memcpy(dst, r->data + (size_t)i * r->stride, n);
    }
    atomic_store_explicit(&r->read_idx, rd + 1, memory_order_release);
    return (int32_t)n;
}

uint32_t dx_ring_flush(dx_ring *r)
{
    if (r == NULL)
        return 0;
    uint64_t rd = atomic_load_explicit(&r->read_idx, memory_order_relaxed);
    uint64_t w = atomic_load_explicit(&r->write_idx, memory_order_acquire);
    r->write_cache = w;
    if (w == rd)
        return 0;
    atomic_store_explicit(&r->read_idx, w, memory_order_release);
    return (uint32_t)(w - rd);
}

uint32_t dx_ring_count(const dx_ring *r)
{
    if (r == NULL)
        return 0;
    /* Load read first: read <= write always holds and both only grow, so a later load of
     * write is >= the earlier read.  Clamp in case read moved on in between (third-party
     * observer). */
    uint64_t rd = atomic_load_explicit(&r->read_idx, memory_order_acquire);
    uint64_t w = atomic_load_explicit(&r->write_idx, memory_order_acquire);
    uint64_t c = w - rd;
    return c > r->capacity ? r->capacity : (uint32_t)c;
}

uint32_t dx_ring_free(const dx_ring *r)
{
    if (r == NULL)
        return 0;
    return r->capacity - dx_ring_count(r);
}
