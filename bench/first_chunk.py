"""What one utterance costs the daemon on its way to its first audio, stage by stage.

    python -m bench.first_chunk [--n 2000] [--engine tone]

In a burst (`python -m bench --burst 150`: every session sends a whole reply at once) the
first frames wait for these stages of every session before them, on the one core the daemon
is pinned to: segmenting the reply (the event loop), making the utterance's producer and
rendering its first chunk (a synthesis thread). Each stage is timed here alone, on this thread,
with the bench's burst text, as the median of `--n` runs (microseconds).
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from collections.abc import Callable

from bench.load import burst_text
from duplexd._downlink.producer import PieceMap, UtteranceProducer
from duplexd._downlink.ring import FrameRing
from duplexd._downlink.segment import split_text
from duplexd.engines.registry import load_engine
from duplexd.protocol import frames as fr

RATE_HZ = 48_000


def median_us(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--engine", default="tone")
    args = parser.parse_args()
    try:
        engine = load_engine(args.engine, device="cpu")
    except LookupError as exc:
        parser.error(str(exc.args[0]))  # one line, exit 2
    voice = engine.open_voice(engine.default_voice)
    text = burst_text(150, random.Random(1))
    piece = split_text(text)[0]
    frame_samples = fr.frame_samples(RATE_HZ)
    ring = FrameRing(1024, fr.AUDIO_HEADER_BYTES + frame_samples * fr.BYTES_PER_SAMPLE)

    def producer() -> UtteranceProducer:
        return UtteranceProducer(
            voice=voice,
            ring=ring,
            out_rate_hz=RATE_HZ,
            frame_samples=frame_samples,
            epoch=0,
            utterance_id=1,
            pieces=PieceMap(),
            cancel=threading.Event(),
            kick=lambda: None,
        )

    def first_chunk() -> None:
        ring.flush()
        producer().render_step(piece)

    print(f"{args.engine}, a {len(text)}-character reply, median of {args.n}:")
    print(
        f"  segment it (event loop)           {median_us(lambda: split_text(text), args.n):7.1f} us"
    )
    print(f"  make its producer (thread)        {median_us(producer, args.n):7.1f} us")
    print(f"  producer + first chunk (thread)   {median_us(first_chunk, args.n):7.1f} us")


if __name__ == "__main__":
    main()
