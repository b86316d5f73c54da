// The demo page keeps the conversation across a reload: the chat is shown again and the
// session resumed, so a reply that was streaming goes on to its end, whole, with no word
// twice. Headless Chromium against the `haip serve` of scripts/browser-test (30 ms/word).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const PORT = Number(process.env.HAIP_SERVER_PORT);
const TOKEN = process.env.HAIP_TOKEN;
const WAIT = 15000;

if (!PORT || !TOKEN) throw new Error('HAIP_SERVER_PORT and HAIP_TOKEN must be set: run scripts/browser-test');

let context;
let profile;

before(async () => {
  profile = mkdtempSync(path.join(tmpdir(), 'haip-reload-'));
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

const connected = (page) => page.waitForFunction(() => document.querySelector('#status').dataset.state === 'connected');

test('a reload mid-answer shows the conversation and the answer goes on whole', { timeout: 60000 }, async () => {
  const page = await context.newPage();
  await page.goto(`http://127.0.0.1:${PORT}/demo?token=${TOKEN}&transport=websocket`);
  await connected(page);
  const words = Array.from({ length: 60 }, (_, i) => `r${i + 1}`).join(' ');
  await page.fill('#message', words);
  await page.press('#message', 'Enter');
  await page.waitForFunction(() => {
    const li = document.querySelector('#chat li.agent');
    return li && li.querySelector('.text').textContent.split(' ').length >= 8;
  });
  await page.reload();
  await connected(page);
  // The conversation is there again, and the answer finishes whole.
  assert.equal(await page.$eval('#chat li.user .text', (e) => e.textContent), words);
  await page.waitForFunction(() => document.querySelector('#chat li.agent')?.dataset.state === 'done', null, { timeout: WAIT });
  const answer = await page.$$eval('#chat li.agent .text', (els) => els.map((e) => e.textContent));
  assert.deepEqual(answer, [words], 'one answer, every word once, in order');
  // And the session is the same one.
  const replaced = await page.evaluate(() => document.querySelector('#log').textContent.includes('RESUME_FAILED'));
  assert.equal(replaced, false);
});

test('a log entry opens to the whole envelope and copies it', async () => {
  const page = await context.newPage();
  await page.goto(`http://127.0.0.1:${PORT}/demo?token=${TOKEN}&transport=websocket`);
  await connected(page);
  await page.evaluate(() => {
    window.__copied = [];
    Object.defineProperty(navigator, 'clipboard', { value: { writeText: async (t) => { window.__copied.push(t); } } });
  });
  const entry = page.locator('#log li.in', { hasText: 'HAI' }).first();
  await entry.click();
  const whole = await entry.locator('.detail pre').textContent();
  const env = JSON.parse(whole);
  assert.equal(env.type, 'HAI');
  assert.equal(env.payload.haip_version, '1.1.2');
  assert.equal(await entry.getAttribute('aria-expanded'), 'true');
  await entry.locator('.detail .copy').click();
  await page.waitForFunction(() => window.__copied.length === 1);
  assert.deepEqual(JSON.parse(await page.evaluate(() => window.__copied[0])), env);
  // Enter closes it again, from the keyboard.
  await entry.focus();
  await page.keyboard.press('Enter');
  assert.equal(await entry.locator('.detail').count(), 0);
});
