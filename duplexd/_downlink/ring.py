"""FrameRing: a lock-free single-producer / single-consumer ring of fixed-size frame slots.

A thin, pynacl-style wrapper (validate in Python, call C, check the result, raise) over
``native/dx_ring.c``, compiled by cffi into ``duplexd._native``.

Thread-safety contract (the same as the C one, see ``native/dx_ring.h``):

* exactly one *producer* at a time calls :meth:`FrameRing.push` / :meth:`FrameRing.push_many`
  (in duplexd: an utterance's synthesis worker thread, or the trio thread pushing its
  backlog while no worker runs);
* exactly one *consumer* thread calls :meth:`FrameRing.pop`, :meth:`FrameRing.pop_into` and
  :meth:`FrameRing.flush` (in duplexd: the session's writer task, `duplexd._downlink.writer`,
  on the trio thread; a barge-in flushes from there too);
* :attr:`FrameRing.count` / :attr:`FrameRing.free` may be read from either side (snapshots);
* :meth:`FrameRing.close` must not race with any other call: stop (join) the producer first.

No method blocks or allocates C memory after construction; ``push`` returns ``False`` on a
full ring instead of waiting, ``pop`` returns ``None`` on an empty one.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Final, NoReturn, Self

from duplexd._native import ffi, lib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["MAX_CAPACITY", "MAX_SLOT_BYTES", "FrameRing", "RingClosedError"]

MAX_CAPACITY: Final[int] = int(lib.DX_RING_MAX_CAPACITY)
MAX_SLOT_BYTES: Final[int] = int(lib.DX_RING_MAX_SLOT_BYTES)

_EFULL: Final[int] = int(lib.DX_RING_EFULL)
_EMPTY: Final[int] = int(lib.DX_RING_EMPTY)
_ETOOBIG: Final[int] = int(lib.DX_RING_ETOOBIG)

# Hot-path callables bound once (module globals are cheaper than attribute chains).
_push: Any = lib.dx_ring_push
_push_many: Any = lib.dx_ring_push_many
_pop: Any = lib.dx_ring_pop
_flush: Any = lib.dx_ring_flush
_count: Any = lib.dx_ring_count
_free: Any = lib.dx_ring_free
_from_buffer: Any = ffi.from_buffer
_unpack: Any = ffi.unpack
_NULL: Any = ffi.NULL


class RingClosedError(RuntimeError):
    """The ring was closed; it cannot be used any more."""


class FrameRing:
    """A ring of ``capacity`` slots, each holding one frame of up to ``slot_bytes`` bytes.

    ``capacity`` must be a power of two in 1..65536, ``slot_bytes`` in 1..65536; otherwise
    :class:`ValueError` (or :class:`TypeError` for non-integers) is raised.  Frames keep
    their own length (0..slot_bytes), so shorter and zero-length frames round-trip exactly.

    The C memory is freed by :meth:`close` (idempotent; also via ``with``) or, failing that,
    when the object is garbage collected.  After ``close`` every other method raises
    :class:`RingClosedError`.
    """

    __slots__ = ("__weakref__", "_buf", "_capacity", "_closed", "_r", "_slot_bytes")

    def __init__(self, capacity: int, slot_bytes: int) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool):
            raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
        if not isinstance(slot_bytes, int) or isinstance(slot_bytes, bool):
            raise TypeError(f"slot_bytes must be an int, not {type(slot_bytes).__name__}")
        if not 1 <= capacity <= MAX_CAPACITY or capacity & (capacity - 1):
            raise ValueError(
                f"capacity must be a power of two between 1 and {MAX_CAPACITY}, got {capacity}"
            )
        if not 1 <= slot_bytes <= MAX_SLOT_BYTES:
            raise ValueError(f"slot_bytes must be between 1 and {MAX_SLOT_BYTES}, got {slot_bytes}")
        raw = lib.dx_ring_create(capacity, slot_bytes)
        if raw == _NULL:
            raise MemoryError(f"cannot allocate a ring of {capacity} x {slot_bytes} bytes")
        self._r: Any = ffi.gc(raw, lib.dx_ring_destroy)
        self._buf: Any = ffi.new("char[]", slot_bytes)  # pop() scratch (consumer only)
        self._capacity = capacity
        self._slot_bytes = slot_bytes
        self._closed = False

    # -- producer ---------------------------------------------------------------------------

    def push(self, data: bytes | bytearray | memoryview) -> bool:
        """Copy one frame into the ring.  Producer thread only; never blocks.

        Returns ``True`` when stored, ``False`` when the ring is full (nothing stored).
        Raises :class:`ValueError` when ``len(data)`` (in bytes) exceeds ``slot_bytes``,
        :class:`TypeError` for a non-contiguous or non-buffer object.
        """
        if type(data) is bytes:
            rc = _push(self._r, data, len(data))
        else:
            p = _from_buffer(data)
            rc = _push(self._r, p, len(p))
        if rc == 0:
            return True
        if rc == _EFULL:
            return False
        self._raise(rc, data)

    def push_many(self, heads: Any, bodies: Any, n: int) -> int:  # any contiguous buffers
        """Push up to `n` frames in one call, frame i being the i-th n-th of `heads` followed
        by the i-th n-th of `bodies` (e.g. n audio headers and n frames of PCM: numpy arrays
        of n rows). Producer thread only; never blocks; the GIL is released while it copies.

        Returns how many were pushed: `n`, or fewer when the ring filled up (the others are
        not stored). Raises ValueError when a buffer's size is not a multiple of `n` or a
        frame would exceed `slot_bytes`, TypeError for a non-contiguous or non-buffer object.
        """
        if n <= 0:
            if n == 0:
                return 0
            raise ValueError(f"n must be >= 0, got {n}")
        h = _from_buffer(heads)
        b = _from_buffer(bodies)
        head_bytes, h_rest = divmod(len(h), n)
        body_bytes, b_rest = divmod(len(b), n)
        if h_rest or b_rest:
            raise ValueError(f"buffers of {len(h)} and {len(b)} bytes are not {n} frames")
        rc = _push_many(self._r, h, head_bytes, b, body_bytes, n)
        if rc >= 0:
            return rc  # type: ignore[no-any-return]
        if self._closed:
            raise RingClosedError("ring is closed")
        if rc == _ETOOBIG:
            raise ValueError(
                f"frames of {head_bytes + body_bytes} bytes exceed slot_bytes={self._slot_bytes}"
            )
        raise RuntimeError(f"dx_ring error {rc}")  # pragma: no cover - not reachable

    # -- consumer ---------------------------------------------------------------------------

    def pop(self) -> bytes | None:
        """Remove the oldest frame and return it as ``bytes``, or ``None`` if the ring is empty.

        Consumer thread only; never blocks.  A zero-length frame comes back as ``b""``.
        """
        buf = self._buf
        n = _pop(self._r, buf, self._slot_bytes)
        if n >= 0:
            return _unpack(buf, n)  # type: ignore[no-any-return]
        if n == _EMPTY:
            return None
        self._raise(n)

    def pop_into(self, buf: bytearray | memoryview) -> int:
        """Copy the oldest frame into the writable buffer ``buf`` and remove it from the ring.

        Returns the frame length, or 0 when the ring is empty (a zero-length frame also
        returns 0; check :attr:`count` first if you push those).  Raises :class:`ValueError`
        when ``buf`` is smaller than the frame -- the frame then stays in the ring.
        Consumer thread only; never blocks.
        """
        p = _from_buffer(buf, require_writable=True)
        n = _pop(self._r, p, len(p))
        if n >= 0:
            return n  # type: ignore[no-any-return]
        if n == _EMPTY:
            return 0
        self._raise(n, None, len(p))

    def flush(self) -> int:
        """Drop every frame visible now and return how many were dropped (barge-in).

        Consumer side only.  A frame the producer publishes concurrently may survive.
        """
        if self._closed:
            raise RingClosedError("ring is closed")
        return _flush(self._r)  # type: ignore[no-any-return]

    # -- either side ------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Frames currently stored (a snapshot)."""
        if self._closed:
            raise RingClosedError("ring is closed")
        return _count(self._r)  # type: ignore[no-any-return]

    @property
    def free(self) -> int:
        """Free slots right now (a snapshot)."""
        if self._closed:
            raise RingClosedError("ring is closed")
        return _free(self._r)  # type: ignore[no-any-return]

    @property
    def capacity(self) -> int:
        """Number of slots."""
        return self._capacity

    @property
    def slot_bytes(self) -> int:
        """Largest frame, in bytes."""
        return self._slot_bytes

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"count={_count(self._r)}"
        return f"<FrameRing capacity={self._capacity} slot_bytes={self._slot_bytes} {state}>"

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Free the C ring now.  Idempotent.  Must not race with push/pop on other threads."""
        if self._closed:
            return
        self._closed = True
        r, self._r = self._r, _NULL
        ffi.release(r)  # runs dx_ring_destroy now and disarms the gc hook

    def __enter__(self) -> Self:
        if self._closed:
            raise RingClosedError("ring is closed")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- errors (cold path) -----------------------------------------------------------------

    def _raise(self, rc: int, data: object = None, dst_len: int = 0) -> NoReturn:
        if self._closed:
            raise RingClosedError("ring is closed")
        if rc == _ETOOBIG:
            if data is not None:
                size = memoryview(data).nbytes  # type: ignore[arg-type]
                raise ValueError(f"frame of {size} bytes exceeds slot_bytes={self._slot_bytes}")
            raise ValueError(f"buffer of {dst_len} bytes is too small for the next frame")
        raise RuntimeError(f"dx_ring error {rc}")  # pragma: no cover - not reachable
