// Opus in the browser (protocol/SPEC.md §4.6.3) through WebCodecs, so that the rest of the
// client (the jitter buffer, the worklets) still sees Int16 PCM at the session's rate.
//
// - `negotiateCodecs({sampleRateHz, uplinkRateHz}, wc)`: per direction "opus" where this browser's
//   WebCodecs can (AudioDecoder / AudioEncoder exist and `isConfigSupported` says yes for mono
//   Opus at that rate, a rate Opus codes), else "pcm": what HELLO's `options.codec` asks.
// - `OpusDownlink`: each AUDIO packet -> a Promise of exactly `frameSamples` Int16 samples, in
//   order; a fresh AudioDecoder per utterance (as the server encodes). A browser that decodes
//   at another rate (Chrome decodes Opus at 48 kHz) is brought to the session's rate with the
//   microphone's Downsampler (resample.js).
// - `OpusUplink`: 20 ms Int16 frames in, one AUDIO_UP packet out each, through `send(seq, packet)`
//   once the AudioEncoder has it (a few ms later; seqs in the order of the frames).
// `wc` is where the WebCodecs classes are looked up (globalThis; tests pass their own).

import { Downsampler, toInt16 } from "./resample.js";

export const OPUS_RATES_HZ = Object.freeze([8000, 12000, 16000, 24000, 48000]);
export const OPUS_BITRATE_KBPS = 32; // the uplink encoder's target (the server's is in HELLO)
const FRAME_US = 20000;

/** @param {any} Cls @param {object} config */
async function supported(Cls, config) {
  if (typeof Cls?.isConfigSupported !== "function") return false;
  try {
    return (await Cls.isConfigSupported(config))?.supported === true;
  } catch {
    return false;
  }
}

/**
 * What to ask for in HELLO `options.codec`: Opus for each direction this browser can code.
 * @param {{sampleRateHz: number, uplinkRateHz?: number}} rates
 * @param {any} [wc] where AudioDecoder / AudioEncoder are (globalThis)
 * @returns {Promise<{downlink: "opus" | "pcm", uplink: "opus" | "pcm"}>}
 */
export async function negotiateCodecs({ sampleRateHz, uplinkRateHz = 0 }, wc = globalThis) {
  const out = { downlink: "pcm", uplink: "pcm" };
  const mono = (sampleRate) => ({ codec: "opus", sampleRate, numberOfChannels: 1 });
  if (OPUS_RATES_HZ.includes(sampleRateHz) && (await supported(wc.AudioDecoder, mono(sampleRateHz)))) {
    out.downlink = "opus";
  }
  const encoding = { ...mono(uplinkRateHz), bitrate: OPUS_BITRATE_KBPS * 1000 };
  if (uplinkRateHz && OPUS_RATES_HZ.includes(uplinkRateHz) && (await supported(wc.AudioEncoder, encoding))) {
    out.uplink = "opus";
  }
  return out;
}

/** Plane 0 of an AudioData as Float32 samples. */
function samplesOf(data) {
  const out = new Float32Array(data.numberOfFrames);
  data.copyTo(out, { planeIndex: 0, format: "f32-planar" });
  return out;
}

export class OpusDownlink {
  /**
   * @param {number} sampleRateHz the session's downlink rate
   * @param {number} frameSamples samples per frame at that rate
   * @param {(err: Error) => void} onError a packet that does not decode (the server's fault)
   * @param {any} [wc]
   */
  constructor(sampleRateHz, frameSamples, onError, wc = globalThis) {
    this.sampleRateHz = sampleRateHz;
    this.frameSamples = frameSamples;
    this._onError = onError;
    this._wc = wc;
    this._key = ""; // epoch/utterance of the current decoder
    this._decoder = null;
    this._resampler = null;
    /** @type {((pcm: Int16Array) => void)[]} the frames waiting for their samples, in order */
    this._waiting = [];
    /** decoded samples not yet handed out (a decoder's outputs need not be whole frames) */
    this._fifo = new Float32Array(0);
  }

  /**
   * The PCM of one AUDIO frame whose `pcm` is an Opus packet (Uint8Array).
   * @param {{epoch: number, utteranceId: number, seq: number, pcm: Uint8Array}} frame
   * @returns {Promise<Int16Array>}
   */
  decode(frame) {
    const key = `${frame.epoch}/${frame.utteranceId}`;
    if (key !== this._key) this._reset(key);
    const promise = new Promise((resolve) => this._waiting.push(resolve));
    const { EncodedAudioChunk } = this._wc;
    this._decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: frame.seq * FRAME_US, data: frame.pcm }));
    return promise;
  }

  _reset(key) {
    this._flushWaiting();
    this.close();
    this._key = key;
    this._fifo = new Float32Array(0);
    this._resampler = null;
    const { AudioDecoder } = this._wc;
    this._decoder = new AudioDecoder({
      output: (data) => this._output(data),
      error: (err) => this._onError(err),
    });
    this._decoder.configure({ codec: "opus", sampleRate: this.sampleRateHz, numberOfChannels: 1 });
  }

  _output(data) {
    let x;
    try {
      x = samplesOf(data);
      if (data.sampleRate !== this.sampleRateHz) {
        this._resampler ??= new Downsampler(data.sampleRate, this.sampleRateHz);
        x = this._resampler.push(x);
      }
    } finally {
      data.close();
    }
    const fifo = new Float32Array(this._fifo.length + x.length);
    fifo.set(this._fifo);
    fifo.set(x, this._fifo.length);
    this._fifo = fifo;
    // each packet is one frame: hand out a whole frame per output (silence while the
    // resampler fills its history, at the very start)
    const n = this.frameSamples;
    const resolve = this._waiting.shift();
    if (resolve === undefined) return;
    const out = new Float32Array(n);
    const take = Math.min(n, this._fifo.length);
    out.set(this._fifo.subarray(0, take), n - take);
    this._fifo = this._fifo.slice(take);
    resolve(toInt16(out));
  }

  _flushWaiting() {
    for (const resolve of this._waiting.splice(0)) resolve(new Int16Array(this.frameSamples));
  }

  close() {
    if (this._decoder && this._decoder.state !== "closed") this._decoder.close();
    this._decoder = null;
  }
}

export class OpusUplink {
  /**
   * @param {number} rateHz the uplink rate
   * @param {(seq: number, packet: Uint8Array) => void} send
   * @param {(err: Error) => void} onError
   * @param {any} [wc]
   */
  constructor(rateHz, send, onError, wc = globalThis) {
    this.rateHz = rateHz;
    this._wc = wc;
    this._seqs = [];
    const { AudioEncoder } = wc;
    this._encoder = new AudioEncoder({
      output: (chunk) => {
        const data = new Uint8Array(chunk.byteLength);
        chunk.copyTo(data);
        send(this._seqs.shift() ?? 0, data);
      },
      error: (err) => onError(err),
    });
    this._encoder.configure({
      codec: "opus",
      sampleRate: rateHz,
      numberOfChannels: 1,
      bitrate: OPUS_BITRATE_KBPS * 1000,
      opus: { frameDuration: FRAME_US },
    });
  }

  /** Encode one 20 ms frame; its packet goes out as AUDIO_UP `seq`. @param {number} seq @param {Int16Array} pcm */
  encode(seq, pcm) {
    const { AudioData } = this._wc;
    this._seqs.push(seq);
    const data = new AudioData({
      format: "s16",
      sampleRate: this.rateHz,
      numberOfFrames: pcm.length,
      numberOfChannels: 1,
      timestamp: seq * FRAME_US,
      data: pcm,
    });
    this._encoder.encode(data);
    data.close();
  }

  close() {
    if (this._encoder.state !== "closed") this._encoder.close();
  }
}
