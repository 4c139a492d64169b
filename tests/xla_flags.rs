//! `XLA_FLAGS` is checked before any client exists: an unknown flag would abort XLA (the whole
//! process), dump flags would write files. Every allowed flag is known to the pinned plugin.
//! (Its own file: it changes this process's environment.)

mod common;

use xlaguard::compile::ALLOWED_XLA_FLAGS;
use xlaguard::{Engine, Error};

#[test]
fn disallowed_flags_are_refused_and_allowed_ones_work() {
    for bad in [
        "--xla_dump_to=/tmp/x",
        "--no_such_flag=1",
        "xla_cpu_enable_fast_math=false",
        "--xla_cpu_enable_fast_math=$(reboot)",
    ] {
        std::env::set_var("XLA_FLAGS", bad);
        let err = Engine::new(&common::config()).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{bad}: {err}");
        assert!(err.to_string().contains("XLA_FLAGS"), "{err}");
    }
    // Every allowed flag, at a value that keeps results bit-identical to JAX's: the worker and
    // this process both create clients with them (an unknown one would abort this test).
    let values = [
        ("xla_backend_optimization_level", "3"),
        ("xla_cpu_enable_fast_math", "false"),
        ("xla_cpu_enable_fast_min_max", "false"),
        ("xla_cpu_fast_math_honor_nans", "true"),
        ("xla_cpu_fast_math_honor_infs", "true"),
        ("xla_cpu_fast_math_honor_division", "true"),
        ("xla_cpu_fast_math_honor_functions", "true"),
        ("xla_cpu_multi_thread_eigen", "true"),
        ("xla_cpu_parallel_codegen_split_count", "32"),
        ("xla_cpu_prefer_vector_width", "256"),
        ("xla_cpu_max_isa", "AVX2"),
        ("xla_cpu_strict_dot_conv_math", "false"),
        ("xla_cpu_use_thunk_runtime", "true"),
        ("xla_cpu_use_xnnpack", "false"),
        ("xla_llvm_disable_expensive_passes", "false"),
        ("xla_disable_hlo_passes", ""),
        ("xla_force_host_platform_device_count", "1"),
    ];
    assert_eq!(values.len(), ALLOWED_XLA_FLAGS.len());
    let flags: Vec<String> = values
        .iter()
        .map(|(n, v)| {
            assert!(ALLOWED_XLA_FLAGS.contains(n), "{n}");
            format!("--{n}={v}")
        })
        .collect();
    std::env::set_var("XLA_FLAGS", flags.join(" "));
    let e = Engine::new(&common::config()).unwrap();
    assert!(e.sandbox_report().env.contains(&"XLA_FLAGS".to_string()));
    common::digits_still_work(&e);
    std::env::remove_var("XLA_FLAGS");
}

/// Every allowed flag is either one `CompileOptions` writes into `DebugOptions`, or not a
/// `DebugOptions` field at all (per the `xla.proto` descriptor jaxlib embeds).
#[test]
fn allowed_flags_that_are_debug_options_fields_are_all_encoded() {
    let table: Vec<serde_json::Value> = serde_json::from_str(include_str!(
        "../hlo/compile_options/debug_options_fields.json"
    ))
    .unwrap();
    for flag in ALLOWED_XLA_FLAGS {
        let encoded = xlaguard::pjrt::options::is_debug_options_flag(flag);
        let is_field = table.iter().any(|f| f["name"] == *flag);
        assert_eq!(encoded, is_field, "{flag}");
    }
}
