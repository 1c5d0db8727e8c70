"""Tests for duplexd._downlink.ring.FrameRing (the cffi SPSC frame ring)."""

from __future__ import annotations

import gc
import hashlib
import struct
import threading
import time
import weakref

import pytest

from duplexd._downlink.ring import MAX_CAPACITY, MAX_SLOT_BYTES, FrameRing, RingClosedError

unit = pytest.mark.unit


def frame(seq: int, size: int) -> bytes:
    """Deterministic frame for seq (first 8 bytes = seq when size allows)."""
    body = hashlib.blake2b(seq.to_bytes(8, "little"), digest_size=64).digest()
    raw = seq.to_bytes(8, "little") + body * (size // 64 + 1)
    return raw[:size]


@unit
def test_basic_roundtrip_and_properties() -> None:
    with FrameRing(4, 1936) as r:
        assert (r.capacity, r.slot_bytes, r.count, r.free, len(r)) == (4, 1936, 0, 4, 0)
        assert r.pop() is None
        assert r.push(b"abc")
        assert (r.count, r.free) == (1, 3)
        assert r.pop() == b"abc"
        assert r.pop() is None
        assert "FrameRing" in repr(r)


@unit
@pytest.mark.parametrize("capacity", [1, 2, 8, 64])
def test_wraparound_many_laps(capacity: int) -> None:
    r = FrameRing(capacity, 37)
    seq = 0
    for lap in range(500):
        n = 1 + lap % capacity
        for _ in range(n):
            assert r.push(frame(seq, seq % 38))
            seq += 1
        for k in range(n):
            s = seq - n + k
            assert r.pop() == frame(s, s % 38)
        assert r.pop() is None
    r.close()


@unit
def test_full_and_empty() -> None:
    r = FrameRing(8, 16)
    for i in range(8):
        assert r.push(bytes([i]) * 16)
    assert r.count == 8 and r.free == 0
    assert r.push(b"x") is False
    assert r.push(b"") is False
    assert r.count == 8
    for i in range(8):
        assert r.pop() == bytes([i]) * 16
    assert r.pop() is None
    assert r.count == 0 and r.free == 8


@unit
def test_interleaved_push_pop_keeps_order() -> None:
    r = FrameRing(4, 8)
    expected: list[bytes] = []
    out: list[bytes] = []
    for i in range(1000):
        data = struct.pack("<Q", i)
        if r.push(data):
            expected.append(data)
        if i % 3 == 0:
            got = r.pop()
            if got is not None:
                out.append(got)
    while (got := r.pop()) is not None:
        out.append(got)
    assert out == expected


@unit
@pytest.mark.parametrize(
    ("capacity", "slot_bytes", "match"),
    [
        (0, 16, "capacity must be a power of two"),
        (3, 16, "capacity must be a power of two"),
        (6, 16, "capacity must be a power of two"),
        (-4, 16, "capacity must be a power of two"),
        (2 * MAX_CAPACITY, 16, "capacity must be a power of two"),
        (4, 0, "slot_bytes must be between 1 and 65536"),
        (4, -1, "slot_bytes must be between"),
        (4, MAX_SLOT_BYTES + 1, "slot_bytes must be between"),
    ],
)
def test_size_validation(capacity: int, slot_bytes: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FrameRing(capacity, slot_bytes)


@unit
def test_type_validation() -> None:
    with pytest.raises(TypeError):
        FrameRing(4.0, 16)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        FrameRing(4, "16")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        FrameRing(True, 16)


@unit
def test_limits_accepted() -> None:
    FrameRing(1, 1).close()
    FrameRing(MAX_CAPACITY, 1).close()
    FrameRing(1, MAX_SLOT_BYTES).close()


@unit
def test_push_too_big() -> None:
    r = FrameRing(4, 10)
    assert r.push(bytes(10))
    with pytest.raises(ValueError, match="11 bytes exceeds slot_bytes=10"):
        r.push(bytes(11))
    with pytest.raises(ValueError, match="exceeds"):
        r.push(memoryview(bytes(12)))
    # A typed memoryview counts bytes, not items.
    with pytest.raises(ValueError, match="12 bytes exceeds"):
        r.push(memoryview(bytearray(12)).cast("I"))
    assert r.count == 1  # failed pushes stored nothing


@unit
def test_buffer_types() -> None:
    r = FrameRing(8, 64)
    assert r.push(b"bytes")
    assert r.push(bytearray(b"bytearray"))
    assert r.push(memoryview(b"xxmemoryviewxx")[2:-2])
    assert r.push(memoryview(bytearray(range(8))).cast("I"))
    assert r.pop() == b"bytes"
    assert r.pop() == b"bytearray"
    assert r.pop() == b"memoryview"
    assert r.pop() == bytes(range(8))
    with pytest.raises(TypeError):
        r.push("text")  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError, BufferError)):
        r.push(memoryview(b"abcdef")[::2])  # not contiguous


@unit
def test_zero_length_and_odd_sizes() -> None:
    r = FrameRing(16, 1937)
    sizes = [0, 1, 2, 3, 7, 15, 16, 17, 63, 1935, 1936, 1937, 0, 5]
    for i, n in enumerate(sizes):
        assert r.push(frame(i, n))
    for i, n in enumerate(sizes):
        got = r.pop()
        assert got == frame(i, n)
        assert got is not None and len(got) == n
    assert r.pop() is None


@unit
def test_pop_into() -> None:
    r = FrameRing(4, 100)
    buf = bytearray(100)
    assert r.pop_into(buf) == 0
    assert r.push(b"hello")
    assert r.pop_into(buf) == 5
    assert buf[:5] == b"hello"
    assert r.push(b"x" * 50)
    mv = memoryview(buf)[10:70]
    assert r.pop_into(mv) == 50
    assert buf[10:60] == b"x" * 50
    assert r.count == 0


@unit
def test_pop_into_too_small_keeps_frame() -> None:
    r = FrameRing(4, 100)
    assert r.push(b"y" * 40)
    with pytest.raises(ValueError, match="buffer of 39 bytes is too small"):
        r.pop_into(bytearray(39))
    assert r.count == 1
    buf = bytearray(40)
    assert r.pop_into(buf) == 40 and buf == b"y" * 40


@unit
def test_pop_into_rejects_readonly() -> None:
    r = FrameRing(4, 8)
    r.push(b"a")
    with pytest.raises((TypeError, BufferError)):
        r.pop_into(b"readonly")  # type: ignore[arg-type]
    assert r.count == 1


@unit
def test_flush() -> None:
    r = FrameRing(8, 4)
    assert r.flush() == 0
    for i in range(5):
        r.push(bytes([i]))
    assert r.flush() == 5
    assert r.count == 0 and r.pop() is None
    # Usable after flush, across the wrap point.
    for lap in range(20):
        for i in range(8):
            assert r.push(bytes([lap, i]))
        assert r.pop() == bytes([lap, 0])
        assert r.flush() == 7
    assert r.free == 8


@unit
def test_close_is_idempotent_and_later_calls_raise() -> None:
    r = FrameRing(4, 8)
    r.push(b"a")
    r.close()
    r.close()
    assert r.closed
    assert "closed" in repr(r)
    with pytest.raises(RingClosedError, match="closed"):
        r.push(b"a")
    with pytest.raises(RingClosedError):
        r.pop()
    with pytest.raises(RingClosedError):
        r.pop_into(bytearray(8))
    with pytest.raises(RingClosedError):
        r.flush()
    with pytest.raises(RingClosedError):
        _ = r.count
    with pytest.raises(RingClosedError):
        _ = r.free
    with pytest.raises(RingClosedError), r:
        pass
    assert (r.capacity, r.slot_bytes) == (4, 8)
    assert issubclass(RingClosedError, RuntimeError)


@unit
def test_context_manager_closes() -> None:
    with FrameRing(2, 2) as r:
        r.push(b"ab")
    assert r.closed
    with pytest.raises(RingClosedError):
        r.pop()


@unit
def test_garbage_collected_without_close() -> None:
    r = FrameRing(1024, 4096)
    ref = weakref.ref(r)
    del r
    gc.collect()
    assert ref() is None


@pytest.mark.integration
def test_two_thread_stress_with_checksums() -> None:
    n_frames = 300_000
    r = FrameRing(8, 64)
    errors: list[str] = []
    full = 0

    def make(seq: int) -> bytes:
        n = 12 + seq % 53  # 12..64 bytes: seq (8) + crc-ish (4) + payload
        payload = bytes((seq * 7 + i) & 0xFF for i in range(n - 12))
        return struct.pack("<QI", seq, hash(payload) & 0xFFFFFFFF) + payload

    frames = [make(i) for i in range(1000)]

    def producer() -> None:
        nonlocal full
        seq = 0
        while seq < n_frames:
            data = frames[seq % 1000]
            data = struct.pack("<Q", seq) + data[8:]
            if r.push(data):
                seq += 1
            else:
                full += 1
                time.sleep(0)

    t = threading.Thread(target=producer)
    t.start()
    try:
        seq = 0
        empty = 0
        buf = bytearray(64)
        deadline = time.monotonic() + 60
        while seq < n_frames and time.monotonic() < deadline:
            if seq & 1:
                n = r.pop_into(buf)
                got = bytes(buf[:n]) if n else None
            else:
                got = r.pop()
            if got is None:
                empty += 1
                time.sleep(0)
                continue
            (gseq, csum) = struct.unpack_from("<QI", got)
            want = frames[seq % 1000]
            if gseq != seq or got[8:] != want[8:] or hash(got[12:]) & 0xFFFFFFFF != csum:
                errors.append(f"frame {seq}: got seq {gseq}, len {len(got)}")
                break
            seq += 1
    finally:
        t.join(timeout=60)
    assert not t.is_alive()
    assert errors == []
    assert seq == n_frames
    assert r.pop() is None
    r.close()


@unit
def test_push_many_pushes_heads_and_bodies_until_full() -> None:
    heads = b"".join(i.to_bytes(4, "little") for i in range(6))
    bodies = bytes(range(60))  # 6 bodies of 10 bytes
    with FrameRing(4, 14) as r:
        assert r.push_many(heads, bodies, 6) == 4  # the rest does not fit; nothing torn
        assert r.free == 0 and r.push_many(heads, bodies, 6) == 0
        for i in range(4):
            assert r.pop() == heads[4 * i : 4 * i + 4] + bodies[10 * i : 10 * i + 10]
        assert r.push_many(heads[16:], bodies[40:], 2) == 2  # the rest, after a wrap
        assert [r.pop() for _ in range(3)] == [
            heads[16:20] + bodies[40:50],
            heads[20:] + bodies[50:],
            None,
        ]
        assert r.push_many(b"", b"", 0) == 0


@unit
def test_push_many_validates_before_it_pushes() -> None:
    with FrameRing(4, 8) as r:
        with pytest.raises(ValueError, match="not 3 frames"):
            r.push_many(b"\0" * 4, b"\0" * 9, 3)
        assert r.push_many(b"\0" * 8, b"\0" * 2, 2) == 2  # 4 + 1 bytes per frame: they fit
    with FrameRing(4, 4) as r:
        with pytest.raises(ValueError, match="exceed slot_bytes=4"):
            r.push_many(b"\0" * 8, b"\0" * 2, 2)  # 4 + 1 bytes per frame
        with pytest.raises(ValueError, match="n must be >= 0"):
            r.push_many(b"", b"", -1)
        assert r.count == 0
    r.close()
    with pytest.raises(RingClosedError):
        r.push_many(b"\0" * 4, b"\0" * 4, 1)


@pytest.mark.integration
def test_push_many_against_a_concurrent_consumer() -> None:
    """Blocks of 1-40 frames pushed while another thread pops: every frame once, in order."""
    n_frames, head_bytes, body_bytes = 200_000, 8, 24
    r = FrameRing(64, head_bytes + body_bytes)
    heads = b"".join(struct.pack("<Q", i) for i in range(n_frames))
    bodies = b"".join(struct.pack("<Q", i) * 3 for i in range(n_frames))

    def producer() -> None:
        seq, k = 0, 0
        while seq < n_frames:
            n = min(1 + k % 40, n_frames - seq)
            k += 1
            seq += r.push_many(
                heads[seq * head_bytes : (seq + n) * head_bytes],
                bodies[seq * body_bytes : (seq + n) * body_bytes],
                n,
            )
            time.sleep(0)

    t = threading.Thread(target=producer)
    t.start()
    seq = 0
    deadline = time.monotonic() + 60
    try:
        while seq < n_frames and time.monotonic() < deadline:
            got = r.pop()
            if got is None:
                time.sleep(0)
                continue
            assert got == struct.pack("<Q", seq) * 4, seq
            seq += 1
    finally:
        t.join(timeout=60)
    assert seq == n_frames and r.pop() is None
    r.close()
