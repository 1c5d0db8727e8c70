"""The load: sessions that talk like an LLM-driven voice agent, and what they measure.

Every session streams utterances of mixed length token by token (`tokens_per_s`), waits for
the audio to play out, pauses for the "user's turn", and starts again. A fraction of sessions
(`interrupt_fraction`) barges in at a random moment of some utterances. All choices come from
`random.Random(seed, session index)`, so a run is reproducible up to timing.

Arrival times are taken by the SDK's reader the moment a WebSocket message is read (the
`on_frame(frame, now)` callback), on this worker's trio clock; `Recorder.on_frame` turns them
into samples on the spot. Nothing here runs in the daemon's process.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import trio

from duplexd.protocol.frames import Audio, Interrupted, ServerFrame, UtteranceDone

from .metrics import COUNT_KEYS, FRAME_S, SAMPLE_KEYS, UNDERRUN_GAP_S
from .uplink import Mic, speak_over

_TEXT = (
    "the quick answer is that we can ship it on monday if the tests stay green and nobody "
    "changes the plan again so please confirm the order number and the delivery address for "
    "your account then I will book a slot between nine and eleven tomorrow morning"
)
_WORDS = tuple(_TEXT.split(" "))
# (weight, min words, max words): short replies, sentences, and the odd long paragraph.
UTTERANCE_MIX = ((0.5, 2, 6), (0.35, 8, 16), (0.15, 20, 40))


@dataclass(frozen=True)
class LoadConfig:
    duration_s: float = 10.0
    tokens_per_s: float = 30.0
    interrupt_fraction: float = 0.3
    seed: int = 1
    start_spread_s: float = 1.0  # sessions start their first utterance within this window
    think_s: tuple[float, float] = (0.2, 0.8)  # pause between utterances (the user's turn)
    # --uplink (duplexd only; see bench.uplink): a real-time microphone per session, and the
    # interrupters barge in by voice (the clip at `uplink_clip`) instead of sending Interrupt.
    uplink: bool = False
    uplink_clip: str = ""  # .npy, 16 kHz float32: the user's speech
    uplink_noise_dbfs: float = -55.0  # room noise, RMS
    uplink_echo_db: float | None = None  # mix the received downlink back in at this gain
    uplink_echo_delay_ms: float = 50.0
    uplink_echo_room: str | None = None  # the echo's path: a room of bench/rooms.py
    uplink_echo_playout_ms: float = 40.0  # the echoing player's playout buffer
    uplink_echo_played: bool = False  # ... which reports PLAYED as the browser client does
    uplink_jitter_ms: float = 0.0  # each uplink frame this much later on average (in order)
    uplink_drift_ppm: float = 0.0  # the client's audio clock this far off the server's
    uplink_drift_speaker: str = "server"  # ... and the speaker on the server's or on it
    uplink_asr: bool = False  # leave the server's transcription on
    uplink_barge_in_mode: str = "immediate"  # vad.barge_in_mode ("soft": HELD is the barge-in)
    token: str = ""  # the daemon's `[server] token`, presented as `credentials` says
    # --burst: instead of streaming, every session sends one whole reply of `burst_chars`
    # characters at the same instant (many agents answering one event), then again every
    # `burst_every_s` (once the previous one has played out)
    burst_chars: int = 0
    burst_every_s: float = 12.0
    codec: str = "pcm"  # --codec: the audio codec (SPEC §4.6.3), "pcm" or "opus"; both ways


class Target(Protocol):
    """What a session driver needs: the duplexd SDK session, or the baseline adapter."""

    def new_utterance_id(self) -> int: ...
    async def send_text(self, utterance_id: int, text: str, *, end: bool = False) -> Any: ...
    async def interrupt(self) -> Any: ...
    async def stats(self) -> dict[str, Any]: ...
    async def drain(self) -> None: ...


Opener = Callable[[str, Callable[[ServerFrame, float], None]], AbstractAsyncContextManager[Any]]


def credentials(token: str) -> tuple[str, list[tuple[bytes, bytes]]]:
    """How a bench client presents the daemon's token: (Hello.token, extra headers of the
    WebSocket upgrade). Both ways at once: a daemon that checks Hello.token ignores the
    header, one that checks ``Authorization: Bearer`` in the upgrade ignores Hello.token
    (SPEC §6.1). The good sessions and the hostile clients of `bench.hostile` all present
    their token through this; "" presents none."""
    if not token:
        return "", []
    return token, [(b"Authorization", b"Bearer " + token.encode())]


@asynccontextmanager
async def open_ws(
    url: str,
    *,
    subprotocols: list[str],
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    connect_timeout_s: float = 10.0,
    disconnect_timeout_s: float = 2.0,
    local_address: str | None = None,
) -> AsyncIterator[Any]:
    """`trio_websocket.open_websocket_url`, with a connect timeout that holds.

    trio-websocket 0.12.2's `connect_timeout` does not: when the server accepts the TCP
    connection but never answers the upgrade (a daemon whose loop is stalled), its reader task
    keeps waiting after ConnectionTimeout and `open_websocket_url` with it. Here the reader runs
    in our nursery, which the timeout cancels. Raises `trio_websocket.ConnectionTimeout`, or
    what the connect raised (`ConnectionRejected` for an HTTP refusal, `HandshakeError`...),
    not wrapped in an exception group; so is an exception of the body. Leaving closes the
    connection (waiting at most `disconnect_timeout_s` for the closing handshake).
    `local_address` (ws:// only): connect from this address, e.g. another loopback address
    than the good sessions' 127.0.0.1."""
    from trio_websocket import ConnectionTimeout, connect_websocket_url, wrap_client_stream

    async def connect(nursery: trio.Nursery) -> Any:
        if local_address is None:
            return await connect_websocket_url(
                nursery, url, subprotocols=subprotocols, extra_headers=extra_headers
            )
        parts = urlsplit(url)
        if parts.scheme != "ws" or parts.hostname is None:
            raise ValueError(f"local_address needs a ws:// URL, not {url!r}")
        port = parts.port or 80
        stream = await trio.open_tcp_stream(parts.hostname, port, local_address=local_address)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return await wrap_client_stream(
            nursery,
            stream,
            f"{parts.hostname}:{port}",
            resource,
            subprotocols=subprotocols,
            extra_headers=extra_headers,
        )

    connecting = trio.CancelScope()
    try:
        async with trio.open_nursery() as nursery:
            with connecting:
                connecting.deadline = trio.current_time() + connect_timeout_s
                ws = await connect(nursery)
            if connecting.cancelled_caught:
                nursery.cancel_scope.cancel()
            else:
                try:
                    yield ws
                finally:
                    with trio.move_on_after(disconnect_timeout_s) as closing:
                        closing.shield = True
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # one real exception (and Cancelled): that one
        real = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
        if len(real) == 1 and isinstance(real[0], Exception):
            raise real[0] from None
        raise
    if connecting.cancelled_caught:
        raise ConnectionTimeout


@asynccontextmanager
async def open_duplexd(
    url: str,
    on_frame: Callable[[ServerFrame, float], None],
    *,
    uplink_options: dict[str, Any] | None = None,
    token: str = "",
    codec: str = "pcm",
) -> AsyncIterator[Target]:
    """`uplink_options`: open a 16 kHz uplink with these HELLO options. `codec`: the
    downlink's codec, and the uplink's when there is one (the SDK decodes and encodes Opus,
    so the measurements see and make PCM). `token`: the
    daemon's token ("" for none), presented as `credentials` says. The SDK's `open_session`,
    with the upgrade's headers in our hands and a connect timeout that holds (`open_ws`)."""
    from duplexd.client.session import session_over
    from duplexd.protocol.frames import SUBPROTOCOL, Hello

    hello_token, headers = credentials(token)
    options = dict(uplink_options or {})
    if codec != "pcm":
        options["codec"] = {"downlink": codec} | (
            {"uplink": codec} if uplink_options is not None else {}
        )
    hello = Hello(
        uplink_rate_hz=16_000 if uplink_options is not None else 0,
        token=hello_token,
        options=json.dumps(options) if options else "",
    )
    async with (
        open_ws(url, subprotocols=[SUBPROTOCOL], extra_headers=headers or None) as ws,
        session_over(ws, hello, on_frame=on_frame, timeout_s=10.0) as session,
    ):
        granted = (session.audio.opus_down, session.audio.opus_up)
        if codec == "opus" and granted != (True, uplink_options is not None):
            raise RuntimeError(f"asked for Opus, the daemon granted (downlink, uplink) {granted}")
        yield _DuplexdTarget(session)


class _DuplexdTarget:
    def __init__(self, session: Any) -> None:
        self._s = session
        self.new_utterance_id = session.new_utterance_id
        self.send_text = session.send_text
        self.interrupt = session.interrupt
        self.stats = session.stats
        self.send_audio = session.send_audio
        self.send_played = session.send_played
        self.sample_rate_hz = session.sample_rate_hz
        self.engine_device = (
            session.info.get("engines", {}).get(session.welcome.engine) or {}
        ).get("device", "")

    async def drain(self) -> None:
        """Keep the SDK's frame queue empty (everything is measured in `on_frame`)."""
        from duplexd.client.session import SessionError

        try:
            while True:
                await self._s.receive_frame()
        except SessionError:
            await trio.sleep_forever()


def tokens_of(text: str, rng: random.Random) -> list[str]:
    """Split like a BPE tokenizer would, roughly: word pieces of 2-6 characters."""
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        piece = word if i == 0 else " " + word
        while piece:
            n = rng.randint(2, 6)
            out.append(piece[:n])
            piece = piece[n:]
    return out


def make_utterance(rng: random.Random) -> str:
    r = rng.random()
    lo, hi = UTTERANCE_MIX[-1][1:]
    for weight, lo_words, hi_words in UTTERANCE_MIX:
        if r < weight:
            lo, hi = lo_words, hi_words
            break
        r -= weight
    words = [rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + rng.choice((".", "?", "!", "."))


class Recorder:
    """Per-session measurement, fed by the SDK reader's `on_frame` callback (sync, cheap)."""

    def __init__(self, out: dict[str, Any], mic: Mic | None = None) -> None:
        self.out = out
        self.mic = mic
        self.key = (os.getpid(), id(self))  # the session, among every worker's (bench.steal)
        self.active = True
        self.epoch = 0
        self.first_text: dict[int, float] = {}
        self.first_audio: dict[int, trio.Event] = {}
        self.done: dict[int, trio.Event] = {}
        self.interrupt_sent: float | None = None
        self._uid = 0
        self._t0 = 0.0
        self._prev = 0.0
        self._last_audio = -1.0

    def expect(self, uid: int) -> None:
        self.first_audio[uid] = trio.Event()
        self.done[uid] = trio.Event()

    def on_frame(self, frame: ServerFrame, now: float) -> None:
        out = self.out
        if self.mic is not None:
            self.mic.active = self.active
            self.mic.on_frame(frame, now, self.epoch)
        if isinstance(frame, Audio):
            self._last_audio = now
            uid = frame.utterance_id
            if frame.epoch != self.epoch:
                out["stale_after_interrupted"] += self.active
                return
            if frame.last and (
                self.interrupt_sent is not None
                or (self.mic is not None and self.mic.expecting_vad())
            ):
                return  # the fade-out tail sent with Interrupted: not on the grid
            if uid != self._uid:
                self._uid, self._t0 = uid, now - frame.seq * FRAME_S
                t_text = self.first_text.pop(uid, None)
                if self.active and t_text is not None and frame.seq == 0:
                    out["fal"].append(now - t_text)
                if uid in self.first_audio:
                    self.first_audio[uid].set()
            elif self.active:
                gap = now - self._prev
                out["inter_arrival"].append(abs(gap - FRAME_S))
                if gap > UNDERRUN_GAP_S:
                    # The player ran dry and rebuffers: counted as an underrun, and the grid
                    # restarts here so one underrun does not show up as jitter of every frame.
                    out["underruns"] += 1
                    out["underrun_at"].append((time.monotonic(), self.key))
                    self._t0 = now - frame.seq * FRAME_S
                out["jitter"].append(abs(now - (self._t0 + frame.seq * FRAME_S)))
            out["frames"] += self.active
            self._prev = now
            if frame.last:
                self._uid = 0
        elif isinstance(frame, UtteranceDone):
            out["utterances_done"] += self.active
            if frame.utterance_id in self.done:
                self.done[frame.utterance_id].set()
        elif isinstance(frame, Interrupted):
            self.epoch = frame.epoch
            self._uid = 0
            t = self.interrupt_sent
            if t is not None and self.active:
                out["barge_in"].append(now - t)
                out["barge_last_audio"].append(max(0.0, self._last_audio - t))
            self.interrupt_sent = None
            for ev in (*self.done.values(), *self.first_audio.values()):
                ev.set()


async def _stream(target: Target, rec: Recorder, uid: int, tokens: list[str], tps: float) -> None:
    t_first = trio.current_time()
    rec.first_text[uid] = t_first
    for i, tok in enumerate(tokens):
        await trio.sleep_until(t_first + i / tps)
        await target.send_text(uid, tok)
    await target.send_text(uid, "", end=True)


def burst_text(chars: int, rng: random.Random) -> str:
    """A reply of exactly `chars` characters (words of `_TEXT`, a full stop at the end)."""
    words: list[str] = []
    while len(" ".join(words)) < chars:
        words.append(rng.choice(_WORDS))
    return (" ".join(words)[: max(0, chars - 1)].rstrip() + ".").capitalize().ljust(chars, ".")


async def drive_bursts(
    target: Target, rec: Recorder, rng: random.Random, cfg: LoadConfig, t_start: float
) -> None:
    """Send one whole reply at `t_start` and every `burst_every_s` after, as every other
    session does at the same instants; each plays out before the next. Until cancelled."""
    k = 0
    while True:
        t_send = t_start + k * cfg.burst_every_s
        k += 1
        if trio.current_time() > t_send + cfg.burst_every_s / 2:
            continue  # the last reply played out too late for this instant: the next one
        await trio.sleep_until(t_send)
        uid = target.new_utterance_id()
        rec.out["utterances"] += rec.active
        rec.expect(uid)
        rec.first_text[uid] = trio.current_time()
        await target.send_text(uid, burst_text(cfg.burst_chars, rng), end=True)
        await rec.done[uid].wait()
        del rec.done[uid], rec.first_audio[uid]


def is_interrupter(index: int, fraction: float) -> bool:
    """Exactly round-up(`fraction` x sessions) interrupters, evenly spread, session 0 first."""
    return math.ceil((index + 1) * fraction) > math.ceil(index * fraction)


async def drive(
    target: Target, rec: Recorder, rng: random.Random, cfg: LoadConfig, interrupter: bool
) -> None:
    """Talk until cancelled."""
    await trio.sleep(rng.uniform(0.0, cfg.start_spread_s))
    while True:
        text = make_utterance(rng)
        tokens = tokens_of(text, rng)
        barge_after = rng.uniform(0.1, 2.0) if interrupter and rng.random() < 0.6 else None
        think = rng.uniform(*cfg.think_s)
        uid = target.new_utterance_id()
        rec.out["utterances"] += rec.active
        rec.expect(uid)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stream, target, rec, uid, tokens, cfg.tokens_per_s)
            if barge_after is None:
                await rec.done[uid].wait()
            else:
                await rec.first_audio[uid].wait()
                with trio.move_on_after(barge_after):
                    await rec.done[uid].wait()
                if not rec.done[uid].is_set() and rec.mic is not None:
                    await speak_over(target, rec.mic, uid, lambda: rec.active)
                elif not rec.done[uid].is_set():
                    rec.interrupt_sent = trio.current_time()
                    rec.out["interrupts"] += rec.active
                    await target.interrupt()
            nursery.cancel_scope.cancel()
        del rec.done[uid], rec.first_audio[uid]
        await trio.sleep(think)


def new_samples() -> dict[str, Any]:
    out: dict[str, Any] = {k: [] for k in SAMPLE_KEYS}
    out.update({k: 0 for k in COUNT_KEYS})
    out.update(server_stats=[], errors=[], error_kinds={}, loop_lag=[], engine_device="")
    return out


def root_error(exc: BaseException) -> BaseException:
    """The exception inside the nurseries' exception groups (the first one not Cancelled)."""
    while isinstance(exc, BaseExceptionGroup):
        real = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        exc = (real or exc.exceptions)[0]
    return exc


def error_kind(exc: BaseException) -> str:
    """What ended a session, in a word: the server's error code, or the exception's type."""
    code = getattr(exc, "code", None)
    return str(code.name) if code is not None else type(exc).__name__


async def _session(
    opener: Opener,
    url: str,
    index: int,
    cfg: LoadConfig,
    out: dict[str, Any],
    t_start: float,
    t_end: float,
) -> None:
    mic = Mic(cfg, index, out) if cfg.uplink else None
    rec = Recorder(out, mic)
    rng = random.Random(cfg.seed * 1_000_003 + index)
    opened = False
    try:
        async with opener(url, rec.on_frame) as target:
            opened = True
            out["engine_device"] = out["engine_device"] or getattr(target, "engine_device", "")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(target.drain)
                await trio.sleep_until(t_start)
                with trio.move_on_at(t_end):
                    if mic is not None:
                        nursery.start_soon(_run_mic, mic, target, t_start, t_end)
                    if cfg.burst_chars:
                        await drive_bursts(target, rec, rng, cfg, t_start)
                    else:
                        await drive(
                            target, rec, rng, cfg, is_interrupter(index, cfg.interrupt_fraction)
                        )
                rec.active = False
                if mic is not None:
                    mic.active = False
                with trio.move_on_after(10):
                    # Hang up cleanly: a close while the engine thread waits for ring space
                    # leaves that session (and the daemon's SIGTERM) stuck; see the README.
                    await target.interrupt()
                    out["server_stats"].append(await target.stats())
                nursery.cancel_scope.cancel()
    except Exception as exc:  # a failed session is a result, not a crash of the bench
        out["session_errors" if opened else "connect_failures"] += 1
        root = root_error(exc)
        kind = error_kind(root)
        out["error_kinds"][kind] = out["error_kinds"].get(kind, 0) + 1
        if len(out["errors"]) < 5:
            out["errors"].append(f"session {index}: {type(root).__name__}: {root}")


async def _run_mic(mic: Mic, target: Any, t_start: float, t_end: float) -> None:
    with trio.move_on_at(t_end):  # no uplink during the hang-up
        await mic.run(target, t_start)


async def _lag_probe(out: dict[str, Any]) -> None:
    """How late this worker's loop wakes up: a busy client would time arrivals late."""
    while True:
        t = trio.current_time()
        await trio.sleep(0.01)
        out["loop_lag"].append(trio.current_time() - t - 0.01)


async def run_sessions(
    opener: Opener,
    url: str,
    indices: list[int],
    cfg: LoadConfig,
    start_mono: float,
) -> dict[str, Any]:
    """Run sessions `indices` from `start_mono` (time.monotonic) for `cfg.duration_s`."""
    out = new_samples()
    t_start = trio.current_time() + (start_mono - time.monotonic())
    t_end = t_start + cfg.duration_s
    cpu0 = wall0 = 0.0
    async with trio.open_nursery() as nursery:
        for i in indices:
            nursery.start_soon(_session, opener, url, i, cfg, out, t_start, t_end)
        await trio.sleep_until(t_start)
        cpu0, wall0 = time.process_time(), time.monotonic()
        probe = trio.CancelScope()

        async def probe_task() -> None:
            with probe:
                await _lag_probe(out)

        nursery.start_soon(probe_task)
        await trio.sleep_until(t_end)
        out["cpu_percent"] = 100 * (time.process_time() - cpu0) / (time.monotonic() - wall0)
        probe.cancel()
    return out
