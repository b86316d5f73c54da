//! Plain HTTP (contract section 4.5): /health, /stats, /metrics, the connection limit, CORS.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

async fn wait_for_active(srv: &Server, n: u64) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, health) = srv.get_json("/health").await;
        assert_eq!(status, 200);
        if health["activeConnections"] == n {
            return health;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "activeConnections never reached {n}: {health}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_shape_and_connection_counts() {
    let srv = Server::start().await;
    let (status, health) = srv.get_json("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert!(health["uptime"].is_u64(), "{health}");
    assert_eq!(health["activeConnections"], 0);
    assert_eq!(health["totalConnections"], 0);
    // Section 4.5's four fields, and the node's name and mode (section 13).
    let keys: Vec<&String> = health.as_object().unwrap().keys().collect();
    assert_eq!(
        keys.len(),
        6,
        "status, uptime, activeConnections, totalConnections, node, mode: {health}"
    );

    let mut ws = srv.connect(Kind::Ws).await;
    ws.recv_type("HAI").await;
    let mut sse = srv.connect(Kind::Sse).await;
    sse.recv_type("HAI").await;
    let health = wait_for_active(&srv, 2).await;
    assert_eq!(health["totalConnections"], 2);
    drop(ws);
    let health = wait_for_active(&srv, 1).await;
    assert_eq!(health["totalConnections"], 2);
}

#[tokio::test]
async fn stats_shape() {
    let srv = Server::start().await;
    let mut c = srv.connect(Kind::Ws).await;
    c.ping("count me").await;
    c.recv_type("PONG").await;
    let (status, stats) = srv.get_json("/stats").await;
    assert_eq!(status, 200);
    for key in [
        "totalConnections",
        "activeConnections",
        "totalMessages",
        "messagesPerSecond",
        "averageLatency",
        "errorRate",
        "uptime",
    ] {
        assert!(stats[key].is_number(), "{key} in {stats}");
    }
    assert_eq!(stats["totalConnections"], 1);
    assert_eq!(stats["activeConnections"], 1);
    assert!(
        stats["totalMessages"].as_u64().unwrap() >= 4,
        "HAI, TOOL_LIST, PING, PONG: {stats}"
    );
}

/// "plus per-transport counts" (contract section 4.5).
#[tokio::test]
async fn stats_has_per_transport_counts() {
    let srv = Server::start().await;
    let mut ws = srv.connect(Kind::Ws).await;
    ws.recv_type("HAI").await;
    let mut sse = srv.connect(Kind::Sse).await;
    sse.recv_type("HAI").await;
    let (_, stats) = srv.get_json("/stats").await;
    let text = stats.to_string().to_ascii_lowercase();
    assert!(
        text.contains("websocket") && text.contains("sse") && text.contains("stream"),
        "no per-transport counts in {stats}"
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let srv = Server::start().await;
    let mut c = srv.connect(Kind::Ws).await;
    c.recv_type("TOOL_LIST").await;
    let resp = bounded(http().get(srv.url("/metrics")).send())
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let body = resp.text().await.unwrap();
    let mut typed = Vec::new();
    let mut samples = Vec::new();
    for line in body.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let name = it.next().unwrap().to_string();
            let kind = it.next().unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            typed.push(name);
        } else if line.starts_with('#') {
            assert!(line.starts_with("# HELP "), "{line}");
        } else {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            let base = name.split('{').next().unwrap();
            assert!(
                base.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{line}"
            );
            value.parse::<f64>().expect("numeric sample");
            samples.push((base.to_string(), value.parse::<f64>().unwrap()));
        }
    }
    for (name, _) in &samples {
        assert!(typed.contains(name), "{name} has no # TYPE");
    }
    let active = samples
        .iter()
        .find(|(n, _)| n == "haip_connections_active")
        .expect("haip_connections_active");
    assert_eq!(active.1, 1.0);
}

#[tokio::test]
async fn max_connections_gives_503_with_retry_after() {
    let srv = Server::start_with(|c| c.max_connections = 1).await;
    let mut first = srv.connect(Kind::Ws).await;
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

    let resp = bounded(
        http()
            .post(srv.url("/haip/stream"))
            .header("Authorization", format!("Bearer {}", srv.token()))
            .body("{}\n")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().get("retry-after").is_some());

    let url = srv.ws_url(&format!("/haip/websocket?token={}", srv.token()));
    match bounded(tokio_tungstenite::connect_async(url)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            assert!(resp.headers().get("retry-after").is_some());
        }
        Err(e) => panic!("expected HTTP 503, got {e}"),
        Ok(_) => panic!("a second connection was admitted"),
    }
    // Plain endpoints are not connections.
    let (status, _) = srv.get_json("/health").await;
    assert_eq!(status, 200);
    // The slot comes back when the first connection goes.
    drop(first);
    wait_for_active(&srv, 0).await;
    let mut again = srv.connect(Kind::Ws).await;
    assert_eq!(ty(&again.recv().await), "HAI");
}

#[tokio::test]
async fn cors_preflight_allows_authorization_and_session_header() {
    let srv = Server::start().await;
    let resp = bounded(
        http()
            .request(reqwest::Method::OPTIONS, srv.url("/haip/messages"))
            .header("Origin", "http://example.test")
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization,x-haip-session,content-type",
            )
            .send(),
    )
    .await
    .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
    assert!(allowed.contains("x-haip-session"), "{allowed}");
}

/// Contract section 13: /health, /stats and /metrics name the node and its mode; the name
/// is NODE_ID when given, else the host name and the port the node listens on.
#[tokio::test]
async fn the_node_is_named_with_its_mode() {
    let srv = Server::start().await;
    let (_, health) = srv.get_json("/health").await;
    let port = srv.addr.port();
    let node = health["node"].as_str().expect("node");
    assert!(
        node.ends_with(&format!(":{port}")) && node.len() > format!(":{port}").len(),
        "host name and port: {health}"
    );
    assert_eq!(health["mode"], "memory");
    let (_, stats) = srv.get_json("/stats").await;
    assert_eq!(
        (&stats["node"], &stats["mode"]),
        (&health["node"], &health["mode"])
    );

    let named = Server::start_with(|c| c.node_id = Some("web-\"1\"".into())).await;
    let (_, health) = named.get_json("/health").await;
    assert_eq!(health["node"], "web-\"1\"");
    let metrics = http()
        .get(named.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains("haip_node_info{node=\"web-\\\"1\\\"\",mode=\"memory\"} 1"),
        "{metrics}"
    );
}
