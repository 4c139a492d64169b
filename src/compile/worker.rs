//! The compile worker: the host executable re-executed with [`super::WORKER_ARG`].
//!
//! 1. close inherited descriptors; read the (trusted) init message from the parent;
//! 2. jail itself (see [`super::sandbox`]), loading the plugin library just before Landlock;
//! 3. create the client (its threads inherit the jail), report `Ready` with the jail report;
//! 4. read one request (the untrusted module), compile, serialize, reply, exit.
//!
//! Anything the worker cannot do is reported as a `Fatal` or `Rejected` message; anything worse
//! (an abort, a fault, a seccomp kill) is seen by the parent as the death of the process.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::failure::WorkerRole;
use super::protocol::{self, Kind, MAX_SMALL};
use super::sandbox::{self, JailReport};
use super::{Limits, SandboxOptions};
use crate::pjrt::{Api, Client, ClientOptions, CompileOptions, PjrtError};

/// Environment variables a worker keeps (all others are removed). `XLA_FLAGS` is validated by
/// the parent first; `MALLOC_ARENA_MAX` is always set by the parent (to 2: glibc reserves 64 MiB
/// of address space per malloc arena, which would make the address-space limit track the
/// number of threads rather than memory use).
pub const ENV_ALLOWLIST: &[&str] = &[
    "XLA_FLAGS",
    "TF_CPP_MIN_LOG_LEVEL",
    "LD_LIBRARY_PATH",
    "MALLOC_ARENA_MAX",
];

/// A module of our own, compiled once by every worker before it is ready.
const WARM_UP: &str = "func.func public @main(%arg0: tensor<8xf32>, %arg1: tensor<8x8xf32>) -> tensor<8xf32> {\n  %0 = stablehlo.dot_general %arg1, %arg0, contracting_dims = [1] x [0] : (tensor<8x8xf32>, tensor<8xf32>) -> tensor<8xf32>\n  %1 = stablehlo.tanh %0 : tensor<8xf32>\n  return %1 : tensor<8xf32>\n}\n";

/// The init message: everything the worker needs to jail itself and load the plugin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct WorkerInit {
    pub plugin: PathBuf,
    pub client_options: ClientOptions,
    pub limits: Limits,
    pub sandbox: SandboxOptions,
    /// Compile a module of our own before reporting ready.
    pub warm_up: bool,
    /// Read-only paths for Landlock (the plugin, the few /sys and /proc files XLA reads, extras).
    pub read_paths: Vec<PathBuf>,
    /// The StableHLO refiner, loaded only for a request that asks for refinement.
    #[serde(default)]
    pub refiner: Option<PathBuf>,
    /// The most address space a compile may be given (the host's memory): the limit of one
    /// compile is sized from its module up to this.
    #[serde(default)]
    pub address_space_cap: u64,
    /// Execution workers: the LAPACK library the LAPACK custom-call handlers call, loaded
    /// inside the jail when the model is (its folder is among `read_paths`).
    #[serde(default)]
    pub lapack: Option<PathBuf>,
}

/// What the worker reports with a compiled executable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Client creation and warm-up compile time, ms (spent before the request arrived).
    pub client_ms: f64,
    /// `PJRT_Client_Compile` time, ms.
    pub compile_ms: f64,
    /// `PJRT_Executable_Serialize` time, ms.
    pub serialize_ms: f64,
}

/// A compile error from the plugin, carried over the pipe.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Rejection {
    pub function: String,
    pub code: Option<i32>,
    pub message: String,
}

/// Test-only requests (test builds only).
#[cfg(feature = "test-hooks")]
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TestRequest {
    /// Open a file for reading.
    Open(PathBuf),
    /// Create and write a file.
    Write(PathBuf),
    /// Create a TCP socket.
    Socket,
    /// Execute a program.
    Exec(String),
    /// Fork.
    Fork,
    /// Touch an unmapped page.
    Segfault,
    /// Sleep forever.
    Hang,
    /// Compile with raw option bytes (empty ones abort the real plugin).
    CompileRawOptions {
        /// `mlir` or `hlo`.
        format: String,
        /// Raw `CompileOptionsProto` bytes.
        options: Vec<u8>,
        /// The program.
        program: Vec<u8>,
    },
}

/// The answer to a [`TestRequest`] (when the worker survives it).
#[cfg(feature = "test-hooks")]
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TestResult {
    /// The raw return value.
    pub ret: i64,
    /// `errno` after the call (0 on success).
    pub errno: i32,
    /// Free text.
    pub detail: String,
}

fn fatal(out: &mut impl Write, msg: &str) -> i32 {
    let _ = protocol::write_frame(out, Kind::Fatal, msg.as_bytes());
    2
}

/// Runs a compile worker, or with `role` [`WorkerRole::Execution`] an execution worker (the same
/// jail, then [`crate::exec::worker::serve`]); returns the exit code.
pub(crate) fn run(role: WorkerRole) -> i32 {
    // Step 1, before anything else: no inherited descriptor survives (but an execution
    // worker's two shared-memory arenas, see `crate::exec::shm`).
    let closed = sandbox::close_inherited_fds(match role {
        WorkerRole::Execution => crate::exec::shm::OUTPUT_FD + 1,
        WorkerRole::Compile => 3,
    });
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut input = stdin.lock();
    let mut out = stdout.lock();
    if let Err(e) = closed {
        return fatal(&mut out, &e);
    }
    let init: WorkerInit = match protocol::read_frame(&mut input, |_| MAX_SMALL) {
        Ok(Ok(f)) if f.kind == Kind::Init => match serde_json::from_slice(&f.payload) {
            Ok(i) => i,
            Err(e) => return fatal(&mut out, &format!("malformed init: {e}")),
        },
        Ok(Ok(f)) => return fatal(&mut out, &format!("expected init, got {:?}", f.kind)),
        Ok(Err(e)) => return fatal(&mut out, &format!("init: {e}")),
        Err(e) => return fatal(&mut out, &format!("init: {e}")),
    };
    let (report, client) = match jail_and_load(&init) {
        Ok(x) => x,
        Err(e) => return fatal(&mut out, &e),
    };
    let Ok(report_json) = serde_json::to_vec(&report) else {
        return fatal(&mut out, "cannot encode the jail report");
    };
    if protocol::write_frame(&mut out, Kind::Ready, &report_json).is_err() {
        return 3;
    }
    if role == WorkerRole::Execution {
        let code = crate::exec::worker::serve(&client.0, &init.limits, &mut input, &mut out);
        let _ = out.flush();
        return code;
    }
    // Only now the untrusted bytes.
    let max_module = init.limits.max_module_bytes.saturating_add(MAX_SMALL);
    let frame = match protocol::read_frame(&mut input, |k| match k {
        Kind::Compile | Kind::Describe => max_module,
        _ => MAX_SMALL,
    }) {
        Ok(Ok(f)) => f,
        // The parent went away or broke the protocol: nothing to answer.
        Ok(Err(_)) | Err(_) => return 4,
    };
    // Size the address space from the module before anything parses it.
    if let Some(base) = init.limits.address_space_bytes {
        let limit = sandbox::address_space_for(base, init.address_space_cap, frame.payload.len());
        if let Err(e) = sandbox::limit_address_space(limit) {
            return fatal(&mut out, &e);
        }
    }
    let code = match frame.kind {
        Kind::Compile => compile(
            &client.0,
            &frame.payload,
            client.1,
            init.refiner.as_deref(),
            &mut out,
        ),
        Kind::Describe => describe(init.refiner.as_deref(), &frame.payload, &mut out),
        #[cfg(feature = "test-hooks")]
        Kind::Test => test_request(&client.0, &frame.payload, &mut out),
        _ => 5,
    };
    let _ = out.flush();
    code
}

type Loaded = (Client, f64);

fn jail_and_load(init: &WorkerInit) -> Result<(JailReport, Loaded), String> {
    let sb = &init.sandbox;
    let mut unenforced = Vec::new();
    let weak = |what: String, unenforced: &mut Vec<String>| -> Result<(), String> {
        if sb.strict {
            Err(format!("strict sandbox: {what}"))
        } else {
            unenforced.push(what);
            Ok(())
        }
    };
    // Step 2: environment.
    let env = sandbox::clear_env(ENV_ALLOWLIST);
    // Step 3: resource limits (never optional).
    let rlimits = sandbox::set_rlimits(&init.limits, init.address_space_cap)?;
    // Step 4: CPU affinity.
    let affinity = match &sb.cores {
        Some(c) => sandbox::set_affinity(c)?,
        None => format!("inherited: cores {:?}", sandbox::allowed_cpus()),
    };
    // Step 5: no new privileges (also required by seccomp without CAP_SYS_ADMIN).
    sandbox::no_new_privs()?;
    // Step 6: network namespace.
    let network = if sb.network_namespace {
        match sandbox::new_network_namespace() {
            Ok(s) => s,
            Err(e) => {
                weak(e.clone(), &mut unenforced)?;
                format!("shared with the host ({e})")
            }
        }
    } else {
        weak(
            "network namespace disabled by configuration".into(),
            &mut unenforced,
        )?;
        "shared with the host (disabled)".into()
    };
    // Step 7: capabilities.
    let capabilities = match sandbox::drop_capabilities() {
        Ok(s) => s,
        Err(e) => {
            weak(e.clone(), &mut unenforced)?;
            format!("kept ({e})")
        }
    };
    // The plugin library: trusted code, loaded while the worker is still single-threaded and
    // before Landlock (so its dependencies need no rule). Plugin_Initialize starts no thread;
    // Landlock checks that.
    let api = Api::load(&init.plugin).map_err(|e| e.to_string())?;
    // Compiling a module with LAPACK custom calls checks that their FFI handlers exist: register
    // them (as the engine does). Their LAPACK library is loaded only to execute, never here.
    #[cfg(feature = "lapack")]
    if crate::plugin::DeviceKind::guess(&init.plugin) == crate::plugin::DeviceKind::Cpu
        && api.has_ffi_extension()
    {
        crate::lapack::register(&api).map_err(|e| e.to_string())?;
    }
    // The refiner (opened inside the jail, only for a request that needs it) depends on one
    // library the plugin does not: load it now, while the loader may still search.
    // So does the LAPACK library an execution worker loads inside the jail.
    if init.refiner.is_some() || init.lapack.is_some() {
        sandbox::preload_library("libz.so.1")?;
    }
    // Step 8: Landlock.
    let landlock = if sb.landlock {
        match sandbox::landlock(&init.read_paths) {
            Ok((s, full)) => {
                if !full {
                    weak(format!("Landlock {s}"), &mut unenforced)?;
                }
                s
            }
            Err(e) => {
                weak(e.clone(), &mut unenforced)?;
                format!("not applied ({e})")
            }
        }
    } else {
        weak("Landlock disabled by configuration".into(), &mut unenforced)?;
        "disabled".into()
    };
    // An execution worker's LAPACK (OpenBLAS): trusted code, loaded after Landlock (it reads
    // only the folder in `read_paths`; the threads it starts inherit Landlock) and before
    // seccomp, whose filter then covers those threads too (TSYNC). A library that does not
    // load is reported by the handlers of a model that needs it, at execution.
    #[cfg(feature = "lapack")]
    if let Some(p) = &init.lapack {
        let _ = crate::lapack::use_library(p);
    }
    // Step 9: seccomp, last.
    let seccomp = if sb.seccomp {
        match sandbox::seccomp() {
            Ok(s) => s,
            Err(e) => {
                weak(e.clone(), &mut unenforced)?;
                format!("not applied ({e})")
            }
        }
    } else {
        weak("seccomp disabled by configuration".into(), &mut unenforced)?;
        "disabled".into()
    };
    // The client's threads are born inside the jail.
    let t = Instant::now();
    let client = Client::new(api, &init.client_options).map_err(|e| e.to_string())?;
    // Warm-up: the first compile in a process pays for initializing the compiler (LLVM
    // targets, pass pipelines); a spare pays it with a module of our own, before any request.
    if init.warm_up {
        if let Ok(exe) = client.compile(WARM_UP.as_bytes(), "mlir", &CompileOptions::new()) {
            let _ = exe.serialize();
        }
    }
    let client_ms = t.elapsed().as_secs_f64() * 1e3;
    let report = JailReport {
        isolation: "process".into(),
        pid: std::process::id(),
        landlock,
        seccomp,
        no_new_privs: true,
        network,
        capabilities,
        rlimits,
        affinity,
        env,
        unenforced,
    };
    Ok((report, (client, client_ms)))
}

fn reject(out: &mut impl Write, e: &PjrtError) -> i32 {
    let (function, code, message) = match e {
        PjrtError::Call {
            function,
            code,
            message,
        } => (function.to_string(), Some(code.raw()), message.clone()),
        other => ("PJRT_Client_Compile".to_string(), None, other.to_string()),
    };
    write_rejection(
        out,
        &Rejection {
            function,
            code,
            message,
        },
    )
}

fn write_rejection(out: &mut impl Write, r: &Rejection) -> i32 {
    let body = serde_json::to_vec(r).unwrap_or_default();
    match protocol::write_frame(out, Kind::Rejected, &body) {
        Ok(()) => 0,
        Err(_) => 3,
    }
}

/// `Rejection::function` of a refinement failure; a failed shape assertion has its own.
pub(crate) const REFINE: &str = "StableHLO refinement";
/// `Rejection::function` of a failed shape assertion (JAX's message: the caller's input).
pub(crate) const REFINE_ASSERTION: &str = "StableHLO refinement: shape assertion";
/// `Rejection::function` of a module the refiner cannot make static.
pub(crate) const REFINE_UNSUPPORTED: &str = "StableHLO refinement: unsupported";

/// Refines a shape-polymorphic module to `types`, for the plugin's StableHLO version.
fn refine(
    client: &Client,
    refiner: Option<&std::path::Path>,
    module: &[u8],
    to: &protocol::Refinement,
) -> Result<Vec<u8>, Rejection> {
    use crate::refine::{RefineError, Refiner};
    let reject = refine_rejection;
    let Some(path) = refiner else {
        return Err(reject(
            REFINE,
            format!(
                "no StableHLO refiner: fetch it with `{}` or name it with --refiner / \
                 XLAGUARD_REFINER",
                crate::plugin::FETCH_REFINER
            ),
        ));
    };
    let r = Refiner::load(path).map_err(|e| reject(REFINE, e.to_string()))?;
    // The newest StableHLO both the refiner writes and the plugin reads.
    let plugin = client
        .api()
        .attributes()
        .ok()
        .and_then(|a| {
            a.into_iter()
                .find(|(k, _)| k == "stablehlo_current_version")
                .map(|(_, v)| v)
        })
        .and_then(|v| {
            let n: Vec<u32> = v
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|s| s.parse().ok())
                .collect();
            match n.as_slice() {
                [a, b, c] => Some((*a, *b, *c)),
                _ => None,
            }
        });
    let (a, b, c) = match plugin {
        Some(p) => p.min(r.version()),
        None => r.version(),
    };
    r.refine(module, &to.types, &format!("{a}.{b}.{c}"))
        .map_err(|e| match e {
            RefineError::ShapeAssertion { message } => reject(REFINE_ASSERTION, message),
            e @ RefineError::Unsupported { .. } => reject(REFINE_UNSUPPORTED, e.to_string()),
            e @ RefineError::Pipeline(_) => {
                // A constraint guarding (say) a slice makes the slice fail to refine before the
                // assertions run: check the export's constraints ourselves, with its message.
                match r
                    .shape_assertions(module)
                    .ok()
                    .and_then(|msgs| failed_constraint(&msgs, &to.dims))
                {
                    Some(message) => reject(REFINE_ASSERTION, message),
                    None => reject(REFINE, e.to_string()),
                }
            }
            e => reject(REFINE, e.to_string()),
        })
}

/// `Rejection::function` of a module whose params could not be baked in.
pub(crate) const BAKE: &str = "baking params into the module";

/// The module as StableHLO text with the arguments `spec` names replaced by constants (read
/// with the refiner, which turns a portable artifact into text).
fn bake(
    refiner: Option<&std::path::Path>,
    module: &[u8],
    spec: &protocol::Bake,
    constants: &[u8],
) -> Result<String, Rejection> {
    let reject = refine_rejection;
    let Some(path) = refiner else {
        return Err(reject(
            BAKE,
            format!(
                "no StableHLO refiner to read the module with: fetch it with `{}` or name it \
                 with --refiner / XLAGUARD_REFINER",
                crate::plugin::FETCH_REFINER
            ),
        ));
    };
    let text = crate::refine::Refiner::load(path)
        .and_then(|r| r.print_with_locations(module))
        .map_err(|e| reject(BAKE, e.to_string()))?;
    let mut at = 0usize;
    let mut args = Vec::with_capacity(spec.args.len());
    for a in &spec.args {
        let end = at.saturating_add(a.len);
        let bytes = constants
            .get(at..end)
            .ok_or_else(|| reject(BAKE, "constants shorter than their arguments".into()))?;
        args.push((a.index, a.ty.as_str(), bytes));
        at = end;
    }
    crate::artifact::mlir::bake_main_args(&text, &args).map_err(|e| reject(BAKE, e))
}

/// The first of JAX's constraint assertions (`Expected '- s + 16' to be greater or equal to 0,
/// but found {0}`) that `dims` break, with its placeholders filled as JAX fills them: `{0}` the
/// expression's value, and each `'v' = {k}` the variable's.
fn failed_constraint(
    messages: &[String],
    dims: &std::collections::BTreeMap<String, i64>,
) -> Option<String> {
    use crate::dims::DimExpr;
    const HEAD: &str = "Expected '";
    const TAIL: &str = "' to be greater or equal to 0, but found {0}";
    messages.iter().find_map(|m| {
        let start = m.find(HEAD)?.saturating_add(HEAD.len());
        let len = m.get(start..)?.find(TAIL)?;
        let value = DimExpr::parse(m.get(start..start.saturating_add(len))?)
            .ok()?
            .eval(dims)?;
        if value >= 0 {
            return None;
        }
        let mut filled = m.replace("{0}", &value.to_string());
        for (v, x) in dims {
            let pat = format!("'{v}' = {{");
            while let Some(at) = filled.find(&pat) {
                let k_start = at.saturating_add(pat.len());
                let Some(k_len) = filled.get(k_start..).and_then(|r| r.find('}')) else {
                    break;
                };
                let placeholder = filled
                    .get(k_start.saturating_sub(1)..k_start + k_len + 1)?
                    .to_string();
                filled = filled.replace(&placeholder, &x.to_string());
            }
        }
        Some(filled)
    })
}

/// A refinement failure for the parent, under one of the `REFINE*` function names.
fn refine_rejection(function: &str, message: String) -> Rejection {
    Rejection {
        function: function.to_string(),
        code: None,
        message,
    }
}

/// Reads a module's argument names and shape assertions with the refiner: one deserialize and
/// one print serve both.
fn describe(refiner: Option<&std::path::Path>, module: &[u8], out: &mut impl Write) -> i32 {
    let reject = refine_rejection;
    let Some(path) = refiner else {
        return write_rejection(out, &reject(REFINE, "no StableHLO refiner".into()));
    };
    let described = crate::refine::Refiner::load(path).and_then(|r| {
        let text = r.print_with_locations(module)?;
        Ok(protocol::Description {
            arg_names: crate::artifact::mlir::wrapped_main_arg_locs(&text),
            assertions: crate::refine::assertion_messages(&text),
        })
    });
    match described {
        Ok(d) => {
            let body = serde_json::to_vec(&d).unwrap_or_default();
            match protocol::write_frame(out, Kind::Described, &body) {
                Ok(()) => 0,
                Err(_) => 3,
            }
        }
        Err(e @ crate::refine::RefineError::Unsupported { .. }) => {
            write_rejection(out, &reject(REFINE_UNSUPPORTED, e.to_string()))
        }
        Err(e) => write_rejection(out, &reject(REFINE, e.to_string())),
    }
}

fn compile(
    client: &Client,
    payload: &[u8],
    client_ms: f64,
    refiner: Option<&std::path::Path>,
    out: &mut impl Write,
) -> i32 {
    let req = match protocol::decode_compile(payload) {
        Ok(x) => x,
        Err(e) => return fatal(out, &e.to_string()),
    };
    // Options are re-validated here: incomplete ones would abort the plugin.
    let Some(options) = CompileOptions::decode(req.options) else {
        return fatal(out, "compile options without replica and partition counts");
    };
    let t = Instant::now();
    let refined;
    let program = match (&req.refine, &req.bake) {
        (None, None) => req.program,
        (Some(to), _) => match refine(client, refiner, req.program, to) {
            Ok(bytes) => {
                refined = bytes;
                &refined[..]
            }
            Err(r) => return write_rejection(out, &r),
        },
        (None, Some((spec, constants))) => match bake(refiner, req.program, spec, constants) {
            Ok(text) => {
                refined = text.into_bytes();
                &refined[..]
            }
            Err(r) => return write_rejection(out, &r),
        },
    };
    let exe = match client.compile(program, req.format, &options) {
        Ok(e) => e,
        Err(e) => return reject(out, &e),
    };
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    reply_compiled(&exe, Some(&options), client_ms, compile_ms, out)
}

fn reply_compiled(
    exe: &crate::pjrt::LoadedExecutable,
    options: Option<&CompileOptions>,
    client_ms: f64,
    compile_ms: f64,
    out: &mut impl Write,
) -> i32 {
    let t = Instant::now();
    let ser = match super::serialize_checked(exe, options) {
        Ok(s) => s,
        Err(e) => return reject(out, &e),
    };
    let stats = WorkerStats {
        client_ms,
        compile_ms,
        serialize_ms: t.elapsed().as_secs_f64() * 1e3,
    };
    let stats = serde_json::to_vec(&stats).unwrap_or_default();
    match protocol::write_frame(
        out,
        Kind::Compiled,
        &protocol::encode_compiled(&stats, &ser.0),
    ) {
        Ok(()) => 0,
        Err(_) => 3,
    }
}

#[cfg(feature = "test-hooks")]
fn test_request(client: &Client, payload: &[u8], out: &mut impl Write) -> i32 {
    let req: TestRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => return fatal(out, &format!("malformed test request: {e}")),
    };
    let errno = |e: &std::io::Error| e.raw_os_error().unwrap_or(-1);
    let result = match req {
        TestRequest::Open(p) => match std::fs::File::open(&p) {
            Ok(mut f) => {
                use std::io::Read;
                let mut b = [0u8; 64];
                let n = f.read(&mut b).map(|n| n as i64).unwrap_or(-1);
                TestResult {
                    ret: n,
                    errno: 0,
                    detail: String::from_utf8_lossy(&b[..usize::try_from(n).unwrap_or(0)])
                        .into_owned(),
                }
            }
            Err(e) => TestResult {
                ret: -1,
                errno: errno(&e),
                detail: e.to_string(),
            },
        },
        TestRequest::Write(p) => {
            match std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&p)
                .and_then(|mut f| f.write_all(b"escaped"))
            {
                Ok(()) => TestResult {
                    ret: 0,
                    errno: 0,
                    detail: "written".into(),
                },
                Err(e) => TestResult {
                    ret: -1,
                    errno: errno(&e),
                    detail: e.to_string(),
                },
            }
        }
        TestRequest::Socket => {
            let (ret, errno) = sandbox::hooks::socket();
            TestResult {
                ret,
                errno,
                detail: "socket returned".into(),
            }
        }
        TestRequest::Exec(p) => {
            let (ret, errno) = sandbox::hooks::execve(&p);
            TestResult {
                ret,
                errno,
                detail: "execve returned".into(),
            }
        }
        TestRequest::Fork => {
            let (ret, errno) = sandbox::hooks::fork();
            TestResult {
                ret,
                errno,
                detail: "fork returned".into(),
            }
        }
        TestRequest::Segfault => sandbox::hooks::segfault(),
        TestRequest::Hang => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        TestRequest::CompileRawOptions {
            format,
            options,
            program,
        } => {
            let format = if format == "hlo" { "hlo" } else { "mlir" };
            let t = Instant::now();
            return match client.compile_with_raw_options(&program, format, &options) {
                Ok(exe) => reply_compiled(&exe, None, 0.0, t.elapsed().as_secs_f64() * 1e3, out),
                Err(e) => reject(out, &e),
            };
        }
    };
    let body = serde_json::to_vec(&result).unwrap_or_default();
    match protocol::write_frame(out, Kind::TestResult, &body) {
        Ok(()) => 0,
        Err(_) => 3,
    }
}
