// The playback jitter buffer, without the AudioWorklet around it (playback-worklet.js runs it
// on the audio thread; node tests run it directly).
//
// Frames go in as they arrive (`push`); `render(out, clock)` fills one block of the output.
// Playback starts once `targetMs` of audio is buffered (or an utterance's END frame is: a short
// utterance does not wait), then plays frames back to back. When the buffer runs dry while an
// utterance is still playing (its END frame not yet played) that is one underrun: it goes
// quiet and waits for `targetMs` again. Running out between utterances is no underrun. A frame
// that arrives while its utterance is dry, or behind its utterance's seq, is late.
//
// Positions: an utterance's samples played count from its first sample (AUDIO frame `seq` holds
// samples seq × frameSamples onwards), at the source (session) rate, whatever the output rate.
// The END frame's padding counts too: the main thread caps a final count at UTTERANCE_DONE's
// samples_sent. `render` returns what happened, as messages for the main thread:
//   {type: "started", epoch, utteranceId, clockUs}                        first sample played
//   {type: "position", epoch, utteranceId, samplesPlayed, clockUs, final} at the first sample
//        of every run (an utterance's start, the restart after an underrun: where it plays
//        tells the server's echo canceller at once how late the echo now comes), every
//        reportMs, and final at its END frame or at a flush (also for queued utterances that
//        never played)
//   {type: "underrun", epoch, utteranceId, clockUs}
// `flush()` (an interrupt) drops everything and returns the final positions and
// {type: "flushed", clockUs, hadAudio}.
// Resampling, when the output rate differs: linear interpolation (the demo avoids it by
// running its AudioContext at the session rate).

// A run's first sample is reported unless a position went out this recently (at most 10 a
// second, SPEC.md §4.8, however often a stuttering network makes the buffer run dry).
const MIN_REPORT_GAP_US = 100_000;

export class PlaybackBuffer {
  /**
   * @param {{sourceRate?: number, outputRate?: number, frameSamples?: number, targetMs?: number, reportMs?: number}} [opts]
   */
  constructor({ sourceRate = 48000, outputRate = 48000, frameSamples = 960, targetMs = 50, reportMs = 200 } = {}) {
    this.sourceRate = sourceRate;
    this.outputRate = outputRate;
    this.frameSamples = frameSamples;
    this.configure({ targetMs, reportMs });
    /** @type {{epoch: number, utteranceId: number, seq: number, pcm: Int16Array, last: boolean}[]} */
    this.queue = [];
    this.head = 0; // index of the first unplayed frame in queue
    this.pos = 0; // next sample of queue[head]
    this.playing = false;
    this.dry = null; // the utterance the buffer ran dry in: {epoch, utteranceId}
    /** @type {{epoch: number, utteranceId: number, played: number, clockUs: number} | null} */
    this.current = null;
    this.nextSeq = new Map(); // `${epoch}/${uid}` → seq expected next
    this.step = sourceRate / outputRate;
    this.phase = 0;
    this.s0 = 0;
    this.s1 = 0;
    this.sinceReport = 0;
    this.reportNow = false; // a run (re)started: report its first sample
    this.lastReportUs = -Infinity; // the clock of the last position reported
    this.counters = { framesPlayed: 0, underruns: 0, lateFrames: 0, samplesPlayed: 0, framesReceived: 0 };
  }

  /** @param {{targetMs?: number, reportMs?: number}} opts */
  configure({ targetMs, reportMs }) {
    if (targetMs !== undefined) this.targetSamples = Math.round((targetMs * this.sourceRate) / 1000);
    if (reportMs !== undefined) this.reportEvery = Math.round((reportMs * this.outputRate) / 1000);
  }

  /** Source samples buffered and not yet played. */
  get bufferedSamples() {
    let n = -this.pos;
    for (let i = this.head; i < this.queue.length; i++) n += this.queue[i].pcm.length;
    return n;
  }

  /** @param {{epoch: number, utteranceId: number, seq: number, pcm: Int16Array, last: boolean}} frame */
  push(frame) {
    this.counters.framesReceived += 1;
    const key = `${frame.epoch}/${frame.utteranceId}`;
    const expected = this.nextSeq.get(key) ?? 0;
    if (frame.seq < expected) {
      this.counters.lateFrames += 1; // behind its utterance: dropped
      return;
    }
    if (this.dry && this.dry.epoch === frame.epoch && this.dry.utteranceId === frame.utteranceId) {
      this.counters.lateFrames += 1; // its utterance ran dry waiting for it
    }
    this.nextSeq.delete(key); // re-insert: the map keeps the 64 most recent utterances
    this.nextSeq.set(key, frame.last ? Infinity : frame.seq + 1);
    if (this.nextSeq.size > 64) this.nextSeq.delete(this.nextSeq.keys().next().value);
    this.queue.push(frame);
  }

  _startable() {
    if (this.bufferedSamples >= this.targetSamples) return true;
    for (let i = this.head; i < this.queue.length; i++) if (this.queue[i].last) return true;
    return false;
  }

  /**
   * Fill `out` (one render quantum) and say what happened.
   * @param {Float32Array} out
   * @param {number} clock the audio clock (s) of out[0]
   */
  render(out, clock) {
    const events = [];
    const perSample = 1 / this.outputRate;
    for (let i = 0; i < out.length; i++) {
      if (!this.playing) {
        if (this.queue.length > this.head && this._startable()) {
          this.playing = true;
          this.dry = null;
          this.reportNow = true; // (the run's first sample is reported: `_consume`)
        } else {
          out[i] = 0;
          continue;
        }
      }
      this.phase += this.step;
      while (this.phase >= 1 && this.playing) {
        this.phase -= 1;
        this._consume(clock + i * perSample, events);
      }
      if (!this.playing) out[i] = 0;
      else out[i] = this.step === 1 ? this.s1 : this.s0 + (this.s1 - this.s0) * this.phase;
    }
    if (this.current) {
      this.sinceReport += out.length;
      if (this.sinceReport >= this.reportEvery) {
        this.sinceReport = 0;
        events.push(this._position(false));
      }
    }
    if (this.head > 64) (this.queue.splice(0, this.head), (this.head = 0));
    return events;
  }

  /** Take the next source sample: bookkeeping of utterances, underruns and positions. */
  _consume(clock, events) {
    const frame = this.queue[this.head];
    const clockUs = Math.round(clock * 1e6);
    if (frame === undefined) {
      // dry: an underrun if an utterance is mid-way
      if (this.current) {
        this.counters.underruns += 1;
        this.dry = { epoch: this.current.epoch, utteranceId: this.current.utteranceId };
        events.push({ type: "underrun", epoch: this.current.epoch, utteranceId: this.current.utteranceId, clockUs });
      }
      this.playing = false;
      this.s0 = this.s1 = 0;
      this.phase = 0;
      return;
    }
    const cur = this.current;
    if (!cur || cur.epoch !== frame.epoch || cur.utteranceId !== frame.utteranceId) {
      if (cur) events.push(this._position(true)); // it ended without its END frame
      this.current = { epoch: frame.epoch, utteranceId: frame.utteranceId, played: 0, clockUs };
      this.sinceReport = 0;
      events.push({ type: "started", epoch: frame.epoch, utteranceId: frame.utteranceId, clockUs });
    }
    this.s0 = this.s1;
    this.s1 = frame.pcm[this.pos] / 32768;
    this.current.played = frame.seq * this.frameSamples + this.pos + 1;
    this.current.clockUs = clockUs;
    if (this.reportNow) {
      this.reportNow = false;
      if (clockUs - this.lastReportUs >= MIN_REPORT_GAP_US) {
        this.sinceReport = 0;
        events.push(this._position(false));
      }
    }
    this.counters.samplesPlayed += 1;
    this.pos += 1;
    if (this.pos >= frame.pcm.length) {
      this.head += 1;
      this.pos = 0;
      this.counters.framesPlayed += 1;
      if (frame.last) {
        events.push(this._position(true));
        this.current = null;
      }
    }
  }

  _position(final) {
    const c = this.current;
    this.lastReportUs = c.clockUs;
    return { type: "position", epoch: c.epoch, utteranceId: c.utteranceId, samplesPlayed: c.played, clockUs: c.clockUs, final };
  }

  /**
   * Drop everything (an interrupt or a new epoch). Returns the final positions: the playing
   * utterance's, then 0 for each queued one that never played; then "flushed".
   * @param {number} clock the audio clock (s) now
   */
  flush(clock) {
    const events = [];
    const hadAudio = this.bufferedSamples > 0 || this.current !== null;
    const seen = new Set();
    if (this.current) {
      events.push(this._position(true));
      seen.add(`${this.current.epoch}/${this.current.utteranceId}`);
    }
    const clockUs = Math.round(clock * 1e6);
    for (let i = this.head; i < this.queue.length; i++) {
      const f = this.queue[i];
      const key = `${f.epoch}/${f.utteranceId}`;
      if (seen.has(key)) continue;
      seen.add(key);
      events.push({ type: "position", epoch: f.epoch, utteranceId: f.utteranceId, samplesPlayed: 0, clockUs, final: true });
    }
    this.queue = [];
    this.head = this.pos = 0;
    this.current = null;
    this.playing = false;
    this.dry = null;
    this.reportNow = false;
    this.nextSeq.clear();
    this.s0 = this.s1 = this.phase = 0;
    events.push({ type: "flushed", clockUs, hadAudio });
    return events;
  }
}
