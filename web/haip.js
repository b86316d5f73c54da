// haip.js: a dependency-free HAIP 1.1.2 client for browsers, bundlers and Node 20+ (where
// Node has no WebSocket or EventSource of its own, pass them in the options, or install the
// `ws` / `eventsource` packages; HTTP streaming needs nothing).
//
// One ES module, no build step. It speaks the wire contract of haip-rs (HAIP-WIRE.md) over
// WebSocket, Server-Sent Events (+ POST /haip/messages upstream) and HTTP streaming (fetch +
// ReadableStream, + the same POST upstream), and follows the rules of the Rust client SDK
// (crates/haip-client): the same reconnect defaults, topic patterns, URL conversion, and the
// same session logic, so that nothing is lost or duplicated across reconnects.
//
//   import { HaipClient } from '/haip.js';
//   const client = new HaipClient({ url: location.origin, token, transports: ['websocket'] });
//   client.onStatus((s) => console.log(s.state));
//   client.subscribe('agent.message_part', (m) => console.log(m.payload.text));
//   await client.connect();
//   client.sendText('hello world');
//
// The module is split in layers, each testable on its own:
//   - pure helpers: ReconnectPolicy, topic patterns, URLs, flow-control credit, Sequencer;
//   - ClientSession: the client side of one session with no I/O (a port of the Rust
//     crates/haip-client/src/session.rs): numbering, acks, resends, ordering, credit;
//   - links: one open connection per transport, which only moves frames;
//   - HaipClient: connects, reconnects with backoff, resumes, and offers the application API.

export const HAIP_VERSION = '1.1.2';
export const HAIP_MAJOR = 1;

/** The 22 event types of HAIP 1.1.2. */
export const EVENT_TYPES = Object.freeze([
  'HAI', 'RUN_STARTED', 'RUN_FINISHED', 'RUN_CANCEL', 'RUN_ERROR', 'PING', 'PONG',
  'REPLAY_REQUEST', 'MESSAGE_START', 'MESSAGE_PART', 'MESSAGE_END', 'AUDIO_CHUNK',
  'TOOL_CALL', 'TOOL_UPDATE', 'TOOL_DONE', 'TOOL_CANCEL', 'TOOL_LIST', 'TOOL_SCHEMA',
  'ERROR', 'FLOW_UPDATE', 'PAUSE_CHANNEL', 'RESUME_CHANNEL',
]);

export const Channel = Object.freeze({
  USER: 'USER', AGENT: 'AGENT', SYSTEM: 'SYSTEM', AUDIO_IN: 'AUDIO_IN', AUDIO_OUT: 'AUDIO_OUT',
});

export const Transport = Object.freeze({
  WEBSOCKET: 'websocket', SSE: 'sse', HTTP_STREAM: 'stream',
});

const TRANSPORTS = [Transport.WEBSOCKET, Transport.SSE, Transport.HTTP_STREAM];

/** The server's default paths (contract section 4). */
export const DEFAULT_PATHS = Object.freeze({
  websocket: '/haip/websocket',
  sse: '/haip/sse',
  stream: '/haip/stream',
  messages: '/haip/messages',
});

/** A gap in the server's numbering is asked for after this long (contract section 5). */
export const GAP_TIMEOUT_MS = 500;
/**
 * Small amounts of consumed credit are handed back after this long, in one FLOW_UPDATE.
 * The Rust side waits 50 ms; a browser waits longer because on SSE and HTTP streaming each
 * FLOW_UPDATE is an HTTP POST of its own. Credit never runs short for it: half the credit
 * waiting to return is handed back at once.
 */
export const GRANT_DELAY_MS = 1000;
/** Bytes added to each received message's measured size when its credit is handed back. */
const COST_MARGIN = 16;

// ---------------------------------------------------------------------------------------
// Errors

/**
 * Every failure this module reports is a HaipError with a `code`: the contract's error codes
 * (AUTHENTICATION_FAILED, RESUME_FAILED, TOOL_NOT_FOUND, ...) for what the server says, and
 * these for what happens on this side: CONNECTION_LOST, CONNECT_FAILED, TIMEOUT, HTTP_ERROR,
 * QUEUE_FULL, INVALID_PATTERN, INVALID_URL, INVALID_ARGUMENT, CANCELLED, CLOSED.
 */
export class HaipError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = 'HaipError';
    this.code = code;
    /** The ERROR payload's detail, or what the client knows. */
    this.detail = extra.detail;
    /** The HTTP status, for errors answered over HTTP. */
    this.status = extra.status;
    /** The id of the message the server refused (ERROR related_id). */
    this.relatedId = extra.relatedId;
    /** A refusal that retrying will not fix (a bad token, an incompatible version). */
    this.fatal = Boolean(extra.fatal);
  }

  /** The HaipError an ERROR (or RUN_ERROR) envelope carries. */
  static fromEnvelope(env) {
    const p = env.payload || {};
    return new HaipError(String(p.code || 'INTERNAL_ERROR'), String(p.message || p.code || ''), {
      detail: p.detail,
      relatedId: p.related_id,
    });
  }
}

// ---------------------------------------------------------------------------------------
// Reconnect policy (crates/haip-client/src/backoff.rs)

/**
 * Exponential backoff: the delay before attempt n (1-based) is
 * `initialDelay * multiplier^(n-1)`, capped at `maxDelay`; with `jitter` it is drawn
 * uniformly from [0, that], so that many clients dropped at once do not come back in
 * lock-step. `maxAttempts` 0 means never give up. Times in milliseconds.
 */
export class ReconnectPolicy {
  constructor(options = {}) {
    this.maxAttempts = options.maxAttempts ?? 0;
    this.initialDelay = options.initialDelay ?? 1000;
    this.maxDelay = options.maxDelay ?? 30000;
    this.multiplier = options.multiplier ?? 2;
    this.jitter = options.jitter ?? true;
  }

  baseDelay(attempt) {
    const exponent = Math.min(Math.max(attempt - 1, 0), 1024);
    const ms = this.initialDelay * Math.pow(Math.max(this.multiplier, 1), exponent);
    if (!Number.isFinite(ms) || ms >= this.maxDelay) return this.maxDelay;
    return ms;
  }

  /** `unit` is a uniform draw from [0, 1), used only with jitter. */
  delay(attempt, unit = Math.random()) {
    const base = this.baseDelay(attempt);
    return this.jitter ? base * Math.min(Math.max(unit, 0), 1) : base;
  }

  allows(attempt) {
    return this.maxAttempts === 0 || attempt <= this.maxAttempts;
  }
}

// ---------------------------------------------------------------------------------------
// Topics (crates/haip-client/src/topic.rs)

/** The topic of a message: `<channel>.<type>` in lower case (`agent.message_part`). */
export function topicOf(channel, type) {
  return `${channel}.${type}`.toLowerCase();
}

/**
 * A subscription pattern: `*` matches one dot-separated segment, `>` (last segment only)
 * one or more trailing segments; matching ignores case. Throws INVALID_PATTERN.
 */
export class TopicPattern {
  constructor(pattern) {
    const bad = (reason) =>
      new HaipError('INVALID_PATTERN', `invalid topic pattern ${JSON.stringify(pattern)}: ${reason}`);
    if (typeof pattern !== 'string') throw bad('not a string');
    const segments = pattern.split('.').map((s) => s.toLowerCase());
    if (segments.some((s) => s === '')) throw bad('empty segment');
    segments.forEach((s, i) => {
      if (s === '>' && i !== segments.length - 1) throw bad("'>' may only be the last segment");
      if (s.length > 1 && (s.includes('*') || s.includes('>'))) {
        throw bad('wildcards stand alone in a segment');
      }
    });
    this.pattern = pattern;
    this.segments = segments;
  }

  matches(topic) {
    const parts = topic.toLowerCase().split('.');
    let i = 0;
    for (let n = 0; n < this.segments.length; n++) {
      const seg = this.segments[n];
      if (seg === '>') return parts.length > n; // one or more segments left
      if (i >= parts.length) return false;
      if (seg !== '*' && seg !== parts[i]) return false;
      i++;
    }
    return i === parts.length;
  }
}

// ---------------------------------------------------------------------------------------
// URLs (crates/haip-client/src/url.rs)

/**
 * The URL of `transport` on the server `url`: the scheme follows the transport (http <->
 * ws, https <-> wss), a URL with no path gets the transport's default path, and `query`
 * pairs are appended, percent-encoded. Throws INVALID_URL.
 */
export function urlFor(url, transport, query = [], paths = DEFAULT_PATHS) {
  const bad = (reason) => new HaipError('INVALID_URL', `invalid server URL ${JSON.stringify(url)}: ${reason}`);
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/(.*)$/.exec(String(url));
  if (!m) throw bad('no scheme');
  let secure;
  switch (m[1].toLowerCase()) {
    case 'http': case 'ws': secure = false; break;
    case 'https': case 'wss': secure = true; break;
    default: throw bad('the scheme must be http, https, ws or wss');
  }
  let rest = m[2];
  if (rest === '' || rest.startsWith('/')) throw bad('no host');
  const scheme = transport === Transport.WEBSOCKET ? (secure ? 'wss' : 'ws') : (secure ? 'https' : 'http');
  // A bare host (or host/) gets the transport's path, as the CLI's --url does.
  const pathStart = rest.search(/[/?#]/);
  const path = pathStart < 0 ? '' : rest.slice(pathStart).split(/[?#]/)[0];
  if (path === '' || path === '/') {
    const host = pathStart < 0 ? rest : rest.slice(0, pathStart);
    const tail = pathStart < 0 ? '' : rest.slice(pathStart).replace(/^\/?/, '');
    rest = host + (paths[transport] || '') + tail;
  }
  let out = `${scheme}://${rest}`;
  for (const [key, value] of query) {
    out += out.includes('?') ? '&' : '?';
    out += `${encodeURIComponent(key)}=${encodeURIComponent(value)}`;
  }
  return out;
}

/** Whether a URL names a path (beyond `/`). */
function hasPath(url) {
  const rest = String(url).replace(/^[A-Za-z][A-Za-z0-9+.-]*:\/\//, '');
  const i = rest.search(/[/?#]/);
  if (i < 0) return false;
  const path = rest.slice(i).split(/[?#]/)[0];
  return path !== '' && path !== '/';
}

/** `http://h/haip/sse?x` -> `http://h/haip/messages`: the upstream beside a stream path. */
export function siblingUrl(url, leaf) {
  const base = url.split('?')[0];
  const hostStart = base.indexOf('://') < 0 ? 0 : base.indexOf('://') + 3;
  const slash = base.slice(hostStart).lastIndexOf('/');
  if (slash >= 0 && hostStart + slash + 1 < base.length) {
    return `${base.slice(0, hostStart + slash)}/${leaf}`;
  }
  return `${base.replace(/\/+$/, '')}/haip/${leaf}`;
}

// ---------------------------------------------------------------------------------------
// Small helpers

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

function base64Encode(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function base64Decode(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/** Decoded length of base64 text without decoding it. */
function base64Length(text) {
  const t = text.replace(/[\s=]+$/g, '').replace(/\s+/g, '');
  return Math.floor((t.length * 3) / 4);
}

const DECIMAL = /^[0-9]{1,20}$/;

/** A decimal u64 string of the contract as a JS number (exact up to 2^53). */
function dec(value) {
  if (typeof value !== 'string' || !DECIMAL.test(value)) return null;
  const n = Number(value);
  return Number.isSafeInteger(n) ? n : null;
}

function nowMs() {
  return Date.now();
}

let idCounter = 0;
function randomId(prefix) {
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

// ---------------------------------------------------------------------------------------
// Flow control (crates/haip-protocol/src/flow.rs)

const UNLIMITED = Object.freeze({ messages: null, bytes: null });

function creditCovers(c, cost) {
  return (c.messages === null || c.messages >= 1) && (c.bytes === null || c.bytes >= cost);
}

function isExempt(channel) {
  return channel === Channel.SYSTEM; // SYSTEM messages never consume credit (section 6)
}

/**
 * The credit the server grants this client, per channel: a message leaves only when its
 * channel has credit and is not paused; otherwise it is held (never dropped), in order.
 */
export class SendGate {
  constructor(initial = UNLIMITED) {
    this.initial = { ...initial };
    this.channels = new Map();
    this.heldMessages = 0;
  }

  channel(name) {
    let ch = this.channels.get(name);
    if (!ch) {
      ch = { credit: { ...this.initial }, paused: false, held: [] };
      this.channels.set(name, ch);
    }
    return ch;
  }

  /** A new handshake's credit replaces what was left. Returns every held message, in
   *  order and uncharged, for the caller to offer again under the new credit. */
  resetCredit(initial) {
    this.initial = { ...initial };
    const held = [];
    for (const ch of this.channels.values()) {
      ch.credit = { ...initial };
      held.push(...ch.held.map((h) => h.item));
      this.heldMessages -= ch.held.length;
      ch.held = [];
    }
    return held;
  }

  /** Returns `item` when it may leave now, else holds it and returns null. */
  offer(channel, cost, item) {
    if (isExempt(channel)) return item;
    const ch = this.channel(channel);
    if (!ch.paused && ch.held.length === 0 && creditCovers(ch.credit, cost)) {
      spend(ch.credit, cost);
      return item;
    }
    ch.held.push({ cost, item });
    this.heldMessages += 1;
    return null;
  }

  grant(channel, addMessages, addBytes) {
    if (isExempt(channel)) return [];
    const c = this.channel(channel).credit;
    if (c.messages !== null) c.messages += addMessages;
    if (c.bytes !== null) c.bytes += addBytes;
    return this.release(channel);
  }

  pause(channel) {
    if (!isExempt(channel)) this.channel(channel).paused = true;
  }

  resume(channel) {
    const ch = this.channels.get(channel);
    if (!ch) return [];
    ch.paused = false;
    return this.release(channel);
  }

  release(channel) {
    const ch = this.channels.get(channel);
    const out = [];
    while (ch && !ch.paused && ch.held.length > 0 && creditCovers(ch.credit, ch.held[0].cost)) {
      const { cost, item } = ch.held.shift();
      spend(ch.credit, cost);
      this.heldMessages -= 1;
      out.push(item);
    }
    return out;
  }
}

function spend(c, cost) {
  if (c.messages !== null) c.messages -= 1;
  if (c.bytes !== null) c.bytes -= cost;
}

/**
 * The credit this client advertised to the server: what the application has consumed is
 * handed back with FLOW_UPDATE, at once when half the credit is waiting to return, else
 * after GRANT_DELAY_MS so that a trickle of messages costs one FLOW_UPDATE, not one each.
 */
export class ReceiveMeter {
  constructor(advertised) {
    this.advertised = advertised ? { ...advertised } : { ...UNLIMITED };
    this.channels = new Map();
  }

  isUnlimited() {
    return this.advertised.messages === null && this.advertised.bytes === null;
  }

  consumed(channel, cost, now) {
    if (isExempt(channel) || this.isUnlimited()) return null;
    let ch = this.channels.get(channel);
    if (!ch) {
      ch = { messages: 0, bytes: 0, since: null };
      this.channels.set(channel, ch);
    }
    ch.messages += 1;
    ch.bytes += cost;
    if (ch.since === null) ch.since = now;
    const half = (limit, n) => limit !== null && n >= Math.ceil(limit / 2);
    if (!half(this.advertised.messages, ch.messages) && !half(this.advertised.bytes, ch.bytes)) {
      return null;
    }
    return this.handBack(channel, ch);
  }

  flush(now) {
    const grants = [];
    for (const [name, ch] of [...this.channels].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
      if (ch.since !== null && now >= ch.since + GRANT_DELAY_MS) grants.push(this.handBack(name, ch));
    }
    return grants;
  }

  nextFlush() {
    let t = null;
    for (const ch of this.channels.values()) {
      if (ch.since !== null && (t === null || ch.since < t)) t = ch.since;
    }
    return t === null ? null : t + GRANT_DELAY_MS;
  }

  handBack(channel, ch) {
    const grant = { channel, add_messages: Math.max(ch.messages, 1), add_bytes: Math.max(ch.bytes, 1) };
    ch.messages = 0;
    ch.bytes = 0;
    ch.since = null;
    return grant;
  }
}

// ---------------------------------------------------------------------------------------
// Ordering (crates/haip-protocol/src/sequencer.rs)

/**
 * Puts the server's messages in seq order: the first seq seen sets the baseline, a seq at
 * or below the last delivered is a duplicate (dropped), a later one is held until the gap
 * fills; a gap open for GAP_TIMEOUT_MS is reported by pollGap so the client can send
 * REPLAY_REQUEST (again every GAP_TIMEOUT_MS while it stays open).
 */
export class Sequencer {
  constructor(capacity = 1000) {
    this.next = null;
    this.lastDelivered = null;
    this.held = new Map();
    this.capacity = capacity;
    this.gapOpened = null;
    this.lastRequest = null;
  }

  /** Returns {deliver: [items]} | {duplicate: true} | {held: true} | {overflow: true}. */
  accept(seq, item, now) {
    if (this.next === null) this.next = seq;
    if (seq < this.next || this.held.has(seq)) return { duplicate: true };
    if (seq > this.next) {
      if (this.held.size >= this.capacity) return { overflow: true };
      this.held.set(seq, item);
      if (this.gapOpened === null) this.gapOpened = now;
      return { held: true };
    }
    const out = [item];
    let last = seq;
    while (this.held.has(last + 1)) {
      out.push(this.held.get(last + 1));
      this.held.delete(last + 1);
      last += 1;
    }
    this.next = last + 1;
    this.lastDelivered = last;
    this.gapOpened = this.held.size > 0 ? now : null;
    this.lastRequest = null;
    return { deliver: out };
  }

  pollGap(now) {
    if (this.gapOpened === null) return null;
    const since = this.lastRequest ?? this.gapOpened;
    if (now < since + GAP_TIMEOUT_MS) return null;
    const firstHeld = Math.min(...this.held.keys());
    this.lastRequest = now;
    return { from_seq: this.next, to_seq: firstHeld - 1 };
  }

  nextDeadline() {
    if (this.gapOpened === null) return null;
    return (this.lastRequest ?? this.gapOpened) + GAP_TIMEOUT_MS;
  }
}

// ---------------------------------------------------------------------------------------
// The client side of one session, with no I/O (crates/haip-client/src/session.rs)

/** What the peer's HAI obliges us to respect, or null when its major version is not ours. */
function acceptPeerHai(hai) {
  if (!Array.isArray(hai.accept_major) || !hai.accept_major.includes(HAIP_MAJOR)) return null;
  const caps = hai.capabilities && typeof hai.capabilities === 'object' ? hai.capabilities : {};
  const fc = caps.flow_control && typeof caps.flow_control === 'object' ? caps.flow_control : null;
  const num = (v) => (Number.isFinite(v) && v >= 0 ? v : null);
  return {
    credit: fc ? { messages: num(fc.initial_credit_messages), bytes: num(fc.initial_credit_bytes) } : { ...UNLIMITED },
    binaryFrames: caps.binary_frames === true,
    maxConcurrentRuns: num(caps.max_concurrent_runs),
  };
}

/**
 * The session state machine. Its methods take the time and return outputs for the caller
 * to carry out, in order:
 *   {kind: 'write', rec}            write rec.env (and rec.binary) on the connection
 *   {kind: 'deliver', item}         hand item.env to the application
 *   {kind: 'latency', ms}           the server answered our PING after ms
 *   {kind: 'replaced', old, new}    the session could not be resumed: a fresh one replaced it
 * An outgoing record is {env, seq, binary}; an incoming item is {env, cost, binary}.
 */
export class ClientSession {
  constructor(config = {}) {
    this.config = {
      credit: { messages: 1000, bytes: 1024 * 1024 },
      maxPending: 1000,
      maxHeld: 1000,
      binaryFrames: false,
      maxConcurrentRuns: 10,
      ...config,
    };
    this.session = null;
    this.lastSeq = 0;
    this.unacked = []; // sent and not acknowledged: written again after a reconnect
    this.outbox = []; // not sent yet: waiting for a connection and its handshake
    this.gate = new SendGate(UNLIMITED);
    this.meter = new ReceiveMeter(this.config.credit);
    this.inbound = new Sequencer(this.config.maxHeld);
    this.terms = { credit: { ...UNLIMITED }, binaryFrames: false, maxConcurrentRuns: null };
    this.ready = false;
    this.pingInFlight = null;
    this.nextId = 0;
    this.haiSeq = 0;
  }

  /** The highest server seq received in order: the resume point. */
  lastRxSeq() {
    return this.inbound.lastDelivered;
  }

  /**
   * Continues a session another client object had (after a page reload): its id, the last
   * seq it received in order and the last seq it sent. The next connect resumes it.
   */
  restore({ session, lastRxSeq, lastSentSeq }) {
    this.session = session;
    this.lastSeq = Number(lastSentSeq) || 0;
    const rx = Number(lastRxSeq) || 0;
    this.inbound.lastDelivered = rx;
    this.inbound.next = rx + 1;
  }

  /** What `restore` needs, or null before a session exists. */
  snapshot() {
    if (this.session === null) return null;
    return { session: this.session, lastRxSeq: this.lastRxSeq() ?? 0, lastSentSeq: this.lastSeq };
  }

  pending() {
    return this.unacked.length + this.outbox.length + this.gate.heldMessages;
  }

  /** The ids of the messages not yet acknowledged by the server, wherever they wait. */
  pendingIds() {
    const ids = new Set([...this.unacked, ...this.outbox].map((r) => r.env.id));
    for (const ch of this.gate.channels.values()) for (const h of ch.held) ids.add(h.item.env.id);
    return ids;
  }

  freshId(prefix) {
    this.nextId += 1;
    return `${prefix}-${this.nextId}`;
  }

  envelope(channel, type, payload, now, extra = {}) {
    const env = { id: extra.id || this.freshId('msg'), session: '-', seq: '0', ts: String(now), channel, type, payload };
    if (extra.runId) env.run_id = extra.runId;
    if (extra.threadId) env.thread_id = extra.threadId;
    return env;
  }

  /** A new connection is open: the HAI to send first (naming the session to resume). */
  connected(now) {
    this.ready = false;
    const credit = this.meter.advertised;
    const capabilities = {
      binary_frames: Boolean(this.config.binaryFrames),
      max_concurrent_runs: this.config.maxConcurrentRuns,
      signed_envelopes: false,
    };
    if (!this.meter.isUnlimited()) {
      capabilities.flow_control = {};
      if (credit.messages !== null) capabilities.flow_control.initial_credit_messages = credit.messages;
      if (credit.bytes !== null) capabilities.flow_control.initial_credit_bytes = credit.bytes;
    }
    const payload = {
      haip_version: HAIP_VERSION,
      accept_major: [HAIP_MAJOR],
      accept_events: [...EVENT_TYPES],
      capabilities,
    };
    const last = this.lastRxSeq();
    if (this.session !== null && last !== null) payload.last_rx_seq = String(last);
    const env = this.envelope(Channel.SYSTEM, 'HAI', payload, now, { id: this.freshId('handshake') });
    if (this.session !== null) env.session = this.session;
    // The HAI is numbered like any message and kept until acknowledged, so that a gap it
    // leaves (written, then the connection broke) can be filled. A HAI that nothing
    // followed gives its seq to the next one instead: failed attempts use no numbers.
    const back = this.unacked[this.unacked.length - 1];
    if (back && back.seq === this.lastSeq && back.env.type === 'HAI') {
      this.unacked.pop();
      this.lastSeq -= 1;
    }
    this.lastSeq += 1;
    env.seq = String(this.lastSeq);
    this.haiSeq = this.lastSeq;
    const rec = { env, seq: this.lastSeq, binary: null };
    this.unacked.push(rec);
    return rec;
  }

  /** The connection is gone: what was sent and not acknowledged will be sent again. */
  disconnected() {
    this.ready = false;
    this.pingInFlight = null;
  }

  /** Queues an application envelope; returns the outputs. Throws QUEUE_FULL. */
  submit(env, now, binary = null) {
    if (this.pending() >= this.config.maxPending) {
      throw new HaipError('QUEUE_FULL', `${this.pending()} messages are already waiting to be sent or acknowledged`);
    }
    const out = [];
    const rec = { env, seq: 0, binary };
    if (!this.ready) this.outbox.push(rec);
    else this.offer(rec, now, out);
    return out;
  }

  /** The bytes a message costs the server's credit; a little over, never under. */
  cost(rec) {
    const env = { ...rec.env, session: this.session || rec.env.session, seq: '00000000', ts: '0000000000000', ack: '00000000' };
    return utf8Length(JSON.stringify(env)) + (rec.binary ? rec.binary.length : 0);
  }

  offer(rec, now, out) {
    const released = this.gate.offer(rec.env.channel, this.cost(rec), rec);
    if (released) this.writeNew(released, now, out);
  }

  writeNew(rec, now, out) {
    this.lastSeq += 1;
    rec.seq = this.lastSeq;
    rec.env.seq = String(this.lastSeq);
    rec.env.ts = String(now);
    if (this.session !== null) rec.env.session = this.session;
    const last = this.lastRxSeq();
    if (last !== null) rec.env.ack = String(last);
    else delete rec.env.ack;
    this.unacked.push(rec);
    out.push({ kind: 'write', rec });
  }

  /** The server has processed our messages up to `seq` (an `ack`, or a POST's answer). */
  acked(seq) {
    while (this.unacked.length > 0 && this.unacked[0].seq <= seq) this.unacked.shift();
  }

  /** A PING to time the connection. */
  ping(now) {
    const nonce = this.freshId('ping');
    this.pingInFlight = { nonce, at: now };
    return this.submitInternal(this.envelope(Channel.SYSTEM, 'PING', { nonce }, now), now);
  }

  submitInternal(env, now) {
    const out = [];
    const rec = { env, seq: 0, binary: null };
    if (!this.ready) this.outbox.push(rec);
    else this.writeNew(rec, now, out); // SYSTEM: never held by credit
    return out;
  }

  /** One message from the server. */
  received(item, now) {
    const out = [];
    const env = item.env;
    const ack = dec(env.ack);
    if (ack !== null) this.acked(ack);
    const seq = dec(env.seq);
    if (seq === 0) {
      // Outside the session's numbering: the connect-time RESUME_FAILED.
      out.push({ kind: 'deliver', item });
      return out;
    }
    if (env.type === 'HAI' && env.session !== this.session) {
      // A server HAI opens a session's numbering (seq 1); a different session than ours
      // means ours could not be resumed and a fresh one replaced it.
      this.inbound = new Sequencer(this.config.maxHeld);
      if (this.session !== null) {
        out.push({ kind: 'replaced', old: this.session, new: env.session });
        this.session = null;
      }
    }
    const arrival = this.inbound.accept(seq, item, now);
    if (arrival.deliver) {
      for (const ready of arrival.deliver) this.process(ready, now, out);
    }
    return out;
  }

  process(item, now, out) {
    const env = item.env;
    const p = env.payload;
    switch (env.type) {
      case 'HAI': {
        const terms = acceptPeerHai(p);
        if (terms) {
          this.session = env.session;
          // Messages held for credit go back to the front of the outbox, in their order,
          // and leave under the credit this handshake grants.
          this.outbox.unshift(...this.gate.resetCredit(terms.credit));
          this.terms = terms;
          this.onReady(dec(p.last_rx_seq), now, out);
        }
        break;
      }
      case 'PING':
        if (this.ready) {
          const pong = typeof p.nonce === 'string' ? { nonce: p.nonce } : {};
          this.writeNew({ env: this.envelope(Channel.SYSTEM, 'PONG', pong, now), seq: 0, binary: null }, now, out);
        }
        break;
      case 'PONG':
        if (this.pingInFlight && p.nonce === this.pingInFlight.nonce) {
          out.push({ kind: 'latency', ms: Math.max(now - this.pingInFlight.at, 0) });
          this.pingInFlight = null;
        }
        break;
      case 'FLOW_UPDATE':
        if (typeof p.channel === 'string') {
          const m = Number.isFinite(p.add_messages) ? p.add_messages : 0;
          const b = Number.isFinite(p.add_bytes) ? p.add_bytes : 0;
          for (const rec of this.gate.grant(p.channel, m, b)) this.writeNew(rec, now, out);
        }
        break;
      case 'PAUSE_CHANNEL':
        if (typeof p.channel === 'string') this.gate.pause(p.channel);
        break;
      case 'RESUME_CHANNEL':
        if (typeof p.channel === 'string') {
          for (const rec of this.gate.resume(p.channel)) this.writeNew(rec, now, out);
        }
        break;
      case 'REPLAY_REQUEST': {
        const from = dec(p.from_seq);
        const to = dec(p.to_seq) ?? Number.MAX_SAFE_INTEGER;
        if (from !== null) {
          for (const rec of this.unacked) {
            if (rec.seq >= from && rec.seq <= to) out.push({ kind: 'write', rec });
          }
        }
        break;
      }
      default:
        break;
    }
    out.push({ kind: 'deliver', item });
  }

  /** The server's HAI for this connection arrived: resend what it has not seen, then
   *  what waited for the connection. */
  onReady(serverLastRx, now, out) {
    this.ready = true;
    const seen = serverLastRx ?? 0;
    const haiSeq = this.haiSeq;
    const again = this.unacked.filter((r) => r.seq > seen && r.seq !== haiSeq);
    if (serverLastRx === null) {
      // A fresh session: this connection's HAI set its baseline; what was pending for the
      // old session is numbered after it (old HAIs are dropped).
      this.unacked = this.unacked.filter((r) => r.seq === haiSeq);
      for (const rec of again) {
        if (rec.env.type === 'HAI') continue;
        rec.env.session = this.session;
        this.offer(rec, now, out);
      }
    } else {
      for (const rec of again) {
        rec.env.session = this.session;
        out.push({ kind: 'write', rec });
      }
    }
    while (this.outbox.length > 0) this.offer(this.outbox.shift(), now, out);
  }

  /** The application took a message: credit goes back to the server as it consumes. */
  consumed(channel, cost, now) {
    const out = [];
    const grant = this.meter.consumed(channel, cost, now);
    if (grant) this.grant(grant, now, out);
    return out;
  }

  grant(grant, now, out) {
    const env = this.envelope(Channel.SYSTEM, 'FLOW_UPDATE', grant, now);
    const rec = { env, seq: 0, binary: null };
    if (this.ready) this.writeNew(rec, now, out);
    else this.outbox.push(rec); // the server keeps its credit state across connections
  }

  /** Timers: a gap open too long asks for a replay; small credit owed is handed back. */
  poll(now) {
    const out = [];
    if (!this.ready) return out;
    const missing = this.inbound.pollGap(now);
    if (missing) {
      const payload = { from_seq: String(missing.from_seq), to_seq: String(missing.to_seq) };
      this.writeNew({ env: this.envelope(Channel.SYSTEM, 'REPLAY_REQUEST', payload, now), seq: 0, binary: null }, now, out);
    }
    for (const grant of this.meter.flush(now)) this.grant(grant, now, out);
    return out;
  }

  /** When poll() next has work, or null. */
  nextDeadline() {
    const a = this.inbound.nextDeadline();
    const b = this.meter.nextFlush();
    if (a === null) return b;
    if (b === null) return a;
    return Math.min(a, b);
  }
}

// ---------------------------------------------------------------------------------------
// Links: one open connection each, moving frames only. Ordering, resending and
// reconnecting live in ClientSession and HaipClient, once for all transports.

/** The JSON text (and binary frame) of an outgoing record for this transport. */
function serialize(rec, twoFrame) {
  if (!rec.binary) return { text: JSON.stringify(rec.env) };
  if (twoFrame) {
    const env = { ...rec.env, payload: { ...rec.env.payload }, bin_len: rec.binary.length };
    delete env.payload.data;
    if (env.payload.mime) env.bin_mime = env.payload.mime;
    return { text: JSON.stringify(env), binary: rec.binary };
  }
  const env = { ...rec.env, payload: { ...rec.env.payload, data: base64Encode(rec.binary) } };
  delete env.bin_len;
  delete env.bin_mime;
  return { text: JSON.stringify(env) };
}

async function httpError(response, what) {
  let code = 'HTTP_ERROR';
  let message = `${what}: HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.code) {
      code = String(body.error.code);
      message = `${what}: HTTP ${response.status} ${code}: ${body.error.message || ''}`;
    }
  } catch {
    // not JSON: keep the status
  }
  // A refused token does not get better by itself (the client may have a token provider).
  return new HaipError(code, message, { status: response.status, fatal: response.status === 401 });
}

/**
 * The base of every link: frames that arrive before the client attaches are kept, so
 * nothing is missed between "open" and the client's first look.
 */
class BaseLink {
  constructor(transport) {
    this.transport = transport;
    this.ended = false;
    this.early = [];
    this.onframe = null;
    this.onend = null;
    this.endReason = null;
  }

  attach(onframe, onend) {
    this.onframe = onframe;
    this.onend = onend;
    for (const f of this.early.splice(0)) onframe(f);
    if (this.ended) onend(this.endReason);
  }

  frame(data) {
    if (this.ended) return;
    if (this.onframe) this.onframe(data);
    else this.early.push(data);
  }

  end(reason) {
    if (this.ended) return;
    this.ended = true;
    this.endReason = reason;
    this.shutdown();
    if (this.onend) this.onend(reason);
  }

  /** A server envelope went through: the upstream learns the session to post to. */
  saw(_env) {}

  shutdown() {}

  close() {
    this.end(new HaipError('CLOSED', 'closed by the client'));
  }
}

/**
 * The WebSocket or EventSource constructor to use: the one passed in the options, else the
 * runtime's own (browsers, Deno, Node 22+), else the `ws` / `eventsource` package when it
 * is installed (Node 20). None: a fatal UNSUPPORTED error saying what to do.
 */
async function resolveImpl(given, globalName, packageName, what) {
  if (given) return given;
  if (typeof globalThis[globalName] === 'function') return globalThis[globalName];
  try {
    const mod = await import(packageName);
    const impl = mod.default && typeof mod.default === 'function' ? mod.default : mod[globalName];
    if (typeof impl === 'function') return impl;
  } catch (_) {
    // Not installed: say so below.
  }
  throw new HaipError('UNSUPPORTED', `${what} is not available in this runtime: pass { ${globalName} } in the options (e.g. from the '${packageName}' package) or use the 'stream' transport`, { fatal: true });
}

class WebSocketLink extends BaseLink {
  static async open(url, first, timeoutMs, WebSocketImpl) {
    const Impl = await resolveImpl(WebSocketImpl, 'WebSocket', 'ws', 'WebSocket');
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new Impl(url);
      } catch (e) {
        reject(new HaipError('CONNECT_FAILED', `WebSocket: ${e.message}`));
        return;
      }
      ws.binaryType = 'arraybuffer';
      const link = new WebSocketLink(ws);
      const timer = setTimeout(() => {
        ws.close();
        reject(new HaipError('TIMEOUT', `WebSocket: no connection within ${timeoutMs} ms`));
      }, timeoutMs);
      let opened = false;
      ws.onopen = () => {
        opened = true;
        clearTimeout(timer);
        try {
          link.write([first], false);
        } catch (e) {
          reject(e);
          return;
        }
        resolve(link);
      };
      ws.onmessage = (ev) => link.frame(ev.data);
      ws.onclose = (ev) => {
        clearTimeout(timer);
        const reason = ev.reason ? `${ev.code} ${ev.reason}` : `${ev.code}`;
        if (!opened) {
          reject(new HaipError('CONNECT_FAILED', `WebSocket: connection failed (${reason})`));
          return;
        }
        // 1002 (version) is final; 1008 (policy: a bad or expired token) is decided by the
        // client, which knows whether it can get a fresh token.
        link.end(new HaipError('CONNECTION_LOST', `WebSocket closed: ${reason}`, {
          detail: { code: ev.code, reason: ev.reason },
          fatal: ev.code === 1002,
        }));
      };
      ws.onerror = () => {
        // The close event that follows says how it ended.
      };
    });
  }

  constructor(ws) {
    super(Transport.WEBSOCKET);
    this.ws = ws;
  }

  write(recs, twoFrame) {
    if (this.ws.readyState !== 1) throw new HaipError('CONNECTION_LOST', 'WebSocket is not open');
    for (const rec of recs) {
      const { text, binary } = serialize(rec, twoFrame);
      this.ws.send(text);
      if (binary) this.ws.send(binary);
    }
  }

  shutdown() {
    this.ws.onmessage = null;
    this.ws.onclose = null;
    if (this.ws.readyState <= 1) this.ws.close(1000);
  }
}

/**
 * `POST /haip/messages`: the upstream of SSE and of browser HTTP streaming. One POST at a
 * time, so messages arrive in order (the server would reorder them, but only after a
 * 500 ms gap); what is written meanwhile goes in the next POST as one JSON array. Posts
 * wait until a server message named the session, so they reach this connection's session
 * and never an older one.
 */
class Upstream {
  constructor(url, token, link, onAck) {
    this.url = url;
    this.token = token;
    this.link = link;
    this.onAck = onAck;
    this.session = null;
    this.queue = [];
    this.busy = false;
    this.abort = new AbortController();
  }

  setSession(session) {
    this.session = session;
    this.pump();
  }

  push(texts) {
    this.queue.push(...texts);
    this.pump();
  }

  async pump() {
    if (this.busy || this.link.ended || this.session === null || this.queue.length === 0) return;
    this.busy = true;
    const batch = this.queue.splice(0);
    try {
      const headers = { 'Content-Type': 'application/json', 'X-HAIP-Session': this.session };
      if (this.token) headers.Authorization = `Bearer ${this.token}`;
      const response = await fetch(this.url, {
        method: 'POST',
        headers,
        body: `[${batch.join(',')}]`,
        cache: 'no-store',
        signal: this.abort.signal,
      });
      if (!response.ok) {
        this.link.end(await httpError(response, 'POST'));
        return;
      }
      const answer = await response.json().catch(() => ({}));
      const ack = dec(answer && answer.ack);
      if (ack !== null) this.onAck(ack);
    } catch (e) {
      this.link.end(new HaipError('CONNECTION_LOST', `POST failed: ${e && e.message ? e.message : e}`));
      return;
    } finally {
      this.busy = false;
    }
    this.pump();
  }

  stop() {
    this.abort.abort();
  }
}

class SseLink extends BaseLink {
  static async open(url, postUrl, token, first, timeoutMs, onAck, EventSourceImpl) {
    const Impl = await resolveImpl(EventSourceImpl, 'EventSource', 'eventsource', 'EventSource');
    return new Promise((resolve, reject) => {
      let es;
      try {
        es = new Impl(url);
      } catch (e) {
        reject(new HaipError('CONNECT_FAILED', `SSE: ${e.message}`));
        return;
      }
      const link = new SseLink(es, postUrl, token, onAck);
      link.upstream.push([serialize(first, false).text]);
      let opened = false;
      const timer = setTimeout(() => {
        es.close();
        reject(new HaipError('TIMEOUT', `SSE: no connection within ${timeoutMs} ms`));
      }, timeoutMs);
      es.onopen = () => {
        opened = true;
        clearTimeout(timer);
        resolve(link);
      };
      // Every event comes without an `event:` field, so onmessage gets them all.
      es.onmessage = (ev) => link.frame(ev.data);
      es.onerror = () => {
        // EventSource would reconnect by itself with Last-Event-ID; this client reconnects
        // with its own backoff and status instead, so the stream is closed here.
        es.close();
        if (opened) {
          link.end(new HaipError('CONNECTION_LOST', 'SSE stream ended'));
          return;
        }
        clearTimeout(timer);
        // EventSource hides the HTTP status: ask the upstream whether the token is good.
        probeToken(postUrl, token).then(reject);
      };
    });
  }

  constructor(es, postUrl, token, onAck) {
    super(Transport.SSE);
    this.es = es;
    this.upstream = new Upstream(postUrl, token, this, onAck);
  }

  saw(env) {
    if (dec(env.seq) > 0 && env.session !== this.upstream.session) this.upstream.setSession(env.session);
  }

  write(recs) {
    this.upstream.push(recs.map((r) => serialize(r, false).text));
  }

  shutdown() {
    this.es.onmessage = null;
    this.es.onerror = null;
    this.es.close();
    this.upstream.stop();
  }
}

/** Why an SSE stream did not open: a 401 from the upstream means the token. */
async function probeToken(postUrl, token) {
  try {
    const headers = { 'Content-Type': 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(postUrl, { method: 'POST', headers, body: '[]', cache: 'no-store' });
    if (response.status === 401) return httpError(response, 'SSE');
  } catch {
    // the server is not reachable at all
  }
  return new HaipError('CONNECT_FAILED', 'SSE: the stream did not open');
}

class StreamLink extends BaseLink {
  /** The request body is the HAI line alone: browsers cannot stream request bodies, so
   *  later messages go with POST /haip/messages. */
  static async open(url, postUrl, token, first, timeoutMs, onAck) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), timeoutMs);
    let response;
    try {
      const headers = { 'Content-Type': 'application/x-ndjson', Accept: 'application/x-ndjson' };
      if (token) headers.Authorization = `Bearer ${token}`;
      response = await fetch(url, {
        method: 'POST',
        headers,
        body: `${serialize(first, false).text}\n`,
        cache: 'no-store',
        signal: abort.signal,
      });
    } catch (e) {
      clearTimeout(timer);
      if (abort.signal.aborted) throw new HaipError('TIMEOUT', `HTTP stream: no answer within ${timeoutMs} ms`);
      throw new HaipError('CONNECT_FAILED', `HTTP stream: ${e && e.message ? e.message : e}`);
    }
    clearTimeout(timer);
    if (!response.ok) throw await httpError(response, 'HTTP stream');
    if (!response.body) throw new HaipError('CONNECT_FAILED', 'HTTP stream: this browser cannot read a response as a stream');
    const link = new StreamLink(abort, postUrl, token, onAck);
    link.read(response.body.getReader());
    return link;
  }

  constructor(abort, postUrl, token, onAck) {
    super(Transport.HTTP_STREAM);
    this.abort = abort;
    this.upstream = new Upstream(postUrl, token, this, onAck);
  }

  async read(reader) {
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + 1);
          if (line.trim() !== '') this.frame(line);
        }
      }
      this.end(new HaipError('CONNECTION_LOST', 'HTTP stream ended'));
    } catch (e) {
      this.end(new HaipError('CONNECTION_LOST', `HTTP stream: ${e && e.message ? e.message : e}`));
    }
  }

  saw(env) {
    if (dec(env.seq) > 0 && env.session !== this.upstream.session) this.upstream.setSession(env.session);
  }

  write(recs) {
    this.upstream.push(recs.map((r) => serialize(r, false).text));
  }

  shutdown() {
    this.abort.abort();
    this.upstream.stop();
  }
}

// ---------------------------------------------------------------------------------------
// The client

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new HaipError('TIMEOUT', `${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * A connection to one HAIP server that survives network failures.
 *
 * Options (all optional but the token or tokenProvider):
 *   url            server URL; a bare origin gets each transport's path (default: the
 *                  page's origin)
 *   token          the JWT; tokenProvider: async () => token, asked before each connect
 *   transports     ['websocket'] by default; tried in order when one cannot connect
 *   paths          {websocket, sse, stream, messages} when the server moved them
 *   reconnect      {maxAttempts: 0, initialDelay: 1000, maxDelay: 30000, multiplier: 2,
 *                  jitter: true}
 *   timeout        ms for connecting and for request/answer calls (10000)
 *   credit         {messages: 1000, bytes: 1048576} the server may send ahead, per
 *                  channel; null for unlimited
 *   maxPending     messages waiting to be sent or acknowledged before send refuses (1000)
 *   pingInterval   ms between our PINGs (latency, and keeps idle streams alive) (15000)
 *   binaryFrames   take AUDIO_CHUNK as two frames on WebSocket (true)
 *   WebSocket      the WebSocket constructor, where the runtime has none (Node 20: the
 *                  `ws` package's, picked up on its own when installed)
 *   EventSource    the EventSource constructor, likewise (the `eventsource` package)
 *   resume         {session, lastRxSeq, lastSentSeq} from resumeState() of an earlier
 *                  client (a page before its reload): continue that session
 */
export class HaipClient {
  constructor(options = {}) {
    const origin = globalThis.location && globalThis.location.origin;
    this.options = {
      url: options.url || origin || 'http://127.0.0.1:8080',
      token: options.token ?? null,
      tokenProvider: options.tokenProvider ?? null,
      transports: options.transports || (options.transport ? [options.transport] : [Transport.WEBSOCKET]),
      paths: { ...DEFAULT_PATHS, ...(options.paths || {}) },
      timeout: options.timeout ?? 10000,
      pingInterval: options.pingInterval ?? 15000,
      WebSocket: options.WebSocket ?? null,
      EventSource: options.EventSource ?? null,
    };
    for (const t of this.options.transports) {
      if (!TRANSPORTS.includes(t)) throw new HaipError('INVALID_ARGUMENT', `unknown transport ${JSON.stringify(t)}`);
    }
    this.policy = new ReconnectPolicy(options.reconnect || {});
    this.session = new ClientSession({
      credit: options.credit === null ? { ...UNLIMITED } : { messages: 1000, bytes: 1024 * 1024, ...(options.credit || {}) },
      maxPending: options.maxPending ?? 1000,
      binaryFrames: options.binaryFrames ?? true,
    });
    if (options.resume && options.resume.session) this.session.restore(options.resume);
    this._status = { state: 'disconnected' };
    this._statusListeners = new Set();
    this._errorListeners = new Set();
    this._traceListeners = new Set();
    this._subscriptions = [];
    this._gen = 0; // bumped by close(): every async step of an older run stops
    this._running = false;
    this._link = null;
    this._wake = null;
    this._pollTimer = null;
    this._pingTimer = null;
    this._pendingBinary = null;
    this._authError = null;
    this._calls = new Map(); // call_id -> {resolve, reject, onUpdate, id}
    this._requests = new Set(); // {match(env), fail(env), resolve, reject}
    this._runs = new Set();
    this._online = () => this.reconnectNow();
    /** The tools of the server's last TOOL_LIST. */
    this.tools = [];
    /** The last PING round trip in ms. */
    this.latencyMs = null;
  }

  // --- state -------------------------------------------------------------------------

  /** {state: 'disconnected' | 'connecting' | 'connected' | 'reconnecting' | 'error', ...} */
  get status() {
    return this._status;
  }

  /** The server's session id, once known. */
  get sessionId() {
    return this.session.session;
  }

  /**
   * Where this client stands in its session ({session, lastRxSeq, lastSentSeq}), to keep
   * (e.g. in localStorage) and pass back as the `resume` option after a page reload: the
   * new client then resumes the session and gets what it missed. Null before connecting.
   */
  resumeState() {
    return this.session.snapshot();
  }

  /** The transport of the open connection, or null. */
  get transport() {
    return this._link ? this._link.transport : null;
  }

  /** Runs the server has started and not finished (RUN_STARTED without RUN_FINISHED). */
  get openRuns() {
    return [...this._runs];
  }

  /** Calls fn(status) now and on every change; returns a function that stops it. */
  onStatus(fn) {
    this._statusListeners.add(fn);
    fn(this._status);
    return () => this._statusListeners.delete(fn);
  }

  /** Calls fn(HaipError) for every ERROR the server sends and every local problem. */
  onError(fn) {
    this._errorListeners.add(fn);
    return () => this._errorListeners.delete(fn);
  }

  /** Calls fn(direction, envelope) for every message written ('out') or delivered ('in'). */
  onTrace(fn) {
    this._traceListeners.add(fn);
    return () => this._traceListeners.delete(fn);
  }

  /**
   * Calls fn(message, meta) for every server message whose topic (`agent.message_part`)
   * matches `pattern` (`agent.*`, `*.tool_done`, `agent.>`), in seq order, each once.
   * meta: {topic, transport, receivedAt, binary (Uint8Array, AUDIO_CHUNK only)}.
   * Returns a function that ends the subscription. Throws INVALID_PATTERN.
   */
  subscribe(pattern, fn) {
    const sub = { pattern: new TopicPattern(pattern), fn };
    this._subscriptions.push(sub);
    return () => {
      this._subscriptions = this._subscriptions.filter((s) => s !== sub);
    };
  }

  // --- connecting --------------------------------------------------------------------

  /**
   * Starts connecting (and reconnecting, until close()). Resolves once connected; rejects
   * with the HaipError that stopped it (a refused token, attempts exhausted) or CLOSED.
   * After close(), connect() again resumes the same session.
   */
  connect() {
    if (!this._running) {
      this._running = true;
      // A browser that gets its network back need not wait for the end of a countdown.
      if (typeof globalThis.addEventListener === 'function') globalThis.addEventListener('online', this._online);
      this._run(++this._gen); // sets the status to connecting before its first await
    }
    return this._whenConnected();
  }

  /** Stops for good (until connect()). Queued messages stay queued for the next connect. */
  close() {
    this._stopRunning();
    this._stopLink();
    if (this._wake) this._wake();
    this._setStatus({ state: 'disconnected' });
  }

  /** While waiting to reconnect: try now instead of at the end of the countdown. */
  reconnectNow() {
    if (this._wake) this._wake();
  }

  /** The transports the next connection tries, in order (the open one is kept). */
  setTransports(transports) {
    for (const t of transports) {
      if (!TRANSPORTS.includes(t)) throw new HaipError('INVALID_ARGUMENT', `unknown transport ${JSON.stringify(t)}`);
    }
    this.options.transports = [...transports];
  }

  _whenConnected() {
    return new Promise((resolve, reject) => {
      const stop = this.onStatus((s) => {
        if (s.state === 'connected') resolve(s);
        else if (s.state === 'error') reject(s.error);
        else if (s.state === 'disconnected' && !this._running) reject(new HaipError('CLOSED', 'closed by the client'));
        else return;
        queueMicrotask(() => stop());
      });
    });
  }

  _setStatus(status) {
    const prev = this._status;
    if (prev.state === status.state && prev.attempt === status.attempt && prev.delay === status.delay &&
        prev.transport === status.transport && prev.session === status.session) {
      return;
    }
    this._status = Object.freeze({ ...status });
    for (const fn of [...this._statusListeners]) {
      try {
        fn(this._status);
      } catch (e) {
        console.error('haip: status listener failed', e);
      }
    }
  }

  _report(error) {
    for (const fn of [...this._errorListeners]) {
      try {
        fn(error);
      } catch (e) {
        console.error('haip: error listener failed', e);
      }
    }
  }

  /** Connect, serve, wait, reconnect: the life of the client until close(). */
  async _run(gen) {
    let attempt = 0;
    let lastError = null;
    while (this._gen === gen) {
      this._setStatus(attempt === 0
        ? { state: 'connecting' }
        : { state: 'reconnecting', attempt, delay: 0, retryAt: nowMs() });
      let error;
      try {
        const link = await this._open(gen);
        if (this._gen !== gen) {
          link.close();
          return;
        }
        attempt = 0;
        error = await this._serve(link, gen);
      } catch (e) {
        error = e instanceof HaipError ? e : new HaipError('CONNECT_FAILED', String(e && e.message ? e.message : e));
      }
      if (this._gen !== gen) return;
      this.session.disconnected();
      this._flushOutputs([]); // stop timers of the old connection
      lastError = error;
      // A refused token does not get better, unless a provider can give a fresh one.
      const fatal = error.fatal && !(error.code === 'AUTHENTICATION_FAILED' && this.options.tokenProvider);
      if (fatal) {
        this._fail(error);
        return;
      }
      this._report(error);
      attempt += 1;
      if (!this.policy.allows(attempt)) {
        this._fail(lastError);
        return;
      }
      const delay = this.policy.delay(attempt, Math.random());
      this._setStatus({ state: 'reconnecting', attempt, delay, retryAt: nowMs() + delay, error: lastError });
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, delay);
        this._wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this._wake = null;
    }
  }

  _stopRunning() {
    this._gen += 1;
    this._running = false;
    if (typeof globalThis.removeEventListener === 'function') globalThis.removeEventListener('online', this._online);
  }

  _fail(error) {
    this._stopRunning();
    this._setStatus({ state: 'error', error });
    this._report(error);
  }

  /** Opens a link on the first transport that answers. */
  async _open(gen) {
    const token = this.options.tokenProvider ? await this.options.tokenProvider() : this.options.token;
    if (this._gen !== gen) throw new HaipError('CLOSED', 'closed by the client');
    const query = [];
    if (this.session.session !== null) {
      // Resume at connect time, on every transport: the server replays what we missed.
      query.push(['session', this.session.session], ['last_rx_seq', String(this.session.lastRxSeq() ?? 0)]);
    }
    const onAck = (seq) => this.session.acked(seq);
    let last = new HaipError('CONNECT_FAILED', 'no transport configured');
    for (const transport of this.options.transports) {
      const hai = this.session.connected(nowMs());
      const { paths, timeout, url } = this.options;
      try {
        this._authError = null;
        this._pendingBinary = null;
        if (transport === Transport.WEBSOCKET) {
          // Browsers cannot set headers on a WebSocket: the token goes in the URL.
          const q = token ? [['token', token], ...query] : query;
          const link = await WebSocketLink.open(urlFor(url, transport, q, paths), hai, timeout, this.options.WebSocket);
          this._trace('out', hai.env);
          return link;
        }
        // EventSource cannot send headers either; fetch can, so HTTP streaming keeps the
        // token out of the URL (and out of server logs).
        const streamUrl = urlFor(url, transport, transport === Transport.SSE && token ? [['token', token], ...query] : query, paths);
        // The upstream: the configured path for a bare origin, else beside the stream path.
        const postUrl = hasPath(url)
          ? siblingUrl(streamUrl, 'messages')
          : urlFor(url, Transport.SSE, [], { ...paths, sse: paths.messages });
        const link = transport === Transport.SSE
          ? await SseLink.open(streamUrl, postUrl, token, hai, timeout, onAck, this.options.EventSource)
          : await StreamLink.open(streamUrl, postUrl, token, hai, timeout, onAck);
        this._trace('out', hai.env);
        return link;
      } catch (e) {
        last = e instanceof HaipError ? e : new HaipError('CONNECT_FAILED', String(e && e.message ? e.message : e));
        if (last.fatal || this._gen !== gen) break;
      }
    }
    throw last;
  }

  /** Runs one open link until it ends; resolves with why it ended. */
  _serve(link, gen) {
    this._link = link;
    return new Promise((resolve) => {
      const handshake = setTimeout(() => {
        if (!this.session.ready) link.end(new HaipError('TIMEOUT', `no handshake within ${this.options.timeout} ms`));
      }, this.options.timeout);
      this._pingTimer = setInterval(() => {
        if (this.session.ready && this._link === link) this._flushOutputs(this.session.ping(nowMs()));
      }, this.options.pingInterval);
      link.attach(
        (data) => {
          if (this._gen === gen && this._link === link) this._onFrame(data, link);
        },
        (reason) => {
          clearTimeout(handshake);
          clearInterval(this._pingTimer);
          this._pingTimer = null;
          if (this._link === link) this._link = null;
          if (this._authError) reason = this._authError;
          resolve(reason);
        },
      );
    });
  }

  _stopLink() {
    const link = this._link;
    this._link = null;
    if (link) link.close();
  }

  // --- receiving ---------------------------------------------------------------------

  _onFrame(data, link) {
    const now = nowMs();
    if (typeof data !== 'string') {
      // The second frame of a two-frame message (WebSocket).
      const pending = this._pendingBinary;
      this._pendingBinary = null;
      const bytes = new Uint8Array(data);
      if (!pending || pending.env.bin_len !== bytes.length) {
        this._report(new HaipError('BINARY_FRAME_ERROR', pending
          ? `binary frame of ${bytes.length} bytes, bin_len announced ${pending.env.bin_len}`
          : 'binary frame without an envelope announcing it'));
        return;
      }
      this._received({ env: pending.env, cost: pending.cost + bytes.length, binary: bytes }, link, now);
      return;
    }
    const env = parseEnvelope(data);
    if (!env) {
      // A malformed message from the server is reported, never fatal.
      this._report(new HaipError('PROTOCOL_VIOLATION', `malformed message from the server: ${data.slice(0, 200)}`));
      return;
    }
    const cost = utf8Length(data);
    if (Number.isInteger(env.bin_len) && link.transport === Transport.WEBSOCKET) {
      this._pendingBinary = { env, cost };
      return;
    }
    let binary = null;
    let extra = 0;
    if (env.type === 'AUDIO_CHUNK' && typeof env.payload.data === 'string') {
      try {
        binary = base64Decode(env.payload.data);
      } catch {
        binary = null;
      }
      extra = base64Length(env.payload.data);
    }
    this._received({ env, cost: cost + extra, binary }, link, now);
  }

  _received(item, link, now) {
    link.saw(item.env);
    if (item.env.type === 'ERROR' && item.env.payload.code === 'AUTHENTICATION_FAILED') {
      // The server closes right after: the close is reported as this.
      this._authError = HaipError.fromEnvelope(item.env);
      this._authError.fatal = true;
    }
    if (item.env.type === 'ERROR' && item.env.payload.code === 'VERSION_INCOMPATIBLE') {
      this._authError = HaipError.fromEnvelope(item.env);
      this._authError.fatal = true;
    }
    this._flushOutputs(this.session.received(item, now));
  }

  /** Carries out the session's outputs, then re-arms the timer. The writes go first:
   *  the session numbered them before anything that delivering may send (credit grants,
   *  a subscriber's answer), and the server should see seqs in order. */
  _flushOutputs(outputs) {
    this._write(outputs.filter((o) => o.kind === 'write').map((o) => o.rec));
    for (const out of outputs) {
      if (out.kind === 'deliver') this._deliver(out.item);
      else if (out.kind === 'latency') this.latencyMs = out.ms;
      else if (out.kind === 'replaced') this._replaced();
    }
    this._arm();
  }

  /** Our session could not be resumed (the server said RESUME_FAILED, reported as an
   *  ERROR) and a fresh one replaced it: its runs are gone, and so are the tool calls the
   *  old session had already received (those it had not are sent again to the new one). */
  _replaced() {
    this._runs.clear();
    const waiting = this.session.pendingIds();
    for (const [callId, call] of this._calls) {
      if (!waiting.has(call.id)) {
        this._calls.delete(callId);
        call.reject(new HaipError('RESUME_FAILED', `tool call ${callId} was lost with its session`));
      }
    }
  }

  _write(recs) {
    const link = this._link;
    if (recs.length === 0 || !link) return;
    for (const rec of recs) this._trace('out', rec.env);
    try {
      link.write(recs, this.session.terms.binaryFrames);
    } catch (e) {
      link.end(e instanceof HaipError ? e : new HaipError('CONNECTION_LOST', String(e)));
    }
  }

  _arm() {
    clearTimeout(this._pollTimer);
    this._pollTimer = null;
    if (!this._link) return;
    const at = this.session.nextDeadline();
    if (at === null) return;
    this._pollTimer = setTimeout(() => {
      this._pollTimer = null;
      this._flushOutputs(this.session.poll(nowMs()));
    }, Math.max(at - nowMs(), 0));
  }

  _trace(direction, env) {
    for (const fn of this._traceListeners) {
      try {
        fn(direction, env);
      } catch (e) {
        console.error('haip: trace listener failed', e);
      }
    }
  }

  _deliver(item) {
    const env = item.env;
    this._trace('in', env);
    this._track(env);
    const topic = topicOf(env.channel, env.type);
    const meta = { topic, transport: this.transport, receivedAt: nowMs(), binary: item.binary || undefined };
    for (const sub of [...this._subscriptions]) {
      if (!sub.pattern.matches(topic)) continue;
      try {
        sub.fn(env, meta);
      } catch (e) {
        console.error('haip: subscriber failed', e);
      }
    }
    // Delivered: the credit it used goes back to the server. The server charges its own
    // estimate of a message's size (its JSON before seq, ts and ack are set, plus a fixed
    // margin), which can be a few bytes over what arrives; handing back a little more than
    // measured keeps a long session from slowly draining the byte credit.
    this._flushOutputs(this.session.consumed(env.channel, item.cost + COST_MARGIN, nowMs()));
  }

  /** Bookkeeping of what the client itself waits for: runs, tool calls, requests. */
  _track(env) {
    const p = env.payload;
    switch (env.type) {
      case 'HAI':
        this._setStatus({ state: 'connected', transport: this.transport, session: env.session });
        break;
      case 'RUN_STARTED': {
        const id = p.run_id || env.run_id;
        if (id) this._runs.add(id);
        break;
      }
      case 'RUN_FINISHED':
      case 'RUN_ERROR':
        this._runs.delete(p.run_id || env.run_id);
        break;
      case 'TOOL_LIST':
        if (Array.isArray(p.tools) && p.tools.length > 0) this.tools = p.tools;
        break;
      case 'TOOL_UPDATE': {
        const call = this._calls.get(p.call_id);
        if (call && call.onUpdate) {
          try {
            call.onUpdate(p, env);
          } catch (e) {
            console.error('haip: onUpdate failed', e);
          }
        }
        break;
      }
      case 'TOOL_DONE': {
        const call = this._calls.get(p.call_id);
        if (!call) break;
        this._calls.delete(p.call_id);
        const status = p.status || 'OK';
        if (status === 'OK') call.resolve(p.result);
        else if (status === 'CANCELLED') call.reject(new HaipError('CANCELLED', `tool call ${p.call_id} was cancelled`));
        else {
          const r = p.result && typeof p.result === 'object' ? p.result : {};
          call.reject(new HaipError(String(r.code || 'TOOL_EXECUTION_ERROR'), String(r.message || 'tool failed'), { detail: p.result }));
        }
        break;
      }
      case 'ERROR':
      case 'RUN_ERROR': {
        const error = HaipError.fromEnvelope(env);
        for (const [callId, call] of this._calls) {
          const d = p.detail && typeof p.detail === 'object' ? p.detail : {};
          if (p.related_id === call.id || d.call_id === callId) {
            this._calls.delete(callId);
            call.reject(error);
          }
        }
        this._report(error);
        break;
      }
      default:
        break;
    }
    for (const req of [...this._requests]) {
      if (req.match(env)) {
        this._requests.delete(req);
        req.resolve(env);
      } else if (env.type === 'ERROR' && env.payload.related_id === req.id) {
        this._requests.delete(req);
        req.reject(HaipError.fromEnvelope(env));
      }
    }
  }

  // --- sending -----------------------------------------------------------------------

  /**
   * Sends one message. It is written at once when connected and the server's credit
   * allows, else queued, and never dropped while the client lives: it is sent again after
   * a reconnect until the server acknowledges it. Returns the envelope id.
   * opts: {runId, threadId, binary (Uint8Array, AUDIO_CHUNK: two frames on WebSocket)}.
   * Throws QUEUE_FULL when maxPending messages already wait.
   */
  send(channel, type, payload = {}, opts = {}) {
    if (!EVENT_TYPES.includes(type)) throw new HaipError('INVALID_ARGUMENT', `unknown event type ${JSON.stringify(type)}`);
    if (typeof channel !== 'string' || !/^[A-Za-z0-9_-]{1,128}$/.test(channel)) {
      throw new HaipError('INVALID_ARGUMENT', `invalid channel ${JSON.stringify(channel)}`);
    }
    const now = nowMs();
    const env = this.session.envelope(channel, type, payload, now, opts);
    this._flushOutputs(this.session.submit(env, now, opts.binary || null));
    return env.id;
  }

  /** Sends a whole text message on USER (MESSAGE_START, MESSAGE_PART, MESSAGE_END);
   *  returns its message_id. */
  sendText(text, opts = {}) {
    if (typeof text !== 'string') throw new HaipError('INVALID_ARGUMENT', 'text must be a string');
    if (this.session.pending() + 3 > this.session.config.maxPending) {
      throw new HaipError('QUEUE_FULL', 'too many messages are waiting to be sent or acknowledged');
    }
    const messageId = opts.messageId || randomId('text');
    const o = { threadId: opts.threadId, runId: opts.runId };
    this.send(Channel.USER, 'MESSAGE_START', { message_id: messageId, author: 'user' }, o);
    this.send(Channel.USER, 'MESSAGE_PART', { message_id: messageId, text }, o);
    this.send(Channel.USER, 'MESSAGE_END', { message_id: messageId }, o);
    return messageId;
  }

  /** Sends audio bytes as AUDIO_CHUNK (two frames on WebSocket, base64 elsewhere);
   *  returns the message_id. */
  sendAudio(bytes, mime, opts = {}) {
    if (!(bytes instanceof Uint8Array)) throw new HaipError('INVALID_ARGUMENT', 'bytes must be a Uint8Array');
    const messageId = opts.messageId || randomId('audio');
    const payload = { message_id: messageId, mime: String(mime) };
    if (opts.durationMs !== undefined) payload.duration_ms = String(opts.durationMs);
    this.send(opts.channel || Channel.USER, 'AUDIO_CHUNK', payload, { ...opts, binary: bytes });
    return messageId;
  }

  /**
   * Calls a server tool (TOOL_CALL). Resolves with TOOL_DONE's result; rejects with a
   * HaipError: TOOL_NOT_FOUND, TOOL_EXECUTION_ERROR (bad params, the tool failed),
   * CANCELLED (opts.signal aborted: TOOL_CANCEL is sent), TIMEOUT (opts.timeout ms).
   * opts.onUpdate(payload) sees each TOOL_UPDATE {status, progress, partial}.
   * The returned promise carries the call's id as `.callId`.
   */
  callTool(tool, params = {}, opts = {}) {
    const callId = opts.callId || randomId('call');
    let id;
    const promise = new Promise((resolve, reject) => {
      const call = { resolve, reject, onUpdate: opts.onUpdate, id: null };
      this._calls.set(callId, call);
      try {
        id = this.send(Channel.USER, 'TOOL_CALL', { call_id: callId, tool, params }, { runId: opts.runId });
        call.id = id;
      } catch (e) {
        this._calls.delete(callId);
        reject(e);
        return;
      }
      if (opts.signal) {
        const onAbort = () => {
          if (this._calls.has(callId)) this.cancelTool(callId, 'aborted');
        };
        if (opts.signal.aborted) onAbort();
        else opts.signal.addEventListener('abort', onAbort, { once: true });
      }
    });
    const result = opts.timeout
      ? withTimeout(promise, opts.timeout, `tool ${tool}`).finally(() => this._calls.delete(callId))
      : promise;
    return Object.assign(result, { callId });
  }

  /** Asks the server to stop a tool call (TOOL_CANCEL); its TOOL_DONE says CANCELLED. */
  cancelTool(callId, reason) {
    const payload = { call_id: callId };
    if (reason) payload.reason = String(reason);
    // On SYSTEM: a cancel must get through even when USER is out of credit or paused.
    return this.send(Channel.SYSTEM, 'TOOL_CANCEL', payload);
  }

  /** Stops a run's output (RUN_CANCEL); the server answers RUN_FINISHED {CANCELLED}. */
  cancelRun(runId) {
    if (typeof runId !== 'string' || runId === '') throw new HaipError('INVALID_ARGUMENT', 'cancelRun needs a run id');
    return this.send(Channel.SYSTEM, 'RUN_CANCEL', { run_id: runId }, { runId });
  }

  /** Asks for the server's tools (TOOL_LIST); resolves with [{name, description}]. */
  listTools() {
    return this._request(
      (env) => env.type === 'TOOL_LIST',
      () => this.send(Channel.SYSTEM, 'TOOL_LIST', { tools: [] }),
    ).then((env) => env.payload.tools || []);
  }

  /** Asks for a tool's input schema (TOOL_SCHEMA); resolves with the JSON Schema. */
  toolSchema(tool) {
    return this._request(
      (env) => env.type === 'TOOL_SCHEMA' && env.payload.tool === tool,
      () => this.send(Channel.SYSTEM, 'TOOL_SCHEMA', { tool, schema: {} }),
    ).then((env) => env.payload.inputSchema || env.payload.schema || {});
  }

  _request(match, sendIt) {
    const req = { match, id: null, resolve: null, reject: null };
    const promise = new Promise((resolve, reject) => {
      req.resolve = resolve;
      req.reject = reject;
    });
    this._requests.add(req);
    try {
      req.id = sendIt();
    } catch (e) {
      this._requests.delete(req);
      return Promise.reject(e);
    }
    return withTimeout(promise, this.options.timeout, 'request').finally(() => this._requests.delete(req));
  }
}

export default HaipClient;
