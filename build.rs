//! Generates the gRPC frontend's messages and service trait from `proto/` (Triton's
//! `grpc_service.proto` and `model_config.proto`) with protox, a protobuf compiler in Rust: no
//! `protoc` on the build machine.

fn main() {
    #[cfg(feature = "server")]
    grpc();
}

#[cfg(feature = "server")]
fn grpc() {
    println!("cargo:rerun-if-changed=proto");
    let fds = match protox::compile(["grpc_service.proto"], ["proto"]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("proto/: {e:?}");
            std::process::exit(1);
        }
    };
    let built = tonic_build::configure()
        .build_client(false)
        .build_server(true)
        .build_transport(false)
        // `bytes` fields as `Bytes`: tensor contents are sliced from the message, not copied.
        .bytes(["."])
        .compile_fds(fds);
    if let Err(e) = built {
        eprintln!("generating the gRPC code: {e}");
        std::process::exit(1);
    }
}
