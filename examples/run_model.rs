//! Run a JAX-exported model from Rust in a few lines.
//!
//! `cargo run --example run_model -- hlo/digits/model.jaxexport hlo/digits/in0.npy`

use xlaguard::{Engine, EngineConfig, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Compiles run in jailed copies of this executable: let such a copy do its job and exit.
    xlaguard::compile::worker_main_if_requested();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, inputs) = args
        .split_first()
        .ok_or("usage: run_model MODEL [IN.npy ...]")?;

    // Finds the plugin (third_party/, $XLAGUARD_PLUGIN, pip), creates a client.
    let engine = Engine::new(&EngineConfig::default())?;
    // Parses the artifact, compiles it, reads the signature.
    let model = engine.load_file(model.as_ref())?;
    let inputs: Vec<Tensor> = inputs
        .iter()
        .map(|p| Tensor::read_npy(p.as_ref()))
        .collect::<Result<_, _>>()?;
    // Every input is checked against the signature before anything reaches the device.
    let views: Vec<_> = inputs.iter().map(Tensor::view).collect();
    let outputs = model.run(&views)?;
    for (spec, out) in model.signature().outputs.iter().zip(&outputs) {
        println!("{}: {}", spec.name, out.type_string());
    }
    Ok(())
}
