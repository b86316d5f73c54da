//! The client SDK against the real server over real sockets: echo on every transport,
//! reconnect with the backoff schedule, queued sends delivered after the server comes back,
//! resume without loss or duplicates through a proxy that cuts connections.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haip_client::backoff::ReconnectPolicy;
use haip_client::{ClientError, Connection, ConnectionConfig, Status, Transport};
use haip_protocol::payload::{MessageEnd, MessagePart, MessageStart};
use haip_protocol::Payload;
use haip_server::agent::EchoAgent;
use haip_server::app::{AppState, SharedState};
use haip_server::auth::Authenticator;
use haip_server::config::ServerConfig;
use haip_server::tools::ToolRegistry;
use serde_json::Map;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const SECRET: &[u8] = b"client-test-secret";
const WAIT: Duration = Duration::from_secs(10);

struct Server {
    state: SharedState,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(word_delay_ms: u64) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Server::start_on(listener, word_delay_ms)
    }

    fn start_on(listener: TcpListener, word_delay_ms: u64) -> Server {
        let config = ServerConfig {
            host: "127.0.0.1".into(),
            port: 0,
            echo_word_delay: Duration::from_millis(word_delay_ms),
            enable_logging: false,
            ..ServerConfig::default()
        };
        let agent = Arc::new(EchoAgent {
            word_delay: config.echo_word_delay,
        });
        let state = AppState::new(
            config,
            Authenticator::with_secret(SECRET, None, None),
            agent,
            ToolRegistry::with_builtins(),
        );
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                let _ = haip_server::server::serve(listener, state).await;
            }
        });
        Server { state, addr, task }
    }

    fn token(&self) -> String {
        self.state.auth.mint("client-tests", 3600).expect("token")
    }

    fn url(&self, transport: Transport) -> String {
        let path = match transport {
            Transport::WebSocket => "/haip/websocket",
            Transport::Sse => "/haip/sse",
            Transport::HttpStream => "/haip/stream",
        };
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(url: String, token: String, transport: Transport) -> ConnectionConfig {
    ConnectionConfig {
        token: Some(token),
        transports: vec![transport],
        ping_interval: None,
        ..ConnectionConfig::new(url)
    }
}

/// Sends one USER text message as MESSAGE_START, MESSAGE_PART, MESSAGE_END.
async fn say(conn: &Connection, id: &str, text: &str) -> Result<(), ClientError> {
    conn.send(
        "USER",
        Payload::MessageStart(MessageStart {
            message_id: id.into(),
            author: Some("test".into()),
            text: None,
            extra: Map::new(),
        }),
    )
    .await?;
    conn.send(
        "USER",
        Payload::MessagePart(MessagePart {
            message_id: id.into(),
            text: text.into(),
            extra: Map::new(),
        }),
    )
    .await?;
    conn.send(
        "USER",
        Payload::MessageEnd(MessageEnd {
            message_id: id.into(),
            tokens: None,
            extra: Map::new(),
        }),
    )
    .await
}

/// Collects the AGENT text of one echo run, until RUN_FINISHED; returns it and the seqs.
async fn echo_of(sub: &mut haip_client::Subscription) -> (String, Vec<u64>) {
    let mut text = String::new();
    let mut seqs = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let item = tokio::time::timeout(left, sub.recv())
            .await
            .expect("echo within the wait")
            .expect("subscription open");
        seqs.push(item.message.seq);
        match &item.message.payload {
            Payload::MessagePart(p) => text.push_str(&p.text),
            Payload::RunFinished(_) => return (text, seqs),
            _ => {}
        }
    }
}

#[tokio::test]
async fn echo_on_every_transport() {
    let server = Server::start(1).await;
    for transport in [Transport::WebSocket, Transport::Sse, Transport::HttpStream] {
        let conn = Connection::start(
            transport.as_str(),
            config(server.url(transport), server.token(), transport),
        );
        let mut sub = conn.subscribe("agent.>").expect("pattern");
        assert_eq!(conn.connected(WAIT).await.expect("connects"), transport);
        say(&conn, "m1", "hello there world").await.expect("send");
        let (text, _) = echo_of(&mut sub).await;
        assert_eq!(text, "hello there world", "{transport:?}");
        let item_topic = {
            say(&conn, "m2", "x").await.expect("send");
            let first = sub.recv().await.expect("item");
            first.meta.topic.clone()
        };
        assert_eq!(&*item_topic, "agent.run_started");
        conn.close();
    }
}

#[tokio::test]
async fn reconnects_on_the_backoff_schedule_and_delivers_what_was_queued() {
    // Reserve a port, then keep it closed while the client tries.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let token = {
        let probe = Server::start(1).await;
        probe.token() // same secret: valid for the server started later
    };
    let mut cfg = config(
        format!("http://{addr}/haip/websocket"),
        token,
        Transport::WebSocket,
    );
    cfg.reconnect = ReconnectPolicy {
        max_attempts: 0,
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(400),
        multiplier: 2.0,
        jitter: false,
    };
    cfg.timeout = Duration::from_millis(500);
    let conn = Connection::start("backoff", cfg);
    let mut sub = conn.subscribe("agent.>").expect("pattern");
    // Queued while the server is down.
    say(&conn, "early", "sent while down")
        .await
        .expect("queued");

    let attempts: Arc<Mutex<Vec<(Instant, u32, Duration)>>> = Arc::default();
    let mut status = conn.status();
    let recorder = tokio::spawn({
        let attempts = attempts.clone();
        async move {
            while status.changed().await.is_ok() {
                if let Status::Reconnecting { attempt, delay } = *status.borrow() {
                    if !delay.is_zero() {
                        attempts
                            .lock()
                            .unwrap()
                            .push((Instant::now(), attempt, delay));
                    }
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let listener = TcpListener::bind(addr).await.expect("rebind the port");
    let _server = Server::start_on(listener, 1);
    conn.connected(WAIT)
        .await
        .expect("connects once the server is up");
    let (text, _) = echo_of(&mut sub).await;
    assert_eq!(text, "sent while down", "the queued message was delivered");

    let recorded = attempts.lock().unwrap().clone();
    recorder.abort();
    let delays: Vec<u64> = recorded.iter().map(|r| r.2.as_millis() as u64).collect();
    assert!(recorded.len() >= 4, "attempts: {delays:?}");
    assert_eq!(&delays[..4], &[100, 200, 400, 400], "the schedule");
    // The recorded times follow the delays (plus connect failures, which are fast here).
    for pair in recorded.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        let expected = pair[0].2;
        assert!(
            gap >= expected && gap < expected + Duration::from_millis(250),
            "attempt {} came {gap:?} after the previous, expected {expected:?}",
            pair[1].1
        );
    }
}

/// A TCP proxy whose connections the test can cut at any moment.
struct CutProxy {
    addr: SocketAddr,
    live: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl CutProxy {
    async fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let live: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accepted: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let task = tokio::spawn({
            let live = live.clone();
            let accepted = accepted.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let pipe = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    live.lock().unwrap().push(pipe);
                }
            }
        });
        CutProxy {
            addr,
            live,
            accepted,
            task,
        }
    }

    /// Drops every open connection at once, mid-stream.
    fn cut(&self) {
        for pipe in self.live.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

#[tokio::test]
async fn resumes_without_loss_or_duplicates_when_connections_are_cut() {
    let server = Server::start(2).await;
    let proxy = CutProxy::start(server.addr).await;
    for transport in [Transport::WebSocket, Transport::Sse, Transport::HttpStream] {
        let path = server.url(transport);
        let path = path.split_once(&server.addr.to_string()).expect("url").1;
        let mut cfg = config(
            format!("http://{}{path}", proxy.addr),
            server.token(),
            transport,
        );
        cfg.reconnect = ReconnectPolicy {
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            jitter: false,
            ..ReconnectPolicy::default()
        };
        let conn = Connection::start("cuts", cfg);
        let mut sub = conn.subscribe(">").expect("pattern");
        conn.connected(WAIT).await.expect("connects");
        let connections_before = proxy.accepted.load(std::sync::atomic::Ordering::Relaxed);
        let words: Vec<String> = (0..150).map(|i| format!("w{i}")).collect();
        let text = words.join(" ");
        say(&conn, "long", &text).await.expect("send");
        let cutter = tokio::spawn({
            let live = proxy.live.clone();
            async move {
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                    for pipe in live.lock().unwrap().drain(..) {
                        pipe.abort();
                    }
                }
            }
        });
        let mut echoed = String::new();
        let mut seqs = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let item = tokio::time::timeout(left, sub.recv())
                .await
                .unwrap_or_else(|_| panic!("{transport:?}: run incomplete; got {echoed:?}"))
                .expect("open");
            seqs.push(item.message.seq);
            match &item.message.payload {
                Payload::MessagePart(p) if item.message.channel == "AGENT" => {
                    echoed.push_str(&p.text)
                }
                Payload::RunFinished(_) => break,
                _ => {}
            }
        }
        cutter.await.expect("cutter");
        let reconnects =
            proxy.accepted.load(std::sync::atomic::Ordering::Relaxed) - connections_before;
        assert!(
            reconnects >= 3,
            "{transport:?}: only {reconnects} reconnects happened"
        );
        assert_eq!(echoed, text, "{transport:?}: the whole echo, in order");
        let mut sorted = seqs.clone();
        sorted.dedup();
        assert_eq!(sorted, seqs, "{transport:?}: no duplicate delivered");
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{transport:?}: contiguous seqs {seqs:?}"
        );
        conn.close();
    }
}

#[tokio::test]
async fn a_bad_token_is_a_typed_error_on_http_transports() {
    let server = Server::start(1).await;
    for transport in [Transport::Sse, Transport::HttpStream] {
        let mut cfg = config(server.url(transport), "not-a-jwt".into(), transport);
        cfg.reconnect.max_attempts = 1;
        let conn = Connection::start("bad", cfg);
        match conn.connected(WAIT).await {
            Err(ClientError::Http { status, code, .. }) => {
                assert_eq!(status, 401, "{transport:?}");
                assert_eq!(code, "AUTHENTICATION_FAILED");
            }
            other => panic!("{transport:?}: {other:?}"),
        }
    }
}

/// The client hands credit back as the application reads: a reply longer than the 1000
/// messages of credit it advertises arrives whole.
#[tokio::test]
async fn a_reply_longer_than_the_credit_arrives_whole() {
    let server = Server::start(0).await;
    for transport in [Transport::WebSocket, Transport::Sse, Transport::HttpStream] {
        let conn = Connection::start(
            "credit",
            config(server.url(transport), server.token(), transport),
        );
        let mut sub = conn.subscribe("agent.>").expect("pattern");
        conn.connected(WAIT).await.expect("connects");
        let words: Vec<String> = (0..1500).map(|i| format!("w{i}")).collect();
        let text = words.join(" ");
        say(&conn, "long", &text).await.expect("send");
        let (echoed, _) = echo_of(&mut sub).await;
        assert_eq!(echoed, text, "{transport:?}");
        conn.close();
    }
}

fn params(v: serde_json::Value) -> Map<String, serde_json::Value> {
    v.as_object().cloned().unwrap_or_default()
}

#[tokio::test]
async fn tools_runs_and_audio_over_every_transport() {
    let server = Server::start(5).await;
    for transport in [Transport::WebSocket, Transport::Sse, Transport::HttpStream] {
        let conn = Connection::start(
            "helpers",
            config(server.url(transport), server.token(), transport),
        );
        conn.connected(WAIT).await.expect("connects");
        let sum = conn
            .call_tool("add", params(serde_json::json!({"a": 2, "b": 3.5})), |_| {})
            .await
            .expect("add");
        assert_eq!(sum["result"], 5.5, "{transport:?}");

        let mut seen = Vec::new();
        let slept = conn
            .call_tool("sleep", params(serde_json::json!({"ms": 300})), |p| {
                seen.push(p)
            })
            .await
            .expect("sleep");
        assert_eq!(slept["slept_ms"], 300);
        assert!(!seen.is_empty(), "{transport:?}: progress reported");
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");

        match conn.call_tool("nope", Map::new(), |_| {}).await {
            Err(ClientError::Server { code, .. }) => assert_eq!(code, "TOOL_NOT_FOUND"),
            other => panic!("{transport:?}: {other:?}"),
        }
        match conn
            .call_tool("add", params(serde_json::json!({"a": "x"})), |_| {})
            .await
        {
            Err(e) => assert_eq!(e.code(), Some("TOOL_EXECUTION_ERROR"), "{e}"),
            other => panic!("{transport:?}: {other:?}"),
        }

        // Cancel an echo mid-stream.
        let mut runs = conn.subscribe("agent.>").expect("pattern");
        let words: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
        conn.send_text(&words.join(" ")).await.expect("send");
        let run_id = loop {
            let item = runs.recv().await.expect("open");
            if let Payload::MessagePart(_) = &item.message.payload {
                break item.message.run_id.clone().expect("run_id");
            }
        };
        conn.cancel_run(&run_id).await.expect("cancel");
        let finished = loop {
            let item = tokio::time::timeout(WAIT, runs.recv())
                .await
                .expect("within the wait")
                .expect("open");
            if let Payload::RunFinished(r) = &item.message.payload {
                break r.status;
            }
        };
        assert_eq!(
            finished,
            Some(haip_protocol::payload::RunStatus::Cancelled),
            "{transport:?}"
        );

        // Audio comes back with identical bytes (two frames on WebSocket, base64 elsewhere).
        let mut audio = conn.subscribe("agent.audio_chunk").expect("pattern");
        let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        conn.send_audio("audio/pcm", bytes.clone())
            .await
            .expect("audio");
        let item = tokio::time::timeout(WAIT, audio.recv())
            .await
            .expect("echo")
            .expect("open");
        match &item.message.payload {
            Payload::AudioChunk(c) => {
                assert_eq!(c.mime, "audio/pcm");
                assert_eq!(c.data.as_deref(), Some(&bytes[..]), "{transport:?}");
            }
            other => panic!("{other:?}"),
        }
        conn.close();
    }
}

/// A server (here a hand-written SSE endpoint) that sends garbage: the client reports a
/// typed error and goes on with the valid messages.
#[tokio::test]
async fn a_malformed_message_is_a_typed_error_and_not_fatal() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // It answers the stream's GET with the events below and every POST with 200.
    let fake = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                if buf[..n].starts_with(b"POST") {
                    let ok = r#"{"status":"ok","accepted":1,"ack":""}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\n\r\n{ok}",
                        ok.len()
                    );
                    let _ = sock.write_all(answer.as_bytes()).await;
                    return;
                }
                let hai = serde_json::json!({"id": "h", "session": "S", "seq": "1",
                    "ts": "0", "channel": "SYSTEM", "type": "HAI", "payload": {
                    "haip_version": "1.1.2", "accept_major": [1],
                    "accept_events": ["HAI", "ERROR", "PING", "PONG"]}});
                let body = format!(
                    "retry: 1000\n\ndata: {{not json\n\ndata: {{\"id\":\"x\"}}\n\n\
                     id: S:1\ndata: {hai}\n\n"
                );
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                            Cache-Control: no-cache\r\n\r\n";
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    let conn = Connection::start(
        "fake",
        config(
            format!("http://{addr}/haip/sse"),
            "t".into(),
            Transport::Sse,
        ),
    );
    let mut errors = conn.errors();
    let first = tokio::time::timeout(WAIT, errors.recv())
        .await
        .expect("an error")
        .expect("open");
    assert!(
        matches!(&first, ClientError::Malformed { code, .. } if code == "PROTOCOL_VIOLATION"),
        "{first:?}"
    );
    let second = tokio::time::timeout(WAIT, errors.recv())
        .await
        .expect("an error")
        .expect("open");
    assert!(
        matches!(&second, ClientError::Malformed { field: Some(f), .. } if f == "session"),
        "{second:?}"
    );
    assert_eq!(
        conn.connected(WAIT)
            .await
            .expect("the valid HAI still connects"),
        Transport::Sse
    );
    fake.abort();
}

/// With a token provider, a connection is renewed before its token expires and the
/// session resumes: no AUTHENTICATION_FAILED, same session, nothing lost.
#[tokio::test]
async fn short_lived_tokens_are_renewed_before_they_expire() {
    let server = Server::start(1).await;
    let state = server.state.clone();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut cfg = config(
        server.url(Transport::WebSocket),
        String::new(),
        Transport::WebSocket,
    );
    cfg.token = None;
    cfg.token_provider = Some({
        let calls = calls.clone();
        Arc::new(move || {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let token = state
                .auth
                .mint("client-tests", 2)
                .ok_or_else(|| ClientError::Transport("cannot mint".into()));
            Box::pin(async move { token })
        })
    });
    let conn = Connection::start("renew", cfg);
    let mut everything = conn.subscribe(">").expect("pattern");
    conn.connected(WAIT).await.expect("connects");
    let session = conn.session_id().expect("session");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        calls.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "the provider was asked again before expiry"
    );
    say(&conn, "after", "still here").await.expect("send");
    let mut echoed = String::new();
    loop {
        let item = tokio::time::timeout(WAIT, everything.recv())
            .await
            .expect("within the wait")
            .expect("open");
        match &item.message.payload {
            Payload::Error(e) => panic!("no error expected, got {} {}", e.code, e.message),
            Payload::MessagePart(p) if item.message.channel == "AGENT" => echoed.push_str(&p.text),
            Payload::RunFinished(_) => break,
            _ => {}
        }
    }
    assert_eq!(echoed, "still here");
    assert_eq!(
        conn.session_id().as_deref(),
        Some(session.as_str()),
        "same session"
    );
}
