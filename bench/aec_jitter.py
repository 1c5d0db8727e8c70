"""The echo canceller over a jittery uplink, many draws: `python -m bench.aec_jitter`.

`bench.aec_rooms` replays one jitter draw per room; whether AEC3 is handed the right reference
depends on the draw (the clock pairing is taken from the first uplink frames: one of them late
pairs the clocks late). This replays the agent's voice coming back alone, with nobody talking,
through every room of `bench/rooms.py` at each mean jitter of `--jitter-ms` (exponential, frames
in order) and each seed of `--seeds` (the jitter draw and the room noise at -55 dBFS), and
counts what must never happen (false barge-ins and speech starts) and how much of the echo the
canceller took out (ERLE in dB, from the first second on; -55 dBFS of noise caps it at ~21).
`--codec opus`: Opus both ways, as `bench.aec_rooms --codec opus` (the room echoes what a client
decodes); `--echo-threshold`: the session option (else its default).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench import aec_rooms
from bench.aec_rooms import RATE, echo_threshold, played, replay, save_rows, voices
from bench.rooms import ROOMS, db, noise
from duplexd._uplink.vad import BargeIn, SpeechStart
from duplexd.protocol import frames as fr


def run(jitters_ms: list[float], seeds: range, cache: Path) -> list[dict[str, Any]]:
    """One row per (room, jitter, seed)."""
    agent, _ = voices(cache)
    total = len(agent) + RATE
    rows = []
    for room in ROOMS:
        echo = room.echo(played(agent), total)
        for jitter_ms in jitters_ms:
            for seed in seeds:
                mic = echo + noise(total, -55.0, seed=seed)
                uplink, events, _ = replay(agent, mic, jitter_ms=jitter_ms, seed=seed)
                out = uplink._audio(0, uplink._pos)
                span = slice(RATE, min(len(agent), uplink._pos))
                row = {
                    "room": room.name,
                    "jitter_ms": jitter_ms,
                    "seed": seed,
                    "codec": aec_rooms.CODEC,
                    "erle_db": round(db(echo[span]) - db(out[span]), 1),
                    "false_barge_ins": sum(isinstance(e, BargeIn) for _, e in events),
                    "false_speech_starts": sum(isinstance(e, SpeechStart) for _, e in events),
                }
                rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """Per room and jitter: false triggers over the seeds, and the lowest ERLE."""
    lines = [
        "| room | mean jitter (ms) | draws | false barge-ins | false speech starts "
        "| ERLE min / median (dB) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    keys = sorted({(r["room"], r["jitter_ms"]) for r in rows}, key=lambda k: (_order(k[0]), k[1]))
    for room, jitter in keys:
        rs = [r for r in rows if r["room"] == room and r["jitter_ms"] == jitter]
        erle = sorted(r["erle_db"] for r in rs)
        barge_ins = sum(r["false_barge_ins"] for r in rs)
        starts = sum(r["false_speech_starts"] for r in rs)
        lines.append(
            f"| {room} | {jitter:g} | {len(rs)} | {barge_ins} | {starts} "
            f"| {erle[0]:g} / {erle[len(erle) // 2]:g} |"
        )
    return "\n".join(lines) + "\n"


def _order(room: str) -> int:
    return [r.name for r in ROOMS].index(room)


def numbers(text: str) -> list[float]:
    """`--jitter-ms` (and `bench.aec_drift --drift-ppm`): comma-separated numbers."""
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: numbers with commas, e.g. 0,10,30") from None


def seed_range(text: str) -> range:
    """`--seeds`: FIRST-LAST (or one seed)."""
    first, _, last = text.partition("-")
    try:
        return range(int(first), int(last or first) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: FIRST-LAST, e.g. 0-9") from None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jitter-ms", default="0,10,30,60", type=numbers, help="mean jitters, a,b,...")
    p.add_argument("--seeds", default="0-4", type=seed_range, help="first-last seed (the draws)")
    p.add_argument("--cache", default="out", help="where the synthesized voices are kept")
    p.add_argument("--rev", help="the revision measured (default: git's HEAD here)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--md", metavar="PATH")
    p.add_argument(
        "--codec", choices=(fr.CODEC_PCM, fr.CODEC_OPUS), default=fr.CODEC_PCM,
        help="both ways: opus at 32 kbit/s, complexity 5 (the session's defaults)",
    )  # fmt: skip
    p.add_argument(
        "--echo-threshold", type=echo_threshold, help="vad.echo_threshold (default: 0.7)"
    )
    args = p.parse_args(argv)
    aec_rooms.CODEC, aec_rooms.ECHO_THRESHOLD = args.codec, args.echo_threshold
    rows = run(args.jitter_ms, args.seeds, Path(args.cache))
    table = markdown(rows)
    print(table, end="")
    save_rows(rows, table, rev=args.rev, json_path=args.json, md_path=args.md)


if __name__ == "__main__":
    main()
