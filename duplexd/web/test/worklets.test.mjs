// The two AudioWorklet modules, loaded in node with the AudioWorkletGlobalScope's names stubbed
// (AudioWorkletProcessor, registerProcessor, sampleRate, currentTime): each registers its
// processor, and the processor turns messages and render quanta into the right messages.

import assert from "node:assert/strict";
import { test } from "node:test";

const registry = new Map();
globalThis.sampleRate = 48000;
globalThis.currentTime = 0;
globalThis.registerProcessor = (name, cls) => registry.set(name, cls);
globalThis.AudioWorkletProcessor = class {
  constructor() {
    this.posted = [];
    this.port = { onmessage: null, postMessage: (m) => this.posted.push(m) };
  }
};
await import("../playback-worklet.js");
await import("../mic-worklet.js");

/** Run `quanta` render quanta of 128 frames, advancing currentTime. */
function render(proc, quanta, input = () => []) {
  let keep = true;
  for (let q = 0; q < quanta; q++) {
    keep = proc.process([input(q)], [[new Float32Array(128)]]);
    globalThis.currentTime += 128 / globalThis.sampleRate;
  }
  return keep;
}

test("the worklets register their processors", () => {
  assert.deepEqual([...registry.keys()].sort(), ["duplexd-mic", "duplexd-playback"]);
});

test("duplexd-playback plays frames sent through its port and posts positions and counters", () => {
  globalThis.currentTime = 10;
  const Proc = registry.get("duplexd-playback");
  const proc = new Proc({ processorOptions: { sourceRate: 48000, frameSamples: 960, targetMs: 40 } });
  for (let seq = 0; seq < 3; seq++) {
    proc.port.onmessage({ data: { type: "frame", epoch: 0, utteranceId: 5, seq, pcm: new Int16Array(960).fill(100), last: seq === 2 } });
  }
  assert.equal(render(proc, 30), true);
  const events = proc.posted.flatMap((m) => m.events);
  assert.equal(events[0].type, "started");
  assert.equal(events[0].clockUs, 10_000_000);
  const final = events.find((e) => e.final);
  assert.deepEqual([final.utteranceId, final.samplesPlayed], [5, 2880]);
  assert.deepEqual(proc.posted.at(-1).counters.framesPlayed, 3);
  proc.port.onmessage({ data: { type: "frame", epoch: 0, utteranceId: 6, seq: 0, pcm: new Int16Array(960), last: false } });
  proc.port.onmessage({ data: { type: "flush" } });
  const flushed = proc.posted.at(-1).events;
  assert.deepEqual(flushed.map((e) => e.type), ["position", "flushed"]);
  assert.equal(flushed[0].final, true);
});

test("duplexd-mic posts 20 ms frames of 320 samples at 16 kHz with their level", () => {
  globalThis.currentTime = 0;
  const Proc = registry.get("duplexd-mic");
  const proc = new Proc({ processorOptions: { outputRate: 16000 } });
  const tone = (q) => {
    const block = new Float32Array(128);
    for (let i = 0; i < 128; i++) block[i] = 0.5 * Math.sin((2 * Math.PI * 1000 * (q * 128 + i)) / 48000);
    return [block, block]; // stereo: averaged
  };
  render(proc, 375, tone); // 1 s
  const frames = proc.posted.filter((m) => m.type === "frame");
  assert.ok(frames.length >= 49 && frames.length <= 50, `${frames.length} frames`);
  assert.ok(frames.every((f) => f.pcm instanceof Int16Array && f.pcm.length === 320));
  assert.ok(Math.abs(frames.at(-1).level - -9.03) < 0.1, `level ${frames.at(-1).level}`);
  assert.ok(frames.every((f, i) => i === 0 || f.clockUs >= frames[i - 1].clockUs));
  proc.port.onmessage({ data: { type: "stop" } });
  assert.equal(render(proc, 1, tone), false);
});
