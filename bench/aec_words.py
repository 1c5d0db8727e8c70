"""Whisper on the user talking over the echo, AEC3 alone and with the late echo suppressed:
`python -m bench.aec_words`.

`bench.aec_rooms` measures levels; this measures words. One session's uplink (the daemon's
own batches, `bench.aec_rooms.replay`) hears the agent's voice come back through a room of
`bench/rooms.py` while the user (the other VITS speaker) says one of four sentences over it,
`--user-db` above the echo, at `--trials` moments; the turn's audio (the uplink's ring, what the
daemon transcribes), from 0.3 s before the sentence to 0.6 s after it, goes to the daemon's
Whisper (greedy, as a final), once as the uplink leaves it and once with `late.FLOOR` at 1
(AEC3 alone: the late echo's suppressor takes nothing out). The figure is the word error rate
over the trials, normalized as `bench.asr_helpers.word_error_rate` does. At a few dB of
double talk Whisper's words are chaotic: any change to the audio, even in the pads around the
sentence, changes some of them, so read differences of a few points as noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.aec_rooms import RATE, head_rev, replay, voices
from bench.asr_helpers import word_error_rate
from bench.rooms import ROOMS_BY_NAME, db, noise
from duplexd._uplink import late
from duplexd._uplink.asr import Transcriber

USER_TEXTS = (
    "Wait, stop, I have a question.",
    "Can you book it for Friday instead?",
    "No, I meant the other one.",
    "How much does that cost?",
)
PRE_S = 0.3
POST_S = 0.6


def measure(
    transcriber: Transcriber, room: str, user_db: float, trials: int, cache: Path
) -> dict[str, Any]:
    """One row: the room at one level, both ways."""
    from bench.speech import clip

    agent, _ = voices(cache)
    users = [clip(t, other_speaker=True) for t in USER_TEXTS]
    total = len(agent) + RATE
    echo = ROOMS_BY_NAME[room].echo(agent, total)
    heard: dict[str, list[str]] = {"aec3": [], "late": []}
    refs: list[str] = []
    for i in range(trials):
        user = users[i % len(users)]
        at = round((1.0 + i * (len(agent) / RATE - 3.5) / max(1, trials - 1)) * RATE) + 37 * i
        talk = np.zeros(total, dtype=np.float32)
        span = slice(at, at + len(user))
        talk[span] = user * 10 ** ((db(echo[span]) + user_db - db(user)) / 20)
        mic = echo + talk + noise(total, -55.0, seed=i + 1)
        refs.append(USER_TEXTS[i % len(users)])
        for way, floor in (("aec3", 1.0), ("late", late.FLOOR)):
            saved = late.FLOOR
            late.FLOOR = floor
            try:
                uplink, _, _ = replay(agent, mic, seed=i + 1)
            finally:
                late.FLOOR = saved
            lo = max(0, at - round(PRE_S * RATE))
            hi = min(uplink._pos, at + len(user) + round(POST_S * RATE))
            heard[way].append(transcriber.transcribe_sync(uplink._audio(lo, hi)))
    return {
        "room": room,
        "user_db": user_db,
        "trials": trials,
        "wer_aec3": round(word_error_rate(refs, heard["aec3"]), 3),
        "wer_late": round(word_error_rate(refs, heard["late"]), 3),
        "texts": [
            {"said": r, "aec3": a, "late": b}
            for r, a, b in zip(refs, heard["aec3"], heard["late"], strict=True)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rooms", default="rt60-300,rt60-600", help="rooms of bench/rooms.py, a,b")
    p.add_argument("--user-db", default="0,5,10", help="the user's levels over the echo (dB)")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--cache", default="out", help="where the synthesized voices are kept")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    rooms = [r for r in args.rooms.split(",") if r]
    unknown = [r for r in rooms if r not in ROOMS_BY_NAME]
    if not rooms or unknown:
        names = ", ".join(ROOMS_BY_NAME)
        print(f"bench: --rooms takes rooms of {names}; got {args.rooms!r}", file=sys.stderr)
        return 2
    try:
        levels = [float(x) for x in args.user_db.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or args.trials < 1:
        print(
            f"bench: --user-db takes numbers, e.g. 0,5,10, and --trials 1 or more; got "
            f"{args.user_db!r} and {args.trials}",
            file=sys.stderr,
        )
        return 2
    transcriber = Transcriber(cpu_threads=2)
    transcriber.warm_up()
    rows = []
    print("| room | user over the echo (dB) | WER, AEC3 alone | WER, late echo suppressed |")
    print("|---|---:|---:|---:|")
    for room in rooms:
        for user_db in levels:
            row = measure(transcriber, room, user_db, args.trials, Path(args.cache))
            rows.append(row)
            print(f"| {room} | {user_db:g} | {row['wer_aec3']:.3f} | {row['wer_late']:.3f} |")
    if args.json:
        doc = {"rev": head_rev(), "rows": rows}
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    transcriber.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
