"""What decoding several turns in one Whisper call would save: `python -m bench.asr_batch`.

The daemon decodes one clip at a time (one `Transcriber` for all sessions, a `CapacityLimiter`
of 1), and at ten sessions on two cores its decodes queue (`bench.turns --sessions 10`: the
sessions' decodes took 183 s of wall time, most of it waiting, for 75 s of speech). CTranslate2
encodes and generates a batch in one call. This measures, on the clips of `bench.asr_window`
(the held-out sentences in both voices, each in its cut window), the wall time per clip when
`B` clips are encoded and decoded together (greedy, no prompt, the window cut to 10 s, as the
daemon's `window.decode_text` without the end mark), and whether each clip's text is the one
it gets alone. Nothing in the daemon batches yet: this is the figure for deciding whether to.

    python -m bench.asr_batch [--batches 1,2,4,8] [--repeats 3] [--clips N] [--json F]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Final

import numpy as np

from .report import print_and_save

WINDOW_FRAMES: Final = 1000  # 10 s of Whisper features: every clip here fits it
MAX_TOKENS: Final = 80


def measure(batches: list[int], repeats: int, limit: int, threads: int) -> dict[str, Any]:
    import ctranslate2

    from duplexd._uplink import window
    from duplexd._uplink.asr import Transcriber

    from .asr_window import clips

    whole = [audio for audio, _text in clips()[0]]
    if limit:
        whole = whole[:limit]
    transcriber = Transcriber(cpu_threads=threads)
    transcriber.warm_up()
    model = transcriber._model
    tokenizer = window._tokenizer(model, "en")
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]

    def features(audio: np.ndarray) -> np.ndarray:
        f = model.feature_extractor(audio)
        frames = min(f.shape[-1], WINDOW_FRAMES)
        padded = np.zeros((f.shape[0], WINDOW_FRAMES), dtype=np.float32)
        padded[:, :frames] = f[:, :frames]
        return padded

    feats = [features(a) for a in whole]

    def decode(group: list[np.ndarray]) -> list[str]:
        x = ctranslate2.StorageView.from_array(np.stack(group))
        encoded = model.model.encode(x, to_cpu=False)
        out = model.model.generate(
            encoded, [prompt] * len(group), max_length=MAX_TOKENS, suppress_blank=True
        )
        return [tokenizer.decode([t for t in r.sequences_ids[0] if t < tokenizer.eot]) for r in out]

    alone = [decode([f])[0] for f in feats]
    rows = []
    for b in batches:
        groups = [feats[i : i + b] for i in range(0, len(feats), b)]
        decode(groups[0])  # (a first call of this shape)
        took = []
        texts: list[str] = []
        for _ in range(repeats):
            texts = []
            t0 = time.perf_counter()
            for group in groups:
                texts.extend(decode(group))
            took.append(time.perf_counter() - t0)
        best = min(took)
        rows.append(
            {
                "batch": b,
                "ms_per_clip": round(1000 * best / len(feats), 1),
                "ms_per_call": round(1000 * best / len(groups), 1),
                "same_text_as_alone": sum(x == y for x, y in zip(texts, alone, strict=True)),
            }
        )
        print(f"bench.asr_batch: batch {b}: {rows[-1]['ms_per_clip']} ms a clip", file=sys.stderr)
    transcriber.close()
    return {"clips": len(feats), "threads": threads, "repeats": repeats, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.asr_batch", description=__doc__)
    p.add_argument("--batches", default="1,2,4,8", help="clips per call, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="runs per batch size; the best kept")
    p.add_argument("--clips", type=int, default=0, help="only the first N clips (0: all)")
    p.add_argument("--threads", type=int, default=2, help="the model's CPU threads")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    try:
        batches = [int(x) for x in args.batches.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1 or args.repeats < 1 or args.clips < 0 or args.threads < 1:
        print(
            "bench.asr_batch: --batches takes positive whole numbers (1,2,4,8); --repeats and"
            " --threads positive, --clips not negative",
            file=sys.stderr,
        )
        return 2
    print_and_save(measure(batches, args.repeats, args.clips, args.threads), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
