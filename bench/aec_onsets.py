"""Barge-in over the echo by where in a reply the user starts: `python -m bench.aec_onsets`.

`bench.aec_rooms` starts the user at `--trials` moments from the agent's second second on, and
its p95 reads as if a barge-in were as fast anywhere in a reply. It is not: in a session's first
reply the echo canceller is still learning (AEC3 converges, and the session hears silence while
it does but where nothing sent can echo, converging.py; the near-end check knows the echo's
return loss only after half a second of it), and a
later reply starts with the room's tail unknown for `nearend.TAIL_MS`. This replays, in each
room of `bench/rooms.py`, the agent's voice twice with `--gap-s` of silence between (the
session's first reply, then a second one), and starts the user (10 dB over the echo, as
`bench.aec_rooms`) every `--step-s` over the first `--span-s` of each reply: barge-in latency
(the uplink frame holding the user's onset -> the frame whose window decided the barge-in; a
miss: none within 2 s) and false triggers before the onset (must be 0).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from bench.aec_rooms import F32, FRAME, FRAME_S, MISS_S, RATE, _onset, replay, save_rows, voices
from bench.rooms import ROOMS, ROOMS_BY_NAME, db, noise
from duplexd._uplink.vad import BargeIn, SpeechStart

USER_DB = 10.0  # the user's level over the echo (`bench.aec_rooms --user-db`'s default)


def run(
    rooms: list[str], agent1: F32, user: F32, *, step_s: float, span_s: float, gap_s: float
) -> list[dict[str, Any]]:
    """One row per (room, reply, onset): the agent's reply `agent1` twice, the `user` over it."""
    agent = np.concatenate([agent1, np.zeros(round(gap_s * RATE), np.float32), agent1])
    total = len(agent) + RATE
    starts = {"first": _onset(agent1), "second": len(agent1) + round(gap_s * RATE) + _onset(agent1)}
    on = _onset(user)
    rows = []
    for name in rooms:
        echo = ROOMS_BY_NAME[name].echo(agent, total)
        gain = 10 ** ((db(echo[RATE : len(agent1)]) + USER_DB - db(user[on:])) / 20)
        for reply, start in starts.items():
            for onset_s in np.arange(0.0, span_s, step_s):
                at = start + round(onset_s * RATE) - on  # (the user's clip starts here)
                talk = np.zeros(total, dtype=np.float32)
                clip = user[max(0, -at) :]  # (at the reply's very start: its lead-in cut)
                talk[max(0, at) : max(0, at) + len(clip)] = gain * clip[: total - max(0, at)]
                _, events, _ = replay(agent, echo + talk + noise(total, -55.0, seed=1), seed=1)
                onset_frame = (at + on) // FRAME
                hits = [k for k, e in events if isinstance(e, BargeIn) and k >= at // FRAME]
                late = (hits[0] - onset_frame) * FRAME_S if hits else None
                rows.append(
                    {
                        "room": name,
                        "reply": reply,
                        "onset_s": round(float(onset_s), 3),
                        "barge_in_ms": (
                            round(1000 * late) if late is not None and late <= MISS_S else None
                        ),
                        "false_before": sum(
                            isinstance(e, (BargeIn, SpeechStart)) and k < at // FRAME
                            for k, e in events
                        ),
                    }
                )
    return rows


def markdown(rows: list[dict[str, Any]], *, slow_ms: float = 300.0) -> str:
    """Per room and reply: the onsets' barge-in p50 / p95 / max, misses, false triggers, and
    where in the reply a barge-in took over `slow_ms`."""
    lines = [
        "| room | reply | onsets | p50 (ms) | p95 (ms) | max (ms) | misses | false triggers "
        f"| onsets (s) over {slow_ms:g} ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    keys = list(dict.fromkeys((r["room"], r["reply"]) for r in rows))
    for room, reply in keys:
        rs = [r for r in rows if r["room"] == room and r["reply"] == reply]
        ms = sorted(r["barge_in_ms"] for r in rs if r["barge_in_ms"] is not None)
        misses = len(rs) - len(ms)
        slow = [r["onset_s"] for r in rs if r["barge_in_ms"] is None or r["barge_in_ms"] > slow_ms]
        p50, p95, top = (
            (ms[len(ms) // 2], ms[round(0.95 * (len(ms) - 1))], ms[-1]) if ms else ("-",) * 3
        )
        false = sum(r["false_before"] for r in rs)
        lines.append(
            f"| {room} | {reply} | {len(rs)} | {p50} | {p95} | {top} | {misses} | {false} "
            f"| {', '.join(f'{s:g}' for s in slow) or '-'} |"
        )
    return "\n".join(lines) + "\n"


def _rooms(text: str) -> list[str]:
    names = [x for x in text.split(",") if x]
    unknown = [x for x in names if x not in ROOMS_BY_NAME]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: rooms with commas, of {', '.join(ROOMS_BY_NAME)}"
        )
    return names


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rooms", type=_rooms, default=[r.name for r in ROOMS], help="a,b,...")
    p.add_argument("--step-s", type=float, default=0.1, help="between the user's onsets")
    p.add_argument("--span-s", type=float, default=2.0, help="onsets over this much of a reply")
    p.add_argument("--gap-s", type=float, default=1.0, help="silence between the two replies")
    p.add_argument("--cache", default="out", help="where the synthesized voices are kept")
    p.add_argument("--rev", help="the revision measured (default: git's HEAD here)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--md", metavar="PATH")
    args = p.parse_args(argv)
    if not (0 < args.step_s <= args.span_s) or args.gap_s < 0:
        p.error("--step-s must be over 0 and at most --span-s, and --gap-s at least 0")
    agent, user = voices(Path(args.cache))
    rows = run(args.rooms, agent, user, step_s=args.step_s, span_s=args.span_s, gap_s=args.gap_s)
    table = markdown(rows)
    print(table, end="")
    save_rows(rows, table, rev=args.rev, json_path=args.json, md_path=args.md)


if __name__ == "__main__":
    main()
