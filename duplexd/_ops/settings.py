"""The daemon's configuration: a TOML file, `DUPLEXD_*` environment variables, flags.

Precedence, lowest first: the defaults below, the file (`--config`), the environment
(`DUPLEXD_<SECTION>__<KEY>`, e.g. ``DUPLEXD_SERVER__PORT=8766``), the command-line flags.
Everything is checked before the daemon starts; the first problem is a `ConfigError` whose
message is one line naming the key (``server.port: expected an integer, got 'x'``).

`load_settings` does no I/O beyond reading the file; `to_toml` renders the effective
configuration (what ``duplexd config --print`` shows).
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import cattrs

from ..protocol.frames import MAX_FRAME_BYTES

ENV_PREFIX: Final = "DUPLEXD_"
MAX_BATCH: Final = 1024  # [engine] max_batch, at most
MAX_INFERENCE_THREADS: Final = 8  # [engine] inference_threads, at most
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class ConfigError(Exception):
    """A bad configuration; `str()` is one line naming the key and the source."""


@attrs.frozen
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8765  # 0 picks a free port
    http_host: str = ""  # the HTTP side port's address; "" = same as host
    http_port: int = 0  # /healthz /readyz /metrics and the browser page; 0 = off
    # serve the side port over https with [tls]'s certificate: browsers give the page the
    # microphone only in a secure context (https, or localhost); probes then speak https too
    http_tls: bool = False
    token: str = ""  # a static token (subject "server.token"); set it as DUPLEXD_SERVER__TOKEN
    # above this many connections new ones get HTTP 503 and /readyz "full"; "auto": what the
    # engine and the machine sustain (`session_capacity`); 0 = unlimited
    max_sessions: int | str = "auto"
    max_sessions_per_address: int = 32  # from one non-loopback client address (0 = unlimited)
    max_sessions_per_subject: int = 0  # of one authenticated token subject (0 = unlimited)
    trusted_proxies: tuple[str, ...] = ()  # addresses whose X-Forwarded-For names the client
    # connections accepted or ended with an Error, a second and at once (0 = as fast as they
    # come): a burst of connections must not hold the pacer back (duplexd/_server/churn.py)
    churn_per_s: float = 400.0
    churn_burst: int = 8
    drain_timeout_s: float = 30.0  # SIGTERM: how long utterances in progress may finish
    insecure_no_auth: bool = False  # allow a non-loopback host with no auth configured


@attrs.frozen
class AuthSettings:
    """`[auth]`: who may open a session (duplexd._ops.auth)."""

    token_file: str = ""  # static tokens, one per line: SUBJECT:TOKEN or TOKEN; # comments
    secret_file: str = ""  # the HMAC secret of signed tokens (`duplexd token`)
    max_failures_per_minute: int = 10  # per address (IPv6: per /64), then locked out
    lockout_s: float = 60.0  # how long a locked-out address is refused (HTTP 429)
    metrics_require_auth: bool = False  # /metrics on the side port asks for a token too


@attrs.frozen
class TlsSettings:
    """`[tls]`: serve wss:// (both or neither)."""

    cert: str = ""  # PEM certificate chain, the server's certificate first
    key: str = ""  # PEM private key of that certificate


@attrs.frozen
class EngineSettings:
    name: str = "vits"  # vits, tone, or a plugin (`duplexd.engines` entry point)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    voice: str = ""  # the default voice; "" = the engine's own default
    preload: tuple[str, ...] = ()  # voices loaded (and warmed) before READY
    max_loaded_voices: int = 4  # vits: LRU of loaded voice models
    # vits: pieces synthesized as one padded batch, at most (0: the engine's default, 64 on
    # CUDA and 1 on the CPU, where parallel inferences only fight over cores) ...
    max_batch: int = 0
    # ... gathered for up to this long once an inference thread is free for them (0..1000)
    batch_window_ms: float = 2.0
    # vits: threads taking batches, each with its own CUDA stream (0: the engine's default, 2 on
    # CUDA and 1 on the CPU); each stream keeps its own cache of GPU memory
    inference_threads: int = 0
    # vits: each batch padded to a few shapes (a GPU's convolution plans made once per shape)
    shape_buckets: bool = False
    # vits: no sampling noise: the same text always gives the same audio (repeatable tests and
    # recordings; a flatter voice)
    deterministic: bool = False
    tone_compute_ms_per_char: float = 0.0  # tone only: simulated compute per character (bench)
    # a model process's Unix socket (`duplexd serve-model` listens there): `serve` uses its
    # engine instead of loading one (the workers of a GPU host share one model); "" = load here
    model_socket: str = ""
    # a new utterance waits this long for a model process to connect to (a restart of it: the
    # longest utterance in progress, up to its drain_timeout_s, plus the model's load)
    model_wait_s: float = 60.0


def _check_limits(limits: SessionLimits) -> None:
    if limits.ring_frames & (limits.ring_frames - 1) or not 2 <= limits.ring_frames <= 65536:
        raise ValueError(
            f"ring_frames must be a power of two in 2..65536, got {limits.ring_frames}"
        )
    if not 64 <= limits.max_frame_bytes <= MAX_FRAME_BYTES:
        raise ValueError(
            f"max_frame_bytes must be in 64..{MAX_FRAME_BYTES}, got {limits.max_frame_bytes}"
        )
    if limits.max_text_bytes <= 0 or limits.max_queued_utterances <= 0:
        raise ValueError("max_text_bytes and max_queued_utterances must be positive")
    if limits.hello_timeout_s <= 0:
        raise ValueError(f"hello_timeout_s must be positive, got {limits.hello_timeout_s}")
    if limits.max_frames_per_s <= 0 or limits.frame_burst < 1:
        raise ValueError("max_frames_per_s and frame_burst must be positive")
    if not 0 < limits.input_share <= 1 or limits.input_burst_s <= 0:
        raise ValueError("input_share must be in (0, 1] and input_burst_s positive")
    if limits.synthesis_speed <= 0 or limits.synthesis_burst_s <= 0:
        raise ValueError("synthesis_speed and synthesis_burst_s must be positive")
    if limits.idle_timeout_s <= 0:
        raise ValueError(f"idle_timeout_s must be positive, got {limits.idle_timeout_s}")
    if limits.resume_window_s < 0 or limits.resume_buffer_s < 0:
        raise ValueError("resume_window_s and resume_buffer_s must be >= 0")
    if limits.max_session_s < 0:
        raise ValueError(f"max_session_s must be >= 0 (0: unlimited), got {limits.max_session_s}")


@attrs.frozen
class SessionLimits:
    """Per-session limits: the `[limits]` section; the first three are announced in Welcome.
    Raises ValueError when constructed with a value out of range."""

    max_frame_bytes: int = MAX_FRAME_BYTES
    max_text_bytes: int = 32_768  # per utterance
    max_queued_utterances: int = 16  # open or queued, not yet done
    ring_frames: int = 256  # per session: 5.12 s of audio at 20 ms, ~0.5 MB at 48 kHz
    hello_timeout_s: float = 10.0
    max_frames_per_s: float = 1000.0  # client frames, averaged (a message counts as >= 1)
    frame_burst: int = 10_000  # client frames allowed at once above that rate
    input_share: float = 0.02  # of the event loop one client's input may take, on average
    input_burst_s: float = 0.05  # loop time one client's input may take at once
    synthesis_speed: float = 4.0  # audio seconds synthesized per second, on average
    synthesis_burst_s: float = 120.0  # audio seconds synthesized at once above that speed
    idle_timeout_s: float = 300.0  # no client frame and nothing to say for this long: closed
    max_session_s: float = 0.0  # a session's whole life; 0 = unlimited
    resume_window_s: float = 30.0  # a dropped session waits this long to be resumed; 0 = off
    resume_buffer_s: float = 5.0  # audio kept for replay after a drop (beyond it: lost)

    def __attrs_post_init__(self) -> None:
        _check_limits(self)


@attrs.frozen
class AsrSettings:
    model: str = ""  # a faster-whisper model directory; "" = the bundled Whisper tiny.en
    threads: int = 0  # CPU threads of the ASR model; 0: 1 on a 2-CPU machine, else 2
    # decode a turn in a window cut to it (10 s, or its length + 2 s), not Whisper's 30 s: ~3x
    # less CPU a decode, the same words (duplexd/_uplink/window.py); false: the 30 s window
    cut_window: bool = True


@attrs.frozen
class TraceSettings:
    path: str = ""  # write every frame header of the traced sessions here (JSON lines)
    sessions: str = "first"  # which: first, all, or N (the N-th session since start)
    uplink_dir: str = ""  # record their uplinks' inputs here, to replay (duplexd/_uplink/record.py)


@attrs.frozen
class LogSettings:
    format: str = "json"  # json (one object per line) or text
    level: str = "info"  # debug, info, warning, error, critical; SIGHUP re-reads it
    file: str = ""  # "" = stderr (the journal); a path is reopened on SIGHUP (logrotate)


@attrs.frozen
class DemoSettings:
    """`[demo]`: the browser page on the HTTP side port (duplexd._ops.demo)."""

    page: bool = True  # serve the voice chat page at / and /demo/ (static files)
    issue_tokens: bool = False  # hand the page a short-lived signed token (needs secret_file)
    token_ttl_s: int = 60  # how long such a token opens sessions (an open one outlives it)


@attrs.frozen
class Settings:
    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    tls: TlsSettings = TlsSettings()
    engine: EngineSettings = EngineSettings()
    limits: SessionLimits = SessionLimits()
    asr: AsrSettings = AsrSettings()
    trace: TraceSettings = TraceSettings()
    log: LogSettings = LogSettings()
    demo: DemoSettings = DemoSettings()


def _section_types() -> dict[str, dict[str, Any]]:
    import typing

    hints = typing.get_type_hints(Settings)
    out: dict[str, dict[str, Any]] = {}
    for section, cls in hints.items():
        out[section] = dict(typing.get_type_hints(cls))
    return out


KEY_TYPES: Final = _section_types()  # {"server": {"port": int, ...}, ...}


# ---------------------------------------------------------------------- strict structuring


def _strict(kind: type[Any], name: str) -> Any:
    def hook(value: Any, _: Any) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"expected {name}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        return value

    return hook


def _strings(value: Any, _: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(value)


_converter = cattrs.Converter(forbid_extra_keys=True)
_converter.register_structure_hook(int, _strict(int, "an integer"))
_converter.register_structure_hook(float, _strict(float, "a number"))
_converter.register_structure_hook(bool, _strict(bool, "true or false"))
_converter.register_structure_hook(str, _strict(str, "a string"))
_converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _strings)


def _count_or_auto(value: Any, _: Any) -> int | str:
    if value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value  # type: ignore[no-any-return]
    raise ValueError(f'expected "auto" or an integer >= 0, got {value!r}')


_converter.register_structure_hook_func(lambda t: t == (int | str), _count_or_auto)

AUTO: Final = "auto"
# sessions per CPU core each engine sustains with its pacing goals (bench/results/README.md): the
# tone engine keeps them at 50 sessions on 2 cores, the VITS voice at 2 on 2 cores; a GPU
# batches VITS for many sessions at once
_SESSIONS_PER_CORE: Final = {"tone": 25, "vits": 1}
_CUDA_SESSIONS: Final = 64
_PLUGIN_SESSIONS_PER_CORE: Final = 1


def session_capacity(
    engine: str, device: str, *, cores: int | None = None, cuda: bool | None = None
) -> tuple[int, str]:
    """What `max_sessions = "auto"` means here: (sessions, why). `device` "auto" counts as
    CUDA when an NVIDIA driver is present (checked without importing torch)."""
    cores = cores or os.cpu_count() or 1
    if cuda is None:
        cuda = device.startswith("cuda") or (
            device == "auto" and os.path.exists("/proc/driver/nvidia/version")
        )
    if engine == "vits" and cuda:
        return _CUDA_SESSIONS, f"{engine} on CUDA"
    per_core = _SESSIONS_PER_CORE.get(engine, _PLUGIN_SESSIONS_PER_CORE)
    return max(2, per_core * cores), f"{engine} on {cores} CPU cores x {per_core}"


def effective_max_sessions(
    settings: Settings, *, cuda: bool | None = None, engine: str = ""
) -> int:
    """`server.max_sessions` as a number (0: unlimited). `engine`: the engine's name where it
    is not `[engine] name` (a model process's)."""
    value = settings.server.max_sessions
    if value == AUTO:
        name = engine or settings.engine.name
        return session_capacity(name, settings.engine.device, cuda=cuda)[0]
    return int(value)


def _first_error(exc: Exception) -> str:
    def fmt(e: BaseException, _type: Any) -> str:
        if isinstance(e, cattrs.ForbiddenExtraKeysError):
            return "unknown key " + ", ".join(sorted(e.extra_fields))
        return str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"

    messages = cattrs.transform_error(exc, format_exception=fmt)
    first = messages[0] if messages else str(exc)
    text, _, path = first.rpartition(" @ ")
    key = path.removeprefix("$").lstrip(".")
    if text.startswith("unknown key "):
        names = text.removeprefix("unknown key ")
        full = ", ".join(f"{key}.{n}" if key else n for n in names.split(", "))
        return f"unknown key {full}"
    return f"{key}: {text}" if key else text


# ---------------------------------------------------------------------- sources


def read_file(path: str) -> dict[str, Any]:
    """The TOML file's tables, unchecked. ConfigError if unreadable or not TOML."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def env_layer(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """`DUPLEXD_SECTION__KEY=value` variables as a nested dict, values parsed by key type.

    `DUPLEXD_CONFIG` (the file) is not a key. An unknown section or key is a ConfigError.
    """
    out: dict[str, dict[str, Any]] = {}
    for var, raw in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX) or var == ENV_PREFIX + "CONFIG":
            continue
        section, sep, key = var.removeprefix(ENV_PREFIX).lower().partition("__")
        kind = KEY_TYPES.get(section, {}).get(key) if sep else None
        if kind is None:
            raise ConfigError(
                f"{var}: unknown key (expected DUPLEXD_<SECTION>__<KEY>, e.g. DUPLEXD_SERVER__PORT)"
            )
        try:
            value = _parse_env(raw, kind)
        except ValueError as exc:
            raise ConfigError(f"{var}: {exc}") from None
        out.setdefault(section, {})[key] = value
    return out


def _parse_env(raw: str, kind: Any) -> Any:
    if kind is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if kind is int:
        try:
            return int(raw.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
    if kind is float:
        try:
            return float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
    if kind == tuple[str, ...]:
        return [s.strip() for s in raw.split(",") if s.strip()]
    if kind == (int | str):
        text = raw.strip()
        return text if text == AUTO else int(text) if text.lstrip("-").isdigit() else text
    return raw


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for section, values in layer.items():
        if isinstance(values, Mapping) and isinstance(out.get(section), Mapping):
            out[section] = {**out[section], **values}
        else:
            out[section] = values
    return out


def load_settings(
    path: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Defaults < file at `path` < `environ` (DUPLEXD_*) < `overrides` (flags, already typed).

    Raises ConfigError (one line, naming the key) for an unknown key or a bad value.
    """
    file_data = read_file(path) if path else {}
    where = f"{path}: " if path else ""
    try:
        _structure(file_data)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    env = env_layer(environ or {})
    merged = _merge(_merge(file_data, env), overrides or {})
    settings = _structure(merged)
    _validate(settings)
    return settings


def _structure(data: Mapping[str, Any]) -> Settings:
    try:
        return _converter.structure(data, Settings)
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        raise ConfigError(_first_error(exc)) from None


def _validate(s: Settings) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{key}: {why}")

    for key, port in (("server.port", s.server.port), ("server.http_port", s.server.http_port)):
        if not 0 <= port <= 65535:
            raise bad(key, f"must be in 0..65535, got {port}")
    if s.server.max_sessions_per_address < 0:
        raise bad("server.max_sessions_per_address", "must be >= 0 (0: unlimited)")
    if s.server.max_sessions_per_subject < 0:
        raise bad("server.max_sessions_per_subject", "must be >= 0 (0: unlimited)")
    if not (s.server.churn_per_s == 0 or s.server.churn_per_s >= 1):
        raise bad(
            "server.churn_per_s", f"must be 0 (unlimited) or >= 1, got {s.server.churn_per_s}"
        )
    if s.server.churn_burst < 1:
        raise bad("server.churn_burst", f"must be >= 1, got {s.server.churn_burst}")
    for proxy in s.server.trusted_proxies:
        try:
            ipaddress.ip_address(proxy)
        except ValueError:
            raise bad("server.trusted_proxies", f"not an IP address: {proxy!r}") from None
    if s.server.drain_timeout_s < 0:
        raise bad("server.drain_timeout_s", f"must be >= 0, got {s.server.drain_timeout_s}")
    from ..engines.registry import available_engines

    engines = available_engines()  # built-ins and `duplexd.engines` entry points
    if s.engine.name not in engines:
        names = ", ".join(engines)
        raise bad("engine.name", f"must be one of {names}, got {s.engine.name!r}")
    if not _DEVICE.match(s.engine.device):
        raise bad("engine.device", f"must be auto, cpu, cuda or cuda:N, got {s.engine.device!r}")
    if not 0 <= s.engine.max_batch <= MAX_BATCH:
        got = s.engine.max_batch
        raise bad(
            "engine.max_batch", f"must be in 0..{MAX_BATCH} (0: the engine's default), got {got}"
        )
    if not 0 <= s.engine.inference_threads <= MAX_INFERENCE_THREADS:
        got = s.engine.inference_threads
        raise bad(
            "engine.inference_threads",
            f"must be in 0..{MAX_INFERENCE_THREADS} (0: the engine's default), got {got}",
        )
    if not 0 <= s.engine.batch_window_ms <= 1000:
        raise bad("engine.batch_window_ms", f"must be in 0..1000, got {s.engine.batch_window_ms}")
    if s.engine.max_loaded_voices < 1:
        raise bad("engine.max_loaded_voices", f"must be >= 1, got {s.engine.max_loaded_voices}")
    if s.log.format not in ("json", "text"):
        raise bad("log.format", f"must be json or text, got {s.log.format!r}")
    if s.log.level.lower() not in LOG_LEVELS:
        raise bad("log.level", f"must be one of {', '.join(LOG_LEVELS)}, got {s.log.level!r}")
    if s.asr.threads < 0:
        raise bad("asr.threads", f"must be >= 0 (0: the daemon's choice), got {s.asr.threads}")
    if s.engine.tone_compute_ms_per_char < 0:
        raise bad("engine.tone_compute_ms_per_char", "must be >= 0")
    socket_path = s.engine.model_socket
    if socket_path and (not socket_path.startswith("/") or len(socket_path.encode()) > 107):
        raise bad(
            "engine.model_socket", f"must be an absolute path of <= 107 bytes, got {socket_path!r}"
        )
    if not s.engine.model_wait_s > 0:
        raise bad("engine.model_wait_s", f"must be > 0, got {s.engine.model_wait_s}")
    which = s.trace.sessions.strip().lower()
    if which not in ("first", "all") and not (which.isdigit() and int(which) >= 1):
        raise bad("trace.sessions", f"must be first, all or N >= 1, got {s.trace.sessions!r}")
    if s.trace.uplink_dir and not os.path.isdir(s.trace.uplink_dir):
        raise bad("trace.uplink_dir", f"must be an existing directory, got {s.trace.uplink_dir!r}")
    _validate_auth(s, bad)
    _validate_tls(s, bad)
    if s.server.http_tls and not s.tls.cert:
        raise bad("server.http_tls", "needs tls.cert and tls.key (the side port uses them)")


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def auth_configured(s: Settings) -> bool:
    """Whether a token is required: `server.token`, `auth.token_file` or `auth.secret_file`."""
    return bool(s.server.token or s.auth.token_file or s.auth.secret_file)


def _validate_auth(s: Settings, bad: Callable[[str, str], ConfigError]) -> None:
    from .auth import AuthConfigError, is_token_text, read_secret_file, read_token_file

    a = s.auth
    if a.max_failures_per_minute < 1:
        raise bad("auth.max_failures_per_minute", f"must be >= 1, got {a.max_failures_per_minute}")
    if a.lockout_s <= 0:
        raise bad("auth.lockout_s", f"must be > 0, got {a.lockout_s}")
    if s.server.token and not is_token_text(s.server.token):
        raise bad("server.token", "must be printable ASCII without spaces")
    if s.server.token.startswith("dx1."):
        raise bad("server.token", "must not start with 'dx1.' (the signed tokens' prefix)")
    for key, path, read in (
        ("auth.token_file", a.token_file, read_token_file),
        ("auth.secret_file", a.secret_file, read_secret_file),
    ):
        if path:
            try:
                read(path)
            except AuthConfigError as exc:
                raise bad(key, str(exc)) from None
    if s.demo.issue_tokens and not a.secret_file:
        raise bad("demo.issue_tokens", "needs auth.secret_file (the tokens are signed with it)")
    if not 10 <= s.demo.token_ttl_s <= 3600:
        raise bad("demo.token_ttl_s", f"must be in 10..3600, got {s.demo.token_ttl_s}")
    if a.metrics_require_auth and not auth_configured(s):
        raise bad(
            "auth.metrics_require_auth",
            "no auth is configured (set auth.token_file or auth.secret_file)",
        )
    if not auth_configured(s) and not s.server.insecure_no_auth and not is_loopback(s.server.host):
        raise bad(
            "server.host",
            f"{s.server.host!r} is not loopback and no auth is configured: set [auth]"
            " token_file or secret_file, or pass --insecure-no-auth",
        )


def _validate_tls(s: Settings, bad: Callable[[str, str], ConfigError]) -> None:
    from .tls import TlsError, server_ssl_context

    t = s.tls
    if bool(t.cert) != bool(t.key):
        missing = "tls.key" if t.cert else "tls.cert"
        raise bad(missing, "tls.cert and tls.key are set together (or neither)")
    if t.cert:
        try:
            server_ssl_context(t.cert, t.key)
        except TlsError as exc:
            raise bad("tls", str(exc)) from None


# ---------------------------------------------------------------------- rendering


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")


SECRET_KEYS: Final = frozenset({("server", "token")})  # hidden by `to_toml`


def to_toml(settings: Settings, *, show_secrets: bool = False) -> str:
    """The settings as a TOML document that `load_settings` reads back (every key; the
    `SECRET_KEYS` are replaced by a placeholder unless `show_secrets`; the files that
    `[auth]` and `[tls]` name are paths, shown)."""
    lines: list[str] = []
    for section, values in attrs.asdict(settings).items():
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        for key, value in values.items():
            if (section, key) in SECRET_KEYS and value and not show_secrets:
                lines.append(f'{key} = "<hidden>"  # set; --show-secrets prints it')
                continue
            line = f"{key} = {_toml_value(value)}"
            if section == "server" and key == "max_sessions" and value == AUTO:
                n, why = session_capacity(settings.engine.name, settings.engine.device)
                line += f"  # {n} here: {why}"
            lines.append(line)
    return "\n".join(lines) + "\n"
