// AudioWorkletProcessor "duplexd-mic": the microphone, resampled to the uplink rate and cut into
// 20 ms Int16 frames (320 samples at 16 kHz). Load with audioContext.audioWorklet.addModule();
// the main-thread half is `Microphone` in audio.js (getUserMedia with echo cancellation, noise
// suppression and auto gain → this node).
//
// Resampling (resample.js): a Kaiser-windowed sinc low-pass (~60 dB stopband, cutoff 7.25 kHz
// for 16 kHz), polyphase: computed only at the output instants; 48 kHz → 16 kHz is exact
// decimation by 3, other context rates (44.1 kHz) use interpolated phases. Channels are averaged.
//
// processorOptions: {outputRate = 16000}. Messages out: {type: "frame", pcm: Int16Array
// (transferred), level: RMS dBFS of the frame, clockUs: the audio clock at the end of the
// block that completed it}. Message in: {type: "stop"} ends the processor.

import { Downsampler, rmsDbfs, toInt16 } from "./resample.js";

class DuplexdMic extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const outputRate = options?.processorOptions?.outputRate ?? 16000;
    this.frameSamples = Math.round((outputRate * 20) / 1000);
    this.ds = new Downsampler(sampleRate, outputRate);
    this.acc = new Float32Array(this.frameSamples);
    this.fill = 0;
    this.active = true;
    this.port.onmessage = (e) => {
      if (e.data?.type === "stop") this.active = false;
    };
  }

  process(inputs) {
    const input = inputs[0];
    if (!this.active) return false;
    if (!input || input.length === 0) return true;
    let mono = input[0];
    if (input.length > 1) {
      mono = new Float32Array(mono.length);
      for (const ch of input) for (let i = 0; i < ch.length; i++) mono[i] += ch[i] / input.length;
    }
    const y = this.ds.push(mono);
    const clockUs = Math.round((currentTime + mono.length / sampleRate) * 1e6);
    for (let i = 0; i < y.length; i++) {
      this.acc[this.fill++] = y[i];
      if (this.fill === this.frameSamples) {
        const pcm = toInt16(this.acc);
        this.port.postMessage({ type: "frame", pcm, level: rmsDbfs(this.acc), clockUs }, [pcm.buffer]);
        this.fill = 0;
      }
    }
    return true;
  }
}

registerProcessor("duplexd-mic", DuplexdMic);
