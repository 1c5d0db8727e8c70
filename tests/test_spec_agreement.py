"""Where a client written from SPEC.md alone found the daemon and the spec disagreeing, or the
spec silent: each case as the spec now states it, against a real daemon on 127.0.0.1 (real
sockets, real clock) through the spec-only client (`spec_client.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import spec_client as sc
import trio
from harness import running_daemon
from trio_websocket import ConnectionClosed, open_websocket_url

from duplexd._server.server import Daemon

pytestmark = pytest.mark.integration
FRAME_TOO_LARGE = 2  # SPEC §8
MAX_MESSAGE_BYTES = 1 << 20  # SPEC §10, info.limits.max_message_bytes


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    async with running_daemon() as d:
        yield d


async def read_until_closed(client: sc.SpecClient) -> tuple[list[sc.Frame], int | None]:
    """Every frame until the server closes, and its close code."""
    frames: list[sc.Frame] = []
    with trio.fail_after(10):
        try:
            while True:
                frames += (await client.receive())[1]
        except ConnectionClosed as closed:
            return frames, closed.reason.code if closed.reason else None


@pytest.mark.parametrize("in_one_message", [True, False], ids=["one message", "many messages"])
async def test_a_burst_of_pings_from_a_client_that_reads_gets_every_pong(
    daemon: Daemon, in_one_message: bool
) -> None:
    """More PINGs at once than answers may wait (`max_pending_answers`, 1024), from a client
    that reads as it sends: every PONG comes, in order, and no ERROR (SPEC §10: the server
    reads on as the answers go out)."""
    n = 3_000 if in_one_message else 1_100
    async with sc.open_spec_client(daemon.url) as client:
        welcome = await client.handshake()
        assert welcome["info"]["limits"]["max_pending_answers"] < n
        got: list[sc.Frame] = []

        async def read() -> None:
            while len(got) < n:
                got.extend((await client.receive())[1])

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                if in_one_message:
                    await client.send(*[sc.ping(i) for i in range(n)])
                else:
                    for i in range(n):
                        await client.send(sc.ping(i))
        assert [f.type for f in got] == [sc.PONG] * n
        assert [f["nonce"] for f in got] == list(range(n))


def pings_over(n_bytes: int) -> bytes:
    """PING frames (14 bytes each), more than `n_bytes` of them in all."""
    return b"".join(sc.ping(n) for n in range(n_bytes // 14 + 1))


async def test_a_message_over_max_message_bytes_is_an_error_frame_then_1009(
    daemon: Daemon,
) -> None:
    """SPEC §2/§10: over `max_message_bytes`, ERROR FRAME_TOO_LARGE, then close 1009, and none
    of the message's frames acted upon (no PONG)."""
    async with sc.open_spec_client(daemon.url) as client:
        welcome = await client.handshake()
        assert welcome["info"]["limits"]["max_message_bytes"] == MAX_MESSAGE_BYTES
        await client.send(pings_over(MAX_MESSAGE_BYTES))
        frames, code = await read_until_closed(client)
    assert [f.type for f in frames] == [sc.ERROR]
    assert frames[0]["code"] == FRAME_TOO_LARGE
    assert "max_message_bytes" in frames[0]["message"]
    assert code == 1009


async def test_a_message_far_over_the_limit_is_closed_1009_without_error(daemon: Daemon) -> None:
    """SPEC §2: the one error close without ERROR: a message over twice the limit is not read
    to its end (the server does not buffer it)."""
    async with sc.open_spec_client(daemon.url) as client:
        await client.handshake()
        await client.send(pings_over(2 * MAX_MESSAGE_BYTES))
        frames, code = await read_until_closed(client)
    assert frames == [] and code == 1009


async def receive_until(client: sc.SpecClient, type_: int) -> list[sc.Frame]:
    """Frames until (and with) the first of `type_`."""
    got: list[sc.Frame] = []
    with trio.fail_after(10):
        while not any(f.type == type_ for f in got):
            got += (await client.receive())[1]
    return got


async def test_audio_that_fills_whole_frames_ends_with_an_extra_silent_end_frame(
    daemon: Daemon,
) -> None:
    """SPEC §5.2: the END frame holds the last real samples, fewer than `frame_samples`: when
    the audio fills whole frames (the tone voice: 3 frames a character), it is one more frame
    of silence."""
    async with sc.open_spec_client(daemon.url) as client:
        await client.handshake()
        await client.send(sc.text(1, "Hi there.", end=True))
        got = await receive_until(client, sc.UTTERANCE_DONE)
    audio = [f for f in got if f.type == sc.AUDIO]
    assert [f["end"] for f in audio] == [False] * 27 + [True]
    assert any(audio[26]["pcm"])  # the last real frame is full and not flagged
    assert audio[27]["seq"] == 27 and audio[27]["pcm"] == bytes(960 * 2)
    assert got[-1]["samples_sent"] == 27 * 960  # the silent END frame holds no real sample


async def test_interrupt_between_utterances(daemon: Daemon) -> None:
    """SPEC §5.4: nothing playing (the first utterance done, the next not started): the
    INTERRUPTED names no utterance, counts what was queued as cancelled, and a new epoch
    begins; later TEXT for the cancelled id is ignored."""
    async with sc.open_spec_client(daemon.url) as client:
        await client.handshake()
        await client.send(sc.text(1, "Hi.", end=True))
        await receive_until(client, sc.UTTERANCE_DONE)
        # utterance 2 queued (its text still open), then INTERRUPT, in one message: acted
        # upon before any of its audio can go out
        await client.send(sc.text(2, "Queued, "), sc.frame(sc.INTERRUPT))
        (interrupted,) = await receive_until(client, sc.INTERRUPTED)
        assert interrupted.fields == {
            "epoch": 1,
            "utterance_id": 0,
            "samples_sent": 0,
            "chars_spoken": 0,
            "cancelled_utterances": 1,
        }
        await client.send(sc.text(2, "still streaming.", end=True), sc.text(3, "Ok.", end=True))
        got = await receive_until(client, sc.UTTERANCE_DONE)
        assert {(f["epoch"], f["utterance_id"]) for f in got} == {(1, 3)}


async def test_a_pause_outlives_an_interrupt(daemon: Daemon) -> None:
    """SPEC §4.4: PAUSE, INTERRUPT, then a new utterance: its audio waits for RESUME."""
    async with sc.open_spec_client(daemon.url) as client:
        await client.handshake()
        await client.send(sc.frame(sc.PAUSE))
        assert [f.type for f in await receive_until(client, sc.PAUSED)] == [sc.PAUSED]
        await client.send(sc.frame(sc.INTERRUPT), sc.text(1, "Hi.", end=True))
        assert [f.type for f in await receive_until(client, sc.INTERRUPTED)] == [sc.INTERRUPTED]
        with trio.move_on_after(0.5):
            got = (await client.receive())[1]
            raise AssertionError(f"sent while paused: {got}")
        await client.send(sc.frame(sc.RESUME))
        got = await receive_until(client, sc.UTTERANCE_DONE)
        assert [f.type for f in got[:2]] == [sc.RESUMED, sc.UTTERANCE_STARTED]
        assert got[1]["epoch"] == 1


@pytest.mark.parametrize("path", ["/v1", "/v1/", "/v1?x=1", "/v1/?token=abc&lang=en"])
async def test_the_v1_path_with_or_without_a_slash_or_a_query(daemon: Daemon, path: str) -> None:
    """SPEC §2: `/v1` and `/v1/` are the same; a query string (browsers and proxies add them)
    is accepted and ignored (but for `token`, when the server requires one)."""
    url = daemon.url.removesuffix("/v1") + path
    async with open_websocket_url(url, subprotocols=[sc.SUBPROTOCOL]) as ws:
        assert ws.subprotocol == sc.SUBPROTOCOL
        await ws.send_message(sc.hello() + sc.ping(5))
        frames = sc.parse_message(await ws.get_message())
        frames += [] if len(frames) > 1 else sc.parse_message(await ws.get_message())
        assert [f.type for f in frames] == [sc.WELCOME, sc.PONG]


@pytest.mark.parametrize(
    ("path", "subprotocols", "status"),
    [
        ("/", [sc.SUBPROTOCOL], 404),
        ("/v2", [sc.SUBPROTOCOL], 404),
        ("/v1/x", [sc.SUBPROTOCOL], 404),
        ("/v1", [], 400),
        ("/v1", ["duplexd.v2"], 400),
    ],
)
async def test_refused_upgrades(
    daemon: Daemon, path: str, subprotocols: list[str], status: int
) -> None:
    """SPEC §2: another path is HTTP 404; an upgrade without the subprotocol is HTTP 400,
    each with a one-line body saying why."""
    offer = f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}\r\n" if subprotocols else ""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
    response = b""
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", daemon.port) as stream:
            await stream.send_all(request.encode())
            while b"\r\n\r\n" not in response:
                response += await stream.receive_some()
            head, _, body = response.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            sizes = [
                v
                for k, _, v in (h.partition(":") for h in lines[1:])
                if k.lower() == "content-length"
            ]
            while len(body) < int(sizes[0]):
                body += await stream.receive_some()
    assert lines[0].split()[1] == str(status)
    assert body.count(b"\n") == 1 and len(body) > 1
