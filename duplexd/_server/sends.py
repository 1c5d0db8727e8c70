"""How a session's writer sends (`Downlink`'s `send`, `send_now` and `flush`), built from the
session's transport: one writev per message where the connection allows it (`DirectSend`, or a
`Resumable` that sends directly itself), trio-websocket's `send_message` otherwise; and, for a
session with an uplink, every message that went out tapped as the echo reference."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from .._downlink.contract import NOT_SENT, FlushFn, SendFn, SendNowFn
from ..protocol.transport import Transport
from .direct import DirectSend
from .resume import Resumable


class WriterSends(NamedTuple):
    send: SendFn
    send_now: SendNowFn | None  # (None: every frame goes through the writer's task)
    flush: FlushFn | None


def writer_sends(transport: Transport, tap: Callable[[bytes], None] | None) -> WriterSends:
    """The sends of a session on `transport`; `tap` (if any) is told each message that went
    out (before `send`, after a `send_now` that wrote it)."""
    direct = DirectSend.of(transport)  # (a Resumable sends directly itself)
    sender = direct if direct is not None else transport
    send_out = direct.send if direct is not None else transport.send_message
    send_now: SendNowFn | None = None
    flush: FlushFn | None = None
    if isinstance(sender, DirectSend | Resumable):
        send_now, flush = sender.send_now, sender.flush
    if tap is None:
        return WriterSends(send_out, send_now, flush)

    async def send_tapped(data: bytes) -> None:
        tap(data)
        await send_out(data)

    def send_now_tapped(data: bytes) -> int:
        assert send_now is not None
        result = send_now(data)
        if result != NOT_SENT:
            tap(data)
        return result

    return WriterSends(send_tapped, send_now_tapped if send_now is not None else None, flush)
