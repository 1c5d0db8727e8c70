"""`duplexd chat`: the OpenAI-compatible streaming adapter (against a local test double of the
endpoint) and the whole chat client against a real daemon (subprocesses)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import h11
import numpy as np
import pytest
import trio

from duplexd.client.agent import DemoResponder, LLMError, OpenAIResponder, stream_chat_completion

ROOT = Path(__file__).resolve().parents[1]


async def serve_sse(
    tokens: list[str], requests: list[dict[str, Any]], gate: trio.Event | None = None,
    status: int = 200, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:  # fmt: skip
    """A one-connection-at-a-time fake of /v1/chat/completions streaming `tokens`."""

    async def handle(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        body = b""
        target = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Request):
                target = event.target
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        requests.append({"target": target.decode(), **json.loads(body)})
        headers = [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        if status != 200:
            await stream.send_all(conn.send(h11.Data(data=b'{"error": "nope"}')))
        else:
            await stream.send_all(conn.send(h11.Data(data=b": keep-alive\n\n")))
            for i, token in enumerate(tokens):
                chunk = {
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": token}}],
                }
                await stream.send_all(
                    conn.send(h11.Data(data=f"data: {json.dumps(chunk)}\n\n".encode()))
                )
                if i == 0 and gate is not None:
                    await gate.wait()  # the client must have the first token before the rest
            await stream.send_all(conn.send(h11.Data(data=b"data: [DONE]\n\n")))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


@pytest.mark.unit
async def test_openai_adapter_streams_tokens_as_they_arrive() -> None:
    tokens = ["Sure", ",", " the", " weather", " is", " fine", "."]
    requests: list[dict[str, Any]] = []
    gate = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_sse, tokens, requests, gate)
        llm = OpenAIResponder(f"http://127.0.0.1:{port}/v1", "tiny-model", api_key="k")
        got = []
        with trio.fail_after(10):
            async for token in llm.reply("How is the weather?"):
                got.append(token)
                gate.set()  # only now does the server send the rest
        assert got == tokens
        nursery.cancel_scope.cancel()
    req = requests[0]
    assert req["target"] == "/v1/chat/completions" and req["stream"] is True
    assert req["model"] == "tiny-model"
    assert req["messages"][-1] == {"role": "user", "content": "How is the weather?"}
    assert llm.history[-1] == {"role": "assistant", "content": "".join(tokens)}


@pytest.mark.unit
async def test_openai_adapter_errors() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_sse, [], [], None, 500)
        with pytest.raises(LLMError, match="HTTP 500"):
            async for _ in stream_chat_completion(f"http://127.0.0.1:{port}/x", {}):
                pass
        nursery.cancel_scope.cancel()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(LLMError, match="cannot connect"):
        async for _ in stream_chat_completion(f"http://127.0.0.1:{free}/x", {}, timeout_s=2):
            pass


@pytest.mark.unit
async def test_demo_responder() -> None:
    words = [w async for w in DemoResponder().reply("What is the weather like?")]
    assert "sunny" in "".join(words)
    assert "".join([w async for w in DemoResponder().reply("Turn left")]).strip() == (
        "You said: Turn left."
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
@pytest.mark.slow
def test_chat_with_mic_file_against_a_daemon(tmp_path: Path) -> None:
    from asr_helpers import transcribe, word_error_rate
    from speech import clip

    question = "Can you tell me what the weather is like today?"
    audio = np.concatenate((np.zeros(8000), clip(question), np.zeros(8000)))
    q = tmp_path / "question.wav"
    with wave.open(str(q), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
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
             "--mic-file", str(q), "--out", str(out), "--max-turns", "1", "--timeout", "60"],
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
    heard = next(line[len("you: ") :] for line in lines if line.startswith("you: "))
    assert word_error_rate([question], [heard]) <= 0.15
    assert any(line.startswith("agent: I cannot see outside") for line in lines)
    assert any("end of speech -> first reply audio" in line for line in lines)
    with wave.open(str(out), "rb") as w:
        rate = w.getframerate()
        reply = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    assert len(reply) / rate > 1.0
    expected = "I cannot see outside, but I hope it is sunny where you are."
    assert word_error_rate([expected], [transcribe(reply, rate)]) <= 0.3
