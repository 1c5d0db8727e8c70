"""Admission: who gets a session slot, decided before anything of a session exists."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from duplexd._ops.settings import Settings, effective_max_sessions, load_settings, session_capacity
from duplexd._server.server import Daemon, is_loopback, serve_duplexd
from duplexd.engines.registry import EngineSet
from duplexd.engines.tone import ToneEngine
from duplexd.protocol import frames as fr

# trio-websocket's client leaks its socket when the server closes first (see test_service.py)
leaky = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)

pytestmark = pytest.mark.usefixtures("collect_leaked_sockets")


@asynccontextmanager
async def open_daemon(**options: Any) -> AsyncIterator[Daemon]:
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(
            lambda task_status: serve_duplexd(
                "127.0.0.1",
                0,
                engines=EngineSet.of(ToneEngine()),
                gil_switch_interval_s=None,
                task_status=task_status,
                **options,
            )
        )
        yield daemon
        nursery.cancel_scope.cancel()


def forwarded(address: str) -> list[tuple[bytes, bytes]]:
    return [(b"X-Forwarded-For", f"198.51.100.1, {address}".encode())]


@pytest.mark.integration
@leaky
async def test_per_address_limit_counts_the_forwarded_client_behind_a_trusted_proxy() -> None:
    async with (
        open_daemon(max_sessions_per_address=2, trusted_proxies=["127.0.0.1"]) as daemon,
        trio.open_nursery() as nursery,
    ):
        held = trio.Event()

        async def hold(address: str, *, task_status: trio.TaskStatus[None]) -> None:
            async with open_websocket_url(
                daemon.url, subprotocols=[fr.SUBPROTOCOL], extra_headers=forwarded(address)
            ):
                task_status.started()
                await held.wait()

        with trio.fail_after(5):
            for address in ("203.0.113.5", "203.0.113.5", "203.0.113.6"):
                await nursery.start(hold, address)
        assert daemon.by_address == {"203.0.113.5": 2, "203.0.113.6": 1}
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(
                daemon.url, subprotocols=[fr.SUBPROTOCOL], extra_headers=forwarded("203.0.113.5")
            ):
                pass
        assert info.value.status_code == 429
        assert b"2 sessions from 203.0.113.5" in (info.value.body or b"")
        assert daemon.rejected == {"address": 1}
        held.set()
    assert daemon.by_address == {}  # every slot given back


@pytest.mark.integration
@leaky
async def test_a_forwarded_header_from_an_untrusted_peer_is_ignored() -> None:
    async with (
        open_daemon(max_sessions_per_address=1) as daemon,
        open_websocket_url(
            daemon.url, subprotocols=[fr.SUBPROTOCOL], extra_headers=forwarded("203.0.113.5")
        ),
    ):
        assert daemon.by_address == {"127.0.0.1": 1}  # the peer itself, not the header
        # loopback (the app next to the daemon, a local proxy) is not limited per address
        async with open_websocket_url(daemon.url, subprotocols=[fr.SUBPROTOCOL]):
            assert daemon.by_address == {"127.0.0.1": 2}


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.8.9.1")
    assert not is_loopback("203.0.113.5") and not is_loopback("10.0.0.1")


def test_max_sessions_auto_follows_the_engine_and_the_cores() -> None:
    assert session_capacity("tone", "cpu", cores=2) == (50, "tone on 2 CPU cores x 25")
    assert session_capacity("vits", "cpu", cores=16)[0] == 16
    assert session_capacity("vits", "cuda", cores=16)[0] == 64
    assert session_capacity("vits", "auto", cores=2, cuda=False)[0] == 2
    assert session_capacity("someplugin", "cpu", cores=1)[0] == 2  # never under 2
    s = Settings()
    assert s.server.max_sessions == "auto"
    assert effective_max_sessions(s, cuda=True) == 64
    s = load_settings(overrides={"server": {"max_sessions": 7}})
    assert effective_max_sessions(s) == 7
    assert effective_max_sessions(load_settings(environ={"DUPLEXD_SERVER__MAX_SESSIONS": "0"})) == 0


@pytest.mark.parametrize("bad", ["lots", -1, 2.5, True])
def test_max_sessions_must_be_auto_or_a_count(bad: object, tmp_path: Any) -> None:
    from duplexd._ops.settings import ConfigError

    path = tmp_path / "d.toml"
    value = f'"{bad}"' if isinstance(bad, str) else str(bad).lower()
    path.write_text(f"[server]\nmax_sessions = {value}\n")
    with pytest.raises(ConfigError, match=r"server\.max_sessions"):
        load_settings(str(path))


@pytest.mark.integration
@pytest.mark.slow
@leaky
async def test_a_client_in_debt_is_refused_at_the_door_until_it_paid() -> None:
    """A flood that closes and reopens sessions: a session that ends (here: over its frame
    budget) in debt of loop time leaves the debt to its client, whose next upgrades get 429
    with Retry-After (no handshake, no session) until it is paid; another client is served."""
    from duplexd._ops.settings import SessionLimits
    from duplexd._server.limits import SESSION_OPEN_S
    from duplexd.protocol.codec import Decoder, encode

    # the burst pays for the opening; then 10 frames at 0.03 % of the loop: ~1 s of debt
    limits = SessionLimits(
        input_share=0.0003, input_burst_s=SESSION_OPEN_S, frame_burst=10, resume_window_s=0
    )

    async def open_session(address: str, message: bytes = b"") -> fr.Frame | None:
        """Hello, then `message`: the Error it gets (None: the Welcome, then a clean close)."""
        async with open_websocket_url(
            daemon.url, subprotocols=[fr.SUBPROTOCOL], extra_headers=forwarded(address)
        ) as ws:
            await ws.send_message(encode(fr.Hello()))
            decoder = Decoder(peer="server")
            decoder.receive_data(await ws.get_message())
            assert isinstance(decoder.next_frame(), fr.Welcome)
            if not message:
                return None
            await ws.send_message(message)
            decoder.receive_data(await ws.get_message())
            return decoder.next_frame()

    async with open_daemon(limits=limits, trusted_proxies=["127.0.0.1"]) as daemon:
        over = await open_session("203.0.113.7", encode(fr.Text(1, "")) * 11)
        assert isinstance(over, fr.Error) and over.code is fr.ErrorCode.LIMIT_EXCEEDED
        with trio.fail_after(5):
            while daemon.sessions:  # noqa: ASYNC110 (the daemon has seen the end)
                await trio.sleep(0.01)
        with pytest.raises(ConnectionRejected) as info:
            await open_session("203.0.113.7")
        assert info.value.status_code == 429
        headers = {k.lower(): v for k, v in info.value.headers or []}
        retry_after_s = int(headers[b"retry-after"])
        assert retry_after_s >= 1
        assert b"spent its budget" in (info.value.body or b"")
        assert daemon.rejected == {"budget": 1}
        assert await open_session("203.0.113.8") is None  # another client: served
        await trio.sleep(retry_after_s)
        assert await open_session("203.0.113.7") is None  # paid: served again
