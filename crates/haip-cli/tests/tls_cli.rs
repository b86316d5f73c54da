//! TLS end to end: `haip serve --tls-cert --tls-key` with a certificate made here by a CA
//! made here, and `haip send` / `haip health` trusting that CA through `--ca-cert` or
//! `SSL_CERT_FILE`, on every transport; an untrusted certificate fails at once with its
//! own exit code; SIGHUP makes the server take a renewed certificate without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA and a server certificate for 127.0.0.1 and localhost, written as PEM files in
/// `dir` under `name`: returns (ca.pem, cert.pem, key.pem).
fn make_certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("haip test CA {name}"));
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let write = |file: &str, text: String| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, text).expect("write PEM");
        path
    };
    (
        write("ca.pem", ca_cert.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("haip-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn haip(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_haip"));
    cmd.args(args)
        .env_remove("HAIP_URL")
        .env_remove("HAIP_TOKEN")
        .env_remove("HAIP_CA_CERT")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("haip runs")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn every_transport_over_tls_with_a_private_ca_and_a_reload_on_sighup() {
    let dir = temp_dir();
    let (ca, cert, key) = make_certificates(&dir, "first");
    let served = common::serve(&[
        "--tls-cert",
        cert.to_str().expect("path"),
        "--tls-key",
        key.to_str().expect("path"),
        "--echo-word-delay",
        "1",
    ]);
    let url = format!("https://127.0.0.1:{}", served.port);
    let ca_arg = ca.to_str().expect("path");
    for transport in ["ws", "sse", "stream"] {
        let out = haip(
            &[
                "send",
                "over tls",
                "--url",
                &url,
                "--token",
                &served.token,
                "--transport",
                transport,
                "--ca-cert",
                ca_arg,
            ],
            &[],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{transport}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "over tls\n", "{transport}");
    }
    // SSL_CERT_FILE works as for OpenSSL-based tools.
    let out = haip(
        &["send", "by env", "--url", &url, "--token", &served.token],
        &[("SSL_CERT_FILE", &ca)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = haip(&["health", "--url", &url, "--ca-cert", ca_arg], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(": ok (up"),
        "{}",
        text(&out.stdout)
    );

    // Without the CA: refused at once, saying what to do, with its own exit code.
    let started = std::time::Instant::now();
    let out = haip(
        &[
            "send",
            "x",
            "--url",
            &url,
            "--token",
            &served.token,
            "--timeout",
            "30",
        ],
        &[],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("--ca-cert"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "retried: {err}"
    );

    // A renewed certificate from another CA, taken on SIGHUP.
    let (ca2, cert2, key2) = make_certificates(&dir, "second");
    std::fs::copy(&cert2, &cert).expect("renew cert");
    std::fs::copy(&key2, &key).expect("renew key");
    let hup = Command::new("kill")
        .args(["-HUP", &served.child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let out = haip(
            &[
                "send",
                "renewed",
                "--url",
                &url,
                "--token",
                &served.token,
                "--ca-cert",
                ca2.to_str().expect("path"),
            ],
            &[],
        );
        if out.status.code() == Some(0) {
            assert_eq!(text(&out.stdout), "renewed\n");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate was not taken: {}",
            text(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = haip(
        &[
            "send",
            "x",
            "--url",
            &url,
            "--token",
            &served.token,
            "--ca-cert",
            ca_arg,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(6), "the old CA no longer fits");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_or_mismatched_certificate_stops_start_up_naming_the_file() {
    let dir = temp_dir().join("bad");
    std::fs::create_dir_all(&dir).expect("dir");
    let (_, cert, _) = make_certificates(&dir, "a");
    let (_, _, other_key) = make_certificates(&dir, "b");
    let run = |args: &[&str]| {
        let out = haip(&[&["serve", "--port", "0"], args].concat(), &[]);
        (out.status.code(), text(&out.stderr))
    };
    let (code, err) = run(&[
        "--tls-cert",
        "/no/such/cert.pem",
        "--tls-key",
        "/no/such/key.pem",
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("/no/such/cert.pem"), "{err}");
    let (code, err) = run(&[
        "--tls-cert",
        cert.to_str().expect("path"),
        "--tls-key",
        other_key.to_str().expect("path"),
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("do not make a usable pair"), "{err}");
    let (code, err) = run(&["--tls-cert", cert.to_str().expect("path")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("TLS_KEY"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
