//! `deploy/nginx-haip.conf` in front of `haip serve`, with Debian's nginx: every transport
//! works through it and streams (an SSE event, an NDJSON line, a WebSocket frame arrive as
//! they are sent, not when a buffer fills). `scripts/test` installs nginx and sets
//! HAIP_REQUIRE_NGINX=1; without nginx (and without that variable) this test says so and
//! checks nothing.

mod common;
#[path = "../../haip-server/tests/common/redis.rs"]
#[allow(dead_code)] // the restart helpers are for the in-process suite
mod redis;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const NGINX: &str = "/usr/sbin/nginx";

struct Nginx {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// nginx with the site of deploy/, listening on `port` and proxying to `upstreams` (one
/// node, or the nodes of a cluster, taken in turn).
fn nginx(port: u16, upstreams: &[u16]) -> Option<Nginx> {
    if !std::path::Path::new(NGINX).exists() {
        assert!(
            std::env::var("HAIP_REQUIRE_NGINX").is_err(),
            "HAIP_REQUIRE_NGINX is set but {NGINX} is missing"
        );
        eprintln!("nginx_cli: skipped, {NGINX} is not installed (scripts/test installs it)");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("haip-nginx-{}-{port}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).expect("dir");
    let site = std::fs::read_to_string(format!("{ROOT}/deploy/nginx-haip.conf"))
        .expect("deploy/nginx-haip.conf")
        .replace(
            "server 127.0.0.1:8080;",
            &upstreams
                .iter()
                .map(|p| format!("server 127.0.0.1:{p};"))
                .collect::<Vec<_>>()
                .join("\n    "),
        )
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    std::fs::write(dir.join("site.conf"), site).expect("site");
    let d = dir.display();
    let conf = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\nevents {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         include {d}/site.conf;\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("conf");
    let child = Command::new(NGINX)
        .args([
            "-p",
            &dir.display().to_string(),
            "-c",
            &dir.join("nginx.conf").display().to_string(),
        ])
        .args(["-g", "daemon off; master_process off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nginx starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Nginx { child, dir })
}

#[test]
fn every_transport_works_and_streams_through_the_nginx_site() {
    let served = common::serve(&["--echo-word-delay", "100"]);
    let port = common::free_port();
    let Some(_nginx) = nginx(port, &[served.port]) else {
        return;
    };
    let url = format!("http://127.0.0.1:{port}");
    for transport in ["ws", "sse", "stream"] {
        // Ten words 100 ms apart: streamed, the first arrives long before the last.
        let text = "one two three four five six seven eight nine ten";
        let mut child = Command::new(env!("CARGO_BIN_EXE_haip"))
            .args([
                "send",
                text,
                "--url",
                &url,
                "--token",
                &served.token,
                "--transport",
                transport,
            ])
            .env_remove("HAIP_URL")
            .env_remove("HAIP_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("haip send");
        let mut stdout = child.stdout.take().expect("stdout");
        let started = Instant::now();
        let mut first = [0u8; 3];
        std::io::Read::read_exact(&mut stdout, &mut first).expect("the first word");
        let first_at = started.elapsed();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).expect("the rest");
        let all_at = started.elapsed();
        let status = child.wait().expect("send ends");
        assert!(status.success(), "{transport}");
        assert_eq!(
            format!("{}{rest}", String::from_utf8_lossy(&first)),
            format!("{text}\n")
        );
        // Streamed, not buffered: the first word came well before the whole answer.
        assert!(
            all_at > first_at + Duration::from_millis(500),
            "{transport}: first word after {first_at:?}, all after {all_at:?}"
        );
    }
    let health = Command::new(env!("CARGO_BIN_EXE_haip"))
        .args(["health", "--url", &url])
        .output()
        .expect("health");
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
}

/// GET `path` of the node on `port` as JSON (a plain HTTP/1.0 request).
fn get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).ok()?;
    let body = raw.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// Three nodes on one Redis behind the nginx site, taken in turn with no stickiness: a
/// client on each transport loses the node it is on (SIGKILL) and resumes its session
/// through nginx on another, then goes on.
#[tokio::test]
async fn a_cluster_behind_the_nginx_site_resumes_across_nodes_on_every_transport() {
    use haip_client::{Connection, ConnectionConfig, Status, Transport};
    let Some(redis) = redis::Redis::start() else {
        return;
    };
    const SECRET: &str = "nginx-cluster-secret";
    for transport in [Transport::WebSocket, Transport::Sse, Transport::HttpStream] {
        let url = redis.url();
        let mut nodes: Vec<common::Served> = ["n1", "n2", "n3"]
            .iter()
            .map(|name| common::serve_node(&url, name, SECRET, &[]))
            .collect();
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let port = common::free_port();
        let Some(_nginx) = nginx(port, &ports) else {
            return;
        };
        let path = match transport {
            Transport::WebSocket => "/haip/websocket",
            Transport::Sse => "/haip/sse",
            Transport::HttpStream => "/haip/stream",
        };
        let mut config = ConnectionConfig::new(format!("http://127.0.0.1:{port}{path}"));
        config.token = Some(common::mint(SECRET, "alice"));
        config.transports = vec![transport];
        config.ping_interval = None;
        let conn = Connection::start("cluster", config);
        conn.connected(Duration::from_secs(10))
            .await
            .expect("connected through nginx");
        let mut parts = conn.subscribe("agent.message_part").expect("subscribe");
        let mut finished = conn.subscribe("agent.run_finished").expect("subscribe");
        async fn answer(
            conn: &Connection,
            parts: &mut haip_client::Subscription,
            finished: &mut haip_client::Subscription,
            text: &str,
        ) -> String {
            conn.send_text(text).await.expect("send");
            tokio::time::timeout(Duration::from_secs(10), finished.recv())
                .await
                .expect("answered in time")
                .expect("answer");
            let mut echoed = String::new();
            while let Some(p) = parts.try_recv() {
                if let haip_protocol::Payload::MessagePart(m) = &p.message.payload {
                    echoed.push_str(&m.text);
                }
            }
            echoed
        }
        assert_eq!(
            answer(&conn, &mut parts, &mut finished, "before")
                .await
                .trim(),
            "before"
        );
        let session = conn.session_id().expect("a session");
        let holder = ports
            .iter()
            .position(|&p| {
                get_json(p, "/stats").is_some_and(|s| s["activeConnections"].as_u64() >= Some(1))
            })
            .expect("a node holds the connection");
        let mut status = conn.status();
        nodes[holder].child.kill().expect("kill the node");
        let _ = nodes[holder].child.wait();
        // Reconnecting, then connected again: through nginx, to another node.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut left = false;
        loop {
            let now = status.borrow_and_update().clone();
            match now {
                Status::Connected(_) if left => break,
                Status::Connected(_) => {}
                Status::Error(e) => panic!("{transport:?}: gave up: {e}"),
                _ => left = true,
            }
            assert!(Instant::now() < deadline, "{transport:?}: no reconnect");
            let _ = tokio::time::timeout(Duration::from_millis(200), status.changed()).await;
        }
        assert_eq!(
            conn.session_id().as_deref(),
            Some(session.as_str()),
            "{transport:?}: the session was resumed, not replaced"
        );
        assert_eq!(
            answer(&conn, &mut parts, &mut finished, "after")
                .await
                .trim(),
            "after",
            "{transport:?}"
        );
        let taken_over: u64 = ports
            .iter()
            .filter_map(|&p| get_json(p, "/stats"))
            .filter_map(|s| s["sessionsTakenOver"].as_u64())
            .sum();
        assert!(
            taken_over >= 1,
            "{transport:?}: another node took the session over"
        );
        conn.close();
    }
}
