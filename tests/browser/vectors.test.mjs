// The shared session vectors (tests/vectors/session/*.json) run against the browser
// client's modules: in headless Chromium, loaded from the `haip serve` that
// scripts/browser-test started (which also checks that the server serves every module with
// the headers of /haip.js), and in Node from web/ directly. The Rust implementation runs
// the same files in crates/haip-client/tests/vectors.rs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';
import { runSessionVectors } from './session-vectors.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const VECTORS = path.join(ROOT, 'tests', 'vectors', 'session');
const PORT = Number(process.env.HAIP_SERVER_PORT);
const WAIT = 15000;
/** This runner's name in a case's `disagreement` (see the vectors' README). */
const THIS_SIDE = 'browser:';

if (!PORT) throw new Error('HAIP_SERVER_PORT must be set: run scripts/browser-test');

/** Every vector file, by name, as parsed cases. */
function loadVectors() {
  const files = {};
  for (const name of readdirSync(VECTORS).filter((f) => f.endsWith('.json')).sort()) {
    files[name] = JSON.parse(readFileSync(path.join(VECTORS, name), 'utf8'));
  }
  return files;
}

const files = loadVectors();
const caseCount = Object.values(files).reduce((n, cases) => n + cases.length, 0);

/** Every case ran; those without a disagreement of this side passed, those with one still
 *  disagree (when one is fixed, its mark must go). */
function assertResults(results) {
  assert.ok(caseCount > 0, 'no vectors found');
  assert.equal(results.length, caseCount, 'every case ran');
  const problems = [];
  for (const r of results) {
    const disagrees = typeof r.disagreement === 'string' && r.disagreement.startsWith(THIS_SIDE);
    if (!disagrees && r.error) problems.push(`${r.file}: ${r.name}: ${r.error}`);
    if (disagrees && !r.error) problems.push(`${r.file}: ${r.name}: passes now: remove its disagreement`);
  }
  assert.deepEqual(problems, []);
}

let browser;

before(async () => {
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu'], timeout: WAIT });
});

after(async () => {
  await browser?.close();
});

test('the vector files hold the four sets of cases', () => {
  assert.deepEqual(Object.keys(files), ['credit.json', 'resume.json', 'sequencer.json', 'session.json']);
  for (const [name, cases] of Object.entries(files)) {
    for (const c of cases) {
      assert.ok(typeof c.name === 'string' && Array.isArray(c.steps) && c.steps.length > 0, `${name}: ${c.name}`);
    }
  }
});

test('the server serves every module of the client with the headers of /haip.js', async () => {
  const origin = `http://127.0.0.1:${PORT}`;
  const entry = await fetch(`${origin}/haip.js`);
  assert.equal(entry.status, 200);
  const headers = (r) => ['content-type', 'cache-control', 'x-content-type-options'].map((h) => r.headers.get(h));
  assert.deepEqual(headers(entry), ['text/javascript; charset=utf-8', 'no-cache', 'nosniff']);
  const modules = readdirSync(path.join(ROOT, 'web', 'haip')).filter((f) => f.endsWith('.js'));
  assert.ok(modules.length > 0);
  for (const name of modules) {
    const r = await fetch(`${origin}/haip/${name}`);
    assert.equal(r.status, 200, name);
    assert.deepEqual(headers(r), headers(entry), name);
    assert.equal(await r.text(), readFileSync(path.join(ROOT, 'web', 'haip', name), 'utf8'), name);
  }
});

test('every session vector holds for the modules in Chromium, as the server serves them', { timeout: 60000 }, async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  try {
    // Any page of the server's origin: the modules are imported from it.
    await page.goto(`http://127.0.0.1:${PORT}/haip.js`);
    const results = await page.evaluate(runSessionVectors, { base: `http://127.0.0.1:${PORT}/`, files });
    assertResults(results);
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
  }
});

test('every session vector holds for the modules in Node, from web/', async () => {
  const results = await runSessionVectors({ base: pathToFileURL(path.join(ROOT, 'web') + path.sep).href, files });
  assertResults(results);
});
