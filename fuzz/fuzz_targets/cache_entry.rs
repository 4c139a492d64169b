//! The compile cache's entry reader (`Cache::get`, on real files under a real key file).
//! Byte 0 picks how the fuzzed bytes become an entry:
//! - 0: written as they are: an existing entry that is not authentic is refused, never used;
//! - 1: a well-formed entry for the key whose header bytes are then changed at fuzzed
//!   positions, sealed with the right HMAC: used, with its payload, exactly when nothing
//!   changed; otherwise refused with the rejection for the field changed;
//! - 2: `Cache::put` of the bytes then `get`: the same bytes back; with one byte flipped after
//!   (position and bits fuzzed): refused.
#![no_main]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use xlaguard::compile::{Cache, CacheKey, CacheRejection};

const MAC_KEY: [u8; 32] = [0x5a; 32];
const PLUGIN: [u8; 32] = [7; 32];
const API: (i32, i32) = (0, 115);
const HEAD: usize = 88;

fn setup() -> &'static (Cache, CacheKey, PathBuf) {
    static S: OnceLock<(Cache, CacheKey, PathBuf)> = OnceLock::new();
    S.get_or_init(|| {
        let dir = xlaguard_fuzz::scratch("cache");
        std::fs::create_dir_all(&dir).expect("temp folder");
        let key_file = dir.join("hmac.key");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key_file)
            .expect("key file");
        f.write_all(&MAC_KEY).expect("key written");
        let cache = Cache::open(&dir, Some(&key_file)).expect("cache opens");
        let key = CacheKey::new(b"module", "mlir", b"options", PLUGIN, API, "", "");
        let path = cache.entry_path(&key);
        (cache, key, path)
    })
}

fn seal(mut body: Vec<u8>) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&MAC_KEY).expect("any key length");
    mac.update(&body);
    body.extend_from_slice(&mac.finalize().into_bytes());
    body
}

fn digest(key: &CacheKey) -> Vec<u8> {
    let h = key.hex();
    (0..32)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let (cache, key, path) = setup();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            std::fs::write(path, rest).expect("entry written");
            match cache.get(key) {
                Err(e) => assert!(!e.to_string().is_empty()),
                Ok(v) => panic!("an unauthenticated entry was used: {v:?}"),
            }
        }
        1 => {
            let n_patches = usize::from(rest.first().copied().unwrap_or(0) % 8);
            let patches = rest.get(1..1 + 2 * n_patches).unwrap_or(&[]);
            let payload = rest.get(1 + 2 * n_patches..).unwrap_or(&[]);
            let mut body = Vec::with_capacity(HEAD + payload.len());
            body.extend_from_slice(b"XLGC");
            body.extend_from_slice(&1u32.to_le_bytes());
            body.extend_from_slice(&digest(key));
            body.extend_from_slice(&PLUGIN);
            body.extend_from_slice(&API.0.to_le_bytes());
            body.extend_from_slice(&API.1.to_le_bytes());
            body.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            let good = body.clone();
            for p in patches.chunks_exact(2) {
                body[usize::from(p[0]) % HEAD] ^= p[1];
            }
            let changed: Vec<usize> = (0..HEAD).filter(|&i| body[i] != good[i]).collect();
            body.extend_from_slice(payload);
            std::fs::write(path, seal(body)).expect("entry written");
            let got = cache.get(key);
            // The checks run in this order: format, length, HMAC, key, plugin.
            let any = |r: std::ops::Range<usize>| changed.iter().any(|c| r.contains(c));
            let want = if changed.is_empty() {
                Ok(Some(payload.to_vec()))
            } else if any(0..8) {
                Err(CacheRejection::BadFormat)
            } else if any(80..88) {
                Err(CacheRejection::Truncated(HEAD + payload.len() + 32))
            } else if any(8..40) {
                Err(CacheRejection::WrongKey)
            } else {
                Err(CacheRejection::WrongPlugin)
            };
            assert_eq!(got, want, "header bytes changed: {changed:?}");
        }
        _ => {
            let (flip, payload) = match rest {
                [a, b, c, p @ ..] => (Some((u16::from_le_bytes([*a, *b]), *c)), p),
                _ => (None, rest),
            };
            cache.put(key, payload).expect("entry stored");
            assert_eq!(cache.get(key), Ok(Some(payload.to_vec())), "put then get");
            if let Some((at, bits)) = flip.filter(|f| f.1 != 0) {
                let mut b = std::fs::read(path).expect("entry read");
                let i = usize::from(at) % b.len();
                b[i] ^= bits;
                std::fs::write(path, &b).expect("entry written");
                let e = cache.get(key).expect_err("a flipped byte is refused");
                assert!(!e.to_string().is_empty());
            }
        }
    }
});
