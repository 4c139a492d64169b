//! The parent's reader of a (hostile) compile worker's reply: the incremental frame decoder
//! (`protocol::Decoder`, fed in fuzzer-chosen pieces with the pool's per-kind bounds, a
//! fuzzer-chosen executable limit) and then `compile::read_compile_reply` (stats, executable
//! blob, rejection JSON) or the `Described` JSON.
//!
//! What must hold: the same verdict however the bytes are split; a decoded frame re-encodes to
//! exactly the bytes it came from and respects its kind's bound; a `Compiled` reply's executable
//! is the non-empty tail of its payload; every refusal is a typed error with a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlaguard::compile::protocol::{self, Decoder, Description, Frame, Kind, MAX_SMALL};
use xlaguard::compile::{read_compile_reply, CompileReply};

/// Feeds `stream` in pieces of the sizes `pieces` cycles through, as the pool's reads deliver
/// it, and stops at the first frame (the pool reads no further).
fn decode(
    stream: &[u8],
    pieces: &[u8],
    max: &impl Fn(Kind) -> usize,
) -> Result<Option<Frame>, protocol::ProtocolError> {
    let mut d = Decoder::default();
    let mut at = 0;
    let mut sizes = pieces.iter().cycle();
    while at < stream.len() {
        let n = (usize::from(*sizes.next().unwrap_or(&255)) + 1).min(stream.len() - at);
        if let Some(f) = d.feed(&stream[at..at + n], max)? {
            return Ok(Some(f));
        }
        at += n;
    }
    Err(d.truncated())
}

fuzz_target!(|data: &[u8]| {
    let [p0, p1, p2, l0, l1, stream @ ..] = data else {
        return;
    };
    let max_exe = usize::from(u16::from_le_bytes([*l0, *l1])) << 8;
    let max = move |k: Kind| match k {
        Kind::Compiled => max_exe.saturating_add(MAX_SMALL),
        _ => MAX_SMALL,
    };
    let whole = decode(stream, &[u8::MAX; 1], &max);
    let split = decode(stream, &[*p0, *p1, *p2], &max);
    let trailing = |r: &Result<Option<Frame>, protocol::ProtocolError>| matches!(r, Err(protocol::ProtocolError::Malformed { detail, .. }) if detail.contains("trailing"));
    match (&whole, &split) {
        (Ok(Some(a)), Ok(Some(b))) => assert_eq!((a.kind, &a.payload), (b.kind, &b.payload)),
        (Err(a), Err(b)) => assert!(!a.to_string().is_empty() && !b.to_string().is_empty()),
        // Bytes after the reply are refused when they arrive with it; a reply complete at the
        // end of a read is taken as it is (the pool reads no further).
        (Ok(Some(_)), e) | (e, Ok(Some(_))) if trailing(e) => {}
        _ => panic!("the verdict depends on how the bytes arrived: {whole:?} vs {split:?}"),
    }
    let Ok(Some(frame)) = split.or(whole) else {
        return;
    };
    let exact = protocol::encode(frame.kind, &frame.payload).expect("fits");
    assert!(
        stream.starts_with(&exact),
        "a frame is the bytes it came from"
    );
    assert!(
        frame.payload.len() <= max(frame.kind),
        "bound of {:?}",
        frame.kind
    );
    if frame.kind == Kind::Described {
        if let Ok(d) = serde_json::from_slice::<Description>(&frame.payload) {
            let back = serde_json::to_vec(&d).expect("serializes");
            assert_eq!(serde_json::from_slice::<Description>(&back).ok(), Some(d));
        }
        return;
    }
    match read_compile_reply(frame.kind, &frame.payload) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(CompileReply::Compiled { executable, .. }) => {
            assert!(!executable.is_empty(), "an empty executable is refused");
            assert!(frame.payload.ends_with(executable));
            let stats = frame.payload.len() - 4 - executable.len();
            assert!(stats <= MAX_SMALL);
            assert_eq!(
                u32::from_le_bytes(frame.payload[..4].try_into().unwrap()) as usize,
                stats
            );
        }
        Ok(CompileReply::Refused(e)) => assert!(!e.to_string().is_empty()),
        Ok(CompileReply::Fatal(_)) => assert_eq!(frame.kind, Kind::Fatal),
    }
});
