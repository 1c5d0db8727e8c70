"""The daemon's logs: JSON lines, libraries included, never a traceback from a library."""

from __future__ import annotations

import io
import json
import logging

import pytest

from duplexd._ops.logs import LibraryRecords, configure_logging
from duplexd._ops.settings import LogSettings

pytestmark = pytest.mark.unit


def test_a_library_failure_is_one_json_line_and_repeats_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """trio's listener logs every failed accept() with a traceback (running out of file
    descriptors: ~10 a second); the daemon's log shows one line a second."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging(LogSettings(format="json", level="info"))
    listener = logging.getLogger("trio.serve_listeners")
    t = 1000.0
    for i in range(25):  # 2.5 s of failures, every 100 ms
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            record = listener.makeRecord(
                listener.name,
                logging.ERROR,
                __file__,
                1,
                "accept returned %s (%s); retrying",
                ("EMFILE", "Too many open files"),
                exc_info=__import__("sys").exc_info(),
            )
        record.created = t + i * 0.1
        listener.handle(record)
    logging.getLogger("duplexd.session").info("session open", extra={"session": "abc"})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    accept = [r for r in lines if r["logger"] == "trio.serve_listeners"]
    assert len(accept) == 3  # at 0, 1.0 and 2.0 s
    assert all("exc" not in r for r in accept)
    assert accept[0]["error"] == "OSError: [Errno 24] Too many open files"
    assert [r.get("suppressed", 0) for r in accept] == [0, 9, 9]
    assert lines[-1]["event"] == "session open"  # the daemon's own records are untouched


def test_the_repeat_filter_is_bounded() -> None:
    f = LibraryRecords()
    for i in range(5000):
        record = logging.LogRecord("trio", logging.WARNING, "x", 1, f"message {i}", None, None)
        assert f.filter(record)
    assert len(f._last) <= 1025
