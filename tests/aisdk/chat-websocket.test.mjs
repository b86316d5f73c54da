// AI SDK `useChat` compatibility (HAIP-WIRE section 14) against a real `haip serve`, tested
// with the SDK's own client code: `DefaultChatTransport` and `WebSocketChatTransport`
// (`sendMessages`, `reconnectToStream`), folded into a UI message by `readUIMessageStream`.
// The transports validate every chunk against the SDK's chunk schema and any failure fails
// the test (`terminateOnError`). Raw fetch and raw `ws` check what the SDK does not show:
// statuses, headers, the SSE body, frames and their request ids.
//
// This file: the WebSocket transport (WebSocketChatTransport). The HTTP transport is in
// chat-http.test.mjs; what both use is in harness.mjs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { WebSocketChatTransport } from 'ai';
import {
  OTHER,
  RawSocket,
  TEST,
  TOKEN,
  WAIT,
  assertAborted,
  assertNothingToResume,
  assertSequence,
  assertWholeAnswer,
  countOf,
  fold,
  folding,
  httpTransport,
  recordingFetch,
  resume,
  send,
  serveForTests,
  server,
  sleep,
  sseChunks,
  waitFor,
  withTimeout,
  words,
  wsTransport,
} from './harness.mjs';

serveForTests();

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
