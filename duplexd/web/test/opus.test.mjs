// Opus in the browser client (SPEC.md §4.6.3): what `negotiateCodecs` asks for with and without
// WebCodecs, and a session that negotiates Opus, decodes AUDIO before its event (in order with
// the frames after it), and encodes sendAudio's PCM. WebCodecs is played by fakes: node has
// none; the real one runs in Chromium (tests/test_browser.py).

import assert from "node:assert/strict";
import { test } from "node:test";
import { Decoder, encode } from "../codec.js";
import { ProtocolError } from "../errors.js";
import { negotiateCodecs, OPUS_RATES_HZ } from "../opus.js";
import { DuplexdSession } from "../session.js";

/** WebCodecs as a browser that codes Opus at `rates` has it; its "decoder" decodes at 48 kHz. */
function fakeWebCodecs({ rates = OPUS_RATES_HZ, decodeRateHz = 48000 } = {}) {
  const answer = (config) => Promise.resolve({ supported: config.codec === "opus" && rates.includes(config.sampleRate), config });
  class AudioData {
    constructor({ sampleRate, numberOfFrames, data }) {
      Object.assign(this, { sampleRate, numberOfFrames, data });
    }
    copyTo(out) {
      out.set(this.data);
    }
    close() {}
  }
  class AudioDecoder {
    static isConfigSupported = answer;
    constructor({ output, error }) {
      Object.assign(this, { output, error, state: "unconfigured" });
      wc.decoders.push(this);
    }
    configure(config) {
      this.config = config;
      this.state = "configured";
    }
    decode(chunk) {
      // a "packet" [v, ...]: 20 ms of the constant v / 100, or an error for 0xff
      const v = chunk.data[0];
      setTimeout(() => {
        if (v === 0xff) return this.error(new Error("not an Opus packet"));
        const n = (decodeRateHz * 20) / 1000;
        this.output(new AudioData({ sampleRate: decodeRateHz, numberOfFrames: n, data: new Float32Array(n).fill(v / 100) }));
      }, 1);
    }
    close() {
      this.state = "closed";
    }
  }
  class AudioEncoder {
    static isConfigSupported = answer;
    constructor({ output }) {
      Object.assign(this, { output, state: "unconfigured" });
    }
    configure(config) {
      this.config = config;
      this.state = "configured";
    }
    encode(data) {
      const first = data.data[0];
      queueMicrotask(() => this.output({ byteLength: 3, copyTo: (out) => out.set([7, first & 0xff, 9]) }));
    }
    close() {
      this.state = "closed";
    }
  }
  class EncodedAudioChunk {
    constructor({ data }) {
      this.data = data;
    }
  }
  const wc = { AudioDecoder, AudioEncoder, AudioData, EncodedAudioChunk, decoders: [] };
  return wc;
}

/** A WebSocket whose far end is the test; it decodes what the client sends as a server would. */
class FakeWebSocket {
  static last = null;
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.decoder = new Decoder({ peer: "client" });
    FakeWebSocket.last = this;
  }
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  send(bytes) {
    this.decoder.receiveData(bytes);
    this.sent.push(...this.decoder);
    this.hello ??= this.sent[0];
    this.decoder.packetAudio = true; // after HELLO: as a server that grants an Opus uplink
  }
  serve(...frames) {
    const data = Buffer.concat(frames.map((f) => encode(f, { packetAudio: true })));
    this.onmessage?.({ data: data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) });
  }
  close(code = 1005, reason = "") {
    if (this.readyState >= 2) return;
    this.closed = { code, reason };
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code, reason, wasClean: true }));
  }
}

const welcome = (codec, rate = 16000) => ({
  type: "welcome", version: 1, sessionId: new Uint8Array(16), sampleRateHz: rate, frameSamples: rate / 50,
  uplinkRateHz: 16000, maxFrameBytes: 65536, maxTextBytes: 32768, maxQueuedUtterances: 16,
  engine: "tone", voice: "a440", info: JSON.stringify(codec ? { codec } : {}),
});

async function openSession(wc, codecGranted, opts = {}) {
  const pending = DuplexdSession.open("ws://127.0.0.1:8765", {
    WebSocket: FakeWebSocket, webCodecs: wc, sampleRateHz: 16000, uplinkRateHz: 16000, codec: "auto", ...opts,
  });
  await new Promise((r) => setTimeout(r, 0)); // negotiateCodecs awaits isConfigSupported
  const ws = FakeWebSocket.last;
  ws.open();
  ws.serve(welcome(codecGranted));
  return { s: await pending, ws };
}

const until = async (cond) => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 2));
  assert.ok(cond(), "timed out");
};

test("negotiateCodecs: Opus per direction where WebCodecs codes it at that rate, PCM otherwise", async () => {
  assert.deepEqual(await negotiateCodecs({ sampleRateHz: 48000, uplinkRateHz: 16000 }, {}), { downlink: "pcm", uplink: "pcm" });
  const wc = fakeWebCodecs();
  assert.deepEqual(await negotiateCodecs({ sampleRateHz: 48000, uplinkRateHz: 16000 }, wc), { downlink: "opus", uplink: "opus" });
  assert.deepEqual(await negotiateCodecs({ sampleRateHz: 24000 }, wc), { downlink: "opus", uplink: "pcm" });
  assert.deepEqual(await negotiateCodecs({ sampleRateHz: 44100, uplinkRateHz: 16000 }, wc), { downlink: "pcm", uplink: "opus" });
  const only48 = fakeWebCodecs({ rates: [48000] });
  assert.deepEqual(await negotiateCodecs({ sampleRateHz: 16000, uplinkRateHz: 48000 }, only48), { downlink: "pcm", uplink: "opus" });
  const throwing = { AudioDecoder: { isConfigSupported: () => Promise.reject(new TypeError("bad config")) } };
  assert.deepEqual(await negotiateCodecs({ sampleRateHz: 48000 }, throwing), { downlink: "pcm", uplink: "pcm" });
});

test("codec auto asks for Opus in HELLO; pcm (the default) asks for nothing", async () => {
  const { s, ws } = await openSession(fakeWebCodecs(), { downlink: "opus", uplink: "opus" });
  assert.deepEqual(JSON.parse(ws.hello.options), { codec: { downlink: "opus", uplink: "opus" } });
  assert.deepEqual(s.codecs, { downlink: "opus", uplink: "opus" });
  const plain = await openSession(fakeWebCodecs(), null, { codec: "pcm" });
  assert.equal(plain.ws.hello.options, "");
  assert.deepEqual(plain.s.codecs, { downlink: "pcm", uplink: "pcm" });
  const none = await openSession({}, null);
  assert.equal(none.ws.hello.options, "", "no WebCodecs: PCM, nothing asked");
  await assert.rejects(DuplexdSession.open("ws://h/v1", { codec: "opus" }), TypeError);
});

test("Opus AUDIO is decoded to Int16 PCM at the session rate, its events in frame order", async () => {
  const wc = fakeWebCodecs();
  const { s, ws } = await openSession(wc, { downlink: "opus", uplink: "pcm" });
  const seen = [];
  s.addEventListener("frame", (ev) => seen.push([ev.frame.type, ev.frame.pcm?.constructor.name, ev.frame.pcm?.length, ev.frame.pcm?.[319]]));
  ws.serve(
    { type: "utterance_started", epoch: 0, utteranceId: 1 },
    { type: "audio", epoch: 0, utteranceId: 1, seq: 0, pcm: Uint8Array.of(50, 1, 2), last: false },
    { type: "audio", epoch: 0, utteranceId: 1, seq: 1, pcm: Uint8Array.of(25), last: true },
    { type: "utterance_done", epoch: 0, utteranceId: 1, samplesSent: 600, charsSpoken: 3 },
  );
  assert.deepEqual(seen, [["utterance_started", undefined, undefined, undefined]], "later frames wait for the decode");
  await until(() => seen.length === 4);
  assert.deepEqual(seen.map((e) => e[0]), ["utterance_started", "audio", "audio", "utterance_done"]);
  assert.deepEqual(seen[1].slice(1, 3), ["Int16Array", 320]); // 48 kHz decoded, brought to 16 kHz
  assert.ok(Math.abs(seen[2][3] - 0.25 * 32767) < 200, `${seen[2][3]}`);
  ws.serve({ type: "audio", epoch: 0, utteranceId: 2, seq: 0, pcm: Uint8Array.of(10), last: true });
  await until(() => seen.length === 5);
  assert.equal(wc.decoders.length, 2, "a fresh decoder per utterance");
  assert.equal(wc.decoders[0].state, "closed");
  assert.equal(wc.decoders[1].config.sampleRate, 16000);
});

test("an Opus packet that does not decode fails the session as the server's protocol error", async () => {
  const { s, ws } = await openSession(fakeWebCodecs(), { downlink: "opus", uplink: "pcm" });
  ws.serve({ type: "audio", epoch: 0, utteranceId: 1, seq: 0, pcm: Uint8Array.of(0xff), last: true });
  await until(() => s.error !== null);
  assert.ok(s.error instanceof ProtocolError);
  assert.equal(s.error.code, "MALFORMED");
  assert.equal(ws.closed.code, 1002);
});

test("sendAudio encodes PCM into AUDIO_UP packets, seqs in order", async () => {
  const { s, ws } = await openSession(fakeWebCodecs(), { downlink: "pcm", uplink: "opus" });
  assert.equal(s.sendAudio(new Int16Array(320).fill(4)), 0);
  assert.equal(s.sendAudio(new Int16Array(320).fill(5)), 1);
  await until(() => ws.sent.length === 3);
  assert.deepEqual(ws.sent.slice(1).map((f) => [f.type, f.seq]), [["audio_up", 0], ["audio_up", 1]]);
});
