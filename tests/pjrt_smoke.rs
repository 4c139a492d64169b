//! The PJRT layer alone, end to end: load, client, compile, upload, execute, read back,
//! serialize, deserialize, introspect.

use xlaguard::pjrt::{Api, Client, ClientOptions, CompileOptions};
use xlaguard::signature::DType;

fn plugin() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so")
}

#[test]
fn add_two_vectors() {
    let api = Api::load(&plugin()).unwrap();
    println!("version {:?}", api.version());
    for (k, v) in api.attributes().unwrap() {
        println!("attr {k} = {v}");
    }
    let client = Client::new(api, &ClientOptions::cpu()).unwrap();
    println!(
        "platform {} {}",
        client.platform(),
        client.platform_version()
    );
    let text = r#"func.func public @main(%arg0: tensor<4xf32>, %arg1: tensor<4xf32>) -> tensor<4xf32> {
  %0 = stablehlo.add %arg0, %arg1 : tensor<4xf32>
  return %0 : tensor<4xf32>
}"#;
    let exe = client
        .compile(text.as_bytes(), "mlir", &CompileOptions::new())
        .unwrap();
    println!("{exe:?}");
    let a: Vec<u8> = [1f32, 2., 3., 4.]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let b: Vec<u8> = [10f32, 20., 30., 40.]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let ba = client.buffer_from_host(&a, DType::F32, &[4]).unwrap();
    let bb = client.buffer_from_host(&b, DType::F32, &[4]).unwrap();
    let out = exe.execute(&[&ba, &bb]).unwrap();
    let host = out[0].to_host().unwrap();
    let vals: Vec<f32> = host
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vals, [11., 22., 33., 44.]);
    let ser = exe.serialize().unwrap();
    println!("serialized {} bytes", ser.0.len());
    // SAFETY: the bytes come from our own compile above.
    let exe2 = unsafe { client.deserialize(&ser.0) }.unwrap();
    let out2 = exe2.execute(&[&ba, &bb]).unwrap();
    assert_eq!(out2[0].to_host().unwrap(), host);
    println!("fp {:?} stats {:?}", exe.fingerprint(), exe.memory_stats());
    let (fmt, prog) = exe.optimized_program().unwrap();
    println!("optimized {} {}", fmt, prog.len());
}
