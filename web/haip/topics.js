// Topics and subscription patterns (crates/haip-client/src/topic.rs).

import { HaipError } from './errors.js';

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
