"""duplexd._server.listen and duplexd._ops.tls: wss:// listeners from `[tls]`, a real TLS
handshake with a certificate the test makes (trustme), no mocks."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trustme

from duplexd._ops.settings import ConfigError, TlsSettings, load_settings
from duplexd._ops.tls import TlsError, server_ssl_context
from duplexd._server.listen import open_listeners, ssl_context_from_settings


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_files(ca: trustme.CA, tmp_path: Path, *hosts: str) -> TlsSettings:
    cert = ca.issue_cert(*(hosts or ("127.0.0.1", "localhost")))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    for i, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(str(cert_path), append=i > 0)
    cert.private_key_pem.write_to_path(str(key_path))
    return TlsSettings(cert=str(cert_path), key=str(key_path))


def client_context(ca: trustme.CA | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca is not None:
        ca.configure_trust(context)
    return context


async def serve_echo(listener: trio.SSLListener[trio.SocketStream], got: list[object]) -> None:
    """Accept one connection, echo one message back (or record why the handshake failed)."""
    stream = await listener.accept()
    try:
        data = await stream.receive_some(100)
        await stream.send_all(data.upper())
        got.append(data)
    except trio.BrokenResourceError as exc:
        got.append(exc)
    finally:
        await trio.aclose_forcefully(stream)


# ---------------------------------------------------------------------- the context


@pytest.mark.unit
def test_server_context_is_tls12_or_later_server_side(ca: trustme.CA, tmp_path: Path) -> None:
    context = ssl_context_from_settings(tls_files(ca, tmp_path))
    assert context is not None
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE  # no client certificates asked for
    assert ssl_context_from_settings(None) is None
    assert ssl_context_from_settings(TlsSettings()) is None


@pytest.mark.unit
def test_unusable_certificate_or_key_is_one_line(ca: trustme.CA, tmp_path: Path) -> None:
    good = tls_files(ca, tmp_path)
    other = ca.issue_cert("example.org").private_key_pem
    other_key = tmp_path / "other-key.pem"
    other.write_to_path(str(other_key))
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    cases = [
        ((good.cert, str(other_key)), "are not a PEM certificate and its key"),
        ((str(not_pem), good.key), "are not a PEM certificate and its key"),
        ((str(tmp_path / "nope.pem"), good.key), "cannot read .*nope.pem: No such file"),
    ]
    for (cert, key), message in cases:
        with pytest.raises(TlsError, match=message) as info:
            server_ssl_context(cert, key)
        assert "\n" not in str(info.value)


@pytest.mark.unit
def test_tls_settings_are_checked_when_loaded(ca: trustme.CA, tmp_path: Path) -> None:
    good = tls_files(ca, tmp_path)
    env = {"DUPLEXD_TLS__CERT": good.cert, "DUPLEXD_TLS__KEY": good.key}
    assert load_settings(environ=env).tls == good
    with pytest.raises(ConfigError, match=r"^tls.key: tls.cert and tls.key are set together"):
        load_settings(environ={"DUPLEXD_TLS__CERT": good.cert})
    with pytest.raises(ConfigError, match=r"^tls.cert: tls.cert and tls.key are set together"):
        load_settings(environ={"DUPLEXD_TLS__KEY": good.key})
    with pytest.raises(ConfigError, match=r"^tls: .* are not a PEM certificate and its key"):
        load_settings(environ={"DUPLEXD_TLS__CERT": good.key, "DUPLEXD_TLS__KEY": good.key})


# ---------------------------------------------------------------------- real handshakes


@pytest.mark.integration
async def test_tls_listener_does_a_real_handshake(ca: trustme.CA, tmp_path: Path) -> None:
    listeners = await open_listeners("127.0.0.1", 0, tls_files(ca, tmp_path))
    assert listeners and all(isinstance(x, trio.SSLListener) for x in listeners)
    listener = listeners[0]
    assert isinstance(listener, trio.SSLListener)
    port = listener.transport_listener.socket.getsockname()[1]
    got: list[object] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_echo, listener, got)
            client = await trio.open_ssl_over_tcp_stream(
                "127.0.0.1", port, ssl_context=client_context(ca)
            )
            await client.do_handshake()
            assert client.version() in ("TLSv1.2", "TLSv1.3")
            await client.send_all(b"hello")
            assert await client.receive_some(100) == b"HELLO"
            await client.aclose()
    assert got == [b"hello"]
    for x in listeners:
        await x.aclose()


@pytest.mark.integration
async def test_a_client_without_the_ca_is_refused(ca: trustme.CA, tmp_path: Path) -> None:
    listeners = await open_listeners("127.0.0.1", 0, tls_files(ca, tmp_path))
    listener = listeners[0]
    assert isinstance(listener, trio.SSLListener)
    port = listener.transport_listener.socket.getsockname()[1]
    got: list[object] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_echo, listener, got)
            client = await trio.open_ssl_over_tcp_stream(
                "127.0.0.1",
                port,
                ssl_context=client_context(None),  # the system's CAs only
            )
            with pytest.raises(trio.BrokenResourceError) as info:
                await client.do_handshake()
            assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
            await trio.aclose_forcefully(client)
    assert len(got) == 1 and isinstance(got[0], trio.BrokenResourceError)  # the server too
    for x in listeners:
        await x.aclose()


@pytest.mark.integration
async def test_a_certificate_for_another_host_is_refused(ca: trustme.CA, tmp_path: Path) -> None:
    listeners = await open_listeners("127.0.0.1", 0, tls_files(ca, tmp_path, "example.org"))
    listener = listeners[0]
    assert isinstance(listener, trio.SSLListener)
    port = listener.transport_listener.socket.getsockname()[1]
    got: list[object] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_echo, listener, got)
            client = await trio.open_ssl_over_tcp_stream(
                "127.0.0.1", port, ssl_context=client_context(ca)
            )
            with pytest.raises(trio.BrokenResourceError) as info:
                await client.do_handshake()
            assert "127.0.0.1" in str(info.value.__cause__)  # IP address mismatch
            await trio.aclose_forcefully(client)
    for x in listeners:
        await x.aclose()


@pytest.mark.integration
async def test_without_tls_the_listeners_are_plain_tcp() -> None:
    listeners = await open_listeners("127.0.0.1", 0, None)
    assert listeners and all(isinstance(x, trio.SocketListener) for x in listeners)
    listener = listeners[0]
    assert isinstance(listener, trio.SocketListener)
    port = listener.socket.getsockname()[1]
    with trio.fail_after(10):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
        await client.send_all(b"plain")
        assert await server.receive_some(100) == b"plain"
        await client.aclose()
        await server.aclose()
    for x in listeners:
        await x.aclose()
