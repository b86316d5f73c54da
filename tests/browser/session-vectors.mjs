// Runs the shared session vectors (tests/vectors/session/, format in its README.md) against
// the browser client's modules; crates/haip-client/tests/vectors.rs runs the same files
// against the Rust implementation.
//
// runSessionVectors is self-contained (no imports, no outer names) so that Playwright can
// send its source into a page: `base` is where web/haip.js lives (the server's origin in
// the page, a file URL of web/ in Node), `files` maps each vector file's name to its
// parsed cases. It returns one result per case: {file, name, disagreement, error} where
// error is null when every step produced its expected outputs.
export async function runSessionVectors({ base, files }) {
  const { Sequencer } = await import(new URL('haip/sequencer.js', base).href);
  const { SendGate, ReceiveMeter, isExempt } = await import(new URL('haip/flow.js', base).href);
  const { ClientSession } = await import(new URL('haip/session.js', base).href);
  const { parseEnvelope, utf8Length } = await import(new URL('haip/envelope.js', base).href);
  const { GRANT_DELAY_MS } = await import(new URL('haip/constants.js', base).href);

  const plain = (v) => (v === undefined ? null : JSON.parse(JSON.stringify(v)));
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  // Whether `actual` has everything `expected` says: objects key by key (a null expected
  // means absent or null), anything else equal.
  const subset = (expected, actual) => {
    if (expected === null) return actual === null || actual === undefined;
    if (typeof expected === 'object' && !Array.isArray(expected)) {
      if (!actual || typeof actual !== 'object' || Array.isArray(actual)) return false;
      return Object.keys(expected).every((k) => subset(expected[k], actual[k]));
    }
    return same(expected, actual);
  };
  const credit = (v) => ({ messages: v?.messages ?? null, bytes: v?.bytes ?? null });
  const fail = (step, got) => new Error(`${JSON.stringify(step)}: got ${JSON.stringify(got)}`);
  const expectEq = (step, got) => {
    if (!same(step.expect, got)) throw fail(step, got);
  };

  function sequencerCase(c) {
    const s = new Sequencer(c.capacity ?? 1000);
    for (const step of c.steps) {
      switch (step.op) {
        case 'accept': {
          const a = s.accept(step.seq, step.seq, step.at);
          expectEq(step, a.deliver ? { deliver: a.deliver } : a.duplicate ? 'duplicate' : a.held ? 'held' : a.overflow ? 'overflow' : a);
          break;
        }
        case 'poll_gap': expectEq(step, s.pollGap(step.at)); break;
        case 'next_deadline': expectEq(step, s.nextDeadline()); break;
        case 'last_delivered': expectEq(step, s.lastDelivered); break;
        default: throw new Error(`unknown sequencer op ${step.op}`);
      }
    }
  }

  function creditCase(c) {
    const gate = new SendGate(credit(c.gate));
    const meter = new ReceiveMeter(credit(c.meter));
    for (const step of c.steps) {
      const ch = step.channel;
      switch (step.op) {
        case 'offer': expectEq(step, gate.offer(ch, step.cost, step.id) === null ? 'blocked' : 'allowed'); break;
        case 'grant': expectEq(step, gate.grant(ch, step.add_messages, step.add_bytes)); break;
        case 'pause': gate.pause(ch); break;
        case 'resume': expectEq(step, gate.resume(ch)); break;
        case 'credit': {
          // The gate has no getter: a channel it has not seen yet has the initial credit.
          const c2 = isExempt(ch) ? credit(null) : (gate.channels.get(ch)?.credit ?? gate.initial);
          expectEq(step, credit(c2));
          break;
        }
        case 'held': expectEq(step, gate.heldMessages); break;
        case 'consume': expectEq(step, plain(meter.consumed(ch, step.cost, step.at))); break;
        case 'flush': expectEq(step, plain(meter.flush(step.at))); break;
        case 'next_flush': {
          // The grant delay differs between the clients: the vector gives the time the
          // delay counts from.
          const want = step.expect_since === null ? null : step.expect_since + GRANT_DELAY_MS;
          if (meter.nextFlush() !== want) throw fail(step, meter.nextFlush());
          break;
        }
        default: throw new Error(`unknown credit op ${step.op}`);
      }
    }
  }

  // A server envelope from its short form in a vector (see the README for the defaults).
  function serverText(short) {
    const env = {
      id: `s${short.seq}`, session: short.session ?? 'S', seq: short.seq, ts: '0',
      channel: short.channel ?? 'SYSTEM', type: short.type, payload: short.payload,
    };
    if (short.ack !== undefined) env.ack = short.ack;
    return JSON.stringify(env);
  }

  // Every write (in order), delivery, replacement and latency must be the expected ones.
  function checkOutputs(step, out) {
    const e = step.expect;
    const writes = out.filter((o) => o.kind === 'write').map((o) => o.env);
    const delivered = out.filter((o) => o.kind === 'deliver').map((o) => Number(o.item.env.seq));
    const replaced = out.filter((o) => o.kind === 'replaced').map((o) => ({ old: o.old, new: o.new }))[0] ?? null;
    const latency = out.filter((o) => o.kind === 'latency').map((o) => o.ms)[0] ?? null;
    const wantWrites = e.writes ?? [];
    const ok = wantWrites.length === writes.length && wantWrites.every((w, i) => subset(w, writes[i])) &&
      same(e.delivered ?? [], delivered) && same(e.replaced ?? null, replaced) && same(e.latency ?? null, latency);
    if (!ok) throw fail(step, { writes, delivered, replaced, latency });
  }

  function sessionCase(c) {
    const config = {};
    if (c.config && 'credit' in c.config) config.credit = credit(c.config.credit);
    if (c.config && c.config.max_pending !== undefined) config.maxPending = c.config.max_pending;
    const s = new ClientSession(config);
    // Written envelopes are copied as they leave: the session may change them later
    // (a resend names the new session), as the Rust session writes clones.
    const run = (outputs) => outputs.map((o) => (o.kind === 'write' ? { ...o, env: plain(o.rec.env) } : o));
    for (const step of c.steps) {
      const at = step.at ?? 0;
      let out;
      switch (step.op) {
        case 'connected': {
          const hai = plain(s.connected(at).env);
          if (!subset(step.expect.hai, hai)) throw fail(step, hai);
          continue;
        }
        case 'disconnected': s.disconnected(); continue;
        case 'send': {
          const env = s.envelope(step.channel, step.type, step.payload, at, { id: step.id });
          try {
            out = run(s.submit(env, at));
          } catch (error) {
            if (error.code === step.expect.error) continue;
            throw fail(step, error.code || String(error));
          }
          if (step.expect.error) throw fail(step, out);
          break;
        }
        case 'receive': {
          const text = serverText(step.env);
          const env = parseEnvelope(text);
          if (!env) throw new Error(`${text} does not parse`);
          out = run(s.received({ env, cost: utf8Length(text), binary: null }, at));
          break;
        }
        case 'poll': out = run(s.poll(at)); break;
        case 'consumed': out = run(s.consumed(step.channel, step.cost, at)); break;
        case 'ping': out = run(s.ping(at)); break;
        case 'state': {
          const got = { pending: s.pending(), session: s.session, last_rx_seq: s.lastRxSeq() };
          if (!subset(step.expect, got)) throw fail(step, got);
          continue;
        }
        default: throw new Error(`unknown session op ${step.op}`);
      }
      checkOutputs(step, out);
    }
  }

  const runners = { 'sequencer.json': sequencerCase, 'credit.json': creditCase, 'session.json': sessionCase, 'resume.json': sessionCase };
  const results = [];
  for (const [file, cases] of Object.entries(files)) {
    const runCase = runners[file];
    if (!runCase) throw new Error(`no runner for ${file}`);
    for (const c of cases) {
      let error = null;
      try {
        runCase(c);
      } catch (e) {
        error = e && e.message ? e.message : String(e);
      }
      results.push({ file, name: c.name, disagreement: c.disagreement ?? null, error });
    }
  }
  return results;
}
