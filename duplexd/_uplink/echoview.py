"""What the agent's echo changes for one VAD window: the barge-in's threshold, and what counts.

While the session's own voice may be echoing back (audio was sent within `echo.IDLE_S`), a window
must also score `echo_threshold` to count toward a barge-in: the one second line of defence kept,
for the echo AEC3 lets through while it converges (its first second, a changed echo path); not
while the user is heard over the echo: the microphone louder than the echo explains
(`nearend.NearEndOnset`: the user talking over it, whose onset AEC3's suppressor ducks) and not
coherent with the reference (coherence.py: an echo path that got louder, the loudspeaker turned
up, is as loud, and it barged in on the agent's own voice); and once the near-end check is sure
of it, the window also counts what silero hears in the microphone itself (`micvoice.MicVoice`).
Measured (bench/results/README.md): the generated rooms replayed offline have no false barge-in
even without it; the daemon live through an RT60 300 ms room had none in 4 runs of 2 sessions x
60 s with it (and in an earlier four, 1 with it and 2 with 0.5, which was no faster); it costs
0-20 ms of barge-in p95 in the replay. The NCC canceller's other two checks (the energy left
against the energy taken out; the residue still matching the reference) went with it: AEC3's
suppressor does the first's job. While AEC3 converges (`EchoCanceller.converging`: the agent's
first ~0.6 s) the session hears silence: it leaked then, with a jittery uplink (measured); but
not in a window no echo can reach (the agent between words, converging.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.options import VadOptions
from .counters import UplinkCounters
from .echo import EchoCanceller
from .micvoice import MicVoice
from .vad import WINDOW


@dataclass(frozen=True, slots=True)
class EchoView:
    """What the echo changes for one window."""

    echoing: bool  # the agent's voice may be echoing in it
    barge_threshold: float  # the probability a barge-in needs
    unjudged: bool  # AEC3 is still converging
    mic: float  # the microphone's own voice probability (0: not listened to)
    over: bool  # the user is heard over the echo (`over_echo`)


def echo_view(
    echo: EchoCanceller | None,
    mic: MicVoice | None,
    options: VadOptions,
    counters: UplinkCounters,
    pos: int,
) -> EchoView:
    """The echo's view of the window [pos, pos + WINDOW). Runs `mic` on every window the
    near-end check judges (its state follows the stream)."""
    threshold = options.threshold
    if echo is None or not echo.active(pos):
        return EchoView(False, threshold, False, 0.0, False)
    near_end = echo.near_end
    over = over_echo(echo, counters, pos)
    if not over:
        threshold = max(threshold, options.echo_threshold)
    unjudged = echo.converging
    if unjudged and echo.echo_found and echo.convergence.no_echo(pos, pos + WINDOW):
        unjudged = False  # (the agent between words: nothing to leak; converging.py)
        counters.quiet_windows += 1
    heard = 0.0
    if echo.echo_found is not False and near_end.judging:
        assert mic is not None
        prob = mic.prob(pos)
        sure = over and near_end.sure_over(pos, pos + WINDOW)
        heard = prob if sure and not unjudged else 0.0
    return EchoView(True, threshold, unjudged, heard, over)


def over_echo(echo: EchoCanceller, counters: UplinkCounters, pos: int) -> bool:
    """Whether the user is talking over the echo in the window [pos, pos + WINDOW): the
    microphone louder than the echo explains (nearend.py), and not coherent with the reference
    (coherence.py: the echo itself, louder)."""
    if echo.near_end.until <= pos:
        return False
    if not echo.coherence.is_echo(pos + WINDOW, echo.near_end.onset):
        return True
    counters.coherent_windows += 1
    return False
