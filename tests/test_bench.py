"""`python -m bench` end to end: a tiny run (2 sessions, 2 s, tone, with the baseline)."""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
LEVEL_KEYS = {
    "sessions": int,
    "jitter_ms": dict,
    "server_jitter_ms": dict,
    "fal_ms": dict,
    "barge_in_ms": dict,
    "underruns": int,
    "frames": int,
    "cpu_percent": float,
    "rss_mb": float,
    "machine": dict,  # bench.steal: what the hypervisor stole, and the stalls
}


# the tiny bench pins the daemon to the first CPU it may use and the clients to the last
DAEMON_CPU, CLIENT_CPU = min(os.sched_getaffinity(0)), max(os.sched_getaffinity(0))


@pytest.mark.unit
def test_cpu_lists_are_parsed_and_checked() -> None:
    from bench.cpus import parse_cpus

    assert parse_cpus(str(DAEMON_CPU)) == {DAEMON_CPU}
    assert parse_cpus(f"{DAEMON_CPU}-{DAEMON_CPU}") == {DAEMON_CPU}
    for bad, says in (
        ("x", "not a CPU list"),
        ("2-1", "not a CPU list"),
        ("4096", "not available"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            parse_cpus(bad)


@pytest.mark.integration
def test_a_server_is_pinned_before_it_starts_a_thread() -> None:
    from bench.cpus import pin

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pin(proc.pid, frozenset({CLIENT_CPU}))
        assert os.sched_getaffinity(proc.pid) == {CLIENT_CPU}
    finally:
        proc.kill()
        proc.wait()


def _check_level(level: dict) -> None:
    for key, kind in LEVEL_KEYS.items():
        assert key in level, key
        assert isinstance(level[key], kind | int if kind is float else kind), (key, level[key])
    for key in ("jitter_ms", "server_jitter_ms"):
        assert set(level[key]) >= {"p50", "p95", "p99", "max"}
        for q in ("p50", "p95", "p99", "max"):
            assert level[key][q] is not None and math.isfinite(level[key][q]), (key, q)
            assert 0 <= level[key][q] < 1000, (key, q, level[key][q])
    assert set(level["fal_ms"]) >= {"p50", "p95", "p99"}
    assert set(level["barge_in_ms"]) >= {"p50", "p95", "p99"}
    assert level["fal_ms"]["p50"] > 0
    assert level["frames"] > 0
    assert level["cpu_percent"] > 0
    assert level["rss_mb"] > 0
    assert level["session_errors"] == 0 and level["connect_failures"] == 0, level["errors"]
    assert level["stale_after_interrupted"] == 0
    machine = level["machine"]
    assert machine["stolen_ms"] and all(ms >= 0 for ms in machine["stolen_ms"].values())
    assert machine["stalls"] >= machine["stalls_with_theft"] >= 0


@pytest.mark.integration
def test_tiny_bench_writes_the_schema(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    plots = tmp_path / "plots"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--engine",
            "tone",
            "--sessions",
            "2",
            "--duration",
            "2",
            "--interrupt-fraction",
            "1",
            "--json",
            str(out),
            "--plots",
            str(plots),
            "--no-progress",
            *("--daemon-cpus", str(DAEMON_CPU), "--client-cpus", str(CLIENT_CPU)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| server pacing error p95 (ms) |" in proc.stdout
    assert f"(daemon pinned to CPU {DAEMON_CPU}, clients to CPU {CLIENT_CPU})" in proc.stdout
    doc = json.loads(out.read_text())
    assert (doc["daemon_cpus"], doc["client_cpus"]) == ([DAEMON_CPU], [CLIENT_CPU])
    for key, kind in (("engine", str), ("device", str), ("duration_s", float), ("git_rev", str)):
        assert isinstance(doc[key], kind), key
    assert doc["engine"] == "tone" and doc["duration_s"] == 2.0
    assert [lv["sessions"] for lv in doc["levels"]] == [2]
    level = doc["levels"][0]
    _check_level(level)
    _check_level(level["baseline"])
    for run in (level, level["baseline"]):  # counted by duplexd; read off the baseline's hist
        assert isinstance(run["server_jitter_ms"]["over_5ms"], int)
    # the daemon's garbage collections, read off its log (the baseline logs none)
    machine = level["machine"]
    assert (
        machine["daemon_gc_longest_ms"] >= 0
        and len(machine["stall_gc_pause_ms"]) == (machine["stalls"])
    )
    assert "daemon_gc_longest_ms" not in level["baseline"]["machine"]
    barge = level["barge_in_ms"]["p50"]  # None if no barge-in happened in 2 s
    assert barge is None or 0 < barge < 1000
    assert {p.name for p in plots.iterdir()} >= {"fal_cdf.png", "barge_in_cdf.png"}


UPLINK_KEYS = {
    "vad_false_triggers": int,
    "vad_false_triggers_per_min": float,
    "vad_missed": int,
    "vad_no_target": int,
    "vad_injected": int,
    "uplink_frames": int,
    "uplink_late_frames": int,
}


def _tone_bench(tmp_path: Path, *args: str, timeout_s: float = 60) -> tuple[str, dict]:
    """`python -m bench --engine tone --no-baseline` with `args`: its report and document."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "--engine", "tone", *args),
            *("--no-baseline", "--json", str(out), "--no-progress"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def _run_uplink(tmp_path: Path, *extra: str) -> tuple[str, dict]:
    stdout, doc = _tone_bench(tmp_path, "--uplink", "--sessions", "2", *extra)
    assert doc["uplink"]["rate_hz"] == 16_000
    level = doc["levels"][0]
    _check_level(level)
    for key, kind in UPLINK_KEYS.items():
        assert isinstance(level[key], kind | int if kind is float else kind), (key, level[key])
    assert set(level["vad_barge_in_ms"]) >= {"p50", "p95", "p99"}
    # two sessions x 20 ms frames for the whole level (a few may be lost to timing)
    assert level["uplink_frames"] >= 0.9 * 2 * doc["duration_s"] / 0.02, level["uplink_frames"]
    assert level["uplink_server"]["uplink_frames"] >= level["uplink_frames"]
    assert "| speech onset -> Interrupted(vad) p95 (ms) | <= 100 |" in stdout
    assert "| VAD false triggers | <= 0 |" in stdout
    return stdout, level


@pytest.mark.integration
def test_uplink_noise_only(tmp_path: Path) -> None:
    """Noise plus echo, nobody speaks: every frame counts toward the false-trigger rate."""
    _, level = _run_uplink(
        tmp_path, "--duration", "2", "--interrupt-fraction", "0", "--uplink-echo-db", "-10"
    )
    assert level["vad_injected"] == 0 and level["vad_barge_in_ms"]["count"] == 0
    assert level["uplink_noise_min"] > 0


@pytest.mark.integration
def test_uplink_echo_through_a_room(tmp_path: Path) -> None:
    """`--uplink-echo-room`: the echo comes back through a reverberant room of bench/rooms.py
    (its own level: `echo_db` 0 on top of it), recorded in the run's metadata."""
    stdout, level = _run_uplink(
        tmp_path, "--duration", "2", "--interrupt-fraction", "0", "--uplink-echo-room", "rt60-300"
    )
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["uplink"]["echo_room"] == "rt60-300" and doc["uplink"]["echo_db"] == 0.0
    assert "room rt60-300" in stdout
    assert level["vad_injected"] == 0 and level["uplink_noise_min"] > 0
    server = level["uplink_server"]  # (the daemon's STATS, summed over the sessions)
    assert server["echo_windows"] > 0
    for key in (
        "echo_mic_windows",
        "echo_coherent_windows",
        "echo_quiet_windows",
        "echo_leak_windows",
    ):
        assert 0 <= server[key] <= server["echo_windows"], (key, server)


@pytest.mark.integration
def test_uplink_over_opus_both_ways(tmp_path: Path) -> None:
    """`--codec opus` with the uplink: both directions are Opus (the bench refuses to go on
    if the daemon grants less), and the report says so."""
    stdout, doc = _tone_bench(
        tmp_path,
        *("--sessions", "1", "--duration", "2", "--interrupt-fraction", "0"),
        *("--uplink-echo-room", "rt60-300", "--codec", "opus"),
    )
    assert doc["codec"] == "opus" and "Codec: opus both ways" in stdout
    level = doc["levels"][0]
    assert 0 < level["bytes_per_frame"] < 200  # (Opus: PCM at 16 kHz is 656 bytes a frame)
    assert level["uplink_server"]["uplink_frames"] >= 0.8 * doc["duration_s"] / 0.02


@pytest.mark.integration
def test_uplink_over_a_jittery_network_from_a_drifting_clock(tmp_path: Path) -> None:
    """`--uplink-jitter-ms`, `--uplink-drift-ppm`: recorded in the run's metadata and said in
    its report; they imply --uplink; a bad value is one line and exit 2."""
    stdout, doc = _tone_bench(
        tmp_path,
        *("--sessions", "2", "--duration", "2", "--interrupt-fraction", "0"),
        *("--uplink-echo-room", "rt60-300", "--uplink-jitter-ms", "30", "--uplink-drift-ppm=-300"),
    )
    up = doc["uplink"]
    assert (up["jitter_ms"], up["drift_ppm"], up["echo_room"]) == (30.0, -300.0, "rt60-300")
    assert "30 ms later on average" in stdout and "-300 ppm off" in stdout
    level = doc["levels"][0]
    assert level["uplink_frames"] >= 0.8 * 2 * doc["duration_s"] / 0.02, level["uplink_frames"]
    for bad in (("--uplink-jitter-ms", "-1"), ("--uplink-drift-ppm", "20000")):
        proc = subprocess.run(
            [sys.executable, "-m", "bench", "--engine", "tone", *bad],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "--uplink-jitter-ms takes 0 or more" in proc.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_uplink_voice_barge_in(tmp_path: Path) -> None:
    """Both sessions barge in by voice (the VITS clip, synthesized once for the run)."""
    _, level = _run_uplink(tmp_path, "--duration", "6", "--interrupt-fraction", "1")
    decided = level["vad_barge_in_ms"]["count"] + level["vad_missed"] + level["vad_no_target"]
    assert decided <= level["vad_injected"]
    if level["vad_barge_in_ms"]["count"]:
        assert -20 < level["vad_barge_in_ms"]["p50"] < 2000


@pytest.mark.integration
def test_uplink_cpu_scenarios() -> None:
    """`python -m bench.uplink_cpu`'s replay, on real speech: the echo canceller takes much out
    when the agent's voice comes back and next to nothing when it does not (headphones), and
    does not run without the agent (room); the work costs something measurable. With Opus both
    ways the echo of what a client decoded is taken out as well."""
    import numpy as np
    import soxr

    from bench.speech import clip
    from bench.uplink_cpu import scenario

    agent16 = np.concatenate([clip("Sure, I can help you with that."), clip("Let me check.")])
    agent48 = np.asarray(soxr.resample(agent16, 16_000, 48_000), dtype=np.float32)
    user = clip("Wait, stop.", other_speaker=True)
    rows = {
        name: scenario(name, agent48, user, 4.0)
        for name in ("agent, headphones", "agent, echo -10 dB", "room")
    }
    assert rows["agent, echo -10 dB"]["echo_found"] is True
    assert rows["agent, echo -10 dB"]["echo_removed_db"] >= 10.0
    assert rows["agent, headphones"]["echo_found"] is False
    assert rows["agent, headphones"]["echo_removed_db"] < 3.0
    assert rows["room"]["echo_found"] is None and rows["room"]["echo_removed_db"] == 0.0
    for row in rows.values():
        assert row["audio_s"] == 4.0 and 0.0 < row["core_percent"] < 100.0
    # (`--codec opus`: the uplink decodes the microphone's packets and its own, the reference)
    opus = scenario("agent, echo -10 dB", agent48, user, 4.0, codec="opus")
    assert opus["codec"] == "opus" and opus["echo_found"] is True
    assert opus["echo_removed_db"] >= 10.0


@pytest.mark.integration
@pytest.mark.parametrize("delay_ms", [0, 20, 45])
def test_an_echo_soon_after_sending_is_cancelled_at_48_khz(delay_ms: int) -> None:
    """A 48 kHz session's echo (the default rate) back 0-45 ms after it was sent: its
    reference is there in time (the downlink decimated to 16 kHz as it comes; soxr's stream
    held it 6-37 ms back, and the echo met zeros: 4-12 dB taken out at 03e79b0, 20 now)."""
    import numpy as np
    import soxr

    from bench.speech import clip
    from bench.uplink_cpu import scenario

    agent16 = np.concatenate([clip("Sure, I can help you with that."), clip("Let me check.")])
    agent48 = np.asarray(soxr.resample(agent16, 16_000, 48_000), dtype=np.float32)
    user = clip("Wait, stop.", other_speaker=True)
    row = scenario("agent, echo -10 dB", agent48, user, 4.0, echo_delay_ms=delay_ms)
    assert row["echo_found"] is True
    assert row["echo_removed_db"] >= 17.0


ATTACK_RUN_KEYS = {"killed", "lost", "jitter_ms", "server_jitter_ms", "underruns", "healthz_ms"}


@pytest.mark.integration
@pytest.mark.slow
def test_tiny_attack_bench(tmp_path: Path) -> None:
    """`python -m bench --attack`: 2 good sessions for 3 s, alone and then with one attacker of
    every kind at low intensity; the report has both runs, the goals and every attack."""
    from bench.hostile import ATTACKS

    out = tmp_path / "attack.json"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "--attack", "--sessions", "2", "--duration", "3"),
            *("--attackers", "1", "--rate", "2", "--connections", "3", "--answer-timeout", "5"),
            *("--warmup", "1", "--json", str(out), "--no-progress"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| client jitter p95 (ms) | <= 2 |" in proc.stdout
    assert "| good sessions killed | <= 0 |" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["bench"] == "attack" and doc["sessions"] == 2 and doc["duration_s"] == 3.0
    assert doc["attack"]["attacks"] == list(ATTACKS)
    assert [g["metric"] for g in doc["goals"]] == [
        "server pacing error p95 (ms)",
        "client jitter p95 (ms)",
        "good sessions killed",
    ]
    for goal in doc["goals"]:
        verdicts = {goal["without"]["verdict"], goal["with"]["verdict"]}
        assert verdicts <= {"PASS", "MISS", "NO DATA", "MISS (no audio)"}
    quiet, attacked = doc["runs"]["without"], doc["runs"]["with"]
    for run in (quiet, attacked):
        assert set(run) >= ATTACK_RUN_KEYS, ATTACK_RUN_KEYS - set(run)
        assert run["daemon"]["rss_peak_mb"] > 0 and run["daemon"]["exit_code"] is None
        assert run["healthz_ms"]["count"] > 0
    assert quiet["attackers"] == {} and quiet["frames"] > 0
    assert quiet["killed"] == 0 and quiet["lost"] == 0, quiet["errors"]
    assert quiet["healthz_ms"]["failed"] == 0
    assert set(attacked["attackers"]) == set(ATTACKS)
    for name, a in attacked["attackers"].items():
        assert a["attackers"] == 1 and not a["fatal"], (name, a["fatal"])
        assert a["sent"] >= a["answered"] >= 0 and isinstance(a["answers"], dict)
        assert set(a["answer_ms"]) >= {"p50", "p95", "max"}
        assert a["cpu_percent"] >= 0
        assert f"| `{name}` |" in proc.stdout
    assert sum(a["sent"] for a in attacked["attackers"].values()) > 0
    assert attacked["attackers_cpu_percent"] > 0


@pytest.mark.unit
def test_the_echoing_player_plays_each_utterance_where_its_turn_is() -> None:
    """The bench's loudspeaker (bench.uplink.Speaker, 48 kHz frames in, 16 kHz out): two
    utterances with a pause, every frame starting with a click; each click is heard exactly
    where its frame's turn is: the first `playout` after the utterance's first frame came,
    the next ones 20 ms apart, also after a frame that came one tick late (the buffer took
    it), whatever a resampler would hold back."""
    import numpy as np

    from bench.uplink import Speaker

    spk = Speaker(0.0, 48_000, 0.040)
    heard = np.zeros(3 * 16_000, dtype=np.float32)
    read = 0

    def listen(until: int) -> None:
        nonlocal read
        while read + 320 <= until:  # the microphone keeps time
            heard[read : read + 320] = spk.read(read, 320)
            read += 320

    starts = (0.1011, 1.0057)
    for start in starts:
        for k in range(10):
            x = np.zeros(960, dtype=np.int16)
            x[0] = 20_000  # the click
            late = 0.020 if start == starts[1] and k >= 5 else 0.0
            spk.play(x.tobytes(), start + k * 0.020 + late)
            listen(round((start + k * 0.020 + late) * 16_000))
    listen(len(heard))
    for start in starts:
        for k in range(10):
            at = round(start * 16_000) + 640 + 320 * k  # the 40 ms playout, then back to back
            assert int(np.argmax(np.abs(heard[at - 100 : at + 100]))) == 100


@pytest.mark.parametrize("flushed", [True, False])
def test_the_speakers_next_run_starts_clean_after_a_run_cut_loud(flushed: bool) -> None:
    """A run cut in a loud syllable (an interruption's flush, or a gap with nothing sent),
    then a silent run: what the decimator still held of the first plays at its end or, flushed,
    never; the next run starts as silent as it is. (Carried over, it played as a click of
    -26 dBFS just before the next utterance, which the server's reference has at the run's
    end: a false barge-in, live.)"""
    import numpy as np

    from bench.uplink import Speaker

    spk = Speaker(0.0, 48_000, 0.040)
    loud = (0.5 * np.sin(np.arange(960) * 2 * np.pi * 440 / 48_000) * 32767).astype(np.int16)
    for k in range(5):  # played from 0.14 s to 0.24 s
        spk.play(loud.tobytes(), 0.1 + k * 0.020, (1, k))
    if flushed:
        spk.flush(0.2)  # (the last two frames never play)
    for k in range(5):  # the next utterance, silent, played from 0.54 s
        spk.play(np.zeros(960, dtype=np.int16).tobytes(), 0.5 + k * 0.020, (2, k))
    heard = spk.read(0, 16_000)
    end = round((0.2 if flushed else 0.24) * 16_000)
    assert np.max(np.abs(heard[end + 40 :])) == 0.0  # (the next run: not a click)
    assert np.max(np.abs(heard[end - 320 : end - 20])) > 0.3  # (the loud run: played)
    assert np.max(np.abs(heard[end - 10 : end])) > 0.05  # (its last samples: at its end)
    assert np.max(np.abs(heard[end:])) == 0.0 or not flushed  # (flushed: nothing after)


def test_the_speaker_reports_played_as_the_browser_client_does() -> None:
    """`--uplink-echo-played`: the first sample of each run the player starts (after its queue
    ran dry, or a flush) and of a frame every 200 ms within a run, once it has played: the
    utterance's samples through it, and the client's clock (µs) when it played; what a flush
    drops is not reported."""
    import numpy as np

    from bench.uplink import Speaker

    spk = Speaker(0.0, 48_000, 0.040, reports=True)
    frame = np.zeros(960, dtype=np.int16).tobytes()
    for k in range(15):  # utterance 1: 300 ms from 0.1 s, played from 0.14 s
        spk.play(frame, 0.1 + k * 0.020, (1, k))
    for k in range(3):  # utterance 2 after a gap, flushed at 1.03 s before it played
        spk.play(frame, 1.0 + k * 0.010, (2, k))
    assert spk.due(round(0.14 * 16_000)) == []  # (nothing has played yet)
    spk.flush(1.03)
    spk.play(frame, 1.2, (3, 0))
    assert spk.due(3 * 16_000) == [
        (1, 1, 140_000),
        (1, 10 * 960 + 1, 340_000),
        (3, 1, 1_240_000),
    ]


def mic_config(**changes: Any) -> Any:
    """The bench's LoadConfig for an uplink with an echo -10 dB after 50 ms, changed so."""
    import dataclasses

    from bench.load import LoadConfig

    return dataclasses.replace(LoadConfig(uplink=True, uplink_echo_db=-10.0), **changes)


def _mic(**changes: Any) -> Any:
    """A session's bench microphone (bench.uplink.Mic) with `mic_config(**changes)`."""
    from bench.uplink import Mic

    return Mic(mic_config(**changes), 0, collections.defaultdict(float))


@pytest.mark.unit
def test_a_drifting_microphone_hears_the_echo_on_its_own_clock() -> None:
    """`--uplink-drift-ppm`: the client's 16 kHz is the server's times (1 + ppm / 10^6), so a
    click played every 100 ms (server clock) is heard every 100 ms x that many client samples,
    sliding against the frames; without drift it is where it was before."""
    import numpy as np

    from bench.uplink import FRAME, Speaker

    for ppm in (0.0, 2000.0, -2000.0):  # 0.2 %: 32 samples a second, easy to see
        mic = _mic(uplink_drift_ppm=ppm)
        mic.speaker = Speaker(0.0, 16_000, 0.0)
        heard_frames = []
        for k in range(4 * 16_000 // 320):
            x = np.zeros(320, dtype=np.int16)
            if k % 5 == 0:
                x[7] = 20_000  # a click every 100 ms, 7 samples into its frame
            mic.speaker.play(x.tobytes(), k * 0.020)
            if k >= 10:  # the microphone 200 ms behind the speaker
                heard_frames.append(mic.echo_at((k - 10) * FRAME))
        heard = np.concatenate(heard_frames)
        scale = 1 + ppm * 1e-6
        for click in range(1, 30):
            server = click * 1600 + 7 + 800  # played there, heard 50 ms later
            at = server * scale  # ... on the client's clock
            near = heard[int(at) - 40 : int(at) + 40]
            assert abs(int(np.argmax(near)) - 40 - (at - int(at))) <= 1, (ppm, click)


@pytest.mark.unit
async def test_a_jittery_uplink_sends_every_frame_in_order_once_captured(
    autojump_clock: Any,
) -> None:
    """`--uplink-jitter-ms`: each frame leaves later by the network's delay (30 ms on average
    here), never before it was captured, in order; `--uplink-drift-ppm` moves the captures."""
    import trio

    sent: list[float] = []

    class Session:
        sample_rate_hz = 48_000

        async def send_audio(self, pcm: bytes) -> None:
            sent.append(trio.current_time())

    for jitter_ms, ppm in ((30.0, 0.0), (0.0, 1000.0)):
        sent.clear()
        mic = _mic(uplink_echo_db=None, uplink_jitter_ms=jitter_ms, uplink_drift_ppm=ppm)
        t0 = trio.current_time()
        with trio.move_on_after(40.0):
            await mic.run(Session(), t0)
        captured = [t0 + (k + 1) * 0.020 / (1 + ppm * 1e-6) for k in range(len(sent))]
        late = [t - c for t, c in zip(sent, captured, strict=True)]
        assert sent == sorted(sent) and min(late) >= 0, late[:10]
        mean_ms = 1000 * sum(late) / len(late)
        if jitter_ms:
            assert 25 < mean_ms < 45, mean_ms  # (in order: a frame waits for the one before)
        else:
            assert max(late) == 0 and len(sent) == 2_001  # 40 s at +1000 ppm: 2 more than 1,999


@pytest.mark.unit
async def test_the_microphone_sends_the_speakers_played_reports_once_played(
    autojump_clock: Any,
) -> None:
    """`--uplink-echo-played`: a report goes out right after the microphone frame during which
    its sample played (its clock: the speaker's, µs from the start), through the session as
    the bench's target wraps it."""
    import numpy as np
    import trio

    from bench.load import _DuplexdTarget

    sent: list[tuple[Any, ...]] = []

    class Session:
        sample_rate_hz = 16_000
        info: dict[str, Any] = {}
        welcome = type("Welcome", (), {"engine": "tone"})()
        new_utterance_id = send_text = interrupt = stats = None

        async def send_audio(self, pcm: bytes) -> None:
            sent.append(("audio", round(trio.current_time(), 3)))

        async def send_played(self, uid: int, samples: int, *, clock_us: int = 0) -> None:
            sent.append(("played", round(trio.current_time(), 3), uid, samples, clock_us))

    mic = _mic(uplink_echo_played=True)
    frame = np.zeros(320, dtype=np.int16).tobytes()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mic.run, _DuplexdTarget(Session()), 0.0)
        await trio.sleep_until(0.1)
        for k in range(3):  # a run from 0.1 s, played from 0.14 s (the 40 ms playout)
            mic.speaker.play(frame, 0.1 + k * 0.020, (7, k))
        await trio.sleep_until(0.5)
        nursery.cancel_scope.cancel()
    # frame 7 ([0.14, 0.16) s) is where it played: its report follows it, at 0.16 s
    assert [x for x in sent if x[0] == "played"] == [("played", 0.16, 7, 1, 140_000)]
    assert sent.index(("played", 0.16, 7, 1, 140_000)) == sent.index(("audio", 0.16)) + 1


def test_a_bad_worker_count_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.__main__ import main

    for argv in (["--daemon-workers", "0"], ["--daemon-workers", "2", "--url", "ws://x/v1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == "bench: --daemon-workers needs 1 or more, and no --url\n"


@pytest.mark.unit
def test_frames_sent_off_their_deadlines_are_counted_by_the_daemon_and_summed() -> None:
    from bench.metrics import merge_server
    from duplexd._ops.metrics import over_ms, pacing_histogram

    sessions = []
    for errors_s in ((0.0001, 0.0049, 0.0051, 0.021), (0.006, 0.0002)):
        h = pacing_histogram()
        for e in errors_s:
            h.record(e)
        sessions.append(
            {"pacing_error_ms": h.summary_ms(), "pacing_error_over_ms": over_ms(h, (5, 20))}
        )
    assert sessions[0]["pacing_error_over_ms"] == {"5": 2, "20": 1}
    pacing = merge_server(sessions)["pacing"]
    assert (pacing["over_5ms"], pacing["over_20ms"], pacing["count"]) == (3, 1, 6)
    del sessions[1]["pacing_error_over_ms"]  # (an older daemon's stats): not guessed
    assert "over_5ms" not in merge_server(sessions)["pacing"]


def _small_bench(module: str, good: list[str], bad: list[str], tmp_path: Path) -> tuple[dict, str]:
    """`python -m bench.<module>` run with `good` arguments (its --json document) and with
    `bad` ones (which must exit 2: its one line on stderr)."""
    out = tmp_path / f"{module}.json"
    run = [sys.executable, "-m", f"bench.{module}"]
    proc = subprocess.run(
        [*run, *good, "--json", str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    refused = subprocess.run([*run, *bad], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr
    return json.loads(out.read_text()), refused.stderr.strip()


@pytest.mark.integration
def test_the_wakeup_bench_measures_both_ways_and_refuses_a_bad_period(tmp_path: Path) -> None:
    doc, refused = _small_bench(
        "wakeups", ["--n", "20", "--periods-ms", "1"], ["--periods-ms", "x"], tmp_path
    )
    (row,) = doc["rows"]
    assert row["period_ms"] == 1 and row["bare_us"] > 0 and row["trio_us"] > 0
    assert refused == "bench: --periods-ms takes numbers, e.g. 0.5,2; got 'x'"


@pytest.mark.integration
def test_the_asr_batch_bench_decodes_together_what_it_decodes_alone(tmp_path: Path) -> None:
    doc, refused = _small_bench(
        "asr_batch", ["--batches", "1,2", "--clips", "2", "--repeats", "1"], ["--batches", "0"],
        tmp_path,
    )  # fmt: skip
    one, two = doc["rows"]
    assert (doc["clips"], one["batch"], two["batch"]) == (2, 1, 2)
    assert one["same_text_as_alone"] == two["same_text_as_alone"] == 2
    assert one["ms_per_clip"] > 0 and two["ms_per_call"] > 0
    assert refused.startswith("bench.asr_batch: --batches takes positive whole numbers")


@pytest.mark.integration
def test_the_tick_cost_bench_measures_a_frame_and_refuses_a_bad_count(tmp_path: Path) -> None:
    doc, refused = _small_bench("tick_cost", ["--n", "50"], ["--n", "0"], tmp_path)
    assert doc["n"] == 50 and 0 < doc["tick_us"] < 1000 and 0 < doc["writev_us"] < 10_000
    assert refused == "bench: --n must be >= 1, got 0"


@pytest.mark.integration
def test_the_handoff_bench_measures_both_ways_and_refuses_a_bad_count(tmp_path: Path) -> None:
    doc, refused = _small_bench(
        "handoff", ["--chunks", "4", "--rounds", "5"], ["--chunks", "0"], tmp_path
    )
    assert (doc["chunks"], doc["rounds"]) == (4, 5)
    for way in ("one_call_each", "batched"):
        assert doc[way]["cpu_us_per_chunk"] > 0 and doc[way]["round_us"] > 0
    assert refused == "bench: --chunks and --rounds must be >= 1, got 0 and 200"


@pytest.mark.integration
def test_a_bench_through_a_model_process_counts_it_in(tmp_path: Path) -> None:
    _, doc = _tone_bench(
        tmp_path,
        *("--sessions", "2", "--duration", "2", "--model-process"),
        *("--daemon-cpus", str(DAEMON_CPU), "--client-cpus", str(CLIENT_CPU)),
        timeout_s=90,
    )
    assert doc["model_process"] == {"cpus": [DAEMON_CPU]}
    level = doc["levels"][0]
    _check_level(level)
    assert level["frames"] > 0 and level["session_errors"] == 0
    # the daemon's and the model process's memory together: two Python processes
    assert level["rss_mb"] > 2 * 30


def test_a_model_process_with_a_url_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.__main__ import main

    assert main(["--model-process", "--url", "ws://x/v1"]) == 2
    assert capsys.readouterr().err == "bench: --model-process starts the daemon: leave out --url\n"


@pytest.mark.integration
def test_the_model_wire_bench_measures_the_wire_and_refuses_a_bad_count(tmp_path: Path) -> None:
    doc, refused = _small_bench(
        "model_wire", ["--threads", "2", "--duration", "1", "--chars", "40"], ["--threads", "0"],
        tmp_path,
    )  # fmt: skip
    assert doc["threads"] == 2 and doc["audio_s"] > 0 and doc["chunks"] > 0
    assert doc["daemon_cpu_us_per_audio_s"] > 0 and doc["chunk_round_trip_ms"]["p50"] > 0
    assert refused == "bench.model_wire: --threads, --duration and --chars must be positive"


@pytest.mark.integration
def test_the_model_restart_bench_finds_every_reply_whole(tmp_path: Path) -> None:
    doc, refused = _small_bench(
        "model_restart", ["--sessions", "2", "--repeat", "1", "--after", "0.5"], ["--repeat", "0"],
        tmp_path,
    )  # fmt: skip
    assert doc["replies"] == {"whole": 2} and doc["old_exit_code"] == 0 and not doc["asked_error"]
    assert doc["asked_first_audio_after_signal_s"] >= doc["old_exit_after_signal_s"] > 0
    assert refused == (
        "bench.model_restart: --sessions and --repeat must be positive, --after not negative"
    )


@pytest.mark.unit
def test_the_turn_bench_counts_the_words_its_transcripts_lost() -> None:
    from bench.turns import missed_words

    assert missed_words("I'd like a table for four.", ["I'd like a table for 4."]) == 0
    # a continuation whose start was cut off, and one never transcribed
    meeting = "The meeting is on Tuesday afternoon."
    assert missed_words(meeting, ["the meeting is on.", "noon."]) == 2
    assert missed_words("Can you remind me to call my mother?", ["You remind me to call."]) == 3
    think = "Let me think, maybe the blue one."
    assert missed_words(think, ["Let me think.", "", "The blue one."]) == 1


@pytest.mark.unit
def test_the_turn_bench_sums_its_sessions_asr_counters() -> None:
    from bench.turns import ASR_STATS, Record, _asr_line, measure

    one = {k: 1 for k in ASR_STATS} | {"asr_s": 0.25, "asr_audio_s": 2.5, "asr_passes": 3}
    two = {k: 2 for k in ASR_STATS} | {"asr_s": 0.5, "asr_audio_s": 5.0, "vad_barge_ins": 9}
    result = measure([Record(stats=one), Record(stats=two), Record()], [])
    assert result["asr"] == {k: 3 for k in ASR_STATS} | {
        "asr_s": 0.75, "asr_audio_s": 7.5, "asr_passes": 5
    }  # fmt: skip
    assert _asr_line(result["asr"]) == (
        "ASR (all sessions, STATS): 0.75 s of decodes (wall) for 7.5 s of audio; 3 finals, "
        "3 speculative transcripts (3 used, 3 empty: decoded again; 3 more made moot by a "
        "later silence, no decoder run), 5 streaming passes (3 "
        "skipped, 3 partials), 3 finals decoded as a tail alone. End of turn: 3 turn-model "
        "runs (3 answered ahead), 3 questions answered by the transcript alone."
    )


@pytest.mark.integration
def test_the_noise_bench_measures_the_suppressor_against_none(tmp_path: Path) -> None:
    from bench.noise import NOISES, main, make_noise

    out = tmp_path / "noise.json"
    md = tmp_path / "noise.md"
    main(["--noises", "pink", "--snrs", "10", "--levels", "off,moderate", "--seeds", "1",
          "--cache", str(tmp_path), "--json", str(out), "--md", str(md)])  # fmt: skip
    doc = json.loads(out.read_text())
    off, on = doc["rows"]
    assert (off["level"], on["level"], doc["seeds"], doc["words"]) == ("off", "moderate", 1, 56)
    assert abs(off["noise_out_db"]) < 0.5 and on["noise_out_db"] > 9.0
    for row in (off, on):  # the voice is heard and its words kept (measured: 1.8 % both)
        assert row["missed"] == row["false_starts"] == 0 and row["wer"] < 15.0
        assert len(row["heard"]) == 6 and row["cpu_percent"] > 0 and row["mix_gain_db"] == 0
    assert md.read_text().count("| pink | 10 |") == 2
    for kind in NOISES:  # every noise comes at unit level
        assert abs(float(np.sqrt(np.mean(make_noise(kind, 16_000, tmp_path) ** 2))) - 1) < 1e-3
    with pytest.raises(ValueError, match="unknown noise 'rain'"):
        make_noise("rain", 16_000, tmp_path)


@pytest.mark.unit
def test_the_hold_words_bench_cuts_45_clips_and_decides_as_the_daemon() -> None:
    from bench.hold_words import ENDS_MS, STARTS_MS, clips, goes_on

    audio = np.zeros(16_000, dtype=np.float32)
    audio[4000:12000] = 0.3 * np.sin(np.arange(8000) / 5.0)
    cut = clips(audio)
    assert len(cut) == len(STARTS_MS) * len(ENDS_MS) == 45
    # the first: from 64 ms before the onset to 96 ms before the end (both found by level)
    assert abs(len(cut[0]) - (8000 + 64 * 16 - 96 * 16)) < 100
    assert np.max(np.abs(cut[0][: 60 * 16])) < 0.05 < np.max(np.abs(cut[0][70 * 16 :]))
    for text, hums, listed in (("", True, True), ("Mm-hmm.", True, True),
                               ("MmMmM.", True, False), ("Wait, stop.", False, False)):  # fmt: skip
        assert (goes_on(text, "hums"), goes_on(text, "list")) == (hums, listed), text


@pytest.mark.unit
def test_a_speaker_on_the_drifting_clock_plays_a_run_back_to_back_on_it() -> None:
    """`--uplink-drift-speaker client`: one sound card. The player takes each frame when it
    comes, on its own clock, and plays a run back to back on it, so the clicks of one run are
    heard exactly 100 ms of the client's clock apart (its queue grows or shrinks meanwhile,
    200 ms of playout buffer here); and the run starts where the first frame came, on that
    clock: 200 ms after the first click's arrival (and the echo 50 ms after that)."""
    import numpy as np

    from bench.uplink import FRAME, Speaker

    for ppm in (2000.0, -2000.0):
        mic = _mic(uplink_drift_ppm=ppm, uplink_drift_speaker="client")
        scale = 1 + ppm * 1e-6
        assert mic.speaker_scale == scale
        mic.speaker = Speaker(1.0, 16_000, 0.2, mic.speaker_scale)
        heard_frames = []
        for k in range(4 * 16_000 // 320):
            x = np.zeros(320, dtype=np.int16)
            if k % 5 == 0:
                x[7] = 20_000  # a click every 100 ms, 7 samples into its frame
            mic.speaker.play(x.tobytes(), 1.0 + (k + 1) * 0.020 / 1.0)  # (server clock)
            if k >= 20:
                heard_frames.append(mic.echo_at((k - 20) * FRAME))
        heard = np.concatenate(heard_frames)
        # came at 20 ms, played 200 ms on, heard 50 ms later (the default echo path)
        first = round(0.020 * 16_000 * scale) + 3_200 + 7 + 800
        clicks = [first + c * 1_600 for c in range(25)]
        for at in clicks:
            assert int(np.argmax(heard[at - 40 : at + 40])) == 40, (ppm, at)


@pytest.mark.unit
def test_the_end_mark_bench_judges_as_the_daemon_and_counts_each_kind() -> None:
    from bench.end_marks import DEFAULTS, Judged, markdown, table

    def clip(kind: str, text: str, mark: float | None, smart: float) -> Judged:
        return Judged(kind, 0, "s", 2, text, mark, smart, unfinished=False)

    judged = [
        clip("head", "Can you play?", 0.45, 0.9),  # held by the end mark (0.7)
        clip("head", "I'd like a table for", 0.01, 0.9),  # held by the words
        clip("head", "What time does the train leave?", 0.93, 0.2),  # ended: Whisper is sure
        clip("whole", "What time is it?", 0.97, 0.2),  # ended: sure, whatever the model says
        clip("whole", "The meeting is on Tuesday.", 0.5, 0.9),  # held: unsure
        clip("paused", "Yes.", None, 0.9),  # no mark known: the model alone
    ]
    assert [j.ends(*DEFAULTS) for j in judged] == [False, False, True, True, False, True]
    assert [j.ends(0.0, 1.0) for j in judged] == [True, False, False, False, True, True]
    # a threshold over `sure`: a mark between them ends the turn, whatever the model says
    between = [clip("whole", "Is it late?", 0.92, s) for s in (0.9, 0.2)]
    assert [j.ends(0.95, 0.9) for j in between] == [True, True]
    assert [j.ends(0.95, 1.0) for j in between] == [False, False]
    rows = {(r["end_mark_threshold"], r["end_mark_sure"]): r for r in table(judged)}
    assert rows[DEFAULTS]["head"] == {"ended": 1, "of": 3, "share": 0.333}
    assert rows[(0.0, 1.0)]["whole"] == {"ended": 1, "of": 2, "share": 0.5}
    text = markdown(judged, table(judged), {"git_rev": "r", "command": "c"})
    assert "| **0.7** | **0.9** | 1 of 3 (33.3 %) | 1 of 2 (50.0 %) | 1 of 1 (100.0 %) |" in text


@pytest.mark.unit
def test_a_soft_barge_ins_hold_is_its_latency_and_its_commit_no_false_one() -> None:
    """`--uplink-barge-in-mode soft`: the HELLO asks for it; a HELD over the user's clip is
    the barge-in (onset -> HELD: the audio paused), the INTERRUPTED that commits it later is
    not counted again nor as false; a HELD with nobody talking is a false barge-in; a hold
    over the clip that RESUMED is counted apart (the bench's clips are true barge-ins), with
    why (its reason and text)."""
    from bench.uplink import Injection, hello_options
    from duplexd.protocol import frames as fr

    mic = _mic(uplink_barge_in_mode="soft")
    mic.out["vad_false_at"], mic.out["vad_soft_resumed_why"] = [], []
    assert hello_options(mic_config(uplink_barge_in_mode="soft"))["vad"]["barge_in_mode"] == "soft"
    assert hello_options(mic_config())["vad"]["barge_in_mode"] == "immediate"
    held = fr.BargeIn(fr.BargeInOutcome.HELD, fr.BargeInReason.ONSET, 0, 1, 960, 1000)
    commit = fr.Interrupted(1, 1, 960, 3, 1, vad=True)
    mic.inj = Injection(1, 0, 0, 5, 80, t_onset_planned=1.0, t_onset=1.0)
    mic.on_frame(held, 1.05, 0)
    mic.on_frame(commit, 1.9, 0)
    assert mic.inj.latency == pytest.approx(0.05)
    assert mic.out["vad_false_barge_ins"] == 0
    mic.inj.t_end = 2.0
    mic.on_frame(held, 2.0 + 1.6, 1)  # (past the clip and its tail: nobody talks)
    assert mic.out["vad_false_barge_ins"] == 1 and mic.out["vad_false_at"] == [pytest.approx(3.6)]
    resumed = fr.BargeIn(
        fr.BargeInOutcome.RESUMED, fr.BargeInReason.BACKCHANNEL, 1, 2, 0, 10, "Okay."
    )
    mic.inj = Injection(2, 0, 0, 5, 80, t_onset_planned=5.0, t_onset=5.0)
    mic.on_frame(held, 5.06, 1)
    mic.on_frame(resumed, 5.9, 1)  # (the user's clip forgiven as a backchannel: counted)
    assert mic.out["vad_soft_resumed"] == 1 and mic.inj.latency == pytest.approx(0.06)
    assert mic.out["vad_soft_resumed_why"] == ["BACKCHANNEL: 'Okay.'"]


@pytest.mark.integration
def test_the_aec_words_bench_transcribes_both_ways_and_refuses_an_unknown_room(
    tmp_path: Path,
) -> None:
    """`python -m bench.aec_words`: Whisper's WER on the user over the echo, AEC3 alone and
    with the late echo suppressed, one row per room and level; a room it does not know, or a
    level that is not a number, is one line and exit 2."""
    good = ["--rooms", "rt60-600", "--user-db", "10", "--trials", "2", "--cache", str(tmp_path)]
    doc, refused = _small_bench("aec_words", good, ["--rooms", "attic"], tmp_path)
    (row,) = doc["rows"]
    assert (row["room"], row["user_db"], row["trials"]) == ("rt60-600", 10.0, 2)
    assert 0 <= row["wer_aec3"] <= 0.5 and 0 <= row["wer_late"] <= 0.5, row
    assert [t["said"] for t in row["texts"]] == list(aec_words_texts()[:2])
    assert all(t["aec3"] and t["late"] for t in row["texts"])  # (words heard, both ways)
    assert (
        refused.startswith("bench: --rooms takes rooms of delay, rt60-100") and "'attic'" in refused
    )
    level = subprocess.run(
        [sys.executable, "-m", "bench.aec_words", "--user-db", "loud"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert level.returncode == 2 and level.stderr.startswith("bench: --user-db takes numbers")


def aec_words_texts() -> tuple[str, ...]:
    from bench.aec_words import USER_TEXTS

    return USER_TEXTS
