// The client: connects, reconnects with backoff, resumes, and offers the application API.

import { ReconnectPolicy } from './backoff.js';
import { COST_MARGIN, Channel, DEFAULT_PATHS, EVENT_TYPES, TRANSPORTS, Transport } from './constants.js';
import { base64Decode, base64Length, nowMs, parseEnvelope, randomId, utf8Length } from './envelope.js';
import { HaipError } from './errors.js';
import { UNLIMITED } from './flow.js';
import { SseLink, StreamLink, WebSocketLink } from './links.js';
import { ClientSession } from './session.js';
import { TopicPattern, topicOf } from './topics.js';
import { hasPath, siblingUrl, urlFor } from './urls.js';

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
