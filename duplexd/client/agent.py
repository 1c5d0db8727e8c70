"""Reply generators for `duplexd chat`: the built-in demo, and any OpenAI-compatible endpoint.

A `Responder` turns the user's transcript into reply text, streamed as chunks (async
iterator) so the daemon can start speaking before the reply is complete.

`OpenAIResponder` POSTs `{"model", "messages", "stream": true}` to `<llm-url>/chat/completions`
and yields the `choices[0].delta.content` of every server-sent event (`chat.completion.chunk`)
as it arrives, until `data: [DONE]`. The HTTP client is httpx (it runs under trio), the events
are parsed by httpx-sse.
"""

from __future__ import annotations

import functools
import json
import ssl
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import trio
from httpx_sse import aconnect_sse

MAX_HISTORY = 20  # messages kept (besides the system prompt)
SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Answer in one or two short spoken sentences, "
    "without lists or markup."
)


class Responder(Protocol):
    """Turns the user's transcript into reply text, streamed as chunks.

    A caller that stops early (a `break`, or a cancel while it is busy with a chunk) should close
    the generator (`contextlib.aclosing`), so that what it holds (a connection) goes at once."""

    def reply(self, text: str) -> AsyncGenerator[str, None]: ...

    def heard(self, said: str, heard: str) -> None:
        """The user heard only `heard` (a prefix) of the reply `said`: a barge-in cut it.
        A responder that keeps a conversation keeps that, not what it said."""


class DemoResponder:
    """Scripted replies; anything it does not recognise is echoed back."""

    def heard(self, said: str, heard: str) -> None:
        pass  # (no conversation kept)

    async def reply(self, text: str) -> AsyncGenerator[str, None]:
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
    """Streams replies from an OpenAI-compatible `/chat/completions` endpoint.

    `history` is the conversation sent with each request: the system prompt, then the last
    `MAX_HISTORY` messages. A reply is added to it as it was streamed: whole, or as far as it
    got when it was cancelled or closed early (a barge-in), and `heard` then cuts it to what
    the user heard; a reply that fails (`LLMError`) leaves the user's message there without an
    answer."""

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

    async def reply(self, text: str) -> AsyncGenerator[str, None]:
        """Stream the reply to `text`. Raises `LLMError`; see `stream_chat_completion`.

        What cancellation (or closing it early) leaves behind: the connection closed, and the
        reply in `history` as far as it was streamed (for `heard` to cut)."""
        self.history.append({"role": "user", "content": text})
        body = {"model": self.model, "messages": self.history, "stream": True}
        parts: list[str] = []
        tokens = stream_chat_completion(
            self.url, body, api_key=self.api_key, timeout_s=self.timeout_s
        )
        try:
            async with aclosing(tokens):  # closing this generator closes the connection too
                async for token in tokens:
                    parts.append(token)
                    yield token
        except LLMError:
            raise
        except BaseException:  # cancelled or closed early: what was said so far
            self._said("".join(parts))
            raise
        self._said("".join(parts))

    def _said(self, reply: str) -> None:
        if reply:
            self.history.append({"role": "assistant", "content": reply})
        del self.history[1 : max(1, len(self.history) - MAX_HISTORY)]

    def heard(self, said: str, heard: str) -> None:
        """Cut the reply `said` in the history to `heard` (dropped if nothing of it was heard);
        a reply no longer there (fallen out of the last `MAX_HISTORY`) is left alone."""
        for i in range(len(self.history) - 1, 0, -1):
            message = self.history[i]
            if message["role"] == "assistant" and message["content"] == said:
                if heard.strip():
                    self.history[i] = {"role": "assistant", "content": heard}
                else:
                    del self.history[i]
                return


async def stream_chat_completion(
    url: str,
    body: dict[str, Any],
    *,
    api_key: str = "",
    timeout_s: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncGenerator[str, None]:
    """POST `body` to `url` and yield the content deltas of the SSE stream as they arrive.

    `timeout_s` bounds the connection and each wait for data. An https URL is verified with
    `ssl_context`, by default the system's CA store (`ssl.create_default_context()`).

    Raises `LLMError` with a one-line message for a connection that fails or times out, an HTTP
    error status (with the server's error message), and an event that is not a
    `chat.completion.chunk` (or carries an error). The stream ends at `data: [DONE]`.

    What cancellation leaves behind: nothing. A cancel that lands while this waits closes the
    response and the connection before `Cancelled` leaves it; a caller that stops iterating early
    should `aclose()` the generator (`contextlib.aclosing`), which does the same."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LLMError(f"not an http(s) URL: {url}")
    headers = {"User-Agent": "duplexd-chat"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    verify = ssl_context or _system_ssl_context()
    try:
        async with (
            httpx.AsyncClient(timeout=timeout_s, verify=verify) as client,
            aconnect_sse(client, "POST", url, json=body, headers=headers) as source,
        ):
            response = source.response
            if response.status_code != 200:
                await response.aread()
                raise LLMError(f"HTTP {response.status_code} from {url}: {_error_text(response)}")
            async with aclosing(source.aiter_sse()) as events:
                async for event in events:
                    if not event.data:
                        continue  # an event without data (`event:`, `id:` or `retry:` alone)
                    if event.data == "[DONE]":
                        return
                    token = _content(event.data, url)
                    if token:
                        yield token
    except httpx.InvalidURL as exc:
        raise LLMError(f"not a valid URL: {url} ({exc})") from None
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise LLMError(f"cannot connect to {parts.netloc}: {_why(exc)}") from None
    except httpx.TimeoutException as exc:
        raise LLMError(
            f"chat stream from {url} timed out after {timeout_s} s: {_why(exc)}"
        ) from None
    except httpx.HTTPError as exc:
        raise LLMError(f"chat stream from {url} failed: {_why(exc)}") from None


@functools.cache
def _system_ssl_context() -> ssl.SSLContext:
    """The system's CA store, as `ssl` finds it (not certifi's, which is httpx's default); made
    once, since loading it costs tens of milliseconds that the first reply token would wait."""
    return ssl.create_default_context()


def _content(data: str, url: str) -> str:
    """The content delta of one event's data ("" for none). Raises `LLMError`."""
    try:
        chunk = json.loads(data)
        error = chunk.get("error")
        choices = chunk["choices"] if error is None else []
        delta = (choices[0].get("delta") or {}) if choices else {}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise LLMError(f"malformed chat.completion.chunk: {data[:120]!r}") from None
    if error is not None:
        raise LLMError(f"error from {url} mid-stream: {_message(error)}")
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


def _error_text(response: httpx.Response) -> str:
    """The server's error message: OpenAI's `{"error": {"message": ...}}`, or the body's start."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    text = _message(error) if error else response.text[:200]
    return " ".join(text.split()) or response.reason_phrase


def _why(exc: BaseException) -> str:
    """The first message along the causes (trio's BrokenResourceError has none of its own)."""
    cause: BaseException | None = exc
    while cause is not None:
        if text := " ".join(str(cause).split()):
            return text
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def _message(error: object) -> str:
    message = error.get("message") if isinstance(error, dict) else None
    return " ".join(str(message if message else error).split())
