"""The baseline: a voice WebSocket server written the way most projects write one.

    python -m bench.baselines.asyncio_server [--port 0]

asyncio + wsproto (the `websockets` package is not in the venv), JSON text messages with
base64 PCM, one player task per session pacing itself with a *relative*
``await asyncio.sleep(0.02)`` after each frame, and barge-in by setting a flag that the player
checks between frames. It synthesizes the identical audio with duplexd's tone engine, cutting
the streamed text with duplexd's own `Segmenter` (same pieces, so first-audio latency compares
the servers, not segmentation policies) and synthesizing on the event loop. It logs
``{"event": "listening", "url": ...}`` on stderr like the daemon.

Messages (client -> server): ``{"t": "text", "u": id, "text": str, "end": bool}``,
``{"t": "interrupt"}``, ``{"t": "stats"}``. Server -> client: ``{"t": "audio", "e": epoch,
"u": id, "s": seq, "end": bool, "pcm": base64}``, ``{"t": "started"|"done", "e", "u"}``,
``{"t": "interrupted", "e": new epoch, "u": id}``, ``{"t": "stats", ...counters}``.

An interrupt during playback is confirmed by the player when it sees the flag (the moment its
audio really stops, as duplexd's Interrupted also means "no more audio follows"); with nothing
playing it is confirmed at once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sys
from typing import Any

import numpy as np
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)

from duplexd._downlink.segment import Segmenter
from duplexd.engines.tone import ToneEngine

FRAME_S = 0.020
RATE = 48_000
FRAME_BYTES = RATE * 20 // 1000 * 2
BUCKET_S = 25e-6
VOICE = ToneEngine().open_voice("sine")


def pcm16(text: str) -> bytes:
    audio = VOICE.synthesize(text)
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


class Utterance:
    def __init__(self, uid: int, epoch: int) -> None:
        self.uid = uid
        self.epoch = epoch
        self.pcm = bytearray()
        self.segmenter = Segmenter()
        self.ended = False
        self.changed = asyncio.Event()

    def add_text(self, text: str, end: bool) -> None:
        pieces = self.segmenter.feed(text)
        if end:
            pieces += self.segmenter.finish()
        for piece in pieces:
            self.pcm += pcm16(piece.text)
        self.ended = self.ended or end
        self.changed.set()


class Session:
    def __init__(self, send: Any) -> None:
        self.send = send
        self.epoch = 0
        self.queue: asyncio.Queue[Utterance] = asyncio.Queue()
        self.current: Utterance | None = None  # text still streaming in
        self.playing: Utterance | None = None
        self.interrupt_flag = False
        self.errors: list[float] = []
        self.frames = self.bytes = self.underruns = self.interrupts = self.done = 0

    def on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("t")
        if kind == "text":
            uid = int(msg["u"])
            cur = self.current
            if cur is None or cur.uid != uid:
                if cur is not None and uid <= cur.uid:
                    return  # text of an utterance cancelled by an interrupt
                cur = self.current = Utterance(uid, self.epoch)
                self.queue.put_nowait(cur)
            cur.add_text(str(msg.get("text", "")), bool(msg.get("end")))
        elif kind == "interrupt":
            self.interrupts += 1
            self.epoch += 1
            while not self.queue.empty():
                self.queue.get_nowait()
            if self.playing is not None:
                self.interrupt_flag = True  # the player stops at its next frame
                self.playing.changed.set()
            else:
                self.send({"t": "interrupted", "e": self.epoch, "u": 0})
        elif kind == "stats":
            self.send({"t": "stats", **self.stats()})

    async def player(self) -> None:
        while True:
            utt = await self.queue.get()
            if utt.epoch != self.epoch:
                continue
            self.playing, self.interrupt_flag = utt, False
            await self._play(utt)
            self.playing = None

    async def _play(self, utt: Utterance) -> None:
        seq = pos = 0
        t0 = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if self.interrupt_flag:
                self.send({"t": "interrupted", "e": self.epoch, "u": utt.uid})
                return
            if len(utt.pcm) - pos < FRAME_BYTES and not utt.ended:
                if seq:
                    self.underruns += 1
                utt.changed.clear()
                await utt.changed.wait()
                continue
            chunk = bytes(utt.pcm[pos : pos + FRAME_BYTES])
            pos += FRAME_BYTES
            last = utt.ended and pos >= len(utt.pcm)
            now = loop.time()
            if seq == 0:
                t0 = now
                self.send({"t": "started", "e": utt.epoch, "u": utt.uid})
            self.errors.append(now - (t0 + seq * FRAME_S))
            chunk = chunk.ljust(FRAME_BYTES, b"\0")
            pcm = base64.b64encode(chunk).decode()
            msg = {"t": "audio", "e": utt.epoch, "u": utt.uid, "s": seq, "end": last, "pcm": pcm}
            self.bytes += self.send(msg)
            self.frames += 1
            seq += 1
            if last:
                self.done += 1
                self.send({"t": "done", "e": utt.epoch, "u": utt.uid})
                return
            await asyncio.sleep(FRAME_S)

    def stats(self) -> dict[str, Any]:
        errs = np.maximum(np.asarray(self.errors, dtype=np.float64), 0.0)
        hist: dict[str, int] = {}
        summary: dict[str, Any] = {"count": int(errs.size)}
        if errs.size:
            buckets, counts = np.unique((errs / BUCKET_S).astype(np.int64), return_counts=True)
            hist = {str(b): int(c) for b, c in zip(buckets, counts, strict=True)}
            for q in (50, 95, 99):
                summary[f"p{q}"] = round(float(np.percentile(errs, q)) * 1e3, 4)
            summary["max"] = round(float(errs.max()) * 1e3, 4)
        return {
            "frames_sent": self.frames,
            "bytes_sent": self.bytes,
            "underruns": self.underruns,
            "pacing_error_ms": summary,
            "pacing_error_hist": hist,
            "pacing_error_bucket_ms": BUCKET_S * 1e3,
            "utterances_done": self.done,
            "interrupts": self.interrupts,
        }


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    ws = WSConnection(ConnectionType.SERVER)

    def send(obj: dict[str, Any]) -> int:
        data = ws.send(Message(data=json.dumps(obj)))
        writer.write(data)
        return len(data)

    session = Session(send)
    player: asyncio.Task[None] | None = None
    text_parts: list[str] = []
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Request):
                    writer.write(ws.send(AcceptConnection()))
                    player = asyncio.create_task(session.player())
                elif isinstance(event, TextMessage):
                    text_parts.append(event.data)
                    if event.message_finished:
                        session.on_message(json.loads("".join(text_parts)))
                        text_parts.clear()
                elif isinstance(event, Ping):
                    writer.write(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    writer.write(ws.send(event.response()))
                    return
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        if player is not None:
            player.cancel()
        writer.close()


async def main(host: str, port: int) -> None:
    server = await asyncio.start_server(handle, host, port)
    bound = server.sockets[0].getsockname()
    url = f"ws://{bound[0]}:{bound[1]}/"
    print(json.dumps({"event": "listening", "url": url}), file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port))
