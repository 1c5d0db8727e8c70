"""Where the user's voice fell quiet, from its level: the true start of a silence.

silero-vad hears the end of speech late: its probability stays over the silence threshold for
120-260 ms after the voice has died away (measured on the bench's turns: `bench.turns`' set
through `SileroVad`, the envelope's end against the first window under `neg_threshold`), so a
silence counted from silero's verdict ends every turn that much later than the user stopped.
Pipecat gates silero with the audio's volume for the same reason. `QuietTracker` follows the
level of the cleaned uplink (after the echo canceller) in 8 ms blocks and says since when the
voice has been quiet; the detector (`vad.SpeechDetector`) counts a silence from there once
silero agrees that it is one, never from further back than `vad.MAX_BACKDATE_MS`.

A block is quiet when its level is under both the voice's recent peak less `BELOW_PEAK_DB` and
the room's noise floor plus `ABOVE_FLOOR_DB`, whichever is higher: the peak decays slowly so it
is the voice of the last few seconds, and the floor is the quietest block so far, rising
slowly, so a room that gets noisier is followed (digital silence, a gap filled with zeros, is
quiet but not the room's floor). In a noisy room the quiet voice of a word's
end may count as quiet: the damage is bounded, as a silence is only backdated once silero hears
it, and by `MAX_BACKDATE_MS` at most (measured on the bench's turns: the quiet began within 4 ms
of the voice's envelope end under -60 and most under -45 dBFS of white noise; 20-225 ms before
it under -35).

In a quiet room the level alone is enough (`silent_since`): a run of blocks at the room's
floor (under the floor plus `ABOVE_FLOOR_DB`, whatever the peak), while the loudest recent
sound is `CERTAIN_OVER_FLOOR_DB` or more over the floor (`certain`), is a pause, not a weak
consonant or a soft word; the detector then counts a silence from a window wholly at the floor
on without waiting for silero. The floor, not the quiet line: a bump or a clap raises the
peak, and with it the quiet line, over a soft voice (a review's case: a voice at -42..-50 dBFS
in a -70 dBFS room, an 8 ms bump at -3 dBFS, and the turn split while silero heard speech),
but not the floor. Measured through this tracker and `SileroVad` on 46 clips (the bench's
turns, and `bench.word_timing`'s sentences in both voices) in white noise: the end of speech
is a silence sooner than silero hears it at 41 of 46 ends under -70 dBFS (by 32 ms at the
median), 42 under -60 (64 ms), 40 under -55 (80 ms), 13 under -50 (96 ms), none from -45;
a run of 150 ms or more wholly at the floor inside speech while silero was over
`neg_threshold` came once under -55 and once under -50, with silero at 0.37-0.40 (nearly
hearing the pause itself), and never elsewhere. (With the quiet line and 25 dB over the
floor: a soft stretch of "I want to fly" under -45 dBFS, silero at 0.8.)
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

BLOCK_SAMPLES: Final = 128  # 8 ms at 16 kHz; a VAD window is 4 blocks
BELOW_PEAK_DB: Final = 35.0
ABOVE_FLOOR_DB: Final = 6.0
PEAK_DECAY_DB_PER_BLOCK: Final = 6.0 * BLOCK_SAMPLES / 16_000  # 6 dB a second
FLOOR_RISE_DB_PER_BLOCK: Final = 1.0 * BLOCK_SAMPLES / 16_000  # 1 dB a second
_SILENT_DB: Final = -100.0  # level of digital silence (the floor of the log)
# a block this quiet is digital silence (an uplink gap filled with zeros, a muted microphone):
# quiet, but no room's noise floor (it would pin the floor there, and in a loud room nothing
# would count as quiet until the floor had risen back, at 1 dB a second)
DIGITAL_SILENCE_DB: Final = -90.0
CERTAIN_OVER_FLOOR_DB: Final = 30.0  # the voice this far over the floor: the level is enough


class QuietTracker:
    """The level of one stream, block by block (16 kHz sample positions). Not thread-safe:
    one per uplink, used by its worker."""

    def __init__(self) -> None:
        self._peak_db = _SILENT_DB
        self._floor_db: float | None = None
        self.quiet_since: int | None = None  # first sample of the current quiet run, if any
        self.floor_since: int | None = None  # ... and of the current run at the room's floor

    def window(self, start: int, samples: npt.NDArray[np.float32]) -> int | None:
        """Follow the blocks of `samples` (which begin at sample `start`; a whole number of
        blocks) and return `quiet_since` at their end: where the current run of quiet blocks
        began, or None if the last block is not quiet."""
        blocks = samples.reshape(-1, BLOCK_SAMPLES)
        power = np.einsum("ij,ij->i", blocks, blocks) / BLOCK_SAMPLES
        levels = 10.0 * np.log10(np.maximum(power, 10 ** (_SILENT_DB / 10)))
        peak, floor = self._peak_db, self._floor_db
        for k, level in enumerate(levels.tolist()):
            if level > DIGITAL_SILENCE_DB:
                rise = FLOOR_RISE_DB_PER_BLOCK
                floor = level if floor is None or level < floor else floor + rise
            peak = max(level, peak - PEAK_DECAY_DB_PER_BLOCK)
            quiet_below = peak - BELOW_PEAK_DB
            if floor is not None:
                quiet_below = max(quiet_below, floor + ABOVE_FLOOR_DB)
            if level < quiet_below:
                if self.quiet_since is None:
                    self.quiet_since = start + k * BLOCK_SAMPLES
            else:
                self.quiet_since = None
            if floor is None or level < floor + ABOVE_FLOOR_DB:  # (digital silence too)
                if self.floor_since is None:
                    self.floor_since = start + k * BLOCK_SAMPLES
            else:
                self.floor_since = None
        self._peak_db, self._floor_db = peak, floor
        return self.quiet_since

    @property
    def certain(self) -> bool:
        """Whether the room is quiet enough for the level alone: the loudest recent sound is
        `CERTAIN_OVER_FLOOR_DB` or more over the room's floor."""
        floor = self._floor_db
        return floor is not None and self._peak_db - floor >= CERTAIN_OVER_FLOOR_DB

    @property
    def silent_since(self) -> int | None:
        """Where the current run at the room's floor began, if the room is `certain`: a
        silence by the level alone."""
        return self.floor_since if self.certain else None
