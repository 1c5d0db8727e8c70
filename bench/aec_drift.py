"""The echo canceller over a long session whose client's audio clock drifts:
`python -m bench.aec_drift`.

A client's microphone and loudspeaker run on its sound card's crystal, not on the server's
clock: its "16 kHz" is the server's 16 kHz times (1 + ppm / 10^6), tens of ppm off on good
hardware, a few hundred on poor. Over a long session the uplink's samples slide against the
server clock (100 ppm: 6 ms a minute), and with them the echo against the reference AEC3 is
handed, which the glue pairs once (`EchoCanceller._server`) and realigns only when the presence
check finds the echo moved. This replays `--minutes` of a session in one room: the agent's
voice (`bench.aec_rooms.voices`) again and again with `--gap-s` of silence between utterances,
each utterance's frames sent on the server's 20 ms grid, the echo coming back over the room
noise (-55 dBFS) captured on the client's clock, each uplink frame arriving when the client's
clock says it was captured (plus 3 ms). Per minute: how much of the echo the canceller took out
(ERLE, dB, over the seconds the agent talked), false barge-ins and speech starts (must be 0),
and the realignments (each starts AEC3 over); at the end, the slide the canceller followed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import trio
import trio.testing

from bench.aec_jitter import numbers
from bench.aec_rooms import FRAME, FRAME_S, RATE, UPLINK_LATENCY_S, make_uplink, save_rows, voices
from bench.rooms import ROOMS_BY_NAME, Room, noise
from duplexd._uplink.vad import BargeIn, SpeechStart
from duplexd.protocol import frames as fr
from duplexd.protocol.codec import encode


def timeline(agent: np.ndarray, minutes: float, gap_s: float) -> tuple[np.ndarray, list[int]]:
    """The agent's voice repeated, `gap_s` apart, `minutes` long (server clock), and the
    first sample of each utterance (a multiple of FRAME)."""
    gap = round(gap_s * RATE / FRAME) * FRAME
    span = -(-len(agent) // FRAME) * FRAME + gap
    starts = list(range(0, round(minutes * 60 * RATE) - span + 1, span))
    out = np.zeros(starts[-1] + span, dtype=np.float32)
    for s in starts:
        out[s : s + len(agent)] = agent
    return out, starts


def run(
    room: Room,
    agent: np.ndarray,
    *,
    drift_ppm: float,
    minutes: float,
    gap_s: float,
    speaker: str = "server",
) -> dict[str, Any]:
    """One session: per-minute ERLE, false triggers and realignments. `speaker`: the clock
    the loudspeaker plays on, the server's (another device, keeping to the stream) or the
    client's (`client`: the microphone's sound card; each utterance starts where its first
    frame came, on that clock, and plays back to back on it)."""
    played, starts = timeline(agent, minutes, gap_s)
    total = len(played)
    scale = 1.0 + drift_ppm * 1e-6  # client samples per server sample
    n_client = int((total - RATE) * scale) // FRAME * FRAME
    if speaker == "client":
        played_c = np.zeros(n_client + len(agent), dtype=np.float32)
        for s in starts:
            i = round(s * scale)
            played_c[i : i + len(agent)] = agent
        echo_c = room.echo(played_c[:n_client], n_client).astype(np.float32)
    else:
        echo = room.echo(played, total)  # (server clock)
        at = np.arange(n_client, dtype=np.float64) / scale  # the client's samples, in server's
        server = np.arange(total, dtype=np.float64)
        echo_c = np.interp(at, server, echo).astype(np.float32)
    mic = echo_c + noise(n_client, -55.0)
    sends = sorted(j for s in starts for j in range(s // FRAME, (s + len(agent)) // FRAME))

    async def go() -> dict[str, Any]:
        uplink = make_uplink()
        t0 = trio.current_time()
        out_e = np.zeros(n_client // RATE + 1)
        in_e = np.zeros(n_client // RATE + 1)
        false: list[tuple[float, str]] = []
        nxt = 0
        for k in range(n_client // FRAME):
            arrival = t0 + (k + 1) * FRAME_S / scale + UPLINK_LATENCY_S
            batch: list[tuple[float, int, Any]] = []
            while nxt < len(sends) and t0 + sends[nxt] * FRAME_S <= arrival:
                j = sends[nxt]
                pcm = (np.clip(played[j * FRAME : (j + 1) * FRAME], -1, 1) * 32767).astype("<i2")
                audio = fr.Audio(epoch=0, utterance_id=1, seq=j, pcm=pcm.tobytes())
                batch.append((t0 + j * FRAME_S, -1, encode(audio)))
                nxt += 1
            up = (np.clip(mic[k * FRAME : (k + 1) * FRAME], -1, 1) * 32767).astype("<i2")
            batch.append((arrival, 0, up.tobytes()))
            for _, ev in uplink._process_batch(batch):
                if isinstance(ev, BargeIn | SpeechStart):
                    false.append((round(k * FRAME_S, 2), type(ev).__name__))
            pos = uplink._pos
            second = pos // RATE - 1  # the last whole second the uplink has processed
            if second >= 0 and pos % RATE < 512 and in_e[second] == 0.0:
                s = slice(second * RATE, (second + 1) * RATE)
                out_e[second] = np.mean(np.square(uplink._audio(s.start, s.stop), dtype=np.float64))
                in_e[second] = np.mean(np.square(echo_c[s], dtype=np.float64)) + 1e-20
        ec = uplink._echo
        assert ec is not None
        minute_rows = []
        talking = in_e > 10 ** (-50 / 10)  # seconds with echo in them
        for m in range(int(np.ceil(n_client / RATE / 60))):
            sel = slice(m * 60, (m + 1) * 60)
            mask = talking[sel]
            erle = None
            if mask.any():
                erle = round(
                    10 * np.log10(in_e[sel][mask].sum() / max(out_e[sel][mask].sum(), 1e-20)), 1
                )
            minute_rows.append(
                {
                    "minute": m,
                    "erle_db": erle,
                    "false": sum(1 for t, _ in false if m * 60 <= t < (m + 1) * 60),
                }
            )
        return {
            "room": room.name,
            "drift_ppm": drift_ppm,
            "speaker": speaker,
            "minutes": minute_rows,
            "false_triggers": false,
            "realignments": ec.realignments,
            # the slide the canceller followed at the end (`duplexd/_uplink/skew.py`; absent
            # before it), as the client clock's ppm against the speaker's, and its restarts
            "followed_ppm": round(ec.skew.ppm, 1) if hasattr(ec, "skew") else None,
            "skew_restarts": ec.skew.restarts if hasattr(ec, "skew") else None,
            "slide_ms": round(1000 * (n_client - n_client / scale) / RATE, 1),
        }

    return trio.run(go, clock=trio.testing.MockClock())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--room", default="rt60-300", choices=sorted(ROOMS_BY_NAME))
    p.add_argument(
        "--drift-ppm",
        default="0,100,-100,300,-300",
        type=numbers,
        help="a,b,... (--drift-ppm=-300)",
    )
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--gap-s", type=float, default=1.0, help="silence between the utterances")
    p.add_argument(
        "--speaker",
        choices=("server", "client"),
        default="server",
        help="the clock the loudspeaker plays on: the server's (another device) or the client's",
    )
    p.add_argument("--cache", default="out", help="where the synthesized voices are kept")
    p.add_argument("--rev", help="the revision measured (default: git's HEAD here)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    agent, _ = voices(Path(args.cache))
    least_min = (len(agent) / RATE + args.gap_s) / 60
    if args.minutes < least_min:
        p.error(f"--minutes {args.minutes:g} holds no utterance: at least {least_min:.2f}")
    rows = []
    for ppm in args.drift_ppm:
        row = run(
            ROOMS_BY_NAME[args.room],
            agent,
            drift_ppm=ppm,
            minutes=args.minutes,
            gap_s=args.gap_s,
            speaker=args.speaker,
        )
        erles = [m["erle_db"] for m in row["minutes"] if m["erle_db"] is not None]
        print(
            f"{args.room} {ppm:+g} ppm (slid {row['slide_ms']} ms): ERLE per minute "
            f"{' '.join(f'{e:g}' for e in erles)} dB; false triggers {len(row['false_triggers'])}"
            f" {row['false_triggers'][:6]}; realignments {row['realignments']};"
            f" slide followed {row['followed_ppm']} ppm",
            flush=True,
        )
        rows.append(row)
    save_rows(rows, None, rev=args.rev, json_path=args.json, md_path=None)


if __name__ == "__main__":
    main()
