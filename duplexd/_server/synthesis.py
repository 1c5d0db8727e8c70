"""How many synthesis calls of one engine run at once (the engine's turns), and what a session's
synthesis writes into (`downlink_audio`).

An engine that computes in the calling thread (the tone engine, most plugins) holds the GIL
while it does: with one worker thread per session, a burst of N whole replies is N threads
computing at once, and the event loop, which needs the GIL to send each frame, waits its
turn behind all of them (CPython hands the GIL to any waiting thread, not to the one that
asked first) — measured: 20 replies arriving together held every first frame back ~40 ms.
So each engine has `synthesis_threads` turns (an engine attribute; default: one per CPU this
process may run on), taken per chunk, first come first served: every session's first chunk
goes before anyone's second, and the loop competes with at most that many threads. An engine
whose calls only wait (VITS: its own inference thread computes and batches across sessions)
says `synthesis_threads = None`: no limit, so its batches are not split.

A worker-thread call costs the loop ~80 us of CPU however little it computes (a thread woken,
then the loop woken back; `trio.to_thread.run_sync` of a function that returns at once, on one
CPU of the project's VM), while a tone chunk computes in ~0.1 ms. So the chunks waiting for a
turn go in batches (`EngineTurns`): one worker-thread call runs them one after another, in
order, for up to `BATCH_S`, and hands each result back as its chunk ends (meanwhile the loop
takes the GIL back within the switch interval, `GIL_SWITCH_INTERVAL_S`).
"""

from __future__ import annotations

import collections
import functools
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import outcome
import trio

from .._downlink.ring import FrameRing
from .._ops.settings import SessionLimits
from .._opus import MAX_PACKET_BYTES, OpusEncoder
from ..engines.base import Engine
from ..engines.registry import EngineSet
from ..protocol import frames as fr
from ..protocol.options import CodecOptions
from .handshake import Offload


def synthesis_threads(engine: Engine) -> int | None:
    """The engine's `synthesis_threads` (None: no limit), or one per usable CPU."""
    if hasattr(engine, "synthesis_threads"):
        threads: int | None = engine.synthesis_threads
        if threads is not None and threads < 1:
            raise ValueError(f"{engine.name}: synthesis_threads must be >= 1 or None")
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


BATCH_S: Final = 0.001  # a batch runs the chunks waiting, one after another, this long at most


class _Chunk:
    __slots__ = ("args", "fn", "task")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], task: Any) -> None:
        self.fn, self.args, self.task = fn, args, task


class EngineTurns:
    """An `Offload` for one engine's chunks: at most `threads` worker-thread calls at once,
    each running the chunks waiting, in the order they were asked for, until none waits or
    it has run `batch_s` (a chunk started before then runs to its end). Each chunk's session
    goes on as soon as its chunk ends (the thread hands the result to the loop:
    `run_sync_soon`), not when its batch does. Cancellation while a chunk waits takes it out;
    once its batch runs it, it finishes first (as `trio.to_thread.run_sync`). A chunk runs in
    the batch's thread and trio context, not its session's (`trio.from_thread` reaches the
    loop all the same). At most one chunk waits per session: the deque is bounded by them."""

    def __init__(self, offload: Offload, threads: int, batch_s: float = BATCH_S) -> None:
        self._offload = offload
        self._threads = threads
        self._batch_s = batch_s
        self._waiting: collections.deque[_Chunk] = collections.deque()
        self._runners = 0  # tasks that run batches (at most `threads`), ...
        self._idle: list[Any] = []  # ... those of them parked with nothing to run
        self.batches = 0  # worker-thread calls made
        self.chunks = 0  # chunks run in them

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()
        chunk = _Chunk(fn, args, trio.lowlevel.current_task())
        self._waiting.append(chunk)
        if self._idle:
            trio.lowlevel.reschedule(self._idle.pop())
        elif self._runners < self._threads:
            self._runners += 1
            trio.lowlevel.spawn_system_task(self._run, name="duplexd synthesis turns")

        def abort(_: Any) -> trio.lowlevel.Abort:
            try:
                self._waiting.remove(chunk)  # (atomic against the thread's popleft)
            except ValueError:  # its batch has it: it finishes first
                return trio.lowlevel.Abort.FAILED
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    async def _run(self) -> None:
        """Run batches while chunks wait, then park until one does; for the rest of the trio
        run (a system task: cancelled only as the run ends, parked or at the start of a batch,
        before it took a chunk; nothing else may leave it, or the whole run would end)."""
        me, token = trio.lowlevel.current_task(), trio.lowlevel.current_trio_token()
        try:
            while True:
                while self._waiting:
                    try:
                        ran = await self._offload(self._batch, token)
                    except Exception as exc:  # (no thread to run it: each waiting chunk fails)
                        ran = self._fail_waiting(exc)
                    self.batches += 1
                    self.chunks += ran
                self._idle.append(me)
                await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.SUCCEEDED)
        finally:
            self._runners -= 1
            if me in self._idle:
                self._idle.remove(me)

    def _batch(self, token: trio.lowlevel.TrioToken) -> int:
        """(In a worker thread.) Run the chunks waiting, in order, for up to `batch_s`; hand
        each result to its session as it comes. Returns how many ran."""
        ran = 0
        t0 = time.perf_counter()
        while True:
            try:
                chunk = self._waiting.popleft()
            except IndexError:
                break
            result = outcome.capture(chunk.fn, *chunk.args)
            token.run_sync_soon(trio.lowlevel.reschedule, chunk.task, result)
            ran += 1
            if time.perf_counter() - t0 >= self._batch_s:
                break
        return ran

    def _fail_waiting(self, exc: Exception) -> int:
        """The worker thread could not be had (`exc`): every chunk waiting fails with it."""
        failed = 0
        while self._waiting:
            chunk = self._waiting.popleft()
            error = RuntimeError(f"synthesis could not run: {exc}")
            error.__cause__ = exc
            trio.lowlevel.reschedule(chunk.task, outcome.Error(error))
            failed += 1
        return failed


def synthesis_offloads(engines: EngineSet, offload: Offload) -> Mapping[str, Offload]:
    """Per name of an engine whose sessions take turns: how its chunks are run, one call
    each (call inside trio). An engine that takes none is not in it: a piece is one call."""
    out: dict[str, Offload] = {}
    for name in engines.names():
        threads = synthesis_threads(engines.get(name))
        if threads is not None:
            out[name] = EngineTurns(offload, threads)
    return out


def downlink_audio(
    codec: CodecOptions, rate_hz: int, limits: SessionLimits
) -> tuple[FrameRing, Callable[[], OpusEncoder] | None]:
    """A session's ring of whole AUDIO frames (slots of header + PCM, or + an Opus packet of
    up to 1275 bytes), and with an Opus downlink the maker of each utterance's encoder (made
    in that utterance's worker thread)."""
    opus = codec.downlink == fr.CODEC_OPUS
    body_bytes = fr.frame_samples(rate_hz) * fr.BYTES_PER_SAMPLE
    body_bytes = max(body_bytes, MAX_PACKET_BYTES) if opus else body_bytes
    ring = FrameRing(limits.ring_frames, fr.AUDIO_HEADER_BYTES + body_bytes)
    if not opus:
        return ring, None
    kbps, complexity = codec.opus_bitrate_kbps, codec.opus_complexity
    return ring, functools.partial(OpusEncoder, rate_hz, bitrate_kbps=kbps, complexity=complexity)
