"""Per-session latency histograms observed once per utterance or interrupt (not per frame).

The session records into these on the trio thread; `duplexd._ops.metrics` reads them at scrape
time (same thread), so there is no locking and nothing on the per-frame path.
"""

from __future__ import annotations

from typing import Any

from .stats import Histogram


class SessionLatency:
    """first_audio: first Text of an utterance received -> its first Audio frame sent.
    interrupt: Interrupt received -> Interrupted handed to the socket.
    barge_in: voice activity detected -> audio cut (observed by the full-duplex uplink)."""

    __slots__ = ("barge_in", "first_audio", "interrupt")

    def __init__(self) -> None:
        self.first_audio = first_audio_histogram()
        self.interrupt = interrupt_histogram()
        self.barge_in = barge_in_histogram()

    def summary_ms(self) -> dict[str, Any]:
        return {
            "first_audio_ms": self.first_audio.summary_ms(),
            "interrupt_ms": self.interrupt.summary_ms(),
            "barge_in_ms": self.barge_in.summary_ms(),
        }


def first_audio_histogram() -> Histogram:
    """2 ms buckets up to 5 s (a cold CPU voice can take seconds)."""
    return Histogram(bucket_s=2e-3, buckets=2500)


def interrupt_histogram() -> Histogram:
    """100 us buckets up to 200 ms."""
    return Histogram(bucket_s=100e-6, buckets=2000)


def barge_in_histogram() -> Histogram:
    """1 ms buckets up to 1 s."""
    return Histogram(bucket_s=1e-3, buckets=1000)
