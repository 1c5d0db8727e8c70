"""Hypothesis profiles of the stateful tests.

`dev` (the default here): a quick pass, seconds. `fuzz` (`make fuzz`, or
`pytest fuzz --hypothesis-profile fuzz`): FUZZ_EXAMPLES examples (default 1000) of up to
FUZZ_STEPS steps (default 60) per state machine. Neither has a deadline: no test fails for
being slow.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, settings

from .stats import TRIED

_QUIET = [HealthCheck.too_slow]

settings.register_profile(
    "dev", max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=_QUIET
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "1000")),
    stateful_step_count=int(os.environ.get("FUZZ_STEPS", "60")),
    deadline=None,
    suppress_health_check=_QUIET,
    print_blob=True,
)
settings.load_profile("dev")  # `--hypothesis-profile fuzz` is applied after this file is read


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Inputs tried by the state machines (every execution, shrinking included)."""
    if not TRIED:
        return
    tried = dict(sorted(TRIED.items()))
    terminalreporter.write_sep("-", "fuzz: inputs tried")
    terminalreporter.write_line(json.dumps(tried, indent=1))
    if path := os.environ.get("FUZZ_STATS_JSON"):
        with open(path, "w") as f:
            json.dump(tried, f, indent=1)
