// Shared by the node tests: the golden vectors as JS frames, and a canonical form to compare
// frames by value (typed arrays as hex, every integer as a decimal string).

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { LAYOUTS } from "../codec.js";

export const VECTORS_FILE = fileURLToPath(new URL("../../../protocol/vectors/vectors.json", import.meta.url));

/**
 * JSON.parse that keeps integers beyond 2^53 exact: digit runs of 16+ outside strings become
 * BigInt (JSON.parse would round 18446744073709551615).
 * @param {string} text
 */
export function parseJsonExact(text) {
  let out = "";
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (inString) {
      out += ch;
      if (ch === "\\") out += text[++i];
      else if (ch === '"') inString = false;
    } else if (ch === '"') {
      inString = true;
      out += ch;
    } else if (ch >= "0" && ch <= "9") {
      let j = i;
      while (j < text.length && /[0-9]/.test(text[j])) j++;
      const digits = text.slice(i, j);
      out += digits.length >= 16 && !/[.eE]/.test(text[j] ?? "") ? `"__bigint__:${digits}"` : digits;
      i = j - 1;
    } else {
      out += ch;
    }
  }
  return JSON.parse(out, (_k, v) => (typeof v === "string" && v.startsWith("__bigint__:") ? BigInt(v.slice(11)) : v));
}

export const CASES = parseJsonExact(readFileSync(VECTORS_FILE, "utf8"));
export const VALID = CASES.filter((c) => !("error" in c));
export const INVALID = CASES.filter((c) => "error" in c);

const BY_TYPE = new Map(LAYOUTS.map((l) => [l.type, l]));

/** "UtteranceStarted" → "utterance_started"; "samples_sent" → "samplesSent". */
export const snake = (name) => name.replace(/(?<!^)([A-Z])/g, "_$1").toLowerCase();
export const camel = (name) => name.replace(/_([a-z0-9])/g, (_m, c) => c.toUpperCase());

export const fromHex = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));
export const toHex = (bytes) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");

/** A vector's `frame` object (Python names and JSON values) as the JS frame it stands for. */
export function frameFromJson(obj) {
  const type = snake(obj.type);
  const layout = BY_TYPE.get(type);
  if (!layout) throw new Error(`no JS layout for ${obj.type}`);
  const kinds = new Map(layout.fields);
  const frame = { type };
  for (const [key, value] of Object.entries(obj)) {
    if (key === "type") continue;
    const name = camel(key);
    const kind = kinds.get(name);
    if (kind === "pcm" || kind === "bytes16") frame[name] = fromHex(value);
    else if (kind === "big64") frame[name] = BigInt(value);
    else if (kind === "u64") frame[name] = typeof value === "bigint" && value <= Number.MAX_SAFE_INTEGER ? Number(value) : value;
    else if (kind === "marks") frame[name] = value.map((m) => Object.fromEntries(Object.entries(m).map(([k, v]) => [camel(k), v])));
    else if (kind !== undefined || name === layout.flag) frame[name] = value;
    else throw new Error(`${obj.type}.${key} is not a field of the JS layout`);
  }
  return frame;
}

/** A frame by value: typed arrays as hex, integers as strings, so deepStrictEqual compares values. */
export function canonical(value) {
  if (value instanceof Int16Array || value instanceof Uint8Array) return `hex:${toHex(value)}`;
  if (typeof value === "bigint" || typeof value === "number") return `int:${value}`;
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, canonical(value[k])]));
  }
  return value;
}

/** Seeded PRNG (mulberry32): the same cases on every run. */
export function prng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)); // inclusive, hi - lo < 2^32
  return { next, int };
}
