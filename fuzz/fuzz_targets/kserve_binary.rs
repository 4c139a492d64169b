//! The KServe v2 binary-extension request parser: `parse_request` with an
//! `Inference-Header-Content-Length` (bytes 1..3, little-endian, may exceed the body) over a JSON
//! header and the binary tensor data after it, against fixture signatures (byte 0: which).
//! Besides `check_request`'s invariants, an accepted request's binary inputs are, in the JSON's
//! order, consecutive slices of the bytes after the header that use them all.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [which, lo, hi, body @ ..] = data else {
        return;
    };
    let header_len = usize::from(u16::from_le_bytes([*lo, *hi]));
    let sig = xlaguard_fuzz::signature(*which);
    let Some(r) = xlaguard_fuzz::check_request(sig, body, Some(header_len)) else {
        return;
    };
    let (json, binary) = body.split_at(header_len);
    let v: serde_json::Value = serde_json::from_slice(json).expect("accepted JSON parses");
    let mut at = 0usize;
    for input in v["inputs"].as_array().expect("accepted inputs are a list") {
        let Some(n) = input["parameters"]["binary_data_size"].as_u64() else {
            continue;
        };
        let n = usize::try_from(n).expect("accepted size fits");
        let name = input["name"].as_str().expect("accepted name");
        let t = r
            .inputs
            .iter()
            .find(|t| t.name == name)
            .expect("input kept");
        assert_eq!(&t.data[..], &binary[at..at + n], "input '{name}' bytes");
        at += n;
    }
    assert_eq!(at, binary.len(), "every binary byte belongs to an input");
});
