// The client side of one session, with no I/O (crates/haip-client/src/session.rs).

import { COST_MARGIN, Channel, EVENT_TYPES, HAIP_MAJOR, HAIP_VERSION } from './constants.js';
import { dec, utf8Length } from './envelope.js';
import { HaipError } from './errors.js';
import { ReceiveMeter, SendGate, UNLIMITED } from './flow.js';
import { Sequencer } from './sequencer.js';

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
    } else if (arrival.duplicate || arrival.overflow) {
      // Never delivered, so never consumed: its credit goes back now, measured as a
      // delivered message's is (HaipClient adds COST_MARGIN when the application takes
      // one), or a long session would slowly lose the server's credit.
      out.push(...this.consumed(env.channel, item.cost + COST_MARGIN, now));
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
