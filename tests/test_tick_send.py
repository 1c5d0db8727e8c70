"""The pacer's tick sends the frame that is due itself (`Downlink.on_tick` with a `send_now`),
and ticks run between any two task steps (`Pacer.poll`, `TicksBetweenSteps`), so a frame waits
for the one step in progress, not for a whole batch of ready tasks (issue 13: the pacing under
twelve attacks at once)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import trio
import trio.testing
from test_first_frame_grid import Events, push_utterance
from test_pacer import Recorder as Ticks
from test_pacer import _PreciseOnMockClock

from duplexd._downlink.contract import NOT_SENT, PARTLY_SENT, SENT, SendNowFn
from duplexd._downlink.pacer import (
    RESTART_SLOT_S,
    SHARE_MIN_STREAMS,
    SLOT_S,
    Pacer,
    open_pacer,
)
from duplexd._downlink.ring import FrameRing
from duplexd._downlink.writer import Downlink
from duplexd.protocol import frames as fr
from duplexd.protocol.codec import Decoder

pytestmark = pytest.mark.unit

RATE_HZ = 16_000
SAMPLES = fr.frame_samples(RATE_HZ)
ANSWER = b"an answer"


def seqs(data: bytes) -> list[int]:
    decoder = Decoder(peer="server")
    decoder.receive_data(data)
    return [f.seq for f in iter(decoder.next_frame, None) if isinstance(f, fr.Audio)]


class Wire:
    """What went out, in order: (virtual time, how, seqs or the answer). `send_now` answers
    from `results` by seq (SENT otherwise); `flush` takes `flush_s`."""

    def __init__(self, results: dict[int, int] | None = None, flush_s: float = 0.0) -> None:
        self.out: list[tuple[float, str, object]] = []
        self.results = results or {}
        self.flush_s = flush_s

    async def send(self, data: bytes) -> None:
        what = data if data == ANSWER else seqs(data)
        self.out.append((trio.current_time(), "task", what))

    def send_now(self, data: bytes) -> int:
        result = self.results.get(seqs(data)[0], SENT)
        if result != NOT_SENT:
            self.out.append((trio.current_time(), "now", seqs(data)))
        return result

    async def flush(self) -> None:
        await trio.sleep(self.flush_s)
        self.out.append((trio.current_time(), "flush", None))


def writer(
    pacer: Pacer, wire: Wire, frames: int, send_now: SendNowFn | None = None
) -> tuple[Downlink, FrameRing]:
    """A writer on `wire` (its `send_now` unless given) and its ring, for `frames` frames."""
    ring = FrameRing(16, fr.AUDIO_HEADER_BYTES + SAMPLES * fr.BYTES_PER_SAMPLE)
    dl = Downlink(
        ring=ring,
        send=wire.send,
        pacer=pacer,
        rate_hz=RATE_HZ,
        events=Events(frames),
        send_now=send_now or wire.send_now,
        flush=wire.flush,
    )
    return dl, ring


async def kicked(nursery: trio.Nursery, pacer: Pacer, wire: Wire, frames: int) -> Downlink:
    """A writer running on `wire`, an utterance of `frames` frames pushed and kicked at 1.0."""
    dl, ring = writer(pacer, wire, frames)
    nursery.start_soon(dl.run)
    await trio.sleep_until(1.0)
    push_utterance(ring, frames)
    dl.kick()
    return dl


async def play(wire: Wire, frames: int, *, answer_at: float | None = None) -> Downlink:
    """An utterance of `frames` frames kicked at 1.0 (and an answer queued at `answer_at`)."""
    async with open_pacer() as pacer, trio.open_nursery() as nursery:
        dl = await kicked(nursery, pacer, wire, frames)
        if answer_at is not None:
            await trio.sleep_until(answer_at)
            dl.send_control(ANSWER)
        await trio.sleep(1.0)
        dl.stop(grace_s=0.1)
    return dl


async def test_the_tick_sends_each_frame_itself_while_the_writer_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = Wire()
    dl = await play(wire, 4)
    assert wire.out == [  # the kicked first frame by the task, the others by their ticks
        (1.0, "task", [0]),
        (1.02, "now", [1]),
        (1.04, "now", [2]),
        (1.06, "now", [3]),
    ]
    assert dl.counters.frames_sent == 4
    assert dl.counters.pacing_error.count == 3  # (the first frame's is first audio's)


KICK_AT = 1.0003  # between two slots: at density the grid starts on the next one


@asynccontextmanager
async def at_density(
    wire: Wire, frames: int, *, answer_first: bool = False
) -> AsyncIterator[tuple[Pacer, Downlink]]:
    """A running writer on `wire` beside `SHARE_MIN_STREAMS` other streams (density), an
    utterance of `frames` frames pushed and kicked at `KICK_AT` (after an answer queued, with
    `answer_first`); the writer stops when the block ends."""
    timer = _PreciseOnMockClock()
    async with open_pacer(timer=timer) as pacer, trio.open_nursery() as nursery:  # type: ignore[arg-type]
        for _ in range(SHARE_MIN_STREAMS):
            pacer.schedule(Ticks(limit=10**6), 1.0)
        dl, ring = writer(pacer, wire, frames)
        nursery.start_soon(dl.run)
        await trio.sleep_until(KICK_AT)
        if answer_first:
            dl.send_control(ANSWER)
        push_utterance(ring, frames)
        dl.kick()
        yield pacer, dl
        dl.stop(grace_s=0.1)
        nursery.cancel_scope.cancel()


async def test_at_density_the_first_frame_waits_for_its_slot_as_the_frames_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = Wire()
    async with at_density(wire, 3) as (_, dl):
        await trio.sleep(1.0)
    slot = math.ceil(KICK_AT / SLOT_S) * SLOT_S
    assert slot > KICK_AT
    assert [(t, how) for t, how, _ in wire.out] == [
        (slot, "now"),  # not at the kick: the next frames' grid is the slot's
        (slot + 0.02, "now"),
        (slot + 0.04, "now"),
    ]
    assert [what for _, _, what in wire.out] == [[0], [1], [2]]
    assert dl.counters.pacing_error.count == 3
    assert dl.counters.pacing_error.max_s == 0.0


class BusyWire(Wire):
    """An answer takes `busy_s` to go out."""

    def __init__(self, busy_s: float) -> None:
        super().__init__()
        self.busy_s = busy_s

    async def send(self, data: bytes) -> None:
        if data == ANSWER:
            await trio.sleep(self.busy_s)
        await super().send(data)


async def test_at_density_a_first_frame_the_busy_task_sends_late_restarts_its_grid_there(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = BusyWire(0.003)  # an answer in flight over the first frame's slot
    async with at_density(wire, 3, answer_first=True) as (_, dl):
        await trio.sleep(1.0)
    assert [(t, how, what) for t, how, what in wire.out[:2]] == [
        (KICK_AT + 0.003, "task", ANSWER),
        (KICK_AT + 0.003, "task", [0]),  # 1 ms and more after its slot: the grid moves
    ]
    assert dl.counters.grids_restarted == 1
    grid = math.floor((KICK_AT + 0.003) / RESTART_SLOT_S) * RESTART_SLOT_S  # (0.5 ms before)
    assert [t for t, _, _ in wire.out[2:]] == pytest.approx([grid + 0.02, grid + 0.04])


async def test_at_density_an_interrupt_before_the_slot_sends_no_audio(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = Wire()
    async with at_density(wire, 3) as (pacer, dl):
        await trio.sleep(0.0005)  # (the slot is 1.7 ms away)
        dl.interrupt(1)
        await trio.sleep(0.5)
        assert not pacer.is_scheduled(dl)
    assert [what for _, _, what in wire.out if what != []] == []
    assert dl.counters.frames_sent == 0


async def test_at_density_a_pause_before_the_slot_starts_the_grid_on_a_slot_after_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = Wire()
    async with at_density(wire, 3) as (_, dl):
        await trio.sleep(0.0005)
        dl.pause()
        await trio.sleep_until(1.5007)
        dl.resume()
        await trio.sleep(0.5)
    slot = math.ceil(1.5007 / SLOT_S) * SLOT_S
    assert [t for t, _, _ in wire.out] == pytest.approx([slot, slot + 0.02, slot + 0.04])
    assert dl.counters.pacing_error.count == 3


async def test_a_frame_the_connection_cannot_take_at_once_goes_out_from_the_writer_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = Wire({2: NOT_SENT})
    dl = await play(wire, 4)
    assert wire.out == [
        (1.0, "task", [0]),
        (1.02, "now", [1]),
        (1.04, "task", [2]),  # the tick made it, the task sent it (at once, in order)
        (1.06, "now", [3]),
    ]
    assert dl.counters.frames_sent == 4
    assert dl.counters.pacing_error.count == 3  # each frame's counted once


async def test_the_rest_of_a_frame_goes_out_before_anything_else(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The socket took part of frame 1: the writer task sends the rest (here it waits 5 ms for
    the socket) before the answer queued meanwhile and before the next frame."""
    wire = Wire({1: PARTLY_SENT}, flush_s=0.005)
    dl = await play(wire, 3, answer_at=1.021)
    assert wire.out == [
        (1.0, "task", [0]),
        (1.02, "now", [1]),
        (1.025, "flush", None),
        (1.025, "task", ANSWER),
        (1.04, "now", [2]),
    ]
    assert dl.counters.frames_sent == 3


async def test_while_the_rest_waits_the_send_counts_as_blocked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that reads nothing leaves the rest waiting: `send_blocked_s` grows (what ends
    such a session with SLOW_CONSUMER), as for a send that waits."""
    wire = Wire({1: PARTLY_SENT}, flush_s=math.inf)
    async with open_pacer() as pacer, trio.open_nursery() as nursery:
        dl = await kicked(nursery, pacer, wire, 3)
        await trio.sleep(0.5)
        assert dl.send_blocked_s(trio.current_time()) == pytest.approx(0.48)
        dl.stop(grace_s=0.1)
    assert [how for _, how, _ in wire.out] == ["task", "now"]


async def test_the_writer_forgets_the_sessions_sends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = Wire()
    dl = await play(wire, 2)
    dl.forget_session()
    assert dl._send_now is None and dl._flush is None  # (the session's: no cycle)


class _NeverWakes:
    """A timer that says it is precise and never wakes the pacer's task by itself: only
    `poll` (or the instrument) can tick."""

    def __init__(self) -> None:
        self.woke = 0

    def precise_now(self) -> bool:
        return True

    async def sleep_until(self, deadline: float) -> None:
        await trio.sleep_forever()

    def wake_earlier(self, deadline: float) -> bool:
        return True

    def close(self) -> None:
        pass


class Recorder:
    def __init__(self) -> None:
        self.ticks: list[float] = []

    def on_tick(self, deadline: float) -> bool:
        self.ticks.append(deadline)
        return True


async def test_poll_ticks_what_is_due_whichever_task_calls_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(timer=_NeverWakes())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(pacer.run)
        stream = Recorder()
        pacer.schedule(stream, 1.0)
        await trio.sleep_until(0.999)
        pacer.poll()
        assert stream.ticks == []  # not due yet
        await trio.sleep_until(1.05)
        pacer.poll()
        assert stream.ticks == [1.0, 1.02, 1.04]  # the missed ones, on their deadlines
        nursery.cancel_scope.cancel()


async def test_a_tick_is_due_for_a_task_only_where_ticks_run_between_steps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(timer=_NeverWakes())  # type: ignore[arg-type]
    pacer.schedule(Recorder(), 1.0)
    await trio.sleep_until(1.0)
    assert not pacer.tick_due()  # (under MockClock `open_pacer` installs no instrument)
    pacer.polled = True
    assert pacer.tick_due()
    pacer.poll()
    assert not pacer.tick_due()  # the next is at 1.02


@pytest.mark.slow
async def test_on_a_real_clock_ticks_run_between_task_steps() -> None:
    """The pacer's own task never wakes (its timer does not fire): the stream is ticked all
    the same, by the instrument `open_pacer` installs, while another task runs."""
    async with open_pacer(timer=_NeverWakes()) as pacer:  # type: ignore[arg-type]
        assert pacer.polled
        stream = Recorder()
        pacer.schedule(stream, trio.current_time() + 0.005)
        with trio.move_on_after(5.0):
            while len(stream.ticks) < 3:  # noqa: ASYNC110 (its steps are the point)
                await trio.sleep(0.001)
    assert len(stream.ticks) >= 3
    assert np.diff(stream.ticks[:3]) == pytest.approx([0.02, 0.02])


async def test_two_ticks_before_the_writer_task_runs_lose_no_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A round that is behind ticks one stream twice at once; the first tick's frame could
    not go out (NOT_SENT): the second one's goes to the task too, after it."""
    wire = Wire({0: NOT_SENT, 1: NOT_SENT})
    async with open_pacer() as pacer, trio.open_nursery() as nursery:
        dl, ring = writer(pacer, wire, 3)
        nursery.start_soon(dl.run)
        await trio.sleep(1.0)
        push_utterance(ring, 3)
        assert dl.on_tick(0.98) and dl.on_tick(1.0)  # (the writer task has not run between)
        await trio.testing.wait_all_tasks_blocked()
        dl.stop(grace_s=0.1)
    assert wire.out == [(1.0, "task", [0]), (1.0, "task", [1])]
    assert dl.counters.frames_sent == 2


async def test_a_rest_still_goes_out_when_the_writer_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = Wire({1: PARTLY_SENT}, flush_s=0.005)
    async with open_pacer() as pacer, trio.open_nursery() as nursery:
        dl = await kicked(nursery, pacer, wire, 3)
        await trio.sleep_until(1.021)  # frame 1 went out in part at 1.02, its rest waits ...
        dl.stop(grace_s=0.1)  # ... when the writer is told to stop
    assert wire.out == [(1.0, "task", [0]), (1.02, "now", [1]), (1.025, "flush", None)]


async def test_a_tick_send_that_raises_ends_its_writer_not_the_pacer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def broken(data: bytes) -> int:
        raise RuntimeError("a bug in a session")

    caught: list[BaseException] = []
    wire = Wire()
    async with open_pacer() as pacer, trio.open_nursery() as nursery:
        dl, ring = writer(pacer, wire, 3, send_now=broken)

        async def run_writer() -> None:
            try:
                await dl.run()
            except RuntimeError as exc:
                caught.append(exc)

        nursery.start_soon(run_writer)
        bystander = Recorder()
        pacer.schedule(bystander, 1.0)
        await trio.sleep(1.0)
        push_utterance(ring, 3)
        dl.kick()
        await trio.sleep(0.105)
        nursery.cancel_scope.cancel()
    assert [str(e) for e in caught] == ["a bug in a session"]  # raised by the writer's task
    assert len(bystander.ticks) == 6  # 1.0 .. 1.1: the pacer went on


class _Broken:
    def on_tick(self, deadline: float) -> bool:
        raise RuntimeError("a tick that raises")


@pytest.mark.slow
async def test_a_tick_between_steps_that_raises_is_raised_by_the_pacers_task() -> None:
    """trio would disable an instrument that raises and only log it (the stream's slot lost:
    its audio would stop for good, silently); the pacer's task raises it instead."""
    with pytest.raises(BaseExceptionGroup) as info:
        async with open_pacer(timer=_NeverWakes()) as pacer:  # type: ignore[arg-type]
            pacer.schedule(_Broken(), trio.current_time() + 0.002)
            with trio.fail_after(5):
                while True:  # noqa: ASYNC110 (its steps run the tick)
                    await trio.sleep(0.001)
    assert info.group_contains(RuntimeError, match="a tick that raises", depth=None)
    assert not pacer.polled


class _RestartsThenLeaves:
    """Restarts its grid at its first tick and answers False (as a tick that raised after
    moving the grid would): the new grid must stay scheduled, ticked once per deadline."""

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self.ticks: list[float] = []

    def on_tick(self, deadline: float) -> bool:
        self.ticks.append(deadline)
        if len(self.ticks) == 1:
            self.pacer.restart(self, deadline + 0.005)
            return False
        return True


async def test_a_stream_that_restarts_its_grid_in_its_tick_keeps_the_new_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_pacer() as pacer:
        stream = _RestartsThenLeaves(pacer)
        pacer.schedule(stream, 1.0)
        await trio.sleep_until(1.05)
        assert pacer.is_scheduled(stream)
        pacer.unschedule(stream)
    assert stream.ticks == [1.0, 1.025, 1.045]
