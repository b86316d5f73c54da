//! `haip validate` run as a real process on the shared vectors.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn vectors(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/vectors/{name}"))
}

fn haip(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_haip"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("haip starts");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin.unwrap_or_default())
        .expect("write stdin");
    drop(pipe);
    child.wait_with_output().expect("haip ends")
}

/// The text verdicts without their reasons: `ok TYPE` or `error CODE FIELD`.
fn verdicts(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split(": ").next().unwrap_or(l).to_string())
        .collect()
}

fn expected(name: &str) -> Vec<String> {
    std::fs::read_to_string(vectors(&format!("{name}.expect")))
        .expect("expect file")
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn valid_files_print_ok_lines_and_exit_zero() {
    for name in ["contract-examples", "valid"] {
        let path = vectors(&format!("{name}.ndjson"));
        let out = haip(&["validate", path.to_str().unwrap()], None);
        assert_eq!(out.status.code(), Some(0), "{name}");
        assert_eq!(verdicts(&out), expected(name), "{name}");
    }
}

#[test]
fn invalid_file_prints_code_and_field_and_exits_one() {
    let path = vectors("invalid.ndjson");
    let out = haip(&["validate", path.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(verdicts(&out), expected("invalid"));
    // Every error line also gives a reason.
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let reason = line.split_once(": ").map(|(_, r)| r.trim()).unwrap_or("");
        assert!(!reason.is_empty(), "no reason in {line:?}");
    }
}

#[test]
fn stdin_is_read_with_dash_or_no_file() {
    let input = std::fs::read(vectors("contract-examples.ndjson")).unwrap();
    for args in [vec!["validate", "-"], vec!["validate"]] {
        let out = haip(&args, Some(&input));
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(verdicts(&out), expected("contract-examples"));
    }
}

#[test]
fn json_output_has_one_object_per_input() {
    let input = std::fs::read(vectors("invalid.ndjson")).unwrap();
    let out = haip(&["validate", "--json", "-"], Some(&input));
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let expect = expected("invalid");
    assert_eq!(lines.len(), expect.len());
    for (i, (v, e)) in lines.iter().zip(&expect).enumerate() {
        assert_eq!(v["line"], i + 1);
        assert_eq!(v["ok"], false);
        let field = v["field"].as_str().unwrap_or("-");
        assert_eq!(
            format!("error {} {}", v["code"].as_str().unwrap(), field),
            *e
        );
    }
}

#[test]
fn a_mixed_stream_exits_one_but_reports_every_line() {
    let input = b"{\"id\":\"a\",\"session\":\"s\",\"seq\":\"1\",\"ts\":\"1\",\"channel\":\"SYSTEM\",\"type\":\"PING\",\"payload\":{}}\nnope\n";
    let out = haip(&["validate"], Some(input));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        verdicts(&out),
        vec!["ok PING", "error PROTOCOL_VIOLATION -"]
    );
}

#[test]
fn unreadable_input_exits_two() {
    let out = haip(&["validate", "/nonexistent/haip-vectors.ndjson"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    let dir = std::env::temp_dir();
    let out = haip(&["validate", dir.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_describes_the_output_and_exit_codes() {
    let out = haip(&["validate", "--help"], None);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--json"));
    assert!(help.contains("Exit status"));
}
