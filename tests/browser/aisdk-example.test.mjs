// The AI SDK example (examples/ai-sdk-react, built to dist/): useChat from @ai-sdk/react with
// DefaultChatTransport and `resume: true`, against haip-rs's AI SDK endpoint, in headless
// Chromium. The page is served from another origin than the server (CORS on the way). Checks
// that an answer streams in and ends whole, that a reload mid-answer resumes it to its end
// (no word twice or missing, the earlier messages still shown), and that Stop stops the
// answer on the server too. Its own `haip serve` (60 ms/word); loopback only; every wait is
// bounded.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const HAIP_BIN = process.env.HAIP_BIN;
const ARTIFACTS = process.env.HAIP_ARTIFACTS || path.join(ROOT, 'target/browser-artifacts');
const DIST = path.join(ROOT, 'examples/ai-sdk-react/dist');
const WAIT = 15000;
const WORD_DELAY_MS = 60;

if (!HAIP_BIN) throw new Error('HAIP_BIN must be set: run scripts/browser-test');
if (!existsSync(path.join(DIST, 'index.html'))) {
  throw new Error(`${DIST} is missing: scripts/browser-test builds it (npm ci && npx vite build in examples/ai-sdk-react)`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const words = (prefix, n) => Array.from({ length: n }, (_, i) => `${prefix}${i + 1}`).join(' ');

// --- haip serve, of this test's own ----------------------------------------------------

function startHaip() {
  const log = openSync(path.join(ARTIFACTS, 'aisdk-server.log'), 'w');
  const child = spawn(HAIP_BIN, ['serve', '--host', '127.0.0.1', '--port', '0',
    '--echo-word-delay', String(WORD_DELAY_MS)], { stdio: ['ignore', 'pipe', log] });
  closeSync(log);
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`haip serve printed no address or token: ${out}`)), WAIT);
    child.stdout.on('data', (d) => {
      out += d;
      const port = /^haip-rs listening on 127\.0\.0\.1:(\d+)$/m.exec(out);
      const token = /^token \([^)]*\): (\S+)$/m.exec(out);
      if (port && token) {
        clearTimeout(timer);
        resolve({ child, port: Number(port[1]), token: token[1] });
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`haip serve exited ${code}: ${out}`));
    });
  });
}

// --- the built example, from a static server on another port (another origin) -----------

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css',
  '.svg': 'image/svg+xml', '.json': 'application/json' };

function startStatic() {
  const server = createServer((req, res) => {
    const { pathname } = new URL(req.url, 'http://x');
    if (pathname === '/favicon.ico') {
      res.writeHead(204).end(); // Chromium asks for it whatever the page says
      return;
    }
    const file = path.normalize(path.join(DIST, decodeURIComponent(pathname === '/' ? '/index.html' : pathname)));
    if (!file.startsWith(DIST + path.sep) || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] || 'application/octet-stream' });
    res.end(readFileSync(file));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

let haip;
let site;
let context;
let profile;
let pageUrl;
let apiBase;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  haip = await startHaip();
  site = await startStatic();
  apiBase = `http://127.0.0.1:${haip.port}/api/chat`;
  pageUrl = `http://127.0.0.1:${site.address().port}/?server=${encodeURIComponent(`http://127.0.0.1:${haip.port}`)}`
    + `&token=${encodeURIComponent(haip.token)}`;
  profile = mkdtempSync(path.join(tmpdir(), 'haip-aisdk-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium', headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 800 }, timeout: WAIT,
  });
  context.setDefaultTimeout(WAIT);
});

after(async () => {
  await context?.close();
  site?.close();
  if (haip) {
    const exited = new Promise((r) => haip.child.once('exit', r));
    haip.child.kill();
    await Promise.race([exited, sleep(5000)]);
  }
  if (profile) rmSync(profile, { recursive: true, force: true });
});

// --- the page ---------------------------------------------------------------------------

/** A new tab (so a new chat: its id lives in sessionStorage) on the example. */
async function openChat() {
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()} (${m.location().url})`); });
  const resumed = waitForResume(page);
  await page.goto(pageUrl);
  // useChat's `resume: true` asks at once for an answer in progress; a new chat has none.
  assert.equal((await resumed).status(), 204, 'a new chat has no answer to resume');
  assert.equal(await status(page), 'ready');
  return { page, problems };
}

const waitForResume = (page) => page.waitForResponse(
  (r) => r.request().method() === 'GET' && /\/api\/chat\/[^/]+\/stream$/.test(r.url()), { timeout: WAIT });

const status = (page) => page.textContent('[data-testid=status]');
const chatId = (page) => page.textContent('[data-testid=chat-id]');

/** What the page shows: [{ role, text }], in order. */
const shown = (page) => page.$$eval('[data-testid=message]', (lis) => lis.map((li) => ({
  role: li.dataset.role,
  text: [...li.querySelectorAll('[data-testid=message-text]')].map((t) => t.textContent).join(''),
})));

/** The text of the page's `n`th answer (from 0); '' while it is not there yet. */
const answer = async (page, n) => (await shown(page)).filter((m) => m.role === 'assistant')[n]?.text ?? '';

async function send(page, text) {
  await page.fill('[data-testid=input]', text);
  await page.click('[data-testid=send]');
}

/**
 * Samples the `n`th answer and the status every 40 ms until `done(sample)` or `ms` pass
 * (then throws). Every sample must be a prefix of `expected`: nothing but the sent words,
 * in order, each once.
 */
async function watch(page, n, expected, done, ms = WAIT) {
  const samples = [];
  const deadline = Date.now() + ms;
  for (;;) {
    const sample = { text: await answer(page, n), status: await status(page) };
    samples.push(sample);
    assert.ok(expected.startsWith(sample.text), `the answer so far is a prefix of the words sent: ${JSON.stringify(sample.text)}`);
    if (done(sample)) return samples;
    if (Date.now() > deadline) {
      throw new Error(`not done within ${ms} ms; last: ${JSON.stringify(sample)}`);
    }
    await sleep(40);
  }
}

const wordCount = (text) => (text ? text.trim().split(/\s+/).length : 0);
const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, name) });

/** The status of GET /api/chat/{id}/stream, asked by Node: 204 when nothing is in progress. */
async function serverStream(id) {
  const res = await fetch(`${apiBase}/${encodeURIComponent(id)}/stream`, { headers: { Authorization: `Bearer ${haip.token}` } });
  await res.body?.cancel();
  return res.status;
}

// --- the tests --------------------------------------------------------------------------

test('an answer streams in, word by word, and ends with exactly the words sent', { timeout: 60000 }, async () => {
  const { page, problems } = await openChat();
  const sent = words('a', 25);
  await send(page, sent);
  const samples = await watch(page, 0, sent, (s) => s.status === 'ready' && s.text === sent);
  // It grew while streaming: several partial answers were shown before the whole one.
  const partial = new Set(samples.filter((s) => s.text && s.text !== sent).map((s) => s.text));
  assert.ok(partial.size >= 3, `the answer was shown growing (${partial.size} partial states)`);
  assert.ok(samples.some((s) => s.status === 'streaming'), 'the status said streaming');
  assert.deepEqual(await shown(page), [{ role: 'user', text: sent }, { role: 'assistant', text: sent }]);
  // Nothing is left in progress on the server.
  assert.equal(await serverStream(await chatId(page)), 204);
  await shot(page, 'aisdk-answer.png');
  assert.deepEqual(problems, []);
  await page.close();
});

test('a reload mid-answer resumes it: the answer ends whole and the earlier messages stay', { timeout: 60000 }, async () => {
  const { page, problems } = await openChat();
  const first = 'a short first question';
  await send(page, first);
  await watch(page, 0, first, (s) => s.status === 'ready' && s.text === first);

  const sent = words('b', 60);
  await send(page, sent);
  await watch(page, 1, sent, (s) => wordCount(s.text) >= 8);
  const id = await chatId(page);
  const resumed = waitForResume(page);
  await page.reload();
  // The same chat, and the server had its answer still in progress: 200, a replay.
  assert.equal(await chatId(page), id, 'the chat id survives the reload');
  assert.equal((await resumed).status(), 200, 'the answer in progress is resumed');
  const before = await shown(page);
  assert.deepEqual(before.slice(0, 3), [{ role: 'user', text: first }, { role: 'assistant', text: first },
    { role: 'user', text: sent }], 'the conversation is shown again after the reload');

  const samples = await watch(page, 1, sent, (s) => s.status === 'ready' && s.text === sent);
  assert.ok(samples.some((s) => s.text !== sent && wordCount(s.text) > 0), 'the answer was still growing after the reload');
  assert.deepEqual(await shown(page), [{ role: 'user', text: first }, { role: 'assistant', text: first },
    { role: 'user', text: sent }, { role: 'assistant', text: sent }], 'one answer each, every word once, in order');
  assert.equal(await serverStream(id), 204);
  await shot(page, 'aisdk-reload.png');
  assert.deepEqual(problems, []);

  // A second reload, with nothing in progress, shows the same conversation.
  const again = waitForResume(page);
  await page.reload();
  assert.equal((await again).status(), 204);
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=message]').length === 4);
  assert.deepEqual((await shown(page)).map((m) => m.text), [first, first, sent, sent]);
  await page.close();
});

test('Stop stops the answer, on the page and on the server', { timeout: 60000 }, async () => {
  const { page, problems } = await openChat();
  const id = await chatId(page);
  const sent = words('c', 60);
  await send(page, sent);
  await watch(page, 0, sent, (s) => wordCount(s.text) >= 5);
  const cancelled = page.waitForResponse((r) => r.request().method() === 'DELETE'
    && r.url() === `${apiBase}/${encodeURIComponent(id)}/stream`, { timeout: WAIT });
  const clicked = Date.now();
  await page.click('[data-testid=stop]');
  assert.ok((await cancelled).ok(), 'DELETE /api/chat/{id}/stream succeeded');
  // The server stopped: nothing in progress within 1.5 s of Stop, while the whole answer
  // would have taken seconds more (30 words or more to go at 60 ms, checked below).
  let code = 0;
  while (Date.now() - clicked < 1500) {
    code = await serverStream(id);
    if (code === 204) break;
    await sleep(50);
  }
  assert.equal(code, 204, 'GET /api/chat/{id}/stream: nothing in progress after Stop');

  await watch(page, 0, sent, (s) => s.status === 'ready', 5000);
  const stopped = await answer(page, 0);
  // Ten words' time later, the answer is where it stopped: a strict prefix of what was sent,
  // cut between words.
  await sleep(10 * WORD_DELAY_MS);
  assert.equal(await answer(page, 0), stopped, 'the answer stopped growing');
  assert.equal(await status(page), 'ready');
  assert.ok(wordCount(stopped) >= 5 && wordCount(stopped) <= 30, `stopped mid-answer: ${JSON.stringify(stopped)}`);
  assert.ok(sent.startsWith(stopped) && sent.startsWith(`${stopped.trimEnd()} `), `a strict prefix, cut between words: ${JSON.stringify(stopped)}`);
  assert.equal(await page.locator('[data-testid=notice]').count(), 0);
  await shot(page, 'aisdk-stop.png');

  // The chat goes on: the next message is answered, whole.
  const next = 'and now a short one';
  await send(page, next);
  await watch(page, 1, next, (s) => s.status === 'ready' && s.text === next);
  const texts = (await shown(page)).map((m) => `${m.role}: ${m.text}`);
  assert.deepEqual(texts, [`user: ${sent}`, `assistant: ${stopped}`, `user: ${next}`, `assistant: ${next}`]);
  assert.deepEqual(problems, []);
  await page.close();
});
