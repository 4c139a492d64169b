//! The `xlaguard` command line: `serve`, `inspect`, `run`, `compile`, `bench`, `plugin`, `policy`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use xlaguard::artifact::{self, Artifact};
use xlaguard::compile::Isolation;
use xlaguard::plugin::{self, DeviceKind};
use xlaguard::signature::{Dim, TensorSpec};
use xlaguard::validate::Policy;
use xlaguard::{Engine, EngineConfig, Model, Tensor, TensorRef};

/// The embedded default model: the digits classifier exported by `hlo/export.py`.
const DEFAULT_MODEL: &[u8] = include_bytes!("../hlo/digits/model.jaxexport");
/// A real test digit (label 2) for the default model.
const DEFAULT_INPUT: &[u8] = include_bytes!("../hlo/digits/in0.npy");

#[derive(Parser)]
#[command(
    name = "xlaguard",
    version,
    about = "Run JAX-exported models natively, with every input checked"
)]
struct Cli {
    /// PJRT plugin file (else $XLAGUARD_PLUGIN, third_party/, then pip locations).
    #[arg(long, global = true)]
    plugin: Option<PathBuf>,
    /// The StableHLO refiner shape-polymorphic exports need (else $XLAGUARD_REFINER, then
    /// third_party/refiner/; `scripts/fetch-plugin.sh --refiner-only` fetches it).
    #[arg(long, global = true, value_name = "FILE")]
    refiner: Option<PathBuf>,
    /// Device kind to look for when discovering a plugin.
    #[arg(long, global = true, value_parser = ["cpu", "cuda", "tpu", "auto"])]
    device: Option<String>,
    /// Run artifacts exported for another platform (JAX refuses; see EngineConfig).
    #[arg(long, global = true)]
    any_platform: bool,
    /// CUDA: fraction of GPU memory the client may preallocate (plugin default 0.75).
    #[arg(long, global = true)]
    gpu_memory_fraction: Option<f32>,
    /// CUDA: allocate on demand instead of preallocating.
    #[arg(long, global = true)]
    gpu_no_preallocate: bool,
    /// CUDA: the GPUs the client may use, e.g. `0` or `0,1`.
    #[arg(long, global = true, value_delimiter = ',')]
    gpu_visible_devices: Option<Vec<i64>>,
    /// Where compiles run: in a jailed worker process (default) or in this process.
    #[arg(long, global = true, value_parser = ["process", "thread"])]
    isolation: Option<String>,
    /// Where models execute: in this process (default) or in jailed execution workers that are
    /// killed at a request's deadline (`serve`: per model, `config.toml` `execution` wins).
    #[arg(long, global = true, value_parser = ["in-process", "process"])]
    execution: Option<String>,
    /// CPU kernel libraries compiles may call: `xla` (JAX's choice, default), `xnnpack`,
    /// `onednn`, `ynn_off` (see docs/cpu_kernels.md; `serve`: `config.toml` `cpu_kernels`
    /// wins). `inspect` shows the kernels used and the difference to JAX's goldens.
    #[arg(long, global = true, value_parser = xlaguard::CpuKernels::NAMES)]
    cpu_kernels: Option<String>,
    /// Cache compiled executables (authenticated) in this folder.
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    /// Append a JSON-lines audit record of every compile to this file.
    #[arg(long, global = true)]
    audit_log: Option<PathBuf>,
    /// Kill a compile that runs longer than this many seconds.
    #[arg(long, global = true)]
    compile_timeout: Option<f64>,
    /// The share of this host's memory, in percent, a compile worker may map (default 50).
    #[arg(long, global = true, value_name = "PERCENT",
          value_parser = clap::builder::RangedU64ValueParser::<u8>::new().range(1..=100))]
    compile_memory_percent: Option<u8>,
    /// Largest module compiled, in bytes (default and most: 2 GiB, the artifact formats'
    /// limit); a larger one is refused before any worker sees it, naming both sizes.
    #[arg(long, global = true, value_name = "BYTES")]
    max_module_bytes: Option<usize>,
    /// Show the PJRT plugin's informational log lines (absl start-up notes such as
    /// `cpu_device_count set via create_options`); hidden by default. Its warnings and errors
    /// are always shown. An explicit `TF_CPP_MIN_LOG_LEVEL` in the environment wins.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The longest `--compile-timeout`: one week.
const MAX_COMPILE_TIMEOUT_S: f64 = 7.0 * 86_400.0;

#[derive(Subcommand)]
enum Cmd {
    /// Serve models over HTTP (KServe v2 / Open Inference Protocol); without --models, the
    /// embedded digits classifier as `digits`.
    #[cfg(feature = "server")]
    Serve(xlaguard::server::ServeArgs),
    /// Print a model's signature, platforms, calling convention and plugin. Exit status: 0
    /// when the model compiles and can run, 2 when it cannot (the reason is printed: `NOT
    /// RUNNABLE: ...` or `not compiled: ...`, `unsupported`/`note` in JSON), 1 on any other
    /// error (an unreadable file).
    Inspect {
        /// Model file, or `default` for the embedded digits classifier.
        model: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Value policy file (else MODEL.policy.toml beside the model, if any).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Weights (.safetensors or .npz) bound to the inputs of the same names.
        #[arg(long, value_name = "FILE")]
        params: Option<PathBuf>,
    },
    /// Validate inputs, run, write outputs as .npy.
    Run {
        /// Model file, or `default` for the embedded digits classifier.
        model: String,
        /// Inputs as .npy files, in signature order.
        inputs: Vec<PathBuf>,
        /// An input by name: NAME=FILE.npy (repeatable).
        #[arg(long = "input", value_name = "NAME=FILE")]
        named: Vec<String>,
        /// Folder for out0.npy, out1.npy, ... (created if missing).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Value policy file (else MODEL.policy.toml beside the model, if any).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Weights (.safetensors or .npz) bound to the inputs of the same names; the
        /// positional inputs are then the others.
        #[arg(long, value_name = "FILE")]
        params: Option<PathBuf>,
        /// Bake the --params tensors into the executable as constants (one more compile; XLA
        /// then optimizes around the weights, as for an export with baked weights).
        #[arg(long, requires = "params")]
        bake: bool,
    },
    /// Compile a model and write the serialized executable.
    Compile {
        /// Model file, or `default`.
        model: String,
        /// Output file for the serialized executable.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Time raw and validated execution (used by benches/vs_jax.py).
    Bench {
        /// Model file, or `default`.
        model: String,
        /// Timed iterations.
        #[arg(long, default_value_t = 2000)]
        iters: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Show which plugin would be used and its attributes.
    Plugin,
    /// Value policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Write a starting policy from sample data (observed ranges plus a margin), for review.
    Suggest {
        /// Model file.
        model: String,
        /// Sample data: FILE.npy or NAME=FILE.npy (repeatable). Unnamed files go to the inputs
        /// in signature order, or all to the only input of a one-input model. Any shape.
        #[arg(long = "from", value_name = "[NAME=]FILE", required = true)]
        from: Vec<String>,
        /// Widen the observed range by this fraction of its width on each side.
        #[arg(long, default_value_t = 0.05)]
        margin: f64,
        /// Write the policy here (else print it).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Check a policy file against a model and print it as bound (effective rules per input).
    Check {
        /// Model file.
        model: String,
        /// Policy file (else MODEL.policy.toml beside the model).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
}

/// `inspect` found the model not runnable; the reason is already printed (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("the model is not runnable")]
struct NotRunnable;

/// The exit status of `inspect` for a model that cannot run.
const EXIT_NOT_RUNNABLE: u8 = 2;

fn main() -> ExitCode {
    // A compile worker: jail, compile one module, exit. Must come before anything else.
    xlaguard::compile::worker_main_if_requested();
    let cli = Cli::parse();
    quiet_plugin_info_logs(cli.verbose);
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<NotRunnable>() => ExitCode::from(EXIT_NOT_RUNNABLE),
        Err(e) => {
            // One line: the chain of causes joined.
            eprintln!("error: {:#}", e);
            ExitCode::from(1)
        }
    }
}

/// Hides the plugin's INFO log lines unless `-v` is given: XLA's logging (TSL over absl) reads
/// `TF_CPP_MIN_LOG_LEVEL` at its first message, in this process and in the compile workers,
/// which keep that variable. Level 1 drops INFO only; warnings, errors and fatal messages (a
/// worker's crash report) still reach stderr.
fn quiet_plugin_info_logs(verbose: u8) {
    const VAR: &str = "TF_CPP_MIN_LOG_LEVEL";
    if verbose == 0 && std::env::var_os(VAR).is_none() {
        // No other thread exists yet: nothing reads the environment concurrently.
        std::env::set_var(VAR, "1");
    }
}

fn config(cli: &Cli) -> Result<EngineConfig> {
    let mut c = EngineConfig::default();
    c.plugin.clone_from(&cli.plugin);
    c.allow_platform_mismatch = cli.any_platform;
    c.device = match cli.device.as_deref() {
        None | Some("auto") => None,
        Some("cpu") => Some(DeviceKind::Cpu),
        Some("cuda") => Some(DeviceKind::Cuda),
        Some("tpu") => Some(DeviceKind::Tpu),
        Some(other) => bail!("unknown device '{other}'"),
    };
    if cli.isolation.as_deref() == Some("thread") {
        c.compile.isolation(Isolation::Thread);
    }
    if let Some(k) = &cli.cpu_kernels {
        c.cpu_kernels = k.parse()?;
    }
    if let Some(e) = cli
        .execution
        .as_deref()
        .and_then(xlaguard::Execution::parse)
    {
        c.execution.execution = e;
    }
    c.compile.cache_dir.clone_from(&cli.cache_dir);
    c.compile.refiner.clone_from(&cli.refiner);
    if let Some(n) = cli.max_module_bytes {
        let most = xlaguard::compile::DEFAULT_MAX_MODULE_BYTES;
        if n == 0 || n > most {
            bail!("--max-module-bytes must be between 1 and {most}, got {n}");
        }
        c.compile.limits.max_module_bytes = n;
    }
    c.compile.audit_log.clone_from(&cli.audit_log);
    if let Some(p) = cli.compile_memory_percent {
        c.compile.limits.host_memory_percent = p;
    }
    if let Some(t) = cli.compile_timeout {
        if !(t.is_finite() && t > 0.0 && t <= MAX_COMPILE_TIMEOUT_S) {
            bail!(
                "--compile-timeout must be a number of seconds in (0, {MAX_COMPILE_TIMEOUT_S}], \
                 got {t:e}"
            );
        }
        c.compile.deadline(std::time::Duration::from_secs_f64(t));
    }
    if cli.gpu_memory_fraction.is_some()
        || cli.gpu_no_preallocate
        || cli.gpu_visible_devices.is_some()
    {
        if let Some(f) = cli.gpu_memory_fraction {
            if !(f > 0.0 && f <= 1.0) {
                bail!("--gpu-memory-fraction must be in (0, 1], got {f}");
            }
        }
        c.client_options = Some(xlaguard::pjrt::ClientOptions::gpu(
            cli.gpu_memory_fraction,
            cli.gpu_no_preallocate.then_some(false),
            cli.gpu_visible_devices.as_deref(),
        ));
    }
    Ok(c)
}

fn read_artifact(model: &str) -> Result<Artifact> {
    if model == "default" {
        return artifact::load(DEFAULT_MODEL).context("embedded default model");
    }
    Ok(artifact::load_file(Path::new(model))?)
}

fn dims_json(spec: &TensorSpec) -> serde_json::Value {
    spec.shape
        .iter()
        .map(|d| match d {
            Dim::Static(n) => serde_json::json!(n),
            Dim::Symbolic(s) => serde_json::json!(s),
        })
        .collect()
}

fn specs_json(v: &[TensorSpec]) -> serde_json::Value {
    v.iter()
        .map(|s| {
            let mut j =
                serde_json::json!({"name": s.name, "dtype": s.dtype.name(), "shape": dims_json(s)});
            if let Some(t) = &s.jax_type {
                j["jax_type"] = t.as_str().into();
            }
            j
        })
        .collect()
}

fn real_main(cli: Cli) -> Result<()> {
    let cfg = config(&cli)?;
    match &cli.cmd {
        #[cfg(feature = "server")]
        Cmd::Serve(args) => {
            // `serve` runs models in jailed execution workers unless told otherwise.
            let mut cfg = cfg;
            if cli.execution.is_none() {
                cfg.execution.execution = xlaguard::Execution::Process;
            }
            Ok(xlaguard::server::serve_command(cfg, args, DEFAULT_MODEL)?)
        }
        Cmd::Inspect {
            model,
            json,
            policy,
            params,
        } => inspect(&cfg, model, *json, policy.as_deref(), params.as_deref()),
        Cmd::Run {
            model,
            inputs,
            named,
            out,
            policy,
            params,
            bake,
        } => run(
            &cfg,
            model,
            inputs,
            named,
            out.as_deref(),
            policy.as_deref(),
            params.as_deref().map(|p| (p, *bake)),
        ),
        Cmd::Policy(PolicyCmd::Suggest {
            model,
            from,
            margin,
            output,
        }) => suggest(&cfg, model, from, *margin, output.as_deref()),
        Cmd::Policy(PolicyCmd::Check { model, policy }) => {
            let engine = Engine::new(&cfg)?;
            let mut m = engine.load_artifact(read_artifact(model)?)?;
            let file = match policy_for(model, policy.as_deref())? {
                Some((p, file)) => {
                    m.set_policy(p)?;
                    file
                }
                None => bail!(
                    "no policy: give --policy FILE or put {} beside the model",
                    Policy::beside(Path::new(model)).display()
                ),
            };
            println!("policy {file}: ok");
            print_policy(&m);
            Ok(())
        }
        Cmd::Compile { model, output } => {
            let engine = Engine::new(&cfg)?;
            let t = Instant::now();
            let m = engine.load_artifact(read_artifact(model)?)?;
            let ser = m.serialized_executable()?;
            std::fs::write(output, &ser.0).with_context(|| output.display().to_string())?;
            println!(
                "compiled in {:.1} ms; {} bytes written to {}",
                t.elapsed().as_secs_f64() * 1e3,
                ser.0.len(),
                output.display()
            );
            Ok(())
        }
        Cmd::Bench { model, iters, json } => bench(&cfg, model, *iters, *json),
        Cmd::Plugin => {
            let found = plugin::discover(cfg.plugin.as_deref(), cfg.device)?;
            let libs = (found.kind == DeviceKind::Cuda)
                .then(|| xlaguard::pjrt::deps::preload_nvidia_libraries(&found.path));
            let api = xlaguard::pjrt::Api::load(&found.path)?;
            println!(
                "plugin: {} ({:?}, {})",
                found.path.display(),
                found.source,
                found.kind.name()
            );
            println!("PJRT API: {}.{}", api.version().0, api.version().1);
            if let Some(l) = libs {
                println!("NVIDIA libraries: {}", l.describe());
            }
            for (k, v) in api.attributes()? {
                println!("  {k} = {v}");
            }
            #[cfg(feature = "lapack")]
            if found.kind == DeviceKind::Cpu {
                let n = xlaguard::lapack::targets().count();
                match xlaguard::plugin::find_lapack(None) {
                    Ok(p) => println!("LAPACK handlers: {n} targets, over {}", p.display()),
                    Err(e) => println!("LAPACK handlers: {n} targets; {e}"),
                }
            }
            Ok(())
        }
    }
}

/// The policy to use: `--policy FILE`, else `MODEL.policy.toml` beside a model file.
fn policy_for(model: &str, explicit: Option<&Path>) -> Result<Option<(Policy, String)>> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if model == "default" => return Ok(None),
        None => {
            let p = Policy::beside(Path::new(model));
            if !p.is_file() {
                return Ok(None);
            }
            p
        }
    };
    let policy = Policy::load(&path)?;
    Ok(Some((policy, path.display().to_string())))
}

/// The bound policy, one line per input.
fn print_policy(m: &Model) {
    for r in m.policy().inputs() {
        println!("  {}: {r}", r.name());
    }
    let p = m.policy().policy();
    let mut wide = Vec::new();
    if p.strict {
        wide.push("strict".to_string());
    }
    if let Some(n) = p.max_total_bytes {
        wide.push(format!("max_total_bytes {n}"));
    }
    for (d, n) in &p.dims {
        wide.push(format!("{d} <= {n}"));
    }
    if !wide.is_empty() {
        println!("  model-wide: {}", wide.join(", "));
    }
}

/// A model folder given to `inspect`, read as `serve` reads it (artifact, policy, params,
/// batching); `None` for a file.
#[cfg(feature = "server")]
fn model_folder(model: &str) -> Result<Option<(String, xlaguard::server::repo::ModelSpec)>> {
    let dir = Path::new(model);
    if !dir.is_dir() {
        return Ok(None);
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_string();
    let spec = xlaguard::server::repo::read_model_dir(dir, &name);
    if let Some(p) = &spec.problem {
        bail!("{}: {p}", dir.display());
    }
    let file = match &spec.source {
        xlaguard::server::repo::ArtifactSource::File(p) => p.to_string_lossy().into_owned(),
        xlaguard::server::repo::ArtifactSource::Bytes(_) => bail!("no artifact file"),
    };
    Ok(Some((file, spec)))
}

fn print_batching(b: &serde_json::Value) {
    if let Some(sizes) = b.get("bundle").and_then(|s| s.as_array()) {
        let sizes: Vec<String> = sizes.iter().map(ToString::to_string).collect();
        println!("bundle: static exports at batch sizes {}", sizes.join(", "));
    }
    let state = b.get("state").and_then(|s| s.as_str()).unwrap_or("off");
    if state == "off" {
        println!("batching: off");
        return;
    }
    let sizes: Vec<String> = b
        .get("sizes")
        .and_then(|s| s.as_array())
        .map(|a| a.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    println!(
        "batching: {state}: sizes {}, max_queue_delay_us {}, pad {}, batch_dim {}",
        sizes.join(", "),
        b.get("max_queue_delay_us")
            .unwrap_or(&serde_json::Value::Null),
        b.get("pad").and_then(|s| s.as_str()).unwrap_or("?"),
        b.get("batch_dim").unwrap_or(&serde_json::Value::Null),
    );
    if let Some(r) = b.get("reason").and_then(|s| s.as_str()) {
        println!("  refused: {r}");
    }
}

fn inspect(
    cfg: &EngineConfig,
    model: &str,
    json: bool,
    policy: Option<&Path>,
    params: Option<&Path>,
) -> Result<()> {
    #[cfg(feature = "server")]
    let folder = model_folder(model)?;
    #[cfg(feature = "server")]
    let (model, policy, params) = match &folder {
        Some((file, spec)) => (
            file.as_str(),
            policy.or(spec.policy.as_deref()),
            params.or(spec.params.as_deref()),
        ),
        None => (model, policy, params),
    };
    let a = read_artifact(model)?;
    let params = params.map(xlaguard::Params::read).transpose()?;
    let policy = policy_for(model, policy)?;
    let found = plugin::discover(cfg.plugin.as_deref(), cfg.device);
    let unsupported = a.check_supported().err().map(|e| e.to_string());
    // The compiled module completes the signature: names of positional arguments (kept only in
    // the MLIR bytecode, surfaced by XLA) and, for HLO protos or bytecode, the shapes.
    let mut sig = a.signature.clone();
    let mut note = None;
    let mut bound = None;
    let mut jail = None;
    match Engine::new(cfg) {
        Ok(e) => {
            jail = Some((e.isolation(), e.sandbox_report().clone()));
            if unsupported.is_none() {
                match e.load_artifact(a.clone()) {
                    Ok(mut m) => {
                        sig = Some(m.signature().clone());
                        if let Some((p, _)) = &policy {
                            m.set_policy(p.clone())?;
                        }
                        if let Some(p) = &params {
                            m.bind(p)?;
                            sig = Some(m.signature().clone());
                        }
                        // Process execution: start the worker, so its jail can be shown.
                        if let Err(e) = m.start_execution() {
                            note = Some(format!("execution worker: {e}"));
                        }
                        bound = Some(m);
                    }
                    Err(e) => note = Some(format!("not compiled: {e}")),
                }
            }
        }
        Err(e) if unsupported.is_none() => note = Some(format!("not compiled: {e}")),
        Err(_) => {}
    }
    // Which library kernels the optimized module calls, and (goldens beside the artifact)
    // how far its outputs are from JAX's.
    let kernels = bound.as_ref().and_then(|m| {
        let calls = m.library_calls().ok()?;
        let calls: Vec<(String, serde_json::Value)> =
            calls.into_iter().map(|(n, c)| (n, c.into())).collect();
        let dir = Path::new(model)
            .parent()
            .filter(|_| Path::new(model).is_file());
        let golden = match dir.map(|d| xlaguard::kernels::golden_difference(m, d)) {
            Some(Ok(Some(d))) => serde_json::to_value(d).unwrap_or_default(),
            Some(Err(e)) => serde_json::json!({"error": e.to_string()}),
            _ => serde_json::Value::Null,
        };
        Some((calls, golden))
    });
    let runnable = bound.is_some();
    // A model folder: its batching, as `serve` sets it up (the gate runs here too).
    #[cfg(feature = "server")]
    let batching: Option<serde_json::Value> = match (&folder, &bound) {
        (Some((_, spec)), Some(m)) => Some(
            xlaguard::server::batching_report(spec, m.engine())
                .unwrap_or_else(|e| serde_json::json!({"state": "error", "reason": e})),
        ),
        _ => None,
    };
    #[cfg(not(feature = "server"))]
    let batching: Option<serde_json::Value> = None;
    let policy_file = policy.as_ref().map(|(_, f)| f.clone());
    let sig = sig.unwrap_or_default();
    let plugin_desc = match &found {
        Ok(f) => format!("{} ({:?}, {})", f.path.display(), f.source, f.kind.name()),
        Err(e) => format!(
            "none found: {}",
            e.to_string().lines().next().unwrap_or_default()
        ),
    };
    if json {
        let v = serde_json::json!({
            "kind": format!("{:?}", a.kind),
            "inputs": specs_json(&sig.inputs),
            "outputs": specs_json(&sig.outputs),
            "platforms": a.platforms,
            "calling_convention_version": a.calling_convention_version,
            "serialization_version": a.serialization_version,
            "kept_inputs": a.kept_inputs,
            "ordered_effects": a.ordered_effects,
            "nr_devices": a.nr_devices,
            "plugin": found.as_ref().ok().map(|f| serde_json::json!({"path": f.path, "source": format!("{:?}", f.source), "kind": f.kind.name()})),
            "unsupported": unsupported,
            "note": note,
            "polymorphic": bound.as_ref().is_some_and(|m| m.is_polymorphic()),
            "constraints": bound.as_ref().map(|m| m.info().constraints.clone()).unwrap_or_default(),
            "bound": bound.as_ref().and_then(|m| m.bound_params()).map(|b| serde_json::json!({
                "source": b.source, "sha256": b.sha256, "bytes": b.bytes, "baked": b.baked,
                "inputs": specs_json(&b.inputs),
            })),
            "policy": bound.as_ref().map(|m| {
                let mut v = m.policy().to_json();
                v["file"] = serde_json::json!(policy_file);
                v
            }),
            "compile": jail.as_ref().map(|(i, r)| serde_json::json!({"isolation": i.name(), "jail": r})),
            "cpu_kernels": kernels.as_ref().map(|(calls, golden)| serde_json::json!({
                "setting": cfg.cpu_kernels.name(),
                "library_calls": calls.iter().cloned().collect::<serde_json::Map<_, _>>(),
                "golden": golden,
            })),
            "batching": batching,
            "execution": bound.as_ref().map(|m| {
                let report = m.execution_report();
                serde_json::json!({
                    "mode": m.execution().name(),
                    "execution_bytes": m.info().execution_bytes,
                    "memory": m.info().memory.map(|s| serde_json::json!({
                        "argument_bytes": s.argument_bytes, "output_bytes": s.output_bytes,
                        "temp_bytes": s.temp_bytes, "alias_bytes": s.alias_bytes,
                        "generated_code_bytes": s.generated_code_bytes,
                    })),
                    "jail": report.as_ref().map(|(j, _)| j),
                    "workers": report.as_ref().map(|(_, s)| s),
                })
            }),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return if runnable {
            Ok(())
        } else {
            Err(NotRunnable.into())
        };
    }
    println!("kind: {:?}", a.kind);
    println!("inputs:");
    let full_index = |i: usize, name: &str| {
        bound
            .as_ref()
            .and_then(|m| m.full_signature().input_index(name))
            .unwrap_or(i)
    };
    for (i, s) in sig.inputs.iter().enumerate() {
        let f = full_index(i, &s.name);
        let dropped = a.kept_inputs.as_ref().is_some_and(|k| !k.contains(&f));
        println!(
            "  {i}: {} {}{}",
            s.name,
            s.described_type(),
            if dropped {
                "  (unused by the module; accepted and ignored)"
            } else {
                ""
            }
        );
    }
    if let Some(b) = bound.as_ref().and_then(|m| m.bound_params()) {
        println!(
            "bound inputs: {} from {} (sha256 {}, {} bytes)",
            b.inputs.len(),
            b.source,
            b.sha256,
            b.bytes
        );
        for s in &b.inputs {
            println!("  {} {}", s.name, s.described_type());
        }
    }
    println!("outputs:");
    for (i, s) in sig.outputs.iter().enumerate() {
        println!("  {i}: {} {}", s.name, s.described_type());
    }
    if let Some(m) = bound.as_ref().filter(|m| m.is_polymorphic()) {
        println!("shape-polymorphic: refined and compiled per concrete shape on first use");
        if !m.info().constraints.is_empty() {
            println!("constraints: {}", m.info().constraints.join(", "));
        }
    }
    if let Some(b) = &batching {
        print_batching(b);
    }
    match (&bound, &policy_file) {
        (Some(m), file) => {
            println!(
                "policy: {}",
                file.as_deref()
                    .unwrap_or("default (float inputs reject NaN and infinities)")
            );
            print_policy(m);
        }
        (None, Some(f)) => println!("policy: {f} (not bound: the model did not compile)"),
        (None, None) => {}
    }
    println!(
        "platforms: {}",
        if a.platforms.is_empty() {
            "(not stated)".to_string()
        } else {
            a.platforms.join(", ")
        }
    );
    if let Some(v) = a.calling_convention_version {
        println!("calling convention: {v}");
    }
    println!("plugin: {plugin_desc}");
    if let Some((calls, golden)) = &kernels {
        let calls: Vec<String> = calls.iter().map(|(n, c)| format!("{n} x{c}")).collect();
        println!(
            "cpu kernels: {} (library calls: {})",
            cfg.cpu_kernels,
            if calls.is_empty() {
                "none".to_string()
            } else {
                calls.join(", ")
            }
        );
        match golden {
            serde_json::Value::Null => {}
            g => println!("  vs JAX's goldens: {g}"),
        }
    }
    if let Some((isolation, r)) = &jail {
        match isolation {
            Isolation::Process => {
                println!("compile: jailed worker process (pid {} reported)", r.pid);
                print_jail(r);
                println!("  affinity:     {}", r.affinity);
            }
            Isolation::Thread => println!("compile: in this process (thread isolation)"),
        }
        print_unenforced(r);
    }
    if let Some(m) = &bound {
        match m.execution_report() {
            Some((r, w)) => {
                println!(
                    "execution: jailed worker process (pid {} reported), address space {} MiB",
                    r.pid,
                    w.address_space_limit.unwrap_or(0) >> 20
                );
                print_jail(&r);
                print_unenforced(&r);
            }
            None if m.execution() == xlaguard::Execution::Process => {
                println!("execution: a jailed worker per concrete shape, started on first use");
            }
            None => println!("execution: in this process (no jail, no deadline, no memory limit)"),
        }
        if let Some(b) = m.info().execution_bytes {
            println!("  memory per execution: {b} bytes (compiled memory statistics)");
        }
    }
    if let Some(u) = unsupported {
        println!("NOT RUNNABLE: {u}");
    }
    if let Some(n) = note {
        println!("{n}");
    }
    if runnable {
        Ok(())
    } else {
        Err(NotRunnable.into())
    }
}

fn load_inputs(
    m: &Model,
    model: &str,
    positional: &[PathBuf],
    named: &[String],
) -> Result<Vec<Tensor>> {
    if positional.is_empty() && named.is_empty() && model == "default" {
        return Ok(vec![Tensor::from_npy(DEFAULT_INPUT)?]);
    }
    if !positional.is_empty() && !named.is_empty() {
        bail!("give inputs either positionally or with --input NAME=FILE, not both");
    }
    if !named.is_empty() {
        let mut pairs = Vec::new();
        for n in named {
            let (name, file) = n
                .split_once('=')
                .ok_or_else(|| anyhow!("--input expects NAME=FILE.npy, got '{n}'"))?;
            pairs.push((name.to_string(), Tensor::read_npy(Path::new(file))?));
        }
        return Ok(xlaguard::validate::order_named(m.signature(), pairs)?);
    }
    positional
        .iter()
        .map(|p| Ok(Tensor::read_npy(p)?))
        .collect()
}

fn summary(t: &Tensor) -> String {
    use xlaguard::DType;
    let vals: Vec<f64> = match t.dtype() {
        DType::F32 => t
            .to_array::<f32>()
            .map(|a| a.iter().map(|&x| f64::from(x)).collect())
            .unwrap_or_default(),
        DType::F64 => t
            .to_array::<f64>()
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default(),
        DType::BF16 => t
            .to_array::<half::bf16>()
            .map(|a| a.iter().map(|x| x.to_f64()).collect())
            .unwrap_or_default(),
        DType::F16 => t
            .to_array::<half::f16>()
            .map(|a| a.iter().map(|x| x.to_f64()).collect())
            .unwrap_or_default(),
        DType::I32 => t
            .to_array::<i32>()
            .map(|a| a.iter().map(|&x| f64::from(x)).collect())
            .unwrap_or_default(),
        DType::I64 => t
            .to_array::<i64>()
            .map(|a| a.iter().map(|&x| x as f64).collect())
            .unwrap_or_default(),
        DType::Bool => t.bytes().iter().map(|&b| f64::from(b)).collect(),
        DType::U8 => t.bytes().iter().map(|&b| f64::from(b)).collect(),
        _ => Vec::new(),
    };
    if vals.is_empty() {
        return String::new();
    }
    if vals.len() <= 8 {
        let shown: Vec<String> = vals.iter().map(|v| format!("{v}")).collect();
        return format!(" = [{}]", shown.join(", "));
    }
    let min = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let max = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = vals.iter().sum::<f64>() / vals.len() as f64;
    format!("  min {min:.6} max {max:.6} mean {mean:.6}")
}

/// The protections of a jailed worker, one per line (for `inspect`).
fn print_jail(r: &xlaguard::compile::JailReport) {
    println!("  landlock:     {}", r.landlock);
    println!("  seccomp:      {}", r.seccomp);
    println!("  network:      {}", r.network);
    println!("  capabilities: {}", r.capabilities);
    println!("  no_new_privs: {}", r.no_new_privs);
    println!("  rlimits:      {}", r.rlimits);
}

/// The protections a worker's kernel could not enforce.
fn print_unenforced(r: &xlaguard::compile::JailReport) {
    for u in &r.unenforced {
        println!("  NOT ENFORCED: {u}");
    }
}

fn run(
    cfg: &EngineConfig,
    model: &str,
    positional: &[PathBuf],
    named: &[String],
    out: Option<&Path>,
    policy: Option<&Path>,
    params: Option<(&Path, bool)>,
) -> Result<()> {
    let engine = Engine::new(cfg)?;
    let policy = policy_for(model, policy)?.map(|(p, _)| p);
    let m = match params {
        Some((p, true)) => {
            let (m, report) =
                engine.load_baked(read_artifact(model)?, &xlaguard::Params::read(p)?, policy)?;
            eprintln!("params {} (baked in): {report}", p.display());
            m
        }
        _ => {
            let mut m = engine.load_artifact(read_artifact(model)?)?;
            if let Some(p) = policy {
                m.set_policy(p)?;
            }
            if let Some((p, _)) = params {
                let report = m.bind(&xlaguard::Params::read(p)?)?;
                eprintln!("params {}: {report}", p.display());
            }
            m
        }
    };
    let inputs = load_inputs(&m, model, positional, named)?;
    let views: Vec<TensorRef<'_>> = inputs.iter().map(Tensor::view).collect();
    let (outputs, report) = m.run_with_report(&views)?;
    for r in &report.inputs {
        println!("sanitized {r}");
    }
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        for (i, t) in outputs.iter().enumerate() {
            t.write_npy(&dir.join(format!("out{i}.npy")))?;
        }
    }
    for (i, (t, spec)) in outputs.iter().zip(&m.signature().outputs).enumerate() {
        let file = out
            .map(|d| format!(" -> {}", d.join(format!("out{i}.npy")).display()))
            .unwrap_or_default();
        println!(
            "out{i} '{}': {}{}{}",
            spec.name,
            t.type_string(),
            summary(t),
            file
        );
    }
    Ok(())
}

fn suggest(
    cfg: &EngineConfig,
    model: &str,
    from: &[String],
    margin: f64,
    output: Option<&Path>,
) -> Result<()> {
    let engine = Engine::new(cfg)?;
    let m = engine.load_artifact(read_artifact(model)?)?;
    let sig = m.signature();
    let mut samples = Vec::new();
    let mut unnamed = 0usize;
    for f in from {
        let (index, file) = match f.split_once('=') {
            Some((name, file)) => {
                let i = sig.input_index(name).ok_or_else(|| {
                    anyhow!(
                        "--from {f}: the model has no input '{name}'; its inputs are {}",
                        sig.inputs
                            .iter()
                            .map(|s| format!("'{}'", s.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
                (i, file)
            }
            None => {
                let i = if sig.inputs.len() == 1 { 0 } else { unnamed };
                unnamed += 1;
                if i >= sig.inputs.len() {
                    bail!(
                        "--from {f}: more unnamed sample files than the model's {} inputs; use NAME=FILE",
                        sig.inputs.len()
                    );
                }
                (i, f.as_str())
            }
        };
        samples.push((index, Tensor::read_npy(Path::new(file))?));
    }
    let views: Vec<(usize, TensorRef<'_>)> = samples.iter().map(|(i, t)| (*i, t.view())).collect();
    let s = xlaguard::validate::suggest::suggest(sig, &views, margin)?;
    let text = s.to_toml();
    match output {
        Some(p) => {
            std::fs::write(p, &text).with_context(|| p.display().to_string())?;
            println!("wrote {}", p.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn median_us(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn bench(cfg: &EngineConfig, model: &str, iters: usize, json: bool) -> Result<()> {
    let engine = Engine::new(cfg)?;
    let path = Path::new(model);
    let m = engine.load_artifact(read_artifact(model)?)?;
    // Inputs: in0.npy, in1.npy ... beside the model file (or the embedded sample).
    let inputs: Vec<Tensor> = if model == "default" {
        vec![Tensor::from_npy(DEFAULT_INPUT)?]
    } else {
        let dir = path.parent().unwrap_or(Path::new("."));
        (0..m.signature().inputs.len())
            .map(|i| Tensor::read_npy(&dir.join(format!("in{i}.npy"))).map_err(anyhow::Error::from))
            .collect::<Result<_>>()?
    };
    let views: Vec<TensorRef<'_>> = inputs.iter().map(Tensor::view).collect();
    let resident = m.upload(&views)?;
    let refs: Vec<_> = resident.iter().collect();
    let warm = (iters / 10).max(10);
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        for _ in 0..warm {
            f()?;
        }
        let mut v = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            f()?;
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(median_us(v))
    };
    let raw = time(&mut || {
        m.execute_buffers(&refs)?;
        Ok(())
    })?;
    let validated = time(&mut || {
        m.execute(&views)?;
        Ok(())
    })?;
    let full = time(&mut || {
        m.run(&views)?;
        Ok(())
    })?;
    if json {
        println!(
            "{}",
            serde_json::json!({"raw_us": raw, "validated_us": validated, "run_us": full, "iters": iters, "plugin": engine.plugin().path})
        );
    } else {
        println!("raw execute (inputs resident):       {raw:9.2} µs");
        println!("validated execute (check + upload):  {validated:9.2} µs");
        println!("full run (+ outputs to host):        {full:9.2} µs");
    }
    Ok(())
}
