"""A session's uplink inputs on disk, to be replayed offline (`[trace] uplink_dir`).

Every decision the uplink makes (a barge-in, a speech start, the end of a turn, what the echo
canceller takes out) is made in its worker from the worker's inputs alone, in the order they
came: the microphone's AudioUp frames, the messages the session sent (the echo's reference),
the client's PLAYED reports, the turn model's answers and a held sound's transcript, each with
the server time it came at (uplink.py's inbox). The worker reads no clock, and its models
(silero, AEC3, WebRTC NS) give the same output for the same input: fed the same inputs in the
same order, a fresh `Uplink` decides the same, sample for sample. So a false barge-in seen
once live can be replayed, traced and checked against a change (`python -m bench.replay`).

The file: one JSON line (`FORMAT`, the uplink's start on the server clock `t0`, its rates and
codec, the session's options, which models it had), then one record per input, `RECORD`
(server time, kind, payload bytes) and the payload: an AudioUp body (kind >= 0: the seq gap
before it), a sent message (`DOWNLINK`), a PLAYED report (`PLAYED`: `_PLAYED_BODY`), the turn
model's answer (`VERDICT`: `_VERDICT_BODY`, the question's id, end and time, the answer and
what decided it), a held sound's words (`WORDS`: its check and the text, UTF-8), a hold that
ended (`UNHELD`); a `BATCH` record closes each batch the worker ran.

Written by the uplink worker (off the event loop), a batch at a time, and flushed with it: a
48 kHz session writes ~200 KB/s (both directions' PCM), a debugging tool, not one to leave on.
A write that fails (the disk full) ends the recording, logged once; never the session.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from ..protocol.frames import TurnEndBy
from ..protocol.options import SessionOptions

if TYPE_CHECKING:
    from .services import UplinkServices

FORMAT: Final = "duplexd-uplink/1"
RECORD: Final = struct.Struct("<dhI")  # server time (s), kind, payload bytes
_PLAYED_BODY: Final = struct.Struct("<qqq?")  # utterance id, samples played, clock_us, final
_VERDICT_BODY: Final = struct.Struct("<qqd?B")  # check id, end, at, complete, TurnEndBy
_WORDS_CHECK: Final = struct.Struct("<q")  # a held sound's check, before its text

# the uplink inbox's kinds (an item's second field; >= 0: an AudioUp after that seq gap)
DOWNLINK: Final = -1  # a message the session sent
VERDICT: Final = -2  # the turn model's answer: (EndCheck, complete, TurnEndBy)
WORDS: Final = -3  # the transcript of a held barge-in's sound: (check, text)
UNHELD: Final = -4  # the session is not holding (any more)
PLAYED: Final = -5  # a PLAYED report: (utterance id, samples played, clock_us, final)
BATCH: Final = -100  # (in the file only) the end of a batch the worker processed

log = logging.getLogger("duplexd.uplink")


class RecordingError(Exception):
    """A file that is not an uplink recording (or is cut short before its header)."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A recorded answer of the turn model: what `SpeechDetector.verdict` and the TURN_END
    timing need of its `EndCheck` (`id`, `end`, `at`), and the answer."""

    id: int
    end: int
    at: float
    complete: bool
    by: int


def recording_header(
    t0: float,
    rate_hz: int,
    downlink_rate_hz: int,
    options: SessionOptions,
    downlink_opus: bool,
    services: UplinkServices,
    *,
    soft: bool,
) -> dict[str, Any]:
    """What a replay needs to make the same `Uplink` (the JSON line): `t0`, when it was made
    (the echo canceller's clock starts there), the `Uplink` arguments, and which models the
    daemon had (`soft`: the session holds for soft barge-ins)."""
    opts = dataclasses.asdict(options)
    opts.pop("resume")  # (a token: not the uplink's, and not to be kept)
    # (as a Hello would say them: a key left out is its default, and only a default is None)
    opts = {name: {k: v for k, v in sec.items() if v is not None} for name, sec in opts.items()}
    return {
        "t0": t0,
        "rate_hz": rate_hz,
        "downlink_rate_hz": downlink_rate_hz,
        "downlink_opus": downlink_opus,
        "options": opts,
        "transcriber": services.transcriber is not None,
        "turn_model": services.turn_model is not None,
        "soft": soft,
    }


class UplinkRecording:
    """Appends a session's uplink inputs to `path` (the module doc); `header` is the JSON line.
    Not thread-safe: the worker writes (`write`), the session closes once its tasks are done."""

    def __init__(self, path: str, header: dict[str, Any]) -> None:
        self.path = path
        self._header: dict[str, Any] | None = {"format": FORMAT, **header}
        self._file: IO[bytes] | None = None
        self._failed = False

    def write(self, batch: list[tuple[float, int, Any]]) -> None:
        """One batch of inbox items, as the worker is about to process it."""
        if self._failed:
            return
        parts: list[bytes] = []
        if self._header is not None:
            parts.append(json.dumps(self._header, separators=(",", ":")).encode() + b"\n")
        for now, kind, data in batch:
            body = _body(kind, data)
            parts += (RECORD.pack(now, kind, len(body)), body)
        parts.append(RECORD.pack(0.0, BATCH, 0))
        try:
            if self._file is None:
                self._file = open(self.path, "ab")  # noqa: SIM115 (kept open, closed by `close`)
            self._file.write(b"".join(parts))
            self._file.flush()
        except OSError as exc:
            self._failed = True
            log.warning("uplink recording stopped: %s", exc, extra={"path": self.path})
            return
        self._header = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _body(kind: int, data: Any) -> bytes:
    if kind >= 0 or kind == DOWNLINK:
        return bytes(data)
    if kind == PLAYED:
        return _PLAYED_BODY.pack(*data)
    if kind == VERDICT:
        check, complete, by = data
        return _VERDICT_BODY.pack(check.id, check.end, check.at, complete, int(by))
    if kind == WORDS:
        check, text = data
        return _WORDS_CHECK.pack(check) + str(text).encode()
    return b""  # UNHELD


_HEADER_KEYS: Final = (  # (`recording_header`'s)
    "t0", "rate_hz", "downlink_rate_hz", "downlink_opus", "options", "transcriber", "turn_model",
    "soft",
)  # fmt: skip
Batch = list[tuple[float, int, Any]]  # (server time, kind, data), as the worker had them


def read_recording(path: str | Path) -> tuple[dict[str, Any], Iterator[Batch]]:
    """A recording's header and its batches, each a list of (server time, kind, data) as the
    worker had them (a verdict's check as a `Verdict`, its data `(Verdict, complete, by)`).
    A record cut short at the end (the daemon killed mid-write) ends the batches there.
    Raises RecordingError if the file has no header of this format."""
    raw = Path(path).read_bytes()
    line, sep, rest = raw.partition(b"\n")
    try:
        header = json.loads(line) if sep else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RecordingError(f"{path}: not an uplink recording ({FORMAT}, [trace] uplink_dir)")
    missing = [k for k in _HEADER_KEYS if k not in header]
    if missing:
        raise RecordingError(f"{path}: its header lacks {', '.join(missing)}: record it again")
    return header, _batches(memoryview(rest))


def _batches(data: memoryview) -> Iterator[Batch]:
    at, batch = 0, list[tuple[float, int, Any]]()
    while at + RECORD.size <= len(data):
        now, kind, n = RECORD.unpack_from(data, at)
        at += RECORD.size
        if at + n > len(data):
            return
        body = bytes(data[at : at + n])
        at += n
        if kind == BATCH:
            yield batch
            batch = []
            continue
        batch.append((now, kind, _data(kind, body)))


def _data(kind: int, body: bytes) -> Any:
    if kind >= 0 or kind == DOWNLINK:
        return body
    if kind == PLAYED:
        return _PLAYED_BODY.unpack(body)
    if kind == VERDICT:
        check_id, end, at, complete, by = _VERDICT_BODY.unpack(body)
        return Verdict(check_id, end, at, complete, by), complete, TurnEndBy(by)
    if kind == WORDS:
        (check,) = _WORDS_CHECK.unpack_from(body)
        return check, body[_WORDS_CHECK.size :].decode()
    return None
