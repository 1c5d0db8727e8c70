"""A session's uplink recorded (`[trace] uplink_dir`, duplexd/_uplink/record.py) and replayed
offline (`python -m bench.replay`): the replay decides what the session decided, sample for
sample, with the real models (silero, AEC3) on real echo of the bundled voice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

import bench.replay as replay_cli
from bench.aec_rooms import FRAME, RATE, replay, voices
from bench.rooms import ROOMS_BY_NAME, db, noise
from duplexd._ops.trace import Tracer
from duplexd._server.server import serve_duplexd
from duplexd._uplink.record import RecordingError, read_recording
from duplexd._uplink.services import UplinkServices
from duplexd._uplink.vad import BargeIn, SpeechStart, SpeechStop, VadModel
from duplexd.engines.registry import EngineSet
from duplexd.engines.tone import ToneEngine
from duplexd.protocol import frames as fr

pytestmark = pytest.mark.integration

_KINDS = {BargeIn: "barge_in", SpeechStart: "speech_start", SpeechStop: "speech_stop"}
_TIMING = {"vad_ms_per_window"}  # (the only STATS a replay cannot repeat: CPU time)


def test_a_recorded_uplink_replays_to_the_same_sample(tmp_path: Path) -> None:
    """The agent's voice through the rt60-300 room over a jittery uplink, the client's PLAYED
    reports, and the user talking over it twice: every event and every echo counter again."""
    agent, user = voices(tmp_path)
    total = len(agent) + RATE
    echo = ROOMS_BY_NAME["rt60-300"].echo(agent, total)
    talk = np.zeros(total, dtype=np.float32)
    for at in (round(1.5 * RATE), round(4.0 * RATE)):
        span = slice(at, min(total, at + len(user)))
        talk[span] = user[: span.stop - at] * 10 ** ((db(echo[span]) + 6 - db(user)) / 20)
    # the client plays frame i 120 ms after it was sent and reports it every 200 ms
    reports = [(t + 0.13, i * FRAME, round((t + 0.12) * 1e6)) for i in range(0, 300, 10)
               for t in [i * 0.02]]  # fmt: skip
    path = tmp_path / "s.uplink"
    uplink, events, _ = replay(
        agent, echo + talk + noise(total, -55.0), jitter_ms=30, seed=5, reports=reports,
        recording=str(path),
    )  # fmt: skip
    live = [(_KINDS[type(e)], e.sample) for _, e in events if type(e) in _KINDS]
    assert ("barge_in", live[0][1]) in live and len([k for k, _ in live if k == "barge_in"]) >= 2
    again = replay_cli.replay(path)
    assert [(e["kind"], e["sample"]) for e in again["events"]] == live
    stats = {k: v for k, v in uplink.stats().items() if k not in _TIMING}
    assert {k: v for k, v in again["stats"].items() if k not in _TIMING} == stats
    assert stats["echo_found"] is True and stats["echo_playout_ms"] > 0  # (the reports counted)


def test_a_file_that_is_not_a_recording_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "trace.jsonl"
    bad.write_text('{"t":0.1,"type":"hello"}\n')
    with pytest.raises(RecordingError, match="not an uplink recording"):
        read_recording(bad)
    assert replay_cli.main([str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not an uplink recording" in err
    bad.write_text('{"format": "duplexd-uplink/1", "t0": 0}\n')  # (another version's, say)
    assert replay_cli.main([str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "header lacks rate_hz" in err
    assert replay_cli.main([str(tmp_path / "nowhere.uplink")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_a_recording_cut_short_ends_at_its_last_whole_record(tmp_path: Path) -> None:
    """A daemon killed mid-write leaves a record cut short: the batches before it still read."""
    agent, _ = voices(tmp_path)
    path = tmp_path / "s.uplink"
    replay(agent[:RATE], noise(RATE, -55.0), recording=str(path))
    whole = list(read_recording(path)[1])
    raw = path.read_bytes()
    path.write_bytes(raw[:-700])  # (into the last batch's uplink frame)
    header, batches = read_recording(path)
    cut = list(batches)
    assert header["rate_hz"] == RATE and 0 < len(cut) < len(whole)
    assert cut == whole[: len(cut)]


async def test_the_daemon_records_the_selected_session_and_its_replay_agrees(
    tmp_path: Path,
) -> None:
    """`[trace] uplink_dir` with `sessions = 2`: the second session's uplink is recorded (the
    first's is not), and the replay starts and stops the user's speech where the session told
    its client it did (SPEECH_STARTED / SPEECH_STOPPED, uplink samples)."""
    from bench.speech import clip
    from duplexd.client.session import open_session

    user = clip("Could you book me a table for four, please?", other_speaker=True)
    tracer = Tracer("", "2", uplink_dir=str(tmp_path))
    services = UplinkServices.create(VadModel())
    said: list[Any] = []
    stopped, closed = trio.Event(), [trio.Event(), trio.Event()]

    def on_frame(frame: Any, _now: float) -> None:
        said.append(frame)
        if isinstance(frame, fr.SpeechStopped):
            stopped.set()

    def on_closed(_session: Any) -> None:
        next(e for e in closed if not e.is_set()).set()

    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(
            lambda task_status: serve_duplexd(
                "127.0.0.1", 0, engines=EngineSet.of(ToneEngine()), tracer=tracer,
                uplink_services=services, gil_switch_interval_s=None,
                on_session_closed=on_closed, task_status=task_status,
            )
        )  # fmt: skip
        for n, audio in enumerate((np.zeros(RATE // 2, dtype=np.float32), user)):
            mic = np.concatenate((np.zeros(RATE // 2), audio, np.zeros(RATE))).astype(np.float32)
            async with open_session(
                daemon.url, uplink_rate_hz=RATE, on_frame=on_frame if n else None
            ) as session:
                t0 = trio.current_time()
                for k in range(len(mic) // FRAME):
                    await trio.sleep_until(t0 + (k + 1) * 0.020)
                    pcm = np.clip(mic[k * FRAME : (k + 1) * FRAME], -1, 1) * 32767
                    await session.send_audio(pcm.astype("<i2").tobytes())
                if n:
                    with trio.move_on_after(5):
                        await stopped.wait()
        with trio.fail_after(5):  # (both sessions end on the daemon's side: the file closes)
            await closed[1].wait()
        nursery.cancel_scope.cancel()
    told = [
        ("speech_start" if isinstance(f, fr.SpeechStarted) else "speech_stop", f.uplink_sample)
        for f in said
        if isinstance(f, fr.SpeechStarted | fr.SpeechStopped)
    ]
    assert told and told[0][0] == "speech_start" and told[-1][0] == "speech_stop"
    again = await trio.to_thread.run_sync(_replay_the_one_recording, tmp_path)
    assert [(e["kind"], e["sample"]) for e in again["events"] if e["kind"] != "barge_in"] == told


def _replay_the_one_recording(folder: Path) -> dict[str, Any]:
    files = list(folder.glob("*.uplink"))
    assert len(files) == 1  # the second session's only
    header, _ = read_recording(files[0])
    assert header["rate_hz"] == RATE and header["options"]["vad"]["barge_in"] is True
    assert "token" not in json.dumps(header)
    return replay_cli.replay(files[0])
