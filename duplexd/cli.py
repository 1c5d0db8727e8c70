"""`duplexd serve | serve-model | config | token | chat | probe | say`: the daemon, its shared
model process, and its clients."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import wave
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from ._ops.flags import add_config_flags, config_command
from ._version import __version__
from .protocol.frames import SAMPLE_RATE_HZ, WS_PATH

if TYPE_CHECKING:
    from ._ops.settings import Settings

log = logging.getLogger("duplexd.cli")

DEFAULT_URL = f"ws://127.0.0.1:8765{WS_PATH}"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each flag's help says its default (when it has one worth saying and does not say it
    already); the description and the examples keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default not in (None, "", False, argparse.SUPPRESS)
            and action.option_strings
            and "default" not in text
            and f"({default})" not in text
        ):
            text += " (default: %(default)s)"
        return text


# two examples for each command's --help
EXAMPLES = {
    "serve": (
        "duplexd serve                                  # the bundled joe voice on 127.0.0.1:8765",
        "duplexd serve --engine tone --port 0 --log-format text",
    ),
    "serve-model": (
        "duplexd serve-model --model-socket /run/duplexd-model/model.sock --device cuda",
        "duplexd serve-model --engine tone --model-socket /tmp/duplexd-model.sock",
    ),
    "config": (
        "duplexd config --print --config /etc/duplexd/duplexd.toml",
        "DUPLEXD_SERVER__PORT=9000 duplexd config --check",
    ),
    "chat": (
        "duplexd chat --mic-file question.wav --out reply.wav",
        "printf 'What is the weather like?\\n' | duplexd chat --no-mic --out reply.wav",
    ),
    "probe": (
        "duplexd probe --url ws://127.0.0.1:8765/v1",
        "duplexd probe --rate 16000 --no-frames",
    ),
    "say": (
        'duplexd say "The quick brown fox jumps over the lazy dog." --out fox.wav',
        "duplexd say - --out story.wav < story.txt",
    ),
    "token": (
        "duplexd token --new-secret /etc/duplexd/secret",
        "duplexd token --subject alice --ttl 60",
    ),
}


def _command(sub: Any, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    examples = "\n".join(f"  {line}" for line in EXAMPLES[name])
    return sub.add_parser(  # type: ignore[no-any-return]
        name,
        help=help,
        formatter_class=_HelpFormatter,
        epilog=f"examples:\n{examples}",
        **kwargs,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="duplexd", description="realtime full-duplex voice daemon")
    p.add_argument("--version", action="version", version=f"duplexd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = _command(sub, "serve", "run the daemon")
    add_config_flags(s)  # --config, --host, --port, --engine, --asr-model... (duplexd._ops.flags)

    m = _command(
        sub,
        "serve-model",
        "run the model process that the daemons of one GPU share (serve --model-socket)",
        description="Load [engine] (name, device, voice, preload) once and serve it to the "
        "daemons that name the same socket: their sessions' requests share one model and "
        "its batches. SIGTERM stops it at once. --http-port P: /healthz, /readyz, /metrics "
        "(off unless given here).",
    )
    add_config_flags(m, model_process=True)

    c = _command(sub, "config", "show or check the effective configuration")
    add_config_flags(c)
    c.add_argument("--print", action="store_true", help="print it as TOML (the default)")
    c.add_argument("--check", action="store_true", help="only check it (exit 2 if bad)")
    c.add_argument("--show-secrets", action="store_true", help="print the token too")

    from .client.chat import add_chat_arguments

    add_chat_arguments(
        _command(sub, "chat", "talk with a voice agent through a running daemon"), DEFAULT_URL
    )

    from .client.probe import add_probe_arguments

    add_probe_arguments(
        _command(sub, "probe", "handshake, limits, voices and per-frame timing"), DEFAULT_URL
    )

    from .client.connect import add_connection_arguments, add_voice_arguments

    y = _command(sub, "say", "speak a text through a running daemon")
    y.add_argument("text", help="what to say; - reads it from standard input")
    add_connection_arguments(y, DEFAULT_URL)  # --url --token-file --token --ca
    y.add_argument(
        "--out", default="", help="write a 48 kHz mono 16-bit WAV here (default: play it)"
    )
    add_voice_arguments(y)

    t = _command(
        sub,
        "token",
        "print a short-lived signed token (--subject), or make a secret (--new-secret)",
        description="Print one signed token for SUBJECT, good for --ttl seconds, signed with "
        "the secret in [auth] secret_file (the same --config and DUPLEXD_* as serve). "
        "--new-secret PATH writes a new secret file (mode 0600) instead.",
    )
    add_config_flags(t)
    t.add_argument("--subject", default="", help="who the token is for (printable, <= 64)")
    t.add_argument("--ttl", type=int, default=60, metavar="S", help="seconds it is good")
    t.add_argument("--new-secret", default="", metavar="PATH", help="write a new secret here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "serve-model":
            return _serve_model(args)
        if args.command == "chat":
            from .client.chat import run_chat

            return run_chat(args)
        if args.command == "config":
            from ._server.preflight import startup_problems

            return config_command(args, startup_problems)
        if args.command == "probe":
            from .client.probe import run_probe

            return run_probe(args)
        if args.command == "token":
            return _token(args)
        return _say(args)
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------------- serve


def _serve(args: argparse.Namespace, beside: Callable[[], Awaitable[None]] | None = None) -> int:
    """Settings (file < DUPLEXD_* < flags), then `duplexd._server.service.Service` until
    SIGTERM. `beside()`: a task run next to the service until it stops (cancelled then; the
    fuzz soak's task counter)."""
    from ._ops.flags import settings_from_args
    from ._server.service import Service

    def main(settings: Settings) -> Callable[[], Awaitable[None]]:
        service = Service(settings, reload=lambda: settings_from_args(args))

        async def run() -> None:
            if beside is None:
                await service.run()
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(beside)
                await service.run()
                nursery.cancel_scope.cancel()

        return run

    return _run_with_settings(args, main)


def _serve_model(args: argparse.Namespace) -> int:
    """`duplexd._server.model.run_model_service` with the settings `serve` would read."""
    from ._server.model import run_model_service

    # its side port only when asked for on its command line: [server] http_port is the daemons'
    port = args.http_port if hasattr(args, "http_port") else None
    return _run_with_settings(
        args, lambda settings: partial(run_model_service, settings, http_port=port or None)
    )


def _run_with_settings(
    args: argparse.Namespace, main: Callable[[Settings], Callable[[], Awaitable[None]]]
) -> int:
    """The settings (file < DUPLEXD_* < flags) and the logs, then `main(settings)` under trio.
    A bad configuration or a start that fails: one line, exit status 2."""
    from ._ops.flags import settings_from_args
    from ._ops.logs import configure_logging
    from ._ops.settings import ConfigError
    from ._server.startup import StartupError

    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"duplexd: config: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log)
    try:
        trio.run(main(settings))
    except (StartupError, OSError, BaseExceptionGroup) as exc:
        why = _startup_failure(exc)
        if why is None:
            raise
        print(f"duplexd: {why}", file=sys.stderr)
        return 2
    return 0


def _startup_failure(exc: BaseException) -> str | None:
    """One line for a daemon that could not start (a StartupError, or a port it could not
    bind), wherever in the service's nurseries it was raised; None for anything else."""
    from ._server.startup import StartupError

    leaves: list[BaseException] = [exc]
    while len(leaves) == 1 and isinstance(leaves[0], BaseExceptionGroup):
        leaves = [e for e in leaves[0].exceptions if not isinstance(e, trio.Cancelled)]
    if len(leaves) != 1:
        return None
    leaf = leaves[0]
    if isinstance(leaf, StartupError):
        return str(leaf)
    if isinstance(leaf, OSError) and leaf.errno is not None:
        return f"cannot listen: {leaf.strerror} (choose another --port or --http-port)"
    return None


# ---------------------------------------------------------------------- token


def _token(args: argparse.Namespace) -> int:
    """`duplexd token --subject S [--ttl 60]`: one signed token on stdout. `duplexd token
    --new-secret PATH`: a new secret file. Mistakes: one line, exit status 2."""
    import time

    from ._ops.auth import AuthConfigError, mint, read_secret_file, write_secret_file
    from ._ops.flags import settings_from_args
    from ._ops.settings import ConfigError

    def fail(message: str) -> int:
        print(f"duplexd token: {message}", file=sys.stderr)
        return 2

    if args.new_secret:
        if args.subject:
            return fail("--new-secret makes a secret, --subject a token: one at a time")
        try:
            write_secret_file(args.new_secret)
        except FileExistsError:
            return fail(f"{args.new_secret} exists (remove it first to replace the secret)")
        except OSError as exc:
            return fail(f"cannot write {args.new_secret}: {exc.strerror or exc}")
        print(f"wrote a new secret to {args.new_secret} (mode 0600): set [auth] secret_file")
        return 0
    if not args.subject:
        return fail("--subject is required (who the token is for)")
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        return fail(f"config: {exc}")
    path = settings.auth.secret_file
    if not path:
        return fail(
            "no secret configured: set [auth] secret_file (or DUPLEXD_AUTH__SECRET_FILE);"
            " duplexd token --new-secret PATH makes one"
        )
    try:
        token = mint(args.subject, args.ttl, read_secret_file(path), time.time())
    except AuthConfigError as exc:
        return fail(f"auth.secret_file: {exc}")
    except ValueError as exc:
        return fail(str(exc))
    print(token)
    return 0


# ---------------------------------------------------------------------- say


def _say(args: argparse.Namespace) -> int:
    from .client.connect import ConnectArgsError, connect_options
    from .client.session import SessionError, open_session

    try:
        connect = connect_options(args)
    except ConnectArgsError as exc:
        print(f"duplexd say: {exc}", file=sys.stderr)
        return 2
    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        print(
            "duplexd say: nothing to say: give the text, or - to read it from standard input",
            file=sys.stderr,
        )
        return 2

    progress = _Progress() if sys.stderr.isatty() else None

    async def run() -> tuple[bytes, int]:
        async with open_session(
            args.url,
            voice=args.voice,
            engine=args.engine,
            token=connect.token,
            ssl_context=connect.ssl_context,
            # a file is written as fast as the daemon synthesizes (SPEC §4.6.2); played, paced
            options={"downlink": {"paced": False}} if args.out else None,
            on_frame=progress.on_frame if progress is not None else None,
        ) as session:
            uid = await session.say(text)
            spoken = await session.receive_utterance(uid)
            return spoken.pcm, session.sample_rate_hz

    try:
        pcm, rate = trio.run(run)
    except (SessionError, OSError) as exc:
        print(f"duplexd say: {exc}", file=sys.stderr)
        return 1
    finally:
        if progress is not None:
            progress.done()
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


class _Progress:
    """`say` on a terminal: how much audio has come, on one line of stderr (twice a second)."""

    def __init__(self) -> None:
        self._samples = 0
        self._shown_at = 0.0
        self._shown = False

    def on_frame(self, frame: object, now: float) -> None:
        from .protocol.frames import Audio

        if isinstance(frame, Audio):
            self._samples += len(frame.pcm) // 2
            if now - self._shown_at >= 0.5:
                self._shown_at = now
                self._shown = True
                print(f"\r{self._samples / SAMPLE_RATE_HZ:.1f} s of audio", end="", file=sys.stderr)

    def done(self) -> None:
        if self._shown:
            print(file=sys.stderr)


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
        import sounddevice  # type: ignore[import-untyped, import-not-found, unused-ignore]

        sounddevice.play(np.frombuffer(pcm, dtype="<i2"), rate_hz, blocking=True)
        return True
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
