"""The operator's flags: `duplexd serve` / `duplexd config` flags → settings, `duplexd config`.

Flags override `DUPLEXD_*` variables, which override the `--config` file, which overrides the
defaults. A flag left out does not override anything (argparse.SUPPRESS), so
``duplexd serve --config f.toml`` means exactly what the file says.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final

from .settings import ConfigError, Settings, load_settings, to_toml

# flag dest -> (section, key)
FLAG_KEYS: Final = {
    "host": ("server", "host"),
    "port": ("server", "port"),
    "http_host": ("server", "http_host"),
    "http_port": ("server", "http_port"),
    "max_sessions": ("server", "max_sessions"),
    "max_sessions_per_address": ("server", "max_sessions_per_address"),
    "drain_timeout": ("server", "drain_timeout_s"),
    "insecure_no_auth": ("server", "insecure_no_auth"),
    "auth_token_file": ("auth", "token_file"),
    "auth_secret_file": ("auth", "secret_file"),
    "tls_cert": ("tls", "cert"),
    "tls_key": ("tls", "key"),
    "engine": ("engine", "name"),
    "device": ("engine", "device"),
    "voice": ("engine", "voice"),
    "tone_compute_ms_per_char": ("engine", "tone_compute_ms_per_char"),
    "model_socket": ("engine", "model_socket"),
    "asr_model": ("asr", "model"),
    "asr_threads": ("asr", "threads"),
    "trace": ("trace", "path"),
    "trace_session": ("trace", "sessions"),
    "trace_uplink": ("trace", "uplink_dir"),
    "log_format": ("log", "format"),
    "log_level": ("log", "level"),
    "log_file": ("log", "file"),
}


def add_config_flags(p: argparse.ArgumentParser, *, model_process: bool = False) -> None:
    """The flags shared by `serve` and `config`; none has a default of its own. With
    `model_process` (`serve-model`), the flags only the daemons use are refused, one line
    each (`_DaemonsFlag`): a model process given --max-sessions would otherwise ignore it."""
    d = argparse.SUPPRESS
    add = p.add_argument

    def daemons(*names: str, **kwargs: Any) -> None:
        if model_process:
            add(*names, nargs="?", default=d, action=_DaemonsFlag, help=argparse.SUPPRESS)
        else:
            add(*names, **kwargs)

    p.add_argument(
        "--config",
        default=d,
        metavar="FILE",
        help="TOML configuration file (or DUPLEXD_CONFIG); flags and DUPLEXD_* override it",
    )
    p.add_argument("--host", default=d, help="listen address (127.0.0.1)")
    daemons("--port", type=int, default=d, help="WebSocket port (8765); 0 picks one")
    p.add_argument("--http-host", default=d, help="side port address (default: --host)")
    p.add_argument("--http-port", type=int, default=d, help="/healthz /metrics, the page; 0: off")
    p.add_argument("--token", nargs="?", default=d, action=_NoTokenFlag, help=argparse.SUPPRESS)
    p.add_argument("--workers", nargs="?", default=d, action=_WorkersFlag, help=argparse.SUPPRESS)
    daemons(
        "--max-sessions", type=_count_or_auto, default=d, help='"auto" (default) or N; 0: unlimited'
    )
    daemons("--max-sessions-per-address", type=int, default=d, help="from one remote address (32)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=d,
        metavar="S",
        help="SIGTERM: seconds utterances in progress may finish (30)",
    )
    daemons(
        "--auth-token-file",
        default=d,
        metavar="FILE",
        help="static tokens, one per line (SUBJECT:TOKEN); a token is never a flag: "
        "this file, or DUPLEXD_SERVER__TOKEN",
    )
    daemons(
        "--auth-secret-file",
        default=d,
        metavar="FILE",
        help="the secret that signs short-lived tokens (duplexd token)",
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=d,
        help="listen on a non-loopback address with no auth configured",
    )
    daemons("--tls-cert", default=d, metavar="PEM", help="serve wss://: certificate chain")
    daemons("--tls-key", default=d, metavar="PEM", help="serve wss://: its private key")
    p.add_argument("--engine", default=d, help="vits (default), tone, or a plugin's")
    p.add_argument("--device", default=d, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--voice", default=d, help="voice to preload and use by default")
    p.add_argument("--tone-compute-ms-per-char", type=float, default=d, help=argparse.SUPPRESS)
    p.add_argument(
        "--model-socket",
        default=d,
        metavar="PATH",
        help="serve: use the model process on this Unix socket (duplexd serve-model);"
        " serve-model: listen here",
    )
    daemons(
        "--asr-model",
        default=d,
        metavar="DIR",
        help="faster-whisper model directory (default: the bundled Whisper tiny.en)",
    )
    daemons(
        "--asr-threads",
        type=int,
        default=d,
        help="CPU threads of the ASR model (0, default: 1 on 2 CPUs, else 2)",
    )
    daemons(
        "--trace",
        default=d,
        metavar="PATH",
        help="write every frame header (not audio) of the traced session(s) here, JSON lines",
    )
    daemons(
        "--trace-session",
        default=d,
        metavar="WHICH",
        help="which sessions --trace records: first (default), all, or N (the N-th session)",
    )
    daemons(
        "--trace-uplink",
        default=d,
        metavar="DIR",
        help="record the traced sessions' uplink inputs here, a file each (python -m bench.replay)",
    )
    p.add_argument(
        "--log-format", default=d, choices=["json", "text"], help="json (default) or text"
    )
    p.add_argument("--log-level", default=d, help="debug, info (default), warning, error")
    p.add_argument("--log-file", default=d, help="log here instead of stderr (SIGHUP reopens)")


def _count_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected "auto" or a number, got {text!r}') from None


class _DaemonsFlag(argparse.Action):
    """A daemon's flag given to `serve-model`: one line saying so, exit status 2."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        parser.exit(
            2,
            f"{parser.prog}: {self.option_strings[0]} is for the daemons (duplexd serve), not"
            " the model process: it takes --config, --engine, --device, --voice,"
            " --model-socket, --host/--http-host, --http-port, --drain-timeout,"
            " --insecure-no-auth and --log-*\n",
        )


class _NoTokenFlag(argparse.Action):
    """`--token` is gone from the server's flags: a token on the command line is visible to
    every user (ps, /proc/PID/cmdline). One line saying what to do instead, exit status 2."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        parser.exit(
            2,
            f"{parser.prog}: --token is not a flag (anyone can read a command line): set"
            " DUPLEXD_SERVER__TOKEN in the environment, or [auth] token_file\n",
        )


class _WorkersFlag(argparse.Action):
    """`--workers N` (as gunicorn or uvicorn take it): the workers of one port are systemd's
    to run, restart and drain (deploy/duplexd-workers.socket), not a supervisor of ours. One
    line saying how, exit status 2."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        parser.exit(
            2,
            f"{parser.prog}: --workers is not a flag: systemd runs the workers of one port"
            " (it restarts a dead one, drains each on stop): sudo systemctl enable --now"
            " duplexd-workers.socket duplexd-workers-ready.socket duplexd-worker@9091"
            " duplexd-worker@9092"
            ' (README, "Workers")\n',
        )


def _environ() -> dict[str, str]:
    env = dict(os.environ)
    if "LOG_LEVEL" in env and "DUPLEXD_LOG__LEVEL" not in env:  # the older variable
        env["DUPLEXD_LOG__LEVEL"] = env["LOG_LEVEL"].lower()
    if "DUPLEXD_ASR_MODEL" in env:  # the older variable, before [asr] was a section
        env.setdefault("DUPLEXD_ASR__MODEL", env.pop("DUPLEXD_ASR_MODEL"))
    return env


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for dest, (section, key) in FLAG_KEYS.items():
        if hasattr(args, dest):
            out.setdefault(section, {})[key] = getattr(args, dest)
    return out


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Settings:
    env = _environ() if environ is None else environ
    path = getattr(args, "config", None) or env.get("DUPLEXD_CONFIG") or None
    return load_settings(path, environ=env, overrides=_overrides(args))


def config_command(
    args: argparse.Namespace, preflight: Callable[[Settings], list[str]] | None = None
) -> int:
    """`duplexd config --print`: the effective configuration as TOML; exit 2 if it is bad.
    `--check` also asks `preflight` what `serve` would fail on (one line per problem; the CLI
    passes `duplexd._server.preflight.startup_problems`)."""
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"duplexd: config: {exc}", file=sys.stderr)
        return 2
    if args.print or not args.check:
        sys.stdout.write(to_toml(settings, show_secrets=args.show_secrets))
    if args.check and preflight is not None:
        problems = preflight(settings)
        for line in problems:
            print(f"duplexd: config: {line}", file=sys.stderr)
        return 2 if problems else 0
    return 0
