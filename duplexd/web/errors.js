// What the browser client throws: one `DuplexdError` base, and the kind of failure it was.
// Mirrors duplexd/client/errors.py; `code` is an ErrorCode *name* (protocol/SPEC.md §8) or null.

/** Error codes of SPEC.md §8: name → number. */
export const ErrorCode = Object.freeze({
  MALFORMED: 1,
  FRAME_TOO_LARGE: 2,
  UNKNOWN_TYPE: 3,
  UNEXPECTED_FRAME: 4,
  UNSUPPORTED_VERSION: 5,
  UNSUPPORTED_FORMAT: 6,
  UNKNOWN_ENGINE: 7,
  UNKNOWN_VOICE: 8,
  AUTH_FAILED: 9,
  LIMIT_EXCEEDED: 10,
  TEXT_AFTER_END: 11,
  BAD_UTTERANCE_ID: 12,
  NOT_BINARY: 13,
  SLOW_CONSUMER: 14,
  INTERNAL: 15,
  GOING_AWAY: 16,
  BAD_OPTIONS: 17,
  TOO_MANY_REQUESTS: 18,
  RESUME_FAILED: 19,
});

/** Error code number → name. */
export const ERROR_NAMES = Object.freeze(
  Object.fromEntries(Object.entries(ErrorCode).map(([name, n]) => [n, name])),
);

/** The WebSocket close code that goes with each error code (SPEC.md §8). */
export const CLOSE_CODES = Object.freeze({
  MALFORMED: 1002,
  FRAME_TOO_LARGE: 1009,
  UNKNOWN_TYPE: 1002,
  UNEXPECTED_FRAME: 1002,
  UNSUPPORTED_VERSION: 4000,
  UNSUPPORTED_FORMAT: 4000,
  UNKNOWN_ENGINE: 4000,
  UNKNOWN_VOICE: 4000,
  AUTH_FAILED: 1008,
  LIMIT_EXCEEDED: 4001,
  TEXT_AFTER_END: 1002,
  BAD_UTTERANCE_ID: 1002,
  NOT_BINARY: 1003,
  SLOW_CONSUMER: 4002,
  INTERNAL: 1011,
  GOING_AWAY: 1001,
  BAD_OPTIONS: 1002,
  TOO_MANY_REQUESTS: 4001,
  RESUME_FAILED: 4003,
});

/**
 * Base of every error of the client. `code`: the ErrorCode name, or null when the failure has
 * none (a connection that could not open, or dropped).
 */
export class DuplexdError extends Error {
  /**
   * @param {string} message one line
   * @param {{code?: string | null, closeCode?: number | null, cause?: unknown}} [opts]
   */
  constructor(message, { code = null, closeCode = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = new.target.name;
    /** @type {string | null} */
    this.code = code;
    /** @type {number | null} the WebSocket close code that goes (or went) with it */
    this.closeCode = closeCode ?? (code ? CLOSE_CODES[code] ?? null : null);
  }
}

/**
 * A protocol violation found by the codec or the client's state machine. `fault`: "remote"
 * (the server's bytes are bad) or "local" (we tried to send something invalid: our bug).
 */
export class ProtocolError extends DuplexdError {
  /**
   * @param {string} code ErrorCode name
   * @param {string} message
   * @param {"remote" | "local"} fault
   */
  constructor(code, message, fault) {
    super(message, { code });
    /** @type {"remote" | "local"} */
    this.fault = fault;
  }
}

/** The server ended the session with an ERROR frame: `code` and its `detail` text. */
export class ServerError extends DuplexdError {
  /**
   * @param {string} code ErrorCode name
   * @param {string} detail the ERROR frame's message
   */
  constructor(code, detail) {
    super(`${code}: ${detail}`, { code });
    this.detail = detail;
  }
}

/**
 * The server refused our credentials: an ERROR AUTH_FAILED. (A refused upgrade — HTTP 401 — is
 * a `ConnectError`: a browser's WebSocket does not reveal the HTTP status.)
 */
export class AuthError extends ServerError {}

/**
 * The WebSocket did not open: nothing listening, a TLS failure, or the upgrade refused (401 no
 * or bad token, 404, 429, 503). A browser does not say which; the message lists them.
 */
export class ConnectError extends DuplexdError {}

/** The connection closed or dropped during the session (not a normal close by us). */
export class ConnectionLost extends DuplexdError {}

/** Misuse of the session API (sending after close, audio without an uplink...). */
export class SessionStateError extends DuplexdError {}
