//! The KServe v2 server over real HTTP on loopback, started in this process: every endpoint,
//! every datatype in JSON and binary, every error status, and bad input of every kind, each
//! followed by a good request that must still succeed.
#![cfg(feature = "server")]

mod common;
mod serving;

use std::io::{Read, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use xlaguard::server::repo::ModelSpec;
use xlaguard::{DType, Tensor};

use common::{fixture, numbered};
use serving::*;

/// One server for the tests that need no special limits.
fn shared() -> std::net::SocketAddr {
    static S: OnceLock<InProcess> = OnceLock::new();
    S.get_or_init(|| {
        let m = |n: &str| ModelSpec::from_file(n, fixture(n).join("model.jaxexport"));
        InProcess::start(
            vec![
                m("digits"),
                m("dtypes"),
                m("dict_io"),
                m("attention"),
                m("kept_var"),
                ModelSpec {
                    policy: Some(test_fixture("spin").join("policy.toml")),
                    ..ModelSpec::from_file("spin", test_fixture("spin").join("model.mlir"))
                },
            ],
            |c| c.max_body_bytes = 4 << 20,
        )
    })
    .addr
}

fn digits_in() -> Tensor {
    Tensor::read_npy(&fixture("digits").join("in0.npy")).unwrap()
}

fn digits_request() -> Value {
    json!({"inputs": json_inputs(&["pixels"], &[digits_in()])})
}

/// Asserts that the digits model answers like JAX (label 2, logits bit-equal).
fn assert_digits_ok(addr: std::net::SocketAddr) {
    let r = post_json(addr, "/v2/models/digits/infer", &digits_request());
    assert_eq!(r.status, 200, "{}", r.text());
    let outs = numbered(&fixture("digits"), "out");
    let v = r.json();
    assert_eq!(v["outputs"][0]["data"], json!([2]));
    assert_eq!(
        bytes_of_json(DType::F32, &v["outputs"][1]["data"]),
        outs[1].bytes()
    );
}

#[test]
fn server_metadata_health_and_routes() {
    let addr = shared();
    let r = get(addr, "/v2");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["name"], "xlaguard");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        v["extensions"],
        json!([
            "binary_tensor_data",
            "model_repository",
            "statistics",
            "model_configuration"
        ])
    );
    assert_eq!(get(addr, "/v2/health/live").status, 200);
    assert_eq!(get(addr, "/v2/health/ready").status, 200);

    let r = get(addr, "/v2/nothing");
    assert_eq!(r.status, 404);
    assert_eq!(r.error(), "no route for GET /v2/nothing");
    let r = request(addr, "DELETE", "/v2/health/live", &[], b"");
    assert_eq!(r.status, 405);
    assert!(r.error().contains("DELETE is not allowed"), "{}", r.text());
    let r = get(addr, "/v2/models/digits/infer");
    assert_eq!(r.status, 405, "{}", r.text());
}

#[test]
fn model_metadata_and_readiness() {
    let addr = shared();
    let want = json!({
        "name": "digits",
        "versions": ["1"],
        "platform": "jax_export",
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64]}],
        "outputs": [
            {"name": "label", "datatype": "INT32", "shape": [1]},
            {"name": "logits", "datatype": "FP32", "shape": [1, 10]},
        ],
    });
    assert_eq!(get(addr, "/v2/models/digits").json(), want);
    assert_eq!(get(addr, "/v2/models/digits/versions/1").json(), want);
    assert_eq!(get(addr, "/v2/models/digits/ready").status, 200);
    assert_eq!(get(addr, "/v2/models/digits/versions/1/ready").status, 200);

    let v = get(addr, "/v2/models/spin").json();
    assert_eq!(v["platform"], "stablehlo");
    assert_eq!(
        v["inputs"],
        json!([{"name": "n", "datatype": "INT32", "shape": []}, {"name": "x", "datatype": "FP32", "shape": []}])
    );
    let v = get(addr, "/v2/models/dtypes").json();
    let types: Vec<&str> = v["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["datatype"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
            "FP16", "BF16", "FP32", "FP64"
        ]
    );

    for path in [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/digits/versions/2",
        "/v2/models/digits/versions/2/ready",
    ] {
        let r = get(addr, path);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert!(r.error().starts_with("unknown model"), "{}", r.text());
    }
    let r = post_json(addr, "/v2/models/nope/infer", &digits_request());
    assert_eq!(r.status, 404);
    assert_eq!(r.error(), "unknown model 'nope'");
    let r = post_json(
        addr,
        "/v2/models/digits/versions/7/infer",
        &digits_request(),
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.error(), "unknown model 'digits' version '7'");

    let v = request(addr, "POST", "/v2/repository/index", &[], b"").json();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "attention",
            "dict_io",
            "digits",
            "dtypes",
            "kept_var",
            "spin"
        ]
    );
    assert!(v.as_array().unwrap().iter().all(|m| m["state"] == "READY"));
}

#[test]
fn infer_json_flat_nested_versioned_and_id() {
    let addr = shared();
    let x = digits_in();
    let outs = numbered(&fixture("digits"), "out");
    let flat = json_values(&x);
    // Nested as the shape: [1][64].
    let nested = json!([flat.clone()]);
    // Ragged (eight rows of eight for [1, 64]; the element count matches): refused.
    let ragged: Vec<Value> = flat.chunks(8).map(|c| json!(c)).collect();
    let req = json!({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [ragged]}]});
    let r = post_json(addr, "/v2/models/digits/infer", &req);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text()
            .contains("'data' must be a flat list or nested as [1,64]: element 0 is at depth 3"),
        "{}",
        r.text()
    );
    for (path, data) in [
        ("/v2/models/digits/infer", json!(flat)),
        ("/v2/models/digits/versions/1/infer", nested),
    ] {
        let req = json!({"id": "req-7", "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": data}]});
        let r = post_json(addr, path, &req);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("inference-header-content-length").is_none());
        let v = r.json();
        assert_eq!(v["model_name"], "digits");
        assert_eq!(v["model_version"], "1");
        assert_eq!(v["id"], "req-7");
        assert_eq!(v["outputs"][0]["name"], "label");
        assert_eq!(v["outputs"][0]["datatype"], "INT32");
        assert_eq!(v["outputs"][0]["shape"], json!([1]));
        assert_eq!(
            bytes_of_json(DType::I32, &v["outputs"][0]["data"]),
            outs[0].bytes()
        );
        assert_eq!(v["outputs"][1]["shape"], json!([1, 10]));
        assert_eq!(
            bytes_of_json(DType::F32, &v["outputs"][1]["data"]),
            outs[1].bytes()
        );
    }
    // No id in the request, none in the response.
    let r = post_json(addr, "/v2/models/digits/infer", &digits_request());
    assert!(r.json().get("id").is_none());
}

#[test]
fn infer_outputs_subset_and_binary_choices() {
    let addr = shared();
    let outs = numbered(&fixture("digits"), "out");
    let inputs = json_inputs(&["pixels"], &[digits_in()]);
    // Only logits, in JSON.
    let r = post_json(
        addr,
        "/v2/models/digits/infer",
        &json!({"inputs": inputs, "outputs": [{"name": "logits"}]}),
    );
    let v = r.json();
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(v["outputs"][0]["name"], "logits");
    // Both, in the requested order, logits binary and label JSON.
    let r = post_json(
        addr,
        "/v2/models/digits/infer",
        &json!({"inputs": inputs, "outputs": [
            {"name": "logits", "parameters": {"binary_data": true}},
            {"name": "label"},
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let v = r.json();
    assert_eq!(v["outputs"][0]["name"], "logits");
    assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 40);
    assert!(v["outputs"][0].get("data").is_none());
    assert_eq!(v["outputs"][1]["data"], json!([2]));
    assert_eq!(r.binary(), outs[1].bytes());
    // binary_data_output for all; one output opts out.
    let r = post_json(
        addr,
        "/v2/models/digits/infer",
        &json!({"inputs": inputs, "parameters": {"binary_data_output": true}}),
    );
    let mut both = outs[0].bytes().to_vec();
    both.extend_from_slice(outs[1].bytes());
    assert_eq!(r.binary(), both.as_slice());
    let r = post_json(
        addr,
        "/v2/models/digits/infer",
        &json!({"inputs": inputs, "parameters": {"binary_data_output": true},
                "outputs": [{"name": "label", "parameters": {"binary_data": false}}, {"name": "logits"}]}),
    );
    let v = r.json();
    assert_eq!(v["outputs"][0]["data"], json!([2]));
    assert_eq!(r.binary(), outs[1].bytes());
}

#[test]
fn infer_binary_input_every_datatype() {
    let addr = shared();
    let dir = fixture("dtypes");
    let ins = numbered(&dir, "in");
    let outs = numbered(&dir, "out");
    assert_eq!(ins.len(), 13);
    let meta = get(addr, "/v2/models/dtypes").json();
    let names: Vec<String> = meta["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    // The .npy of bf16 says <V2; the tensor's dtype comes from the signature.
    let ins: Vec<Tensor> = ins
        .into_iter()
        .zip(meta["inputs"].as_array().unwrap())
        .map(|(t, m)| {
            let want =
                xlaguard::server::wire::parse_datatype(m["datatype"].as_str().unwrap()).unwrap();
            Tensor::new(want, t.shape().to_vec(), t.into_bytes()).unwrap()
        })
        .collect();
    let mut data = Vec::new();
    let inputs: Vec<Value> = names
        .iter()
        .zip(&ins)
        .map(|(n, t)| {
            data.extend_from_slice(t.bytes());
            json!({"name": n, "datatype": datatype(t.dtype()), "shape": t.shape(),
                   "parameters": {"binary_data_size": t.bytes().len()}})
        })
        .collect();
    let r = post_binary(
        addr,
        "/v2/models/dtypes/infer",
        &json!({"inputs": inputs, "parameters": {"binary_data_output": true}}),
        &data,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let mut at = 0;
    for (i, (o, want)) in v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&outs)
        .enumerate()
    {
        let n = usize::try_from(o["parameters"]["binary_data_size"].as_u64().unwrap()).unwrap();
        assert_eq!(&r.binary()[at..at + n], want.bytes(), "output {i}");
        at += n;
    }
    assert_eq!(at, r.binary().len());

    // The same in JSON, both ways: every datatype through JSON numbers, incl. +inf outputs.
    let r = post_json(
        addr,
        "/v2/models/dtypes/infer",
        &json!({"inputs": names.iter().zip(&ins).map(|(n, t)| json!({
            "name": n, "datatype": datatype(t.dtype()), "shape": t.shape(), "data": json_values(t)
        })).collect::<Vec<_>>()}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("Infinity"), "{}", r.text());
    let v = r.json();
    for (i, (o, want)) in v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&outs)
        .enumerate()
    {
        let dt = xlaguard::server::wire::parse_datatype(o["datatype"].as_str().unwrap()).unwrap();
        assert_eq!(dt, want.dtype(), "output {i}");
        assert_eq!(
            bytes_of_json(dt, &o["data"]),
            want.bytes(),
            "output {i}: {o}"
        );
    }
}

#[test]
fn infer_bf16_json_and_multiple_named_inputs() {
    let addr = shared();
    // attention: bf16 in, bf16 out, in JSON (an xlaguard extension) and binary.
    let dir = fixture("attention");
    let x = Tensor::read_npy(&dir.join("in0.npy")).unwrap();
    let x = Tensor::new(DType::BF16, x.shape().to_vec(), x.into_bytes()).unwrap();
    let want = Tensor::read_npy(&dir.join("out0.npy")).unwrap();
    let r = post_json(
        addr,
        "/v2/models/attention/infer",
        &json!({"inputs": json_inputs(&["x"], std::slice::from_ref(&x))}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["outputs"][0]["datatype"], "BF16");
    assert_eq!(
        bytes_of_json(DType::BF16, &v["outputs"][0]["data"]),
        want.bytes()
    );

    // dict_io: two inputs given in reverse order, outputs include a scalar.
    let dir = fixture("dict_io");
    let ins = numbered(&dir, "in");
    let outs = numbered(&dir, "out");
    let mut inputs = json_inputs(&["a", "b"], &ins);
    inputs.as_array_mut().unwrap().reverse();
    let r = post_json(addr, "/v2/models/dict_io/infer", &json!({"inputs": inputs}));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["outputs"][0]["name"], "count");
    assert_eq!(v["outputs"][0]["shape"], json!([]));
    for (o, want) in v["outputs"].as_array().unwrap().iter().zip(&outs) {
        assert_eq!(bytes_of_json(want.dtype(), &o["data"]), want.bytes(), "{o}");
    }

    // kept_var: the unused input is still required and checked.
    let dir = fixture("kept_var");
    let ins = numbered(&dir, "in");
    let r = post_json(
        addr,
        "/v2/models/kept_var/infer",
        &json!({"inputs": json_inputs(&["x", "arg1"], &ins)}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_json(
        addr,
        "/v2/models/kept_var/infer",
        &json!({"inputs": json_inputs(&["x"], &ins[..1])}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error(),
        "input 'arg1' (1) is missing: expected float32[3]"
    );
}

/// Sends `body` as an infer request for digits and returns the error message of a 400.
fn bad(addr: std::net::SocketAddr, model: &str, body: &Value) -> String {
    let r = post_json(addr, &format!("/v2/models/{model}/infer"), body);
    assert_eq!(r.status, 400, "{body}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.error()
}

fn pixels(datatype: &str, shape: Value, data: Value) -> Value {
    json!({"inputs": [{"name": "pixels", "datatype": datatype, "shape": shape, "data": data}]})
}

#[test]
fn bad_json_requests_get_400_naming_expected_and_got() {
    let addr = shared();
    let ones = |n: usize| json!(vec![1.0; n]);
    let cases: Vec<(Value, &str)> = vec![
        (
            pixels("INT32", json!([1, 64]), json!(vec![1; 64])),
            "input 'pixels' (0): expected float32[1,64], got int32[1,64] (datatype INT32, expected FP32)",
        ),
        (
            pixels("FP32", json!([1, 63]), ones(63)),
            "input 'pixels' (0): expected float32[1,64], got float32[1,63]",
        ),
        (
            pixels("FP32", json!([64]), ones(64)),
            "input 'pixels' (0): expected float32[1,64], got float32[64]",
        ),
        (
            pixels("FP32", json!([1, 64]), ones(63)),
            "input 'pixels': FP32 [1,64] needs 64 elements in 'data', got 63",
        ),
        (
            pixels("FP32", json!([1, 64]), ones(65)),
            "input 'pixels': FP32 [1,64] needs 64 elements in 'data', got more than 64",
        ),
        (
            pixels("FP32", json!([1, -64]), ones(64)),
            "input 'pixels': shape [1, -64] has a negative dimension; expected [1,64]",
        ),
        (
            pixels("FP8", json!([1, 64]), ones(64)),
            "input 'pixels': unknown datatype 'FP8'; expected FP32",
        ),
        (
            pixels("BYTES", json!([1, 64]), ones(64)),
            "input 'pixels': datatype BYTES is not supported; expected FP32 [1,64]",
        ),
        (
            pixels("FP32", json!([1, 64]), json!([[1.0, "x"]])),
            "input 'pixels': element 1 of 'data' is \"x\": expected a number (FP32)",
        ),
        (
            pixels("FP32", json!([1, 64]), json!([true])),
            "input 'pixels': element 0 of 'data' is true: expected a number (FP32)",
        ),
        (
            pixels("FP32", json!([1, 64]), json!([1e39])),
            "input 'pixels': element 0 of 'data' is 1e+39: out of range for FP32",
        ),
        (
            pixels("FP32", json!([1, 64]), json!([{"a": 1}])),
            "expected a number (FP32), got an object",
        ),
        (
            pixels("FP32", json!([1, 64]), json!(null)),
            "input 'pixels' has neither 'data' nor parameters.binary_data_size",
        ),
        (
            json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64]}]}),
            "input 'pixels' has neither 'data' nor parameters.binary_data_size",
        ),
        (
            json!({"inputs": [{"name": "pixel", "datatype": "FP32", "shape": [1, 64], "data": ones(64)}]}),
            "unknown input 'pixel'; the model takes 'pixels'",
        ),
        (json!({"inputs": []}), "input 'pixels' (0) is missing: expected float32[1,64]"),
        (
            json!({"inputs": [
                {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": ones(64)},
                {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": ones(64)}]}),
            "input 'pixels' given more than once",
        ),
        (
            json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": ones(64)}],
                   "outputs": [{"name": "probs"}]}),
            "unknown output 'probs'; the model returns 'label', 'logits'",
        ),
        (
            json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": ones(64)}],
                   "outputs": [{"name": "label"}, {"name": "label"}]}),
            "output 'label' requested more than once",
        ),
        (
            json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": ones(64)}],
                   "outputs": [{"name": "label", "parameters": {"classification": 3}}]}),
            "output 'label': the classification extension is not supported",
        ),
        (
            json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                               "parameters": {"shared_memory_region": "r"}}]}),
            "input 'pixels': the shared-memory extension is not supported",
        ),
        (json!({"inputs": 5}), "malformed inference request JSON: invalid type: integer `5`"),
        (json!({"id": 5, "inputs": []}), "malformed inference request JSON: invalid type: integer `5`, expected a string"),
        (json!([1]), "malformed inference request JSON"),
    ];
    for (body, want) in &cases {
        let got = bad(addr, "digits", body);
        assert!(got.contains(want), "want {want:?}\n got {got:?}");
    }
    // Integer and boolean datatypes are strict (dtypes model: xs_0_ bool, xs_1_ int8, ...).
    let dtype_cases = [
        (
            "xs_0_",
            "BOOL",
            json!([1, 0, 1, 0]),
            "element 0 of 'data' is 1: BOOL takes true or false",
        ),
        (
            "xs_1_",
            "INT8",
            json!([1, 2, 300, 4]),
            "element 2 of 'data' is 300: out of range for INT8",
        ),
        (
            "xs_1_",
            "INT8",
            json!([1, 2.5, 3, 4]),
            "element 1 of 'data' is 2.5: expected an integer (INT8)",
        ),
        (
            "xs_5_",
            "UINT8",
            json!([1, -1, 3, 4]),
            "element 1 of 'data' is -1: out of range for UINT8",
        ),
        (
            "xs_9_",
            "FP16",
            json!([1, 70000, 3, 4]),
            "element 1 of 'data' is 70000: out of range for FP16",
        ),
    ];
    for (name, dt, data, want) in dtype_cases {
        let body = json!({"inputs": [{"name": name, "datatype": dt, "shape": [4], "data": data}]});
        let got = bad(addr, "dtypes", &body);
        assert!(got.contains(want), "want {want:?}\n got {got:?}");
    }
    // A u64 literal past 2^64 is out of range, not a syntax error.
    let r = request(
        addr,
        "POST",
        "/v2/models/dtypes/infer",
        &[],
        br#"{"inputs": [{"name": "xs_8_", "datatype": "UINT64", "shape": [4], "data": [1, 2, 3, 18446744073709551616]}]}"#,
    );
    assert_eq!(r.status, 400);
    assert!(
        r.error()
            .contains("18446744073709551616: out of range for UINT64"),
        "{}",
        r.text()
    );
    assert_digits_ok(addr);
}

#[test]
fn non_finite_strings_in_json_requests() {
    let addr = shared();
    // x is FP32 in spin: NaN in, NaN out (sine of NaN), written as a bare NaN token.
    let r = post_json(
        addr,
        "/v2/models/spin/infer",
        &json!({"inputs": [
            {"name": "n", "datatype": "INT32", "shape": [], "data": [3]},
            {"name": "x", "datatype": "FP32", "shape": [], "data": ["NaN"]}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"data\":[NaN]"), "{}", r.text());
    // A bare NaN token in a request is not JSON: refused with a hint.
    let r = request(
        addr,
        "POST",
        "/v2/models/spin/infer",
        &[],
        br#"{"inputs": [{"name": "n", "datatype": "INT32", "shape": [], "data": [3]},
                        {"name": "x", "datatype": "FP32", "shape": [], "data": [NaN]}]}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("\"NaN\""), "{}", r.text());
}

#[test]
fn malformed_bodies_and_the_next_request_succeeds() {
    let addr = shared();
    let cases: Vec<(&[u8], &str)> = vec![
        (
            b"",
            "malformed inference request JSON: EOF while parsing a value at line 1 column 0",
        ),
        (b"{", "malformed inference request JSON: EOF while parsing"),
        (b"{\"inputs\": [}", "malformed inference request JSON"),
        (b"\xff\xfe\x00garbage", "malformed inference request JSON"),
        (
            b"null",
            "malformed inference request JSON: invalid type: null",
        ),
        (
            b"{\"inputs\": [{\"name\": \"pixels\"}]}",
            "missing field `shape`",
        ),
    ];
    for (body, want) in cases {
        let r = request(addr, "POST", "/v2/models/digits/infer", &[], body);
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(
            r.error().contains(want),
            "want {want:?} got {:?}",
            r.error()
        );
        assert_digits_ok(addr);
    }
}

#[test]
fn deep_nesting_is_refused_before_parsing() {
    let addr = shared();
    for depth in [65usize, 50_000, 1_000_000] {
        // As the data of an input, and as the whole body.
        let data = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let body = format!(
            r#"{{"inputs": [{{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": {data}}}]}}"#
        );
        for b in [body.as_bytes(), data.as_bytes()] {
            let started = Instant::now();
            let r = request(addr, "POST", "/v2/models/digits/infer", &[], b);
            assert_eq!(r.status, 400, "{}", r.text());
            assert!(
                r.error()
                    .starts_with("request JSON is nested more than 64 levels deep"),
                "{}",
                r.error()
            );
            assert!(started.elapsed() < Duration::from_secs(5));
        }
    }
    // Brackets inside strings do not count.
    let r = post_json(
        addr,
        "/v2/models/digits/infer",
        &json!({"id": "[".repeat(1000), "inputs": json_inputs(&["pixels"], &[digits_in()])}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_digits_ok(addr);
}

#[test]
fn binary_extension_errors() {
    let addr = shared();
    let x = digits_in();
    let input = |size: usize| {
        json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                           "parameters": {"binary_data_size": size}}]})
    };
    // Good.
    let r = post_binary(addr, "/v2/models/digits/infer", &input(256), x.bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["outputs"][0]["data"], json!([2]));
    // Size not matching the shape.
    let r = post_binary(
        addr,
        "/v2/models/digits/infer",
        &input(252),
        &x.bytes()[..252],
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error(),
        "input 'pixels' (0): FP32 [1,64] needs 256 bytes, got binary_data_size 252"
    );
    // Size past the end of the body.
    let r = post_binary(
        addr,
        "/v2/models/digits/infer",
        &input(256),
        &x.bytes()[..100],
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error(),
        "input 'pixels': binary_data_size 256 runs past the end of the body (100 bytes of binary data left)"
    );
    // Bytes left over.
    let mut more = x.bytes().to_vec();
    more.extend_from_slice(&[0; 8]);
    let r = post_binary(addr, "/v2/models/digits/infer", &input(256), &more);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error(),
        "8 bytes of binary data follow the inputs' binary_data_size total"
    );
    // binary_data_size without the header.
    let r = post_json(addr, "/v2/models/digits/infer", &input(256));
    assert_eq!(r.status, 400);
    assert!(r
        .error()
        .contains("has no Inference-Header-Content-Length header"));
    // A header longer than the body, and one that is not a number.
    for (h, want) in [
        (
            "100000",
            "Inference-Header-Content-Length is 100000 but the body has only",
        ),
        (
            "ten",
            "Inference-Header-Content-Length must be a byte count, got \"ten\"",
        ),
    ] {
        let r = request(
            addr,
            "POST",
            "/v2/models/digits/infer",
            &[("Inference-Header-Content-Length", h)],
            b"{}",
        );
        assert_eq!(r.status, 400);
        assert!(r.error().contains(want), "{}", r.error());
    }
    // Both data and binary_data_size.
    let body = json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
        "data": vec![0.0; 64], "parameters": {"binary_data_size": 256}}]});
    let r = post_binary(addr, "/v2/models/digits/infer", &body, x.bytes());
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error(),
        "input 'pixels' has both 'data' and parameters.binary_data_size"
    );
    // BOOL bytes other than 0 and 1 (dtypes model, first input).
    let meta = get(addr, "/v2/models/dtypes").json();
    let ins = numbered(&fixture("dtypes"), "in");
    let mut data = Vec::new();
    let inputs: Vec<Value> = meta["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&ins)
        .map(|(m, t)| {
            data.extend_from_slice(t.bytes());
            json!({"name": m["name"], "datatype": m["datatype"], "shape": t.shape(),
                   "parameters": {"binary_data_size": t.bytes().len()}})
        })
        .collect();
    data[2] = 7;
    let r = post_binary(
        addr,
        "/v2/models/dtypes/infer",
        &json!({ "inputs": inputs }),
        &data,
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error(),
        "input 'xs_0_': BOOL element 2 is byte 7; BOOL bytes must be 0 or 1"
    );
    assert_digits_ok(addr);
}

#[test]
fn content_encoding_and_body_cap() {
    let addr = shared();
    let body = digits_request().to_string();
    let r = request(
        addr,
        "POST",
        "/v2/models/digits/infer",
        &[("Content-Encoding", "gzip")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 415);
    assert!(r
        .error()
        .contains("Content-Encoding \"gzip\" is not supported"));
    // Answered before the body was read: the connection is closed, and says so.
    assert_eq!(r.header("connection"), Some("close"));
    let r = request(addr, "POST", "/v2/models/nope/infer", &[], body.as_bytes());
    assert_eq!((r.status, r.header("connection")), (404, Some("close")));
    // A repeated Content-Encoding or Inference-Header-Content-Length: refused, not the first
    // taken (a proxy in front may have taken the last).
    for headers in [
        &[
            ("Content-Encoding", "identity"),
            ("Content-Encoding", "gzip"),
        ][..],
        &[
            ("Inference-Header-Content-Length", "10"),
            ("Inference-Header-Content-Length", "20"),
        ][..],
    ] {
        let r = request(
            addr,
            "POST",
            "/v2/models/digits/infer",
            headers,
            body.as_bytes(),
        );
        assert_eq!(r.status, 400, "{headers:?}: {}", r.text());
        assert!(
            r.error().contains("appears 2 times; send it once"),
            "{}",
            r.error()
        );
    }
    assert_digits_ok(addr);

    // Declared over the cap (4 MiB here): refused from the header, before any body byte.
    let mut c = Conn::open(addr);
    c.stream
        .write_all(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 4194305\r\n\r\n",
        )
        .unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(
        r.error(),
        "request body of 4194305 bytes is over the limit of 4194304 bytes"
    );
    assert_eq!(r.header("connection"), Some("close"));

    // Chunked, no length: refused once the cap is passed.
    let mut c = Conn::open(addr);
    c.stream
        .write_all(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..5 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if c.stream.write_all(&frame).is_err() {
            break;
        }
    }
    let _ = c.stream.write_all(b"0\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(
        r.error(),
        "request body of more than 4194304 bytes is over the limit of 4194304 bytes"
    );
    assert_digits_ok(addr);
}

#[test]
fn metrics_count_requests_rejections_and_compiles() {
    let addr = shared();
    assert_digits_ok(addr);
    bad(
        addr,
        "digits",
        &pixels("FP32", json!([1, 63]), json!(vec![1.0; 63])),
    );
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let t = r.text();
    let value = |prefix: &str| -> f64 {
        t.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{t}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        value(r#"xlaguard_inference_requests_total{model="digits",version="1",code="200"}"#) >= 1.0
    );
    assert!(
        value(r#"xlaguard_inference_requests_total{model="digits",version="1",code="400"}"#) >= 1.0
    );
    assert!(
        value(
            r#"xlaguard_validation_rejections_total{model="digits",version="1",input="pixels",rule="shape"}"#
        ) >= 1.0
    );
    assert!(
        value(r#"xlaguard_inference_duration_seconds_count{model="digits",version="1"}"#) >= 1.0
    );
    assert!(
        value(
            r#"xlaguard_inference_duration_seconds_bucket{model="digits",version="1",le="+Inf"}"#
        ) >= 1.0
    );
    assert_eq!(
        value(r#"xlaguard_model_ready{model="digits",version="1"}"#),
        1.0
    );
    assert_eq!(
        value(r#"xlaguard_queue_depth{model="digits",version="1"}"#),
        0.0
    );
    assert_eq!(value(r#"xlaguard_compiles_total{result="ok"}"#), 6.0);
    assert!(value(r#"xlaguard_model_compile_seconds{model="digits",version="1"}"#) > 0.0);
    assert!(value("xlaguard_process_resident_memory_bytes") > 1e6);
    assert!(
        value("xlaguard_process_peak_resident_memory_bytes")
            >= value("xlaguard_process_resident_memory_bytes")
    );
    assert!(
        value(r#"xlaguard_http_requests_total{route="/v2/models/{model}/infer",code="200"}"#)
            >= 1.0
    );
    for l in t.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = l.rsplit_once(' ').unwrap();
        assert!(v.parse::<f64>().is_ok(), "not a sample line: {l}");
    }
}

fn spin(n: i32) -> Value {
    json!({"inputs": [
        {"name": "n", "datatype": "INT32", "shape": [], "data": [n]},
        {"name": "x", "datatype": "FP32", "shape": [], "data": [0.5]}]})
}

/// A spin that runs for about `ms` milliseconds on this machine (9 ns per step, measured).
fn spin_ms(ms: u64) -> Value {
    spin(i32::try_from(ms * 110_000).unwrap())
}

#[test]
fn queue_full_gets_429_and_deadline_gets_503() {
    use xlaguard::server::repo::LimitOverrides;
    let spec = |name: &str, timeout_ms: u64| {
        let mut m = ModelSpec::from_file(name, test_fixture("spin").join("model.mlir"));
        m.limits = LimitOverrides {
            workers: Some(1),
            max_queue: Some(1),
            timeout: Some(Duration::from_millis(timeout_ms)),
            ..LimitOverrides::default()
        };
        m
    };
    let s = InProcess::start(
        vec![spec("spin", 20_000), spec("spin_deadline", 1000)],
        |_| {},
    );
    let addr = s.addr;
    // One long request takes the worker, one waits in the queue, the third is refused at once.
    let long = std::thread::spawn(move || post_json(addr, "/v2/models/spin/infer", &spin_ms(1500)));
    std::thread::sleep(Duration::from_millis(150));
    let queued = std::thread::spawn(move || post_json(addr, "/v2/models/spin/infer", &spin(1)));
    std::thread::sleep(Duration::from_millis(150));
    let started = Instant::now();
    let r = post_json(addr, "/v2/models/spin/infer", &spin(1));
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "429 must be quick"
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        r.error(),
        "model 'spin' is busy: 1 requests running and 1 queued"
    );
    let t = get(addr, "/metrics").text();
    assert!(
        t.contains("xlaguard_queue_depth{model=\"spin\",version=\"1\"} 1"),
        "{t}"
    );
    assert!(
        t.contains("xlaguard_inflight{model=\"spin\",version=\"1\"} 1"),
        "{t}"
    );
    // Other models are not affected.
    assert_eq!(
        post_json(addr, "/v2/models/spin_deadline/infer", &spin(1)).status,
        200
    );
    assert_eq!(long.join().unwrap().status, 200);
    assert_eq!(queued.join().unwrap().status, 200);

    // Deadline 1 s: a long run gets 503 soon after the deadline, not after the run; a request
    // queued behind it gets 503 at its own deadline.
    let started = Instant::now();
    let long = std::thread::spawn(move || {
        post_json(addr, "/v2/models/spin_deadline/infer", &spin_ms(5000))
    });
    std::thread::sleep(Duration::from_millis(100));
    let r = post_json(addr, "/v2/models/spin_deadline/infer", &spin(1));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        r.error().contains(
            "deadline of 1000 ms passed while waiting for a worker of model 'spin_deadline'"
        ),
        "{}",
        r.text()
    );
    let r = long.join().unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r
        .error()
        .contains("deadline of 1000 ms passed while model 'spin_deadline' was running"));
    assert!(started.elapsed() < Duration::from_millis(3000));
    // Once the abandoned run ends, its worker is free and requests succeed again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = post_json(addr, "/v2/models/spin_deadline/infer", &spin(1));
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503);
        assert!(Instant::now() < deadline, "never recovered");
    }
    let t = get(addr, "/metrics").text();
    assert!(
        t.contains("xlaguard_admission_rejections_total{reason=\"queue_full\"} 1"),
        "{t}"
    );
    assert!(
        t.contains(
            "xlaguard_inference_requests_total{model=\"spin\",version=\"1\",code=\"429\"} 1"
        ),
        "{t}"
    );
    assert!(
        t.contains("xlaguard_admission_rejections_total{reason=\"deadline\"}"),
        "{t}"
    );
}

#[test]
fn concurrency_cap_gets_503_and_slow_clients_are_cut_off() {
    let s = InProcess::start(
        vec![
            ModelSpec::from_file("digits", fixture("digits").join("model.jaxexport")),
            ModelSpec::from_file("spin", test_fixture("spin").join("model.mlir")),
        ],
        |c| {
            c.max_concurrent_requests = 1;
            c.header_read_timeout = Duration::from_millis(500);
            c.body_read_timeout = Duration::from_millis(700);
        },
    );
    let addr = s.addr;
    // A slow body holds no inference slot: other requests are served meanwhile.
    let mut slow = Conn::open(addr);
    slow.stream
        .write_all(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"inp")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_digits_ok(addr);
    // A running request holds the only slot: another request gets 503 at once.
    let long = std::thread::spawn(move || post_json(addr, "/v2/models/spin/infer", &spin_ms(600)));
    std::thread::sleep(Duration::from_millis(200));
    let busy = Instant::now();
    let r = post_json(addr, "/v2/models/digits/infer", &digits_request());
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        r.error(),
        "server busy: 1 inference requests already in progress"
    );
    assert!(busy.elapsed() < Duration::from_secs(1), "503 must be quick");
    assert_eq!(long.join().unwrap().status, 200);
    // Health and metadata stay answered.
    assert_eq!(get(addr, "/v2/health/live").status, 200);
    assert_eq!(get(addr, "/v2/models/digits").status, 200);
    // The slow body gets 408 after the body timeout, and the connection is closed.
    let r = slow.read_response().unwrap();
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.error(), "request body not received within 700 ms");
    assert_digits_ok(addr);

    // Headers never finished: the connection is closed after the header timeout, while others
    // are served.
    let mut slow = Conn::open(addr);
    slow.stream
        .write_all(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    let started = Instant::now();
    assert_digits_ok(addr);
    let mut buf = [0u8; 64];
    let n = slow.stream.read(&mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert!(
        n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"),
        "{:?}",
        &buf[..n]
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // An idle connection that never sends anything is closed too.
    let mut idle = Conn::open(addr);
    let started = Instant::now();
    let n = idle.stream.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_digits_ok(addr);
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let addr = shared();
    let mut c = Conn::open(addr);
    let body = digits_request().to_string();
    for i in 0..50 {
        // Alternate good and bad requests on the same connection.
        let r = if i % 2 == 0 {
            c.send("POST", "/v2/models/digits/infer", &[], body.as_bytes())
        } else {
            c.send("POST", "/v2/models/digits/infer", &[], b"{\"inputs\": 1}")
        }
        .unwrap();
        assert_eq!(r.status, if i % 2 == 0 { 200 } else { 400 }, "{}", r.text());
    }
}

#[test]
fn model_repository_reports_bad_models_and_serves_the_others() {
    use xlaguard::server::repo::scan_repository;
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("server-repo");
    let _ = std::fs::remove_dir_all(&root);
    let digits = fixture("digits");
    let art = digits.join("model.jaxexport");
    copy_into(&art, &root.join("good"), "model.jaxexport");
    copy_into(&digits.join("model.mlir"), &root.join("good"), "model.mlir");
    std::fs::write(
        root.join("good/config.toml"),
        "version = 3\n[limits]\nworkers = 1\nmax_queue = 2\ntimeout_ms = 5000\n",
    )
    .unwrap();
    copy_into(
        &digits.join("model.mlirbc"),
        &root.join("named"),
        "b.mlirbc",
    );
    copy_into(&art, &root.join("named"), "a.jaxexport");
    std::fs::write(
        root.join("named/config.toml"),
        "artifact = \"b.mlirbc\"\nversion = \"v2\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("broken")).unwrap();
    std::fs::write(root.join("broken/model.jaxexport"), b"not a model at all").unwrap();
    copy_into(&art, &root.join("typo"), "model.jaxexport");
    std::fs::write(root.join("typo/config.toml"), "versoin = 2\n").unwrap();
    copy_into(&art, &root.join("toolarge"), "model.jaxexport");
    std::fs::write(
        root.join("toolarge/config.toml"),
        "[limits]\nmax_module_bytes = 1000\n",
    )
    .unwrap();
    copy_into(&art, &root.join("guarded"), "model.jaxexport");
    std::fs::write(
        root.join("guarded/policy.toml"),
        "[inputs.pixels]\nmin = 0.0\nmax = 16.0\n",
    )
    .unwrap();
    copy_into(&art, &root.join("misguarded"), "model.jaxexport");
    std::fs::write(
        root.join("misguarded/policy.toml"),
        "[inputs.nope]\nmin = 0\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("empty/README"), "nothing").unwrap();
    copy_into(&art, &root.join("two"), "a.jaxexport");
    copy_into(&art, &root.join("two"), "b.jaxexport");
    // StableHLO text with `?` dimensions: no dimension variable names, refused.
    copy_into(
        &fixture("poly").join("model.mlir"),
        &root.join("poly"),
        "model.mlir",
    );
    copy_into(&art, &root.join("bad name!"), "model.jaxexport");
    copy_into(&art, &root.join(".hidden"), "model.jaxexport");

    let specs = scan_repository(&root).unwrap();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "broken",
            "empty",
            "good",
            "guarded",
            "misguarded",
            "named",
            "poly",
            "toolarge",
            "two",
            "typo"
        ]
    );
    let s = InProcess::start(specs.clone(), |_| {});
    let addr = s.addr;
    let index = request(addr, "POST", "/v2/repository/index", &[], b"").json();
    let state = |name: &str| -> (String, String) {
        let m = index
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap();
        (
            m["state"].as_str().unwrap().to_string(),
            m["reason"].as_str().unwrap_or_default().to_string(),
        )
    };
    assert_eq!(state("good").0, "READY");
    assert_eq!(state("named").0, "READY");
    assert_eq!(state("guarded").0, "READY");
    for (name, reason) in [
        ("broken", "broken/model.jaxexport"),
        (
            "typo",
            "config.toml line 1: unknown field `versoin`, expected one of `version`",
        ),
        ("misguarded", "nope"),
        ("empty", "no artifact (a file ending in .jaxexport"),
        (
            "two",
            "several .jaxexport artifacts (a.jaxexport, b.jaxexport)",
        ),
        ("poly", "symbolic"),
        (
            "toolarge",
            "above this model's config.toml [limits] max_module_bytes = 1000",
        ),
    ] {
        let (st, why) = state(name);
        assert_eq!(st, "UNAVAILABLE", "{name}");
        assert!(why.contains(reason), "{name}: want {reason:?} in {why:?}");
    }
    // Strict readiness: not ready while any model is unavailable.
    let r = get(addr, "/v2/health/ready");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error(),
        "models not ready: broken, empty, misguarded, poly, toolarge, two, typo"
    );
    assert_eq!(get(addr, "/v2/models/broken/ready").status, 400);
    let r = get(addr, "/v2/models/broken");
    assert_eq!(r.status, 503);
    assert!(
        r.error().starts_with("model 'broken' is unavailable: "),
        "{}",
        r.text()
    );
    // The guarded model serves within its policy and refuses what breaks it.
    let r = post_json(addr, "/v2/models/guarded/infer", &digits_request());
    assert_eq!(r.status, 200, "{}", r.text());
    let mut bad = digits_in().to_array::<f32>().unwrap();
    bad[[0, 41]] = 255.0;
    let bad = Tensor::from_array(&bad);
    let r = post_json(
        addr,
        "/v2/models/guarded/infer",
        &json!({"inputs": json_inputs(&["pixels"], &[bad])}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.error(),
        "input 'pixels': 1 value above max 16.0; first at [0, 41] = 255.0"
    );

    // The good ones serve, at their configured versions.
    assert_eq!(
        get(addr, "/v2/models/good").json()["versions"],
        json!(["3"])
    );
    assert_eq!(get(addr, "/v2/models/good/versions/1").status, 404);
    let r = post_json(addr, "/v2/models/good/versions/3/infer", &digits_request());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model_version"], "3");
    let meta = get(addr, "/v2/models/named").json();
    assert_eq!(meta["platform"], "stablehlo");
    let input = meta["inputs"][0]["name"].clone();
    let r = post_json(
        addr,
        "/v2/models/named/versions/v2/infer",
        &json!({
            "inputs": [{"name": input, "datatype": "FP32", "shape": [1, 64], "data": json_values(&digits_in())}]
        }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["outputs"][0]["data"], json!([2]));
    let t = get(addr, "/metrics").text();
    assert!(
        t.contains("xlaguard_model_ready{model=\"broken\",version=\"1\"} 0"),
        "{t}"
    );
    assert!(
        t.contains("xlaguard_model_ready{model=\"good\",version=\"3\"} 1"),
        "{t}"
    );
    drop(s);

    // Readiness that only waits for loading.
    let s = InProcess::start(specs, |c| c.strict_readiness = false);
    assert_eq!(get(s.addr, "/v2/health/ready").status, 200);
}

/// Slow senders hold no execution capacity: with 4 requests allowed in progress, 24 connections
/// trickling their bodies do not stop good requests (before, each held a permit while its body
/// arrived: every good request got 503). The body memory budget refuses a body that would pass
/// it, with 503, and returns its share when a request ends.
#[test]
fn slow_bodies_do_not_starve_inference() {
    let m = ModelSpec::from_file("digits", fixture("digits").join("model.jaxexport"));
    let s = InProcess::start(vec![m], |c| {
        c.max_concurrent_requests = 4;
        c.max_body_memory_bytes = 64 << 10;
        c.body_read_timeout = Duration::from_secs(20);
    });
    let mut drips = Vec::new();
    for _ in 0..24 {
        let mut c = Conn::open(s.addr);
        c.stream
            .write_all(
                b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n\r\n{\"in",
            )
            .unwrap();
        drips.push(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..8 {
        assert_digits_ok(s.addr);
    }
    // A body past the memory budget (64 KiB here, 24 drips hold about 24 KiB): 503, closed.
    let big = json!({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
        "data": vec![0.0f32; 64], "pad": "x".repeat(60 << 10)}]});
    let r = post_json(s.addr, "/v2/models/digits/infer", &big);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.error()
            .contains("request bodies in memory would pass 65536 bytes"),
        "{}",
        r.error()
    );
    assert_eq!(r.header("connection"), Some("close"));
    // The drips go away: their memory comes back, and a large-but-fitting body passes the budget.
    drop(drips);
    std::thread::sleep(Duration::from_millis(300));
    let fits = json!({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
        "data": vec![0.0f32; 64]}], "parameters": {"pad": "x".repeat(40 << 10)}});
    let r = post_json(s.addr, "/v2/models/digits/infer", &fits);
    assert_ne!(r.status, 503, "{}", r.text());
    assert_digits_ok(s.addr);
}

/// Models load in parallel: a model whose compile takes seconds (first in name order) does not
/// delay a small one, which is ready while the slow one still loads.
#[test]
fn a_slow_model_does_not_delay_a_fast_one() {
    let slow = common::slow_module(2000);
    let s = InProcess::start_loading(
        vec![
            ModelSpec::from_bytes("a_slow", slow.into_bytes()),
            ModelSpec::from_file("b_fast", fixture("tiny").join("model.jaxexport")),
        ],
        |_| {},
    );
    let started = Instant::now();
    loop {
        let idx = post_json(s.addr, "/v2/repository/index", &json!({})).json();
        let state = |n: &str| {
            idx.as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == n)
                .map(|m| m["state"].as_str().unwrap_or("").to_string())
                .unwrap()
        };
        if state("b_fast") == "READY" {
            assert_eq!(state("a_slow"), "LOADING", "{idx}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{idx}");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_loaded(s.addr);
    assert_eq!(get(s.addr, "/v2/models/a_slow/ready").status, 200);
}

/// Past the connection caps a connection gets a 503 saying which cap (not a bare reset); one
/// client address holds at most its share, and slots come back when connections close.
#[test]
fn connection_caps_shed_with_a_response() {
    let m = ModelSpec::from_file("digits", fixture("digits").join("model.jaxexport"));
    let s = InProcess::start(vec![m], |c| {
        c.max_connections = 6;
        c.max_connections_per_client = 3;
    });
    // Three idle connections from 127.0.0.1 (the test's address) use up its share (once the
    // start-up's own connections have ended on the server's side).
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<Conn> = (0..3).map(|_| Conn::open(s.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut c = Conn::open(s.addr);
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(
        r.error(),
        "too many connections from 127.0.0.1: at most 3 per client address"
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    assert_digits_ok(s.addr);
    let t = get(s.addr, "/metrics").text();
    assert!(
        t.contains("xlaguard_admission_rejections_total{reason=\"client_connections\"} 1"),
        "{t}"
    );
    // The global cap: the same answer, naming it.
    let m = ModelSpec::from_file("digits", fixture("digits").join("model.jaxexport"));
    let s = InProcess::start(vec![m], |c| c.max_connections = 2);
    // (The start-up's own connections must have ended on the server's side first.)
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<Conn> = (0..2).map(|_| Conn::open(s.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let r = Conn::open(s.addr).read_response().unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error(), "server busy: 2 connections open");
    drop(held);
}
