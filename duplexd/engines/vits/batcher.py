"""Inference threads for one engine, with dynamic batching of concurrent requests.

Once an inference thread is free, the requests for the oldest pending one's model that arrive
within `window_s` (or until `max_batch` are pending) join it in one padded batch. A batch costs
what its longest sequence costs times its size (every sequence is padded to the longest), so it
takes the requests of one band of lengths: one that holds the oldest request's length and whose
longest is at most `max_length_ratio` times its shortest, the band that holds the most of them,
and of those the oldest first. A short first clause is neither held up by nor padded up to a
long sentence (what that bought on a GPU: bench/results/README.md, "VITS on an H200"). The
oldest request when a thread takes its batch is in it, so none waits forever. With
`max_batch == 1` and one thread this is a plain serialising queue, which is what a CPU wants
(parallel inferences only fight over cores). `call` runs any other piece of inference work (a
streaming step) on an inference thread, alone, once it is the oldest (requests queued behind
it may run before it, in batches); `call(fn, thread=i)` on thread i (the engine's warm-up of
each thread). A request cancelled while it waits takes no place in a batch.

With `threads > 1` as many inference threads take batches from the one queue (each calls
`on_start` first: the engine gives each its own CUDA stream there), so that one batch's
Python (kernel launches, padding, copying audio out) runs while the GPU computes another's,
instead of the GPU idling between batches (bench/results/README.md, "Two inference streams");
each batch is still one band, a `call` may run beside another thread's batch, and a thread
that waited in the window for requests another thread took starts again. A thread whose
`run_batch` or `call` raises fails those futures and goes on; should every thread end (a bug),
the requests left and any asked later fail at once instead of waiting forever.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from ..base import EngineError

FloatAudio = npt.NDArray[np.float32]
# one sequence's audio, and the samples each of its ids lasts (its words' timing)
Synthesized = tuple[FloatAudio, npt.NDArray[np.int64]]
RunBatch = Callable[[Any, Sequence[Sequence[int]]], list[Synthesized]]
T = TypeVar("T")

_LOG = logging.getLogger(__name__)
MAX_LENGTH_RATIO = 2.0  # a batch's longest sequence, at most this many times its shortest


@dataclass
class _Job:
    model: Any
    ids: Sequence[int]
    future: Future[Any]
    fn: Callable[[], Any] | None = None  # a `call` job: run alone, never batched


class BatchingWorker:
    """Runs `run_batch(model, [ids, ...]) -> [audio, ...]` on its own `threads` threads."""

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch: int = 1,
        window_s: float = 0.002,
        max_length_ratio: float = MAX_LENGTH_RATIO,
        on_start: Callable[[], None] | None = None,
        name: str = "vits-inference",
        threads: int = 1,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch = max(1, max_batch)
        self.window_s = window_s
        self.max_length_ratio = max_length_ratio
        self._on_start = on_start
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.batch_sizes: list[int] = []  # observability (tests, bench): sizes of recent batches
        # batch_size_counts[n]: batches of n requests run so far (written under `_cond`)
        self.batch_size_counts = [0] * (self.max_batch + 1)
        self.threads = max(1, threads)
        self._pinned: list[deque[_Job]] = [deque() for _ in range(self.threads)]  # call(thread=)
        self._running = self.threads  # threads not yet ended (under `_cond`)
        self._threads = [
            threading.Thread(
                target=self._loop, args=(i,), name=name if i == 0 else f"{name}-{i}", daemon=True
            )
            for i in range(self.threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, model: Any, ids: Sequence[int]) -> Future[Synthesized]:
        fut: Future[Synthesized] = Future()
        with self._cond:
            if self._closed:
                raise EngineError("engine is closed")
            self._queue.append(_Job(model, ids, fut))
            self._cond.notify()
        return fut

    def call(self, fn: Callable[[], T], *, thread: int | None = None) -> Future[T]:
        """Run `fn()` on an inference thread (`thread`: that one), alone (not batched), in
        queue order."""
        fut: Future[T] = Future()
        with self._cond:
            if self._closed:
                raise EngineError("engine is closed")
            if thread is None:
                self._queue.append(_Job(None, (), fut, fn))
                self._cond.notify()
            else:
                self._pinned[thread].append(_Job(None, (), fut, fn))
                self._cond.notify_all()  # (the one thread it is for must wake)
        return fut

    def _take(self, index: int) -> list[_Job] | None:
        pinned = self._pinned[index]
        with self._cond:
            while True:
                while not self._queue and not pinned and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                if pinned:
                    return [pinned.popleft()]
                if self._queue[0].future.cancelled():
                    self._queue.popleft()  # (cancelled while it waited: nothing to run)
                    continue
                if self._queue[0].fn is not None:
                    return [self._queue.popleft()]
                model = self._queue[0].model
                if self.max_batch > 1:
                    deadline = time.monotonic() + self.window_s
                    while not self._closed:
                        same = sum(1 for j in self._queue if j.model is model and j.fn is None)
                        left = deadline - time.monotonic()
                        if same >= self.max_batch or left <= 0:
                            break
                        self._cond.wait(left)
                waiting = [
                    j
                    for j in self._queue
                    if j.model is model and j.fn is None and not j.future.cancelled()
                ]
                if waiting:
                    break
                # (another inference thread took them while this one waited: start again)
            batch = _one_band(waiting, self.max_batch, self.max_length_ratio)
            taken = {id(j) for j in batch}
            self._queue = deque(j for j in self._queue if id(j) not in taken)
            return batch

    def _loop(self, index: int) -> None:
        try:
            if self._on_start is not None:
                self._on_start()
            while (batch := self._take(index)) is not None:
                self._run(batch)
        except Exception:  # (a bug, or `on_start` failing: said, and the others go on)
            _LOG.exception("inference thread ended")
        finally:
            with self._cond:
                self._running -= 1
                if self._running == 0:  # (the last one out: nothing would ever run them)
                    self._closed = True
                    pending = [*self._queue, *(j for q in self._pinned for j in q)]
                    self._queue = deque()
                    for q in self._pinned:
                        q.clear()
                else:
                    pending = []
            for job in pending:
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(EngineError("engine closed"))

    def _run(self, batch: list[_Job]) -> None:
        """Run one batch (or one `call`) and settle its futures; what it raises goes to them."""
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        if (fn := live[0].fn) is not None:
            try:
                result = fn()
            except BaseException as exc:
                live[0].future.set_exception(exc)
                return
            live[0].future.set_result(result)
            return
        with self._cond:
            self.batch_sizes = [*self.batch_sizes[-255:], len(live)]
            self.batch_size_counts[len(live)] += 1
        try:
            outs = self._run_batch(live[0].model, [j.ids for j in live])
            if len(outs) != len(live):
                raise EngineError(f"a batch of {len(live)} gave {len(outs)} results")
        except BaseException as exc:
            for j in live:
                j.future.set_exception(exc)
            return
        for j, out in zip(live, outs, strict=True):
            j.future.set_result(out)

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if threading.current_thread() is not thread:
                thread.join(max(0.0, deadline - time.monotonic()))


def _one_band(jobs: Sequence[_Job], most: int, ratio: float) -> list[_Job]:
    """The first (oldest) of `jobs` and up to `most - 1` others, all of lengths in one band
    [low, `ratio` x low] that holds the first's length: the band that holds the most jobs (the
    shorter band among equals), of those the oldest; in the order they were asked for."""
    if most == 1 or len(jobs) == 1:
        return [jobs[0]]
    lengths = [max(1, len(j.ids)) for j in jobs]
    first = lengths[0]
    ordered = sorted(lengths)
    best_low, best_count = first, 0
    for low in sorted({n for n in lengths if n <= first <= ratio * n}):
        count = min(
            most, bisect.bisect_right(ordered, ratio * low) - bisect.bisect_left(ordered, low)
        )
        if count > best_count:
            best_low, best_count = low, count
    return [j for j, n in zip(jobs, lengths, strict=True) if best_low <= n <= ratio * best_low][
        :most
    ]
