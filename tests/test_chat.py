"""`duplexd chat`: the OpenAI-compatible streaming adapter (against a local test double of the
endpoint, over real sockets) and the whole chat client against a real daemon (subprocesses)."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import numpy as np
import pytest
import trio
import trustme

from bench.daemon import free_port
from duplexd.client.agent import DemoResponder, LLMError, OpenAIResponder, stream_chat_completion

ROOT = Path(__file__).resolve().parents[1]

# httpx 0.28 and httpcore read a response through nested async generators that nobody closes
# when the reader stops early (at `[DONE]`, an error or a cancel): the connection is closed, but
# trio warns as each generator is collected (encode/httpx#3686). Only those warnings are allowed;
# a socket left open still fails (see `_collect_leaked_sockets`).
HTTPX_ASYNC_GENERATORS = (
    "ignore:Exception ignored in. <async_generator object "
    r"(Response\.aiter_|BoundAsyncStream\.|AsyncResponseStream\.|PoolByteStream\.|"
    r"HTTP11ConnectionByteStream\.|AsyncHTTP11Connection\._receive_response_body)"
    ":pytest.PytestUnraisableExceptionWarning"
)
pytestmark = pytest.mark.filterwarnings(HTTPX_ASYNC_GENERATORS)


@pytest.fixture(autouse=True)
def _collect_leaked_sockets() -> Iterator[None]:
    yield
    gc.collect()  # a socket left open now warns, and warnings are errors, in this test


def sse(*tokens: str) -> list[str]:
    """The data of the events that stream `tokens`, then `[DONE]`."""
    return [
        json.dumps({
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": token}}],
        })
        for token in tokens
    ] + ["[DONE]"]  # fmt: skip


@dataclass
class FakeLLM:
    """A test double of an OpenAI-compatible `/v1/chat/completions`: h11 over trio (TLS with
    `ssl_context`), keep-alive, one request at a time on each connection.

    Every request is answered with `status`: 200 streams `events` as server-sent events
    (chunked), holding after `hold_at` of them until `gate` is set or the client goes away;
    any other status sends `error` as a JSON body with a Content-Length. `client_gone` is set
    when a connection ends."""

    events: list[str] = field(default_factory=list)
    status: int = 200
    error: dict[str, Any] = field(default_factory=dict)
    hold_at: int | None = None
    ssl_context: ssl.SSLContext | None = None
    gate: trio.Event = field(default_factory=trio.Event)
    client_gone: trio.Event = field(default_factory=trio.Event)
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        tcp = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(tcp[0].socket.getsockname()[1])
        if self.ssl_context is None:
            await trio.serve_listeners(self._handle, tcp)
        else:
            tls = [trio.SSLListener(listener, self.ssl_context) for listener in tcp]
            await trio.serve_listeners(self._handle, tls)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while await self._exchange(conn, stream):
                conn.start_next_cycle()
        except trio.BrokenResourceError:
            pass  # the client reset the connection, or failed the TLS handshake
        finally:
            self.client_gone.set()
            await trio.aclose_forcefully(stream)

    async def _exchange(self, conn: h11.Connection, stream: trio.abc.Stream) -> bool:
        """One request and its response; False once the client has closed the connection."""
        target, headers, body = b"", {}, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.ConnectionClosed):
                return False
            elif isinstance(event, h11.Request):
                target, headers = event.target, {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        self.requests.append({"target": target.decode(), "headers": headers, **json.loads(body)})
        if self.status != 200:
            error = json.dumps(self.error).encode()
            head = [("Content-Type", "application/json"), ("Content-Length", str(len(error)))]
            await stream.send_all(
                conn.send(h11.Response(status_code=self.status, headers=head))
                + conn.send(h11.Data(data=error))
                + conn.send(h11.EndOfMessage())
            )
        else:
            head = [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")]
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=head)))
            await stream.send_all(conn.send(h11.Data(data=b": keep-alive\n\n")))
            for i in range(len(self.events) + 1):
                if i == self.hold_at and not await self._hold(conn, stream):
                    return False
                if i < len(self.events):
                    data = f"data: {self.events[i]}\n\n".encode()
                    await stream.send_all(conn.send(h11.Data(data=data)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _hold(self, conn: h11.Connection, stream: trio.abc.Stream) -> bool:
        """Wait for `gate`; False if the client closes the connection first."""
        gone = False

        async def watch() -> None:
            nonlocal gone
            with contextlib.suppress(trio.BrokenResourceError):
                while data := await stream.receive_some(65536):
                    conn.receive_data(bytes(data))
            gone = True
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await self.gate.wait()
            nursery.cancel_scope.cancel()
        return not gone


@pytest.mark.integration
async def test_openai_adapter_streams_tokens_as_they_arrive() -> None:
    tokens = ["Sure", ",", " the", " weather", " is", " fine", "."]
    fake = FakeLLM(sse(*tokens), hold_at=1)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(fake.serve)
        llm = OpenAIResponder(f"http://127.0.0.1:{port}/v1", "tiny-model", api_key="k")
        got = []
        with trio.fail_after(10):
            async for token in llm.reply("How is the weather?"):
                got.append(token)
                fake.gate.set()  # only now does the server send the rest
            assert got == tokens
            await fake.client_gone.wait()
        nursery.cancel_scope.cancel()
    [req] = fake.requests
    assert req["target"] == "/v1/chat/completions" and req["stream"] is True
    assert req["headers"]["authorization"] == "Bearer k"
    assert req["headers"]["accept"] == "text/event-stream"
    assert req["model"] == "tiny-model"
    assert req["messages"][-1] == {"role": "user", "content": "How is the weather?"}
    assert llm.history[-1] == {"role": "assistant", "content": "".join(tokens)}


@pytest.mark.integration
async def test_openai_adapter_keeps_what_the_user_heard_of_a_reply_in_its_context() -> None:
    """`heard` cuts a reply in the history to what was heard: the next request carries that;
    a reply of which nothing was heard goes; one the history no longer has changes nothing."""
    tokens = ["Sure,", " the", " weather", " is", " fine."]
    fake = FakeLLM(sse(*tokens))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(fake.serve)
        llm = OpenAIResponder(f"http://127.0.0.1:{port}/v1", "tiny-model")
        with trio.fail_after(10):
            assert [t async for t in llm.reply("How is the weather?")] == tokens
            llm.heard("Sure, the weather is fine.", "Sure, the weather")
            llm.heard("Something never said.", "Something")
            assert [t async for t in llm.reply("And tomorrow?")] == tokens
            llm.heard("Sure, the weather is fine.", "")
        nursery.cancel_scope.cancel()
    assert fake.requests[1]["messages"][1:] == [
        {"role": "user", "content": "How is the weather?"},
        {"role": "assistant", "content": "Sure, the weather"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert llm.history[1:] == fake.requests[1]["messages"][1:]  # (the second reply: unheard)


@pytest.mark.integration
async def test_openai_adapter_stops_at_done_without_waiting_for_the_end_of_the_body() -> None:
    fake = FakeLLM(sse("all", " of", " it"), hold_at=4)  # after [DONE]: never sends the end
    async with trio.open_nursery() as nursery:
        port = await nursery.start(fake.serve)
        with trio.fail_after(10):
            got = [t async for t in stream_chat_completion(f"http://127.0.0.1:{port}/v1/x", {})]
            assert got == ["all", " of", " it"]
            await fake.client_gone.wait()
        nursery.cancel_scope.cancel()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (
            401,
            {"error": {"message": "Incorrect API key\nprovided.", "type": "invalid_request_error"}},
            "Incorrect API key provided.",
        ),
        (500, {"error": "nope"}, "nope"),
        (503, {}, "{}"),
    ],
)
async def test_openai_adapter_http_error(status: int, error: dict[str, Any], message: str) -> None:
    fake = FakeLLM(status=status, error=error)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(fake.serve)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        with trio.fail_after(10), pytest.raises(LLMError) as caught:
            async for _ in stream_chat_completion(url, {}):
                pass
        nursery.cancel_scope.cancel()
    assert str(caught.value) == f"HTTP {status} from {url}: {message}"


@pytest.mark.integration
async def test_openai_adapter_connection_refused_and_bad_urls() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with (
        trio.fail_after(10),
        pytest.raises(LLMError, match=f"^cannot connect to 127.0.0.1:{free}: "),
    ):
        async for _ in stream_chat_completion(f"http://127.0.0.1:{free}/x", {}, timeout_s=2):
            pass
    for url in ("ftp://127.0.0.1/x", "http:///x"):
        with pytest.raises(LLMError, match="not an http"):
            async for _ in stream_chat_completion(url, {}):
                pass


@pytest.mark.integration
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", r"^malformed chat.completion.chunk: '{not json'$"),
        ('{"choices": "none"}', r"^malformed chat.completion.chunk: "),
        ('{"error": {"message": "model overloaded"}}', r"mid-stream: model overloaded$"),
    ],
)
async def test_openai_adapter_malformed_event(bad: str, message: str) -> None:
    fake = FakeLLM([*sse("fine")[:1], bad, *sse(" after")])
    async with trio.open_nursery() as nursery:
        port = await nursery.start(fake.serve)
        got = []
        with trio.fail_after(10):
            with pytest.raises(LLMError, match=message):
                async for token in stream_chat_completion(f"http://127.0.0.1:{port}/v1/x", {}):
                    got.append(token)
            await fake.client_gone.wait()
        nursery.cancel_scope.cancel()
    assert got == ["fine"]


@pytest.mark.integration
@pytest.mark.slow  # waits 0.3 s of real time for the read timeout (httpx's own clock)
async def test_openai_adapter_times_out_waiting_for_data() -> None:
    fake = FakeLLM(sse("one", " two"), hold_at=1)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(fake.serve)
        url = f"http://127.0.0.1:{port}/v1/x"
        got = []
        with trio.fail_after(10):
            with pytest.raises(LLMError, match=r"^chat stream from .* timed out after 0.3 s"):
                async for token in stream_chat_completion(url, {}, timeout_s=0.3):
                    got.append(token)
            await fake.client_gone.wait()
        nursery.cancel_scope.cancel()
    assert got == ["one"]


@pytest.mark.integration
@pytest.mark.parametrize("where", ["in the stream", "in the caller", "break"])
async def test_openai_adapter_cancelled_mid_stream_closes_the_connection(where: str) -> None:
    """A cancel that lands while the adapter waits for data, or while the caller (which closes
    the reply with `aclosing`, as `duplexd chat` does) is busy with a token; or a `break`."""
    fake = FakeLLM(sse("one", " two"), hold_at=1)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(fake.serve)
        llm = OpenAIResponder(f"http://127.0.0.1:{port}/v1", "tiny-model")
        got = []
        with trio.fail_after(10):
            with trio.CancelScope() as scope:
                async with aclosing(llm.reply("Tell me a story.")) as tokens:
                    async for token in tokens:
                        got.append(token)
                        if where == "break":
                            break
                        scope.cancel()
                        if where == "in the caller":
                            await trio.sleep_forever()
            assert scope.cancelled_caught == (where != "break")
            await fake.client_gone.wait()
        nursery.cancel_scope.cancel()
    assert got == ["one"]
    assert llm.history[-2:] == [  # what was said before the cut (a barge-in's HEARD cuts it)
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": "one"},
    ]


@pytest.mark.integration
async def test_openai_adapter_over_tls() -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    fake = FakeLLM(sse("secure", " hello"), ssl_context=server)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(fake.serve)
        url = f"https://127.0.0.1:{port}/v1/chat/completions"
        with trio.fail_after(10):
            got = [t async for t in stream_chat_completion(url, {}, ssl_context=client)]
            assert got == ["secure", " hello"]
            with pytest.raises(LLMError, match=r"^cannot connect to .*CERTIFICATE_VERIFY_FAILED"):
                async for _ in stream_chat_completion(url, {}):  # the system's CAs: not this one
                    pass
        nursery.cancel_scope.cancel()
    assert len(fake.requests) == 1


@pytest.mark.unit
async def test_demo_responder() -> None:
    words = [w async for w in DemoResponder().reply("What is the weather like?")]
    assert "sunny" in "".join(words)
    assert "".join([w async for w in DemoResponder().reply("Turn left")]).strip() == (
        "You said: Turn left."
    )


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("noisy", [False, True], ids=["clean", "noisy_with_suppression"])
def test_chat_with_a_mic_file_against_a_daemon(tmp_path: Path, noisy: bool) -> None:
    from test_denoise import pink

    from bench.asr_helpers import transcribe, word_error_rate
    from bench.speech import clip

    question = "Can you tell me what the weather is like today?"
    audio = np.concatenate((np.zeros(8000), clip(question), np.zeros(8000)))
    if noisy:  # a fan 15 dB under the voice, taken out by the server
        voice_rms = float(np.sqrt(np.mean(audio[audio != 0] ** 2)))
        audio = audio + pink(len(audio), 20 * np.log10(voice_rms) - 15.0)
    q = tmp_path / "question.wav"
    with wave.open(str(q), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    port = free_port()
    # the reply's words are judged below: the voice without sampling noise says them the same way
    # each run (with noise, one run in many read "that side" for "outside": WER 0.31)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DUPLEXD_ENGINE__DETERMINISTIC": "true"}
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "duplexd", "serve", "--port", str(port), "--engine", "vits",
         "--log-format", "text", "--asr-threads", "1"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "daemon did not start"
                time.sleep(0.2)
        out = tmp_path / "reply.wav"
        chat = subprocess.run(
            [sys.executable, "-m", "duplexd", "chat", "--url", f"ws://127.0.0.1:{port}/v1",
             "--mic-file", str(q), "--out", str(out), "--timeout", "60",
             "--noise-suppression", "moderate" if noisy else "off",
             *([] if noisy else ["--interim-ms", "300"])],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=90,
        )  # fmt: skip
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
    print("\n" + chat.stdout + chat.stderr)
    assert chat.returncode == 0
    lines = chat.stdout.splitlines()
    assert lines[-1] == "[done]"  # it ended by itself: the file played, the reply spoken
    heard = next(line[len("you: ") :] for line in lines if line.startswith("you: "))
    assert word_error_rate([question], [heard]) <= 0.15
    # what was said so far, while it was said (--interim-ms), never contradicted by the final
    interims = [line[len("  … ") :] for line in lines if line.startswith("  … ")]
    assert bool(interims) is not noisy
    assert all(heard.startswith(text) for text in interims)
    assert any(line.startswith("agent: I cannot see outside") for line in lines)
    assert any("end of speech -> first reply audio" in line for line in lines)
    # the end of turn split as the daemon reported it (TURN_END): its silence, then what decided
    split = next(line for line in lines if line.startswith("[latency] end of speech -> transcript"))
    found = re.search(r"end of turn \d+ ms: (\d+) ms of silence, decided by (.+?) \d+ ms", split)
    assert found is not None, split
    silence_ms = int(found[1])
    assert 200 <= silence_ms <= 1100 and found[2] in ("the turn model", "the words"), split
    with wave.open(str(out), "rb") as w:
        rate = w.getframerate()
        reply = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    assert len(reply) / rate > 1.0
    if not noisy:  # (the reply is the same either way: judged once)
        expected = "I cannot see outside, but I hope it is sunny where you are."
        assert word_error_rate([expected], [transcribe(reply, rate)]) <= 0.3
