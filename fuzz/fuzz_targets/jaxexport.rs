//! The `jax.export` flatbuffer reader (`artifact::jaxexport::load`), and the format sniffing of
//! `artifact::load` in front of it: the same answer twice, a typed error with a message, or an
//! artifact whose signature, kept inputs and platforms agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlaguard::artifact::{self, jaxexport, mlir, ArtifactKind};

fuzz_target!(|data: &[u8]| {
    let direct = xlaguard_fuzz::check_load(data, jaxexport::load);
    let other_format = data.starts_with(b"ML\xefR") || mlir::looks_like_text(data);
    if jaxexport::looks_like(data) && !other_format {
        // Sniffed as a jax.export: artifact::load must agree with the reader.
        let sniffed = xlaguard_fuzz::check_load(data, artifact::load);
        if let Some(d) = direct {
            assert_eq!(sniffed.as_ref(), Some(&d));
            assert_eq!(d.kind, ArtifactKind::JaxExport);
        }
    }
});
