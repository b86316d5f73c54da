// haip.js: a dependency-free HAIP 1.1.2 client for browsers, bundlers and Node 20+ (where
// Node has no WebSocket or EventSource of its own, pass them in the options, or install the
// `ws` / `eventsource` packages; HTTP streaming needs nothing).
//
// ES modules, no build step: this entry module re-exports the public API of the modules in
// haip/ beside it. The client speaks the wire contract of haip-rs (HAIP-WIRE.md) over
// WebSocket, Server-Sent Events (+ POST /haip/messages upstream) and HTTP streaming (fetch +
// ReadableStream, + the same POST upstream), and follows the rules of the Rust client SDK
// (crates/haip-client): the same reconnect defaults, topic patterns, URL conversion, and the
// same session logic, so that nothing is lost or duplicated across reconnects.
//
//   import { HaipClient } from '/haip.js';
//   const client = new HaipClient({ url: location.origin, token, transports: ['websocket'] });
//   client.onStatus((s) => console.log(s.state));
//   client.subscribe('agent.message_part', (m) => console.log(m.payload.text));
//   await client.connect();
//   client.sendText('hello world');
//
// The modules are layers, each testable on its own, each importing only the ones above it:
//   - haip/constants.js, errors.js, backoff.js (ReconnectPolicy), topics.js, urls.js,
//     envelope.js (parseEnvelope, UTF-8 and base64 helpers): pure helpers;
//   - haip/flow.js (SendGate, ReceiveMeter), sequencer.js: credit and ordering;
//   - haip/session.js: ClientSession, the client side of one session with no I/O (a port of
//     the Rust crates/haip-client/src/session.rs): numbering, acks, resends, ordering, credit;
//   - haip/links.js: one open connection per transport, which only moves frames;
//   - haip/client.js: HaipClient connects, reconnects with backoff, resumes, and offers the
//     application API.

export {
  HAIP_VERSION, HAIP_MAJOR, EVENT_TYPES, Channel, Transport, DEFAULT_PATHS, GAP_TIMEOUT_MS, GRANT_DELAY_MS,
} from './haip/constants.js';
export { HaipError } from './haip/errors.js';
export { ReconnectPolicy } from './haip/backoff.js';
export { topicOf, TopicPattern } from './haip/topics.js';
export { urlFor, siblingUrl } from './haip/urls.js';
export { utf8Length, parseEnvelope } from './haip/envelope.js';
export { SendGate, ReceiveMeter } from './haip/flow.js';
export { Sequencer } from './haip/sequencer.js';
export { ClientSession } from './haip/session.js';
export { HaipClient, HaipClient as default } from './haip/client.js';
