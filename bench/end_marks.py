"""Whisper's end mark at a pause (`python -m bench.end_marks`): the end of turn's checks, offline.

Every sentence of `bench.turns` and `bench.word_timing` (30), in both of `bench.speech`'s
speakers, is cut at each word boundary inside it (where `bench.turns` cuts its pauses): the
*head* before the cut is what the server judges when a speaker pauses there mid-sentence. The
sentence spoken to its end is judged too, straight through (*whole*) and with `PAUSE_S` of
silence at each of those boundaries (*paused*: the end of a turn that had a pause in it). For
each, as the uplink asks (the turn from `PAD_MS` before its onset, -60 dBFS of noise under it all):

- Smart Turn v3.2's completion probability, after `PAD_MS` of quiet (the turn's pad);
- Whisper tiny.en's text and its end mark's probability (`Heard.end_mark`), after
  `SPECULATE_MS` of quiet (the speculative transcript's audio).

The rule the server follows at a 200 ms silence (ends.py): the turn ends when the text does not
stop mid-sentence (`sounds_unfinished`) and either the model says complete (>= 0.5) and the end
mark's probability is at least `vad.end_mark_threshold`, or the end mark's probability is at
least `vad.end_mark_sure`. The tables give, for each setting, the share of heads the rule ends
(a premature end, had the speaker paused there) and the share of whole and paused sentences it
ends at once (the others wait `vad.max_silence_ms`). Many
heads are sentences in their own right ("Please call me back | tomorrow morning"): no rule
that hears only the head can keep all of them open, so the heads' figure is for comparing
rules, not a rate a listener would call premature.

    python -m bench.end_marks [--json F] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from .turns import COMPLETE, PAUSED, speech_end, speech_onset

RATE: Final = 16_000
PAD_MS: Final = 150
SPECULATE_MS: Final = 64
PAUSE_S: Final = 0.6
NOISE_DBFS: Final = -60.0
SMART_THRESHOLD: Final = 0.5
THRESHOLDS: Final = (0.0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)  # `vad.end_mark_threshold`
SURE: Final = (1.0, 0.95, 0.9, 0.85, 0.8)  # `vad.end_mark_sure`
DEFAULTS: Final = (0.7, 0.9)  # the two as the server has them

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Judged:
    """One clip as the server judges it at a silence."""

    kind: str  # "head", "whole" or "paused"
    speaker: int  # 0: the joe voice; 1: slower and pitched up (`bench.speech`)
    sentence: str
    cut: int  # the word boundary (the number of words before it); -1 for "whole"
    text: str  # Whisper's
    end_mark: float | None
    smart: float  # Smart Turn's completion probability
    unfinished: bool  # the text stops mid-sentence (`sounds_unfinished`)

    def ends(self, threshold: float, sure: float = 1.0) -> bool:
        """Whether the turn ends at this silence with `vad.end_mark_threshold` = `threshold`
        and `vad.end_mark_sure` = `sure` (the server's rule: ends.py)."""
        from duplexd._uplink.ends import with_words
        from duplexd._uplink.window import Heard

        complete = self.smart >= SMART_THRESHOLD
        return with_words(complete, Heard(self.text, self.end_mark), threshold, sure)[0]


def sentences() -> list[str]:
    from .word_timing import SENTENCES

    return list(dict.fromkeys([*COMPLETE, *(t for t, _ in PAUSED), *SENTENCES]))


def _spoken(text: str, speaker: int) -> tuple[F32, list[int]]:
    """`text` at 16 kHz and each word's end (samples), as `bench.turns` synthesizes it."""
    import soxr

    from . import speech

    voice = speech.engine(bool(speaker)).open_voice("joe")
    chunks = list(voice.synthesize_words(text))
    audio = np.concatenate([a for a, _ in chunks]).astype(np.float32)
    rate = round(voice.sample_rate_hz * (1.12 if speaker else 1.0))  # (played faster)
    out = np.asarray(soxr.resample(audio, rate, RATE), dtype=np.float32)
    ends = [round(m.end_sample * RATE / rate) for _, marks in chunks for m in marks]
    return out, ends


def _cut(audio: F32, word_end: int) -> int:
    """Where `bench.turns.with_pause` cuts: the quietest 10 ms around the word's end."""
    lo = max(0, word_end - 160)
    env = np.convolve(np.abs(audio[lo : word_end + 640]), np.ones(160) / 160, mode="valid")
    return lo + int(np.argmin(env)) + 80


def judge_all(limit: int = 0) -> list[Judged]:
    from duplexd._uplink.asr import Transcriber
    from duplexd._uplink.turn import TurnModel
    from duplexd._uplink.unfinished import sounds_unfinished

    rng = np.random.default_rng(0)
    noise = 10 ** (NOISE_DBFS / 20)

    def quiet(n: int) -> F32:
        return (rng.normal(0.0, noise, n)).astype(np.float32)

    def heard_as_turn(speech: F32) -> tuple[str, float | None, float]:
        """`speech` as the uplink cuts its turn: from `PAD_MS` before its onset (the turn's
        pad; Whisper's end mark moves with where the speech sits in its window: 0.57 against
        0.69 for one head 140 ms later) to its end plus the quiet each is asked after."""
        mic = np.concatenate((np.zeros(RATE // 2, np.float32), speech, np.zeros(RATE // 4)))
        mic = (mic + quiet(len(mic))).astype(np.float32)
        start = RATE // 2 + speech_onset(speech) - PAD_MS * 16
        stop = RATE // 2 + len(speech)
        asr = transcriber.hear_sync(mic[start : stop + SPECULATE_MS * 16], end_mark=True)
        smart = model.probability(mic[start : stop + PAD_MS * 16])
        return asr.text, asr.end_mark, smart

    transcriber = Transcriber(cpu_threads=2)
    model = TurnModel(threads=2)
    out: list[Judged] = []
    try:
        for speaker in (0, 1):
            for i, text in enumerate(sentences()):
                if limit and i >= limit:
                    break
                audio, ends = _spoken(text, speaker)
                said, mark, smart = heard_as_turn(audio[: speech_end(audio)])
                out.append(
                    Judged("whole", speaker, text, -1, said, mark, smart, sounds_unfinished(said))
                )
                gap = np.zeros(round(PAUSE_S * RATE), dtype=np.float32)
                for k in range(2, len(text.split())):
                    cut = _cut(audio, ends[k - 1])
                    said, mark, smart = heard_as_turn(audio[:cut])
                    unfinished = sounds_unfinished(said)
                    out.append(Judged("head", speaker, text, k, said, mark, smart, unfinished))
                    paused = np.concatenate((audio[:cut], gap, audio[cut:]))
                    said, mark, smart = heard_as_turn(paused[: speech_end(paused)])
                    unfinished = sounds_unfinished(said)
                    out.append(Judged("paused", speaker, text, k, said, mark, smart, unfinished))
                print(f"bench.end_marks: speaker {speaker}, {i + 1} sentences", file=sys.stderr)
    finally:
        transcriber.close()
    return out


def table(judged: list[Judged]) -> list[dict[str, Any]]:
    """Per setting (each threshold with no `sure`, then each `sure` with the default
    threshold), the share of each kind the rule ends at the silence."""
    rows = []
    settings = [(t, 1.0) for t in THRESHOLDS] + [(DEFAULTS[0], s) for s in SURE[1:]]
    for threshold, sure in settings:
        row: dict[str, Any] = {"end_mark_threshold": threshold, "end_mark_sure": sure}
        for kind in ("head", "whole", "paused"):
            of = [j for j in judged if j.kind == kind]
            ended = sum(j.ends(threshold, sure) for j in of)
            row[kind] = {"ended": ended, "of": len(of), "share": round(ended / len(of), 3)}
        rows.append(row)
    return rows


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 3) if xs else float("nan")


def markdown(judged: list[Judged], rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# Whisper's end mark at a pause ({meta['git_rev']}, `{meta['command']}`)",
        "",
        f"{len({j.sentence for j in judged})} sentences, 2 speakers: "
        + ", ".join(f"{sum(j.kind == k for j in judged)} {k}" for k in ("head", "whole", "paused"))
        + ". Ended at the 200 ms silence (words not unfinished; turn model >= 0.5 and end "
        "mark >= end_mark_threshold, or end mark >= end_mark_sure; 1: never; the server's "
        f"defaults {DEFAULTS[0]} and {DEFAULTS[1]}):",
        "",
        "| end_mark_threshold | end_mark_sure | heads ended (premature had one paused there) "
        "| whole sentences ended at once | paused sentences' ends ended at once |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [f"{r[k]['ended']} of {r[k]['of']} ({100 * r[k]['share']:.1f} %)" for k in
                 ("head", "whole", "paused")]  # fmt: skip
        setting = f"{r['end_mark_threshold']} | {r['end_mark_sure']}"
        if (r["end_mark_threshold"], r["end_mark_sure"]) == DEFAULTS:
            setting = f"**{r['end_mark_threshold']}** | **{r['end_mark_sure']}**"
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    lines += ["", "End mark probability (p5 / p25 / p50), of those the words' check passes:", ""]
    for kind in ("head", "whole", "paused"):
        marks = [j.end_mark for j in judged if j.kind == kind and not j.unfinished]
        xs = [m for m in marks if m is not None]
        lines.append(f"- {kind}: {_pct(xs, 5)} / {_pct(xs, 25)} / {_pct(xs, 50)} ({len(xs)} clips)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.end_marks", description=__doc__.splitlines()[0]
    )
    p.add_argument("--json", default="", metavar="PATH")
    p.add_argument("--limit", type=int, default=0, help="only the first N sentences (a check)")
    args = p.parse_args(argv)
    from .__main__ import git_rev

    judged = judge_all(args.limit)
    rows = table(judged)
    cmd = " ".join(["python -m bench.end_marks", *(argv if argv is not None else sys.argv[1:])])
    meta = {"command": cmd, "git_rev": git_rev(), "cpu_count": os.cpu_count()}
    print(markdown(judged, rows, meta))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "table": rows, "clips": [asdict(j) for j in judged]}, f)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
