"""The server's TLS context, from `[tls] cert` and `key` (PEM files).

TLS 1.2 or later, server side, no client certificates. Built when the configuration is
checked (so ``duplexd config --check`` finds a key that does not match its certificate) and
again when the listeners open (`duplexd._server.listen`).
"""

from __future__ import annotations

import ssl

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TlsError(ValueError):
    """A certificate or key that cannot be used; `str()` is one line."""


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """A server-side context holding the certificate chain at `cert` and its key at `key`.
    TlsError (one line) if a file cannot be read or they are not a matching PEM pair."""
    for path in (cert, key):  # load_cert_chain's own error does not say which
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TlsError(f"cannot read {path}: {exc.strerror or exc}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        why = exc.reason or str(exc)
        raise TlsError(f"{cert} and {key} are not a PEM certificate and its key ({why})") from None
    except OSError as exc:  # gone since
        raise TlsError(f"cannot read {cert} or {key}: {exc.strerror or exc}") from None
    return context
