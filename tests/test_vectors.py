"""The codec against the committed golden vectors (protocol/vectors/vectors.json)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from duplexd.protocol.codec import FRAME_CLASSES, FRAME_TYPES, Decoder, RemoteProtocolError, encode
from duplexd.protocol.frames import (
    BargeInOutcome,
    BargeInReason,
    ErrorCode,
    Frame,
    TurnEndBy,
    WordMark,
)

VECTORS_DIR = Path(__file__).resolve().parents[1] / "protocol" / "vectors"
VECTORS_FILE = VECTORS_DIR / "vectors.json"
CASES: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
VALID = [c for c in CASES if "error" not in c]
INVALID = [c for c in CASES if "error" in c]
PACKETS = [c for c in VALID if c.get("packet_audio")]
_CLASSES = {cls.__name__: cls for cls in FRAME_CLASSES.values()}
_BYTES_FIELDS = {"pcm", "session_id"}


def frame_from_json(obj: dict[str, Any]) -> Frame:
    fields = dict(obj)
    cls = _CLASSES[fields.pop("type")]
    for name in _BYTES_FIELDS & fields.keys():
        fields[name] = bytes.fromhex(fields[name])
    if "code" in fields:
        fields["code"] = ErrorCode[fields["code"]]
    if "outcome" in fields:
        fields["outcome"] = BargeInOutcome[fields["outcome"]]
        fields["reason"] = BargeInReason[fields["reason"]]
    if "by" in fields:
        fields["by"] = TurnEndBy[fields["by"]]
    if "marks" in fields:
        fields["marks"] = tuple(WordMark(**m) for m in fields["marks"])
    frame: Frame = cls(**fields)
    return frame


def decode_all(
    direction: str, data: bytes, chunks: list[bytes] | None = None, packet_audio: bool = False
) -> list[Frame]:
    decoder = Decoder(peer="client" if direction == "client" else "server")
    decoder.packet_audio = packet_audio
    frames: list[Frame] = []
    for chunk in chunks if chunks is not None else [data]:
        decoder.receive_data(chunk)
        frames.extend(decoder)
    decoder.check_boundary()
    return frames


def _ids(cases: list[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in cases]


@pytest.mark.unit
def test_vectors_file_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("vectors_generate", VECTORS_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == VECTORS_FILE.read_text(encoding="utf-8")


@pytest.mark.unit
def test_vectors_cover_every_frame_type() -> None:
    types = {c["frame"]["type"] for c in VALID if c["frame"] is not None}
    assert types == {cls.__name__ for cls in FRAME_CLASSES.values()}
    assert any(c.get("skipped") for c in VALID)
    for case in VALID:
        if case["frame"] is not None:
            ftype = FRAME_TYPES[_CLASSES[case["frame"]["type"]]]
            assert (case["direction"] == "client") == ftype.from_client
            if not case.get("skipped"):
                assert bytes.fromhex(case["hex"])[4] == ftype


@pytest.mark.unit
@pytest.mark.parametrize("case", VALID, ids=_ids(VALID))
def test_valid_vector(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["hex"])
    packets = case.get("packet_audio", False)
    decoder = Decoder(peer=case["direction"])
    decoder.packet_audio = packets
    decoder.receive_data(data)
    frames = list(decoder)
    decoder.check_boundary()
    assert decoder.skipped_frames == case.get("skipped", 0)
    if case["frame"] is None:
        assert frames == []
        return
    expected = frame_from_json(case["frame"])
    assert frames == [expected]
    if case.get("round_trip", True):
        assert encode(expected, packet_audio=packets) == data
    else:  # skipped frames first: encoding gives back the bytes after them, not theirs
        assert case["round_trip_why"] and case["skipped"]
        assert data.endswith(encode(expected)) and len(data) > len(encode(expected))


@pytest.mark.unit
def test_only_skipping_vectors_may_not_round_trip() -> None:
    no_round_trip = [c["name"] for c in VALID if c.get("round_trip", True) is False]
    assert no_round_trip == ["skip_then_ping"]
    assert all(c.get("skipped") for c in VALID if c["name"] in no_round_trip)


@pytest.mark.unit
@pytest.mark.parametrize("case", VALID, ids=_ids(VALID))
def test_valid_vector_any_split(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["hex"])
    packets = case.get("packet_audio", False)
    whole = decode_all(case["direction"], data, packet_audio=packets)
    step = max(1, len(data) // 64)  # the 1,936-byte audio frame: every 30th offset
    for cut in range(0, len(data) + 1, step):
        split = [data[:cut], data[cut:]]
        assert decode_all(case["direction"], data, split, packets) == whole
    assert decode_all(case["direction"], data, [bytes([b]) for b in data], packets) == whole


@pytest.mark.unit
@pytest.mark.parametrize("case", PACKETS, ids=_ids(PACKETS))
def test_packet_vectors_are_malformed_as_pcm(case: dict[str, Any]) -> None:
    """An odd-length Opus body is MALFORMED where Opus was not negotiated."""
    with pytest.raises(RemoteProtocolError) as info:
        decode_all(case["direction"], bytes.fromhex(case["hex"]))
    assert info.value.error_code is ErrorCode.MALFORMED


@pytest.mark.unit
@pytest.mark.parametrize("case", INVALID, ids=_ids(INVALID))
def test_invalid_vector(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["hex"])
    for chunks in ([data], [bytes([b]) for b in data]):
        with pytest.raises(RemoteProtocolError) as info:
            decode_all(case["direction"], data, chunks)
        assert info.value.error_code is ErrorCode[case["error"]]
        assert info.value.close_code == ErrorCode[case["error"]].close_code
