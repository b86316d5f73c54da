//! Parses one typical envelope many times: a fixed workload to profile
//! (`valgrind --tool=callgrind target/release/examples/parse_loop`).

use haip_protocol::Envelope;

const MESSAGE_PART: &str = r#"{"id":"6f1c2a9e-8d4b-4f6a-9c1e-2b7d5a3f8e01","session":"0b9e7c1d-3f2a-4e5b-8c6d-9a1f2e3d4c5b","seq":"1234","ts":"1795436590532","channel":"AGENT","type":"MESSAGE_PART","run_id":"r-42","payload":{"message_id":"m-7","text":"hello "}}"#;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mut total = 0;
    for _ in 0..n {
        let env = Envelope::parse(std::hint::black_box(MESSAGE_PART)).expect("valid");
        total += env.seq as usize;
    }
    println!("{total}");
}
