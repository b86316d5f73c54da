//! The deployment files of `deploy/` and the shell completions: the example configuration
//! names every setting and starts a server as shipped; the systemd unit runs a command
//! that exists and reloads with SIGHUP; completions are produced for the usual shells.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn haip() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_haip"));
    for key in [
        "PORT",
        "HOST",
        "JWT_SECRET",
        "HAIP_CONFIG",
        "AGENT",
        "MEMORY_LIMIT",
    ] {
        c.env_remove(key);
    }
    c
}

/// The settings of `haip serve`, as TOML keys, from its --help.
fn settings() -> Vec<String> {
    let out = haip().args(["serve", "--help"]).output().expect("help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut keys: Vec<String> = help
        .split("env: ")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .next()
        })
        .filter(|name| *name != "HAIP_CONFIG")
        .map(|name| name.trim_start_matches("HAIP_").to_ascii_lowercase())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[test]
fn the_example_configuration_names_every_setting_and_starts_a_server() {
    let toml =
        std::fs::read_to_string(format!("{ROOT}/deploy/haip.toml")).expect("deploy/haip.toml");
    let keys = settings();
    assert!(keys.len() > 40, "{keys:?}");
    for key in &keys {
        let named = toml.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}="))
        });
        assert!(named, "deploy/haip.toml does not name the setting {key}");
    }
    let mut child = haip()
        .args(["serve", "--config", &format!("{ROOT}/deploy/haip.toml")])
        .args(["--host", "127.0.0.1", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("haip serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let banner: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.trim_start().starts_with("health:"))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        banner
            .iter()
            .any(|l| l.starts_with("haip-rs listening on 127.0.0.1:")),
        "{banner:?}"
    );
    assert!(
        banner.iter().any(|l| l.starts_with("agent: echo")),
        "{banner:?}"
    );
}

#[test]
fn the_systemd_unit_runs_haip_serve_with_the_config_and_reloads_with_sighup() {
    let unit = std::fs::read_to_string(format!("{ROOT}/deploy/haip.service")).expect("unit");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert!(args[0].ends_with("/haip"), "{exec}");
    assert_eq!(args[1..3], ["serve", "--config"], "{exec}");
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    // systemd's own check, where systemd is installed.
    if let Ok(out) = Command::new("systemd-analyze")
        .args(["verify", &format!("{ROOT}/deploy/haip.service")])
        .output()
    {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("Unknown key") && !err.contains("Invalid"),
            "{err}"
        );
    }
}

#[test]
fn completions_are_printed_for_the_usual_shells() {
    for (shell, marker) in [
        ("bash", "_haip()"),
        ("zsh", "#compdef haip"),
        ("fish", "complete -c haip"),
    ] {
        let out = haip()
            .args(["completions", shell])
            .output()
            .expect("completions");
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains(marker),
            "{shell}: {}",
            &script[..script.len().min(200)]
        );
        assert!(
            script.contains("serve") && script.contains("memory-limit"),
            "{shell}"
        );
    }
}
