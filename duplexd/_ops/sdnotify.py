"""systemd's notify protocol (`sd_notify(3)`) without libsystemd: one datagram per message.

`Notifier.from_env()` reads `NOTIFY_SOCKET` (a path, or ``@name`` for the abstract namespace);
without it every call is a no-op, so the daemon runs the same outside systemd. Sends never
block (datagram sockets to a local receiver); a failed send is logged once and otherwise
ignored, because losing a status message must not take the daemon down.

`watchdog_interval_s()` reads `WATCHDOG_USEC` / `WATCHDOG_PID`; `keep_watchdog_fed` is a trio
task that sends ``WATCHDOG=1`` at half that interval, so a wedged event loop stops the pings
and systemd restarts the service.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import trio

log = logging.getLogger("duplexd.sdnotify")


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock addresses (vsock:CID:PORT) are not supported


class Notifier:
    """Sends state lines to the service manager (`READY=1`, `STATUS=...`, `STOPPING=1`...)."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(_address(env.get("NOTIFY_SOCKET", "")))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send `lines` as one message ("READY=1", "STATUS=serving"...). Returns whether it
        was sent; False outside systemd or if the send failed."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify failed", extra={"error": str(exc)})
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        """RELOADING=1 with the MONOTONIC_USEC that `Type=notify-reload` units require."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """systemd's watchdog timeout for this process (`WATCHDOG_USEC`), or None if none is set
    or it is meant for another process (`WATCHDOG_PID`)."""
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


async def keep_watchdog_fed(notifier: Notifier, timeout_s: float) -> None:
    """Send WATCHDOG=1 every `timeout_s / 2` from the event loop until cancelled."""
    period = timeout_s / 2
    while True:
        notifier.watchdog()
        await trio.sleep(period)
