"""`duplexd serve | say`: the daemon and a one-shot client."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import wave
from collections.abc import Sequence

import trio

from . import __version__
from ._frames import SAMPLE_RATE_HZ, WS_PATH

log = logging.getLogger("duplexd.cli")

DEFAULT_URL = f"ws://127.0.0.1:8765{WS_PATH}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="duplexd", description="realtime full-duplex voice daemon")
    p.add_argument("--version", action="version", version=f"duplexd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the daemon")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    s.add_argument("--engine", default="vits", help="vits (default) or tone")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--voice", default="", help="voice to preload and use by default")
    s.add_argument("--token", default="", help="require this token in Hello")
    s.add_argument("--log-format", default="json", choices=["json", "text"])
    s.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"))
    s.add_argument("--tone-compute-ms-per-char", type=float, default=0.0, help=argparse.SUPPRESS)

    y = sub.add_parser("say", help="speak a text through a running daemon")
    y.add_argument("text")
    y.add_argument("--url", default=DEFAULT_URL)
    y.add_argument("--out", default="", help="write a 48 kHz mono 16-bit WAV here")
    y.add_argument("--voice", default="")
    y.add_argument("--engine", default="")
    y.add_argument("--token", default="")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        return _say(args)
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------------- serve


def _serve(args: argparse.Namespace) -> int:
    from ._config import SessionLimits
    from ._engines import EngineSet, load_engine
    from ._log import setup_logging
    from ._server import serve_duplexd

    setup_logging(fmt=args.log_format, level=args.log_level)
    options: dict[str, object] = {}
    if args.engine == "tone" and args.tone_compute_ms_per_char:
        options["compute_ms_per_char"] = args.tone_compute_ms_per_char
    if args.engine == "vits" and args.voice:
        options["preload"] = (args.voice,)
    try:
        engine = load_engine(args.engine, device=args.device, **options)
    except LookupError as exc:
        print(f"duplexd: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.voice:
        engine.open_voice(args.voice)  # fail fast on an unknown voice
    engines = EngineSet.of(engine)
    log.info("engine ready", extra={"engine": engine.name, "device": engine.device})

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_sigterm, nursery.cancel_scope)
            await nursery.start(
                lambda task_status: serve_duplexd(
                    args.host,
                    args.port,
                    engines=engines,
                    limits=SessionLimits(token=args.token),
                    task_status=task_status,
                )
            )

    try:
        trio.run(run)
    finally:
        engines.close()
        log.info("stopped")
    return 0


async def _stop_on_sigterm(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            log.info("SIGTERM: stopping")
            scope.cancel()
            return


# ---------------------------------------------------------------------- say


def _say(args: argparse.Namespace) -> int:
    from .client import SessionError, open_session

    async def run() -> tuple[bytes, int]:
        async with open_session(
            args.url, voice=args.voice, engine=args.engine, token=args.token
        ) as session:
            uid = await session.say(args.text)
            spoken = await session.receive_utterance(uid)
            return spoken.pcm, session.sample_rate_hz

    try:
        pcm, rate = trio.run(run)
    except (SessionError, OSError) as exc:
        print(f"duplexd say: {exc}", file=sys.stderr)
        return 1
    if args.out:
        write_wav(args.out, pcm, rate)
        print(f"wrote {args.out}: {len(pcm) // 2 / rate:.2f} s at {rate} Hz")
        return 0
    if _play(pcm, rate):
        return 0
    fd, path = tempfile.mkstemp(prefix="duplexd-say-", suffix=".wav")
    os.close(fd)
    write_wav(path, pcm, rate)
    print(f"no sound card available; the audio is in {path}")
    return 0


def write_wav(path: str, pcm: bytes, rate_hz: int = SAMPLE_RATE_HZ) -> None:
    """Write mono s16le PCM as a WAV file."""
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm)


def _play(pcm: bytes, rate_hz: int) -> bool:
    try:
        import numpy as np
        import sounddevice  # type: ignore[import-not-found]

        sounddevice.play(np.frombuffer(pcm, dtype="<i2"), rate_hz, blocking=True)
        return True
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
