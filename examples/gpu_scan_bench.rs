//! On-device value scan bandwidth against a device-to-device copy of the same bytes
//! (feature `cuda`). `gpu_scan_bench [MiB ...]`
//!
//! Prints, per dtype and size, GB/s of the scan (bytes read / time) and of the copy (bytes
//! copied / time), and their ratio. Timed with CUDA events, median of 20 runs after warm-up.

#[cfg(feature = "cuda")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use xlaguard::pjrt::cuda::{Bounds, DeviceScanner, DeviceTensor};
    use xlaguard::DType;
    // Loading the CUDA plugin first preloads NVRTC from the NVIDIA wheels.
    let mut cfg = xlaguard::EngineConfig::default();
    cfg.device(xlaguard::plugin::DeviceKind::Cuda);
    cfg.client_options = Some(xlaguard::pjrt::ClientOptions::gpu(None, Some(false), None));
    let mut engine = Some(xlaguard::Engine::new(&cfg)?);
    let s = DeviceScanner::new(0)?;
    let order = std::env::var("XLAGUARD_DROP_ORDER").unwrap_or_default();
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![64, 256, 1024]
    } else {
        sizes
    };
    let stream = s.stream().clone();
    let ctx = s.context().clone();
    // cudarc's default event flags disable timing.
    let timing = cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
    println!(
        "{:<9} {:>8} {:>11} {:>11} {:>7}",
        "dtype", "MiB", "scan GB/s", "copy GB/s", "ratio"
    );
    for mib in sizes {
        let bytes = mib << 20;
        for dtype in [DType::F32, DType::BF16, DType::F16, DType::I32] {
            let n = bytes / dtype.size();
            let src = stream.alloc_zeros::<u8>(bytes)?;
            let mut dst = stream.alloc_zeros::<u8>(bytes)?;
            let t = DeviceTensor::new(&src, dtype, &[n as u64])?;
            let bounds = Bounds {
                min: Some(-1.0),
                max: Some(1.0),
            };
            let time = |f: &mut dyn FnMut() -> Result<(), Box<dyn std::error::Error>>| -> Result<f64, Box<dyn std::error::Error>> {
                for _ in 0..3 {
                    f()?;
                }
                let mut v = Vec::new();
                for _ in 0..20 {
                    let a = ctx.new_event(Some(timing))?;
                    let b = ctx.new_event(Some(timing))?;
                    a.record(&stream)?;
                    f()?;
                    b.record(&stream)?;
                    b.synchronize()?;
                    v.push(f64::from(a.elapsed_ms(&b)?));
                }
                v.sort_by(f64::total_cmp);
                Ok(v[v.len() / 2])
            };
            // The scan runs on the scanner's stream and synchronizes; events on the same stream.
            let scan_ms = time(&mut || {
                t.scan(&s, bounds)?;
                Ok(())
            })?;
            let copy_ms = time(&mut || {
                stream.memcpy_dtod(&src, &mut dst)?;
                Ok(())
            })?;
            let gbs = |ms: f64| bytes as f64 / (ms * 1e-3) / 1e9;
            println!(
                "{:<9} {:>8} {:>11.1} {:>11.1} {:>7.2}",
                dtype.name(),
                mib,
                gbs(scan_ms),
                gbs(copy_ms),
                copy_ms / scan_ms
            );
        }
    }
    // Teardown in a chosen order, with markers (diagnostics for a segfault at exit seen on an
    // H200; XLAGUARD_DROP_ORDER = leak-engine | engine-first | default).
    eprintln!("drop: start ({order})");
    match order.as_str() {
        "leak-engine" => std::mem::forget(engine.take()),
        "engine-first" => {
            drop(engine.take());
            eprintln!("drop: engine done");
        }
        _ => {}
    }
    drop(stream);
    drop(ctx);
    eprintln!("drop: ctx/stream done");
    drop(s);
    eprintln!("drop: scanner done");
    drop(engine.take());
    eprintln!("drop: all done");
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("build with --features cuda");
    std::process::exit(2);
}
