"""The SDK's side of auth and TLS: the token travels as ``Authorization: Bearer`` (not in
Hello), wss:// trusts `ca=`, a refused upgrade is a one-line `SessionError` with its HTTP
status; the connection flags of `say`, `chat` and `probe`.

The server here is a stand-in: trio-websocket over `duplexd._server.listen.open_listeners`,
asking a real `Authenticator` before it accepts (as the daemon does), then answering Hello
with a Welcome."""

from __future__ import annotations

import argparse
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trustme
from trio_websocket import WebSocketConnection, WebSocketRequest, WebSocketServer

from duplexd import cli
from duplexd._ops.auth import Authenticator, AuthError, FailureLimiter, Principal, StaticToken, mint
from duplexd._ops.settings import TlsSettings
from duplexd._server.listen import open_listeners
from duplexd.client.connect import ConnectArgsError, add_connection_arguments, connect_options
from duplexd.client.errors import ConnectionLost
from duplexd.client.session import (
    ConnectError,
    HandshakeRejected,
    ServerError,
    SessionError,
    open_session,
)
from duplexd.protocol import frames as fr
from duplexd.protocol.codec import Decoder, encode

SECRET = b"0123456789abcdef0123456789abcdef"
ALICE = "alice-static-token-0001"

# trio-websocket 0.12's client never closes its TCP socket when the server closes first or
# rejects the upgrade (see test_service.py); these tests make the server do both.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
    ),
    pytest.mark.usefixtures("collect_leaked_sockets"),
]


@dataclass
class StandIn:
    url: str
    seen: list[tuple[Principal, fr.Hello, list[tuple[bytes, bytes]]]] = field(default_factory=list)


def welcome(hello: fr.Hello) -> fr.Welcome:
    return fr.Welcome(
        version=fr.PROTOCOL_VERSION,
        session_id=bytes(16),
        sample_rate_hz=hello.sample_rate_hz,
        frame_samples=fr.frame_samples(hello.sample_rate_hz),
        uplink_rate_hz=0,
        max_frame_bytes=fr.MAX_FRAME_BYTES,
        max_text_bytes=1000,
        max_queued_utterances=4,
        engine="tone",
        voice="sine",
    )


@asynccontextmanager
async def stand_in(auth: Authenticator, tls: TlsSettings | None = None) -> AsyncIterator[StandIn]:
    listeners = await open_listeners("127.0.0.1", 0, tls)

    async def handle(request: WebSocketRequest) -> None:
        peer = str(getattr(request.remote, "address", request.remote))
        try:
            principal = auth.check(request.headers, request.path, peer)
        except AuthError as exc:
            retry = [(b"retry-after", b"%d" % exc.retry_after_s)] if exc.retry_after_s else []
            await request.reject(exc.status, extra_headers=retry, body=f"{exc}\n".encode())
            return
        ws: WebSocketConnection = await request.accept(subprotocol=fr.SUBPROTOCOL)
        decoder = Decoder(peer="client")
        message = await ws.get_message()
        assert isinstance(message, bytes)
        decoder.receive_data(message)
        hello = decoder.next_frame()
        assert isinstance(hello, fr.Hello)
        box.seen.append((principal, hello, list(request.headers)))
        await ws.send_message(encode(welcome(hello)))
        await ws.aclose()

    server = WebSocketServer(handle, listeners)
    scheme = "wss" if tls else "ws"
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        box = StandIn(f"{scheme}://127.0.0.1:{server.port}{fr.WS_PATH}")
        yield box
        nursery.cancel_scope.cancel()


def authenticator(max_failures: int = 10) -> Authenticator:
    return Authenticator(
        [StaticToken.of("alice", ALICE)], SECRET, limiter=FailureLimiter(max_failures, 60.0)
    )


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls(ca: trustme.CA, tmp_path: Path) -> TlsSettings:
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    return TlsSettings(cert=str(tmp_path / "server.pem"), key=str(tmp_path / "server.pem"))


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


# ---------------------------------------------------------------------- the token


@pytest.mark.integration
async def test_the_token_is_a_bearer_header_and_not_in_hello() -> None:
    async with stand_in(authenticator()) as server:
        with trio.fail_after(10):
            async with open_session(server.url, token=ALICE) as session:
                assert session.welcome.engine == "tone"
    [(principal, hello, headers)] = server.seen
    assert principal == Principal("alice", "static")
    assert hello.token == ""
    assert (b"authorization", f"Bearer {ALICE}".encode()) in headers


@pytest.mark.integration
async def test_a_browser_style_query_token_works_too() -> None:
    token = mint("web-7", 60, SECRET, time.time())
    async with stand_in(authenticator()) as server:
        with trio.fail_after(10):
            async with open_session(f"{server.url}?token={token}"):
                pass
    assert server.seen[0][0].subject == "web-7"


@pytest.mark.integration
async def test_a_refused_upgrade_is_one_line_with_its_status() -> None:
    async with stand_in(authenticator(max_failures=2)) as server:
        cases = [
            ({}, 401, "HTTP 401: missing token"),
            ({"token": "wrong-token-0000000"}, 401, "HTTP 401: bad token"),
            ({"token": ALICE}, 429, "HTTP 429: too many failed attempts, retry in 60 s"),
        ]
        for kwargs, status, message in cases:
            with trio.fail_after(10), pytest.raises(SessionError) as info:
                async with open_session(f"{server.url}?x=secret-query", **kwargs):
                    pass
            assert info.value.status == status
            assert isinstance(info.value, HandshakeRejected)  # the typed kind of refusal
            assert info.value.reason == message.split(": ", 1)[1]
            assert str(info.value) == f"{server.url} refused the session: {message}"
            assert "secret-query" not in str(info.value)  # a query string may hold a token


@pytest.mark.integration
async def test_a_refusal_without_a_body_names_the_status() -> None:
    async def handle(request: WebSocketRequest) -> None:
        await request.reject(403)

    listeners = await open_listeners("127.0.0.1", 0, None)
    server = WebSocketServer(handle, listeners)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        url = f"ws://127.0.0.1:{server.port}/v1"
        with trio.fail_after(10), pytest.raises(SessionError, match=r"HTTP 403: Forbidden$") as e:
            async with open_session(url, token=ALICE):
                pass
        assert e.value.status == 403 and e.value.code is None
        nursery.cancel_scope.cancel()


@pytest.mark.integration
async def test_nothing_listening_is_one_line() -> None:
    listeners = await open_listeners("127.0.0.1", 0, None)
    port = listeners[0].socket.getsockname()[1]  # type: ignore[union-attr]
    for x in listeners:
        await x.aclose()
    with trio.fail_after(10), pytest.raises(SessionError, match=r"^cannot connect to ws://") as e:
        async with open_session(f"ws://127.0.0.1:{port}/v1"):
            pass
    assert e.value.status is None and "\n" not in str(e.value)
    assert isinstance(e.value, ConnectError)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (
            "nothing",  # a wedged daemon; a new session while its model process restarts
            ConnectError,
            "the server accepted the connection but did not answer the Hello in 0.5 s"
            " (starting, overloaded, or waiting for its model process): try again, or give it"
            " longer (connect_timeout_s)",
        ),
        ("close", ConnectionLost, "connection closed during handshake (1000 NORMAL_CLOSURE)"),
        ("garbage", ServerError, "server broke the protocol in its Welcome: "),
    ],
)
async def test_a_hello_answered_by_nothing_a_close_or_garbage_is_one_line(
    answer: str, error: type[SessionError], message: str
) -> None:
    """A daemon that accepts the WebSocket and then answers the Hello wrongly: the SDK's
    typed error, in one line (not trio's TooSlowError, trio-websocket's ConnectionClosed or
    the codec's RemoteProtocolError)."""
    listeners = await open_listeners("127.0.0.1", 0, None)

    async def odd(request: WebSocketRequest) -> None:
        ws = await request.accept(subprotocol=fr.SUBPROTOCOL)
        await ws.get_message()  # the Hello
        if answer == "close":
            await ws.aclose()
            return
        if answer == "garbage":
            await ws.send_message(b"\x00\x00\x00\x01\xff")  # a frame of an unknown type
        await trio.sleep_forever()

    server = WebSocketServer(odd, listeners)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        url = f"ws://127.0.0.1:{server.port}{fr.WS_PATH}"
        with trio.fail_after(10), pytest.raises(error) as e:
            async with open_session(url, connect_timeout_s=0.5):
                pass
        nursery.cancel_scope.cancel()
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.unit
async def test_sdk_argument_mistakes() -> None:
    for kwargs, message in [
        ({"token": "two words"}, "printable ASCII without spaces"),
        ({"token": "n\u00e9e"}, "printable ASCII without spaces"),
        ({"ca": "ca.pem"}, "need a wss:// URL"),
        ({"ssl_context": ssl.create_default_context()}, "need a wss:// URL"),
    ]:
        with pytest.raises(ValueError, match=message):
            async with open_session("ws://127.0.0.1:1/v1", **kwargs):  # type: ignore[arg-type]
                pass
    with pytest.raises(ValueError, match=r"not both"):
        async with open_session("wss://x/v1", ca="a", ssl_context=ssl.create_default_context()):
            pass


# ---------------------------------------------------------------------- wss://


@pytest.mark.integration
async def test_wss_with_a_private_ca(tls: TlsSettings, ca: trustme.CA, ca_file: str) -> None:
    async with stand_in(authenticator(), tls) as server:
        assert server.url.startswith("wss://")
        with trio.fail_after(10):
            async with open_session(server.url, token=ALICE, ca=ca_file) as session:
                assert session.welcome.voice == "sine"
            context = ssl.create_default_context()
            ca.configure_trust(context)
            async with open_session(server.url, token=ALICE, ssl_context=context):
                pass
    assert [p.subject for p, _, _ in server.seen] == ["alice", "alice"]


@pytest.mark.integration
@pytest.mark.slow
async def test_wss_without_the_ca_says_why(tls: TlsSettings) -> None:
    """The SDK does the TLS handshake itself before the upgrade (trio-websocket would only
    time out: python-trio/trio-websocket#199), so a failure is one line at once, saying why."""
    async with stand_in(authenticator(), tls) as server:
        with trio.fail_after(20), pytest.raises(SessionError) as info:
            async with open_session(server.url, token=ALICE, connect_timeout_s=1.0):
                pass
    assert str(info.value).startswith(f"cannot connect to {server.url}: TLS: ")
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert server.seen == []


# ---------------------------------------------------------------------- the flags


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_connection_arguments(p, "ws://127.0.0.1:8765/v1")
    return p.parse_args(argv)


@pytest.mark.unit
def test_token_from_the_environment_a_file_or_the_flag(tmp_path: Path) -> None:
    env = {"DUPLEXD_TOKEN": " from-env \n"}
    path = tmp_path / "token"
    path.write_text("\n  from-file  \nsecond line ignored\n")
    assert connect_options(parse(), {}).token == ""
    assert connect_options(parse(), env).token == "from-env"
    assert connect_options(parse("--token-file", str(path)), env).token == "from-file"
    assert connect_options(parse("--token", "from-flag"), env).token == "from-flag"
    assert connect_options(parse(), env).ssl_context is None


@pytest.mark.unit
def test_ca_flag_builds_a_context(ca_file: str) -> None:
    got = connect_options(parse("--url", "wss://h:1/v1", "--ca", ca_file), {})
    assert isinstance(got.ssl_context, ssl.SSLContext)
    assert got.ssl_context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.unit
def test_connection_flag_mistakes_are_one_line(tmp_path: Path, ca_file: str) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n\n")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    cases = [
        (("--token-file", str(tmp_path / "nope")), {}, "--token-file .*nope: No such file"),
        (("--token-file", str(empty)), {}, "--token-file .*empty: no token in it"),
        (("--token", "a b"), {}, "^--token: a token is printable ASCII"),
        ((), {"DUPLEXD_TOKEN": "caf\u00e9"}, "^DUPLEXD_TOKEN: a token is printable ASCII"),
        (("--ca", ca_file), {}, "only for a wss:// URL"),
        (("--url", "wss://h/v1", "--ca", str(tmp_path / "nope")), {}, "No such file"),
        (("--url", "wss://h/v1", "--ca", str(not_pem)), {}, "not a PEM CA bundle"),
    ]
    for argv, env, message in cases:
        with pytest.raises(ConnectArgsError, match=message) as info:
            connect_options(parse(*argv), env)
        assert "\n" not in str(info.value)


@pytest.mark.unit
def test_say_with_a_bad_token_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["say", "hi", "--token-file", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("duplexd say: --token-file ")


@pytest.mark.unit
def test_token_and_token_file_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["probe", "--token", "a", "--token-file", "f"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.unit
def test_the_token_flag_warns_about_ps(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("say", "chat", "probe"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "other users see it in ps" in out and "DUPLEXD_TOKEN" in out and "--ca" in out
