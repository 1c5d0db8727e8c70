"""An engine's turns (`duplexd._server.synthesis`): at most `synthesis_threads` of its chunks
run at once, first come first served, those that wait meanwhile in one batch (one worker-thread
call); an engine whose calls only wait is not limited."""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from typing import Any

import pytest
import trio

from duplexd._server.synthesis import EngineTurns, synthesis_offloads, synthesis_threads
from duplexd.engines.registry import EngineSet
from duplexd.engines.tone import ToneEngine

pytestmark = pytest.mark.integration


class FakeClock:
    """`duplexd._server.synthesis`'s clock (its `time.perf_counter`), moved only by the test:
    a batch's time runs out when a chunk says so, not when a loaded machine is slow."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    from duplexd._server import synthesis

    fake = FakeClock()
    monkeypatch.setattr(synthesis, "time", fake)
    return fake


class Waiting(ToneEngine):
    """An engine whose calls only wait for work done elsewhere."""

    synthesis_threads = None

    @property
    def name(self) -> str:
        return "waiting"


class Two(ToneEngine):
    synthesis_threads = 2

    @property
    def name(self) -> str:
        return "two"


def test_the_default_is_one_thread_per_usable_cpu() -> None:
    assert synthesis_threads(ToneEngine()) == len(os.sched_getaffinity(0))
    assert synthesis_threads(Waiting()) is None
    assert synthesis_threads(Two()) == 2


def test_vits_is_not_limited() -> None:
    from duplexd.engines.vits.engine import VitsEngine

    assert VitsEngine.synthesis_threads is None  # its batches must not be split


def test_a_bad_setting_is_refused() -> None:
    class Zero(Two):
        synthesis_threads = 0

    with pytest.raises(ValueError, match="synthesis_threads must be >= 1 or None"):
        synthesis_threads(Zero())


def test_only_an_engine_that_computes_takes_turns() -> None:
    offloads = synthesis_offloads(EngineSet.of(Two(), Waiting()), trio.to_thread.run_sync)
    assert set(offloads) == {"two"}  # "waiting": a piece is one call, as many at once as asked


async def test_chunks_take_turns() -> None:
    engine, most = Two(), 2
    offload = synthesis_offloads(EngineSet.of(engine), trio.to_thread.run_sync)[engine.name]
    lock = threading.Lock()
    running, peak, order = 0, 0, []

    def chunk(i: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            order.append(i)
        time.sleep(0.3)  # long enough that every call asked meanwhile overlaps
        with lock:
            running -= 1

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(offload, chunk, i)
            await trio.sleep(0.02)  # they ask in this order
    assert peak == most
    assert order == list(range(6))  # first come, first served


async def test_the_chunks_that_wait_meanwhile_go_in_one_batch_in_order(clock: FakeClock) -> None:
    # (the first chunk runs past the batch's time, by the test's clock: the batch ends with it)
    turns = EngineTurns(trio.to_thread.run_sync, threads=1, batch_s=0.05)
    running, release, order, results = threading.Event(), threading.Event(), [], {}

    def first() -> str:
        running.set()
        release.wait(5)  # holds the one turn while the others ask
        clock.now += 1.0  # ... past the batch's time
        order.append(0)
        return "first"

    def chunk(i: int) -> int:
        order.append(i)
        return i * 10

    async def ask(i: int) -> None:
        results[i] = await (turns(first) if i == 0 else turns(chunk, i))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, 0)
        await trio.to_thread.run_sync(running.wait, 5)
        for i in range(1, 6):
            nursery.start_soon(ask, i)
            await trio.sleep(0.02)  # they ask in this order
        release.set()
    assert order == list(range(6))
    assert results == {0: "first", **{i: i * 10 for i in range(1, 6)}}
    await counted(turns, chunks=6)
    assert turns.batches == 2  # the five waiting: one thread call


async def test_a_batch_stops_taking_chunks_after_its_time() -> None:
    turns = EngineTurns(trio.to_thread.run_sync, threads=1, batch_s=0.005)
    release = threading.Event()

    async with trio.open_nursery() as nursery:
        await hold(nursery, turns, release)
        for _ in range(4):
            nursery.start_soon(turns, time.sleep, 0.02)  # each longer than a batch may run
        await trio.sleep(0.05)
        release.set()
    await counted(turns, chunks=5)
    assert turns.batches == 5


async def test_a_chunk_cancelled_while_it_waits_never_runs() -> None:
    turns = EngineTurns(trio.to_thread.run_sync, threads=1)
    release, ran = threading.Event(), []

    async with trio.open_nursery() as nursery:
        await hold(nursery, turns, release)
        with trio.CancelScope() as scope:
            nursery.start_soon(turns, ran.append, "other")
            await trio.sleep(0.01)
            scope.cancel()
            await turns(ran.append, "cancelled")  # waits behind the first: taken out
        assert scope.cancelled_caught
        release.set()
    assert ran == ["other"]  # the chunk cancelled was never run; the one after it was
    await counted(turns, chunks=2)


async def test_a_chunk_cancelled_while_it_runs_finishes_first() -> None:
    turns = EngineTurns(trio.to_thread.run_sync, threads=1)
    started, release, ran = threading.Event(), threading.Event(), []

    def chunk() -> None:
        started.set()
        release.wait(5)
        ran.append("done")

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_when_running() -> None:
                await trio.to_thread.run_sync(started.wait, 5)
                scope.cancel()
                await trio.sleep(0.05)
                assert ran == []  # still waiting for the chunk, not abandoned
                release.set()

            nursery.start_soon(cancel_when_running)
            await turns(chunk)
    assert scope.cancelled_caught and ran == ["done"]


async def test_a_chunks_error_goes_to_its_own_session_only(clock: FakeClock) -> None:
    turns = EngineTurns(trio.to_thread.run_sync, threads=1, batch_s=0.05)
    release, results = threading.Event(), {}

    def bad() -> None:
        raise RuntimeError("engine failed on this text")

    async def ask(i: int) -> None:
        try:
            results[i] = await (turns(bad) if i == 2 else turns(int, i))
        except RuntimeError as exc:
            results[i] = str(exc)

    async with trio.open_nursery() as nursery:
        await hold(nursery, turns, release, clock)
        for i in range(4):
            nursery.start_soon(ask, i)
            await trio.sleep(0.02)
        release.set()
    assert results == {0: 0, 1: 1, 2: "engine failed on this text", 3: 3}
    await counted(turns, chunks=5)
    assert turns.batches == 2


async def test_a_chunk_that_ends_goes_on_before_a_slow_one_after_it_in_its_batch(
    clock: FakeClock,
) -> None:
    turns = EngineTurns(trio.to_thread.run_sync, threads=1, batch_s=1.0)
    release, slow_done, order = threading.Event(), threading.Event(), []

    def slow() -> None:
        time.sleep(0.3)
        slow_done.set()

    async def fast() -> None:
        await turns(order.append, "fast ran")
        order.append("slow had ended" if slow_done.is_set() else "fast went on first")

    async with trio.open_nursery() as nursery:
        await hold(nursery, turns, release)
        nursery.start_soon(fast)
        await trio.sleep(0.02)
        nursery.start_soon(turns, slow)
        await trio.sleep(0.02)
        release.set()  # the batch goes on (1 s): the fast chunk, then the slow one
    assert order == ["fast ran", "fast went on first"]
    await counted(turns, chunks=3)
    assert turns.batches == 1  # all three in one worker-thread call


async def test_when_no_thread_can_be_had_the_waiting_chunks_fail_and_the_daemon_goes_on() -> None:
    calls = 0

    async def offload(fn: Any, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("can't start new thread")
        return await trio.to_thread.run_sync(fn, *args)

    turns = EngineTurns(offload, threads=1)
    with pytest.raises(RuntimeError, match=r"^synthesis could not run: can't start new thread$"):
        await turns(int, 1)
    assert await turns(int, 2) == 2  # the next one has its thread


async def test_a_parked_runner_keeps_nothing_of_its_last_batch() -> None:
    class Piece:
        pass

    turns = EngineTurns(trio.to_thread.run_sync, threads=1)
    piece = Piece()
    gone = weakref.ref(piece)
    assert await turns(lambda p: p, piece) is piece
    del piece
    await trio.to_thread.run_sync(int)  # (trio's worker thread keeps its last job till its next)
    gc.collect()
    assert gone() is None


async def counted(turns: EngineTurns, chunks: int) -> None:
    """Wait until `turns` has counted `chunks` (its runner counts a batch once the batch's
    thread is back; each chunk's session goes on as soon as its own chunk ran, so the count
    may come a moment after the last session is done)."""
    with trio.fail_after(5):
        while turns.chunks < chunks:  # noqa: ASYNC110 (a counter, not an event: polled briefly)
            await trio.sleep(0.001)
    assert turns.chunks == chunks


async def hold(
    nursery: trio.Nursery,
    turns: EngineTurns,
    release: threading.Event,
    clock: FakeClock | None = None,
) -> None:
    """Start a chunk that holds the engine's one turn until `release` (and, with `clock`, runs
    past any batch's time); return once it runs."""
    running = threading.Event()

    def chunk() -> None:
        running.set()
        release.wait(5)
        if clock is not None:
            clock.now += 1000.0

    nursery.start_soon(turns, chunk)
    await trio.to_thread.run_sync(running.wait, 5)
