"""The uplink's echo canceller in the generated rooms: `python -m bench.aec_rooms`.

One session's uplink (`duplexd._uplink.uplink.Uplink`, the daemon's own processing, batch by
batch as its worker gets them, in this thread) hears the agent's voice (VITS, sent as 16 kHz
AUDIO frames every 20 ms) come back through each room of `bench/rooms.py` (plus `headphones`:
nothing comes back) over room noise, with and without the user talking over it:

- ERLE: how much quieter the echo leaves the canceller than it came (dB), from the first
  second of the agent's voice on, with nobody else talking; the room noise is at -70 dBFS so
  it does not cap the figure (the echo is at about -35 dBFS);
- false barge-ins and false speech starts while only the echo is there (must be 0);
- barge-in latency: the user (the other VITS speaker, `--user-db` above the echo) starts
  talking at `--trials` moments over the agent's voice: arrival of the uplink frame holding
  the speech onset -> arrival of the frame whose window decided the barge-in (the daemon adds
  its thread handoff and the network); p50, p95 and misses (none within 2 s);
- the user's level change under double talk: what comes out of the canceller over the user's
  speech against the user's speech alone (dB; the echo left in counts too, upward);
- CPU: the uplink worker's thread time per second of audio (echo canceller + VAD; and with
  `echo_cancel` off, the VAD alone, for the canceller's share).

`--codec opus`: Opus both ways at 32 kbit/s, as a session that asks for it: the agent's AUDIO
frames are Opus packets (the uplink's reference decodes them, as the daemon's does), the room
echoes what a client decodes from them, and each microphone frame goes up as an Opus packet.

`--canceller livekit`: the same rooms with LiveKit's AudioProcessingModule in place of
`pywebrtc-audio`'s AEC3 (bench/livekit_aec.py; `pip install livekit` first).

Run it at another revision (`git archive` of it, this file and bench/rooms.py copied in) for a
side by side: the Uplink's constructor and batch format are the same since the NCC canceller.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import trio
import trio.testing

from bench.rooms import ROOMS, Room, db, noise
from duplexd._opus import OpusDecoder, OpusEncoder
from duplexd._uplink.uplink import _PLAYED, Uplink, UplinkServices
from duplexd._uplink.vad import BargeIn, SpeechStart, VadModel
from duplexd.protocol import frames as fr
from duplexd.protocol.codec import encode
from duplexd.protocol.options import NOISE_SUPPRESSION as NOISE_SUPPRESSION_LEVELS
from duplexd.protocol.options import (
    AsrOptions,
    CodecOptions,
    SessionOptions,
    VadOptions,
    option_range,
)

RATE = 16_000
FRAME = 320
FRAME_S = 0.020
UPLINK_LATENCY_S = 0.003
MISS_S = 2.0
SLOW_MS = 100.0  # a barge-in slower than this is listed with its onset (`barge_in_slow`)
F32 = npt.NDArray[np.float32]
AGENT_TEXT = [
    "Sure, I can help you with that. The weather today is sunny with a light breeze.",
    "Let me check the schedule for tomorrow; there are three meetings in the morning.",
]
USER_TEXT = "Wait, stop, I have a question."


async def _no_offload(fn: Any, *args: Any) -> Any:
    raise AssertionError("bench.aec_rooms runs the uplink's batches itself")


def voices(cache: Path) -> tuple[F32, F32]:
    """(agent, user) at 16 kHz, synthesized once and kept in `cache` (.npy)."""
    a, u = cache / "aec-agent.npy", cache / "aec-user.npy"
    if not (a.exists() and u.exists()):
        from .speech import clip  # the tests' voices: the VITS voice, and it slower, pitched up

        cache.mkdir(parents=True, exist_ok=True)
        np.save(a, np.concatenate([clip(t) for t in AGENT_TEXT]))
        np.save(u, clip(USER_TEXT, other_speaker=True))
    return np.load(a), np.load(u)


ECHO_THRESHOLD: float | None = None  # --echo-threshold: the session option, else its default
JITTER_MS = 0.0  # --jitter-ms: `replay`'s default
NOISE_SUPPRESSION = "off"  # --noise-suppression: `replay`'s default
CODEC = fr.CODEC_PCM  # --codec: both ways, for `make_uplink`, `replay` and `played`


def played(agent: F32) -> F32:
    """What a client plays of `agent` (16 kHz): itself, or with `CODEC` Opus what it decodes
    from the packets the daemon would send (later by the codec's delay), as the room echoes."""
    if CODEC != fr.CODEC_OPUS:
        return agent
    enc, dec = OpusEncoder(RATE), OpusDecoder(RATE)
    out = np.zeros(len(agent), dtype=np.float32)
    for k in range(len(agent) // FRAME):
        pcm = (np.clip(agent[k * FRAME : (k + 1) * FRAME], -1, 1) * 32767).astype("<i2")
        out[k * FRAME : (k + 1) * FRAME] = dec.decode(enc.encode(pcm)) / 32768.0
    return out


def echo_threshold(text: str) -> float:
    """`--echo-threshold`: a `vad.echo_threshold` in the range a session may ask for."""
    lo, hi = option_range("echo_threshold")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"{text!r}: a probability from {lo} to {hi}, e.g. 0.7")
    return value


def head_rev() -> str:
    """The revision measured: git's HEAD here, short ("" outside a checkout)."""
    git = ["git", "rev-parse", "--short", "HEAD"]
    return subprocess.run(git, capture_output=True, text=True, check=False).stdout.strip()


def save_rows(
    rows: list[dict[str, Any]],
    table: str | None,
    *,
    rev: str | None,
    json_path: str | None,
    md_path: str | None,
) -> None:
    """A sweep's rows as JSON and its Markdown table, each where asked, with the revision
    measured (`rev`, or git's HEAD here): `bench.aec_jitter`, `aec_drift`, `aec_onsets`."""
    rev = rev or head_rev()
    if json_path:
        Path(json_path).write_text(json.dumps({"rev": rev, "rows": rows}, indent=1) + "\n")
    if md_path and table is not None:
        Path(md_path).write_text(f"rev {rev}\n\n" + table)


def make_uplink(
    mic_rate_hz: int = RATE,
    *,
    echo_cancel: bool = True,
    noise_suppression: str | None = None,
    recording: str = "",
) -> Uplink:
    """One session's uplink as the daemon makes it (barge-in on, no transcripts), its batches
    to be run by the caller (`Uplink._process_batch`) in a trio run (`recording`: a file its
    inputs are recorded in, as `[trace] uplink_dir` does)."""
    ns = NOISE_SUPPRESSION if noise_suppression is None else noise_suppression
    vad = VadOptions(barge_in=True, echo_cancel=echo_cancel, noise_suppression=ns)
    if ECHO_THRESHOLD is not None:
        vad = dataclasses.replace(vad, echo_threshold=ECHO_THRESHOLD)
    codec = CodecOptions(downlink=CODEC, uplink=CODEC)
    return Uplink(
        rate_hz=mic_rate_hz,
        downlink_rate_hz=RATE,
        options=SessionOptions(vad, AsrOptions(transcripts=False), codec=codec),
        services=UplinkServices(vad_model=VadModel(), offload=_no_offload, recording=recording),
        send=lambda _frame: None,
        barge_in=lambda _delay_s: None,
        downlink_opus=CODEC == fr.CODEC_OPUS,
    )


def replay(
    agent: F32,
    mic: F32,
    *,
    echo_cancel: bool = True,
    jitter_ms: float | None = None,
    seed: int = 0,
    mic_rate_hz: int = RATE,
    noise_suppression: str | None = None,
    sent_at_s: list[float] | None = None,
    reports: list[tuple[float, int, int]] | None = None,
    recording: str = "",
) -> tuple[Uplink, list, float]:
    """The uplink of one session fed `mic` (at `mic_rate_hz`: 16 or 48 kHz AudioUp) while it
    sends `agent` (each 20 ms frame at its mark on the server clock, handed over with the
    first uplink frame that arrives after it, as the daemon's pacer sends on its own grid):
    (uplink, [(frame index, event)], worker CPU seconds). With `CODEC` Opus both ways go as
    Opus packets (the encoding is not in the CPU seconds). `jitter_ms`: each
    uplink frame arrives that much later on average (exponentially distributed, in order), as
    over a busy network (default: `JITTER_MS`). `noise_suppression`: the session option
    `vad.noise_suppression` (default: `NOISE_SUPPRESSION`). `sent_at_s`: when each of
    `agent`'s frames is sent, from the start (default: frame i at i x 20 ms; later ones leave
    a gap, as when synthesis falls behind and the pacer skips ticks). `reports`: PLAYED
    reports the client sends, (arrival s from the start, samples played, its clock in µs),
    in order, each handed over with the first uplink frame that arrives after it.
    `recording`: record the uplink's inputs in this file (`python -m bench.replay`)."""
    up_frame = mic_rate_hz * FRAME // RATE
    jitter_ms = JITTER_MS if jitter_ms is None else jitter_ms
    rng = np.random.default_rng(seed)
    late = rng.exponential(jitter_ms / 1000, len(mic) // up_frame) if jitter_ms else None
    reports = list(reports or [])

    def send_at(i: int) -> float:
        return i * FRAME_S if sent_at_s is None else sent_at_s[i]

    async def run() -> tuple[Uplink, list, float]:
        uplink = make_uplink(
            mic_rate_hz,
            echo_cancel=echo_cancel,
            noise_suppression=noise_suppression,
            recording=recording,
        )
        t0 = trio.current_time()
        events: list[tuple[int, object]] = []
        cpu = 0.0
        last = t0
        sent, frames = 0, len(agent) // FRAME
        opus = CODEC == fr.CODEC_OPUS
        down_opus = OpusEncoder(RATE) if opus else None  # (one stream: one utterance)
        up_opus = OpusEncoder(mic_rate_hz) if opus else None
        for k in range(len(mic) // up_frame):
            batch: list[tuple[float, int, Any]] = []
            up = (np.clip(mic[k * up_frame : (k + 1) * up_frame], -1, 1) * 32767).astype("<i2")
            body = up.tobytes() if up_opus is None else up_opus.encode(up)
            arrival = t0 + (k + 1) * FRAME_S + UPLINK_LATENCY_S
            if late is not None:
                arrival = max(arrival + late[k], last)  # (frames come in order)
            last = arrival
            while sent < frames and t0 + send_at(sent) <= arrival:  # (the pacer's own grid)
                pcm = (np.clip(agent[sent * FRAME : (sent + 1) * FRAME], -1, 1) * 32767).astype(
                    "<i2"
                )
                coded = pcm.tobytes() if down_opus is None else down_opus.encode(pcm)
                audio = fr.Audio(epoch=0, utterance_id=1, seq=sent, pcm=coded)
                batch.append((t0 + send_at(sent), -1, encode(audio, packet_audio=opus)))
                sent += 1
            while reports and t0 + reports[0][0] <= arrival:
                at, samples, clock_us = reports.pop(0)
                batch.append((t0 + at, _PLAYED, (1, samples, clock_us, False)))
            batch.append((arrival, 0, body))
            c0 = time.thread_time()
            out = uplink._process_batch(batch)
            cpu += time.thread_time() - c0
            events.extend((k, ev) for _, ev in out)
        if recording:
            uplink.forget_session()  # (as the session's end: the recording is closed)
        return uplink, events, cpu

    return trio.run(run, clock=trio.testing.MockClock())  # (all times are given: none passes)


def measure(room: Room | None, agent: F32, user: F32, *, trials: int, user_db: float) -> dict:
    total = len(agent) + RATE
    heard = played(agent)
    echo = room.echo(heard, total) if room is not None else np.zeros(total, dtype=np.float32)
    echo_db = db(echo[RATE : len(agent)]) if room is not None else db(agent) - 10.0
    row: dict[str, Any] = {"room": room.name if room is not None else "headphones"}
    # the echo alone, in a quiet room: ERLE and false triggers
    uplink, events, cpu = replay(agent, echo + noise(total, -70.0))
    done = uplink._pos
    out = uplink._audio(0, done)
    span = slice(RATE, min(len(agent), done))
    row["erle_db"] = round(db(echo[span]) - db(out[span]), 1) if room is not None else None
    # and in a noisier one (-55 dBFS), as the bench's default
    _, events55, _ = replay(agent, echo + noise(total, -55.0))
    row["false_barge_ins"] = sum(isinstance(e, BargeIn) for _, e in events + events55)
    row["false_speech_starts"] = sum(isinstance(e, SpeechStart) for _, e in events + events55)
    row["cpu_percent"] = round(100 * cpu / (total / RATE), 2)
    _, _, cpu_off = replay(agent, echo + noise(total, -70.0), echo_cancel=False)
    row["cpu_percent_vad_only"] = round(100 * cpu_off / (total / RATE), 2)
    # the user talks over it
    latencies: list[float] = []
    levels: list[float] = []
    slow: list[list[float | None]] = []
    misses = 0
    on = _onset(user)
    gain = 10 ** ((echo_db + user_db - db(user[on:])) / 20)
    for i in range(trials):
        at = round((1.0 + i * (len(agent) / RATE - 3.5) / max(1, trials - 1)) * RATE) + 37 * i
        talk = np.zeros(total, dtype=np.float32)
        talk[at : at + len(user)] = gain * user[: total - at]
        uplink, events, _ = replay(agent, echo + talk + noise(total, -55.0, seed=i + 1), seed=i + 1)
        onset_frame = (at + on) // FRAME
        hits = [k for k, e in events if isinstance(e, BargeIn) and k >= at // FRAME]
        late = 1000 * (hits[0] - onset_frame) * FRAME_S if hits else None
        if late is not None and late <= 1000 * MISS_S:
            latencies.append(late)
        else:
            late = None
            misses += 1
        if late is None or late > SLOW_MS:  # (where in the reply the slow ones lie)
            slow.append([round((at + on) / RATE, 2), None if late is None else round(late)])
        out = uplink._audio(0, uplink._pos)
        s = slice(at + on, min(at + len(user), len(out)))
        levels.append(db(out[s]) - db(talk[s]))
    ms = sorted(latencies)
    row["barge_in_ms_p50"] = round(ms[len(ms) // 2], 1) if ms else None
    row["barge_in_ms_p95"] = round(ms[int(0.95 * (len(ms) - 1) + 0.5)], 1) if ms else None
    row["barge_in_ms_max"] = round(ms[-1], 1) if ms else None
    row["barge_in_misses"] = misses
    row["barge_in_slow"] = slow  # [onset s into the voice, ms or None: missed], over SLOW_MS
    row["user_level_db"] = round(float(np.mean(levels)), 2)
    row["user_level_db_worst"] = round(float(max(levels, key=abs)), 2)
    return row


def _onset(audio: F32, level: float = 0.02) -> int:
    env = np.convolve(np.abs(audio), np.ones(80) / 80, mode="same")
    return int(np.argmax(env > level / 4))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trials", type=int, default=8, help="user onsets per room")
    p.add_argument("--user-db", type=float, default=10.0, help="the user's level over the echo")
    p.add_argument("--rooms", default="headphones," + ",".join(r.name for r in ROOMS))
    p.add_argument("--cache", default="out", help="where the synthesized voices are kept")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--md", metavar="PATH", help="a Markdown table, beside --old's if given")
    p.add_argument("--old", metavar="JSON", help="a run of another revision, for a side by side")
    p.add_argument("--rev", help="the revision measured (default: git's HEAD here)")
    p.add_argument(
        "--echo-threshold", type=echo_threshold, help="vad.echo_threshold (default: 0.7)"
    )
    p.add_argument(
        "--jitter-ms", type=float, default=0.0,
        help="each uplink frame arrives this much later on average (exponential, in order)",
    )  # fmt: skip
    p.add_argument(
        "--canceller", choices=("aec3", "livekit"), default="aec3",
        help="aec3: pywebrtc-audio's AEC3 (the daemon's); livekit: LiveKit's APM (livekit_aec.py)",
    )  # fmt: skip
    p.add_argument(
        "--noise-suppression", choices=NOISE_SUPPRESSION_LEVELS, default="off",
        help="vad.noise_suppression",
    )  # fmt: skip
    p.add_argument(
        "--codec", choices=(fr.CODEC_PCM, fr.CODEC_OPUS), default=fr.CODEC_PCM,
        help="both ways: opus at 32 kbit/s, complexity 5 (the session's defaults)",
    )  # fmt: skip
    args = p.parse_args(argv)
    global ECHO_THRESHOLD, JITTER_MS, NOISE_SUPPRESSION, CODEC
    ECHO_THRESHOLD = args.echo_threshold
    JITTER_MS = args.jitter_ms
    NOISE_SUPPRESSION = args.noise_suppression
    CODEC = args.codec
    if args.canceller == "livekit":
        from .livekit_aec import use_livekit

        use_livekit()
    agent, user = voices(Path(args.cache))
    by_name = {r.name: r for r in ROOMS}
    rows = []
    for name in args.rooms.split(","):
        row = measure(
            None if name == "headphones" else by_name[name],
            agent,
            user,
            trials=args.trials,
            user_db=args.user_db,
        )
        print(json.dumps(row), flush=True)
        rows.append(row)
    rev = args.rev or head_rev()
    out = {
        "rev": rev,
        "cpus": os.cpu_count(),
        "trials": args.trials,
        "noise_suppression": args.noise_suppression,
        "canceller": args.canceller,
        "jitter_ms": args.jitter_ms,
        "codec": args.codec,
        "rooms": rows,
    }
    if args.old:
        out["old"] = json.loads(Path(args.old).read_text())
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(out))


COLUMNS = (
    ("ERLE (dB)", "erle_db"),
    ("false barge-ins", "false_barge_ins"),
    ("false speech starts", "false_speech_starts"),
    ("barge-in p50 (ms)", "barge_in_ms_p50"),
    ("barge-in p95 (ms)", "barge_in_ms_p95"),
    ("misses", "barge_in_misses"),
    ("user level (dB)", "user_level_db"),
    ("worst (dB)", "user_level_db_worst"),
    ("CPU (% core)", "cpu_percent"),
    ("VAD alone", "cpu_percent_vad_only"),
)


def markdown(out: dict[str, Any]) -> str:
    """One row per room and revision: this run (`out`), and `out["old"]` if there is one."""
    runs = [out] + ([out["old"]] if "old" in out else [])
    head = "| room | rev | " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [head, "|---|---|" + "---:|" * len(COLUMNS)]
    for row in out["rooms"]:
        for run in runs:
            match = [r for r in run["rooms"] if r["room"] == row["room"]]
            if not match:
                continue
            cells = ["-" if match[0][k] is None else f"{match[0][k]:g}" for _, k in COLUMNS]
            ns = run.get("noise_suppression", "off")
            rev = run["rev"] + (f", noise suppression {ns}" if ns != "off" else "")
            if run.get("canceller", "aec3") != "aec3":
                rev += f", {run['canceller']}"
            if run.get("codec", fr.CODEC_PCM) != fr.CODEC_PCM:
                rev += f", {run['codec']} both ways"
            if run.get("jitter_ms"):
                rev += f", jitter {run['jitter_ms']:g} ms"
            lines.append(f"| {row['room']} | {rev} | " + " | ".join(cells) + " |")
    lines.append(
        f"\nBarge-ins over {SLOW_MS:g} ms (onset s into the agent's voice: ms, or missed):"
    )
    for row in out["rooms"]:
        slow = ", ".join(
            f"{t:g}: {'missed' if ms is None else ms}" for t, ms in row["barge_in_slow"]
        )
        lines.append(f"- {row['room']}: {slow or 'none'}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
