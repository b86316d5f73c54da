//! `deploy/nginx-haip.conf` in front of `haip serve`, with Debian's nginx: every transport
//! works through it and streams (an SSE event, an NDJSON line, a WebSocket frame arrive as
//! they are sent, not when a buffer fills). `scripts/test` installs nginx and sets
//! HAIP_REQUIRE_NGINX=1; without nginx (and without that variable) this test says so and
//! checks nothing.

mod common;

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

/// nginx with the site of deploy/, listening on `port` and proxying to `upstream`.
fn nginx(port: u16, upstream: u16) -> Option<Nginx> {
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
            &format!("server 127.0.0.1:{upstream};"),
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
    let Some(_nginx) = nginx(port, served.port) else {
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
