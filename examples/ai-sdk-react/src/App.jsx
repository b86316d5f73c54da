// A chat page built on the AI SDK's useChat, talking to haip-rs's AI SDK endpoint
// (POST /api/chat, GET and DELETE /api/chat/{id}/stream). Nothing here is specific to
// haip-rs except the Stop button also telling the server to stop the answer.
import { useEffect, useState } from 'react';
import { useChat } from '@ai-sdk/react';
import { DefaultChatTransport, generateId } from 'ai';

// ?server=http://127.0.0.1:PORT&token=JWT. Without server: the page's own origin (when a
// proxy puts the page and haip-rs behind one address). Without token: the last one given,
// kept in localStorage. ?api=URL names the endpoint itself (haip serve --aisdk-path).
const params = new URLSearchParams(window.location.search);
const server = (params.get('server') || window.location.origin).replace(/\/+$/, '');
const token = params.get('token') || localStorage.getItem('haip-token') || '';
if (params.get('token')) localStorage.setItem('haip-token', token);

const api = (params.get('api') || `${server}/api/chat`).replace(/\/+$/, '');
const headers = token ? { Authorization: `Bearer ${token}` } : {};
// GET {api}/{id}/stream is DefaultChatTransport's own reconnect URL, and haip-rs replays an
// answer in progress from its first chunk, which is this transport's default
// (resumeStreamIsReplay: true).
const transport = new DefaultChatTransport({ api, headers });

// The chat id and its messages live in sessionStorage: they survive a reload of this tab
// (so `resume: true` reconnects to the same chat), and a new tab starts a new chat.
const CHAT_ID_KEY = 'haip-chat-id';
const messagesKey = (id) => `haip-chat-messages:${id}`;

function currentChatId() {
  let id = sessionStorage.getItem(CHAT_ID_KEY);
  if (!id) {
    id = generateId();
    sessionStorage.setItem(CHAT_ID_KEY, id);
  }
  return id;
}

function loadMessages(id) {
  try {
    return JSON.parse(sessionStorage.getItem(messagesKey(id))) || [];
  } catch {
    return [];
  }
}

export default function App() {
  const [chatId, setChatId] = useState(currentChatId);
  const newChat = () => {
    sessionStorage.removeItem(messagesKey(chatId));
    const id = generateId();
    sessionStorage.setItem(CHAT_ID_KEY, id);
    setChatId(id);
  };
  // One Chat component per chat id: a new chat starts from a clean slate.
  return <Chat key={chatId} id={chatId} onNewChat={newChat} />;
}

function Chat({ id, onNewChat }) {
  // Read once: useChat takes `messages` only when it creates the chat.
  const [initialMessages] = useState(() => loadMessages(id));
  const { messages, sendMessage, status, stop, error } = useChat({
    id,
    messages: initialMessages,
    transport,
    // On load, GET {api}/{id}/stream: an answer still in progress (the page was reloaded
    // mid-answer) is replayed from its start and goes on live; 204 means there is none.
    resume: true,
  });
  const [input, setInput] = useState('');
  const [notice, setNotice] = useState('');

  // Keep what is shown, so that a reload shows it again. A partial answer is kept too: its
  // replay (same message id, from the `start` chunk) replaces it on resume.
  useEffect(() => {
    sessionStorage.setItem(messagesKey(id), JSON.stringify(messages));
  }, [id, messages]);

  const busy = status === 'submitted' || status === 'streaming';

  const onSubmit = (event) => {
    event.preventDefault();
    const text = input.trim();
    if (!text || busy) return;
    setInput('');
    setNotice('');
    sendMessage({ text });
  };

  // useChat's stop() only closes this page's request; haip-rs goes on answering (that is
  // what lets a reload resume). DELETE .../stream asks the server to cancel the answer.
  const onStop = async () => {
    const cancel = fetch(`${api}/${encodeURIComponent(id)}/stream`, { method: 'DELETE', headers })
      .then((res) => {
        if (!res.ok) setNotice(`stop: the server answered ${res.status}`);
      })
      .catch((err) => setNotice(`stop: ${err.message}`));
    await Promise.all([stop(), cancel]);
  };

  return (
    <main>
      <header>
        <h1>haip-rs · useChat</h1>
        <span className="meta">
          status: <span data-testid="status">{status}</span>
        </span>
        <span className="meta">
          chat <code data-testid="chat-id">{id}</code> at {api}
        </span>
        <button type="button" data-testid="new-chat" onClick={onNewChat} disabled={busy}>
          New chat
        </button>
      </header>

      {!token && <p className="error">No token: open this page with ?token=JWT (haip serve prints one).</p>}

      <ul data-testid="messages">
        {messages.map((message) => (
          <li key={message.id} data-testid="message" data-role={message.role} data-id={message.id}>
            <span className="role">{message.role === 'user' ? 'You' : 'Agent'}</span>
            {message.parts.map((part, i) => {
              if (part.type === 'text') {
                return <span key={i} data-testid="message-text">{part.text}</span>;
              }
              if (part.type.startsWith('tool-') || part.type === 'dynamic-tool') {
                const name = part.toolName || part.type.slice(5);
                return <div key={i} className="meta" data-testid="tool">tool {name}: {part.state}</div>;
              }
              return null;
            })}
          </li>
        ))}
      </ul>

      {error && <p className="error" data-testid="error">{error.message}</p>}
      {notice && <p className="error" data-testid="notice">{notice}</p>}

      <form onSubmit={onSubmit}>
        <input
          data-testid="input"
          value={input}
          onChange={(e) => setInput(e.target.value)}
          placeholder="Say something"
          autoFocus
        />
        {busy ? (
          <button type="button" data-testid="stop" onClick={onStop}>Stop</button>
        ) : (
          <button type="submit" data-testid="send" disabled={!input.trim()}>Send</button>
        )}
      </form>
    </main>
  );
}
