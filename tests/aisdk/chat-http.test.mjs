// AI SDK `useChat` compatibility (HAIP-WIRE section 14) against a real `haip serve`, tested
// with the SDK's own client code: `DefaultChatTransport` and `WebSocketChatTransport`
// (`sendMessages`, `reconnectToStream`), folded into a UI message by `readUIMessageStream`.
// The transports validate every chunk against the SDK's chunk schema and any failure fails
// the test (`terminateOnError`). Raw fetch and raw `ws` check what the SDK does not show:
// statuses, headers, the SSE body, frames and their request ids.
//
// This file: the HTTP transport (DefaultChatTransport), CORS, an agent failure, and the
// harness itself. The WebSocket transport is in chat-websocket.test.mjs; what both use is
// in harness.mjs.
import { test } from 'node:test';
import { createServer } from 'node:http';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import WebSocket, { WebSocketServer } from 'ws';
import { DefaultChatTransport, WebSocketChatTransport, readUIMessageStream, uiMessageChunkSchema } from 'ai';
import {
  OTHER,
  TEST,
  TOKEN,
  WAIT,
  WORD_DELAY,
  api,
  assertAborted,
  assertNothingToResume,
  assertWholeAnswer,
  auth,
  countOf,
  fold,
  folding,
  httpTransport,
  port,
  rawDeleteStream,
  recordingFetch,
  resume,
  send,
  serveForTests,
  server,
  sseChunks,
  startServer,
  userMessage,
  validChunk,
  waitFor,
  withTimeout,
  words,
} from './harness.mjs';

serveForTests();

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
