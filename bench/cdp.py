"""A real headless Chromium, driven over the DevTools protocol (CDP): for the browser test
(tests/test_browser.py) and `bench.browser`.

`open_browser(...)` starts the system's `chromium` (Debian's package; nothing is downloaded)
with a fresh profile and the given flags, finds its DevTools port, and yields a `Page`: one
tab, spoken to over a WebSocket (trio-websocket, as the daemon's own client uses).
`Page.evaluate` runs JavaScript in the page (awaiting a promise), `Page.navigate` loads a URL,
`Page.screenshot` saves a PNG. Console messages and uncaught exceptions of the page are kept in
`Page.console` (a test asserts there are none).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
BASE_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # root in CI; the profile is a throwaway
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--mute-audio",  # the audio graph still runs (the worklets play); nothing reaches a card
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1000,1250",
    "--hide-scrollbars",
)


def chromium() -> str | None:
    """The system Chromium's path, or None."""
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


class CdpError(Exception):
    """The browser answered a command with an error, or a script threw."""


class Page:
    """One tab over CDP. Use `open_browser`."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self.console: list[str] = []

    async def _reader(self) -> None:
        while True:
            message = json.loads(await self._ws.get_message())
            if "id" in message:
                send = self._waiting.pop(message["id"], None)
                if send is not None:
                    await send.send(message)
            elif message.get("method") == "Runtime.consoleAPICalled":
                args = message["params"]["args"]
                kind = message["params"]["type"]
                self.console.append(
                    f"{kind}: " + " ".join(str(a.get("value", a.get("description"))) for a in args)
                )
            elif message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                self.console.append(f"exception: {text}")

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one CDP command; its result. Raises CdpError."""
        cid = next(self._ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[cid] = send
        await self._ws.send_message(json.dumps({"id": cid, "method": method, "params": params}))
        answer = await receive.receive()
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        """The value of `expression` in the page (a promise is awaited; JSON-able values)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"{expression[:60]}: {text}")
        return result["result"].get("value")

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def wait_for(self, expression: str, timeout_s: float, poll_s: float = 0.05) -> Any:
        """Poll `expression` until it is truthy; its value. Raises TimeoutError."""
        with trio.fail_after(timeout_s):
            while not (value := await self.evaluate(expression)):  # noqa: ASYNC110
                await trio.sleep(poll_s)
        return value

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        await trio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        await trio.Path(path).write_bytes(base64.b64decode(shot["data"]))


async def _devtools_port(profile: Path, proc: trio.Process, timeout_s: float) -> int:
    marker = trio.Path(profile / "DevToolsActivePort")
    with trio.fail_after(timeout_s):
        while not (await marker.exists()) or not (await marker.read_text()).strip():
            if proc.returncode is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode}")
            await trio.sleep(0.05)
    return int((await marker.read_text()).split()[0])


async def _page_ws_url(port: int) -> str:
    """The first tab's DevTools WebSocket URL (GET /json/list; the answer has a length)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += await stream.receive_some(65536)
    targets = json.loads(body)
    url: str = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
    return url


@asynccontextmanager
async def open_browser(
    flags: Sequence[str] = (), *, timeout_s: float = 30.0
) -> AsyncIterator[Page]:
    """A headless Chromium with `flags` (added to `BASE_FLAGS`), one blank tab as a `Page`."""
    path = chromium()
    if path is None:
        raise RuntimeError("no chromium on PATH")
    profile = Path(tempfile.mkdtemp(prefix="duplexd-chromium-"))
    argv = [path, *BASE_FLAGS, *flags, "--remote-debugging-port=0",
            f"--user-data-dir={profile}", "about:blank"]  # fmt: skip
    proc = await trio.lowlevel.open_process(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(profile)},
    )  # fmt: skip
    try:
        port = await _devtools_port(profile, proc, timeout_s)
        url = await _page_ws_url(port)
        async with (
            open_websocket_url(url, max_message_size=64 * 1024 * 1024) as ws,
            trio.open_nursery() as nursery,
        ):
            page = Page(ws)
            nursery.start_soon(page._reader)
            await page.send("Runtime.enable")
            await page.send("Page.enable")
            yield page
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            proc.terminate()
            with trio.move_on_after(10):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
