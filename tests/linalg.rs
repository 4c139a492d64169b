mod common;
use common::{engine, fixture, numbered};
use xlaguard::{Tensor, TensorRef};

#[test]
fn scratch_qr() {
    let dir = fixture("qr");
    let m = engine().load_file(&dir.join("model.jaxexport")).unwrap();
    let inputs = numbered(&dir, "in");
    let views: Vec<TensorRef<'_>> = inputs.iter().map(Tensor::view).collect();
    let got = m.run(&views).unwrap();
    for g in &got {
        g.write_npy(&std::path::Path::new("/tmp/la").join(format!("qr_out{}.npy", 0)))
            .ok();
        println!("{:?}", g.to_array::<f32>().unwrap());
    }
}
