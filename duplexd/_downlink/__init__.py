"""The downlink: text in, paced audio frames out. Where audio is paced.

Private. One utterance's way, in order:

    segment.py    streamed text -> pieces (clauses, capped sentences), as the text arrives
    utterance.py  an utterance: its text, its pieces, its cancel scope (a barge-in cancels it)
    producer.py   a worker thread: piece -> engine -> resample.py -> s16 frames -> ring.py
    ring.py       the C lock-free SPSC ring of whole wire frames (native/dx_ring.c)
    pacer.py      one schedule for every session: absolute 20 ms deadlines on a timer.py
                  timerfd, ticked by its task and between any two task steps
    writer.py     a session's single writer: on each tick, one frame from the ring to the socket
    contract.py   what the writer needs from its session: its events and its sends

May import: `duplexd.protocol`, `duplexd.engines`, `duplexd._ops` (its counters).
"""
