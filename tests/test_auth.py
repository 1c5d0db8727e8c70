"""duplexd._ops.auth: static and signed tokens, where they are read, failed attempts limited;
`duplexd token`. Time is always passed in (`now`): nothing here waits."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import pytest

from duplexd import cli
from duplexd._ops import auth
from duplexd._ops.auth import (
    ANONYMOUS_PRINCIPAL,
    AuthConfigError,
    Authenticator,
    AuthError,
    FailureLimiter,
    Principal,
    StaticToken,
    check_subject,
    limit_key,
    mint,
    read_secret_file,
    read_token_file,
    token_from_request,
    verify,
    write_secret_file,
)
from duplexd._ops.settings import load_settings

pytestmark = pytest.mark.unit

SECRET = b"0123456789abcdef0123456789abcdef"  # 32 bytes
T0 = 1_700_000_000.0
ALICE = "alice-static-token-0001"
BOB = "bob-static-token-00000002"
PEER = "203.0.113.7"


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"x"), (b"Authorization", b"Bearer " + token.encode())]


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(payload: str, secret: bytes = SECRET) -> str:
    """The documented format, written out independently of duplexd._ops.auth."""
    mac = hmac.new(secret, ("dx1." + payload).encode(), hashlib.sha256).digest()
    return f"dx1.{payload}.{b64(mac)}"


def authenticator(**limits: float) -> Authenticator:
    static = [StaticToken.of("alice", ALICE), StaticToken.of("bob", BOB)]
    limiter = FailureLimiter(
        int(limits.get("max_failures", 3)), limits.get("lockout_s", 60.0), max_addresses=100
    )
    return Authenticator(static, SECRET, limiter=limiter)


# ---------------------------------------------------------------------- where the token is


def test_token_from_the_header_or_the_query() -> None:
    assert token_from_request(bearer("abc"), "/v1") == "abc"
    assert token_from_request([(b"authorization", b"bearer  abc ")], "/v1") == "abc"
    assert token_from_request([], "/v1?token=abc") == "abc"
    assert token_from_request([], "/v1?x=1&token=a%2Bb%3D") == "a+b="  # URL-encoded
    assert token_from_request(bearer("from-header"), "/v1?token=from-query") == "from-header"


@pytest.mark.parametrize(
    ("headers", "target", "reason"),
    [
        ([], "/v1", "missing token"),
        ([(b"host", b"x")], "/v1?other=1", "missing token"),
        ([(b"authorization", b"Basic YTpi")], "/v1", "bad token"),
        ([(b"authorization", b"Bearer")], "/v1", "bad token"),
        ([(b"authorization", b"Bearer a"), (b"Authorization", b"Bearer b")], "/v1", "bad token"),
        ([(b"authorization", b"Bearer \xc3\xa9t\xc3\xa9")], "/v1", "bad token"),
        ([], "/v1?token=a&token=b", "bad token"),
        ([], "/v1?token=", "bad token"),
        ([], "/v1?token=two%20words", "bad token"),
        ([], "/v1?token=" + "x" * 5000, "bad token"),
    ],
)
def test_missing_or_malformed_token(
    headers: list[tuple[bytes, bytes]], target: str, reason: str
) -> None:
    with pytest.raises(AuthError) as info:
        token_from_request(headers, target)
    assert str(info.value) == reason
    assert info.value.status == 401


# ---------------------------------------------------------------------- static tokens


def test_static_tokens_name_their_subject() -> None:
    a = authenticator()
    assert a.check(bearer(ALICE), "/v1", PEER, now=T0) == Principal("alice", "static")
    assert a.check([], f"/v1?token={BOB}", PEER, now=T0) == Principal("bob", "static")


@pytest.mark.parametrize(
    "token", ["wrong-token-00000000", ALICE[:-1], ALICE + "x", ALICE.upper(), "dx1.a.b"]
)
def test_wrong_static_token_is_refused(token: str) -> None:
    with pytest.raises(AuthError, match=r"^bad token$"):
        authenticator().check(bearer(token), "/v1", PEER, now=T0)


def test_every_static_token_is_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hmac.compare_digest, once per static token, whichever matches (even the first)."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    tokens = [StaticToken.of(f"user{i}", f"static-token-number-{i:04d}") for i in range(5)]
    a = Authenticator(tokens)
    assert a.check(bearer("static-token-number-0000"), "/v1", PEER, now=T0).subject == "user0"
    assert len(calls) == 5
    assert all(len(x) == len(y) == 32 for x, y in calls)  # fixed-size digests
    calls.clear()
    with pytest.raises(AuthError):
        a.check(bearer("nobody-has-this-token"), "/v1", PEER, now=T0)
    assert len(calls) == 5
    calls.clear()
    token = mint("carol", 60, SECRET, T0)
    assert verify(token, SECRET, T0).subject == "carol"
    assert len(calls) == 1  # the signature


def test_static_tokens_are_kept_as_digests_only() -> None:
    entry = StaticToken.of("alice", ALICE)
    assert ALICE not in repr(entry) and entry.digest == hashlib.sha256(ALICE.encode()).digest()


# ---------------------------------------------------------------------- signed tokens


def test_signed_token_has_the_documented_format() -> None:
    token = mint("alice", 60, SECRET, T0 + 0.9)
    prefix, payload, _ = token.split(".")
    assert prefix == "dx1"
    claims = json.loads(unb64(payload))
    assert claims["sub"] == "alice"
    assert (claims["iat"], claims["exp"]) == (int(T0), int(T0) + 60)
    assert isinstance(claims["jti"], str) and len(unb64(claims["jti"])) == 12
    assert token == sign(payload)
    assert "=" not in token
    assert mint("alice", 60, SECRET, T0) != mint("alice", 60, SECRET, T0)  # jti differs


def test_a_token_minted_elsewhere_in_the_documented_format_verifies() -> None:
    payload = b64(json.dumps({"sub": "web-42", "iat": 100, "exp": 160, "jti": "j1"}).encode())
    assert verify(sign(payload), SECRET, 130.0) == Principal("web-42", "signed", 160.0, "j1")


def test_signed_token_accepted_until_it_expires_then_refused_on_replay() -> None:
    a = authenticator()
    token = mint("alice", 60, SECRET, T0)
    got = a.check(bearer(token), "/v1", PEER, now=T0)
    assert (got.subject, got.kind, got.expires_at) == ("alice", "signed", T0 + 60)
    assert a.check([], f"/v1?token={token}", PEER, now=T0 + 30).subject == "alice"  # replay
    assert a.check(bearer(token), "/v1", PEER, now=T0 + 60 + auth.CLOCK_SKEW_S).subject == "alice"
    for late in (T0 + 60 + auth.CLOCK_SKEW_S + 0.001, T0 + 3600):
        with pytest.raises(AuthError, match=r"^expired token$"):
            a.check(bearer(token), "/v1", "198.51.100.1", now=late)


def test_signed_token_from_the_future_is_refused() -> None:
    token = mint("alice", 60, SECRET, T0 + 60)
    assert verify(token, SECRET, T0 + 60 - auth.CLOCK_SKEW_S).subject == "alice"
    with pytest.raises(AuthError, match=r"^bad token$"):
        verify(token, SECRET, T0)


def test_tampered_signed_tokens_are_refused() -> None:
    token = mint("alice", 60, SECRET, T0)
    prefix, payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    bob = mint("bob", 60, SECRET, T0).split(".")[1]
    longer = b64(json.dumps({"sub": "alice", "iat": int(T0), "exp": int(T0) + 99999}).encode())
    for bad in (
        f"{prefix}.{payload}.{flipped}",  # signature changed
        f"{prefix}.{bob}.{signature}",  # another subject's claims under alice's signature
        f"{prefix}.{longer}.{signature}",  # a later expiry
        f"dx2.{payload}.{signature}",  # another version
        f"{prefix}.{payload}.{signature}x",
        f"{prefix}.{payload}.{signature}=",
        mint("alice", 60, b"another-secret-of-32-bytes-000000", T0),
    ):
        with pytest.raises(AuthError, match=r"^bad token$"):
            verify(bad, SECRET, T0)


@pytest.mark.parametrize(
    "claims",
    [
        b"not json",
        b"[1, 2]",
        b'{"iat": 1, "exp": 2, "jti": "j"}',  # no subject
        b'{"sub": "has space", "iat": 1, "exp": 2, "jti": "j"}',
        b'{"sub": "a", "iat": 1, "exp": "2", "jti": "j"}',
        b'{"sub": "a", "iat": 1, "exp": true, "jti": "j"}',
        b'{"sub": "a", "iat": 1.5, "exp": 2, "jti": "j"}',
        b'{"sub": "a", "iat": 1, "exp": 2}',  # no jti
        b'{"sub": "a", "iat": 5, "exp": 2, "jti": "j"}',  # expires before it was issued
        b"\xff\xfe",
    ],
)
def test_correctly_signed_but_malformed_claims_are_refused(claims: bytes) -> None:
    with pytest.raises(AuthError, match=r"^bad token$"):
        verify(sign(b64(claims)), SECRET, 1.0)


@pytest.mark.parametrize(
    "token", ["", "dx1.", "dx1..", "dx1.a", "dx1.a.b.c", "dx1.a!.b", "dx1.é.b", "dx1 .a.b"]
)
def test_malformed_signed_tokens_are_refused(token: str) -> None:
    with pytest.raises(AuthError, match=r"^bad token$"):
        verify(token, SECRET, T0)


def test_signed_tokens_without_a_configured_secret_are_refused() -> None:
    a = Authenticator([StaticToken.of("alice", ALICE)])
    with pytest.raises(AuthError, match=r"^bad token$"):
        a.check(bearer(mint("alice", 60, SECRET, T0)), "/v1", PEER, now=T0)


@pytest.mark.parametrize(
    ("subject", "ttl", "secret", "message"),
    [
        ("", 60, SECRET, "a subject is"),
        ("has space", 60, SECRET, "a subject is"),
        ("a" * 65, 60, SECRET, "a subject is"),
        ("-dash-first", 60, SECRET, "a subject is"),
        ("line\nbreak", 60, SECRET, "a subject is"),
        ("alice", 0, SECRET, "the TTL is a whole number"),
        ("alice", 1.5, SECRET, "the TTL is a whole number"),
        ("alice", 60, b"short", "at least 32 bytes"),
    ],
)
def test_mint_checks_its_arguments(subject: str, ttl: int, secret: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mint(subject, ttl, secret, T0)


def test_subjects() -> None:
    for ok in ("alice", "a", "alice@example.com", "user_1.2+x-y", "0" * 64):
        assert check_subject(ok) == ok


# ---------------------------------------------------------------------- failed attempts


def test_failures_lock_an_address_out_then_it_recovers() -> None:
    a = authenticator(max_failures=3, lockout_s=60.0)
    for t in (0.0, 1.0):
        with pytest.raises(AuthError, match=r"^bad token$"):
            a.check(bearer("wrong-token-000000"), "/v1", PEER, now=T0 + t)
    with pytest.raises(AuthError, match=r"^missing token$"):  # the third: refused as such...
        a.check([], "/v1", PEER, now=T0 + 2.0)
    with pytest.raises(AuthError) as info:  # ...and from now on, even with a good token
        a.check(bearer(ALICE), "/v1", PEER, now=T0 + 2.5)
    assert (str(info.value), info.value.status) == ("too many failed attempts, retry in 60 s", 429)
    assert info.value.retry_after_s == 60
    with pytest.raises(AuthError, match=r"retry in 1 s$"):
        a.check(bearer(ALICE), "/v1", PEER, now=T0 + 61.5)
    assert a.check(bearer(ALICE), "/v1", "198.51.100.9", now=T0 + 3).subject == "alice"  # others
    assert a.check(bearer(ALICE), "/v1", PEER, now=T0 + 62.0).subject == "alice"  # recovered
    assert len(a.limiter) == 0  # nothing left to remember about PEER


def test_failures_spread_over_more_than_a_minute_do_not_lock() -> None:
    a = authenticator(max_failures=3)
    for i in range(10):
        with pytest.raises(AuthError, match=r"^bad token$"):
            a.check(bearer("wrong-token-000000"), "/v1", PEER, now=T0 + 30.0 * i)
    assert a.check(bearer(ALICE), "/v1", PEER, now=T0 + 300).subject == "alice"


def test_attempts_while_locked_out_do_not_extend_the_lockout() -> None:
    limiter = FailureLimiter(2, 10.0)
    limiter.failed(PEER, 0.0)
    limiter.failed(PEER, 0.0)
    for t in range(10):
        with pytest.raises(AuthError, match=r"too many"):
            limiter.check(PEER, float(t))
    limiter.check(PEER, 10.0)


def test_ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert limit_key("2001:db8:1:2:aaaa::1") == limit_key("2001:db8:1:2:bbbb::2")
    assert limit_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")
    assert limit_key("::ffff:192.0.2.1") == "192.0.2.1" == limit_key("192.0.2.1")
    assert limit_key("/run/duplexd.sock") == "/run/duplexd.sock"
    limiter = FailureLimiter(2, 60.0)
    limiter.failed("2001:db8::1", 0.0)
    limiter.failed("2001:db8::2", 0.0)
    with pytest.raises(AuthError, match=r"too many"):
        limiter.check("2001:db8::ffff", 1.0)


def test_memory_is_bounded_under_many_addresses() -> None:
    limiter = FailureLimiter(3, 60.0, max_addresses=1000)
    limiter.failed(PEER, 0.0)
    limiter.failed(PEER, 0.0)
    limiter.failed(PEER, 0.0)  # locked out
    for i in range(50_000):
        limiter.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1.0)
        if i % 100 == 0:
            with pytest.raises(AuthError):  # the busy lock-out stays recent: not evicted
                limiter.check(PEER, 1.0)
        assert len(limiter) <= 1000
    assert len(limiter) == 1000
    default = FailureLimiter()
    for i in range(30_000):
        default.failed(f"2001:db8:{i:x}::1", 1.0)
    assert len(default) == default.max_addresses == 10_000


# ---------------------------------------------------------------------- no auth, settings


def test_without_tokens_or_secret_everyone_is_anonymous() -> None:
    a = Authenticator()
    assert not a.enabled
    assert a.check([], "/v1", PEER, now=T0) == ANONYMOUS_PRINCIPAL
    assert authenticator().enabled


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_token_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "tokens",
        f"# who may connect\n\nalice:{ALICE}\n  {BOB}  \n# carol left\n"
        "web.backend:a:b:c:0123456789abcdef\n",
    )
    tokens = read_token_file(path)
    assert [t.subject for t in tokens] == ["alice", "token-file-line-4", "web.backend"]
    a = Authenticator(tokens)
    assert a.check(bearer(BOB), "/v1", PEER, now=T0).subject == "token-file-line-4"
    assert a.check(bearer("a:b:c:0123456789abcdef"), "/v1", PEER, now=T0).subject == "web.backend"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no token"),
        ("# only a comment\n", "holds no token"),
        ("alice:short\n", "line 1: a token needs at least 16 characters"),
        (f"# x\n{ALICE}\n{ALICE}\n", "line 3: the same token as line 2"),
        (f"alice:{ALICE}\nbob:{ALICE}\n", "line 2: the same token as line 1"),
        ("alice:dx1.0123456789abcdef\n", "line 1: 'dx1.' starts signed tokens only"),
        (f"bad subject:{ALICE}\n", "line 1: a subject is"),
        ("alice:has a space in it ok\n", "line 1: a token is printable ASCII"),
    ],
)
def test_bad_token_file_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "tokens", text)
    with pytest.raises(AuthConfigError) as info:
        read_token_file(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_secret_file(tmp_path: Path) -> None:
    assert read_secret_file(write(tmp_path / "s", f"\n{SECRET.decode()}\n")) == SECRET
    with pytest.raises(AuthConfigError, match=r"needs at least 32 bytes"):
        read_secret_file(write(tmp_path / "short", "x" * 31))
    with pytest.raises(AuthConfigError, match=r"cannot read .*nope: No such file"):
        read_secret_file(str(tmp_path / "nope"))
    with pytest.raises(AuthConfigError, match=r"cannot read .*nope: No such file"):
        read_token_file(str(tmp_path / "nope"))


def test_new_secret_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    old = os.umask(0)
    try:
        write_secret_file(str(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = read_secret_file(str(path))
    assert len(secret) == 64 and bytes.fromhex(secret.decode())
    with pytest.raises(FileExistsError):
        write_secret_file(str(path))
    assert read_secret_file(str(path)) == secret


def test_authenticator_from_settings(tmp_path: Path) -> None:
    tokens = write(tmp_path / "tokens", f"alice:{ALICE}\n")
    secret = write(tmp_path / "secret", SECRET.decode())
    s = load_settings(
        environ={
            "DUPLEXD_AUTH__TOKEN_FILE": tokens,
            "DUPLEXD_AUTH__SECRET_FILE": secret,
            "DUPLEXD_AUTH__MAX_FAILURES_PER_MINUTE": "2",
            "DUPLEXD_AUTH__LOCKOUT_S": "5",
            "DUPLEXD_SERVER__TOKEN": "env-token",
        }
    )
    a = Authenticator.from_settings(s)
    assert a.check(bearer(ALICE), "/v1", PEER, now=T0).subject == "alice"
    assert a.check(bearer("env-token"), "/v1", PEER, now=T0).subject == "server.token"
    assert a.check(bearer(mint("bob", 9, SECRET, T0)), "/v1", PEER, now=T0).subject == "bob"
    assert (a.limiter.max_failures, a.limiter.lockout_s) == (2, 5.0)
    assert not Authenticator.from_settings(load_settings()).enabled


# ---------------------------------------------------------------------- duplexd token


@pytest.fixture
def no_duplexd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DUPLEXD_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_duplexd_env")
def test_duplexd_token_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret"
    assert cli.main(["token", "--new-secret", str(secret)]) == 0
    assert str(secret) in capsys.readouterr().out
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    config = write(tmp_path / "d.toml", f'[auth]\nsecret_file = "{secret}"\n')
    assert cli.main(["token", "--config", config, "--subject", "alice", "--ttl", "120"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    token = out.strip()
    got = verify(
        token, read_secret_file(str(secret)), json.loads(unb64(token.split(".")[1]))["iat"]
    )
    assert (got.subject, got.kind) == ("alice", "signed")
    claims = json.loads(unb64(token.split(".")[1]))
    assert claims["exp"] - claims["iat"] == 120


@pytest.mark.usefixtures("no_duplexd_env")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--subject", "alice"], "no secret configured: set [auth] secret_file"),
        ([], "--subject is required"),
        (["--subject", "al ice", "--secret"], "a subject is"),
        (["--subject", "alice", "--ttl", "0", "--secret"], "the TTL is a whole number"),
        (["--new-secret", "EXISTING"], "exists (remove it first"),
        (["--new-secret", "/nonexistent-dir/s"], "cannot write /nonexistent-dir/s"),
        (["--subject", "alice", "--config", "/nonexistent.toml"], "config: cannot read"),
    ],
)
def test_duplexd_token_mistakes_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    secret = write(tmp_path / "secret", SECRET.decode())
    argv = [a.replace("EXISTING", secret) for a in argv]
    if "--secret" in argv:
        argv[argv.index("--secret")] = "--auth-secret-file"
        argv.append(secret)
    assert cli.main(["token", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("duplexd token: ")
    assert message in lines[0]
