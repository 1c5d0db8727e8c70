// The JS codec beyond the golden vectors: a round-trip property over random valid frames of
// every type (seeded), the decoder's incremental behaviour and error order (SPEC.md §3.4), and
// the encoder's own (local) errors.

import assert from "node:assert/strict";
import { test } from "node:test";
import { ErrorCode, ProtocolError } from "../errors.js";
import { BARGE_IN_OUTCOMES, BARGE_IN_REASONS, TURN_END_BY, Decoder, decodeMessage, encode, LAYOUTS, MAX_FRAME_BYTES } from "../codec.js";
import { canonical, prng, toHex } from "./helpers.mjs";

const CASES_PER_TYPE = 150; // × 24 types
const ALPHABET = ["a", "Z", " ", "\u0000", "\n", "é", "ß", "✓", "世", "\uFEFF", "😀", "\u{10FFFF}", "\u007F", "\u0080", "\uFFFD"];
const ERROR_NAMES = Object.keys(ErrorCode);

/** A random valid frame of `layout`, from `r`. */
function randomFrame(layout, r) {
  const frame = { type: layout.type };
  const str = (max) => Array.from({ length: r.int(0, max) }, () => ALPHABET[r.int(0, ALPHABET.length - 1)]).join("");
  const big = () => (BigInt(r.int(0, 0xffffffff)) << 32n) | BigInt(r.int(0, 0xffffffff));
  for (const [name, kind] of layout.fields) {
    switch (kind) {
      case "u16": frame[name] = [0, 0xffff, r.int(0, 0xffff)][r.int(0, 2)]; break;
      case "u32": frame[name] = [0, 0xffffffff, r.int(0, 0xffffffff)][r.int(0, 2)]; break;
      case "u64": {
        const pick = r.int(0, 3);
        frame[name] = pick === 0 ? r.int(0, 0xffffffff) : pick === 1 ? Number.MAX_SAFE_INTEGER : pick === 2 ? 0 : big() | (1n << 60n);
        break;
      }
      case "big64": frame[name] = big(); break;
      case "bytes16": frame[name] = Uint8Array.from({ length: 16 }, () => r.int(0, 255)); break;
      case "code": frame[name] = ERROR_NAMES[r.int(0, ERROR_NAMES.length - 1)]; break;
      case "outcome": frame[name] = BARGE_IN_OUTCOMES[r.int(0, BARGE_IN_OUTCOMES.length - 1)]; break;
      case "reason": frame[name] = BARGE_IN_REASONS[r.int(0, BARGE_IN_REASONS.length - 1)]; break;
      case "by": frame[name] = TURN_END_BY[r.int(0, TURN_END_BY.length - 1)]; break;
      case "pcm": frame[name] = Int16Array.from({ length: r.int(0, 1) ? 960 : r.int(0, 40) }, () => r.int(-32768, 32767)); break;
      case "marks": {
        frame[name] = Array.from({ length: r.int(0, 5) }, () => {
          const startChar = r.int(0, 1000);
          const startSample = r.int(0, 1e6);
          return { startChar, endChar: startChar + r.int(0, 30), startSample, endSample: startSample + r.int(0, 48000) };
        });
        break;
      }
      default: frame[name] = str(kind === "utf8" ? 60 : 20);
    }
  }
  if (layout.flag !== null) frame[layout.flag] = r.int(0, 1) === 1;
  return frame;
}

const peerOf = (layout) => (layout.code & 0x80 ? "server" : "client");

for (const layout of LAYOUTS) {
  test(`round trip: ${CASES_PER_TYPE} random ${layout.type} frames, whole, split and batched`, () => {
    const r = prng(0xd0b1e5 + layout.code);
    const encoded = [];
    for (let i = 0; i < CASES_PER_TYPE; i++) {
      const frame = randomFrame(layout, r);
      const bytes = encode(frame);
      const [decoded] = decodeMessage(bytes, { peer: peerOf(layout) });
      assert.deepStrictEqual(canonical(decoded), canonical(frame), `case ${i}`);
      assert.equal(toHex(encode(decoded)), toHex(bytes), `case ${i} re-encodes`);
      const cut = r.int(0, bytes.length);
      const d = new Decoder({ peer: peerOf(layout) });
      d.receiveData(bytes.subarray(0, cut));
      const before = [...d];
      d.receiveData(bytes.subarray(cut));
      assert.deepStrictEqual([...before, ...d].map(canonical), [canonical(frame)], `case ${i} split at ${cut}`);
      encoded.push([frame, bytes]);
    }
    // all of them in one stream, fed in random chunks
    const stream = new Uint8Array(encoded.reduce((n, [, b]) => n + b.length, 0));
    let pos = 0;
    for (const [, b] of encoded) (stream.set(b, pos), (pos += b.length));
    const d = new Decoder({ peer: peerOf(layout) });
    const frames = [];
    for (let at = 0; at < stream.length; ) {
      const n = r.int(1, 3000);
      d.receiveData(stream.subarray(at, at + n));
      frames.push(...d);
      at += n;
    }
    d.checkBoundary();
    assert.deepStrictEqual(frames.map(canonical), encoded.map(([f]) => canonical(f)));
  });
}

const TEXT = encode({ type: "text", utteranceId: 7, text: "Hi!✓", end: true });
const PING = encode({ type: "ping", nonce: 42n });

function remoteError(code) {
  return (err) => err instanceof ProtocolError && err.code === code && err.fault === "remote";
}

test("a half-received frame changes nothing", () => {
  const d = new Decoder({ peer: "client" });
  for (let cut = 0; cut < TEXT.length; cut++) {
    d.receiveData(TEXT.subarray(cut, cut + 1));
    if (cut < TEXT.length - 1) {
      assert.equal(d.nextFrame(), null);
      assert.equal(d.bufferedBytes, cut + 1);
    }
  }
  assert.deepEqual(d.nextFrame(), { type: "text", utteranceId: 7, text: "Hi!✓", end: true });
  assert.equal(d.nextFrame(), null);
  assert.equal(d.bufferedBytes, 0);
  d.checkBoundary();
});

test("a message that ends mid-frame is MALFORMED, and the error sticks", () => {
  const d = new Decoder({ peer: "client" });
  d.receiveData(Uint8Array.of(...PING, ...TEXT.subarray(0, 5)));
  assert.deepEqual([...d], [{ type: "ping", nonce: 42n }]);
  assert.throws(() => d.checkBoundary(), remoteError("MALFORMED"));
  assert.throws(() => d.receiveData(TEXT.subarray(5)), remoteError("MALFORMED"));
  assert.throws(() => d.nextFrame(), remoteError("MALFORMED"));
});

test("FRAME_TOO_LARGE from the 4-byte prefix alone, at the decoder's limit", () => {
  const d = new Decoder({ peer: "server" });
  d.receiveData(Uint8Array.of(0xfd, 0xff, 0x00, 0x00)); // 4 + 65533 = 65537 bytes
  assert.throws(() => d.nextFrame(), remoteError("FRAME_TOO_LARGE"));
  const small = new Decoder({ peer: "client", maxFrameBytes: 4096 });
  const big = encode({ type: "text", utteranceId: 1, text: "x".repeat(4096 - 9) }); // 4097 bytes
  small.receiveData(big.subarray(0, 4));
  assert.throws(() => small.nextFrame(), remoteError("FRAME_TOO_LARGE"));
  const exact = new Decoder({ peer: "client", maxFrameBytes: 4096 });
  exact.receiveData(encode({ type: "text", utteranceId: 1, text: "x".repeat(4096 - 10) })); // 4096 bytes
  assert.equal(exact.nextFrame().text.length, 4086);
});

test("check order: direction before type, type before flags, flags before body", () => {
  // a client type with reserved flags and a bad body, from the server: the direction decides
  assert.throws(() => decodeMessage(Uint8Array.of(3, 0, 0, 0, 0x06, 0xfe, 1), { peer: "server" }), remoteError("UNEXPECTED_FRAME"));
  // an unknown non-optional type with flags set: UNKNOWN_TYPE (flags are not looked at)
  assert.throws(() => decodeMessage(Uint8Array.of(2, 0, 0, 0, 0x9f, 0xff), { peer: "server" }), remoteError("UNKNOWN_TYPE"));
  // a known type with a reserved flag and a short body: MALFORMED either way, for the flag
  assert.throws(() => decodeMessage(Uint8Array.of(3, 0, 0, 0, 0x87, 0x02, 0), { peer: "server" }), (e) => remoteError("MALFORMED")(e) && /flag/.test(e.message));
  // an unknown optional type is skipped whatever its flags and body, and counted
  const d = new Decoder({ peer: "server" });
  d.receiveData(Uint8Array.of(3, 0, 0, 0, 0xcf, 0xff, 9, 2, 0, 0, 0, 0xce, 0x01, 2, 0, 0, 0, 0x85, 0));
  assert.deepEqual([...d], [{ type: "paused" }]);
  assert.equal(d.skippedFrames, 2);
});

test("frames before a bad one in the same message are returned first", () => {
  const d = new Decoder({ peer: "client" });
  d.receiveData(Uint8Array.of(...PING, ...PING, 2, 0, 0, 0, 0x3e, 0));
  assert.equal(d.nextFrame().nonce, 42n);
  assert.equal(d.nextFrame().nonce, 42n);
  assert.throws(() => d.nextFrame(), remoteError("UNKNOWN_TYPE"));
});

test("decoded values: u64 beyond 2^53 stays exact as BigInt, a BOM and NUL survive, pcm is Int16", () => {
  const done = encode({ type: "utterance_done", epoch: 1, utteranceId: 2, samplesSent: 2n ** 64n - 1n, charsSpoken: 3 });
  assert.equal(decodeMessage(done, { peer: "server" })[0].samplesSent, 2n ** 64n - 1n);
  const small = encode({ type: "utterance_done", epoch: 1, utteranceId: 2, samplesSent: 48000, charsSpoken: 3 });
  assert.equal(decodeMessage(small, { peer: "server" })[0].samplesSent, 48000);
  const text = decodeMessage(encode({ type: "text", utteranceId: 1, text: "\uFEFFa\u0000b" }), { peer: "client" })[0];
  assert.equal(text.text, "\uFEFFa\u0000b");
  const audio = decodeMessage(encode({ type: "audio", epoch: 0, utteranceId: 1, seq: 0, pcm: Int16Array.of(-32768, 1, 32767), last: true }), { peer: "server" })[0];
  assert.ok(audio.pcm instanceof Int16Array);
  assert.deepEqual([...audio.pcm], [-32768, 1, 32767]);
  assert.equal(audio.pcm.byteOffset, 0); // its own buffer: transferable to a worklet
});

test("the decoder's buffer grows and compacts over a long stream", () => {
  const d = new Decoder({ peer: "server" });
  const frame = encode({ type: "audio", epoch: 3, utteranceId: 9, seq: 0, pcm: new Int16Array(960) });
  let count = 0;
  for (let i = 0; i < 500; i++) {
    d.receiveData(frame.subarray(0, 1000));
    count += [...d].length;
    d.receiveData(frame.subarray(1000));
    count += [...d].length;
  }
  assert.equal(count, 500);
  assert.ok(d._buf.length <= 8192, `buffer of ${d._buf.length} bytes`);
});

test("encode rejects invalid frames as local errors", () => {
  const local = (code) => (err) => err instanceof ProtocolError && err.code === code && err.fault === "local";
  const bad = [
    [{ type: "nope" }, "INTERNAL"],
    [{ type: "ping" }, "MALFORMED"], // nonce missing
    [{ type: "ping", nonce: -1n }, "MALFORMED"],
    [{ type: "ping", nonce: 2n ** 64n }, "MALFORMED"],
    [{ type: "text", utteranceId: 2 ** 32, text: "" }, "MALFORMED"],
    [{ type: "text", utteranceId: 1.5, text: "" }, "MALFORMED"],
    [{ type: "text", utteranceId: 1, text: "\uD800x" }, "MALFORMED"], // lone surrogate
    [{ type: "text", utteranceId: 1, text: 5 }, "MALFORMED"],
    [{ type: "audio_up", seq: 0, pcm: new Uint8Array(3) }, "MALFORMED"],
    [{ type: "audio_up", seq: 0, pcm: [1, 2] }, "MALFORMED"],
    [{ type: "played", epoch: 0, utteranceId: 1, samplesPlayed: 2 ** 53, clockUs: 0 }, "MALFORMED"],
    [{ type: "error", code: "NOPE", message: "" }, "MALFORMED"],
    [{ type: "words", epoch: 0, utteranceId: 1, marks: [{ startChar: 5, endChar: 4, startSample: 0, endSample: 0 }] }, "MALFORMED"],
    [{ type: "welcome", version: 1, sessionId: new Uint8Array(15), sampleRateHz: 1, frameSamples: 1, uplinkRateHz: 0, maxFrameBytes: 1, maxTextBytes: 1, maxQueuedUtterances: 1, engine: "", voice: "", info: "" }, "MALFORMED"],
    [{ type: "text", utteranceId: 1, text: "x".repeat(MAX_FRAME_BYTES) }, "FRAME_TOO_LARGE"],
  ];
  for (const [frame, code] of bad) assert.throws(() => encode(frame), local(code), JSON.stringify(frame, (_k, v) => (typeof v === "bigint" ? `${v}n` : v)));
  const hello = { type: "hello", minVersion: 1, maxVersion: 1, sampleRateHz: 48000, frameMs: 20, uplinkRateHz: 0, token: "", engine: "", voice: "", options: JSON.stringify({ pad: "x".repeat(5000) }) };
  assert.throws(() => encode(hello, { maxFrameBytes: 4096 }), local("FRAME_TOO_LARGE"));
  assert.ok(encode(hello).length > 4096);
});
