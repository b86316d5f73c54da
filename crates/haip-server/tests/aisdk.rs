//! The AI SDK endpoints (contract section 14) over real sockets: the UI message stream of
//! `POST /api/chat`, resume as a replay, 204, cancel, the WebSocket frames, users kept
//! apart, the chat as a thread HAIP clients can follow, and an OpenAI-compatible agent
//! behind it (history and tool calls). The SDK's own client code is exercised against the
//! same server by `tests/aisdk/` (Node) and the example app's Chromium test.

mod common;
#[path = "support/upstream.rs"]
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use haip_server::agent::openai::{OpenAiAgent, OpenAiConfig};
use haip_server::tools::ToolRegistry;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use upstream::{text_answer, tool_calls_end, tool_fragment, Answer, Upstream};

fn chat_body(chat_id: &str, text: &str) -> Value {
    json!({
        "id": chat_id,
        "trigger": "submit-message",
        "messageId": null,
        "messages": [{"id": next_id("u"), "role": "user",
                      "parts": [{"type": "text", "text": text}]}],
    })
}

fn words(n: usize) -> String {
    (0..n)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A UI message stream being read: its chunks as they come.
struct UiStream {
    response: reqwest::Response,
    buf: String,
    /// Chunks read, and whether `[DONE]` came.
    chunks: Vec<Value>,
    done: bool,
}

impl UiStream {
    async fn post(srv: &Server, token: &str, body: &Value) -> UiStream {
        let response = bounded(
            http()
                .post(srv.url("/api/chat"))
                .bearer_auth(token)
                .json(body)
                .send(),
        )
        .await
        .expect("POST /api/chat");
        assert_eq!(response.status().as_u16(), 200);
        UiStream::new(response)
    }

    fn new(response: reqwest::Response) -> UiStream {
        UiStream {
            response,
            buf: String::new(),
            chunks: Vec::new(),
            done: false,
        }
    }

    /// Reads until `n` chunks or the end.
    async fn read_chunks(&mut self, n: usize) {
        while self.chunks.len() < n && !self.done {
            let piece = bounded(self.response.chunk())
                .await
                .expect("a clean stream")
                .expect("the stream ends with [DONE], not before");
            self.buf
                .push_str(std::str::from_utf8(&piece).expect("UTF-8"));
            while let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                let line = event.trim_end();
                if line.starts_with(':') {
                    continue; // a keep-alive comment
                }
                let data = line
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("every event is a data line: {line:?}"));
                assert!(!self.done, "nothing after [DONE]");
                if data == "[DONE]" {
                    self.done = true;
                } else {
                    self.chunks
                        .push(serde_json::from_str(data).expect("each chunk is JSON"));
                }
            }
        }
    }

    async fn read_to_end(mut self) -> Vec<Value> {
        self.read_chunks(usize::MAX).await;
        assert!(self.done);
        let rest = bounded(self.response.chunk()).await.expect("clean end");
        assert!(rest.is_none(), "the response ends after [DONE]");
        self.chunks
    }
}

fn kinds(chunks: &[Value]) -> Vec<&str> {
    chunks.iter().map(|c| c["type"].as_str().unwrap()).collect()
}

fn text_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter(|c| c["type"] == "text-delta")
        .map(|c| c["delta"].as_str().unwrap())
        .collect()
}

async fn get_stream(srv: &Server, token: &str, chat_id: &str) -> reqwest::Response {
    bounded(
        http()
            .get(srv.url(&format!("/api/chat/{chat_id}/stream")))
            .bearer_auth(token)
            .send(),
    )
    .await
    .unwrap()
}

async fn delete_stream(srv: &Server, token: &str, chat_id: &str) -> u16 {
    bounded(
        http()
            .delete(srv.url(&format!("/api/chat/{chat_id}/stream")))
            .bearer_auth(token)
            .send(),
    )
    .await
    .unwrap()
    .status()
    .as_u16()
}

/// Waits (bounded) until the chat has no answer in progress.
async fn until_not_in_progress(srv: &Server, token: &str, chat_id: &str) {
    for _ in 0..100 {
        if get_stream(srv, token, chat_id).await.status().as_u16() == 204 {
            return;
        }
        tokio::time::sleep(ms(20)).await;
    }
    panic!("the answer stayed in progress");
}

#[tokio::test]
async fn send_streams_the_answer_as_ui_message_chunks() {
    let srv = Server::start().await;
    let response = bounded(
        http()
            .post(srv.url("/api/chat"))
            .bearer_auth(srv.token())
            .json(&chat_body("c1", "hello there you"))
            .send(),
    )
    .await
    .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(
        header("x-vercel-ai-ui-message-stream").as_deref(),
        Some("v1")
    );
    assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(header("x-accel-buffering").as_deref(), Some("no"));
    assert_eq!(header("content-encoding"), None);
    let chunks = UiStream::new(response).read_to_end().await;
    let k = kinds(&chunks);
    assert_eq!(k[..3], ["start", "start-step", "text-start"]);
    assert_eq!(k[k.len() - 3..], ["text-end", "finish-step", "finish"]);
    assert!(
        k[3..k.len() - 3].iter().all(|t| *t == "text-delta"),
        "{k:?}"
    );
    assert_eq!(text_of(&chunks), "hello there you");
    let text_id = &chunks[2]["id"];
    assert!(chunks
        .iter()
        .filter(|c| c["type"].as_str().unwrap().starts_with("text-"))
        .all(|c| &c["id"] == text_id));
    // Once its streams ended nothing is in progress: 204, never 404.
    assert_eq!(
        get_stream(&srv, &srv.token(), "c1").await.status().as_u16(),
        204
    );
    // The chat goes on: a second message gets its own answer.
    let again = UiStream::post(&srv, &srv.token(), &chat_body("c1", "second turn"))
        .await
        .read_to_end()
        .await;
    assert_eq!(text_of(&again), "second turn");
    assert_ne!(again[0]["messageId"], chunks[0]["messageId"]);
}

/// Closing the request does not stop the answer; a resume gets all of it from the first
/// chunk, then live; a reader that arrives late gets the same chunks.
#[tokio::test]
async fn a_resume_replays_the_whole_answer_then_live() {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(15)).await;
    let text = words(40);
    let mut first = UiStream::post(&srv, &srv.token(), &chat_body("r1", &text)).await;
    first.read_chunks(6).await;
    let seen = first.chunks.clone();
    drop(first); // a reload
    let resumed = get_stream(&srv, &srv.token(), "r1").await;
    assert_eq!(resumed.status().as_u16(), 200);
    let second = get_stream(&srv, &srv.token(), "r1").await;
    let resumed = UiStream::new(resumed).read_to_end().await;
    assert_eq!(
        resumed[..seen.len()],
        seen[..],
        "the replay starts at the first chunk"
    );
    assert_eq!(text_of(&resumed), text, "whole, nothing twice");
    assert_eq!(kinds(&resumed).last(), Some(&"finish"));
    let second = UiStream::new(second).read_to_end().await;
    assert_eq!(second, resumed, "every reader gets the same answer");
}

#[tokio::test]
async fn delete_stops_the_answer_and_its_streams_end_with_abort() {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(20)).await;
    let text = words(200);
    let mut asking = UiStream::post(&srv, &srv.token(), &chat_body("d1", &text)).await;
    asking.read_chunks(5).await;
    let resumed = get_stream(&srv, &srv.token(), "d1").await;
    assert_eq!(delete_stream(&srv, &srv.token(), "d1").await, 204);
    for chunks in [
        asking.read_to_end().await,
        UiStream::new(resumed).read_to_end().await,
    ] {
        assert_eq!(kinds(&chunks).last(), Some(&"abort"), "{chunks:?}");
        let said = text_of(&chunks);
        assert!(text.starts_with(&said) && said.len() < text.len(), "{said}");
    }
    until_not_in_progress(&srv, &srv.token(), "d1").await;
    // Nothing to stop: still 204.
    assert_eq!(delete_stream(&srv, &srv.token(), "d1").await, 204);
}

/// A chat belongs to the user whose token started it.
#[tokio::test]
async fn chats_are_kept_apart_per_user() {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(20)).await;
    let alice = srv.token_for("alice");
    let bob = srv.token_for("bob");
    let asking = UiStream::post(&srv, &alice, &chat_body("shared-id", &words(30))).await;
    assert_eq!(
        get_stream(&srv, &bob, "shared-id").await.status().as_u16(),
        204
    );
    assert_eq!(delete_stream(&srv, &bob, "shared-id").await, 204);
    // Bob's DELETE stopped nothing, and Bob may use the same chat id for his own chat.
    let bobs = UiStream::post(&srv, &bob, &chat_body("shared-id", "bob here"))
        .await
        .read_to_end()
        .await;
    assert_eq!(text_of(&bobs), "bob here");
    let alices = asking.read_to_end().await;
    assert_eq!(kinds(&alices).last(), Some(&"finish"));
    assert_eq!(text_of(&alices), words(30));
}

#[tokio::test]
async fn bad_requests_get_clear_answers() {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(20)).await;
    let post = |token: Option<String>, body: String| {
        let mut req = http()
            .post(srv.url("/api/chat"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let r = bounded(req.send()).await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let body = chat_body("b1", "hi").to_string();
    let (status, answer) = post(None, body.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(answer["error"]["code"], "AUTHENTICATION_FAILED");
    assert_eq!(post(Some(jwt_expired()), body.clone()).await.0, 401);
    for bad in [
        "not json".to_string(),
        json!({"messages": []}).to_string(),
        json!({"id": "x", "messages": [{"role": "assistant", "parts": []}]}).to_string(),
        chat_body(&"x".repeat(300), "hi").to_string(),
    ] {
        let (status, answer) = post(Some(srv.token()), bad.clone()).await;
        assert_eq!(status, 400, "{bad}");
        assert!(answer["error"]["message"].as_str().is_some(), "{answer}");
    }
    // One answer at a time per chat.
    let long = UiStream::post(&srv, &srv.token(), &chat_body("busy", &words(50))).await;
    let (status, answer) = post(Some(srv.token()), chat_body("busy", "again").to_string()).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "ANSWER_IN_PROGRESS");
    drop(long);
    assert_eq!(
        get_stream(&srv, "not-a-token", "busy")
            .await
            .status()
            .as_u16(),
        401
    );
}

/// The chat is the token subject's thread with the chat's id: a HAIP client following it
/// sees the answer as it is made.
#[tokio::test]
async fn a_haip_client_following_the_chat_sees_the_answer() {
    let srv = Server::start().await;
    let mut follower = srv
        .connect_with(
            Kind::Ws,
            Opts {
                query: vec![("thread".into(), "followed".into())],
                ..Opts::default()
            },
        )
        .await;
    follower.recv_type("TOOL_LIST").await;
    let chunks = UiStream::post(&srv, &srv.token(), &chat_body("followed", "seen elsewhere"))
        .await
        .read_to_end()
        .await;
    let run = follower.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let text: String = run
        .iter()
        .filter(|v| ty(v) == "MESSAGE_PART")
        .map(|v| v["payload"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "seen elsewhere");
    assert!(run.iter().all(|v| v["thread_id"] == "followed"));
    let started = run.iter().find(|v| ty(v) == "RUN_STARTED").unwrap();
    assert_eq!(started["run_id"], chunks[0]["messageId"]);
}

/// An OpenAI-compatible model behind the endpoint: it is given the conversation the
/// front-end sent, and its tool calls show as tool chunks in steps.
#[tokio::test]
async fn a_model_gets_the_history_and_its_tool_calls_become_tool_chunks() {
    let mut up = Upstream::start().await;
    let mut config = OpenAiConfig::new("scripted-model");
    config.base_url = up.base_url();
    let agent = OpenAiAgent::new(config).expect("agent");
    let srv = Server::start_with_agent(Arc::new(agent), ToolRegistry::with_builtins()).await;
    let mut round = vec![tool_fragment(
        0,
        Some("call_add"),
        Some("add"),
        "{\"a\": 2, \"b\": 40}",
    )];
    round.extend(tool_calls_end());
    up.then(Answer::Stream(round))
        .then(Answer::Stream(text_answer(&["The sum ", "is 42."], None)));
    let body = json!({
        "id": "math",
        "trigger": "submit-message",
        "messages": [
            {"id": "1", "role": "user", "parts": [{"type": "text", "text": "I like sums"}]},
            {"id": "2", "role": "assistant", "parts": [{"type": "step-start"},
                                                       {"type": "text", "text": "Noted."}]},
            {"id": "3", "role": "user", "parts": [{"type": "text", "text": "add 2 and 40"}]},
        ],
    });
    let chunks = UiStream::post(&srv, &srv.token(), &body)
        .await
        .read_to_end()
        .await;
    let asked = up.request().await;
    let said: Vec<(String, String)> = asked
        .messages()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        said,
        [
            ("user".to_string(), "I like sums".to_string()),
            ("assistant".to_string(), "Noted.".to_string()),
            ("user".to_string(), "add 2 and 40".to_string()),
        ]
    );
    let input = chunks
        .iter()
        .find(|c| c["type"] == "tool-input-available")
        .expect("tool input");
    assert_eq!(input["toolCallId"], "call_add");
    assert_eq!(input["toolName"], "add");
    assert_eq!(input["input"], json!({"a": 2, "b": 40}));
    let output = chunks
        .iter()
        .find(|c| c["type"] == "tool-output-available")
        .expect("tool output");
    assert_eq!(output["output"], json!({"result": 42}));
    assert_eq!(text_of(&chunks), "The sum is 42.");
    let k = kinds(&chunks);
    let out_at = k
        .iter()
        .position(|t| *t == "tool-output-available")
        .unwrap();
    assert_eq!(
        k[out_at + 1..out_at + 3],
        ["finish-step", "start-step"],
        "{k:?}"
    );
    assert_eq!(k.last(), Some(&"finish"));
}

// --- WebSocket ------------------------------------------------------------------------

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(srv: &Server, query: &str) -> Ws {
    let url = format!("ws://{}/api/chat{query}", srv.addr);
    let (ws, _) = bounded(tokio_tungstenite::connect_async(url))
        .await
        .expect("upgrade");
    ws
}

async fn send_frame(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        match bounded(ws.next()).await.expect("open").expect("frame") {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON frame"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn send_request(request_id: &str, chat_id: &str, text: &str, auth: Option<&str>) -> Value {
    let mut frame = chat_body(chat_id, text);
    frame["type"] = json!("send");
    frame["requestId"] = json!(request_id);
    frame["headers"] = match auth {
        Some(t) => json!({"authorization": format!("Bearer {t}")}),
        None => json!({}),
    };
    frame["body"] = json!({});
    frame
}

/// Frames of one request until its `end` (or another final frame); frames of the
/// requests in `skip` (aborted ones, whose frames may have been on their way) are passed.
async fn request_frames_skipping(ws: &mut Ws, request_id: &str, skip: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let f = next_frame(ws).await;
        if skip.iter().any(|s| f["requestId"] == *s) {
            continue;
        }
        assert_eq!(f["requestId"], request_id, "{f}");
        let last = matches!(f["type"].as_str(), Some("end" | "error" | "no-active"));
        out.push(f);
        if last {
            return out;
        }
    }
}

async fn request_frames(ws: &mut Ws, request_id: &str) -> Vec<Value> {
    request_frames_skipping(ws, request_id, &[]).await
}

fn frame_chunks(frames: &[Value]) -> Vec<(u64, Value)> {
    frames
        .iter()
        .filter(|f| f["type"] == "chunk")
        .map(|f| (f["sequence"].as_u64().unwrap(), f["chunk"].clone()))
        .collect()
}

#[tokio::test]
async fn websocket_send_and_resume_with_last_sequence() {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(15)).await;
    let mut a = ws(&srv, &format!("?token={}", srv.token())).await;
    let text = words(30);
    send_frame(&mut a, send_request("s1", "wc", &text, None)).await;
    assert_eq!(next_frame(&mut a).await["type"], "start");
    // Another device resumes from sequence 4 while the answer is made.
    let mut b = ws(&srv, "").await;
    let mut resume = json!({"type": "resume", "requestId": "r1", "id": "wc",
                            "lastSequence": 4, "body": {},
                            "headers": {"Authorization": format!("Bearer {}", srv.token())}});
    // Wait until at least five chunks exist.
    let mut sent = vec![];
    while sent.len() < 6 {
        sent.push(next_frame(&mut a).await);
    }
    send_frame(&mut b, resume.clone()).await;
    let mut rest = request_frames(&mut a, "s1").await;
    sent.append(&mut rest);
    let all = frame_chunks(&sent);
    assert_eq!(
        all.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (0..all.len() as u64).collect::<Vec<_>>(),
        "sequences count from 0 without gaps"
    );
    let chunks: Vec<Value> = all.iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(text_of(&chunks), text);
    assert_eq!(sent.last().unwrap()["type"], "end");
    let resumed = request_frames(&mut b, "r1").await;
    assert_eq!(resumed[0]["type"], "start");
    let later = frame_chunks(&resumed);
    assert_eq!(
        later.first().map(|(s, _)| *s),
        Some(5),
        "only chunks after 4"
    );
    assert_eq!(later, all[5..].to_vec());
    // Nothing in progress now.
    resume["requestId"] = json!("r2");
    resume.as_object_mut().unwrap().remove("lastSequence");
    send_frame(&mut b, resume).await;
    let f = next_frame(&mut b).await;
    assert_eq!(f, json!({"type": "no-active", "requestId": "r2"}));
}

#[tokio::test]
async fn websocket_abort_of_a_send_cancels_and_of_a_resume_only_stops_reading() {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(20)).await;
    let token = srv.token();
    let mut a = ws(&srv, "").await;
    // Without any token: an error for that request, and the socket stays usable.
    send_frame(&mut a, send_request("x", "wa", "hi", None)).await;
    let e = next_frame(&mut a).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["requestId"], "x");
    assert!(e["errorText"].as_str().unwrap().contains("token"), "{e}");
    // A resume that is aborted stops only that reading.
    send_frame(&mut a, send_request("s1", "wa", &words(60), Some(&token))).await;
    let resume = json!({"type": "resume", "requestId": "r1", "id": "wa", "body": {},
                        "headers": {"authorization": format!("Bearer {token}")}});
    let mut b = ws(&srv, &format!("?token={token}")).await;
    send_frame(&mut b, resume).await;
    assert_eq!(next_frame(&mut b).await["type"], "start");
    next_frame(&mut b).await;
    send_frame(&mut b, json!({"type": "abort", "requestId": "r1"})).await;
    let answer = request_frames(&mut a, "s1").await;
    let chunks: Vec<Value> = frame_chunks(&answer).into_iter().map(|(_, c)| c).collect();
    assert_eq!(kinds(&chunks).last(), Some(&"finish"), "the answer went on");
    assert_eq!(text_of(&chunks), words(60));
    // An aborted send cancels the answer.
    send_frame(&mut a, send_request("s2", "wa", &words(200), Some(&token))).await;
    assert_eq!(next_frame(&mut a).await["type"], "start");
    next_frame(&mut a).await;
    let reader = get_stream(&srv, &token, "wa").await;
    send_frame(&mut a, json!({"type": "abort", "requestId": "s2"})).await;
    let chunks = UiStream::new(reader).read_to_end().await;
    assert_eq!(kinds(&chunks).last(), Some(&"abort"));
    until_not_in_progress(&srv, &token, "wa").await;
    // Nothing more was sent for s2 after the abort settled; b's socket still works.
    let quiet = tokio::time::timeout(Duration::from_millis(200), async {
        loop {
            let f = next_frame(&mut a).await;
            if f["requestId"] != "s2" {
                return f;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "no frame of another request: {quiet:?}");
    send_frame(&mut b, send_request("s3", "wb", "still here", None)).await;
    let frames = request_frames_skipping(&mut b, "s3", &["r1"]).await;
    let chunks: Vec<Value> = frame_chunks(&frames).into_iter().map(|(_, c)| c).collect();
    assert_eq!(text_of(&chunks), "still here");
}

/// A front-end on another origin: the preflights of its POST and DELETE pass.
#[tokio::test]
async fn preflight_allows_a_front_end_on_another_origin() {
    let srv = Server::start().await;
    for (method, path) in [("POST", "/api/chat"), ("DELETE", "/api/chat/x/stream")] {
        let r = bounded(
            http()
                .request(reqwest::Method::OPTIONS, srv.url(path))
                .header("origin", "http://localhost:5173")
                .header("access-control-request-method", method)
                .header(
                    "access-control-request-headers",
                    "authorization,content-type",
                )
                .send(),
        )
        .await
        .unwrap();
        assert!(r.status().is_success(), "{method} {path}: {}", r.status());
        let allowed = r.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(allowed.contains(method), "{allowed}");
        let headers = r.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_lowercase();
        assert!(headers.contains("authorization"), "{headers}");
    }
}

/// What an answer keeps for its readers counts in the server's memory budget, and is given
/// back once the answer ended and its readers are gone.
#[tokio::test]
async fn kept_answers_count_in_the_memory_budget() {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(10)).await;
    let answers = |stats: &Value| stats["memory"]["usedBy"]["answers"].as_u64().unwrap();
    let mut asking = UiStream::post(&srv, &srv.token(), &chat_body("m1", &words(100))).await;
    asking.read_chunks(10).await;
    let mut seen = 0;
    for _ in 0..100 {
        seen = answers(&srv.get_json("/stats").await.1);
        if seen > 0 {
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    assert!(seen > 0, "an answer in progress is counted");
    asking.read_to_end().await;
    let mut left = u64::MAX;
    for _ in 0..100 {
        left = answers(&srv.get_json("/stats").await.1);
        if left == 0 {
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    assert_eq!(left, 0, "given back once read and ended");
}

/// An answer's session is dropped once the answer is done: answers never push a user's
/// own kept sessions out.
#[tokio::test]
async fn an_answers_session_is_not_kept_after_it() {
    let srv = Server::start().await;
    let before = srv.get_json("/stats").await.1["sessions"].as_u64().unwrap();
    for i in 0..3 {
        let chunks = UiStream::post(&srv, &srv.token(), &chat_body(&format!("k{i}"), "short"))
            .await
            .read_to_end()
            .await;
        assert_eq!(text_of(&chunks), "short");
    }
    let mut sessions = u64::MAX;
    for _ in 0..100 {
        sessions = srv.get_json("/stats").await.1["sessions"].as_u64().unwrap();
        if sessions == before {
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    assert_eq!(sessions, before);
}

/// An answer to a request itself (`no-active`, `error`) is never lost behind the chunks of
/// another request streaming on the same socket.
#[tokio::test]
async fn websocket_replies_are_not_lost_behind_a_busy_stream() {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(0)).await;
    let token = srv.token();
    let mut a = ws(&srv, &format!("?token={token}")).await;
    send_frame(&mut a, send_request("big", "busy-chat", &words(3000), None)).await;
    for i in 0..20 {
        let resume = json!({"type": "resume", "requestId": format!("idle{i}"),
                            "id": format!("idle-chat-{i}"), "body": {}, "headers": {}});
        send_frame(&mut a, resume).await;
    }
    let mut no_active = 0;
    let mut ended = false;
    while !(ended && no_active == 20) {
        let f = next_frame(&mut a).await;
        match (f["type"].as_str(), f["requestId"].as_str()) {
            (Some("no-active"), Some(id)) if id.starts_with("idle") => no_active += 1,
            (Some("end"), Some("big")) => ended = true,
            (Some("chunk" | "start"), Some("big")) => {}
            other => panic!("unexpected {other:?}: {f}"),
        }
    }
}
