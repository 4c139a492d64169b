//! The params reader (`Params::from_bytes`: safetensors, or npz by its zip magic; byte 0 picks
//! the file name it is read as). A typed error, or named tensors with unique names whose bytes
//! fit their dtypes and shapes, that round-trip through `.npy`, and that read the same twice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlaguard::tensor::{byte_len, Tensor};
use xlaguard::Params;

const NAMES: [&str; 3] = ["params.safetensors", "params.npz", "params.bin"];

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let source = NAMES[usize::from(which) % NAMES.len()];
    let first = Params::from_bytes(bytes, source);
    match &first {
        Err(e) => {
            let m = e.to_string();
            assert!(!m.is_empty());
            let again = Params::from_bytes(bytes, source).expect_err("same bytes, same answer");
            assert_eq!(again.to_string(), m);
        }
        Ok(p) => {
            assert_eq!(p.file_bytes(), bytes.len() as u64);
            assert_eq!(p.sha256().len(), 64);
            let mut names: Vec<&str> = p.tensors().iter().map(|(n, _)| n.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), p.tensors().len(), "tensor names are unique");
            for (name, t) in p.tensors() {
                assert_eq!(
                    byte_len(t.dtype(), t.shape()),
                    Some(t.bytes().len()),
                    "{name}"
                );
                assert_eq!(p.get(name), Some(t));
                let back = Tensor::from_npy(&t.to_npy()).expect("npy of a param reads back");
                assert_eq!(&back, t, "{name} round trip");
            }
            let again = Params::from_bytes(bytes, source).expect("same bytes, same answer");
            assert_eq!(again.tensors(), p.tensors());
        }
    }
});
