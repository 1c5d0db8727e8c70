"""duplexd: a realtime full-duplex voice daemon.

Text streams in, speech leaves as 20 ms frames on absolute deadlines, and a barge-in is a
cancel scope. See README.md and protocol/SPEC.md.
"""

__version__ = "0.1.0"
