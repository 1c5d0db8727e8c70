"""PNG plots: latency CDFs (FAL, barge-in) per level, and jitter percentiles vs sessions."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def write_plots(directory: str, doc: dict[str, Any], raw: list[dict[str, Any]]) -> list[str]:
    """`raw`: per level {"sessions", "duplexd": run, "baseline": run or None}. Returns paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    paths = []
    cdfs = [("fal", "first-audio latency"), ("barge_in", "interrupt -> Interrupted")]
    if doc.get("uplink"):
        cdfs.append(("vad_barge_in", "speech onset -> Interrupted(vad)"))
    for key, title in cdfs:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, level in enumerate(raw):
            color = f"C{i % 10}"
            for kind, style in (("duplexd", "-"), ("baseline", "--")):
                run = level.get(kind)
                if not run or not run.get(key):
                    continue
                x = np.sort(np.asarray(run[key]) * 1e3)
                y = np.arange(1, x.size + 1) / x.size
                ax.step(
                    x,
                    y,
                    style,
                    color=color,
                    where="post",
                    label=f"{kind}, {level['sessions']} sessions",
                )
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of events")
        ax.set_title(f"{title} ({doc['engine']}, {doc['device']})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        path = os.path.join(directory, f"{key}_cdf.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    for key, title in (("jitter_ms", "client jitter"), ("server_jitter_ms", "server pacing error")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        sessions = [lv["sessions"] for lv in doc["levels"]]
        for q, marker in (("p50", "o"), ("p95", "s"), ("p99", "^")):
            dx = [_num(lv[key][q]) for lv in doc["levels"]]
            ax.plot(sessions, dx, "-" + marker, color="C0", label=f"duplexd {q}")
            if all("baseline" in lv for lv in doc["levels"]):
                b = [_num(lv["baseline"][key][q]) for lv in doc["levels"]]
                ax.plot(sessions, b, "--" + marker, color="C3", label=f"baseline {q}")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent sessions")
        ax.set_ylabel("ms")
        ax.set_title(f"{title} vs sessions ({doc['engine']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        path = os.path.join(directory, f"{key.removesuffix('_ms')}_vs_sessions.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def _num(x: Any) -> float:
    return float(x) if x is not None else float("nan")
