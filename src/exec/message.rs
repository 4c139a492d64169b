//! What the parent and an execution worker say to each other (besides the compile worker's
//! `Init`/`Ready`): the `Load` message once, then one `Execute`/`Executed` pair per request.
//!
//! `Load` payload: a little-endian `u32` length, that many bytes of [`LoadSpec`] JSON, the
//! serialized executable, then the bytes of every resident argument in argument order.
//! `Execute` payload: the request arguments' bytes in argument order, each exactly the size its
//! [`ArgSpec`] gives. `Executed` payload: the outputs' bytes in output order, each exactly the
//! size its [`OutSpec`] gives. `ExecError`: a [`ExecRejection`] as JSON.

use serde::{Deserialize, Serialize};

use crate::signature::DType;

/// One argument of the executable, in its order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ArgSpec {
    /// numpy dtype name.
    pub dtype: String,
    /// Dimensions.
    pub dims: Vec<i64>,
    /// Sent once with `Load` and kept on the worker's device (platform index, bound params),
    /// not with each request.
    pub resident: bool,
}

/// One output of the executable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutSpec {
    /// numpy dtype name.
    pub dtype: String,
    /// Dimensions.
    pub dims: Vec<i64>,
}

/// The model an execution worker serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LoadSpec {
    /// `RLIMIT_AS` the worker sets (soft and hard) before it reads the executable.
    pub address_space: Option<u64>,
    /// Bytes of the serialized executable after the JSON.
    pub executable_len: u64,
    /// The executable's arguments.
    pub args: Vec<ArgSpec>,
    /// Its outputs.
    pub outputs: Vec<OutSpec>,
    /// Test builds: answer every request with this many bytes of garbage (a worker that
    /// breaks the protocol).
    #[serde(default)]
    pub test_garbage_reply: Option<u64>,
    /// Test builds: try to start a thread before each request (the request loop's seccomp
    /// filter kills the worker for it).
    #[serde(default)]
    pub test_spawn_thread: bool,
}

/// What a worker measured while loading.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct LoadedReport {
    /// Deserialize and resident uploads, ms.
    pub load_ms: f64,
    /// The request loop's seccomp filter, installed after the load.
    #[serde(default)]
    pub seccomp: String,
}

/// A plugin error in the worker, carried to the parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExecRejection {
    /// The PJRT function that failed.
    pub function: String,
    /// The PJRT error code.
    pub code: Option<i32>,
    /// The plugin's message.
    pub message: String,
}

/// Bytes of a dense array of `dtype` and `dims`; `None` for an unknown dtype, a negative
/// dimension or an overflow.
pub(crate) fn byte_len(dtype: &str, dims: &[i64]) -> Option<usize> {
    let d = DType::from_name(dtype)?;
    dims.iter().try_fold(d.size(), |acc, &n| {
        acc.checked_mul(usize::try_from(n).ok()?)
    })
}

/// The `Load` payload's parts (JSON length, JSON), to send before the executable and the
/// resident bytes.
pub(crate) fn load_head(spec: &LoadSpec) -> Result<Vec<u8>, String> {
    let json = serde_json::to_vec(spec).map_err(|e| e.to_string())?;
    let len = u32::try_from(json.len()).map_err(|_| "load spec too large".to_string())?;
    let mut v = Vec::with_capacity(4 + json.len());
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&json);
    Ok(v)
}

/// A decoded `Load` payload: the spec, the executable, the resident arguments' bytes.
pub(crate) type Load<'a> = (LoadSpec, &'a [u8], Vec<&'a [u8]>);

/// Splits a `Load` payload into its spec, executable and resident bytes (each checked
/// against the spec).
pub(crate) fn decode_load(payload: &[u8]) -> Result<Load<'_>, String> {
    let n = payload
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("load message shorter than its header")?;
    let json = payload
        .get(4..4 + n)
        .ok_or("load message shorter than its spec")?;
    let spec: LoadSpec = serde_json::from_slice(json).map_err(|e| format!("load spec: {e}"))?;
    let mut at = 4 + n;
    let exe_len = usize::try_from(spec.executable_len).map_err(|e| e.to_string())?;
    let exe = payload
        .get(at..at.saturating_add(exe_len))
        .ok_or("load message shorter than its executable")?;
    at += exe_len;
    let mut residents = Vec::new();
    for a in spec.args.iter().filter(|a| a.resident) {
        let len = byte_len(&a.dtype, &a.dims)
            .ok_or_else(|| format!("argument {} {:?} has no size", a.dtype, a.dims))?;
        let b = payload
            .get(at..at.saturating_add(len))
            .ok_or("load message shorter than its resident arguments")?;
        residents.push(b);
        at += len;
    }
    if at != payload.len() {
        return Err(format!(
            "load message has {} bytes after its resident arguments",
            payload.len() - at
        ));
    }
    Ok((spec, exe, residents))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_round_trips_and_checks_lengths() {
        let spec = LoadSpec {
            address_space: Some(1 << 30),
            executable_len: 3,
            args: vec![
                ArgSpec {
                    dtype: "int32".into(),
                    dims: vec![],
                    resident: true,
                },
                ArgSpec {
                    dtype: "float32".into(),
                    dims: vec![2, 2],
                    resident: false,
                },
            ],
            outputs: vec![],
            test_garbage_reply: None,
            test_spawn_thread: false,
        };
        let mut p = load_head(&spec).unwrap();
        p.extend_from_slice(b"exe");
        p.extend_from_slice(&7i32.to_le_bytes());
        let (s, exe, res) = decode_load(&p).unwrap();
        assert_eq!(s, spec);
        assert_eq!(exe, b"exe");
        assert_eq!(res, vec![&7i32.to_le_bytes()[..]]);
        p.push(0);
        assert!(decode_load(&p).unwrap_err().contains("1 bytes after"));
        assert!(decode_load(&p[..p.len() - 3]).is_err());
        assert_eq!(byte_len("float32", &[2, 3]), Some(24));
        assert_eq!(byte_len("float32", &[-1]), None);
        assert_eq!(byte_len("nope", &[1]), None);
    }
}
