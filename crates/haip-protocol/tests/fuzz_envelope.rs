//! Fuzzing the envelope parser with proptest (run by `cargo test`, bounded): arbitrary
//! bytes, and the valid test vectors broken at random (bytes flipped, inserted, removed,
//! cut short). The parser must never panic, and whatever it accepts must survive a round
//! trip through its own serialization unchanged.

use haip_protocol::Envelope;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(2000)
    }
}

fn valid_vectors() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/vectors/valid.ndjson"
    );
    std::fs::read_to_string(path)
        .expect("tests/vectors/valid.ndjson")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Cut(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Bytes that matter to JSON and to the scanner, plus anything.
    let byte = prop_oneof![
        prop::sample::select(b"{}[]\":,\\0123456789eE+-.tfnul \n\t".to_vec()),
        any::<u8>(),
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Remove),
        any::<usize>().prop_map(Edit::Cut),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for e in edits {
        let n = bytes.len().max(1);
        match *e {
            Edit::Flip(i, b) if !bytes.is_empty() => bytes[i % n] = b,
            Edit::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Edit::Remove(i) if !bytes.is_empty() => {
                bytes.remove(i % n);
            }
            Edit::Cut(i) => bytes.truncate(i % (bytes.len() + 1)),
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Accepted input parses back to the same envelope from its own serialization.
fn check(text: &str) {
    if let Ok(env) = Envelope::parse(text) {
        let again = Envelope::parse(&env.to_json())
            .unwrap_or_else(|e| panic!("own output refused: {e:?}\ninput: {text}"));
        assert_eq!(again.to_json(), env.to_json(), "input: {text}");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn broken_vectors_never_panic_and_what_passes_round_trips(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        let vectors = valid_vectors();
        let text = apply(&vectors[pick.index(vectors.len())], &edits);
        check(&text);
    }
}
