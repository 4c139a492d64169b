//! The JSON tensor decoder alone: one request with one input of 1e3 and 1e6 values, FP32 (as
//! `tritonclient` writes it — Python's repr of each value as a double, 17 digits — and as the
//! shortest FP32 text), INT32 and BOOL, through `xlaguard::server::wire::parse_request`.
//! The peer in the same run is `serde_json::from_slice::<Vec<f32>>` over the same `data` text
//! (what a plain Rust server would do, with no checks). Criterion reports elements per second:
//! ns per value is 1e9 / that.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use xlaguard::server::wire::{parse_request, ParseLimits};
use xlaguard::{DType, Signature, TensorSpec};

/// The benchmark's own deterministic values (xorshift).
fn values(n: usize) -> Vec<u64> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("json_decode");
    for n in [1_000usize, 1_000_000] {
        let raw = values(n);
        #[allow(clippy::cast_precision_loss)]
        let f: Vec<f32> = raw
            .iter()
            .map(|&v| (v >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
            .collect();
        let cases: [(&str, DType, Vec<String>); 4] = [
            (
                "fp32_repr17",
                DType::F32,
                f.iter().map(|&x| format!("{:?}", f64::from(x))).collect(),
            ),
            (
                "fp32_shortest",
                DType::F32,
                f.iter().map(|x| format!("{x:?}")).collect(),
            ),
            (
                "int32",
                DType::I32,
                raw.iter()
                    .map(|&v| format!("{}", (v >> 32) as u32 as i32 >> (v % 24)))
                    .collect(),
            ),
            (
                "bool",
                DType::Bool,
                raw.iter()
                    .map(|&v| if v & 1 == 0 { "false" } else { "true" }.to_string())
                    .collect(),
            ),
        ];
        for (label, dtype, tokens) in cases {
            let data = format!("[{}]", tokens.join(","));
            let datatype = match dtype {
                DType::F32 => "FP32",
                DType::I32 => "INT32",
                _ => "BOOL",
            };
            let body = Bytes::from(format!(
                "{{\"inputs\":[{{\"name\":\"x\",\"shape\":[{n}],\"datatype\":\"{datatype}\",\"data\":{data}}}]}}"
            ));
            let sig = Signature {
                inputs: vec![TensorSpec::new("x", dtype, &[n as u64])],
                outputs: vec![TensorSpec::new("y", dtype, &[1])],
            };
            let limits = ParseLimits::default();
            g.throughput(Throughput::Elements(n as u64));
            g.sample_size(if n > 1000 { 10 } else { 50 });
            g.bench_with_input(BenchmarkId::new(label, n), &body, |b, body| {
                b.iter(|| parse_request(body, None, &sig, &limits).unwrap())
            });
            if dtype == DType::F32 {
                g.bench_with_input(
                    BenchmarkId::new(format!("{label}_serde_json_vec_f32"), n),
                    &data,
                    |b, data| b.iter(|| serde_json::from_str::<Vec<f32>>(data).unwrap()),
                );
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
