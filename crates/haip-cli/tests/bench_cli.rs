//! `haip bench` smoke runs: every scenario over every transport completes against a real
//! `haip serve` with sane, non-zero figures. Speed itself is measured, not asserted.

mod common;

use std::process::Command;

use serde_json::Value;

fn bench(served: &common::Served, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_haip"))
        .arg("bench")
        .args(args)
        .args(["--url", &served.url(), "--token", &served.token, "--json"])
        .output()
        .expect("haip bench runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn figure(report: &Value, name: &str) -> f64 {
    report["results"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("{name} missing in {report}"))
}

#[test]
fn every_scenario_completes_with_non_zero_figures() {
    let served = common::serve(&["--echo-word-delay", "0"]);
    // First, while the server is fresh: its memory can only grow with the sessions held.
    let pid = served.child.id().to_string();
    let idle = bench(
        &served,
        &[
            "connections",
            "--sessions",
            "50",
            "--rate",
            "200",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(figure(&idle, "sessions held"), 50.0);
    assert!(figure(&idle, "handshake p99") > 0.0, "{idle}");
    assert!(figure(&idle, "server memory per session") > 0.0, "{idle}");
    for transport in ["ws", "sse", "stream"] {
        let echo = bench(
            &served,
            &[
                "echo",
                "--transport",
                transport,
                "--sessions",
                "2",
                "--duration",
                "1",
            ],
        );
        assert_eq!(echo["transport"], transport);
        assert!(figure(&echo, "round trips") >= 1.0, "{echo}");
        assert!(figure(&echo, "messages delivered/s") > 0.0, "{echo}");
        let p50 = figure(&echo, "latency p50");
        assert!(p50 > 0.0 && p50 <= figure(&echo, "latency max"), "{echo}");

        let stream = bench(
            &served,
            &[
                "stream",
                "--transport",
                transport,
                "--sessions",
                "2",
                "--words",
                "50",
            ],
        );
        assert!(figure(&stream, "messages delivered/s") > 0.0, "{stream}");
        assert!(figure(&stream, "bytes delivered/s") > 0.0, "{stream}");
    }
}
