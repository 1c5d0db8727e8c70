"""Hostile clients for `python -m bench --attack`: each repeats one attack until told to stop.

The attacks are the findings of the issue "Safe on a network" (a hostile client against the
tone engine on a 2-core box); `ATTACKS` names them, with the issue's item number. One attacker
is one process (`attacker_process`, a trio loop) running one kind: it counts what it sent and
how the daemon answered (`Tally`), and its own CPU time, so the attackers' CPU is accounted
apart from the good sessions' and the daemon's.

Two shapes of attacker:

- floods (every kind but the three below): one connection at a time. Send the attack, then
  read until the daemon answers it: the sentinel sent after it (a Ping whose Pong comes only
  once the daemon has read the whole message; the giant text's UtteranceStarted), an Error, a
  close, or nothing within `answer_timeout_s`. Repeat on the same session while the daemon
  keeps it; reconnect once it closes it. `auth` opens one connection per guess: its answer is
  the refused upgrade, the Error after the Hello, or a Welcome. `rate_per_s` caps the attacks
  a second (0: each as soon as the last was answered).
- holds (`hello-idle`, `silent`, `slowloris`): keep `connections` connections open at once;
  each one the daemon closes is counted, with how long it was held, and replaced.

The text attacks end with an Interrupt and the sentinel Ping in the same message: the daemon
reads (and segments) every chunk before it reaches them, so the chunks cost what they cost, the
utterance is dropped, and the next attack starts a new one on the same session. The hostile
clients of items 1-6 present the daemon's token (an authenticated client misbehaving); the
auth guesser presents a wrong one per connection; both through `bench.load.credentials`.
Each attacker process connects from `source_address` if set (`bench.attack` gives each its
own loopback address, so per-address defences tell them from the good sessions).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from typing import Any
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, ConnectionRejected

from duplexd.protocol.codec import encode, iter_frames
from duplexd.protocol.frames import (
    SUBPROTOCOL,
    ErrorCode,
    FrameType,
    GetStats,
    Hello,
    Interrupt,
    Ping,
    Text,
)
from duplexd.protocol.jsonmode import JSON_SUBPROTOCOL

from .load import credentials, open_ws, root_error

CONNECT_TIMEOUT_S = 10.0
DISCONNECT_TIMEOUT_S = 1.0  # our own closing handshake, when we leave a connection
CLOSE_WAIT_S = 2.0  # after an Error: how long the daemon gets to close
RECONNECT_S = 0.05  # floods: after a failed connect or a closed session, before the next
HOLD_RETRY_S = 1.0  # holds: after a failed connect (a refused slot does not hammer the port)


@dataclass(frozen=True)
class Attack:
    name: str
    item: int  # the numbered attack
    what: str
    holds: bool = False  # keeps connections open rather than repeating a message


ATTACKS: dict[str, Attack] = {
    a.name: a
    for a in (
        Attack("spaces", 1, 'TEXT "a" + 8,000 one-space chunks in one 88 KB message'),
        Attack("spaces-max", 1, 'TEXT "a" + 32,767 one-space chunks in one 360 KB message'),
        Attack("cjk", 2, "10,922 TEXT chunks of U+3002 in one message"),
        Attack("giant", 3, 'TEXT "a" x 32,768 (no space), END: one synthesis piece'),
        Attack("empty-text", 4, "100,000 empty TEXT chunks in one 977 KiB message"),
        Attack("get-stats", 4, "170,000 GET_STATS in one message"),
        Attack("pings", 4, "100,000 PINGs (two messages, the 1 MiB message limit)"),
        Attack("hello-idle", 5, "sessions that send HELLO and nothing else", holds=True),
        Attack("silent", 5, "upgraded WebSockets that never send a byte", holds=True),
        Attack("json-nest", 6, 'JSON text mode (duplexd.v1.json): "[" x 100,000'),
        Attack("slowloris", 7, "TCP: the HTTP upgrade, one byte a second", holds=True),
        Attack("auth", 8, "a wrong token, one guess per connection"),
    )
}


@dataclass(frozen=True)
class AttackConfig:
    token: str = ""  # the daemon's token, for the attackers that hold a session
    rate_per_s: float = 0.0  # floods, per attacker: at most this many attacks a second (0: no cap)
    connections: int = 100  # holds, per attacker: connections kept open at once
    answer_timeout_s: float = 30.0  # floods: no answer within this is "no answer"
    slowloris_byte_s: float = 1.0  # slowloris: one byte of the request this often
    nice: int = 0  # the attacker processes' niceness (os.nice)
    source_address: str | None = None  # connect from this address (None: the system's choice)


@dataclass
class Tally:
    """What one attacker did and how the daemon answered (sent back to the parent as a dict)."""

    attack: str
    sent: int = 0  # floods: attacks sent; holds: connections opened
    bytes_sent: int = 0
    answers: dict[str, int] = field(default_factory=dict)  # how each attack / held connection ended
    answer_s: list[float] = field(default_factory=list)  # floods: send -> answer; holds: time held
    connects: dict[str, int] = field(default_factory=dict)  # failed connects and handshakes
    open_now: int = 0  # holds: connections open now
    open_max: int = 0
    held_at_end: int = 0  # holds: still open when the attacker stopped
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def answered(self, label: str, seconds: float | None) -> None:
        """Count how an attack (a held connection) ended; `seconds`: after how long (None: not
        an answer of the daemon's, e.g. our own client failing)."""
        self.answers[label] = self.answers.get(label, 0) + 1
        if seconds is not None:
            self.answer_s.append(seconds)

    def connect_failed(self, label: str) -> None:
        self.connects[label] = self.connects.get(label, 0) + 1

    def opened(self) -> None:
        self.sent += 1
        self.open_now += 1
        self.open_max = max(self.open_max, self.open_now)


# ------------------------------------------------------------------------------ the daemon's side


Event = tuple[str, int | str]  # ("pong", nonce), ("error", "MALFORMED"), ("welcome", 0)...


def events(message: bytes | str) -> list[Event]:
    """The frames of one message from the daemon that an attacker waits for; the rest (audio,
    stats...) are walked past without being decoded. Text messages are the JSON mode's."""
    if isinstance(message, str):
        try:
            obj = json.loads(message)
        except ValueError:
            return [("not json", 0)]
        kind = str(obj.get("type", "")) if isinstance(obj, dict) else ""
        if kind == "error":
            return [("error", str(obj.get("code", "?")))]
        if kind == "pong":
            return [("pong", int(obj.get("nonce", 0)))]
        return [(kind, int(obj.get("utterance_id", 0)))]
    out: list[Event] = []
    for raw in iter_frames(message):
        if raw.type == FrameType.ERROR:
            code = int.from_bytes(raw.body[:2], "little")
            name = ErrorCode(code).name if code in ErrorCode._value2member_map_ else str(code)
            out.append(("error", name))
        elif raw.type == FrameType.PONG:
            out.append(("pong", int.from_bytes(raw.body[:8], "little")))
        elif raw.type == FrameType.UTTERANCE_STARTED:
            out.append(("utterance_started", int.from_bytes(raw.body[2:6], "little")))
        elif raw.type == FrameType.WELCOME:
            out.append(("welcome", 0))
    return out


def _close_label(exc: ConnectionClosed) -> str:
    code = exc.reason.code if exc.reason is not None else None
    return f"close {code}"


async def _after_error(ws: Any, label: str) -> str:
    """The daemon sent an Error: wait for its close, and say how it ended."""
    with trio.move_on_after(CLOSE_WAIT_S):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as exc:
            return f"{label}, {_close_label(exc)}"
    return f"{label}, not closed in {CLOSE_WAIT_S:g} s"


async def _until(ws: Any, want: Event) -> str:
    """Read until `want` arrives ("ok"), an Error or a close (how it ended)."""
    try:
        while True:
            for ev in events(await ws.get_message()):
                if ev == want:
                    return "ok"
                if ev[0] == "error":
                    return await _after_error(ws, f"Error {ev[1]}")
    except ConnectionClosed as exc:
        return _close_label(exc)


async def _read_until_closed(ws: Any) -> str:
    """A held connection: read (and drop) everything until the daemon ends it."""
    return await _until(ws, ("never", -1))


# ------------------------------------------------------------------------------ the attacks


@dataclass(frozen=True)
class Step:
    """Messages to send, and the event that answers them (counted as `ok`)."""

    messages: tuple[bytes | str, ...]
    want: Event
    ok: str = "answered"


def _text_flood(uid: int, nonce: int, chunks: bytes) -> list[Step]:
    tail = encode(Interrupt()) + encode(Ping(nonce=nonce))
    return [Step((chunks + tail,), ("pong", nonce))]


def plan(name: str, uid: int, nonce: int) -> list[Step]:
    """The steps of one attack of kind `name` on an open session (the floods but `auth`): the
    first is the attack (timed and counted), the others put the session back to rights."""

    def text(t: str, *, end: bool = False) -> bytes:
        return encode(Text(utterance_id=uid, text=t, end=end))

    if name == "spaces":
        return _text_flood(uid, nonce, text("a") + text(" ") * 8_000)
    if name == "spaces-max":
        return _text_flood(uid, nonce, text("a") + text(" ") * 32_767)
    if name == "cjk":
        return _text_flood(uid, nonce, text("\u3002") * 10_922)
    if name == "empty-text":
        return _text_flood(uid, nonce, text("") * 100_000)
    if name == "giant":
        stop = encode(Interrupt()) + encode(Ping(nonce=nonce))
        return [
            Step((text("a" * 32_768, end=True),), ("utterance_started", uid), "played"),
            Step((stop,), ("pong", nonce)),
        ]
    if name == "get-stats":
        return [Step((encode(GetStats()) * 170_000 + encode(Ping(nonce=nonce)),), ("pong", nonce))]
    if name == "pings":
        bulk = encode(Ping(nonce=0))
        return [Step((bulk * 50_000, bulk * 49_999 + encode(Ping(nonce=nonce))), ("pong", nonce))]
    if name == "json-nest":
        ping = json.dumps({"type": "ping", "nonce": nonce})
        return [Step(("[" * 100_000, ping), ("pong", nonce))]
    raise ValueError(f"no flood plan for {name!r}")


def _hello(name: str, token: str) -> bytes | str:
    """The Hello of a session attacker (the JSON mode's for `json-nest`)."""
    if name == "json-nest":
        return json.dumps({"type": "hello", "token": token})
    return encode(Hello(token=token))


async def _run_step(ws: Any, step: Step, tally: Tally) -> str:
    try:
        for m in step.messages:
            await ws.send_message(m)
            tally.bytes_sent += len(m)
    except ConnectionClosed as exc:
        return f"{_close_label(exc)} (while sending)"
    result = await _until(ws, step.want)
    return step.ok if result == "ok" else result


class _Pace:
    """At most `rate_per_s` attacks a second (0: no cap)."""

    def __init__(self, rate_per_s: float) -> None:
        self._period = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if self._period:
            await trio.sleep_until(self._next)
            self._next = max(self._next, trio.current_time()) + self._period


def _connect(
    url: str, subprotocol: str, headers: list[tuple[bytes, bytes]], cfg: AttackConfig
) -> Any:
    return open_ws(
        url,
        subprotocols=[subprotocol],
        extra_headers=headers or None,
        connect_timeout_s=CONNECT_TIMEOUT_S,
        disconnect_timeout_s=DISCONNECT_TIMEOUT_S,
        local_address=cfg.source_address,
    )


def _connect_error(exc: Exception) -> str:
    root = root_error(exc)
    if isinstance(root, ConnectionRejected):
        return f"HTTP {root.status_code}"
    return type(root).__name__


async def _flood(attack: Attack, url: str, cfg: AttackConfig, tally: Tally) -> None:
    pace = _Pace(cfg.rate_per_s)
    subprotocol = JSON_SUBPROTOCOL if attack.name == "json-nest" else SUBPROTOCOL
    hello_token, headers = credentials(cfg.token)
    hello = Step((_hello(attack.name, hello_token),), ("welcome", 0), "accepted")
    while True:
        stage = "connect"
        try:
            async with _connect(url, subprotocol, headers, cfg) as ws:
                stage = "handshake"
                shook = f"no Welcome in {CONNECT_TIMEOUT_S:g} s"
                with trio.move_on_after(CONNECT_TIMEOUT_S):
                    shook = await _run_step(ws, hello, tally)
                if shook != "accepted":
                    tally.connect_failed(f"handshake: {shook}")
                    await trio.sleep(RECONNECT_S)
                    continue
                stage = "attack"
                await _attacks_on(ws, attack, cfg, tally, pace)
                stage = "leave"  # our closing handshake may time out: the attack was counted
        except Exception as exc:  # a failed connect or a broken session: counted, then again
            if stage == "attack":
                tally.answered(f"client: {_connect_error(exc)}", None)
            elif stage != "leave":
                tally.connect_failed(f"{stage}: {_connect_error(exc)}")
            await trio.sleep(RECONNECT_S)


async def _guess(url: str, cfg: AttackConfig, tally: Tally) -> None:
    """`auth`: one wrong token per connection, presented as `credentials` says. The daemon's
    answer: an HTTP refusal of the upgrade (a daemon that checks the token there: 401, or 429
    once it limits the address's failures), or an Error after the Hello (one that checks
    Hello.token); "accepted" if it let the guess in."""
    pace = _Pace(cfg.rate_per_s)
    while True:
        await pace.wait()
        hello_token, headers = credentials(secrets.token_hex(8))
        hello = Step((encode(Hello(token=hello_token)),), ("welcome", 0), "accepted")
        t0 = trio.current_time()
        tally.sent += 1
        label, took = f"no answer in {cfg.answer_timeout_s:g} s", cfg.answer_timeout_s
        answered = False
        try:
            with trio.move_on_after(cfg.answer_timeout_s):
                async with _connect(url, SUBPROTOCOL, headers, cfg) as ws:
                    label = await _run_step(ws, hello, tally)
                    took, answered = trio.current_time() - t0, True
        except Exception as exc:  # the upgrade refused (or the connect failed): the answer
            if not answered:
                label, took = _connect_error(exc), trio.current_time() - t0
        tally.answered(label, took)
        if not answered:
            await trio.sleep(RECONNECT_S)


async def _attack(ws: Any, steps: list[Step], cfg: AttackConfig, tally: Tally) -> str:
    """Run one attack's steps; count how the daemon answered the first (and how long it
    took); returns that label."""
    t0 = trio.current_time()
    tally.sent += 1
    label = f"no answer in {cfg.answer_timeout_s:g} s"
    took = cfg.answer_timeout_s
    with trio.move_on_after(cfg.answer_timeout_s):
        label = await _run_step(ws, steps[0], tally)
        took = trio.current_time() - t0
        for step in steps[1:]:
            if label != steps[0].ok:
                break
            after = await _run_step(ws, step, tally)
            if after != step.ok:
                label = f"{label}, then {after}"
    tally.answered(label, took)
    return label


async def _attacks_on(
    ws: Any, attack: Attack, cfg: AttackConfig, tally: Tally, pace: _Pace
) -> None:
    """Repeat the attack on one open session until the daemon ends it or stops answering."""
    uid = 0
    while True:
        await pace.wait()
        uid += 1
        steps = plan(attack.name, uid, nonce=uid)
        if await _attack(ws, steps, cfg, tally) != steps[0].ok:
            return  # closed, or not answering: a fresh connection


# ------------------------------------------------------------------------------ holds


async def _hold_ws(attack: Attack, url: str, cfg: AttackConfig, tally: Tally) -> None:
    """One slot of `hello-idle` / `silent`: a connection kept open, replaced when closed."""
    hello_token, headers = credentials(cfg.token)
    while True:
        opened = False
        try:
            async with _connect(url, SUBPROTOCOL, headers, cfg) as ws:
                opened = True
                tally.opened()
                t0 = trio.current_time()
                try:
                    if attack.name == "hello-idle":
                        hello = encode(Hello(token=hello_token))
                        await ws.send_message(hello)
                        tally.bytes_sent += len(hello)
                    label = await _read_until_closed(ws)
                finally:
                    tally.open_now -= 1
                tally.answered(label, trio.current_time() - t0)
        except Exception as exc:
            if opened:
                tally.answered(f"client: {_connect_error(exc)}", None)
            else:
                tally.connect_failed(_connect_error(exc))
                await trio.sleep(HOLD_RETRY_S)
        await trio.sleep(RECONNECT_S)


SLOW_REQUEST = (
    b"GET /v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: duplexd.v1\r\n"
)  # never the empty line that would end it: then padding headers, forever


def _slow_bytes() -> Any:
    yield from (SLOW_REQUEST[i : i + 1] for i in range(len(SLOW_REQUEST)))
    n = 0
    while True:
        yield from (bytes([b]) for b in f"X-Pad-{n}: a\r\n".encode())
        n += 1


async def _slowloris(url: str, cfg: AttackConfig, tally: Tally) -> None:
    """One slot of `slowloris`: a TCP connection that never finishes its upgrade request."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    while True:
        try:
            stream = await trio.open_tcp_stream(host, port, local_address=cfg.source_address)
        except OSError as exc:
            tally.connect_failed(type(exc).__name__)
            await trio.sleep(HOLD_RETRY_S)
            continue
        tally.opened()
        t0 = trio.current_time()
        ended: list[str] = []
        try:
            async with stream, trio.open_nursery() as nursery:
                nursery.start_soon(_slow_read, stream, ended, nursery.cancel_scope)
                try:
                    for byte in _slow_bytes():
                        await stream.send_all(byte)
                        tally.bytes_sent += 1
                        await trio.sleep(cfg.slowloris_byte_s)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    ended.append("closed (send failed)")
                nursery.cancel_scope.cancel()
        finally:
            tally.open_now -= 1
        tally.answered(ended[0] if ended else "closed", trio.current_time() - t0)
        await trio.sleep(RECONNECT_S)


async def _slow_read(stream: trio.SocketStream, ended: list[str], scope: trio.CancelScope) -> None:
    """Whatever the daemon answers a slowloris connection, until it closes it."""
    data = b""
    try:
        while chunk := await stream.receive_some(4096):
            data += chunk
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        ended.append("reset")
    status = data.split(b"\r\n", 1)[0].decode("latin-1")
    ended.append(f"answered {status!r}, closed" if status else "closed")
    scope.cancel()


# ------------------------------------------------------------------------------ the process


async def run_attacker(name: str, url: str, cfg: AttackConfig, stop: MpEvent) -> Tally:
    """Run attack `name` against `url` until `stop` is set; what it did."""
    attack = ATTACKS[name]
    tally = Tally(name)
    cpu0, wall0 = time.process_time(), time.monotonic()
    async with trio.open_nursery() as nursery:
        if attack.holds:
            for _ in range(cfg.connections):
                if name == "slowloris":
                    nursery.start_soon(_slowloris, url, cfg, tally)
                else:
                    nursery.start_soon(_hold_ws, attack, url, cfg, tally)
        elif name == "auth":
            nursery.start_soon(_guess, url, cfg, tally)
        else:
            nursery.start_soon(_flood, attack, url, cfg, tally)
        await trio.to_thread.run_sync(stop.wait, abandon_on_cancel=True)
        tally.held_at_end = tally.open_now
        nursery.cancel_scope.cancel()
    tally.cpu_s = time.process_time() - cpu0
    tally.wall_s = time.monotonic() - wall0
    return tally


def attacker_process(
    conn: Connection, name: str, url: str, cfg: AttackConfig, stop: MpEvent
) -> None:
    """The body of one attacker process: its `Tally` as a dict, or {"fatal": why}."""
    try:
        if cfg.nice:
            os.nice(cfg.nice)
        tally = trio.run(run_attacker, name, url, cfg, stop)
    except BaseException as exc:  # report, then exit: the parent must not wait forever
        conn.send({"attack": name, "fatal": f"{type(exc).__name__}: {exc}"})
        raise
    conn.send(asdict(tally))
    conn.close()
