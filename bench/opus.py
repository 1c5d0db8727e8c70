"""`python -m bench.opus`: what Opus costs and saves per session (SPEC §4.6.3), on real speech.

    python -m bench.opus --json bench/results/opus-cpu-1core.json

The VITS voice says a few sentences (deterministic); the audio, resampled to each session
rate, is cut into 20 ms frames and run through `duplexd._opus` as the daemon does (the
producer's encoder per utterance, the SDK's decoder). Per rate and complexity: bytes per frame
on the wire (16-byte AUDIO header + packet; PCM for comparison), and the CPU time per frame of
encoding (the daemon's share, in its worker threads) and decoding (the client's), as thread
CPU time, the least of `--repeats` runs; "% of a core per session" is encode µs / 20 ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import Any

import numpy as np
import soxr

from duplexd._opus import OpusDecoder, OpusEncoder
from duplexd.protocol.frames import AUDIO_HEADER_BYTES

SENTENCES = [
    "Thanks for calling. I can book you a table, tell you about the weather, or play some music.",
    "Our opening hours are from nine in the morning until ten at night, every day of the week.",
    "The nearest station is a short walk away, just follow the river towards the old bridge.",
]
RATES = (16_000, 24_000, 48_000)
FRAME_MS = 20


def speech() -> tuple[np.ndarray, int]:
    """The sentences, one after the other, float32 at the voice's rate."""
    from duplexd.engines.vits import VitsEngine

    engine = VitsEngine(device="cpu", deterministic=True, warmup=False)
    try:
        voice = engine.open_voice("joe")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            audio = np.concatenate([voice.synthesize(s) for s in SENTENCES])
        return audio.astype(np.float32), voice.sample_rate_hz
    finally:
        engine.close()


def frames_at(audio: np.ndarray, in_rate: int, rate: int) -> np.ndarray:
    x = np.asarray(soxr.resample(audio, in_rate, rate), dtype=np.float32)
    n = rate * FRAME_MS // 1000
    x = x[: len(x) // n * n]
    s16 = (np.clip(x, -1, 1) * 32767).astype("<i2")
    return s16.reshape(-1, n)


def measure(frames: np.ndarray, rate: int, kbps: float, complexity: int, repeats: int) -> dict:
    encode_s = decode_s = float("inf")
    packets: list[bytes] = []
    for _ in range(repeats):
        encoder = OpusEncoder(rate, bitrate_kbps=kbps, complexity=complexity)
        t0 = time.thread_time()
        packets = [encoder.encode(f) for f in frames]
        encode_s = min(encode_s, time.thread_time() - t0)
        decoder = OpusDecoder(rate)
        t0 = time.thread_time()
        for p in packets:
            decoder.decode(p)
        decode_s = min(decode_s, time.thread_time() - t0)
    sizes = np.array([AUDIO_HEADER_BYTES + len(p) for p in packets])
    n = len(frames)
    encode_us = 1e6 * encode_s / n
    return {
        "rate_hz": rate,
        "bitrate_kbps": kbps,
        "complexity": complexity,
        "frames": n,
        "wire_bytes_per_frame": {
            "mean": round(float(sizes.mean()), 1),
            "p95": int(np.percentile(sizes, 95)),
            "max": int(sizes.max()),
        },
        "pcm_wire_bytes_per_frame": AUDIO_HEADER_BYTES + 2 * frames.shape[1],
        "encode_us_per_frame": round(encode_us, 1),
        "encode_core_percent_per_session": round(100 * encode_us / (FRAME_MS * 1000), 2),
        "decode_us_per_frame": round(1e6 * decode_s / n, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.opus", description=__doc__.splitlines()[0])
    p.add_argument("--bitrate-kbps", type=float, default=32.0)
    p.add_argument("--complexities", default="0,5,10", help="comma-separated, 0..10")
    p.add_argument("--repeats", type=int, default=3, help="runs per case; the least CPU is kept")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    audio, in_rate = speech()
    rows: list[dict[str, Any]] = []
    for rate in RATES:
        frames = frames_at(audio, in_rate, rate)
        for c in (int(x) for x in args.complexities.split(",")):
            rows.append(measure(frames, rate, args.bitrate_kbps, c, args.repeats))
    print(f"Opus at {args.bitrate_kbps:g} kbit/s, {len(audio) / in_rate:.1f} s of VITS speech")
    print(
        "| rate | complexity | wire B/frame mean (p95, max) | PCM B/frame | encode µs/frame"
        " | % core/session | decode µs/frame |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        w = r["wire_bytes_per_frame"]
        print(
            f"| {r['rate_hz']} | {r['complexity']} | {w['mean']} ({w['p95']}, {w['max']})"
            f" | {r['pcm_wire_bytes_per_frame']} | {r['encode_us_per_frame']}"
            f" | {r['encode_core_percent_per_session']} | {r['decode_us_per_frame']} |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"speech_s": round(len(audio) / in_rate, 2), "rows": rows}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
