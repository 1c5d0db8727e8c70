"""The bugs of `fuzz/known_bugs.py`: each open one pinned by a strict xfail (it fails once the
daemon is fixed: then move its entry to the FIXED dict), each fixed one checked to stay fixed.

Both kinds run the same checks, over both dicts: for a Hello bug, the model refuses the
reproduction as the document says, and so does `ServerProtocolState`; for a session bug, its
reproduction against an in-process daemon (tone engine, real sockets) ends as the document
says (`SESSION_CHECKS`). The check of an open bug is a strict xfail.
"""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from duplexd._ops.settings import SessionLimits
from duplexd._server.server import Daemon, serve_duplexd
from duplexd.engines.registry import EngineSet
from duplexd.engines.tone import ToneEngine
from duplexd.protocol.codec import RemoteProtocolError, encode
from duplexd.protocol.frames import ErrorCode, Hello, Welcome
from duplexd.protocol.state import ServerProtocolState

from .counted_daemon import count_tasks
from .known_bugs import FIXED_BUGS, FIXED_SESSION_BUGS, KNOWN_BUGS, KNOWN_SESSION_BUGS
from .spec_model import hello_verdict
from .wsclient import RawClient

OPEN = pytest.mark.xfail(
    strict=True,
    raises=(AssertionError, pytest.fail.Exception),  # the wrong answer, or none
    reason="a known daemon bug (fuzz/known_bugs.py)",
)
ALL_BUGS = {**KNOWN_BUGS, **FIXED_BUGS}
CASES = [
    *(pytest.param(name, id=f"open:{name}", marks=OPEN) for name in sorted(KNOWN_BUGS)),
    *(pytest.param(name, id=f"fixed:{name}") for name in sorted(FIXED_BUGS)),
]


@pytest.mark.unit
def test_the_lists_are_sound() -> None:
    """No bug is both open and fixed, every session bug has a check here, and there is
    something to check (an empty parametrization would quietly turn the checks below into
    skips)."""
    assert not KNOWN_BUGS.keys() & FIXED_BUGS.keys()
    assert not KNOWN_SESSION_BUGS.keys() & FIXED_SESSION_BUGS.keys()
    assert CASES and SESSION_CASES
    for name, (what, reproduction, document) in {**ALL_BUGS, **ALL_SESSION_BUGS}.items():
        assert what and reproduction and document, name
    assert set(ALL_SESSION_BUGS) == set(SESSION_CHECKS)


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(ALL_BUGS))
def test_the_document_refuses_it(name: str) -> None:
    _, options, _ = ALL_BUGS[name]
    assert hello_verdict(Hello(options=options)) is ErrorCode.BAD_OPTIONS


@pytest.mark.unit
@pytest.mark.parametrize("name", CASES)
def test_the_daemon_refuses_it(name: str) -> None:
    """What the daemon's protocol state answers the reproduction: BAD_OPTIONS, as documented
    (a strict xfail while the bug is open)."""
    _, options, _ = ALL_BUGS[name]
    state = ServerProtocolState(max_text_bytes=1, max_queued_utterances=1)
    with pytest.raises(RemoteProtocolError) as info:
        state.receive(Hello(options=options))
    assert info.value.error_code is ErrorCode.BAD_OPTIONS
    assert info.value.close_code == ErrorCode.BAD_OPTIONS.close_code


# ---------------------------------------------------------------------------- session bugs


@asynccontextmanager
async def open_daemon() -> AsyncIterator[Daemon]:
    """A daemon in this process (tone engine, resume on as shipped), on a free port."""
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(
            lambda task_status: serve_duplexd(
                "127.0.0.1",
                0,
                engines=EngineSet.of(ToneEngine()),
                limits=SessionLimits(resume_window_s=30.0),
                gil_switch_interval_s=None,
                task_status=task_status,
            )
        )
        yield daemon
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def connected(daemon: Daemon) -> AsyncIterator[RawClient]:
    client = await RawClient.connect("127.0.0.1", daemon.port)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run_reader)
            yield client
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()


async def welcome(client: RawClient, hello: Hello) -> Welcome:
    await client.send_message(encode(hello))
    while not client.frames and not client.done.is_set():
        await client.received.wait()
    assert client.frames and isinstance(client.frames[0], Welcome), client.frames
    return client.frames[0]


async def until_no_session(daemon: Daemon, timeout_s: float = 2.0) -> None:
    with trio.move_on_after(timeout_s):
        while daemon.sessions or daemon.connecting:  # noqa: ASYNC110 (the daemon's state)
            await trio.sleep(0.01)


async def check_resume_clean_close(daemon: Daemon) -> str:
    """Resume a session, close it 1000: nothing of it (task, Session) may be left."""
    await trio.sleep(0.1)
    tasks = count_tasks()
    async with connected(daemon) as first:
        opened = await welcome(first, Hello())
        token = json.loads(opened.info)["resume"]["token"]
        (session,) = daemon.sessions
        kept = weakref.ref(session)
        del session
        await first.vanish()
    resume = {"session_id": opened.session_id.hex(), "token": token, "received": 0}
    async with connected(daemon) as second:
        again = await welcome(second, Hello(options=json.dumps({"resume": resume})))
        assert json.loads(again.info)["resume"]["resumed"] is True
        await second.close(1000)
        await second.done.wait()
        assert second.close_code == 1000
    await until_no_session(daemon)
    assert not daemon.sessions
    await trio.sleep(0.2)
    gc.collect()
    left = count_tasks() - tasks
    if left or kept() is not None:
        return f"{left} task(s) left, the Session {'kept' if kept() else 'collected'}"
    return ""


async def check_close_1001(daemon: Daemon) -> str:
    """A client's close 1001 ends its session at once, as 1000 does."""
    async with connected(daemon) as client:
        await welcome(client, Hello())
        await client.close(1001)
        await client.done.wait()
    await until_no_session(daemon)
    return f"{len(daemon.sessions)} session(s) open after close 1001" if daemon.sessions else ""


async def check_ring_closed(daemon: Daemon) -> str:
    """A session that ended has given its audio ring back (not left it to the collector)."""
    async with connected(daemon) as client:
        await welcome(client, Hello())
        (session,) = daemon.sessions
        await client.close(1000)
        await client.done.wait()
    await until_no_session(daemon)
    await trio.sleep(0.1)
    ring = session._ring  # (what the session allocated: nothing else says)
    return "" if ring.closed else f"the ended session's {ring!r} is still allocated"


# name -> the reproduction; "" if the daemon did as documented, else what it did
SESSION_CHECKS: dict[str, Callable[[Daemon], Awaitable[str]]] = {
    "resume-clean-close-leak": check_resume_clean_close,
    "close-1001-keeps-session": check_close_1001,
    "session-ring-not-closed": check_ring_closed,
}
ALL_SESSION_BUGS = {**KNOWN_SESSION_BUGS, **FIXED_SESSION_BUGS}
OPEN_SESSION = pytest.mark.xfail(
    strict=True, raises=AssertionError, reason="a known daemon bug (fuzz/known_bugs.py)"
)
SESSION_CASES = [
    *(pytest.param(n, id=f"open:{n}", marks=OPEN_SESSION) for n in sorted(KNOWN_SESSION_BUGS)),
    *(pytest.param(n, id=f"fixed:{n}") for n in sorted(FIXED_SESSION_BUGS)),
]


@pytest.mark.integration
@pytest.mark.parametrize("name", SESSION_CASES)
def test_the_session_ends_as_documented(name: str) -> None:
    """(Its own `trio.run`: a failure is the check's AssertionError, not an exception group.)"""

    async def check() -> str:
        with trio.fail_after(20):
            async with open_daemon() as daemon:
                return await SESSION_CHECKS[name](daemon)

    problem = trio.run(check)
    assert not problem, f"{name}: {problem}"
