"""A run of the agent's voice played sooner or later than its sends say: `python -m bench.aec_runs`.

A client's player starts each run of frames a playout buffer after that run's first frame
arrives (bench/uplink.py's `Speaker`, a browser's jitter buffer), so a run that begins after a
gap (synthesis fell behind and the pacer skipped ticks) is played as late as the client's loop
and the network were for its first frame. The reference places it where the sends say, and
AEC3 follows the path the run before it had: a run played sooner than that one puts its echo
before the place AEC3 expects it. Live, the bench's player did so by 20-30 ms, and the run's
first syllable leaked (two false barge-ins traced: bench/results/README.md, "A run played
sooner than its sends say").

This replays the agent's voice coming back alone through each room of `--rooms`, nobody
talking, with one gap of `--gap-ms` in the sends before the onset of a syllable (`--positions`
of them, spread over the voice: each a scenario), and the run after the gap played `--shifts-ms`
later (negative: sooner) than the one before it was; it counts what must never happen (false
barge-ins and speech starts). `--played`: the client reports PLAYED as the browser client does,
which tells the server where each run played. PCM both ways, the uplink on time
(`bench.aec_jitter` varies that).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from bench.aec_jitter import numbers
from bench.aec_rooms import F32, FRAME, FRAME_S, RATE, replay, save_rows, voices
from bench.rooms import ROOMS, ROOMS_BY_NAME, noise
from duplexd._uplink.vad import BargeIn, SpeechStart

PLAYOUT_MS = 43.0  # from sending to playing the first run: the player's 40 ms and the network
REPORT_EVERY_S = 0.2  # --played: a PLAYED report this often while a run plays ...
REPORT_LATE_S = 0.010  # ... reaching the server this long after the sample it reports played


def onsets(agent: F32, count: int) -> list[int]:
    """`count` frames spread over `agent` (from its second second on) where a syllable begins:
    loud, after a frame under half as loud."""
    n = len(agent) // FRAME
    rms = np.sqrt(np.mean(agent[: n * FRAME].reshape(n, FRAME) ** 2, axis=1))
    found = [k for k in range(50, n - 20) if rms[k] > 0.05 and rms[k - 1] < 0.5 * rms[k]]
    if not found:
        return []
    picks = np.linspace(0, len(found) - 1, min(count, len(found)))
    return sorted({found[round(i)] for i in picks})


def scenario(
    agent: F32,
    room: str,
    at: int,
    gap_s: float,
    shift_s: float,
    *,
    played: bool = False,
    playout_s: float = PLAYOUT_MS / 1000,
) -> dict[str, Any]:
    """One gap before frame `at`, the run after it played `shift_s` later than the first
    (played `playout_s` after it was sent).
    `played`: the client reports PLAYED as the browser client does (the first sample of each
    run, and every `REPORT_EVERY_S` while it plays), `REPORT_LATE_S` after the sample played."""
    n = len(agent) // FRAME
    sent = [k * FRAME_S + (gap_s if k >= at else 0.0) for k in range(n)]
    play = [sent[k] + playout_s + (shift_s if k >= at else 0.0) for k in range(n)]
    return {
        "room": room,
        "shift_ms": round(shift_s * 1000, 1),
        "gap_ms": round(gap_s * 1000, 1),
        "played_reports": played,
        "at_s": round(sent[at], 2),
        **echo_alone(agent, room, sent, play, {0, at} if played else None, seed=at),
    }


def echo_alone(
    agent: F32,
    room: str,
    sent: list[float],
    play: list[float],
    firsts: set[int] | None,
    *,
    seed: int,
) -> dict[str, int]:
    """The agent's frame k sent at `sent[k]` and played at `play[k]` (s), its echo alone
    through `room` over room noise (`seed`): the false barge-ins and speech starts. `firsts`:
    the client reports PLAYED on these frames' first sample (its runs' first) and every
    `REPORT_EVERY_S`, `REPORT_LATE_S` after it played (None: no reports)."""
    n = len(sent)
    total = round((sent[-1] + 1.5) * RATE)
    heard = np.zeros(total, dtype=np.float32)
    for k in range(n):
        start = round(play[k] * RATE)
        heard[start : start + FRAME] = agent[k * FRAME : (k + 1) * FRAME]
    mic = ROOMS_BY_NAME[room].echo(heard, total) + noise(total, -55.0, seed=seed)
    reports = None
    if firsts is not None:  # (samples played: through the first sample of frame k; its clock)
        due = sorted({*firsts, *range(0, n, round(REPORT_EVERY_S / FRAME_S))})
        reports = [(play[k] + REPORT_LATE_S, k * FRAME + 1, round(play[k] * 1e6)) for k in due]
    _, events, _ = replay(agent[: n * FRAME], mic, sent_at_s=sent, jitter_ms=0.0, reports=reports)
    return {
        "false_barge_ins": sum(isinstance(e, BargeIn) for _, e in events),
        "false_speech_starts": sum(isinstance(e, SpeechStart) for _, e in events),
    }


def run(
    rooms: list[str],
    shifts_ms: list[float],
    gap_ms: float,
    positions: int,
    cache: Path,
    *,
    played: bool = False,
    playout_ms: float = PLAYOUT_MS,
) -> list[dict[str, Any]]:
    agent, _ = voices(cache)
    where = onsets(agent, positions)
    return [
        scenario(
            agent, room, at, gap_ms / 1000, shift / 1000, played=played, playout_s=playout_ms / 1000
        )
        for room in rooms
        for shift in shifts_ms
        for at in where
    ]


def markdown(rows: list[dict[str, Any]]) -> str:
    """Per room and shift: the scenarios, those with a false trigger, and the triggers."""
    lines = [
        "| room | run played (ms; - sooner) | scenarios | with a false trigger "
        "| false barge-ins | false speech starts |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for room, shift in dict.fromkeys((r["room"], r["shift_ms"]) for r in rows):
        rs = [r for r in rows if r["room"] == room and r["shift_ms"] == shift]
        bad = sum(1 for r in rs if r["false_barge_ins"] or r["false_speech_starts"])
        barge_ins = sum(r["false_barge_ins"] for r in rs)
        starts = sum(r["false_speech_starts"] for r in rs)
        lines.append(f"| {room} | {shift:+g} | {len(rs)} | {bad} | {barge_ins} | {starts} |")
    return "\n".join(lines) + "\n"


def rooms(text: str) -> list[str]:
    """`--rooms`: names from bench/rooms.py, with commas."""
    names = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in names if r not in ROOMS_BY_NAME]
    if unknown or not names:
        known = ", ".join(r.name for r in ROOMS)
        raise argparse.ArgumentTypeError(f"{text!r}: rooms with commas, of {known}")
    return names


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rooms", default="delay,rt60-300", type=rooms, help="a,b,...")
    p.add_argument(
        "--shifts-ms", default="-30,-20,-10,0,10,20,30", type=numbers,
        help="the run after the gap played this much later than the first (negative: sooner;"
        " with '=': --shifts-ms=-20,0)",
    )  # fmt: skip
    p.add_argument("--gap-ms", default=210.0, type=float, help="the gap in the sends")
    p.add_argument(
        "--playout-ms", default=PLAYOUT_MS, type=float,
        help="from sending to playing the first run (a player whose queue had grown: more)",
    )  # fmt: skip
    p.add_argument("--positions", default=8, type=int, help="syllable onsets the gap is put before")
    p.add_argument(
        "--played", action="store_true", help="the client reports PLAYED (as the browser client)"
    )
    p.add_argument("--cache", default="out", help="where the synthesized voices are kept")
    p.add_argument("--rev", help="the revision measured (default: git's HEAD here)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--md", metavar="PATH")
    args = p.parse_args(argv)
    if not 0 < args.gap_ms <= 1000 or not 1 <= args.positions <= 100:
        p.error("--gap-ms must be in (0, 1000] and --positions in 1..100")
    if any(-shift >= args.gap_ms for shift in args.shifts_ms):
        p.error("a run played sooner than --gap-ms would overlap the one before: shift less")
    if not 0 <= args.playout_ms <= 500 or any(
        args.playout_ms + shift < 0 for shift in args.shifts_ms
    ):
        p.error("--playout-ms must be in 0..500, and no run played before it was sent: shift less")
    rows = run(
        args.rooms, args.shifts_ms, args.gap_ms, args.positions, Path(args.cache),
        played=args.played, playout_ms=args.playout_ms,
    )  # fmt: skip
    table = markdown(rows)
    print(table, end="")
    save_rows(rows, table, rev=args.rev, json_path=args.json, md_path=args.md)


if __name__ == "__main__":
    main()
