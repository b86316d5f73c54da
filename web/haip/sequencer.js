// Ordering (crates/haip-protocol/src/sequencer.rs).

import { GAP_TIMEOUT_MS } from './constants.js';

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
