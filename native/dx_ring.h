/* dx_ring.h -- single-producer / single-consumer ring of fixed-size frame slots.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * A ring holds `capacity` slots (a power of two), each `slot_bytes` bytes long, plus the
 * length actually stored in each slot.  It is lock-free and wait-free in the style of JACK's
 * ringbuffer and Linux kfifo: two free-running 64-bit indices (never wrapped, masked on use),
 * the producer publishes its write index with a release store after copying into the slot,
 * the consumer acquires it before reading the slot, and symmetrically for the read index.
 *
 * Thread-safety contract
 * ----------------------
 *  - At most ONE producer thread calls dx_ring_push (and dx_ring_free).
 *  - At most ONE consumer thread calls dx_ring_pop / dx_ring_flush (and dx_ring_count).
 *  - Producer and consumer may be different threads and run concurrently.
 *  - dx_ring_count / dx_ring_free may be called from either side; the answer is a snapshot
 *    that can only be conservative for the caller's own side (the consumer never sees fewer
 *    frames than are really there, the producer never sees less free space than there is).
 *  - dx_ring_create / dx_ring_destroy must not run concurrently with anything else on the
 *    same ring.
 *  - No function blocks, sleeps, takes a lock, or allocates, except dx_ring_create.
 *  - A thread handing the ring to another (e.g. creating it and then starting the producer)
 *    must do so through a synchronising operation (thread start, mutex, ...), as usual.
 *
 * native/_build_ring.py reads this header as the cffi cdef of duplexd._native: everything
 * declared here is visible to Python, so declare only what duplexd (or its tests) calls.
 */
#ifndef DX_RING_H
#define DX_RING_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Limits (validated by dx_ring_create). */
#define DX_RING_MAX_CAPACITY   65536u
#define DX_RING_MAX_SLOT_BYTES 65536u

/* Error returns. */
#define DX_RING_EFULL   (-1)  /* push: no free slot (pop: DX_RING_EMPTY, same value) */
#define DX_RING_ETOOBIG (-2)  /* push: n > slot_bytes; pop: dst_len < frame length */
#define DX_RING_EINVAL  (-3)  /* NULL ring / NULL buffer with non-zero length */

typedef struct dx_ring dx_ring;

/* Create a ring.  capacity must be a power of two in 1..DX_RING_MAX_CAPACITY, slot_bytes in
 * 1..DX_RING_MAX_SLOT_BYTES.  Returns NULL (errno = EINVAL or ENOMEM) on failure. */
dx_ring *dx_ring_create(uint32_t capacity, uint32_t slot_bytes);

/* Free a ring (NULL is allowed).  Not concurrent with any other call on it. */
void dx_ring_destroy(dx_ring *r);

/* Producer.  Copy n (0 <= n <= slot_bytes) bytes into the next slot and publish it.
 * Returns 0, DX_RING_EFULL (-1) when the ring is full, DX_RING_ETOOBIG when n > slot_bytes,
 * DX_RING_EINVAL when src is NULL and n > 0.  Never blocks. */
int dx_ring_push(dx_ring *r, const void *src, uint32_t n);

/* Producer.  Push up to n frames at once, frame i being the head_bytes bytes at
 * heads + i * head_bytes followed by the body_bytes bytes at bodies + i * body_bytes
 * (head_bytes + body_bytes <= slot_bytes; either part may be empty), all published with one
 * release store.  Returns how many were pushed: n, or fewer when the ring fills up (the
 * rest is not touched); DX_RING_ETOOBIG when a frame would not fit a slot, DX_RING_EINVAL
 * for a NULL ring or a NULL buffer with a non-zero size.  Never blocks. */
int32_t dx_ring_push_many(dx_ring *r, const void *heads, uint32_t head_bytes,
                          const void *bodies, uint32_t body_bytes, uint32_t n);

/* Consumer.  Copy the oldest frame into dst and release its slot.
 * Returns the frame length (>= 0; zero-length frames are legal), DX_RING_EMPTY (-1) when
 * the ring is empty, DX_RING_ETOOBIG (-2) when dst_len is smaller than the frame (the frame
 * stays in the ring), DX_RING_EINVAL (-3) for a NULL ring.  Never blocks. */
#define DX_RING_EMPTY (-1)
int32_t dx_ring_pop(dx_ring *r, void *dst, uint32_t dst_len);

/* Consumer.  Drop every frame visible now; return how many were dropped.  Frames the
 * producer publishes concurrently may survive (they were not visible yet). */
uint32_t dx_ring_flush(dx_ring *r);

/* Number of frames stored / free slots (snapshots; see the contract above). */
uint32_t dx_ring_count(const dx_ring *r);
uint32_t dx_ring_free(const dx_ring *r);

#ifdef __cplusplus
}
#endif

#endif /* DX_RING_H */
