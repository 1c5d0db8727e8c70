"""The browser page on the HTTP side port: the voice chat demo and the JS client it runs.

`DemoPage.respond(request)` answers ``/`` and ``/demo/`` with the page, ``/demo/<file>`` with
the files of `duplexd/web/` (the ES module client ``duplexd.js``, its worklets), and
``/demo/config.json`` with what the page needs to open a session: the WebSocket URL (same
host name as the page, the daemon's WebSocket port, ``wss`` when TLS is on), the audio rates,
and a token, only when the operator asked for one (``[demo] issue_tokens``: a signed token of
``[demo] token_ttl_s``, minted per request; with auth on and no such token, the page asks the
user for one). Static files only, read once from the package; nothing a client sends decides
more than which of them is sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import re
import time
from importlib import resources
from typing import Final

from .auth import mint, read_secret_file
from .http import Request, Response
from .settings import Settings, auth_configured

DEMO_SUBJECT: Final = "demo-page"
_TYPES: Final = {".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8"}
# the page loads only its own files (its inline scripts by their hashes) and talks only to
# the daemon's WebSocket port
_CSP: Final = (
    "default-src 'self'; script-src 'self' {scripts}; connect-src 'self' ws: wss:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; media-src 'self' blob:"
)
_INLINE_SCRIPT_RE: Final = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S)


def _csp(files: dict[str, bytes]) -> str:
    """The policy, allowing exactly the inline scripts of the pages."""
    hashes = {
        "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"
        for name, page in files.items()
        if name.endswith(".html")
        for body in _INLINE_SCRIPT_RE.findall(page)
    }
    return _CSP.format(scripts=" ".join(sorted(hashes)))


def _load_files() -> dict[str, bytes]:
    root = resources.files("duplexd") / "web"
    files: dict[str, bytes] = {}
    if root.is_dir():
        for entry in root.iterdir():
            if entry.is_file() and not entry.name.startswith("."):
                files[entry.name] = entry.read_bytes()
    return files


class DemoPage:
    """Serves the page of `settings.demo` (see the module docstring)."""

    def __init__(self, settings: Settings, *, ws_port: int, uplink: bool) -> None:
        self._settings = settings
        self._ws_port = ws_port
        self._uplink = uplink
        self._files = _load_files() if settings.demo.page else {}
        self._csp = _csp(self._files)
        self._secret = (
            read_secret_file(settings.auth.secret_file) if settings.demo.issue_tokens else b""
        )

    @property
    def enabled(self) -> bool:
        return "index.html" in self._files

    def respond(self, request: Request) -> Response | None:
        """The page's answer to `request`, or None for a path that is not the page's."""
        if not self.enabled:
            return None
        path = request.path
        if path in ("/", "/demo", "/demo/"):
            return self._file("index.html")
        if path == "/demo/config.json":
            return Response(200, self._config(request), "application/json")
        if path.startswith("/demo/"):
            return self._file(path.removeprefix("/demo/")) or Response(404, b"no such file\n")
        return None

    def _file(self, name: str) -> Response | None:
        body = self._files.get(name)
        if body is None:
            return None
        kind = _TYPES.get(name[name.rfind(".") :]) or mimetypes.guess_type(name)[0]
        csp = (("Content-Security-Policy", self._csp),)
        return Response(200, body, kind or "application/octet-stream", csp)

    def _config(self, request: Request) -> bytes:
        host = dict(request.headers).get(b"host", b"").decode("ascii", "replace")
        name = _host_name(host) or "127.0.0.1"
        scheme = "wss" if self._settings.tls.cert else "ws"
        token: str | None = None
        if self._secret:
            token = mint(DEMO_SUBJECT, self._settings.demo.token_ttl_s, self._secret, time.time())
        config = {
            "ws_url": f"{scheme}://{name}:{self._ws_port}/v1",
            "token": token,
            "auth": auth_configured(self._settings),
            "sample_rate_hz": 48_000,
            "uplink_rate_hz": 16_000 if self._uplink else 0,
        }
        return json.dumps(config).encode()


def _host_name(host: str) -> str:
    """The name part of a Host header (``[::1]:8766`` -> ``[::1]``, ``a.b:8766`` -> ``a.b``);
    "" if it is not a plain host name or address."""
    if host.startswith("["):
        end = host.find("]")
        name = host[: end + 1] if end > 0 else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-[]:")
    return name if name and len(name) <= 255 and set(name) <= allowed else ""
