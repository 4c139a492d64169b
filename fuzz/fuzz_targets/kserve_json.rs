//! The KServe v2 JSON request parser (`server::wire::parse_request`, no binary part) against
//! fixture signatures (first byte: which). See `xlaguard_fuzz::check_request` for what must
//! hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    xlaguard_fuzz::check_request(xlaguard_fuzz::signature(which), body, None);
});
