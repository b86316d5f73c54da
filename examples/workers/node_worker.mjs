#!/usr/bin/env node
// A haip-rs agent worker in Node.js (20+): it shouts the user's message back in upper case
// after counting its words ("hello big world" -> "3 words: HELLO BIG WORLD"), streamed word
// by word.
//
//   npm ci
//   HAIP_AGENT_TOKEN=$(haip token --secret SECRET --sub node-worker --role agent) \
//     node node_worker.mjs
//
// The server (`haip serve --agent workers`) sends each user message as a job (RUN_STARTED);
// the worker answers with MESSAGE_START / MESSAGE_PART... / MESSAGE_END and RUN_FINISHED,
// all carrying the job's run_id. See README.md beside this file.
import { randomUUID } from 'node:crypto';
import WebSocket from 'ws';

const URL = process.env.HAIP_AGENT_URL || 'ws://127.0.0.1:8080/haip/agent';
const TOKEN = process.env.HAIP_AGENT_TOKEN || '';
const WORD_DELAY_MS = 100; // between two streamed words

const log = (line) => console.error(`node-worker: ${line}`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// What this worker says: the word count, then the words in upper case.
function answerFor(text) {
  const words = text.split(/\s+/).filter(Boolean);
  const count = `${words.length} ${words.length === 1 ? 'word' : 'words'}:`;
  return [count, ...words.map((w) => w.toUpperCase())];
}

if (!TOKEN) {
  console.error('node-worker: set HAIP_AGENT_TOKEN to a token of role agent '
    + '(haip token --secret SECRET --sub node-worker --role agent)');
  process.exit(1);
}

let delay = 1000; // reconnect backoff, doubled after each failure (at most 30 s)

// One connection to the server; a new one is made for every (re)connect.
function connect() {
  const ws = new WebSocket(`${URL}${URL.includes('?') ? '&' : '?'}token=${TOKEN}`);
  let session = null; // the id the server's HAI gives this connection
  let seq = 0; // our own envelope numbering: "1", "2", ...
  let ack = null; // the last seq the server sent us, acknowledged in our envelopes
  let paused = false; // set by PAUSE_CHANNEL, cleared by RESUME_CHANNEL
  const jobs = new Map(); // run_id -> { cancelled }

  // ws.send queues frames in call order, so the seq numbers reach the server in order.
  function send(type, payload, runId, channel = 'AGENT') {
    if (ws.readyState !== WebSocket.OPEN) throw new Error('connection lost');
    seq += 1;
    const env = { id: randomUUID(), session, seq: String(seq), ts: String(Date.now()),
      channel, type, payload };
    if (runId) env.run_id = runId;
    if (ack) env.ack = ack;
    ws.send(JSON.stringify(env));
  }

  // One job: stream the answer word by word, unless the user cancels.
  async function answer(runId, text) {
    const job = { cancelled: false };
    jobs.set(runId, job);
    const words = answerFor(text);
    const msg = `${runId}-answer`;
    let status = 'OK';
    // The answer as the envelopes to send, one word per MESSAGE_PART.
    const envelopes = [
      ['MESSAGE_START', { message_id: msg, author: 'node-worker' }],
      ...words.map((w, i) => ['MESSAGE_PART', { message_id: msg, text: i === 0 ? w : ` ${w}` }]),
      ['MESSAGE_END', { message_id: msg }],
    ];
    try {
      for (const [type, payload] of envelopes) {
        if (type === 'MESSAGE_PART') await sleep(WORD_DELAY_MS); // "think"
        while (paused && !job.cancelled) await sleep(50); // paused: hold until resumed
        if (job.cancelled) { // cancelled: send nothing more but the run's end
          status = 'CANCELLED';
          break;
        }
        send(type, payload, runId);
      }
      send('RUN_FINISHED', { status }, runId);
    } catch {
      status = 'connection lost'; // the server fails the runs of a worker that left
    } finally {
      jobs.delete(runId);
      log(`job ${runId}: ${text.split(/\s+/).filter(Boolean).length} words -> ${status}`);
    }
  }

  ws.on('message', (raw) => {
    const env = JSON.parse(raw.toString());
    const payload = env.payload || {};
    const runId = env.run_id || payload.run_id;
    ack = env.seq;
    switch (env.type) {
      case 'HAI':
        session = env.session;
        delay = 1000; // connected: the next drop starts the backoff over
        log(`connected to ${URL.split('?')[0]}`);
        break;
      case 'RUN_STARTED': // a job: one user message to answer
        answer(runId, payload.metadata?.text ?? '');
        break;
      case 'RUN_CANCEL':
        if (jobs.has(runId)) jobs.get(runId).cancelled = true; // the job finishes CANCELLED
        break;
      case 'PAUSE_CHANNEL': // a user is not keeping up: hold our output
        log('paused by the server');
        paused = true;
        break;
      case 'RESUME_CHANNEL':
        log('resumed');
        paused = false;
        break;
      case 'PING': send('PONG', { nonce: payload.nonce ?? '' }, null, 'SYSTEM'); break;
      case 'ERROR':
        if (payload.code === 'AUTHENTICATION_FAILED') {
          log(`token refused: ${payload.message}`);
          process.exit(1);
        }
        log(`server error ${payload.code}: ${payload.message}`);
        break;
      default: break; // anything else is not for a worker to act on
    }
  });
  ws.on('error', (e) => log(`connection failed: ${e.message}`));
  ws.on('close', () => {
    for (const job of jobs.values()) job.cancelled = true; // their sends would fail anyway
    log(`connection closed; reconnecting in ${delay / 1000} s`);
    setTimeout(connect, delay);
    delay = Math.min(delay * 2, 30000);
  });
}

process.on('SIGINT', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));
connect();
