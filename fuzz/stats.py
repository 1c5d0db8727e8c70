"""What the stateful tests tried, counted as they run; `fuzz/conftest.py` prints it at the end
of the session (and writes it to FUZZ_STATS_JSON if set)."""

from __future__ import annotations

import collections

TRIED: collections.Counter[str] = collections.Counter()
