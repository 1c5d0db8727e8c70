"""The attack bench's JSON document and Markdown report: the good sessions without and with
attackers, side by side, goal vs measured; then what each attack sent and how it was answered."""

from __future__ import annotations

import math
from typing import Any

from . import cpus
from .hostile import ATTACKS
from .metrics import percentiles_ms
from .report import Goal, summarize
from .report import _fmt as fmt
from .report import _get as get
from .report import _verdict as verdict
from .report import to_json as to_json

PHASES = ("without", "with")
GOALS = (
    Goal("server pacing error p95 (ms)", ("server_jitter_ms", "p95"), ((1, 0.5), (100, 1.0))),
    Goal("client jitter p95 (ms)", ("jitter_ms", "p95"), ((100, 2.0),)),
    Goal("good sessions killed", ("killed",), ((100, 0),)),
)
# (label, path): the rows of the good sessions' table.
ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("client jitter p50 (ms)", ("jitter_ms", "p50")),
    ("client jitter p95 (ms)", ("jitter_ms", "p95")),
    ("client jitter p99 (ms)", ("jitter_ms", "p99")),
    ("client jitter max (ms)", ("jitter_ms", "max")),
    ("server pacing error p50 (ms)", ("server_jitter_ms", "p50")),
    ("server pacing error p95 (ms)", ("server_jitter_ms", "p95")),
    ("server pacing error p99 (ms)", ("server_jitter_ms", "p99")),
    ("server pacing error max (ms)", ("server_jitter_ms", "max")),
    ("sessions whose pacing the server reported", ("sessions_reporting_pacing",)),
    ("underruns (client)", ("underruns",)),
    ("underruns (server)", ("server_underruns",)),
    ("good sessions killed", ("killed",)),
    ("good sessions lost (no stats at hang-up)", ("lost",)),
    ("FAL p50 (ms)", ("fal_ms", "p50")),
    ("FAL p95 (ms)", ("fal_ms", "p95")),
    ("interrupt -> Interrupted p95 (ms)", ("barge_in_ms", "p95")),
    ("utterances done", ("utterances_done",)),
    ("audio frames received", ("frames",)),
    ("daemon CPU % (100 = 1 core)", ("daemon", "cpu_percent")),
    ("daemon RSS peak (MB, VmHWM)", ("daemon", "rss_peak_mb")),
    ("/healthz p50 (ms)", ("healthz_ms", "p50")),
    ("/healthz p95 (ms)", ("healthz_ms", "p95")),
    ("/healthz max (ms)", ("healthz_ms", "max")),
    ("/healthz failed", ("healthz_ms", "failed")),
    ("attackers' CPU % (all)", ("attackers_cpu_percent",)),
    ("good clients' CPU % (busiest worker)", ("client", "cpu_percent_max_worker")),
)


def summarize_phase(phase: dict[str, Any]) -> dict[str, Any]:
    """One run's numbers (`bench.attack.run_phase`'s raw measurements)."""
    level = phase["level"]
    out = summarize(level)
    out["killed"] = level["session_errors"] + level["connect_failures"]
    out["killed_by"] = dict(sorted(level["error_kinds"].items()))
    out["sessions_reporting_pacing"] = len(level["server_stats"])
    # neither killed nor hung up with stats: the daemon did not answer the hang-up within
    # 10 s, or their worker process gave no result (its sessions are unaccounted for)
    out["lost"] = max(0, level["sessions"] - out["killed"] - len(level["server_stats"]))
    health = phase["healthz"]
    out["healthz_ms"] = percentiles_ms(health.get("elapsed_s", []))
    out["healthz_ms"]["failed"] = sum(health.get("failures", {}).values())
    out["healthz_ms"]["failures"] = health.get("failures", {})
    if "fatal" in health:
        out["healthz_ms"]["fatal"] = health["fatal"]
    out["daemon"] = {
        "cpu_percent": out["cpu_percent"],
        "rss_mb_sampled_max": out["rss_mb"],
        "rss_peak_mb": round(phase["daemon"]["rss_peak_mb"], 1),
        "exit_code": phase["daemon"]["exit_code"],
        "log": phase["daemon"]["log"],
    }
    out["attackers"] = _attackers(phase["attackers"])
    cpu = [a["cpu_percent"] for a in out["attackers"].values()]
    out["attackers_cpu_percent"] = round(sum(cpu), 1) if cpu else math.nan
    out["warnings"] = phase["warnings"]
    return out


def _attackers(results: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The attackers' tallies, added up per attack."""
    by: dict[str, dict[str, Any]] = {}
    times: dict[str, list[float]] = {}
    for name, r in results:
        attack = ATTACKS[name]
        a = by.setdefault(
            name,
            {
                "item": attack.item,
                "what": attack.what,
                "holds": attack.holds,
                "attackers": 0,
                "sent": 0,
                "bytes_sent": 0,
                "answers": {},
                "connects": {},
                "open_max": 0,
                "held_at_end": 0,
                "cpu_percent": 0.0,
                "fatal": [],
            },
        )
        a["attackers"] += 1
        if "fatal" in r:
            a["fatal"].append(r["fatal"])
            continue
        for key in ("sent", "bytes_sent", "open_max", "held_at_end"):
            a[key] += r[key]
        for key in ("answers", "connects"):
            for label, n in r[key].items():
                a[key][label] = a[key].get(label, 0) + n
        times.setdefault(name, []).extend(r["answer_s"])
        if r["wall_s"] > 0:
            a["cpu_percent"] += 100 * r["cpu_s"] / r["wall_s"]
    for name, a in by.items():
        a["cpu_percent"] = round(a["cpu_percent"], 1)
        a["answered"] = sum(a["answers"].values())
        a["unanswered_at_end"] = a["sent"] - a["answered"] - a["held_at_end"]
        a["answer_ms"] = percentiles_ms(times.get(name, []))
    return by


def build_document(meta: dict[str, Any], phases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    doc = dict(meta)
    doc["runs"] = {p: summarize_phase(phases[p]) for p in PHASES}
    doc["goals"] = []
    for g in GOALS:
        threshold, beyond = g.threshold(meta["sessions"])
        row: dict[str, Any] = {"metric": g.label, "path": list(g.path), "threshold": threshold}
        for p in PHASES:
            run = doc["runs"][p]
            value = get(run, g.path)
            v = verdict(value, threshold, beyond)
            if v == "NO DATA" and not run["frames"]:
                v = "MISS (no audio)"
            row[p] = {"measured": value, "verdict": v}
        doc["goals"].append(row)
    return doc


def _counts(d: dict[str, int]) -> str:
    return "; ".join(f"{k} x{n}" for k, n in sorted(d.items(), key=lambda kv: -kv[1])) or "-"


def markdown(doc: dict[str, Any]) -> str:
    at = doc["attack"]
    runs = doc["runs"]
    lines = [
        f"# duplexd under attack: engine {doc['engine']}, device {doc['device']}, "
        f"{doc['sessions']} good sessions, {doc['duration_s']:g} s per run, rev {doc['git_rev']}",
        "",
        f"Good load as `python -m bench` ({doc['tokens_per_s']:g} tokens/s, interrupt fraction "
        f"{doc['interrupt_fraction']:g}, seed {doc['seed']}), the same in both runs, each "
        f"against a fresh daemon (token in {at['token_in']}; /healthz on its side port, a new "
        f"connection every {at['healthz_interval_s']:g} s); {cpus.sentence(doc)} for all of "
        f"it. Attackers: {len(at['attacks'])} attacks x {at['attackers_per_attack']} "
        f"process(es), niceness {at['attacker_nice']}, "
        + (
            "each from a loopback address of its own (127.0.1.N)"
            if at["attackers_from"] == "own"
            else "from 127.0.0.1 like the good sessions"
        )
        + f", from {at['warmup_s']:g} s before the "
        "good sessions connect until they hang up; floods "
        + (f"at most {at['rate_per_s']:g}/s per attacker" if at["rate_per_s"] else "back to back")
        + f" (each waits for its answer, at most {at['answer_timeout_s']:g} s), holds keep "
        f"{at['connections']} connections each.",
        "",
        "## Good sessions",
        "",
        "| metric | goal | without attackers | with attackers | verdict (without / with) |",
        "|---|---|---:|---:|---|",
    ]
    goals = {tuple(g["path"]): g for g in doc["goals"]}
    for label, path in ROWS:
        cells = [fmt(get(runs[p], path)) for p in PHASES]
        goal, verdicts = "", ""
        if path in goals:
            g = goals[path]
            goal = f"<= {fmt(g['threshold'])}"
            verdicts = " / ".join(g[p]["verdict"] for p in PHASES)
        lines.append(f"| {label} | {goal} | {cells[0]} | {cells[1]} | {verdicts} |")
    lines.append("")
    for p in PHASES:
        r = runs[p]
        if r["killed"]:
            lines.append(f"- {p} attackers: killed by {_counts(r['killed_by'])}")
        if r["errors"]:
            lines.append(f"- {p} attackers: client errors, e.g. " + "; ".join(r["errors"][:3]))
        if r["lost"]:
            lines.append(
                f"- **{p} attackers: {r['lost']} good session(s) got no answer to their "
                "hang-up (Interrupt, GetStats) within 10 s, or their worker gave no result.**"
            )
        if not r["frames"]:
            lines.append(f"- **{p} attackers: no audio reached the good sessions.**")
        if r["healthz_ms"]["failed"]:
            lines.append(f"- {p} attackers: /healthz {_counts(r['healthz_ms']['failures'])}")
        if r["client"]["saturated"]:
            lines.append(
                f"- **{p} attackers: the good clients' worker was saturated (CPU or loop lag): "
                "client-side delays are in these numbers.**"
            )
        for w in r["warnings"]:
            lines.append(f"- **{p} attackers: {w}**")
    lines += [
        "",
        "## Attacks",
        "",
        "Floods: sent = attacks, answer time = attack sent -> the daemon's answer (the Pong "
        "after it; UtteranceStarted for `giant`; for `auth` the refused upgrade, the Error "
        "after the Hello or a Welcome). Holds: sent = connections opened, time = how long each "
        "connection the daemon ended had been open.",
        "",
        "| attack | item | what | sent | how the daemon answered | time p50 / p95 / max (ms) "
        "| failed connects | CPU % |",
        "|---|---:|---|---:|---|---|---|---:|",
    ]
    for name, a in runs["with"]["attackers"].items():
        answers = dict(a["answers"])
        if a["held_at_end"]:
            answers["still open at the end"] = a["held_at_end"]
        if a["unanswered_at_end"] > 0:
            answers["unanswered at the end"] = a["unanswered_at_end"]
        if a["fatal"]:
            answers["attacker crashed"] = len(a["fatal"])
        t = a["answer_ms"]
        times = " / ".join(fmt(t[q]) for q in ("p50", "p95", "max"))
        lines.append(
            f"| `{name}` | {a['item']} | {a['what']} | {a['sent']:,} | {_counts(answers)} | "
            f"{times} | {_counts(a['connects'])} | {fmt(a['cpu_percent'])} |"
        )
    log = runs["with"]["daemon"]["log"]
    lines += [
        "",
        f"Daemon log with attackers: sessions ended by error {_counts(log['session_errors'])}; "
        f"warnings and errors {_counts(log['warnings_and_errors'])}.",
        "",
        "## Goals",
        "",
    ]
    for g in doc["goals"]:
        w, a = g["without"], g["with"]
        lines.append(
            f"- {g['metric']} <= {fmt(g['threshold'])} at {doc['sessions']} sessions with "
            f"attackers: **{a['verdict']}** (measured {fmt(a['measured'])}; without attackers "
            f"{fmt(w['measured'])}, {w['verdict']})"
        )
    return "\n".join(lines)
