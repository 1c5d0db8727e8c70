"""The cases `python -m fuzz.network` plays: one random case per connection, from a seed.

Families (weights in `FAMILIES`):

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
    oversize         one message over max_message_bytes (1 MiB: FRAME_TOO_LARGE) or over
                     twice it (the WebSocket layer closes 1009 itself), rarely
    http_garbage     bytes that are not an HTTP upgrade, rarely
    bad_in_message   a legal session whose last message ends in a bad frame, a frame of the
                     wrong direction, a huge length prefix or a cut frame: the frames before
                     it are acted upon (SPEC §10), then the error
    resume_hello     a Hello whose options resume a session (SPEC §6.4): well-formed, it is
                     RESUME_FAILED (there is no such session), whatever engine, voice or frames
                     follow; malformed, BAD_OPTIONS
    flood            one message of about `frame_burst` frames (Text that changes nothing,
                     maybe a bad or cut frame near the end): LIMIT_EXCEEDED exactly past the
                     burst; or over a thousand Pings (all answered: the daemon reads on as
                     the answers go out).
                     One at a time, the bucket refilled in between (`fuzz.oracle`)
    upgrade          an upgrade without the subprotocol (HTTP 400) or on another path (404)

`make_case(seed)` draws a family (by weight) and builds its case; the same seed always makes
the same case (`python -m fuzz.network --replay SEED`).
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from duplexd.protocol import frames as fr
from duplexd.protocol.codec import encode as _encode

from . import gen
from .oracle import MAX_PENDING_ANSWERS, Limits

# frame_burst as shipped; frames refilled so fast (1 per µs) that only one message of more
# than frame_burst frames runs the bucket dry (fuzz.oracle models it so)
LIMITS = Limits(
    max_frame_bytes=8192,
    max_text_bytes=256,
    max_queued_utterances=4,
    frame_burst=10_000,
    max_frames_per_s=1_000_000.0,
)
TONE = {"tone": ("sine", "low", "high")}  # engine -> voices, the default first
WS_MESSAGE_LIMIT = 1 << 20  # SPEC §10 max_message_bytes (trio-websocket's limit is twice it)

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
    upgrade: tuple[str, tuple[str, ...], int] | None = None  # path, subprotocols, status due
    alone: bool = False  # played while no other such case runs (a flood)
    welcome_first: bool = False  # wait for Welcome after the first message


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
    n = rng.choice((1, 2)) * WS_MESSAGE_LIMIT // len(ping) + rng.randint(1, 100)
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


UNKNOWN_REQUIRED = [t for t in range(0x08, 0x40) if t not in gen.KNOWN_TYPES]
SERVER_FRAMES = (fr.Paused(), fr.Pong(1, 2), fr.Error(fr.ErrorCode.MALFORMED, "x"))


def _bad_tail(rng: random.Random) -> bytes:
    """What ends a message badly: a frame cut short, a mutated frame, a server frame, an
    unknown required type, a huge length prefix."""
    r = rng.random()
    if r < 0.3:
        whole = encode(gen.client_frame(rng, next_id=1))
        return whole[: rng.randint(1, len(whole) - 1)]
    if r < 0.5:
        return gen.mutate(encode(fr.Ping(rng.getrandbits(64))), rng)
    if r < 0.65:
        return encode(rng.choice(SERVER_FRAMES))
    if r < 0.8:
        return struct.pack("<IBB", 2, rng.choice(UNKNOWN_REQUIRED), 0)
    return _huge_prefix(rng)


def _family_bad_in_message(c: Case, rng: random.Random) -> None:
    blobs, _ = _session(rng, rng.randint(0, 8))
    blobs.insert(rng.randint(1, len(blobs)), encode(fr.Ping(rng.getrandbits(64))))
    k = rng.randint(1, len(blobs))  # the last message: the last k frames, then the bad tail
    c.steps = pack(rng, blobs[:-k]) if k < len(blobs) else []
    c.steps.append(Step("binary", b"".join(blobs[-k:]) + _bad_tail(rng), frames=k + 1))
    c.end = rng.choice(("wait", "ping"))


def _resume_hello(rng: random.Random) -> fr.Hello:
    options: dict[str, Any] = {}
    if rng.random() < 0.3:
        try:
            extra = json.loads(gen.options_text(rng))
        except (ValueError, RecursionError):
            extra = None
        if isinstance(extra, dict):
            options.update(extra)
    options["resume"] = gen.resume_section(rng, good=0.7)
    hello = gen.hello(rng, valid=0.85)
    return fr.Hello(
        min_version=hello.min_version,
        max_version=hello.max_version,
        sample_rate_hz=hello.sample_rate_hz,
        frame_ms=hello.frame_ms,
        uplink_rate_hz=rng.choice((0, 0, 16_000, 48_000, 8_000)),
        engine=rng.choice(("", "", "tone", "nope")),
        voice=rng.choice(("", "", "sine", "nope")),
        options=json.dumps(options),
    )


def _family_resume_hello(c: Case, rng: random.Random) -> None:
    frames = legal_frames(rng, rng.randint(0, 4), uplink=False)
    blobs = [encode(_resume_hello(rng)), *map(encode, frames)]
    if rng.random() < 0.3:
        blobs.append(_bad_tail(rng))
    c.steps = pack(rng, blobs)
    c.end = rng.choice(("wait", "ping"))


def _family_flood(c: Case, rng: random.Random) -> None:
    burst = LIMITS.frame_burst
    hello = encode(fr.Hello())
    if rng.random() < 0.75:  # text that changes nothing: no answer, no text bytes
        n = rng.choice((burst - 1, burst, burst + 1, burst + rng.randint(2, 200)))
        n = n if rng.random() < 0.8 else burst - rng.randint(2, 200)
        body = encode(fr.Text(1, "a", end=False)) + encode(fr.Text(1, "", end=False)) * (n - 1)
        if rng.random() < 0.4:  # the frame after them is bad, or cut
            body += _bad_tail(rng)
            n += 1
    else:  # more answers asked for than may wait: the daemon reads on as they go out
        n = rng.randint(MAX_PENDING_ANSWERS + 1, 3 * MAX_PENDING_ANSWERS)
        body = b"".join(encode(fr.Ping(i)) for i in range(n))
    if rng.random() < 0.3:  # in the Hello's message
        c.steps = [Step("binary", hello + body, frames=1 + n)]
    else:
        c.steps = [Step("binary", hello, frames=1), Step("binary", body, frames=n)]
        c.welcome_first = True
    c.alone = True
    c.end = rng.choice(("wait", "ping"))


def _family_upgrade(c: Case, rng: random.Random) -> None:
    r = rng.random()
    if r < 0.5:
        c.upgrade = (fr.WS_PATH, (), 400)  # no subprotocol
    elif r < 0.7:
        c.upgrade = (fr.WS_PATH, (rng.choice(("duplexd.v2", "chat", "duplexd")),), 400)
    else:
        c.upgrade = (rng.choice(("/", "/v2", "/v1x", "/metrics")), (fr.SUBPROTOCOL,), 404)
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
    "bad_in_message": (10, _family_bad_in_message),
    "resume_hello": (8, _family_resume_hello),
    "flood": (1, _family_flood),
    "upgrade": (1, _family_upgrade),
}


def make_case(seed: int) -> Case:
    rng = random.Random(seed)
    names = list(FAMILIES)
    family = rng.choices(names, weights=[FAMILIES[n][0] for n in names])[0]
    case = Case(family, seed)
    FAMILIES[family][1](case, rng)
    return case
