"""Prometheus metrics, computed at scrape time from what the daemon measures anyway.

Nothing here runs per frame: the per-frame path records into each session's own
`DownlinkCounters`, utterances and interrupts into its `SessionObserver` (both in
`duplexd._ops.metrics`). `DaemonMetrics` is a prometheus_client custom collector that, when
scraped, walks the live sessions and adds the totals folded in from sessions that ended
(`session_closed`). Both run on the trio thread, so reads are consistent without locks. It
reads the daemon and its sessions through the small `MeteredDaemon` / `MeteredSession`
protocols below, so it depends on nothing of the server.

It has its own `CollectorRegistry` (`registry`); the process-global one is not touched.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from .._version import __version__
from ..engines.registry import EngineSet
from ..engines.remote import wire
from ..engines.remote.server import ModelStats
from ..protocol.frames import ErrorCode
from .collector import GarbagePolicy
from .metrics import (
    DownlinkCounters,
    Histogram,
    SessionObserver,
    barge_in_histogram,
    first_audio_histogram,
    interrupt_histogram,
    pacing_histogram,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MODEL_FAILURE_REASONS = {
    wire.ENGINE_ERROR: "engine_error",
    wire.UNKNOWN_VOICE: "unknown_voice",
    wire.BAD_REQUEST: "bad_request",
    wire.OVERLOADED: "overloaded",
}

# `le` edges in seconds: multiples of the source histograms' bucket widths, so exact to a bucket
PACING_EDGES = [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02]
FIRST_AUDIO_EDGES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0]
INTERRUPT_EDGES = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2]
BARGE_IN_EDGES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
BATCH_EDGES = [1, 2, 4, 8, 16, 32, 64]

_COUNTERS = (
    ("frames_sent", "audio frames sent"),
    ("bytes_sent", "bytes sent in audio messages (headers, PCM and piggybacked frames)"),
    ("underruns", "pacer ticks with no audio ready while an utterance was playing"),
    ("late_sends", "audio frames sent after the next frame's deadline had passed"),
    ("stale_dropped", "audio frames of an interrupted epoch dropped before sending"),
    ("ticks_dropped", "pacer ticks dropped because the daemon fell a second behind (not a client)"),
    (
        "grids_restarted",
        "utterances whose first frame went out after its deadline (one made due at once by"
        " 50 us, another by 1 ms): their grid starts with it",
    ),
)


class MeteredSession(Protocol):
    """What the metrics read of a session."""

    @property
    def observer(self) -> SessionObserver: ...
    @property
    def counters(self) -> DownlinkCounters: ...
    @property
    def error_code(self) -> ErrorCode | None: ...


class MeteredPacer(Protocol):
    """What the metrics read of the pacer."""

    @property
    def stalls(self) -> int: ...
    @property
    def stall_s(self) -> float: ...


class MeteredChurn(Protocol):
    """What the metrics read of the connections' turns (`duplexd._server.churn`)."""

    waited: int
    waited_s: float


class MeteredDaemon(Protocol):
    """What the metrics read of the daemon."""

    @property
    def pacer(self) -> MeteredPacer: ...

    @property
    def sessions(self) -> Collection[MeteredSession]: ...
    @property
    def sessions_total(self) -> int: ...
    @property
    def max_sessions(self) -> int: ...
    @property
    def draining(self) -> bool: ...
    @property
    def rejected(self) -> Mapping[str, int]: ...
    @property
    def churn(self) -> MeteredChurn: ...
    @property
    def engines(self) -> EngineSet: ...


class _Totals:
    """What ended sessions contributed."""

    def __init__(self) -> None:
        self.counters = dict.fromkeys((name for name, _ in _COUNTERS), 0)
        self.utterances = 0
        self.interrupts = 0
        self.engine_s = 0.0
        self.audio_s = 0.0
        self.input_s = 0.0
        self.errors: dict[str, int] = {}
        self.pacing = pacing_histogram()
        self.first_audio = first_audio_histogram()
        self.interrupt = interrupt_histogram()
        self.barge_in = barge_in_histogram()


class DaemonMetrics(Collector):
    """The daemon's metrics. `attach(daemon)` once it listens; `session_closed` as each
    session ends (pass it to `serve_duplexd(on_session_closed=...)`)."""

    def __init__(
        self, ready: Callable[[], bool] = lambda: False, garbage: GarbagePolicy | None = None
    ) -> None:
        self.daemon: MeteredDaemon | None = None
        self._ready = ready
        self._garbage = garbage
        self._totals = _Totals()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def attach(self, daemon: MeteredDaemon) -> None:
        self.daemon = daemon

    def session_closed(self, session: MeteredSession) -> None:
        t = self._totals
        o = session.observer
        t.utterances += o.utterances_done
        t.interrupts += o.interrupts
        t.engine_s += o.engine_s
        t.audio_s += o.audio_s
        t.input_s += o.input_s
        code = session.error_code
        if code is not None:
            t.errors[code.name] = t.errors.get(code.name, 0) + 1
        c = session.counters
        for name in t.counters:
            t.counters[name] += getattr(c, name)
        t.pacing.merge(c.pacing_error)
        t.first_audio.merge(o.first_audio)
        t.interrupt.merge(o.interrupt)
        t.barge_in.merge(o.barge_in)

    def render(self) -> bytes:
        """The exposition text (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ the collector

    def collect(self) -> Iterator[Metric]:
        t = self._totals
        daemon = self.daemon
        sessions = list(daemon.sessions) if daemon is not None else []
        counters = dict(t.counters)
        utterances, interrupts = t.utterances, t.interrupts
        engine_s, audio_s, input_s = t.engine_s, t.audio_s, t.input_s
        pacing = [t.pacing]
        first_audio = [t.first_audio]
        interrupt = [t.interrupt]
        barge_in = [t.barge_in]
        for s in sessions:
            o = s.observer
            utterances += o.utterances_done
            interrupts += o.interrupts
            engine_s += o.engine_s
            audio_s += o.audio_s
            input_s += o.input_s
            c = s.counters
            for name in counters:
                counters[name] += getattr(c, name)
            pacing.append(c.pacing_error)
            first_audio.append(o.first_audio)
            interrupt.append(o.interrupt)
            barge_in.append(o.barge_in)

        yield _gauge("duplexd_up", "1 while the process runs", 1)
        info = GaugeMetricFamily("duplexd_build_info", "duplexd version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield _gauge("duplexd_ready", "1 when /readyz answers 200", int(self._ready()))
        draining = daemon.draining if daemon is not None else False
        yield _gauge("duplexd_draining", "1 while draining after SIGTERM", int(draining))
        yield _gauge("duplexd_sessions_active", "sessions open now", len(sessions))
        max_sessions = daemon.max_sessions if daemon is not None else 0
        yield _gauge("duplexd_sessions_max", "configured session limit (0: none)", max_sessions)
        total = daemon.sessions_total if daemon is not None else 0
        yield CounterMetricFamily("duplexd_sessions", "sessions accepted", value=total)
        rejected = CounterMetricFamily(
            "duplexd_sessions_rejected",
            "WebSocket upgrades refused (HTTP 4xx, 503), by reason",
            labels=["reason"],
        )
        for reason, n in sorted((daemon.rejected if daemon is not None else {}).items()):
            rejected.add_metric([reason], n)
        yield rejected
        churn = daemon.churn if daemon is not None else None
        yield CounterMetricFamily(
            "duplexd_churn_waits",
            "connections that waited for their turn to be accepted (queued in the listen"
            " queue) or to be ended with an Error (server.churn_per_s)",
            value=churn.waited if churn is not None else 0,
        )
        yield CounterMetricFamily(
            "duplexd_churn_wait_seconds",
            "how long they waited, in all",
            value=churn.waited_s if churn is not None else 0.0,
        )
        yield CounterMetricFamily(
            "duplexd_utterances", "utterances finished (done or interrupted)", value=utterances
        )
        yield CounterMetricFamily("duplexd_interrupts", "Interrupt frames handled", interrupts)
        for name, doc in _COUNTERS:
            yield CounterMetricFamily(f"duplexd_{name}", doc, value=counters[name])
        errors = CounterMetricFamily(
            "duplexd_session_errors", "sessions ended by an Error frame, by code", labels=["code"]
        )
        by_code = dict(t.errors)
        for s in sessions:  # a live session whose Error is being sent
            if (code := s.error_code) is not None:
                by_code[code.name] = by_code.get(code.name, 0) + 1
        for name, n in sorted(by_code.items()):
            errors.add_metric([name], n)
        yield errors

        yield _histogram(
            "duplexd_pacing_error_seconds",
            "|send time - ideal time| of each audio frame, server side",
            pacing,
            PACING_EDGES,
        )
        yield _histogram(
            "duplexd_first_audio_latency_seconds",
            "first Text of an utterance received -> its first Audio frame sent",
            first_audio,
            FIRST_AUDIO_EDGES,
        )
        yield _histogram(
            "duplexd_interrupt_latency_seconds",
            "Interrupt received -> Interrupted sent",
            interrupt,
            INTERRUPT_EDGES,
        )
        yield _histogram(
            "duplexd_vad_barge_in_latency_seconds",
            "speech detected on the uplink -> agent audio cut (full-duplex sessions)",
            barge_in,
            BARGE_IN_EDGES,
        )

        yield CounterMetricFamily(
            "duplexd_client_input_seconds",
            "event-loop time spent decoding and acting on clients' frames",
            value=input_s,
        )
        pacer = daemon.pacer if daemon is not None else None
        yield CounterMetricFamily(
            "duplexd_loop_stalls",
            "times the event loop woke the pacer over 100 ms late (the daemon's stalls)",
            value=pacer.stalls if pacer is not None else 0,
        )
        yield CounterMetricFamily(
            "duplexd_loop_stall_seconds",
            "how late those wake-ups were, in total",
            value=pacer.stall_s if pacer is not None else 0.0,
        )
        yield from self._gc()
        yield CounterMetricFamily(
            "duplexd_engine_compute_seconds", "engine time spent synthesizing", value=engine_s
        )
        yield CounterMetricFamily(
            "duplexd_engine_audio_seconds", "audio the engine produced", value=audio_s
        )
        yield _gauge(
            "duplexd_engine_rtf",
            "real-time factor since start: compute seconds per audio second",
            engine_s / audio_s if audio_s > 0 else 0.0,
        )
        yield from self._batches()

    def _gc(self) -> Iterable[Metric]:
        """The garbage collector's full collections and sweeps (`duplexd._ops.collector`):
        each stalls the event loop."""
        if self._garbage is None:
            return
        g = self._garbage.stats()
        yield CounterMetricFamily(
            "duplexd_gc_full_collections",
            "full garbage collections (each stalls the event loop; survivors are frozen)",
            value=g.full_collections,
        )
        yield CounterMetricFamily(
            "duplexd_gc_full_collection_seconds",
            "time those full collections took, in total",
            value=g.full_collection_s,
        )
        yield CounterMetricFamily(
            "duplexd_gc_sweeps", "sweeps of the frozen objects (full stalls)", value=g.sweeps
        )
        yield CounterMetricFamily(
            "duplexd_gc_sweep_seconds", "time those sweeps took, in total", value=g.sweep_s
        )
        yield _gauge(
            "duplexd_gc_longest_full_collection_seconds",
            "the longest of those full collections (the loop's longest stall of this kind)",
            g.longest_s,
        )
        yield CounterMetricFamily(
            "duplexd_gc_swept_objects",
            "garbage the sweeps found in the frozen set (cycles that died after being frozen)",
            value=g.collected,
        )
        yield CounterMetricFamily(
            "duplexd_gc_settles",
            "times newly opened sessions' objects were frozen (no walk: they are never collected)",
            value=g.settled,
        )
        yield _gauge(
            "duplexd_gc_frozen_objects",
            "objects out of the collector's reach (counted after each full collection)",
            g.frozen,
        )

    def _batches(self) -> Iterable[Metric]:
        daemon = self.daemon
        fam = HistogramMetricFamily(
            "duplexd_engine_batch_size", "requests per inference batch", labels=["engine"]
        )
        if daemon is not None:
            for name in daemon.engines.names():
                worker = getattr(daemon.engines.get(name), "worker", None)
                counts = getattr(worker, "batch_size_counts", None)
                if not isinstance(counts, list):
                    continue
                counts = list(counts)  # written by the inference threads (under their lock)
                buckets = []
                for edge in BATCH_EDGES:
                    buckets.append((str(float(edge)), sum(counts[: edge + 1])))
                buckets.append(("+Inf", sum(counts)))
                total = sum(n * c for n, c in enumerate(counts))
                fam.add_metric([name], buckets, float(total))
        yield fam


class ModelMetrics(Collector):
    """A model process's metrics (`duplexd serve-model --http-port`), read from `stats()`
    (its `ModelServer.stats`) when scraped."""

    def __init__(self, stats: Callable[[], ModelStats]) -> None:
        self._stats = stats
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield _gauge("duplexd_model_up", "1 while the model process serves", 1)
        yield _gauge("duplexd_model_connections", "daemons connected now", s.connections)
        yield _gauge(
            "duplexd_model_requests_active",
            "pieces being made or waiting for the daemon's next pull",
            s.requests_active,
        )
        yield CounterMetricFamily(
            "duplexd_model_requests",
            "pieces asked for and voices opened (each daemon's check opens one a second)",
            value=s.requests,
        )
        yield CounterMetricFamily("duplexd_model_chunks", "chunks sent", value=s.chunks)
        yield CounterMetricFamily(
            "duplexd_model_audio_seconds", "seconds of audio sent", value=s.audio_s
        )
        yield CounterMetricFamily(
            "duplexd_model_engine_seconds",
            "seconds spent in engine calls (not waiting for a turn), summed over the calls",
            value=s.engine_s,
        )
        failures = CounterMetricFamily(
            "duplexd_model_failures", "requests failed, by reason", labels=["reason"]
        )
        for reason, name in MODEL_FAILURE_REASONS.items():
            failures.add_metric([name], s.failures.get(reason, 0))
        yield failures


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _histogram(
    name: str, doc: str, parts: list[Histogram], edges: list[float]
) -> HistogramMetricFamily:
    cumulative = [0] * len(edges)
    count = 0
    total = 0.0
    for h in parts:
        if not h.count:
            continue
        count += h.count
        total += h.sum_s
        for i, n in enumerate(h.counts_below(edges)):
            cumulative[i] += n
    buckets = [(_le(e), n) for e, n in zip(edges, cumulative, strict=True)]
    buckets.append(("+Inf", count))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


def _le(edge: float) -> str:
    return repr(float(edge))
