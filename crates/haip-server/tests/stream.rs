//! HTTP streaming (`POST /haip/stream`, contract section 4.4): NDJSON both ways over one
//! request, limits, 401 answers, and the browser mode where the request body ends and later
//! messages arrive with `POST /haip/messages`.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn response_is_ndjson_and_full_duplex() {
    let srv = Server::start().await;
    let mut c = srv.connect(Kind::Stream).await;
    c.send_msg("SYSTEM", "HAI", hai_payload(&ALL_EVENTS)).await;
    let (status, headers) = c.stream_head().await;
    assert_eq!(status, 200);
    let ct = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str());
    assert_eq!(ct, Some("application/x-ndjson"));
    assert!(
        !headers.iter().any(|(k, _)| k == "content-encoding"),
        "streams are never compressed"
    );
    assert_eq!(ty(&c.recv().await), "HAI");
    // Several round trips on the same open request.
    for word in ["first", "second", "third"] {
        c.say(word).await;
        let run = c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
        let part = run.iter().find(|v| ty(v) == "MESSAGE_PART").unwrap();
        assert_eq!(part["payload"]["text"], word);
    }
    assert_contiguous(&c.log);
}

#[tokio::test]
async fn bad_tokens_get_401() {
    let srv = Server::start().await;
    let line = format!(
        "{}\n",
        envelope("h", "s", 1, "SYSTEM", "HAI", hai_payload(&ALL_EVENTS))
    );
    for token in [
        None,
        Some(jwt_bad_signature()),
        Some(jwt_expired()),
        Some(jwt_alg_none()),
    ] {
        let mut req = http().post(srv.url("/haip/stream")).body(line.clone());
        if let Some(t) = &token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let resp = bounded(req.send()).await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{token:?}");
        let www = resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(www.starts_with("Bearer"));
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "AUTHENTICATION_FAILED");
        assert!(body["error"]["message"].is_string());
    }
}

#[tokio::test]
async fn first_line_over_the_limit_is_413() {
    let srv = Server::start_with(|c| c.http_stream_max_payload = 1024).await;
    let resp = bounded(
        http()
            .post(srv.url("/haip/stream"))
            .header("Authorization", format!("Bearer {}", srv.token()))
            .body("x".repeat(4096))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
}

#[tokio::test]
async fn later_line_over_the_limit_is_a_violation_and_ends_the_stream() {
    let srv = Server::start_with(|c| c.http_stream_max_payload = 1024).await;
    let mut c = srv.connect(Kind::Stream).await;
    c.ping("fits").await;
    c.recv_type("PONG").await;
    let big = c.msg("SYSTEM", "PING", json!({"nonce": "y".repeat(3000)}));
    c.send(&big).await;
    let e = c.recv_type("ERROR").await;
    assert_eq!(e["payload"]["code"], "PROTOCOL_VIOLATION");
    let (code, _) = c.expect_close().await;
    assert_eq!(code, None, "the stream ends");
}

#[tokio::test]
async fn body_may_end_and_later_messages_come_by_post() {
    let srv = Server::start().await;
    let mut c = srv.connect(Kind::Stream).await;
    c.send_msg("SYSTEM", "HAI", hai_payload(&ALL_EVENTS)).await;
    c.end_body();
    let session = c.recv_type("HAI").await["session"]
        .as_str()
        .unwrap()
        .to_string();
    let start = c.msg(
        "USER",
        "MESSAGE_START",
        json!({"message_id": "b", "text": "via post"}),
    );
    let end = c.msg("USER", "MESSAGE_END", json!({"message_id": "b"}));
    let base = format!("http://{}", srv.addr);
    let body = Value::from(vec![start, end]).to_string();
    let r = post_messages(&base, &srv.token(), Some(&session), &body).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, json!({"status": "ok", "accepted": 2, "ack": "3"}));
    let run = c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let text: String = run
        .iter()
        .filter(|v| ty(v) == "MESSAGE_PART")
        .map(|v| v["payload"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "via post");
}

#[tokio::test]
async fn finite_body_of_several_lines() {
    let srv = Server::start().await;
    let lines: String = [
        envelope("h1", "s", 1, "SYSTEM", "HAI", hai_payload(&ALL_EVENTS)),
        envelope("p2", "s", 2, "SYSTEM", "PING", json!({"nonce": "a"})),
        envelope("p3", "s", 3, "SYSTEM", "PING", json!({"nonce": "b"})),
    ]
    .iter()
    .map(|v| format!("{v}\r\n"))
    .collect();
    let resp = bounded(
        http()
            .post(srv.url("/haip/stream"))
            .header("Authorization", format!("Bearer {}", srv.token()))
            .body(lines)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    use futures_util::StreamExt;
    while buf.matches(r#""type":"PONG""#).count() < 2 || !buf.ends_with('\n') {
        let chunk = bounded(stream.next()).await.expect("open").unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    let msgs: Vec<Value> = buf
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("one JSON envelope per line"))
        .collect();
    let pongs: Vec<&Value> = msgs.iter().filter(|v| ty(v) == "PONG").collect();
    assert_eq!(pongs[0]["payload"]["nonce"], "a");
    assert_eq!(pongs[1]["payload"]["nonce"], "b");
    assert_eq!(pongs[1]["ack"], "3");
}

/// `http_stream.timeout` (contract section 11): a stream on which the client says nothing
/// for that long ends, and its session stays resumable.
#[tokio::test]
async fn an_idle_stream_ends_and_its_session_is_kept() {
    let srv = Server::start_with(|c| c.http_stream_timeout = ms(400)).await;
    let mut c = srv.connect(Kind::Stream).await;
    c.send_msg("SYSTEM", "HAI", hai_payload(&ALL_EVENTS)).await;
    let hai = c.recv_type("HAI").await;
    let session = hai["session"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    assert_eq!(c.expect_close().await, (None, String::new()));
    assert!(
        started.elapsed() >= ms(300),
        "ended before the idle timeout"
    );
    let last = seq(c.log.last().unwrap());
    let mut again = srv
        .connect_with(Kind::Stream, Opts::resume(&session, last))
        .await;
    again
        .send_msg("SYSTEM", "HAI", hai_payload(&ALL_EVENTS))
        .await;
    let hai = again.recv_type("HAI").await;
    assert_eq!(hai["session"], session.as_str());
}

/// Talking keeps a stream open past the idle timeout.
#[tokio::test]
async fn a_talking_stream_is_not_idle() {
    let srv = Server::start_with(|c| c.http_stream_timeout = ms(400)).await;
    let mut c = srv.connect(Kind::Stream).await;
    c.send_msg("SYSTEM", "HAI", hai_payload(&ALL_EVENTS)).await;
    c.recv_type("HAI").await;
    for _ in 0..4 {
        c.send_msg("SYSTEM", "PING", json!({"nonce": "n"})).await;
        c.recv_type("PONG").await;
        tokio::time::sleep(ms(200)).await;
    }
    c.send_msg("SYSTEM", "PING", json!({"nonce": "last"})).await;
    assert_eq!(c.recv_type("PONG").await["payload"]["nonce"], "last");
}

/// Sends `lines` as a whole body (with a Content-Length) and reads the response until it
/// ends; `None` if it did not end within the test's bound.
async fn whole_body_until_end(srv: &Server, query: &str, lines: &[Value]) -> Option<Vec<Value>> {
    use futures_util::StreamExt;
    let body: String = lines.iter().map(|v| format!("{v}\n")).collect();
    let resp = bounded(
        http()
            .post(srv.url(&format!("/haip/stream{query}")))
            .header("Authorization", format!("Bearer {}", srv.token()))
            .body(body)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    loop {
        match tokio::time::timeout(ms(3000), stream.next()).await {
            Err(_) => return None,
            Ok(None) => break,
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.expect("a clean end")),
        }
    }
    Some(
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).expect("one JSON envelope per line"))
            .collect(),
    )
}

fn say_lines(text: &str) -> Vec<Value> {
    vec![
        envelope("h1", "s", 1, "SYSTEM", "HAI", hai_payload(&ALL_EVENTS)),
        envelope(
            "m2",
            "s",
            2,
            "USER",
            "MESSAGE_START",
            json!({"message_id": "q", "text": text}),
        ),
        envelope(
            "m3",
            "s",
            3,
            "USER",
            "MESSAGE_END",
            json!({"message_id": "q"}),
        ),
    ]
}

/// `?end=answered` (for curl-style clients that send a whole body): the stream ends once
/// the body has ended and the answer to it is written whole; the session stays resumable.
#[tokio::test]
async fn end_answered_ends_the_stream_with_the_answer() {
    let srv = Server::start().await;
    let msgs = whole_body_until_end(&srv, "?end=answered", &say_lines("one two three"))
        .await
        .expect("the stream ends by itself once answered");
    assert_eq!(types(&msgs).last(), Some(&"RUN_FINISHED"), "{msgs:?}");
    let text: String = msgs
        .iter()
        .filter(|v| ty(v) == "MESSAGE_PART")
        .map(|v| v["payload"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "one two three");
    assert_contiguous(&msgs);
    // The session is kept: a resume from the start replays the same messages.
    let session = msgs[0]["session"].as_str().unwrap().to_string();
    let mut again = srv
        .connect_with(Kind::Stream, Opts::resume(&session, 0))
        .await;
    again
        .send_msg("SYSTEM", "HAI", hai_payload(&ALL_EVENTS))
        .await;
    let replay = again.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let ids = |m: &[Value]| -> Vec<String> {
        m.iter()
            .filter(|v| ty(v) != "HAI")
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&replay), ids(&msgs));
}

/// A tool call still running when the body ends holds the stream open until its
/// TOOL_DONE is written.
#[tokio::test]
async fn end_answered_waits_for_a_running_tool() {
    let srv = Server::start().await;
    let lines = vec![
        envelope("h1", "s", 1, "SYSTEM", "HAI", hai_payload(&ALL_EVENTS)),
        envelope(
            "t2",
            "s",
            2,
            "AGENT",
            "TOOL_CALL",
            json!({"call_id": "c1", "tool": "sleep", "params": {"ms": 300}}),
        ),
    ];
    let msgs = whole_body_until_end(&srv, "?end=answered", &lines)
        .await
        .expect("the stream ends once the tool is done");
    let done = msgs.last().expect("messages");
    assert_eq!(ty(done), "TOOL_DONE", "{msgs:?}");
    assert_eq!(done["payload"]["status"], "OK");
}

/// Without `?end=answered` a whole body leaves the stream open (browsers post later
/// messages), and an unknown `end` value is refused before anything opens.
#[tokio::test]
async fn end_is_opt_in_and_checked() {
    let srv = Server::start().await;
    assert!(
        whole_body_until_end(&srv, "", &say_lines("still open"))
            .await
            .is_none(),
        "the stream stays open after the body without end=answered"
    );
    let resp = bounded(
        http()
            .post(srv.url("/haip/stream?end=soon"))
            .header("Authorization", format!("Bearer {}", srv.token()))
            .body(format!("{}\n", say_lines("x")[0]))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.unwrap().contains("end=answered"));
}

/// With `?end=answered`, an answer that takes longer than the idle timeout (and than a
/// heartbeat, which the client cannot answer once its body ended) still arrives whole.
#[tokio::test]
async fn end_answered_outlasts_the_idle_timeout_while_the_answer_comes() {
    let srv = Server::start_with(|c| {
        c.http_stream_timeout = ms(300);
        c.heartbeat_interval = ms(200);
        c.heartbeat_timeout = ms(100);
        c.echo_word_delay = ms(60);
    })
    .await;
    let text: String = (0..20).map(|i| format!("w{i} ")).collect();
    let text = text.trim_end().to_string();
    let msgs = whole_body_until_end(&srv, "?end=answered", &say_lines(&text))
        .await
        .expect("the stream ends once answered");
    let got: String = msgs
        .iter()
        .filter(|v| ty(v) == "MESSAGE_PART")
        .map(|v| v["payload"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(got, text);
    assert_eq!(types(&msgs).last(), Some(&"RUN_FINISHED"));
}
