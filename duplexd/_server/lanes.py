"""Threads of an engine's own that run its sessions' chunks back to back (the synthesis turns).

`trio.to_thread.run_sync` per chunk hands each chunk to a thread through the event loop twice:
the thread's result goes back to the loop, which wakes the session's task, which gives its turn
(a `CapacityLimiter`) to the next session's task, which asks for a thread again. Meanwhile the
engine's thread waits, and the loop pays for the thread cache, the limiters and the context
copy of every call (with 50 streamed tone sessions, 7 % of the loop's busy time went to
starting threads alone). In a burst of whole replies that round trip is between every
session's first chunk and the next one's: the last session's first audio waits for all of them.

`SynthesisLanes` keeps `threads` threads (one per usable CPU for an engine that computes in
the calling thread) and a queue of chunks: each thread takes the next chunk as soon as it is
done with one, first come first served (every session's first chunk goes before anyone's
second, since a session asks for its next chunk only when its last one is done). The loop's
part of a chunk is one append and one wake-up to ask, and one reschedule when it is done.

The queue holds at most one chunk per session (each waits for its own), so it is bounded by the
sessions admitted. The threads are daemon threads, started on the first call; `close` lets them
end once the queue is empty.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import outcome
import trio


class _Job:
    __slots__ = ("args", "fn", "running", "task", "token")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        task: trio.lowlevel.Task,
        token: trio.lowlevel.TrioToken,
    ) -> None:
        self.fn = fn
        self.args = args
        self.task = task
        self.token = token
        self.running = False


class SynthesisLanes:
    """An `Offload` (`await lanes(fn, *args)`) that runs calls on `threads` threads of its own,
    first come first served. Call it from trio; `close` from anywhere."""

    def __init__(self, threads: int, *, name: str) -> None:
        if threads < 1:
            raise ValueError("SynthesisLanes needs at least one thread")
        self.threads = threads
        self.name = name
        self._jobs: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._workers: list[threading.Thread] = []
        self._closed = False

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on one of the lanes' threads and return (or raise) what it did.

        Cancellation while the call waits for a thread leaves nothing behind (it never runs);
        once it runs, it finishes first and its result is returned, the cancellation coming at
        the caller's next checkpoint (as `trio.to_thread.run_sync` does). Raises
        `trio.ClosedResourceError` after `close`."""
        await trio.lowlevel.checkpoint_if_cancelled()
        job = _Job(fn, args, trio.lowlevel.current_task(), trio.lowlevel.current_trio_token())
        with self._cond:
            if self._closed:
                raise trio.ClosedResourceError(f"{self.name}: the synthesis threads are closed")
            self._jobs.append(job)
            if len(self._workers) < self.threads:
                self._start_worker()
            self._cond.notify()

        def abort(_: Any) -> trio.lowlevel.Abort:
            with self._cond:
                if not job.running:
                    self._jobs.remove(job)
                    return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED  # running: its result comes back first

        return await trio.lowlevel.wait_task_rescheduled(abort)  # (the outcome, unwrapped)

    def close(self) -> None:
        """Take no more calls; the threads end once the calls queued are done."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def queued(self) -> int:
        """Calls waiting for a thread."""
        return len(self._jobs)

    def _start_worker(self) -> None:
        worker = threading.Thread(
            target=self._work, name=f"{self.name}-{len(self._workers)}", daemon=True
        )
        self._workers.append(worker)
        worker.start()

    def _work(self) -> None:
        jobs, cond = self._jobs, self._cond
        while True:
            with cond:
                while not jobs:
                    if self._closed:
                        self._workers.remove(threading.current_thread())
                        return
                    cond.wait()
                job = jobs.popleft()
                job.running = True
            result = outcome.capture(job.fn, *job.args)
            with contextlib.suppress(trio.RunFinishedError):  # (nobody waits for it)
                job.token.run_sync_soon(trio.lowlevel.reschedule, job.task, result)
            del job, result
