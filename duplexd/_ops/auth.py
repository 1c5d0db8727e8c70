"""Who may open a session: static tokens, short-lived signed tokens, failed attempts limited.

Sans-I/O apart from reading the token and secret files. `Authenticator.check` takes what a
WebSocket upgrade request carries (its headers, its request target, the peer's address) and
returns the `Principal` or raises `AuthError`; the server asks it before accepting the upgrade,
so a refused client never holds any session resource. Time is passed in (`now`, Unix seconds).

Where the token is read:

- ``Authorization: Bearer <token>``: what programs send (the SDK does);
- else the query parameter ``token`` (``wss://host:8765/v1?token=<token>``): what a browser
  sends, since its WebSocket API cannot set headers. A query string lands in access logs
  (proxies, load balancers, browser history): give browsers short-lived signed tokens, never
  a static one.

Static tokens come from `[auth] token_file` (one per line, ``SUBJECT:TOKEN`` or a bare
``TOKEN``, ``#`` comment lines) and from `server.token` (``DUPLEXD_SERVER__TOKEN``). Only
their SHA-256 digests are kept; a presented token's digest is compared with every one of
them with `hmac.compare_digest`, all of them, whichever matches.

Signed tokens, minted by whoever holds the server's secret (`[auth] secret_file`; ``duplexd
token``, or a web backend in any language, once per browser session)::

    dx1.<payload>.<signature>
    payload   = base64url(JSON {"sub": SUBJECT, "iat": ISSUED, "exp": EXPIRES, "jti": ID})
    signature = base64url(HMAC-SHA256(secret, "dx1." + payload))

base64url without padding; ISSUED and EXPIRES are integer Unix seconds; the secret is the
secret file's content without surrounding whitespace, as bytes. The signature is checked
first (constant time), then the expiry with `CLOCK_SKEW_S` of tolerance. A signed token is a
bearer token until it expires: `jti` identifies it in logs, it is not remembered, so keep
TTLs short (a minute is enough to open a session; an open session outlives its token).

Failed attempts are counted per address (IPv4 address, IPv6 /64): `FailureLimiter` refuses an
address that failed `max_failures_per_minute` times within a minute for `lockout_s`, in a
bounded map. `peer` is the client's address as admission resolves it (behind a proxy in
`server.trusted_proxies`, the one its X-Forwarded-For names), else every client of a proxy
shares one count.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import ipaddress
import json
import math
import os
import re
import secrets
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from .settings import Settings

TOKEN_PREFIX: Final = "dx1."
CLOCK_SKEW_S: Final = 5  # a signed token is good this long past its expiry (clocks differ)
MAX_TOKEN_CHARS: Final = 4096
MIN_STATIC_TOKEN_CHARS: Final = 16  # in the token file
MIN_SECRET_BYTES: Final = 32
MAX_SUBJECT_CHARS: Final = 64
ANONYMOUS: Final = "anonymous"  # the subject when no auth is configured
_SUBJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space
_B64URL = re.compile(r"[A-Za-z0-9_-]+")

Kind = Literal["static", "signed", "none"]


class AuthError(Exception):
    """A refused upgrade. `str()` is the short reason the client may be told ("missing token",
    "bad token", "expired token", "too many failed attempts, retry in N s"); `status` is the
    HTTP status to answer (401, or 429 with `retry_after_s` for a Retry-After header)."""

    def __init__(self, reason: str, *, status: int = 401, retry_after_s: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after_s = retry_after_s


class AuthConfigError(ValueError):
    """A token or secret file that cannot be used; `str()` is one line naming the file."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who opened a session: what the session's log lines name."""

    subject: str
    kind: Kind
    expires_at: float | None = None  # signed: Unix seconds; static and none: never
    token_id: str = ""  # signed: its `jti`


ANONYMOUS_PRINCIPAL: Final = Principal(ANONYMOUS, "none")


@dataclass(frozen=True, slots=True)
class StaticToken:
    """One accepted static token, kept as its SHA-256 digest (the token itself is not kept)."""

    subject: str
    digest: bytes = field(repr=False)

    @classmethod
    def of(cls, subject: str, token: str) -> StaticToken:
        return cls(subject, _digest(token))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def check_subject(subject: str) -> str:
    """`subject` if it is a short printable name (letters, digits, ``. _ @ + -``, at most 64
    characters, starting with a letter or digit); ValueError otherwise."""
    if not isinstance(subject, str) or not _SUBJECT.fullmatch(subject):
        raise ValueError(
            f"a subject is 1 to {MAX_SUBJECT_CHARS} letters, digits or . _ @ + - "
            f"(starting with a letter or digit), got {str(subject)[:80]!r}"
        )
    return subject


def is_token_text(token: str) -> bool:
    """Whether `token` can travel in a header: printable ASCII without spaces, bounded."""
    return 0 < len(token) <= MAX_TOKEN_CHARS and _TOKEN_CHARS.fullmatch(token) is not None


# ---------------------------------------------------------------------- files


def read_token_file(path: str) -> tuple[StaticToken, ...]:
    """The static tokens of a token file: one per line, ``SUBJECT:TOKEN`` or ``TOKEN`` (whose
    subject is then ``token-file-line-N``), blank lines and ``#`` comment lines skipped. A line
    with a colon is always ``SUBJECT:TOKEN``. AuthConfigError (one line) if unreadable, empty,
    or a line is not a usable token."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthConfigError(f"cannot read {path}: {_why(exc)}") from None
    tokens: list[StaticToken] = []
    seen: dict[bytes, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        subject, colon, token = line.partition(":")
        if not colon:
            subject, token = f"token-file-line-{lineno}", line
        where = f"{path}: line {lineno}"
        try:
            check_subject(subject)
        except ValueError as exc:
            raise AuthConfigError(f"{where}: {exc}") from None
        if not is_token_text(token):
            raise AuthConfigError(f"{where}: a token is printable ASCII without spaces")
        if len(token) < MIN_STATIC_TOKEN_CHARS:
            raise AuthConfigError(
                f"{where}: a token needs at least {MIN_STATIC_TOKEN_CHARS} characters"
            )
        if token.startswith(TOKEN_PREFIX):
            raise AuthConfigError(f"{where}: {TOKEN_PREFIX!r} starts signed tokens only")
        entry = StaticToken.of(subject, token)
        if entry.digest in seen:
            raise AuthConfigError(f"{where}: the same token as line {seen[entry.digest]}")
        seen[entry.digest] = lineno
        tokens.append(entry)
    if not tokens:
        raise AuthConfigError(f"{path} holds no token")
    return tuple(tokens)


def read_secret_file(path: str) -> bytes:
    """The signing secret: the file's content without surrounding whitespace, at least
    `MIN_SECRET_BYTES` bytes. AuthConfigError (one line) otherwise."""
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as exc:
        raise AuthConfigError(f"cannot read {path}: {_why(exc)}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise AuthConfigError(
            f"{path}: a secret needs at least {MIN_SECRET_BYTES} bytes"
            f" (duplexd token --new-secret PATH writes one)"
        )
    return secret


def new_secret() -> str:
    """A fresh secret: 32 random bytes as 64 hex characters."""
    return secrets.token_hex(32)


def write_secret_file(path: str) -> None:
    """Create `path` (mode 0600; never over an existing file) holding a `new_secret()`.
    Raises OSError (FileExistsError if it exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (new_secret() + "\n").encode("ascii"))
    finally:
        os.close(fd)


def _why(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


# ---------------------------------------------------------------------- signed tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Strict base64url without padding; ValueError for anything else."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        raise ValueError("not base64url") from None


def _signature(secret: bytes, payload: str) -> str:
    mac = hmac.new(secret, (TOKEN_PREFIX + payload).encode("ascii"), hashlib.sha256)
    return _b64(mac.digest())


def _check_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"a secret needs at least {MIN_SECRET_BYTES} bytes")


def mint(subject: str, ttl_s: int, secret: bytes, now: float) -> str:
    """A signed token for `subject`, good from `now` for `ttl_s` seconds (an integer >= 1).
    ValueError for a bad subject, TTL or secret."""
    check_subject(subject)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s < 1:
        raise ValueError(f"the TTL is a whole number of seconds >= 1, got {ttl_s!r}")
    _check_secret(secret)
    issued = math.floor(now)
    claims = {"sub": subject, "iat": issued, "exp": issued + ttl_s, "jti": _b64(os.urandom(12))}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    return f"{TOKEN_PREFIX}{payload}.{_signature(secret, payload)}"


def verify(token: str, secret: bytes, now: float, *, skew_s: float = CLOCK_SKEW_S) -> Principal:
    """The `Principal` of a signed token: the signature is checked first (constant time), then
    the claims, then the expiry (`skew_s` of tolerance either way). AuthError "bad token" or
    "expired token"."""
    _check_secret(secret)
    bad = AuthError("bad token")
    if not is_token_text(token) or not token.startswith(TOKEN_PREFIX):
        raise bad
    parts = token.split(".")
    if len(parts) != 3:
        raise bad
    _, payload, signature = parts
    if not _B64URL.fullmatch(payload):
        raise bad
    expected = _signature(secret, payload).encode("ascii")
    if not hmac.compare_digest(expected, signature.encode("ascii")):
        raise bad
    try:
        claims = json.loads(_unb64(payload))
    except ValueError:  # not base64url, not UTF-8, not JSON: a secret holder's bug
        raise bad from None
    if not isinstance(claims, dict):
        raise bad
    subject, issued, expires, jti = (claims.get(k) for k in ("sub", "iat", "exp", "jti"))
    if not (isinstance(subject, str) and _SUBJECT.fullmatch(subject)):
        raise bad
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in (issued, expires)):
        raise bad
    assert isinstance(issued, int) and isinstance(expires, int)
    if not isinstance(jti, str) or len(jti) > 64:
        raise bad
    if issued > now + skew_s or expires < issued:
        raise bad
    if now > expires + skew_s:
        raise AuthError("expired token")
    return Principal(subject, "signed", float(expires), jti)


# ---------------------------------------------------------------------- the request


def token_from_request(headers: Iterable[tuple[bytes, bytes]], target: str) -> str:
    """The presented token: ``Authorization: Bearer`` first, else the ``token`` query parameter
    of the request target (``/v1?token=...``). AuthError "missing token" if neither, "bad
    token" for a malformed one (another scheme, two of them, not printable ASCII)."""
    found = [value for name, value in headers if name.lower() == b"authorization"]
    if found:
        if len(found) > 1:
            raise AuthError("bad token")
        scheme, _, rest = found[0].strip().partition(b" ")
        token_bytes = rest.strip()
        if scheme.lower() != b"bearer" or not token_bytes:
            raise AuthError("bad token")
        try:
            token = token_bytes.decode("ascii")
        except UnicodeDecodeError:
            raise AuthError("bad token") from None
    else:
        query = urllib.parse.urlsplit(target).query
        values = [
            v for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True) if k == "token"
        ]
        if not values:
            raise AuthError("missing token")
        if len(values) > 1:
            raise AuthError("bad token")
        token = values[0]
    if not is_token_text(token):
        raise AuthError("bad token")
    return token


# ---------------------------------------------------------------------- failed attempts


def limit_key(peer: str) -> str:
    """What failures are counted by: an IPv4 address (also IPv4-mapped IPv6), an IPv6 /64
    (one host usually holds a whole /64), or `peer` as it is when it is not an address."""
    try:
        address = ipaddress.ip_address(peer.strip("[]"))
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailureLimiter:
    """Per-address failed attempts: `max_failures_per_minute` failures within any 60 s refuse
    the address for `lockout_s`. At most `max_addresses` addresses are remembered (the least
    recently seen is forgotten first), each with at most `max_failures_per_minute` times, so a
    flood of addresses costs bounded memory. Time is passed in; not thread-safe."""

    WINDOW_S: Final = 60.0

    def __init__(
        self,
        max_failures_per_minute: int = 10,
        lockout_s: float = 60.0,
        *,
        max_addresses: int = 10_000,
    ) -> None:
        if max_failures_per_minute < 1 or lockout_s <= 0 or max_addresses < 1:
            raise ValueError("max_failures_per_minute, lockout_s and max_addresses must be > 0")
        self.max_failures = max_failures_per_minute
        self.lockout_s = lockout_s
        self.max_addresses = max_addresses
        # key -> [failure times (oldest first), locked until]
        self._seen: collections.OrderedDict[str, tuple[collections.deque[float], float]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, peer: str, now: float) -> None:
        """AuthError (429) while `peer` is locked out; forgets it once it has nothing left."""
        key = limit_key(peer)
        entry = self._seen.get(key)
        if entry is None:
            return
        failures, locked_until = entry
        if now < locked_until:
            self._seen.move_to_end(key)
            wait = max(1, math.ceil(locked_until - now))
            raise AuthError(
                f"too many failed attempts, retry in {wait} s", status=429, retry_after_s=wait
            )
        while failures and failures[0] <= now - self.WINDOW_S:
            failures.popleft()
        if not failures:
            del self._seen[key]

    def failed(self, peer: str, now: float) -> None:
        """Count a failed attempt of `peer`; the `max_failures_per_minute`-th within a minute
        locks it out."""
        key = limit_key(peer)
        entry = self._seen.pop(key, None)
        if entry is None:
            while len(self._seen) >= self.max_addresses:
                self._seen.popitem(last=False)
            entry = (collections.deque(maxlen=self.max_failures), 0.0)
        failures, locked_until = entry
        while failures and failures[0] <= now - self.WINDOW_S:
            failures.popleft()
        failures.append(now)
        if len(failures) >= self.max_failures:
            failures.clear()
            locked_until = now + self.lockout_s
        self._seen[key] = (failures, locked_until)


# ---------------------------------------------------------------------- the authenticator


class Authenticator:
    """Checks WebSocket upgrade requests against the static tokens and the signing secret.

    With neither (no auth configured) every request is `ANONYMOUS_PRINCIPAL`."""

    def __init__(
        self,
        static_tokens: Sequence[StaticToken] = (),
        secret: bytes | None = None,
        *,
        limiter: FailureLimiter | None = None,
    ) -> None:
        if secret is not None:
            _check_secret(secret)
        self._static = tuple(static_tokens)
        self._secret = secret
        self.limiter = FailureLimiter() if limiter is None else limiter  # (len 0 is falsy)

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        """From `[auth]` and `server.token`; reads the token and secret files
        (AuthConfigError, one line, if one cannot be used)."""
        a = settings.auth
        static: list[StaticToken] = []
        if a.token_file:
            static.extend(read_token_file(a.token_file))
        if settings.server.token:
            static.append(StaticToken.of("server.token", settings.server.token))
        secret = read_secret_file(a.secret_file) if a.secret_file else None
        limiter = FailureLimiter(a.max_failures_per_minute, a.lockout_s)
        return cls(static, secret, limiter=limiter)

    @property
    def enabled(self) -> bool:
        """Whether a token is required (any static token or a secret is configured)."""
        return bool(self._static) or self._secret is not None

    def check(
        self,
        headers: Iterable[tuple[bytes, bytes]],
        target: str,
        peer: str,
        *,
        now: float | None = None,
    ) -> Principal:
        """Who is asking: the `Principal` of the token in `headers` or `target`'s query, for
        the client at address `peer` (``request.remote.address``). AuthError with the short
        reason (401), or 429 while `peer` is locked out after too many failures (checked
        first: a locked-out address learns nothing, not even about a good token)."""
        if not self.enabled:
            return ANONYMOUS_PRINCIPAL
        when = time.time() if now is None else now
        self.limiter.check(peer, when)
        try:
            token = token_from_request(headers, target)
            if self._secret is not None and token.startswith(TOKEN_PREFIX):
                return verify(token, self._secret, when)
            return self._match_static(token)
        except AuthError:
            self.limiter.failed(peer, when)
            raise

    def _match_static(self, token: str) -> Principal:
        presented = _digest(token)
        subject = ""
        for entry in self._static:  # every one, whichever matches
            if hmac.compare_digest(entry.digest, presented):
                subject = entry.subject
        if not subject:
            raise AuthError("bad token")
        return Principal(subject, "static")
