"""A client's budgets (frames, loop time, synthesis) outlive its sessions: reconnecting does
not buy a fresh burst (`duplexd._server.limits.CarriedBudgets`)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from harness import open_pair
from test_bad_input import assert_healthy, expect_error, handshake

from duplexd._ops.settings import SessionLimits
from duplexd._server.limits import SESSION_OPEN_S, Budgets, CarriedBudgets
from duplexd.protocol import frames as fr
from duplexd.protocol.codec import encode

pytestmark = pytest.mark.unit
E = fr.ErrorCode
LIMITS = SessionLimits(
    ring_frames=1024, max_frames_per_s=10.0, frame_burst=100, resume_window_s=0.0
)
ALICE = ("10.0.0.1", "alice")


def spent(limits: SessionLimits, frames: float, at: float = 0.0) -> Budgets:
    budgets = Budgets.full(limits, at)
    budgets.frames.spend(frames)
    return budgets


def test_a_new_client_starts_full() -> None:
    carried = CarriedBudgets(LIMITS)
    assert carried.start(ALICE, 0.0).frames.tokens == 100
    assert len(carried) == 0


def test_a_client_starts_where_its_last_session_left_off_refilled_since() -> None:
    carried = CarriedBudgets(LIMITS)
    carried.leave(ALICE, spent(LIMITS, 100), now=0.0)
    assert carried.start(ALICE, 0.0).frames.tokens == 0
    assert carried.start(ALICE, 2.5).frames.tokens == 25  # 10 a second
    assert carried.start(("10.0.0.1", "bob"), 0.0).frames.tokens == 100  # another subject
    assert carried.start(("10.0.0.2", "alice"), 0.0).frames.tokens == 100  # another address


def test_overlapping_sessions_leave_the_emptier_budget() -> None:
    carried = CarriedBudgets(LIMITS)
    carried.leave(ALICE, spent(LIMITS, 90), now=0.0)
    carried.leave(ALICE, spent(LIMITS, 30), now=0.0)  # a calmer session closing later
    assert carried.start(ALICE, 0.0).frames.tokens == 10


def test_a_client_whose_budget_refilled_is_forgotten() -> None:
    carried = CarriedBudgets(LIMITS)
    carried.leave(ALICE, spent(LIMITS, 0), now=0.0)  # never dipped: nothing to keep
    assert len(carried) == 0
    carried.leave(ALICE, spent(LIMITS, 50), now=0.0)
    carried.leave(("10.0.0.2", ""), spent(LIMITS, 50), now=10.0)  # alice's refilled by then
    assert len(carried) == 1
    assert carried.start(ALICE, 10.0).frames.tokens == 100


def test_the_carried_clients_are_bounded() -> None:
    carried = CarriedBudgets(LIMITS, max_clients=3)
    for n in range(10):
        carried.leave((f"10.0.0.{n}", ""), spent(LIMITS, 100), now=0.0)
    assert len(carried) == 3
    assert carried.start(("10.0.0.9", ""), 0.0).frames.tokens == 0  # the latest are kept
    assert carried.start(("10.0.0.0", ""), 0.0).frames.tokens == 100


async def test_reconnecting_does_not_buy_a_fresh_frame_burst(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that spent its frame burst and reconnects at once finds it still spent; once
    it has waited for the bucket to refill, it is served again."""
    burst = encode(fr.Ping(1)) * 101
    async with open_pair(limits=LIMITS, sessions=2, carried=CarriedBudgets(LIMITS)) as pairs:
        first, again = pairs
        await handshake(first)
        await first.client.send_message(burst)
        await expect_error(first, E.LIMIT_EXCEEDED)
        await handshake(again)
        await again.client.send_message(encode(fr.Ping(2)) * 5)
        await expect_error(again, E.LIMIT_EXCEEDED)
        await trio.sleep(10.0)  # 100 frames at 10 a second
        await assert_healthy(await first.connect_again())


async def test_without_carrying_a_reconnect_would_start_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same client, the same burst, no `CarriedBudgets` (the control case)."""
    async with open_pair(limits=LIMITS, sessions=2) as (first, again):
        await handshake(first)
        await first.client.send_message(encode(fr.Ping(1)) * 101)
        await expect_error(first, E.LIMIT_EXCEEDED)
        await handshake(again)
        await again.client.send_message(encode(fr.Ping(2)) * 5)
        frames: list[fr.Frame] = []
        while len([f for f in frames if isinstance(f, fr.Pong)]) < 5:
            frames += await again.receive()


def test_a_failed_handshake_is_charged_to_its_client() -> None:
    carried = CarriedBudgets(LIMITS)
    for _ in range(26):  # 2 ms each against a 50 ms burst
        carried.charge(ALICE, SESSION_OPEN_S, now=0.0)
    share = carried.start(ALICE, 0.0).loop_share
    assert share.tokens == pytest.approx(LIMITS.input_burst_s - 26 * SESSION_OPEN_S)
    assert carried.wait_s(ALICE, 0.0) == pytest.approx(0.002 / LIMITS.input_share)


async def test_a_handshake_the_client_fails_costs_it_a_session_opening(
    autojump_clock: trio.testing.MockClock,
) -> None:
    carried = CarriedBudgets(LIMITS)
    async with open_pair(limits=LIMITS, carried=carried) as (pair,):
        await pair.send(fr.Hello(min_version=99, max_version=99))
        await expect_error(pair, E.UNSUPPORTED_VERSION)
        await pair.done.wait()
    share = carried.start(("10.0.0.1", ""), trio.current_time()).loop_share
    assert share.tokens == pytest.approx(LIMITS.input_burst_s - SESSION_OPEN_S, abs=1e-6)
