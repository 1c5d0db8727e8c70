"""An engine's turns (`duplexd._server.synthesis`): at most `synthesis_threads` of its chunks
run at once, first come first served; an engine whose calls only wait is not limited."""

from __future__ import annotations

import os
import threading
import time

import pytest
import trio

from duplexd._server.synthesis import synthesis_offloads, synthesis_threads
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
