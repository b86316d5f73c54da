//! The protocol core's hot paths, with throughput: parse + validate, serialize, the
//! inbound sequencer, the replay window, and the flow-control ledgers.
//!
//! `cargo bench -p haip-protocol` (add `-- --quick` for a short run).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use haip_protocol::flow::{Credit, ReceiveMeter, SendGate};
use haip_protocol::replay::{ReplayConfig, ReplayWindow};
use haip_protocol::sequencer::{Arrival, Sequencer};
use haip_protocol::Envelope;
use std::hint::black_box;

/// A typical streamed token: about 230 bytes on the wire.
const MESSAGE_PART: &str = r#"{"id":"6f1c2a9e-8d4b-4f6a-9c1e-2b7d5a3f8e01","session":"0b9e7c1d-3f2a-4e5b-8c6d-9a1f2e3d4c5b","seq":"1234","ts":"1795436590532","channel":"AGENT","type":"MESSAGE_PART","run_id":"r-42","payload":{"message_id":"m-7","text":"hello "}}"#;

/// A tool call with nested params.
const TOOL_CALL: &str = r#"{"id":"c-1","session":"s-1","seq":"7","ts":"0","channel":"USER","type":"TOOL_CALL","payload":{"call_id":"call-1","tool":"add","params":{"a":1.5,"b":2,"note":"nested","list":[1,2,3]}}}"#;

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    for (name, text) in [
        ("parse_message_part", MESSAGE_PART),
        ("parse_tool_call", TOOL_CALL),
    ] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| {
            b.iter(|| Envelope::parse(black_box(text)).expect("valid"))
        });
    }
    let env = Envelope::parse(MESSAGE_PART).expect("valid");
    g.bench_function("serialize_message_part", |b| {
        b.iter(|| black_box(&env).to_json())
    });
    g.finish();
}

fn sequencer(c: &mut Criterion) {
    let mut g = c.benchmark_group("sequencer");
    const N: u64 = 10_000;
    g.throughput(Throughput::Elements(N));
    g.bench_function("in_order_10k", |b| {
        b.iter_batched(
            || Sequencer::<u64>::new(1000),
            |mut s| {
                for seq in 1..=N {
                    if let Arrival::Deliver(v) = s.accept(seq, seq, 0) {
                        black_box(v);
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("pairs_swapped_10k", |b| {
        b.iter_batched(
            || Sequencer::<u64>::new(1000),
            |mut s| {
                for pair in (1..=N).step_by(2) {
                    black_box(s.accept(pair + 1, pair + 1, 0));
                    black_box(s.accept(pair, pair, 0));
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay_window");
    const N: u64 = 10_000;
    let config = ReplayConfig::default();
    g.throughput(Throughput::Elements(N));
    g.bench_function("push_10k", |b| {
        b.iter_batched(
            || ReplayWindow::<u64>::new(config),
            |mut w| {
                for seq in 1..=N {
                    let _ = w.push(seq, seq, 230, seq);
                }
                w
            },
            BatchSize::SmallInput,
        )
    });
    let mut full = ReplayWindow::<u64>::new(config);
    for seq in 1..=N {
        let _ = full.push(seq, 0, 230, seq);
    }
    g.throughput(Throughput::Elements(100));
    g.bench_function("range_100_of_10k", |b| {
        b.iter(|| {
            full.range(black_box(5_000), Some(5_099))
                .map(|it| it.map(|seq| black_box(*seq)).sum::<u64>())
                .unwrap_or(0)
        })
    });
    g.finish();
}

fn flow(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow");
    const N: u64 = 10_000;
    g.throughput(Throughput::Elements(N));
    g.bench_function("send_gate_offer_10k", |b| {
        b.iter_batched(
            || SendGate::<u64>::new(Credit::new(Some(1_000_000), Some(1 << 30))),
            |mut gate| {
                for i in 0..N {
                    black_box(gate.offer("AGENT", 230, i));
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("receive_meter_admit_consume_10k", |b| {
        b.iter_batched(
            || ReceiveMeter::new(Credit::new(Some(1000), Some(1 << 20))),
            |mut meter| {
                for i in 0..N {
                    let _ = meter.admit("USER", 230);
                    black_box(meter.consumed("USER", 230, i));
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, parse, sequencer, replay, flow);
criterion_main!(benches);
