// Reading envelopes off the wire, and the small helpers every layer shares: UTF-8 and
// base64 lengths, the contract's decimal numbers, the clock and fresh ids.

/** UTF-8 length of a string, as the server counts bytes for flow control. */
export function utf8Length(s) {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) { n += 4; i++; } // surrogate pair
    else n += 3;
  }
  return n;
}

export function base64Encode(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

export function base64Decode(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/** Decoded length of base64 text without decoding it. */
export function base64Length(text) {
  const t = text.replace(/[\s=]+$/g, '').replace(/\s+/g, '');
  return Math.floor((t.length * 3) / 4);
}

const DECIMAL = /^[0-9]{1,20}$/;

/** A decimal u64 string of the contract as a JS number (exact up to 2^53). */
export function dec(value) {
  if (typeof value !== 'string' || !DECIMAL.test(value)) return null;
  const n = Number(value);
  return Number.isSafeInteger(n) ? n : null;
}

export function nowMs() {
  return Date.now();
}

let idCounter = 0;
export function randomId(prefix) {
  if (globalThis.crypto && typeof globalThis.crypto.randomUUID === 'function') {
    return `${prefix}-${globalThis.crypto.randomUUID()}`;
  }
  idCounter += 1;
  return `${prefix}-${nowMs().toString(36)}-${idCounter}-${Math.random().toString(36).slice(2, 10)}`;
}

/**
 * Reads an envelope from the wire. Only what this client relies on is checked (the server
 * validated the rest): a JSON object with decimal `seq`, string `type`, `channel`,
 * `session` and an object payload. Returns null for anything else.
 */
export function parseEnvelope(text) {
  let env;
  try {
    env = JSON.parse(text);
  } catch {
    return null;
  }
  if (!env || typeof env !== 'object' || Array.isArray(env)) return null;
  if (dec(env.seq) === null || typeof env.type !== 'string' || typeof env.channel !== 'string') {
    return null;
  }
  if (typeof env.session !== 'string') return null;
  if (!env.payload || typeof env.payload !== 'object' || Array.isArray(env.payload)) return null;
  if (env.ack !== undefined && env.ack !== null && dec(env.ack) === null) return null;
  return env;
}
