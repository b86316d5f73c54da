// End-to-end tests of the demo page and web/haip.js in headless Chromium, against a real
// `haip serve` (started by scripts/browser-test, which passes HAIP_SERVER_PORT and
// HAIP_TOKEN). The page is loaded through a TCP proxy that the tests cut to drop every
// connection mid-reply. Every wait is bounded; loopback only.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync, copyFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startProxy } from './proxy.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const PORT = Number(process.env.HAIP_SERVER_PORT);
const TOKEN = process.env.HAIP_TOKEN;
const ARTIFACTS = process.env.HAIP_ARTIFACTS || path.join(ROOT, 'target/browser-artifacts');
const WAIT = 15000; // the longest any single wait may take
const TRANSPORTS = [
  { id: 'websocket', name: 'WebSocket' },
  { id: 'sse', name: 'SSE' },
  { id: 'stream', name: 'HTTP streaming' },
];

if (!PORT || !TOKEN) {
  throw new Error('HAIP_SERVER_PORT and HAIP_TOKEN must be set: run scripts/browser-test');
}

let context;
let proxy;
let base;
let profile;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  proxy = await startProxy(PORT);
  base = `http://127.0.0.1:${proxy.port}`;
  profile = mkdtempSync(path.join(tmpdir(), 'haip-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 800 },
    timeout: WAIT,
  });
  context.setDefaultTimeout(WAIT);
});

after(async () => {
  await context?.close();
  await proxy?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

// --- helpers ------------------------------------------------------------------------

async function openDemo(query, label) {
  const page = await context.newPage();
  const logFile = path.join(ARTIFACTS, `console-${label}.log`);
  const pageErrors = [];
  page.on('console', (m) => appendFileSync(logFile, `${m.type()}: ${m.text()}\n`));
  page.on('pageerror', (e) => {
    pageErrors.push(e);
    appendFileSync(logFile, `pageerror: ${e.stack || e.message}\n`);
  });
  page.pageErrors = pageErrors;
  await page.goto(`${base}/demo?${new URLSearchParams(query)}`);
  return page;
}

async function waitConnected(page, transport) {
  await page.waitForFunction(
    (name) => {
      const s = document.querySelector('#status');
      return s.dataset.state === 'connected' && s.textContent.includes(`over ${name}`);
    },
    transport.name,
  );
}

/** The agent bubbles: [{text, state}]. */
function agentReplies(page) {
  return page.$$eval('#chat li.agent', (lis) =>
    lis.map((li) => ({ text: li.querySelector('.text').textContent, state: li.dataset.state })));
}

/** Waits until reply number `n` (0-based) is in one of `states`. */
async function waitReply(page, n, states) {
  await page.waitForFunction(
    ({ n, states }) => {
      const li = document.querySelectorAll('#chat li.agent')[n];
      return li && states.includes(li.dataset.state);
    },
    { n, states },
  );
  return (await agentReplies(page))[n];
}

/** Waits until reply `n` shows at least `words` words. */
async function waitWords(page, n, words) {
  await page.waitForFunction(
    ({ n, words }) => {
      const li = document.querySelectorAll('#chat li.agent')[n];
      return li && li.querySelector('.text').textContent.trim().split(/\s+/).length >= words;
    },
    { n, words },
  );
}

/** Types a message and sends it with the keyboard (Enter). */
async function send(page, text) {
  await page.fill('#message', text);
  await page.press('#message', 'Enter');
}

/** Records every text the newest agent bubble shows, as the DOM changes. */
async function recordReplyText(page) {
  await page.evaluate(() => {
    window.__snaps = [];
    window.__snapObserver?.disconnect();
    window.__snapObserver = new MutationObserver(() => {
      const li = [...document.querySelectorAll('#chat li.agent')].at(-1);
      const text = li ? li.querySelector('.text').textContent : '';
      if (text && window.__snaps.at(-1) !== text) window.__snaps.push(text);
    });
    window.__snapObserver.observe(document.querySelector('#chat'), { subtree: true, childList: true, characterData: true });
  });
}

async function screenshot(page, name) {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// --- per transport ------------------------------------------------------------------

for (const transport of TRANSPORTS) {
  test(`demo page over ${transport.name}`, { timeout: 90000 }, async (t) => {
    const page = await openDemo({ token: TOKEN, transport: transport.id }, transport.id);
    await waitConnected(page, transport);

    await t.test('a message is answered word by word with the exact text', async () => {
      const text = 'the quick brown fox jumps over the lazy dog';
      await recordReplyText(page);
      await send(page, text);
      assert.equal(await page.inputValue('#message'), '', 'Enter sent the message');
      const reply = await waitReply(page, 0, ['done']);
      assert.equal(reply.text, text);
      const snaps = await page.evaluate(() => window.__snaps);
      assert.ok(snaps.length >= 4, `the reply grew in several steps, saw ${JSON.stringify(snaps)}`);
      for (let i = 1; i < snaps.length; i++) {
        assert.ok(snaps[i].startsWith(snaps[i - 1]) && snaps[i].length > snaps[i - 1].length, 'each step adds words');
      }
      assert.equal(snaps.at(-1), text);
    });

    await t.test('the sleep tool shows progress, then its result', async () => {
      await page.evaluate(() => {
        window.__progress = [];
        window.__toolStatus = [];
        const bar = document.querySelector('#tool-progress');
        new MutationObserver(() => window.__progress.push(Number(bar.value))).observe(bar, { attributes: true });
        const st = document.querySelector('#tool-status');
        new MutationObserver(() => window.__toolStatus.push(st.textContent)).observe(st, { childList: true, characterData: true, subtree: true });
      });
      await page.selectOption('#tool-select', 'sleep');
      await page.waitForSelector('#param-ms');
      await page.fill('#param-ms', '1500');
      await page.press('#param-ms', 'Enter'); // the keyboard submits the tool form
      await page.waitForFunction(() => document.querySelector('#tool-status').textContent === 'sleep: done');
      const result = JSON.parse(await page.textContent('#tool-result'));
      assert.deepEqual(result, { slept_ms: 1500 });
      const progress = await page.evaluate(() => window.__progress);
      const between = progress.filter((p) => p > 0 && p < 100);
      assert.ok(between.length >= 3, `progress reported along the way: ${JSON.stringify(progress)}`);
      assert.deepEqual([...between].sort((a, b) => a - b), between, 'progress only grows');
      assert.equal(progress.at(-1), 100);
      const statuses = await page.evaluate(() => window.__toolStatus);
      assert.ok(statuses.some((s) => /RUNNING \d+%/.test(s)), `TOOL_UPDATE shown: ${JSON.stringify(statuses)}`);
      if (transport.id === 'websocket') {
        await page.evaluate(() => document.activeElement.blur()); // no focus ring in the picture
        const atEnd = await page.$eval('#log', (el) => el.scrollHeight - el.scrollTop - el.clientHeight < 40);
        assert.ok(atEnd, 'the message log follows the newest message');
        await screenshot(page, 'laptop');
      }
    });

    await t.test('a reply can be cancelled mid-stream', async () => {
      const long = Array.from({ length: 80 }, (_, i) => `c${i + 1}`).join(' ');
      await send(page, long);
      await waitWords(page, 1, 4);
      await page.click('#cancel');
      const reply = await waitReply(page, 1, ['cancelled']);
      await sleep(400);
      const later = (await agentReplies(page))[1];
      assert.equal(later.text, reply.text, 'the reply stopped');
      assert.ok(long.startsWith(reply.text) && reply.text.length < long.length, `a strict prefix: ${reply.text}`);
      const finished = await page.$$eval('#log li.in', (lis) => lis
        .filter((li) => li.querySelector('.type').textContent === 'RUN_FINISHED')
        .map((li) => li.querySelector('.payload').textContent));
      assert.ok(finished.some((p) => p.includes('"status":"CANCELLED"')), `RUN_FINISHED CANCELLED in the log: ${finished}`);
      await page.waitForFunction(() => document.querySelector('#cancel').disabled);
    });

    await t.test('a dropped connection is resumed with no word lost or repeated', async () => {
      await page.evaluate(() => {
        const c = window.haipDemo.client;
        window.__parts = [];
        window.__states = [];
        window.__statusTexts = [];
        c.subscribe('agent.message_part', (m) => window.__parts.push([Number(m.seq), m.payload.message_id, m.payload.text]));
        c.onStatus((s) => window.__states.push(s.state));
        const st = document.querySelector('#status-text');
        new MutationObserver(() => window.__statusTexts.push(st.textContent)).observe(st, { childList: true, characterData: true, subtree: true });
      });
      const first = Array.from({ length: 50 }, (_, i) => `w${String(i + 1).padStart(2, '0')}`).join(' ');
      const second = 'sent while the connection was down';
      await send(page, first);
      await waitWords(page, 2, 8);
      const cut = proxy.cut(400); // every connection reset; new ones refused for 400 ms
      assert.ok(cut > 0, 'the page had connections to cut');
      await page.waitForFunction(() => window.__states.includes('reconnecting'));
      await send(page, second); // queued while offline, sent after the resume
      const a = await waitReply(page, 2, ['done']);
      const b = await waitReply(page, 3, ['done']);
      await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'connected');
      assert.equal(a.text, first, 'the interrupted reply is whole');
      assert.equal(b.text, second, 'the message sent while offline was answered');
      const parts = await page.evaluate(() => window.__parts);
      const seqs = parts.map((p) => p[0]);
      assert.deepEqual(seqs, [...new Set(seqs)].sort((x, y) => x - y), 'each seq once, in order');
      const byMessage = new Map();
      for (const [, id, text] of parts) byMessage.set(id, (byMessage.get(id) || '') + text);
      assert.deepEqual([...byMessage.values()], [first, second], 'parts rebuild each reply exactly');
      const states = await page.evaluate(() => window.__states);
      assert.ok(states.indexOf('connected', states.indexOf('reconnecting')) > 0, `reconnected: ${states}`);
      const texts = await page.evaluate(() => window.__statusTexts);
      assert.ok(texts.some((s) => /attempt \d+/.test(s)), `the status showed the reconnect: ${JSON.stringify(texts)}`);
      await screenshot(page, `${transport.id}-after-resume`);
    });

    assert.deepEqual(page.pageErrors.map((e) => e.message), [], 'no uncaught error in the page');
    await page.close();
  });
}

// --- the client API, straight from the module -----------------------------------------

for (const transport of TRANSPORTS) {
  test(`haip.js API over ${transport.name}`, { timeout: 30000 }, async () => {
    const page = await openDemo({}, `api-${transport.id}`);
    const out = await page.evaluate(async ({ token, transport, wait }) => {
      const { HaipClient, HaipError } = await import('/haip.js');
      const bounded = (p) => Promise.race([p, new Promise((_, reject) => setTimeout(() => reject(new Error('timeout')), wait))]);
      const c = new HaipClient({ token, transports: [transport] });
      const r = {};
      await bounded(c.connect());
      r.transport = c.transport;
      r.tools = (await bounded(c.listTools())).map((t) => t.name);
      r.schema = await bounded(c.toolSchema('sleep'));
      r.add = await bounded(c.callTool('add', { a: 2, b: 3 }));
      try {
        await bounded(c.callTool('nope', {}));
      } catch (e) {
        r.notFound = [e instanceof HaipError, e.code];
      }
      try {
        await bounded(c.callTool('add', { a: 'x' }));
      } catch (e) {
        r.badParams = [e instanceof HaipError, e.code];
      }
      const abort = new AbortController();
      const updates = [];
      try {
        await bounded(c.callTool('sleep', { ms: 5000 }, {
          signal: abort.signal,
          onUpdate: (u) => { updates.push(u.status); abort.abort(); },
        }));
      } catch (e) {
        r.cancelled = e.code;
      }
      r.updates = updates;
      // Audio comes back with identical bytes: two frames on WebSocket, base64 elsewhere.
      const bytes = Uint8Array.from({ length: 3000 }, (_, i) => (i * 7) % 256);
      const echoed = new Promise((resolve) => c.subscribe('agent.audio_chunk', (m, meta) => resolve({
        length: meta.binary.length,
        same: meta.binary.every((b, i) => b === bytes[i]),
        mime: m.payload.mime,
        twoFrame: m.bin_len !== undefined,
      })));
      c.sendAudio(bytes, 'audio/pcm');
      r.audio = await bounded(echoed);
      try {
        c.subscribe('a.>.b', () => {});
      } catch (e) {
        r.badPattern = e.code;
      }
      // A reply longer than the credit this client grants: it only arrives whole if the
      // client hands credit back (FLOW_UPDATE) as it delivers.
      const small = new HaipClient({ token, transports: [transport], credit: { messages: 10 } });
      let grants = 0;
      small.onTrace((d, e) => { if (d === 'out' && e.type === 'FLOW_UPDATE') grants += 1; });
      let streamed = '';
      const finished = new Promise((resolve) => {
        small.subscribe('agent.message_part', (m) => { streamed += m.payload.text; });
        small.subscribe('agent.run_finished', resolve);
      });
      const words = Array.from({ length: 40 }, (_, i) => `k${i}`).join(' ');
      await bounded(small.connect());
      small.sendText(words);
      await bounded(finished);
      r.credit = { whole: streamed === words, grants: grants > 0 };
      small.close();
      r.session = c.sessionId;
      c.close();
      r.closed = c.status.state;
      // A session the server does not know (as after a server restart): RESUME_FAILED,
      // then a fresh session, on which what was waiting is sent and answered.
      c.session.session = '00000000-0000-4000-8000-000000000000';
      const errors = [];
      c.onError((e) => errors.push(e.code));
      const answered = new Promise((resolve) => c.subscribe('agent.message_part', (m) => resolve(m.payload.text)));
      c.sendText('again');
      await bounded(c.connect());
      r.afterLoss = await bounded(answered);
      r.resumeFailed = errors.includes('RESUME_FAILED');
      r.freshSession = c.sessionId !== r.session && /^[0-9a-f-]{36}$/.test(c.sessionId);
      c.close();
      return r;
    }, { token: TOKEN, transport: transport.id, wait: WAIT });
    assert.equal(out.transport, transport.id);
    assert.deepEqual(out.tools, ['echo', 'add', 'sleep']);
    assert.equal(out.schema.properties.ms.type, 'integer');
    assert.deepEqual(out.add, { result: 5 });
    assert.deepEqual(out.notFound, [true, 'TOOL_NOT_FOUND']);
    assert.deepEqual(out.badParams, [true, 'TOOL_EXECUTION_ERROR']);
    assert.equal(out.cancelled, 'CANCELLED');
    assert.equal(out.updates[0], 'RUNNING');
    assert.deepEqual({ ...out.audio, twoFrame: undefined }, { length: 3000, same: true, mime: 'audio/pcm', twoFrame: undefined });
    if (transport.id !== 'websocket') assert.equal(out.audio.twoFrame, false, 'base64 off WebSocket');
    twoFrameSeen[transport.id] = out.audio.twoFrame;
    assert.equal(out.badPattern, 'INVALID_PATTERN');
    assert.match(out.session, /^[0-9a-f-]{36}$/);
    assert.equal(out.closed, 'disconnected');
    assert.deepEqual([out.resumeFailed, out.freshSession, out.afterLoss], [true, true, 'again']);
    assert.deepEqual(out.credit, { whole: true, grants: true });
    await page.close();
  });
}

const twoFrameSeen = {};

// The contract sends AUDIO_CHUNK as two frames to a WebSocket client whose HAI says
// binary_frames (haip.js does).
test('AUDIO_CHUNK reaches a WebSocket client that takes binary frames as two frames', () => {
  assert.equal(twoFrameSeen.websocket, true);
});

test('a bad token is a typed error on every transport, shown in the status', { timeout: 30000 }, async () => {
  for (const transport of TRANSPORTS) {
    const page = await openDemo({ token: 'not-a-token', transport: transport.id }, `badtoken-${transport.id}`);
    await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'error');
    assert.match(await page.textContent('#status-text'), /AUTHENTICATION_FAILED/, transport.id);
    await page.close();
  }
});

test('the transport picker moves the session to another transport', { timeout: 30000 }, async () => {
  const page = await openDemo({ token: TOKEN }, 'picker');
  await waitConnected(page, TRANSPORTS[0]);
  const session = await page.evaluate(() => window.haipDemo.client.sessionId);
  for (const [n, transport] of [TRANSPORTS[2], TRANSPORTS[1]].entries()) {
    await page.selectOption('#transport', transport.id);
    await waitConnected(page, transport);
    assert.equal(await page.evaluate(() => window.haipDemo.client.sessionId), session, 'the same session, resumed');
    const text = `hello over ${transport.name}`;
    await send(page, text);
    assert.equal((await waitReply(page, n, ['done'])).text, text);
  }
  await page.close();
});

test('the page fits a phone and a laptop', { timeout: 30000 }, async () => {
  const page = await openDemo({ token: TOKEN }, 'layout');
  await waitConnected(page, TRANSPORTS[0]);
  await send(page, 'hello from a small screen');
  await waitReply(page, 0, ['done']);
  for (const [name, viewport] of [['phone', { width: 390, height: 844 }], ['laptop-1366', { width: 1366, height: 768 }]]) {
    await page.setViewportSize(viewport);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `${name}: no sideways scrolling (${overflow}px too wide)`);
    await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: name === 'phone' });
  }
  // Keyboard: Tab order starts at the token field and reaches the composer.
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.focus('#token');
  const order = [];
  for (let i = 0; i < 6; i++) {
    await page.keyboard.press('Tab');
    order.push(await page.evaluate(() => document.activeElement.id));
  }
  assert.deepEqual(order.slice(0, 3), ['transport', 'connect', 'message'], `tab order: ${order}`);
  await page.close();
});

after(() => {
  // The README's screenshot is refreshed on request only, so a test run leaves the tree clean.
  if (process.env.HAIP_UPDATE_DOCS === '1') {
    copyFileSync(path.join(ARTIFACTS, 'laptop.png'), path.join(ROOT, 'docs/demo.png'));
  }
});
