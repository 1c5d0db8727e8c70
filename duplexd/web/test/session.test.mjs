// DuplexdSession over an in-memory WebSocket that plays the server's part with the codec.

import assert from "node:assert/strict";
import { test } from "node:test";
import { decodeMessage, encode } from "../codec.js";
import { AuthError, ConnectError, ConnectionLost, ProtocolError, ServerError, SessionStateError } from "../errors.js";
import { DuplexdSession, sessionUrl } from "../session.js";

const WELCOME = {
  type: "welcome", version: 1, sessionId: new Uint8Array(16), sampleRateHz: 48000, frameSamples: 960,
  uplinkRateHz: 16000, maxFrameBytes: 65536, maxTextBytes: 32768, maxQueuedUtterances: 16,
  engine: "tone", voice: "a440", info: JSON.stringify({ word_timing: "word" }),
};

/** A WebSocket whose far end is the test: `sent` holds the client's frames, `serve` answers. */
class FakeWebSocket extends EventTarget {
  static last = null;
  constructor(url, protocol) {
    super();
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.binaryType = "blob";
    this.sent = [];
    this.closed = null;
    FakeWebSocket.last = this;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
  }
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  send(bytes) {
    assert.equal(this.readyState, 1, "send on an open socket only");
    this.sent.push(...decodeMessage(bytes, { peer: "client" }));
  }
  /** One server message of these frames (or a raw string/bytes). */
  serve(...frames) {
    const data = typeof frames[0] === "string" ? frames[0] : Buffer.concat(frames.map((f) => (f instanceof Uint8Array ? f : encode(f))));
    const buf = typeof data === "string" ? data : data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
    this.onmessage?.({ data: buf });
  }
  close(code = 1005, reason = "") {
    if (this.readyState >= 2) return;
    this.closed = { code, reason };
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code, reason, wasClean: true }));
  }
  drop(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code, reason: "", wasClean: false });
  }
}

const tick = () => new Promise((r) => setTimeout(r, 0));

async function openSession(opts = {}) {
  const pending = DuplexdSession.open("ws://127.0.0.1:8765", { WebSocket: FakeWebSocket, uplinkRateHz: 16000, ...opts });
  const ws = FakeWebSocket.last;
  ws.open();
  ws.serve(WELCOME);
  const s = await pending;
  return { s, ws };
}

const audio = (epoch, utteranceId, seq, last = false) => ({ type: "audio", epoch, utteranceId, seq, pcm: new Int16Array(960), last });

test("sessionUrl: /v1 path, token in the query, ws(s) only", () => {
  assert.equal(sessionUrl("ws://h:1", "a b"), "ws://h:1/v1?token=a+b");
  assert.equal(sessionUrl("wss://h/v1?x=1", null), "wss://h/v1?x=1");
  assert.throws(() => sessionUrl("http://h/v1", null), TypeError);
});

test("the handshake: HELLO with our formats, options as JSON, the token in the URL", async () => {
  const { s, ws } = await openSession({ token: "t0k", options: { downlink: { words: true } } });
  assert.equal(ws.url, "ws://127.0.0.1:8765/v1?token=t0k");
  assert.equal(ws.protocol, "duplexd.v1");
  assert.equal(ws.binaryType, "arraybuffer");
  assert.deepEqual(ws.sent, [{
    type: "hello", minVersion: 1, maxVersion: 1, sampleRateHz: 48000, frameMs: 20, uplinkRateHz: 16000,
    token: "", engine: "", voice: "", options: '{"downlink":{"words":true}}',
  }]);
  assert.equal(s.frameSamples, 960);
  assert.deepEqual(s.info, { word_timing: "word" });
});

test("say, streamText and sendAudio send the frames in order with growing ids and seqs", async () => {
  const { s, ws } = await openSession();
  assert.equal(s.say("Hello."), 1);
  assert.equal(await s.streamText(["a ", "b"]), 2);
  assert.equal(s.sendAudio(new Int16Array(320)), 0);
  assert.equal(s.sendAudio(new Int16Array(320)), 1);
  s.reportPlayed(0, 2, 960, 1234.6, { final: true });
  assert.deepEqual(ws.sent.slice(1).map((f) => [f.type, f.utteranceId ?? f.seq, f.text ?? f.pcm?.length, f.end ?? f.final]), [
    ["text", 1, "Hello.", true],
    ["text", 2, "a ", false],
    ["text", 2, "b", false],
    ["text", 2, "", true],
    ["audio_up", 0, 320, undefined],
    ["audio_up", 1, 320, undefined],
    ["played", 2, undefined, true],
  ]);
  assert.equal(ws.sent.at(-1).clockUs, 1235);
  assert.equal(ws.sent.at(-1).samplesPlayed, 960);
});

test("events: one per frame, named after its type; stale-epoch audio is dropped", async () => {
  const { s, ws } = await openSession();
  const seen = [];
  for (const name of ["utterancestarted", "audio", "utterancedone", "interrupted", "words", "heard", "speechstarted", "transcript"]) {
    s.addEventListener(name, (ev) => seen.push([name, ev.frame.utteranceId ?? ev.frame.text ?? ev.frame.uplinkSample, typeof ev.receivedAt]));
  }
  ws.serve({ type: "utterance_started", epoch: 0, utteranceId: 1 }, { type: "words", epoch: 0, utteranceId: 1, marks: [] }, audio(0, 1, 0));
  ws.serve({ type: "interrupted", epoch: 1, utteranceId: 1, samplesSent: 960, charsSpoken: 0, cancelledUtterances: 0, vad: true });
  ws.serve(audio(0, 1, 1), { type: "words", epoch: 0, utteranceId: 1, marks: [] }); // stale
  ws.serve({ type: "speech_started", uplinkSample: 3200 }, { type: "transcript", startSample: 3200, endSample: 9600, text: "stop", final: true });
  ws.serve({ type: "heard", epoch: 0, utteranceId: 1, samplesPlayed: 960, charsHeard: 0 });
  assert.deepEqual(seen, [
    ["utterancestarted", 1, "number"], ["words", 1, "number"], ["audio", 1, "number"],
    ["interrupted", 1, "number"], ["speechstarted", 3200, "number"], ["transcript", "stop", "number"], ["heard", 1, "number"],
  ]);
  assert.equal(s.epoch, 1);
  assert.equal(s.staleFrames, 2);
});

test("interrupt resolves to our INTERRUPTED, not a VAD one; audio in between is dropped", async () => {
  const { s, ws } = await openSession();
  const audioSeen = [];
  s.addEventListener("audio", (ev) => audioSeen.push(ev.frame.seq));
  ws.serve(audio(0, 1, 0));
  const answer = s.interrupt();
  assert.equal(ws.sent.at(-1).type, "interrupt");
  ws.serve(audio(0, 1, 1, true)); // the fade-out tail, in flight
  ws.serve({ type: "interrupted", epoch: 1, utteranceId: 1, samplesSent: 1200, charsSpoken: 0, cancelledUtterances: 0, vad: true });
  ws.serve(audio(1, 2, 0));
  ws.serve({ type: "interrupted", epoch: 2, utteranceId: 2, samplesSent: 960, charsSpoken: 3, cancelledUtterances: 1, vad: false });
  const frame = await answer;
  assert.equal(frame.epoch, 2);
  assert.equal(frame.vad, false);
  ws.serve(audio(2, 3, 0));
  assert.deepEqual(audioSeen, [0, 0]);
  assert.equal(s.staleFrames, 2);
});

test("pause, resume, ping (by nonce) and getStats resolve to their answers", async () => {
  const { s, ws } = await openSession();
  const paused = s.pause();
  ws.serve({ type: "paused" });
  assert.equal((await paused).type, "paused");
  const resumed = s.resume();
  ws.serve({ type: "resumed" });
  assert.equal((await resumed).type, "resumed");
  const rtt1 = s.ping();
  const rtt2 = s.ping();
  const [n1, n2] = ws.sent.slice(-2).map((f) => f.nonce);
  ws.serve({ type: "pong", nonce: n2, serverTimeNs: 5n }, { type: "pong", nonce: n1, serverTimeNs: 6n });
  assert.ok((await rtt1) >= 0 && (await rtt2) >= 0);
  const stats = s.getStats();
  ws.serve({ type: "stats", json: '{"frames_sent": 3}' });
  assert.deepEqual(await stats, { frames_sent: 3 });
});

test("an ERROR frame ends the session with a typed error; waiters reject with it", async () => {
  const { s, ws } = await openSession();
  const errors = [];
  s.addEventListener("error", (ev) => errors.push([ev.error.name, ev.frame?.code]));
  const closed = new Promise((r) => s.addEventListener("close", (ev) => r(ev.frame)));
  const answer = s.interrupt();
  ws.serve({ type: "error", code: "LIMIT_EXCEEDED", message: "too many utterances" });
  ws.close(4001, "");
  await assert.rejects(answer, (e) => e instanceof ServerError && e.code === "LIMIT_EXCEEDED" && e.closeCode === 4001);
  assert.deepEqual(errors, [["ServerError", "LIMIT_EXCEEDED"]]);
  assert.equal((await closed).code, 4001);
  assert.throws(() => s.say("x"), ServerError);
});

test("a server that breaks the protocol: the client closes with the code's close code", async () => {
  const { s, ws } = await openSession();
  ws.serve(Uint8Array.of(2, 0, 0, 0, 0x9f, 0)); // unknown non-optional type
  assert.deepEqual(ws.closed, { code: 1002, reason: "UNKNOWN_TYPE" });
  await tick();
  assert.ok(s.error instanceof ProtocolError && s.error.fault === "remote");
  const again = await openSession();
  again.ws.serve("hello"); // a text message
  assert.equal(again.ws.closed.code, 1003);
  const third = await openSession();
  third.ws.serve(encode(audio(0, 1, 0)).subarray(0, 20)); // a frame spanning messages
  assert.equal(third.ws.closed.code, 1002);
});

test("a dropped connection is ConnectionLost; our close is clean", async () => {
  const { s, ws } = await openSession();
  const pong = s.ping();
  ws.drop(1006);
  await assert.rejects(pong, ConnectionLost);
  assert.equal(s.state, "closed");
  const other = await openSession();
  await other.s.close();
  assert.equal(other.s.error, null);
  assert.deepEqual(other.ws.closed, { code: 1000, reason: "" });
  assert.throws(() => other.s.say("x"), SessionStateError);
});

test("handshake failures: refused upgrade, ERROR instead of WELCOME, AUTH_FAILED, no WELCOME in time", async () => {
  let p = DuplexdSession.open("ws://h:1/v1", { WebSocket: FakeWebSocket });
  FakeWebSocket.last.drop(1006);
  await assert.rejects(p, ConnectError);
  p = DuplexdSession.open("ws://h:1/v1", { WebSocket: FakeWebSocket, voice: "nope" });
  FakeWebSocket.last.open();
  FakeWebSocket.last.serve({ type: "error", code: "UNKNOWN_VOICE", message: "no voice nope" });
  await assert.rejects(p, (e) => e instanceof ServerError && !(e instanceof AuthError) && e.code === "UNKNOWN_VOICE");
  p = DuplexdSession.open("ws://h:1/v1", { WebSocket: FakeWebSocket });
  FakeWebSocket.last.open();
  FakeWebSocket.last.serve({ type: "error", code: "AUTH_FAILED", message: "" });
  await assert.rejects(p, AuthError);
  p = DuplexdSession.open("ws://h:1/v1", { WebSocket: FakeWebSocket });
  FakeWebSocket.last.open();
  FakeWebSocket.last.serve({ type: "paused" });
  await assert.rejects(p, (e) => e instanceof ProtocolError && e.code === "UNEXPECTED_FRAME");
  p = DuplexdSession.open("ws://h:1/v1", { WebSocket: FakeWebSocket, connectTimeoutMs: 20 });
  FakeWebSocket.last.open();
  await assert.rejects(p, (e) => e instanceof ConnectError && /WELCOME/.test(e.message));
});

test("frames that follow WELCOME in its message are delivered, in order", async () => {
  const pending = DuplexdSession.open("ws://h:1/v1", { WebSocket: FakeWebSocket });
  const ws = FakeWebSocket.last;
  ws.open();
  ws.serve(WELCOME, { type: "paused" });
  const s = await pending;
  const seen = [];
  s.addEventListener("frame", (ev) => seen.push(ev.frame.type));
  ws.serve({ type: "resumed" });
  assert.deepEqual(seen, ["paused", "resumed"]);
});
