"""Noise suppression on the uplink in generated noise: `python -m bench.noise`.

One session's uplink (`bench.aec_rooms.replay`: the daemon's own processing, batch by batch,
in this thread; the echo canceller on, as by default, and idle: nothing is sent) hears the user
say `SENTENCES` (the VITS voice), 1 s apart after 2 s of noise alone, over each generated
noise (`NOISES`, `--seeds` of each) at each `--snrs` (the voice's level over its speech minus
the noise's; the mix scaled down together if it would clip: `mix_gain_db`), with
`vad.noise_suppression` at each of `--levels`. Over the seeds:

- noise out: how much quieter the noise alone leaves the uplink than it came (dB, mean; the
  first second left out: the suppressor's first estimate);
- voice: the level change over the speech against the clean voice (dB, mean; the noise left
  in counts too, upward);
- WER: Whisper tiny.en (the daemon's ASR model, offline) on each sentence cut from the
  processed uplink (its span and 200 ms each side), over all the sentences of all the seeds
  (`wer_by_seed`: each seed's);
- false starts: SpeechStart events whose onset is not within 300 ms of a sentence (from the
  stream's first sample);
- missed: sentences without a SpeechStart;
- onset: SpeechStart's sample against the sentence's true onset (ms; median, and the worst);
- CPU: the uplink worker's thread time per second of audio (the echo canceller idle, NS, the
  VAD); NS's own share is the difference to "off".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.aec_rooms import replay
from bench.rooms import db
from duplexd._uplink.vad import SpeechStart
from duplexd.protocol.options import NOISE_SUPPRESSION

RATE = 16_000
F32 = npt.NDArray[np.float32]
SENTENCES = [
    "Could you turn the lights in the living room off, please?",
    "My flight lands at around nine in the evening.",
    "I would like a table for four people tomorrow night.",
    "The meeting is on Tuesday afternoon at three.",
    "Please send the report to my manager before noon.",
    "Can you remind me to call my mother tomorrow?",
]
BABBLE = [
    "We walked along the river until the sun went down behind the hills.",
    "She said the train was late again and nobody knew why.",
    "There are seven apples and two oranges left in the kitchen.",
    "He was reading the paper when the phone started ringing.",
]
PAD = RATE // 5  # around each sentence cut for Whisper
NEAR = 3 * RATE // 10  # a speech start this close to a sentence is the sentence's


def _shaped(total: int, rng: np.random.Generator, power: float) -> F32:
    """Noise whose power falls as f^-power (0 white, 1 pink, 2 brown), 30 Hz high-passed."""
    spectrum = np.fft.rfft(rng.standard_normal(total))
    f = np.fft.rfftfreq(total, 1 / RATE)
    gain = np.where(f < 30.0, 0.0, 1.0 / np.maximum(f, 30.0) ** (power / 2))
    return np.fft.irfft(spectrum * gain, total).astype(np.float32)


def _hum(total: int, rng: np.random.Generator) -> F32:
    """Mains hum (50 Hz and its harmonics to 1 kHz, falling off) over a faint pink floor."""
    t = np.arange(total) / RATE
    hum = sum(np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 21))
    floor = _shaped(total, rng, 1.0)
    return (hum / _rms(hum) + 0.1 * floor / _rms(floor)).astype(np.float32)


def _clicks(total: int, rng: np.random.Generator) -> F32:
    """Typing: 5 ms decaying clicks, about 6 a second, over a faint pink floor."""
    out = 0.05 * _shaped(total, rng, 1.0)
    out /= _rms(out) * 20
    decay = np.exp(-np.arange(80) / 16.0)
    for at in np.cumsum(rng.exponential(RATE / 6, int(total / RATE * 8))).astype(int):
        if at + 80 < total:
            out[at : at + 80] += rng.standard_normal(80) * decay * rng.uniform(0.3, 1.0)
    return out.astype(np.float32)


def _babble(total: int, cache: Path, rng: np.random.Generator) -> F32:
    """Four other voices talking at once (the other VITS speaker), looped, each from a point
    of its own."""
    voices = _clips(BABBLE, cache, "noise-babble", other_speaker=True)
    out = np.zeros(total, dtype=np.float32)
    for v in voices:
        at = int(rng.integers(len(v)))
        out += np.tile(v, total // len(v) + 2)[at : at + total]
    return out


NOISES = ("white", "pink", "brown", "hum", "clicks", "babble")


def make_noise(kind: str, total: int, cache: Path, seed: int = 0) -> F32:
    """`kind` of `NOISES`, `total` samples, at unit RMS."""
    rng = np.random.default_rng(seed)
    match kind:
        case "white" | "pink" | "brown":
            x = _shaped(total, rng, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind])
        case "hum":
            x = _hum(total, rng)
        case "clicks":
            x = _clicks(total, rng)
        case "babble":
            x = _babble(total, cache, rng)
        case _:
            raise ValueError(f"unknown noise {kind!r}: one of {', '.join(NOISES)}")
    return (x / _rms(x)).astype(np.float32)


def _rms(x: Any) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)) + 1e-12)


def _clips(texts: list[str], cache: Path, name: str, *, other_speaker: bool = False) -> list[F32]:
    path = cache / f"{name}.npz"
    if not path.exists():
        from bench.speech import clip

        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, *[clip(t, other_speaker=other_speaker) for t in texts])
    with np.load(path) as got:
        return [got[f"arr_{i}"] for i in range(len(texts))]


def user_speech(cache: Path) -> tuple[F32, list[tuple[int, int]]]:
    """The sentences, 2 s in and 1 s apart, and each one's speech span [onset, end)."""
    from bench.speech import onset

    clips = _clips(SENTENCES, cache, "noise-user")
    audio = np.zeros(2 * RATE + sum(len(c) + RATE for c in clips), dtype=np.float32)
    spans, pos = [], 2 * RATE
    for c in clips:
        audio[pos : pos + len(c)] = c
        spans.append((pos + onset(c), pos + len(c) - onset(c[::-1])))
        pos += len(c) + RATE
    return audio, spans


def measure(speech: F32, spans: list[tuple[int, int]], noise: F32, level: str) -> dict[str, Any]:
    """One run: `speech` + `noise` through the uplink with `vad.noise_suppression` = `level`
    (both scaled together, if need be, so that the mix stays under full scale: the uplink's
    s16 would clip it)."""
    from bench.asr_helpers import transcribe

    peak = float(np.max(np.abs(speech + noise)))
    gain = min(1.0, 0.9 / peak)
    speech, noise = speech * gain, noise * gain
    mic = speech + noise
    uplink, events, cpu = replay(np.zeros(0, np.float32), mic, noise_suppression=level)
    out = uplink._audio(0, uplink._pos)
    assert uplink._pos == len(out) >= len(mic) - 2 * 512, "the turn ring must hold the run"
    far = np.ones(len(out), dtype=bool)  # not a sentence, nor within NEAR of one
    for a, b in spans:
        far[max(0, a - NEAR) : b + NEAR] = False
    alone = far.copy()
    alone[:RATE] = False  # (the noise level: after the suppressor's first estimate)
    talk = np.zeros(len(out), dtype=bool)
    for a, b in spans:
        talk[a : min(b, len(out))] = True
    starts = [e.sample for _, e in events if isinstance(e, SpeechStart)]
    onsets, missed = [], 0
    for a, b in spans:
        mine = [s for s in starts if a - NEAR <= s < b]
        if mine:
            onsets.append(1000 * (mine[0] - a) / RATE)
        else:
            missed += 1
    return {
        "noise_out_db": db(noise[: len(out)][alone]) - db(out[alone]),
        "voice_db": db(out[talk]) - db(speech[: len(out)][talk]),
        "false_starts": sum(1 for s in starts if s < len(far) and far[s]),
        "missed": missed,
        "onsets_ms": onsets,
        "cpu_percent": 100 * cpu / (len(mic) / RATE),
        "heard": [transcribe(out[max(0, a - PAD) : b + PAD], RATE) for a, b in spans],
        "gain_db": 20 * np.log10(gain),
    }


def combined(level: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of one noise, SNR and level over its seeds' runs."""
    from bench.asr_helpers import word_error_rate

    onsets = [o for r in runs for o in r["onsets_ms"]]
    heard = [h for r in runs for h in r["heard"]]
    return {
        "level": level,
        "noise_out_db": round(float(np.mean([r["noise_out_db"] for r in runs])), 1),
        "voice_db": round(float(np.mean([r["voice_db"] for r in runs])), 2),
        "wer": round(100 * word_error_rate(SENTENCES * len(runs), heard), 1),
        "wer_by_seed": [round(100 * word_error_rate(SENTENCES, r["heard"]), 1) for r in runs],
        "false_starts": sum(r["false_starts"] for r in runs),
        "missed": sum(r["missed"] for r in runs),
        "onset_ms": round(float(np.median(onsets)), 1) if onsets else None,
        "onset_ms_worst": round(max(onsets, key=abs), 1) if onsets else None,
        "cpu_percent": round(float(np.mean([r["cpu_percent"] for r in runs])), 3),
        "mix_gain_db": round(min(r["gain_db"] for r in runs), 1),
        "heard": heard,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--noises", default=",".join(NOISES))
    p.add_argument("--snrs", default="20,10,5,0", help="dB, the voice over the noise")
    p.add_argument("--levels", default=",".join(NOISE_SUPPRESSION))
    p.add_argument("--seeds", type=int, default=2, help="noises of each kind (other seeds)")
    p.add_argument("--cache", default="out", help="where the synthesized voices are kept")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--md", metavar="PATH", help="a Markdown table")
    args = p.parse_args(argv)
    cache = Path(args.cache)
    speech, spans = user_speech(cache)
    voice_db = db(np.concatenate([speech[a:b] for a, b in spans]))
    rows = []
    for kind in args.noises.split(","):
        units = [make_noise(kind, len(speech), cache, seed) for seed in range(args.seeds)]
        for snr in (float(s) for s in args.snrs.split(",")):
            scale = 10 ** ((voice_db - snr) / 20)
            for level in args.levels.split(","):
                runs = [measure(speech, spans, u * scale, level) for u in units]
                row = {"noise": kind, "snr_db": snr, **combined(level, runs)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    out = {
        "rev": rev,
        "cpus": os.cpu_count(),
        "voice_dbfs": round(voice_db, 1),
        "seeds": args.seeds,
        "words": len(" ".join(SENTENCES).split()) * args.seeds,
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(out))


COLUMNS = (
    ("noise out (dB)", "noise_out_db"),
    ("voice (dB)", "voice_db"),
    ("WER %", "wer"),
    ("false starts", "false_starts"),
    ("missed", "missed"),
    ("onset (ms)", "onset_ms"),
    ("worst (ms)", "onset_ms_worst"),
    ("CPU (% core)", "cpu_percent"),
)


def markdown(out: dict[str, Any]) -> str:
    """One row per noise, SNR and level."""
    head = "| noise | SNR (dB) | level | " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [head, "|---|---:|---|" + "---:|" * len(COLUMNS)]
    for r in out["rows"]:
        cells = ["-" if r[k] is None else f"{r[k]:g}" for _, k in COLUMNS]
        lines.append(
            f"| {r['noise']} | {r['snr_db']:g} | {r['level']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
