// The JS codec against the golden vectors (protocol/vectors/vectors.json, SPEC.md §12): valid
// cases decode to the frame and re-encode to the bytes; invalid cases fail with the named code;
// each fed whole, split at every offset, and one byte at a time.

import assert from "node:assert/strict";
import { test } from "node:test";
import { CLOSE_CODES, ProtocolError } from "../errors.js";
import { Decoder, encode, FrameType, LAYOUTS } from "../codec.js";
import { canonical, CASES, frameFromJson, fromHex, INVALID, snake, VALID } from "./helpers.mjs";

/** Decode `chunks` as one message from `direction`; the frames and the decoder. */
function decodeAll(direction, chunks, packetAudio = false) {
  const decoder = new Decoder({ peer: direction });
  decoder.packetAudio = packetAudio;
  const frames = [];
  for (const chunk of chunks) {
    decoder.receiveData(chunk);
    frames.push(...decoder);
  }
  decoder.checkBoundary();
  return { frames, decoder };
}

const byteAtATime = (data) => Array.from(data, (b) => Uint8Array.of(b));

test("the vectors file has valid and invalid cases of every JS frame type", () => {
  assert.ok(VALID.length >= 40 && INVALID.length >= 30, `${VALID.length} valid, ${INVALID.length} invalid`);
  const types = new Set(VALID.filter((c) => c.frame).map((c) => snake(c.frame.type)));
  assert.deepEqual([...types].sort(), LAYOUTS.map((l) => l.type).sort());
  for (const c of VALID.filter((c) => c.frame && !c.skipped)) {
    assert.equal(fromHex(c.hex)[4], FrameType[snake(c.frame.type)], c.name);
  }
});

for (const c of VALID) {
  test(`valid vector ${c.name}`, () => {
    const data = fromHex(c.hex);
    const packets = c.packet_audio ?? false; // a direction that negotiated Opus (SPEC.md §4.6.3)
    const whole = decodeAll(c.direction, [data], packets);
    assert.equal(whole.decoder.skippedFrames, c.skipped ?? 0);
    if (c.frame === null) {
      assert.deepEqual(whole.frames, []);
    } else {
      const expected = frameFromJson(c.frame);
      assert.deepStrictEqual(whole.frames.map(canonical), [canonical(expected)]);
      const bytes = encode(expected, { packetAudio: packets });
      if (c.round_trip ?? true) {
        assert.deepStrictEqual(bytes, data);
      } else {
        // skipped frames first: encoding gives back the bytes after them (SPEC.md §12)
        assert.ok(c.round_trip_why && c.skipped);
        assert.ok(bytes.length < data.length);
        assert.deepStrictEqual(bytes, data.subarray(data.length - bytes.length));
      }
    }
    const expectedFrames = whole.frames.map(canonical);
    for (let cut = 0; cut <= data.length; cut++) {
      const split = decodeAll(c.direction, [data.subarray(0, cut), data.subarray(cut)], packets);
      assert.deepStrictEqual(split.frames.map(canonical), expectedFrames, `split at ${cut}`);
    }
    const single = decodeAll(c.direction, byteAtATime(data), packets);
    assert.deepStrictEqual(single.frames.map(canonical), expectedFrames, "one byte at a time");
    assert.equal(single.decoder.skippedFrames, c.skipped ?? 0);
  });
}

for (const c of VALID.filter((c) => c.packet_audio)) {
  test(`packet vector ${c.name} is MALFORMED where Opus was not negotiated`, () => {
    assert.throws(
      () => decodeAll(c.direction, [fromHex(c.hex)]),
      (err) => err instanceof ProtocolError && err.code === "MALFORMED",
    );
  });
}

for (const c of INVALID) {
  test(`invalid vector ${c.name} → ${c.error}`, () => {
    const data = fromHex(c.hex);
    const splits = [[data], byteAtATime(data)];
    for (let cut = 0; cut <= data.length; cut++) splits.push([data.subarray(0, cut), data.subarray(cut)]);
    for (const chunks of splits) {
      assert.throws(
        () => decodeAll(c.direction, chunks),
        (err) => {
          assert.ok(err instanceof ProtocolError, String(err));
          assert.equal(err.code, c.error);
          assert.equal(err.fault, "remote");
          assert.equal(err.closeCode, CLOSE_CODES[c.error]);
          return true;
        },
      );
    }
  });
}

test("every case name is unique", () => {
  assert.equal(new Set(CASES.map((c) => c.name)).size, CASES.length);
});
