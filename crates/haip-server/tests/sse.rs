//! SSE (`GET /haip/sse`) and its upstream `POST /haip/messages` (contract sections 4.2, 4.3,
//! 4.5): stream format, tokens, 401 answers, post answers and session routing, limits.

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// Asserts the 401 answer of the HTTP transports.
async fn assert_401(resp: reqwest::Response) {
    assert_eq!(resp.status().as_u16(), 401);
    let www = resp
        .headers()
        .get("www-authenticate")
        .expect("WWW-Authenticate")
        .to_str()
        .unwrap()
        .to_string();
    assert!(www.starts_with("Bearer"), "{www}");
    let body: Value = serde_json::from_str(&bounded(resp.text()).await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "AUTHENTICATION_FAILED", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

fn bad_tokens() -> Vec<(&'static str, Option<String>)> {
    vec![
        ("missing", None),
        ("bad signature", Some(jwt_bad_signature())),
        ("expired", Some(jwt_expired())),
        ("alg none", Some(jwt_alg_none())),
        ("garbage", Some("garbage".to_string())),
    ]
}

#[tokio::test]
async fn stream_format_headers_retry_and_event_ids() {
    let srv = Server::start_with(|c| c.sse_retry_timeout = ms(1234)).await;
    let mut c = srv.connect(Kind::Sse).await;
    assert_eq!(c.header("content-type"), Some("text/event-stream"));
    assert_eq!(c.header("cache-control"), Some("no-cache"));
    assert_eq!(c.header("x-accel-buffering"), Some("no"));
    c.say("hello sse").await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let session = c.session.clone().unwrap();
    for (m, id) in c.log.iter().zip(&c.sse_ids) {
        assert_eq!(
            id.as_deref(),
            Some(format!("{session}:{}", seq(m)).as_str()),
            "event id of {m}"
        );
    }
    let raw = c.sse_raw.lock().unwrap().clone();
    assert!(
        raw.starts_with("retry: 1234\n"),
        "stream starts with retry: {raw:?}"
    );
    assert!(
        !raw.lines().any(|l| l.starts_with("event:")),
        "no event: field, so that onmessage gets every message"
    );
    assert_contiguous(&c.log);
}

#[tokio::test]
async fn token_in_authorization_header() {
    let srv = Server::start().await;
    let resp = bounded(
        http()
            .get(srv.url("/haip/sse"))
            .header("Authorization", format!("Bearer {}", srv.token()))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while !text.contains("\"type\":\"HAI\"") {
        let chunk = bounded(body.next()).await.expect("stream open").unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("retry: 3000\n"), "{text:?}");
}

#[tokio::test]
async fn bad_tokens_get_401_on_sse_and_post() {
    let srv = Server::start().await;
    for (what, token) in bad_tokens() {
        let url = match &token {
            Some(t) => srv.url(&format!("/haip/sse?token={t}")),
            None => srv.url("/haip/sse"),
        };
        let resp = bounded(http().get(url).send()).await.unwrap();
        assert_401(resp).await;
        for path in ["/haip/messages", "/haip/sse"] {
            let mut req = http()
                .post(srv.url(path))
                .body(envelope("p", "s", 1, "SYSTEM", "PING", json!({})).to_string());
            if let Some(t) = &token {
                req = req.header("Authorization", format!("Bearer {t}"));
            }
            let resp = bounded(req.send()).await.unwrap();
            assert_401(resp).await;
            let _ = what;
        }
    }
}

#[tokio::test]
async fn post_answers_ok_accepted_ack_and_replies_travel_on_the_stream() {
    let srv = Server::start().await;
    let mut c = srv.connect(Kind::Sse).await;
    let session = c.recv_type("HAI").await["session"]
        .as_str()
        .unwrap()
        .to_string();
    let start = c.msg(
        "USER",
        "MESSAGE_START",
        json!({"message_id": "arr", "text": "array body"}),
    );
    let end = c.msg("USER", "MESSAGE_END", json!({"message_id": "arr"}));
    let body = Value::from(vec![start, end]).to_string();
    let r = post_messages(&c_base(&srv), &srv.token(), Some(&session), &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"status": "ok", "accepted": 2, "ack": "2"}));
    let run = c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    assert_eq!(run.last().unwrap()["payload"]["status"], "OK");
    assert_eq!(run.last().unwrap()["ack"], "2");

    // The alias POST /haip/sse does the same.
    let ping = c.msg("SYSTEM", "PING", json!({"nonce": "alias"}));
    let resp = bounded(
        http()
            .post(srv.url("/haip/sse"))
            .header("Authorization", format!("Bearer {}", srv.token()))
            .header("X-HAIP-Session", session.as_str())
            .body(ping.to_string())
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"status": "ok", "accepted": 1, "ack": "3"}));
    assert_eq!(c.recv_type("PONG").await["payload"]["nonce"], "alias");
}

fn c_base(srv: &Server) -> String {
    format!("http://{}", srv.addr)
}

#[tokio::test]
async fn array_with_an_invalid_entry_accepts_the_rest() {
    let srv = Server::start().await;
    let mut c = srv.connect(Kind::Sse).await;
    let session = c.recv_type("HAI").await["session"]
        .as_str()
        .unwrap()
        .to_string();
    let good = c.msg("SYSTEM", "PING", json!({"nonce": "good"}));
    let bad = envelope("bad-entry", "x", 2, "USER", "MESSAGE_PART", json!({}));
    let body = Value::from(vec![good, bad]).to_string();
    let r = post_messages(&c_base(&srv), &srv.token(), Some(&session), &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["accepted"], 1);
    assert_eq!(r.body["ack"], "1");
    assert_eq!(c.recv_type("PONG").await["payload"]["nonce"], "good");
    let e = c.recv_type("ERROR").await;
    assert_eq!(e["payload"]["code"], "PROTOCOL_VIOLATION");
    assert_eq!(e["payload"]["related_id"], "bad-entry");
}

#[tokio::test]
async fn x_haip_session_routes_between_two_streams() {
    let srv = Server::start().await;
    let mut a = srv.connect(Kind::Sse).await;
    let mut b = srv.connect(Kind::Sse).await;
    let sa = a.recv_type("HAI").await["session"]
        .as_str()
        .unwrap()
        .to_string();
    let sb = b.recv_type("HAI").await["session"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(sa, sb);
    // Header wins over the envelope's session.
    let ping = envelope(
        &next_id("p"),
        &sa,
        1,
        "SYSTEM",
        "PING",
        json!({"nonce": "to-b"}),
    );
    let r = post_messages(&c_base(&srv), &srv.token(), Some(&sb), &ping.to_string()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(b.recv_type("PONG").await["payload"]["nonce"], "to-b");
    // No header: the envelope's session, a live session of this subject.
    let ping = envelope(
        &next_id("p"),
        &sa,
        1,
        "SYSTEM",
        "PING",
        json!({"nonce": "to-a"}),
    );
    let r = post_messages(&c_base(&srv), &srv.token(), None, &ping.to_string()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(a.recv_type("PONG").await["payload"]["nonce"], "to-a");
    let a_more = a.collect_for(ms(150)).await;
    let b_more = b.collect_for(ms(150)).await;
    assert!(!a_more.iter().any(|v| ty(v) == "PONG"), "{a_more:?}");
    assert!(!b_more.iter().any(|v| ty(v) == "PONG"), "{b_more:?}");
    // Two live sessions, no header and an unknown envelope session: nowhere to go.
    let ping = envelope("p-none", "unknown", 2, "SYSTEM", "PING", json!({}));
    let r = post_messages(&c_base(&srv), &srv.token(), None, &ping.to_string()).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.body["error"]["code"], "SESSION_NOT_FOUND");
}

#[tokio::test]
async fn single_live_session_is_the_default_target() {
    let srv = Server::start().await;
    let mut c = srv.connect(Kind::Sse).await;
    c.recv_type("HAI").await;
    let ping = envelope(
        "p-only",
        "whatever",
        1,
        "SYSTEM",
        "PING",
        json!({"nonce": "only"}),
    );
    let r = post_messages(&c_base(&srv), &srv.token(), None, &ping.to_string()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(c.recv_type("PONG").await["payload"]["nonce"], "only");
}

#[tokio::test]
async fn no_live_session_is_404() {
    let srv = Server::start().await;
    // Another subject's stream is not a target.
    let mut bob = srv
        .connect_with(Kind::Sse, Opts::token(srv.token_for("bob")))
        .await;
    let bob_session = bob.recv_type("HAI").await["session"]
        .as_str()
        .unwrap()
        .to_string();
    let ping = envelope("p", &bob_session, 1, "SYSTEM", "PING", json!({}));
    for header in [None, Some("no-such-session"), Some(bob_session.as_str())] {
        let r = post_messages(
            &c_base(&srv),
            &srv.token_for("carol"),
            header,
            &ping.to_string(),
        )
        .await;
        assert_eq!(r.status, 404, "{header:?}: {r:?}");
        assert_eq!(r.body["error"]["code"], "SESSION_NOT_FOUND");
        assert!(r.body["error"]["message"].is_string());
    }
    let more = bob.collect_for(ms(150)).await;
    assert!(!more.iter().any(|v| ty(v) == "PONG"), "{more:?}");
}

#[tokio::test]
async fn sse_max_connections_gives_503() {
    let srv = Server::start_with(|c| c.sse_max_connections = 1).await;
    let mut first = srv.connect(Kind::Sse).await;
    first.recv_type("HAI").await;
    let resp = bounded(
        http()
            .get(srv.url(&format!("/haip/sse?token={}", srv.token())))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    // Other transports are not limited by the SSE limit.
    let mut ws = srv.connect(Kind::Ws).await;
    assert_eq!(ty(&ws.recv().await), "HAI");
}

/// Contract 4.3: the envelope's session is the target only "when it is a live session of
/// this subject"; a session kept after its connection dropped is not live, so the post goes
/// to the subject's single live session.
#[tokio::test]
async fn envelope_session_must_be_live_to_be_the_target() {
    let srv = Server::start().await;
    let mut old = srv.connect(Kind::Ws).await;
    let stale = old.recv_type("HAI").await["session"]
        .as_str()
        .unwrap()
        .to_string();
    drop(old);
    tokio::time::sleep(ms(100)).await;
    let mut live = srv.connect(Kind::Sse).await;
    live.recv_type("HAI").await;
    let ping = envelope(
        "stale-ping",
        &stale,
        1,
        "SYSTEM",
        "PING",
        json!({"nonce": "s"}),
    );
    let r = post_messages(&c_base(&srv), &srv.token(), None, &ping.to_string()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(live.recv_type("PONG").await["payload"]["nonce"], "s");
}
