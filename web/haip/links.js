// Links: one open connection each, moving frames only. Ordering, resending and
// reconnecting live in ClientSession and HaipClient, once for all transports.

import { Transport } from './constants.js';
import { base64Encode, dec } from './envelope.js';
import { HaipError } from './errors.js';

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

export class WebSocketLink extends BaseLink {
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

export class SseLink extends BaseLink {
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

export class StreamLink extends BaseLink {
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
