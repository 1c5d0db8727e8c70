"""Reply generators for `duplexd chat`: the built-in demo, and any OpenAI-compatible endpoint.

A `Responder` turns the user's transcript into reply text, streamed as chunks (async
iterator) so the daemon can start speaking before the reply is complete.

`OpenAIResponder` POSTs `{"model", "messages", "stream": true}` to `<llm-url>/chat/completions`
and yields the `choices[0].delta.content` of every `data:` line of the server-sent events
(`chat.completion.chunk`) as it arrives, until `data: [DONE]`. The HTTP/1.1 client is h11 over
trio sockets (TLS for https URLs); no other HTTP library is needed.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import urlsplit

import h11
import trio

MAX_HISTORY = 20  # messages kept (besides the system prompt)
SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Answer in one or two short spoken sentences, "
    "without lists or markup."
)


class Responder(Protocol):
    def reply(self, text: str) -> AsyncIterator[str]: ...


class DemoResponder:
    """Scripted replies; anything it does not recognise is echoed back."""

    async def reply(self, text: str) -> AsyncIterator[str]:
        said = text.strip().rstrip(".!?")
        low = said.lower()
        if any(w in low.split() for w in ("hello", "hi", "hey")):
            answer = "Hello! I am the duplex demo. Say something and I will answer."
        elif "weather" in low:
            answer = "I cannot see outside, but I hope it is sunny where you are."
        elif "your name" in low:
            answer = "I am duplexd, a realtime voice daemon."
        elif said:
            answer = f"You said: {said}."
        else:
            return
        for word in answer.split(" "):
            await trio.lowlevel.checkpoint()
            yield word + " "


class LLMError(Exception):
    """The chat endpoint failed (connection, HTTP status or a malformed stream)."""


class OpenAIResponder:
    """Streams replies from an OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str = "",
        system_prompt: str = SYSTEM_PROMPT,
        timeout_s: float = 30.0,
    ) -> None:
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.history: list[dict[str, str]] = [{"role": "system", "content": system_prompt}]

    async def reply(self, text: str) -> AsyncIterator[str]:
        self.history.append({"role": "user", "content": text})
        body = {"model": self.model, "messages": self.history, "stream": True}
        parts: list[str] = []
        async for token in stream_chat_completion(
            self.url, body, api_key=self.api_key, timeout_s=self.timeout_s
        ):
            parts.append(token)
            yield token
        self.history.append({"role": "assistant", "content": "".join(parts)})
        del self.history[1 : max(1, len(self.history) - MAX_HISTORY)]


async def stream_chat_completion(
    url: str, body: dict[str, Any], *, api_key: str = "", timeout_s: float = 30.0
) -> AsyncIterator[str]:
    """POST `body` to `url` and yield the content deltas of the SSE stream as they arrive.

    `timeout_s` bounds the connection and each wait for data. Raises `LLMError`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LLMError(f"not an http(s) URL: {url}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    payload = json.dumps(body).encode()
    headers = [
        ("Host", parts.netloc),
        ("Content-Type", "application/json"),
        ("Accept", "text/event-stream"),
        ("Content-Length", str(len(payload))),
        ("User-Agent", "duplexd-chat"),
    ]
    if api_key:
        headers.append(("Authorization", f"Bearer {api_key}"))
    try:
        with trio.fail_after(timeout_s):
            stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, port)
            if parts.scheme == "https":
                ssl_stream = trio.SSLStream(
                    stream, ssl.create_default_context(), server_hostname=parts.hostname
                )
                await ssl_stream.do_handshake()
                stream = ssl_stream
    except (OSError, trio.TooSlowError) as exc:
        raise LLMError(f"cannot connect to {parts.netloc}: {exc}") from None
    conn = h11.Connection(h11.CLIENT)
    async with stream:
        try:
            await stream.send_all(
                conn.send(h11.Request(method="POST", target=target, headers=headers))
                + conn.send(h11.Data(data=payload))
                + conn.send(h11.EndOfMessage())
            )
            buffer = b""
            status = 0
            error_body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    with trio.fail_after(timeout_s):
                        conn.receive_data(bytes(await stream.receive_some(65536)))
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    if status != 200:
                        error_body += event.data
                        continue
                    buffer += event.data
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        token = _sse_token(line.strip())
                        if token is _DONE:
                            return
                        if token:
                            yield str(token)
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    if status != 200:
                        detail = error_body[:200].decode("utf-8", "replace")
                        raise LLMError(f"HTTP {status} from {url}: {detail}")
                    return
        except (h11.ProtocolError, OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            raise LLMError(f"chat stream from {url} failed: {exc!r}") from None


_DONE = object()


def _sse_token(line: bytes) -> object:
    """Content of one SSE line ("" for none), or `_DONE` for `data: [DONE]`."""
    if not line.startswith(b"data:"):
        return ""  # comments, event:, id:, blank separators
    data = line[5:].strip()
    if data == b"[DONE]":
        return _DONE
    try:
        chunk = json.loads(data)
        delta = chunk["choices"][0].get("delta") or {}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise LLMError(f"malformed chat.completion.chunk: {data[:120]!r}") from None
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""
