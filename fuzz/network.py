"""`python -m fuzz.network --seconds 120 --seed S`: fuzz a real daemon over the network.

A tone-engine daemon process (`fuzz.daemon`) with small limits and a 1 s hello timeout; many
concurrent raw WebSocket connections (`fuzz.wsclient`), each playing one random case:

    valid            a Hello and a legal session, frames grouped into messages, some messages
                     fragmented; then a Ping (the session must still answer) and a close
    valid_then_garbage  the same, then random bytes, a mutated frame or a huge length prefix
    mutated          a legal session with each frame mutated (gen.mutate) at random
    random_frames    Hellos and client frames of any field values (illegal ones too)
    garbage_first    random bytes instead of a Hello
    text_message     a WebSocket text message, early or late
    huge_prefix      a frame whose length prefix is past the limit, up to 0xFFFFFFFF
    split            a frame split across two messages
    no_hello         nothing, or empty messages only: the hello timeout must end it
    close_mid_frame  half of a WebSocket frame, then the TCP socket closes (FIN or RST)
    oversize         one message over the WebSocket message limit (1 MiB), rarely
    http_garbage     bytes that are not an HTTP upgrade, rarely

Every outcome is classified. Expected: `error:<CODE>`, an Error frame with a documented code
(not INTERNAL) as the last frame and the close code of SPEC §8, and the code `fuzz.oracle`
predicts from the bytes sent; `clean_close` (no error predicted: the session answered a Ping
and echoed our close 1000); `vanished` (we dropped the socket); `transport:1009` (a message
over trio-websocket's 1 MiB limit: closed 1009 without an Error; the document does not
mention that limit); `http_closed` (garbage instead of an upgrade: the daemon hung up);
`uncertain:<CODE or none>` where the prediction depends on timing (a queue-limit
LIMIT_EXCEEDED: utterances may have finished meanwhile; text after uplink audio that is not
silence: a VAD barge-in) and the daemon answered otherwise, with a documented code and its
close code, or by answering a Ping and our close.
UNEXPECTED: INTERNAL, another error than predicted, an Error where none was due or none where
one was, a close without an Error, a wrong close code, frames after the Error, malformed server
output, no answer within the timeout (a hang), a failed connect, a traceback or an `exc`, error
or critical record in the daemon's log, the daemon dying, a failed session of the good client
that runs one whole session every second throughout.

Prints a summary JSON (inputs tried, outcomes by class, unexpected and examples of them, each
with the case seed: `--replay SEED` runs that case alone and prints what was sent and got).
Exit status 0 if nothing was unexpected.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from duplexd.client.session import open_session
from duplexd.protocol import frames as fr
from duplexd.protocol.codec import encode as _encode

from . import gen, known_bugs
from .daemon import DaemonProcess, start_daemon
from .oracle import Limits, Oracle
from .wsclient import HandshakeFailed, RawClient

DESCRIPTION = "fuzz a real duplexd daemon over the network"
LIMITS = Limits(max_frame_bytes=8192, max_text_bytes=256, max_queued_utterances=4)
HELLO_TIMEOUT_S = 1.0
DAEMON_ENV = {
    "DUPLEXD_LIMITS__MAX_FRAME_BYTES": str(LIMITS.max_frame_bytes),
    "DUPLEXD_LIMITS__MAX_TEXT_BYTES": str(LIMITS.max_text_bytes),
    "DUPLEXD_LIMITS__MAX_QUEUED_UTTERANCES": str(LIMITS.max_queued_utterances),
    "DUPLEXD_LIMITS__HELLO_TIMEOUT_S": str(HELLO_TIMEOUT_S),
}
TONE = {"tone": ("sine", "low", "high")}  # engine -> voices, the default first
ANSWER_TIMEOUT_S = 10.0  # the daemon must answer (Error, Pong, close) within this
UNCERTAIN_WAIT_S = 2.0  # a timing-dependent error: how long to wait for it before a Ping
WS_MESSAGE_LIMIT = 1 << 20  # trio-websocket's max_message_size in duplexd._server.server
GOOD_CLIENT_EVERY_S = 1.0

End = Literal["close", "ping", "wait", "vanish"]


def encode(frame: fr.Frame) -> bytes:
    """Any frame, also one over the frame size limit (the daemon must refuse it)."""
    return _encode(frame, max_frame_bytes=1 << 32)


@dataclass
class Step:
    kind: Literal["binary", "text", "partial"]
    data: bytes | str
    fragments: int = 1
    frames: int = 0  # protocol frames built into it
    cut: float = 0.5  # partial: the share of the WebSocket frame's bytes sent


@dataclass
class Case:
    family: str
    seed: int
    steps: list[Step] = field(default_factory=list)
    end: End = "ping"
    reset: bool = False  # vanish with an RST instead of a FIN
    http: bytes = b""  # http_garbage: sent instead of an upgrade


# ---------------------------------------------------------------------------- making cases


def legal_frames(rng: random.Random, n: int, *, uplink: bool) -> list[fr.ClientFrame]:
    """A legal sequence of `n` frames for an open session."""
    out: list[fr.ClientFrame] = []
    next_id, open_id, seq = rng.randint(1, 5), 0, 0
    for _ in range(n):
        r = rng.random()
        if r < 0.5:
            if not open_id:
                open_id, next_id = next_id, next_id + rng.randint(1, 3)
            text = "x" * rng.randint(100, 300) if rng.random() < 0.05 else gen.text(rng)
            end = rng.random() < 0.6
            out.append(fr.Text(open_id, text, end))
            open_id = 0 if end else open_id
        elif r < 0.62:
            out.append(fr.Interrupt())
            open_id = 0
        elif r < 0.74:
            out.append(rng.choice((fr.Pause(), fr.Resume())))
        elif r < 0.86:
            out.append(fr.Ping(rng.getrandbits(64)))
        elif r < 0.9:
            out.append(fr.GetStats())
        elif uplink:
            out.append(fr.AudioUp(seq, bytes(640)))
            seq += 1
    return out


def pack(rng: random.Random, blobs: list[bytes], *, fragments: bool = True) -> list[Step]:
    """Group encoded frames into messages of 1..4 frames; some messages fragmented, some
    empty messages in between."""
    steps, i = [], 0
    while i < len(blobs):
        k = rng.randint(1, 4)
        frag = rng.randint(2, 4) if fragments and rng.random() < 0.15 else 1
        steps.append(Step("binary", b"".join(blobs[i : i + k]), frag, frames=len(blobs[i : i + k])))
        i += k
        if rng.random() < 0.05:
            steps.append(Step("binary", b""))
    return steps


def _hello(rng: random.Random, *, uplink: bool = False) -> fr.Hello:
    h = gen.hello(rng, valid=1.0)
    return h if uplink or not h.uplink_rate_hz else fr.Hello(engine=h.engine, voice=h.voice)


def _session(rng: random.Random, n: int) -> tuple[list[bytes], int]:
    uplink = rng.random() < 0.2
    hello = _hello(rng, uplink=uplink)
    frames = legal_frames(rng, n, uplink=bool(hello.uplink_rate_hz))
    return [encode(hello), *map(encode, frames)], 1 + len(frames)


def _garbage(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.4:
        return rng.randbytes(rng.randint(1, 64))
    if r < 0.8:
        return gen.mutate(encode(gen.client_frame(rng, next_id=1)), rng)
    return _huge_prefix(rng)


def _huge_prefix(rng: random.Random) -> bytes:
    length = rng.choice(
        (LIMITS.max_frame_bytes - 3, LIMITS.max_frame_bytes, 65533, 65536, 0xFFFF_FFFF)
    )
    length = length if rng.random() < 0.7 else rng.randint(LIMITS.max_frame_bytes - 3, 2**32 - 1)
    return struct.pack("<IBB", length, rng.choice((2, 7, 0x41)), 0) + rng.randbytes(
        rng.randint(0, 32)
    )


def _family_valid(c: Case, rng: random.Random) -> None:
    blobs, _ = _session(rng, rng.randint(0, 12))
    c.steps = pack(rng, blobs)
    c.end = rng.choice(("ping", "ping", "close", "vanish"))


def _family_valid_then_garbage(c: Case, rng: random.Random) -> None:
    blobs, _ = _session(rng, rng.randint(0, 6))
    c.steps = [*pack(rng, blobs), Step("binary", _garbage(rng))]
    c.end = "wait"


def _family_mutated(c: Case, rng: random.Random) -> None:
    blobs, _ = _session(rng, rng.randint(0, 8))
    p = rng.choice((0.1, 0.3, 1.0))
    blobs = [gen.mutate(b, rng) if rng.random() < p else b for b in blobs]
    c.steps = pack(rng, blobs)
    c.end = rng.choice(("wait", "ping", "close"))


def _family_random_frames(c: Case, rng: random.Random) -> None:
    hello = gen.hello(rng, valid=0.6)
    frames = [gen.client_frame(rng, next_id=i + 1, uplink_seq=i) for i in range(rng.randint(0, 8))]
    c.steps = pack(rng, [encode(hello), *map(encode, frames)])
    c.end = rng.choice(("wait", "ping"))


def _family_garbage_first(c: Case, rng: random.Random) -> None:
    c.steps = [Step("binary", _garbage(rng))]
    c.end = "wait"


def _family_text_message(c: Case, rng: random.Random) -> None:
    blobs, _ = _session(rng, rng.randint(0, 4))
    steps = pack(rng, blobs[: rng.randint(0, len(blobs))])
    texts = ('{"type": "hello"}', "", "hello", rng.randbytes(8).hex(), "\u2713" * 3)
    c.steps = [*steps, Step("text", rng.choice(texts))]
    c.end = "wait"


def _family_huge_prefix(c: Case, rng: random.Random) -> None:
    first = [Step("binary", encode(_hello(rng)), frames=1)] if rng.random() < 0.7 else []
    c.steps = [*first, Step("binary", _huge_prefix(rng), frames=1)]
    c.end = "wait"


def _family_split(c: Case, rng: random.Random) -> None:
    blobs, _ = _session(rng, rng.randint(1, 4))
    whole = b"".join(blobs[1:]) or encode(fr.Ping(1))
    cut = rng.randint(1, len(whole) - 1)
    c.steps = [Step("binary", blobs[0], frames=1), Step("binary", whole[:cut], frames=1)]
    c.steps.append(Step("binary", whole[cut:]))
    c.end = "wait"


def _family_no_hello(c: Case, rng: random.Random) -> None:
    c.steps = [Step("binary", b"") for _ in range(rng.randint(0, 2))]
    c.end = "wait"


def _family_close_mid_frame(c: Case, rng: random.Random) -> None:
    blobs, _ = _session(rng, rng.randint(0, 6))
    k = rng.randint(0, len(blobs))
    c.steps = pack(rng, blobs[:k])
    rest = b"".join(blobs[k:]) or encode(fr.Ping(2))
    c.steps.append(Step("partial", rest, frames=1, cut=rng.random()))
    c.end, c.reset = "vanish", rng.random() < 0.5


def _family_oversize(c: Case, rng: random.Random) -> None:
    ping = encode(fr.Ping(3))
    n = WS_MESSAGE_LIMIT // len(ping) + rng.randint(1, 100)
    # frames=1: the daemon never reads them, so they are not counted as tried
    c.steps = [Step("binary", encode(fr.Hello()), frames=1), Step("binary", ping * n, frames=1)]
    c.end = "wait"


def _family_http_garbage(c: Case, rng: random.Random) -> None:
    c.http = rng.choice(
        (
            rng.randbytes(rng.randint(1, 200)),
            b"GET /v1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            b"GET /v1 HTTP/1.1\r\n" + b"X: " + b"a" * 70_000 + b"\r\n\r\n",
            b"\r\n\r\n",
        )
    )
    c.end = "wait"


FAMILIES: dict[str, tuple[float, Callable[[Case, random.Random], None]]] = {
    "valid": (20, _family_valid),
    "valid_then_garbage": (12, _family_valid_then_garbage),
    "mutated": (20, _family_mutated),
    "random_frames": (14, _family_random_frames),
    "garbage_first": (6, _family_garbage_first),
    "text_message": (5, _family_text_message),
    "huge_prefix": (5, _family_huge_prefix),
    "split": (5, _family_split),
    "no_hello": (2, _family_no_hello),
    "close_mid_frame": (10, _family_close_mid_frame),
    "oversize": (0.3, _family_oversize),
    "http_garbage": (0.7, _family_http_garbage),
}


def make_case(seed: int) -> Case:
    rng = random.Random(seed)
    names = list(FAMILIES)
    family = rng.choices(names, weights=[FAMILIES[n][0] for n in names])[0]
    case = Case(family, seed)
    FAMILIES[family][1](case, rng)
    return case


# ---------------------------------------------------------------------------- playing a case


@dataclass
class Played:
    outcome: str  # error:CODE, clean_close, vanished, transport:1009, http_closed, unexpected:...
    detail: str = ""
    messages: int = 0  # WebSocket messages sent (partial ones included)
    frames: int = 0
    sent: list[str] = field(default_factory=list)  # hex of each message, for the report


def _oracle() -> Oracle:
    return Oracle(LIMITS, engines=TONE, default_engine="tone")


async def play(case: Case, host: str, port: int) -> Played:
    with trio.move_on_after(ANSWER_TIMEOUT_S * 3 + HELLO_TIMEOUT_S) as scope:
        if case.http:
            return await _play_http(case, host, port)
        return await _play_ws(case, host, port)
    assert scope.cancelled_caught
    return Played("unexpected:hang", "the case did not finish in time")


async def _play_http(case: Case, host: str, port: int) -> Played:
    stream = await trio.open_tcp_stream(host, port)
    try:
        await stream.send_all(case.http)
        with trio.move_on_after(15.0):  # the daemon's upgrade timeout is 10 s
            while await stream.receive_some(65536):
                pass
            return Played("http_closed", messages=1)
        return Played("unexpected:hang", "garbage instead of an upgrade: not closed in 15 s")
    except (trio.BrokenResourceError, OSError):
        return Played("http_closed", messages=1)
    finally:
        await stream.aclose()


async def _play_ws(case: Case, host: str, port: int) -> Played:
    oracle = _oracle()
    played = Played("")
    try:
        client = await RawClient.connect(host, port)
    except (OSError, HandshakeFailed) as exc:
        return Played("unexpected:connect_failed", repr(exc))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run_reader)
        try:
            vanished = await _send_steps(case, client, oracle, played)
            if vanished:
                played.outcome = "vanished"
            else:
                await _end(case, client, oracle, played)
        finally:
            nursery.cancel_scope.cancel()
            await client.aclose()
    return played


async def _send_steps(case: Case, client: RawClient, oracle: Oracle, played: Played) -> bool:
    """Send the case's messages; True if it ended by vanishing mid-frame."""
    for step in case.steps:
        if client.done.is_set():
            break  # the server closed: what was not sent was never tried
        played.sent.append(step.data.hex() if isinstance(step.data, bytes) else repr(step.data))
        played.messages += 1
        played.frames += step.frames
        if step.kind == "partial":
            wire = client.wire(step.data)
            cut = min(max(1, int(len(wire) * step.cut)), len(wire) - 1)
            await client.send_raw(wire[:cut])
            await client.vanish(reset=case.reset)
            return True
        if isinstance(step.data, str):
            oracle.text_message()
        else:
            oracle.binary_message(step.data)
        if not await client.send_message(step.data, fragments=step.fragments):
            break
        await trio.lowlevel.checkpoint()
    if case.end == "vanish" and oracle.error is None:
        await client.vanish(reset=case.reset)
        return True
    return False


async def _wait_done(client: RawClient, timeout_s: float) -> bool:
    with trio.move_on_after(timeout_s):
        await client.done.wait()
        return True
    return False


async def _end(case: Case, client: RawClient, oracle: Oracle, played: Played) -> None:
    if not oracle.welcomed:
        oracle.hello_timeout()  # nothing more will come: the daemon's hello timer runs out
    if oracle.error is not None:
        if oracle.certain:
            answered = await _wait_done(client, ANSWER_TIMEOUT_S + HELLO_TIMEOUT_S)
            played.outcome, played.detail = classify(case, oracle, client, answered, closed=False)
            return
        if await _wait_done(client, UNCERTAIN_WAIT_S):  # it may fail the session, or not
            played.outcome, played.detail = classify(case, oracle, client, True, closed=False)
            return
    # no error due (or one that did not come): the session must be alive; it answers a Ping,
    # then echoes our close
    nonce = random.Random(case.seed).getrandbits(64)
    answered = True
    if await client.send_message(encode(fr.Ping(nonce))):
        played.messages += 1
        with trio.move_on_after(ANSWER_TIMEOUT_S) as scope:
            while not any(isinstance(f, fr.Pong) and f.nonce == nonce for f in client.frames):
                if client.done.is_set():
                    break
                await client.received.wait()
        answered = not scope.cancelled_caught
    if answered and not client.done.is_set():
        await client.close(1000)
        answered = await _wait_done(client, ANSWER_TIMEOUT_S)
    played.outcome, played.detail = classify(case, oracle, client, answered, closed=True)


def classify(
    case: Case, oracle: Oracle, client: RawClient, answered: bool, *, closed: bool
) -> tuple[str, str]:
    """The outcome class and a detail for an unexpected one."""
    predicted = oracle.error.name if oracle.error is not None else "none"
    errors = [f for f in client.frames if isinstance(f, fr.Error)]
    welcomed = any(isinstance(f, fr.Welcome) for f in client.frames)
    if client.problem:
        return "unexpected:bad_server_output", client.problem
    if not answered:
        return "unexpected:hang", f"no answer in time; predicted {predicted}"
    if welcomed:
        w = next(f for f in client.frames if isinstance(f, fr.Welcome))
        announced = Limits(w.max_frame_bytes, w.max_text_bytes, w.max_queued_utterances)
        if announced != LIMITS:
            return "unexpected:welcome", f"limits {announced}, configured {LIMITS}"
    if errors:
        e = errors[0]
        if len(errors) > 1 or client.frames[-1] is not e:
            return "unexpected:frames_after_error", f"{client.frames[-3:]}"
        if e.code is fr.ErrorCode.INTERNAL:
            return "unexpected:internal", e.message
        if client.close_code != e.code.close_code:
            return "unexpected:wrong_close_code", f"{e.code.name} closed {client.close_code}"
        if e.code.name != predicted:
            if not oracle.certain:
                return f"uncertain:{e.code.name}", f"predicted {predicted} (timing-dependent)"
            return "unexpected:mismatch", f"got {e.code.name}: {e.message}; predicted {predicted}"
        if welcomed != oracle.welcomed:
            return "unexpected:welcome", f"Welcome sent: {welcomed}, due: {oracle.welcomed}"
        return f"error:{e.code.name}", ""
    if case.family == "oversize" and client.close_code == 1009:
        return "transport:1009", ""
    if oracle.error is not None:
        if not oracle.certain:
            return "uncertain:none", f"predicted {predicted} (timing-dependent)"
        return "unexpected:close_without_error", f"close {client.close_code}; due {predicted}"
    if closed and client.close_code == 1000:
        return "clean_close", ""
    return "unexpected:close_without_error", f"close {client.close_code} {client.close_reason!r}"


# ---------------------------------------------------------------------------- the run


@dataclass
class Tally:
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    families: collections.Counter[str] = field(default_factory=collections.Counter)
    messages: int = 0
    frames: int = 0
    connections: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    good_ok: int = 0
    good_failed: list[str] = field(default_factory=list)

    def add(self, case: Case, p: Played) -> None:
        self.connections += 1
        self.messages += p.messages
        self.frames += p.frames
        self.outcomes[p.outcome] += 1
        self.families[case.family] += 1
        if p.outcome.startswith("unexpected") and len(self.examples) < 20:
            self.examples.append(
                {
                    "outcome": p.outcome,
                    "detail": p.detail[:300],
                    "family": case.family,
                    "case_seed": case.seed,
                    "sent_hex": [s[:400] for s in p.sent[:8]],
                }
            )


async def good_client(url: str, tally: Tally, stop: trio.Event) -> None:
    """One whole session every `GOOD_CLIENT_EVERY_S`: it must always work."""
    while not stop.is_set():
        await good_session(url, tally)
        with trio.move_on_after(GOOD_CLIENT_EVERY_S):
            await stop.wait()


async def good_session(url: str, tally: Tally) -> None:
    try:
        with trio.fail_after(ANSWER_TIMEOUT_S * 2):
            async with open_session(url) as session:
                uid = await session.say("ok")
                spoken = await session.receive_utterance(uid)
                assert spoken.pcm, "no audio"
                await session.ping()
        tally.good_ok += 1
    except Exception as exc:  # every failure is counted and reported
        tally.good_failed.append(repr(exc)[:200])


async def worker(i: int, seed: int, host: str, port: int, tally: Tally, deadline: float) -> None:
    rng = random.Random(f"{seed}:{i}")
    while trio.current_time() < deadline:
        case = make_case(rng.getrandbits(63))
        tally.add(case, await play(case, host, port))


async def probe_known_bugs(d: DaemonProcess) -> dict[str, Any]:
    """Each active known bug's reproduction (a Hello), once, alone: what the daemon answered
    and how many log records with a traceback it left (outside the run's log check)."""
    out: dict[str, Any] = {}
    for name in sorted(known_bugs.active()):
        _, options, _ = known_bugs.KNOWN_BUGS[name]
        mark = d.log_size()
        client = await RawClient.connect(d.host, d.port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run_reader)
            await client.send_message(encode(fr.Hello(options=options)))
            with trio.move_on_after(3.0):
                while not client.frames and not client.done.is_set():
                    await client.received.wait()
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
        await client.aclose()
        records, _ = d.log(mark)
        answer = [type(f).__name__ for f in client.frames]
        errors = [f for f in client.frames if isinstance(f, fr.Error)]
        out[name] = {
            "answer": answer + ([f"{errors[0].code.name}: {errors[0].message}"] if errors else []),
            "close_code": client.close_code,
            "log_tracebacks": sum("exc" in r for r in records),
        }
    return out


def log_findings(d: DaemonProcess, start: int) -> dict[str, Any]:
    records, other = d.log(start)
    bad = [r for r in records if "exc" in r or r.get("level") in ("error", "critical")]
    errors = collections.Counter(
        str(r.get("code")) for r in records if r.get("event") == "session error"
    )
    return {
        "records": len(records),
        "tracebacks_or_errors": len(bad),
        "examples": [{k: str(v)[:600] for k, v in r.items()} for r in bad[:5]],
        "other_lines": len(other),
        "other_examples": other[:10],
        "session_errors_logged": dict(sorted(errors.items())),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    d = await trio.to_thread.run_sync(lambda: start_daemon(env=DAEMON_ENV, count_tasks=False))
    tally = Tally()
    started = time.monotonic()
    try:
        known = await probe_known_bugs(d)
        mark = d.log_size()
        deadline = trio.current_time() + args.seconds
        stop = trio.Event()
        died = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(good_client, d.url, tally, stop)
            async with trio.open_nursery() as workers:
                for i in range(args.connections):
                    workers.start_soon(worker, i, args.seed, d.host, d.port, tally, deadline)
                while trio.current_time() < deadline:
                    if not d.alive():
                        died = True
                        workers.cancel_scope.cancel()
                        break
                    await trio.sleep(0.5)
            stop.set()
        if not died:
            await good_session(d.url, tally)  # the daemon still serves, after all of it
        await trio.sleep(0.5)
        metrics = await trio.to_thread.run_sync(d.metrics)
        log = log_findings(d, mark)
    finally:
        exit_status = await trio.to_thread.run_sync(d.stop)
        d.cleanup()
    unexpected = collections.Counter(
        {k: v for k, v in tally.outcomes.items() if k.startswith("unexpected")}
    )
    if tally.good_failed:
        unexpected["unexpected:good_client_failed"] = len(tally.good_failed)
    if log["tracebacks_or_errors"]:
        unexpected["unexpected:log_traceback_or_error"] = log["tracebacks_or_errors"]
    if log["other_lines"]:
        unexpected["unexpected:log_not_json"] = log["other_lines"]
    if died:
        unexpected["unexpected:daemon_died"] = 1
    if exit_status != 0:
        unexpected["unexpected:daemon_exit_status"] = 1
    return {
        "seconds": round(time.monotonic() - started, 1),
        "seed": args.seed,
        "concurrency": args.connections,
        "limits": vars(LIMITS) | {"hello_timeout_s": HELLO_TIMEOUT_S},
        "inputs": {
            "connections": tally.connections,
            "messages": tally.messages,
            "frames": tally.frames,
        },
        "families": dict(sorted(tally.families.items())),
        "outcomes": dict(sorted(tally.outcomes.items())),
        "unexpected": sum(unexpected.values()),
        "unexpected_by_kind": dict(sorted(unexpected.items())),
        "unexpected_examples": tally.examples,
        "good_client": {"sessions_ok": tally.good_ok, "failed": tally.good_failed[:10]},
        "daemon": {
            "died": died,
            "exit_status": exit_status,
            "sessions_accepted": metrics.get("duplexd_sessions_total"),
            "open_session_errors": {  # from /metrics: sessions that got past Welcome
                k.split('"')[1]: v
                for k, v in metrics.items()
                if k.startswith("duplexd_session_errors")
            },
            "log": log,
        },
        "known_bugs": known,
    }


async def replay(seed: int) -> dict[str, Any]:
    d = await trio.to_thread.run_sync(lambda: start_daemon(env=DAEMON_ENV, count_tasks=False))
    try:
        case = make_case(seed)
        mark = d.log_size()
        played = await play(case, d.host, d.port)
        await trio.sleep(0.5)
        records, other = d.log(mark)
    finally:
        await trio.to_thread.run_sync(d.stop)
        d.cleanup()
    return {
        "case_seed": seed,
        "family": case.family,
        "end": case.end,
        "outcome": played.outcome,
        "detail": played.detail,
        "sent_hex": played.sent,
        "daemon_log": records,
        "daemon_other_lines": other,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz.network", description=DESCRIPTION)
    p.add_argument("--seconds", type=float, default=120.0, help="how long to fuzz (120)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from time)")
    p.add_argument("--connections", type=int, default=12, help="concurrent connections (12)")
    p.add_argument("--replay", type=int, metavar="CASE_SEED", help="run one case, verbosely")
    p.add_argument("--json", default="", help="also write the summary here")
    args = p.parse_args(argv)
    if args.replay is not None:
        print(json.dumps(trio.run(replay, args.replay), indent=2))
        return 0
    if args.seed is None:
        args.seed = int(time.time())
    summary = trio.run(run, args)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0 if summary["unexpected"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
