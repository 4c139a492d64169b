//! Regression tests for what the fuzz targets found (docs/fuzzing.md): each reproducer committed
//! under `tests/fuzz_regressions/TARGET/` goes through the library code its target calls, and
//! must give the typed answer the fix gives. The input layout is the target's (see
//! `fuzz/fuzz_targets/TARGET.rs`).

use std::path::{Path, PathBuf};

use xlaguard::compile::protocol::{self, Decoder, Kind, ProtocolError, MAX_SMALL};
use xlaguard::Params;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_regressions");

/// The targets with reproducers here, each handled by a test below.
const HANDLED: &[&str] = &["params", "worker_reply"];

fn reproducers(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(Path::new(DIR).join(target))
        .unwrap_or_else(|e| panic!("{target}: {e}"))
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no reproducers for {target}");
    v
}

#[test]
fn every_reproducer_folder_has_a_test() {
    for e in std::fs::read_dir(DIR).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(
            HANDLED.contains(&name.as_str()),
            "tests/fuzz_regressions/{name} has no test in tests/fuzz_regressions.rs"
        );
    }
}

/// worker_reply: a frame header with non-zero reserved bytes (6..8) was accepted; the header
/// format says they are zero. Now refused as malformed, whole or byte by byte.
#[test]
fn worker_reply_reserved_header_bytes_are_refused() {
    let max = |k: Kind| match k {
        Kind::Compiled => MAX_SMALL * 2,
        _ => MAX_SMALL,
    };
    for (path, bytes) in reproducers("worker_reply") {
        // The target's input: 3 piece sizes and a 2-byte executable limit, then the stream.
        let stream = &bytes[5..];
        assert_ne!(&stream[6..8], &[0, 0], "{}", path.display());
        let whole = Decoder::default().feed(stream, &max);
        let mut d = Decoder::default();
        let bytewise = stream
            .iter()
            .map(|b| d.feed(std::slice::from_ref(b), &max))
            .find(|r| !matches!(r, Ok(None)))
            .expect("a verdict");
        for got in [whole, bytewise] {
            match got {
                Err(ProtocolError::Malformed { detail, .. }) => {
                    assert!(detail.contains("reserved header bytes"), "{detail}")
                }
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        let mut h = [0u8; protocol::HEADER_LEN];
        h.copy_from_slice(&stream[..protocol::HEADER_LEN]);
        assert!(matches!(
            protocol::parse_header(&h, max),
            Err(ProtocolError::Malformed { .. })
        ));
        // The same frame with zero reserved bytes is read.
        h[6] = 0;
        h[7] = 0;
        assert!(protocol::parse_header(&h, max).is_ok());
    }
}

/// params: a safetensors header whose tensors share data offsets was refused with an error that
/// depended on a hash map's order (which tensor, even which error), so the same file gave
/// different messages from one read to the next. Now the offsets are checked in (offsets, name)
/// order first: one message, naming the same tensor, every time.
#[test]
fn params_offset_errors_are_deterministic() {
    const NAMES: [&str; 3] = ["params.safetensors", "params.npz", "params.bin"];
    for (path, bytes) in reproducers("params") {
        // The target's input: byte 0 picks the file name, then the file.
        let source = NAMES[usize::from(bytes[0]) % NAMES.len()];
        let first = Params::from_bytes(&bytes[1..], source)
            .expect_err("a file with overlapping tensors is refused")
            .to_string();
        assert!(first.contains("its data offsets are invalid"), "{first}");
        assert!(first.contains("tensor '"), "names the tensor: {first}");
        for _ in 0..50 {
            let again = Params::from_bytes(&bytes[1..], source)
                .unwrap_err()
                .to_string();
            assert_eq!(again, first, "{}", path.display());
        }
    }
}
