//! The gRPC (KServe v2 / Triton) request decoder: protobuf bytes as tonic would hand them over
//! (`ModelInferRequest` decoded by prost), then `server::grpc::decode_request` against a fixture
//! signature (byte 0: which). What must hold: a typed bad-request error with a message, or
//! inputs in signature order that the library's input check accepts, outputs that exist, each
//! once, and, for raw contents, every input's bytes exactly its `raw_input_contents` entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use xlaguard::server::fault::ErrorKind;
use xlaguard::server::grpc::{decode_request, proto::ModelInferRequest};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let Ok(req) = ModelInferRequest::decode(bytes) else {
        return;
    };
    let sig = xlaguard_fuzz::signature(which);
    match decode_request(&req, sig) {
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::InvalidInput, "{e:?}");
            assert!(!e.message.is_empty());
            let (rule, _) = e.rejection.as_ref().expect("a refusal names its rule");
            assert!(!rule.is_empty());
        }
        Ok(r) => {
            assert_eq!(r.inputs.len(), sig.inputs.len(), "one tensor per input");
            for (i, (t, spec)) in r.inputs.iter().zip(&sig.inputs).enumerate() {
                assert_eq!(t.name, spec.name, "inputs in signature order");
                xlaguard::validate::check_input(spec, i, &t.view())
                    .unwrap_or_else(|e| panic!("accepted input fails the input check: {e}"));
            }
            let mut seen = vec![false; sig.outputs.len()];
            for o in &r.outputs {
                assert!(o.index < sig.outputs.len());
                assert!(!std::mem::replace(&mut seen[o.index], true), "output once");
            }
            assert_eq!(r.id.as_deref().unwrap_or(""), req.id);
            if !req.raw_input_contents.is_empty() {
                for (k, t) in req.inputs.iter().enumerate() {
                    let got = r.inputs.iter().find(|x| x.name == t.name).expect("kept");
                    assert_eq!(&got.data[..], &req.raw_input_contents[k][..], "raw bytes");
                }
            }
        }
    }
});
