"""CPU cost of one session's uplink, by scenario: `python -m bench.uplink_cpu`.

The daemon's per-session uplink work (AudioUp -> float -> echo canceller -> silero-vad ->
speech state machine, plus the echo reference: each AUDIO message sent, parsed and resampled
48 -> 16 kHz) runs in a worker thread, batch by batch. This replays that work for one session,
frame by frame exactly as the daemon hands it over, in one thread with nothing else running,
and reports the thread's CPU time per second of audio (100 % = one core):

- `room`: nobody talks; the agent is quiet.
- `agent, headphones`: the agent talks (48 kHz downlink), nothing of it comes back.
- `agent, echo -10 dB`: ... and it comes back 60 ms later, 10 dB down.
- `agent + user, echo`: ... and the user talks over it half the time (the agent keeps talking:
  the barge-ins decided here stop nothing, and every window is worked on).
- `user alone`: the user talks half the time, the agent is quiet.

The session's options are the daemon's defaults (barge-in on: while the agent talks, the
barge-in's windows between the VAD's are scored too, halfstep.py).

Then the transcription cost: faster-whisper (the bundled tiny.en, int8, 2 threads) on the
user's turns, as process CPU seconds per second of speech; and the turn model's (Smart Turn
v3.2, one thread), asked once per candidate end of turn: wall ms per question, features apart.

The network side (WebSocket receive, frame decoding, the trio thread handoff) is not here;
`python -m bench --uplink` measures the whole daemon under load.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr
import trio

from duplexd._opus import OpusDecoder, OpusEncoder
from duplexd._uplink.services import UplinkServices
from duplexd._uplink.uplink import Uplink
from duplexd._uplink.vad import VadModel
from duplexd.protocol import frames as fr
from duplexd.protocol.codec import encode
from duplexd.protocol.options import AsrOptions, CodecOptions, SessionOptions, VadOptions

RATE = 16_000
DOWN_HZ = 48_000
FRAME_S = 0.020
F32 = npt.NDArray[np.float32]
SCENARIOS = ("room", "agent, headphones", "agent, echo -10 dB", "agent + user, echo", "user alone")
AGENT_TEXT = [
    "Sure, I can help you with that. The weather today is sunny with a light breeze.",
    "Let me check the schedule for tomorrow; there are three meetings in the morning.",
    "Okay! Here is what I found: the nearest pharmacy opens at nine o'clock.",
]
USER_TEXT = ["Wait, stop, I have a question.", "Could you book a table for two at seven thirty?"]


async def _no_offload(fn: Any, *args: Any) -> Any:
    raise AssertionError("bench.uplink_cpu runs the uplink's batches itself")


def voices() -> tuple[F32, F32]:
    """(agent at 48 kHz, user at 16 kHz): the VITS voice, the user slower and pitched up."""
    from duplexd.engines.vits import VitsEngine

    class _Slow(VitsEngine):
        def _scales(self, spec: Any) -> Any:
            return replace(super()._scales(spec), length_scale=1.3)

    agent_voice = VitsEngine(device="cpu", deterministic=True, warmup=False).open_voice("joe")
    rate = agent_voice.sample_rate_hz
    agent = np.concatenate([agent_voice.synthesize(t) for t in AGENT_TEXT])
    user_voice = _Slow(device="cpu", deterministic=True, warmup=False).open_voice("joe")
    user = np.concatenate([user_voice.synthesize(t) for t in USER_TEXT])
    return (
        np.asarray(soxr.resample(agent, rate, DOWN_HZ), dtype=np.float32),
        np.asarray(soxr.resample(user, int(rate * 1.12), RATE), dtype=np.float32),
    )


def s16(x: F32) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def scenario(
    name: str,
    agent48: F32,
    user: F32,
    seconds: float,
    seed: int = 0,
    codec: str = fr.CODEC_PCM,
    echo_delay_ms: float = 60.0,
) -> dict:
    """The frame-by-frame work of `seconds` of one session in scenario `name`. With `codec`
    Opus both ways, the agent's frames are packets (encoded as the producer does, before the
    clock starts) and so is the microphone's: the uplink decodes both in its thread."""
    n = int(seconds / FRAME_S)
    rng = np.random.default_rng(seed)
    mic = rng.normal(0.0, 10 ** (-55 / 20), n * 320).astype(np.float32)
    agent_talks = name.startswith("agent")
    down = np.resize(agent48, n * 960)
    opus = codec == fr.CODEC_OPUS
    audio_bodies = [s16(down[k * 960 : (k + 1) * 960]) for k in range(n)] if agent_talks else []
    played = down
    if opus:  # (the producer's work and the client's: what it plays is what it decodes)
        down_enc, player = OpusEncoder(DOWN_HZ), OpusDecoder(DOWN_HZ)
        audio_bodies = [down_enc.encode(b) for b in audio_bodies]
        if audio_bodies:
            played = np.concatenate([player.decode(b) for b in audio_bodies]) / np.float32(32768)
    agent16 = np.asarray(soxr.resample(played, DOWN_HZ, RATE), np.float32)
    if "echo" in name:
        d = round(echo_delay_ms * RATE / 1000)  # (from sending to the microphone)
        mic[d:] += 10 ** (-10 / 20) * agent16[: len(mic) - d]
    if "user" in name:
        cycle = 2 * len(user)
        for at in range(RATE // 2, len(mic) - len(user), cycle):
            mic[at : at + len(user)] += user
    mic_bodies = [s16(mic[k * 320 : (k + 1) * 320]) for k in range(n)]
    if opus:  # (the client's work)
        up_enc = OpusEncoder(RATE)
        mic_bodies = [up_enc.encode(b) for b in mic_bodies]

    async def run() -> dict:
        uplink = Uplink(
            rate_hz=RATE,
            downlink_rate_hz=DOWN_HZ,
            options=SessionOptions(
                VadOptions(),
                AsrOptions(transcripts=False),
                codec=CodecOptions(downlink=codec, uplink=codec),
            ),
            downlink_opus=opus,
            # (batches are run here, by hand: nothing is offloaded)
            services=UplinkServices(vad_model=VadModel(), offload=_no_offload),
            send=lambda _frame: None,
            barge_in=lambda _delay_s: None,
        )
        t0 = trio.current_time()
        cpu = 0.0
        for k in range(n):
            batch: list[tuple[float, int, bytes]] = []
            if agent_talks:
                audio = fr.Audio(epoch=0, utterance_id=1, seq=k, pcm=audio_bodies[k])
                batch.append((t0 + k * FRAME_S, -1, encode(audio, packet_audio=opus)))
            batch.append((t0 + (k + 1) * FRAME_S + 0.003, 0, mic_bodies[k]))
            c0 = time.thread_time()
            uplink._process_batch(batch)
            cpu += time.thread_time() - c0
        return {
            "scenario": name,
            "codec": codec,
            "audio_s": round(n * FRAME_S, 2),
            "cpu_s": round(cpu, 3),
            "core_percent": round(100 * cpu / (n * FRAME_S), 2),
            "ms_per_window": round(1000 * cpu / max(1, uplink.counters.windows), 3),
            # how much quieter AEC3 left the uplink while echo was possible
            "echo_removed_db": round(uplink._echo.removed_db, 1) if uplink._echo else 0.0,
            "echo_found": uplink._echo.echo_found if uplink._echo else None,
        }

    return trio.run(run)


def asr_cost(user: F32, repeats: int = 3) -> dict:
    from duplexd._uplink.asr import Transcriber

    t = Transcriber(cpu_threads=2)
    t.load()
    t.transcribe_sync(user[: RATE // 2])  # warm
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        t.transcribe_sync(user)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    speech = repeats * len(user) / RATE
    return {
        "speech_s": round(speech, 2),
        "cpu_s_per_speech_s": round(cpu / speech, 3),
        "rtf_wall": round(wall / speech, 3),
    }


def turn_cost(user: F32, repeats: int = 20) -> dict:
    from duplexd._uplink.turn import TurnModel

    model = TurnModel(threads=1)
    model.probability(user)  # warm
    feats, calls, cpu = [], [], 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.features(user)
        c1, t1 = time.process_time(), time.perf_counter()
        model.probability(user)
        calls.append(time.perf_counter() - t1)
        cpu += time.process_time() - c1
        feats.append(t1 - t0)
    return {
        "features_ms_p50": round(1000 * float(np.median(feats)), 1),
        "call_ms_p50": round(1000 * float(np.median(calls)), 1),
        "call_ms_max": round(1000 * max(calls), 1),
        "cpu_ms_per_call": round(1000 * cpu / repeats, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.uplink_cpu", description=__doc__.split("\n")[0]
    )
    p.add_argument("--seconds", type=float, default=30.0, help="audio per scenario")
    p.add_argument("--repeats", type=int, default=3, help="runs per scenario; the least is kept")
    p.add_argument("--no-asr", action="store_true")
    p.add_argument(
        "--codec",
        choices=(fr.CODEC_PCM, fr.CODEC_OPUS),
        default=fr.CODEC_PCM,
        help="both ways (Opus: 32 kbit/s packets, decoded in the uplink's thread)",
    )
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    agent48, user = voices()
    # the least disturbed of `--repeats` runs (a shared VM's neighbours only ever add time)
    rows = [
        min(
            (
                scenario(name, agent48, user, args.seconds, codec=args.codec)
                for _ in range(args.repeats)
            ),
            key=lambda r: r["cpu_s"],
        )
        for name in SCENARIOS
    ]
    out: dict[str, Any] = {"uplink": rows}
    print("| one session's uplink | CPU (% of a core) | ms per 32 ms window | echo removed (dB) |")
    print("|---|---:|---:|---|")
    for r in rows:
        removed = r["echo_removed_db"]
        print(f"| {r['scenario']} | {r['core_percent']} | {r['ms_per_window']} | {removed} |")
    if not args.no_asr:
        out["asr"] = asr_cost(user)
        a = out["asr"]
        print(
            f"\nASR (faster-whisper tiny.en, int8, 2 threads): {a['cpu_s_per_speech_s']} CPU-s per"
            f" s of speech, wall RTF {a['rtf_wall']} ({a['speech_s']} s of speech)"
        )
        out["turn"] = turn_cost(user)
        t = out["turn"]
        print(
            f"Turn model (Smart Turn v3.2, int8, 1 thread): {t['call_ms_p50']} ms per question"
            f" (p50; max {t['call_ms_max']}), of which features {t['features_ms_p50']} ms;"
            f" {t['cpu_ms_per_call']} CPU-ms"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
