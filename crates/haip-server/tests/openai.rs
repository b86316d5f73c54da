//! The OpenAI-compatible agent (contract section 12.1) against a scripted model server on
//! a real socket: one test per rule, each failing when its rule is broken.

mod common;
#[path = "support/upstream.rs"]
mod upstream;

use std::sync::Arc;

use common::*;
use haip_server::agent::openai::{OpenAiAgent, OpenAiConfig};
use haip_server::tools::ToolRegistry;
use serde_json::{json, Value};
use upstream::*;

const MODEL: &str = "scripted-model";
const KEY: &str = "sk-test-4f1e9b2c-never-shown";

/// A server whose agent asks `upstream`, with the built-in tools.
async fn server(upstream: &Upstream, tweak: impl FnOnce(&mut OpenAiConfig)) -> Server {
    server_with_tools(upstream, ToolRegistry::with_builtins(), tweak).await
}

async fn server_with_tools(
    upstream: &Upstream,
    tools: ToolRegistry,
    tweak: impl FnOnce(&mut OpenAiConfig),
) -> Server {
    let mut config = OpenAiConfig::new(MODEL);
    config.base_url = upstream.base_url();
    config.api_key = Some(KEY.into());
    tweak(&mut config);
    let agent = OpenAiAgent::new(config).expect("agent");
    Server::start_with_agent(Arc::new(agent), tools).await
}

/// A WebSocket session past its HAI and TOOL_LIST.
async fn open(server: &Server) -> Conn {
    open_kind(server, Kind::Ws).await
}

async fn open_kind(server: &Server, kind: Kind) -> Conn {
    let mut c = server.connect(kind).await;
    if kind == Kind::Stream {
        c.ping("open").await;
    }
    c.recv_type("HAI").await;
    c.recv_type("TOOL_LIST").await;
    c
}

fn run_ended(v: &Value) -> bool {
    matches!(ty(v), "RUN_FINISHED" | "RUN_ERROR")
}

/// Says `text` (in `thread` if given) and returns the agent's messages of the run it
/// started, RUN_STARTED to RUN_FINISHED or RUN_ERROR.
async fn turn(conn: &mut Conn, text: &str, thread: Option<&str>) -> Vec<Value> {
    let message_id = next_id("m");
    let mut start = conn.msg(
        "USER",
        "MESSAGE_START",
        json!({"message_id": message_id, "text": text}),
    );
    let mut end = conn.msg("USER", "MESSAGE_END", json!({"message_id": message_id}));
    if let Some(thread) = thread {
        start["thread_id"] = json!(thread);
        end["thread_id"] = json!(thread);
    }
    for m in [start, end] {
        if let Some(r) = conn.send(&m).await {
            assert_eq!(r.status, 200, "POST refused: {r:?}");
        }
    }
    let msgs = conn.collect_until(run_ended).await;
    let first = msgs
        .iter()
        .position(|m| ty(m) == "RUN_STARTED")
        .expect("RUN_STARTED");
    msgs[first..]
        .iter()
        .filter(|m| chan(m) == "AGENT")
        .cloned()
        .collect()
}

fn texts(run: &[Value]) -> Vec<String> {
    run.iter()
        .filter(|m| ty(m) == "MESSAGE_PART")
        .map(|m| m["payload"]["text"].as_str().expect("text").to_string())
        .collect()
}

fn of_type<'a>(run: &'a [Value], t: &str) -> Vec<&'a Value> {
    run.iter().filter(|m| ty(m) == t).collect()
}

/// The RUN_ERROR that ended `run`, checked for code AGENT_ERROR; returns its message.
fn agent_error(run: &[Value]) -> String {
    let last = run.last().expect("a run");
    assert_eq!(ty(last), "RUN_ERROR", "{run:?}");
    assert_eq!(last["payload"]["code"], "AGENT_ERROR", "{last}");
    assert_eq!(
        last["payload"]["run_id"], run[0]["payload"]["run_id"],
        "{last}"
    );
    let message = last["payload"]["message"].as_str().expect("message");
    assert!(
        !message.contains(KEY),
        "the API key reached a client: {message}"
    );
    message.to_string()
}

#[tokio::test]
async fn a_user_message_becomes_one_streamed_request_of_the_contracts_shape() {
    let mut up = Upstream::start().await;
    let server = server(&up, |c| c.system_prompt = Some("Be brief.".into())).await;
    up.then(Answer::Stream(text_answer(&["Hi"], None)));
    let mut c = open(&server).await;
    turn(&mut c, "hello there", None).await;
    let req = up.request().await;
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(req.body["model"], MODEL);
    assert_eq!(req.body["stream"], true);
    assert_eq!(req.body["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        req.messages(),
        &[
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "hello there"}),
        ]
    );
    // Every server tool, as a function whose parameters are its input schema.
    let registry = ToolRegistry::with_builtins();
    let offered = req.body["tools"].as_array().expect("tools");
    let specs = registry.specs();
    assert_eq!(offered.len(), specs.len());
    for spec in specs {
        let f = offered
            .iter()
            .find(|t| t["function"]["name"] == spec.name.as_str())
            .unwrap_or_else(|| panic!("tool {} not offered: {offered:?}", spec.name));
        assert_eq!(f["type"], "function");
        assert_eq!(f["function"]["description"], spec.description.as_str());
        assert_eq!(f["function"]["parameters"], spec.input_schema);
    }
}

#[tokio::test]
async fn without_tools_or_system_prompt_neither_is_sent() {
    let mut up = Upstream::start().await;
    let server = server_with_tools(&up, ToolRegistry::new(), |c| c.api_key = None).await;
    up.then(Answer::Stream(text_answer(&["ok"], None)));
    let mut c = open(&server).await;
    turn(&mut c, "hi", None).await;
    let req = up.request().await;
    assert!(req.body.get("tools").is_none(), "{}", req.body);
    assert_eq!(req.header("authorization"), None);
    assert_eq!(req.messages(), &[json!({"role": "user", "content": "hi"})]);
}

#[tokio::test]
async fn deltas_become_one_run_of_exact_parts_on_every_transport() {
    for kind in [Kind::Ws, Kind::Sse, Kind::Stream] {
        let up = Upstream::start().await;
        let server = server(&up, |_| {}).await;
        // An empty delta makes no part; spaces and newlines arrive exactly.
        up.then(Answer::Stream(text_answer(
            &["Hel", "lo,", "", " wörld", "\n\n  ok "],
            Some(42),
        )));
        let mut c = open_kind(&server, kind).await;
        let run = turn(&mut c, "greet me", None).await;
        assert_eq!(
            types(&run),
            [
                "RUN_STARTED",
                "MESSAGE_START",
                "MESSAGE_PART",
                "MESSAGE_PART",
                "MESSAGE_PART",
                "MESSAGE_PART",
                "MESSAGE_END",
                "RUN_FINISHED"
            ],
            "{kind:?}"
        );
        assert_eq!(
            texts(&run),
            ["Hel", "lo,", " wörld", "\n\n  ok "],
            "{kind:?}"
        );
        let run_id = &run[0]["payload"]["run_id"];
        for m in &run {
            assert_eq!(chan(m), "AGENT", "{kind:?}: {m}");
            assert_eq!(&m["run_id"], run_id, "{kind:?}: {m}");
        }
        assert_eq!(run[1]["payload"]["author"], MODEL, "{kind:?}");
        let message_id = &run[1]["payload"]["message_id"];
        assert!(run[2..7]
            .iter()
            .all(|m| &m["payload"]["message_id"] == message_id));
        assert_eq!(run[6]["payload"]["tokens"], "42", "usage counts: {kind:?}");
        assert_eq!(run[7]["payload"]["status"], "OK", "{kind:?}");
    }
}

#[tokio::test]
async fn without_usage_the_tokens_are_the_parts_and_the_answer_joins_the_history() {
    let mut up = Upstream::start().await;
    let server = server(&up, |_| {}).await;
    up.then(Answer::Stream(text_answer(
        &["one ", "two ", "three"],
        None,
    )))
    .then(Answer::Stream(text_answer(&["fine"], Some(1))));
    let mut c = open(&server).await;
    let run = turn(&mut c, "count", None).await;
    let end = of_type(&run, "MESSAGE_END");
    assert_eq!(end[0]["payload"]["tokens"], "3");
    turn(&mut c, "again?", None).await;
    up.request().await;
    let second = up.request().await;
    assert_eq!(
        second.messages(),
        &[
            json!({"role": "user", "content": "count"}),
            json!({"role": "assistant", "content": "one two three"}),
            json!({"role": "user", "content": "again?"}),
        ]
    );
}

#[tokio::test]
async fn split_tool_call_deltas_run_in_the_run_and_are_fed_back() {
    let mut up = Upstream::start().await;
    let server = server(&up, |_| {}).await;
    // Two calls, interleaved, each cut into fragments keyed by index.
    let mut round = vec![
        tool_fragment(0, Some("call_add"), Some("add"), ""),
        tool_fragment(0, None, None, "{\"a\": 2"),
        tool_fragment(1, Some("call_echo"), Some("echo"), "{\"mess"),
        tool_fragment(0, None, None, ", \"b\": 40}"),
        tool_fragment(1, None, None, "age\": \"hi\"}"),
    ];
    round.extend(tool_calls_end());
    up.then(Answer::Stream(round))
        .then(Answer::Stream(text_answer(&["The sum is 42."], Some(5))));
    let mut c = open(&server).await;
    let run = turn(&mut c, "add 2 and 40", None).await;
    let run_id = &run[0]["payload"]["run_id"];
    assert_eq!(of_type(&run, "RUN_STARTED").len(), 1);
    let calls = of_type(&run, "TOOL_CALL");
    assert_eq!(calls.len(), 2, "{run:?}");
    assert_eq!(
        calls[0]["payload"],
        json!({"call_id": "call_add", "tool": "add", "params": {"a": 2, "b": 40}})
    );
    assert_eq!(
        calls[1]["payload"],
        json!({"call_id": "call_echo", "tool": "echo", "params": {"message": "hi"}})
    );
    let dones = of_type(&run, "TOOL_DONE");
    assert_eq!(dones.len(), 2, "{run:?}");
    assert_eq!(dones[0]["payload"]["call_id"], "call_add");
    assert_eq!(dones[0]["payload"]["status"], "OK");
    assert_eq!(dones[0]["payload"]["result"], json!({"result": 42}));
    assert_eq!(dones[1]["payload"]["result"], json!({"echoed": "hi"}));
    for m in calls.iter().chain(&dones) {
        assert_eq!(chan(m), "AGENT");
        assert_eq!(&m["run_id"], run_id);
    }
    assert_eq!(texts(&run), ["The sum is 42."]);
    assert_eq!(
        run.last().map(|m| &m["payload"]["status"]),
        Some(&json!("OK"))
    );

    up.request().await;
    let again = up.request().await;
    let messages = again.messages();
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert_eq!(messages[1]["role"], "assistant");
    let asked = messages[1]["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0]["id"], "call_add");
    assert_eq!(asked[0]["type"], "function");
    assert_eq!(asked[0]["function"]["name"], "add");
    let args: Value =
        serde_json::from_str(asked[0]["function"]["arguments"].as_str().expect("args"))
            .expect("arguments are JSON");
    assert_eq!(args, json!({"a": 2, "b": 40}));
    assert_eq!(messages[2]["role"], "tool");
    assert_eq!(messages[2]["tool_call_id"], "call_add");
    let content: Value =
        serde_json::from_str(messages[2]["content"].as_str().expect("content")).expect("JSON");
    assert_eq!(content, json!({"result": 42}));
    assert_eq!(messages[3]["tool_call_id"], "call_echo");
}

#[tokio::test]
async fn a_tool_call_the_registry_refuses_ends_in_error_and_the_model_hears_why() {
    let mut up = Upstream::start().await;
    let server = server(&up, |_| {}).await;
    let mut round = vec![
        tool_fragment(0, Some("call_x"), Some("no_such_tool"), "{}"),
        tool_fragment(1, Some("call_y"), Some("add"), "{not json"),
    ];
    round.extend(tool_calls_end());
    up.then(Answer::Stream(round))
        .then(Answer::Stream(text_answer(&["Sorry."], None)));
    let mut c = open(&server).await;
    let run = turn(&mut c, "use tools", None).await;
    let dones = of_type(&run, "TOOL_DONE");
    assert_eq!(dones.len(), 2, "{run:?}");
    assert!(
        dones.iter().all(|d| d["payload"]["status"] == "ERROR"),
        "{dones:?}"
    );
    assert_eq!(run.last().map(ty), Some("RUN_FINISHED"));
    up.request().await;
    let again = up.request().await;
    let tool_messages: Vec<&Value> = again
        .messages()
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tool_messages.len(), 2);
    for m in tool_messages {
        let content = m["content"].as_str().expect("content");
        assert!(content.contains("error"), "{content}");
    }
}

#[tokio::test]
async fn past_the_round_limit_the_run_ends_with_run_error() {
    let mut up = Upstream::start().await;
    let server = server(&up, |c| c.max_tool_rounds = 2).await;
    for i in 0..3 {
        let mut round = vec![tool_fragment(
            0,
            Some(&format!("call_{i}")),
            Some("echo"),
            "{\"message\": \"again\"}",
        )];
        round.extend(tool_calls_end());
        up.then(Answer::Stream(round));
    }
    let mut c = open(&server).await;
    let run = turn(&mut c, "loop", None).await;
    let message = agent_error(&run);
    assert!(message.contains("AGENT_MAX_TOOL_ROUNDS"), "{message}");
    assert_eq!(of_type(&run, "TOOL_DONE").len(), 2, "two rounds ran");
    for _ in 0..3 {
        up.request().await;
    }
    assert!(
        up.request_within(ms(300)).await.is_none(),
        "asked a fourth time"
    );
}

#[tokio::test]
async fn upstream_statuses_become_agent_errors_naming_status_and_message() {
    let mut up = Upstream::start().await;
    let server = server(&up, |_| {}).await;
    up.then(Answer::Status(
        401,
        json!({"error": {"message": format!("Incorrect API key provided: {KEY}"),
                         "type": "invalid_request_error"}})
        .to_string(),
    ))
    .then(Answer::Status(503, "model is loading, try again".into()))
    .then(Answer::Status(
        404,
        json!({"error": {"message": "The model `scripted-model` does not exist"}}).to_string(),
    ))
    .then(Answer::Stream(text_answer(&["back"], None)));
    let mut c = open(&server).await;

    let message = agent_error(&turn(&mut c, "first", None).await);
    assert!(message.contains("401"), "{message}");
    assert!(message.contains("Incorrect API key provided"), "{message}");

    let message = agent_error(&turn(&mut c, "second", None).await);
    assert!(message.contains("503"), "{message}");
    assert!(message.contains("model is loading"), "{message}");

    let message = agent_error(&turn(&mut c, "third", None).await);
    assert!(
        message.contains("404") && message.contains("does not exist"),
        "{message}"
    );

    // The session goes on, and no failed turn entered the history.
    let run = turn(&mut c, "fourth", None).await;
    assert_eq!(texts(&run), ["back"]);
    for _ in 0..3 {
        up.request().await;
    }
    let last = up.request().await;
    assert_eq!(
        last.messages(),
        &[json!({"role": "user", "content": "fourth"})]
    );
    let (_, stats) = server.get_json("/stats").await;
    assert!(!stats.to_string().contains(KEY));
}

#[tokio::test]
async fn a_malformed_chunk_or_a_reported_error_fails_the_run() {
    let mut up = Upstream::start().await;
    let server = server(&up, |_| {}).await;
    up.then(Answer::Stream(vec![
        event(&delta(json!({"content": "partial"}), None)),
        b"data: {\"choices\": [\n\n".to_vec(),
    ]))
    .then(Answer::Stream(vec![event(
        &json!({"error": {"message": "context length exceeded"}}),
    )]))
    .then(Answer::Stream(text_answer(&["fine"], None)));
    let mut c = open(&server).await;
    let run = turn(&mut c, "one", None).await;
    let message = agent_error(&run);
    assert!(message.contains("malformed"), "{message}");
    assert_eq!(texts(&run), ["partial"], "what arrived before was shown");
    let message = agent_error(&turn(&mut c, "two", None).await);
    assert!(message.contains("context length exceeded"), "{message}");
    assert_eq!(texts(&turn(&mut c, "three", None).await), ["fine"]);
    for _ in 0..2 {
        up.request().await;
    }
    assert_eq!(
        up.request().await.contents(),
        ["three"],
        "failed turns are not remembered"
    );
}

#[tokio::test]
async fn a_stream_cut_before_its_end_fails_the_run() {
    let up = Upstream::start().await;
    let server = server(&up, |_| {}).await;
    up.then(Answer::Stream(vec![event(&delta(
        json!({"content": "half an ans"}),
        None,
    ))]));
    let mut c = open(&server).await;
    let message = agent_error(&turn(&mut c, "tell me", None).await);
    assert!(message.contains("ended the stream"), "{message}");
}

#[tokio::test]
async fn silence_past_agent_timeout_fails_the_run() {
    let mut up = Upstream::start().await;
    let server = server(&up, |c| c.timeout = ms(300)).await;
    up.then(Answer::Hold(vec![event(&delta(
        json!({"content": "thinking"}),
        None,
    ))]));
    let mut c = open(&server).await;
    let run = turn(&mut c, "slow", None).await;
    let message = agent_error(&run);
    assert!(
        message.contains("AGENT_TIMEOUT") && message.contains("300 ms"),
        "{message}"
    );
    up.closed().await;
}

#[tokio::test]
async fn an_unreachable_model_server_fails_the_run_and_the_session_goes_on() {
    // A port nothing listens on.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut config = OpenAiConfig::new(MODEL);
    config.base_url = format!("http://127.0.0.1:{closed_port}/v1");
    let agent = OpenAiAgent::new(config).expect("agent");
    let server = Server::start_with_agent(Arc::new(agent), ToolRegistry::new()).await;
    let mut c = open(&server).await;
    for text in ["one", "two"] {
        let message = agent_error(&turn(&mut c, text, None).await);
        assert!(message.contains("cannot reach"), "{message}");
        assert!(message.contains(&closed_port.to_string()), "{message}");
    }
    let pong = c.ping("still here").await;
    assert_eq!(
        c.recv_type("PONG").await["payload"]["nonce"],
        pong["payload"]["nonce"]
    );
}

#[tokio::test]
async fn run_cancel_closes_the_upstream_request_at_once_and_keeps_what_was_shown() {
    let mut up = Upstream::start().await;
    let server = server(&up, |_| {}).await;
    up.then(Answer::Hold(vec![
        event(&delta(json!({"role": "assistant", "content": ""}), None)),
        event(&delta(json!({"content": "Once upon "}), None)),
        event(&delta(json!({"content": "a time"}), None)),
    ]))
    .then(Answer::Stream(text_answer(&["ok"], None)));
    let mut c = open(&server).await;
    let message_id = next_id("m");
    c.send_msg(
        "USER",
        "MESSAGE_START",
        json!({"message_id": message_id, "text": "a long story"}),
    )
    .await;
    c.send_msg("USER", "MESSAGE_END", json!({"message_id": message_id}))
        .await;
    let started = c.recv_type("RUN_STARTED").await;
    let run_id = started["payload"]["run_id"].clone();
    c.collect_until(|m| m["payload"]["text"] == "a time").await;
    c.send_msg("USER", "RUN_CANCEL", json!({"run_id": run_id}))
        .await;
    let finished = c.recv_type("RUN_FINISHED").await;
    assert_eq!(finished["payload"]["status"], "CANCELLED");
    assert_eq!(finished["payload"]["run_id"], run_id);
    up.request().await;
    up.closed().await;

    turn(&mut c, "go on", None).await;
    assert_eq!(
        up.request().await.messages(),
        &[
            json!({"role": "user", "content": "a long story"}),
            json!({"role": "assistant", "content": "Once upon a time"}),
            json!({"role": "user", "content": "go on"}),
        ]
    );
}

#[tokio::test]
async fn run_cancel_during_a_tool_call_cancels_the_tool_and_asks_no_more() {
    let mut up = Upstream::start().await;
    let server = server(&up, |_| {}).await;
    let mut round = vec![tool_fragment(
        0,
        Some("call_nap"),
        Some("sleep"),
        "{\"ms\": 20000}",
    )];
    round.extend(tool_calls_end());
    up.then(Answer::Stream(round));
    let mut c = open(&server).await;
    c.say("nap").await;
    let call = c.recv_type("TOOL_CALL").await;
    let run_id = call["run_id"].clone();
    c.send_msg("USER", "RUN_CANCEL", json!({"run_id": run_id}))
        .await;
    let rest = c.collect_until(|m| ty(m) == "RUN_FINISHED").await;
    let done = rest
        .iter()
        .find(|m| ty(m) == "TOOL_DONE")
        .expect("TOOL_DONE before RUN_FINISHED");
    assert_eq!(done["payload"]["status"], "CANCELLED");
    assert_eq!(
        rest.last().map(|m| &m["payload"]["status"]),
        Some(&json!("CANCELLED"))
    );
    up.request().await;
    assert!(
        up.request_within(ms(300)).await.is_none(),
        "asked again after cancel"
    );
}

#[tokio::test]
async fn history_keeps_the_last_agent_history_messages() {
    let mut up = Upstream::start().await;
    let server = server(&up, |c| {
        c.history = 4;
        c.system_prompt = Some("sys".into());
    })
    .await;
    for i in 1..=4 {
        up.then(Answer::Stream(text_answer(&[&format!("a{i}")], None)));
    }
    let mut c = open(&server).await;
    for i in 1..=4 {
        turn(&mut c, &format!("u{i}"), None).await;
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(up.request().await.contents());
    }
    assert_eq!(seen[0], ["sys", "u1"]);
    assert_eq!(seen[1], ["sys", "u1", "a1", "u2"]);
    assert_eq!(seen[2], ["sys", "u1", "a1", "u2", "a2", "u3"]);
    // Six messages by now: the oldest two dropped; the system prompt always stays.
    assert_eq!(seen[3], ["sys", "u2", "a2", "u3", "a3", "u4"]);
}

#[tokio::test]
async fn threads_and_sessions_are_separate_conversations() {
    let mut up = Upstream::start().await;
    let server = server(&up, |_| {}).await;
    for answer in ["t1-a", "t2-a", "s-a", "t1-b", "other-session"] {
        up.then(Answer::Stream(text_answer(&[answer], None)));
    }
    let mut c = open(&server).await;
    turn(&mut c, "in t1", Some("t1")).await;
    turn(&mut c, "in t2", Some("t2")).await;
    turn(&mut c, "no thread", None).await;
    turn(&mut c, "t1 again", Some("t1")).await;
    let mut other = open(&server).await;
    turn(&mut other, "fresh session", None).await;

    let asked: Vec<Vec<String>> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(up.request().await.contents());
        }
        v
    };
    assert_eq!(asked[0], ["in t1"]);
    assert_eq!(asked[1], ["in t2"]);
    assert_eq!(asked[2], ["no thread"]);
    assert_eq!(asked[3], ["in t1", "t1-a", "t1 again"]);
    assert_eq!(asked[4], ["fresh session"], "another session starts afresh");

    // The same thread from another session of the same user is the same conversation;
    // another user's thread of the same name is not.
    up.then(Answer::Stream(text_answer(&["shared"], None)))
        .then(Answer::Stream(text_answer(&["bob's"], None)));
    turn(&mut other, "t1 from elsewhere", Some("t1")).await;
    assert_eq!(
        up.request().await.contents(),
        ["in t1", "t1-a", "t1 again", "t1-b", "t1 from elsewhere"]
    );
    let mut bob = server
        .connect_with(Kind::Ws, Opts::token(server.token_for("bob")))
        .await;
    bob.recv_type("HAI").await;
    turn(&mut bob, "bob in t1", Some("t1")).await;
    assert_eq!(up.request().await.contents(), ["bob in t1"]);
}
