"""What a Whisper decode costs in a window cut to the turn against Whisper's 30 s window:
`python -m bench.asr_window [--json FILE]`.

The clips are what the uplink decodes: `bench.word_timing.SENTENCES` spoken by the joe voice
at its own pace and slower and higher (`bench/speech.py`'s second speaker), each cut 0.2 s
before its first sound and 64 ms after its last (a speculative transcript's silence); and
the tails a final decodes after streaming passes: the last 1 s and 1.5 s of each sentence,
with the text before them as the prompt. Each clip is decoded by the bundled Whisper (tiny.en,
int8, 2 threads) both ways; the figures are ms per decode (p50, p95), WER against the text,
and how often the cut window's text `looped` and was decoded again in the 30 s one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from .report import print_and_save

RATE_HZ: Final = 16_000
LEAD_S: Final = 0.2
TRAIL_S: Final = 0.064
TAILS_S: Final = (1.0, 1.5)

Audio = npt.NDArray[np.float32]


def clips() -> tuple[list[tuple[Audio, str]], list[tuple[Audio, str, str]]]:
    """(whole clip, its text) and (tail clip, prompt, the whole text) of every sentence."""
    from .speech import clip
    from .word_timing import SENTENCES

    whole: list[tuple[Audio, str]] = []
    tails: list[tuple[Audio, str, str]] = []
    for text in SENTENCES:
        for other in (False, True):
            audio = clip(text, other_speaker=other)
            loud = np.flatnonzero(np.abs(audio) > 0.01)
            first = max(0, loud[0] - round(LEAD_S * RATE_HZ))
            cut = audio[first : loud[-1] + round(TRAIL_S * RATE_HZ)]
            whole.append((cut, text))
            words = text.split()
            for tail_s in TAILS_S:
                at = len(cut) - round(tail_s * RATE_HZ)
                # the words wholly before the tail (by the voice's pace: a rough prompt, as
                # a streaming pass's confirmed words are)
                said = round(len(words) * at / len(cut)) - 1
                tails.append((cut[at:], " ".join(words[: max(0, said)]), text))
    return whole, tails


def measure() -> dict[str, Any]:
    from duplexd._uplink import window
    from duplexd._uplink.asr import Transcriber

    from .asr_helpers import word_error_rate

    whole, tails = clips()

    figures: dict[str, Any] = {"whole_clips": len(whole), "tail_clips": len(tails)}
    loops = 0
    original = window.looped

    def counted(text: str) -> bool:
        nonlocal loops
        found = original(text)
        loops += found
        return found

    window.looped = counted
    try:
        for name, cut in (("cut", True), ("30s", False)):
            t = Transcriber(cpu_threads=2, cut_window=cut)
            t.warm_up()
            loops = 0
            ms: list[float] = []
            heard: list[str] = []
            for audio, _text in whole:
                t0 = time.perf_counter()
                heard.append(t.transcribe_sync(audio))
                ms.append((time.perf_counter() - t0) * 1e3)
            tail_ms: list[float] = []
            tail_heard: list[str] = []
            for audio, prompt, _text in tails:
                t0 = time.perf_counter()
                tail_heard.append(t.transcribe_sync(audio, prompt))
                tail_ms.append((time.perf_counter() - t0) * 1e3)
            t.close()
            figures[name] = {
                "ms_p50": round(statistics.median(ms), 1),
                "ms_p95": round(float(np.percentile(ms, 95)), 1),
                "wer": round(word_error_rate([x for _, x in whole], heard), 4),
                "tail_ms_p50": round(statistics.median(tail_ms), 1),
                "tail_ms_p95": round(float(np.percentile(tail_ms, 95)), 1),
                # a tail's words must be the end of the sentence's: WER of prompt + tail
                "tail_wer": round(
                    word_error_rate(
                        [x for _, _, x in tails],
                        [p + " " + h for (_, p, _), h in zip(tails, tail_heard, strict=True)],
                    ),
                    4,
                ),
                "looped_and_decoded_again": loops,
                "texts": heard,
                "tail_texts": tail_heard,
            }
    finally:
        window.looped = original
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.asr_window", description=__doc__)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    print_and_save(measure(), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
