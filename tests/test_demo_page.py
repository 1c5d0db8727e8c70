"""The browser page on the HTTP side port (`duplexd._ops.demo`): files, config, tokens."""

from __future__ import annotations

import json
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import attrs
import pytest
from harness import http_request, running_service

from duplexd._ops.auth import read_secret_file, verify, write_secret_file
from duplexd._ops.settings import Settings, load_settings
from duplexd._server.service import Service

pytestmark = pytest.mark.integration
WEB = Path(__file__).resolve().parents[1] / "duplexd" / "web"


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
            status, headers, body = await http_request(port, path)
            assert status == 200 and headers["content-type"].startswith("text/html")
            assert body == (WEB / "index.html").read_bytes()
            assert "default-src 'self'" in headers["content-security-policy"]
        status, headers, body = await http_request(port, "/demo/duplexd.js")
        assert status == 200 and headers["content-type"].startswith("text/javascript")
        assert body == (WEB / "duplexd.js").read_bytes()
        assert (await http_request(port, "/demo/nope.js"))[0] == 404
        assert (await http_request(port, "/demo/../cli.py"))[0] == 404
        assert (await http_request(port, "/healthz"))[0] == 200  # the side port's own paths stay
        host = "voice.example:8766"
        status, headers, body = await http_request(port, "/demo/config.json", host=host)
        config = json.loads(body)
        assert status == 200 and headers["content-type"] == "application/json"
        assert config == {
            "ws_url": f"ws://voice.example:{service.daemon.port}/v1",
            "token": None,
            "auth": False,
            "sample_rate_hz": 48_000,
            "uplink_rate_hz": 16_000,  # the service hears the microphone
        }
        _, _, body = await http_request(port, "/demo/config.json", host="ev%il/x")
        assert json.loads(body)["ws_url"].startswith("ws://127.0.0.1:")


async def test_the_page_can_be_turned_off() -> None:
    async with running(settings(page=False)) as service:
        assert service.http_port
        assert (await http_request(service.http_port, "/"))[0] == 404
        assert (await http_request(service.http_port, "/demo/config.json"))[0] == 404


async def test_a_short_lived_token_only_when_the_operator_asks(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    write_secret_file(str(secret))
    base = settings(issue_tokens=True, token_ttl_s=30)
    s = attrs.evolve(base, auth=attrs.evolve(base.auth, secret_file=str(secret)))
    async with running(s) as service:
        assert service.http_port
        _, _, body = await http_request(service.http_port, "/demo/config.json")
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
