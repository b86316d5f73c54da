// Type declarations of haip.js, the dependency-free HAIP 1.1.2 browser client of haip-rs.

export declare const HAIP_VERSION: '1.1.2';
export declare const HAIP_MAJOR: 1;
export declare const GAP_TIMEOUT_MS: number;
export declare const GRANT_DELAY_MS: number;

export type EventType =
  | 'HAI' | 'RUN_STARTED' | 'RUN_FINISHED' | 'RUN_CANCEL' | 'RUN_ERROR' | 'PING' | 'PONG'
  | 'REPLAY_REQUEST' | 'MESSAGE_START' | 'MESSAGE_PART' | 'MESSAGE_END' | 'AUDIO_CHUNK'
  | 'TOOL_CALL' | 'TOOL_UPDATE' | 'TOOL_DONE' | 'TOOL_CANCEL' | 'TOOL_LIST' | 'TOOL_SCHEMA'
  | 'ERROR' | 'FLOW_UPDATE' | 'PAUSE_CHANNEL' | 'RESUME_CHANNEL';

/** The 22 event types, in the contract's order. */
export declare const EVENT_TYPES: readonly EventType[];

export declare const Channel: {
  readonly USER: 'USER';
  readonly AGENT: 'AGENT';
  readonly SYSTEM: 'SYSTEM';
  readonly AUDIO_IN: 'AUDIO_IN';
  readonly AUDIO_OUT: 'AUDIO_OUT';
};

export type TransportName = 'websocket' | 'sse' | 'stream';

export declare const Transport: {
  readonly WEBSOCKET: 'websocket';
  readonly SSE: 'sse';
  readonly HTTP_STREAM: 'stream';
};

export interface Paths {
  websocket: string;
  sse: string;
  stream: string;
  /** The upstream of SSE and HTTP streaming in browsers. */
  messages: string;
}

export declare const DEFAULT_PATHS: Readonly<Paths>;

/** One HAIP message as it travels (decimal u64 fields are strings). */
export interface Envelope<P = Record<string, any>> {
  id: string;
  session: string;
  seq: string;
  ack?: string;
  ts: string;
  channel: string;
  type: EventType | string;
  payload: P;
  pv?: number;
  crit?: boolean;
  bin_len?: number;
  bin_mime?: string;
  run_id?: string;
  thread_id?: string;
}

/** Codes of the contract (section 8) and of this client. */
export type ErrorCode =
  | 'PROTOCOL_VIOLATION' | 'SEQ_VIOLATION' | 'FLOW_CONTROL_VIOLATION' | 'VERSION_INCOMPATIBLE'
  | 'UNSUPPORTED_TYPE' | 'RUN_LIMIT_EXCEEDED' | 'RUN_NOT_FOUND' | 'REPLAY_TOO_OLD'
  | 'RESUME_FAILED' | 'AUTHENTICATION_FAILED' | 'SESSION_NOT_FOUND' | 'TOOL_NOT_FOUND'
  | 'TOOL_EXECUTION_ERROR' | 'BINARY_FRAME_ERROR' | 'RATE_LIMITED' | 'INTERNAL_ERROR'
  | 'AGENT_ERROR'
  | 'UNSUPPORTED'
  | 'CONNECTION_LOST' | 'CONNECT_FAILED' | 'TIMEOUT' | 'HTTP_ERROR' | 'QUEUE_FULL'
  | 'INVALID_PATTERN' | 'INVALID_URL' | 'INVALID_ARGUMENT' | 'CANCELLED' | 'CLOSED';

/** Every failure the client reports. */
export declare class HaipError extends Error {
  constructor(code: ErrorCode | string, message?: string, extra?: {
    detail?: unknown; status?: number; relatedId?: string; fatal?: boolean;
  });
  readonly name: 'HaipError';
  readonly code: ErrorCode | string;
  /** The ERROR payload's detail, or what the client knows. */
  readonly detail?: unknown;
  /** The HTTP status, for errors answered over HTTP. */
  readonly status?: number;
  /** The id of the message the server refused (ERROR related_id). */
  readonly relatedId?: string;
  /** A refusal that retrying will not fix (a bad token, an incompatible version). */
  fatal: boolean;
  static fromEnvelope(env: Envelope): HaipError;
}

export interface ReconnectOptions {
  /** Attempts before giving up; 0 (the default) means never. */
  maxAttempts?: number;
  /** ms before the first attempt (1000). */
  initialDelay?: number;
  /** Cap of the delay in ms (30000). */
  maxDelay?: number;
  /** Growth per attempt (2). */
  multiplier?: number;
  /** Draw each delay uniformly from [0, delay] (true). */
  jitter?: boolean;
}

export declare class ReconnectPolicy {
  constructor(options?: ReconnectOptions);
  maxAttempts: number;
  initialDelay: number;
  maxDelay: number;
  multiplier: number;
  jitter: boolean;
  /** `initialDelay * multiplier^(attempt-1)`, capped at `maxDelay` (attempt is 1-based). */
  baseDelay(attempt: number): number;
  /** The delay before `attempt`; `unit` in [0, 1) is the jitter draw. */
  delay(attempt: number, unit?: number): number;
  allows(attempt: number): boolean;
}

/** `<channel>.<type>` in lower case: `agent.message_part`. */
export declare function topicOf(channel: string, type: string): string;

/** `*` matches one segment, `>` (last only) one or more; case-insensitive. */
export declare class TopicPattern {
  /** Throws a HaipError INVALID_PATTERN. */
  constructor(pattern: string);
  readonly pattern: string;
  matches(topic: string): boolean;
}

/** The URL for a transport: scheme converted (http <-> ws), a bare origin gets the
 *  transport's path, query pairs appended and encoded. Throws INVALID_URL. */
export declare function urlFor(
  url: string, transport: TransportName, query?: Array<[string, string]>, paths?: Paths,
): string;
export declare function siblingUrl(url: string, leaf: string): string;
export declare function utf8Length(text: string): number;
/** An envelope from the wire, or null when it is not one. */
export declare function parseEnvelope(text: string): Envelope | null;

export type Status =
  | { readonly state: 'disconnected' }
  | { readonly state: 'connecting' }
  | { readonly state: 'connected'; readonly transport: TransportName; readonly session: string }
  | {
      readonly state: 'reconnecting';
      /** 1-based attempt number. */
      readonly attempt: number;
      /** ms of this wait. */
      readonly delay: number;
      /** When the attempt is made (ms since the epoch): a countdown's end. */
      readonly retryAt: number;
      /** Why the connection was lost. */
      readonly error?: HaipError;
    }
  | { readonly state: 'error'; readonly error: HaipError };

export interface Credit {
  /** null: unlimited. */
  messages: number | null;
  bytes: number | null;
}

export interface HaipClientOptions {
  /** Server URL; a bare origin gets each transport's path. Default: the page's origin. */
  url?: string;
  /** The JWT (`haip serve` prints one). */
  token?: string | null;
  /** Asked before each connect for a fresh token; wins over `token`. */
  tokenProvider?: (() => Promise<string> | string) | null;
  /** Tried in order when one cannot connect. Default ['websocket']. */
  transports?: TransportName[];
  /** Shorthand for `transports: [transport]`. */
  transport?: TransportName;
  paths?: Partial<Paths>;
  reconnect?: ReconnectOptions;
  /** ms for connecting, the handshake, and request/answer calls (10000). */
  timeout?: number;
  /** Credit the server may use towards this client, per channel (1000 messages, 1 MiB);
   *  null for unlimited. It is handed back as messages are delivered. */
  credit?: Partial<Credit> | null;
  /** Messages waiting to be sent or acknowledged before send() refuses (1000). */
  maxPending?: number;
  /** ms between the client's PINGs (15000). */
  pingInterval?: number;
  /** Take AUDIO_CHUNK as two frames on WebSocket (true). */
  binaryFrames?: boolean;
  /** The WebSocket constructor where the runtime has none (Node 20: the `ws` package's). */
  WebSocket?: new (url: string) => WebSocket;
  /** The EventSource constructor where the runtime has none (the `eventsource` package's). */
  EventSource?: new (url: string) => EventSource;
  /** Continue the session of an earlier client (see `HaipClient.resumeState()`). */
  resume?: ResumeState;
}

/** Where a client stands in its session, to resume it from another client object. */
export interface ResumeState {
  session: string;
  lastRxSeq: number;
  lastSentSeq: number;
}

export interface Meta {
  /** `<channel>.<type>`, lower case. */
  topic: string;
  transport: TransportName | null;
  /** ms since the epoch. */
  receivedAt: number;
  /** AUDIO_CHUNK bytes, whichever way they travelled (binary frame or base64). */
  binary?: Uint8Array;
}

export interface SendOptions {
  runId?: string;
  threadId?: string;
  /** Binary payload (AUDIO_CHUNK): two frames on WebSocket, base64 elsewhere. */
  binary?: Uint8Array;
}

export interface ToolInfo {
  name: string;
  description?: string;
}

export interface ToolUpdate {
  call_id: string;
  status: 'QUEUED' | 'RUNNING' | 'CANCELLING';
  /** 0..100 */
  progress?: number;
  partial?: unknown;
}

export interface CallToolOptions {
  /** Each TOOL_UPDATE of the call. */
  onUpdate?: (update: ToolUpdate, message: Envelope<ToolUpdate>) => void;
  /** Aborting sends TOOL_CANCEL; the promise then rejects with CANCELLED. */
  signal?: AbortSignal;
  /** Reject with TIMEOUT after this many ms (none by default: tools may run long). */
  timeout?: number;
  runId?: string;
  callId?: string;
}

export interface ToolCallPromise<T = unknown> extends Promise<T> {
  /** The call_id of the TOOL_CALL. */
  readonly callId: string;
}

/** A connection to one HAIP server that survives network failures. */
export declare class HaipClient {
  constructor(options?: HaipClientOptions);
  readonly options: Required<Pick<HaipClientOptions, 'url' | 'transports' | 'timeout' | 'pingInterval'>> & {
    token: string | null; tokenProvider: HaipClientOptions['tokenProvider']; paths: Paths;
  };
  readonly policy: ReconnectPolicy;
  readonly status: Status;
  /** The server's session id, once known. */
  readonly sessionId: string | null;
  /** Where this client stands in its session, for `resume` after a page reload. */
  resumeState(): ResumeState | null;
  /** The open connection's transport, or null. */
  readonly transport: TransportName | null;
  /** Runs started and not finished. */
  readonly openRuns: string[];
  /** The tools of the server's last TOOL_LIST. */
  readonly tools: ToolInfo[];
  /** The last PING round trip in ms. */
  readonly latencyMs: number | null;

  /** Calls fn now and on every change; returns a function that stops it. */
  onStatus(fn: (status: Status) => void): () => void;
  /** Every ERROR from the server and every local problem (lost connections included). */
  onError(fn: (error: HaipError) => void): () => void;
  /** Every message written ('out') or delivered ('in'). */
  onTrace(fn: (direction: 'in' | 'out', message: Envelope) => void): () => void;
  /** Server messages whose topic matches `pattern`, in order, each once. Throws
   *  INVALID_PATTERN. Returns a function that ends the subscription. */
  subscribe(pattern: string, fn: (message: Envelope, meta: Meta) => void): () => void;

  /** Connects and keeps reconnecting until close(); resolves once connected, rejects with
   *  what stopped it (a refused token, attempts exhausted, CLOSED). */
  connect(): Promise<Status>;
  /** Stops until the next connect(), which resumes the same session. */
  close(): void;
  /** Ends a reconnect countdown now. */
  reconnectNow(): void;
  /** The transports of the next connection. */
  setTransports(transports: TransportName[]): void;

  /** Sends one message (queued when offline, resent until acknowledged); returns its id.
   *  Throws QUEUE_FULL. */
  send(channel: string, type: EventType, payload?: Record<string, unknown>, opts?: SendOptions): string;
  /** MESSAGE_START + MESSAGE_PART + MESSAGE_END on USER; returns the message_id. */
  sendText(text: string, opts?: { threadId?: string; runId?: string; messageId?: string }): string;
  /** AUDIO_CHUNK; returns the message_id. */
  sendAudio(bytes: Uint8Array, mime: string, opts?: SendOptions & {
    channel?: string; messageId?: string; durationMs?: number;
  }): string;
  /** TOOL_CALL; resolves with TOOL_DONE's result, rejects with a HaipError
   *  (TOOL_NOT_FOUND, TOOL_EXECUTION_ERROR, CANCELLED, TIMEOUT). */
  callTool<T = unknown>(tool: string, params?: Record<string, unknown>, opts?: CallToolOptions): ToolCallPromise<T>;
  /** TOOL_CANCEL; returns the message id. */
  cancelTool(callId: string, reason?: string): string;
  /** RUN_CANCEL; the server answers RUN_FINISHED {status: 'CANCELLED'}. Returns the message id. */
  cancelRun(runId: string): string;
  /** TOOL_LIST request. */
  listTools(): Promise<ToolInfo[]>;
  /** TOOL_SCHEMA request: the tool's input JSON Schema. */
  toolSchema(tool: string): Promise<Record<string, any>>;
}

export default HaipClient;

// The sans-IO parts, exported for tests and for other transports.

export interface OutgoingRecord {
  env: Envelope;
  seq: number;
  binary: Uint8Array | null;
}

export interface IncomingItem {
  env: Envelope;
  /** Bytes the message cost the server's credit. */
  cost: number;
  binary: Uint8Array | null;
}

export type Output =
  | { kind: 'write'; rec: OutgoingRecord }
  | { kind: 'deliver'; item: IncomingItem }
  | { kind: 'latency'; ms: number }
  | { kind: 'replaced'; old: string; new: string };

/** The client side of one session with no I/O (numbering, acks, resends, ordering, credit). */
export declare class ClientSession {
  constructor(config?: {
    credit?: Credit; maxPending?: number; maxHeld?: number; binaryFrames?: boolean; maxConcurrentRuns?: number;
  });
  readonly session: string | null;
  readonly ready: boolean;
  lastRxSeq(): number | null;
  pending(): number;
  envelope(channel: string, type: string, payload: Record<string, unknown>, now: number,
    extra?: { id?: string; runId?: string; threadId?: string }): Envelope;
  connected(now: number): OutgoingRecord;
  disconnected(): void;
  submit(env: Envelope, now: number, binary?: Uint8Array | null): Output[];
  acked(seq: number): void;
  ping(now: number): Output[];
  received(item: IncomingItem, now: number): Output[];
  consumed(channel: string, cost: number, now: number): Output[];
  poll(now: number): Output[];
  nextDeadline(): number | null;
}

export declare class Sequencer {
  constructor(capacity?: number);
  readonly lastDelivered: number | null;
  accept<T>(seq: number, item: T, now: number):
    { deliver: T[] } | { duplicate: true } | { held: true } | { overflow: true };
  pollGap(now: number): { from_seq: number; to_seq: number } | null;
  nextDeadline(): number | null;
}

export declare class SendGate {
  constructor(initial?: Credit);
  offer<T>(channel: string, cost: number, item: T): T | null;
  grant<T>(channel: string, addMessages: number, addBytes: number): T[];
  pause(channel: string): void;
  resume<T>(channel: string): T[];
  resetCredit<T>(initial: Credit): T[];
}

export declare class ReceiveMeter {
  constructor(advertised: Credit | null);
  consumed(channel: string, cost: number, now: number):
    { channel: string; add_messages: number; add_bytes: number } | null;
  flush(now: number): Array<{ channel: string; add_messages: number; add_bytes: number }>;
  nextFlush(): number | null;
}
