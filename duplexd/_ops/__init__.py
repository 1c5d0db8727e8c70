"""Operations: configuration, logs, metrics, tracing, the HTTP side port, systemd.

Private.

    settings.py    `Settings`: defaults < TOML file < DUPLEXD_* < flags, checked; `SessionLimits`
    flags.py       the `serve`/`config`/`token` flags that map to settings keys; `duplexd config`
    auth.py        who may open a session: static and signed tokens, failed attempts limited
                   (`Authenticator.check` on an upgrade's headers, target and peer); sans-I/O
    tls.py         the server's TLS context from `[tls]` (TLS 1.2+)
    logs.py        JSON (or text) log lines; reopened on SIGHUP
    metrics.py     what is measured: histograms, a writer's counters, a session's observer
    prometheus.py  /metrics, computed at scrape time
    trace.py       `--trace`: every frame header of selected sessions, JSON lines
    http.py        the side port: /healthz /readyz /metrics
    sdnotify.py    READY=1, STOPPING=1, WATCHDOG=1 to systemd

May import: `duplexd.protocol`, `duplexd.engines`.
"""
