"""What the daemon measures, as it runs: histograms, a session's writer counters, its observer.

Nothing here does I/O or exports anything (`duplexd._ops.prometheus` does, at scrape time).

- `Histogram`: cheap latency histograms for the hot path. `record` is one multiply, one `min`
  and one list increment: fine for every frame of every session. Percentiles are read from
  fixed-width buckets (accurate to a bucket), with an overflow bucket; the exact maximum is
  kept aside.
- `DownlinkCounters`: what a session's writer counts per frame (plain ints and a histogram).
- `SessionObserver`: what a session did, recorded once per utterance or interrupt (never per
  frame): counts, latencies and the session's log lines.

All of it is written and read on the trio thread, so there is no locking.
"""

from __future__ import annotations

import array
import collections
import logging
from typing import Any

import trio

log = logging.getLogger("duplexd.session")

BUCKET_S = 25e-6
BUCKETS = 4000  # 100 ms / 25 us


class Histogram:
    """Non-negative durations in seconds; negative values are recorded as 0."""

    __slots__ = ("_counts", "_inv_bucket", "bucket_s", "buckets", "count", "max_s", "sum_s")

    def __init__(self, bucket_s: float = BUCKET_S, buckets: int = BUCKETS) -> None:
        if bucket_s <= 0 or buckets < 1:
            raise ValueError("bucket_s and buckets must be positive")
        self.bucket_s = bucket_s
        self.buckets = buckets
        self._inv_bucket = 1 / bucket_s
        # an array of machine ints, not a list: it refers to nothing but its type, so the cyclic
        # garbage collector never walks its thousands of slots (a list's are, on every full
        # collection, for every histogram of every session: a stall of the loop)
        self._counts = array.array("q", bytes(8 * (buckets + 1)))
        self.count = 0
        self.sum_s = 0.0
        self.max_s = 0.0

    def record(self, value_s: float) -> None:
        if value_s < 0.0:
            value_s = 0.0
        self._counts[min(int(value_s * self._inv_bucket), self.buckets)] += 1
        self.count += 1
        self.sum_s += value_s
        if value_s > self.max_s:
            self.max_s = value_s

    def merge(self, other: Histogram) -> None:
        if (other.bucket_s, other.buckets) != (self.bucket_s, self.buckets):
            raise ValueError("can only merge histograms with the same buckets")
        for i, c in enumerate(other._counts):
            if c:
                self._counts[i] += c
        self.count += other.count
        self.sum_s += other.sum_s
        self.max_s = max(self.max_s, other.max_s)

    def counts_below(self, edges_s: list[float]) -> list[int]:
        """For each edge (ascending, in seconds): how many values fell in buckets wholly
        below it, i.e. a cumulative count accurate to a bucket (Prometheus `le` buckets).
        Edges past the last bucket count everything but the overflow bucket."""
        if not self.count:
            return [0] * len(edges_s)
        # buckets above the maximum's are empty: the walk costs O(max), not O(buckets)
        top = min(int(self.max_s * self._inv_bucket), self.buckets - 1) + 1
        counts = self._counts
        out: list[int] = []
        seen = start = 0
        for edge in edges_s:
            stop = max(start, min(int(edge * self._inv_bucket + 1e-9), top))
            seen += sum(counts[start:stop])  # C speed: no per-bucket Python loop
            start = stop
            out.append(seen)
        return out

    def percentile(self, q: float) -> float:
        """Upper edge of the bucket holding the q-th percentile (0 < q <= 100), in seconds."""
        if not 0 < q <= 100:
            raise ValueError("q must be in (0, 100]")
        if self.count == 0:
            return 0.0
        rank = q / 100 * self.count
        seen = 0
        for i, c in enumerate(self._counts):
            seen += c
            if seen >= rank:
                return self.max_s if i == self.buckets else min((i + 1) * self.bucket_s, self.max_s)
        return self.max_s

    def summary_ms(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "p50": round(self.percentile(50) * 1e3, 4),
            "p95": round(self.percentile(95) * 1e3, 4),
            "p99": round(self.percentile(99) * 1e3, 4),
            "max": round(self.max_s * 1e3, 4),
            "mean": round(self.sum_s / self.count * 1e3, 4) if self.count else 0.0,
        }


def pacing_histogram() -> Histogram:
    """10 µs buckets up to 20 ms: the resolution pacing errors need."""
    return Histogram(bucket_s=10e-6, buckets=2000)


def first_audio_histogram() -> Histogram:
    """2 ms buckets up to 5 s (a cold CPU voice can take seconds)."""
    return Histogram(bucket_s=2e-3, buckets=2500)


def interrupt_histogram() -> Histogram:
    """100 us buckets up to 200 ms."""
    return Histogram(bucket_s=100e-6, buckets=2000)


def barge_in_histogram() -> Histogram:
    """1 ms buckets up to 1 s."""
    return Histogram(bucket_s=1e-3, buckets=1000)


class DownlinkCounters:
    """What one session's writer counts, frame by frame."""

    __slots__ = (
        "bytes_sent",
        "frames_sent",
        "grids_restarted",
        "late_sends",
        "pacing_error",
        "stale_dropped",
        "ticks_dropped",
        "underruns",
    )

    def __init__(self) -> None:
        self.frames_sent = 0
        self.bytes_sent = 0
        self.underruns = 0
        self.stale_dropped = 0
        self.late_sends = 0  # frames sent after the next frame's deadline had already passed
        self.ticks_dropped = 0  # pacer ticks dropped because the daemon fell a second behind
        self.grids_restarted = 0  # utterances whose first frame went out late: grid moved
        self.pacing_error = pacing_histogram()  # |send time - ideal time|, per audio frame


class SessionObserver:
    """One session's counts, latencies and log lines (logger ``duplexd.session``).

    Latencies: `first_audio` (first Text of an utterance received -> its first Audio frame
    handed to the socket), `interrupt` (Interrupt received -> Interrupted handed to the socket),
    `barge_in` (the uplink frame that decided a barge-in arrived -> the audio was cut). Every
    method is synchronous and runs on the trio thread; none runs per frame.
    """

    __slots__ = (
        "_interrupt_at",
        "_text_at",
        "_who",
        "audio_s",
        "barge_in",
        "engine_s",
        "first_audio",
        "input_s",
        "input_throttled_s",
        "interrupt",
        "interrupts",
        "synthesis_throttled_s",
        "tag",
        "utterances_done",
    )

    def __init__(self, tag: str, *, client: str = "", subject: str = "") -> None:
        self.tag = tag  # the session id's first 12 hex digits, in every log line
        self._who = {"session": tag, "client": client, "subject": subject}
        self.first_audio = first_audio_histogram()
        self.interrupt = interrupt_histogram()
        self.barge_in = barge_in_histogram()
        self.utterances_done = 0
        self.interrupts = 0
        self.engine_s = 0.0  # engine compute time, for the RTF
        self.audio_s = 0.0  # audio the engine produced
        self.input_s = 0.0  # event-loop time spent decoding and acting on the client's frames
        self.input_throttled_s = 0.0  # time its reading waited for being over its loop share
        self.synthesis_throttled_s = 0.0  # time its synthesis waited (over synthesis_speed)
        self._text_at: dict[int, tuple[float, float]] = {}  # uid -> first text, first audio
        self._interrupt_at: collections.deque[float] = collections.deque()

    def opened(self, engine: str, voice: str) -> None:
        log.info("session open", extra={**self._who, "engine": engine, "voice": voice})

    def closed(self) -> None:
        log.info("session closed", extra={**self._who, "utterances": self.utterances_done})

    def failed(self, code: str, detail: str) -> None:
        """The session ends with an Error frame of `code` (sent, or being sent)."""
        log.info("session error", extra={**self._who, "code": code, "detail": detail})

    def text_started(self, uid: int) -> None:
        self._text_at[uid] = (trio.current_time(), -1.0)

    def audio_started(self, uid: int) -> None:
        timing = self._text_at.get(uid)
        if timing is not None:
            latency = trio.current_time() - timing[0]
            self.first_audio.record(latency)
            self._text_at[uid] = (timing[0], latency)

    def utterance_ended(self, uid: int) -> None:
        """Its UtteranceDone or Interrupted was sent, or it was dropped before playing."""
        self.utterances_done += 1
        t_text, first_audio = self._text_at.pop(uid, (0.0, -1.0))
        log.info(
            "utterance end",
            extra={
                **self._who,
                "utterance": uid,
                "first_audio_ms": round(first_audio * 1e3, 3) if first_audio >= 0 else None,
                "duration_ms": round((trio.current_time() - t_text) * 1e3, 3),
            },
        )

    def interrupt_requested(self) -> None:
        self.interrupts += 1
        self._interrupt_at.append(trio.current_time())

    def interrupted(self) -> None:
        """The Interrupted frame of the oldest interrupt still unanswered goes out now."""
        if self._interrupt_at:
            latency = trio.current_time() - self._interrupt_at.popleft()
            self.interrupt.record(latency)
            log.info("interrupted", extra={**self._who, "interrupt_ms": round(latency * 1e3, 3)})

    def barged_in(self, delay_s: float) -> None:
        """The uplink decided a barge-in; the audio was cut `delay_s` after its deciding frame."""
        self.barge_in.record(delay_s)

    def synthesized(self, engine_s: float, audio_s: float) -> None:
        self.engine_s += engine_s
        self.audio_s += audio_s

    def summary_ms(self) -> dict[str, Any]:
        return {
            "first_audio_ms": self.first_audio.summary_ms(),
            "interrupt_ms": self.interrupt.summary_ms(),
            "barge_in_ms": self.barge_in.summary_ms(),
        }


def over_ms(h: Histogram, edges_ms: tuple[int, ...]) -> dict[str, int]:
    """How many of `h`'s values are at least each edge, keyed by the edge in ms: to a bucket,
    rounding down (a value recorded a hair under an edge may fall in the bucket below it).
    Every edge must lie within the histogram's range (ValueError)."""
    top_ms = h.bucket_s * h.buckets * 1e3
    if any(not 0 < ms <= top_ms for ms in edges_ms):
        raise ValueError(f"edges must be in (0, {top_ms:g}] ms, got {edges_ms}")
    below = h.counts_below([ms / 1e3 for ms in edges_ms])
    return {str(ms): h.count - n for ms, n in zip(edges_ms, below, strict=True)}


def session_stats(tag: str, c: DownlinkCounters, o: SessionObserver) -> dict[str, Any]:
    """A session's STATS (its downlink's part): what its writer and its observer counted."""
    return {
        "session": tag,
        "frames_sent": c.frames_sent,
        "bytes_sent": c.bytes_sent,
        "underruns": c.underruns,
        "late_sends": c.late_sends,
        "stale_dropped": c.stale_dropped,
        "pacing_error_ms": c.pacing_error.summary_ms(),
        "pacing_error_over_ms": over_ms(c.pacing_error, (5, 20)),
        "utterances_done": o.utterances_done,
        "interrupts": o.interrupts,
        "engine_s": round(o.engine_s, 4),
        "audio_s": round(o.audio_s, 4),
        "input_loop_ms": round(o.input_s * 1e3, 3),
        "input_throttled_ms": round(o.input_throttled_s * 1e3, 3),
        "synthesis_throttled_ms": round(o.synthesis_throttled_s * 1e3, 3),
        "ticks_dropped": c.ticks_dropped,
        "grids_restarted": c.grids_restarted,
    }
