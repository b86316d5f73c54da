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

/// Each ceiling was measured, with a non-zero `name`, and the ratio to it is given.
fn check_ceiling(report: &Value, name: &str) {
    let ceilings = report["ceilings"].as_array().expect("ceilings measured");
    assert!(!ceilings.is_empty(), "{report}");
    for ceiling in ceilings {
        assert!(figure(ceiling, name) > 0.0, "{report}");
        let ratio = ceiling["ratio"].as_f64().unwrap_or(0.0);
        assert!(ratio > 0.0 && ratio.is_finite(), "{report}");
    }
}

#[test]
fn every_scenario_completes_with_non_zero_figures() {
    let served = common::serve(&["--echo-word-delay", "0", "--autobahn-echo"]);
    // First, while the server is fresh: its memory can only grow with the sessions held.
    let pid = served.child.id().to_string();
    let idle = bench(
        &served,
        &[
            "connections",
            // Enough that memory grows by many pages even when the allocator still had
            // some free (50 bare connections once fitted in memory already committed).
            "--sessions",
            "300",
            "--rate",
            "1000",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(figure(&idle, "sessions_held"), 300.0);
    assert!(figure(&idle, "handshake_p99_ms") > 0.0, "{idle}");
    assert!(
        figure(&idle, "server_memory_per_session_bytes") > 0.0,
        "{idle}"
    );
    check_ceiling(&idle, "server_memory_per_connection_bytes");
    // The other transports hold idle sessions too (their memory is not checked: the
    // server may reuse what the previous run freed).
    for transport in ["sse", "stream"] {
        let held = bench(
            &served,
            &[
                "connections",
                "--transport",
                transport,
                "--sessions",
                "20",
                "--rate",
                "200",
                "--no-ceiling",
            ],
        );
        assert_eq!(held["transport"], transport);
        assert_eq!(figure(&held, "sessions_held"), 20.0, "{held}");
        assert!(figure(&held, "handshake_p99_ms") > 0.0, "{held}");
    }
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
        assert!(figure(&echo, "round_trips") >= 1.0, "{echo}");
        assert!(figure(&echo, "messages_delivered_per_s") > 0.0, "{echo}");
        let p50 = figure(&echo, "latency_p50_ms");
        assert!(
            p50 > 0.0 && p50 <= figure(&echo, "latency_max_ms"),
            "{echo}"
        );
        check_ceiling(&echo, "messages_delivered_per_s");
        // The server runs on this machine: its own CPU time is found by its port and
        // read from /proc, per message delivered.
        assert!(figure(&echo, "server_cpu_ms") > 0.0, "{echo}");
        assert!(figure(&echo, "server_cpu_per_message_us") > 0.0, "{echo}");

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
        assert!(
            figure(&stream, "messages_delivered_per_s") > 0.0,
            "{stream}"
        );
        assert!(figure(&stream, "bytes_delivered_per_s") > 0.0, "{stream}");
        check_ceiling(&stream, "messages_delivered_per_s");

        let fanout = bench(
            &served,
            &[
                "fanout",
                "--transport",
                transport,
                "--sessions",
                "3",
                "--words",
                "20",
                "--duration",
                "1",
            ],
        );
        let rounds = figure(&fanout, "rounds");
        assert!(rounds >= 1.0, "{fanout}");
        // Every follower got every round whole: 20 parts and 4 framing messages (run and
        // message start and end), plus at most its session's TOOL_LIST and HAI.
        let whole = rounds * 3.0 * 24.0;
        let delivered = figure(&fanout, "messages_delivered");
        assert!(delivered >= whole && delivered <= whole + 6.0, "{fanout}");
        assert!(
            figure(&fanout, "messages_delivered_per_s") > 0.0,
            "{fanout}"
        );
        check_ceiling(&fanout, "messages_delivered_per_s");
    }
}

/// `ping`: PING to PONG round trips, and what each costs the server.
#[test]
fn ping_measures_round_trips_and_their_server_cpu() {
    let served = common::serve(&[]);
    let report = bench(&served, &["ping", "--sessions", "2", "--duration", "1"]);
    assert!(figure(&report, "round_trips") > 0.0, "{report}");
    assert!(figure(&report, "latency_p50_ms") > 0.0, "{report}");
    assert!(
        figure(&report, "server_cpu_per_round_trip_us") > 0.0,
        "{report}"
    );
    assert!(
        figure(&report, "round_trips_per_server_cpu_second_per_s") > 0.0,
        "{report}"
    );
}

/// `retention` at a paced agent: every message is kept, and what keeping one costs is
/// read from the server's memory.
#[test]
fn retention_measures_what_the_server_keeps_per_message() {
    let served = common::serve(&["--echo-word-delay", "5"]);
    let report = bench(
        &served,
        &[
            "retention",
            "--sessions",
            "5",
            "--words",
            "40",
            "--after",
            "1",
        ],
    );
    // 40 parts per stream and the run's framing (RUN_STARTED, MESSAGE_START, MESSAGE_END,
    // RUN_FINISHED), plus at most each session's HAI and TOOL_LIST.
    let kept = figure(&report, "messages_kept");
    assert!((5.0 * 44.0..=5.0 * 46.0).contains(&kept), "{report}");
    assert!(figure(&report, "server_rss_before_mib") > 0.0, "{report}");
    assert!(
        figure(&report, "server_rss_after_close_and_wait_mib") > 0.0,
        "{report}"
    );
    assert!(
        report["results"]["retained_per_message_bytes"].is_number(),
        "{report}"
    );
}

#[test]
fn a_missing_ceiling_is_reported_and_the_run_still_completes() {
    let served = common::serve(&["--echo-word-delay", "0"]);
    let echo = bench(&served, &["echo", "--sessions", "1", "--duration", "1"]);
    assert!(figure(&echo, "messages_delivered_per_s") > 0.0, "{echo}");
    let why = echo["ceilings"]["not_measured"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("--autobahn-echo"), "{echo}");
}
