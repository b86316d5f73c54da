// Unit tests of web/haip.js's pure parts, in Node (no browser): the same cases as the Rust
// client's tests (crates/haip-client/src/{backoff,topic,url,session}.rs), so that both
// clients follow one set of rules.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  ClientSession, HaipClient, HaipError, ReconnectPolicy, TopicPattern, Transport, topicOf, urlFor, siblingUrl,
  Sequencer, ReceiveMeter, SendGate, parseEnvelope, utf8Length, EVENT_TYPES, GRANT_DELAY_MS,
} from '../../web/haip.js';

test('reconnect delays double from one second and stop at thirty', () => {
  const p = new ReconnectPolicy({ jitter: false });
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7].map((n) => p.delay(n, 0.5) / 1000), [1, 2, 4, 8, 16, 30, 30]);
  assert.equal(p.delay(2 ** 32, 0), 30000);
});

test('full jitter draws within zero and the base; jitter is on by default', () => {
  const p = new ReconnectPolicy();
  assert.equal(p.delay(3, 0), 0);
  assert.equal(p.delay(3, 0.5), 2000);
  assert.ok(p.delay(3, 0.999) < 4000);
});

test('zero attempts means unlimited', () => {
  assert.ok(new ReconnectPolicy().allows(1_000_000));
  const p = new ReconnectPolicy({ maxAttempts: 3 });
  assert.ok(p.allows(3) && !p.allows(4));
});

test('topics are lower case channel dot type', () => {
  assert.equal(topicOf('AGENT', 'MESSAGE_PART'), 'agent.message_part');
});

test('topic patterns: exact, single-segment and tail wildcards', () => {
  const m = (p, t) => new TopicPattern(p).matches(t);
  assert.ok(m('agent.message_part', 'agent.message_part'));
  assert.ok(m('AGENT.Message_Part', 'agent.message_part'));
  assert.ok(!m('agent.message_part', 'agent.message_end'));
  assert.ok(m('agent.*', 'agent.message_part'));
  assert.ok(m('*.tool_done', 'agent.tool_done'));
  assert.ok(!m('*.tool_done', 'agent.tool_update'));
  assert.ok(!m('agent.*', 'agent'));
  assert.ok(!m('agent.*', 'agent.a.b'));
  assert.ok(m('*.*', 'system.ping'));
  assert.ok(m('agent.>', 'agent.message_part'));
  assert.ok(m('agent.>', 'agent.a.b'));
  assert.ok(!m('agent.>', 'agent'));
  assert.ok(!m('agent.>', 'user.message_part'));
  assert.ok(m('>', 'system.ping'));
});

test('malformed patterns are typed errors', () => {
  for (const p of ['', 'agent.', '.x', 'a.>.b', 'ag*', 'a.b>']) {
    assert.throws(() => new TopicPattern(p), (e) => e instanceof HaipError && e.code === 'INVALID_PATTERN', p);
  }
});

test('URL schemes follow the transport', () => {
  assert.equal(urlFor('https://h/haip/websocket', Transport.WEBSOCKET), 'wss://h/haip/websocket');
  assert.equal(urlFor('http://h:8080/x', Transport.WEBSOCKET), 'ws://h:8080/x');
  assert.equal(urlFor('ws://h/haip/sse', Transport.SSE), 'http://h/haip/sse');
  assert.equal(urlFor('wss://h/haip/stream', Transport.HTTP_STREAM), 'https://h/haip/stream');
  assert.equal(urlFor('WSS://h/x', Transport.SSE), 'https://h/x');
});

test('a bare origin gets the transport path', () => {
  assert.equal(urlFor('http://h:8080', Transport.WEBSOCKET), 'ws://h:8080/haip/websocket');
  assert.equal(urlFor('https://h/', Transport.SSE), 'https://h/haip/sse');
  assert.equal(urlFor('http://h?x=1', Transport.HTTP_STREAM), 'http://h/haip/stream?x=1');
  assert.equal(siblingUrl('http://h:1/haip/sse?token=t', 'messages'), 'http://h:1/haip/messages');
  assert.equal(siblingUrl('http://h:1', 'messages'), 'http://h:1/haip/messages');
});

test('query parameters are appended and encoded', () => {
  const q = [['token', 'a b&c']];
  assert.equal(urlFor('http://h/p', Transport.WEBSOCKET, q), 'ws://h/p?token=a%20b%26c');
  assert.equal(urlFor('http://h/p?x=1', Transport.SSE, q), 'http://h/p?x=1&token=a%20b%26c');
});

test('bad URLs are typed errors', () => {
  for (const url of ['h/p', 'ftp://h/', 'http://', 'http:///p']) {
    assert.throws(() => urlFor(url, Transport.SSE), (e) => e.code === 'INVALID_URL', url);
  }
});

// --- the session state machine ------------------------------------------------------

function server(seq, ack, type, payload, session = 'S') {
  const env = { id: `s${seq}`, session, seq: String(seq), ts: '0',
    channel: type === 'MESSAGE_PART' ? 'AGENT' : 'SYSTEM', type, payload };
  if (ack !== null) env.ack = String(ack);
  return { env, cost: 10, binary: null };
}

function serverHai(seq, lastRx, { session = 'S', credit = null } = {}) {
  const p = { haip_version: '1.1.2', accept_major: [1], accept_events: EVENT_TYPES };
  if (lastRx !== null) p.last_rx_seq = String(lastRx);
  if (credit) p.capabilities = { flow_control: credit };
  return server(seq, null, 'HAI', p, session);
}

const part = (seq, text) => server(seq, null, 'MESSAGE_PART', { message_id: 'm', text });
const writes = (out) => out.filter((o) => o.kind === 'write').map((o) => [o.rec.seq, o.rec.env.type]);
const delivered = (out) => out.filter((o) => o.kind === 'deliver').map((o) => Number(o.item.env.seq));

function send(c, text, now = 0) {
  return c.submit(c.envelope('USER', 'MESSAGE_PART', { message_id: 'u', text }, now), now);
}

test('messages sent before the handshake leave after it, in order', () => {
  const c = new ClientSession();
  assert.deepEqual(send(c, 'a'), []);
  assert.deepEqual(send(c, 'b'), []);
  assert.equal(c.connected(1).seq, 1);
  const out = c.received(serverHai(1, null), 2);
  assert.deepEqual(writes(out), [[2, 'MESSAGE_PART'], [3, 'MESSAGE_PART']]);
  assert.equal(c.session, 'S');
  assert.equal(out.find((o) => o.kind === 'write').rec.env.session, 'S');
});

test('duplicates are dropped and gaps wait for their fill, with a replay request', () => {
  const c = new ClientSession();
  c.connected(0);
  c.received(serverHai(1, null), 0);
  assert.deepEqual(delivered(c.received(part(2, 'x'), 0)), [2]);
  assert.deepEqual(delivered(c.received(part(2, 'x'), 0)), []);
  assert.deepEqual(delivered(c.received(part(4, 'z'), 0)), []);
  assert.equal(c.nextDeadline(), 500);
  const req = c.poll(600).find((o) => o.kind === 'write' && o.rec.env.type === 'REPLAY_REQUEST');
  assert.deepEqual(req.rec.env.payload, { from_seq: '3', to_seq: '3' });
  assert.deepEqual(delivered(c.received(part(3, 'y'), 700)), [3, 4]);
  assert.equal(c.lastRxSeq(), 4);
});

test('after a reconnect only what the server missed is sent again', () => {
  const c = new ClientSession();
  c.connected(0);
  c.received(serverHai(1, null), 0);
  for (const t of ['a', 'b', 'c']) send(c, t); // seqs 2, 3, 4
  c.received(server(2, 2, 'PONG', {}), 0); // the server acknowledged up to 2
  c.disconnected();
  const hai = c.connected(10);
  assert.equal(hai.env.session, 'S');
  assert.equal(hai.env.payload.last_rx_seq, '2');
  // The server had processed 3 but its ack never arrived: only 4 goes again.
  assert.deepEqual(writes(c.received(serverHai(3, 3), 11)), [[4, 'MESSAGE_PART']]);
});

test('a replaced session starts numbering over and renumbers what was pending', () => {
  const c = new ClientSession();
  c.connected(0);
  c.received(serverHai(1, null), 0);
  c.received(part(2, 'x'), 0);
  send(c, 'lost?'); // seq 2, never acknowledged
  c.disconnected();
  c.connected(5); // HAI seq 3
  const out = c.received(serverHai(1, null, { session: 'T' }), 6);
  assert.ok(out.some((o) => o.kind === 'replaced' && o.old === 'S' && o.new === 'T'));
  assert.deepEqual(writes(out), [[4, 'MESSAGE_PART']]);
  assert.equal(out.find((o) => o.kind === 'write').rec.env.session, 'T');
  assert.equal(c.lastRxSeq(), 1);
});

test('the connect-time RESUME_FAILED (seq 0) is delivered outside the numbering', () => {
  const c = new ClientSession();
  c.connected(0);
  c.received(serverHai(1, null), 0);
  c.received(part(2, 'x'), 0);
  c.disconnected();
  c.connected(1);
  const err = server(0, null, 'ERROR', { code: 'RESUME_FAILED', message: 'gone' }, 'T');
  assert.deepEqual(delivered(c.received(err, 2)), [0]);
  assert.equal(c.lastRxSeq(), 2);
});

test('ping is answered and our ping is timed', () => {
  const c = new ClientSession();
  c.connected(0);
  c.received(serverHai(1, null), 0);
  const pong = c.received(server(2, null, 'PING', { nonce: 'n1' }), 5).find((o) => o.kind === 'write');
  assert.equal(pong.rec.env.type, 'PONG');
  assert.equal(pong.rec.env.payload.nonce, 'n1');
  const ping = c.ping(100)[0].rec.env;
  const out = c.received(server(3, null, 'PONG', { nonce: ping.payload.nonce }), 142);
  assert.ok(out.some((o) => o.kind === 'latency' && o.ms === 42));
});

test("the server's credit is honoured and grants release in order", () => {
  const c = new ClientSession();
  c.connected(0);
  c.received(serverHai(1, null, { credit: { initial_credit_messages: 1 } }), 0);
  assert.equal(writes(send(c, 'a')).length, 1);
  assert.deepEqual(writes(send(c, 'b')), []);
  assert.deepEqual(writes(send(c, 'c')), []);
  const grant = server(2, null, 'FLOW_UPDATE', { channel: 'USER', add_messages: 5 });
  assert.deepEqual(writes(c.received(grant, 1)), [[3, 'MESSAGE_PART'], [4, 'MESSAGE_PART']]);
});

test('held messages keep their order across a reconnect', () => {
  const c = new ClientSession();
  c.connected(0);
  c.received(serverHai(1, null, { credit: { initial_credit_messages: 0 } }), 0);
  for (const t of ['a', 'b', 'c']) assert.deepEqual(writes(send(c, t)), []);
  c.disconnected();
  assert.equal(c.connected(1).seq, 1); // nothing followed the first HAI: its seq again
  const out = c.received(serverHai(2, 1, { credit: { initial_credit_messages: 10 } }), 2);
  assert.deepEqual(out.filter((o) => o.kind === 'write').map((o) => o.rec.env.payload.text), ['a', 'b', 'c']);
  assert.deepEqual(writes(out).map((w) => w[0]), [2, 3, 4]);
});

test('the pending bound refuses with a typed error', () => {
  const c = new ClientSession({ maxPending: 2 });
  send(c, 'a');
  send(c, 'b');
  assert.throws(() => send(c, 'c'), (e) => e instanceof HaipError && e.code === 'QUEUE_FULL');
});

test('failed attempts reuse the HAI seq and a lost HAI is resent', () => {
  const c = new ClientSession();
  assert.equal(c.connected(0).seq, 1);
  assert.equal(c.connected(1).seq, 1, 'nothing followed: same seq');
  c.received(serverHai(1, null), 2);
  c.disconnected();
  assert.equal(c.connected(3).seq, 1, 'still nothing after the first HAI');
});

test('the HAI offers credit, binary frames and the resume point', () => {
  const c = new ClientSession({ binaryFrames: true });
  const first = c.connected(0).env;
  assert.equal(first.payload.capabilities.binary_frames, true);
  assert.deepEqual(first.payload.capabilities.flow_control, { initial_credit_messages: 1000, initial_credit_bytes: 1048576 });
  assert.equal(first.payload.last_rx_seq, undefined);
  assert.equal(first.payload.accept_events.length, 22);
  c.received(serverHai(1, null), 0);
  c.received(part(2, 'x'), 0);
  c.disconnected();
  assert.equal(c.connected(1).env.payload.last_rx_seq, '2');
});

test('consumed credit goes back at half at once, else after a delay', () => {
  const m = new ReceiveMeter({ messages: 4, bytes: 1_000_000 });
  assert.equal(m.consumed('AGENT', 10, 0), null);
  assert.deepEqual(m.consumed('AGENT', 10, 0), { channel: 'AGENT', add_messages: 2, add_bytes: 20 });
  assert.equal(m.consumed('AGENT', 5, 100), null);
  assert.equal(m.nextFlush(), 100 + GRANT_DELAY_MS);
  assert.deepEqual(m.flush(99 + GRANT_DELAY_MS), []);
  assert.deepEqual(m.flush(100 + GRANT_DELAY_MS), [{ channel: 'AGENT', add_messages: 1, add_bytes: 5 }]);
  assert.equal(m.consumed('SYSTEM', 5, 0), null);
  assert.equal(new ReceiveMeter({ messages: null, bytes: null }).consumed('AGENT', 1, 0), null);
});

test('a consumed message grants credit back through the session', () => {
  const c = new ClientSession({ credit: { messages: 2, bytes: 1000 } });
  c.connected(0);
  c.received(serverHai(1, null), 0);
  const out = c.consumed('AGENT', 10, 0);
  assert.deepEqual(writes(out), [[2, 'FLOW_UPDATE']]);
  assert.deepEqual(out[0].rec.env.payload, { channel: 'AGENT', add_messages: 1, add_bytes: 10 });
});

test('pause holds a channel and resume releases it in order', () => {
  const g = new SendGate();
  g.pause('USER');
  assert.equal(g.offer('USER', 1, 1), null);
  assert.equal(g.offer('USER', 1, 2), null);
  assert.equal(g.offer('SYSTEM', 1, 9), 9);
  assert.deepEqual(g.resume('USER'), [1, 2]);
});

test('the sequencer asks again while a gap stays open', () => {
  const s = new Sequencer();
  s.accept(1, 'a', 0);
  s.accept(3, 'c', 0);
  assert.equal(s.pollGap(499), null);
  assert.deepEqual(s.pollGap(500), { from_seq: 2, to_seq: 2 });
  assert.equal(s.pollGap(999), null);
  assert.deepEqual(s.pollGap(1000), { from_seq: 2, to_seq: 2 });
});

test('envelopes from the wire are checked for what the client relies on', () => {
  assert.ok(parseEnvelope('{"id":"x","session":"S","seq":"1","ts":"0","channel":"AGENT","type":"PING","payload":{}}'));
  for (const bad of ['nope', '[]', '{"seq":1}', '{"session":"S","seq":"x","channel":"A","type":"T","payload":{}}',
    '{"session":"S","seq":"1","channel":"A","type":"T","payload":[]}']) {
    assert.equal(parseEnvelope(bad), null, bad);
  }
  assert.equal(utf8Length('héllo €𝄞'), 1 + 2 + 3 + 1 + 3 + 4);
});

// --- the client over a fake link: the frame handling that sits above the session -----

function fakeLink(transport) {
  return {
    transport,
    ended: false,
    written: [],
    attach(onframe, onend) {
      this.onframe = onframe;
      this.onend = onend;
    },
    write(recs, twoFrame) {
      this.written.push(...recs.map((r) => ({ type: r.env.type, twoFrame, binary: r.binary })));
    },
    saw() {},
    end(reason) {
      if (!this.ended) {
        this.ended = true;
        this.onend(reason);
      }
    },
    close() {
      this.end(new HaipError('CLOSED', 'closed'));
    },
  };
}

const wire = (seq, type, payload, extra = {}) =>
  JSON.stringify({ id: `s${seq}`, session: 'S', seq: String(seq), ts: '0', channel: 'AGENT', type, payload, ...extra });

test('a two-frame AUDIO_CHUNK is delivered with its bytes; a stray binary frame is reported', () => {
  const client = new HaipClient({ url: 'http://127.0.0.1:1', token: 't', pingInterval: 1e9 });
  const link = fakeLink('websocket');
  client.session.connected(0);
  client._serve(link, client._gen);
  const got = [];
  const errors = [];
  client.subscribe('agent.audio_chunk', (m, meta) => got.push([m.payload.message_id, [...meta.binary]]));
  client.onError((e) => errors.push(e.code));
  const hai = { haip_version: '1.1.2', accept_major: [1], accept_events: EVENT_TYPES, capabilities: { binary_frames: true } };
  link.onframe(JSON.stringify({ id: 's1', session: 'S', seq: '1', ts: '0', channel: 'SYSTEM', type: 'HAI', payload: hai }));
  assert.equal(client.status.state, 'connected');
  link.onframe(wire(2, 'AUDIO_CHUNK', { message_id: 'a', mime: 'audio/pcm' }, { bin_len: 3, bin_mime: 'audio/pcm' }));
  assert.deepEqual(got, [], 'waits for the binary frame');
  link.onframe(new Uint8Array([7, 8, 9]).buffer);
  assert.deepEqual(got, [['a', [7, 8, 9]]]);
  link.onframe(new Uint8Array([1]).buffer);
  assert.deepEqual(errors, ['BINARY_FRAME_ERROR']);
  // Base64 audio gives the same bytes.
  link.onframe(wire(3, 'AUDIO_CHUNK', { message_id: 'b', mime: 'audio/pcm', data: 'AQID' }));
  assert.deepEqual(got[1], ['b', [1, 2, 3]]);
  // What the client sends takes two frames because the server's HAI said binary_frames.
  client.sendAudio(new Uint8Array([4, 5]), 'audio/pcm');
  assert.deepEqual(link.written.at(-1), { type: 'AUDIO_CHUNK', twoFrame: true, binary: new Uint8Array([4, 5]) });
  client.close();
  clearTimeout(client._pollTimer);
});
