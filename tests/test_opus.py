"""Opus audio (protocol/SPEC.md §4.6.3): the glue, the negotiation, and real sessions with the
tone engine, both directions, through the SDK (which decodes and encodes transparently)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from harness import open_client, open_pair

from duplexd._opus import OpusDecoder, OpusEncoder, OpusPacketError
from duplexd.client import CodecError, open_session
from duplexd.client.session import session_over
from duplexd.protocol import frames as fr
from duplexd.protocol.codec import Decoder, LocalProtocolError, RemoteProtocolError, encode
from duplexd.protocol.options import CodecOptions, parse_options
from duplexd.protocol.state import ServerProtocolState, check_codecs

RATES = [16_000, 24_000, 48_000]


def opus_hello(rate: int = 48_000, uplink_hz: int = 0, **codec: Any) -> fr.Hello:
    return fr.Hello(
        sample_rate_hz=rate,
        uplink_rate_hz=uplink_hz,
        options=json.dumps({"codec": {"downlink": "opus", **codec}}),
    )


def speechlike(rate: int, seconds: float, seed: int = 1) -> np.ndarray:
    """Harmonics of a gliding 120-220 Hz voice, syllable-shaped (s16)."""
    t = np.arange(int(rate * seconds)) / rate
    f0 = 170 + 50 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + seed)
    return (x * envelope * 6000).astype("<i2")


def snr_db(ref: np.ndarray, out: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Best SNR of `out` against `ref` delayed by 0..max_lag samples, and that delay."""
    ref = ref.astype(np.float64)
    out = out.astype(np.float64)
    best = (-np.inf, 0)
    for lag in range(max_lag + 1):
        a = ref[: len(ref) - max_lag]
        b = out[lag : lag + len(a)]
        noise = np.sum((a - b) ** 2)
        best = max(best, (10 * np.log10(np.sum(a**2) / max(noise, 1e-9)), lag))
    return best


# ---------------------------------------------------------------------- the glue


@pytest.mark.parametrize("rate", RATES)
def test_round_trip_is_a_delayed_copy(rate: int) -> None:
    n = rate // 50
    pcm = speechlike(rate, 1.0)
    encoder, decoder = OpusEncoder(rate, bitrate_kbps=32), OpusDecoder(rate)
    packets = [encoder.encode(pcm[i : i + n]) for i in range(0, len(pcm), n)]
    out = np.concatenate([decoder.decode(p) for p in packets])
    assert len(out) == len(pcm)  # exactly 20 ms per packet: sample counts stay exact
    assert max(map(len, packets)) <= 1275
    assert sum(map(len, packets)) / len(packets) <= 100  # 32 kbit/s: ~80 bytes a frame
    snr, lag = snr_db(pcm, out, max_lag=rate // 100)
    assert snr > 6, snr  # a perceptual codec: ~8 dB of waveform SNR, but the signal it is
    assert abs(lag - rate * 0.0065) <= rate * 0.002  # Opus' 6.5 ms (+ the decimator's)


@pytest.mark.parametrize("rate", RATES)
def test_float_decoding_is_what_s16_decoding_rounds(rate: int) -> None:
    """`decode_float` (the daemon's uplink: no s16 round trip) gives full-scale-1.0 floats,
    exactly 20 ms a packet; `decode` is those floats rounded and saturated to s16."""
    n = rate // 50
    pcm = speechlike(rate, 0.5)
    encoder = OpusEncoder(rate)
    packets = [encoder.encode(pcm[i : i + n]) for i in range(0, len(pcm), n)]
    as_float, as_s16 = OpusDecoder(rate), OpusDecoder(rate)
    for packet in packets:
        y = as_float.decode_float(packet)
        assert y.dtype == np.float32 and y.shape == (n,)
        expected = np.clip(np.rint(y * np.float32(32768)), -32768, 32767).astype("<i2")
        np.testing.assert_array_equal(as_s16.decode(packet), expected)
    with pytest.raises(OpusPacketError, match="empty"):
        as_float.decode_float(b"")


@pytest.mark.parametrize("rate", RATES)
def test_a_build_that_decodes_to_s16_gives_the_same_floats_within_rounding(rate: int) -> None:
    """A PyAV build that ignores the request for float output hands `decode_float` s16 frames:
    it scales them to full scale 1.0 (the 16/24 kHz decimator after), within s16's rounding
    of what the float build gives."""
    n = rate // 50
    pcm = speechlike(rate, 0.3)
    encoder = OpusEncoder(rate)
    packets = [encoder.encode(pcm[i : i + n]) for i in range(0, len(pcm), n)]
    as_float, as_s16 = OpusDecoder(rate), OpusDecoder(rate)

    class S16Frame:
        def __init__(self, frame: Any) -> None:
            self._frame = frame

        def to_ndarray(self) -> np.ndarray:
            y = self._frame.to_ndarray() * 32768.0
            return np.clip(np.rint(y), -32768, 32767).astype(np.int16)

    ctx = as_s16._ctx  # (PyAV's decoder context is a C type: wrapped, not patched)

    class S16Context:
        def decode(self, packet: Any) -> list[S16Frame]:
            return [S16Frame(f) for f in ctx.decode(packet)]

    as_s16._ctx = S16Context()
    for packet in packets:
        want, got = as_float.decode_float(packet), as_s16.decode_float(packet)
        assert got.dtype == np.float32 and got.shape == (n,)
        np.testing.assert_allclose(got, want, rtol=0, atol=1 / 32768)


def test_bad_packets_are_errors_not_crashes() -> None:
    decoder = OpusDecoder(16_000)
    for bad, why in [
        (b"", "empty"),
        (bytes(1276), "1276 bytes"),
        (b"\xff\xff\xff", "not an Opus packet"),
    ]:
        with pytest.raises(OpusPacketError, match=why):
            decoder.decode(bad)
    # a valid packet of 60 ms (TOC config 3: SILK NB 60 ms) is not one 20 ms frame
    with pytest.raises(OpusPacketError, match="60 ms"):
        decoder.decode(bytes([0x18]) + bytes(10))
    # the decoder still works after refusing
    good = OpusEncoder(16_000).encode(np.zeros(320, "<i2"))
    assert len(decoder.decode(good)) == 320


def test_encoder_refuses_what_opus_lacks() -> None:
    with pytest.raises(ValueError, match="44100"):
        OpusEncoder(44_100)
    with pytest.raises(ValueError, match="bitrate"):
        OpusEncoder(48_000, bitrate_kbps=600)
    with pytest.raises(ValueError, match="960 samples"):
        OpusEncoder(48_000).encode(np.zeros(320, "<i2"))


# ---------------------------------------------------------------------- negotiation


def test_codec_options_default_to_pcm() -> None:
    assert parse_options("").codec == CodecOptions()
    assert parse_options('{"vad": {}}').codec.downlink == "pcm"
    opts = parse_options(
        '{"codec": {"downlink": "opus", "uplink": "opus", "opus_bitrate_kbps": 24,'
        ' "opus_complexity": 9, "future": 1}}'
    ).codec
    assert (opts.downlink, opts.uplink, opts.opus_bitrate_kbps, opts.opus_complexity) == (
        "opus",
        "opus",
        24.0,
        9,
    )
    assert opts.describe() == {
        "downlink": "opus",
        "uplink": "opus",
        "opus_bitrate_kbps": 24.0,
        "opus_complexity": 9,
    }


@pytest.mark.parametrize(
    ("codec", "why"),
    [
        ('"opus"', "options.codec must be a JSON object"),
        ('{"downlink": "mp3"}', 'options.codec.downlink must be "pcm" or "opus"'),
        ('{"uplink": 1}', 'options.codec.uplink must be "pcm" or "opus"'),
        ('{"opus_bitrate_kbps": 5}', "opus_bitrate_kbps must be a number in 6..510"),
        ('{"opus_bitrate_kbps": true}', "opus_bitrate_kbps must be a number in 6..510"),
        ('{"opus_complexity": 11}', "opus_complexity must be an integer in 0..10"),
        ('{"opus_complexity": 2.5}', "opus_complexity must be an integer in 0..10"),
    ],
)
def test_bad_codec_options(codec: str, why: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_options(f'{{"codec": {codec}}}')
    assert info.value.error_code == fr.ErrorCode.BAD_OPTIONS
    assert why in info.value.message


def test_opus_at_a_rate_opus_lacks_is_unsupported_format() -> None:
    options = parse_options('{"codec": {"downlink": "opus", "uplink": "opus"}}')
    check_codecs(fr.Hello(sample_rate_hz=48_000, uplink_rate_hz=16_000), options)
    for hello, direction in [
        (fr.Hello(sample_rate_hz=44_100), "downlink at 44100 Hz"),
        (fr.Hello(uplink_rate_hz=22_050), "uplink at 22050 Hz"),
    ]:
        with pytest.raises(RemoteProtocolError) as info:
            check_codecs(hello, options)
        assert info.value.error_code == fr.ErrorCode.UNSUPPORTED_FORMAT
        assert direction in info.value.message and "8000, 12000, 16000, 24000, 48000" in (
            info.value.message
        )
    # PCM at any rate is not the codec check's business
    check_codecs(fr.Hello(sample_rate_hz=44_100), parse_options(""))
    state = ServerProtocolState(max_text_bytes=100, max_queued_utterances=2)
    state.receive_hello(opus_hello(16_000))
    assert state.options.codec.downlink == "opus"


def test_packet_audio_is_opaque_only_once_negotiated() -> None:
    odd = fr.AudioUp(seq=0, pcm=b"\x01\x02\x03")
    with pytest.raises(LocalProtocolError):
        encode(odd)
    data = encode(odd, packet_audio=True)
    pcm_decoder = Decoder(peer="client")
    pcm_decoder.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        pcm_decoder.next_frame()
    assert info.value.error_code == fr.ErrorCode.MALFORMED
    for split in range(len(data) + 1):  # whole, split anywhere: the same frame
        decoder = Decoder(peer="client")
        decoder.packet_audio = True
        decoder.receive_data(data[:split])
        first = decoder.next_frame()
        decoder.receive_data(data[split:])
        assert (first or decoder.next_frame()) == odd
    length = fr.AUDIO_HEADER_BYTES - fr.LENGTH_PREFIX_BYTES + 3
    audio = length.to_bytes(4, "little") + bytes([0x81, 1]) + bytes(10) + b"abc"
    decoder = Decoder(peer="server")
    decoder.packet_audio = True
    decoder.receive_data(audio)
    assert decoder.next_frame() == fr.Audio(0, 0, 0, b"abc", True)


def test_sdk_refuses_opus_at_a_rate_opus_lacks() -> None:
    async def main() -> None:
        async with open_session(
            "ws://127.0.0.1:9/v1", sample_rate_hz=44_100, options={"codec": {"downlink": "opus"}}
        ):
            raise AssertionError("connected")

    with pytest.raises(CodecError, match="Opus downlink at 44100 Hz"):
        trio.run(main)
    assert issubclass(CodecError, ValueError)


# ---------------------------------------------------------------------- real sessions


async def _utterance_audio(hello: fr.Hello, text: str) -> tuple[fr.Welcome, list[fr.Frame], Any]:
    """The raw frames on the wire, and the SDK's (decoded) utterance."""
    wire: list[bytes] = []
    async with open_pair() as (pair,):
        original = pair.client.get_message

        async def tapped() -> Any:
            message = await original()
            wire.append(message)
            return message

        pair.client.get_message = tapped  # type: ignore[method-assign]
        async with session_over(pair.client, hello) as session:
            uid = await session.say(text)
            spoken = await session.receive_utterance(uid)
            welcome = session.welcome
    decoder = Decoder(peer="server")
    decoder.packet_audio = json.loads(welcome.info)["codec"]["downlink"] == "opus"
    frames: list[fr.Frame] = []
    for message in wire[1:]:
        decoder.receive_data(message)
        frames.extend(decoder)
    return welcome, frames, spoken


@pytest.mark.parametrize("rate", RATES)
async def test_tone_session_in_opus(rate: int, autojump_clock: trio.testing.MockClock) -> None:
    text = "Opus carries this sentence in small packets."
    pcm_welcome, pcm_frames, pcm = await _utterance_audio(fr.Hello(sample_rate_hz=rate), text)
    welcome, frames, opus = await _utterance_audio(opus_hello(rate), text)
    assert json.loads(pcm_welcome.info)["codec"] == {"downlink": "pcm", "uplink": "pcm"}
    assert json.loads(welcome.info)["codec"] == {
        "downlink": "opus",
        "uplink": "pcm",
        "opus_bitrate_kbps": 32.0,
        "opus_complexity": 5,
    }
    assert welcome.frame_samples == pcm_welcome.frame_samples
    audio = [f for f in frames if isinstance(f, fr.Audio)]
    pcm_audio = [f for f in pcm_frames if isinstance(f, fr.Audio)]
    # the same frames (seq, END) as PCM, each a packet of 20 ms
    assert [(f.seq, f.last) for f in audio] == [(f.seq, f.last) for f in pcm_audio]
    assert sum(len(f.pcm) for f in audio) / len(audio) <= 100
    done = next(f for f in frames if isinstance(f, fr.UtteranceDone))
    pcm_done = next(f for f in pcm_frames if isinstance(f, fr.UtteranceDone))
    assert (done.samples_sent, done.chars_spoken) == (pcm_done.samples_sent, pcm_done.chars_spoken)
    # the SDK hands out PCM: the same length, and it is the PCM's audio, 6.5 ms later
    assert len(opus.pcm) == len(pcm.pcm) == len(audio) * welcome.frame_samples * 2
    snr, lag = snr_db(
        np.frombuffer(pcm.pcm, "<i2"), np.frombuffer(opus.pcm, "<i2"), max_lag=rate // 100
    )
    print(f"\n{rate} Hz: {sum(len(f.pcm) for f in audio) / len(audio):.0f} B/frame, SNR {snr:.1f}")
    assert snr > 6 and abs(lag - rate * 0.0065) <= rate * 0.002


async def test_interrupt_in_opus_counts_whole_frames(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_client(hello=opus_hello(16_000)) as session:
        uid = await session.say("A long sentence that is going to be cut short by the client. " * 3)
        frames = 0
        async for frame in session:
            if isinstance(frame, fr.Audio):
                assert len(frame.pcm) == 640  # decoded
                frames += 1
                if frames == 10:
                    break
        inter = await session.interrupt()
        assert inter.utterance_id == uid
        # no faded tail with Opus (SPEC §4.6.3): what was sent is whole frames
        assert inter.samples_sent % 320 == 0 and inter.samples_sent >= 10 * 320
        uid2 = await session.say("And again.")
        assert len((await session.receive_utterance(uid2)).pcm) > 0


async def test_bad_opus_uplink_is_malformed(autojump_clock: trio.testing.MockClock) -> None:
    async with open_pair() as (pair,):
        await pair.send(opus_hello(16_000, uplink_hz=16_000, uplink="opus"))
        welcome = (await pair.receive())[0]
        assert isinstance(welcome, fr.Welcome)
        assert json.loads(welcome.info)["codec"]["uplink"] == "opus"
        good = OpusEncoder(16_000).encode(np.zeros(320, "<i2"))
        await pair.client.send_message(
            encode(fr.AudioUp(seq=0, pcm=good), packet_audio=True)
            + encode(fr.AudioUp(seq=1, pcm=b"\xff\xfe\xfd"), packet_audio=True)
        )
        frames: list[fr.Frame] = []
        with trio.fail_after(5):
            while not any(isinstance(f, fr.Error) for f in frames):
                frames += await pair.receive()
        error = next(f for f in frames if isinstance(f, fr.Error))
        assert error.code == fr.ErrorCode.MALFORMED
        assert error.message.startswith("AudioUp: not an Opus packet")


async def test_json_mode_passes_opus_packets_through() -> None:
    """The JSON text mode (SPEC Appendix A) carries a packet as it carries PCM: base64."""
    import base64

    from duplexd.protocol.jsonmode import JsonTransport

    class Peer:
        def __init__(self) -> None:
            self.sent: list[str | bytes] = []
            self.inbox = ['{"type": "audio_up", "seq": 0, "pcm": "AQID"}']

        async def get_message(self) -> str | bytes:
            return self.inbox.pop(0)

        async def send_message(self, message: str | bytes) -> None:
            self.sent.append(message)

        async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
            pass

    peer = Peer()
    transport = JsonTransport(peer)
    packet = OpusEncoder(16_000).encode(np.zeros(320, "<i2"))
    audio = fr.Audio(0, 1, 0, packet + b"\x00" * (1 - len(packet) % 2) + b"\x01", last=True)
    await transport.send_message(encode(audio, packet_audio=True))
    (text,) = peer.sent
    assert isinstance(text, str)
    assert base64.b64decode(json.loads(text)["pcm"]) == audio.pcm
    up = await transport.get_message()  # the odd AudioUp body is the session's to judge
    assert isinstance(up, bytes)  # (after the implicit Hello of this mode)
    assert up.endswith(encode(fr.AudioUp(0, b"\x01\x02\x03"), packet_audio=True))


async def test_opus_uplink_gap_is_filled_as_with_pcm(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A seq gap in an Opus uplink is silence, as with PCM (SPEC §4.6): the session goes on."""
    async with open_client(hello=opus_hello(16_000, uplink_hz=16_000, uplink="opus")) as session:
        assert session.audio.opus_up
        tone = speechlike(16_000, 0.2)
        for seq in (0, 1, 5, 6):  # 2, 3 and 4 lost
            session._uplink_seq = seq
            await session.send_audio(tone[(seq % 10) * 320 : (seq % 10 + 1) * 320].tobytes())
        assert await session.ping() >= 0
        stats = await session.stats()
        # 4 frames received, 7 frames of audio processed: 2240 samples, 4 whole VAD windows
        assert (stats["uplink_frames"], stats["vad_windows"]) == (4, 7 * 320 // 512)
