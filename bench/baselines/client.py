"""Client adapter for the asyncio baseline: its JSON messages become duplexd frame objects, so
the same session driver and `Recorder` measure both servers identically."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from duplexd.protocol.frames import Audio, Interrupted, ServerFrame, UtteranceDone, UtteranceStarted


class BaselineSession:
    def __init__(self, ws: WebSocketConnection, on_frame: Callable[[ServerFrame, float], None]):
        self._ws = ws
        self._on_frame = on_frame
        self._next_uid = 1
        self._interrupted: list[trio.Event] = []
        self._stats: list[tuple[trio.Event, list[dict[str, Any]]]] = []
        self.engine_device = "cpu"

    def new_utterance_id(self) -> int:
        uid = self._next_uid
        self._next_uid += 1
        return uid

    async def send_text(self, utterance_id: int, text: str, *, end: bool = False) -> None:
        await self._ws.send_message(
            json.dumps({"t": "text", "u": utterance_id, "text": text, "end": end})
        )

    async def interrupt(self) -> None:
        event = trio.Event()
        self._interrupted.append(event)
        await self._ws.send_message('{"t": "interrupt"}')
        await event.wait()

    async def stats(self) -> dict[str, Any]:
        event, box = trio.Event(), []
        self._stats.append((event, box))
        await self._ws.send_message('{"t": "stats"}')
        await event.wait()
        return box[0]

    async def drain(self) -> None:
        """Read and dispatch every message (the adapter keeps no queue)."""
        try:
            while True:
                message = await self._ws.get_message()
                now = trio.current_time()
                self._dispatch(json.loads(message), now)
        except ConnectionClosed:
            await trio.sleep_forever()

    def _dispatch(self, m: dict[str, Any], now: float) -> None:
        kind = m["t"]
        if kind == "audio":
            pcm = base64.b64decode(m["pcm"])
            self._on_frame(Audio(m["e"], m["u"], m["s"], pcm, m["end"]), now)
        elif kind == "started":
            self._on_frame(UtteranceStarted(m["e"], m["u"]), now)
        elif kind == "done":
            self._on_frame(UtteranceDone(m["e"], m["u"], 0, 0), now)
        elif kind == "interrupted":
            self._on_frame(Interrupted(m["e"], m["u"], 0, 0, 0), now)
            if self._interrupted:
                self._interrupted.pop(0).set()
        elif kind == "stats" and self._stats:
            event, box = self._stats.pop(0)
            box.append(m)
            event.set()


@asynccontextmanager
async def open_baseline(
    url: str, on_frame: Callable[[ServerFrame, float], None]
) -> AsyncIterator[BaselineSession]:
    async with open_websocket_url(url, connect_timeout=10) as ws:
        yield BaselineSession(ws, on_frame)
