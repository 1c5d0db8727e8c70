"""The browser page on the HTTP side port (`duplexd._ops.demo`): files, config, tokens."""

from __future__ import annotations

import json
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import attrs
import pytest
import trio
from harness import running_service

from duplexd._ops.auth import read_secret_file, verify, write_secret_file
from duplexd._ops.settings import Settings, load_settings
from duplexd._server.service import Service

pytestmark = pytest.mark.integration
WEB = Path(__file__).resolve().parents[1] / "duplexd" / "web"


async def get(port: int, path: str, host: str = "127.0.0.1:1") -> tuple[int, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def running(s: Settings) -> AbstractAsyncContextManager[Service]:
    return running_service(s)


def settings(**demo: object) -> Settings:
    base = load_settings(overrides={"server": {"port": 0}, "engine": {"name": "tone"}})
    return attrs.evolve(base, demo=attrs.evolve(base.demo, **demo))


async def test_the_page_its_files_and_its_config() -> None:
    async with running(settings()) as service:
        port = service.http_port
        assert port and service.daemon
        for path in ("/", "/demo", "/demo/"):
            status, headers, body = await get(port, path)
            assert status == 200 and headers["content-type"].startswith("text/html")
            assert body == (WEB / "index.html").read_bytes()
            assert "default-src 'self'" in headers["content-security-policy"]
        status, headers, body = await get(port, "/demo/duplexd.js")
        assert status == 200 and headers["content-type"].startswith("text/javascript")
        assert body == (WEB / "duplexd.js").read_bytes()
        assert (await get(port, "/demo/nope.js"))[0] == 404
        assert (await get(port, "/demo/../cli.py"))[0] == 404
        assert (await get(port, "/healthz"))[0] == 200  # the side port's own paths stay
        status, headers, body = await get(port, "/demo/config.json", host="voice.example:8766")
        config = json.loads(body)
        assert status == 200 and headers["content-type"] == "application/json"
        assert config == {
            "ws_url": f"ws://voice.example:{service.daemon.port}/v1",
            "token": None,
            "auth": False,
            "sample_rate_hz": 48_000,
            "uplink_rate_hz": 16_000,  # the service hears the microphone
        }
        _, _, body = await get(port, "/demo/config.json", host="ev%il/x")
        assert json.loads(body)["ws_url"].startswith("ws://127.0.0.1:")


async def test_the_page_can_be_turned_off() -> None:
    async with running(settings(page=False)) as service:
        assert service.http_port
        assert (await get(service.http_port, "/"))[0] == 404
        assert (await get(service.http_port, "/demo/config.json"))[0] == 404


async def test_a_short_lived_token_only_when_the_operator_asks(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    write_secret_file(str(secret))
    base = settings(issue_tokens=True, token_ttl_s=30)
    s = attrs.evolve(base, auth=attrs.evolve(base.auth, secret_file=str(secret)))
    async with running(s) as service:
        assert service.http_port
        _, _, body = await get(service.http_port, "/demo/config.json")
    config = json.loads(body)
    assert config["auth"] is True
    principal = verify(config["token"], read_secret_file(str(secret)), time.time())
    assert principal.subject == "demo-page"
    with pytest.raises(Exception, match="expired"):
        verify(config["token"], read_secret_file(str(secret)), time.time() + 120)


def test_issuing_tokens_needs_a_secret() -> None:
    from duplexd._ops.settings import ConfigError

    with pytest.raises(ConfigError, match=r"demo\.issue_tokens"):
        load_settings(overrides={"demo": {"issue_tokens": True}})
