"""Latency and real-time factor of the torch VITS engine.

    python -m bench.vits_rtf --device cpu [--threads N] [--runs 15]

Prints load time, per-sentence latency p50/p95 and RTF (compute time / audio time) for a
few sentence lengths; on CUDA also batch throughput (audio seconds per wall second).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from duplexd.engines.vits import VitsEngine

SENTENCES = {
    "3 words": "Good morning, Sam.",
    "6 words": "The train leaves in ten minutes.",
    "15 words": (
        "Please remember to bring your umbrella, because the forecast says it might rain later."
    ),
    "30 words": (
        "When we arrived at the station the platform was already crowded, so we waited by the "
        "old clock, drank some coffee, and talked about the long journey that was still ahead."
    ),
}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--voice", default="joe")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--deterministic", action="store_true", help="noise scales 0")
    args = ap.parse_args()

    t0 = time.perf_counter()
    engine = VitsEngine(device=args.device, threads=args.threads, deterministic=args.deterministic)
    t1 = time.perf_counter()
    voice = engine.open_voice(args.voice)
    t2 = time.perf_counter()
    print(f"device={engine.device} engine={t1 - t0:.3f}s open_voice(load+warm-up)={t2 - t1:.3f}s")
    rate = voice.sample_rate_hz
    print(f"{'sentence':>9} {'audio s':>8} {'p50 ms':>8} {'p95 ms':>8} {'RTF':>6}")
    for label, text in SENTENCES.items():
        voice.synthesize(text)
        lat: list[float] = []
        secs = 0.0
        for _ in range(args.runs):
            s = time.perf_counter()
            audio = voice.synthesize(text)
            lat.append(time.perf_counter() - s)
            secs = len(audio) / rate
        p50 = pct(lat, 50)
        print(
            f"{label:>9} {secs:8.2f} {p50 * 1e3:8.1f} {pct(lat, 95) * 1e3:8.1f} "
            f"{statistics.median(lat) / secs:6.3f}"
        )
    if engine.device.startswith("cuda"):
        ids = voice.phoneme_ids(SENTENCES["15 words"])[0]
        for batch in (1, 8, 64):
            voice.synthesize_batch([ids] * batch)
            s = time.perf_counter()
            reps = 5
            total = 0.0
            for _ in range(reps):
                outs = voice.synthesize_batch([ids] * batch)
                total += sum(len(o) for o in outs) / rate
            wall = time.perf_counter() - s
            print(
                f"batch {batch:3d}: {total / wall:8.1f} audio s per s ({wall / reps * 1e3:.1f} ms)"
            )
    engine.close()


if __name__ == "__main__":
    main()
