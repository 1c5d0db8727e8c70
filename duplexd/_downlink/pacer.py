"""The process-wide pacer: one task, one precise timer, every session's 20 ms grid.

A timer task per session collapses at a few hundred sessions (each wake-up is a trio sleep with
its own cancel scope and epoll round trip). Instead one task keeps a heap of absolute deadlines,
sleeps on a Linux timerfd (`duplexd._downlink.timer.PreciseTimer`: sub-millisecond wake-ups, unlike
`trio.sleep_until`, whose epoll timeout has millisecond granularity) and, at each deadline,
calls the due streams' `on_tick(deadline)`. A stream's n-th deadline is always
``anchor + n * frame_s``: a late wake-up never drifts the schedule.

With many sessions, new grids are anchored on 2 ms slots (`Pacer.anchor`), so one wake-up
serves every session of a slot and the grids started so cost no more than 500 wake-ups a
second (a grid restarted late is on a 0.5 ms boundary, one moved by a stall anywhere). A
wake-up is what costs: on the project's VM 30-50 us of CPU to wake an idle process at all and
15-35 us more of trio's loop around it (`python -m bench.wakeups`), against ~2 us of Python
and ~5 us of writev for each frame a tick sends (`python -m bench.tick_cost`). 0.5 ms slots
made it ~1,350 wake-ups a second at 50 streamed sessions, 2 ms slots ~800 (the rest are the
clients' messages), and the daemon's CPU per session 20-27 % less (`bench/results/slots/`).
The price is first audio: an utterance's first frame waits for its slot, 1 ms on average.

Even a timerfd wake-up comes late (by a fraction of a millisecond on a VM; how much depends
on the machine). While only a few streams are scheduled the pacer learns that lateness (an
exponential average) and sleeps that much less, then spins on the clock for the remainder
(never more than `SPIN_MAX_S`, and only when it woke early), which centres the send times on
the deadlines. With many streams the loop is busy anyway
and spinning would cost real CPU, so it just sleeps (`SPIN_MAX_STREAMS`).

A frame leaves a little after its tick (the tick's own work, or a scheduler round when the
writer's task has to send it). Writers report each frame's signed send error
(`observe_send_error`) and the pacer ticks that much early on average (an integrating
controller, clamped to `ADVANCE_MAX_S`), so the frames themselves, not the ticks, are centred
on the deadlines.

When the pacer wakes more than `STALL_S` after a deadline, the event loop was held up (by
the daemon: a GC pause, a long computation, a starved process), not by any client. The streams
that missed their deadlines are re-anchored on a new grid starting now (one tick now, then every
`frame_s`) instead of being ticked for every missed deadline in a burst: their audio goes on
later, as it would after a pause, and each stall is logged and counted (`stalls`, `stall_s`).

An utterance's grid starts with its first frame: when that frame goes out late (the loop busy
with a burst of new utterances), its writer moves the stream's grid there (`restart`), so the
next frames are not sent early to catch up.

Ticks run in the pacer's task and, on a real clock, between any two task steps of the loop
(`TicksBetweenSteps`, `poll`): trio runs the tasks that are ready as a batch, and the pacer's
own wake-up waits for the batch in progress; with hostile clients' work in it, that was
milliseconds (`bench/results/attack-ticks/`).

`on_tick` must be cheap and must not raise: it runs on the pacer's hot path for every frame of
every session. The downlink writer (`duplexd._downlink.writer`) sends the frame from the tick
when the connection takes it at once (one non-blocking writev) and otherwise notes the
deadline and wakes its own task, which does the sending, so a slow client never delays
anybody else's frame.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import trio

from ..protocol.frames import FRAME_MS
from .timer import PreciseTimer

log = logging.getLogger("duplexd.pacer")

STALL_S = 0.1  # woken this long after a deadline: the loop stalled; re-anchor, do not burst
STALL_LOG_INTERVAL_S = 1.0  # at most one stall log line this often
SPIN_MAX_S = 0.0005  # never spin longer than this per wake-up
SPIN_MAX_STREAMS = 4  # spin only while at most this many streams are scheduled
SLOT_S = 0.002  # with SHARE_MIN_STREAMS or more, new grids start on the next 2 ms slot
RESTART_SLOT_S = 0.0005  # ... and restarted ones on the 0.5 ms boundary before their frame
SHARE_MIN_STREAMS = 4
ADVANCE_MAX_S = 0.0005  # never tick more than this ahead of a deadline
_LATE_EWMA_ALPHA = 0.05
_ADVANCE_GAIN = 0.02
_LEAD_FACTOR = 1.25


class Paced(Protocol):
    def on_tick(self, deadline: float) -> bool:
        """Called at (just after) `deadline`; return False to leave the schedule."""
        ...


class _Slot:
    __slots__ = ("anchor", "live", "n", "stream")

    def __init__(self, stream: Paced, anchor: float) -> None:
        self.stream = stream
        self.anchor = anchor
        self.n = 0
        self.live = True


class Pacer:
    """Ticks every scheduled stream every `frame_s` seconds on absolute deadlines.

    Use `open_pacer()`; `schedule`/`unschedule` are synchronous and must be called from the
    trio thread.
    """

    def __init__(self, *, frame_s: float = FRAME_MS / 1000, timer: PreciseTimer | None = None):
        if frame_s <= 0:
            raise ValueError("frame_s must be positive")
        self.frame_s = frame_s
        self._timer = timer if timer is not None else PreciseTimer()
        self._heap: list[tuple[float, int, _Slot]] = []
        self._slots: dict[Paced, _Slot] = {}
        self._order = itertools.count()
        self._sleep_scope: trio.CancelScope | None = None
        self._sleep_target = float("inf")
        self._idle = trio.Event()
        self.polled = False  # ticked between task steps too (`open_pacer`)
        self._failed: Exception | None = None  # what a tick between task steps raised
        self.ticks = 0
        self.wakeups = 0
        self.spin_s = 0.0  # total time spent spinning
        self._late_ewma_s = 0.0  # how late the timer wakes, on average
        self.advance_s = 0.0  # ticks happen this much before the deadlines
        self.stalls = 0  # wake-ups more than STALL_S after a deadline (the loop was held up)
        self.stall_s = 0.0  # their total lateness
        self._stall_logged_at = -math.inf

    @property
    def scheduled(self) -> int:
        """How many streams are on the schedule now."""
        return len(self._slots)

    def is_scheduled(self, stream: Paced) -> bool:
        return stream in self._slots

    def anchor(self, now: float) -> float:
        """Where a grid starting `now` should be anchored.

        At density (`SHARE_MIN_STREAMS` or more streams scheduled, real clock) it is the next
        `SLOT_S` boundary, so sessions share wake-ups (grids started so need at most 10 per
        20 ms however many sessions there are) at the cost of at most 2 ms of first audio.
        Otherwise `now`.
        """
        if len(self._slots) < SHARE_MIN_STREAMS or not self._timer.precise_now():
            return now
        return math.ceil(now / SLOT_S) * SLOT_S

    def schedule(self, stream: Paced, anchor: float, *, from_tick: int = 0) -> None:
        """Tick `stream` on the grid `anchor + n * frame_s`, from tick `from_tick` on (1: the
        caller took the first itself). No-op if already scheduled."""
        if stream in self._slots:
            return
        slot = _Slot(stream, anchor)
        slot.n = from_tick
        self._slots[stream] = slot
        first_deadline = anchor + from_tick * self.frame_s
        heapq.heappush(self._heap, (first_deadline, next(self._order), slot))
        if first_deadline < self._sleep_target and self._sleep_scope is not None:
            self._sleep_target = first_deadline  # (the spin after the wake-up stops here)
            if not self._timer.wake_earlier(first_deadline - self.advance_s):
                self._sleep_scope.cancel()
        self._idle.set()

    def restart(self, stream: Paced, sent_at: float, *, exact: bool = False) -> None:
        """`stream` sent its frame at `sent_at`, not on its deadline: its grid starts there
        now (at density, unless `exact`, on the `RESTART_SLOT_S` boundary just before: the
        next frames leave at most that much early against the late one, which a player does
        not hear; a whole `SLOT_S` would be heard as jitter), its next tick a frame later."""
        self.unschedule(stream)
        if not exact and len(self._slots) >= SHARE_MIN_STREAMS and self._timer.precise_now():
            sent_at = math.floor(sent_at / RESTART_SLOT_S) * RESTART_SLOT_S
        self.schedule(stream, sent_at + self.frame_s)

    def unschedule(self, stream: Paced) -> None:
        """Stop ticking `stream` (its heap entry is dropped lazily). No-op if not scheduled."""
        slot = self._slots.pop(stream, None)
        if slot is not None:
            slot.live = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the schedule forever. Cancelling it stops this task's ticking (those between task
        steps end with `open_pacer`); nothing else is left."""
        task_status.started()
        heap = self._heap
        while True:
            if self._failed is not None:
                failed, self._failed = self._failed, None
                raise failed
            if not heap:
                self._idle = trio.Event()
                await self._idle.wait()
                continue
            deadline = heap[0][0] - self.advance_s
            slept = deadline > trio.current_time()
            if slept:
                await self._sleep_until(deadline)
                if self._failed is not None:  # (`fail` ended the sleep: raise it first)
                    continue
            self._round(trio.current_time() + self.advance_s)
            if not slept:  # behind schedule: still let others run between rounds
                await trio.lowlevel.checkpoint()

    def tick_due(self) -> bool:
        """Whether a tick is due now and ticks run between task steps (`open_pacer`): then a
        task doing bounded work of a client's should end its step (a checkpoint) so that the
        tick runs at once, not after the rest of its work."""
        heap = self._heap
        return self.polled and bool(heap) and heap[0][0] - self.advance_s <= trio.current_time()

    def fail(self, exc: Exception) -> None:
        """A tick run between task steps raised `exc` (a bug): ticks run in the pacer's task
        only from now on, which raises it, as if it had been raised there."""
        self.polled = False
        self._failed = exc
        if self._sleep_scope is not None:
            self._sleep_scope.cancel()
        self._idle.set()

    def poll(self) -> None:
        """Tick what is due now, whichever task runs (`open_pacer`'s instrument calls it
        between any two task steps)."""
        heap = self._heap
        if heap:
            now = trio.current_time() + self.advance_s
            if heap[0][0] <= now:
                self._round(now)

    def _round(self, now: float) -> None:
        """Tick every stream whose deadline is at or before `now`."""
        heap = self._heap
        frame_s = self.frame_s
        if heap and now - heap[0][0] > STALL_S:
            self._stalled(now - heap[0][0])
        while heap and heap[0][0] <= now:
            due, _, slot = heapq.heappop(heap)
            if not slot.live:
                continue
            self.ticks += 1
            if slot.stream.on_tick(due):
                if not slot.live:  # (it restarted its grid: a new slot is scheduled)
                    continue
                if now - due > STALL_S:  # missed deadlines: a new grid from now, no burst
                    slot.anchor, slot.n = now, 0
                slot.n += 1
                heapq.heappush(heap, (slot.anchor + slot.n * frame_s, next(self._order), slot))
            elif self._slots.get(slot.stream) is slot:  # (not a new slot of a restart)
                slot.live = False
                del self._slots[slot.stream]
            else:
                slot.live = False

    def _stalled(self, late_s: float) -> None:
        """The loop woke the pacer `late_s` after a deadline: the daemon's stall, not a client's."""
        self.stalls += 1
        self.stall_s += late_s
        now = trio.current_time()
        if now - self._stall_logged_at >= STALL_LOG_INTERVAL_S:
            self._stall_logged_at = now
            log.warning(
                "event loop stalled",
                extra={
                    "late_ms": round(late_s * 1e3, 3),
                    "streams": len(self._slots),
                    "stalls": self.stalls,
                },
            )

    def precise_now(self) -> bool:
        """Whether this pacer is on a real clock with a precise timer (False under MockClock)."""
        return self._timer.precise_now()

    def observe_send_error(self, error_s: float) -> None:
        """A writer sent a frame `error_s` after (negative: before) its deadline."""
        advance = self.advance_s + _ADVANCE_GAIN * error_s
        self.advance_s = min(max(advance, 0.0), ADVANCE_MAX_S)

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep until `deadline` (or until an earlier stream is scheduled)."""
        precise = self._timer.precise_now()
        lead = 0.0
        if precise and len(self._slots) <= SPIN_MAX_STREAMS:
            lead = min(self._late_ewma_s * _LEAD_FACTOR, SPIN_MAX_S)
        target = deadline - lead
        with trio.CancelScope() as scope:
            self._sleep_scope = scope
            self._sleep_target = deadline
            await self._timer.sleep_until(target)
        moved = self._sleep_target < deadline  # `schedule` woke it earlier: no lateness to learn
        self._sleep_scope = None
        self._sleep_target = float("inf")
        self.wakeups += 1
        if scope.cancelled_caught or moved or not precise:
            return
        now = trio.current_time()
        self._late_ewma_s += _LATE_EWMA_ALPHA * (now - target - self._late_ewma_s)
        if lead and now < deadline:
            while trio.current_time() < deadline:  # bounded by `lead` <= SPIN_MAX_S
                pass
            self.spin_s += trio.current_time() - now

    def close(self) -> None:
        self._timer.close()


@asynccontextmanager
async def open_pacer(
    *, frame_ms: int = FRAME_MS, timer: PreciseTimer | None = None
) -> AsyncIterator[Pacer]:
    """Run a `Pacer` in a background task for the duration of the block, and (on a real clock)
    tick between any two task steps too (`TicksBetweenSteps`)."""
    pacer = Pacer(frame_s=frame_ms / 1000, timer=timer)
    between = TicksBetweenSteps(pacer) if pacer.precise_now() else None
    try:
        if between is not None:
            trio.lowlevel.add_instrument(between)
            pacer.polled = True
        async with trio.open_nursery() as nursery:
            await nursery.start(pacer.run)
            yield pacer
            nursery.cancel_scope.cancel()
    finally:
        try:
            if between is not None:
                with contextlib.suppress(KeyError):  # (not there if trio took it out)
                    trio.lowlevel.remove_instrument(between)
        finally:
            pacer.close()


class TicksBetweenSteps(trio.abc.Instrument):
    """Runs the pacer's due ticks before any task's step (`Pacer.poll`), not only when its
    own task wakes up.

    trio runs every task that is ready at once as one batch, and a task woken by a timer (the
    pacer's) runs only in the batch after the one in progress: behind all of it. When many
    clients' work is ready at once (each bounded, `duplexd._server.limits`), that is a few
    milliseconds. Between two steps a tick runs as soon as its deadline has come, whatever
    the batch holds: the writers send their frames from the tick (`Downlink.on_tick`), so a
    frame waits at most for the one step in progress. Costs a clock read per task step."""

    def __init__(self, pacer: Pacer) -> None:
        self._pacer = pacer

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        pacer = self._pacer
        if not pacer.polled:
            return
        try:
            pacer.poll()
        except Exception as exc:  # (trio would disable the instrument and only log it)
            pacer.fail(exc)
