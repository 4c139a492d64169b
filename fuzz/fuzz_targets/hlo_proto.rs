//! The HLO module proto reader: `artifact::hlo::program_shape`, `entry_parameter_names`, and
//! `artifact::load` on proto bytes. The same answer twice, a typed error, or a signature that
//! agrees with what `load` reports.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlaguard::artifact::{self, hlo, ArtifactKind};

fuzz_target!(|data: &[u8]| {
    let shape = hlo::program_shape(data);
    match (&shape, hlo::program_shape(data)) {
        (Ok(a), Ok(b)) => assert_eq!(a, &b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!("program_shape twice: {a:?} then {b:?}"),
    }
    if let Err(e) = &shape {
        assert!(!e.to_string().is_empty());
    }
    assert_eq!(
        hlo::entry_parameter_names(data),
        hlo::entry_parameter_names(data)
    );
    if let Some(a) = xlaguard_fuzz::check_load(data, artifact::load) {
        if a.kind == ArtifactKind::HloProto {
            assert_eq!(a.program, data, "an HLO proto is compiled as given");
            // A proto whose own program shape load read: program_shape reads the same one.
            if let Some(sig) = &a.signature {
                assert_eq!(Some(sig), shape.as_ref().ok());
            }
        }
    }
});
