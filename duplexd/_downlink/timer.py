"""PreciseTimer: sub-100 µs absolute-deadline sleeps inside trio, via a Linux timerfd.

``trio.sleep_until`` rides on epoll_wait's millisecond timeout and so wakes up to ~1 ms late.
A timerfd is an hrtimer: armed with an absolute CLOCK_MONOTONIC deadline (nanoseconds), it
becomes readable the moment it expires, and epoll reports that right away.  trio's default
clock is ``time.perf_counter()`` plus a random offset, and on Linux ``perf_counter`` *is*
``clock_gettime(CLOCK_MONOTONIC)`` (checked at import), so trio deadlines convert exactly.

Where the timerfd is not available (non-Linux, or the clock check fails) and whenever the
running trio clock is not a real clock of that kind (e.g. ``trio.testing.MockClock`` in
tests), :meth:`PreciseTimer.sleep_until` is exactly ``trio.sleep_until``.

Which clock is running is told by its public behaviour, not its class (trio's ``SystemClock``
is private): a clock is *real* when it has a finite numeric ``offset`` attribute and its
``current_time()`` minus that offset reads ``time.perf_counter()`` (within
``_CLOCK_TOLERANCE_S``), which is exactly the conversion a deadline goes through.  trio's
default clock passes; ``MockClock`` has no ``offset`` and fails.  The verdict is taken once
per clock object and cached (the pacer asks on every tick).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import weakref
from types import TracebackType
from typing import Any, Final, Self, cast

import trio

from duplexd._native import lib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["TIMERFD_AVAILABLE", "PreciseTimer", "monotonic_ns", "set_thread_timer_slack_ns"]

#: Whether timerfd-backed precise sleeps can be used in this process.
TIMERFD_AVAILABLE: Final[bool] = (
    sys.platform.startswith("linux")
    and bool(lib.dx_timerfd_supported())
    and "CLOCK_MONOTONIC" in time.get_clock_info("perf_counter").implementation
)

#: How far ``clock.current_time() - clock.offset`` may stray from ``time.perf_counter()`` for
#: the clock to count as real: float rounding of the sum (ulps of ~1e5 s), nothing more.
_CLOCK_TOLERANCE_S: Final[float] = 1e-6

_arm: Any = lib.dx_timerfd_arm_abs_ns
_disarm: Any = lib.dx_timerfd_disarm
_clear: Any = lib.dx_timerfd_clear
_current_clock = trio.lowlevel.current_clock
_current_time = trio.current_time
_wait_readable = trio.lowlevel.wait_readable

# The last clock asked about and the verdict on it.  A trio run keeps one clock, so this is
# one identity comparison per call; the reference keeps the clock alive (and its id unique)
# until another clock is asked about.
_last_verdict: tuple[object, bool] = (object(), False)


def _reads_perf_counter(clock: object) -> bool:
    """Whether ``clock`` reads ``clock.offset + time.perf_counter()``, like trio's default."""
    offset = getattr(clock, "offset", None)
    if isinstance(offset, bool) or not isinstance(offset, int | float):
        return False
    if not math.isfinite(offset):
        return False
    before = time.perf_counter()
    now = cast(trio.abc.Clock, clock).current_time()
    after = time.perf_counter()
    return before - _CLOCK_TOLERANCE_S <= now - offset <= after + _CLOCK_TOLERANCE_S


def _is_real_clock(clock: object) -> bool:
    """:func:`_reads_perf_counter`, decided once per clock object (the pacer's hot path)."""
    global _last_verdict
    last, verdict = _last_verdict
    if last is not clock:
        verdict = _reads_perf_counter(clock)
        _last_verdict = (clock, verdict)
    return verdict


def monotonic_ns() -> int:
    """CLOCK_MONOTONIC now, in nanoseconds (the clock :class:`PreciseTimer` arms against)."""
    return time.monotonic_ns()


def set_thread_timer_slack_ns(ns: int) -> None:
    """Set the calling thread's timer slack (``prctl(PR_SET_TIMERSLACK)``), Linux only.

    Affects that thread's nanosleep/poll/epoll timeouts, not timerfd expirations.  ``0``
    resets to the thread's default; use ``1`` for the minimum.  Raises :class:`OSError`.
    """
    if ns < 0:
        raise ValueError(f"timer slack must be >= 0, got {ns}")
    rc = lib.dx_set_timer_slack_ns(ns)
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))


class PreciseTimer:
    """One timerfd for precise absolute-deadline sleeps on the trio thread.

    Use one per pacing task (only one task may sleep on a timer at a time; a second
    concurrent :meth:`sleep_until` raises :class:`trio.BusyResourceError`).  Close it with
    :meth:`close` or ``with``; after that :meth:`sleep_until` raises
    :class:`trio.ClosedResourceError`.  The fd is also closed if the object is collected.
    """

    __slots__ = ("__weakref__", "_busy", "_closed", "_deadline", "_fd", "_finalizer", "_offset")

    def __init__(self) -> None:
        self._fd = -1
        self._busy = False
        self._deadline = math.inf  # of the timerfd sleep in progress (trio time)
        self._offset = 0.0  # its clock's offset
        self._closed = False
        self._finalizer: weakref.finalize[Any, Any] | None = None
        if TIMERFD_AVAILABLE:
            fd = int(lib.dx_timerfd_create())
            if fd >= 0:
                self._fd = fd
                self._finalizer = weakref.finalize(self, os.close, fd)

    def precise_now(self) -> bool:
        """Whether a sleep started now would use the timerfd (real clock, timerfd open).

        A real clock is one whose time is ``offset + time.perf_counter()`` (see the module
        docstring); ``trio.testing.MockClock`` is not, and gets ``trio.sleep_until``.
        """
        return self._fd >= 0 and _is_real_clock(_current_clock())

    @property
    def precise(self) -> bool:
        """Whether this timer uses a timerfd (False: plain ``trio.sleep_until`` fallback)."""
        return self._fd >= 0

    @property
    def fd(self) -> int:
        """The timerfd, or -1 when falling back / closed."""
        return self._fd

    @property
    def closed(self) -> bool:
        return self._closed

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until trio's clock reads ``deadline`` (seconds, as ``trio.current_time()``).

        Like ``trio.sleep_until`` this is always a checkpoint, returns at once for a deadline
        in the past, and never returns before ``trio.current_time() >= deadline``; unlike it,
        with the default clock on Linux the wake-up is typically well under 0.1 ms late.

        Cancellation: ``trio.Cancelled`` propagates and the timer is left disarmed and
        cleared (nothing pending), ready for the next call.  If another task calls
        :meth:`close` meanwhile, the sleeper gets :class:`trio.ClosedResourceError`; if it
        calls :meth:`wake_earlier`, the sleep returns at that earlier deadline instead.
        """
        if self._closed:
            raise trio.ClosedResourceError("PreciseTimer is closed")
        clock = _current_clock()
        fd = self._fd
        if fd < 0 or not _is_real_clock(clock) or not math.isfinite(deadline):
            await trio.sleep_until(deadline)
            return
        if self._busy:
            raise trio.BusyResourceError("another task is already sleeping on this PreciseTimer")
        # trio time = clock.offset + perf_counter() = clock.offset + CLOCK_MONOTONIC
        offset: float = cast(Any, clock).offset
        if deadline <= _current_time():
            await trio.lowlevel.checkpoint()
            return
        self._busy = True
        self._deadline, self._offset = deadline, offset
        try:
            while True:
                self._arm(self._deadline)
                fired = False
                try:
                    await _wait_readable(fd)
                    fired = True
                finally:
                    # After close() the fd number may already belong to someone else.
                    if not self._closed:
                        if not fired:
                            _disarm(fd)
                        _clear(fd)
                # Float rounding can leave trio's clock a hair short of deadline: go again
                # (the re-armed deadline is then at most nanoseconds away).
                if _current_time() >= self._deadline:
                    return
        finally:
            self._busy = False
            self._deadline = math.inf

    def wake_earlier(self, deadline: float) -> bool:
        """Make the timerfd sleep in progress end at `deadline` (trio time) if that is earlier
        than its own; a deadline already past ends it at once. Synchronous, trio thread.

        Returns False when no timerfd sleep is in progress (none at all, or one that fell back
        to ``trio.sleep_until``): then the caller wakes the sleeper its own way (a cancel
        scope). Cheaper than a cancel: the sleeper wakes as if its deadline had come (one
        syscall here, no ``trio.Cancelled`` raised through it)."""
        if not self._busy or self._closed:  # (a timerfd sleep's deadline is finite)
            return False
        if deadline < self._deadline:
            self._deadline = deadline
            self._arm(deadline)
        return True

    def _arm(self, deadline: float) -> None:
        rc = _arm(self._fd, math.ceil((deadline - self._offset) * 1e9))
        if rc < 0:
            raise OSError(-rc, f"timerfd_settime: {os.strerror(-rc)}")

    def close(self) -> None:
        """Close the timerfd.  Idempotent.  Call it from the trio thread (or outside trio)."""
        if self._closed:
            return
        self._closed = True
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        # Outside trio.run notify_closing raises RuntimeError: then nothing can be waiting.
        with contextlib.suppress(RuntimeError):
            trio.lowlevel.notify_closing(fd)
        if self._finalizer is not None:
            self._finalizer()  # os.close(fd), exactly once

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("timerfd" if self._fd >= 0 else "fallback")
        return f"<PreciseTimer {state} fd={self._fd}>"
