//! Structure-aware (`arbitrary`) KServe v2 requests against fixture signatures: random names,
//! datatypes, shapes, element values, JSON (flat or nested) or binary data, binary sizes,
//! header lengths, outputs. The request is encoded here, independently of the library.
//!
//! What must hold: a request built entirely from the signature (each input once, its datatype,
//! its shape, exact sizes and header) is accepted; any accepted request carries, for every
//! input, exactly the element bytes that were encoded; refusals are typed
//! (`check_request`).
#![no_main]

use std::fmt::Write as _;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use xlaguard::server::wire::{datatype_name, parse_datatype, wire_shape};
use xlaguard::signature::{DType, Dim, Signature};

const DATATYPES: [&str; 14] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64", "BF16", "BYTES",
];

#[derive(Arbitrary, Debug)]
enum Choice {
    /// The signature's (or the protocol's) own value, by index.
    Known(u8),
    /// Anything.
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Shape {
    /// The spec's shape; symbolic dimensions take `1 + value % 8`.
    Spec(u8),
    /// Any dimensions.
    Dims(Vec<i64>),
}

#[derive(Arbitrary, Debug)]
enum Data {
    Json { nested: bool },
    Binary { size_delta: i8 },
    Both,
    Neither,
}

#[derive(Arbitrary, Debug)]
struct Input {
    name: Choice,
    datatype: Choice,
    shape: Shape,
    data: Data,
    values: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Output {
    name: Choice,
    binary: Option<bool>,
    classification: bool,
}

#[derive(Arbitrary, Debug)]
enum Header {
    Exact,
    Absent,
    Len(u16),
}

#[derive(Arbitrary, Debug)]
struct Request {
    fixture: u8,
    id: Option<String>,
    inputs: Vec<Input>,
    outputs: Option<Vec<Output>>,
    binary_output: Option<bool>,
    header: Header,
    trailing: Vec<u8>,
}

/// One encoded input: its JSON object, its binary part, the bytes the parser must produce, and
/// whether it is exactly what the signature asks for.
struct Encoded {
    name: String,
    json: String,
    binary: Vec<u8>,
    expected: Vec<u8>,
    valid: bool,
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Element `i` of `bytes` (little-endian, `d.size()` bytes) as a JSON value; NaN elements are
/// rewritten to 0 in `bytes` (the protocol's NaN has no single bit pattern to compare).
fn element(d: DType, e: &mut [u8]) -> String {
    let float = |v: f64| {
        if v.is_infinite() {
            if v > 0.0 {
                "\"Infinity\"".into()
            } else {
                "\"-Infinity\"".into()
            }
        } else {
            format!("{v:?}")
        }
    };
    match d {
        DType::Bool => {
            e[0] &= 1;
            (if e[0] == 1 { "true" } else { "false" }).into()
        }
        DType::U8 => e[0].to_string(),
        DType::I8 => i8::from_le_bytes([e[0]]).to_string(),
        DType::U16 => u16::from_le_bytes([e[0], e[1]]).to_string(),
        DType::I16 => i16::from_le_bytes([e[0], e[1]]).to_string(),
        DType::U32 => u32::from_le_bytes(e[..4].try_into().unwrap()).to_string(),
        DType::I32 => i32::from_le_bytes(e[..4].try_into().unwrap()).to_string(),
        DType::U64 => u64::from_le_bytes(e[..8].try_into().unwrap()).to_string(),
        DType::I64 => i64::from_le_bytes(e[..8].try_into().unwrap()).to_string(),
        DType::F16 | DType::BF16 => {
            let bits = u16::from_le_bytes([e[0], e[1]]);
            let v = if d == DType::F16 {
                half::f16::from_bits(bits).to_f64()
            } else {
                half::bf16::from_bits(bits).to_f64()
            };
            if v.is_nan() {
                e.fill(0);
                return "0".into();
            }
            float(v)
        }
        DType::F32 => {
            let v = f32::from_le_bytes(e[..4].try_into().unwrap());
            if v.is_nan() {
                e.fill(0);
                return "0".into();
            }
            float(f64::from(v))
        }
        DType::F64 => {
            let v = f64::from_le_bytes(e[..8].try_into().unwrap());
            if v.is_nan() {
                e.fill(0);
                return "0".into();
            }
            float(v)
        }
        // Complex travels as its parts; a dtype the protocol does not name has no JSON form.
        _ => unreachable!("{d} is not a wire element type"),
    }
}

/// `values` as nested JSON arrays of `dims`.
fn nest(dims: &[u64], values: &[String], out: &mut String) {
    match dims.split_first() {
        None => out.push_str(&values[0]),
        Some((&n, rest)) => {
            let per: usize = rest.iter().map(|&d| d as usize).product();
            out.push('[');
            for i in 0..n as usize {
                if i > 0 {
                    out.push(',');
                }
                nest(rest, &values[i * per..(i + 1) * per], out);
            }
            out.push(']');
        }
    }
}

fn encode(sig: &Signature, input: &Input) -> Encoded {
    let mut valid = true;
    let (name, spec) = match &input.name {
        Choice::Known(i) if !sig.inputs.is_empty() => {
            let s = &sig.inputs[usize::from(*i) % sig.inputs.len()];
            (s.name.clone(), Some(s))
        }
        Choice::Known(_) => (String::new(), None),
        Choice::Other(s) => {
            valid = false;
            (s.clone(), sig.inputs.iter().find(|x| &x.name == s))
        }
    };
    let spec_datatype = spec.map(|s| datatype_name(s.dtype));
    let datatype = match &input.datatype {
        Choice::Known(i) => {
            let d = DATATYPES[usize::from(*i) % DATATYPES.len()];
            // Index 0 of "Known" means the spec's own datatype.
            match (i, spec_datatype) {
                (0, Some(s)) => s.to_string(),
                _ => {
                    valid &= Some(d) == spec_datatype;
                    d.to_string()
                }
            }
        }
        Choice::Other(s) => {
            valid &= Some(s.as_str()) == spec_datatype;
            s.clone()
        }
    };
    let shape: Vec<i64> = match (&input.shape, spec) {
        (Shape::Spec(v), Some(s)) => {
            let dims: Vec<u64> = s
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Static(n) => *n,
                    Dim::Symbolic(_) => 1 + u64::from(*v % 8),
                })
                .collect();
            wire_shape(s.dtype, &dims)
                .iter()
                .map(|&d| d as i64)
                .collect()
        }
        (Shape::Spec(_), None) => Vec::new(),
        (Shape::Dims(d), _) => {
            valid = false;
            d.clone()
        }
    };
    let part = parse_datatype(&datatype).unwrap_or(DType::U8);
    let count = shape
        .iter()
        .try_fold(1u64, |acc, &d| {
            u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        })
        .filter(|&n| n <= 4096);
    let count = count.unwrap_or_else(|| {
        valid = false;
        (input.values.len() / part.size()) as u64
    }) as usize;
    let mut bytes: Vec<u8> = (0..count * part.size())
        .map(|i| {
            if input.values.is_empty() {
                0
            } else {
                input.values[i % input.values.len()]
            }
        })
        .collect();
    let mut json = format!(
        "{{\"name\":{},\"datatype\":{},\"shape\":{}",
        json_string(&name),
        json_string(&datatype),
        serde_json::to_string(&shape).expect("shape serializes")
    );
    let mut binary = Vec::new();
    let json_data = |bytes: &mut Vec<u8>, nested: bool| {
        let values: Vec<String> = bytes
            .chunks_exact_mut(part.size())
            .map(|e| element(part, e))
            .collect();
        let dims: Option<Vec<u64>> = shape.iter().map(|&d| u64::try_from(d).ok()).collect();
        let mut s = String::new();
        match dims {
            Some(dims)
                if nested
                    && !dims.is_empty()
                    && !dims.contains(&0)
                    && dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))
                        == Some(values.len() as u64) =>
            {
                nest(&dims, &values, &mut s)
            }
            _ => {
                s.push('[');
                s.push_str(&values.join(","));
                s.push(']');
            }
        }
        s
    };
    match &input.data {
        Data::Json { nested } => {
            let s = json_data(&mut bytes, *nested);
            let _ = write!(json, ",\"data\":{s}");
        }
        Data::Binary { size_delta } => {
            if part == DType::Bool {
                bytes.iter_mut().for_each(|b| *b &= 1);
            }
            valid &= *size_delta == 0;
            let size = (bytes.len() as i64 + i64::from(*size_delta)).max(0);
            let _ = write!(json, ",\"parameters\":{{\"binary_data_size\":{size}}}");
            binary.clone_from(&bytes);
        }
        Data::Both => {
            valid = false;
            let s = json_data(&mut bytes, false);
            let _ = write!(
                json,
                ",\"data\":{s},\"parameters\":{{\"binary_data_size\":{}}}",
                bytes.len()
            );
        }
        Data::Neither => valid = false,
    }
    json.push('}');
    Encoded {
        name,
        json,
        binary,
        expected: bytes,
        valid,
    }
}

fuzz_target!(|req: Request| {
    let sig = xlaguard_fuzz::signature(req.fixture);
    let inputs: Vec<Encoded> = req.inputs.iter().map(|i| encode(sig, i)).collect();
    let mut valid = inputs.iter().all(|e| e.valid) && req.trailing.is_empty();
    let mut names: Vec<&str> = inputs.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    let mut want: Vec<&str> = sig.inputs.iter().map(|s| s.name.as_str()).collect();
    want.sort_unstable();
    valid &= names == want;

    let mut json = String::from("{");
    if let Some(id) = &req.id {
        let _ = write!(json, "\"id\":{},", json_string(id));
    }
    if let Some(b) = req.binary_output {
        let _ = write!(json, "\"parameters\":{{\"binary_data_output\":{b}}},");
    }
    json.push_str("\"inputs\":[");
    json.push_str(
        &inputs
            .iter()
            .map(|e| e.json.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    json.push(']');
    if let Some(outs) = &req.outputs {
        let mut seen = Vec::new();
        let list: Vec<String> = outs
            .iter()
            .map(|o| {
                let name = match &o.name {
                    Choice::Known(i) if !sig.outputs.is_empty() => {
                        let i = usize::from(*i) % sig.outputs.len();
                        valid &= !seen.contains(&i);
                        seen.push(i);
                        sig.outputs[i].name.clone()
                    }
                    Choice::Known(_) => String::new(),
                    Choice::Other(s) => {
                        valid = false;
                        s.clone()
                    }
                };
                let mut s = format!("{{\"name\":{}", json_string(&name));
                if o.classification {
                    valid = false;
                    s.push_str(",\"parameters\":{\"classification\":3}");
                } else if let Some(b) = o.binary {
                    let _ = write!(s, ",\"parameters\":{{\"binary_data\":{b}}}");
                }
                s.push('}');
                s
            })
            .collect();
        let _ = write!(json, ",\"outputs\":[{}]", list.join(","));
    }
    json.push('}');

    let mut body = json.clone().into_bytes();
    let has_binary = inputs.iter().any(|e| !e.binary.is_empty())
        || req
            .inputs
            .iter()
            .any(|i| matches!(i.data, Data::Binary { .. }));
    for e in &inputs {
        body.extend_from_slice(&e.binary);
    }
    body.extend_from_slice(&req.trailing);
    let header_len = match req.header {
        Header::Exact => has_binary.then_some(json.len()),
        Header::Absent => {
            valid &= !has_binary;
            None
        }
        Header::Len(n) => {
            valid &= usize::from(n) == json.len() || !has_binary;
            Some(usize::from(n))
        }
    };
    // A header length on a pure-JSON request that is not the JSON's length: invalid.
    if let Some(n) = header_len {
        valid &= n == json.len();
    }

    let parsed = xlaguard_fuzz::check_request(sig, &body, header_len);
    if valid {
        assert!(
            parsed.is_some(),
            "a request made from the signature is refused: {}",
            String::from_utf8_lossy(&body)
        );
    }
    if let Some(r) = parsed {
        for t in &r.inputs {
            let e = inputs
                .iter()
                .find(|e| e.name == t.name)
                .expect("a sent input");
            assert_eq!(&t.data[..], &e.expected[..], "input '{}' bytes", t.name);
        }
    }
});
