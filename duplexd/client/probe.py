"""`duplexd probe`: what a running daemon says, and how one utterance's frames arrive.

Prints the handshake (Welcome), the limits, the engines and voices, a ping, then one line per
audio frame of one utterance as it arrives: its sequence number, epoch, arrival time (since
the text was sent) and the error against the ideal arrival, ``first + n x frame`` (n: frames
since the first). A steady client sees errors of a few tenths of a millisecond; a jump is
network or server jitter, a growing error is a server that cannot keep up.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

import numpy as np
import trio

from ..protocol import frames as fr
from .connect import (
    ConnectArgsError,
    ConnectOptions,
    add_connection_arguments,
    add_voice_arguments,
    connect_options,
)

DEFAULT_TEXT = "Hello from duplexd probe."


def add_probe_arguments(p: argparse.ArgumentParser, default_url: str) -> None:
    add_connection_arguments(p, default_url)  # --url --token-file --token --ca
    p.add_argument("--text", default=DEFAULT_TEXT, help="the utterance to time")
    add_voice_arguments(p)
    p.add_argument("--rate", type=int, default=fr.SAMPLE_RATE_HZ, help="16000, 24000 or 48000")
    p.add_argument("--no-frames", action="store_true", help="only the summary, not every frame")


class FrameTimer:
    """Collects (and prints, live) the arrival timing of one utterance's audio frames."""

    def __init__(self, frame_s: float, out: TextIO, *, per_frame: bool = True) -> None:
        self.frame_s = frame_s
        self.out = out
        self.per_frame = per_frame
        self.sent_at = 0.0  # when the text went out
        self.first: float | None = None
        self.errors_ms: list[float] = []
        self.epoch = 0

    def on_frame(self, frame: fr.ServerFrame, now: float) -> None:
        if not isinstance(frame, fr.Audio):
            return
        if self.first is None:
            self.first = now
            header = f"{'n':>5} {'seq':>5} {'epoch':>5} {'arrival_ms':>10} {'error_ms':>9}"
            print(header if self.per_frame else "receiving audio...", file=self.out)
        n = len(self.errors_ms)
        error_ms = (now - (self.first + n * self.frame_s)) * 1e3
        self.errors_ms.append(error_ms)
        self.epoch = frame.epoch
        if self.per_frame:
            arrival_ms = (now - self.sent_at) * 1e3
            print(
                f"{n:5d} {frame.seq:5d} {frame.epoch:5d} {arrival_ms:10.3f} {error_ms:+9.3f}"
                + ("  last" if frame.last else ""),
                file=self.out,
                flush=True,
            )

    def summary(self) -> str:
        if self.first is None or not self.errors_ms:
            return "no audio frames"
        err = np.abs(np.asarray(self.errors_ms))
        late = int(np.count_nonzero(np.asarray(self.errors_ms) > self.frame_s * 1e3))
        return (
            f"{len(err)} frames ({len(err) * self.frame_s:.2f} s), first audio "
            f"{(self.first - self.sent_at) * 1e3:.1f} ms after the text; |error| p50 "
            f"{np.percentile(err, 50):.3f} ms, p99 {np.percentile(err, 99):.3f} ms, max "
            f"{err.max():.3f} ms; {late} more than one frame late"
        )


def run_probe(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """`duplexd probe`: exit status 0, or 1 (the message on stderr) if the session failed."""
    from .session import SessionError

    try:
        connect = connect_options(args)
    except ConnectArgsError as exc:
        print(f"duplexd probe: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(probe, args, out, connect)
    except (SessionError, OSError) as exc:
        print(f"duplexd probe: {exc}", file=sys.stderr)
        return 1
    return 0


async def probe(
    args: argparse.Namespace, out: TextIO, connect: ConnectOptions | None = None
) -> FrameTimer:
    """Print the handshake, a ping and one utterance's frame timing to `out` (`connect`: the
    token and TLS context; default: `connect_options(args)`)."""
    from .session import open_session

    if connect is None:
        connect = connect_options(args)
    timer = FrameTimer(fr.FRAME_MS / 1000, out, per_frame=not args.no_frames)
    async with open_session(
        args.url,
        sample_rate_hz=args.rate,
        engine=args.engine,
        voice=args.voice,
        token=connect.token,
        ssl_context=connect.ssl_context,
        on_frame=timer.on_frame,
    ) as session:
        _print_handshake(args.url, session.welcome, session.info, out)
        rtt = await session.ping()
        print(f"ping       {rtt * 1e3:.3f} ms round trip", file=out)
        print(f"utterance  {args.text!r}", file=out, flush=True)
        timer.sent_at = trio.current_time()
        uid = await session.say(args.text)
        spoken = await session.receive_utterance(uid)
        print(f"done       {timer.summary()}", file=out)
        pacing = dict((await session.stats()).get("pacing_error_ms") or {})
        print(
            f"server     samples_sent={spoken.end.samples_sent}"
            f" chars_spoken={spoken.end.chars_spoken}; its pacing |error| p50"
            f" {pacing.get('p50', 0.0):.3f} ms, p99 {pacing.get('p99', 0.0):.3f} ms,"
            f" max {pacing.get('max', 0.0):.3f} ms",
            file=out,
        )
    return timer


def _print_handshake(url: str, w: fr.Welcome, info: dict[str, Any], out: TextIO) -> None:
    print(f"url        {url}", file=out)
    print(
        f"welcome    protocol v{w.version}, session {w.session_id.hex()}, "
        f"{w.sample_rate_hz} Hz, {w.frame_samples} samples per frame, "
        f"uplink {w.uplink_rate_hz or 'off'}",
        file=out,
    )
    print(f"server     {info.get('server', '?')}, engine {w.engine}, voice {w.voice}", file=out)
    print(
        f"limits     max_frame_bytes={w.max_frame_bytes} max_text_bytes={w.max_text_bytes}"
        f" max_queued_utterances={w.max_queued_utterances}",
        file=out,
    )
    for name, e in dict(info.get("engines", {})).items():
        voices = ", ".join(e.get("voices", []))
        print(
            f"engine     {name} on {e.get('device')}: voices {voices}"
            f" (default {e.get('default_voice')})",
            file=out,
        )
