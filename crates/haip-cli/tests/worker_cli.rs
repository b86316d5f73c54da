//! `haip worker -- CMD` as real processes: `haip serve --agent workers`, a worker running
//! a script of a few lines (examples/workers/shout.sh), and `haip send` as the user.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{serve, Served};

fn haip() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_haip"));
    for key in ["HAIP_URL", "HAIP_TOKEN", "HAIP_AGENT_TOKEN", "JWT_SECRET"] {
        c.env_remove(key);
    }
    c
}

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn agent_token(served: &Served) -> String {
    let secret = served.secret.as_deref().expect("a printed secret");
    let out = haip()
        .args([
            "token", "--secret", secret, "--sub", "worker-1", "--role", "agent",
        ])
        .output()
        .expect("haip token runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A running `haip worker`, killed when dropped.
struct RunningWorker(Child);

impl Drop for RunningWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `haip worker [flags] -- command` and waits (bounded) until it says it is
/// attached.
fn start_worker(served: &Served, flags: &[&str], command: &[&str]) -> RunningWorker {
    let mut child = haip()
        .args(["worker", "--url", &served.url()])
        .args(flags)
        .env("HAIP_AGENT_TOKEN", agent_token(served))
        .arg("--")
        .args(command)
        .stderr(Stdio::piped())
        .spawn()
        .expect("haip worker starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("attached to") => break,
            Ok(_) => continue,
            Err(_) => panic!("haip worker did not attach within 10 s"),
        }
    }
    // Keep draining its stderr.
    std::thread::spawn(move || rx.into_iter().for_each(drop));
    RunningWorker(child)
}

/// `haip send TEXT` as the server's demo user: exit code, stdout, stderr.
fn send(served: &Served, text: &str) -> (Option<i32>, String, String) {
    let out = haip()
        .args(["send", "--url", &served.url(), "--timeout", "10", text])
        .env("HAIP_TOKEN", &served.token)
        .output()
        .expect("haip send runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_script_of_a_few_lines_answers_a_chat() {
    let served = serve(&["--agent", "workers"]);
    let script = repo_file("examples/workers/shout.sh");
    let _worker = start_worker(&served, &[], &[script.to_str().unwrap()]);
    let (code, out, err) = send(&served, "hello from a user");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim_end(), "You said:\nHELLO FROM A USER");
}

#[test]
fn json_lines_are_messages_and_a_failing_program_is_a_run_error() {
    let served = serve(&["--agent", "workers"]);
    // Streams two parts of one message without newlines, then fails.
    let program = r#"echo '{"type":"MESSAGE_PART","text":"par"}'
echo '{"type":"MESSAGE_PART","text":"tial"}'
echo 'the model is down' >&2
exit 3"#;
    let worker = start_worker(&served, &[], &["sh", "-c", program]);
    let (code, out, err) = send(&served, "anything");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("partial"), "{out}");
    assert!(err.contains("AGENT_ERROR"), "{err}");
    assert!(err.contains("exit status: 3"), "{err}");
    assert!(
        !err.contains("the model is down"),
        "stderr stays with the worker by default: {err}"
    );
    drop(worker);
    let _worker = start_worker(&served, &["--show-stderr"], &["sh", "-c", program]);
    let (_, _, err) = send(&served, "anything");
    assert!(err.contains("the model is down"), "{err}");
}

#[test]
fn without_a_worker_the_user_hears_so_and_a_user_token_cannot_attach() {
    let served = serve(&["--agent", "workers"]);
    let (code, _, err) = send(&served, "anyone?");
    assert_eq!(code, Some(1));
    assert!(err.contains("no agent worker connected"), "{err}");
    let out = haip()
        .args([
            "worker",
            "--url",
            &served.url(),
            "--timeout",
            "5",
            "--",
            "true",
        ])
        .env("HAIP_AGENT_TOKEN", &served.token)
        .output()
        .expect("haip worker runs");
    assert_eq!(out.status.code(), Some(3), "an authentication failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("role"), "{err}");
}
