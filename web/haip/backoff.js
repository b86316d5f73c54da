// Reconnect policy (crates/haip-client/src/backoff.rs).

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
