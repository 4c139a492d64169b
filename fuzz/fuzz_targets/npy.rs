//! The `.npy` reader (`Tensor::from_npy`): a typed error, or a tensor whose bytes fit its dtype
//! and shape and that round-trips through `to_npy` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlaguard::tensor::{byte_len, Tensor};

fuzz_target!(|data: &[u8]| {
    match Tensor::from_npy(data) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(t) => {
            assert_eq!(byte_len(t.dtype(), t.shape()), Some(t.bytes().len()));
            let again = Tensor::from_npy(&t.to_npy()).expect("to_npy output reads back");
            assert_eq!(again, t, "npy round trip");
            // The same tensor through the checked constructor.
            let rebuilt = Tensor::new(t.dtype(), t.shape().to_vec(), t.bytes().to_vec())
                .expect("a read tensor's bytes fit it");
            assert_eq!(rebuilt, t);
        }
    }
});
