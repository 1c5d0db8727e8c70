// The demo page's logic (index.html): one session, the text box, the buttons, the microphone,
// and the figures. Everything the automated browser test needs is on `window.duplexdDemo`:
//
//   ready      Promise: resolves (to duplexdDemo) once the session is open and the player is
//              loaded; rejects with the error if it cannot open
//   state      "loading" | "connecting" | "open" | "closed" | "error"  (`error`: its message)
//   counters   {framesPlayed, underruns, lateFrames, samplesPlayed, framesReceived,
//               staleFrames, bufferedMs, droppedSuspended} (updated as the player reports)
//   figures    {firstAudioMs, bargeInMs, jitterP50Ms, jitterP95Ms, outputLatencyMs} (null until
//              measured; the latest measurement)
//   events     the last 200 events: {t (ms, performance.now), type, ...fields} — every server
//              frame but AUDIO (BigInts as strings), and the page's own: text_sent,
//              interrupt_click, playback_started, playback_flushed, underrun, played_final,
//              barge_in {kind, ms}, mic_started, mic_stopped, close, ui_error
//   heard      the last HEARD: {epoch, utteranceId, samplesPlayed, charsHeard, text} or null
//   codecs     what WELCOME granted: {downlink, uplink}, "opus" or "pcm" (SPEC.md §4.6.3);
//              Opus where this browser's WebCodecs codes it, unless the page URL says ?codec=pcm
//   say(text) → utterance id;  interrupt() → Promise<INTERRUPTED frame>;
//   startMic() / stopMic() → Promise;  session, audioContext (for inspection)
//
// Latencies are in the audio clock (AudioContext.currentTime) and include the context's
// outputLatency ("at the speaker"): firstAudioMs = text sent → its first sample played;
// bargeInMs = interrupt click, or the user's speech onset (SPEECH_STARTED's uplink sample mapped
// to the clock it was captured at; the SPEECH_STARTED arrival when the mic is not ours) → the
// audio flushed. Jitter: each AUDIO frame's arrival against a 20 ms grid anchored at the
// earliest frame of its run (a run starts at UTTERANCE_STARTED, RESUMED or INTERRUPTED).

import { DuplexdSession } from "./duplexd.js";
import { createAudioContext, Microphone, Player } from "./audio.js";

const MAX_EVENTS = 200;
const JITTER_WINDOW = 1000;
const $ = (id) => document.getElementById(id);

// index.html creates duplexdDemo.ready before any module loads; adopt it
const early = globalThis.duplexdDemo ?? {};
let settle = early._settle;
const ready = early.ready ?? new Promise((resolve, reject) => (settle = { resolve, reject }));
ready.catch(() => {}); // reported on the page; awaiting `ready` still sees the error

const demo = {
  ready,
  state: "loading",
  error: null,
  counters: { framesPlayed: 0, underruns: 0, lateFrames: 0, samplesPlayed: 0, framesReceived: 0, staleFrames: 0, bufferedMs: 0, droppedSuspended: 0 },
  figures: { firstAudioMs: null, bargeInMs: null, jitterP50Ms: null, jitterP95Ms: null, outputLatencyMs: null },
  events: [],
  heard: null,
  codecs: null,
  session: null,
  audioContext: null,
  say: (text) => say(text),
  interrupt: () => interrupt(),
  startMic: () => startMic(),
  stopMic: () => stopMic(),
};
globalThis.duplexdDemo = demo;

let session = null;
let ctx = null;
let player = null;
let mic = null;
const texts = new Map(); // utterance id → its text so far
const sendClock = new Map(); // utterance id → audio clock (s) of its first chunk
let bargeStart = null; // {clock, kind}: the click or speech onset waiting for the flush
let lastFlush = null; // {clock, at}: the latest flush that stopped audio
const jitter = { samples: [], run: null };

// ------------------------------------------------------------------ events and figures

function plain(frame) {
  const out = {};
  for (const [k, v] of Object.entries(frame)) {
    if (v instanceof Int16Array || v instanceof Uint8Array) continue;
    out[k] = typeof v === "bigint" ? v.toString() : v;
  }
  return out;
}

function record(type, fields = {}) {
  demo.events.push({ t: Math.round(performance.now() * 10) / 10, ...fields, type });
  if (demo.events.length > MAX_EVENTS) demo.events.splice(0, demo.events.length - MAX_EVENTS);
  const log = $("log");
  const li = document.createElement("li");
  li.textContent = `${(performance.now() / 1000).toFixed(3)} ${type} ${JSON.stringify(fields).slice(0, 160)}`;
  log.prepend(li);
  while (log.children.length > 60) log.lastChild.remove();
}

const outputLatency = () => (ctx?.outputLatency || ctx?.baseLatency || 0);

function setFigure(name, value) {
  demo.figures[name] = value === null ? null : Math.round(value * 10) / 10;
  const el = document.querySelector(`[data-figure="${name}"]`);
  if (el) el.textContent = value === null ? "–" : `${demo.figures[name]} ms`;
}

function showCounters() {
  Object.assign(demo.counters, player?.counters ?? {}, {
    staleFrames: session?.staleFrames ?? 0,
    bufferedMs: Math.round(player?.counters.bufferedMs ?? 0),
  });
  for (const [name, value] of Object.entries(demo.counters)) {
    const el = document.querySelector(`[data-counter="${name}"]`);
    if (el) el.textContent = String(value);
  }
}

function percentile(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : null;
}

function onAudioArrival(frame, at) {
  const run = jitter.run ?? (jitter.run = { k: 0, minOffset: Infinity });
  const offset = at - run.k * 20;
  run.k += 1;
  run.minOffset = Math.min(run.minOffset, offset);
  jitter.samples.push(offset - run.minOffset);
  if (jitter.samples.length > JITTER_WINDOW) jitter.samples.shift();
  if (run.k % 10 === 0 || frame.last) {
    const sorted = [...jitter.samples].sort((a, b) => a - b);
    setFigure("jitterP50Ms", percentile(sorted, 0.5));
    setFigure("jitterP95Ms", percentile(sorted, 0.95));
  }
}

function bargeInDone() {
  // the flush that stopped the audio, after the onset or click (0.05 s: the mapping's slack)
  if (bargeStart?.clock != null && lastFlush && lastFlush.clock >= bargeStart.clock - 0.05 && lastFlush.clock - bargeStart.clock < 3) {
    setFigure("bargeInMs", (lastFlush.clock - bargeStart.clock + outputLatency()) * 1000);
    record("barge_in", { kind: bargeStart.kind, ms: demo.figures.bargeInMs });
    bargeStart = lastFlush = null;
  }
}

// ------------------------------------------------------------------ actions

function ensureOpen() {
  if (!session || session.state !== "open") throw new Error(`the session is ${demo.state}`);
}

function noteSent(uid, chunk, end) {
  if (!texts.has(uid)) {
    texts.set(uid, "");
    sendClock.set(uid, ctx.currentTime);
  }
  texts.set(uid, texts.get(uid) + chunk);
  if (texts.size > 50) texts.delete(texts.keys().next().value);
  record("text_sent", { utteranceId: uid, text: chunk, end });
}

function say(text) {
  ensureOpen();
  const uid = session.newUtteranceId();
  noteSent(uid, text, true);
  session.sendText(uid, text, { end: true });
  return uid;
}

async function interrupt() {
  ensureOpen();
  bargeStart = { clock: ctx.currentTime, kind: "click" };
  record("interrupt_click");
  player.flush(); // stop at the speaker now; the server's answer confirms
  closeTyping();
  return session.interrupt();
}

async function startMic() {
  ensureOpen();
  if (mic) return;
  mic = await Microphone.start(ctx, session);
  mic.addEventListener("level", (ev) => {
    $("level").value = Math.max(-90, ev.detail.dbfs);
  });
  $("mic").setAttribute("aria-pressed", "true");
  $("mic").textContent = "Mic on";
  record("mic_started", { rate: ctx.sampleRate });
}

async function stopMic() {
  if (!mic) return;
  mic.stop();
  mic = null;
  $("mic").setAttribute("aria-pressed", "false");
  $("mic").textContent = "Mic off";
  $("level").value = -90;
  record("mic_stopped");
}

// The text box: completed words go out as you type; Enter (or Send) ends the utterance.
let typingUid = 0;
let typedSent = "";

function closeTyping() {
  typingUid = 0;
  typedSent = "";
  $("text").value = "";
}

function sendTyped(chunk, end) {
  if (!typingUid) typingUid = session.newUtteranceId();
  noteSent(typingUid, chunk, end);
  session.sendText(typingUid, chunk, { end });
}

function onInput() {
  if (session?.state !== "open") return;
  const value = $("text").value;
  let keep = 0; // what was sent cannot be taken back: keep the part still matching
  while (keep < typedSent.length && keep < value.length && typedSent[keep] === value[keep]) keep++;
  typedSent = typedSent.slice(0, keep);
  const fresh = value.slice(typedSent.length);
  const cut = fresh.search(/\s\S*$/); // up to the last whitespace: whole words only
  if (cut >= 0 && fresh.slice(0, cut + 1).trim()) {
    let chunk = fresh.slice(0, cut + 1);
    if (/[\uD800-\uDBFF]$/.test(chunk)) chunk = chunk.slice(0, -1); // never split a pair
    sendTyped(chunk, false);
    typedSent += chunk;
  }
}

function finishTyping() {
  if (session?.state !== "open") return;
  const rest = $("text").value.slice(typedSent.length);
  if (typingUid || rest.trim()) sendTyped(rest, true);
  closeTyping();
}

// ------------------------------------------------------------------ wiring

function onFrame(ev) {
  const frame = ev.frame;
  if (frame.type === "audio") return onAudioArrival(frame, ev.receivedAt);
  record(frame.type, plain(frame));
  switch (frame.type) {
    case "utterance_started":
    case "resumed":
      jitter.run = null;
      break;
    case "interrupted":
      jitter.run = null;
      if (frame.vad && !bargeStart) bargeStart = { clock: null, kind: "speech" }; // onset to come
      if (frame.utteranceId === typingUid || frame.vad) closeTyping();
      break;
    case "speech_started": {
      $("speaking").hidden = false;
      const onset = mic?.clockOfSample(Number(frame.uplinkSample)) ?? ctx.currentTime;
      if (!bargeStart || bargeStart.kind === "speech") bargeStart = { clock: onset, kind: "speech" };
      bargeInDone();
      break;
    }
    case "speech_stopped":
      $("speaking").hidden = true;
      if (bargeStart?.kind === "speech") bargeStart = null; // no barge-in in that stretch
      break;
    case "transcript":
      showTranscript(frame);
      break;
    case "heard": {
      const text = Array.from(texts.get(frame.utteranceId) ?? "").slice(0, frame.charsHeard).join("");
      demo.heard = { ...plain(frame), text };
      $("heard").textContent = `“${text}” (${frame.charsHeard} chars, utterance ${frame.utteranceId})`;
      break;
    }
    default:
  }
}

function showTranscript(frame) {
  const key = String(frame.startSample);
  let el = $("transcript").querySelector(`[data-start="${key}"]`);
  if (!el) {
    el = document.createElement("p");
    el.dataset.start = key;
    $("transcript").append(el);
  }
  el.textContent = frame.text;
  el.className = frame.final ? "final" : "partial";
}

function wirePlayer() {
  player.addEventListener("started", (ev) => {
    const { utteranceId, clockUs } = ev.detail;
    record("playback_started", { utteranceId, clockUs });
    const sent = sendClock.get(utteranceId);
    if (sent !== undefined) {
      setFigure("firstAudioMs", (clockUs / 1e6 - sent + outputLatency()) * 1000);
      sendClock.delete(utteranceId);
    }
  });
  player.addEventListener("flushed", (ev) => {
    record("playback_flushed", ev.detail);
    if (!ev.detail.hadAudio) {
      if (bargeStart?.kind === "click") bargeStart = null; // nothing was playing
      return;
    }
    lastFlush = { clock: ev.detail.clockUs / 1e6 };
    if (bargeStart?.clock !== null) bargeInDone();
  });
  player.addEventListener("underrun", (ev) => record("underrun", ev.detail));
  player.addEventListener("position", (ev) => {
    if (ev.detail.final) record("played_final", ev.detail);
  });
  player.addEventListener("counters", showCounters);
}

function setState(state, detail = "") {
  demo.state = state;
  $("status").textContent = detail ? `${state}: ${detail}` : state;
  $("status").dataset.state = state;
}

async function loadConfig(configUrl) {
  const params = new URLSearchParams(location.search);
  if (params.get("ws")) {
    return {
      ws_url: params.get("ws"),
      token: params.get("token"),
      sample_rate_hz: Number(params.get("rate")) || 48000,
      uplink_rate_hz: params.has("uplink") ? Number(params.get("uplink")) : 16000,
    };
  }
  const res = await fetch(configUrl, { cache: "no-store" });
  if (!res.ok) throw new Error(`${configUrl}: HTTP ${res.status}`);
  return res.json();
}

/**
 * The token to open the session with: the one the daemon handed the page (`[demo]
 * issue_tokens`), else the page URL's `?token=`, else, when the daemon wants one, asked for.
 * @param {{token?: string | null, auth?: boolean}} cfg
 */
function pickToken(cfg) {
  const fromUrl = new URLSearchParams(location.search).get("token");
  if (cfg.token || fromUrl) return cfg.token || fromUrl;
  if (!cfg.auth) return null;
  return globalThis.prompt?.("This daemon asks for a token (duplexd token, or [auth] token_file):") || null;
}

/** Start the demo. @param {{configUrl: string | URL}} opts */
export async function main({ configUrl }) {
  $("text").addEventListener("input", onInput);
  $("text").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      finishTyping();
    }
  });
  $("send").addEventListener("click", finishTyping);
  $("interrupt").addEventListener("click", () => interrupt().catch((err) => record("ui_error", { message: String(err) })));
  $("mic").addEventListener("click", () => (mic ? stopMic() : startMic()).catch((err) => record("ui_error", { message: String(err) })));
  try {
    const cfg = await loadConfig(configUrl);
    setState("connecting", cfg.ws_url);
    ctx = demo.audioContext = createAudioContext(cfg.sample_rate_hz ?? 48000);
    session = demo.session = await DuplexdSession.open(cfg.ws_url, {
      token: pickToken(cfg),
      sampleRateHz: cfg.sample_rate_hz ?? 48000,
      uplinkRateHz: cfg.uplink_rate_hz ?? 16000,
      options: cfg.options ?? null,
      codec: new URLSearchParams(location.search).get("codec") === "pcm" ? "pcm" : "auto",
    });
    demo.codecs = session.codecs;
    session.addEventListener("frame", onFrame);
    session.addEventListener("close", (ev) => {
      setState(session.error ? "error" : "closed", ev.frame.error?.message ?? `${ev.frame.code}`);
      demo.error = session.error?.message ?? null;
      record("close", { code: ev.frame.code, error: demo.error });
    });
    player = await Player.create(ctx, session);
    wirePlayer();
    setFigure("outputLatencyMs", outputLatency() * 1000);
    $("mic").disabled = !session.uplinkRateHz;
    setState("open", `${session.welcome.engine}/${session.welcome.voice}, ${session.sampleRateHz} Hz, audio ${ctx.state}`);
    ctx.addEventListener("statechange", () => {
      if (demo.state === "open") setState("open", `${session.welcome.engine}/${session.welcome.voice}, ${session.sampleRateHz} Hz, audio ${ctx.state}`);
    });
    return demo;
  } catch (err) {
    demo.error = String(err?.message ?? err);
    setState("error", demo.error);
    throw err;
  }
}

/** Called by index.html: `duplexdDemo.ready` settles with `main`. */
export function start(opts) {
  main(opts).then(settle.resolve, settle.reject);
  return demo.ready;
}
