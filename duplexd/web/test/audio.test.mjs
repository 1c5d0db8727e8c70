// The audio-thread logic without an AudioContext: the playback jitter buffer (jitter.js) and
// the microphone's resampler (resample.js).

import assert from "node:assert/strict";
import { test } from "node:test";
import { PlaybackBuffer } from "../jitter.js";
import { Downsampler, rmsDbfs, toInt16 } from "../resample.js";

const QUANTUM = 128;

/** A frame of utterance `uid` whose samples are `base + i` (so the output shows what played). */
function frame(uid, seq, { epoch = 0, last = false, n = 960, base = seq * 960 } = {}) {
  return { epoch, utteranceId: uid, seq, pcm: Int16Array.from({ length: n }, (_, i) => (base + i) % 32768), last };
}

/** Render `quanta` blocks; the concatenated output (as Int16 values) and every event. */
function run(buf, quanta, t0 = 0) {
  const out = [];
  const events = [];
  for (let q = 0; q < quanta; q++) {
    const block = new Float32Array(QUANTUM);
    events.push(...buf.render(block, t0 + (q * QUANTUM) / buf.outputRate));
    for (const s of block) out.push(Math.round(s * 32768));
  }
  return { out, events };
}

test("playback waits for the target, then plays the frames back to back, exactly", () => {
  const buf = new PlaybackBuffer({ targetMs: 40 }); // 1920 samples: two frames
  buf.push(frame(1, 0));
  let r = run(buf, 10);
  assert.ok(r.out.every((s) => s === 0), "one frame is under the target: silence");
  assert.deepEqual(r.events, []);
  buf.push(frame(1, 1));
  buf.push(frame(1, 2, { last: true }));
  r = run(buf, 30); // 3840 samples
  assert.deepEqual(r.out.slice(0, 2880), Array.from({ length: 2880 }, (_, i) => i));
  assert.ok(r.out.slice(2880).every((s) => s === 0));
  const types = r.events.map((e) => `${e.type}${e.final ? ":final" : ""}`);
  assert.equal(types[0], "started");
  assert.equal(types.at(-1), "position:final");
  const final = r.events.at(-1);
  assert.equal(final.samplesPlayed, 2880);
  assert.equal(final.clockUs, Math.round((2879 / 48000) * 1e6)); // its last sample's clock
  assert.equal(buf.counters.underruns, 0);
  assert.equal(buf.counters.framesPlayed, 3);
  assert.equal(buf.counters.samplesPlayed, 2880);
});

test("a short utterance (its END frame buffered) starts without waiting for the target", () => {
  const buf = new PlaybackBuffer({ targetMs: 60 });
  buf.push(frame(1, 0, { last: true }));
  const r = run(buf, 8);
  assert.equal(r.out[5], 5);
  assert.equal(r.events.find((e) => e.final).samplesPlayed, 960);
});

test("running dry inside an utterance is an underrun (and the late frame is counted); between utterances it is not", () => {
  const buf = new PlaybackBuffer({ targetMs: 20 });
  buf.push(frame(1, 0));
  run(buf, 10); // 1280 samples: frame 0 played, then dry mid-utterance
  assert.equal(buf.counters.underruns, 1);
  run(buf, 10); // still dry: the same underrun
  assert.equal(buf.counters.underruns, 1);
  buf.push(frame(1, 1, { last: true }));
  assert.equal(buf.counters.lateFrames, 1);
  let r = run(buf, 10);
  assert.equal(r.events.find((e) => e.final)?.samplesPlayed, 1920);
  run(buf, 20); // dry between utterances
  assert.equal(buf.counters.underruns, 1);
  buf.push(frame(2, 0, { last: true }));
  r = run(buf, 10);
  assert.deepEqual(r.events.filter((e) => e.type === "started").map((e) => e.utteranceId), [2]);
  assert.equal(buf.counters.underruns, 1);
  buf.push(frame(2, 0)); // behind its utterance's seq (a duplicate)
  assert.equal(buf.counters.lateFrames, 2);
});

test("the first sample of every run is reported at once: an utterance's start and the restart after an underrun", () => {
  const buf = new PlaybackBuffer({ targetMs: 20, reportMs: 1000 });
  buf.push(frame(1, 0));
  let r = run(buf, 10); // frame 0 plays from sample 0, then runs dry
  let pos = r.events.filter((e) => e.type === "position");
  assert.deepEqual(pos.map((e) => [e.samplesPlayed, e.clockUs, e.final]), [[1, 0, false]]);
  run(buf, 5); // dry
  buf.push(frame(1, 1, { last: true }));
  const t0 = 1; // (the audio clock, s, of the next block)
  r = run(buf, 10, t0);
  pos = r.events.filter((e) => e.type === "position");
  // the restart: frame 1's first sample (960 + 1 played) at the first block's start
  assert.deepEqual(pos[0], { type: "position", epoch: 0, utteranceId: 1, samplesPlayed: 961, clockUs: 1e6, final: false });
  assert.equal(pos.at(-1).final, true);
});

test("consecutive utterances play back to back, each with its own positions", () => {
  const buf = new PlaybackBuffer({ targetMs: 20 });
  buf.push(frame(1, 0, { last: true, base: 0 }));
  buf.push(frame(2, 0, { base: 1000 }));
  buf.push(frame(2, 1, { last: true, base: 2000 }));
  const r = run(buf, 25);
  assert.equal(r.out[959], 959);
  assert.equal(r.out[960], 1000);
  assert.deepEqual(
    r.events.filter((e) => e.type !== "position" || e.final).map((e) => [e.type, e.utteranceId, e.samplesPlayed]),
    [["started", 1, undefined], ["position", 1, 960], ["started", 2, undefined], ["position", 2, 1920]],
  );
  assert.equal(buf.counters.underruns, 0);
});

test("positions are reported every reportMs while an utterance plays, and grow", () => {
  const buf = new PlaybackBuffer({ targetMs: 20, reportMs: 100 });
  for (let seq = 0; seq < 50; seq++) buf.push(frame(1, seq, { last: seq === 49 }));
  const r = run(buf, 375); // 1 s
  const periodic = r.events.filter((e) => e.type === "position" && !e.final);
  assert.ok(periodic.length >= 9 && periodic.length <= 10, `${periodic.length} reports`);
  for (let i = 1; i < periodic.length; i++) assert.ok(periodic[i].samplesPlayed - periodic[i - 1].samplesPlayed >= 4800);
});

test("flush: final positions for the playing and the queued utterances, then silence", () => {
  const buf = new PlaybackBuffer({ targetMs: 20 });
  for (let seq = 0; seq < 5; seq++) buf.push(frame(1, seq));
  buf.push(frame(2, 0));
  run(buf, 10); // 1280 samples of utterance 1
  const events = buf.flush(1.5);
  assert.deepEqual(events, [
    { type: "position", epoch: 0, utteranceId: 1, samplesPlayed: 1280, clockUs: Math.round((1279 / 48000) * 1e6), final: true },
    { type: "position", epoch: 0, utteranceId: 2, samplesPlayed: 0, clockUs: 1500000, final: true },
    { type: "flushed", clockUs: 1500000, hadAudio: true },
  ]);
  const r = run(buf, 10);
  assert.ok(r.out.every((s) => s === 0));
  assert.equal(buf.counters.underruns, 0);
  buf.push(frame(3, 0, { epoch: 1, last: true }));
  assert.equal(run(buf, 10).out[3], 3);
});

test("a 24 kHz session on a 48 kHz output is resampled: twice the samples, positions at 24 kHz", () => {
  const buf = new PlaybackBuffer({ sourceRate: 24000, outputRate: 48000, frameSamples: 480, targetMs: 20 });
  buf.push({ epoch: 0, utteranceId: 1, seq: 0, pcm: new Int16Array(480).fill(1000), last: true });
  const r = run(buf, 10);
  const loud = r.out.filter((s) => s > 0).length;
  assert.ok(Math.abs(loud - 960) <= 2, `${loud} output samples`);
  assert.equal(r.events.find((e) => e.final).samplesPlayed, 480);
});

/** A sine of `hz` at `rate`, `seconds` long. */
const sine = (hz, rate, seconds, amp = 0.5) => Float32Array.from({ length: Math.round(rate * seconds) }, (_, i) => amp * Math.sin((2 * Math.PI * hz * i) / rate));

function downsampleAll(rate, signal) {
  const ds = new Downsampler(rate, 16000);
  const parts = [];
  for (let i = 0; i < signal.length; i += QUANTUM) parts.push(...ds.push(signal.subarray(i, i + QUANTUM)));
  return Float32Array.from(parts);
}

for (const rate of [48000, 44100]) {
  test(`downsampling ${rate} Hz → 16 kHz: passband kept, above 8 kHz removed, the right number of samples`, () => {
    const pass = downsampleAll(rate, sine(1000, rate, 1));
    assert.ok(Math.abs(pass.length - (16000 - 64 * (16000 / 48000) - 1)) <= 2, `${pass.length} samples`);
    const steady = pass.subarray(200);
    assert.ok(Math.abs(rmsDbfs(steady) - rmsDbfs(sine(1000, 16000, 1).subarray(200))) < 0.1, `${rmsDbfs(steady)} dBFS`);
    const edge = downsampleAll(rate, sine(6000, rate, 1)).subarray(200);
    assert.ok(rmsDbfs(edge) > -9.1 - 1, `6 kHz at ${rmsDbfs(edge)} dBFS`);
    for (const hz of [9000, 12000, 15000]) {
      const stop = downsampleAll(rate, sine(hz, rate, 1)).subarray(200);
      assert.ok(rmsDbfs(stop) < -9 - 50, `${hz} Hz leaks at ${rmsDbfs(stop).toFixed(1)} dBFS`);
    }
  });
}

test("toInt16 clips and rmsDbfs measures", () => {
  assert.deepEqual([...toInt16(Float32Array.of(-2, -1, 0, 0.5, 1, 2))], [-32768, -32768, 0, 16384, 32767, 32767]);
  assert.ok(Math.abs(rmsDbfs(sine(1000, 16000, 1, 1)) + 3.01) < 0.01);
  assert.equal(rmsDbfs(new Float32Array(320)), -120);
});
