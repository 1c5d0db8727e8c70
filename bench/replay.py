"""A recorded session's uplink run again offline: `python -m bench.replay FILE [FILE ...]`.

`duplexd serve --trace-uplink DIR` (settings `[trace] uplink_dir`; `--trace-session` says which
sessions, e.g. `all`) records each selected session's uplink inputs (duplexd/_uplink/record.py).
This makes the same `Uplink` again (the session's options, rates and codec; the bundled VAD
model, and the bundled turn and ASR models where the daemon had them: the worker runs only the
VAD's, the others only have to be there) and hands it the recorded batches in this
thread, as the daemon's worker did: every barge-in, speech start and stop comes out at the same
sample, so a false barge-in seen once live can be looked at here, traced (wrap a method of the
uplink's parts) and checked against a change. Turn ends follow the turn model's recorded answers
(the questions are not asked again); held sounds, their recorded transcripts.

Prints, per file, each event with its 16 kHz sample, the uplink second it stands for, when
(server clock, from the uplink's start) the audio that decided it had arrived and how long
before that the session last sent audio (a barge-in is the detector's: the session interrupts
only what is playing), then the uplink worker's STATS; `--json F` writes the same as JSON.
Exit 2 with one line for a file that is not a recording.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

from duplexd._uplink.record import DOWNLINK, RecordingError, read_recording
from duplexd._uplink.uplink import Uplink, UplinkServices
from duplexd._uplink.vad import VAD_RATE_HZ, BargeIn, SpeechStart, SpeechStop, VadModel
from duplexd.protocol.codec import RemoteProtocolError, iter_frames
from duplexd.protocol.frames import FrameType
from duplexd.protocol.options import SessionOptions, parse_options


async def _no_offload(fn: Any, *args: Any) -> Any:
    raise AssertionError("bench.replay runs the uplink's batches itself")


def _ignore(*_: object) -> bool:
    return True


def services_for(header: dict[str, Any], vad_model: VadModel | None = None) -> UplinkServices:
    """The models the recorded daemon had (`header`): the bundled ones (the uplink's worker
    runs the VAD model; the turn and ASR models it only needs to know were there)."""
    transcriber = turn_model = None
    if header["transcriber"]:
        from duplexd._uplink.asr import Transcriber

        transcriber = Transcriber()
    if header["turn_model"]:
        from duplexd._uplink.turn import TurnModel

        turn_model = TurnModel()
    return UplinkServices(
        vad_model=vad_model or VadModel(),
        offload=_no_offload,
        transcriber=transcriber,
        turn_model=turn_model,
    )


def options_of(header: dict[str, Any]) -> SessionOptions:
    """The session's options as recorded (checked as a Hello's are; RecordingError if not)."""
    try:
        return parse_options(json.dumps(header["options"]))
    except RemoteProtocolError as exc:
        raise RecordingError(f"the recorded options: {exc}") from None


def replay(
    path: str | Path,
    services: Callable[[dict[str, Any]], UplinkServices] = services_for,
) -> dict[str, Any]:
    """Run the recording at `path` through a fresh `Uplink`: {"events": [...], "stats": ...}.
    Each event: kind (speech_start, speech_stop, barge_in), its 16 kHz `sample`, `uplink_s`
    (that sample on the uplink's clock), `arrived_s` (when the audio that decided it came,
    from the uplink's start on the server clock) and `sent_ms_before` (how long before that
    the session had last sent audio; None: never). A barge-in is the detector's: the session
    interrupted only what was playing then. Raises RecordingError for a file that is not a
    recording."""
    header, batches = read_recording(path)
    clock = trio.testing.MockClock()
    result: dict[str, Any] = {}

    async def run() -> None:
        t0 = float(header["t0"])
        clock.jump(t0 - trio.current_time())  # (the echo canceller's clock starts there)
        uplink = Uplink(
            rate_hz=header["rate_hz"],
            downlink_rate_hz=header["downlink_rate_hz"],
            options=options_of(header),
            services=services(header),
            send=_ignore,
            barge_in=_ignore,
            hold=_ignore if header["soft"] else None,
            settle=_ignore if header["soft"] else None,
            downlink_opus=header["downlink_opus"],
        )
        events = []
        sent = None  # when the session last sent audio (the echo's reference)
        for batch in batches:
            for now, kind, data in batch:
                if kind == DOWNLINK and any(f.type == FrameType.AUDIO for f in iter_frames(data)):
                    sent = now
            for arrived, ev in uplink._process_batch(batch):
                kind = _KINDS.get(type(ev))
                if kind is None:
                    continue
                sample = ev.sample
                events.append(
                    {
                        "kind": kind,
                        "sample": sample,
                        "uplink_s": round(sample / VAD_RATE_HZ, 4),
                        "arrived_s": round(arrived - t0, 4),
                        "sent_ms_before": None if sent is None else round(1000 * (arrived - sent)),
                    }
                )
        result["events"] = events
        result["stats"] = uplink.stats()

    trio.run(run, clock=clock)
    return result


_KINDS = {SpeechStart: "speech_start", SpeechStop: "speech_stop", BargeIn: "barge_in"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", metavar="FILE", help="a recording ([trace] uplink_dir)")
    p.add_argument("--json", metavar="F", help="write the events and STATS per file here")
    args = p.parse_args(argv)
    out: dict[str, Any] = {}
    for name in args.files:
        try:
            result = replay(name)
        except (RecordingError, OSError) as exc:
            print(f"bench.replay: {exc}", file=sys.stderr)
            return 2
        out[name] = result
        print(f"{name}:")
        for ev in result["events"]:
            print(
                f"  {ev['kind']:<12} sample {ev['sample']:>9}  uplink {ev['uplink_s']:9.3f} s"
                f"  arrived {ev['arrived_s']:9.3f} s  audio sent {ev['sent_ms_before']} ms before"
            )
        print("  stats " + json.dumps(result["stats"], separators=(",", ":")))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
