// The protocol's constants as this client uses them: version, event types, channels,
// transports, the server's default paths, and the timings of ordering and flow control.

export const HAIP_VERSION = '1.1.2';
export const HAIP_MAJOR = 1;

/** The 22 event types of HAIP 1.1.2. */
export const EVENT_TYPES = Object.freeze([
  'HAI', 'RUN_STARTED', 'RUN_FINISHED', 'RUN_CANCEL', 'RUN_ERROR', 'PING', 'PONG',
  'REPLAY_REQUEST', 'MESSAGE_START', 'MESSAGE_PART', 'MESSAGE_END', 'AUDIO_CHUNK',
  'TOOL_CALL', 'TOOL_UPDATE', 'TOOL_DONE', 'TOOL_CANCEL', 'TOOL_LIST', 'TOOL_SCHEMA',
  'ERROR', 'FLOW_UPDATE', 'PAUSE_CHANNEL', 'RESUME_CHANNEL',
]);

export const Channel = Object.freeze({
  USER: 'USER', AGENT: 'AGENT', SYSTEM: 'SYSTEM', AUDIO_IN: 'AUDIO_IN', AUDIO_OUT: 'AUDIO_OUT',
});

export const Transport = Object.freeze({
  WEBSOCKET: 'websocket', SSE: 'sse', HTTP_STREAM: 'stream',
});

export const TRANSPORTS = [Transport.WEBSOCKET, Transport.SSE, Transport.HTTP_STREAM];

/** The server's default paths (contract section 4). */
export const DEFAULT_PATHS = Object.freeze({
  websocket: '/haip/websocket',
  sse: '/haip/sse',
  stream: '/haip/stream',
  messages: '/haip/messages',
});

/** A gap in the server's numbering is asked for after this long (contract section 5). */
export const GAP_TIMEOUT_MS = 500;
/**
 * Small amounts of consumed credit are handed back after this long, in one FLOW_UPDATE.
 * The Rust side waits 50 ms; a browser waits longer because on SSE and HTTP streaming each
 * FLOW_UPDATE is an HTTP POST of its own. Credit never runs short for it: half the credit
 * waiting to return is handed back at once.
 */
export const GRANT_DELAY_MS = 1000;
/** Bytes added to each received message's measured size when its credit is handed back. */
export const COST_MARGIN = 16;
