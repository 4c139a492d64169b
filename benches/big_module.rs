//! Loading and compiling a 100 MB+ module with the default limits: a StableHLO text module
//! `x + c` whose constant `c` is a baked f32 tensor written as a hex `dense<"0x...">` literal
//! (generated here, not committed). Records load + compile wall time, the parent's peak RSS and
//! the jailed compile worker's peak RSS (from `wait4`), and checks the result.
//!
//! `cargo bench --bench big_module` (CARGO_BUILD_JOBS=1 on small machines); `ELEMENTS=N` sets
//! the constant's length (default 13,107,200 f32 = 50 MiB of data, a 100 MiB text module).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use xlaguard::{Engine, EngineConfig, Tensor};

fn peak_rss_bytes() -> u64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the pointer, which is valid for it.
    let r = unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) };
    if r != 0 {
        return 0;
    }
    // SAFETY: getrusage returned 0, so it initialized the struct.
    let u = unsafe { u.assume_init() };
    u64::try_from(u.ru_maxrss).unwrap_or(0) * 1024
}

/// Writes `func.func public @main(%x: tensor<Nxf32>) -> tensor<Nxf32>` returning `x + c`,
/// `c[i] = i mod 1000` as f32, streamed to `path` (never held whole by this process).
fn write_module(path: &Path, n: usize) -> std::io::Result<u64> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    write!(
        f,
        "func.func public @main(%arg0: tensor<{n}xf32>) -> tensor<{n}xf32> {{\n  %c = stablehlo.constant dense<\"0x"
    )?;
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut line = Vec::with_capacity(8 * 4096);
    for start in (0..n).step_by(4096) {
        line.clear();
        for i in start..(start + 4096).min(n) {
            for b in ((i % 1000) as f32).to_le_bytes() {
                line.push(HEX[usize::from(b >> 4)]);
                line.push(HEX[usize::from(b & 15)]);
            }
        }
        f.write_all(&line)?;
    }
    write!(
        f,
        "\"> : tensor<{n}xf32>\n  %0 = stablehlo.add %arg0, %c : tensor<{n}xf32>\n  return %0 : tensor<{n}xf32>\n}}\n"
    )?;
    f.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let n: usize = std::env::var("ELEMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(13_107_200);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("big.mlir");
    let t = Instant::now();
    let size = write_module(&path, n).expect("write the module");
    println!(
        "module: {size} bytes ({:.1} MiB), {n} f32 constant elements, written in {:.2} s",
        size as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    let rss_before = peak_rss_bytes();
    let mut c = EngineConfig::default();
    match std::env::var_os("XLAGUARD_PLUGIN") {
        Some(p) => c.plugin(p),
        None => c.plugin(root.join("third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so")),
    };
    c.compile.worker_exe(env!("CARGO_BIN_EXE_xlaguard"));
    let engine = Engine::new(&c).expect("engine");
    let t = Instant::now();
    let m = engine
        .load_file(&path)
        .expect("a 100 MB+ module loads with the default limits");
    let load = t.elapsed();
    let rss_loaded = peak_rss_bytes();
    let info = m.info();
    let worker_rss = info.compile.usage.map(|u| u.peak_rss_bytes).unwrap_or(0);
    let x = Tensor::from_slice(&[n as u64], &vec![0.5f32; n]).expect("input");
    let out = m.run(&[x.view()]).expect("run");
    let y = out[0].to_array::<f32>().expect("f32 output");
    for i in [0, 1, 999, 1000, n - 1] {
        assert_eq!(y[i], (i % 1000) as f32 + 0.5, "element {i}");
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "load + compile: {:.2} s (compile {:.2} s, {})",
        load.as_secs_f64(),
        info.compile_time.as_secs_f64(),
        info.compile.isolation.name()
    );
    println!(
        "peak RSS: parent {:.0} MiB before the engine, {:.0} MiB after load + compile, {:.0} MiB \
         after a run; compile worker {:.0} MiB",
        mib(rss_before),
        mib(rss_loaded),
        mib(peak_rss_bytes()),
        mib(worker_rss)
    );
}
