//! Per-model CPU kernel settings on the real plugin: each compiles and runs `hlo/conv` and
//! `hlo/keras_mobilenet`; `xla` (JAX's options) equals JAX's goldens bit for bit; the others
//! call the kernels they name and stay within a tolerance of JAX.

mod common;

use std::path::Path;

use xlaguard::kernels::golden_difference;
use xlaguard::CpuKernels;

/// Largest absolute difference to JAX accepted from another kernel library. The outputs are
/// softmax probabilities / logits of magnitude at most a few units; another library sums a
/// convolution's products in another order (and may fuse multiply-adds), which changes each
/// f32 sum by at most K·eps relative for K products (K ≤ 3·3·576 here, eps = 2^-24 ≈ 6e-8:
/// ≤ 3e-4 relative in the worst case, with random signs ~1e-6 in practice). 1e-4 absolute is
/// far above what a different summation order gives and far below what a wrong kernel (a
/// transposed filter, a missing bias) gives: those change outputs by 1e-2 or more.
const TOLERANCE: f64 = 1e-4;

fn calls(m: &xlaguard::Model, prefix: &str) -> usize {
    m.library_calls()
        .unwrap()
        .iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(_, c)| c)
        .sum()
}

#[test]
fn each_setting_runs_and_xla_is_jax_bit_for_bit() {
    for name in ["keras_mobilenet", "conv"] {
        let dir = common::root().join("hlo").join(name);
        for k in CpuKernels::ALL {
            // An executable with oneDNN calls cannot be serialized, so it cannot come back
            // from a compile worker (see `onednn_in_the_jail_is_a_typed_refusal`); its numbers
            // come from an unjailed compile.
            let engine = if k == CpuKernels::Onednn {
                common::thread_engine()
            } else {
                common::engine()
            };
            let e = engine.with_cpu_kernels(k);
            let m = e
                .load_file(&dir.join("model.jaxexport"))
                .unwrap_or_else(|err| panic!("{name} {k}: {err}"));
            let d = golden_difference(&m, Path::new(&dir)).unwrap().unwrap();
            eprintln!("{name} {k}: {:?} {:?}", m.library_calls().unwrap(), d);
            assert!(d.elements > 0, "{name} {k}");
            if k == CpuKernels::Xla {
                assert_eq!(
                    d.differing, 0,
                    "{name}: JAX's options differ from JAX: {d:?}"
                );
            } else {
                assert!(d.max_abs <= TOLERANCE, "{name} {k}: {d:?}");
            }
            if name == "keras_mobilenet" {
                let ynn = calls(&m, "__ynn");
                match k {
                    // Under JAX's options convolutions go to YNNPACK.
                    CpuKernels::Xla => assert!(ynn > 0, "{:?}", m.library_calls()),
                    CpuKernels::Onednn => {
                        assert!(
                            calls(&m, "__onednn$convolution") > 0,
                            "{:?}",
                            m.library_calls()
                        )
                    }
                    CpuKernels::Xnnpack | CpuKernels::YnnOff => {
                        assert_eq!(ynn, 0, "{k}: {:?}", m.library_calls())
                    }
                }
            }
        }
    }
}

#[test]
fn bad_setting_names_the_choices() {
    let e = "fast".parse::<CpuKernels>().unwrap_err();
    assert!(
        e.to_string().contains("xla, xnnpack, onednn, ynn_off"),
        "{e}"
    );
    assert!(e.to_string().contains("'fast'"), "{e}");
}

/// With `onednn` the plugin compiles keras_mobilenet, but throws a C++ exception (which aborts
/// the process) out of `PJRT_Executable_Serialize` for the result; a compile worker must
/// serialize what it compiled, so it refuses instead: a typed rejection naming oneDNN and
/// what to do, and the worker and the engine go on. (Until 2026-12-02 this was a SIGABRT of the
/// worker, read as "oneDNN fails inside the jail"; `xlaguard compile --isolation thread`
/// showed that the serialization, not the jail, aborts.)
#[test]
fn onednn_in_the_jail_is_a_typed_refusal() {
    let dir = common::root().join("hlo/keras_mobilenet");
    let e = common::engine().with_cpu_kernels(CpuKernels::Onednn);
    match e.load_file(&dir.join("model.jaxexport")) {
        Err(xlaguard::Error::CompileRejected(err)) => {
            let m = err.to_string();
            assert!(m.contains("PJRT_Executable_Serialize"), "{m}");
            assert!(
                m.contains("oneDNN kernels") && m.contains("--isolation thread"),
                "{m}"
            );
        }
        Err(other) => panic!("expected a typed refusal, got {other}"),
        // If a later plugin serializes it, this test says so (and docs/cpu_kernels.md must
        // change).
        Ok(_) => panic!("onednn now compiles in the jail: update docs/cpu_kernels.md"),
    }
    // An unjailed compile keeps it in the process, and serializing it is refused, not an abort.
    let m = common::thread_engine()
        .with_cpu_kernels(CpuKernels::Onednn)
        .load_file(&dir.join("model.jaxexport"))
        .expect("an in-process onednn compile");
    let err = m.serialized_executable().unwrap_err().to_string();
    assert!(
        err.contains("PJRT_Executable_Serialize") && err.contains("oneDNN"),
        "{err}"
    );
    // The engine still compiles with JAX's options afterwards.
    common::engine()
        .load_file(&dir.join("model.jaxexport"))
        .expect("a compile after the failure");
}
