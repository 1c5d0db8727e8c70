"""An engine's turns (`duplexd._server.synthesis`): at most `synthesis_threads` of its chunks
run at once, first come first served; an engine whose calls only wait is not limited."""

from __future__ import annotations

import os
import threading
import time

import pytest
import trio

from duplexd._server.lanes import SynthesisLanes
from duplexd._server.synthesis import close_offloads, synthesis_offloads, synthesis_threads
from duplexd.engines.registry import EngineSet
from duplexd.engines.tone import ToneEngine

pytestmark = pytest.mark.integration


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


async def test_the_daemons_turns_are_threads_of_the_engines_own() -> None:
    engine = Two()
    offload = synthesis_offloads(EngineSet.of(engine), trio.to_thread.run_sync)[engine.name]
    assert isinstance(offload, SynthesisLanes) and offload.threads == 2
    names = {await offload(lambda: threading.current_thread().name) for _ in range(5)}
    assert names <= {"duplexd-synthesis-two-0", "duplexd-synthesis-two-1"}
    close_offloads({engine.name: offload})
    with pytest.raises(trio.ClosedResourceError):
        await offload(int)


async def test_a_chunk_cancelled_while_it_waits_never_runs() -> None:
    lanes = SynthesisLanes(1, name="lanes-test")
    release, ran = threading.Event(), []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lanes, release.wait)  # holds the one thread
            await trio.sleep(0.05)
            with trio.move_on_after(0.05) as waited:
                await lanes(ran.append, 1)  # queued behind it, then cancelled
            assert waited.cancelled_caught and lanes.queued == 0
            release.set()
        assert await lanes(ran.append, 2) is None
        assert ran == [2]
    finally:
        release.set()
        lanes.close()


async def test_a_running_chunk_finishes_before_its_cancel_and_errors_come_back() -> None:
    lanes = SynthesisLanes(1, name="lanes-test")
    done: list[int] = []

    def slow() -> None:
        time.sleep(0.2)
        done.append(1)

    try:
        with trio.move_on_after(0.05) as scope:
            await lanes(slow)
            assert done == [1]  # it ran to its end first ...
            await trio.lowlevel.checkpoint()  # ... and the cancel comes at the next one
            done.append(2)
        assert scope.cancelled_caught and done == [1]
        with pytest.raises(ZeroDivisionError):
            await lanes(lambda: 1 / 0)
    finally:
        lanes.close()
    for _ in range(100):  # the thread ends once closed and idle
        if not any(t.name.startswith("lanes-test") for t in threading.enumerate()):
            break
        await trio.sleep(0.01)
    assert not any(t.name.startswith("lanes-test") for t in threading.enumerate())
