"""Auth in the daemon: checked in the WebSocket upgrade, before any session resource exists,
against a real daemon and the SDK (tests/test_auth.py checks the tokens themselves)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from test_service import until
from trio_websocket import ConnectionRejected, open_websocket_url

from duplexd._ops.auth import Authenticator, FailureLimiter, StaticToken, mint
from duplexd._ops.settings import TlsSettings
from duplexd._server.server import Daemon, serve_duplexd
from duplexd.client.session import SessionError, open_session
from duplexd.engines.registry import EngineSet
from duplexd.engines.tone import ToneEngine
from duplexd.protocol import frames as fr

SECRET = b"0123456789abcdef0123456789abcdef"
BOB = "bob-static-token-000001"

pytestmark = [
    pytest.mark.usefixtures("collect_leaked_sockets"),
    pytest.mark.integration,
    # trio-websocket's client leaks its socket when the server rejects or closes first
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
    ),
]


def authenticator(max_failures: int = 10) -> Authenticator:
    return Authenticator(
        [StaticToken.of("bob", BOB)], SECRET, limiter=FailureLimiter(max_failures, 60.0)
    )


@asynccontextmanager
async def open_daemon(**options: Any) -> AsyncIterator[Daemon]:
    options.setdefault("authenticator", authenticator())
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(
            lambda task_status: serve_duplexd(
                "127.0.0.1",
                0,
                engines=EngineSet.of(ToneEngine(ms_per_char=5.0)),
                gil_switch_interval_s=None,
                task_status=task_status,
                **options,
            )
        )
        yield daemon
        nursery.cancel_scope.cancel()


async def speak(url: str, token: str = "", **options: Any) -> fr.UtteranceDone | fr.Interrupted:
    async with open_session(url, token=token, **options) as session:
        spoken = await session.receive_utterance(await session.say("Hi."))
    return spoken.end


async def refused(url: str, token: str = "") -> SessionError:
    with pytest.raises(SessionError) as info:
        await speak(url, token)
    return info.value


async def test_no_wrong_expired_or_replayed_tokens_get_no_session() -> None:
    now = time.time()
    async with open_daemon() as daemon:
        missing = await refused(daemon.url)
        assert missing.status == 401 and "missing token" in str(missing)
        assert (await refused(daemon.url, "not-bob-at-all-000000")).status == 401
        expired = mint("alice", 60, SECRET, now - 3600)
        assert "expired" in str(await refused(daemon.url, expired))
        forged = mint("alice", 60, b"another-secret-another-secret-xx", now)
        assert (await refused(daemon.url, forged)).status == 401
        assert daemon.sessions_total == 0  # none of them got as far as a connection
        assert daemon.rejected == {"auth": 4}


async def test_a_good_token_opens_a_session_named_after_its_subject(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="duplexd.session")
    async with open_daemon() as daemon:
        assert isinstance(await speak(daemon.url, BOB), fr.UtteranceDone)
        alice = mint("alice", 60, SECRET, time.time())
        assert isinstance(await speak(daemon.url, alice), fr.UtteranceDone)
    opened = [r for r in caplog.records if r.getMessage() == "session open"]
    assert [(r.subject, r.client) for r in opened] == [  # type: ignore[attr-defined]
        ("bob", "127.0.0.1"),
        ("alice", "127.0.0.1"),
    ]


async def test_a_browser_puts_the_token_in_the_query() -> None:
    async with open_daemon() as daemon:
        url = f"{daemon.url}?token={mint('carol', 60, SECRET, time.time())}"
        async with open_websocket_url(url, subprotocols=[fr.SUBPROTOCOL]) as ws:
            assert ws.subprotocol == fr.SUBPROTOCOL


async def test_guessing_is_rate_limited_per_address() -> None:
    async with open_daemon(authenticator=authenticator(max_failures=3)) as daemon:
        for guess in range(3):
            assert (await refused(daemon.url, f"guess-number-{guess:010d}")).status == 401
        locked = await refused(daemon.url, BOB)  # even the right token, while locked out
        assert locked.status == 429
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(
                daemon.url,
                subprotocols=[fr.SUBPROTOCOL],
                extra_headers=[(b"Authorization", f"Bearer {BOB}".encode())],
            ):
                pass
        assert dict(info.value.headers or [])[b"retry-after"].isdigit()


async def test_unauthenticated_sockets_cannot_take_the_slots() -> None:
    """Five upgrades without a token used to hold all five slots and lock out the token
    holder (503); now they are refused before a slot is taken."""
    async with open_daemon(max_sessions=5) as daemon, trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(refused, daemon.url)
        await trio.sleep(0.2)
        assert isinstance(await speak(daemon.url, BOB), fr.UtteranceDone)


async def test_an_upgrade_is_checked_before_the_load_is_told() -> None:
    async with open_daemon(max_sessions=1) as daemon, open_session(daemon.url, token=BOB):
        full = await refused(daemon.url, BOB)
        assert full.status == 503
        assert (await refused(daemon.url)).status == 401  # strangers learn nothing


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_tls_end_to_end(ca: trustme.CA, tmp_path: Path) -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    tls = TlsSettings(cert=str(cert_path), key=str(key_path))
    async with open_daemon(tls=tls) as daemon:
        assert daemon.url.startswith("wss://")
        end = await speak(daemon.url, BOB, ca=str(ca_path))
        assert isinstance(end, fr.UtteranceDone)


async def test_sessions_per_subject_are_limited() -> None:
    async with open_daemon(max_sessions_per_subject=1) as daemon:
        async with open_session(daemon.url, token=BOB):
            again = await refused(daemon.url, BOB)
            assert again.status == 429 and "1 sessions of bob" in str(again)
            alice = mint("alice", 60, SECRET, time.time())  # another subject is not counted
            assert isinstance(await speak(daemon.url, alice), fr.UtteranceDone)
        await until(lambda: daemon.by_subject == {})  # the daemon sees the close soon after


async def test_a_session_is_resumed_only_by_its_own_subject() -> None:
    """Alice's session id and resume token are not enough for bob: the subject must match."""
    import json

    from trio_websocket import ConnectionClosed

    from duplexd.protocol.codec import Decoder, encode

    alice = mint("alice", 60, SECRET, time.time())
    async with (
        open_daemon() as daemon,
        open_session(daemon.url, token=alice, resume=False) as session,
    ):
        resume = session.info["resume"]
        options = {
            "resume": {
                "session_id": session.welcome.session_id.hex(),
                "token": resume["token"],
                "received": 0,
            }
        }
        async with open_websocket_url(
            daemon.url,
            subprotocols=[fr.SUBPROTOCOL],
            extra_headers=[(b"Authorization", f"Bearer {BOB}".encode())],
        ) as ws:
            await ws.send_message(encode(fr.Hello(options=json.dumps(options))))
            decoder = Decoder(peer="server")
            decoder.receive_data(await ws.get_message())
            error = decoder.next_frame()
            assert isinstance(error, fr.Error) and error.code is fr.ErrorCode.RESUME_FAILED
            with pytest.raises(ConnectionClosed):
                await ws.get_message()
