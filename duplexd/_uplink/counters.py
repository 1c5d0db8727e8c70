"""A session's uplink counters: what its stats and the daemon's metrics report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class UplinkCounters:
    frames: int = 0
    windows: int = 0
    vad_s: float = 0.0  # VAD + echo canceller CPU time (worker thread)
    inbox_dropped: int = 0  # frames dropped because processing fell ~5 s behind
    echo_windows: int = 0  # windows that may have held echo (a higher barge-in threshold)
    mic_windows: int = 0  # ... whose voice probability was the microphone's own (micvoice)
    coherent_windows: int = 0  # ... the near end louder in, but coherent with it (coherence)
    quiet_windows: int = 0  # ... heard while AEC3 converged: none can reach (converging)
    leak_windows: int = 0  # ... silence: AEC3 let the agent's voice through (leak)
    speech_segments: int = 0
    barge_ins: int = 0  # decided (one per stretch of speech), whether or not they stopped any
    half_windows: int = 0  # windows scored between the VAD's (halfstep.py) ...
    barge_ins_between: int = 0  # ... and the barge-ins they decided (of `barge_ins`)
    barge_in_delay_s: float = 0.0  # sum over barge-ins: deciding frame's arrival -> interrupt
    barge_in_delay_max_s: float = 0.0
    holds: int = 0  # soft barge-ins: the audio held ...
    holds_resumed: int = 0  # ... then resumed (a backchannel, a noise) ...
    holds_committed: int = 0  # ... or interrupted
    hold_checks: int = 0  # transcriptions asked to decide one ...
    hold_checks_from_final: int = 0  # ... answered by the final of the turn they ended
    hold_checks_again: int = 0  # ... decoded on their own: the transcript at hand had no words
    transcripts: int = 0
    asr_passes: int = 0  # streaming passes over a growing turn (asr.partial_ms) ...
    asr_passes_skipped: int = 0  # ... and the ones skipped: the previous one had not returned
    partial_transcripts: int = 0
    speculations: int = 0  # turns transcribed ahead of their end (asr.speculate) ...
    speculations_used: int = 0  # ... and the ones that were the final transcript ...
    speculations_empty: int = 0  # ... or would have been, but had no words: decoded again
    speculations_skipped: int = 0  # quiet found by the level alone, the transcriber busy
    speculations_moot: int = 0  # begun, then a later silence of the turn: no decoder run
    asr_tail_audio_s: float = 0.0  # audio decoded for finals after a confirmed prefix ...
    asr_tails: int = 0  # ... whose decode heard the confirmed words otherwise: tail decoded
    turns_dropped: int = 0
    asr_s: float = 0.0  # wall time of this session's transcriptions (worker thread)
    asr_audio_s: float = 0.0
    end_checks: int = 0  # questions to the turn model (smart end) ...
    end_checks_complete: int = 0  # ... answered "complete"
    end_checks_ahead: int = 0  # end checks answered by a question asked ahead (no model run)
    end_checks_ahead_skipped: int = 0  # not asked ahead: the turn model was busy
    end_checks_unfinished: int = 0  # ... of which the transcript stopped mid-sentence: waited
    end_checks_unsure: int = 0  # ... or Whisper was unsure the sentence ended: waited
    end_checks_sure: int = 0  # ... or Whisper was sure it ended (and the words may end): ended
    end_checks_words: int = 0  # answered by the transcript alone (those 3): no model run
    end_check_s: float = 0.0  # their wall time (thread)
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "uplink_frames": self.frames,
            "vad_windows": self.windows,
            "vad_ms_per_window": round(1000 * self.vad_s / self.windows, 4) if self.windows else 0,
            "echo_windows": self.echo_windows,
            "echo_mic_windows": self.mic_windows,
            "echo_coherent_windows": self.coherent_windows,
            "echo_quiet_windows": self.quiet_windows,
            "echo_leak_windows": self.leak_windows,
            "speech_segments": self.speech_segments,
            "vad_barge_ins": self.barge_ins,
            "vad_half_windows": self.half_windows,
            "vad_barge_ins_between": self.barge_ins_between,
            "vad_barge_in_delay_ms_mean": (
                round(1000 * self.barge_in_delay_s / self.barge_ins, 3) if self.barge_ins else 0
            ),
            "vad_barge_in_delay_ms_max": round(1000 * self.barge_in_delay_max_s, 3),
            "soft_holds": self.holds,
            "soft_holds_resumed": self.holds_resumed,
            "soft_holds_committed": self.holds_committed,
            "soft_hold_checks": self.hold_checks,
            "soft_hold_checks_from_final": self.hold_checks_from_final,
            "soft_hold_checks_again": self.hold_checks_again,
            "transcripts": self.transcripts,
            "partial_transcripts": self.partial_transcripts,
            "asr_speculations": self.speculations,
            "asr_speculations_used": self.speculations_used,
            "asr_speculations_empty": self.speculations_empty,
            "asr_speculations_skipped": self.speculations_skipped,
            "asr_speculations_moot": self.speculations_moot,
            "asr_passes": self.asr_passes,
            "asr_passes_skipped": self.asr_passes_skipped,
            "asr_tail_audio_s": round(self.asr_tail_audio_s, 4),
            "asr_tails": self.asr_tails,
            "turns_dropped": self.turns_dropped,
            "inbox_dropped": self.inbox_dropped,
            "asr_s": round(self.asr_s, 4),
            "asr_audio_s": round(self.asr_audio_s, 4),
            "end_checks": self.end_checks,
            "end_checks_complete": self.end_checks_complete,
            "end_checks_ahead": self.end_checks_ahead,
            "end_checks_ahead_skipped": self.end_checks_ahead_skipped,
            "end_checks_unfinished": self.end_checks_unfinished,
            "end_checks_unsure": self.end_checks_unsure,
            "end_checks_sure": self.end_checks_sure,
            "end_checks_words": self.end_checks_words,
            "end_check_ms_mean": (
                round(1000 * self.end_check_s / self.end_checks, 3) if self.end_checks else 0
            ),
        }
