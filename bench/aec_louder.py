"""An echo path that gets louder mid-reply: `python -m bench.aec_louder`.

The loudspeaker turned up while the agent talks, nobody else talking: each room of
`bench/rooms.py` with its echo `--louder-db` (each of them) louder from `--at-s` (each) on, over
-55 dBFS of room noise, through one session's uplink as `bench.aec_rooms` replays it. Every
barge-in is false. Each case runs twice: as the daemon has it, and with the microphone's
coherence with the reference switched off (`coherence.ECHO_COHERENCE` over 1: no span reaches
it), so the table shows what the coherence takes away and what is left. Columns: the barge-ins
(s of the agent's voice), the windows whose voice probability was the microphone's own
(micvoice.py), and the windows found louder than the echo but coherent with the reference.

    python -m bench.aec_louder [--json F] [--md F] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.aec_jitter import numbers
from bench.aec_rooms import FRAME, RATE, replay, voices
from bench.rooms import ROOMS, ROOMS_BY_NAME, noise
from duplexd._uplink import coherence
from duplexd._uplink.vad import BargeIn


def run_case(agent: Any, room: str, louder_db: float, at_s: float, check: bool) -> dict[str, Any]:
    """`room`'s echo of `agent`, `louder_db` louder from `at_s` on, nobody talking, through one
    uplink (`check`: with the coherence, else with none reaching it): its barge-ins (s), the
    windows the microphone's own voice counted in, and those found coherent."""
    total = len(agent) + RATE
    echo = ROOMS_BY_NAME[room].echo(agent, total)
    at = round(at_s * RATE)
    echo[at:] *= 10 ** (louder_db / 20)
    threshold = coherence.ECHO_COHERENCE
    coherence.ECHO_COHERENCE = threshold if check else 1.01  # type: ignore[misc]
    try:
        uplink, events, _ = replay(agent, echo + noise(total, -55.0, seed=1), seed=1)
    finally:
        coherence.ECHO_COHERENCE = threshold  # type: ignore[misc]
    c = uplink.counters
    barged = [round(k * FRAME / RATE, 2) for k, e in events if isinstance(e, BargeIn)]
    return {"barge_ins": barged, "mic_windows": c.mic_windows, "coherent": c.coherent_windows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.aec_louder", description=__doc__)
    p.add_argument("--louder-db", type=numbers, default=[6.0, 8.0, 10.0], help="e.g. 6,8,10")
    p.add_argument("--at-s", type=numbers, default=[3.0, 5.0], help="e.g. 3,5")
    p.add_argument("--cache", default="out/aec-voices")
    p.add_argument("--json", default="")
    p.add_argument("--md", default="")
    args = p.parse_args(argv)
    from .__main__ import git_rev

    agent, _ = voices(Path(args.cache))
    rows = []
    for room in (r.name for r in ROOMS if r.change_at_s is None):
        for louder_db in args.louder_db:
            for at_s in args.at_s:
                with_ = run_case(agent, room, louder_db, at_s, check=True)
                without = run_case(agent, room, louder_db, at_s, check=False)
                rows.append({"room": room, "louder_db": louder_db, "at_s": at_s,
                             "with": with_, "without": without})  # fmt: skip
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    rev = git_rev()
    lines = [
        f"# An echo path that gets louder mid-reply ({rev}, `python -m bench.aec_louder`)",
        "",
        f"`coherence.ECHO_COHERENCE` {coherence.ECHO_COHERENCE}; every barge-in here is false.",
        "",
        "| room | louder (dB) | at (s) | barge-ins | mic windows | coherent windows "
        "| without the coherence: barge-ins | mic windows |",
        "|---|---:|---:|---|---:|---:|---|---:|",
    ]
    for r in rows:
        w, wo = r["with"], r["without"]
        lines.append(
            f"| {r['room']} | {r['louder_db']:g} | {r['at_s']:g} | {w['barge_ins']} "
            f"| {w['mic_windows']} | {w['coherent']} | {wo['barge_ins']} | {wo['mic_windows']} |"
        )
    false_with = sum(len(r["with"]["barge_ins"]) for r in rows)
    false_without = sum(len(r["without"]["barge_ins"]) for r in rows)
    lines += ["", f"False barge-ins: {false_with} (without the coherence: {false_without})."]
    md = "\n".join(lines) + "\n"
    print(md)
    if args.md:
        Path(args.md).write_text(md)
    if args.json:
        meta = {"rev": rev, "echo_coherence": coherence.ECHO_COHERENCE}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
