// The harness of the AI SDK tests (tests/aisdk/*.test.mjs): a real `haip serve` per test
// file, the SDK's transports over it, raw fetch and raw `ws` clients, and the checks the
// tests share. HAIP_BIN names the binary (scripts/aisdk-test sets it). Loopback only; every
// wait is bounded; the servers are killed at the end. With HAIP_ARTIFACTS set, each
// server's stdout and log are written there.
import { before, after } from 'node:test';
import { createServer } from 'node:http';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import WebSocket, { WebSocketServer } from 'ws';
import {
  DefaultChatTransport,
  WebSocketChatTransport,
  readUIMessageStream,
  uiMessageChunkSchema,
} from 'ai';


export const BIN = process.env.HAIP_BIN;
if (!BIN) throw new Error('HAIP_BIN must name the haip binary: run scripts/aisdk-test');
export const WORD_DELAY = 40; // ms between the echo agent's words
export const WAIT = 5000; // the bound of any one wait
export const TEST = { timeout: 30000 };

export let server; // the default server: echo agent
export let port;
export let TOKEN; // subject demo, printed by haip serve
export let OTHER; // another subject, minted with haip token
export let api; // http://127.0.0.1:PORT/api/chat
export const servers = [];

/** Starts `haip serve` on a free loopback port; resolves once it printed address, token and secret. */
export async function startServer(name, extraArgs = []) {
  const s = { name, out: '', err: '' };
  s.proc = spawn(BIN, ['serve', '--host', '127.0.0.1', '--port', '0', ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, HAIP_LOG: process.env.HAIP_LOG ?? 'info' },
  });
  servers.push(s);
  s.proc.stdout.setEncoding('utf8');
  s.proc.stderr.setEncoding('utf8');
  s.proc.stderr.on('data', (d) => { s.err += d; });
  await withTimeout(new Promise((resolve, reject) => {
    s.proc.on('exit', (code, signal) => reject(new Error(`haip serve exited (${code ?? signal}):\n${s.out}\n${s.err}`)));
    s.proc.on('error', reject);
    s.proc.stdout.on('data', (d) => {
      s.out += d;
      s.port ??= s.out.match(/^haip-rs listening on 127\.0\.0\.1:(\d+)$/m)?.[1];
      s.token ??= s.out.match(/^token \([^)]*\): (\S+)$/m)?.[1];
      s.secret ??= s.out.match(/^JWT secret \(random[^)]*\): ([0-9a-f]+)$/m)?.[1];
      if (s.port && s.token && s.secret) resolve();
    });
  }), 10000, `haip serve (${name}) to print its address, token and secret`);
  s.api = `http://127.0.0.1:${s.port}/api/chat`;
  return s;
}

process.on('exit', () => { for (const s of servers) s.proc.kill('SIGKILL'); });

/**
 * Starts the default server (echo agent) before the file's tests and stops every server
 * after them, keeping their output in HAIP_ARTIFACTS when set. Each test file calls it once.
 */
export function serveForTests() {
  before(async () => {
    server = await startServer('echo', ['--echo-word-delay', String(WORD_DELAY)]);
    port = server.port;
    TOKEN = server.token;
    api = server.api;
    OTHER = execFileSync(BIN, ['token', '--secret', server.secret, '--sub', 'aisdk-other-user'], { encoding: 'utf8', timeout: WAIT }).trim();
    assert.match(OTHER, /^[\w-]+\.[\w-]+\.[\w-]+$/, 'haip token prints a JWT');
  });

  after(async () => {
    for (const s of servers) {
      if (s.proc.exitCode === null && s.proc.signalCode === null) {
        const exited = new Promise((resolve) => s.proc.once('exit', resolve));
        s.proc.kill('SIGTERM');
        const t = setTimeout(() => s.proc.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(t);
      }
      const dir = process.env.HAIP_ARTIFACTS;
      if (dir) {
        mkdirSync(dir, { recursive: true });
        writeFileSync(path.join(dir, `server-${s.name}.out`), s.out);
        writeFileSync(path.join(dir, `server-${s.name}.log`), s.err);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Helpers

export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export async function waitFor(predicate, ms, what) {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** `n` distinct words, one space between them: the echo agent answers them back. */
export const words = (n, prefix = 'w') => Array.from({ length: n }, (_, i) => `${prefix}${i + 1}`).join(' ');

export const userMessage = (text) => ({ id: randomUUID(), role: 'user', parts: [{ type: 'text', text }] });

export const textOf = (message) => (message?.parts ?? []).filter((p) => p.type === 'text').map((p) => p.text).join('');

export const deltasOf = (chunks) => chunks.filter((c) => c.type === 'text-delta').map((c) => c.delta).join('');

export const countOf = (chunks, type) => chunks.filter((c) => c.type === type).length;

/** A fetch that keeps each response's status, headers and a copy of its raw body. */
export function recordingFetch() {
  const calls = [];
  const recording = async (url, init) => {
    const res = await fetch(url, init);
    const call = { url: String(url), method: init?.method ?? 'GET', status: res.status, headers: res.headers, body: Promise.resolve('') };
    calls.push(call);
    if (!res.body) return res;
    const [forSdk, forUs] = res.body.tee();
    call.body = new Response(forUs).text();
    call.body.catch(() => {});
    return new Response(forSdk, { status: res.status, statusText: res.statusText, headers: res.headers });
  };
  return { fetch: recording, calls };
}

export function httpTransport(token, recorder, url = api) {
  return new DefaultChatTransport({
    api: url,
    headers: { Authorization: `Bearer ${token}` },
    ...(recorder ? { fetch: recorder.fetch } : {}),
  });
}

export function wsTransport(options = { params: { token: TOKEN } }) {
  return new WebSocketChatTransport({ url: api, webSocket: WebSocket, ...options });
}

export const send = (transport, chatId, text, abortSignal) => withTimeout(
  transport.sendMessages({ chatId, messages: [userMessage(text)], trigger: 'submit-message', messageId: undefined, abortSignal }),
  WAIT, `sendMessages for chat ${chatId}`,
);

export const resume = (transport, chatId, abortSignal) => withTimeout(
  transport.reconnectToStream({ chatId, abortSignal }),
  WAIT, `reconnectToStream for chat ${chatId}`,
);

/**
 * Folds a UI message chunk stream with the SDK's `readUIMessageStream`, keeping every chunk
 * and when it came. Any error (a chunk failing the SDK's schema, a chunk out of the SDK's
 * state machine, an `error` chunk, a transport error) rejects.
 */
export async function fold(stream, { onChunk, ms = 4 * WAIT } = {}) {
  const chunks = [];
  const times = [];
  const errors = [];
  const recorded = stream.pipeThrough(new TransformStream({
    transform(chunk, controller) {
      chunks.push(chunk);
      times.push(Date.now());
      onChunk?.(chunk, chunks);
      controller.enqueue(chunk);
    },
  }));
  let message;
  await withTimeout((async () => {
    for await (const snapshot of readUIMessageStream({ stream: recorded, terminateOnError: true, onError: (e) => errors.push(e) })) {
      message = snapshot;
    }
  })(), ms, 'the UI message stream to end');
  assert.deepEqual(errors.map(String), [], 'readUIMessageStream reported no error');
  return { message, chunks, times, types: chunks.map((c) => c.type), text: textOf(message) };
}

/** Starts folding now; `state.chunks` fills as chunks arrive, `state.done` settles at the end. */
export function folding(stream, options = {}) {
  const state = { chunks: [] };
  state.done = fold(stream, { ...options, onChunk: (chunk, chunks) => { state.chunks = chunks; } });
  state.done.catch(() => {});
  return state;
}

export const ANSWER = /^start,start-step,text-start(,text-delta)+,text-end,finish-step,finish$/;

/** A complete answer to `text`: every chunk in the SDK's order, the text whole and once. */
export function assertWholeAnswer(result, text, what) {
  assert.match(result.types.join(','), ANSWER, `${what}: chunk order`);
  assert.equal(result.text, text, `${what}: the folded message's text is the text sent`);
  assert.equal(deltasOf(result.chunks), text, `${what}: the deltas, joined, are the text once (no duplicates)`);
  assert.equal(result.message.role, 'assistant', `${what}: an assistant message`);
  const start = result.chunks[0];
  assert.equal(typeof start.messageId, 'string', `${what}: start carries a messageId`);
  assert.ok(start.messageId.length > 0, `${what}: start's messageId is not empty`);
  assert.equal(result.message.id, start.messageId, `${what}: the message's id is start's messageId`);
  const ids = new Set(result.chunks.filter((c) => c.type.startsWith('text-')).map((c) => c.id));
  assert.equal(ids.size, 1, `${what}: one text part id across text-start/delta/end`);
}

/** The answer stopped: its chunks end with `abort`, its text a strict prefix of `text`. */
export function assertAborted(result, text, what) {
  assert.equal(result.types.at(-1), 'abort', `${what}: the last chunk is abort (chunks: ${result.types.join(',')})`);
  assert.equal(countOf(result.chunks, 'abort'), 1, `${what}: one abort chunk`);
  assert.equal(countOf(result.chunks, 'finish'), 0, `${what}: no finish chunk after a cancel`);
  assert.equal(result.types[0], 'start', `${what}: starts with start`);
  assert.ok(text.startsWith(result.text), `${what}: the text is a prefix of the text sent (got ${JSON.stringify(result.text)})`);
  assert.ok(result.text.length < text.length, `${what}: the text is a strict prefix (the answer was stopped)`);
  assert.equal(deltasOf(result.chunks), result.text, `${what}: no delta twice`);
}

/** The raw SSE body: `data:` lines and comments only, ending with `data: [DONE]`. */
export function sseChunks(raw, what) {
  const data = [];
  for (const line of raw.split(/\r?\n/)) {
    if (line === '' || line.startsWith(':')) continue; // blank separators, comment keep-alives
    assert.ok(line.startsWith('data: '), `${what}: only data: lines and comments, got ${JSON.stringify(line)}`);
    data.push(line.slice('data: '.length));
  }
  assert.ok(data.length > 0, `${what}: some data`);
  assert.equal(data.at(-1), '[DONE]', `${what}: the last data line is [DONE]`);
  assert.equal(data.indexOf('[DONE]'), data.length - 1, `${what}: [DONE] once, at the end`);
  assert.match(raw, /data: \[DONE\](\r?\n){2}$/, `${what}: the body ends with the [DONE] event`);
  return data.slice(0, -1).map((d) => JSON.parse(d));
}

export async function validChunk(chunk, what) {
  const result = await uiMessageChunkSchema().validate(chunk);
  assert.ok(result.success, `${what}: ${JSON.stringify(chunk)} validates against the SDK's chunk schema: ${result.error}`);
}

export const auth = (token) => ({ Authorization: `Bearer ${token}` });

export const rawGetStream = (chatId, token) => withTimeout(
  fetch(`${api}/${encodeURIComponent(chatId)}/stream`, { headers: auth(token) }),
  WAIT, `GET /api/chat/${chatId}/stream`,
);

export const rawDeleteStream = (chatId, token) => withTimeout(
  fetch(`${api}/${encodeURIComponent(chatId)}/stream`, { method: 'DELETE', headers: auth(token) }),
  WAIT, `DELETE /api/chat/${chatId}/stream`,
);

/** "Nothing to resume" over HTTP: exactly 204 with no body (never 404). */
export async function assertNothingToResume(chatId, token, what) {
  const res = await rawGetStream(chatId, token);
  const body = await withTimeout(res.text(), WAIT, 'the 204 body');
  assert.equal(res.status, 204, `${what}: GET /api/chat/{id}/stream is 204 (got ${res.status} ${body.slice(0, 200)})`);
  assert.equal(body, '', `${what}: a 204 has no body`);
}

/** A raw `ws` client of the WebSocketChatTransport protocol, checking every frame it gets. */
export class RawSocket {
  static async open(query = `?token=${TOKEN}`) {
    const s = new RawSocket(`ws://127.0.0.1:${port}/api/chat${query}`);
    await withTimeout(new Promise((resolve, reject) => {
      s.ws.once('open', resolve);
      s.ws.once('error', reject);
      s.ws.once('unexpected-response', (_, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    }), WAIT, 'the WebSocket to open');
    return s;
  }

  constructor(url) {
    this.ws = new WebSocket(url);
    this.frames = [];
    this.problems = [];
    this.requestIds = new Set();
    this.closed = false;
    this.ws.on('message', (data, isBinary) => {
      const text = data.toString();
      if (isBinary) this.problems.push(`a binary frame: ${text.slice(0, 200)}`);
      let frame;
      try {
        frame = JSON.parse(text);
      } catch {
        this.problems.push(`a frame that is not JSON: ${text.slice(0, 200)}`);
        return;
      }
      if (typeof frame?.requestId !== 'string' || !this.requestIds.has(frame.requestId)) {
        this.problems.push(`a frame without the requestId of a request sent: ${text.slice(0, 200)}`);
      }
      this.frames.push(frame);
    });
    this.ws.on('close', (code, reason) => { this.closed = { code, reason: reason.toString() }; });
    this.ws.on('error', (e) => this.problems.push(`socket error: ${e.message}`));
  }

  request(frame) {
    this.requestIds.add(frame.requestId);
    this.ws.send(JSON.stringify(frame));
  }

  send(requestId, chatId, text, headers = {}) {
    this.request({
      type: 'send', requestId, id: chatId, trigger: 'submit-message', messages: [userMessage(text)],
      headers, body: {},
    });
  }

  resume(requestId, chatId, lastSequence, headers = {}) {
    this.request({ type: 'resume', requestId, id: chatId, ...(lastSequence === undefined ? {} : { lastSequence }), headers, body: {} });
  }

  abort(requestId) {
    this.request({ type: 'abort', requestId });
  }

  of(requestId) {
    return this.frames.filter((f) => f.requestId === requestId);
  }

  chunksOf(requestId) {
    return this.of(requestId).filter((f) => f.type === 'chunk');
  }

  /** Waits for a frame of `requestId` whose type is one of `types`; returns it. */
  async until(requestId, types, ms = 4 * WAIT) {
    await waitFor(() => this.of(requestId).some((f) => types.includes(f.type)) || this.closed, ms,
      `a ${types.join('/')} frame for ${requestId} (frames so far: ${JSON.stringify(this.of(requestId).map((f) => f.type))})`);
    assert.equal(this.closed, false, `the socket stays open (closed: ${JSON.stringify(this.closed)})`);
    return this.of(requestId).find((f) => types.includes(f.type));
  }

  /** Every frame was JSON text with the requestId of a request sent on this socket. */
  assertClean() {
    assert.deepEqual(this.problems, [], 'every server frame is a JSON text frame with the requestId of a request sent');
    const known = new Set(['start', 'chunk', 'end', 'error', 'no-active']);
    for (const f of this.frames) assert.ok(known.has(f.type), `a known response type: ${JSON.stringify(f).slice(0, 200)}`);
  }

  close() {
    this.ws.terminate();
  }
}

/** A request's chunk frames: sequences consecutive from `first`, chunks valid. */
export async function assertSequence(frames, first, what) {
  frames.forEach((f, i) => assert.equal(f.sequence, first + i, `${what}: sequence ${first + i} (got ${f.sequence})`));
  for (const f of frames) await validChunk(f.chunk, what);
}
