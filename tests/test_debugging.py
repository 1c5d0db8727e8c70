"""The debugging aids: JSON text mode, `--trace` and `duplexd probe`, against a real server."""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from duplexd._ops.trace import Tracer, debug_session
from duplexd._server.server import Daemon, serve_duplexd
from duplexd.client.probe import DEFAULT_TEXT, probe
from duplexd.engines.registry import EngineSet
from duplexd.engines.tone import ToneEngine
from duplexd.protocol import frames as fr
from duplexd.protocol.codec import Decoder, RemoteProtocolError, encode
from duplexd.protocol.jsonmode import JSON_SUBPROTOCOL, JsonTranslator, frame_to_json

MS_PER_CHAR = 20.0  # one 20 ms frame per character

pytestmark = pytest.mark.usefixtures("collect_leaked_sockets")


@contextlib.asynccontextmanager
async def open_daemon(tracer: Tracer | None = None) -> AsyncIterator[Daemon]:
    engines = EngineSet.of(ToneEngine(ms_per_char=MS_PER_CHAR))
    async with trio.open_nursery() as nursery:
        d: Daemon = await nursery.start(
            lambda task_status: serve_duplexd(
                "127.0.0.1",
                0,
                engines=engines,
                tracer=tracer,
                gil_switch_interval_s=None,
                task_status=task_status,
            )
        )
        yield d
        nursery.cancel_scope.cancel()


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    async with open_daemon() as d:
        yield d


async def _json(ws: Any) -> dict[str, Any]:
    with trio.fail_after(5):
        message = await ws.get_message()
    assert isinstance(message, str)
    out: dict[str, Any] = json.loads(message)
    return out


async def _until(ws: Any, kind: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    seen = []
    while (m := await _json(ws))["type"] != kind:
        seen.append(m)
    return m, seen


# ---------------------------------------------------------------------- JSON mode, end to end

# trio-websocket's client leaks its socket when the server closes first (see test_service.py)
CLIENT_SOCKET_LEAK = (
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)
leaky = pytest.mark.filterwarnings(CLIENT_SOCKET_LEAK)


@pytest.mark.integration
@leaky
async def test_json_text_without_hello_speaks(daemon: Daemon) -> None:
    async with open_websocket_url(daemon.url, subprotocols=[JSON_SUBPROTOCOL]) as ws:
        assert ws.subprotocol == JSON_SUBPROTOCOL
        await ws.send_message('{"type":"text","text":"Hello"}')
        welcome = await _json(ws)
        assert welcome["type"] == "welcome" and welcome["engine"] == "tone"
        assert welcome["info"]["engines"]["tone"]["default_voice"] == "sine"
        assert len(welcome["session_id"]) == 32
        started = await _json(ws)
        assert started == {"type": "utterance_started", "epoch": 0, "utterance_id": 1}
        done, audio = await _until(ws, "utterance_done")
        assert [a["seq"] for a in audio] == list(range(6))  # 5 chars + the END frame
        assert all(a["type"] == "audio" and a["samples"] == 960 for a in audio)
        assert len(base64.b64decode(audio[0]["pcm"])) == 1920
        assert audio[-1]["last"] and not audio[0]["last"]
        assert done["utterance_id"] == 1 and done["chars_spoken"] == 5


@pytest.mark.integration
@leaky
async def test_json_control_messages(daemon: Daemon) -> None:
    async with open_websocket_url(daemon.url, subprotocols=[JSON_SUBPROTOCOL]) as ws:
        await ws.send_message('{"type":"hello","pcm":false,"voice":"low","options":{}}')
        assert (await _json(ws))["voice"] == "low"
        await ws.send_message('{"type":"ping","nonce":7}')
        assert (await _json(ws))["nonce"] == 7
        await ws.send_message('{"type":"text","text":"A long sentence to cut short."}')
        await _until(ws, "utterance_started")
        await ws.send_message('{"type":"pause"}')
        _, before = await _until(ws, "paused")
        await ws.send_message('{"type":"resume"}')
        await _until(ws, "resumed")
        await ws.send_message('{"type":"interrupt"}')
        interrupted, audio = await _until(ws, "interrupted")
        assert interrupted["epoch"] == 1 and interrupted["utterance_id"] == 1
        assert all("pcm" not in a for a in before + audio if a["type"] == "audio")
        await ws.send_message('{"type":"text","text":"Hi"}')  # the next id: 2
        done, _ = await _until(ws, "utterance_done")
        assert done["utterance_id"] == 2 and done["epoch"] == 1
        await ws.send_message('{"type":"stats"}')
        stats = await _json(ws)
        assert stats["type"] == "stats" and stats["stats"]["interrupts"] == 1


@pytest.mark.integration
@leaky
async def test_json_errors_close_like_binary_ones(daemon: Daemon) -> None:
    async with open_websocket_url(daemon.url, subprotocols=[JSON_SUBPROTOCOL]) as ws:
        await ws.send_message("{not json")
        error = await _json(ws)
        assert error["type"] == "error" and error["code"] == "MALFORMED"
        assert error["message"].startswith("JSON mode: not JSON")
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        assert info.value.reason.code == fr.ErrorCode.MALFORMED.close_code


@pytest.mark.integration
@leaky
async def test_json_mode_nested_too_deep_is_malformed(daemon: Daemon) -> None:
    async with open_websocket_url(daemon.url, subprotocols=[JSON_SUBPROTOCOL]) as ws:
        await ws.send_message("[" * 100_000)
        error = await _json(ws)
        assert error["type"] == "error" and error["code"] == "MALFORMED"
        assert "nested too deeply" in error["message"]


@pytest.mark.integration
@leaky
async def test_the_subprotocol_is_required(daemon: Daemon) -> None:
    from trio_websocket import ConnectionRejected

    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(daemon.url):
            pass
    assert info.value.status_code == 400
    assert b"duplexd.v1" in (info.value.body or b"")
    assert daemon.rejected == {"subprotocol": 1}


@pytest.mark.integration
@leaky
async def test_binary_clients_still_get_not_binary(daemon: Daemon) -> None:
    async with open_websocket_url(
        daemon.url, subprotocols=[fr.SUBPROTOCOL, JSON_SUBPROTOCOL]
    ) as ws:
        assert ws.subprotocol == fr.SUBPROTOCOL  # binary wins when both are offered
        await ws.send_message('{"type":"text","text":"Hello"}')
        message = await ws.get_message()
        assert isinstance(message, bytes)
        decoder = Decoder(peer="server")
        decoder.receive_data(message)
        error = decoder.next_frame()
        assert isinstance(error, fr.Error) and error.code == fr.ErrorCode.NOT_BINARY
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        assert info.value.reason.code == fr.CloseCode.UNSUPPORTED_DATA


# ---------------------------------------------------------------------- --trace


@contextlib.asynccontextmanager
async def tracing(path: Path, which: str) -> AsyncIterator[Daemon]:
    """A daemon with --trace: sessions `which` to `path`."""
    tracer = Tracer(str(path), which)
    try:
        async with open_daemon(tracer) as d:
            yield d
    finally:
        tracer.close()


async def _say(url: str, text: str = "Hi") -> None:
    from duplexd.client.session import open_session

    async with open_session(url, token="") as session:
        await session.receive_utterance(await session.say(text))


@pytest.mark.integration
@leaky
async def test_trace_records_the_selected_session(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    async with tracing(path, "2") as daemon:
        await _say(daemon.url, "Hi")  # session 1: not traced
        await _say(daemon.url, "Yes")  # session 2
        await _say(daemon.url, "No")  # session 3: not traced
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len({r["session"] for r in records}) == 1
    kinds = [(r["dir"], r["type"]) for r in records]
    assert kinds[:2] == [("in", "hello"), ("out", "welcome")]
    assert ("in", "text") in kinds and ("out", "utterance_done") in kinds
    audio = [r for r in records if r["type"] == "audio"]
    assert [a["seq"] for a in audio] == [0, 1, 2, 3]  # "Yes": 3 frames + END
    assert all("pcm" not in r and r["samples"] == 960 for r in audio)
    assert audio[0]["bytes"] == fr.AUDIO_HEADER_BYTES + 1920
    ts = [r["t"] for r in records]
    assert ts == sorted(ts)
    # three frames' deadlines after the first: never sooner (a loaded machine may send later)
    assert 0.055 <= audio[-1]["t"] - audio[0]["t"] < 0.5
    text = next(r for r in records if r["type"] == "text")
    assert text["text"] == "Yes" and text["end"] is True


@pytest.mark.integration
@leaky
async def test_trace_hides_the_token_and_records_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    async with (
        tracing(path, "all") as daemon,
        open_websocket_url(daemon.url, subprotocols=[fr.SUBPROTOCOL]) as ws,
    ):
        await ws.send_message(encode(fr.Hello(token="s3cret", voice="nope")))
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.get_message()
    text = path.read_text()
    assert "s3cret" not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["type"] for r in records] == ["hello", "error", "close"]
    assert records[0]["token"] == "<hidden>" and records[1]["code"] == "UNKNOWN_VOICE"
    assert records[2]["code"] == fr.CloseCode.UNSUPPORTED


@pytest.mark.unit
def test_untraced_binary_sessions_get_the_socket_itself() -> None:
    class Ws:
        subprotocol = fr.SUBPROTOCOL

    ws = Ws()
    assert debug_session(ws, None) == (ws, "")  # no wrapper: nothing per frame, no recording


@pytest.mark.unit
def test_trace_session_spec(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="first, all or N"):
        Tracer(str(tmp_path / "x"), "0")
    t = Tracer(str(tmp_path / "x"), "first")
    assert [t.selects_next() for _ in range(3)] == [True, False, False]


# ---------------------------------------------------------------------- probe


@pytest.mark.integration
@leaky
async def test_probe_prints_handshake_and_one_line_per_frame(daemon: Daemon) -> None:
    args = argparse.Namespace(
        url=daemon.url, text="Hi.", voice="", engine="", token="", rate=48_000, no_frames=False
    )
    out = io.StringIO()
    timer = await probe(args, out)
    lines = out.getvalue().splitlines()
    assert lines[0] == f"url        {daemon.url}"
    assert lines[1].startswith("welcome    protocol v1, session ")
    assert "max_text_bytes=" in lines[3]
    assert lines[4] == "engine     tone on cpu: voices sine, low, high (default sine)"
    header = lines.index("    n   seq epoch arrival_ms  error_ms")
    frames = lines[header + 1 : header + 5]
    assert [int(f.split()[1]) for f in frames] == [0, 1, 2, 3]  # 3 chars + END
    assert frames[-1].endswith("last")
    assert lines[header + 5].startswith("done       4 frames (0.08 s)")
    assert len(timer.errors_ms) == 4 and timer.errors_ms[0] == 0.0
    assert max(abs(e) for e in timer.errors_ms) < 60.0  # (real arrivals: the grid's own test
    # is the slow one with its bounds; this one checks the printing)
    assert DEFAULT_TEXT.endswith(".")


# ---------------------------------------------------------------------- translation, pure


@pytest.mark.unit
def test_translator_defaults_and_streaming() -> None:
    t = JsonTranslator()
    first = t.frames('{"type":"text","text":"Hel","end":false}')
    assert first == [fr.Hello(), fr.Text(utterance_id=1, text="Hel", end=False)]
    assert t.frames('{"type":"text","text":"lo"}') == [fr.Text(1, "lo", end=True)]
    assert t.frames('{"type":"text","text":"x","utterance_id":9,"end":false}')[0].end is False
    assert t.frames('{"type":"interrupt"}') == [fr.Interrupt()]
    assert t.frames('{"type":"text","text":"y"}') == [fr.Text(10, "y", end=True)]
    assert t.frames('{"type":"get_stats"}') == [fr.GetStats()]
    pcm = base64.b64encode(b"\0\0" * 320).decode()
    assert t.frames(f'{{"type":"audio_up","seq":0,"pcm":"{pcm}"}}') == [
        fr.AudioUp(0, b"\0\0" * 320)
    ]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("message", "why"),
    [
        ("[1]", "must be a JSON object"),
        ('{"type":"nope"}', "unknown type 'nope'"),
        ('{"text":"no type"}', "unknown type None"),
        ('{"type":"text","txt":"typo"}', "text: "),
        ('{"type":"hello","pcm":"no"}', "hello.pcm must be true or false"),
        ('{"type":"audio_up","seq":0,"pcm":"**"}', "audio_up.pcm must be base64"),
    ],
)
def test_translator_rejects_bad_messages(message: str, why: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        JsonTranslator().frames(message)
    assert info.value.error_code == fr.ErrorCode.MALFORMED
    assert why in info.value.message


@pytest.mark.unit
def test_frame_to_json_shapes() -> None:
    assert frame_to_json(fr.Error(fr.ErrorCode.AUTH_FAILED, "no")) == {
        "type": "error",
        "code": "AUTH_FAILED",
        "message": "no",
    }
    assert frame_to_json(fr.Stats(json='{"a":1}')) == {"type": "stats", "stats": {"a": 1}}
    assert frame_to_json(fr.Stats(json="{bad")) == {"type": "stats", "json": "{bad"}
    audio = frame_to_json(fr.Audio(1, 2, 3, b"\1\0\2\0", last=True), pcm=False)
    assert audio == {
        "type": "audio",
        "epoch": 1,
        "utterance_id": 2,
        "seq": 3,
        "samples": 2,
        "last": True,
    }
