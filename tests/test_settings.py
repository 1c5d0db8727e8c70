"""Configuration: file < DUPLEXD_* < flags; one-line errors; `duplexd config --print`."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from duplexd import cli
from duplexd._ops.settings import KEY_TYPES, ConfigError, Settings, load_settings, to_toml

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "duplexd.example.toml"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "duplexd.toml"
    path.write_text(text)
    return str(path)


def test_defaults_match_the_serve_defaults() -> None:
    s = load_settings()
    assert (s.server.host, s.server.port, s.server.http_port) == ("127.0.0.1", 8765, 0)
    assert (s.engine.name, s.engine.device, s.log.format, s.log.level) == (
        "vits",
        "auto",
        "json",
        "info",
    )
    assert s.limits.ring_frames == 256


def test_example_file_loads_and_sets_the_side_port() -> None:
    s = load_settings(str(EXAMPLE))
    assert s.server.http_port == 9090
    assert s.server.drain_timeout_s == 30.0


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, "[server]\nport = 1000\nhost = 'h'\nmax_sessions = 5\ninsecure_no_auth = true\n"
    )
    env = {"DUPLEXD_SERVER__PORT": "2000", "DUPLEXD_SERVER__MAX_SESSIONS": "7"}
    s = load_settings(path, environ=env, overrides={"server": {"port": 3000}})
    assert (s.server.port, s.server.max_sessions, s.server.host) == (3000, 7, "h")


def test_env_values_are_typed() -> None:
    env = {
        "DUPLEXD_ENGINE__PRELOAD": "joe, amy",
        "DUPLEXD_SERVER__DRAIN_TIMEOUT_S": "2.5",
        "DUPLEXD_LIMITS__RING_FRAMES": "512",
        "DUPLEXD_CONFIG": "ignored-here",
        "OTHER": "x",
    }
    s = load_settings(environ=env)
    assert s.engine.preload == ("joe", "amy")
    assert s.server.drain_timeout_s == 2.5
    assert s.limits.ring_frames == 512


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nprot = 1\n", "unknown key server.prot"),
        ("[sever]\nport = 1\n", "unknown key sever"),
        ("[server]\nport = '80'\n", "server.port: expected an integer, got '80'"),
        ("[server]\nport = 70000\n", "server.port: must be in 0..65535, got 70000"),
        ("[server]\nport = true\n", "server.port: expected an integer, got True"),
        ("[engine]\nname = 'espeak'\n", "engine.name: must be one of vits, tone"),
        ("[engine]\ndevice = 'tpu'\n", "engine.device: must be auto, cpu, cuda or cuda:N"),
        ("[engine]\npreload = 'joe'\n", "engine.preload: expected a list of strings"),
        ("[limits]\nring_frames = 100\n", "limits: ring_frames must be a power of two"),
        ("[log]\nlevel = 'loud'\n", "log.level: must be one of debug"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_file_is_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_env_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^DUPLEXD_SERVER__PORT: expected an integer"):
        load_settings(environ={"DUPLEXD_SERVER__PORT": "eighty"})
    with pytest.raises(ConfigError, match=r"^DUPLEXD_SERVER__PROT: unknown key"):
        load_settings(environ={"DUPLEXD_SERVER__PROT": "1"})


def test_to_toml_round_trips_and_hides_the_token() -> None:
    s = load_settings(environ={"DUPLEXD_SERVER__TOKEN": "s3cret", "DUPLEXD_ENGINE__PRELOAD": "a"})
    shown = to_toml(s)
    assert "s3cret" not in shown
    again = load_settings(overrides=tomllib.loads(to_toml(s, show_secrets=True)))
    assert again == s
    assert isinstance(again, Settings)


def test_cli_config_print_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    monkeypatch.setenv("DUPLEXD_SERVER__HTTP_PORT", "9191")
    path = write(tmp_path, "[server]\nport = 1000\n[log]\nlevel = 'debug'\n")
    assert cli.main(["config", "--print", "--config", path, "--port", "1001"]) == 0
    out = tomllib.loads(capsys.readouterr().out)
    assert out["server"]["port"] == 1001
    assert out["server"]["http_port"] == 9191
    assert out["log"]["level"] == "debug"

    bad = write(tmp_path, "[server]\nbogus = 1\n")
    assert cli.main(["serve", "--config", bad]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"duplexd: config: {bad}: unknown key server.bogus"]


def test_asr_trace_and_tone_options_are_settings_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What used to be serve-only flags and a module variable are keys `config --print` shows."""
    s = load_settings(str(EXAMPLE))
    assert (s.asr.model, s.asr.threads, s.asr.cut_window) == ("", 0, True)
    assert (s.trace.path, s.trace.sessions, s.trace.uplink_dir) == ("", "first", "")
    assert s.engine.tone_compute_ms_per_char == 0.0
    argv = ["config", "--asr-model", "/models/x", "--asr-threads", "3", "--trace", "t.jsonl"]
    argv += ["--trace-uplink", str(tmp_path)]
    assert cli.main([*argv, "--trace-session", "all", "--tone-compute-ms-per-char", "0.5"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["asr"] == {"model": "/models/x", "threads": 3, "cut_window": True}
    assert printed["trace"] == {"path": "t.jsonl", "sessions": "all", "uplink_dir": str(tmp_path)}
    # a directory that is not there is one line, before anything starts
    assert cli.main(["config", "--trace-uplink", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "trace.uplink_dir: must be an existing directory" in err
    assert printed["engine"]["tone_compute_ms_per_char"] == 0.5
    env = {"DUPLEXD_ASR__THREADS": "4", "DUPLEXD_TRACE__SESSIONS": "3"}
    s = load_settings(environ={**env, "DUPLEXD_ASR__CUT_WINDOW": "false"})
    assert (s.asr.threads, s.trace.sessions, s.asr.cut_window) == (4, "3", False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[asr]\nthreads = -1\n", "asr.threads: must be >= 0"),
        ("[engine]\nmodel_wait_s = 0\n", "engine.model_wait_s: must be > 0, got 0"),
        ("[engine]\nmodel_wait_s = inf\n", "engine.model_wait_s: expected a finite number"),
        ("[engine]\nmax_batch = -1\n", "engine.max_batch: must be in 0..1024 \\(0: the engine"),
        ("[engine]\nmax_batch = 1025\n", "engine.max_batch: must be in 0..1024"),
        ("[engine]\ninference_threads = 9\n", "engine.inference_threads: must be in 0..8 \\(0"),
        ("[engine]\ninference_threads = -1\n", "engine.inference_threads: must be in 0..8"),
        ("[engine]\nbatch_window_ms = 1000.5\n", "engine.batch_window_ms: must be in 0..1000"),
        ("[engine]\nbatch_window_ms = -0.5\n", "engine.batch_window_ms: must be in 0..1000"),
        ("[engine]\nbatch_window_ms = nan\n", "engine.batch_window_ms: expected a finite"),
        ("[trace]\nsessions = 'some'\n", "trace.sessions: must be first, all or N"),
        ("[engine]\ntone_compute_ms_per_char = -1.0\n", "engine.tone_compute_ms_per_char"),
        ("[server]\nchurn_per_s = -1.0\n", "server.churn_per_s: must be 0 \\(unlimited\\) or >= 1"),
        ("[server]\nchurn_per_s = 0.5\n", "server.churn_per_s: must be 0 \\(unlimited\\) or >= 1"),
        ("[server]\nchurn_per_s = inf\n", "server.churn_per_s: expected a finite number"),
        ("[server]\nchurn_burst = 0\n", "server.churn_burst: must be >= 1, got 0"),
    ],
)
def test_new_keys_are_checked(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text))


def test_the_older_asr_model_variable_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    from duplexd._ops.flags import _environ

    monkeypatch.setenv("DUPLEXD_ASR_MODEL", "/m")  # before [asr] was a section
    assert load_settings(environ=_environ()).asr.model == "/m"


# ---------------------------------------------------------------------- [auth], [tls]

SECRET = "0123456789abcdef0123456789abcdef"


def test_example_file_documents_every_key() -> None:
    example = tomllib.loads(EXAMPLE.read_text())
    assert {s: set(keys) for s, keys in example.items()} == {
        s: set(keys) for s, keys in KEY_TYPES.items()
    }


def test_config_print_shows_every_key_and_hides_the_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUPLEXD_SERVER__TOKEN", "s3cret-token")
    assert cli.main(["config", "--print"]) == 0
    out = capsys.readouterr().out
    printed = tomllib.loads(out)
    assert {s: set(keys) for s, keys in printed.items()} == {
        s: set(keys) for s, keys in KEY_TYPES.items()
    }
    assert "s3cret-token" not in out and printed["server"]["token"] == "<hidden>"
    assert cli.main(["config", "--print", "--show-secrets"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["server"]["token"] == "s3cret-token"


def test_auth_and_tls_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice:alice-static-token-0001\n")
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    argv = ["config", "--host", "0.0.0.0", "--auth-token-file", str(tokens)]
    assert cli.main([*argv, "--auth-secret-file", str(secret)]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["auth"]["token_file"] == str(tokens)
    assert printed["auth"]["secret_file"] == str(secret)
    assert printed["server"]["insecure_no_auth"] is False
    assert cli.main(["config", "--host", "::", "--insecure-no-auth"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["server"]["insecure_no_auth"] is True
    assert cli.main(["config", "--tls-cert", str(tokens)]) == 2
    assert "tls.key: tls.cert and tls.key are set together" in capsys.readouterr().err


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"],
)
def test_loopback_needs_no_auth(host: str) -> None:
    assert load_settings(overrides={"server": {"host": host}}).server.host == host


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",
        "::",
        "",
        "10.0.0.5",
        "192.168.1.2",
        "example.org",
        "::ffff:10.0.0.1",
        "2001:db8::1",
    ],
)
def test_any_other_host_needs_auth_or_insecure_no_auth(host: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"server": {"host": host}})
    assert str(info.value) == (
        f"server.host: {host!r} is not loopback and no auth is configured: set [auth]"
        " token_file or secret_file, or pass --insecure-no-auth"
    )
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    tokens = tmp_path / "tokens"
    tokens.write_text("a-static-token-of-some-length\n")
    for extra in (
        {"server": {"host": host, "insecure_no_auth": True}},
        {"server": {"host": host, "token": "t"}},
        {"server": {"host": host}, "auth": {"token_file": str(tokens)}},
        {"server": {"host": host}, "auth": {"secret_file": str(secret)}},
    ):
        load_settings(overrides=extra)
    env = {"DUPLEXD_SERVER__HOST": host, "DUPLEXD_SERVER__INSECURE_NO_AUTH": "yes"}
    assert load_settings(environ=env).server.insecure_no_auth


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[auth]\nmax_failures_per_minute = 0\n", "auth.max_failures_per_minute: must be >= 1"),
        ("[auth]\nlockout_s = 0\n", "auth.lockout_s: must be > 0"),
        ("[auth]\ntoken_file = '/nonexistent/t'\n", "auth.token_file: cannot read /nonexistent/t"),
        ("[auth]\nsecret_file = 'SHORT'\n", "auth.secret_file: SHORT: a secret needs at least 32"),
        ("[auth]\nmetrics_require_auth = true\n", "auth.metrics_require_auth: no auth"),
        ("[auth]\nbogus = 1\n", "unknown key auth.bogus"),
        ("[tls]\ncert = 'c.pem'\n", "tls.key: tls.cert and tls.key are set together"),
        ("[tls]\ncert = 'c.pem'\nkey = 'k.pem'\n", "tls: cannot read c.pem"),
        ("[server]\ntoken = 'two words'\n", "server.token: must be printable ASCII"),
        ("[server]\ntoken = 'dx1.abc'\n", "server.token: must not start with 'dx1.'"),
        ("[server]\ninsecure_no_auth = 'yes'\n", "server.insecure_no_auth: expected true or"),
    ],
)
def test_auth_and_tls_keys_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "SHORT").write_text("x" * 31)
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_the_token_flag_is_gone_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["serve", "--token", "SEKRIT"],
        ["config", "--token=SEKRIT"],
        ["serve", "--token"],
    ):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "SEKRIT" not in err[0]
        assert "--token is not a flag" in err[0] and "DUPLEXD_SERVER__TOKEN" in err[0]
        assert "[auth] token_file" in err[0]


def test_asr_threads_left_to_the_daemon_are_one_on_two_cpus_else_two(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`[asr] threads = 0` (the default): one thread where the process has two CPUs or fewer
    (one decodes faster there, and the turn model has the other), two where it has more."""
    from duplexd._uplink.asr import Transcriber

    for cpus, threads in (({0}, 1), ({0, 1}, 1), ({0, 1, 2}, 2), (set(range(16)), 2)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cpus=cpus: cpus)
        assert Transcriber().cpu_threads == threads
        assert Transcriber(cpu_threads=3).cpu_threads == 3
