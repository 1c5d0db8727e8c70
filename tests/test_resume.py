"""Resumable sessions (SPEC.md §6.4) on the MockClock: a dropped connection, a new one with the
session id, the resume token and the count of messages received; the audio goes on with
nothing duplicated, and what was lost, if anything, is reported exactly."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from harness import Pair, open_pair
from test_bad_input import expect_error
from test_client_auth import welcome as welcome_of
from trio_websocket import CloseReason, ConnectionClosed

from duplexd._ops.settings import SessionLimits
from duplexd._server.resume import Resumable, ResumeFailed
from duplexd.protocol import frames as fr

pytestmark = pytest.mark.unit
E = fr.ErrorCode
TEXT = "Hello there, how are you today? " * 3  # ~5.6 s of tone audio
RESUMABLE = SessionLimits(ring_frames=1024, idle_timeout_s=86_400.0, resume_buffer_s=2.0)


class Client:
    """A client that counts the messages it received after Welcome (the resume point)."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.received = 0
        self.frames: list[fr.Frame] = []
        self.welcome: fr.Welcome | None = None

    async def hello(self, hello: fr.Hello) -> fr.Welcome:
        await self.pair.send(hello)
        (welcome,) = await self.pair.receive()
        assert isinstance(welcome, fr.Welcome), welcome
        self.welcome = welcome
        return welcome

    async def receive(self) -> list[fr.Frame]:
        frames = await self.pair.receive()
        self.received += 1
        self.frames += frames
        return frames

    def audio(self) -> list[fr.Audio]:
        return [f for f in self.frames if isinstance(f, fr.Audio)]


def resume_hello(session_id: bytes, token: str, received: int) -> fr.Hello:
    options = {"resume": {"session_id": session_id.hex(), "token": token, "received": received}}
    return fr.Hello(options=json.dumps(options))


def info(welcome: fr.Welcome) -> dict:  # type: ignore[type-arg]
    return json.loads(welcome.info)  # type: ignore[no-any-return]


async def speak_drop_resume(
    drop_after: int, away_s: float
) -> tuple[list[fr.Audio], dict, list[fr.Audio]]:  # type: ignore[type-arg]
    """Speak TEXT, drop the connection after `drop_after` messages, come back `away_s` later.
    Returns the audio before the drop, the resumed Welcome's report, the audio after."""
    async with open_pair(limits=RESUMABLE) as (pair,):
        first = Client(pair)
        welcome = await first.hello(fr.Hello())
        token = info(welcome)["resume"]["token"]
        await pair.send(fr.Text(1, TEXT, end=True))
        while first.received < drop_after:
            await first.receive()
        await pair.stream.aclose()  # the network goes away: no WebSocket close
        await trio.sleep(away_s)
        second = Client(await pair.connect_again())
        resumed = await second.hello(resume_hello(welcome.session_id, token, first.received))
        assert resumed.session_id == welcome.session_id
        report = info(resumed)["resume"]
        while not any(isinstance(f, fr.UtteranceDone) for f in second.frames):
            await second.receive()
        assert pair.sessions[0].error_code is None
    return first.audio(), report, second.audio()


@pytest.mark.parametrize("drop_after", [1, 2, 17, 60, 150])
async def test_a_short_drop_loses_nothing_and_repeats_nothing(
    drop_after: int, autojump_clock: trio.testing.MockClock
) -> None:
    before, report, after = await speak_drop_resume(drop_after, away_s=0.7)
    assert report["resumed"] is True and report["lost"] == {"messages": 0}
    seqs = [f.seq for f in before + after]
    assert seqs == list(range(len(seqs)))  # every frame once, in order
    assert (before + after)[-1].last
    assert report["replayed"] >= 30  # what was sent while it was away (0.7 s) came first


async def test_a_long_drop_reports_exactly_what_was_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    before, report, after = await speak_drop_resume(10, away_s=3.5)  # buffer: 2 s
    lost = report["lost"]
    got = {f.seq for f in before + after}
    missing = sorted(set(range(max(got) + 1)) - got)
    assert missing  # 3.5 s away, 2 s kept: about 1.5 s fell out
    runs = lost["audio"]
    assert [(r["utterance_id"], r["epoch"]) for r in runs] == [(1, 0)]
    assert list(range(runs[0]["first_seq"], runs[0]["last_seq"] + 1)) == missing
    assert lost["frames"]["AUDIO"] == len(missing) == lost["messages"]
    assert "unknown_messages" not in lost
    assert sorted(got) == [f.seq for f in before + after]  # still nothing twice


async def test_resuming_needs_the_token_and_a_live_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_pair(limits=RESUMABLE) as (pair,):
        client = Client(pair)
        welcome = await client.hello(fr.Hello())
        await pair.stream.aclose()
        wrong = await pair.connect_again()
        await wrong.send(resume_hello(welcome.session_id, "0" * 64, 0))
        await expect_error(wrong, E.RESUME_FAILED)
        unknown = await pair.connect_again()
        await unknown.send(resume_hello(bytes(16), info(welcome)["resume"]["token"], 0))
        await expect_error(unknown, E.RESUME_FAILED)
        t = trio.current_time()
        with trio.fail_after(31):
            await pair.done.wait()  # the window passed: the session ended
        assert trio.current_time() - t == pytest.approx(30.0, abs=0.05)
        late = await pair.connect_again()
        await late.send(resume_hello(welcome.session_id, info(welcome)["resume"]["token"], 0))
        await expect_error(late, E.RESUME_FAILED)


async def test_a_clean_close_ends_the_session_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_pair(limits=RESUMABLE) as (pair,):
        await Client(pair).hello(fr.Hello())
        t = trio.current_time()
        await pair.client.aclose()  # WebSocket close 1000: the client is done
        with trio.fail_after(1):
            await pair.done.wait()
        assert trio.current_time() == t


@pytest.mark.parametrize("after", [1, 2, 5, 17, 60])
async def test_a_clean_close_while_audio_plays_ends_the_session_at_once(
    autojump_clock: trio.testing.MockClock, after: int
) -> None:
    """However the session's tasks notice the close (the writer's send or the reader), the
    client said it is done: the session ends, it is not held for a resume."""
    async with open_pair(limits=RESUMABLE) as (pair,):
        client = Client(pair)
        await client.hello(fr.Hello())
        await pair.send(fr.Text(1, TEXT, end=True))
        while client.received < after:
            await client.receive()
        t = trio.current_time()
        await pair.client.aclose()
        with trio.fail_after(1):
            await pair.done.wait()
        assert trio.current_time() == t


class _Closed:
    """A connection the client has closed with `code`: every call raises as trio-websocket's."""

    def __init__(self, code: int) -> None:
        self.reason = CloseReason(code, None)

    async def send_message(self, message: str | bytes) -> None:
        raise ConnectionClosed(self.reason)

    async def get_message(self) -> str | bytes:
        raise ConnectionClosed(self.reason)


@pytest.mark.parametrize(("code", "detached"), [(1000, False), (1001, False), (1006, True)])
async def test_a_send_that_meets_the_clients_close_does_not_wait_for_a_resume(
    autojump_clock: trio.testing.MockClock, code: int, detached: bool
) -> None:
    """The writer noticing the close first must not turn the client's close into a drop."""
    ws = _Closed(code)
    transport = Resumable(ws, session_id=b"s", subject="", window_s=30.0, buffer_bytes=1 << 16)
    await transport.send_message(b"audio")
    assert transport.attached is not detached
    if detached:  # a drop: the reader waits for a resume, up to the window
        with pytest.raises(trio.ClosedResourceError, match="not resumed within 30 s"):
            await transport.get_message()
        assert trio.current_time() == 30.0
    else:  # the client is done: the reader raises its close at once, and the session ends
        with pytest.raises(ConnectionClosed):
            await transport.get_message()
        assert trio.current_time() == 0.0


class _Reset(_Closed):
    """The client sent its close and reset the socket: the reader, waiting, gets the close; a
    send fails as a broken stream."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.read = trio.Event()  # the close frame has been read

    async def send_message(self, message: str | bytes) -> None:
        self.read.set()
        raise trio.BrokenResourceError("Connection reset by peer")

    async def get_message(self) -> str | bytes:
        await self.read.wait()
        raise ConnectionClosed(self.reason)

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        self.read.set()


async def _read(transport: Resumable, got: list[str]) -> None:
    try:
        await transport.get_message()
    except ConnectionClosed:
        got.append("closed")
    except trio.ClosedResourceError as exc:
        got.append(str(exc))


async def test_a_close_then_a_reset_ends_the_session_but_a_drop_does_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got: list[str] = []
    reset = Resumable(_Reset(1000), session_id=b"s", subject="", window_s=30.0, buffer_bytes=99)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read, reset, got)  # the reader waits, as a session's does
        await trio.testing.wait_all_tasks_blocked()
        await reset.send_message(b"audio")  # the send fails first, and detaches
    assert got == ["closed"]  # then the client's close is read: the session ends
    assert trio.current_time() == 0.0

    # the server giving a connection up (`drop`: it stopped reading) closes it with 1001
    # itself; that close is the server's, so the session waits for a resume
    got.clear()
    dropped = Resumable(_Reset(1001), session_id=b"s", subject="", window_s=30.0, buffer_bytes=99)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read, dropped, got)
        await trio.testing.wait_all_tasks_blocked()
        dropped.drop()
    assert got == ["not resumed within 30 s"]
    assert trio.current_time() == 30.0


class _Slow(_Closed):
    """A new connection whose sends wait for `go`."""

    def __init__(self) -> None:
        super().__init__(1000)
        self.go = trio.Event()

    async def send_message(self, message: str | bytes) -> None:
        await self.go.wait()

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        pass


async def test_a_session_that_ends_while_it_is_resumed_refuses_the_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The new connection would otherwise go live on a session that is over, and its
    handler wait for a release that never comes (a connection and its task, leaked)."""
    transport = Resumable(
        _Closed(1006), session_id=b"s", subject="", window_s=30.0, buffer_bytes=99
    )
    await transport.send_message(b"audio")  # the client dropped: detached, resumable
    assert not transport.attached
    welcome = welcome_of(fr.Hello())
    new = _Slow()
    refused: list[str] = []

    async def resume() -> None:
        with pytest.raises(ResumeFailed) as exc:
            await transport.attach(new, 1, welcome)
        refused.append(str(exc.value))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(resume)
        await trio.testing.wait_all_tasks_blocked()  # (sending the Welcome)
        transport.end()  # the session ends meanwhile (its window, a drain...)
        new.go.set()
    assert refused == ["the session is over"]
    assert not transport.attached


async def test_a_close_1001_ends_the_session_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """1001 is what a browser sends when its page goes: the client is done, as with 1000."""
    async with open_pair(limits=RESUMABLE) as (pair,):
        await Client(pair).hello(fr.Hello())
        t = trio.current_time()
        await pair.client.aclose(1001)
        with trio.fail_after(1):
            await pair.done.wait()
        assert trio.current_time() == t
        assert pair.sessions[0].error_code is None


async def test_a_resumed_session_closed_cleanly_releases_every_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """(It used to keep the resuming connection's task, and the Session, forever.)"""
    async with open_pair(limits=RESUMABLE) as (pair,):
        welcome = await Client(pair).hello(fr.Hello())
        await pair.stream.aclose()
        second = await pair.connect_again()
        token = info(welcome)["resume"]["token"]
        resumed = await Client(second).hello(resume_hello(welcome.session_id, token, 0))
        assert info(resumed)["resume"]["resumed"] is True
        t = trio.current_time()
        await second.client.aclose()
        with trio.fail_after(1):
            await pair.done.wait()  # the session's connection
            await second.done.wait()  # and the one that resumed it
        assert trio.current_time() == t
        (connection,) = pair.sessions
        assert connection.session is not None and connection.session.resumable is not None
        with pytest.raises(Exception, match="over"):
            connection.session.resumable.check(token, "")


async def test_an_ended_session_frees_its_ring_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The ring's C memory goes with the session, not when the cyclic collector finds it."""
    async with open_pair(limits=RESUMABLE) as (pair,):
        await Client(pair).hello(fr.Hello())
        await pair.send(fr.Text(1, TEXT, end=True))
        await pair.receive()
        session = pair.sessions[0].session
        assert session is not None and not session._ring.closed
        await pair.client.aclose()
        await pair.done.wait()
        assert session._ring.closed


async def test_resume_is_off_when_the_server_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = SessionLimits(ring_frames=1024, resume_window_s=0.0)
    async with open_pair(limits=limits) as (pair,):
        welcome = await Client(pair).hello(fr.Hello())
        assert "resume" not in info(welcome)
        await pair.stream.aclose()
        with trio.fail_after(1):
            await pair.done.wait()  # no waiting for a resume


def test_bad_resume_options_are_bad_options() -> None:
    from duplexd.protocol.codec import RemoteProtocolError
    from duplexd.protocol.options import parse_options

    for bad in (
        {"resume": 1},
        {"resume": {"session_id": "xyz", "token": "t", "received": 0}},
        {"resume": {"session_id": "00" * 16, "token": 5, "received": 0}},
        {"resume": {"session_id": "00" * 16, "token": "t", "received": -1}},
    ):
        with pytest.raises(RemoteProtocolError) as info_:
            parse_options(json.dumps(bad))
        assert info_.value.error_code is E.BAD_OPTIONS
