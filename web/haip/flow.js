// Flow control (crates/haip-protocol/src/flow.rs): the credit the server grants this
// client (SendGate) and the credit this client hands back as it consumes (ReceiveMeter).

import { Channel, GRANT_DELAY_MS } from './constants.js';

export const UNLIMITED = Object.freeze({ messages: null, bytes: null });

/** The most channel names the gate tracks credit for at once (as haip-protocol's flow). */
export const MAX_CHANNELS = 64;

function creditCovers(c, cost) {
  return (c.messages === null || c.messages >= 1) && (c.bytes === null || c.bytes >= cost);
}

export function isExempt(channel) {
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

  /**
   * Credit for a channel not seen yet is ignored once MAX_CHANNELS are tracked: channel
   * names are the server's to choose, and each new one would otherwise cost state for good.
   */
  grant(channel, addMessages, addBytes) {
    if (isExempt(channel) || !this.hasRoomFor(channel)) return [];
    const c = this.channel(channel).credit;
    if (c.messages !== null) c.messages += addMessages;
    if (c.bytes !== null) c.bytes += addBytes;
    return this.release(channel);
  }

  /** Holds the channel's later messages until resume (ignored as grants are, see grant). */
  pause(channel) {
    if (!isExempt(channel) && this.hasRoomFor(channel)) this.channel(channel).paused = true;
  }

  hasRoomFor(channel) {
    return this.channels.size < MAX_CHANNELS || this.channels.has(channel);
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
