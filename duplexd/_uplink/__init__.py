"""The uplink: the user's microphone frames in; speech events, barge-ins and transcripts out.

Private. Per session (`uplink.py`), off the event loop in shared worker threads:

    AudioUp -> resample to 16 kHz -> echo.py (the agent's own voice taken out)
            -> vad.py (silero-vad, speech/silence decisions) -> barge-in / turns
    nearend.py + micvoice.py: the user over the echo, heard in the microphone itself
            -> asr.py (faster-whisper, one model per daemon) -> Transcript
    turn.py (Smart Turn) and unfinished.py (the transcript's last word) end turns

May import: `duplexd.protocol`, `duplexd._ops`, `duplexd._downlink` (its resampler).
"""
