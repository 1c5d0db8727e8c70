"""Barge-ins that forgive a cough (`python -m bench.backchannels`): soft vs immediate mode.

A fresh duplexd daemon (tone engine: what the agent says does not matter here, only that it
is talking) serves one session per mode. The agent says a long reply; 0.8 s into its audio
the microphone (real time, one 20 ms frame every 20 ms, quiet room noise in between) plays one
sound over it, and the next trial starts once the reply is over. The sounds:

- backchannels ("Mm-hmm.", "Yeah.", "Okay." ...) spoken by the bundled VITS voice;
- noises made here (deterministic): a cough, a double cough, a throat clear, a click train,
  a loud breath;
- true interruptions ("Wait, stop.", "Hold on.", "No, that's not what I asked." ...).

Measured on the client's clock, per trial: whether the reply was interrupted (INTERRUPTED for
it), the sound's onset -> the audio stopping (BARGE_IN HELD, or INTERRUPTED in immediate
mode), and in soft mode the end of the sound -> RESUMED. The figures: false barge-ins (a
backchannel or a noise that interrupted), true barge-ins caught, pause latency p50/p95.

    python -m bench.backchannels [--rounds 2] [--modes immediate,soft] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import trio

from .turns import FRAME, FRAME_S, NOISE_DBFS, RATE, speech_end, speech_onset

F32 = npt.NDArray[np.float32]
LEAD_S: Final = 0.8  # into the reply's audio, the sound starts
GAP_S: Final = 1.5  # after a reply, before the next trial
AGENT: Final = "Our opening hours are from nine in the morning until ten at night, every day."
BACKCHANNELS: Final = ("Mm-hmm.", "Yeah.", "Okay.", "Right.", "Sure.", "Yeah, okay.", "Uh-huh.")
INTERRUPTIONS: Final = (
    "Wait, stop.",
    "Hold on.",
    "No, that's not what I asked.",
    "Stop, please.",
    "Can you repeat that?",
    "Actually, I want the red one.",
)
NOISES: Final = ("cough", "double cough", "throat clear", "clicks", "breath")


# ---------------------------------------------------------------------------- the sounds


@dataclass(frozen=True)
class Sound:
    kind: str  # "backchannel", "noise" or "interruption"
    name: str
    audio: F32


def _burst(rng: np.random.Generator, dur_s: float, lo_hz: float, hi_hz: float) -> F32:
    """Band-limited noise with a sharp attack and an exponential decay (a cough's burst)."""
    n = round(dur_s * RATE)
    spec = np.fft.rfft(rng.normal(0.0, 1.0, n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    spec[(f < lo_hz) | (f > hi_hz)] = 0
    x = np.fft.irfft(spec, n)
    env = np.minimum(1.0, np.arange(n) / (0.008 * RATE)) * np.exp(-np.arange(n) / (0.35 * n))
    out: F32 = (x * env / np.max(np.abs(x * env))).astype(np.float32)
    return out


def noise(name: str) -> F32:
    """One of `NOISES`, at 16 kHz (deterministic)."""
    rng = np.random.default_rng(sum(map(ord, name)))
    pad = np.zeros(RATE // 10, dtype=np.float32)
    if name == "cough":
        body = 0.5 * _burst(rng, 0.25, 300, 3500)
    elif name == "double cough":
        body = np.concatenate(
            (0.5 * _burst(rng, 0.2, 300, 3500), pad, 0.4 * _burst(rng, 0.22, 300, 3000))
        )
    elif name == "throat clear":
        body = 0.3 * _burst(rng, 0.4, 100, 900)
    elif name == "clicks":
        body = np.zeros(RATE // 2, dtype=np.float32)
        for k in range(5):
            i = k * RATE // 10
            body[i : i + 40] = 0.6 * np.hanning(40) * np.sign(rng.normal(size=40))
    elif name == "breath":
        body = 0.08 * _burst(rng, 0.5, 500, 6000)
    else:
        raise ValueError(f"no such noise: {name}")
    return np.concatenate((pad, body.astype(np.float32), pad))


def synthesize_set(path: str) -> None:
    """The spoken sounds, by the joe voice at 16 kHz, to `path` (.npz)."""
    import soxr

    from duplexd.engines.vits.engine import VitsEngine

    engine = VitsEngine(device="cpu", deterministic=True, warmup=False)
    try:
        voice = engine.open_voice("joe")
        arrays: dict[str, Any] = {
            text: np.asarray(
                soxr.resample(voice.synthesize(text), voice.sample_rate_hz, RATE), np.float32
            )
            for text in (*BACKCHANNELS, *INTERRUPTIONS)
        }
    finally:
        engine.close()
    np.savez(path, **arrays)


def load_sounds(directory: str) -> list[Sound]:
    """The whole set: spoken ones synthesized in a subprocess (torch stays out of the bench
    process), noises made here."""
    from .daemon import synthesize_in_subprocess

    path = synthesize_in_subprocess("bench.backchannels", os.path.join(directory, "sounds.npz"))
    data = np.load(path)
    return [
        *(Sound("backchannel", t, data[t]) for t in BACKCHANNELS),
        *(Sound("noise", n, noise(n)) for n in NOISES),
        *(Sound("interruption", t, data[t]) for t in INTERRUPTIONS),
    ]


# ---------------------------------------------------------------------------- one session


@dataclass
class Trial:
    sound: Sound
    uid: int = 0
    t_onset: float = 0.0  # capture time of the sound's first sample above the noise
    t_end: float = 0.0  # ... and of its last
    paused_ms: float | None = None  # onset -> HELD or INTERRUPTED
    resumed_ms: float | None = None  # end of the sound -> RESUMED
    interrupted: bool = False
    outcome: str = ""  # the last BARGE_IN's outcome and reason


@dataclass
class Mic:
    """Room noise, and one sound at a time placed at a frame boundary."""

    seq: int = 0
    t0: float = 0.0
    clip: F32 = field(default_factory=lambda: np.zeros(0, np.float32))
    at: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(1))

    def play(self, clip: F32) -> int:
        self.clip, self.at = clip, (self.seq + 1) * FRAME
        return self.at

    def frame(self, k: int) -> bytes:
        out = self.rng.normal(0.0, 10 ** (NOISE_DBFS / 20), FRAME).astype(np.float32)
        lo = k * FRAME - self.at
        if 0 <= lo < len(self.clip):
            part = self.clip[lo : lo + FRAME]
            out[: len(part)] += part
        return (np.clip(out, -1.0, 1.0) * 32767).astype("<i2").tobytes()


class Events:
    """The frames that came, with their arrival times; `wait` for one that matters."""

    def __init__(self) -> None:
        self.log: list[tuple[float, Any]] = []
        self._want: Any = None
        self._event = trio.Event()

    def on_frame(self, frame: Any, now: float) -> None:
        self.log.append((now, frame))
        if self._want is not None and self._want(frame):
            self._event.set()

    async def wait(self, pred: Any, mark: int) -> None:
        """Until a frame from `mark` on matches `pred`. Cancelling leaves nothing behind."""
        if any(pred(f) for _, f in self.log[mark:]):
            return
        self._want, self._event = pred, trio.Event()
        try:
            await self._event.wait()
        finally:
            self._want = None


async def drive(url: str, sounds: list[Sound], rounds: int, mode: str) -> list[Trial]:
    from duplexd.client.session import open_session
    from duplexd.protocol import frames as fr

    trials: list[Trial] = []
    events = Events()
    mic = Mic()
    options = {"vad": {"barge_in_mode": mode}}
    async with open_session(
        url, uplink_rate_hz=RATE, options=options, on_frame=events.on_frame
    ) as session:

        async def drain() -> None:
            async for _ in session:
                pass

        async def stream() -> None:
            while True:
                await trio.sleep_until(mic.t0 + (mic.seq + 1) * FRAME_S)  # sent once captured
                await session.send_audio(mic.frame(mic.seq))
                mic.seq += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            mic.t0 = trio.current_time()
            nursery.start_soon(stream)
            await trio.sleep(1.0)
            for _ in range(rounds):
                for sound in sounds:
                    trial = Trial(sound)
                    mark = len(events.log)
                    trial.uid = uid = await session.say(AGENT)
                    await events.wait(lambda f: isinstance(f, fr.UtteranceStarted), mark)
                    await trio.sleep(LEAD_S)
                    at = mic.play(sound.audio)
                    trial.t_onset = mic.t0 + (at + speech_onset(sound.audio)) / RATE
                    trial.t_end = mic.t0 + (at + speech_end(sound.audio)) / RATE
                    with trio.move_on_after(60):
                        await events.wait(
                            lambda f, u=uid: (
                                isinstance(f, fr.UtteranceDone | fr.Interrupted)
                                and f.utterance_id == u
                            ),
                            mark,
                        )
                    await trio.sleep(GAP_S)
                    score(trial, events.log[mark:])
                    trials.append(trial)
            nursery.cancel_scope.cancel()
    return trials


def score(trial: Trial, events: list[tuple[float, Any]]) -> None:
    from duplexd.protocol import frames as fr

    for t, f in events:
        stops = (isinstance(f, fr.BargeIn) and f.outcome is fr.BargeInOutcome.HELD) or (
            isinstance(f, fr.Interrupted) and f.utterance_id == trial.uid
        )
        if stops and trial.paused_ms is None:
            trial.paused_ms = round(1000 * (t - trial.t_onset), 1)
        if isinstance(f, fr.Interrupted) and f.utterance_id == trial.uid:
            trial.interrupted = True
        if isinstance(f, fr.BargeIn) and f.outcome is not fr.BargeInOutcome.HELD:
            trial.outcome = f"{f.outcome.name} {f.reason.name} {f.text!r}"
            if f.outcome is fr.BargeInOutcome.RESUMED:
                trial.resumed_ms = round(1000 * (t - trial.t_end), 1)


# ---------------------------------------------------------------------------- figures


def _pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 1) if xs else None


def summarize(trials: list[Trial]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("backchannel", "noise", "interruption"):
        ts = [t for t in trials if t.sound.kind == kind]
        paused = [t.paused_ms for t in ts if t.paused_ms is not None]
        resumed = [t.resumed_ms for t in ts if t.resumed_ms is not None]
        out[kind] = {
            "trials": len(ts),
            "interrupted": sum(t.interrupted for t in ts),
            "paused": len(paused),
            "pause_ms_p50": _pct(paused, 50),
            "pause_ms_p95": _pct(paused, 95),
            "resumed": len(resumed),
            "resume_ms_p50": _pct(resumed, 50),
            "resume_ms_p95": _pct(resumed, 95),
        }
    return out


def markdown(runs: dict[str, list[Trial]], meta: dict[str, Any]) -> str:
    lines = [
        f"# Soft vs immediate barge-in (`{meta['command']}`, rev {meta['git_rev']})",
        "",
        f"One session per mode; the agent talks, {LEAD_S} s in the microphone plays one sound."
        " False barge-ins: backchannels and noises that interrupted; true ones caught:"
        " interruptions that did. Pause: the sound's onset -> the audio stopped (HELD or"
        " INTERRUPTED); resume: the end of the sound -> RESUMED.",
        "",
        "| mode | sounds | trials | interrupted | paused | pause p50 ms | pause p95 ms"
        " | resumed | resume p50 ms | resume p95 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, trials in runs.items():
        for kind, s in summarize(trials).items():
            lines.append(
                f"| {mode} | {kind} | {s['trials']} | {s['interrupted']} | {s['paused']} "
                f"| {s['pause_ms_p50']} | {s['pause_ms_p95']} | {s['resumed']} "
                f"| {s['resume_ms_p50']} | {s['resume_ms_p95']} |"
            )
    lines += ["", "| mode | sound | interrupted | pause ms | resume ms | outcome |"]
    lines += ["|---|---|---|---:|---:|---|"]
    for mode, trials in runs.items():
        for t in trials:
            lines.append(
                f"| {mode} | {t.sound.name} | {'yes' if t.interrupted else 'no'} "
                f"| {t.paused_ms} | {t.resumed_ms} | {t.outcome} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.backchannels", description=__doc__.splitlines()[0]
    )
    p.add_argument("--rounds", type=int, default=2, help="times the sound set is played (2)")
    p.add_argument("--modes", default="immediate,soft", help="barge-in modes, in order")
    p.add_argument("--url", default="", help="a running duplexd instead of a fresh one")
    p.add_argument("--json", default="", metavar="PATH")
    p.add_argument("--synthesize", default="", metavar="PATH", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.synthesize:
        synthesize_set(args.synthesize)
        return 0
    from .__main__ import git_rev
    from .daemon import ServerFailed, tone_daemon

    with tempfile.TemporaryDirectory(prefix="bench-backchannels-") as tmp:
        print("bench.backchannels: synthesizing the sounds (VITS)...", file=sys.stderr)
        sounds = load_sounds(tmp)
    runs: dict[str, list[Trial]] = {}
    try:
        with tone_daemon(args.url) as (url, _server):
            for mode in args.modes.split(","):
                print(f"bench.backchannels: {mode} mode...", file=sys.stderr)
                started = time.monotonic()
                runs[mode] = trio.run(drive, url, sounds, args.rounds, mode)
                print(f"  {time.monotonic() - started:.0f} s", file=sys.stderr)
    except ServerFailed as exc:
        print(f"bench.backchannels: {exc}", file=sys.stderr)
        return 1
    cmd = " ".join(["python -m bench.backchannels", *(argv if argv is not None else sys.argv[1:])])
    meta = {"command": cmd, "git_rev": git_rev(), "cpu_count": os.cpu_count()}
    print(markdown(runs, meta))
    if args.json:
        result = {
            mode: {
                "summary": summarize(trials),
                "trials": [
                    {
                        "kind": t.sound.kind,
                        "sound": t.sound.name,
                        "interrupted": t.interrupted,
                        "pause_ms": t.paused_ms,
                        "resume_ms": t.resumed_ms,
                        "outcome": t.outcome,
                    }
                    for t in trials
                ],
            }
            for mode, trials in runs.items()
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, **result}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
