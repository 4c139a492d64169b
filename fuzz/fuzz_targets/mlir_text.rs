//! The StableHLO text signature parser (`artifact::mlir::load_text`) and the argument-location
//! reader beside it: the same answer twice, a typed error, or a consistent signature whose
//! program is the text itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlaguard::artifact::{mlir, ArtifactKind};

fuzz_target!(|data: &[u8]| {
    if let Some(a) = xlaguard_fuzz::check_load(data, mlir::load_text) {
        assert_eq!(a.kind, ArtifactKind::StableHloText);
        assert_eq!(a.program, data, "StableHLO text is compiled as given");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        // What the refiner-free path reads of a wrapped main's arguments.
        let _ = mlir::bake_main_args(text, &[]);
    }
});
