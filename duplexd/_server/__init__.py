"""The server: connections, sessions, the daemon's life. Where a byte enters, where a cancel
lands.

Private.

    server.py      `serve_duplexd`: the WebSocket listener, the shared pacer, the live sessions
    listen.py      `open_listeners`: plain TCP, or TLS over TCP with `[tls]` (wss://), or the
                   sockets systemd passed (socket activation: several workers on one port)
    direct.py      `DirectSend`: the writer's binary message in one writev (the hot path)
    sends.py       a session writer's sends, from its transport (direct, resumable, tapped)
    connection.py  one connection: the handshake, then the session, then its Error and close
    handshake.py   Hello in, checks, Welcome out; `receive_frames`: every client message
    session.py     an open session: reader, utterance runner, writer, uplink in one nursery;
                   `Session._interrupt` is where a barge-in lands (cancel scopes, new epoch)
    synthesis.py   an engine's turns: how many of its synthesis chunks run at once
    limits.py      every budget a client spends (frames, loop share, synthesis), carried over
    resume.py      resumable sessions: the transport that outlives a dropped connection
    service.py     `duplexd serve` as a service: engine loading, the side port, systemd, drain
    startup.py     the engine loaded here, the port checked first, `StartupError` (one line)
    preflight.py   what `serve` would fail on, found without loading a model (`config --check`)

May import: every package below it (`protocol`, `engines`, `_ops`, `_downlink`, `_uplink`).
"""
