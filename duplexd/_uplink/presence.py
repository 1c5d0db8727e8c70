"""Whether the agent's echo comes back at all: the presence check's verdicts (echo.py).

With headphones nothing comes back, and AEC3 then only ducks the user under the agent's voice
(5-10 dB, measured). So the echo canceller asks, every `PRESENCE_EVERY_S` while it does not
know (every `SETTLED_EVERY` times that once it does), whether the last second of uplink holds an
echo of what was sent: a GCC-PHAT against the reference at 8 kHz, lags 0-600 ms (as far back as
AEC3 looks, plus the room's spread), scored as the peak over the RMS of the correlation
(echo.py computes it, and where the echo is; here is what the scores mean). Measured on
bench/rooms.py (VITS voices): an echo with nobody talking scores 12-64 (rt60-600 the least),
headphones 3.4-4.4, the user talking (headphones) up to 6.9; the user 10-20 dB over an echo
4-58.

`found` is None until the first verdict (AEC3 runs meanwhile: an echo is never let through
unjudged), made sooner than the later ones (`FIRST_NO_ECHO_SCORE`: a headphones user barging in
during the agent's first words must not be ducked long). An echo is `ECHO_SCORE`; "no echo"
takes `NO_ECHO_RUNS` verdicts under `NO_ECHO_SCORE` in a row. After "no echo" an echo counts
only once every verdict has scored so over `CONFIRM_S` of uplink (100 ms apart meanwhile; none
skipped for lack of reference): the user's voice against a narrowband reference (the tone
engine's), with nothing coming back, scored 9.3-10.3 a few times in 3 minutes, and over 10
twice in a row at least once (windows 100 ms apart share 0.9 s); each time AEC3, started for
nothing, silenced the user's next 0.3-0.7 s under the agent's voice (words lost). A real echo
with nobody talking scores 12-64 in every window (with the user talking over it, 4-58: it is
confirmed once they pause).

One per echo canceller; not thread-safe.
"""

from __future__ import annotations

from typing import Final

PRESENCE_S: Final = 1.0  # the uplink judged: the last second (less, at first: >= 0.25 s)
PRESENCE_MIN_S: Final = 0.25
PRESENCE_LAG_S: Final = 0.6
PRESENCE_EVERY_S: Final = 0.1  # while not known yet; then every `SETTLED_EVERY` times that
SETTLED_EVERY: Final = 3
ECHO_SCORE: Final = 10.0  # an echo: AEC3 on
CONFIRM_S: Final = 0.5  # ... but after "no echo", only if found over this long, in a row
NO_ECHO_SCORE: Final = 6.0  # no echo, `NO_ECHO_RUNS` verdicts in a row: AEC3 off
NO_ECHO_RUNS: Final = 10
FIRST_NO_ECHO_SCORE: Final = 5.0  # the first verdict's "no echo"
SENT_SHARE: Final = 0.3  # a verdict needs this share of the window's reference sounding


class Presence:
    """The verdicts on the echo's presence: `window` as uplink comes (is a verdict due, and on
    how much of it), then `verdict` with the window's score (or `unsure` without one)."""

    def __init__(self, rate_hz: int) -> None:
        self.found: bool | None = None  # whether an echo comes back (None: not known)
        self.score = 0.0  # the last verdict's score
        self.span = round(PRESENCE_S * rate_hz)  # the most uplink a verdict judges
        self._least = PRESENCE_MIN_S * rate_hz
        self._every = round(PRESENCE_EVERY_S * rate_hz)
        self._confirm = round(CONFIRM_S * rate_hz)
        self._unjudged = 0  # samples since the last verdict
        self.heard = 0  # uplink samples judged so far, on the echo's path as it is now
        self._no_echo_runs = 0
        self._suspected_at: int | None = None  # `heard` when an echo was found after "none"

    def window(self, samples: int) -> int | None:
        """`samples` more of uplink (while an echo is possible): the samples a verdict judges
        now, the latest ones (None: no verdict is due)."""
        self._unjudged += samples
        self.heard += samples
        settled = self.found is not None  # then a verdict costs its CPU less often
        if self._unjudged < self._every * (SETTLED_EVERY if settled else 1):
            return None
        self._unjudged = 0
        w = min(self.span, self.heard)
        return None if w < self._least else w

    def restart(self) -> None:
        """The echo's path moved: judge it afresh (what was heard before is on the old one)."""
        self.heard = 0
        self._suspected_at = None

    def unsure(self) -> None:
        """Too little was sent in the window to tell: the verdict stands (an echo suspected
        after "none" must be found again, in a row)."""
        self._suspected_at = None

    def verdict(self, score: float) -> bool | None:
        """The window's score: True if an echo is found in it (it `found` one), None if it may
        be but must be confirmed over the next windows first (after "no echo"), else False."""
        self.score = score
        if self.found is False:  # an echo now? Only if found over `CONFIRM_S`, in a row
            if score < ECHO_SCORE:
                self._suspected_at = None
            else:
                if self._suspected_at is None:
                    self._suspected_at = self.heard
                if self.heard - self._suspected_at < self._confirm:
                    self._unjudged = self._every * (SETTLED_EVERY - 1)  # (the next in 100 ms)
                    return None
                self._suspected_at = None  # confirmed
        if score >= ECHO_SCORE:
            self.found, self._no_echo_runs = True, 0
            return True
        if self.found is None and score < FIRST_NO_ECHO_SCORE:
            self.found = False
        elif score < NO_ECHO_SCORE:
            self._no_echo_runs += 1
            if self._no_echo_runs >= NO_ECHO_RUNS:
                self.found = False
        else:
            self._no_echo_runs = 0
        return False
