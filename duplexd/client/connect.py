"""The connection flags of `duplexd say`, `chat` and `probe`: the URL, the token, the CA.

The token: ``--token-file FILE`` (its first non-blank line) or ``--token TOKEN`` (which any
user of the machine can read with ps: a last resort), else the ``DUPLEXD_TOKEN`` environment
variable; none: no token.
``--ca PEM`` trusts a private CA for a ``wss://`` URL (a self-signed server).
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

TOKEN_ENV: Final = "DUPLEXD_TOKEN"
_TOKEN_TEXT = re.compile(r"[\x21-\x7e]+")


class ConnectArgsError(ValueError):
    """A connection flag that cannot be used; `str()` is one line naming it."""


@dataclass(frozen=True)
class ConnectOptions:
    """What `open_session` needs besides the URL."""

    token: str = ""
    ssl_context: ssl.SSLContext | None = None


def add_connection_arguments(p: argparse.ArgumentParser, default_url: str) -> None:
    p.add_argument(
        "--url", default=default_url, help="the daemon: ws://HOST:PORT/v1, or wss:// with TLS"
    )
    token = p.add_mutually_exclusive_group()
    token.add_argument(
        "--token-file",
        default="",
        metavar="FILE",
        help=f"read the token from FILE (default: the {TOKEN_ENV} environment variable)",
    )
    token.add_argument(
        "--token",
        default="",
        help=f"the token itself (other users see it in ps: prefer {TOKEN_ENV} or --token-file)",
    )
    p.add_argument(
        "--ca", default="", metavar="PEM", help="trust this CA bundle for wss:// (a private CA)"
    )


def add_voice_arguments(p: argparse.ArgumentParser) -> None:
    """--voice and --engine of `say`, `chat` and `probe`."""
    p.add_argument("--voice", default="", help="the voice (default: the daemon's default voice)")
    p.add_argument("--engine", default="", help="the engine (default: the daemon's default)")


def connect_options(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ConnectOptions:
    """The token and TLS context the flags ask for. ConnectArgsError (one line) for a URL
    that is not ws:// or wss://, an unreadable or empty token file, a token that is not
    printable ASCII, an unusable CA bundle, or --ca with a ws:// URL."""
    from .dial import session_url

    try:
        session_url(args.url)
    except ValueError as exc:
        raise ConnectArgsError(f"--url {exc}") from None
    env = os.environ if environ is None else environ
    token: str = getattr(args, "token", "")
    token_file: str = getattr(args, "token_file", "")
    ca: str = getattr(args, "ca", "")
    where = "--token"
    if token_file:
        where = f"--token-file {token_file}"
        try:
            with open(token_file, encoding="utf-8") as f:
                lines = [line.strip() for line in f.read().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            raise ConnectArgsError(f"{where}: {why}") from None
        if not lines:
            raise ConnectArgsError(f"{where}: no token in it")
        token = lines[0]
    elif not token and env.get(TOKEN_ENV):
        where, token = TOKEN_ENV, env[TOKEN_ENV].strip()
    if token and not _TOKEN_TEXT.fullmatch(token):
        raise ConnectArgsError(f"{where}: a token is printable ASCII without spaces")
    context = None
    if ca:
        if urllib.parse.urlsplit(args.url).scheme != "wss":
            raise ConnectArgsError(f"--ca {ca}: only for a wss:// URL")
        try:
            context = ssl.create_default_context(cafile=ca)
        except ssl.SSLError as exc:  # before OSError: it is one
            raise ConnectArgsError(
                f"--ca {ca}: not a PEM CA bundle ({exc.reason or exc})"
            ) from None
        except OSError as exc:
            raise ConnectArgsError(f"--ca {ca}: {exc.strerror or exc}") from None
    return ConnectOptions(token, context)
