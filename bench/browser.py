"""A conversation in a real browser: `python -m bench.browser [--seconds 60] [--engine tone]`.

Starts `duplexd serve` (its HTTP side port serves the demo page) and a headless Chromium
(`bench.cdp`) whose fake microphone loops a speech clip (the VITS voice: a few seconds of
silence, then `INTERRUPTION`, every `--speech-every` seconds). For `--seconds` the page says one
reply after another (`REPLIES`, whole, the next one `--gap-ms` after the last ended) while the
microphone stays on, so the user talks over some of them and the daemon's VAD barges in.

Reports what the page itself measured, on the audio clock and at the speaker (its
`duplexdDemo` figures): first-audio latency of each reply, barge-in latency of each spoken
interruption, the jitter of frame arrivals against the 20 ms grid, and the playback worklet's
jitter-buffer underruns and late frames over the whole conversation.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import trio

from .cdp import chromium, open_browser
from .daemon import free_port
from .report import print_and_save

REPLIES = (
    "Sure, I can help with that. Your order shipped this morning and should arrive on Friday.",
    "The museum opens at nine and closes at six, except on Mondays when it is closed.",
    "Let me check the weather for you. It will be sunny in the morning and rainy later.",
    "Your appointment is confirmed for Tuesday at three in the afternoon with Doctor Patel.",
    "I found three Italian restaurants nearby. The closest one is a short walk from here.",
)
INTERRUPTION = "Wait, stop, I have another question."


def speech_wav(path: Path, every_s: float) -> None:
    """`INTERRUPTION` in the VITS voice after `every_s - len` of silence, 16 kHz s16 mono."""
    from duplexd.engines.vits import VitsEngine

    engine = VitsEngine(device="cpu", deterministic=True, warmup=False)
    try:
        voice = engine.open_voice("joe")
        import soxr

        said = soxr.resample(voice.synthesize(INTERRUPTION), voice.sample_rate_hz, 16_000)
    finally:
        engine.close()
    silence = np.zeros(max(0, int(every_s * 16_000) - len(said)), dtype=np.float32)
    audio = np.concatenate([silence, said])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def start_daemon(engine: str, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    http_port = free_port()
    argv = [sys.executable, "-m", "duplexd", "serve", "--engine", engine, "--port", "0",
            "--http-port", str(http_port), "--log-format", "text"]  # fmt: skip
    log = log_path.open("wb")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if m := re.search(r"ready .*page=(\S+)", log_path.read_text(errors="replace")):
            return proc, m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.terminate()
    raise SystemExit(f"duplexd serve did not start: {log_path.read_text()[-2000:]}")


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))], 1)


async def converse(page_url: str, wav: Path, seconds: float, gap_ms: int) -> dict[str, Any]:
    flags = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             f"--use-file-for-fake-audio-capture={wav}")  # fmt: skip
    first_audio: list[float] = []
    replies = interrupted = 0
    async with open_browser(flags) as page:
        await page.navigate(page_url)
        await page.wait_for("window.duplexdDemo && duplexdDemo.ready.then(() => true)", 60)
        await page.evaluate("duplexdDemo.startMic()")
        started = trio.current_time()
        while trio.current_time() - started < seconds:
            text = json.dumps(REPLIES[replies % len(REPLIES)])
            uid = await page.evaluate(f"duplexdDemo.say({text})")
            replies += 1
            await page.wait_for(
                "duplexdDemo.events.some(e => (e.type === 'utterance_done'"
                f" && e.utteranceId === {uid}) || (e.type === 'interrupted' && e.vad"
                f" && e.utteranceId === {uid}))",
                60,
                poll_s=0.1,
            )
            events = await page.evaluate("duplexdDemo.events")
            if any(e["type"] == "interrupted" and e.get("utteranceId") == uid for e in events):
                interrupted += 1
            if (ms := await page.evaluate("duplexdDemo.figures.firstAudioMs")) is not None:
                first_audio.append(ms)
            await trio.sleep(gap_ms / 1000)
        elapsed = trio.current_time() - started
        await page.evaluate("duplexdDemo.stopMic()")
        events = await page.evaluate("duplexdDemo.events")
        counters = await page.evaluate("duplexdDemo.counters")
        figures = await page.evaluate("duplexdDemo.figures")
        errors = [line for line in page.console if line.startswith(("error", "exception"))]
    barge_ins = [e["ms"] for e in events if e["type"] == "barge_in" and e["ms"] is not None]
    return {
        "seconds": round(elapsed, 1),
        "replies": replies,
        "replies_interrupted_by_speech": interrupted,
        "first_audio_ms": {
            "p50": _pct(first_audio, 50),
            "p95": _pct(first_audio, 95),
            "n": len(first_audio),
        },
        "barge_in_ms": {  # of the page's last 200 events
            "p50": _pct(barge_ins, 50),
            "max": max(barge_ins, default=None),
            "n": len(barge_ins),
        },
        "jitter_ms": {"p50": figures["jitterP50Ms"], "p95": figures["jitterP95Ms"]},
        "output_latency_ms": figures["outputLatencyMs"],
        "frames_played": counters["framesPlayed"],
        "underruns": counters["underruns"],
        "late_frames": counters["lateFrames"],
        "page_errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.browser", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--engine", default="tone", help="tone (default) or vits")
    parser.add_argument("--speech-every", type=float, default=9.0, metavar="S")
    parser.add_argument("--gap-ms", type=int, default=400, help="between two replies")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if chromium() is None:
        print("bench.browser: no chromium on PATH (apt install chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp:
        wav = Path(tmp) / "mic.wav"
        speech_wav(wav, args.speech_every)
        proc, page_url = start_daemon(args.engine, Path(tmp) / "daemon.log")
        try:
            figures = trio.run(converse, page_url, wav, args.seconds, args.gap_ms)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    command = " ".join(["python -m bench.browser", *sys.argv[1:]])
    figures = {"engine": args.engine, "command": command, **figures}
    print_and_save(figures, args.json)
    return 0 if not figures["page_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
