// The demo page stays calm while the connection struggles: the header keeps its size
// whatever the status line says, and an error repeated by each reconnect attempt is shown
// once in the log, with how many times. Through a proxy that refuses connections for a while.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startProxy } from './proxy.mjs';

const PORT = Number(process.env.HAIP_SERVER_PORT);
const TOKEN = process.env.HAIP_TOKEN;
const WAIT = 15000;

if (!PORT || !TOKEN) throw new Error('HAIP_SERVER_PORT and HAIP_TOKEN must be set: run scripts/browser-test');

let context;
let profile;
let proxy;

before(async () => {
  proxy = await startProxy(PORT);
  profile = mkdtempSync(path.join(tmpdir(), 'haip-header-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium', headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu'], viewport: { width: 1280, height: 800 }, timeout: WAIT,
  });
  context.setDefaultTimeout(WAIT);
});

after(async () => {
  await context?.close();
  await proxy?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

test('the header keeps its size and a repeated error shows once', { timeout: 60000 }, async () => {
  const page = await context.newPage();
  await page.goto(`http://127.0.0.1:${proxy.port}/demo?token=${TOKEN}&transport=websocket`);
  await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'connected');
  const height = () => page.$eval('header', (h) => h.getBoundingClientRect().height);
  const connectedHeight = await height();
  // The network dies for 6 s: the page reconnects, failing several times.
  proxy.cut(6000);
  await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'reconnecting');
  const heights = new Set([connectedHeight]);
  const deadline = Date.now() + 12000;
  let repeated = null;
  while (Date.now() < deadline) {
    heights.add(await height());
    repeated = await page.$$eval('#log li.note', (lis) => lis.map((li) => li.textContent).find((t) => /\(×\d+\)$/.test(t)) || null);
    const state = await page.$eval('#status', (s) => s.dataset.state);
    if (repeated && state === 'connected') break;
    await new Promise((r) => setTimeout(r, 100));
  }
  await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'connected');
  heights.add(await height());
  assert.deepEqual([...heights], [connectedHeight], 'the header never changed size');
  assert.ok(repeated, 'a repeated note was shown once, with a count');
  // No two notes in a row say the same.
  const notes = await page.$$eval('#log li.note', (lis) => lis.map((li) => li.dataset.note));
  for (let i = 1; i < notes.length; i++) assert.notEqual(notes[i], notes[i - 1], notes.join('\n'));
});
