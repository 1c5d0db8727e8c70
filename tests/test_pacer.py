"""The shared pacer on trio's MockClock: exact absolute deadlines, no drift."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from duplexd._downlink.pacer import ADVANCE_MAX_S, open_pacer
from duplexd._ops.metrics import Histogram, pacing_histogram

pytestmark = pytest.mark.unit


class Recorder:
    def __init__(self, limit: int) -> None:
        self.ticks: list[tuple[float, float]] = []  # (deadline, now)
        self.limit = limit

    def on_tick(self, deadline: float) -> bool:
        self.ticks.append((deadline, trio.current_time()))
        return len(self.ticks) < self.limit


async def test_ticks_on_absolute_deadlines(autojump_clock: trio.testing.MockClock) -> None:
    async with open_pacer() as pacer:
        rec = Recorder(limit=5)
        pacer.schedule(rec, 1.0)
        await trio.sleep(2)
    assert rec.ticks == [(1.0 + n * 0.02, 1.0 + n * 0.02) for n in range(5)]
    assert not pacer.is_scheduled(rec)
    assert pacer.scheduled == 0


async def test_an_earlier_stream_wakes_a_sleeping_pacer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_pacer() as pacer:
        late, early = Recorder(limit=1), Recorder(limit=1)
        pacer.schedule(late, 5.0)
        await trio.sleep(1)  # the pacer now sleeps until 5.0
        pacer.schedule(early, 2.0)
        await trio.sleep(10)
    assert early.ticks == [(2.0, 2.0)]
    assert late.ticks == [(5.0, 5.0)]


async def test_streams_keep_their_own_grids(autojump_clock: trio.testing.MockClock) -> None:
    async with open_pacer() as pacer:
        recs = [Recorder(limit=50) for _ in range(10)]
        for i, rec in enumerate(recs):
            pacer.schedule(rec, 0.5 + i * 0.0013)
        await trio.sleep(5)
    for i, rec in enumerate(recs):
        anchor = 0.5 + i * 0.0013
        assert [d for d, _ in rec.ticks] == [anchor + n * 0.02 for n in range(50)]
        assert all(now == d for d, now in rec.ticks)


async def test_unschedule_and_reschedule(autojump_clock: trio.testing.MockClock) -> None:
    async with open_pacer() as pacer:
        rec = Recorder(limit=1000)
        pacer.schedule(rec, 0.0)
        pacer.schedule(rec, 0.5)  # already scheduled: no-op
        await trio.sleep(0.05)
        pacer.unschedule(rec)
        pacer.unschedule(rec)  # idempotent
        await trio.sleep(1)
        assert [d for d, _ in rec.ticks] == [0.0, 0.02, 0.04]
        pacer.schedule(rec, 3.0)  # a new grid
        await trio.sleep(2.0)  # until 3.05
    assert [round(d, 9) for d, _ in rec.ticks[3:]] == [3.0, 3.02, 3.04]


async def test_late_wakeups_do_not_drift(autojump_clock: trio.testing.MockClock) -> None:
    """A tick that runs late (the loop was busy) does not move later deadlines."""
    async with open_pacer() as pacer:
        rec = Recorder(limit=10)
        pacer.schedule(rec, 0.0)
        await trio.sleep(0.031)
        # block the event loop for 25 ms of virtual time
        autojump_clock.jump(0.025)
        await trio.sleep(1)
    deadlines = [d for d, _ in rec.ticks]
    assert deadlines == [n * 0.02 for n in range(10)]
    late = [(d, now) for d, now in rec.ticks if now != d]
    assert late and all(now - d < 0.02 for d, now in late)


async def test_advance_is_clamped() -> None:
    async with open_pacer() as pacer:
        for _ in range(10_000):
            pacer.observe_send_error(0.01)
        assert pacer.advance_s == ADVANCE_MAX_S
        for _ in range(10_000):
            pacer.observe_send_error(-0.01)
        assert pacer.advance_s == 0.0


def test_histogram_percentiles() -> None:
    h = pacing_histogram()
    for us in range(1, 101):  # 1..100 us
        h.record(us * 1e-6)
    h.record(-5e-6)  # negative errors count as 0
    assert h.count == 101
    assert h.percentile(50) == pytest.approx(50e-6, abs=10e-6)
    assert h.percentile(100) == pytest.approx(100e-6)
    assert h.max_s == pytest.approx(100e-6)
    big = pacing_histogram()
    big.record(1.0)  # beyond the last bucket: reported as the exact max
    assert big.percentile(99) == 1.0
    h.merge(big)
    assert h.count == 102 and h.max_s == 1.0
    with pytest.raises(ValueError):
        h.merge(Histogram())
    with pytest.raises(ValueError):
        h.percentile(0)
    assert Histogram().summary_ms()["count"] == 0


class _PreciseOnMockClock:
    """A timer that says it is precise (as the real one on a real clock), sleeping on trio's
    clock: the pacer's density paths under MockClock. Like the real one, a sleep in progress
    can be moved earlier (`wake_earlier`); it counts the sleeps a cancel ended."""

    def __init__(self) -> None:
        self._deadline = math.inf
        self._moved = trio.Event()
        self.cancelled = 0

    def precise_now(self) -> bool:
        return True

    async def sleep_until(self, deadline: float) -> None:
        self._deadline = deadline
        try:
            while trio.current_time() < self._deadline:
                self._moved = trio.Event()
                with trio.move_on_at(self._deadline):
                    await self._moved.wait()
        except trio.Cancelled:
            self.cancelled += 1
            raise
        finally:
            self._deadline = math.inf

    def wake_earlier(self, deadline: float) -> bool:
        if not math.isfinite(self._deadline):
            return False
        if deadline < self._deadline:
            self._deadline = deadline
            self._moved.set()
        return True

    def close(self) -> None:
        pass


async def test_a_stream_scheduled_while_the_pacer_sleeps_moves_its_wake_up_without_a_cancel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = _PreciseOnMockClock()
    async with open_pacer(timer=timer) as pacer:  # type: ignore[arg-type]
        far = Recorder(limit=2)
        pacer.schedule(far, 10.0)
        await trio.sleep(1.0)  # the pacer sleeps toward 10.0
        near = Recorder(limit=2)
        pacer.schedule(near, 1.5)
        await trio.sleep(10.0)
    assert near.ticks == [(1.5, 1.5), (1.52, 1.52)]  # on its deadlines, to the nanosecond
    assert far.ticks == [(10.0, 10.0), (10.02, 10.02)]
    assert timer.cancelled == 0  # (a cancel raises trio.Cancelled through the sleep: costly)


@pytest.mark.parametrize("exact", [False, True])
async def test_a_restarted_grid_starts_on_the_slot_of_its_frame_at_density_unless_exact(
    autojump_clock: trio.testing.MockClock, exact: bool
) -> None:
    from duplexd._downlink.pacer import RESTART_SLOT_S, SHARE_MIN_STREAMS

    async with open_pacer(timer=_PreciseOnMockClock()) as pacer:  # type: ignore[arg-type]
        for _ in range(SHARE_MIN_STREAMS):
            pacer.schedule(Recorder(limit=10**6), 1.0)
        late = Recorder(limit=3)
        pacer.schedule(late, 1.0)
        await trio.sleep(1.001)  # its first tick, at 1.0; its frame went out at 1.00087:
        pacer.restart(late, 1.00087, exact=exact)  # (exact: a kicked first frame's, off-slot)
        await trio.sleep(0.1)
    # on the slot that frame lies in (floor(1.00087 / 0.5 ms)), or exactly at it; 20 ms on
    start = 1.00087 if exact else 2001 * RESTART_SLOT_S
    assert [d for d, _ in late.ticks] == pytest.approx([1.0, start + 0.02, start + 0.04])


async def test_a_restarted_grid_starts_at_its_frame_when_sparse(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_pacer(timer=_PreciseOnMockClock()) as pacer:  # type: ignore[arg-type]
        late = Recorder(limit=3)
        pacer.schedule(late, 1.0)
        await trio.sleep(1.001)
        pacer.restart(late, 1.00087)
        await trio.sleep(0.1)
    assert [d for d, _ in late.ticks] == [1.0, 1.02087, 1.04087]


async def test_a_grid_can_start_from_its_second_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_pacer() as pacer:
        rec = Recorder(limit=3)
        pacer.schedule(rec, 1.0, from_tick=1)  # the caller sent the first frame itself
        await trio.sleep(2)
    assert rec.ticks == [(1.0 + n * 0.02, 1.0 + n * 0.02) for n in range(1, 4)]
