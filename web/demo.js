// The demo page's behaviour (web/index.html): the connect form, the chat, the tool
// panel and the message log, over the browser client the page passes in. Served by
// `haip serve` at /demo.js.

export function startDemo({ HaipClient, HaipError }) {
  const $ = (id) => document.getElementById(id);
  const ui = {
    token: $('token'), transport: $('transport'), connect: $('connect'), connectForm: $('connect-form'),
    status: $('status'), statusText: $('status-text'), retry: $('retry'),
    chat: $('chat'), composer: $('composer'), message: $('message'), send: $('send'), cancel: $('cancel'),
    toolForm: $('tool-form'), toolSelect: $('tool-select'), toolDescription: $('tool-description'),
    toolParams: $('tool-params'), toolCall: $('tool-call'), toolCancel: $('tool-cancel'),
    toolProgress: $('tool-progress'), toolStatus: $('tool-status'), toolResult: $('tool-result'),
    log: $('log'), logClear: $('log-clear'), logControl: $('log-control'),
  };
  const TRANSPORT_NAMES = { websocket: 'WebSocket', sse: 'SSE', stream: 'HTTP streaming' };

  // The token and transport may come from the page URL (`haip serve` prints /?token=...).
  const params = new URLSearchParams(location.search);
  if (params.get('token')) ui.token.value = params.get('token');
  if (TRANSPORT_NAMES[params.get('transport')]) ui.transport.value = params.get('transport');

  let client = null;
  let clientToken = null;
  let countdown = null;
  const bubbles = new Map(); // message_id -> <li>
  const toolItems = new Map(); // call_id -> <li>, for the tool calls an agent makes in its runs
  const schemas = new Map(); // tool name -> input schema
  let toolAbort = null;

  // --- connection -----------------------------------------------------------------------

  function connect() {
    const token = ui.token.value.trim();
    if (!token) {
      showStatus({ state: 'error', error: new HaipError('AUTHENTICATION_FAILED', 'enter the token that haip serve printed') });
      ui.token.focus();
      return;
    }
    if (client && token === clientToken) {
      // Same token: the same session goes on, on the transport now picked (the server
      // resumes a session on any transport).
      client.close();
      client.setTransports([ui.transport.value]);
    } else {
      if (client) client.close();
      client = newClient(token);
      clientToken = token;
    }
    client.connect().catch(() => {}); // failures show in the status line
  }

  // --- the conversation kept across a reload ----------------------------------------------
  // The chat as shown and where the client stands in its session are kept in the tab's
  // sessionStorage: after a reload the page shows the conversation again and resumes the
  // session, so a reply that was streaming goes on where it was. Per tab (localStorage would
  // make a second tab take the first one's session over), per token (its last characters,
  // never the token itself).
  const STORE_KEY = 'haip-demo-conversation';
  const tokenKey = (token) => token.slice(-16);
  let saveTimer = null;

  function saveConversation() {
    if (saveTimer) return;
    saveTimer = setTimeout(() => {
      saveTimer = null;
      if (!client || !clientToken) return;
      const transcript = [...ui.chat.querySelectorAll('li.user, li.agent, li.tool')].map((li) => ({
        kind: li.className,
        text: li.dataset.markdown || li.querySelector('.text').textContent,
        meta: li.querySelector('.meta').textContent,
        state: li.dataset.state || '',
        messageId: li.dataset.messageId || '',
        runId: li.dataset.runId || '',
        callId: li.dataset.callId || '',
      }));
      try {
        sessionStorage.setItem(STORE_KEY, JSON.stringify({
          token: tokenKey(clientToken), resume: client.resumeState(), transcript,
        }));
      } catch (_) {
        // Storage full or disabled: the conversation is simply not kept.
      }
    }, 100);
  }

  /** The kept conversation for `token`, shown again; returns the resume state or null. */
  function restoreConversation(token) {
    let kept;
    try {
      kept = JSON.parse(sessionStorage.getItem(STORE_KEY) || 'null');
    } catch (_) {
      kept = null;
    }
    if (!kept || kept.token !== tokenKey(token) || !kept.resume) return null;
    for (const item of kept.transcript || []) {
      const li = addBubble(item.kind, item.text);
      if (item.messageId) { li.dataset.messageId = item.messageId; bubbles.set(item.messageId, li); }
      if (item.runId) li.dataset.runId = item.runId;
      if (item.callId) { li.dataset.callId = item.callId; toolItems.set(item.callId, li); }
      setBubbleState(li, item.state, item.meta);
      if (item.kind === 'agent' && item.state === 'done') finishAnswer(li);
    }
    return kept.resume;
  }

  function newClient(token) {
    // Only into an empty chat: a page that already shows a conversation keeps its own.
    const resume = ui.chat.querySelector('li.user, li.agent') ? null : restoreConversation(token);
    const c = new HaipClient({ url: location.origin, token, transports: [ui.transport.value], resume });
    c.subscribe('>', saveConversation);
    window.haipDemo = { client: c }; // for the browser console (and the tests)
    c.onStatus(showStatus);
    c.onError((e) => logNote(`${e.code}: ${e.message}`, true));
    c.onTrace(logMessage);
    c.subscribe('agent.>', onAgent);
    c.subscribe('system.tool_list', (m) => showTools(m.payload.tools || []));
    c.subscribe('system.error', (m) => {
      if (m.payload.code !== 'RESUME_FAILED') return;
      // The server lost our session (a restart, or away too long): a reply that was
      // streaming will not finish.
      for (const li of ui.chat.querySelectorAll('li.agent[data-state="streaming"]')) {
        setBubbleState(li, 'error', 'interrupted: the session could not be resumed');
      }
      updateCancel();
    });
    return c;
  }

  function disconnect() {
    if (client) client.close();
  }

  function showStatus(s) {
    clearInterval(countdown);
    countdown = null;
    ui.status.dataset.state = s.state;
    ui.retry.hidden = s.state !== 'reconnecting';
    const live = s.state === 'connected' || s.state === 'connecting' || s.state === 'reconnecting';
    ui.connect.textContent = live ? 'Disconnect' : 'Connect';
    ui.toolSelect.disabled = ui.toolSelect.options.length === 0 || !ui.toolSelect.value;
    switch (s.state) {
      case 'disconnected': ui.statusText.textContent = 'Disconnected'; break;
      case 'connecting': ui.statusText.textContent = `Connecting (${TRANSPORT_NAMES[ui.transport.value]})…`; break;
      case 'connected':
        ui.statusText.textContent = `Connected over ${TRANSPORT_NAMES[s.transport]} · session ${s.session.slice(0, 8)}`;
        break;
      case 'reconnecting': {
        const tick = () => {
          const left = Math.max(s.retryAt - Date.now(), 0) / 1000;
          ui.statusText.textContent = left > 0
            ? `Connection lost: reconnecting in ${left.toFixed(1)} s (attempt ${s.attempt})`
            : `Reconnecting (attempt ${s.attempt})…`;
        };
        tick();
        countdown = setInterval(tick, 100);
        break;
      }
      case 'error': ui.statusText.textContent = `Error ${s.error.code}: ${s.error.message}`; break;
    }
    ui.status.title = ui.statusText.textContent;
    if (s.state === 'connected') errorNotes.clear();
    if (s.state !== 'connecting') logNote(`status: ${ui.statusText.textContent}`, s.state === 'error');
  }

  ui.connectForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const live = client && ['connected', 'connecting', 'reconnecting'].includes(client.status.state);
    if (live) disconnect();
    else connect();
  });
  ui.transport.addEventListener('change', () => {
    if (client && client.status.state !== 'disconnected' && client.status.state !== 'error') connect();
  });
  ui.retry.addEventListener('click', () => client && client.reconnectNow());

  // --- chat -----------------------------------------------------------------------------

  /** Keeps a scrolling list at its end while the reader is there (also when the list
   *  itself shrinks); a reader who scrolled up stays where they are. */
  function follow(el) {
    let stick = true;
    let height = el.clientHeight;
    el.addEventListener('scroll', () => {
      // A scroll caused by the list changing size is not the reader moving away.
      if (el.clientHeight === height) stick = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
    });
    const toEnd = () => { if (stick) el.scrollTop = el.scrollHeight; };
    new ResizeObserver(() => { height = el.clientHeight; toEnd(); }).observe(el);
    return toEnd;
  }
  const chatToEnd = follow(ui.chat);
  const logToEnd = follow(ui.log);

  function addBubble(kind, text) {
    const empty = ui.chat.querySelector('.empty');
    if (empty) empty.remove();
    const li = document.createElement('li');
    li.className = kind;
    const body = document.createElement('span');
    body.className = 'text';
    body.textContent = text;
    const meta = document.createElement('span');
    meta.className = 'meta';
    li.append(body, meta);
    ui.chat.append(li);
    chatToEnd();
    return li;
  }

  function setBubbleState(li, state, note) {
    li.dataset.state = state;
    li.querySelector('.meta').textContent = note;
  }


  // --- Markdown in agent answers, rendered safely ----------------------------------------
  // Models answer in Markdown. Once an answer is complete it is shown with code blocks,
  // inline code, bold, italics, lists and links; nothing the model wrote is ever parsed as
  // HTML (every piece goes in as text), and only http(s) links are links. Plain text is left
  // exactly as it streamed.
  const MARKDOWN_HINT = /```|`[^`]+`|\*\*[^*]+\*\*|\[[^\]]+\]\(https?:|^\s*([-*]|\d+\.) |^#{1,4} /m;

  function renderMarkdown(text) {
    const out = document.createDocumentFragment();
    const fence = /```([\w+-]*)\n([\s\S]*?)```/g;
    let at = 0;
    for (const m of text.matchAll(fence)) {
      renderBlocks(text.slice(at, m.index), out);
      const pre = document.createElement('pre');
      const code = document.createElement('code');
      if (m[1]) code.dataset.lang = m[1];
      code.textContent = m[2].replace(/\n$/, '');
      pre.append(code);
      out.append(pre);
      at = m.index + m[0].length;
    }
    renderBlocks(text.slice(at), out);
    return out;
  }

  function renderBlocks(text, out) {
    let list = null;
    for (const line of text.split('\n')) {
      const item = /^\s*(?:[-*]|(\d+)\.)\s+(.*)$/.exec(line);
      const heading = /^(#{1,4})\s+(.*)$/.exec(line);
      if (item) {
        const kind = item[1] ? 'OL' : 'UL';
        if (!list || list.tagName !== kind) {
          list = document.createElement(kind.toLowerCase());
          out.append(list);
        }
        const li = document.createElement('li');
        renderInline(item[2], li);
        list.append(li);
        continue;
      }
      list = null;
      if (heading) {
        const h = document.createElement('strong');
        h.className = 'md-heading';
        renderInline(heading[2], h);
        out.append(h, '\n');
      } else {
        renderInline(line, out);
        out.append('\n');
      }
    }
    // The last line's newline belongs to what follows (a code block, or nothing).
    if (out.lastChild && out.lastChild.nodeType === Node.TEXT_NODE && out.lastChild.data === '\n') {
      out.lastChild.remove();
    }
  }

  function renderInline(text, into) {
    const token = /`([^`]+)`|\*\*([^*]+)\*\*|(?:^|(?<=\s))[*_]([^*_\s][^*_]*)[*_]|\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g;
    let at = 0;
    for (const m of text.matchAll(token)) {
      into.append(text.slice(at, m.index));
      let el;
      if (m[1] !== undefined) { el = document.createElement('code'); el.textContent = m[1]; }
      else if (m[2] !== undefined) { el = document.createElement('strong'); el.textContent = m[2]; }
      else if (m[3] !== undefined) { el = document.createElement('em'); el.textContent = m[3]; }
      else {
        el = document.createElement('a');
        el.textContent = m[4];
        el.href = m[5];
        el.rel = 'noopener noreferrer';
        el.target = '_blank';
      }
      into.append(el);
      at = m.index + m[0].length;
    }
    into.append(text.slice(at));
  }

  /** Renders a completed agent answer as Markdown when it uses any. */
  function finishAnswer(li) {
    const body = li.querySelector('.text');
    const raw = li.dataset.markdown || body.textContent;
    if (!MARKDOWN_HINT.test(raw)) return;
    li.dataset.markdown = raw;
    body.replaceChildren(renderMarkdown(raw));
  }

  function onAgent(m) {
    const p = m.payload;
    switch (m.type) {
      case 'RUN_STARTED':
        updateCancel();
        break;
      case 'MESSAGE_START': {
        const li = addBubble('agent', p.text || '');
        li.dataset.messageId = p.message_id;
        if (m.run_id) li.dataset.runId = m.run_id;
        setBubbleState(li, 'streaming', p.author || 'agent');
        bubbles.set(p.message_id, li);
        ui.chat.setAttribute('aria-busy', 'true'); // read the reply once, when it is complete
        break;
      }
      case 'MESSAGE_PART': {
        const li = bubbles.get(p.message_id);
        if (!li) break;
        li.querySelector('.text').append(p.text); // word by word, as the agent streams
        chatToEnd();
        break;
      }
      case 'MESSAGE_END': {
        const li = bubbles.get(p.message_id);
        if (li) {
          setBubbleState(li, 'done', li.querySelector('.meta').textContent);
          finishAnswer(li);
        }
        ui.chat.setAttribute('aria-busy', 'false');
        break;
      }
      case 'TOOL_CALL': {
        // A call the agent makes in its run. The page's own calls (tools panel) are not
        // sent back by the server, so only the agent's show here.
        const li = addBubble('tool', `${p.tool} ${JSON.stringify(p.params ?? {})}`);
        li.dataset.callId = p.call_id;
        if (m.run_id) li.dataset.runId = m.run_id;
        setBubbleState(li, 'running', 'running');
        toolItems.set(p.call_id, li);
        break;
      }
      case 'TOOL_UPDATE': {
        const li = toolItems.get(p.call_id);
        const pct = typeof p.progress === 'number' ? ` ${Math.round(p.progress)}%` : '';
        if (li) setBubbleState(li, 'running', `${String(p.status || 'running').toLowerCase()}${pct}`);
        break;
      }
      case 'TOOL_DONE': {
        const li = toolItems.get(p.call_id);
        if (!li) break;
        toolItems.delete(p.call_id);
        const status = p.status || 'OK';
        const result = p.result === undefined ? '' : ` → ${JSON.stringify(p.result)}`;
        if (status === 'OK') setBubbleState(li, 'done', `done${result}`);
        else if (status === 'CANCELLED') setBubbleState(li, 'cancelled', 'cancelled');
        else setBubbleState(li, 'error', `failed${result}`);
        break;
      }
      case 'RUN_FINISHED':
      case 'RUN_ERROR': {
        const runId = p.run_id || m.run_id;
        const status = m.type === 'RUN_ERROR' ? 'ERROR' : p.status;
        const error = `error: ${p.message || p.summary || 'run failed'}`;
        const replies = [...ui.chat.querySelectorAll('li.agent')].filter((li) => li.dataset.runId === runId);
        for (const li of replies) {
          if (li.dataset.state === 'done') continue;
          if (status === 'CANCELLED') setBubbleState(li, 'cancelled', 'reply cancelled');
          else if (status === 'ERROR') setBubbleState(li, 'error', error);
          else setBubbleState(li, 'done', li.querySelector('.meta').textContent);
        }
        if (m.type === 'RUN_ERROR' && (replies.length === 0 || replies.every((li) => li.dataset.state === 'done'))) {
          // The run failed after its last reply, or before any (e.g. the model server
          // refused the request): say so where the reply would be.
          const li = addBubble('agent', '');
          li.dataset.runId = runId;
          setBubbleState(li, 'error', error);
        }
        ui.chat.setAttribute('aria-busy', 'false');
        updateCancel();
        break;
      }
      default:
        break;
    }
  }

  function updateCancel() {
    ui.cancel.disabled = !client || client.openRuns.length === 0;
  }

  function sendMessage() {
    const text = ui.message.value;
    if (!text.trim()) return;
    if (!client) connect();
    if (!client) return;
    try {
      client.sendText(text);
    } catch (e) {
      logNote(`${e.code || 'ERROR'}: ${e.message}`, true);
      return;
    }
    addBubble('user', text);
    saveConversation();
    ui.message.value = '';
    ui.message.focus();
  }

  ui.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    sendMessage();
  });
  ui.message.addEventListener('keydown', (e) => {
    // Enter sends; Shift+Enter adds a line; Enter while an IME composes stays with the IME.
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendMessage();
    }
  });
  ui.cancel.addEventListener('click', () => {
    // Stop the running reply: RUN_CANCEL for each run still open (usually one).
    for (const runId of client ? client.openRuns : []) client.cancelRun(runId);
  });

  // --- tools ----------------------------------------------------------------------------

  function showTools(tools) {
    const keep = ui.toolSelect.value;
    ui.toolSelect.replaceChildren(...tools.map((t) => {
      const o = document.createElement('option');
      o.value = t.name;
      o.textContent = t.name;
      o.dataset.description = t.description || '';
      return o;
    }));
    if (tools.some((t) => t.name === keep)) ui.toolSelect.value = keep;
    ui.toolSelect.disabled = tools.length === 0;
    if (ui.toolSelect.value !== keep || ui.toolParams.children.length <= 1) selectTool();
  }

  async function selectTool() {
    const name = ui.toolSelect.value;
    const option = ui.toolSelect.selectedOptions[0];
    ui.toolDescription.textContent = option ? option.dataset.description : '';
    ui.toolParams.replaceChildren(ui.toolParams.querySelector('legend'));
    ui.toolCall.disabled = true;
    if (!name || !client) return;
    try {
      if (!schemas.has(name)) schemas.set(name, await client.toolSchema(name));
    } catch (e) {
      ui.toolStatus.textContent = `Could not read the schema of ${name}: ${e.message}`;
      return;
    }
    if (ui.toolSelect.value !== name) return; // another tool was picked meanwhile
    buildParams(schemas.get(name));
    ui.toolCall.disabled = false;
  }

  /** A field per schema property: numbers, booleans, strings; anything else as JSON. */
  function buildParams(schema) {
    const props = schema.properties || {};
    const required = new Set(schema.required || []);
    for (const [key, prop] of Object.entries(props)) {
      const row = document.createElement('div');
      row.className = 'row';
      const label = document.createElement('label');
      label.htmlFor = `param-${key}`;
      label.textContent = required.has(key) ? `${key} *` : key;
      let input;
      if (prop.type === 'boolean') {
        input = document.createElement('input');
        input.type = 'checkbox';
      } else if (prop.type === 'number' || prop.type === 'integer') {
        input = document.createElement('input');
        input.type = 'number';
        input.step = prop.type === 'integer' ? '1' : 'any';
        if (prop.minimum !== undefined) input.min = prop.minimum;
        if (prop.maximum !== undefined) input.max = prop.maximum;
        input.inputMode = prop.type === 'integer' ? 'numeric' : 'decimal';
      } else if (prop.type === 'string') {
        input = document.createElement('input');
        input.type = 'text';
      } else {
        input = document.createElement('textarea');
        input.rows = 2;
        input.placeholder = 'JSON';
      }
      input.id = `param-${key}`;
      input.name = key;
      input.dataset.type = prop.type || 'json';
      input.required = required.has(key) && prop.type !== 'boolean';
      if (prop.description) input.title = prop.description;
      row.append(label, input);
      ui.toolParams.append(row);
    }
    if (Object.keys(props).length === 0) {
      const p = document.createElement('p');
      p.textContent = 'No parameters.';
      ui.toolParams.append(p);
    }
  }

  function readParams() {
    const params = {};
    for (const input of ui.toolParams.querySelectorAll('input, textarea')) {
      const type = input.dataset.type;
      if (type === 'boolean') { params[input.name] = input.checked; continue; }
      if (input.value === '') continue;
      if (type === 'integer') params[input.name] = parseInt(input.value, 10);
      else if (type === 'number') params[input.name] = Number(input.value);
      else if (type === 'string') params[input.name] = input.value;
      else params[input.name] = JSON.parse(input.value);
    }
    return params;
  }

  async function callTool() {
    const name = ui.toolSelect.value;
    if (!client || !name) return;
    let params;
    try {
      params = readParams();
    } catch (e) {
      ui.toolStatus.textContent = `Parameters: ${e.message}`;
      return;
    }
    toolAbort = new AbortController();
    ui.toolCall.disabled = true;
    ui.toolCancel.disabled = false;
    ui.toolProgress.value = 0;
    ui.toolResult.textContent = '';
    ui.toolStatus.textContent = `${name}: sent`;
    try {
      const result = await client.callTool(name, params, {
        signal: toolAbort.signal,
        onUpdate: (u) => {
          if (typeof u.progress === 'number') ui.toolProgress.value = u.progress;
          const pct = typeof u.progress === 'number' ? ` ${Math.round(u.progress)}%` : '';
          ui.toolStatus.textContent = `${name}: ${u.status}${pct}`;
        },
      });
      ui.toolProgress.value = 100;
      ui.toolStatus.textContent = `${name}: done`;
      ui.toolResult.textContent = JSON.stringify(result, null, 2);
    } catch (e) {
      ui.toolStatus.textContent = e.code === 'CANCELLED' ? `${name}: cancelled` : `${name}: ${e.code}: ${e.message}`;
    } finally {
      toolAbort = null;
      ui.toolCall.disabled = false;
      ui.toolCancel.disabled = true;
    }
  }

  ui.toolSelect.addEventListener('change', selectTool);
  ui.toolForm.addEventListener('submit', (e) => {
    e.preventDefault();
    callTool();
  });
  ui.toolCancel.addEventListener('click', () => toolAbort && toolAbort.abort());

  // --- message log ----------------------------------------------------------------------

  const LOG_LIMIT = 400;

  function appendLog(li) {
    ui.log.append(li);
    while (ui.log.children.length > LOG_LIMIT) ui.log.firstElementChild.remove();
    logToEnd();
  }

  function span(cls, text) {
    const s = document.createElement('span');
    s.className = cls;
    s.textContent = text;
    return s;
  }

  // Credit and heartbeat messages are many and rarely interesting: shown on request.
  const CONTROL = new Set(['FLOW_UPDATE', 'PING', 'PONG']);

  function logMessage(direction, env) {
    if (CONTROL.has(env.type) && !ui.logControl.checked) return;
    const li = document.createElement('li');
    li.className = direction;
    const summary = JSON.stringify(env.payload);
    li.append(
      span('dir', direction === 'in' ? '↓' : '↑'),
      span('seq', env.seq),
      span('ch', env.channel),
      span('type', env.type),
      span('payload', summary.length > 160 ? `${summary.slice(0, 160)}…` : summary),
    );
    // Click (or Enter) shows the whole envelope, with a button that copies it.
    li.tabIndex = 0;
    li.setAttribute('aria-expanded', 'false');
    const toggle = (e) => {
      if (e.target.closest('.detail')) return;
      const open = li.querySelector('.detail');
      if (open) {
        open.remove();
        li.setAttribute('aria-expanded', 'false');
        return;
      }
      const whole = JSON.stringify(env, null, 2);
      const detail = document.createElement('div');
      detail.className = 'detail';
      const pre = document.createElement('pre');
      pre.textContent = whole;
      const copy = document.createElement('button');
      copy.type = 'button';
      copy.className = 'secondary copy';
      copy.textContent = 'Copy';
      copy.addEventListener('click', async () => {
        try {
          await navigator.clipboard.writeText(whole);
          copy.textContent = 'Copied';
        } catch (_) {
          copy.textContent = 'Select and copy';
        }
      });
      detail.append(copy, pre);
      li.append(detail);
      li.setAttribute('aria-expanded', 'true');
    };
    li.addEventListener('click', toggle);
    li.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') {
        e.preventDefault();
        toggle(e);
      }
    });
    appendLog(li);
  }

  // Errors shown since the page was last connected, by text: the same error again (each
  // reconnect attempt reports it) is shown once, with how many times it happened.
  const errorNotes = new Map();

  function logNote(text, bad) {
    const seen = bad ? errorNotes.get(text) : null;
    if (seen && seen.isConnected) {
      const times = Number(seen.dataset.times || 1) + 1;
      seen.dataset.times = String(times);
      seen.querySelector('.text').textContent = `${text} (×${times})`;
      appendLog(seen); // moved to the end, where the reader looks
      return;
    }
    const li = document.createElement('li');
    li.className = bad ? 'note bad' : 'note';
    li.dataset.note = text;
    li.append(span('dir', '•'), span('text', text));
    if (bad) errorNotes.set(text, li);
    appendLog(li);
  }

  ui.logClear.addEventListener('click', () => ui.log.replaceChildren());

  if (ui.token.value) connect();
  else ui.token.focus();
}
