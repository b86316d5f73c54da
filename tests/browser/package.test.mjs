// The npm package of the client (web/package.json): packed with `npm pack`, installed from
// the tarball into a fresh project, and used from a Node script and from a page in
// headless Chromium, against the `haip serve` that scripts/browser-test started.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const PORT = Number(process.env.HAIP_SERVER_PORT);
const TOKEN = process.env.HAIP_TOKEN;
const WAIT = 15000;

if (!PORT || !TOKEN) throw new Error('HAIP_SERVER_PORT and HAIP_TOKEN must be set: run scripts/browser-test');

let work;
let project;

before(() => {
  work = mkdtempSync(path.join(tmpdir(), 'haip-npm-'));
  const packed = execFileSync('npm', ['pack', '--silent', '--pack-destination', work, path.join(ROOT, 'web')], { encoding: 'utf8' }).trim().split('\n').at(-1);
  const tarball = path.join(work, packed);
  project = path.join(work, 'app');
  execFileSync('mkdir', ['-p', project]);
  writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  execFileSync('npm', ['install', '--silent', '--no-audit', '--no-fund', '--offline', tarball], { cwd: project });
});

after(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

test('the tarball holds the modules, their types and the README, nothing else', () => {
  const dir = path.join(project, 'node_modules', '@haip-rs', 'client');
  assert.deepEqual(readdirSync(dir).sort(), ['README.md', 'haip', 'haip.d.ts', 'haip.js', 'package.json']);
  // Every module of the source tree, and only those.
  const modules = readdirSync(path.join(ROOT, 'web', 'haip')).filter((f) => f.endsWith('.js')).sort();
  assert.ok(modules.length > 0);
  assert.deepEqual(readdirSync(path.join(dir, 'haip')).sort(), modules);
});

/** Runs `code` as an ES module in the project; returns its stdout. */
function runNode(code) {
  const file = path.join(project, `run-${Math.random().toString(36).slice(2)}.mjs`);
  writeFileSync(file, code);
  return execFileSync(process.execPath, [file], { cwd: project, encoding: 'utf8', timeout: WAIT,
    env: { ...process.env, HAIP_URL: `http://127.0.0.1:${PORT}` } });
}

test('a Node script uses the installed package over HTTP streaming', () => {
  const out = runNode(`
    import { HaipClient } from '@haip-rs/client';
    const client = new HaipClient({ url: process.env.HAIP_URL, token: ${JSON.stringify(TOKEN)}, transports: ['stream'] });
    let text = '';
    const done = new Promise((resolve) => {
      client.subscribe('agent.message_part', (m) => { text += m.payload.text; });
      client.subscribe('agent.run_finished', () => resolve());
    });
    await client.connect();
    client.sendText('from node');
    await done;
    client.close();
    console.log(JSON.stringify(text));
  `);
  assert.equal(JSON.parse(out.trim()), 'from node');
});

test('without a WebSocket of its own, Node fails at once saying what to pass', { skip: typeof globalThis.WebSocket === 'function' && 'this Node has a WebSocket' }, () => {
  const out = runNode(`
    import { HaipClient } from '@haip-rs/client';
    const client = new HaipClient({ url: process.env.HAIP_URL, token: 'x', reconnect: { maxAttempts: 0 } });
    const started = Date.now();
    try {
      await client.connect();
      console.log(JSON.stringify({ connected: true }));
    } catch (e) {
      console.log(JSON.stringify({ code: e.code, message: e.message, ms: Date.now() - started }));
    }
    client.close();
  `);
  const result = JSON.parse(out.trim());
  assert.equal(result.code, 'UNSUPPORTED', out);
  assert.match(result.message, /WebSocket/);
  assert.ok(result.ms < 5000, `not retried: ${out}`);
});

test('a page in Chromium uses the installed package', { timeout: 60000 }, async () => {
  const installed = path.join(project, 'node_modules', '@haip-rs', 'client');
  const page = `<!doctype html><meta charset="utf-8"><script type="module">
    import { HaipClient } from './haip.js';
    const client = new HaipClient({ url: 'http://127.0.0.1:${PORT}', token: ${JSON.stringify(TOKEN)} });
    let text = '';
    client.subscribe('agent.message_part', (m) => { text += m.payload.text; });
    client.subscribe('agent.run_finished', () => { window.__echo = text; });
    await client.connect();
    client.sendText('from the page');
  </script>`;
  const server = createServer((req, res) => {
    // The entry module and the modules it imports, as the package installed them.
    if (req.url === '/haip.js' || /^\/haip\/[a-z]+\.js$/.test(req.url)) {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      res.end(readFileSync(path.join(installed, req.url)));
    } else {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(page);
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu'] });
  try {
    const tab = await browser.newPage();
    await tab.goto(`http://127.0.0.1:${server.address().port}/`);
    await tab.waitForFunction(() => typeof window.__echo === 'string', null, { timeout: WAIT });
    assert.equal(await tab.evaluate(() => window.__echo), 'from the page');
  } finally {
    await browser.close();
    server.close();
  }
});
