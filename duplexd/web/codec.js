// Sans-I/O codec of the duplexd wire protocol (protocol/SPEC.md), for browsers and node.
//
// `encode(frame)` turns a frame object into bytes; `Decoder` turns an arbitrary byte stream
// (WebSocket message payloads, or any split of them down to single bytes) back into frames. A
// half-received frame changes nothing; the first error is a `ProtocolError` (fault "remote")
// raised again by every later call; unknown optional types are skipped and counted.
//
// Frames are plain objects: `{type: "audio", epoch, utteranceId, seq, pcm, last}`. `type` is the
// frame's name in snake case (as in SPEC.md Appendix A); fields are the SPEC's names in
// camelCase. Value types:
//   u8/u16/u32 fields          Number
//   u64 counts (samples, µs)   Number (exact below 2^53; a larger value decodes as BigInt, and
//                              the encoder takes Number or BigInt)
//   Ping.nonce, Pong.nonce, Pong.serverTimeNs   always BigInt (random 64-bit values)
//   pcm                        Int16Array when decoded (its own buffer: transferable); the
//                              encoder takes an Int16Array or a Uint8Array of s16le bytes
//   Welcome.sessionId          Uint8Array(16)
//   Hello.options, Welcome.info, Stats.json   the JSON text as a string ("" for none)
//   Error.code                 the ErrorCode name ("TEXT_AFTER_END")
//   BargeIn.outcome, .reason   the name ("HELD", "BACKCHANNEL"): BARGE_IN_OUTCOMES, _REASONS
//   TurnEnd.by                 the name ("WORDS", "MAX_SILENCE"): TURN_END_BY
//   Words.marks                [{startChar, endChar, startSample, endSample}, ...]
// Flag bit 0x01 is a boolean field: text.end, audio.last, interrupted.vad, transcript.final,
// played.final (false when left out when encoding).

import { ERROR_NAMES, ErrorCode, ProtocolError } from "./errors.js";

export const PROTOCOL_VERSION = 1;
export const SUBPROTOCOL = "duplexd.v1";
export const WS_PATH = "/v1";
export const MAX_FRAME_BYTES = 65536;
export const HELLO_MAX_FRAME_BYTES = 4096; // before WELCOME (SPEC.md §3.1)
export const FRAME_HEADER_BYTES = 6;
export const AUDIO_HEADER_BYTES = 16;
export const FRAME_MS = 20;

/**
 * One row per frame type: the type byte, its name, its body fields in wire order, and the
 * boolean field carried by flag bit 0x01 (if any). Field kinds: u16 u32 u64 (Number) big64
 * (BigInt) bytes16 code (u16 ErrorCode, as its name) outcome reason (u8, as names) | tails: str16 json32 utf8 pcm marks.
 * @type {ReadonlyArray<{code: number, type: string, fields: ReadonlyArray<[string, string]>, flag: string | null}>}
 */
export const LAYOUTS = Object.freeze([
  L(0x01, "hello", "minVersion u16 maxVersion u16 sampleRateHz u32 frameMs u16 uplinkRateHz u32 token str16 engine str16 voice str16 options json32"),
  L(0x02, "text", "utteranceId u32 text utf8", "end"),
  L(0x03, "interrupt", ""),
  L(0x04, "pause", ""),
  L(0x05, "resume", ""),
  L(0x06, "ping", "nonce big64"),
  L(0x07, "audio_up", "seq u32 pcm pcm"),
  L(0x41, "get_stats", ""),
  L(0x42, "played", "epoch u16 utteranceId u32 samplesPlayed u64 clockUs u64", "final"),
  L(0x80, "welcome", "version u16 sessionId bytes16 sampleRateHz u32 frameSamples u32 uplinkRateHz u32 maxFrameBytes u32 maxTextBytes u32 maxQueuedUtterances u32 engine str16 voice str16 info json32"),
  L(0x81, "audio", "epoch u16 utteranceId u32 seq u32 pcm pcm", "last"),
  L(0x82, "utterance_started", "epoch u16 utteranceId u32"),
  L(0x83, "utterance_done", "epoch u16 utteranceId u32 samplesSent u64 charsSpoken u32"),
  L(0x84, "interrupted", "epoch u16 utteranceId u32 samplesSent u64 charsSpoken u32 cancelledUtterances u32", "vad"),
  L(0x85, "paused", ""),
  L(0x86, "resumed", ""),
  L(0x87, "pong", "nonce big64 serverTimeNs big64"),
  L(0x88, "error", "code code message utf8"),
  L(0x89, "speech_started", "uplinkSample u64"),
  L(0x8a, "speech_stopped", "uplinkSample u64"),
  L(0x8b, "transcript", "startSample u64 endSample u64 text utf8", "final"),
  L(0xc1, "stats", "json utf8"),
  L(0xc2, "words", "epoch u16 utteranceId u32 marks marks"),
  L(0xc3, "heard", "epoch u16 utteranceId u32 samplesPlayed u64 charsHeard u32"),
  L(0xc4, "barge_in", "outcome outcome reason reason epoch u16 utteranceId u32 samplesSent u64 uplinkSample u64 text utf8"),
  L(0xc5, "turn_end", "by by uplinkSample u64 silenceSamples u32 decidedUs u32"),
]);

/** BARGE_IN's outcome and reason (u8 on the wire), by value (SPEC.md §5.12). */
export const BARGE_IN_OUTCOMES = Object.freeze(["HELD", "RESUMED", "COMMITTED"]);
export const BARGE_IN_REASONS = Object.freeze([
  "ONSET", "TOO_SHORT", "NO_WORDS", "BACKCHANNEL", "WORDS", "LONG", "TIMEOUT", "UNHEARD",
]);
/** TURN_END's `by` (u8 on the wire), by value (SPEC.md §5.13). */
export const TURN_END_BY = Object.freeze(["SILENCE", "MODEL", "WORDS", "MAX_SILENCE", "FORGIVEN"]);
const NAMES = { outcome: BARGE_IN_OUTCOMES, reason: BARGE_IN_REASONS, by: TURN_END_BY };

/** Frame type name → type byte. */
export const FrameType = Object.freeze(Object.fromEntries(LAYOUTS.map((l) => [l.type, l.code])));

const SIZES = { u16: 2, u32: 4, u64: 8, big64: 8, bytes16: 16, code: 2, outcome: 1, reason: 1, by: 1 };
const TAILS = new Set(["str16", "json32", "utf8", "pcm", "marks"]);
const MAX = { u16: 0xffff, u32: 0xffffffff, code: 0xffff };
const U64_MAX = 0xffffffffffffffffn;
const BY_CODE = new Map(LAYOUTS.map((l) => [l.code, l]));
const BY_TYPE = new Map(LAYOUTS.map((l) => [l.type, l]));
const FIXED = new Map(
  LAYOUTS.map((l) => [l.code, l.fields.reduce((n, [, k]) => n + (SIZES[k] ?? 0), 0)]),
);
const HAS_TAIL = new Map(LAYOUTS.map((l) => [l.code, l.fields.some(([, k]) => TAILS.has(k))]));
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const utf8Encoder = new TextEncoder();
const LONE_SURROGATE = /[\uD800-\uDFFF]/u; // in a /u regex a pair is one code point

function L(code, type, spec, flag = null) {
  const words = spec.split(" ").filter(Boolean);
  const fields = [];
  for (let i = 0; i < words.length; i += 2) fields.push(Object.freeze([words[i], words[i + 1]]));
  return Object.freeze({ code, type, fields: Object.freeze(fields), flag });
}

// --------------------------------------------------------------------------- encoding

function local(code, message) {
  return new ProtocolError(code, message, "local");
}

function utf8Bytes(name, value) {
  if (typeof value !== "string") throw local("MALFORMED", `${name} must be a string, not ${typeof value}`);
  if (LONE_SURROGATE.test(value)) throw local("MALFORMED", `${name} holds a lone surrogate (not UTF-8 encodable)`);
  return utf8Encoder.encode(value);
}

function u64Value(name, value) {
  if (typeof value === "bigint") {
    if (value < 0n || value > U64_MAX) throw local("MALFORMED", `${name}=${value} out of range 0..2^64-1`);
    return value;
  }
  if (!Number.isSafeInteger(value) || value < 0) {
    throw local("MALFORMED", `${name}=${value} must be an integer 0..2^53-1 (or a BigInt)`);
  }
  return BigInt(value);
}

/** @param {unknown} pcm @param {boolean} packet an Opus packet: any length @returns {Uint8Array} */
function pcmBytes(pcm, packet = false) {
  if (packet) {
    if (!(pcm instanceof Uint8Array)) throw local("MALFORMED", "an Opus packet must be a Uint8Array");
    return pcm;
  }
  if (pcm instanceof Int16Array) {
    if (LITTLE_ENDIAN) return new Uint8Array(pcm.buffer, pcm.byteOffset, pcm.byteLength);
    const out = new Uint8Array(pcm.length * 2);
    const view = new DataView(out.buffer);
    pcm.forEach((s, i) => view.setInt16(i * 2, s, true));
    return out;
  }
  if (pcm instanceof Uint8Array) {
    if (pcm.length & 1) throw local("MALFORMED", "pcm must be whole s16 samples");
    return pcm;
  }
  throw local("MALFORMED", "pcm must be an Int16Array or a Uint8Array");
}

/**
 * Encode one frame, length prefix included.
 * @param {{type: string, [field: string]: any}} frame
 * @param {{maxFrameBytes?: number, packetAudio?: boolean}} [opts] the receiver's limit (SPEC.md
 *   §3.1); `packetAudio`: an audio body is an Opus packet (Uint8Array, any length; §4.6.3)
 * @returns {Uint8Array}
 * @throws {ProtocolError} fault "local": an unknown type, a missing or out-of-range field, a
 *   string that is not encodable, a frame over `maxFrameBytes`.
 */
export function encode(frame, { maxFrameBytes = MAX_FRAME_BYTES, packetAudio = false } = {}) {
  const layout = BY_TYPE.get(frame?.type);
  if (!layout) throw local("INTERNAL", `not a frame type: ${frame?.type}`);
  /** @type {Uint8Array[]} */
  const parts = [];
  let size = 0;
  const push = (bytes) => {
    parts.push(bytes);
    size += bytes.length;
  };
  for (const [name, kind] of layout.fields) {
    const value = frame[name];
    if (Object.hasOwn(NAMES, kind)) {
      const n = NAMES[kind].indexOf(value);
      if (n < 0) throw local("MALFORMED", `${layout.type}.${name} must be one of ${NAMES[kind].join(" ")}, not ${value}`);
      push(Uint8Array.of(n));
    } else if (kind === "u16" || kind === "u32" || kind === "code") {
      let n = value;
      if (kind === "code") {
        n = typeof value === "string" ? ErrorCode[value] : undefined;
        if (n === undefined) throw local("MALFORMED", `code must be an ErrorCode name, not ${value}`);
      }
      if (!Number.isInteger(n) || n < 0 || n > MAX[kind]) {
        throw local("MALFORMED", `${layout.type}.${name}=${value} out of range 0..${MAX[kind]}`);
      }
      const b = new Uint8Array(SIZES[kind]);
      const view = new DataView(b.buffer);
      if (kind === "u32") view.setUint32(0, n, true);
      else view.setUint16(0, n, true);
      push(b);
    } else if (kind === "u64" || kind === "big64") {
      const b = new Uint8Array(8);
      new DataView(b.buffer).setBigUint64(0, u64Value(`${layout.type}.${name}`, value), true);
      push(b);
    } else if (kind === "bytes16") {
      if (!(value instanceof Uint8Array) || value.length !== 16) throw local("MALFORMED", `${name} must be 16 bytes`);
      push(value);
    } else if (kind === "pcm") {
      push(pcmBytes(value, packetAudio));
    } else if (kind === "marks") {
      push(encodeMarks(value));
    } else {
      const data = utf8Bytes(`${layout.type}.${name}`, value);
      if (kind === "str16" || kind === "json32") {
        const width = kind === "str16" ? 2 : 4;
        if (kind === "str16" && data.length > 0xffff) throw local("MALFORMED", `${name} longer than 65535 bytes`);
        const b = new Uint8Array(width);
        if (width === 2) new DataView(b.buffer).setUint16(0, data.length, true);
        else new DataView(b.buffer).setUint32(0, data.length, true);
        push(b);
      }
      push(data);
    }
  }
  const total = FRAME_HEADER_BYTES + size;
  if (total > maxFrameBytes) {
    throw local("FRAME_TOO_LARGE", `${layout.type} frame of ${total} bytes > ${maxFrameBytes}`);
  }
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  view.setUint32(0, 2 + size, true);
  out[4] = layout.code;
  out[5] = layout.flag !== null && frame[layout.flag] ? 0x01 : 0;
  let pos = FRAME_HEADER_BYTES;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

function encodeMarks(marks) {
  if (!Array.isArray(marks)) throw local("MALFORMED", "marks must be an array");
  const out = new Uint8Array(16 * marks.length);
  const view = new DataView(out.buffer);
  marks.forEach((m, i) => {
    const values = [m?.startChar, m?.endChar, m?.startSample, m?.endSample];
    if (!values.every((v) => Number.isInteger(v) && v >= 0 && v <= 0xffffffff)) {
      throw local("MALFORMED", `mark ${i} out of range`);
    }
    if (m.endChar < m.startChar || m.endSample < m.startSample) {
      throw local("MALFORMED", `mark ${i} ends before it starts`);
    }
    values.forEach((v, j) => view.setUint32(16 * i + 4 * j, v, true));
  });
  return out;
}

// --------------------------------------------------------------------------- decoding

function remote(code, message) {
  return new ProtocolError(code, message, "remote");
}

/** Bytes of an ArrayBuffer, any ArrayBufferView, or an array of byte values. */
export function asBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (Array.isArray(data)) return Uint8Array.from(data);
  throw new TypeError("expected bytes (ArrayBuffer or a typed array)");
}

function decodeUtf8(type, name, bytes) {
  try {
    return utf8Decoder.decode(bytes);
  } catch {
    throw remote("MALFORMED", `${type}: ${name} is not valid UTF-8`);
  }
}

/**
 * Decode the body of a frame of a known type (SPEC.md §3.4 steps 4 and 5).
 * @param {Uint8Array} buf @param {number} start @param {number} end @param {number} flags
 * @param {boolean} packets audio bodies are Opus packets (Uint8Array, any length)
 */
function decodeBody(layout, buf, start, end, flags, packets = false) {
  if (flags & ~(layout.flag !== null ? 0x01 : 0)) {
    throw remote("MALFORMED", `${layout.type}: reserved flag bits set (0x${flags.toString(16)})`);
  }
  const fixed = FIXED.get(layout.code);
  const size = end - start;
  if (size < fixed || (!HAS_TAIL.get(layout.code) && size !== fixed)) {
    throw remote("MALFORMED", `${layout.type}: body of ${size} bytes, fixed part is ${fixed}`);
  }
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const frame = { type: layout.type };
  let pos = start;
  for (const [name, kind] of layout.fields) {
    switch (kind) {
      case "outcome":
      case "reason":
      case "by": {
        const value = NAMES[kind][buf[pos]];
        if (value === undefined) throw remote("MALFORMED", `${layout.type}: unknown ${name} ${buf[pos]}`);
        frame[name] = value;
        pos += 1;
        break;
      }
      case "u16":
      case "code":
        frame[name] = view.getUint16(pos, true);
        pos += 2;
        break;
      case "u32":
        frame[name] = view.getUint32(pos, true);
        pos += 4;
        break;
      case "u64": {
        const v = view.getBigUint64(pos, true);
        frame[name] = v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
        pos += 8;
        break;
      }
      case "big64":
        frame[name] = view.getBigUint64(pos, true);
        pos += 8;
        break;
      case "bytes16":
        frame[name] = buf.slice(pos, pos + 16);
        pos += 16;
        break;
      case "pcm": {
        if (packets) {
          frame[name] = buf.slice(pos, end);
          pos = end;
          break;
        }
        if ((end - pos) & 1) throw remote("MALFORMED", `${layout.type}: pcm is not whole s16 samples`);
        frame[name] = pcmFromBytes(buf, pos, end);
        pos = end;
        break;
      }
      case "marks": {
        if ((end - pos) % 16) throw remote("MALFORMED", `${layout.type}: marks are not whole 16-byte records`);
        const marks = [];
        for (; pos < end; pos += 16) {
          const [startChar, endChar, startSample, endSample] = [0, 4, 8, 12].map((o) => view.getUint32(pos + o, true));
          if (endChar < startChar || endSample < startSample) {
            throw remote("MALFORMED", `${layout.type}: a mark ends before it starts`);
          }
          marks.push({ startChar, endChar, startSample, endSample });
        }
        frame[name] = marks;
        break;
      }
      default: {
        // str16, json32, utf8
        let n = end - pos;
        if (kind !== "utf8") {
          const width = kind === "str16" ? 2 : 4;
          if (end - pos < width) throw remote("MALFORMED", `${layout.type}: truncated length of ${name}`);
          n = width === 2 ? view.getUint16(pos, true) : view.getUint32(pos, true);
          pos += width;
          if (n > end - pos) throw remote("MALFORMED", `${layout.type}: ${name} of ${n} bytes overruns the body`);
        }
        frame[name] = decodeUtf8(layout.type, name, buf.subarray(pos, pos + n));
        pos += n;
      }
    }
  }
  if (pos !== end) throw remote("MALFORMED", `${layout.type}: ${end - pos} trailing bytes`);
  if (layout.flag !== null) frame[layout.flag] = Boolean(flags & 0x01);
  if (layout.type === "error") {
    const name = ERROR_NAMES[frame.code];
    if (name === undefined) throw remote("MALFORMED", `error: unknown error code ${frame.code}`);
    frame.code = name;
  }
  return frame;
}

function pcmFromBytes(buf, start, end) {
  const bytes = buf.slice(start, end); // a copy with its own aligned buffer
  if (LITTLE_ENDIAN) return new Int16Array(bytes.buffer);
  const out = new Int16Array(bytes.length / 2);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(2 * i, true);
  return out;
}

/**
 * Incremental decoder of the frames that `peer` sends ("server" for a client).
 *
 * Feed bytes with `receiveData` (any split) and pull frames with `nextFrame()` until it returns
 * null, or iterate (`for (const f of decoder)`). Call `checkBoundary()` after each WebSocket
 * message (a frame must not span messages) and at the end of a raw stream.
 */
export class Decoder {
  /** @param {{peer: "client" | "server", maxFrameBytes?: number}} opts */
  constructor({ peer, maxFrameBytes = MAX_FRAME_BYTES }) {
    if (peer !== "client" && peer !== "server") throw new TypeError(`peer must be "client" or "server", not ${peer}`);
    if (!(maxFrameBytes >= FRAME_HEADER_BYTES && maxFrameBytes <= MAX_FRAME_BYTES)) {
      throw new RangeError(`maxFrameBytes must be in ${FRAME_HEADER_BYTES}..${MAX_FRAME_BYTES}`);
    }
    /** @readonly */ this.peer = peer;
    /** the receiver's frame size limit; may be lowered once it is announced */
    this.maxFrameBytes = maxFrameBytes;
    /** unknown optional frames skipped so far */
    this.skippedFrames = 0;
    this._serverBit = peer === "server" ? 0x80 : 0;
    this._buf = new Uint8Array(4096);
    this._start = 0; // first byte not yet returned as a frame
    this._end = 0; // end of the received bytes
    /** @type {ProtocolError | null} */
    this._error = null;
    /** false: audio bodies are s16 PCM (Int16Array); set true once the handshake negotiated
     * Opus for the audio this decoder receives: they are Opus packets (Uint8Array) (§4.6.3) */
    this.packetAudio = false;
  }

  /** Bytes received and not yet returned (or skipped) as frames. */
  get bufferedBytes() {
    return this._end - this._start;
  }

  /** @param {ArrayBuffer | ArrayBufferView} data */
  receiveData(data) {
    if (this._error) throw this._error;
    const bytes = asBytes(data);
    const held = this._end - this._start;
    if (this._end + bytes.length > this._buf.length) {
      let cap = this._buf.length;
      while (cap < held + bytes.length) cap *= 2;
      if (cap === this._buf.length) {
        this._buf.copyWithin(0, this._start, this._end); // compact
      } else {
        const buf = new Uint8Array(cap);
        buf.set(this._buf.subarray(this._start, this._end), 0);
        this._buf = buf;
      }
      this._start = 0;
      this._end = held;
    }
    this._buf.set(bytes, this._end);
    this._end += bytes.length;
  }

  /** Throw MALFORMED if part of a frame is buffered (a message or stream ended mid-frame). */
  checkBoundary() {
    if (this._error) throw this._error;
    if (this.bufferedBytes) {
      this._error = remote("MALFORMED", `${this.bufferedBytes} bytes of an incomplete frame`);
      throw this._error;
    }
  }

  /** The next complete frame, or null if more bytes are needed. */
  nextFrame() {
    if (this._error) throw this._error;
    try {
      return this._next();
    } catch (err) {
      this._error = err instanceof ProtocolError ? err : remote("MALFORMED", `undecodable frame: ${err}`);
      throw this._error;
    }
  }

  _next() {
    const buf = this._buf;
    const view = new DataView(buf.buffer);
    for (;;) {
      const pos = this._start;
      if (this._end - pos < 4) return null;
      const length = view.getUint32(pos, true);
      if (length < 2) throw remote("MALFORMED", `frame length ${length} < 2`);
      if (4 + length > this.maxFrameBytes) {
        throw remote("FRAME_TOO_LARGE", `frame of ${4 + length} bytes > ${this.maxFrameBytes}`);
      }
      const end = pos + 4 + length;
      if (this._end < end) return null;
      const code = buf[pos + 4];
      const flags = buf[pos + 5];
      if ((code & 0x80) !== this._serverBit) {
        const other = this.peer === "server" ? "client" : "server";
        throw remote("UNEXPECTED_FRAME", `type 0x${code.toString(16)} is not a ${this.peer}-to-${other} type`);
      }
      const layout = BY_CODE.get(code);
      let frame = null;
      if (layout === undefined) {
        if (!(code & 0x40)) throw remote("UNKNOWN_TYPE", `unknown frame type 0x${code.toString(16)}`);
        this.skippedFrames += 1;
      } else {
        frame = decodeBody(layout, buf, pos + FRAME_HEADER_BYTES, end, flags, this.packetAudio);
      }
      this._start = end; // commit
      if (this._start === this._end) this._start = this._end = 0;
      if (frame !== null) return frame;
    }
  }

  *[Symbol.iterator]() {
    let frame;
    while ((frame = this.nextFrame()) !== null) yield frame;
  }
}

/**
 * Decode one whole message (or stream): every frame in it; MALFORMED if it ends mid-frame.
 * @param {ArrayBuffer | ArrayBufferView} data
 * @param {{peer: "client" | "server", maxFrameBytes?: number}} opts
 */
export function decodeMessage(data, opts) {
  const decoder = new Decoder(opts);
  decoder.receiveData(data);
  const frames = [...decoder];
  decoder.checkBoundary();
  return frames;
}
