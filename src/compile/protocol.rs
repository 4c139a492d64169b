//! The parent ⇄ worker wire protocol: length-prefixed, versioned frames with bounded sizes.
//!
//! A frame is a 12-byte header followed by the payload:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `XLGW` |
//! | 4 | protocol version ([`VERSION`]) |
//! | 5 | message kind ([`Kind`]) |
//! | 6..8 | reserved, zero |
//! | 8..12 | payload length, little-endian `u32` |
//!
//! Every kind has its own size bound, checked before the payload is read, so a broken or
//! hostile peer can neither make the reader allocate without limit nor desynchronise it.

use std::io::{Read, Write};

/// The hidden first argument that turns the host executable into a compile worker.
pub const WORKER_ARG: &str = "__xlaguard-compile-worker";

/// The hidden first argument that turns the host executable into an execution worker.
pub const EXEC_WORKER_ARG: &str = "__xlaguard-exec-worker";

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"XLGW";
/// Protocol version; a peer speaking another one is refused.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 12;

/// Bound for small JSON messages (init, ready, errors, probes).
pub const MAX_SMALL: usize = 1 << 20;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// Parent → worker: the (trusted) jail and plugin configuration, JSON.
    Init,
    /// Parent → worker: a compile request (the untrusted module).
    Compile,
    /// Parent → worker: a test-only request (compiled into test builds only).
    Test,
    /// Parent → worker: read a (shape-polymorphic) module's argument names and shape
    /// assertions with the refiner; the (untrusted) module.
    Describe,
    /// Worker → parent: jailed and ready; the jail report, JSON.
    Ready,
    /// Worker → parent: the serialized executable and compile statistics.
    Compiled,
    /// Worker → parent: the plugin rejected the module, JSON.
    Rejected,
    /// Worker → parent: the worker could not set itself up, JSON.
    Fatal,
    /// Worker → parent: the answer to a test-only request, JSON.
    TestResult,
    /// Worker → parent: what [`Kind::Describe`] found, JSON.
    Described,
    /// Parent → execution worker: the model to serve (its executable, resident arguments and
    /// argument layout), once.
    Load,
    /// Parent → execution worker: one request's input bytes, in argument order.
    Execute,
    /// Execution worker → parent: the model is loaded; what it measured, JSON.
    Loaded,
    /// Execution worker → parent: the outputs' bytes, in output order.
    Executed,
    /// Execution worker → parent: the plugin refused the load or the execution, JSON.
    ExecError,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Init => 1,
            Kind::Compile => 2,
            Kind::Test => 3,
            Kind::Describe => 4,
            Kind::Ready => 10,
            Kind::Compiled => 11,
            Kind::Rejected => 12,
            Kind::Fatal => 13,
            Kind::TestResult => 14,
            Kind::Described => 15,
            Kind::Load => 5,
            Kind::Execute => 6,
            Kind::Loaded => 16,
            Kind::Executed => 17,
            Kind::ExecError => 18,
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            1 => Kind::Init,
            2 => Kind::Compile,
            3 => Kind::Test,
            4 => Kind::Describe,
            10 => Kind::Ready,
            11 => Kind::Compiled,
            12 => Kind::Rejected,
            13 => Kind::Fatal,
            14 => Kind::TestResult,
            15 => Kind::Described,
            5 => Kind::Load,
            6 => Kind::Execute,
            16 => Kind::Loaded,
            17 => Kind::Executed,
            18 => Kind::ExecError,
            _ => return None,
        })
    }
}

/// A protocol violation by the peer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The frame does not start with `XLGW` (e.g. the worker binary is not an xlaguard worker).
    #[error("bad frame magic {0:02x?} (is the worker binary calling xlaguard::compile::worker_main_if_requested()?)")]
    BadMagic([u8; 4]),
    /// Another protocol version.
    #[error("protocol version {got}, expected {VERSION}")]
    BadVersion {
        /// The peer's version.
        got: u8,
    },
    /// A kind this version does not know.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The payload is longer than the bound for its kind.
    #[error("{kind:?} message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The kind.
        kind: Kind,
        /// The announced length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended after {got} of {want} bytes")]
    Truncated {
        /// Bytes expected.
        want: usize,
        /// Bytes received.
        got: usize,
    },
    /// A message of a kind not expected at this point.
    #[error("unexpected {0:?} message")]
    Unexpected(Kind),
    /// The payload does not decode.
    #[error("malformed {kind:?} message: {detail}")]
    Malformed {
        /// The kind.
        kind: Kind,
        /// What was wrong.
        detail: String,
    },
}

/// One decoded frame.
#[derive(Debug)]
pub struct Frame {
    /// The kind.
    pub kind: Kind,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Encodes a frame.
///
/// # Errors
/// [`ProtocolError::TooLarge`] if the payload does not fit a `u32` length.
pub fn encode(kind: Kind, payload: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    let len = u32::try_from(payload.len()).map_err(|_| ProtocolError::TooLarge {
        kind,
        len: payload.len(),
        max: u32::MAX as usize,
    })?;
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(&MAGIC);
    v.push(VERSION);
    v.push(kind.code());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(payload);
    Ok(v)
}

/// Parses a header; `max` gives the bound for each kind.
///
/// # Errors
/// A [`ProtocolError`] for a bad magic, version, kind, or an over-long payload.
pub fn parse_header(
    h: &[u8; HEADER_LEN],
    max: impl Fn(Kind) -> usize,
) -> Result<(Kind, usize), ProtocolError> {
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    if h[4] != VERSION {
        return Err(ProtocolError::BadVersion { got: h[4] });
    }
    let kind = Kind::from_code(h[5]).ok_or(ProtocolError::UnknownKind(h[5]))?;
    if h[6..8] != [0, 0] {
        return Err(ProtocolError::Malformed {
            kind,
            detail: format!("reserved header bytes are {:02x?}, expected zero", &h[6..8]),
        });
    }
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
    let bound = max(kind);
    if len > bound {
        return Err(ProtocolError::TooLarge {
            kind,
            len,
            max: bound,
        });
    }
    Ok((kind, len))
}

/// The header of a frame of `kind` with a `len`-byte payload.
///
/// # Errors
/// [`ProtocolError::TooLarge`] if `len` does not fit a `u32`.
pub fn header(kind: Kind, len: usize) -> Result<[u8; HEADER_LEN], ProtocolError> {
    let n = u32::try_from(len).map_err(|_| ProtocolError::TooLarge {
        kind,
        len,
        max: u32::MAX as usize,
    })?;
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[5] = kind.code();
    h[8..].copy_from_slice(&n.to_le_bytes());
    Ok(h)
}

/// Encodes a frame whose payload is the concatenation of `parts` (one copy of each).
///
/// # Errors
/// [`ProtocolError::TooLarge`] if the payload does not fit a `u32` length.
pub fn encode_parts(kind: Kind, parts: &[&[u8]]) -> Result<Vec<u8>, ProtocolError> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(total).map_err(|_| ProtocolError::TooLarge {
        kind,
        len: total,
        max: u32::MAX as usize,
    })?;
    let mut v = Vec::with_capacity(HEADER_LEN + total);
    v.extend_from_slice(&MAGIC);
    v.push(VERSION);
    v.push(kind.code());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&len.to_le_bytes());
    for p in parts {
        v.extend_from_slice(p);
    }
    Ok(v)
}

/// Reads one frame from a blocking reader (the worker side).
///
/// # Errors
/// `Ok(Err(..))` for a protocol violation, `Err` for an I/O error.
pub fn read_frame(
    r: &mut impl Read,
    max: impl Fn(Kind) -> usize,
) -> std::io::Result<Result<Frame, ProtocolError>> {
    let mut h = [0u8; HEADER_LEN];
    let got = read_full(r, &mut h)?;
    if got < HEADER_LEN {
        return Ok(Err(ProtocolError::Truncated {
            want: HEADER_LEN,
            got,
        }));
    }
    let (kind, len) = match parse_header(&h, max) {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload)?;
    if got < len {
        return Ok(Err(ProtocolError::Truncated { want: len, got }));
    }
    Ok(Ok(Frame { kind, payload }))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        match r.read(&mut buf[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

/// Writes one frame to a blocking writer (the worker side) and flushes it.
///
/// # Errors
/// I/O errors; an over-long payload as `InvalidInput`.
pub fn write_frame(w: &mut impl Write, kind: Kind, payload: &[u8]) -> std::io::Result<()> {
    let bytes = encode(kind, payload)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    w.write_all(&bytes)?;
    w.flush()
}

/// An incremental frame decoder for the parent's non-blocking reads.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    want: Option<(Kind, usize)>,
}

impl Decoder {
    /// Bytes buffered so far.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes; returns a frame once one is complete. Bytes after the first frame are an
    /// error (one request, one reply).
    ///
    /// # Errors
    /// A [`ProtocolError`] as soon as the header is known to be bad.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        max: &impl Fn(Kind) -> usize,
    ) -> Result<Option<Frame>, ProtocolError> {
        self.buf.extend_from_slice(bytes);
        if self.want.is_none() && self.buf.len() >= HEADER_LEN {
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&self.buf[..HEADER_LEN]);
            self.want = Some(parse_header(&h, max)?);
            self.buf.drain(..HEADER_LEN);
            if let Some((_, len)) = self.want {
                self.buf.reserve(len.saturating_sub(self.buf.len()));
            }
        }
        match self.want {
            Some((kind, len)) if self.buf.len() >= len => {
                if self.buf.len() > len {
                    return Err(ProtocolError::Malformed {
                        kind,
                        detail: format!("{} trailing bytes after the frame", self.buf.len() - len),
                    });
                }
                self.want = None;
                Ok(Some(Frame {
                    kind,
                    payload: std::mem::take(&mut self.buf),
                }))
            }
            _ => Ok(None),
        }
    }

    /// The error for an end of stream now.
    pub fn truncated(&self) -> ProtocolError {
        match self.want {
            Some((_, len)) => ProtocolError::Truncated {
                want: len,
                got: self.buf.len(),
            },
            None => ProtocolError::Truncated {
                want: HEADER_LEN,
                got: self.buf.len(),
            },
        }
    }
}

/// A compile request: what a worker compiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileRequest<'a> {
    /// `"mlir"` or `"hlo"`.
    pub format: &'static str,
    /// The encoded `CompileOptionsProto`.
    pub options: &'a [u8],
    /// For a shape-polymorphic StableHLO module: what to refine it to before compiling.
    pub refine: Option<Refinement>,
    /// Arguments to replace by constants before compiling, and the constants' bytes.
    pub bake: Option<(Bake, &'a [u8])>,
    /// The module.
    pub program: &'a [u8],
}

/// What a worker read from a module ([`Kind::Describe`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Description {
    /// The `loc("...")` name of each array argument of the module's (wrapped) main, in order.
    pub arg_names: Vec<Option<String>>,
    /// The messages of its `@shape_assertion`s (JAX's, placeholders unfilled).
    pub assertions: Vec<String>,
}

/// What a shape-polymorphic module is refined to.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refinement {
    /// The concrete type of each `@main` argument (`tensor<3x16xf32>`).
    pub types: Vec<String>,
    /// The dimension variables these types give (`b = 3`), for the export's own shape
    /// constraints when refinement fails before its assertions run.
    pub dims: std::collections::BTreeMap<String, i64>,
}

/// Arguments of a StableHLO module's `@main` to replace by constants before compiling
/// ([`crate::Model`]s whose params are baked in): the worker reads the module with the refiner,
/// drops these arguments from `@main` and defines each as a `stablehlo.constant` with its
/// bytes, so XLA optimizes around the weights as it does for an export with baked weights.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bake {
    /// The arguments, in increasing `index` order; their bytes follow the program, in order.
    pub args: Vec<BakedArg>,
    /// SHA-256 (hex) of all the constants' bytes, in order (cache key).
    pub sha256: String,
}

/// One argument of `@main` replaced by a constant.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BakedArg {
    /// Its position among `@main`'s arguments.
    pub index: usize,
    /// Its type, `tensor<3x3x8xf32>`.
    pub ty: String,
    /// Bytes of its value (little-endian, row-major).
    pub len: usize,
}

/// The payload's head: format byte (0 mlir, 1 hlo, 2 mlir refined first, 3 mlir with constants
/// baked in), options length, options, and for format 2 the length and JSON of the
/// [`Refinement`], for format 3 those of the [`Bake`] and the program's length. The program
/// follows, then (format 3) the constants' bytes.
fn compile_head(
    format: &str,
    options: &[u8],
    refine: Option<&Refinement>,
    bake: Option<(&Bake, usize)>,
) -> Vec<u8> {
    let f = match (format, refine, bake) {
        ("hlo", _, _) => 1u8,
        (_, Some(_), _) => 2u8,
        (_, None, Some(_)) => 3u8,
        _ => 0u8,
    };
    let types = match (refine, bake) {
        (Some(r), _) => serde_json::to_vec(r).ok(),
        (None, Some((b, program_len))) => serde_json::to_vec(&serde_json::json!({
            "bake": b,
            "program_len": program_len,
        }))
        .ok(),
        _ => None,
    }
    .unwrap_or_default();
    let mut v = Vec::with_capacity(9 + options.len() + types.len());
    v.push(f);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    // Options and types are small (bounded by MAX_SMALL on decode).
    v.extend_from_slice(&len(options.len()));
    v.extend_from_slice(options);
    if f >= 2 {
        v.extend_from_slice(&len(types.len()));
        v.extend_from_slice(&types);
    }
    v
}

/// A compile request's payload: [`compile_head`], then the program.
pub fn encode_compile(
    format: &str,
    options: &[u8],
    refine: Option<&Refinement>,
    program: &[u8],
) -> Vec<u8> {
    let mut v = compile_head(format, options, refine, None);
    v.extend_from_slice(program);
    v
}

/// A whole compile frame (header and [`encode_compile`]'s payload) built in one buffer, so a
/// module is copied once on its way to a worker, not once into a payload and again into a frame.
///
/// # Errors
/// [`ProtocolError::TooLarge`] if the payload does not fit a `u32` length.
pub fn encode_compile_frame(
    format: &str,
    options: &[u8],
    refine: Option<&Refinement>,
    bake: Option<(&Bake, &[u8])>,
    program: &[u8],
) -> Result<Vec<u8>, ProtocolError> {
    let head = compile_head(
        format,
        options,
        refine,
        bake.map(|(b, _)| (b, program.len())),
    );
    let constants = bake.map_or(&[][..], |(_, c)| c);
    let payload_len = head
        .len()
        .saturating_add(program.len())
        .saturating_add(constants.len());
    let len = u32::try_from(payload_len).map_err(|_| ProtocolError::TooLarge {
        kind: Kind::Compile,
        len: payload_len,
        max: u32::MAX as usize,
    })?;
    let mut v = Vec::with_capacity(HEADER_LEN.saturating_add(payload_len));
    v.extend_from_slice(&MAGIC);
    v.push(VERSION);
    v.push(Kind::Compile.code());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&head);
    v.extend_from_slice(program);
    v.extend_from_slice(constants);
    Ok(v)
}

/// Decodes [`encode_compile`].
///
/// # Errors
/// [`ProtocolError::Malformed`].
pub fn decode_compile(p: &[u8]) -> Result<CompileRequest<'_>, ProtocolError> {
    let bad = |d: &str| ProtocolError::Malformed {
        kind: Kind::Compile,
        detail: d.to_string(),
    };
    let (format, rewrite) = match p.first() {
        Some(0) => ("mlir", 0),
        Some(1) => ("hlo", 0),
        Some(2) => ("mlir", 2),
        Some(3) => ("mlir", 3),
        Some(_) => return Err(bad("unknown program format")),
        None => return Err(bad("shorter than its header")),
    };
    // A length-prefixed section at the start of `at`: (section, bytes used).
    fn section<'p>(
        at: &'p [u8],
        what: &str,
        bad: &dyn Fn(&str) -> ProtocolError,
    ) -> Result<(&'p [u8], usize), ProtocolError> {
        let n = at
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_le_bytes(b) as usize)
            .ok_or_else(|| bad("shorter than its header"))?;
        if n > MAX_SMALL {
            return Err(bad(&format!("{what} length out of range")));
        }
        let body = at
            .get(4..4 + n)
            .ok_or_else(|| bad(&format!("{what} length out of range")))?;
        Ok((body, 4 + n))
    }
    let rest = p.get(1..).unwrap_or_default();
    let (options, used) = section(rest, "options", &bad)?;
    let mut rest = rest.get(used..).unwrap_or_default();
    let refine = if rewrite == 2 {
        let (json, used) = section(rest, "refinement", &bad)?;
        rest = rest.get(used..).unwrap_or_default();
        Some(serde_json::from_slice(json).map_err(|e| bad(&format!("refinement: {e}")))?)
    } else {
        None
    };
    let mut bake = None;
    if rewrite == 3 {
        #[derive(serde::Deserialize)]
        struct Head {
            bake: Bake,
            program_len: usize,
        }
        let (json, used) = section(rest, "bake", &bad)?;
        rest = rest.get(used..).unwrap_or_default();
        let h: Head = serde_json::from_slice(json).map_err(|e| bad(&format!("bake: {e}")))?;
        let (program, constants) = (
            rest.get(..h.program_len),
            rest.get(h.program_len..).unwrap_or_default(),
        );
        let program = program.ok_or_else(|| bad("program length out of range"))?;
        let want = h
            .bake
            .args
            .iter()
            .try_fold(0usize, |acc, a| acc.checked_add(a.len));
        if want != Some(constants.len()) {
            return Err(bad(&format!(
                "the baked arguments need {want:?} bytes of constants, the frame has {}",
                constants.len()
            )));
        }
        bake = Some((h.bake, constants));
        rest = program;
    }
    Ok(CompileRequest {
        format,
        options,
        refine,
        bake,
        program: rest,
    })
}

/// A compiled reply's payload: stats JSON length, stats JSON, executable bytes.
pub fn encode_compiled(stats_json: &[u8], exe: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + stats_json.len() + exe.len());
    v.extend_from_slice(
        &u32::try_from(stats_json.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    v.extend_from_slice(stats_json);
    v.extend_from_slice(exe);
    v
}

/// Decodes [`encode_compiled`]: `(stats JSON, executable)`.
///
/// # Errors
/// [`ProtocolError::Malformed`].
pub fn decode_compiled(p: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    let bad = |d: &str| ProtocolError::Malformed {
        kind: Kind::Compiled,
        detail: d.to_string(),
    };
    if p.len() < 4 {
        return Err(bad("shorter than its header"));
    }
    let n = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize;
    if n > MAX_SMALL || p.len() - 4 < n {
        return Err(bad("stats length out of range"));
    }
    let exe = &p[4 + n..];
    if exe.is_empty() {
        return Err(bad("empty executable"));
    }
    Ok((&p[4..4 + n], exe))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max(_: Kind) -> usize {
        100
    }

    #[test]
    fn round_trip_in_pieces() {
        let f = encode(Kind::Ready, b"hello").unwrap();
        let mut d = Decoder::default();
        let mut got = None;
        for b in f.chunks(3) {
            if let Some(fr) = d.feed(b, &max).unwrap() {
                got = Some(fr);
            }
        }
        let fr = got.unwrap();
        assert_eq!(
            (fr.kind, fr.payload.as_slice()),
            (Kind::Ready, &b"hello"[..])
        );
    }

    #[test]
    fn violations_are_typed() {
        let mut d = Decoder::default();
        assert!(matches!(
            d.feed(b"running 0 tests\n", &max),
            Err(ProtocolError::BadMagic(_))
        ));
        let mut f = encode(Kind::Ready, b"x").unwrap();
        f[4] = 9;
        assert_eq!(
            Decoder::default().feed(&f, &max).unwrap_err(),
            ProtocolError::BadVersion { got: 9 }
        );
        let mut f = encode(Kind::Ready, b"x").unwrap();
        f[5] = 77;
        assert_eq!(
            Decoder::default().feed(&f, &max).unwrap_err(),
            ProtocolError::UnknownKind(77)
        );
        let f = encode(Kind::Compiled, &[0u8; 101]).unwrap();
        assert!(matches!(
            Decoder::default().feed(&f[..HEADER_LEN], &max),
            Err(ProtocolError::TooLarge { len: 101, .. })
        ));
        let mut f = encode(Kind::Ready, b"x").unwrap();
        f.push(0);
        assert!(matches!(
            Decoder::default().feed(&f, &max),
            Err(ProtocolError::Malformed { .. })
        ));
        let f = encode(Kind::Ready, b"xyz").unwrap();
        let mut d = Decoder::default();
        assert!(d.feed(&f[..13], &max).unwrap().is_none());
        assert_eq!(d.truncated(), ProtocolError::Truncated { want: 3, got: 1 });
    }

    #[test]
    fn compile_payload_round_trip_and_bounds() {
        let p = encode_compile("hlo", &[1, 2], None, b"prog");
        let f = encode_compile_frame("hlo", &[1, 2], None, None, b"prog").unwrap();
        assert_eq!(f, encode(Kind::Compile, &p).unwrap());
        let d = decode_compile(&p).unwrap();
        assert_eq!(
            (d.format, d.options, d.refine, d.program),
            ("hlo", &[1u8, 2][..], None, &b"prog"[..])
        );
        let types = Refinement {
            types: vec!["tensor<i32>".to_string(), "tensor<3x16xf32>".to_string()],
            dims: [("b".to_string(), 3)].into_iter().collect(),
        };
        let p = encode_compile("mlir", &[7], Some(&types), b"ML\xefR");
        let f = encode_compile_frame("mlir", &[7], Some(&types), None, b"ML\xefR").unwrap();
        assert_eq!(f, encode(Kind::Compile, &p).unwrap());
        let d = decode_compile(&p).unwrap();
        assert_eq!(
            (d.format, d.options, d.refine, d.program),
            ("mlir", &[7u8][..], Some(types), &b"ML\xefR"[..])
        );
        let mut bad = p.clone();
        bad[1] = 200;
        assert!(decode_compile(&bad).is_err());
        assert!(decode_compile(&[0, 1]).is_err());
        assert!(decode_compile(&[2, 0, 0, 0, 0, 9, 0, 0, 0]).is_err());
        assert!(decode_compile(&[5, 0, 0, 0, 0]).is_err());
        // Baked constants travel after the program; their lengths must add up.
        let bake = Bake {
            args: vec![
                BakedArg {
                    index: 0,
                    ty: "tensor<2xf32>".into(),
                    len: 8,
                },
                BakedArg {
                    index: 2,
                    ty: "tensor<i8>".into(),
                    len: 1,
                },
            ],
            sha256: "ab".into(),
        };
        let consts = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        let f = encode_compile_frame("mlir", &[7], None, Some((&bake, &consts)), b"prog").unwrap();
        let d = decode_compile(&f[HEADER_LEN..]).unwrap();
        assert_eq!(
            (d.format, d.refine, d.bake, d.program),
            (
                "mlir",
                None,
                Some((bake.clone(), &consts[..])),
                &b"prog"[..]
            )
        );
        let short =
            encode_compile_frame("mlir", &[7], None, Some((&bake, &consts[..8])), b"p").unwrap();
        let e = decode_compile(&short[HEADER_LEN..]).unwrap_err();
        assert!(e.to_string().contains("need Some(9) bytes"), "{e}");
        let c = encode_compiled(b"{}", b"exe");
        assert_eq!(decode_compiled(&c).unwrap(), (&b"{}"[..], &b"exe"[..]));
        assert!(decode_compiled(&encode_compiled(b"{}", b"")).is_err());
    }
}
