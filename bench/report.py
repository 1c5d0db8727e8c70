"""Turn the measured runs into the JSON document and the Markdown report (goal vs measured)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import cpus
from .metrics import merge_server, percentiles_ms, ratio
from .steal import LATE_MS, STALL_HELD_MS, STALL_STOLEN_MS

# A client worker this busy (or waking this late) may be timing arrivals late itself.
CLIENT_CPU_SATURATED = 85.0
CLIENT_LAG_P99_MS = 5.0


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """One server's numbers at one level (the schema's level keys, and more)."""
    server = merge_server(run["server_stats"])
    pct = {k: percentiles_ms(run[k]) for k in ("jitter", "inter_arrival", "fal", "barge_in")}
    lag = percentiles_ms(run["loop_lag"])
    client_cpu = max(run["client_cpu_percent"], default=math.nan)
    n = run["sessions"]
    level = {
        "sessions": n,
        "jitter_ms": pct["jitter"],
        "inter_arrival_dev_ms": pct["inter_arrival"],
        "server_jitter_ms": server["pacing"],
        "fal_ms": pct["fal"],
        "barge_in_ms": pct["barge_in"],
        "barge_in_last_audio_ms": percentiles_ms(run["barge_last_audio"]),
        "late_frames": {
            f"over_{ms}ms": sum(1 for j in run["jitter"] if j > ms / 1000) for ms in (5, 20, 40)
        },
        "underruns": run["underruns"],
        "server_underruns": server["underruns"],
        "late_sends": server["late_sends"],
        "frames": run["frames"],
        "bytes": server["bytes_sent"],
        # every byte sent (control frames included) per audio frame received
        "bytes_per_frame": round(server["bytes_sent"] / run["frames"], 1) if run["frames"] else 0,
        "cpu_percent": round(run["cpu_percent"], 2),
        "cpu_percent_per_session": round(run["cpu_percent"] / n, 3),
        "cpu_kernel_percent": round(run.get("cpu_kernel_percent", math.nan), 2),
        # all the server's CPU over the frames it sent: servers that send more audio compare
        "cpu_us_per_frame": round(1e6 * run.get("cpu_s", math.nan) / frames_sent, 1)
        if (frames_sent := server["frames_sent"])
        else math.nan,
        "loop_wakeups_per_s": round(run.get("loop_wakeups_per_s", math.nan), 1),
        "rss_mb": round(run["rss_mb"], 1),
        "machine": run.get("machine"),
        "rtf": server["rtf"],
        "utterances": run["utterances"],
        "utterances_done": run["utterances_done"],
        "interrupts": run["interrupts"],
        "stale_after_interrupted": run["stale_after_interrupted"],
        "session_errors": run["session_errors"],
        "connect_failures": run["connect_failures"],
        "errors": run["errors"],
        "client": {
            "workers": run["workers"],
            "cpu_percent_max_worker": round(client_cpu, 1),
            "loop_lag_ms": lag,
            "saturated": bool(client_cpu > CLIENT_CPU_SATURATED or lag["p99"] > CLIENT_LAG_P99_MS),
        },
    }
    level.update(_uplink_summary(run))
    return level


def _uplink_summary(run: dict[str, Any]) -> dict[str, Any]:
    """The --uplink keys; NaN (null in JSON, n/a in Markdown) for a run without an uplink."""
    nan = math.nan
    if not run.get("uplink"):
        return {
            "vad_barge_in_ms": {"p50": nan, "p95": nan, "p99": nan, "max": nan, "count": 0},
            "vad_barge_in_ms_each": [],
            "vad_false_at_s": [],
            "vad_soft_resumed_why": [],
            **{k: nan for k in UPLINK_COUNTS},
            "vad_false_triggers_per_min": nan,
            "uplink_server": None,
        }
    false = run["vad_false_speech_started"] + run["vad_false_barge_ins"]
    noise_min = run["uplink_noise_s"] / 60
    stats = [s for s in run["server_stats"] if "uplink_frames" in s]

    def summed(*keys: str) -> dict[str, int]:
        """Each of `keys` (a STATS count), summed over the sessions."""
        return {k: sum(s.get(k, 0) for s in stats) for k in keys}

    windows, barges = summed("vad_windows", "vad_barge_ins").values()
    vad_ms = sum(s.get("vad_windows", 0) * s.get("vad_ms_per_window", 0.0) for s in stats)
    return {
        "vad_barge_in_ms": percentiles_ms(run["vad_barge_in"]),
        "vad_barge_in_ms_each": sorted(round(1000 * x, 1) for x in run["vad_barge_in"]),
        "vad_false_at_s": sorted(round(x, 2) for x in run.get("vad_false_at", ())),
        "vad_false_triggers": false,
        "vad_false_triggers_per_min": round(false / noise_min, 3) if noise_min else nan,
        "vad_false_speech_started": run["vad_false_speech_started"],
        "vad_false_barge_ins": run["vad_false_barge_ins"],
        "vad_missed": run["vad_missed"],
        "vad_no_target": run["vad_no_target"],
        "vad_soft_resumed": run["vad_soft_resumed"],
        "vad_soft_resumed_why": sorted(run.get("vad_soft_resumed_why", ())),
        "vad_injected": run["vad_injected"],
        "vad_speech_started": run["vad_speech_started"],
        "uplink_frames": run["uplink_frames"],
        "uplink_late_frames": run["uplink_late_frames"],
        "uplink_noise_min": round(noise_min, 3),
        "uplink_server": {
            **summed("uplink_frames"),
            "vad_windows": windows,
            "vad_ms_per_window": round(vad_ms / windows, 4) if windows else nan,
            **summed("echo_windows", "echo_vetoes", "echo_realignments"),
            # windows whose voice was the microphone's own (micvoice.py), found louder than the
            # echo but coherent with it (coherence.py), judged while AEC3 converged where no
            # echo could reach (converging.py), or silence: AEC3 let the echo through (leak.py)
            **summed(
                "echo_mic_windows",
                "echo_coherent_windows",
                "echo_quiet_windows",
                "echo_leak_windows",
            ),
            **summed("echo_playout_moves"),
            # late frames played either way: tried, and placed the other way (placement.py)
            "echo_placements": [
                sum(s.get("echo_placements", (0, 0))[i] for s in stats) for i in (0, 1)
            ],
            "echo_slide_ppm": [s["echo_slide_ppm"] for s in stats if "echo_slide_ppm" in s],
            # each session's echo taken out by AEC3, and then of its tail (late.py), dB
            "echo_removed_db": [s["echo_removed_db"] for s in stats if "echo_removed_db" in s],
            "echo_late_removed_db": [
                s["echo_late_removed_db"] for s in stats if "echo_late_removed_db" in s
            ],
            "echo_late_hops": [s["echo_late_hops"] for s in stats if "echo_late_hops" in s],
            **summed("inbox_dropped", "speech_segments"),
            "vad_barge_ins": barges,
            # ... of which decided by a window between the VAD's (halfstep.py), and those windows
            **summed("vad_barge_ins_between", "vad_half_windows"),
            # soft barge-ins: the holds, their words checks, and those decoded again because
            # the transcript at hand had no words (transcripts.py)
            **summed(
                "soft_holds",
                "soft_holds_resumed",
                "soft_hold_checks",
                "soft_hold_checks_from_final",
                "soft_hold_checks_again",
            ),
            "vad_barge_in_delay_ms_mean": (
                round(
                    sum(
                        s.get("vad_barge_in_delay_ms_mean", 0.0) * s["vad_barge_ins"] for s in stats
                    )
                    / barges,
                    3,
                )
                if barges
                else nan
            ),
            "vad_barge_in_delay_ms_max": max(
                (s.get("vad_barge_in_delay_ms_max", 0.0) for s in stats), default=nan
            ),
            **summed("transcripts"),
            "asr_s": round(sum(s.get("asr_s", 0.0) for s in stats), 4),
        },
    }


UPLINK_COUNTS = (
    "vad_false_triggers",
    "vad_false_speech_started",
    "vad_false_barge_ins",
    "vad_missed",
    "vad_no_target",
    "vad_soft_resumed",
    "vad_injected",
    "vad_speech_started",
    "uplink_frames",
    "uplink_late_frames",
    "uplink_noise_min",
)


@dataclass(frozen=True)
class Goal:
    label: str
    path: tuple[str, ...]
    steps: tuple[tuple[int, float], ...]  # (up to this many sessions, threshold)

    def threshold(self, sessions: int) -> tuple[float, bool]:
        """(threshold, beyond): `beyond` when `sessions` is past the last stated level."""
        for limit, value in self.steps:
            if sessions <= limit:
                return value, False
        return self.steps[-1][1], True


def goals_for(engine: str, device: str, uplink: bool = False) -> list[Goal]:
    goals: list[Goal] = []
    if engine == "tone":
        goals += [
            Goal("server pacing error p95 (ms)", ("server_jitter_ms", "p95"), ((1, 0.5), (100, 1))),
            Goal("client jitter p95 (ms)", ("jitter_ms", "p95"), ((100, 2.0),)),
            Goal("underruns", ("underruns",), ((100, 0),)),
        ]
        if not uplink:  # with the uplink the interrupters barge in by voice, not Interrupt
            goals.append(
                Goal("interrupt -> Interrupted p95 (ms)", ("barge_in_ms", "p95"), ((100, 2.0),))
            )
    elif device == "cuda":
        goals += [Goal("FAL p95 (ms)", ("fal_ms", "p95"), ((1, 15.0), (256, 100.0)))]
    else:
        goals += [Goal("FAL p95 (ms)", ("fal_ms", "p95"), ((1, 150.0),))]
    if uplink:
        goals += [
            Goal(UPLINK_ROWS[1][0], UPLINK_ROWS[1][1], ((100, 100.0),)),
            Goal("VAD false triggers", ("vad_false_triggers",), ((100, 0),)),
        ]
    return goals


def rows_for(doc: dict[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return RATIO_ROWS + (UPLINK_ROWS if doc.get("uplink") else ())


def _get(d: dict[str, Any], path: tuple[str, ...]) -> float:
    for k in path:
        if d is None:
            return math.nan
        d = d.get(k)  # (a key some servers do not report: n/a)
    return float(d) if d is not None else math.nan  # type: ignore[arg-type]


def build_document(
    meta: dict[str, Any], levels: list[tuple[dict[str, Any], dict[str, Any] | None]]
) -> dict[str, Any]:
    out_levels = []
    for dx, base in levels:
        level = dict(dx)
        if base is not None:
            level["baseline"] = base
            level["ratio"] = {
                name: ratio(_get(dx, path), _get(base, path)) for name, path in rows_for(meta)
            }
        out_levels.append(level)
    doc = dict(meta)
    doc["levels"] = out_levels
    doc["goals"] = [
        {"metric": g.label, "path": list(g.path), "steps": [list(s) for s in g.steps]}
        for g in goals_for(meta["engine"], meta["device"], bool(meta.get("uplink")))
    ]
    return doc


def to_json(doc: dict[str, Any]) -> str:
    """Strict JSON: NaN and infinities become null."""

    def clean(x: Any) -> Any:
        if isinstance(x, float | np.floating):
            return float(x) if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(doc), indent=2, allow_nan=False)


# (row label, path): rows of the per-level table, all compared with the baseline.
RATIO_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("server pacing error p50 (ms)", ("server_jitter_ms", "p50")),
    ("server pacing error p95 (ms)", ("server_jitter_ms", "p95")),
    ("server pacing error p99 (ms)", ("server_jitter_ms", "p99")),
    ("server pacing error max (ms)", ("server_jitter_ms", "max")),
    ("client jitter p50 (ms)", ("jitter_ms", "p50")),
    ("client jitter p95 (ms)", ("jitter_ms", "p95")),
    ("client jitter p99 (ms)", ("jitter_ms", "p99")),
    ("client jitter max (ms)", ("jitter_ms", "max")),
    ("inter-arrival |gap-20ms| p95 (ms)", ("inter_arrival_dev_ms", "p95")),
    ("frames sent >= 5 ms off their deadlines (server)", ("server_jitter_ms", "over_5ms")),
    ("frames sent >= 20 ms off their deadlines (server)", ("server_jitter_ms", "over_20ms")),
    ("frames > 5 ms off the grid (client)", ("late_frames", "over_5ms")),
    ("frames > 20 ms off the grid (client)", ("late_frames", "over_20ms")),
    ("underruns", ("underruns",)),
    ("stalls: a quarter of the sessions or more ran dry at once", ("machine", "stalls")),
    (
        f"... with >= {STALL_STOLEN_MS:g} ms stolen from the daemon's CPUs just before",
        ("machine", "stalls_with_theft"),
    ),
    (
        f"... with the clients' CPU held up too (the witness >= {STALL_HELD_MS:g} ms late)",
        ("machine", "stalls_clients_cpu_held"),
    ),
    (
        f"... with a garbage collection or sweep of the daemon's >= {LATE_MS:g} ms then",
        ("machine", "stalls_with_gc"),
    ),
    ("the daemon's longest garbage collection or sweep (ms)", ("machine", "daemon_gc_longest_ms")),
    ("FAL p50 (ms)", ("fal_ms", "p50")),
    ("FAL p95 (ms)", ("fal_ms", "p95")),
    ("FAL p99 (ms)", ("fal_ms", "p99")),
    ("interrupt -> Interrupted p50 (ms)", ("barge_in_ms", "p50")),
    ("interrupt -> Interrupted p95 (ms)", ("barge_in_ms", "p95")),
    ("interrupt -> Interrupted p99 (ms)", ("barge_in_ms", "p99")),
    ("interrupt -> last audio p95 (ms)", ("barge_in_last_audio_ms", "p95")),
    ("audio frames received", ("frames",)),
    ("bytes sent", ("bytes",)),
    ("bytes sent per audio frame", ("bytes_per_frame",)),
    ("server CPU % (100 = 1 core)", ("cpu_percent",)),
    ("server CPU % per session", ("cpu_percent_per_session",)),
    ("server CPU % in the kernel (of the above)", ("cpu_kernel_percent",)),
    ("server CPU per audio frame sent (us)", ("cpu_us_per_frame",)),
    ("server event loop wake-ups per s", ("loop_wakeups_per_s",)),
    ("server RSS (MB)", ("rss_mb",)),
    (
        "CPU time the hypervisor stole from the daemon's CPUs (ms)",
        ("machine", "daemon_cpus_stolen_ms"),
    ),
)
# --uplink rows (the baseline has no uplink: n/a).
UPLINK_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("speech onset -> Interrupted(vad) p50 (ms)", ("vad_barge_in_ms", "p50")),
    ("speech onset -> Interrupted(vad) p95 (ms)", ("vad_barge_in_ms", "p95")),
    ("speech onset -> Interrupted(vad) p99 (ms)", ("vad_barge_in_ms", "p99")),
    ("VAD barge-ins measured", ("vad_barge_in_ms", "count")),
    ("speech clips injected", ("vad_injected",)),
    ("VAD missed barge-ins (none within 2 s)", ("vad_missed",)),
    ("utterance ended before the VAD barge-in", ("vad_no_target",)),
    ("soft holds over the user's clip resumed (a true barge-in forgiven)", ("vad_soft_resumed",)),
    ("VAD false triggers", ("vad_false_triggers",)),
    ("VAD false triggers per noise-only session-minute", ("vad_false_triggers_per_min",)),
    ("uplink frames sent", ("uplink_frames",)),
    ("uplink frames sent > 20 ms late", ("uplink_late_frames",)),
    ("server VAD ms per 32 ms window", ("uplink_server", "vad_ms_per_window")),
    (
        "server: deciding frame in -> barge-in, mean (ms)",
        ("uplink_server", "vad_barge_in_delay_ms_mean"),
    ),
    (
        "server: deciding frame in -> barge-in, max (ms)",
        ("uplink_server", "vad_barge_in_delay_ms_max"),
    ),
)


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    if abs(x) >= 1000 or x == int(x):
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def _verdict(value: float, threshold: float, beyond: bool) -> str:
    if not math.isfinite(value):
        return "NO DATA"
    verdict = "PASS" if value <= threshold else "MISS"
    return f"{verdict} (beyond goal level)" if beyond else verdict


def _load_sentence(doc: dict[str, Any]) -> str:
    burst = doc.get("burst")
    if burst:
        return (
            f"every session sends a whole {burst['chars']}-character reply at the same instant,"
            f" every {burst['every_s']:g} s"
        )
    return f"{doc['tokens_per_s']:g} tokens/s, interrupt fraction {doc['interrupt_fraction']:g}"


def markdown(doc: dict[str, Any]) -> str:
    goals = goals_for(doc["engine"], doc["device"], bool(doc.get("uplink")))
    by_path = {g.path: g for g in goals}
    lines = [
        f"# duplexd bench: engine {doc['engine']}, device {doc['device']}, "
        f"{doc['duration_s']:g} s per level, rev {doc['git_rev']}",
        "",
        f"Load: {_load_sentence(doc)}, seed {doc['seed']}; {cpus.sentence(doc)}. "
        "Client jitter = |arrival - (first frame of utterance + n x 20 ms)|; "
        f"server pacing error: {doc['server_merge']}.",
        "",
    ]
    if doc.get("codec", "pcm") != "pcm":  # (the SDK decodes and encodes: measured as PCM)
        both = " both ways" if doc.get("uplink") else ""
        lines += [f"Codec: {doc['codec']}{both} (duplexd; the baseline speaks PCM).", ""]
    up = doc.get("uplink")
    if up:
        echo = "off"
        if up["echo_db"] is not None:
            echo = f"{up['echo_db']:g} dB, {up['echo_delay_ms']:g} ms"
            if up.get("echo_room"):
                echo = f"room {up['echo_room']} (bench/rooms.py), {up['echo_db']:+g} dB"
            if "echo_playout_ms" in up:
                echo += f" after a {up['echo_playout_ms']:g} ms playout buffer"
            if up.get("echo_played"):
                echo += " (the player reports PLAYED)"
        if up.get("jitter_ms"):
            echo += f"; each frame {up['jitter_ms']:g} ms later on average (network jitter)"
        if up.get("drift_ppm"):
            echo += f"; the client's clock {up['drift_ppm']:+g} ppm off the server's"
            speaker = up.get("drift_speaker", "server")
            echo += f" (the speaker on the {speaker}'s clock)"
        lines += [
            f"Uplink: 16 kHz, 20 ms frames in real time per session; noise {up['noise_dbfs']:g} "
            f"dBFS; echo of the downlink {echo}; ASR {'on' if up['asr'] else 'off'}; "
            f"interrupters barge in by voice ({up['clip']}). VAD barge-in latency = send time "
            "of the AudioUp frame holding the speech onset -> Interrupted(vad) received; false "
            "triggers = SpeechStarted or Interrupted(vad) while only noise/echo was sent."
            + (
                " Soft barge-in (`vad.barge_in_mode`): the latency is the onset -> BARGE_IN"
                " HELD (the audio paused), a HELD while only noise/echo was sent a false"
                " trigger; a hold over the user's clip that RESUMED is counted apart."
                if up.get("barge_in_mode") == "soft"
                else ""
            ),
            "",
        ]
    for level in doc["levels"]:
        base = level.get("baseline")
        lines += [f"## {level['sessions']} session(s)", ""]
        head = "| metric | goal | duplexd | verdict |"
        sep = "|---|---|---:|---|"
        if base:
            head = "| metric | goal | duplexd | asyncio baseline | duplexd/baseline | verdict |"
            sep = "|---|---|---:|---:|---:|---|"
        lines += [head, sep]
        for label, path in rows_for(doc):
            value = _get(level, path)
            goal, verdict = "", ""
            if path in by_path:
                threshold, beyond = by_path[path].threshold(level["sessions"])
                goal = f"<= {_fmt(threshold)}"
                verdict = _verdict(value, threshold, beyond)
            if base:
                b = _get(base, path)
                r = level["ratio"][label]
                cells = [_fmt(value), _fmt(b), f"{r:.3g}x" if math.isfinite(r) else "n/a"]
            else:
                cells = [_fmt(value)]
            lines.append(f"| {label} | {goal} | " + " | ".join(cells) + f" | {verdict} |")
        lines += ["", *_level_notes(level), ""]
    lines += _summary(doc, goals)
    return "\n".join(lines)


def _level_notes(level: dict[str, Any]) -> list[str]:
    notes = []
    for name, d in (("duplexd", level), ("baseline", level.get("baseline"))):
        if not d:
            continue
        c = d["client"]
        notes.append(
            f"- {name}: {d['utterances']} utterances, {d['interrupts']} interrupts, "
            f"server underruns {d['server_underruns']}, late sends {d['late_sends']}, "
            f"RTF {_fmt(d['rtf'] if d['rtf'] is not None else math.nan)}; client: "
            f"{c['workers']} worker(s), max worker CPU {_fmt(c['cpu_percent_max_worker'])} %, "
            f"loop lag p99 {_fmt(c['loop_lag_ms']['p99'])} ms"
        )
        if c["saturated"]:
            notes.append(
                f"- **WARNING ({name}): the load generator is saturated (a worker over "
                f"{CLIENT_CPU_SATURATED:g} % CPU or its loop waking > {CLIENT_LAG_P99_MS:g} ms "
                "late at p99): client-side delays are in these numbers. Try --workers, fewer "
                "sessions, or more cores.**"
            )
        if d["stale_after_interrupted"]:
            notes.append(
                f"- **{name}: {d['stale_after_interrupted']} old-epoch audio frames "
                "arrived after Interrupted (protocol violation).**"
            )
        if d["session_errors"] or d["connect_failures"]:
            notes.append(
                f"- **{name}: {d['session_errors']} session errors, {d['connect_failures']} "
                f"failed connects: {'; '.join(d['errors'][:3])}**"
            )
    return notes


def _summary(doc: dict[str, Any], goals: list[Goal]) -> list[str]:
    lines = ["## Goals", ""]
    levels = doc["levels"]
    for g in goals:
        for limit, threshold in g.steps:
            at = [lv for lv in levels if lv["sessions"] == limit]
            if not at:
                lines.append(f"- {g.label} <= {_fmt(threshold)} at {limit} sessions: not measured")
                continue
            value = _get(at[0], g.path)
            lines.append(
                f"- {g.label} <= {_fmt(threshold)} at {limit} sessions: "
                f"**{_verdict(value, threshold, False)}** (measured {_fmt(value)})"
            )
        breaks = [
            lv["sessions"] for lv in levels if _get(lv, g.path) > g.threshold(lv["sessions"])[0]
        ]
        if breaks:
            lines.append(f"  - first missed at {breaks[0]} sessions")
    if doc["engine"] != "tone":
        ok = [
            lv["sessions"]
            for lv in levels
            if _get(lv, ("fal_ms", "p95")) <= 300 and lv["underruns"] == 0
        ]
        lines.append(
            "- capacity (FAL p95 <= 300 ms and 0 underruns): "
            + (f"{max(ok)} sessions of the levels run" if ok else "none of the levels run")
        )
    if any(lv["client"]["saturated"] for lv in levels):
        lines.append("- **The load generator saturated at some level: see the warnings.**")
    return lines


def print_and_save(result: dict[str, Any], path: str | None) -> None:
    """Print `result` as indented JSON, and write it to `path` too when one is given (the
    one-shot benches' `--json`)."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
