// The admin page (/admin) in headless Chromium: the server's figures and their chart fill
// in, every session's messages show live for an admin token, and a user token is refused
// on the page in plain words.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const PORT = Number(process.env.HAIP_SERVER_PORT);
const TOKEN = process.env.HAIP_TOKEN;
const SECRET = process.env.HAIP_JWT_SECRET;
const HAIP_BIN = process.env.HAIP_BIN;
const WAIT = 15000;

if (!PORT || !TOKEN || !SECRET || !HAIP_BIN) {
  throw new Error('HAIP_SERVER_PORT, HAIP_TOKEN, HAIP_JWT_SECRET and HAIP_BIN must be set: run scripts/browser-test');
}

let context;
let profile;

before(async () => {
  profile = mkdtempSync(path.join(tmpdir(), 'haip-admin-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium', headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu'], timeout: WAIT,
  });
  context.setDefaultTimeout(WAIT);
});

after(async () => {
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

const mint = (role) => execFileSync(HAIP_BIN, ['token', '--secret', SECRET, '--sub', 'root', ...(role ? ['--role', role] : [])], { encoding: 'utf8' }).trim();
const base = `http://127.0.0.1:${PORT}`;

test('an admin sees the figures, their chart and every session live', { timeout: 60000 }, async () => {
  const page = await context.newPage();
  await page.goto(`${base}/admin?token=${mint('admin')}`);
  await page.waitForFunction(() => document.querySelector('#state').textContent === 'watching');
  await page.waitForFunction(() => /^\d+ s$/.test(document.querySelector('#uptime').textContent));
  assert.match(await page.textContent('#memory'), /MiB/);
  // Someone chats: their message and the answer show up.
  execFileSync(HAIP_BIN, ['send', 'watched words', '--url', base, '--token', TOKEN]);
  await page.waitForFunction(() => [...document.querySelectorAll('#feed li')].some((li) => li.dataset.type === 'MESSAGE_PART' && li.classList.contains('out')));
  const lines = await page.$$eval('#feed li', (lis) => lis.map((li) => li.textContent));
  assert.ok(lines.some((l) => l.includes('→ demo') && l.includes('MESSAGE_START')), lines.join('\n'));
  assert.ok(lines.some((l) => l.includes('watched')), lines.join('\n'));
  // A few seconds of figures make a chart.
  await page.waitForFunction(() => Number(document.querySelector('#chart').dataset.points || 0) >= 3);
});

test('a user token is refused on the page in plain words', async () => {
  const page = await context.newPage();
  await page.goto(`${base}/admin?token=${mint(null)}`);
  await page.waitForFunction(() => document.querySelector('#state').classList.contains('bad'));
  const state = await page.textContent('#state');
  assert.match(state, /403/);
  assert.match(state, /role is admin/);
});
