// The main-thread halves of the audio worklets: `Player` (a session's downlink through
// playback-worklet.js, reporting PLAYED) and `Microphone` (getUserMedia → mic-worklet.js →
// AUDIO_UP). Both are EventTargets; their events carry `.detail`.

const PLAYBACK_URL = new URL("./playback-worklet.js", import.meta.url);
const MIC_URL = new URL("./mic-worklet.js", import.meta.url);

/**
 * An AudioContext for a session: at the session's rate, so the downlink plays sample for
 * sample, and "interactive" latency. It may start suspended (autoplay policy): it is resumed
 * now, and on the page's first click or key if that did not work.
 * @param {number} [sampleRate]
 */
export function createAudioContext(sampleRate = 48000) {
  const ctx = new AudioContext({ sampleRate, latencyHint: "interactive" });
  const resume = () => ctx.resume().catch(() => {});
  resume();
  if (globalThis.document) {
    for (const type of ["pointerdown", "keydown"]) document.addEventListener(type, resume, { once: true, capture: true });
  }
  return ctx;
}

const emit = (target, type, detail) => target.dispatchEvent(new CustomEvent(type, { detail }));

/**
 * Plays a session's audio and tells the server what played (PLAYED; FINAL at the end of each
 * utterance and at a flush, capped at UTTERANCE_DONE's samples_sent: the END frame's padding
 * is not the utterance's). Flushes at every INTERRUPTED; call `flush()` yourself to stop at once
 * when you interrupt (do not wait for the answer).
 *
 * Events: "started" {epoch, utteranceId, clockUs} (its first sample played), "position"
 * (every report, as sent), "underrun", "flushed" {clockUs, hadAudio}, "counters" {framesPlayed,
 * underruns, lateFrames, samplesPlayed, framesReceived, bufferedMs, droppedSuspended}.
 */
export class Player extends EventTarget {
  /**
   * @param {AudioContext} ctx @param {import("./session.js").DuplexdSession} session
   * @param {{targetMs?: number, reportMs?: number}} [opts] jitter buffer target (50 ms) and
   *   how often PLAYED is sent while an utterance plays (200 ms)
   */
  static async create(ctx, session, { targetMs = 50, reportMs = 200 } = {}) {
    await ctx.audioWorklet.addModule(PLAYBACK_URL);
    const node = new AudioWorkletNode(ctx, "duplexd-playback", {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { sourceRate: session.sampleRateHz, frameSamples: session.frameSamples, targetMs, reportMs },
    });
    node.connect(ctx.destination);
    return new Player(ctx, session, node);
  }

  constructor(ctx, session, node) {
    super();
    this.ctx = ctx;
    this.session = session;
    this.node = node;
    this.counters = { framesPlayed: 0, underruns: 0, lateFrames: 0, samplesPlayed: 0, framesReceived: 0, bufferedMs: 0, droppedSuspended: 0 };
    this._samplesSent = new Map(); // `${epoch}/${uid}` → UTTERANCE_DONE.samplesSent
    node.port.onmessage = (e) => this._onWorklet(e.data);
    session.addEventListener("audio", (ev) => this.push(ev.frame));
    session.addEventListener("interrupted", () => this.flush());
    session.addEventListener("utterancedone", (ev) => {
      const f = ev.frame;
      this._samplesSent.set(`${f.epoch}/${f.utteranceId}`, Number(f.samplesSent));
      if (this._samplesSent.size > 32) this._samplesSent.delete(this._samplesSent.keys().next().value);
    });
  }

  /**
   * Queue one AUDIO frame (its pcm buffer is transferred to the audio thread). While the
   * context is suspended (no user gesture yet) nobody can hear it: it is dropped and counted
   * in `counters.droppedSuspended`, rather than piling up to play late.
   */
  push(frame) {
    if (this.ctx.state !== "running") {
      this.counters.droppedSuspended += 1;
      return;
    }
    const { epoch, utteranceId, seq, pcm, last } = frame;
    this.node.port.postMessage({ type: "frame", epoch, utteranceId, seq, pcm, last }, [pcm.buffer]);
  }

  /** Stop now: drop everything buffered (the worklet answers with final positions). */
  flush() {
    this.node.port.postMessage({ type: "flush" });
  }

  /** @param {{targetMs?: number, reportMs?: number}} opts */
  configure(opts) {
    this.node.port.postMessage({ type: "config", ...opts });
  }

  _onWorklet(m) {
    if (m.type !== "events") return;
    Object.assign(this.counters, m.counters, { bufferedMs: m.bufferedMs });
    for (const ev of m.events) {
      if (ev.type === "position") {
        const sent = this._samplesSent.get(`${ev.epoch}/${ev.utteranceId}`);
        const samples = sent === undefined ? ev.samplesPlayed : Math.min(ev.samplesPlayed, sent);
        // the clock of the last sample counted (the END frame's padding, capped, played later)
        const clockUs = ev.clockUs - Math.round(((ev.samplesPlayed - samples) * 1e6) / this.session.sampleRateHz);
        if (this.session.state === "open") {
          this.session.reportPlayed(ev.epoch, ev.utteranceId, samples, clockUs, { final: ev.final });
        }
        emit(this, "position", { ...ev, samplesPlayed: samples, clockUs });
      } else {
        emit(this, ev.type, ev);
      }
    }
    emit(this, "counters", this.counters);
  }

  close() {
    this.node.disconnect();
    this.node.port.onmessage = null;
  }
}

/**
 * The microphone as the session's uplink: getUserMedia (echo cancellation, noise suppression,
 * auto gain) → mic-worklet.js (16 kHz, 20 ms frames) → session.sendAudio.
 *
 * Events: "level" {dbfs} per frame; "frame" {seq, clockUs}. `clockOfSample(n)` maps an uplink
 * sample position (SPEECH_STARTED's) to the audio clock, in seconds, for the last 10 s.
 */
export class Microphone extends EventTarget {
  /** @param {AudioContext} ctx @param {import("./session.js").DuplexdSession} session */
  static async start(ctx, session) {
    if (!session.uplinkRateHz) throw new Error("the server accepted no uplink");
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
    try {
      await ctx.audioWorklet.addModule(MIC_URL);
      const source = ctx.createMediaStreamSource(stream);
      const node = new AudioWorkletNode(ctx, "duplexd-mic", {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: { outputRate: session.uplinkRateHz },
      });
      source.connect(node);
      node.connect(ctx.destination); // silent: it writes nothing; connected so that it runs
      return new Microphone(session, stream, source, node);
    } catch (err) {
      for (const track of stream.getTracks()) track.stop();
      throw err;
    }
  }

  constructor(session, stream, source, node) {
    super();
    this.session = session;
    this.stream = stream;
    this.source = source;
    this.node = node;
    this.frameSamples = Math.round(session.uplinkRateHz / 50);
    this.framesSent = 0;
    this._clocks = new Map(); // seq → audio clock (µs) at the end of that frame
    node.port.onmessage = (e) => this._onFrame(e.data);
  }

  _onFrame(m) {
    if (m.type !== "frame" || this.session.state !== "open") return;
    const seq = this.session.sendAudio(m.pcm);
    this.framesSent += 1;
    this._clocks.set(seq, m.clockUs);
    if (this._clocks.size > 500) this._clocks.delete(this._clocks.keys().next().value);
    emit(this, "level", { dbfs: m.level });
    emit(this, "frame", { seq, clockUs: m.clockUs });
  }

  /** The audio clock (s) at which uplink sample `n` was captured, or null if unknown. */
  clockOfSample(n) {
    const seq = Math.floor(n / this.frameSamples);
    const end = this._clocks.get(seq);
    if (end === undefined) return null;
    return end / 1e6 - (this.frameSamples - (n % this.frameSamples)) / this.session.uplinkRateHz;
  }

  stop() {
    this.node.port.postMessage({ type: "stop" });
    this.node.port.onmessage = null;
    this.source.disconnect();
    this.node.disconnect();
    for (const track of this.stream.getTracks()) track.stop();
  }
}
