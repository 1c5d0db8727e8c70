"""What the model process's wire costs: a daemon's CPU per second of audio it receives from a
model process (`duplexd serve-model`), the model process's CPU beyond the engine's own, and a
chunk's round trip.

    python -m bench.model_wire [--threads 8] [--duration 10] [--chars 200] [--json PATH]

A `duplexd serve-model --engine tone` runs in its own process; this process plays the daemon:
`--threads` threads each speak a `--chars`-character text through `RemoteEngine` over and
over, pulling every chunk (as the daemon's sessions do), for `--duration` seconds. The tone
engine computes almost nothing, so what is measured is the wire: the daemon side's CPU (this
process: the threads, the reader, the decoding) and the model process's CPU, less what the
same text costs the engine in-process (measured here first), per second of audio and per MB.
At 48 kHz a second of tone audio is 192 kB of float32; the VITS voice's is 88 kB (22,050 Hz).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from duplexd.engines.remote import RemoteEngine
from duplexd.engines.tone import ToneEngine

from .cpus import process_cpu_s
from .daemon import ProcSampler, model_argv, start_server


def local_cost(text: str, duration_s: float) -> tuple[float, float]:
    """The engine's own CPU per audio-second for `text`, in-process, made as the model process
    makes it (with word marks); and its audio-seconds."""
    voice = ToneEngine().open_voice("sine")
    cpu0, t0, audio_s = process_cpu_s(), time.monotonic(), 0.0
    while time.monotonic() - t0 < duration_s:
        for chunk, _ in voice.synthesize_words(text):
            audio_s += len(chunk) / voice.sample_rate_hz
    return (process_cpu_s() - cpu0) / audio_s, audio_s


def run(threads: int, duration_s: float, chars: int) -> dict[str, Any]:
    text = ("The model process speaks for every worker. " * (chars // 40 + 1))[:chars]
    local_cpu_per_audio_s, _ = local_cost(text, min(2.0, duration_s))
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        path = str(Path(tmp) / "model.sock")
        model = start_server("duplexd model", model_argv("tone", "cpu", path))
        try:
            engine = RemoteEngine(path)
            voice = engine.open_voice("sine")
            rate = voice.sample_rate_hz
            samples = [0] * threads
            trips: list[list[float]] = [[] for _ in range(threads)]
            stop = threading.Event()

            def speak(i: int) -> None:
                while not stop.is_set():
                    chunks = voice.synthesize_stream(text)
                    while True:
                        t = time.perf_counter()
                        chunk = next(chunks, None)
                        if chunk is None:
                            break
                        trips[i].append(time.perf_counter() - t)
                        samples[i] += len(chunk)

            sampler = ProcSampler(model.pid)
            model_cpu0, cpu0, t0 = sampler.cpu_seconds(), process_cpu_s(), time.monotonic()
            workers = [threading.Thread(target=speak, args=(i,)) for i in range(threads)]
            for w in workers:
                w.start()
            time.sleep(duration_s)
            stop.set()
            for w in workers:
                w.join()
            wall_s, daemon_cpu_s = time.monotonic() - t0, process_cpu_s() - cpu0
            model_cpu_s = sampler.cpu_seconds() - model_cpu0
            engine.close()
        finally:
            model.stop()
    audio_s = sum(samples) / rate
    mb = sum(samples) * 4 / 1e6
    trip_ms = np.array([x for t in trips for x in t]) * 1e3
    model_per_audio_s = model_cpu_s / audio_s
    return {
        "threads": threads,
        "chars": chars,
        "wall_s": round(wall_s, 2),
        "audio_s": round(audio_s, 1),
        "audio_s_per_s": round(audio_s / wall_s, 1),
        "mb_per_s": round(mb / wall_s, 1),
        "chunks": int(trip_ms.size),
        "daemon_cpu_us_per_audio_s": round(daemon_cpu_s / audio_s * 1e6, 1),
        "daemon_cpu_us_per_mb": round(daemon_cpu_s / mb * 1e6, 1),
        "model_cpu_us_per_audio_s": round(model_per_audio_s * 1e6, 1),
        "engine_cpu_us_per_audio_s_in_process": round(local_cpu_per_audio_s * 1e6, 1),
        "model_wire_cpu_us_per_audio_s": round(
            (model_per_audio_s - local_cpu_per_audio_s) * 1e6, 1
        ),
        "chunk_round_trip_ms": {
            "p50": round(float(np.percentile(trip_ms, 50)), 3),
            "p95": round(float(np.percentile(trip_ms, 95)), 3),
            "p99": round(float(np.percentile(trip_ms, 99)), 3),
        },
        "sample_rate_hz": rate,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.model_wire", description=__doc__)
    p.add_argument("--threads", type=int, default=8, help="the daemon's synthesizing sessions")
    p.add_argument("--duration", type=float, default=10.0, metavar="S")
    p.add_argument("--chars", type=int, default=200, help="characters of each text")
    p.add_argument("--json", default="", metavar="PATH")
    args = p.parse_args(argv)
    if args.threads < 1 or args.duration <= 0 or args.chars < 1:
        print(
            "bench.model_wire: --threads, --duration and --chars must be positive", file=sys.stderr
        )
        return 2
    result = run(args.threads, args.duration, args.chars)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
