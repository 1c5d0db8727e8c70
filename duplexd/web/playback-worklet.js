// AudioWorkletProcessor "duplexd-playback": plays the session's AUDIO frames through a jitter
// buffer (jitter.js) on the audio thread. Load with audioContext.audioWorklet.addModule(); the
// main-thread half is `Player` in audio.js.
//
// Create the AudioContext at the session's rate (48000): the frames then play sample for
// sample; at another context rate they are resampled by linear interpolation.
//
// processorOptions: {sourceRate, frameSamples, targetMs = 50, reportMs = 200}.
// Messages in (port): {type: "frame", epoch, utteranceId, seq, pcm: Int16Array, last} (transfer
// pcm.buffer), {type: "flush"} (interrupt / new epoch: drop everything now), {type: "config",
// targetMs?, reportMs?}.
// Messages out: {type: "events", events: [...jitter.js events], counters, bufferedMs}, posted
// whenever something happened (a start, a position report every reportMs, an utterance end,
// an underrun, a flush) and at least every 250 ms while frames are buffered or playing.

import { PlaybackBuffer } from "./jitter.js";

const STATS_EVERY_S = 0.25;

class DuplexdPlayback extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options?.processorOptions ?? {};
    this.buf = new PlaybackBuffer({
      sourceRate: o.sourceRate ?? sampleRate,
      outputRate: sampleRate,
      frameSamples: o.frameSamples ?? 960,
      targetMs: o.targetMs ?? 50,
      reportMs: o.reportMs ?? 200,
    });
    this.lastPost = 0;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(m) {
    if (m.type === "frame") this.buf.push(m);
    else if (m.type === "flush") this.post(this.buf.flush(currentTime));
    else if (m.type === "config") this.buf.configure(m);
  }

  post(events) {
    this.lastPost = currentTime;
    this.port.postMessage({
      type: "events",
      events,
      counters: { ...this.buf.counters },
      bufferedMs: (this.buf.bufferedSamples * 1000) / this.buf.sourceRate,
    });
  }

  process(_inputs, outputs) {
    const out = outputs[0];
    if (!out || out.length === 0) return true;
    const events = this.buf.render(out[0], currentTime);
    for (let c = 1; c < out.length; c++) out[c].set(out[0]);
    const busy = this.buf.playing || this.buf.bufferedSamples > 0;
    if (events.length || (busy && currentTime - this.lastPost >= STATS_EVERY_S)) this.post(events);
    return true;
  }
}

registerProcessor("duplexd-playback", DuplexdPlayback);
