// The browser client of a duplexd session, over a WebSocket (protocol/SPEC.md §2, §6, §7).
// It mirrors the Python SDK (duplexd/client/session.py):
//
//   const s = await DuplexdSession.open("ws://host:8765/v1", {token, uplinkRateHz: 16000});
//   s.addEventListener("audio", (e) => player.push(e.frame));
//   const uid = s.say("Hello there.");
//   const done = await s.waitFor("utterancedone", (f) => f.utteranceId === uid);
//   const cut = await s.interrupt();          // → the INTERRUPTED frame
//
// Events (each a `DuplexdEvent`: `.frame` — also `.detail` — and `.receivedAt`, the
// performance.now() at which its WebSocket message arrived): one per server frame, named after
// its type without underscores — audio, words, utterancestarted, utterancedone, interrupted,
// paused, resumed, pong, stats, speechstarted, speechstopped, transcript, heard, bargein,
// turnend (with `vad.end_reports`: what ended the turn, before its speechstopped) — plus "frame"
// for every frame; "error" once when the session fails (`.error`: the DuplexdError — a
// ServerError/AuthError for an ERROR frame, then `.frame` is that frame; a ProtocolError; a
// ConnectionLost); and "close" (`.frame` = {code, reason, error}) once at the end.
// AUDIO and WORDS of a stale epoch (SPEC.md §6.3), or that arrive while our own INTERRUPT waits
// for its answer, are dropped and counted in `staleFrames`, not dispatched.
// Sending (say, sendText, sendAudio, reportPlayed) is synchronous: ws.send queues the bytes.
// Opus (SPEC.md §4.6.3, `codec: "auto"`): where WebCodecs codes Opus, AUDIO comes as Opus and
// is decoded (opus.js) before its "audio" event, which still carries Int16 PCM: events keep
// the order of their frames (a frame after an AUDIO waits for its decode); `sendAudio` takes
// PCM and its AUDIO_UP leaves once encoded.

import { Decoder, encode, HELLO_MAX_FRAME_BYTES, PROTOCOL_VERSION, SUBPROTOCOL, WS_PATH } from "./codec.js";
import { negotiateCodecs, OpusDownlink, OpusUplink } from "./opus.js";
import {
  AuthError,
  ConnectError,
  ConnectionLost,
  DuplexdError,
  ProtocolError,
  ServerError,
  SessionStateError,
} from "./errors.js";

/** A session event: the frame and when its message arrived. */
export class DuplexdEvent extends Event {
  /** @param {string} type @param {any} frame @param {number} receivedAt */
  constructor(type, frame, receivedAt) {
    super(type);
    this.frame = frame;
    this.receivedAt = receivedAt;
  }

  /** The frame, as CustomEvent would have it. */
  get detail() {
    return this.frame;
  }
}

const now = () => globalThis.performance?.now() ?? Date.now();
const eventName = (type) => type.replaceAll("_", "");
const ANSWERS = new Set(["interrupted", "paused", "resumed", "pong", "stats"]);

/**
 * The session URL: `ws(s)://host[:port]/v1?token=…`. A URL without a path gets `/v1`; a
 * relative one is resolved against the page. The token goes in the query (a browser cannot
 * set an Authorization header on a WebSocket; SPEC.md §2).
 * @param {string} url @param {string | null | undefined} token
 */
export function sessionUrl(url, token) {
  const u = new URL(url, globalThis.location?.href);
  if (u.protocol !== "ws:" && u.protocol !== "wss:") throw new TypeError(`a session URL is ws:// or wss://, not ${u.protocol}`);
  if (u.pathname === "" || u.pathname === "/") u.pathname = WS_PATH;
  if (token) u.searchParams.set("token", token);
  return u.toString();
}

/**
 * @typedef {object} OpenOptions
 * @property {string | null} [token] the daemon's token (`?token=`), if it requires one
 * @property {number} [sampleRateHz] downlink rate: 48000 (default), 24000 or 16000
 * @property {number} [uplinkRateHz] 16000 or 48000 to send microphone audio; 0 (default): none
 * @property {string} [engine] "" = the server's default
 * @property {string} [voice] "" = the engine's default
 * @property {object} [options] HELLO options: {vad: {...}, asr: {...}, downlink: {...}}
 * @property {"pcm" | "auto"} [codec] "auto" (default): Opus for each direction this browser's
 *   WebCodecs codes (`negotiateCodecs`), PCM otherwise (no WebCodecs: nothing is asked);
 *   "pcm": PCM both ways. An `options.codec` of the caller's is sent as it is.
 * @property {any} [webCodecs] where AudioDecoder/AudioEncoder/... are (tests; globalThis)
 * @property {number} [connectTimeoutMs] for the WebSocket to open and WELCOME to arrive (10 s)
 * @property {typeof WebSocket} [WebSocket] the WebSocket class (tests; default the global one)
 */

export class DuplexdSession extends EventTarget {
  /**
   * Connect, handshake, and resolve to an open session.
   * @param {string} url `ws(s)://host:port/v1`
   * @param {OpenOptions} [opts]
   * @returns {Promise<DuplexdSession>}
   * @throws {ConnectError} the WebSocket did not open (unreachable, TLS, or the upgrade refused:
   *   401 bad token, 429, 503 — a browser does not reveal which), or no WELCOME in time
   * @throws {ServerError | AuthError} the server answered HELLO with ERROR (unknown voice...)
   * @throws {ProtocolError} the server broke the protocol in the handshake
   */
  static async open(url, opts = {}) {
    const {
      token = null,
      sampleRateHz = 48000,
      uplinkRateHz = 0,
      engine = "",
      voice = "",
      options: asked = null,
      connectTimeoutMs = 10000,
      WebSocket: WS = globalThis.WebSocket,
      codec = "auto",
      webCodecs = globalThis,
    } = opts;
    let options = asked;
    if (codec !== "pcm" && codec !== "auto") throw new TypeError(`codec is "pcm" or "auto", not ${codec}`);
    const coding = webCodecs?.AudioDecoder !== undefined || webCodecs?.AudioEncoder !== undefined;
    if (codec === "auto" && coding && !options?.codec) {
      const codecs = await negotiateCodecs({ sampleRateHz, uplinkRateHz }, webCodecs);
      if (codecs.downlink === "opus" || codecs.uplink === "opus") options = { ...options, codec: codecs };
    }
    const hello = {
      type: "hello",
      minVersion: PROTOCOL_VERSION,
      maxVersion: PROTOCOL_VERSION,
      sampleRateHz,
      frameMs: 20,
      uplinkRateHz,
      token: "",
      engine,
      voice,
      options: options && Object.keys(options).length ? JSON.stringify(options) : "",
    };
    const helloBytes = encode(hello, { maxFrameBytes: HELLO_MAX_FRAME_BYTES });
    const target = sessionUrl(url, token);
    const shown = sessionUrl(url, null);
    const ws = new WS(target, SUBPROTOCOL);
    ws.binaryType = "arraybuffer";
    const decoder = new Decoder({ peer: "server" });
    let timer;
    try {
      const [welcome, rest] = await new Promise((resolve, reject) => {
        let opened = false;
        timer = setTimeout(() => {
          reject(new ConnectError(`${shown}: no ${opened ? "WELCOME" : "connection"} within ${connectTimeoutMs} ms`));
          ws.close();
        }, connectTimeoutMs);
        ws.onopen = () => {
          opened = true;
          ws.send(helloBytes);
        };
        ws.onerror = () => {}; // the close event that follows says it
        ws.onclose = (ev) => {
          if (!opened) {
            reject(new ConnectError(`${shown}: the WebSocket did not open (nothing listening, TLS, or the upgrade was refused: 401 no or bad token, 429, 503 full or draining)`));
          } else {
            reject(new ConnectionLost(`${shown}: closed during the handshake (${ev.code}${ev.reason ? ` ${ev.reason}` : ""})`, { closeCode: ev.code }));
          }
        };
        ws.onmessage = (ev) => {
          try {
            if (typeof ev.data === "string") throw new ProtocolError("NOT_BINARY", "the server sent a text message", "remote");
            decoder.receiveData(ev.data);
            const frame = decoder.nextFrame();
            if (frame === null) return decoder.checkBoundary(); // an empty message
            if (frame.type === "error") {
              const Err = frame.code === "AUTH_FAILED" ? AuthError : ServerError;
              reject(new Err(frame.code, frame.message));
            } else if (frame.type !== "welcome") {
              throw new ProtocolError("UNEXPECTED_FRAME", `expected WELCOME, got ${frame.type}`, "remote");
            } else {
              const rest = [...decoder]; // frames after WELCOME in its message
              decoder.checkBoundary();
              resolve([frame, rest]);
            }
          } catch (err) {
            if (err instanceof ProtocolError) ws.close(err.closeCode, err.code);
            reject(err);
          }
        };
      });
      const session = new DuplexdSession(ws, welcome, hello, decoder, rest, webCodecs);
      if (rest.length) setTimeout(() => session._deliverLeftover(), 0); // once listeners are on
      return session;
    } catch (err) {
      if (ws.readyState === 0 || ws.readyState === 1) ws.close();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Use `DuplexdSession.open`. The session is complete at construction: WELCOME is known.
   * @param {WebSocket} ws @param {any} welcome @param {any} hello @param {Decoder} decoder
   * @param {any[]} [leftover] frames that followed WELCOME in its message (decoded as PCM:
   *   the server sends no AUDIO with its WELCOME)
   * @param {any} [webCodecs] where the WebCodecs classes are (an Opus direction needs them)
   */
  constructor(ws, welcome, hello, decoder, leftover = [], webCodecs = globalThis) {
    super();
    this._ws = ws;
    /** the WELCOME frame */
    this.welcome = welcome;
    /** WELCOME's info object (engines, voices, limits, word_timing...) */
    this.info = welcome.info ? JSON.parse(welcome.info) : {};
    this.hello = hello;
    /** "open" until the WebSocket closes, then "closed" */
    this.state = "open";
    /** @type {DuplexdError | null} why the session ended, when it was not a normal close */
    this.error = null;
    /** the epoch of the last INTERRUPTED received (SPEC.md §6.3) */
    this.epoch = 0;
    this.messagesReceived = 0;
    this.framesReceived = 0;
    /** AUDIO/WORDS dropped as stale */
    this.staleFrames = 0;
    this._decoder = decoder;
    this._leftover = leftover;
    this._nextUid = 1;
    this._uplinkSeq = 0;
    this._interruptsPending = 0;
    /** @type {Map<string, {resolve: Function, reject: Function, nonce?: bigint}[]>} */
    this._waiters = new Map();
    /** what WELCOME's info.codec granted (PCM both ways from a server that does not say) */
    this.codecs = { downlink: this.info.codec?.downlink ?? "pcm", uplink: this.info.codec?.uplink ?? "pcm" };
    const failed = (err) => this._fail(new ProtocolError("MALFORMED", `Opus: ${err?.message ?? err}`, "remote"));
    this._opusDown = null;
    if (this.codecs.downlink === "opus") {
      decoder.packetAudio = true;
      this._opusDown = new OpusDownlink(welcome.sampleRateHz, welcome.frameSamples, failed, webCodecs);
    }
    this._opusUp = null;
    if (this.codecs.uplink === "opus" && welcome.uplinkRateHz) {
      const send = (seq, pcm) => this.state === "open" && this._send({ type: "audio_up", seq, pcm });
      this._opusUp = new OpusUplink(welcome.uplinkRateHz, send, failed, webCodecs);
    }
    /** @type {{frame: any, at: number, pcm: Int16Array | null | undefined}[]} frames waiting for an AUDIO before them to decode */
    this._ordered = [];
    ws.onopen = null;
    ws.onmessage = (ev) => this._onMessage(ev);
    ws.onclose = (ev) => this._onClose(ev);
    ws.onerror = () => {};
  }

  get sampleRateHz() {
    return this.welcome.sampleRateHz;
  }

  get frameSamples() {
    return this.welcome.frameSamples;
  }

  /** The accepted uplink rate (0: no uplink). */
  get uplinkRateHz() {
    return this.welcome.uplinkRateHz;
  }

  /** Unknown optional frames the decoder skipped. */
  get skippedFrames() {
    return this._decoder.skippedFrames;
  }

  // ------------------------------------------------------------------ sending

  _send(frame) {
    if (this.state !== "open") throw this.error ?? new SessionStateError("the session is closed");
    const packetAudio = frame.type === "audio_up" && this._opusUp !== null;
    this._ws.send(encode(frame, { maxFrameBytes: this.welcome.maxFrameBytes, packetAudio }));
  }

  /** A fresh utterance id (ids only grow). */
  newUtteranceId() {
    return this._nextUid++;
  }

  /**
   * Send a chunk of an utterance's text; `end` closes its text. Each chunk is whole
   * characters (a JS string always is, unless it holds a lone surrogate: a local ProtocolError).
   * @param {number} utteranceId @param {string} text @param {{end?: boolean}} [opts]
   */
  sendText(utteranceId, text, { end = false } = {}) {
    if (utteranceId >= this._nextUid) this._nextUid = utteranceId + 1;
    this._send({ type: "text", utteranceId, text, end });
  }

  /** Speak `text` as a new utterance; returns its id. @param {string} text */
  say(text) {
    const uid = this.newUtteranceId();
    this.sendText(uid, text, { end: true });
    return uid;
  }

  /**
   * Stream chunks (e.g. LLM tokens) into a new utterance, then end it; resolves to its id.
   * @param {Iterable<string> | AsyncIterable<string>} chunks
   */
  async streamText(chunks) {
    const uid = this.newUtteranceId();
    for await (const chunk of chunks) this.sendText(uid, chunk);
    this.sendText(uid, "", { end: true });
    return uid;
  }

  /**
   * Send one uplink frame (Int16 samples at `uplinkRateHz`, 20 ms: 320 at 16 kHz), in real
   * time; returns its seq. Uplink positions (SPEECH_STARTED...) count from the first one sent.
   * @param {Int16Array} pcm
   */
  sendAudio(pcm) {
    if (!this.uplinkRateHz) throw new SessionStateError("no uplink was negotiated (open with uplinkRateHz)");
    const seq = this._uplinkSeq;
    if (this.state !== "open") throw this.error ?? new SessionStateError("the session is closed");
    if (this._opusUp !== null) this._opusUp.encode(seq, pcm);
    else this._send({ type: "audio_up", seq, pcm });
    this._uplinkSeq = seq + 1;
    return seq;
  }

  /**
   * Tell the server how much of an utterance reached the audio output (PLAYED, SPEC.md §4.8):
   * `samples` from its first, the last of them played at `clockUs` of the audio clock
   * (AudioContext.currentTime in µs). `final`: it will play no more (ended, or flushed).
   * A FINAL report is answered by a "heard" event (HEARD) when the server still knows it.
   */
  reportPlayed(epoch, utteranceId, samples, clockUs, { final = false } = {}) {
    this._send({ type: "played", epoch, utteranceId, samplesPlayed: samples, clockUs: Math.max(0, Math.round(clockUs)), final });
  }

  _request(frame, answer, extra = {}) {
    return new Promise((resolve, reject) => {
      this._send(frame);
      const list = this._waiters.get(answer) ?? [];
      list.push({ resolve, reject, ...extra });
      this._waiters.set(answer, list);
    });
  }

  /**
   * Barge in: stop the playing utterance and drop the queued ones. Resolves to the server's
   * INTERRUPTED (what was sent and spoken). Audio that arrives before it is dropped.
   */
  async interrupt() {
    this._interruptsPending += 1;
    try {
      return await this._request({ type: "interrupt" }, "interrupted");
    } finally {
      this._interruptsPending -= 1;
    }
  }

  /** Resolves to the PAUSED frame. */
  pause() {
    return this._request({ type: "pause" }, "paused");
  }

  /** Resolves to the RESUMED frame. */
  resume() {
    return this._request({ type: "resume" }, "resumed");
  }

  /** Round trip through the server's loop, in ms. */
  async ping() {
    const nonce = (BigInt(Math.floor(Math.random() * 2 ** 32)) << 32n) | BigInt(Math.floor(Math.random() * 2 ** 32));
    const t0 = now();
    await this._request({ type: "ping", nonce }, "pong", { nonce });
    return now() - t0;
  }

  /** The server's counters for this session (its STATS JSON, parsed). */
  async getStats() {
    const frame = await this._request({ type: "get_stats" }, "stats");
    return frame.json ? JSON.parse(frame.json) : {};
  }

  /**
   * The next frame of event `name` that `predicate` accepts. Rejects with the session's error
   * if it ends first, or a DuplexdError after `timeoutMs`.
   * @param {string} name @param {(frame: any) => boolean} [predicate] @param {{timeoutMs?: number}} [opts]
   */
  waitFor(name, predicate = () => true, { timeoutMs = 0 } = {}) {
    return new Promise((resolve, reject) => {
      let timer;
      const done = () => {
        clearTimeout(timer);
        this.removeEventListener(name, onEvent);
        this.removeEventListener("close", onClose);
      };
      const onEvent = (ev) => {
        if (predicate(ev.frame)) (done(), resolve(ev.frame));
      };
      const onClose = () => (done(), reject(this.error ?? new ConnectionLost("the session closed")));
      if (this.state !== "open") return onClose();
      this.addEventListener(name, onEvent);
      this.addEventListener("close", onClose);
      if (timeoutMs > 0) timer = setTimeout(() => (done(), reject(new DuplexdError(`no ${name} within ${timeoutMs} ms`))), timeoutMs);
    });
  }

  /** Close the session normally (1000); resolves once the WebSocket is closed. */
  close(code = 1000, reason = "") {
    return new Promise((resolve) => {
      if (this.state === "closed") return resolve();
      this.addEventListener("close", () => resolve(), { once: true });
      if (this.state === "open") {
        this.state = "closing";
        this._ws.close(code, reason);
      }
    });
  }

  // ------------------------------------------------------------------ receiving

  _onMessage(ev) {
    const at = now();
    if (this.state === "closed") return;
    this.messagesReceived += 1;
    try {
      this._deliverLeftover(at);
      if (typeof ev.data === "string") throw new ProtocolError("NOT_BINARY", "the server sent a text message", "remote");
      this._decoder.receiveData(ev.data);
      this._drain(at);
      this._decoder.checkBoundary();
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      this._fail(err);
    }
  }

  _deliverLeftover(at = now()) {
    for (const frame of this._leftover.splice(0)) this._deliver(frame, at);
  }

  _drain(at) {
    for (const frame of this._decoder) {
      this.framesReceived += 1;
      this._deliver(frame, at);
    }
  }

  _deliver(frame, at) {
    if (this._opusDown === null || (frame.type !== "audio" && this._ordered.length === 0)) {
      this._dispatch(frame, at);
      return;
    }
    const entry = { frame, at, pcm: frame.type === "audio" ? null : undefined };
    this._ordered.push(entry);
    if (frame.type === "audio") {
      this._opusDown.decode(frame).then((pcm) => {
        entry.pcm = pcm;
        this._release();
      });
    }
  }

  /** Dispatch the frames whose turn has come: up to the first AUDIO still decoding. */
  _release() {
    const queue = this._ordered;
    while (queue.length && queue[0].pcm !== null && this.state !== "closed") {
      const { frame, at, pcm } = queue.shift();
      try {
        this._dispatch(pcm === undefined ? frame : { ...frame, pcm }, at);
      } catch (err) {
        if (!(err instanceof ProtocolError)) throw err;
        this._fail(err);
      }
    }
  }

  _dispatch(frame, at) {
    switch (frame.type) {
      case "welcome":
        throw new ProtocolError("UNEXPECTED_FRAME", "a second WELCOME", "remote");
      case "error":
        this.dispatchEvent(new DuplexdEvent("frame", frame, at));
        this._setError(new (frame.code === "AUTH_FAILED" ? AuthError : ServerError)(frame.code, frame.message), frame, at);
        return;
      case "interrupted":
        this.epoch = frame.epoch;
        break;
      case "audio":
      case "words":
        if (frame.epoch !== this.epoch || this._interruptsPending > 0) {
          this.staleFrames += 1;
          return;
        }
        break;
      default:
    }
    if (ANSWERS.has(frame.type) && !(frame.type === "interrupted" && frame.vad)) {
      const list = this._waiters.get(frame.type) ?? [];
      const i = frame.type === "pong" ? list.findIndex((w) => w.nonce === frame.nonce) : 0;
      if (i >= 0 && i < list.length) list.splice(i, 1)[0].resolve(frame);
    }
    this.dispatchEvent(new DuplexdEvent("frame", frame, at));
    this.dispatchEvent(new DuplexdEvent(eventName(frame.type), frame, at));
  }

  /** Record why the session ends (the first reason only) and dispatch "error". */
  _setError(err, frame = null, at = now()) {
    if (this.error !== null) return;
    this.error = err;
    const ev = new DuplexdEvent("error", frame, at);
    ev.error = err;
    this.dispatchEvent(ev);
  }

  /** A protocol error of the server's: close with its close code (the client has no ERROR). */
  _fail(err) {
    this._setError(err);
    if (this.state === "open") {
      this.state = "closing";
      this._ws.close(err.closeCode ?? 1002, err.code ?? "");
    }
  }

  _onClose(ev) {
    const closing = this.state === "closing";
    this.state = "closed";
    this._opusDown?.close();
    this._opusUp?.close();
    if (!(closing || ev.code === 1000)) {
      this._setError(new ConnectionLost(`connection closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ""})`, { closeCode: ev.code }));
    }
    const error = this.error ?? new ConnectionLost("the session closed");
    for (const list of this._waiters.values()) for (const w of list.splice(0)) w.reject(error);
    this.dispatchEvent(new DuplexdEvent("close", { code: ev.code, reason: ev.reason, error: this.error }, now()));
  }
}
