"""Fuzzing and soak tools for duplexd: not part of `make test`, not shipped in the wheel.

    fuzz/spec_model.py        independent models of protocol/SPEC.md: how a byte stream
                              decodes (§3), which client frame is legal when (§6.2, §7)
    fuzz/strategies.py        hypothesis strategies: frames, Hello options, byte mutations
    fuzz/test_*.py            hypothesis stateful tests of the codec and the session rules
                              (`make fuzz`, or `pytest fuzz`; profile `fuzz` in conftest.py)
    fuzz/known_bugs.py        daemon bugs the fuzzers found and that are not fixed yet
    fuzz/oracle.py            what a daemon must answer to the messages a client sent
    fuzz/wsclient.py          a raw WebSocket client (wsproto over a trio socket) that can
                              send anything: text messages, half a frame, then vanish
    fuzz/daemon.py            a daemon process (tone engine) and what /proc says about it
    fuzz/counted_daemon.py    `duplexd serve` plus one task that counts the trio tasks
    fuzz/network.py           `python -m fuzz.network`: the network fuzz run
    fuzz/soak.py              `python -m fuzz.soak`: open/stream/interrupt/close cycles

`pytest` never collects this folder (`testpaths = ["tests"]`).
"""
