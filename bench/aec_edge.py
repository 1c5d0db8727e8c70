"""Frames sent at the edge of the client's player's buffer: `python -m bench.aec_edge`.

When synthesis falls behind, the pacer skips ticks and the next frame goes out late; every frame
after it is as late (the pacer's grid moved on). A client's player (bench/uplink.py's `Speaker`,
40 ms of buffer; the browser client's 50) plays a frame on if it comes before its turn, or runs
dry and starts a new run a buffer after it arrives. The server models that (placement.py's
`RunRule`): a frame sent up to the buffer after the run's end continues it. At the buffer's edge
the two disagree by the network's delay, which the server cannot see: live (rt60-300, seed 196
of `bench/results/aec-edge/`), a frame sent 39.9 ms late continued its run, the next one 0.5 ms
later still was put after a gap, the player played both on (it ran dry one frame later), and
the 280 ms of echo after it leaked a false barge-in.

This replays the agent's voice coming back alone through each room of `--rooms`, nobody
talking, with frame `at` sent `--late-ms` late and those after it `--extra-ms` later still
(each of `--positions` syllable onsets, minus two frames: a scenario), played by a player that
plays on through frame `at` + 1 and runs dry before `at` + 2 (`on`: the live case) or before
`at` + 1 (`dry`), a gap of `GAP_MS` (the live one). It counts what must never happen (false
barge-ins and speech starts). The client reports PLAYED as the browser client does (each of its
runs' first sample, and every 200 ms) unless `--no-reports`. PCM both ways, the uplink on time.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.aec_jitter import numbers
from bench.aec_rooms import F32, FRAME, FRAME_S, save_rows, voices
from bench.aec_runs import PLAYOUT_MS, echo_alone, onsets, rooms

GAP_MS = 41.8  # the player's gap where it ran dry (live: a buffer, and the frame's lateness)
VARIANTS = {"on": 2, "dry": 1}  # the player runs dry before frame `at` + this


def scenario(
    agent: F32,
    room: str,
    at: int,
    late_s: float,
    extra_s: float,
    variant: str,
    *,
    played: bool = True,
) -> dict[str, Any]:
    """Frame `at` sent `late_s` late, the frames after it `extra_s` later still; the player
    runs dry before frame `at` + `VARIANTS[variant]`. `played`: PLAYED reports, as
    `bench.aec_runs.echo_alone` sends them (each of the player's runs' first sample)."""
    n = len(agent) // FRAME
    sent = [k * FRAME_S + (late_s if k >= at else 0) + (extra_s if k > at else 0) for k in range(n)]
    dry = at + VARIANTS[variant]
    play = [k * FRAME_S + PLAYOUT_MS / 1000 + (GAP_MS / 1000 if k >= dry else 0) for k in range(n)]
    return {
        "room": room,
        "variant": variant,
        "late_ms": round(late_s * 1000, 2),
        "extra_ms": round(extra_s * 1000, 2),
        "played_reports": played,
        "at_s": round(sent[at], 2),
        **echo_alone(agent, room, sent, play, {0, dry} if played else None, seed=at),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """Per room, variant and lateness: the scenarios, those with a false trigger, the triggers."""
    lines = [
        "| room | player | late ms | then ms | reports | scenarios | with a false trigger "
        "| false barge-ins | false speech starts |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    keys = ("room", "variant", "late_ms", "extra_ms", "played_reports")
    for key in dict.fromkeys(tuple(r[k] for k in keys) for r in rows):
        rs = [r for r in rows if tuple(r[k] for k in keys) == key]
        bad = sum(1 for r in rs if r["false_barge_ins"] or r["false_speech_starts"])
        room, variant, late, extra, played = key
        lines.append(
            f"| {room} | {variant} | {late:g} | +{extra:g} | {'yes' if played else 'no'} "
            f"| {len(rs)} | {bad} | {sum(r['false_barge_ins'] for r in rs)} "
            f"| {sum(r['false_speech_starts'] for r in rs)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rooms", default="delay,rt60-300", type=rooms, help="a,b,...")
    p.add_argument("--late-ms", default="39.9", type=numbers, help="frame `at` sent this late")
    p.add_argument("--extra-ms", default="0.3,3,8", type=numbers, help="... the next ones later")
    p.add_argument("--variants", default="on,dry", help="on (the live case), dry: with commas")
    p.add_argument("--positions", default=8, type=int, help="syllable onsets (each a scenario)")
    p.add_argument("--no-reports", action="store_true", help="a client that sends no PLAYED")
    p.add_argument("--cache", default="out", help="where the synthesized voices are kept")
    p.add_argument("--rev", help="the revision measured (default: git's HEAD here)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--md", metavar="PATH")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        p.error(f"--variants: with commas, of {', '.join(VARIANTS)}")
    if not 1 <= args.positions <= 100:
        p.error("--positions must be in 1..100")
    if any(not 0 <= x <= 200 for x in [*args.late_ms, *args.extra_ms]):
        p.error("--late-ms and --extra-ms must be in 0..200")
    agent, _ = voices(Path(args.cache))
    where = [k - 2 for k in onsets(agent, args.positions)]
    rows = [
        scenario(agent, room, at, late / 1000, extra / 1000, v, played=not args.no_reports)
        for room in args.rooms
        for v in variants
        for late in args.late_ms
        for extra in args.extra_ms
        for at in where
    ]
    table = markdown(rows)
    print(table, end="")
    save_rows(rows, table, rev=args.rev, json_path=args.json, md_path=args.md)


if __name__ == "__main__":
    main()
