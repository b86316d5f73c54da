//! A real `redis-server` (Debian's package) for the cluster tests, on a free loopback
//! port, in a directory of its own, stopped when dropped. It keeps an append-only file
//! (fsync on every write) so that a restart finds what was stored.
//!
//! When `redis-server` is missing the tests that need it are skipped with a message,
//! unless `HAIP_REQUIRE_REDIS` is set (as `scripts/test` does after installing it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Settings added to the command line.
    extra: Vec<String>,
}

impl Redis {
    /// Starts a server, or returns None (after saying why) when there is none to start.
    pub fn start() -> Option<Redis> {
        Redis::start_with(&[])
    }

    /// Starts a server with `extra` settings.
    pub fn start_with(extra: &[&str]) -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            assert!(
                std::env::var_os("HAIP_REQUIRE_REDIS").is_none(),
                "HAIP_REQUIRE_REDIS is set but redis-server is not installed"
            );
            eprintln!("skipped: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("haip-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut redis = Redis {
            port,
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        redis.run();
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.command("PING").is_some_and(|r| r.starts_with("+PONG")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    /// Stops the server (it keeps its append-only file).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with what it stored.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// One inline command; the first line of the answer.
    pub fn command(&self, line: &str) -> Option<String> {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        tcp.write_all(format!("{line}\r\n").as_bytes()).ok()?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = tcp.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A Redis Cluster of three masters (no replicas), each a `redis-server` on a free port,
/// joined with `redis-cli --cluster create`; stopped when dropped.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> Option<RedisCluster> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(Redis::start_with(&["--cluster-enabled", "yes"])?);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(created.success(), "the Redis Cluster could not be created");
        let deadline = Instant::now() + Duration::from_secs(20);
        while nodes.iter().any(|n| {
            !n.command("CLUSTER INFO")
                .is_some_and(|info| info.contains("cluster_state:ok"))
        }) {
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster never became ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(RedisCluster { nodes })
    }

    /// REDIS_URL for it: every node as a seed.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(Redis::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
