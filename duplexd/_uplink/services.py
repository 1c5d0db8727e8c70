"""What a daemon's uplinks share: the VAD model, the transcriber, the turn model, and the worker
threads their work runs in (off the event loop)."""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import trio

from .asr import Transcriber, limiter_busy
from .turn import TurnModel
from .vad import VadModel

# Every session's uplink work shares this many worker threads (one CapacityLimiter per daemon):
# the work is mostly numpy and ONNX calls with the GIL held in between, and each extra thread
# that wants the GIL delays the pacer's wakeups; one thread serves a few dozen sessions.
UPLINK_THREADS: Final = max(1, (os.cpu_count() or 1) // 4)

Offload = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class UplinkServices:
    """What a daemon's uplinks share; made once by the service (`create`), or by a test.

    `offload(fn, *args)` runs a batch of uplink work off the event loop (`create`: a worker
    thread of the `UPLINK_THREADS` shared ones; tests may run it inline under a MockClock).
    `turn_offload` runs the turn model (`create`: one thread of its own for the daemon, so a
    question never holds up any session's VAD; None: `offload`); `turn_limiter` is its
    limiter, when it has one (`turn_busy`).
    """

    vad_model: VadModel
    offload: Offload
    transcriber: Transcriber | None = None  # None: no transcripts
    turn_model: TurnModel | None = None  # None: turns end after a fixed silence
    turn_offload: Offload | None = None
    turn_limiter: trio.CapacityLimiter | None = None
    # a file to record the session's uplink inputs in, to replay them (record.py): "" none; set
    # per session by its connection (`[trace] uplink_dir`)
    recording: str = ""

    def turn_busy(self) -> bool:
        """Whether the turn model is answering or has questions waiting (any session's)."""
        return self.turn_limiter is not None and limiter_busy(self.turn_limiter)

    @classmethod
    def create(
        cls,
        vad_model: VadModel,
        *,
        transcriber: Transcriber | None = None,
        turn_model: TurnModel | None = None,
        threads: int = UPLINK_THREADS,
    ) -> UplinkServices:
        """The daemon's: uplink work in `threads` shared worker threads."""
        limiter = trio.CapacityLimiter(threads)
        offload = functools.partial(trio.to_thread.run_sync, limiter=limiter)
        turn_limiter = trio.CapacityLimiter(1)
        turn_offload = functools.partial(trio.to_thread.run_sync, limiter=turn_limiter)
        return cls(
            vad_model=vad_model,
            offload=offload,
            transcriber=transcriber,
            turn_model=turn_model,
            turn_offload=turn_offload,
            turn_limiter=turn_limiter,
        )
