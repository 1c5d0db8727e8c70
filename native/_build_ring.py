"""cffi API-mode build script for ``duplexd._native`` (the SPSC frame ring and timerfd helpers).

Used by setup.py (``cffi_modules=["native/_build_ring.py:ffibuilder"]``); for a quick
in-place build run ``python native/_build_ring.py`` from the repository root.
"""

from __future__ import annotations

import os
import sys

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CDEF = """
typedef struct dx_ring dx_ring;

#define DX_RING_MAX_CAPACITY ...
#define DX_RING_MAX_SLOT_BYTES ...
#define DX_RING_EFULL ...
#define DX_RING_EMPTY ...
#define DX_RING_ETOOBIG ...
#define DX_RING_EINVAL ...

dx_ring *dx_ring_create(uint32_t capacity, uint32_t slot_bytes);
void dx_ring_destroy(dx_ring *r);
int dx_ring_push(dx_ring *r, const void *src, uint32_t n);
int32_t dx_ring_push_n(dx_ring *r, const void *src, uint32_t n, uint32_t count);
int32_t dx_ring_pop(dx_ring *r, void *dst, uint32_t dst_len);
const void *dx_ring_peek(dx_ring *r, uint32_t *n);
int dx_ring_advance(dx_ring *r);
uint32_t dx_ring_flush(dx_ring *r);
uint32_t dx_ring_count(const dx_ring *r);
uint32_t dx_ring_free(const dx_ring *r);
uint32_t dx_ring_capacity(const dx_ring *r);
uint32_t dx_ring_slot_bytes(const dx_ring *r);

int dx_timerfd_supported(void);
int dx_timerfd_create(void);
int dx_timerfd_arm_abs_ns(int fd, int64_t deadline_ns);
int dx_timerfd_disarm(int fd);
int dx_timerfd_clear(int fd);
int64_t dx_timerfd_remaining_ns(int fd);
int64_t dx_monotonic_ns(void);
int dx_set_timer_slack_ns(unsigned long ns);
int64_t dx_get_timer_slack_ns(void);
"""

# Paths relative to the project root: setuptools runs cffi_modules from there, and relative
# paths keep absolute build paths out of the sdist/wheel metadata.
_SOURCES = ["native/dx_ring.c", "native/dx_timer.c"]
_CFLAGS = ["-O2", "-std=c11"] if sys.platform != "win32" else []

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "duplexd._native",
    '#include "dx_ring.h"\n#include "dx_timer.h"\n',
    sources=_SOURCES,
    include_dirs=["native"],
    depends=["native/dx_ring.h", "native/dx_timer.h"],
    extra_compile_args=_CFLAGS,
)

if __name__ == "__main__":
    # In-place build for hacking without pip (intermediates: duplexd/_native.c and *.o, all
    # gitignored).  The module goes to duplexd/_native.abi3.so, the same file name that
    # `pip install -e .` produces, so the two never shadow each other (a stale
    # _native.cpython-311-*.so would win over _native.abi3.so at import).
    os.chdir(ROOT)
    out = ffibuilder.compile(tmpdir=".", target="_native.abi3.so", verbose=True)
    print(out)
