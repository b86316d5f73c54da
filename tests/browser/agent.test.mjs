// The demo page with a model behind the server: `haip serve --agent openai` in front of a
// scripted OpenAI-compatible server (this file), driven in headless Chromium. Checks that
// the page shows the model's name on its replies, the tool calls the model makes in its
// run, and an upstream failure where the reply would be. (The real model is tested by the
// Rust test real_model.rs; a scripted one makes the tool round exact.) Loopback only; every
// wait is bounded.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const HAIP_BIN = process.env.HAIP_BIN;
const ARTIFACTS = process.env.HAIP_ARTIFACTS || path.join(ROOT, 'target/browser-artifacts');
const WAIT = 15000;
const MODEL = 'scripted-model';

if (!HAIP_BIN) throw new Error('HAIP_BIN must be set: run scripts/browser-test');

// --- the scripted model server -------------------------------------------------------

const chunk = (delta, finish = null) =>
  `data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
const answers = [];
const requests = [];

function startModel() {
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      requests.push(JSON.parse(body));
      const answer = answers.shift() || { status: 500, body: { error: { message: 'no scripted answer' } } };
      if (answer.status) {
        res.writeHead(answer.status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(answer.body));
        return;
      }
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (const piece of answer.stream) res.write(piece);
      res.end('data: [DONE]\n\n');
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

const toolRound = [
  chunk({ role: 'assistant', tool_calls: [{ index: 0, id: 'call_1', type: 'function', function: { name: 'add', arguments: '' } }] }),
  chunk({ tool_calls: [{ index: 0, function: { arguments: '{"a": 2,' } }] }),
  chunk({ tool_calls: [{ index: 0, function: { arguments: ' "b": 40}' } }] }),
  chunk({}, 'tool_calls'),
];
const textRound = (...parts) => [...parts.map((p) => chunk({ content: p })), chunk({}, 'stop')];

// --- haip serve in front of it -------------------------------------------------------

function startHaip(modelPort) {
  const child = spawn(HAIP_BIN, ['serve', '--host', '127.0.0.1', '--port', '0', '--agent', 'openai',
    '--openai-base-url', `http://127.0.0.1:${modelPort}/v1`, '--openai-model', MODEL,
    '--openai-api-key', 'sk-browser-test-key', '--enable-logging', 'false'], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`haip serve printed no token: ${out}`)), WAIT);
    child.stdout.on('data', (d) => {
      out += d;
      const port = /listening on 127\.0\.0\.1:(\d+)/.exec(out);
      const token = /^token \([^)]*\): (\S+)$/m.exec(out);
      if (port && token) {
        clearTimeout(timer);
        resolve({ child, port: Number(port[1]), token: token[1], banner: out });
      }
    });
    child.on('exit', (code) => reject(new Error(`haip serve exited ${code}: ${out}`)));
  });
}

let model;
let haip;
let context;
let profile;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  model = await startModel();
  haip = await startHaip(model.address().port);
  profile = mkdtempSync(path.join(tmpdir(), 'haip-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 800 },
    timeout: WAIT,
  });
  context.setDefaultTimeout(WAIT);
});

after(async () => {
  await context?.close();
  haip?.child.kill();
  model?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

async function send(page, text) {
  await page.fill('#message', text);
  await page.press('#message', 'Enter');
}

test('the banner names the agent and model, never the key', () => {
  assert.match(haip.banner, new RegExp(`agent: openai \\(model ${MODEL} at http://127\\.0\\.0\\.1:\\d+/v1, API key set\\)`));
  assert.ok(!haip.banner.includes('sk-browser-test-key'));
});

test('the demo page shows the model, its tool calls and its failures', { timeout: 60000 }, async () => {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  await page.goto(`http://127.0.0.1:${haip.port}/demo?token=${haip.token}`);
  await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'connected');

  answers.push({ stream: toolRound }, { stream: textRound('The sum ', 'is 42.') });
  await send(page, 'What is 2 + 40?');
  const tool = await page.waitForSelector('#chat li.tool[data-state="done"]');
  assert.equal(await tool.$eval('.text', (e) => e.textContent), 'add {"a":2,"b":40}');
  assert.equal(await tool.$eval('.meta', (e) => e.textContent), 'done → {"result":42}');
  await page.waitForFunction(() => {
    const li = [...document.querySelectorAll('#chat li.agent')].at(-1);
    return li && li.dataset.state === 'done';
  });
  const reply = await page.evaluate(() => {
    const li = [...document.querySelectorAll('#chat li.agent')].at(-1);
    return { text: li.querySelector('.text').textContent, meta: li.querySelector('.meta').textContent };
  });
  assert.deepEqual(reply, { text: 'The sum is 42.', meta: MODEL });
  // The tool call sits in the run, between the question and the answer.
  const order = await page.$$eval('#chat li', (lis) => lis.map((li) => li.className));
  assert.deepEqual(order, ['user', 'tool', 'agent']);
  // The model heard the tool's result.
  assert.equal(requests.length, 2);
  assert.equal(requests[1].messages.at(-1).role, 'tool');
  assert.deepEqual(JSON.parse(requests[1].messages.at(-1).content), { result: 42 });
  await page.screenshot({ path: path.join(ARTIFACTS, 'agent-tool-call.png') });

  answers.push({ status: 429, body: { error: { message: 'Rate limit reached, retry in 20s' } } });
  await send(page, 'Again?');
  const failed = await page.waitForSelector('#chat li.agent[data-state="error"]');
  const meta = await failed.$eval('.meta', (e) => e.textContent);
  assert.match(meta, /429/);
  assert.match(meta, /Rate limit reached/);
  assert.ok(!meta.includes('sk-browser-test-key'));

  // The session goes on.
  answers.push({ stream: textRound('Back.') });
  await send(page, 'Still there?');
  await page.waitForFunction(() => {
    const li = [...document.querySelectorAll('#chat li.agent')].at(-1);
    return li && li.dataset.state === 'done' && li.querySelector('.text').textContent === 'Back.';
  });
  assert.deepEqual(errors, []);
});

test('a complete answer in Markdown is rendered, and nothing in it runs as HTML', { timeout: 60000 }, async () => {
  const page = await context.newPage();
  await page.goto(`http://127.0.0.1:${haip.port}/demo?token=${haip.token}`);
  await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'connected');
  const markdown = [
    'Here is **bold**, `x < y` and a list:',
    '- one',
    '- two',
    '```js',
    'const a = 1 < 2;',
    '```',
    '<img src=x onerror="window.__pwned = 1"> [docs](https://example.com/docs) [bad](javascript:alert(1))',
  ].join('\n');
  // Streamed in small pieces, as a model does.
  const pieces = markdown.match(/[\s\S]{1,7}/g);
  answers.push({ stream: textRound(...pieces) });
  await send(page, 'Show me some Markdown');
  await page.waitForFunction(() => {
    const li = [...document.querySelectorAll('#chat li.agent')].at(-1);
    return li && li.dataset.state === 'done' && li.querySelector('pre');
  });
  const shown = await page.evaluate(() => {
    const body = [...document.querySelectorAll('#chat li.agent')].at(-1).querySelector('.text');
    return {
      strong: [...body.querySelectorAll('strong')].map((e) => e.textContent),
      code: [...body.querySelectorAll(':not(pre) > code')].map((e) => e.textContent),
      items: [...body.querySelectorAll('ul > li')].map((e) => e.textContent),
      block: body.querySelector('pre > code').textContent,
      lang: body.querySelector('pre > code').dataset.lang,
      links: [...body.querySelectorAll('a')].map((a) => a.href),
      images: body.querySelectorAll('img').length,
      text: body.textContent,
      pwned: window.__pwned,
    };
  });
  assert.deepEqual(shown.strong, ['bold']);
  assert.deepEqual(shown.code, ['x < y']);
  assert.deepEqual(shown.items, ['one', 'two']);
  assert.equal(shown.block, 'const a = 1 < 2;');
  assert.equal(shown.lang, 'js');
  assert.deepEqual(shown.links, ['https://example.com/docs']);
  assert.equal(shown.images, 0, 'HTML from the model is text, not elements');
  assert.ok(shown.text.includes('<img src=x'), shown.text);
  assert.ok(shown.text.includes('[bad](javascript:alert(1))'), 'only http(s) links are links');
  assert.equal(shown.pwned, undefined);
  await page.screenshot({ path: path.join(ARTIFACTS, 'agent-markdown.png') });
});
