"""Daemon bugs and deviations the fuzzers found that are not fixed yet.

While a name is listed here, the generators leave out the inputs that trigger it (so that a
fuzz run still tells about everything else), `fuzz/test_known_bugs.py` pins each one with a
strict xfail (it turns into a failure the day the daemon is fixed: then delete the entry),
and `python -m fuzz.network` sends each reproduction once and reports what the daemon answered
in its summary (`known_bugs`), outside the `unexpected` count.

Set FUZZ_KNOWN_BUGS=none to generate those inputs anyway (the fuzz run then fails on them).
"""

from __future__ import annotations

import os
from typing import Final

# name -> what goes wrong, the Hello.options that reproduces it, what the document says
KNOWN_BUGS: Final[dict[str, tuple[str, str, str]]] = {
    "options-huge-int": (
        "parse_options raises OverflowError (not BAD_OPTIONS) for an integer option value past"
        " the float range: `math.isfinite(int)`/`float(int)` overflow in"
        " duplexd/protocol/options.py `_section`; the daemon answers Error INTERNAL, close 1011,"
        " and logs a traceback",
        '{"vad": {"threshold": 1' + "0" * 309 + "}}",
        "SPEC §4.6.1: a known key out of range is BAD_OPTIONS (close 1002)",
    ),
    "options-nan-literal": (
        "parse_options accepts NaN / Infinity / -Infinity literals (Python's json.loads"
        " extension) under unknown keys: Hello.options that is not RFC 8259 JSON is accepted",
        '{"x": NaN}',
        "SPEC §3.5/§4.1: options is a JSON object text (RFC 8259), else BAD_OPTIONS",
    ),
}


def active() -> frozenset[str]:
    """The known bugs whose inputs the generators leave out (FUZZ_KNOWN_BUGS=none: none)."""
    if os.environ.get("FUZZ_KNOWN_BUGS", "").strip().lower() == "none":
        return frozenset()
    return frozenset(KNOWN_BUGS)
