"""Tests for duplexd._downlink.timer.PreciseTimer (timerfd-backed absolute sleeps in trio)."""

from __future__ import annotations

import os
import time

import pytest
import trio
import trio.testing
from harness import no_collection_pauses

from duplexd import _native  # type: ignore[attr-defined,unused-ignore]
from duplexd._downlink import timer as timer_module
from duplexd._downlink.timer import (
    TIMERFD_AVAILABLE,
    PreciseTimer,
    monotonic_ns,
    set_thread_timer_slack_ns,
)

lib = _native.lib

unit = pytest.mark.unit
needs_timerfd = pytest.mark.skipif(not TIMERFD_AVAILABLE, reason="no timerfd on this platform")


@unit
def test_monotonic_ns_is_clock_monotonic() -> None:
    a = monotonic_ns()
    b = int(lib.dx_monotonic_ns())
    c = time.perf_counter_ns()
    d = monotonic_ns()
    assert a <= b <= d
    # perf_counter is CLOCK_MONOTONIC on Linux: the premise of the trio-time conversion.
    if TIMERFD_AVAILABLE:
        assert b <= c <= d


@unit
async def test_mock_clock_falls_back_to_exact_virtual_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with PreciseTimer() as t:
        start = trio.current_time()
        await t.sleep_until(start + 0.123)
        assert trio.current_time() == start + 0.123
        for k in range(1, 6):
            await t.sleep_until(start + 0.123 + 0.02 * k)
            assert trio.current_time() == start + 0.123 + 0.02 * k
        # A deadline in the past returns at once.
        now = trio.current_time()
        await t.sleep_until(now - 5)
        assert trio.current_time() == now


class _FakeClock(trio.abc.Clock):
    """A clock with an ``offset`` attribute that reads ``perf_counter() + skew`` past it."""

    def __init__(self, offset: object, skew: float = 0.0) -> None:
        self.offset = offset
        self.skew = skew
        self.reads = 0

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        self.reads += 1
        base = self.offset if isinstance(self.offset, float) else 0.0
        return base + time.perf_counter() + self.skew

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return deadline - self.current_time()


@unit
@pytest.mark.parametrize(
    ("clock", "real"),
    [
        (_FakeClock(123_456.789), True),
        (_FakeClock(0.0), True),
        (_FakeClock(123_456.789, skew=0.001), False),  # a clock running a millisecond apart
        (_FakeClock(123_456.789, skew=-0.001), False),
        (_FakeClock("123456.789"), False),  # offset not a number
        (_FakeClock(True), False),
        (_FakeClock(float("nan")), False),
        (trio.testing.MockClock(), False),  # no offset at all
        (trio.testing.MockClock(rate=1.0), False),
    ],
)
def test_a_real_clock_is_told_by_its_behaviour(clock: trio.abc.Clock, real: bool) -> None:
    assert timer_module._reads_perf_counter(clock) is real
    assert timer_module._is_real_clock(clock) is real


@unit
def test_the_verdict_is_taken_once_per_clock() -> None:
    a, b = _FakeClock(10.0), _FakeClock(20.0)
    assert timer_module._is_real_clock(a) and timer_module._is_real_clock(a)
    assert a.reads == 1
    assert timer_module._is_real_clock(b) and b.reads == 1


@unit
async def test_trio_default_clock_is_real() -> None:
    assert timer_module._is_real_clock(trio.lowlevel.current_clock())
    with PreciseTimer() as t:
        assert t.precise_now() is t.precise is TIMERFD_AVAILABLE


@unit
async def test_mock_clock_is_not_precise_and_never_arms_the_timerfd(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def arm(fd: int, deadline_ns: int) -> int:
        raise AssertionError("the timerfd was armed under a MockClock")

    monkeypatch.setattr(timer_module, "_arm", arm)
    with PreciseTimer() as t:
        assert t.precise is TIMERFD_AVAILABLE  # the timerfd is there: the clock says no
        assert not t.precise_now()
        start = trio.current_time()
        await t.sleep_until(start + 0.5)
        assert trio.current_time() == start + 0.5


@unit
def test_mock_clock_without_autojump() -> None:
    clock = trio.testing.MockClock()

    async def main() -> None:
        with PreciseTimer() as t:
            async with trio.open_nursery() as nursery:
                done = trio.Event()

                async def sleeper() -> None:
                    await t.sleep_until(10.0)
                    assert trio.current_time() == 10.0
                    done.set()

                nursery.start_soon(sleeper)
                await trio.testing.wait_all_tasks_blocked()
                clock.jump(9.5)
                await trio.testing.wait_all_tasks_blocked()
                assert not done.is_set()
                clock.jump(0.5)
                await done.wait()

    trio.run(main, clock=clock)


@unit
async def test_cancellation_in_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    with PreciseTimer() as t, trio.move_on_after(1) as cs:
        await t.sleep_until(trio.current_time() + 10)
    assert cs.cancelled_caught


@needs_timerfd
@unit
async def test_real_clock_uses_timerfd_and_never_wakes_early() -> None:
    with PreciseTimer() as t:
        assert t.precise and t.fd >= 0
        for _ in range(5):
            deadline = trio.current_time() + 0.002
            await t.sleep_until(deadline)
            assert trio.current_time() >= deadline
        assert lib.dx_timerfd_remaining_ns(t.fd) == 0  # one-shot: nothing armed after wake


@needs_timerfd
@unit
async def test_past_deadline_is_a_checkpoint_and_returns_at_once() -> None:
    with PreciseTimer() as t:
        before = trio.current_time()
        await t.sleep_until(before - 1.0)
        assert trio.current_time() - before < 0.5  # at once, not a second later
        # Still a checkpoint: an already-cancelled scope raises.
        with trio.CancelScope() as cs:
            cs.cancel()
            await t.sleep_until(before - 1.0)
            pytest.fail("not a checkpoint")  # pragma: no cover
        assert cs.cancelled_caught


@needs_timerfd
@unit
async def test_cancellation_leaves_no_armed_timer() -> None:
    with PreciseTimer() as t:
        with trio.move_on_after(0.005) as cs:
            await t.sleep_until(trio.current_time() + 10)
        assert cs.cancelled_caught
        assert lib.dx_timerfd_remaining_ns(t.fd) == 0
        assert lib.dx_timerfd_clear(t.fd) == 0
        # Still usable afterwards.
        deadline = trio.current_time() + 0.002
        await t.sleep_until(deadline)
        assert trio.current_time() >= deadline


@needs_timerfd
@unit
async def test_wake_earlier_moves_a_sleep_in_progress_without_cancelling_it() -> None:
    with PreciseTimer() as t:
        assert not t.wake_earlier(trio.current_time())  # nobody sleeps: the caller must wake
        woke: list[float] = []

        async def sleeper() -> None:
            await t.sleep_until(trio.current_time() + 10)  # a Cancelled would end the test
            woke.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper)
            await trio.testing.wait_all_tasks_blocked()
            soon = trio.current_time() + 0.003
            assert t.wake_earlier(soon)
            assert t.wake_earlier(soon + 5)  # (a later deadline changes nothing)
            remaining_ns = lib.dx_timerfd_remaining_ns(t.fd)
            assert 0 < remaining_ns <= 3_000_000
        assert len(woke) == 1 and soon <= woke[0] < soon + 1.0
        assert lib.dx_timerfd_remaining_ns(t.fd) == 0
        assert not t.wake_earlier(trio.current_time())  # the sleep is over

        async with trio.open_nursery() as nursery:  # a deadline already past: at once
            nursery.start_soon(sleeper)
            await trio.testing.wait_all_tasks_blocked()
            assert t.wake_earlier(trio.current_time() - 1.0)
        assert len(woke) == 2


@unit
async def test_wake_earlier_under_a_mock_clock_leaves_the_waking_to_the_caller(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with PreciseTimer() as t:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(t.sleep_until, 10.0)
            await trio.testing.wait_all_tasks_blocked()
            assert not t.wake_earlier(1.0)  # trio.sleep_until's sleep: a cancel scope's job
            nursery.cancel_scope.cancel()


@needs_timerfd
@unit
async def test_second_concurrent_sleeper_is_busy() -> None:
    with PreciseTimer() as t:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(t.sleep_until, trio.current_time() + 10)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await t.sleep_until(trio.current_time() + 1)
            nursery.cancel_scope.cancel()
        assert lib.dx_timerfd_remaining_ns(t.fd) == 0


@unit
async def test_close_is_idempotent_and_sleep_after_close_raises() -> None:
    t = PreciseTimer()
    fd = t.fd
    t.close()
    t.close()
    assert t.closed and t.fd == -1 and "closed" in repr(t)
    if fd >= 0:
        with pytest.raises(OSError):
            os.fstat(fd)
    with pytest.raises(trio.ClosedResourceError):
        await t.sleep_until(trio.current_time())


@unit
def test_close_outside_trio() -> None:
    t = PreciseTimer()
    t.close()
    t.close()


@needs_timerfd
@unit
async def test_close_wakes_a_waiter_with_closed_resource_error() -> None:
    t = PreciseTimer()

    async def sleeper() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await t.sleep_until(trio.current_time() + 10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper)
        await trio.testing.wait_all_tasks_blocked()
        t.close()


@needs_timerfd
@unit
def test_timer_slack() -> None:
    old = int(lib.dx_get_timer_slack_ns())
    try:
        set_thread_timer_slack_ns(1)
        assert lib.dx_get_timer_slack_ns() == 1
    finally:
        set_thread_timer_slack_ns(old)
    with pytest.raises(ValueError):
        set_thread_timer_slack_ns(-1)


def _lateness_us(samples: list[float]) -> tuple[float, float, float]:
    s = sorted(samples)
    return s[len(s) // 2] * 1e6, s[int(len(s) * 0.95)] * 1e6, s[-1] * 1e6


@needs_timerfd
@pytest.mark.slow
async def test_precise_sleeps_on_absolute_deadlines() -> None:
    late_precise: list[float] = []
    late_trio: list[float] = []
    with no_collection_pauses(), PreciseTimer() as t:  # (pytest's heap: tens of ms a pass)
        deadline = trio.current_time() + 0.02
        for _ in range(50):
            await t.sleep_until(deadline)
            late_precise.append(trio.current_time() - deadline)
            deadline += 0.02
        deadline = trio.current_time() + 0.02
        for _ in range(50):
            await trio.sleep_until(deadline)
            late_trio.append(trio.current_time() - deadline)
            deadline += 0.02
    p = _lateness_us(late_precise)
    q = _lateness_us(late_trio)
    print(f"\nPreciseTimer lateness p50/p95/max: {p[0]:.0f}/{p[1]:.0f}/{p[2]:.0f} us")
    print(f"trio.sleep_until lateness p50/p95/max: {q[0]:.0f}/{q[1]:.0f}/{q[2]:.0f} us")
    assert min(late_precise) >= 0  # never early
    # typically p50 ~0.2-0.3 ms (bench/results/README.md); the bound is the house's generous
    # one for a shared 2-core VM, where one wake-up came 5.2 ms late in a CI run (its p95 1.5
    # ms: the machine, not the timer); a missed wake-up would be a whole period (20 ms) late
    assert p[0] < 1000, p
    assert max(late_precise) < 0.015, p
