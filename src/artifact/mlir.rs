//! StableHLO: the text form's `@main` signature, and a structural check of MLIR bytecode.
//!
//! The text reader parses only the `func.func public @main(...) -> (...)` line (and the
//! `#locN = loc("...")` aliases it refers to), not the body. Bytecode carries no signature this
//! reader can get at cheaply, so only its envelope (magic, version, producer, section table) is
//! checked; PJRT parses the rest.

use std::collections::HashMap;

use super::{
    input_names, output_names, Artifact, ArtifactError, ArtifactKind, LeafPath, PathElem,
    ProgramFormat,
};
use crate::signature::{DType, Dim, Signature, TensorSpec};

const WHAT: &str = "StableHLO text";
const BC: &str = "MLIR bytecode";

/// Does this look like MLIR text (UTF-8 with a `module` or a `func.func`)?
pub fn looks_like_text(bytes: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(bytes) else {
        return false;
    };
    let t = s.trim_start();
    t.starts_with("module") || t.starts_with("#loc") || s.contains("func.func")
}

/// Reads MLIR bytecode: the program is passed on unchanged; the envelope is checked.
pub fn load_bytecode(bytes: &[u8]) -> Result<Artifact, ArtifactError> {
    check_bytecode(bytes)?;
    Ok(Artifact {
        kind: ArtifactKind::StableHloBytecode,
        program: bytes.to_vec(),
        format: ProgramFormat::Mlir,
        signature: None,
        platforms: Vec::new(),
        calling_convention_version: None,
        kept_inputs: None,
        ordered_effects: Vec::new(),
        unordered_effects: Vec::new(),
        nr_devices: 1,
        serialization_version: None,
        uses_shape_polymorphism: false,
        platform_index_dtype: None,
        input_paths: Vec::new(),
    })
}

/// Reads one MLIR bytecode varint (`PrefixVarInt`) at `*pos`.
fn varint(b: &[u8], pos: &mut usize) -> Result<u64, ArtifactError> {
    let trunc = || ArtifactError::truncated(BC, "a varint runs past the end");
    let first = *b.get(*pos).ok_or_else(trunc)?;
    let extra = if first == 0 {
        8
    } else {
        first.trailing_zeros() as usize
    };
    let end = pos
        .checked_add(extra)
        .and_then(|e| e.checked_add(1))
        .ok_or_else(trunc)?;
    let bytes = b.get(*pos..end).ok_or_else(trunc)?;
    *pos = end;
    if first == 0 {
        let mut a = [0u8; 8];
        a.copy_from_slice(bytes.get(1..).ok_or_else(trunc)?);
        return Ok(u64::from_le_bytes(a));
    }
    let mut a = [0u8; 8];
    for (dst, src) in a.iter_mut().zip(bytes) {
        *dst = *src;
    }
    Ok(u64::from_le_bytes(a) >> (extra.saturating_add(1)))
}

/// Checks the bytecode envelope: magic, version, producer, and a section table that covers
/// the bytes exactly and holds the required sections once each.
pub fn check_bytecode(b: &[u8]) -> Result<(), ArtifactError> {
    if !b.starts_with(super::MLIR_BYTECODE_MAGIC) {
        return Err(ArtifactError::corrupt(BC, "missing the magic ML\\xefR"));
    }
    let mut pos = 4usize;
    let version = varint(b, &mut pos)?;
    if version > 100 {
        return Err(ArtifactError::corrupt(
            BC,
            format!("bytecode version {version} is not plausible"),
        ));
    }
    let rest = b.get(pos..).unwrap_or(&[]);
    let nul = rest.iter().position(|&c| c == 0).ok_or_else(|| {
        ArtifactError::truncated(BC, "the producer string has no terminating NUL")
    })?;
    pos = pos.saturating_add(nul).saturating_add(1);
    let mut seen = [false; 9];
    while pos < b.len() {
        let id_byte = *b
            .get(pos)
            .ok_or_else(|| ArtifactError::truncated(BC, "section id"))?;
        pos = pos.saturating_add(1);
        let id = usize::from(id_byte & 0x7f);
        let aligned = id_byte & 0x80 != 0;
        let len = varint(b, &mut pos)?;
        let slot = seen.get_mut(id).ok_or_else(|| {
            ArtifactError::corrupt(BC, format!("unknown section id {id} (expected 0..=8)"))
        })?;
        if *slot {
            return Err(ArtifactError::corrupt(
                BC,
                format!("section {id} appears twice"),
            ));
        }
        *slot = true;
        if aligned {
            let align = varint(b, &mut pos)?;
            if align == 0 || !align.is_power_of_two() || align > 4096 {
                return Err(ArtifactError::corrupt(
                    BC,
                    format!("section {id} has alignment {align}"),
                ));
            }
            let align = usize::try_from(align).unwrap_or(1);
            while pos.checked_rem(align).unwrap_or(0) != 0 {
                match b.get(pos) {
                    Some(0xCB) => pos = pos.saturating_add(1),
                    Some(x) => {
                        return Err(ArtifactError::corrupt(
                            BC,
                            format!("padding byte {x:#04x} in section {id} (expected 0xcb)"),
                        ))
                    }
                    None => return Err(ArtifactError::truncated(BC, "section padding")),
                }
            }
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= b.len())
            .ok_or_else(|| {
                ArtifactError::truncated(
                    BC,
                    format!(
                        "section {id} announces {len} bytes at offset {pos}; the file has {}",
                        b.len()
                    ),
                )
            })?;
        pos = end;
    }
    // Required as in MLIR's reader: string, dialect, attribute/type (+ offsets), IR; and the
    // properties section from bytecode version 5 (native properties encoding) on.
    let required = [
        (0, "string", true),
        (1, "dialect", true),
        (2, "attribute/type", true),
        (3, "attribute/type offset", true),
        (4, "IR", true),
        (8, "properties", version >= 5),
    ];
    for (id, name, needed) in required {
        if needed && !seen.get(id).copied().unwrap_or(false) {
            return Err(ArtifactError::truncated(
                BC,
                format!("the required {name} section (id {id}) is missing"),
            ));
        }
    }
    Ok(())
}

/// Walks `b` from `from`, skipping string literals and `->`, and calls `visit(i, c, depth)` for
/// every other byte with the bracket depth ((), <>, {}, []) after it; stops at the first `true`
/// and returns its index.
fn walk_brackets(
    b: &[u8],
    from: usize,
    mut visit: impl FnMut(usize, u8, i64) -> bool,
) -> Option<usize> {
    let mut depth: i64 = 0;
    let mut i = from;
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => {
                i = skip_string(b, i);
                continue;
            }
            b'-' if b.get(i.saturating_add(1)) == Some(&b'>') => {
                i = i.saturating_add(2);
                continue;
            }
            b'(' | b'<' | b'{' | b'[' => depth = depth.saturating_add(1),
            b')' | b'>' | b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if visit(i, c, depth) {
            return Some(i);
        }
        i = i.saturating_add(1);
    }
    None
}

/// Splits `s` at top-level occurrences of `sep`, respecting (), <>, {}, [] and strings.
fn split_top(s: &str, sep: u8) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0usize;
    walk_brackets(s.as_bytes(), 0, |i, c, depth| {
        if c == sep && depth == 0 {
            out.push(s.get(start..i).unwrap_or(""));
            start = i.saturating_add(1);
        }
        false
    });
    out.push(s.get(start..).unwrap_or(""));
    out
}

/// Index just past the string literal starting at `i` (a `"`).
fn skip_string(b: &[u8], i: usize) -> usize {
    let mut j = i.saturating_add(1);
    while let Some(&c) = b.get(j) {
        match c {
            b'\\' => j = j.saturating_add(2),
            b'"' => return j.saturating_add(1),
            _ => j = j.saturating_add(1),
        }
    }
    b.len()
}

/// Index of the bracket closing the one at `open`, or `None`.
fn matching_close(b: &[u8], open: usize) -> Option<usize> {
    walk_brackets(b, open, |_, c, depth| {
        matches!(c, b')' | b'>' | b'}' | b']') && depth == 0
    })
}

/// Decodes an MLIR string literal body (`"..."` with escapes).
fn unquote(s: &str) -> Option<String> {
    let inner = s.trim().strip_prefix('"')?.strip_suffix('"')?;
    let mut out = Vec::new();
    let b = inner.as_bytes();
    let mut i = 0usize;
    while let Some(&c) = b.get(i) {
        if c == b'\\' {
            let n = *b.get(i.saturating_add(1))?;
            match n {
                b'"' | b'\\' => {
                    out.push(n);
                    i = i.saturating_add(2);
                }
                b'n' => {
                    out.push(b'\n');
                    i = i.saturating_add(2);
                }
                b't' => {
                    out.push(b'\t');
                    i = i.saturating_add(2);
                }
                _ => {
                    let hex = inner.get(i.saturating_add(1)..i.saturating_add(3))?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i = i.saturating_add(3);
                }
            }
        } else {
            out.push(c);
            i = i.saturating_add(1);
        }
    }
    String::from_utf8(out).ok()
}

/// Parses the value of a `loc(...)`: the name of a `loc("name")` or `loc("name"(...))`.
fn loc_name(inner: &str, aliases: &HashMap<String, String>) -> Option<String> {
    let t = inner.trim();
    if t.starts_with('#') {
        return aliases.get(t).cloned();
    }
    if t.starts_with('"') {
        let end = skip_string(t.as_bytes(), 0);
        let name = unquote(t.get(..end)?)?;
        return (!name.is_empty()).then_some(name);
    }
    None
}

/// `#locN = loc("name")` aliases, by alias.
fn loc_aliases(text: &str) -> HashMap<String, String> {
    let mut raw: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if !line.starts_with("#loc") {
            continue;
        }
        let Some((alias, val)) = line.split_once('=') else {
            continue;
        };
        let val = val.trim();
        let Some(inner) = val.strip_prefix("loc(").and_then(|v| v.strip_suffix(')')) else {
            continue;
        };
        raw.insert(alias.trim().to_string(), inner.trim().to_string());
    }
    let mut out = HashMap::new();
    for (alias, inner) in &raw {
        // Follow alias chains a few steps.
        let mut cur = inner.clone();
        for _ in 0..8 {
            match raw.get(cur.as_str()) {
                Some(next) if cur.starts_with('#') => cur = next.clone(),
                _ => break,
            }
        }
        if let Some(name) = loc_name(&cur, &HashMap::new()) {
            out.insert(alias.clone(), name);
        }
    }
    out
}

/// Parses a JAX key path (`params['w'][0].k`) into its base and steps.
pub(crate) fn parse_keystr(s: &str) -> Option<(String, Vec<PathElem>)> {
    let b = s.as_bytes();
    let base_end = b
        .iter()
        .position(|&c| c == b'[' || c == b'.')
        .unwrap_or(b.len());
    let base = s.get(..base_end)?.to_string();
    let mut elems = Vec::new();
    let mut i = base_end;
    while let Some(&c) = b.get(i) {
        if c == b'.' {
            let start = i.saturating_add(1);
            let end = b
                .iter()
                .skip(start)
                .position(|&c| c == b'[' || c == b'.')
                .map_or(b.len(), |p| p.saturating_add(start));
            let name = s.get(start..end)?;
            if name.is_empty() {
                return None;
            }
            elems.push(PathElem::Attr(name.to_string()));
            i = end;
        } else if c == b'[' {
            let q = *b.get(i.saturating_add(1))?;
            if q == b'\'' || q == b'"' {
                let start = i.saturating_add(2);
                let rel = b.iter().skip(start).position(|&c| c == q)?;
                let end = start.saturating_add(rel);
                if b.get(end.saturating_add(1)) != Some(&b']') {
                    return None;
                }
                elems.push(PathElem::Key(s.get(start..end)?.to_string()));
                i = end.saturating_add(2);
            } else {
                let start = i.saturating_add(1);
                let rel = b.iter().skip(start).position(|&c| c == b']')?;
                let end = start.saturating_add(rel);
                let n: usize = s.get(start..end)?.trim().parse().ok()?;
                elems.push(PathElem::Index(n));
                i = end.saturating_add(1);
            }
        } else {
            return None;
        }
    }
    Some((base, elems))
}

/// A parsed tensor type.
enum Ty {
    Tensor(DType, Vec<Dim>),
    Token,
}

fn parse_type(t: &str) -> Result<Ty, ArtifactError> {
    let t = t.trim();
    if t == "!stablehlo.token" || t == "!mhlo.token" {
        return Ok(Ty::Token);
    }
    let inner = t
        .strip_prefix("tensor<")
        .and_then(|r| r.strip_suffix('>'))
        .ok_or_else(|| {
            ArtifactError::unsupported(
                format!("argument type {t}"),
                "only ranked tensors and tokens are supported in @main",
            )
        })?;
    let mut body = split_top(inner, b',')
        .into_iter()
        .next()
        .unwrap_or("")
        .trim();
    let mut shape = Vec::new();
    // Leading `NNNx` / `?x` groups are dims; the rest is the element type.
    while let Some((d, rest)) = body.split_once('x') {
        let d = d.trim();
        if d == "?" {
            shape.push(Dim::Symbolic(format!("?{}", shape.len())));
        } else if !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()) {
            let n: u64 = d.parse().map_err(|_| {
                ArtifactError::unsupported("dimensions over 2^64", format!("{d} in {t}"))
            })?;
            shape.push(Dim::Static(n));
        } else {
            break;
        }
        body = rest;
    }
    let elem = body.trim();
    let dtype = DType::from_mlir(elem).ok_or_else(|| {
        ArtifactError::unsupported(
            format!("element type {elem}"),
            "supported: i1, (u)i8..64, f16, bf16, f32, f64",
        )
    })?;
    Ok(Ty::Tensor(dtype, shape))
}

/// One `@main` argument or result: type, attributes, location.
struct Entry {
    ty: Ty,
    attrs: HashMap<String, String>,
    loc: Option<String>,
}

fn parse_attrs(s: &str) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for item in split_top(s, b',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        match item.split_once('=') {
            Some((k, v)) => {
                let v = v.trim();
                let v = unquote(v).unwrap_or_else(|| v.to_string());
                m.insert(k.trim().to_string(), v);
            }
            None => {
                m.insert(item.to_string(), "unit".to_string());
            }
        }
    }
    m
}

/// Parses `TYPE [{attrs}] [loc(...)]`.
fn parse_entry(s: &str, aliases: &HashMap<String, String>) -> Result<Entry, ArtifactError> {
    let s = s.trim();
    let b = s.as_bytes();
    // The type ends at the first top-level space or `{`.
    let mut i = 0usize;
    let mut depth: i64 = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'<' | b'(' | b'[' => depth = depth.saturating_add(1),
            b'>' | b')' | b']' => depth = depth.saturating_sub(1),
            b' ' | b'{' if depth == 0 => break,
            _ => {}
        }
        i = i.saturating_add(1);
    }
    let ty = parse_type(s.get(..i).unwrap_or(""))?;
    let mut rest = s.get(i..).unwrap_or("").trim_start();
    let mut attrs = HashMap::new();
    if rest.starts_with('{') {
        let close = matching_close(rest.as_bytes(), 0)
            .ok_or_else(|| ArtifactError::corrupt(WHAT, "unclosed attribute dictionary"))?;
        attrs = parse_attrs(rest.get(1..close).unwrap_or(""));
        rest = rest
            .get(close.saturating_add(1)..)
            .unwrap_or("")
            .trim_start();
    }
    let mut loc = None;
    if let Some(r) = rest.strip_prefix("loc(") {
        let inner = r.strip_suffix(')').unwrap_or(r);
        loc = loc_name(inner, aliases);
    }
    Ok(Entry { ty, attrs, loc })
}

/// The `loc("...")` names of the arrays a `jax.export` module's wrapped main takes, in order:
/// when JAX wraps `@main` (shape polymorphism, effects) the public `@main` arguments are
/// `loc(unknown)` and the names sit on `@_wrapped_jax_export_main`, after its dimension
/// variables (`jax.global_constant`) and tokens, which are skipped. Falls back to `@main`'s own
/// arguments; empty when neither is found.
pub(crate) fn wrapped_main_arg_locs(text: &str) -> Vec<Option<String>> {
    let aliases = loc_aliases(text);
    // The definitions (`call @_wrapped_jax_export_main(...)` inside @main is not one).
    let start = [
        "func.func private @_wrapped_jax_export_main(",
        "func.func public @main(",
    ]
    .iter()
    .find_map(|p| {
        text.find(p)
            .map(|i| i.saturating_add(p.len()).saturating_sub(1))
    });
    let Some(start) = start else {
        return Vec::new();
    };
    let Some(close) = matching_close(text.as_bytes(), start) else {
        return Vec::new();
    };
    let args = text.get(start.saturating_add(1)..close).unwrap_or("");
    split_top(args, b',')
        .into_iter()
        .filter_map(|a| {
            let (_, rest) = a.split_once(':')?;
            let e = parse_entry(rest, &aliases).ok()?;
            let skip = e.attrs.contains_key("jax.global_constant")
                || e.attrs.contains_key("jax.token")
                || matches!(e.ty, Ty::Token);
            (!skip).then_some(e.loc)
        })
        .collect()
}

fn module_int_attr(header: &str, key: &str) -> Option<u32> {
    let at = header.find(key)?;
    let rest = header.get(at.saturating_add(key.len())..)?.trim_start();
    let rest = rest.strip_prefix('=')?.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// The byte offset of the `(` that opens the argument list of the module's own public
/// `@main`: a `func.func @main` or `func.func public @main` directly in the top-level module
/// body, outside comments and string literals. One nested in another op's region, one in a
/// comment or a string, or a private one is not it; two are an error.
fn find_main(text: &str) -> Result<usize, ArtifactError> {
    let b = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'$';
    let at = |i: usize| b.get(i).copied();
    let mut module = false; // an explicit `module {` at the top level
    let mut depth = 0usize;
    let mut found: Vec<(usize, usize)> = Vec::new(); // (depth, offset)
    let mut i = 0usize;
    while let Some(c) = at(i) {
        let next = i.saturating_add(1);
        match c {
            b'/' if at(next) == Some(b'/') => {
                i = text
                    .get(i..)
                    .and_then(|t| t.find('\n'))
                    .map_or(b.len(), |n| i.saturating_add(n));
                continue;
            }
            b'"' => {
                i = next;
                while let Some(c) = at(i).filter(|&c| c != b'"') {
                    i = i.saturating_add(if c == b'\\' { 2 } else { 1 });
                }
            }
            b'{' => depth = depth.saturating_add(1),
            b'}' => depth = depth.saturating_sub(1),
            c if c.is_ascii_alphabetic()
                && i.checked_sub(1).and_then(at).is_none_or(|p| !ident(p)) =>
            {
                let end = b
                    .get(i..)
                    .and_then(|t| t.iter().position(|&c| !ident(c)))
                    .map_or(b.len(), |n| i.saturating_add(n));
                let word = text.get(i..end).unwrap_or("");
                module |= depth == 0 && (word == "module" || word == "builtin.module");
                if word == "func.func" {
                    let rest = text.get(end..).unwrap_or("").trim_start();
                    let rest = rest.strip_prefix("public").map_or(rest, str::trim_start);
                    if let Some(after) = rest.strip_prefix("@main") {
                        let after = after.trim_start();
                        if after.starts_with('(') {
                            found.push((depth, text.len().saturating_sub(after.len())));
                        }
                    }
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i = i.saturating_add(1);
    }
    // The module body is inside `module {`, or the whole text when the module is implicit.
    let body = usize::from(module);
    let found: Vec<usize> = found
        .into_iter()
        .filter(|&(d, _)| d == body)
        .map(|(_, at)| at)
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(ArtifactError::corrupt(
            WHAT,
            "expected a `func.func public @main(...)` in the module body, found none",
        )),
        more => Err(ArtifactError::corrupt(
            WHAT,
            format!("the module body defines @main {} times", more.len()),
        )),
    }
}

/// Reads StableHLO text: the signature of `@main`.
///
/// # Errors
/// [`ArtifactError::Corrupt`] when there is no public `@main` or its signature does not parse,
/// [`ArtifactError::Unsupported`] for element types or argument kinds not supported.
pub fn load_text(bytes: &[u8]) -> Result<Artifact, ArtifactError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ArtifactError::corrupt(WHAT, format!("not UTF-8: {e}")))?;
    let start = find_main(text)?;
    let b = text.as_bytes();
    let close = matching_close(b, start).ok_or_else(|| {
        ArtifactError::truncated(WHAT, "the argument list of @main is not closed")
    })?;
    let args_s = text.get(start.saturating_add(1)..close).unwrap_or("");
    let after = text
        .get(close.saturating_add(1)..)
        .unwrap_or("")
        .trim_start();
    let results_s: Vec<&str> = match after.strip_prefix("->") {
        None => Vec::new(),
        Some(r) => {
            let r = r.trim_start();
            if r.starts_with('(') {
                let c = matching_close(r.as_bytes(), 0).ok_or_else(|| {
                    ArtifactError::truncated(WHAT, "the result list of @main is not closed")
                })?;
                split_top(r.get(1..c).unwrap_or(""), b',')
            } else {
                let end = r
                    .find(|c: char| c.is_whitespace() || c == '{')
                    .unwrap_or(r.len());
                vec![r.get(..end).unwrap_or("")]
            }
        }
    };
    let header = text.get(..start).unwrap_or("");
    let aliases = loc_aliases(text);

    let mut inputs_paths = Vec::new();
    let mut inputs_types = Vec::new();
    let mut platform_index_dtype = None;
    let mut ordered_effects = Vec::new();
    for (i, a) in split_top(args_s, b',').into_iter().enumerate() {
        let a = a.trim();
        if a.is_empty() {
            continue;
        }
        let (name, rest) = a.split_once(':').ok_or_else(|| {
            ArtifactError::corrupt(WHAT, format!("argument {i} of @main has no type: {a:?}"))
        })?;
        let e = parse_entry(rest, &aliases)?;
        let (dtype, shape) = match e.ty {
            Ty::Token => {
                ordered_effects.push(format!("effect token {}", name.trim()));
                continue;
            }
            Ty::Tensor(d, s) => (d, s),
        };
        if let Some(g) = e.attrs.get("jax.global_constant") {
            if g == "_platform_index" && inputs_types.is_empty() && shape.is_empty() {
                platform_index_dtype = Some(dtype);
                continue;
            }
            return Err(ArtifactError::unsupported(
                "global constant arguments",
                format!("argument {} is the global constant {g:?}", name.trim()),
            ));
        }
        if e.attrs.contains_key("jax.token") {
            ordered_effects.push(format!("effect token {}", name.trim()));
            continue;
        }
        let n = inputs_types.len();
        let path = match e.loc.as_deref().map(|l| (l, parse_keystr(l))) {
            Some((_, Some((base, elems)))) if !base.is_empty() => LeafPath { base, elems },
            Some((l, _)) => LeafPath {
                base: l.to_string(),
                elems: Vec::new(),
            },
            None => LeafPath {
                base: format!("arg{n}"),
                elems: Vec::new(),
            },
        };
        inputs_paths.push(path);
        inputs_types.push((dtype, shape));
    }

    let mut out_raw = Vec::new();
    let mut out_types = Vec::new();
    for r in results_s {
        if r.trim().is_empty() {
            continue;
        }
        let e = parse_entry(r, &aliases)?;
        let (dtype, shape) = match e.ty {
            Ty::Token => continue,
            Ty::Tensor(d, s) => (d, s),
        };
        if e.attrs.contains_key("jax.token") {
            continue;
        }
        let elems = e
            .attrs
            .get("jax.result_info")
            .and_then(|ri| parse_keystr(ri))
            .map(|(_, elems)| elems)
            .unwrap_or_default();
        out_raw.push(elems);
        out_types.push((dtype, shape));
    }
    let in_names = input_names(&inputs_paths);
    let input_paths = inputs_paths;
    let out_names = output_names(&out_raw);
    let mk = |types: Vec<(DType, Vec<Dim>)>, names: Vec<String>| -> Vec<TensorSpec> {
        types
            .into_iter()
            .zip(names)
            .map(|((dtype, shape), name)| TensorSpec {
                name,
                dtype,
                shape,
                jax_type: None,
            })
            .collect()
    };
    let signature = Signature {
        inputs: mk(inputs_types, in_names),
        outputs: mk(out_types, out_names),
    };
    let uses_shape_polymorphism = signature
        .inputs
        .iter()
        .chain(&signature.outputs)
        .any(TensorSpec::is_polymorphic);
    let partitions = module_int_attr(header, "mhlo.num_partitions").unwrap_or(1);
    let replicas = module_int_attr(header, "mhlo.num_replicas").unwrap_or(1);
    Ok(Artifact {
        kind: ArtifactKind::StableHloText,
        program: bytes.to_vec(),
        format: ProgramFormat::Mlir,
        signature: Some(signature),
        platforms: Vec::new(),
        calling_convention_version: None,
        kept_inputs: None,
        ordered_effects,
        unordered_effects: Vec::new(),
        nr_devices: partitions.saturating_mul(replicas).max(1),
        serialization_version: None,
        uses_shape_polymorphism,
        platform_index_dtype,
        input_paths,
    })
}

/// Rewrites a StableHLO module's text so that some of `@main`'s arguments become constants:
/// each `(index, type, bytes)` is dropped from the signature (with its attributes) and defined
/// at the top of the body as `%argN = stablehlo.constant dense<"0x..."> : type`, under the name
/// the body already uses. `baked` must be in increasing index order.
///
/// # Errors
/// A message when `@main` cannot be found, an index is out of range, an argument is not named
/// `%argN`, or a value is empty or boolean (dense hex literals hold neither faithfully).
pub fn bake_main_args(text: &str, baked: &[(usize, &str, &[u8])]) -> Result<String, String> {
    use std::fmt::Write as _;
    let open = find_main(text).map_err(|e| e.to_string())?;
    let b = text.as_bytes();
    let close = matching_close(b, open).ok_or("@main's argument list is not closed")?;
    let args = split_top(text.get(open.saturating_add(1)..close).unwrap_or(""), b',');
    let mut kept = Vec::with_capacity(args.len());
    let mut consts = String::new();
    let mut next = baked.iter().peekable();
    for (i, a) in args.iter().enumerate() {
        let Some(&&(_, ty, bytes)) = next.peek().filter(|(j, _, _)| *j == i) else {
            kept.push(a.trim());
            continue;
        };
        next.next();
        let a = a.trim();
        let name = a.split(':').next().unwrap_or("").trim();
        if !(name.starts_with('%') && name.len() > 1) {
            return Err(format!("@main argument {i} is not a named value: {a}"));
        }
        if bytes.is_empty() || ty.ends_with("xi1>") || ty == "tensor<i1>" {
            return Err(format!(
                "@main argument {i} ({ty}) cannot be a dense hex constant: empty or boolean"
            ));
        }
        let _ = write!(consts, "    {name} = stablehlo.constant dense<\"0x");
        for byte in bytes {
            let _ = write!(consts, "{byte:02X}");
        }
        let _ = writeln!(consts, "\"> : {ty}");
    }
    if let Some((i, _, _)) = next.next() {
        return Err(format!(
            "@main has {} arguments; cannot bake argument {i}",
            args.len()
        ));
    }
    // The body's `{`: the first one at depth 0 after the signature that does not open
    // `attributes {...}`.
    let body = walk_brackets(b, close.saturating_add(1), |i, c, depth| {
        c == b'{'
            && depth == 1
            && !text
                .get(..i)
                .unwrap_or("")
                .trim_end()
                .ends_with("attributes")
    })
    .ok_or("@main has no body")?;
    let mut out = String::with_capacity(text.len().saturating_add(consts.len()));
    out.push_str(text.get(..=open).unwrap_or(""));
    out.push_str(&kept.join(", "));
    out.push_str(text.get(close..=body).unwrap_or(""));
    out.push('\n');
    out.push_str(&consts);
    // The body's own line break follows the constants' (which end with one).
    let rest = text.get(body.saturating_add(1)..).unwrap_or("");
    out.push_str(rest.strip_prefix('\n').unwrap_or(rest));
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn baking_main_args_turns_them_into_constants() {
        let text = "module @m {\n  func.func public @main(%arg0: tensor<2xf32> {mhlo.sharding = \"{replicated}\"} loc(\"w\"), %arg1: tensor<2xf32> loc(\"x\"), %arg2: tensor<i8>) -> (tensor<2xf32> {jax.result_info = \"\"}) attributes {a = {b}} {\n    %0 = stablehlo.add %arg0, %arg1 : tensor<2xf32>\n    return %0 : tensor<2xf32>\n  }\n}\n";
        let w = [0u8, 0, 128, 63, 0, 0, 0, 64];
        let out =
            bake_main_args(text, &[(0, "tensor<2xf32>", &w), (2, "tensor<i8>", &[7])]).unwrap();
        assert!(
            out.contains("@main(%arg1: tensor<2xf32> loc(\"x\")) -> (tensor<2xf32> {jax.result_info = \"\"}) attributes {a = {b}} {\n    %arg0 = stablehlo.constant dense<\"0x0000803F00000040\"> : tensor<2xf32>\n    %arg2 = stablehlo.constant dense<\"0x07\"> : tensor<i8>\n    %0 = stablehlo.add"),
            "{out}"
        );
        assert!(bake_main_args(text, &[(3, "tensor<i8>", &[7])])
            .unwrap_err()
            .contains("has 3 arguments"));
        assert!(bake_main_args(text, &[(0, "tensor<2xi1>", &[1, 0])])
            .unwrap_err()
            .contains("boolean"));
        assert!(bake_main_args("func.func @f() {}", &[]).is_err());
    }

    #[test]
    fn keystr() {
        let (b, e) = parse_keystr("params['w'][0].k").unwrap();
        assert_eq!(b, "params");
        assert_eq!(
            e,
            vec![
                PathElem::Key("w".into()),
                PathElem::Index(0),
                PathElem::Attr("k".into())
            ]
        );
        assert_eq!(parse_keystr("x").unwrap().1, vec![]);
        assert!(parse_keystr("x[").is_none());
    }

    #[test]
    fn main_is_the_module_body_one_not_a_comment_string_or_nested_one() {
        let t = r#"// func.func public @main(%arg0: tensor<4xi32>) -> tensor<4xi32>
module @m attributes {doc = "func.func public @main(%a: tensor<2xi8>)"} {
  func.func private @helper(%arg0: tensor<4xf32>) -> tensor<4xf32> {
    "some.op"() ({
      func.func @main(%arg0: tensor<9xi64>) -> tensor<9xi64>
    }) : () -> ()
    return %arg0 : tensor<4xf32>
  }
  func.func private @main_impl(%arg0: tensor<3xf16>) -> tensor<3xf16>
  func.func public @main(%arg0: tensor<4xf32> loc("x")) -> (tensor<4xf32>) {
    return %arg0 : tensor<4xf32>
  }
}"#;
        let s = load_text(t.as_bytes()).unwrap().signature.unwrap();
        assert_eq!(s.inputs.len(), 1);
        assert_eq!(s.inputs[0].type_string(), "float32[4]");
        // Without a module wrapper the body is the whole text.
        let bare = "func.func @main(%arg0: tensor<2xi32>) -> tensor<2xi32> {\n}\n";
        let s = load_text(bare.as_bytes()).unwrap().signature.unwrap();
        assert_eq!(s.inputs[0].type_string(), "int32[2]");
        // Only in a comment: none.
        let e = load_text(b"module {\n// func.func public @main(%a: tensor<f32>)\n}").unwrap_err();
        assert!(e.to_string().contains("found none"), "{e}");
        let two = "module {\n func.func @main(%a: tensor<f32>) {\n}\n func.func public @main(%a: tensor<f32>) {\n}\n}";
        let e = load_text(two.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("2 times"), "{e}");
    }

    #[test]
    fn wrapped_main_names_skip_dimension_variables_and_the_call_site() {
        let t = r#"#loc7 = loc("y")
module @m {
  func.func public @main(%arg0: tensor<?x4xf32> loc(unknown), %arg1: tensor<?x4xf32> loc(unknown)) -> tensor<f32> {
    %8 = call @_wrapped_jax_export_main(%0, %arg0, %arg1) : (tensor<i32>, tensor<?x4xf32>, tensor<?x4xf32>) -> tensor<f32>
  }
  func.func private @_wrapped_jax_export_main(%arg0: tensor<i32> {jax.global_constant = "b"} loc(unknown), %arg1: tensor<?x4xf32> loc("x"), %arg2: tensor<?x4xf32> loc(#loc7)) -> tensor<f32> {
  }
}"#;
        assert_eq!(
            wrapped_main_arg_locs(t),
            [Some("x".to_string()), Some("y".to_string())]
        );
        assert!(wrapped_main_arg_locs("module {}").is_empty());
    }

    #[test]
    fn text_signature() {
        let t = r#"#loc1 = loc("x")
module @m attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 1 : i32} {
  func.func public @main(%arg0: tensor<i32> {jax.global_constant = "_platform_index"} loc(unknown), %arg1: tensor<8x?xf32> {mhlo.sharding = "{replicated}"} loc(#loc1), %arg2: tensor<bf16> loc("d['k']")) -> (tensor<f32> {jax.result_info = "result['a']"}, tensor<3xi1> {jax.result_info = "result[1]"}) {
  }
}"#;
        let a = load_text(t.as_bytes()).unwrap();
        let s = a.signature.unwrap();
        assert_eq!(a.platform_index_dtype, Some(DType::I32));
        assert_eq!(s.inputs[0].name, "x");
        assert_eq!(s.inputs[0].shape[1], Dim::Symbolic("?1".into()));
        // Two arguments: full JAX names.
        assert_eq!(s.inputs[1].name, "d['k']");
        assert_eq!(s.outputs[0].name, "a");
        assert_eq!(s.outputs[1].name, "out1");
        assert!(a.uses_shape_polymorphism);
    }
}
