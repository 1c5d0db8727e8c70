"""A model process restarted under speaking sessions: what `systemctl restart duplexd-model`
costs them.

    python -m bench.model_restart [--sessions 10] [--engine tone|vits] [--repeat 2] [--kill]
                                  [--json PATH]

A fresh `duplexd serve-model` (CPU) and a `duplexd serve --model-socket` using it. One session
first hears the reply (`SENTENCE` said `--repeat` times) whole, unpaced: the reference. Then
`--sessions` sessions each ask for the same reply, paced; `--after` seconds after they asked
(their replies under way), the model process gets SIGTERM, and once it has exited a new one is
started (systemd's restart: stop, then start). One more session asks for a reply right after
the SIGTERM. Reported: how each reply ended (`whole`: its UtteranceDone with the reference's
audio, to within 2 % (a VITS voice is not the same audio twice); `cut`: a shorter one; or the
Error that ended its session), how long the old model process took to exit, and when the reply
asked during the restart started (its first audio, after the SIGTERM). `--kill`: SIGKILL
instead, a crash (systemd then restarts it the same way).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import trio

from duplexd.client.errors import ServerError
from duplexd.client.session import open_session
from duplexd.protocol import frames as fr

from .daemon import Server, ServerFailed, duplexd_argv, model_argv, start_server

SENTENCE: Final = "This reply is spoken while the model process restarts, to its very last word. "
BYTES_PER_S: Final = 2 * fr.SAMPLE_RATE_HZ  # s16 mono at the session's default rate


class _Restart:
    """The run's model process, restarted once (`send_signal`, then `start_once_gone`)."""

    def __init__(self, engine: str, socket_path: str, signum: int) -> None:
        self.argv = model_argv(engine, "cpu", socket_path)
        self.signum = signum
        self.old = start_server("duplexd model", self.argv)
        self.new: Server | None = None
        self.signal_at = 0.0
        self.old_exit_s = 0.0
        self.old_exit_code: int | None = None

    def send_signal(self) -> None:
        self.signal_at = time.monotonic()
        self.old.proc.send_signal(self.signum)

    def start_once_gone(self) -> None:
        """Wait for the old one to exit, then start the new one (blocking: a thread)."""
        self.old_exit_code = self.old.proc.wait(120)
        self.old_exit_s = time.monotonic() - self.signal_at
        self.new = start_server("duplexd model", self.argv)

    def stop(self) -> None:
        for server in (self.old, self.new):
            if server is not None:
                server.stop()


async def _speak(url: str, text: str, reference_bytes: int, ended: list[str]) -> None:
    """One paced session's reply, and how it ended."""
    try:
        async with open_session(url) as session:
            uid = await session.say(text)
            got = 0
            while True:
                frame = await session.receive_frame()
                if isinstance(frame, fr.Audio) and frame.utterance_id == uid:
                    got += len(frame.pcm)
                elif isinstance(frame, fr.UtteranceDone) and frame.utterance_id == uid:
                    whole = abs(got - reference_bytes) <= 0.02 * reference_bytes
                    ended.append("whole" if whole else "cut")
                    return
    except ServerError as exc:
        ended.append(f"error {exc.code.name}")


async def _heard(url: str, text: str) -> None:
    """A reply asked for during the restart: returns once its first audio comes."""
    async with open_session(url) as session:
        await session.say(text)
        while not isinstance(await session.receive_frame(), fr.Audio):
            pass


async def run(args: argparse.Namespace, url: str, model: _Restart) -> dict[str, Any]:
    text = SENTENCE * args.repeat
    async with open_session(url, options={"downlink": {"paced": False}}) as first:
        reference = await first.receive_utterance(await first.say(text))
    ended: list[str] = []
    asked_s: float | None = None
    asked_error = ""
    async with trio.open_nursery() as nursery:
        for _ in range(args.sessions):
            nursery.start_soon(_speak, url, text, len(reference.pcm), ended)
        await trio.sleep(args.after)  # (their replies under way)
        model.send_signal()
        nursery.start_soon(trio.to_thread.run_sync, model.start_once_gone)
        try:
            with trio.fail_after(120):
                await _heard(url, "Asked during the restart.")
            asked_s = time.monotonic() - model.signal_at
        except (ServerError, trio.TooSlowError) as exc:
            asked_error = str(exc) or type(exc).__name__
    counts: dict[str, int] = {}
    for how in ended:
        counts[how] = counts.get(how, 0) + 1
    return {
        "engine": args.engine,
        "sessions": args.sessions,
        "reply_s": round(len(reference.pcm) / BYTES_PER_S, 2),
        "signal": "SIGKILL" if args.kill else "SIGTERM",
        "signal_after_s": args.after,
        "replies": counts,
        "old_exit_code": model.old_exit_code,
        "old_exit_after_signal_s": round(model.old_exit_s, 2),
        "asked_first_audio_after_signal_s": None if asked_s is None else round(asked_s, 2),
        "asked_error": asked_error,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.model_restart", description=__doc__)
    p.add_argument("--sessions", type=int, default=10, help="sessions speaking (10)")
    p.add_argument("--engine", default="tone", help="the model process's engine (tone)")
    p.add_argument("--repeat", type=int, default=2, help="the reply: SENTENCE this often (2)")
    p.add_argument("--after", type=float, default=1.0, help="SIGTERM this long in (1 s)")
    p.add_argument("--kill", action="store_true", help="SIGKILL it (a crash), not SIGTERM")
    p.add_argument("--json", default="", metavar="PATH")
    args = p.parse_args(argv)
    if args.sessions < 1 or args.repeat < 1 or args.after < 0:
        print(
            "bench.model_restart: --sessions and --repeat must be positive, --after not negative",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.sock")
        try:
            model = _Restart(args.engine, path, signal.SIGKILL if args.kill else signal.SIGTERM)
        except ServerFailed as exc:
            print(f"bench.model_restart: {exc}", file=sys.stderr)
            return 1
        daemon: Server | None = None
        try:
            daemon = start_server("duplexd", duplexd_argv(args.engine, "cpu", model_socket=path))
            doc = trio.run(run, args, daemon.url, model)
        except ServerFailed as exc:
            print(f"bench.model_restart: {exc}", file=sys.stderr)
            return 1
        finally:
            if daemon is not None:
                daemon.stop()
            model.stop()
    print(json.dumps(doc, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
