// duplexd's browser client: a dependency-free ES module (no build step).
//
// This file is the map; it re-exports the public API:
// - codec.js: `encode(frame)`, the incremental `Decoder`, `decodeMessage`, the frame layouts
//   (SPEC.md §3-§5, including the optional PLAYED, WORDS and HEARD frames), constants.
// - session.js: `DuplexdSession.open(url, {...})` (say, sendText, streamText, interrupt,
//   pause/resume, ping, getStats, sendAudio, reportPlayed, events), `sessionUrl`.
// - errors.js: `DuplexdError` and its kinds; ErrorCode names and close codes.
// - opus.js: Opus through WebCodecs (`negotiateCodecs`; the session's `codec: "auto"`).
// The audio side: audio.js (`Player`, `Microphone`, `createAudioContext`: the main-thread
// halves) drives playback-worklet.js and mic-worklet.js (AudioWorklet modules, whose logic is
// jitter.js and resample.js). The demo page is index.html + demo.js.

export {
  AUDIO_HEADER_BYTES,
  asBytes,
  Decoder,
  decodeMessage,
  encode,
  FRAME_HEADER_BYTES,
  FRAME_MS,
  FrameType,
  HELLO_MAX_FRAME_BYTES,
  LAYOUTS,
  MAX_FRAME_BYTES,
  PROTOCOL_VERSION,
  SUBPROTOCOL,
  WS_PATH,
} from "./codec.js";
export { DuplexdEvent, DuplexdSession, sessionUrl } from "./session.js";
export { negotiateCodecs, OPUS_RATES_HZ } from "./opus.js";
export {
  AuthError,
  CLOSE_CODES,
  ConnectError,
  ConnectionLost,
  DuplexdError,
  ERROR_NAMES,
  ErrorCode,
  ProtocolError,
  ServerError,
  SessionStateError,
} from "./errors.js";
