//! Value scans against `memcpy` of the same buffer, and the digits model with and without its
//! value policy against its raw execute.
//!
//! Two parts, in one run:
//! 1. criterion groups `scan/<dtype>/<size>` (memcpy, scan with the best backend, scalar scan;
//!    throughput in bytes of input) and `digits` (raw execute, upload+execute with no value
//!    checks, with the default policy, with a range policy, with a clipping policy);
//! 2. a ratio table measured by interleaving the contenders (median of alternating rounds, which
//!    cancels most of the drift on a shared machine): scan throughput / memcpy throughput, and
//!    validated time / raw execute time.
//!
//! `cargo bench --bench scan`; `XLAGUARD_BENCH_RATIOS_ONLY=1 cargo bench --bench scan` prints only
//! the ratio table.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use half::{bf16, f16};
use xlaguard::validate::scan::{scan_with, Backend, Bound, Limits};
use xlaguard::validate::{BoundPolicy, NonFinite, OutOfRange, Policy};
use xlaguard::{DType, Engine, EngineConfig, Model, Signature, Tensor, TensorRef, TensorSpec};

const SIZES: [(usize, &str); 3] = [(4 << 10, "4KiB"), (1 << 20, "1MiB"), (64 << 20, "64MiB")];
const DTYPES: [DType; 5] = [DType::F32, DType::BF16, DType::F16, DType::I32, DType::U8];

/// In-range data of `bytes` bytes and the limits it is checked against (floats: [0, 16] and
/// NaN/Inf counted; ints: [0, 49] / [0, 200]) — the happy path, where nothing is rejected.
fn data(dtype: DType, bytes: usize) -> (Vec<u8>, Limits) {
    let n = bytes / dtype.size();
    let mut v = Vec::with_capacity(bytes);
    for i in 0..n {
        let x = u16::try_from(i * 7 % 17).unwrap_or(0);
        match dtype {
            DType::F32 => v.extend_from_slice(&f32::from(x).to_le_bytes()),
            DType::BF16 => v.extend_from_slice(&bf16::from_f32(f32::from(x)).to_le_bytes()),
            DType::F16 => v.extend_from_slice(&f16::from_f32(f32::from(x)).to_le_bytes()),
            DType::I32 => v.extend_from_slice(&(i32::from(x) * 3).to_le_bytes()),
            DType::U8 => v.push(u8::try_from(x * 11).unwrap_or(0)),
            _ => unreachable!(),
        }
    }
    let (lo, hi) = if dtype.is_float() {
        (Bound::Float(0.0), Bound::Float(16.0))
    } else if dtype == DType::U8 {
        (Bound::Int(0), Bound::Int(200))
    } else {
        (Bound::Int(0), Bound::Int(49))
    };
    (v, Limits::new(dtype, Some(lo), Some(hi)).unwrap())
}

fn scan_benches(c: &mut Criterion) {
    for (bytes, label) in SIZES {
        let mut dst = vec![0u8; bytes];
        for dtype in DTYPES {
            let (src, limits) = data(dtype, bytes);
            let mut g = c.benchmark_group(format!("scan/{}", dtype.name()));
            g.throughput(Throughput::Bytes(bytes as u64));
            g.sample_size(if bytes > (1 << 20) { 10 } else { 30 });
            g.bench_function(BenchmarkId::new("memcpy", label), |b| {
                b.iter(|| {
                    dst.copy_from_slice(black_box(&src));
                    black_box(&dst);
                })
            });
            g.bench_function(BenchmarkId::new("scan", label), |b| {
                b.iter(|| scan_with(Backend::best(), black_box(&src), &limits).unwrap())
            });
            g.bench_function(BenchmarkId::new("scan_scalar", label), |b| {
                b.iter(|| scan_with(Backend::Scalar, black_box(&src), &limits).unwrap())
            });
            g.finish();
        }
    }
}

struct Digits {
    raw: Model,
    none: Model,
    default: Model,
    range: Model,
    clip: Model,
    x: Tensor,
    dirty: Tensor,
}

fn digits() -> Digits {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cfg = EngineConfig::default();
    cfg.compile.worker_exe(env!("CARGO_BIN_EXE_xlaguard"));
    cfg.plugin(root.join("third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so"));
    let engine = Engine::new(&cfg).expect("run scripts/fetch-plugin.sh first");
    let file = root.join("hlo/digits/model.jaxexport");
    let load = |p: Option<Policy>| {
        let m = engine.load_file(&file).unwrap();
        match p {
            Some(p) => m.with_policy(p).unwrap(),
            None => m,
        }
    };
    let mut none = Policy::new();
    none.input("pixels")
        .nan(NonFinite::Allow)
        .inf(NonFinite::Allow);
    let mut range = Policy::new();
    range.input("pixels").range(0.0, 16.0);
    let mut clip = Policy::new();
    clip.input("pixels")
        .range(0.0, 16.0)
        .out_of_range(OutOfRange::Clip);
    Digits {
        raw: load(None),
        none: load(Some(none)),
        default: load(None),
        range: load(Some(range)),
        clip: load(Some(clip)),
        x: Tensor::read_npy(&root.join("hlo/digits/in0.npy")).unwrap(),
        dirty: Tensor::read_npy(&root.join("hlo/policy/digits_dirty.npy")).unwrap(),
    }
}

fn upload_execute(m: &Model, t: &TensorRef<'_>) {
    let b = m.upload(std::slice::from_ref(t)).unwrap();
    let r: Vec<_> = b.iter().collect();
    black_box(m.execute_buffers(&r).unwrap());
}

fn digits_benches(c: &mut Criterion, d: &Digits) {
    let x = d.x.view();
    let resident = d.raw.upload(&[x]).unwrap();
    let refs: Vec<_> = resident.iter().collect();
    let mut g = c.benchmark_group("digits");
    g.bench_function("raw_execute", |b| {
        b.iter(|| d.raw.execute_buffers(&refs).unwrap())
    });
    g.bench_function("upload_execute_no_value_checks", |b| {
        b.iter(|| upload_execute(&d.none, &x))
    });
    g.bench_function("upload_execute_default_policy", |b| {
        b.iter(|| upload_execute(&d.default, &x))
    });
    g.bench_function("upload_execute_range_policy", |b| {
        b.iter(|| upload_execute(&d.range, &x))
    });
    let dirty = d.dirty.view();
    g.bench_function("upload_execute_clip_policy_dirty_input", |b| {
        b.iter(|| upload_execute(&d.clip, &dirty))
    });
    g.finish();
}

/// Median seconds per call of each closure, measured in alternating rounds.
fn interleaved(rounds: usize, per_round: usize, fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); fs.len()];
    for f in fs.iter_mut() {
        f(); // warm: page in, caches
    }
    for _ in 0..rounds {
        for (f, t) in fs.iter_mut().zip(&mut times) {
            let s = Instant::now();
            for _ in 0..per_round {
                f();
            }
            t.push(s.elapsed().as_secs_f64() / per_round as f64);
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

fn ratios(d: &Digits) {
    println!("\nratios (interleaved rounds, median; throughput = bytes of input / time)");
    println!(
        "{:<9} {:>6} {:>12} {:>12} {:>12} {:>11} {:>11}",
        "dtype", "size", "memcpy GB/s", "scan GB/s", "scalar GB/s", "scan/memcpy", "scalar/memcpy"
    );
    for (bytes, label) in SIZES {
        let mut dst = vec![0u8; bytes];
        for dtype in DTYPES {
            let (src, limits) = data(dtype, bytes);
            // About 64 MiB of input per round and contender, at least one call.
            let per = ((64 << 20) / bytes).max(1);
            let rounds = if bytes > (1 << 20) { 15 } else { 31 };
            let t = interleaved(
                rounds,
                per,
                &mut [
                    &mut || {
                        dst.copy_from_slice(black_box(&src));
                        black_box(&dst);
                    },
                    &mut || {
                        black_box(scan_with(Backend::best(), black_box(&src), &limits).unwrap());
                    },
                    &mut || {
                        black_box(scan_with(Backend::Scalar, black_box(&src), &limits).unwrap());
                    },
                ],
            );
            let gbs = |s: f64| bytes as f64 / s / 1e9;
            println!(
                "{:<9} {:>6} {:>12.2} {:>12.2} {:>12.2} {:>10.2}x {:>10.2}x",
                dtype.name(),
                label,
                gbs(t[0]),
                gbs(t[1]),
                gbs(t[2]),
                t[0] / t[1],
                t[0] / t[2]
            );
        }
    }
    sanitize_ratios();
    let x = d.x.view();
    let dirty = d.dirty.view();
    let resident = d.raw.upload(&[x]).unwrap();
    let refs: Vec<_> = resident.iter().collect();
    let t = interleaved(
        31,
        200,
        &mut [
            &mut || {
                black_box(d.raw.execute_buffers(&refs).unwrap());
            },
            &mut || upload_execute(&d.none, &x),
            &mut || upload_execute(&d.default, &x),
            &mut || upload_execute(&d.range, &x),
            &mut || upload_execute(&d.clip, &dirty),
        ],
    );
    println!("\ndigits (f32[1,64]), median µs per call, and time / raw execute:");
    for (name, s) in [
        "raw execute (input resident)",
        "upload + execute, no value checks",
        "upload + execute, default policy (NaN/Inf)",
        "upload + execute, range policy [0, 16]",
        "upload + execute, clip policy, dirty input",
    ]
    .iter()
    .zip(&t)
    {
        println!("  {name:<44} {:>8.2} µs  {:>6.3}x", s * 1e6, s / t[0]);
    }
    println!(
        "  policy overhead (range policy vs no value checks): {:+.1}% of the raw execute",
        (t[3] - t[1]) / t[0] * 100.0
    );
}

/// Clipping (scan + sanitizing copy into a staging buffer) against memcpy, f32 with 1% of the
/// values out of range, and a clean input under the same policy (scan only, zero copy).
fn sanitize_ratios() {
    println!(
        "\nsanitize: f32 with [0, 16] and out_of_range = \"clip\", vs memcpy of the same bytes"
    );
    for (bytes, label) in [(1usize << 20, "1MiB"), (64 << 20, "64MiB")] {
        let n = bytes / 4;
        let clean: Vec<u8> = (0..n)
            .flat_map(|i| f32::from(u16::try_from(i % 17).unwrap_or(0)).to_le_bytes())
            .collect();
        let mut dirty = clean.clone();
        for i in (0..n).step_by(100) {
            dirty[i * 4..i * 4 + 4].copy_from_slice(&255f32.to_le_bytes());
        }
        let shape = [n as u64];
        let sig = Signature {
            inputs: vec![TensorSpec::new("x", DType::F32, &shape)],
            outputs: vec![],
        };
        let mut p = Policy::new();
        p.input("x").range(0.0, 16.0).out_of_range(OutOfRange::Clip);
        let bp = BoundPolicy::new(p, &sig).unwrap();
        let mut dst = vec![0u8; bytes];
        let per = ((64 << 20) / bytes).max(1);
        let clean_v = TensorRef {
            dtype: DType::F32,
            shape: &shape,
            data: &clean,
        };
        let dirty_v = TensorRef {
            dtype: DType::F32,
            shape: &shape,
            data: &dirty,
        };
        let t = interleaved(
            11,
            per,
            &mut [
                &mut || {
                    dst.copy_from_slice(black_box(dirty_v.data));
                    black_box(&dst);
                },
                &mut || {
                    // As Model::upload does: the staging buffer goes back to the pool.
                    black_box(bp.recycle(bp.apply(&[dirty_v], None).unwrap()));
                },
                &mut || {
                    black_box(bp.recycle(bp.apply(&[clean_v], None).unwrap()));
                },
            ],
        );
        println!(
            "  {label:>6}: memcpy {:.2} GB/s; clip 1% dirty {:.2} GB/s ({:.2}x memcpy); clean {:.2} GB/s ({:.2}x)",
            bytes as f64 / t[0] / 1e9,
            bytes as f64 / t[1] / 1e9,
            t[0] / t[1],
            bytes as f64 / t[2] / 1e9,
            t[0] / t[2]
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listing = args.iter().any(|a| a == "--list" || a == "--test");
    let d = digits();
    if std::env::var_os("XLAGUARD_BENCH_RATIOS_ONLY").is_none() {
        let mut c = Criterion::default()
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .configure_from_args();
        scan_benches(&mut c);
        digits_benches(&mut c, &d);
        c.final_summary();
    }
    if !listing {
        ratios(&d);
    }
}
