"""Server-side limits of a session (announced to the client in Welcome)."""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.frames import MAX_FRAME_BYTES


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_text_bytes: int = 32_768  # per utterance
    max_queued_utterances: int = 16  # open or queued, not yet done
    ring_frames: int = 256  # per session: 5.12 s of audio at 20 ms, ~0.5 MB at 48 kHz
    hello_timeout_s: float = 10.0
    token: str = ""  # "" accepts any token

    def __post_init__(self) -> None:
        if self.ring_frames & (self.ring_frames - 1) or not 2 <= self.ring_frames <= 65536:
            raise ValueError("ring_frames must be a power of two in 2..65536")
        if not 64 <= self.max_frame_bytes <= MAX_FRAME_BYTES:
            raise ValueError(f"max_frame_bytes must be in 64..{MAX_FRAME_BYTES}")
        if self.max_text_bytes <= 0 or self.max_queued_utterances <= 0:
            raise ValueError("limits must be positive")
        if self.hello_timeout_s <= 0:
            raise ValueError("hello_timeout_s must be positive")
