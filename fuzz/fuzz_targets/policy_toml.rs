//! The policy TOML binder (`Policy::from_toml`): a typed error naming a line and key, or a
//! policy that `to_toml` writes back to an equal policy (and that writes the same text again;
//! with a NaN in it, the same text only).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlaguard::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::from_toml(text, Some("fuzz.policy.toml")) {
        Err(e) => {
            let m = e.to_string();
            assert!(
                m.starts_with("fuzz.policy.toml"),
                "error names the file: {m}"
            );
        }
        Ok(p) => {
            let written = p.to_toml();
            let back = Policy::from_toml(&written, None)
                .unwrap_or_else(|e| panic!("to_toml output does not read back: {e}\n{written}"));
            // NaN bounds and normalize values parse (binding refuses them) and survive the trip,
            // but NaN != NaN: such policies are checked by their text alone.
            if !written.contains("nan") {
                assert_eq!(back, p, "policy round trip via\n{written}");
            }
            assert_eq!(back.to_toml(), written, "to_toml is a fixed point");
        }
    }
});
