// AI SDK `useChat` compatibility (HAIP-WIRE section 14) against a real `haip serve`, tested
// with the SDK's own client code: `DefaultChatTransport` and `WebSocketChatTransport`
// (`sendMessages`, `reconnectToStream`), folded into a UI message by `readUIMessageStream`.
// The transports validate every chunk against the SDK's chunk schema and any failure fails
// the test (`terminateOnError`). Raw fetch and raw `ws` check what the SDK does not show:
// statuses, headers, the SSE body, frames and their request ids.
//
// Starts its own server: HAIP_BIN names the binary (scripts/aisdk-test sets it). Loopback
// only; every wait is bounded; the server is killed at the end. With HAIP_ARTIFACTS set,
// the server's stdout and log are written there.
import { test, before, after } from 'node:test';
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

const BIN = process.env.HAIP_BIN;
if (!BIN) throw new Error('HAIP_BIN must name the haip binary: run scripts/aisdk-test');
const WORD_DELAY = 40; // ms between the echo agent's words
const WAIT = 5000; // the bound of any one wait
const TEST = { timeout: 30000 };

let server; // the default server: echo agent
let port;
let TOKEN; // subject demo, printed by haip serve
let OTHER; // another subject, minted with haip token
let api; // http://127.0.0.1:PORT/api/chat
const servers = [];

/** Starts `haip serve` on a free loopback port; resolves once it printed address, token and secret. */
async function startServer(name, extraArgs = []) {
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

// ---------------------------------------------------------------------------------------
// Helpers

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(predicate, ms, what) {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** `n` distinct words, one space between them: the echo agent answers them back. */
const words = (n, prefix = 'w') => Array.from({ length: n }, (_, i) => `${prefix}${i + 1}`).join(' ');

const userMessage = (text) => ({ id: randomUUID(), role: 'user', parts: [{ type: 'text', text }] });

const textOf = (message) => (message?.parts ?? []).filter((p) => p.type === 'text').map((p) => p.text).join('');

const deltasOf = (chunks) => chunks.filter((c) => c.type === 'text-delta').map((c) => c.delta).join('');

const countOf = (chunks, type) => chunks.filter((c) => c.type === type).length;

/** A fetch that keeps each response's status, headers and a copy of its raw body. */
function recordingFetch() {
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

function httpTransport(token, recorder, url = api) {
  return new DefaultChatTransport({
    api: url,
    headers: { Authorization: `Bearer ${token}` },
    ...(recorder ? { fetch: recorder.fetch } : {}),
  });
}

function wsTransport(options = { params: { token: TOKEN } }) {
  return new WebSocketChatTransport({ url: api, webSocket: WebSocket, ...options });
}

const send = (transport, chatId, text, abortSignal) => withTimeout(
  transport.sendMessages({ chatId, messages: [userMessage(text)], trigger: 'submit-message', messageId: undefined, abortSignal }),
  WAIT, `sendMessages for chat ${chatId}`,
);

const resume = (transport, chatId, abortSignal) => withTimeout(
  transport.reconnectToStream({ chatId, abortSignal }),
  WAIT, `reconnectToStream for chat ${chatId}`,
);

/**
 * Folds a UI message chunk stream with the SDK's `readUIMessageStream`, keeping every chunk
 * and when it came. Any error (a chunk failing the SDK's schema, a chunk out of the SDK's
 * state machine, an `error` chunk, a transport error) rejects.
 */
async function fold(stream, { onChunk, ms = 4 * WAIT } = {}) {
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
function folding(stream, options = {}) {
  const state = { chunks: [] };
  state.done = fold(stream, { ...options, onChunk: (chunk, chunks) => { state.chunks = chunks; } });
  state.done.catch(() => {});
  return state;
}

const ANSWER = /^start,start-step,text-start(,text-delta)+,text-end,finish-step,finish$/;

/** A complete answer to `text`: every chunk in the SDK's order, the text whole and once. */
function assertWholeAnswer(result, text, what) {
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
function assertAborted(result, text, what) {
  assert.equal(result.types.at(-1), 'abort', `${what}: the last chunk is abort (chunks: ${result.types.join(',')})`);
  assert.equal(countOf(result.chunks, 'abort'), 1, `${what}: one abort chunk`);
  assert.equal(countOf(result.chunks, 'finish'), 0, `${what}: no finish chunk after a cancel`);
  assert.equal(result.types[0], 'start', `${what}: starts with start`);
  assert.ok(text.startsWith(result.text), `${what}: the text is a prefix of the text sent (got ${JSON.stringify(result.text)})`);
  assert.ok(result.text.length < text.length, `${what}: the text is a strict prefix (the answer was stopped)`);
  assert.equal(deltasOf(result.chunks), result.text, `${what}: no delta twice`);
}

/** The raw SSE body: `data:` lines and comments only, ending with `data: [DONE]`. */
function sseChunks(raw, what) {
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

async function validChunk(chunk, what) {
  const result = await uiMessageChunkSchema().validate(chunk);
  assert.ok(result.success, `${what}: ${JSON.stringify(chunk)} validates against the SDK's chunk schema: ${result.error}`);
}

const auth = (token) => ({ Authorization: `Bearer ${token}` });

const rawGetStream = (chatId, token) => withTimeout(
  fetch(`${api}/${encodeURIComponent(chatId)}/stream`, { headers: auth(token) }),
  WAIT, `GET /api/chat/${chatId}/stream`,
);

const rawDeleteStream = (chatId, token) => withTimeout(
  fetch(`${api}/${encodeURIComponent(chatId)}/stream`, { method: 'DELETE', headers: auth(token) }),
  WAIT, `DELETE /api/chat/${chatId}/stream`,
);

/** "Nothing to resume" over HTTP: exactly 204 with no body (never 404). */
async function assertNothingToResume(chatId, token, what) {
  const res = await rawGetStream(chatId, token);
  const body = await withTimeout(res.text(), WAIT, 'the 204 body');
  assert.equal(res.status, 204, `${what}: GET /api/chat/{id}/stream is 204 (got ${res.status} ${body.slice(0, 200)})`);
  assert.equal(body, '', `${what}: a 204 has no body`);
}

/** A raw `ws` client of the WebSocketChatTransport protocol, checking every frame it gets. */
class RawSocket {
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
async function assertSequence(frames, first, what) {
  frames.forEach((f, i) => assert.equal(f.sequence, first + i, `${what}: sequence ${first + i} (got ${f.sequence})`));
  for (const f of frames) await validChunk(f.chunk, what);
}

// ---------------------------------------------------------------------------------------
// HTTP: DefaultChatTransport

test('send over HTTP: the folded answer is the text sent; the UI message stream headers; a raw body of data: lines ending with [DONE]', TEST, async () => {
  const recorder = recordingFetch();
  const transport = httpTransport(TOKEN, recorder);
  const text = words(10, 'hello');
  const result = await fold(await send(transport, randomUUID(), text));
  assertWholeAnswer(result, text, 'POST /api/chat');

  assert.equal(recorder.calls.length, 1);
  const call = recorder.calls[0];
  assert.equal(call.status, 200);
  assert.match(call.headers.get('content-type') ?? '', /^text\/event-stream\b/, 'content-type text/event-stream');
  assert.equal(call.headers.get('x-vercel-ai-ui-message-stream'), 'v1');
  assert.equal(call.headers.get('cache-control'), 'no-cache');
  assert.equal(call.headers.get('x-accel-buffering'), 'no');

  const raw = await withTimeout(call.body, WAIT, 'the raw body');
  const rawChunks = sseChunks(raw, 'POST /api/chat body');
  assert.deepEqual(rawChunks, result.chunks, 'the SDK parsed exactly the data lines of the body');

  // Streamed as it is made (nothing buffers the body, e.g. compression): the words arrive
  // about WORD_DELAY apart, not all at once at the end.
  const first = result.times[result.types.indexOf('text-delta')];
  const last = result.times[result.types.lastIndexOf('text-delta')];
  assert.ok(last - first >= 4 * WORD_DELAY, `the deltas arrive over time (${last - first} ms from first to last)`);
});

test('a second message in the same chat: the answer is to the last user message', TEST, async () => {
  const transport = httpTransport(TOKEN);
  const chatId = randomUUID();
  const first = words(3, 'one');
  const r1 = await fold(await send(transport, chatId, first));
  assertWholeAnswer(r1, first, 'first answer');
  const second = words(4, 'two');
  const messages = [userMessage(first), r1.message, userMessage(second)];
  const stream = await withTimeout(
    transport.sendMessages({ chatId, messages, trigger: 'submit-message', messageId: undefined, abortSignal: undefined }),
    WAIT, 'the second POST',
  );
  const r2 = await fold(stream);
  assertWholeAnswer(r2, second, 'second answer');
  assert.notEqual(r2.message.id, r1.message.id, 'a new assistant message');
});

test('reload-resume: the POST is closed mid-answer; reconnectToStream replays the whole answer from its first chunk', TEST, async () => {
  const chatId = randomUUID();
  const text = words(40, 'reload');
  const controller = new AbortController();
  const stream = await send(httpTransport(TOKEN), chatId, text, controller.signal);
  const reader = stream.getReader();
  const seen = [];
  await withTimeout((async () => {
    while (seen.filter((c) => c.type === 'text-delta').length < 5) {
      const { value, done } = await reader.read();
      assert.ok(!done, 'the answer does not end after 5 words');
      seen.push(value);
    }
  })(), WAIT, 'five words of the answer');
  controller.abort(); // the tab reloads: the POST's fetch is gone
  await reader.read().catch(() => {});

  const recorder = recordingFetch();
  const resumed = await resume(httpTransport(TOKEN, recorder), chatId);
  assert.ok(resumed, 'reconnectToStream finds the answer in progress (not 204)');
  const result = await fold(resumed);
  assertWholeAnswer(result, text, 'resumed stream');
  assert.deepEqual(result.chunks.slice(0, seen.length), seen, 'the replay starts with the very chunks the POST had');
  assert.equal(recorder.calls[0].status, 200);
  assert.equal(recorder.calls[0].headers.get('x-vercel-ai-ui-message-stream'), 'v1');
  sseChunks(await withTimeout(recorder.calls[0].body, WAIT, 'the resumed body'), 'GET /api/chat/{id}/stream body');
});

test('204: nothing in progress, right after [DONE], and for another user\'s token', TEST, async () => {
  // A chat that never was.
  const never = randomUUID();
  assert.equal(await resume(httpTransport(TOKEN), never), null, 'reconnectToStream: null for an unknown chat');
  await assertNothingToResume(never, TOKEN, 'an unknown chat');

  // Right after a stream's [DONE].
  const recorder = recordingFetch();
  const chatId = randomUUID();
  const text = words(4, 'done');
  const result = await fold(await send(httpTransport(TOKEN, recorder), chatId, text));
  assertWholeAnswer(result, text, 'POST');
  sseChunks(await withTimeout(recorder.calls[0].body, WAIT, 'the raw body'), 'POST body'); // [DONE] was read
  assert.equal(await resume(httpTransport(TOKEN), chatId), null, 'reconnectToStream right after [DONE]: null');
  await assertNothingToResume(chatId, TOKEN, 'right after [DONE]');

  // Another user, while the answer is in progress.
  const busy = randomUUID();
  const long = words(40, 'mine');
  const owner = folding(await send(httpTransport(TOKEN), busy, long));
  await waitFor(() => countOf(owner.chunks, 'text-delta') >= 3, WAIT, 'three words');
  assert.equal(await resume(httpTransport(OTHER), busy), null, 'another user\'s reconnectToStream: null');
  await assertNothingToResume(busy, OTHER, 'another user\'s token');
  // Nor can another user stop it (they see nothing of the chat).
  const del = await rawDeleteStream(busy, OTHER);
  await withTimeout(del.text(), WAIT, 'the DELETE body');
  const mine = await resume(httpTransport(TOKEN), busy);
  assert.ok(mine, 'the owner still finds it in progress');
  const [ownerResult, mineResult] = await Promise.all([owner.done, fold(mine)]);
  assertWholeAnswer(ownerResult, long, 'the owner\'s stream after another user\'s DELETE');
  assertWholeAnswer(mineResult, long, 'the owner\'s resume');
});

test('stop: DELETE mid-answer ends the original and a resumed stream with abort then [DONE]', TEST, async () => {
  const chatId = randomUUID();
  const text = words(40, 'stop');
  const postRec = recordingFetch();
  const original = folding(await send(httpTransport(TOKEN, postRec), chatId, text));
  await waitFor(() => countOf(original.chunks, 'text-delta') >= 3, WAIT, 'three words');
  const getRec = recordingFetch();
  const resumedStream = await resume(httpTransport(TOKEN, getRec), chatId);
  assert.ok(resumedStream, 'a resume mid-answer');
  const resumed = folding(resumedStream);
  await waitFor(() => countOf(resumed.chunks, 'text-delta') >= 4, WAIT, 'the resumed stream to have four words');

  const del = await rawDeleteStream(chatId, TOKEN);
  const delBody = await del.text();
  assert.ok(del.ok, `DELETE /api/chat/{id}/stream succeeds (got ${del.status} ${delBody.slice(0, 200)})`);

  const [a, b] = await Promise.all([original.done, resumed.done]);
  assertAborted(a, text, 'the original stream');
  assertAborted(b, text, 'the resumed stream');
  assert.equal(b.text, a.text, 'both streams have the same text');
  for (const [rec, what] of [[postRec, 'POST body'], [getRec, 'GET body']]) {
    const chunks = sseChunks(await withTimeout(rec.calls[0].body, WAIT, what), what);
    assert.equal(chunks.at(-1).type, 'abort', `${what}: abort right before [DONE]`);
  }
  assert.equal(await resume(httpTransport(TOKEN), chatId), null, 'nothing to resume after the stop');
  await assertNothingToResume(chatId, TOKEN, 'after the stop');
});

// ---------------------------------------------------------------------------------------
// WebSocket: WebSocketChatTransport

test('WebSocket send: the folded answer is the text sent (token in ?token=)', TEST, async () => {
  const transport = wsTransport();
  try {
    const text = words(8, 'ws');
    const result = await fold(await send(transport, randomUUID(), text));
    assertWholeAnswer(result, text, 'WebSocket send');
  } finally {
    transport.close();
  }
});

test('WebSocket resume mid-answer from another device gets the whole answer', TEST, async () => {
  const phone = wsTransport();
  const laptop = wsTransport();
  try {
    const chatId = randomUUID();
    const text = words(30, 'device');
    const sending = folding(await send(phone, chatId, text));
    await waitFor(() => countOf(sending.chunks, 'text-delta') >= 5, WAIT, 'five words');
    const stream = await resume(laptop, chatId);
    assert.ok(stream, 'reconnectToStream finds the answer in progress (not no-active)');
    const [sent, resumed] = await Promise.all([sending.done, fold(stream)]);
    assertWholeAnswer(sent, text, 'the sending device');
    assertWholeAnswer(resumed, text, 'the other device');
    assert.deepEqual(resumed.chunks, sent.chunks, 'the same chunks');
    // Right after the end: nothing in progress.
    assert.equal(await resume(laptop, chatId), null, 'a resume right after the end: no-active');
  } finally {
    phone.close();
    laptop.close();
  }
});

test('WebSocket raw: send numbers chunks from 0; resume with lastSequence N gets only the ones after N, numbered on', TEST, async () => {
  const a = await RawSocket.open();
  const b = await RawSocket.open();
  try {
    const chatId = randomUUID();
    const text = words(30, 'seq');
    a.send('s1', chatId, text);
    await waitFor(() => a.chunksOf('s1').length >= 8, WAIT, 'eight chunks of the send');
    b.resume('r1', chatId, 5);
    const end = await a.until('s1', ['end', 'error']);
    assert.equal(end.type, 'end', `the send ends (${JSON.stringify(end)})`);
    const resumeEnd = await b.until('r1', ['end', 'error', 'no-active']);
    assert.equal(resumeEnd.type, 'end', `the resume ends with end (${JSON.stringify(resumeEnd)})`);

    const sent = a.chunksOf('s1');
    await assertSequence(sent, 0, 'send');
    const folded = await fold(ReadableStream.from(sent.map((f) => f.chunk)));
    assertWholeAnswer(folded, text, 'the send\'s chunks');

    const resumed = b.chunksOf('r1');
    assert.ok(resumed.length > 0, 'the resume has chunks');
    await assertSequence(resumed, 6, 'resume after 5');
    assert.deepEqual(resumed, sent.slice(6).map((f) => ({ ...f, requestId: 'r1' })), 'the same chunks under the same sequences');

    // The frame order of each request: chunks, then end, nothing after it.
    for (const [s, id] of [[a, 's1'], [b, 'r1']]) {
      const types = s.of(id).map((f) => f.type).filter((t) => t !== 'start');
      assert.equal(types.at(-1), 'end', `${id}: end is the last frame`);
      assert.equal(types.indexOf('end'), types.length - 1, `${id}: one end`);
      const starts = s.of(id).filter((f) => f.type === 'start').length;
      assert.ok(starts <= 1, `${id}: at most one start`);
      if (starts) assert.equal(s.of(id)[0].type, 'start', `${id}: start comes first`);
    }

    // A resume without lastSequence, right after the end: no-active.
    b.resume('r2', chatId);
    const after = await b.until('r2', ['no-active', 'start', 'chunk', 'error']);
    assert.equal(after.type, 'no-active', 'resume right after the end: no-active');
    a.assertClean();
    b.assertClean();
  } finally {
    a.close();
    b.close();
  }
});

test('WebSocket raw: no-active when nothing is in progress, and for another user\'s chat', TEST, async () => {
  const s = await RawSocket.open();
  const other = await RawSocket.open(`?token=${OTHER}`);
  try {
    s.resume('n1', randomUUID());
    assert.equal((await s.until('n1', ['no-active', 'start', 'chunk', 'error'])).type, 'no-active', 'unknown chat');
    s.resume('n2', randomUUID(), 3);
    assert.equal((await s.until('n2', ['no-active', 'start', 'chunk', 'error'])).type, 'no-active', 'unknown chat, lastSequence 3');

    const chatId = randomUUID();
    s.send('s1', chatId, words(30, 'private'));
    await waitFor(() => s.chunksOf('s1').length >= 5, WAIT, 'five chunks');
    other.resume('o1', chatId);
    assert.equal((await other.until('o1', ['no-active', 'start', 'chunk', 'error'])).type, 'no-active', 'another user\'s resume');
    await sleep(200);
    assert.deepEqual(other.of('o1').map((f) => f.type), ['no-active'], 'another user gets nothing else');
    assert.equal((await s.until('s1', ['end', 'error'])).type, 'end');
    s.assertClean();
    other.assertClean();
  } finally {
    s.close();
    other.close();
  }
});

test('WebSocket abort of a send cancels the answer: other streams end with abort; then no-active and 204', TEST, async () => {
  const transport = wsTransport();
  const watcher = await RawSocket.open();
  try {
    const chatId = randomUUID();
    const text = words(40, 'cancel');
    const controller = new AbortController();
    const sending = folding(await send(transport, chatId, text, controller.signal));
    await waitFor(() => countOf(sending.chunks, 'text-delta') >= 3, WAIT, 'three words');
    // Another reader over HTTP, and one over raw WebSocket.
    const httpRec = recordingFetch();
    const httpStream = await resume(httpTransport(TOKEN, httpRec), chatId);
    assert.ok(httpStream, 'an HTTP resume mid-answer');
    const http = folding(httpStream);
    watcher.resume('w1', chatId);
    await waitFor(() => watcher.chunksOf('w1').length >= 3 && countOf(http.chunks, 'text-delta') >= 3, WAIT, 'the readers to have started');

    controller.abort(); // what useChat's stop() does: the SDK sends {type: 'abort', requestId}
    const sent = await sending.done; // the SDK closes the aborted stream itself
    assert.ok(text.startsWith(sent.text), 'the sender\'s text is a prefix');

    const httpResult = await http.done;
    assertAborted(httpResult, text, 'the HTTP resume after the WebSocket abort');
    sseChunks(await withTimeout(httpRec.calls[0].body, WAIT, 'the HTTP body'), 'GET body');
    const end = await watcher.until('w1', ['end', 'error']);
    assert.equal(end.type, 'end', 'the WebSocket resume ends');
    const watched = watcher.chunksOf('w1');
    await assertSequence(watched, 0, 'the WebSocket resume');
    assert.equal(watched.at(-1).chunk.type, 'abort', 'the WebSocket resume\'s last chunk is abort');

    assert.equal(await resume(wsTransport(), chatId), null, 'a WebSocket resume afterwards: no-active');
    await assertNothingToResume(chatId, TOKEN, 'after the WebSocket abort');
    watcher.assertClean();
  } finally {
    transport.close();
    watcher.close();
  }
});

test('WebSocket abort of a resume only stops that replay: the answer goes on, whole for other readers', TEST, async () => {
  const a = await RawSocket.open();
  const b = await RawSocket.open();
  try {
    const chatId = randomUUID();
    const text = words(40, 'replay');
    a.send('s1', chatId, text);
    await waitFor(() => a.chunksOf('s1').length >= 4, WAIT, 'four chunks of the send');
    b.resume('r1', chatId);
    await waitFor(() => b.chunksOf('r1').length >= 6, WAIT, 'six chunks of the resume');
    b.abort('r1');
    await sleep(300); // the abort reaches the server; chunks already on the way may still land
    const stoppedAt = b.chunksOf('r1').length;

    // Another reader (HTTP, the SDK) still gets the whole answer, and so does the sender.
    const late = await resume(httpTransport(TOKEN), chatId);
    assert.ok(late, 'the answer is still in progress after the resume\'s abort');
    const lateResult = await fold(late);
    assertWholeAnswer(lateResult, text, 'an HTTP resume after the WebSocket resume was aborted');
    const end = await a.until('s1', ['end', 'error']);
    assert.equal(end.type, 'end', 'the send ends normally');
    const sent = a.chunksOf('s1');
    await assertSequence(sent, 0, 'send');
    assertWholeAnswer(await fold(ReadableStream.from(sent.map((f) => f.chunk))), text, 'the sender');

    const replayed = b.chunksOf('r1');
    assert.equal(replayed.length, stoppedAt, 'no chunk of the aborted resume after its abort settled');
    assert.ok(replayed.length < sent.length, `the aborted replay stopped (${replayed.length} of ${sent.length} chunks)`);
    assert.ok(!b.of('r1').some((f) => f.type === 'chunk' && f.chunk.type === 'abort'), 'the answer itself was not aborted');
    a.assertClean();
    b.assertClean();
  } finally {
    a.close();
    b.close();
  }
});

test('WebSocket token in a frame\'s headers.authorization; a frame without any token gets an error frame, the socket stays usable', TEST, async () => {
  const s = await RawSocket.open('');
  try {
    const chatId = randomUUID();
    s.send('x1', chatId, 'no token here');
    const err = await s.until('x1', ['error', 'start', 'chunk', 'end']);
    assert.equal(err.type, 'error', `a send without a token: error (${JSON.stringify(err)})`);
    assert.ok(err.errorText === undefined || typeof err.errorText === 'string', 'errorText is a string');
    s.resume('x2', chatId);
    assert.equal((await s.until('x2', ['error', 'no-active', 'start', 'chunk'])).type, 'error', 'a resume without a token: error');

    const text = words(6, 'header');
    s.send('h1', chatId, text, { authorization: `Bearer ${TOKEN}` });
    const end = await s.until('h1', ['end', 'error']);
    assert.equal(end.type, 'end', `the same socket answers a frame with a token (${JSON.stringify(end)})`);
    const chunks = s.chunksOf('h1');
    await assertSequence(chunks, 0, 'send with headers.authorization');
    assertWholeAnswer(await fold(ReadableStream.from(chunks.map((f) => f.chunk))), text, 'send with headers.authorization');
    s.assertClean();
  } finally {
    s.close();
  }

  // The SDK's own `headers` option puts the token there on every frame.
  const transport = wsTransport({ headers: { Authorization: `Bearer ${TOKEN}` } });
  try {
    const text = words(5, 'sdkheader');
    const result = await fold(await send(transport, randomUUID(), text));
    assertWholeAnswer(result, text, 'WebSocketChatTransport with headers');
    // And another user's token in the frame sees nothing of the demo user's chats.
    const chatId = randomUUID();
    const busy = folding(await send(transport, chatId, words(30, 'busy')));
    await waitFor(() => countOf(busy.chunks, 'text-delta') >= 3, WAIT, 'three words');
    const other = wsTransport({ headers: { Authorization: `Bearer ${OTHER}` } });
    try {
      assert.equal(await resume(other, chatId), null, 'another user\'s resume: no-active');
    } finally {
      other.close();
    }
    await busy.done;
  } finally {
    transport.close();
  }
});

// ---------------------------------------------------------------------------------------
// CORS

test('CORS preflight for another origin: POST /api/chat and DELETE /api/chat/{id}/stream', TEST, async () => {
  const origin = 'http://app.example.test:3000';
  const listed = (value, name) => (value ?? '').toLowerCase().split(',').map((s) => s.trim()).includes(name);
  for (const [url, method] of [[api, 'POST'], [`${api}/x/stream`, 'DELETE'], [`${api}/x/stream`, 'GET']]) {
    const what = `OPTIONS ${new URL(url).pathname} for ${method}`;
    const res = await withTimeout(fetch(url, {
      method: 'OPTIONS',
      headers: {
        Origin: origin,
        'Access-Control-Request-Method': method,
        'Access-Control-Request-Headers': 'authorization,content-type',
      },
    }), WAIT, what);
    await res.text();
    assert.ok(res.status === 200 || res.status === 204, `${what}: 200 or 204 (got ${res.status})`);
    const allowOrigin = res.headers.get('access-control-allow-origin');
    assert.ok(allowOrigin === '*' || allowOrigin === origin, `${what}: allows the origin (got ${allowOrigin})`);
    const methods = res.headers.get('access-control-allow-methods');
    assert.ok(methods === '*' || listed(methods, method.toLowerCase()), `${what}: allows ${method} (got ${methods})`);
    // A wildcard does not cover Authorization (Fetch standard): it must be named.
    const headers = res.headers.get('access-control-allow-headers');
    assert.ok(listed(headers, 'authorization'), `${what}: names authorization in allow-headers (got ${headers})`);
    assert.ok(headers === '*' || listed(headers, 'content-type') || listed(headers, '*'), `${what}: allows content-type (got ${headers})`);
  }

  // The actual responses carry the origin too, or the browser drops them.
  const post = await withTimeout(fetch(api, {
    method: 'POST',
    headers: { Origin: origin, 'content-type': 'application/json', ...auth(TOKEN) },
    body: JSON.stringify({ id: randomUUID(), messages: [userMessage('cors')], trigger: 'submit-message' }),
  }), WAIT, 'POST with Origin');
  await withTimeout(post.text(), WAIT, 'the POST body');
  assert.equal(post.status, 200);
  const allow = post.headers.get('access-control-allow-origin');
  assert.ok(allow === '*' || allow === origin, `the POST's response allows the origin (got ${allow})`);
  const get = await withTimeout(fetch(`${api}/${randomUUID()}/stream`, { headers: { Origin: origin, ...auth(TOKEN) } }), WAIT, 'GET with Origin');
  await get.text();
  assert.equal(get.status, 204);
  const allowGet = get.headers.get('access-control-allow-origin');
  assert.ok(allowGet === '*' || allowGet === origin, `the 204's response allows the origin (got ${allowGet})`);
});

// ---------------------------------------------------------------------------------------
// An agent failure

test('an agent failure is an error chunk before [DONE] (a model server that refuses connections)', TEST, async () => {
  // A loopback port with nobody listening: the openai agent's request is refused at once.
  const probe = createServer();
  await new Promise((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const deadPort = probe.address().port;
  await new Promise((resolve) => probe.close(resolve));
  const failing = await startServer('failing-agent', [
    '--agent', 'openai', '--openai-base-url', `http://127.0.0.1:${deadPort}/v1`,
    '--openai-model', 'none', '--openai-api-key', 'none', '--agent-timeout', '3000',
  ]);

  const recorder = recordingFetch();
  const stream = await send(httpTransport(failing.token, recorder, failing.api), randomUUID(), 'hello');
  await assert.rejects(fold(stream), (e) => typeof e?.message === 'string' && e.message.length > 0,
    'readUIMessageStream reports the error chunk');
  assert.equal(recorder.calls[0].status, 200);
  const chunks = sseChunks(await withTimeout(recorder.calls[0].body, 4 * WAIT, 'the body'), 'POST body of a failed answer');
  for (const c of chunks) await validChunk(c, 'a failed answer');
  const errors = chunks.filter((c) => c.type === 'error');
  assert.equal(errors.length, 1, `one error chunk (chunks: ${chunks.map((c) => c.type).join(',')})`);
  assert.equal(typeof errors[0].errorText, 'string');
  assert.ok(errors[0].errorText.length > 0, 'a non-empty errorText');
  assert.equal(chunks[0].type, 'start', 'the stream starts with start');
  assert.equal(chunks.at(-1).type, 'error', `the error chunk is the last before [DONE] (chunks: ${chunks.map((c) => c.type).join(',')})`);

  // Over WebSocket the SDK surfaces it as an error too (an error chunk or an error frame).
  const transport = new WebSocketChatTransport({ url: failing.api, webSocket: WebSocket, params: { token: failing.token } });
  try {
    await assert.rejects(async () => fold(await send(transport, randomUUID(), 'hello')), 'the WebSocket answer fails');
  } finally {
    transport.close();
  }
});

// ---------------------------------------------------------------------------------------
// The harness itself: a server that breaks the SDK's schema fails `fold`, so the tests above
// cannot pass on chunks the SDK would reject.

test('the harness: a chunk the SDK rejects fails the fold, over HTTP and WebSocket', TEST, async () => {
  const bad = [
    { type: 'text-delta', id: 't' }, // no delta: fails the chunk schema
    { type: 'text-stop', id: 't' }, // no such chunk type
  ];
  let body;
  const http = createServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.end(body);
  });
  const wss = new WebSocketServer({ server: http });
  let frame;
  wss.on('connection', (ws) => ws.on('message', (data) => {
    const { requestId } = JSON.parse(data.toString());
    ws.send(JSON.stringify({ type: 'chunk', requestId, sequence: 0, chunk: { type: 'start' } }));
    ws.send(JSON.stringify({ type: 'chunk', requestId, sequence: 1, chunk: frame }));
    ws.send(JSON.stringify({ type: 'end', requestId }));
  }));
  await new Promise((resolve) => http.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${http.address().port}/api/chat`;
  try {
    const cases = [...bad, { type: 'text-delta', id: 'unknown', delta: 'x' }]; // a delta before its text-start
    for (const chunk of cases) {
      body = `data: {"type":"start"}\n\ndata: ${JSON.stringify(chunk)}\n\ndata: [DONE]\n\n`;
      await assert.rejects(async () => fold(await send(httpTransport('t', undefined, url), 'c', 'x')),
        `HTTP: ${JSON.stringify(chunk)} fails the fold`);
      frame = chunk;
      const transport = new WebSocketChatTransport({ url, webSocket: WebSocket });
      try {
        await assert.rejects(async () => fold(await send(transport, 'c', 'x')), `WebSocket: ${JSON.stringify(chunk)} fails the fold`);
      } finally {
        transport.close();
      }
    }
    for (const chunk of bad) {
      assert.equal((await uiMessageChunkSchema().validate(chunk)).success, false, 'validChunk would reject it too');
    }
    // And a good stream passes.
    body = 'data: {"type":"start"}\n\ndata: {"type":"text-start","id":"t"}\n\ndata: {"type":"text-delta","id":"t","delta":"x"}\n\n'
      + 'data: {"type":"text-end","id":"t"}\n\ndata: {"type":"finish"}\n\ndata: [DONE]\n\n';
    assert.equal((await fold(await send(httpTransport('t', undefined, url), 'c', 'x'))).text, 'x');
  } finally {
    for (const c of wss.clients) c.terminate();
    wss.close();
    http.closeAllConnections();
    await new Promise((resolve) => http.close(resolve));
  }
});
