"""How many synthesis calls of one engine run at once (the engine's turns), and what a session's
synthesis writes into (`downlink_audio`).

An engine that computes in the calling thread (the tone engine, most plugins) holds the GIL
while it does: with one worker thread per session, a burst of N whole replies is N threads
computing at once, and the event loop, which needs the GIL to send each frame, waits its
turn behind all of them (CPython hands the GIL to any waiting thread, not to the one that
asked first) — measured: 20 replies arriving together held every first frame back ~40 ms.
So each engine gets a `trio.CapacityLimiter` of `synthesis_threads` slots (an engine
attribute; default: one per CPU this process may run on), taken per chunk, first come first
served: every session's first chunk goes before anyone's second, and the loop competes with
at most that many threads. An engine whose calls only wait (VITS: its own inference thread
computes and batches across sessions) says `synthesis_threads = None`: no limit, so its
batches are not split.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

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


def taking_turns(offload: Offload, limiter: trio.CapacityLimiter) -> Offload:
    """`offload`, with a slot of `limiter` held while it runs. Cancellation while waiting for
    a slot leaves nothing behind; once running, as `offload`."""

    async def run(fn: Any, *args: Any) -> Any:
        async with limiter:
            return await offload(fn, *args)

    return run


def synthesis_offloads(engines: EngineSet, offload: Offload) -> Mapping[str, Offload]:
    """Per name of an engine whose sessions take turns: how its chunks are run, one call
    each (call inside trio). An engine that takes none is not in it: a piece is one call."""
    out: dict[str, Offload] = {}
    for name in engines.names():
        threads = synthesis_threads(engines.get(name))
        if threads is not None:
            out[name] = taking_turns(offload, trio.CapacityLimiter(threads))
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
