"""Percentiles and aggregation of what the load workers measured.

Client-side samples are kept raw (a float per frame is cheap: 100 sessions x 10 s is 50,000
values), so client percentiles are exact. The server only reports per-session summaries of its
pacing error (`session.stats()["pacing_error_ms"]`: p50/p95/p99/max/count); `merge_server`
combines them as documented there, or adds raw histograms up exactly when the server sends them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

FRAME_S = 0.020
# "A gap of more than one frame inside an utterance": at least one whole frame period went by
# with nothing (one skipped 20 ms tick makes a 40 ms gap); the half frame of slack keeps plain
# jitter (a frame 5 ms late, the next on time) from counting.
UNDERRUN_GAP_S = 1.5 * FRAME_S

# Keys every worker result carries (lists of floats are in seconds).
SAMPLE_KEYS = (
    "jitter",
    "inter_arrival",
    "fal",
    "barge_in",
    "barge_last_audio",
    "vad_barge_in",
    "underrun_at",  # (time.monotonic(), session) of each underrun: the stalls (bench.steal)
    "vad_false_at",  # seconds into the session's uplink of each VAD false trigger
    "vad_soft_resumed_why",  # (strings) "REASON: text" of each `vad_soft_resumed`
)
COUNT_KEYS = (
    "frames",
    "underruns",
    "stale_after_interrupted",
    "interrupts",
    "utterances",
    "utterances_done",
    "session_errors",
    "connect_failures",
    # --uplink (bench.uplink)
    "uplink_frames",
    "uplink_late_frames",
    "uplink_noise_s",  # seconds of uplink outside speech windows (float)
    "vad_injected",
    "vad_missed",
    "vad_no_target",
    "vad_soft_resumed",  # soft barge-in: a hold over the user's clip that RESUMED
    "vad_speech_started",
    "vad_false_speech_started",
    "vad_false_barge_ins",
)


def percentiles_ms(values: Sequence[float] | np.ndarray, qs: Iterable[int] = (50, 95, 99)) -> dict:
    """{"p50": ..., "p95": ..., "p99": ..., "max": ..., "count": n} in ms (NaN when empty)."""
    arr = np.asarray(values, dtype=np.float64)
    out: dict[str, Any] = {}
    if arr.size == 0:
        out.update({f"p{q}": math.nan for q in qs})
        out["max"] = math.nan
    else:
        for q, v in zip(qs, np.percentile(arr, list(qs)), strict=True):
            out[f"p{q}"] = round(float(v) * 1e3, 4)
        out["max"] = round(float(arr.max()) * 1e3, 4)
    out["count"] = int(arr.size)
    return out


def merge_workers(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate the samples and add up the counters of every worker of one run."""
    merged: dict[str, Any] = {k: [] for k in SAMPLE_KEYS}
    merged.update({k: 0 for k in COUNT_KEYS})
    merged["server_stats"] = []
    merged["client_cpu_percent"] = []
    merged["loop_lag"] = []
    merged["errors"] = []
    merged["error_kinds"] = {}
    merged["engine_device"] = ""
    for r in results:
        for k in SAMPLE_KEYS:
            merged[k].extend(r[k])
        for k in COUNT_KEYS:
            merged[k] += r[k]
        merged["server_stats"].extend(r["server_stats"])
        merged["client_cpu_percent"].append(r["cpu_percent"])
        merged["loop_lag"].extend(r["loop_lag"])
        merged["errors"].extend(r["errors"])
        for kind, n in r.get("error_kinds", {}).items():
            merged["error_kinds"][kind] = merged["error_kinds"].get(kind, 0) + n
        merged["engine_device"] = merged["engine_device"] or r.get("engine_device", "")
    return merged


def merge_server(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the per-session server counters of one run.

    Pacing error: if every session sent a raw histogram (`pacing_error_hist`: {bucket: count}
    with `pacing_error_bucket_ms`), the histograms are added up and read exactly. Otherwise the
    summaries are combined: p50/p95/p99 are the frame-count-weighted means of the sessions'
    percentiles (an estimate: exact only if all sessions share one distribution), `max` is the
    max, and `p95_worst_session` is the largest per-session p95 (an upper bound of the true p95);
    frames sent 5 and 20 ms or more off their deadlines (`over_5ms`, `over_20ms`) are summed
    from the sessions' own counts (`pacing_error_over_ms`) where every session sent them.
    """
    pacing = [s["pacing_error_ms"] for s in stats if s.get("pacing_error_ms", {}).get("count")]
    out: dict[str, Any] = {
        "frames_sent": sum(s.get("frames_sent", 0) for s in stats),
        "bytes_sent": sum(s.get("bytes_sent", 0) for s in stats),
        "underruns": sum(s.get("underruns", 0) for s in stats),
        "late_sends": sum(s.get("late_sends", 0) for s in stats),
        "engine_s": sum(s.get("engine_s", 0.0) for s in stats),
        "audio_s": sum(s.get("audio_s", 0.0) for s in stats),
    }
    out["rtf"] = round(out["engine_s"] / out["audio_s"], 4) if out["audio_s"] else math.nan
    if not pacing:
        nan = math.nan
        out["pacing"] = {"p50": nan, "p95": nan, "p99": nan, "max": nan, "count": 0}
        out["pacing"].update({"p95_worst_session": nan, "method": "none"})
        return out
    if all("pacing_error_hist" in s for s in stats if s.get("pacing_error_ms", {}).get("count")):
        out["pacing"] = _merge_histograms(stats)
        return out
    counts = np.array([p["count"] for p in pacing], dtype=np.float64)
    total = counts.sum()
    summary: dict[str, Any] = {
        q: round(float(np.dot(counts, [p[q] for p in pacing]) / total), 4)
        for q in ("p50", "p95", "p99")
    }
    summary["max"] = max(p["max"] for p in pacing)
    summary["count"] = int(total)
    summary["p95_worst_session"] = max(p["p95"] for p in pacing)
    summary["method"] = "count-weighted mean of per-session percentiles"
    over = [
        s.get("pacing_error_over_ms") for s in stats if s.get("pacing_error_ms", {}).get("count")
    ]
    if all(isinstance(o, dict) for o in over):  # (duplexd counts them itself: exact)
        for ms in (5, 20):
            summary[f"over_{ms}ms"] = sum(int(o.get(str(ms), 0)) for o in over)
    out["pacing"] = summary
    return out


def _merge_histograms(stats: list[dict[str, Any]]) -> dict[str, Any]:
    bucket_ms = float(stats[0].get("pacing_error_bucket_ms", 0.025))
    counts: dict[int, int] = {}
    worst = 0.0
    for s in stats:
        for b, c in s.get("pacing_error_hist", {}).items():
            counts[int(b)] = counts.get(int(b), 0) + int(c)
        if s.get("pacing_error_ms", {}).get("count"):
            worst = max(worst, s["pacing_error_ms"]["p95"])
    total = sum(counts.values())
    keys = sorted(counts)
    mx = max(s["pacing_error_ms"]["max"] for s in stats if s.get("pacing_error_ms"))
    out: dict[str, Any] = {}
    for q in (50, 95, 99):
        rank, seen = q / 100 * total, 0
        for b in keys:
            seen += counts[b]
            if seen >= rank:
                out[f"p{q}"] = round(min((b + 1) * bucket_ms, mx), 4)
                break
    out.update({"max": mx, "count": total, "p95_worst_session": worst})
    for ms in (5, 20):  # frames sent that much after their deadline (to a bucket)
        out[f"over_{ms}ms"] = sum(c for b, c in counts.items() if b * bucket_ms >= ms)
    out["method"] = "sum of raw server histograms"
    return out


def ratio(a: float, b: float) -> float:
    """a / b, NaN when undefined."""
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return math.nan
    return round(a / b, 3)
