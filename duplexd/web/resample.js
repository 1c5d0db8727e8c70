// Microphone resampling to the uplink rate, without the AudioWorklet around it (mic-worklet.js
// runs it on the audio thread; node tests run it directly).
//
// The filter: a Kaiser-windowed sinc low-pass (β = 5.65, about 60 dB of stopband), cut off at
// 7250 Hz for a 16 kHz uplink (0.45 × the output rate), 128 taps at 48 kHz (scaled with the
// input rate), evaluated only at the output instants: a polyphase table of 256 phases per input
// sample, linearly interpolated between neighbouring phases. 48 kHz → 16 kHz (the usual case)
// is exact decimation by 3 (phase 0 only); 44.1 kHz or any other input rate works the same way.
// Delay: half the taps (64 input samples, 1.3 ms at 48 kHz).

const PHASES = 256;
const BETA = 5.65;

/** Modified Bessel function of the first kind, order 0 (series; converges fast for x ≤ 20). */
function besselI0(x) {
  let sum = 1;
  let term = 1;
  for (let k = 1; k < 50; k++) {
    term *= (x / (2 * k)) ** 2;
    sum += term;
    if (term < 1e-12 * sum) break;
  }
  return sum;
}

export class Downsampler {
  /**
   * @param {number} inputRate the AudioContext's rate
   * @param {number} [outputRate] the uplink rate (16000)
   * @param {{cutoffHz?: number, halfTaps?: number}} [opts]
   */
  constructor(inputRate, outputRate = 16000, { cutoffHz = 0.453125 * outputRate, halfTaps = Math.round((64 * inputRate) / 48000) } = {}) {
    if (!(inputRate >= outputRate)) throw new RangeError(`cannot downsample ${inputRate} Hz to ${outputRate} Hz`);
    this.inputRate = inputRate;
    this.outputRate = outputRate;
    this.halfTaps = halfTaps;
    const taps = 2 * halfTaps;
    const fc = cutoffHz / inputRate; // cycles per input sample
    const i0beta = besselI0(BETA);
    /** @type {Float32Array[]} row p: the taps for an output at fraction p / PHASES past an input sample */
    this.table = [];
    for (let p = 0; p <= PHASES; p++) {
      const row = new Float32Array(taps);
      const frac = p / PHASES;
      let sum = 0;
      for (let j = 0; j < taps; j++) {
        const d = j - halfTaps + 1 - frac; // input position minus output position
        const x = d / halfTaps;
        const w = Math.abs(x) >= 1 ? 0 : besselI0(BETA * Math.sqrt(1 - x * x)) / i0beta;
        const s = d === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * d) / (Math.PI * d);
        row[j] = s * w;
        sum += row[j];
      }
      for (let j = 0; j < taps; j++) row[j] /= sum; // unity gain at DC
      this.table.push(row);
    }
    let size = 1;
    while (size < taps + 8192) size *= 2;
    this.history = new Float32Array(size); // ring of the last input samples
    this.mask = size - 1;
    this.received = 0; // input samples so far
    this.produced = 0; // output samples so far
  }

  /**
   * Take input samples; return the output samples that are now computable.
   * @param {Float32Array} input mono, at `inputRate`
   * @returns {Float32Array}
   */
  push(input) {
    const { history, mask, halfTaps, table, inputRate, outputRate } = this;
    for (let i = 0; i < input.length; i++) history[(this.received + i) & mask] = input[i];
    this.received += input.length;
    const out = [];
    for (;;) {
      const num = this.produced * inputRate; // exact integers below 2^53
      const n0 = Math.floor(num / outputRate);
      if (n0 + halfTaps >= this.received) break;
      const pf = ((num % outputRate) / outputRate) * PHASES;
      const p = Math.floor(pf);
      const a = pf - p;
      const r0 = table[p];
      const r1 = table[Math.min(p + 1, PHASES)];
      const first = n0 - halfTaps + 1;
      let acc = 0;
      if (a === 0) {
        for (let j = 0; j < r0.length; j++) acc += history[(first + j) & mask] * r0[j];
      } else {
        for (let j = 0; j < r0.length; j++) acc += history[(first + j) & mask] * (r0[j] + a * (r1[j] - r0[j]));
      }
      out.push(acc);
      this.produced += 1;
    }
    return Float32Array.from(out);
  }
}

/** Float samples (−1…1) to Int16, clipped. @param {Float32Array} x */
export function toInt16(x) {
  const out = new Int16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const s = Math.max(-1, Math.min(1, x[i]));
    out[i] = Math.round(s < 0 ? s * 32768 : s * 32767);
  }
  return out;
}

/** RMS level in dBFS (a full-scale square wave is 0, a full-scale sine −3), floored at −120. */
export function rmsDbfs(x) {
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += x[i] * x[i];
  const rms = Math.sqrt(sum / Math.max(1, x.length));
  return rms > 1e-6 ? Math.max(-120, 20 * Math.log10(rms)) : -120;
}
