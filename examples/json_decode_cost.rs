//! The cost of decoding one JSON request of 1e6 values, per value, in a form that does not
//! depend on how busy the machine is: run it under cachegrind with 0 and with N repetitions and
//! divide the difference in instructions by N * 1e6 (what docs/serving.md reports):
//!
//! ```text
//! cargo build --release --example json_decode_cost
//! for r in 0 2; do valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
//!     target/release/examples/json_decode_cost repr $r; done
//! ```
//!
//! Kinds: `repr` (FP32 as `tritonclient` writes it: Python's repr of the double, 17 digits),
//! `short` (the shortest FP32 text), `int` (INT32), `bool`. It also prints the wall time per
//! value.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_possible_wrap
)]

use bytes::Bytes;
use xlaguard::server::wire::{parse_request, ParseLimits};
use xlaguard::{DType, Signature, TensorSpec};
fn main() {
    let kind = std::env::args().nth(1).unwrap();
    let n: usize = 1_000_000;
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let raw: Vec<u64> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        })
        .collect();
    let f: Vec<f32> = raw
        .iter()
        .map(|&v| (v >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
        .collect();
    let (dtype, dt, tokens): (DType, &str, Vec<String>) = match kind.as_str() {
        "repr" => (
            DType::F32,
            "FP32",
            f.iter().map(|&x| format!("{:?}", f64::from(x))).collect(),
        ),
        "short" => (
            DType::F32,
            "FP32",
            f.iter().map(|x| format!("{x:?}")).collect(),
        ),
        "int" => (
            DType::I32,
            "INT32",
            raw.iter()
                .map(|&v| format!("{}", (v >> 32) as u32 as i32 >> (v % 24)))
                .collect(),
        ),
        _ => (
            DType::Bool,
            "BOOL",
            raw.iter()
                .map(|&v| if v & 1 == 0 { "false" } else { "true" }.to_string())
                .collect(),
        ),
    };
    let data = format!("[{}]", tokens.join(","));
    let body = Bytes::from(format!(
        "{{\"inputs\":[{{\"name\":\"x\",\"shape\":[{n}],\"datatype\":\"{dt}\",\"data\":{data}}}]}}"
    ));
    let sig = Signature {
        inputs: vec![TensorSpec::new("x", dtype, &[n as u64])],
        outputs: vec![TensorSpec::new("y", dtype, &[1])],
    };
    let reps: usize = std::env::args().nth(2).map_or(0, |r| r.parse().unwrap());
    let t = std::time::Instant::now();
    // A third argument `serde` decodes the same `data` text with serde_json into Vec<f32>, the
    // peer (no checks at all).
    let peer = std::env::args().nth(3).is_some_and(|a| a == "serde");
    for _ in 0..reps {
        if peer {
            std::hint::black_box(serde_json::from_str::<Vec<f32>>(&data).unwrap());
        } else {
            std::hint::black_box(
                parse_request(&body, None, &sig, &ParseLimits::default()).unwrap(),
            );
        }
    }
    eprintln!(
        "{kind}: {} bytes, {:.1} ns/elem wall",
        body.len(),
        t.elapsed().as_nanos() as f64 / (reps * n) as f64
    );
}
