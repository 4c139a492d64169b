# Sourced by scripts/fuzz.sh and scripts/fuzz-smoke.sh: the fuzz targets and their dictionaries.
FUZZ_TARGETS=(jaxexport mlir_text hlo_proto npy policy_toml config_toml kserve_json
              kserve_binary kserve_structured grpc_request params worker_reply cache_entry)

# The libFuzzer dictionary of a target, or nothing.
fuzz_dict() {
    case "$1" in
        kserve_json|kserve_binary|grpc_request) echo "-dict=dict/kserve.dict" ;;
        mlir_text|jaxexport) echo "-dict=dict/mlir.dict" ;;
        policy_toml|config_toml) echo "-dict=dict/toml.dict" ;;
    esac
}

# The instrumentation cargo-fuzz applies (without -Zsanitizer), as stable rustc flags: the
# sanitizer-coverage pass, inline 8-bit counters, the PC table, compare tracing; `cfg(fuzzing)`;
# debug assertions and overflow checks on.
FUZZ_RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions \
-Coverflow-checks"
