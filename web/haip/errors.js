// The one error type of the client.

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
