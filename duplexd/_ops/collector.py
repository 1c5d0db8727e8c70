"""Python's cyclic garbage collector, kept from stalling the pacer: the process's one policy.

CPython's full collection (generation 2) walks every object the collector tracks, holding the
GIL, so it stalls the event loop (the pacer, every session) for as long as that takes. On the
project's 2-core VM that is about 1 µs per object: their references are scattered in memory.
With 50 playing sessions and the uplink's models loaded, 15-20 ms; with 300 connections that
hostile clients hold open, 70-150 ms. The collector starts one by itself every few seconds
while connections come and go, and what it walks is mostly what lives long: the models, the
modules, every session and connection alive (`python -m bench --attack`, bench/results/README.md).

So `GarbagePolicy.install` (once every model is loaded, before serving):

- freezes everything alive then (`gc.freeze`: never walked again);
- after every full collection the collector makes on its own, freezes its survivors too: the
  next one walks only what was made since, not every session alive;
- objects freed by reference counting are freed frozen or not: all of a session's, since it
  breaks its own cycles when it ends (`Session.run`). A reference cycle that becomes garbage
  after it was frozen waits for a sweep (`sweep`: unfreeze, collect everything, freeze
  again). `run` sweeps once the frozen set has grown to `SWEEP_GROWTH` times what the last
  sweep left, at most every `SWEEP_MIN_INTERVAL_S`: a sweep stalls the loop as the
  collector's own full collections did, and it is logged and counted. But the frozen set is
  counted only at the collector's own full collections (below), and under steady traffic
  those hardly come (the settling freezes below keep the older generations from filling:
  `make soak` saw none in 3,500 cycles). So garbage in the frozen set is bounded by there
  being none: a session leaves no reference cycle when it ends, with an uplink or not,
  barge-ins included (tests/test_collector.py), and `make soak` fails on any cycle made
  under load (fuzz/soak.py). Some did: a barge-in kept ~7 KB a time, and every session with
  an uplink ~1 MB of RSS (its turn audio), until such a sweep.

A session's own objects (its connection, its tasks, its buffers: ~300 tracked objects each)
live as long as it does, but they are born young: the collector's next young collection walks
them all, then the next full one. Twenty sessions that open together made one young collection
of ~7 ms, which fell into their first replies (`python -m bench --burst`). So
`session_opened` has them frozen as soon as they settle: `run` calls `gc.freeze` (which only
relinks lists: no walk) `SETTLE_S` after the last session opened. What else was young then
is frozen with them; a cycle among it that was garbage waits for a sweep, as above.

Counting the frozen set (`gc.get_freeze_count`) walks it, holding the GIL: milliseconds for the
daemon's frozen set (bench/results/README.md), a stall of its own if it ran on a timer (it did,
every `CHECK_INTERVAL_S`, and every frame due then went out that late). So it is counted only
where the loop is held anyway: right after each full collection (which walks more than that),
at install and at each sweep. `run` and `stats` read that count.

`stats` counts for /metrics: full collections and their seconds, sweeps and their seconds,
frozen objects (at the last full collection). Each full collection the collector made on its
own is logged too ("full garbage collection", with `pause_ms` and `at`, the wall clock when it
ended), by the loop right after it (not in the collector's callback): the loop was held that
long, and a stall of every session then is the daemon's, not its clients' (`python -m bench`
reads it beside each stall).
`close` undoes it all (tests run several daemons in one process).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

import trio

log = logging.getLogger("duplexd.gc")

SWEEP_GROWTH: Final = 2.0  # sweep once the frozen set is this many times what a sweep left
SWEEP_MIN_OBJECTS: Final = 50_000  # ... and has grown by at least this many objects
SWEEP_MIN_INTERVAL_S: Final = 60.0  # never sweep more often than this
CHECK_INTERVAL_S: Final = 5.0  # how often `run` looks at the frozen set
SETTLE_S: Final = 0.2  # a new session's objects are frozen this long after it opened


@dataclass
class GcStats:
    """What the policy counted since `install`."""

    full_collections: int = 0  # the collector's own full collections (survivors frozen)
    full_collection_s: float = 0.0  # ... their total duration
    longest_s: float = 0.0  # the longest of them
    sweeps: int = 0  # sweeps of the frozen set
    sweep_s: float = 0.0  # ... their total duration
    collected: int = 0  # objects the sweeps found to be garbage
    frozen: int = 0  # objects frozen at the last full collection, install or sweep
    settled: int = 0  # times new sessions' objects were frozen (`session_opened`)


class GarbagePolicy:
    """Freeze what survives, sweep the frozen set now and then (module docstring). One per
    process at a time; `install` and `close` on the trio thread."""

    def __init__(
        self,
        *,
        growth: float = SWEEP_GROWTH,
        min_objects: int = SWEEP_MIN_OBJECTS,
        min_interval_s: float = SWEEP_MIN_INTERVAL_S,
    ) -> None:
        self.growth = growth
        self.min_objects = min_objects
        self.min_interval_s = min_interval_s
        self._stats = GcStats()
        self._installed = False
        self._started: float | None = None  # perf_counter() when a full collection began
        self._left = 0  # the frozen set's size after install or the last sweep
        self._last_sweep = 0.0  # trio.current_time() of install or the last sweep
        self._frozen = 0  # the frozen set's size, counted after each full collection
        self._opened = trio.Event()  # a session opened since the last settling
        # (time.time() at its end, seconds) of the full collections not logged yet
        self._pauses: collections.deque[tuple[float, float]] = collections.deque(maxlen=64)
        self._token: trio.lowlevel.TrioToken | None = None  # (the loop's, from `install`)

    def install(self) -> None:
        """Collect, freeze everything alive, and freeze the survivors of every full
        collection from now on. Stalls the loop once, for one full collection."""
        if self._installed:
            return
        gc.collect()
        gc.freeze()
        self._token = trio.lowlevel.current_trio_token()
        gc.callbacks.append(self._on_collection)
        self._installed = True
        self._left = self._frozen = gc.get_freeze_count()
        self._last_sweep = trio.current_time()

    def close(self) -> None:
        """Stop freezing and hand the frozen set back to the collector."""
        if not self._installed:
            return
        gc.callbacks.remove(self._on_collection)
        gc.unfreeze()
        self._installed = False

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        """gc callback: time each full collection, and freeze its survivors."""
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
            return
        if self._started is None:
            return
        took = time.perf_counter() - self._started
        self._started = None
        s = self._stats
        s.full_collections += 1
        s.full_collection_s += took
        s.longest_s = max(s.longest_s, took)
        self._pauses.append((time.time(), took))
        if self._token is not None:  # (logged by the loop, not in the collector's callback)
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._log_pauses, idempotent=True)
        gc.freeze()
        self._frozen = gc.get_freeze_count()  # (a walk of its own: here, not on a timer)

    def due(self, now: float, frozen: int) -> bool:
        """Whether a sweep is due at trio time `now` with `frozen` objects frozen."""
        if now - self._last_sweep < self.min_interval_s:
            return False
        return frozen >= max(self._left * self.growth, self._left + self.min_objects)

    def sweep(self) -> int:
        """Unfreeze, collect everything, freeze again: the garbage the frozen set held (a
        full stall of the loop). Returns how many objects were garbage."""
        before = self._frozen  # (as last counted: counting it again would walk it again)
        started = time.perf_counter()
        gc.callbacks.remove(self._on_collection)  # (this one is not the collector's own)
        try:
            gc.unfreeze()
            collected = gc.collect()
            gc.freeze()
        finally:
            gc.callbacks.append(self._on_collection)
        took = time.perf_counter() - started
        self._left = self._frozen = gc.get_freeze_count()
        self._last_sweep = trio.current_time()
        s = self._stats
        s.sweeps += 1
        s.sweep_s += took
        s.collected += collected
        log.info(
            "garbage swept",
            extra={
                "frozen_before": before,
                "frozen_after": self._left,
                "collected": collected,
                "pause_ms": round(took * 1000, 1),
            },
        )
        return collected

    def session_opened(self, _session: object = None) -> None:
        """A session opened: its objects are frozen `SETTLE_S` from now (by `run`), once its
        tasks have started. Trio thread; cheap."""
        self._opened.set()

    async def run(self) -> None:
        """Sweep when due (`due`, with the frozen set as the last full collection counted
        it), checking every `CHECK_INTERVAL_S`, and freeze new sessions' objects `SETTLE_S`
        after they opened, until cancelled. Cancellation leaves nothing behind (a sweep is
        not interrupted: it has no await; sessions it did not freeze are left young)."""
        check_at = trio.current_time() + CHECK_INTERVAL_S
        while True:
            with trio.move_on_at(check_at):
                await self._opened.wait()
                await trio.sleep(SETTLE_S)  # (more sessions opening meanwhile go with it)
                self._opened = trio.Event()
                if self._installed:
                    gc.freeze()
                    self._stats.settled += 1
                continue
            check_at = trio.current_time() + CHECK_INTERVAL_S
            if self._installed and self.due(trio.current_time(), self._frozen):
                self.sweep()

    def _log_pauses(self) -> None:
        """Log the full collections not logged yet (at most the last 64). Trio thread."""
        while self._pauses:
            at, took = self._pauses.popleft()
            log.info(
                "full garbage collection",
                extra={"at": round(at, 3), "pause_ms": round(took * 1000, 1)},
            )

    def stats(self) -> GcStats:
        """A copy of the counts, with the frozen set's size at the last full collection."""
        s = self._stats
        return GcStats(
            s.full_collections,
            s.full_collection_s,
            s.longest_s,
            s.sweeps,
            s.sweep_s,
            s.collected,
            self._frozen if self._installed else 0,
            s.settled,
        )
