"""The soft barge-in's words check where its bounds move: `python -m bench.hold_words`.

A held soft barge-in's sound is transcribed (`HoldCheck`) from its onset to where the silence
after it began, as the daemon's VAD and the voice's level place them, and where they fall moves
with the noise, the uplink's 20 ms frames and the VAD's 32 ms windows. This cuts each spoken
sound of `bench.backchannels` (its backchannels and interruptions; the joe voice, and the tests'
other speaker: `bench.speech.clip`) at starts `STARTS_MS` and ends `ENDS_MS` around its true
bounds (45 clips a sound), transcribes each with the daemon's `Transcriber` as a held sound is
(after `transcripts.HOLD_PROMPT`, a loop cut where it began; `--plain`: as before that prompt,
no prompt and a loop decoded again in the 30 s window), and decides as `soft.SoftBargeIn.answer`
does (no words, or only backchannel words: the audio goes on; any other word interrupts) by two
rules:

- `hums`: the daemon's (`soft.is_backchannel`: a word of `vad.backchannels`, or a hum however
  Whisper spells it, "MmMmM", "M-H-M", "M h m");
- `list`: a word of `vad.backchannels` only (the rule before hums counted).

Per sound, the share of its clips decided right (a backchannel goes on, an interruption
interrupts) by each rule and the transcripts seen; in all, the backchannels' and the
interruptions' shares. What it shows is Whisper tiny.en's side of the soft barge-in: the
VITS voice says some of these as no person would ("Uh-huh" comes out near "out"), so read
the shares as what moves with the bounds, not as a rate for people.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from bench.backchannels import BACKCHANNELS, INTERRUPTIONS
from duplexd._uplink.soft import is_backchannel, spoken_words
from duplexd.protocol.options import DEFAULT_BACKCHANNELS

RATE: Final = 16_000
MS: Final = RATE // 1000
STARTS_MS: Final = (-64, -32, 0, 32, 64)  # the clip's start against the true onset
ENDS_MS: Final = (-96, -64, -32, 0, 32, 64, 96, 128, 160)  # its end against the true end
F32 = npt.NDArray[np.float32]
ALLOWED: Final = frozenset(w for entry in DEFAULT_BACKCHANNELS for w in spoken_words(entry))


def goes_on(text: str, rule: str) -> bool:
    """Whether the held audio goes on after `text` by `rule` ("hums" or "list")."""
    words = spoken_words(text)
    if not words:
        return True
    if rule == "hums":
        return is_backchannel(text, ALLOWED)
    return all(w in ALLOWED for w in words)


def clips(audio: F32) -> list[F32]:
    """`audio` cut at every start and end of `STARTS_MS` x `ENDS_MS` around its speech (a
    start before the clip's first sample is silence)."""
    from bench.speech import onset

    on, end = onset(audio), len(audio) - onset(audio[::-1])
    out = []
    for ds in STARTS_MS:
        for de in ENDS_MS:
            a, b = on + ds * MS, min(len(audio), end + de * MS)
            lead = np.zeros(max(0, -a), dtype=np.float32)
            out.append(np.concatenate((lead, audio[max(0, a) : b])))
    return out


def sounds(cache: Path) -> dict[tuple[str, str], F32]:
    """(voice, text) -> 16 kHz audio, for both voices, synthesized once into `cache`."""
    path = cache / "hold-words.npz"
    texts = (*BACKCHANNELS, *INTERRUPTIONS)
    if not path.exists():
        from bench.speech import clip

        cache.mkdir(parents=True, exist_ok=True)
        arrays = {
            f"{v}|{t}": clip(t, other_speaker=v == "other") for v in ("joe", "other") for t in texts
        }
        np.savez(path, **arrays)  # type: ignore[arg-type]
    with np.load(path) as got:
        return {(v, t): got[f"{v}|{t}"] for v in ("joe", "other") for t in texts}


def measure(cache: Path, *, plain: bool = False) -> dict[str, Any]:
    from duplexd._uplink.asr import Transcriber
    from duplexd._uplink.transcripts import HOLD_PROMPT

    transcriber = Transcriber()
    transcriber.load()
    prompt = None if plain else HOLD_PROMPT
    rows = []
    took_s: list[float] = []
    for (voice, text), audio in sounds(cache).items():
        kind = "backchannel" if text in BACKCHANNELS else "interruption"
        heard = []
        for c in clips(audio):
            t0 = time.perf_counter()
            heard.append(transcriber.transcribe_sync(c, prompt, not plain))
            took_s.append(time.perf_counter() - t0)
        row: dict[str, Any] = {"voice": voice, "sound": text, "kind": kind, "clips": len(heard)}
        for rule in ("hums", "list"):
            right = sum(goes_on(h, rule) == (kind == "backchannel") for h in heard)
            row[f"right_{rule}"] = right
        row["heard"] = {h: heard.count(h) for h in sorted(set(heard))}
        print(json.dumps(row), flush=True)
        rows.append(row)
    total: dict[str, Any] = {}
    for kind in ("backchannel", "interruption"):
        mine = [r for r in rows if r["kind"] == kind]
        n = sum(r["clips"] for r in mine)
        for rule in ("hums", "list"):
            total[f"{kind}_right_{rule}"] = round(
                100 * sum(r[f"right_{rule}"] for r in mine) / n, 1
            )
        total[f"{kind}_clips"] = n
    total["decode_ms_p50"] = round(1000 * float(np.percentile(took_s, 50)), 1)
    total["decode_ms_p95"] = round(1000 * float(np.percentile(took_s, 95)), 1)
    return {"rows": rows, "total": total, "prompt": prompt}


def markdown(out: dict[str, Any]) -> str:
    t = out["total"]
    prompt = out.get("prompt")
    lines = [
        f"Decoded after the prompt {prompt!r}, a loop cut where it began."
        if prompt
        else "Decoded plain: no prompt, a loop decoded again in the 30 s window.",
        "",
        "| voice | sound | clips | right, hums | right, list alone | heard (count) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in out["rows"]:
        heard = "; ".join(f"{h!r} {n}" for h, n in sorted(r["heard"].items(), key=lambda x: -x[1]))
        lines.append(
            f"| {r['voice']} | {r['sound']} | {r['clips']} | {r['right_hums']} |"
            f" {r['right_list']} | {heard} |"
        )
    lines += [
        "",
        f"Backchannels decided right: {t['backchannel_right_hums']} % with hums,"
        f" {t['backchannel_right_list']} % by the list alone ({t['backchannel_clips']} clips);"
        f" interruptions: {t['interruption_right_hums']} % / {t['interruption_right_list']} %"
        f" ({t['interruption_clips']} clips). A decode took {t['decode_ms_p50']} ms at the"
        f" median, {t['decode_ms_p95']} ms at p95 (wall time, Whisper tiny.en on this machine).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cache", default="out", help="where the synthesized sounds are kept")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--md", metavar="PATH", help="a Markdown table")
    p.add_argument(
        "--plain", action="store_true", help="decode without the hold prompt, as before it"
    )
    args = p.parse_args(argv)
    out = measure(Path(args.cache), plain=args.plain)
    out["rev"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
