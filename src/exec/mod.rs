//! Execution isolation: a model's executable runs in jailed, memory-limited, killable
//! *execution workers* instead of in this process.
//!
//! An execution worker is the host executable re-executed with
//! [`EXEC_WORKER_ARG`](crate::compile::EXEC_WORKER_ARG): it jails itself exactly as a compile
//! worker does (descriptors, environment, rlimits, `no_new_privs`, network namespace,
//! capabilities, Landlock read-only to the plugin, the seccomp allowlist), creates its own PJRT
//! client, then receives the model once (serialized executable, resident arguments such as
//! bound params and the platform index, the argument layout), lowers its address-space limit
//! to what the model's compiled memory statistics say it needs plus headroom, deserializes, and
//! answers requests one at a time. Validation and sanitization stay in the parent; the worker
//! gets the checked bytes and returns exactly the output bytes the signature says (anything
//! else is a protocol violation: the worker is killed).
//!
//! PJRT cannot cancel an execution: past its deadline a request's worker is killed (SIGKILL),
//! the request gets [`Error::ExecutionTimeout`], and a replacement worker is started in the
//! background. A worker that dies mid-request gives [`Error::ExecutionFailed`].
//!
//! Tensors move through a sealed shared-memory arena per worker ([`shm`]): the parent copies
//! a request's checked arguments into the worker's input arena (the one copy), rings the
//! doorbell (an empty `Execute` frame on the pipe), the worker's plugin reads the arguments in
//! place and writes the outputs into the output arena, and the parent copies them out after the
//! worker's empty `Executed` frame.

pub(crate) mod message;
pub(crate) mod shm;
pub(crate) mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::compile::pool::{self, Broken, Proc, Spawn};
use crate::compile::protocol::{self, Kind, ProtocolError, MAX_SMALL};
use crate::compile::{
    ExecWorkerSetup, FailureCause, JailReport, WorkerFailure, WorkerRole, EXEC_WORKER_ARG,
};
use crate::error::Error;
use crate::pjrt::{ErrorCode, PjrtError};
use message::{ExecRejection, LoadSpec};

/// Records an audit event (the engine's audit log, if any).
pub(crate) type Audit = Arc<dyn Fn(&str, serde_json::Value) + Send + Sync>;

/// Where a model's executable runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Execution {
    /// In this process, on the caller's thread (the library default): fastest, but a model
    /// that hangs keeps its thread, and one that allocates too much takes the process down.
    #[default]
    InProcess,
    /// In jailed execution workers, one model per worker, killed at the deadline.
    Process,
}

impl Execution {
    /// `in-process` or `process`.
    pub fn name(self) -> &'static str {
        match self {
            Execution::InProcess => "in-process",
            Execution::Process => "process",
        }
    }

    /// Parses `in-process` or `process`.
    pub fn parse(s: &str) -> Option<Execution> {
        match s {
            "in-process" => Some(Execution::InProcess),
            "process" => Some(Execution::Process),
            _ => None,
        }
    }
}

/// How models execute (part of [`EngineConfig`](crate::EngineConfig)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecConfig {
    /// Where models run unless one is told otherwise ([`Model::set_execution`](crate::Model::set_execution)).
    pub execution: Execution,
    /// Execution workers per model (requests run on one model at once).
    pub workers: usize,
    /// Deadline of a call without one of its own (process execution; `None`: none).
    pub deadline: Option<Duration>,
    /// Most bytes one execution may need by the plugin's compiled memory statistics; a model
    /// needing more is refused at load. `None`: half the host's memory.
    pub max_execution_bytes: Option<u64>,
    /// Address space of an execution worker before it loads a model (client, plugin, threads).
    pub address_space_base: u64,
    /// Address space added to a loaded model's needs (allocator slack, thread stacks).
    pub address_space_headroom: u64,
    /// How long a worker may take to start and load its model.
    pub startup_timeout: Duration,
    /// Jailed execution workers (client created, no model yet) kept ready per engine once a
    /// model runs in a process, so that a first or replacement worker only has to load its
    /// model.
    pub spare_workers: usize,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            execution: Execution::InProcess,
            workers: 1,
            deadline: None,
            max_execution_bytes: None,
            address_space_base: 4 << 30,
            address_space_headroom: 1 << 30,
            startup_timeout: Duration::from_secs(60),
            spare_workers: 1,
        }
    }
}

/// Counters of one model's execution workers.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    started: AtomicU64,
    killed_deadline: AtomicU64,
    died: AtomicU64,
    protocol: AtomicU64,
    executions: AtomicU64,
    exec_nanos: AtomicU64,
    rung_behind: AtomicU64,
}

/// What a model's execution workers did, for `inspect` and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExecSnapshot {
    /// Workers started (first, replacements, extra ones under load).
    pub workers_started: u64,
    /// Workers killed at a request's deadline.
    pub killed_deadline: u64,
    /// Workers that died during a request (signal, memory limit, exit).
    pub died: u64,
    /// Workers killed for breaking the protocol (a malformed reply).
    pub protocol_violations: u64,
    /// Requests executed to completion.
    pub executions: u64,
    /// Their total execution time (round trip to the worker), nanoseconds.
    pub execution_nanos: u64,
    /// Requests that found every worker busy and were rung behind a running request (in the
    /// worker's other slot), rather than queued.
    pub rung_behind: u64,
    /// Pids of the live workers.
    pub pids: Vec<u32>,
    /// Address-space limit of each worker, bytes.
    pub address_space_limit: Option<u64>,
}

/// A started, jailed execution worker (client created, no model yet) and its arena (not sized).
struct Spare {
    warm: pool::Warm,
    arena: shm::Arena,
}

/// Starts an engine's execution workers, keeping warm spares (jailed, client created).
pub(crate) struct Spawner {
    setup: ExecWorkerSetup,
    spares: Mutex<(Vec<Spare>, usize)>,
    want: usize,
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawner").field("want", &self.want).finish()
    }
}

impl Spawner {
    /// A spawner keeping `spares` warm workers (none started yet).
    pub(crate) fn new(setup: ExecWorkerSetup, spares: usize) -> Arc<Spawner> {
        Arc::new(Spawner {
            setup,
            spares: Mutex::new((Vec::new(), 0)),
            want: spares,
        })
    }

    /// How workers start.
    pub(crate) fn setup(&self) -> &ExecWorkerSetup {
        &self.setup
    }

    fn spawn(&self) -> Result<Spare, Box<WorkerFailure>> {
        let arena = shm::Arena::new().map_err(|e| {
            Box::new(WorkerFailure {
                pid: 0,
                role: WorkerRole::Execution,
                cause: FailureCause::Spawn(format!("shared-memory arena: {e}")),
                exit: None,
                usage: Default::default(),
                wall: Duration::ZERO,
                stderr_tail: String::new(),
            })
        })?;
        let warm = pool::start_worker(&Spawn {
            exe: &self.setup.exe,
            arg: EXEC_WORKER_ARG,
            env: &self.setup.env,
            init: &self.setup.init,
            limits: &self.setup.limits,
            role: WorkerRole::Execution,
            fds: &arena.child_fds(),
        })?;
        Ok(Spare { warm, arena })
    }

    /// A jailed worker: a warm spare if one is alive, else a new one; spares are replenished
    /// in the background.
    fn take(self: &Arc<Self>) -> Result<Spare, Box<WorkerFailure>> {
        let spare = {
            let mut s = self.spares.lock().unwrap_or_else(|p| p.into_inner());
            let mut found = None;
            while let Some(mut w) = s.0.pop() {
                match crate::compile::sandbox::wait4(w.warm.proc.pid, false) {
                    Ok(None) => {
                        found = Some(w);
                        break;
                    }
                    Ok(Some(r)) => w.warm.proc.reaped = Some(r),
                    Err(_) => {}
                }
            }
            found
        };
        let w = match spare {
            Some(w) => Ok(w),
            None => self.spawn(),
        };
        self.replenish();
        w
    }

    fn replenish(self: &Arc<Self>) {
        let mut s = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        if s.0.len() + s.1 >= self.want {
            return;
        }
        s.1 += 1;
        drop(s);
        let me = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("xlaguard-exec-spare".into())
            .spawn(move || {
                let Some(me) = me.upgrade() else { return };
                let w = me.spawn();
                let mut s = me.spares.lock().unwrap_or_else(|p| p.into_inner());
                s.1 -= 1;
                if let Ok(w) = w {
                    s.0.push(w);
                }
            });
        if spawned.is_err() {
            self.spares.lock().unwrap_or_else(|p| p.into_inner()).1 -= 1;
        }
    }

    /// Pids of the warm spares, waiting up to `wait` for one.
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub(crate) fn spare_pids(&self, wait: Duration) -> Vec<u32> {
        let end = Instant::now() + wait;
        loop {
            let s = self.spares.lock().unwrap_or_else(|p| p.into_inner());
            if !s.0.is_empty() || Instant::now() >= end {
                return s
                    .0
                    .iter()
                    .map(|w| u32::try_from(w.warm.proc.pid).unwrap_or(0))
                    .collect();
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A live, loaded execution worker: its process (whose stdout only the holder of this value
/// reads), what it shares with a request queued behind the running one, and the slot of the
/// request its holder runs.
struct Live {
    proc: Proc,
    side: Arc<Side>,
    slot: usize,
}

/// The part of a worker that a request waiting behind the running one uses to start early:
/// the arena (its own slot) and a duplicate of the worker's stdin (its own doorbell).
struct Side {
    inner: Mutex<SideState>,
}

struct SideState {
    arena: shm::Arena,
    bell: std::fs::File,
    /// The running request's slot, once its doorbell is in the pipe (a request rung behind it
    /// before that would run first, and its reply be read as the running one's).
    rung: Option<usize>,
    /// The request rung behind the running one, and its slot.
    next: Option<(Arc<Waiter>, usize)>,
}

fn side(w: &Live) -> MutexGuard<'_, SideState> {
    w.side.inner.lock().unwrap_or_else(|p| p.into_inner())
}

struct State {
    idle: Vec<Live>,
    /// Workers that exist (idle, busy or starting).
    live: usize,
    /// The busy workers: pid, and what a request may use to start behind the running one.
    busy: Vec<(u32, Arc<Side>)>,
    /// Requests waiting for a worker, oldest first. A worker that finishes a request starts
    /// the oldest of these itself, before its own caller goes on, so that it never waits for
    /// a waiting thread to wake up (see [`Remote::release`]).
    queue: std::collections::VecDeque<Arc<Waiter>>,
}

/// A request waiting for a worker: its arguments, and the worker it is handed, already
/// running it.
struct Waiter {
    parts: Vec<Vec<u8>>,
    handed: Mutex<Option<Handed>>,
    cv: Condvar,
}

/// A worker handed to a [`Waiter`] with the waiter's request written and its doorbell rung.
struct Handed {
    w: Live,
    call: pool::Call,
    /// Set when the exchange already ended (the worker died as it was rung).
    ended: Option<Result<protocol::Frame, Broken>>,
    /// When the request started in the worker.
    t: Instant,
}

/// A model's execution workers (the parent's side).
pub(crate) struct Remote {
    spawner: Arc<Spawner>,
    /// The encoded `Load` frame, sent to every worker of this model.
    load: Vec<u8>,
    /// Bytes of each output.
    out_lens: Vec<usize>,
    /// Where each output starts in the output arena, and the arena's size.
    out_layout: (Vec<usize>, usize),
    /// Bytes of each request argument.
    in_lens: Vec<usize>,
    /// Where each starts in the input arena, and the arena's size.
    in_layout: (Vec<usize>, usize),
    /// The `Execute` frame of each slot: the slot's index (the arguments are in the arena).
    doorbells: Vec<Vec<u8>>,
    /// Bytes between two slots of the input and of the output arena.
    strides: (usize, usize),
    workers: usize,
    deadline: Option<Duration>,
    address_space: Option<u64>,
    state: Mutex<State>,
    counters: Counters,
    report: JailReport,
    audit: Audit,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("workers", &self.workers)
            .field("report", &self.report)
            .finish()
    }
}

/// What a model's executable needs from its execution workers.
pub(crate) struct RemoteModel<'a> {
    pub executable: &'a [u8],
    pub args: Vec<message::ArgSpec>,
    /// The bytes of the resident arguments, in order.
    pub residents: Vec<Vec<u8>>,
    pub outputs: Vec<message::OutSpec>,
    /// Address-space limit of each worker.
    pub address_space: Option<u64>,
    /// Test builds: workers answer every request with this many garbage bytes.
    pub test_garbage_reply: Option<u64>,
    /// Test builds: workers try to start a thread before each request.
    pub test_spawn_thread: bool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A PJRT function name for an error the worker reported.
fn function_name(f: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "PJRT_Executable_DeserializeAndLoad",
        "PJRT_Client_BufferFromHostBuffer",
        "PJRT_LoadedExecutable_Execute",
        "PJRT_Buffer_ToHostBuffer",
    ];
    KNOWN
        .iter()
        .find(|k| **k == f)
        .copied()
        .unwrap_or("execution worker")
}

fn plugin_error(r: &ExecRejection) -> Error {
    Error::Plugin(PjrtError::Call {
        function: function_name(&r.function),
        code: ErrorCode::from_raw(r.code.unwrap_or(2)),
        message: r.message.clone(),
    })
}

impl Remote {
    /// Starts the model's first execution worker and loads the model in it.
    pub(crate) fn start(
        spawner: Arc<Spawner>,
        model: RemoteModel<'_>,
        workers: usize,
        deadline: Option<Duration>,
        audit: Audit,
    ) -> Result<Arc<Remote>, Error> {
        let out_lens = model
            .outputs
            .iter()
            .map(|o| message::byte_len(&o.dtype, &o.dims))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| Error::Internal("an output without a static size".into()))?;
        let in_lens = model
            .args
            .iter()
            .filter(|a| !a.resident)
            .map(|a| message::byte_len(&a.dtype, &a.dims))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| Error::Internal("an argument without a static size".into()))?;
        let too_large = || Error::Internal("a request too large for an arena".into());
        let in_layout = shm::layout(&in_lens).ok_or_else(too_large)?;
        let out_layout = shm::layout(&out_lens).ok_or_else(too_large)?;
        let doorbells = (0..shm::SLOTS)
            .map(|slot| {
                let slot = u32::try_from(slot).map_err(|e| e.to_string())?;
                protocol::encode_parts(Kind::Execute, &[&slot.to_le_bytes()])
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(Error::Internal)?;
        let strides = shm::stride(in_layout.1)
            .zip(shm::stride(out_layout.1))
            .ok_or_else(too_large)?;
        let spec = LoadSpec {
            address_space: model.address_space,
            executable_len: model.executable.len() as u64,
            args: model.args,
            outputs: model.outputs,
            test_garbage_reply: model.test_garbage_reply,
            test_spawn_thread: model.test_spawn_thread,
        };
        let head = message::load_head(&spec).map_err(Error::Internal)?;
        let mut parts: Vec<&[u8]> = vec![&head, model.executable];
        parts.extend(model.residents.iter().map(Vec::as_slice));
        let load = protocol::encode_parts(Kind::Load, &parts)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut remote = Remote {
            spawner,
            load,
            out_lens,
            out_layout,
            in_lens,
            in_layout,
            doorbells,
            strides,
            workers: workers.max(1),
            deadline,
            address_space: model.address_space,
            state: Mutex::new(State {
                idle: Vec::new(),
                live: 1,
                busy: Vec::new(),
                queue: std::collections::VecDeque::new(),
            }),
            counters: Counters::default(),
            report: JailReport::default(),
            audit,
        };
        let (first, report) = remote.start_loaded().map_err(|e| match e {
            Started::Failed(f) => Error::ExecutionFailed(f),
            Started::Refused(e) => e,
        })?;
        remote.report = report;
        lock(&remote.state).idle.push(first);
        Ok(Arc::new(remote))
    }

    /// The first worker's jail report.
    pub(crate) fn report(&self) -> &JailReport {
        &self.report
    }

    /// What the workers did.
    pub(crate) fn snapshot(&self) -> ExecSnapshot {
        let c = &self.counters;
        let s = lock(&self.state);
        let mut pids: Vec<u32> = s
            .idle
            .iter()
            .map(|l| u32::try_from(l.proc.pid).unwrap_or(0))
            .chain(s.busy.iter().map(|(p, _)| *p))
            .collect();
        pids.sort_unstable();
        ExecSnapshot {
            workers_started: c.started.load(Ordering::Relaxed),
            killed_deadline: c.killed_deadline.load(Ordering::Relaxed),
            died: c.died.load(Ordering::Relaxed),
            protocol_violations: c.protocol.load(Ordering::Relaxed),
            executions: c.executions.load(Ordering::Relaxed),
            execution_nanos: c.exec_nanos.load(Ordering::Relaxed),
            rung_behind: c.rung_behind.load(Ordering::Relaxed),
            pids,
            address_space_limit: self.address_space,
        }
    }

    /// Starts a worker, jails it, loads the model.
    fn start_loaded(&self) -> Result<(Live, JailReport), Started> {
        self.counters.started.fetch_add(1, Ordering::Relaxed);
        let limits = &self.spawner.setup.limits;
        let Spare { warm, mut arena } = self.spawner.take().map_err(Started::Failed)?;
        let mut proc = warm.proc;
        let deadline = Instant::now() + limits.startup_timeout;
        let fail = |p: &mut Proc, b| pool::failure_of(p, b, limits, WorkerRole::Execution);
        let pid = proc.pid;
        if let Err(e) = arena.size(self.in_layout.1, self.out_layout.1) {
            let mut failed = fail(&mut proc, Broken::Io(e));
            failed.cause = FailureCause::Setup(format!("shared-memory arena: {}", failed.cause));
            return Err(Started::Failed(failed));
        }
        match pool::exchange(&mut proc, &self.load, false, deadline, &|_| MAX_SMALL) {
            Ok(f) if f.kind == Kind::Loaded => {
                let loaded: message::LoadedReport =
                    serde_json::from_slice(&f.payload).unwrap_or_default();
                let mut report = warm.report;
                if !loaded.seccomp.is_empty() {
                    report.seccomp = format!("{}; after load: {}", report.seccomp, loaded.seccomp);
                }
                (self.audit)(
                    "exec_worker_start",
                    json!({"pid": pid, "address_space_limit_bytes": self.address_space,
                           "load_ms": loaded.load_ms, "seccomp": report.seccomp}),
                );
                let bell = match proc.dup_pipe(true) {
                    Ok(fd) => std::fs::File::from(fd),
                    Err(e) => return Err(Started::Failed(fail(&mut proc, Broken::Io(e)))),
                };
                let side = Arc::new(Side {
                    inner: Mutex::new(SideState {
                        arena,
                        bell,
                        rung: None,
                        next: None,
                    }),
                });
                Ok((
                    Live {
                        proc,
                        side,
                        slot: 0,
                    },
                    report,
                ))
            }
            Ok(f) if f.kind == Kind::ExecError => {
                let r: ExecRejection = serde_json::from_slice(&f.payload).map_err(|e| {
                    Started::Failed(fail(
                        &mut proc,
                        Broken::Protocol(ProtocolError::Malformed {
                            kind: Kind::ExecError,
                            detail: e.to_string(),
                        }),
                    ))
                })?;
                Err(Started::Refused(plugin_error(&r)))
            }
            Ok(f) if f.kind == Kind::Fatal => {
                let mut failed = fail(&mut proc, Broken::Eof);
                failed.cause = FailureCause::Setup(String::from_utf8_lossy(&f.payload).into());
                Err(Started::Failed(failed))
            }
            Ok(f) => Err(Started::Failed(fail(
                &mut proc,
                Broken::Protocol(ProtocolError::Unexpected(f.kind)),
            ))),
            Err(b) => Err(Started::Failed(fail(&mut proc, b))),
        }
    }

    /// An idle worker, or a new one if fewer than `workers` exist; else the request (`parts`)
    /// queues, and the first worker to finish a request starts it and hands it over
    /// ([`Got::Handed`]), or `deadline` passes first.
    fn acquire(&self, parts: &[&[u8]], deadline: Option<Instant>) -> Result<Got, Error> {
        let mut s = lock(&self.state);
        while let Some(mut w) = s.idle.pop() {
            // A worker that died while idle (killed from outside) is dropped.
            match crate::compile::sandbox::wait4(w.proc.pid, false) {
                Ok(None) => {
                    busy_push(&mut s, &w);
                    return Ok(Got::Idle(w));
                }
                Ok(Some(r)) => {
                    w.proc.reaped = Some(r);
                    s.live -= 1;
                    wake_front(&s);
                    self.counters.died.fetch_add(1, Ordering::Relaxed);
                    (self.audit)(
                        "exec_worker_died",
                        json!({"pid": w.proc.pid, "while": "idle", "exit": format!("{}", r.0)}),
                    );
                }
                Err(_) => {
                    s.live -= 1;
                    wake_front(&s);
                }
            }
        }
        if s.live < self.workers {
            s.live += 1;
            drop(s);
            return self.start_fresh();
        }
        let waiter = Arc::new(Waiter {
            parts: parts.iter().map(|p| p.to_vec()).collect(),
            handed: Mutex::new(None),
            cv: Condvar::new(),
        });
        // Behind a running request whose worker has its other slot free: the worker goes
        // from that request to this one without waiting for anyone to wake up.
        let behind = s.queue.is_empty()
            && s.busy
                .iter()
                .any(|(_, side)| self.ring_behind(side, &waiter));
        if behind {
            self.counters.rung_behind.fetch_add(1, Ordering::Relaxed);
        } else {
            s.queue.push_back(waiter.clone());
        }
        let running = s.busy.len();
        drop(s);
        let mut h = waiter.handed.lock().unwrap_or_else(|p| p.into_inner());
        let mut deadline = deadline;
        loop {
            if let Some(handed) = h.take() {
                return Ok(Got::Handed(Box::new(handed)));
            }
            {
                // A worker slot is free (a worker died and could not be replaced): nobody
                // will hand this request a worker, so it starts one itself.
                let mut s = lock(&self.state);
                if s.live < self.workers {
                    if let Some(at) = s.queue.iter().position(|q| Arc::ptr_eq(q, &waiter)) {
                        s.queue.remove(at);
                        s.live += 1;
                        drop(s);
                        drop(h);
                        return self.start_fresh();
                    }
                }
            }
            let wait = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        let mut s = lock(&self.state);
                        if let Some(at) = s.queue.iter().position(|q| Arc::ptr_eq(q, &waiter)) {
                            s.queue.remove(at);
                            return Err(Error::Busy {
                                running,
                                queued: s.queue.len(),
                            });
                        }
                        // Taken from the queue already: the worker is on its way (and the
                        // request running in it, under this deadline).
                        deadline = None;
                        continue;
                    }
                    d - now
                }
                None => Duration::from_secs(3600),
            };
            h = waiter
                .cv
                .wait_timeout(h, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Starts `w` on the oldest queued request, if any; else `w` goes idle.
    fn give(&self, mut s: MutexGuard<'_, State>, w: Live) {
        let Some(waiter) = s.queue.pop_front() else {
            s.idle.push(w);
            return;
        };
        busy_push(&mut s, &w);
        drop(s);
        let handed = self.ring(w, &waiter.parts);
        *waiter.handed.lock().unwrap_or_else(|p| p.into_inner()) = Some(handed);
        waiter.cv.notify_one();
    }

    /// Writes a queued request into `w`'s arena and rings its doorbell.
    fn ring(&self, mut w: Live, parts: &[Vec<u8>]) -> Handed {
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let t = Instant::now();
        let mut call = pool::Call::default();
        let ended = match self.write_request(&mut w, &refs) {
            Err(e) => Some(Err(Broken::Io(std::io::Error::other(e.to_string())))),
            Ok(()) => {
                let bell = &self.doorbells[w.slot];
                match pool::step(&mut w.proc, &mut call, bell, &reply_max) {
                    Ok(pool::Step::Done(f)) => Some(Ok(f)),
                    Ok(pool::Step::Read(_)) => {
                        mark_rung(&w);
                        None
                    }
                    Ok(pool::Step::Write(_)) => None,
                    Err(b) => Some(Err(b)),
                }
            }
        };
        Handed { w, call, ended, t }
    }

    /// Writes `waiter`'s request into the free slot of the busy worker `side` and rings its
    /// doorbell, when the running request's doorbell is rung and no other request waits
    /// there; the worker's holder hands the worker over when its own request ends
    /// ([`Remote::release`]), or puts the request back at the head of the queue if the worker
    /// dies first.
    fn ring_behind(&self, side: &Side, waiter: &Arc<Waiter>) -> bool {
        use std::io::Write;
        let mut st = side.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(running) = st.rung else {
            return false;
        };
        if st.next.is_some() {
            return false;
        }
        let slot = (running + 1) % shm::SLOTS;
        let base = slot * self.strides.0;
        for (p, &at) in waiter.parts.iter().zip(&self.in_layout.0) {
            if st.arena.write_input(base + at, p).is_err() {
                return false;
            }
        }
        // Sixteen bytes into a pipe that holds at most one other doorbell: never short.
        match st.bell.write(&self.doorbells[slot]) {
            Ok(n) if n == self.doorbells[slot].len() => {}
            // A partial ring breaks the pipe's framing: the worker reads a broken frame and is
            // killed; its holder's request fails and this one waits as queued.
            _ => return false,
        }
        st.next = Some((waiter.clone(), slot));
        true
    }

    /// A new worker for the caller (its slot counted in `live` already).
    fn start_fresh(&self) -> Result<Got, Error> {
        match self.start_loaded() {
            Ok((w, _)) => {
                busy_push(&mut lock(&self.state), &w);
                Ok(Got::Idle(w))
            }
            Err(e) => {
                let mut s = lock(&self.state);
                s.live -= 1;
                wake_front(&s);
                Err(match e {
                    Started::Failed(f) => Error::ExecutionFailed(f),
                    Started::Refused(e) => e,
                })
            }
        }
    }

    /// A worker finished a request well: it goes to the request rung behind it (already
    /// running in the worker, or about to), else starts the oldest queued one, or goes idle.
    fn release(&self, mut w: Live) {
        let mut s = lock(&self.state);
        let pid = u32::try_from(w.proc.pid).unwrap_or(0);
        let next = {
            let mut st = side(&w);
            st.rung = None;
            let next = st.next.take();
            if let Some((_, slot)) = &next {
                st.rung = Some(*slot);
            }
            next
        };
        if let Some((waiter, slot)) = next {
            drop(s);
            w.slot = slot;
            let sent = self.doorbells[slot].len();
            let handed = Handed {
                w,
                call: pool::Call::sent(sent),
                ended: None,
                t: Instant::now(),
            };
            *waiter.handed.lock().unwrap_or_else(|p| p.into_inner()) = Some(handed);
            waiter.cv.notify_one();
            return;
        }
        s.busy.retain(|(p, _)| *p != pid);
        w.slot = 0;
        self.give(s, w);
    }

    /// The request rung behind a worker that failed goes back to the head of the queue (its
    /// arguments are its own copy), to run on the next worker.
    fn requeue_behind(&self, w: &Live) {
        let next = side(w).next.take();
        if let Some((waiter, _)) = next {
            let mut s = lock(&self.state);
            s.queue.push_front(waiter);
            wake_front(&s);
        }
    }

    /// A worker is gone: count it out and start a replacement in the background.
    fn lost(self: &Arc<Self>, pid: i32) {
        let mut s = lock(&self.state);
        let pid = u32::try_from(pid).unwrap_or(0);
        s.busy.retain(|(p, _)| *p != pid);
        s.live -= 1;
        if s.live >= self.workers {
            return;
        }
        s.live += 1;
        drop(s);
        let me = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("xlaguard-exec-spare".into())
            .spawn(move || {
                let Some(me) = me.upgrade() else { return };
                match me.start_loaded() {
                    Ok((w, _)) => {
                        let s = lock(&me.state);
                        me.give(s, w);
                    }
                    Err(_) => {
                        let mut s = lock(&me.state);
                        s.live -= 1;
                        wake_front(&s);
                    }
                }
            });
        if spawned.is_err() {
            let mut s = lock(&self.state);
            s.live -= 1;
            wake_front(&s);
        }
    }

    /// Bytes of each output.
    pub(crate) fn out_lens(&self) -> &[usize] {
        &self.out_lens
    }

    /// Waits for the rest of `w`'s exchange for `call`: its reply, until `deadline` (none: a
    /// year).
    fn finish_call(
        &self,
        w: &mut Live,
        call: &mut pool::Call,
        deadline: Option<Instant>,
    ) -> Result<protocol::Frame, Broken> {
        let until =
            deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));
        pool::finish(
            &mut w.proc,
            call,
            &self.doorbells[w.slot],
            until,
            &reply_max,
        )
    }

    /// Runs one request (`parts`: the bytes of each request argument, in order) before
    /// `deadline` (or the model's default deadline); returns the bytes of each output.
    pub(crate) fn call(
        self: &Arc<Self>,
        parts: &[&[u8]],
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let started = Instant::now();
        let deadline = deadline.or_else(|| self.deadline.map(|d| started + d));
        self.check_parts(parts)?;
        match self.acquire(parts, deadline)? {
            Got::Idle(mut w) => {
                if let Err(e) = self.write_request(&mut w, parts) {
                    self.release(w);
                    return Err(e);
                }
                let t = Instant::now();
                let bell = &self.doorbells[w.slot];
                let mut c = pool::Call::default();
                let result = match pool::step(&mut w.proc, &mut c, bell, &reply_max) {
                    Ok(pool::Step::Done(f)) => Ok(f),
                    Ok(step) => {
                        if matches!(step, pool::Step::Read(_)) {
                            mark_rung(&w);
                        }
                        self.finish_call(&mut w, &mut c, deadline)
                    }
                    Err(b) => Err(b),
                };
                self.conclude(w, result, started, t, deadline)
            }
            Got::Handed(h) => {
                let Handed {
                    mut w,
                    mut call,
                    ended,
                    t,
                } = *h;
                let result = match ended {
                    Some(r) => r,
                    None => self.finish_call(&mut w, &mut call, deadline),
                };
                self.conclude(w, result, started, t, deadline)
            }
        }
    }

    /// Whether `parts` are the request arguments' sizes.
    fn check_parts(&self, parts: &[&[u8]]) -> Result<(), Error> {
        let got: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        if got != self.in_lens {
            return Err(Error::Internal(format!(
                "a request of {got:?} bytes for an execution worker expecting {:?}",
                self.in_lens
            )));
        }
        Ok(())
    }

    /// Copies a request's arguments into `w`'s input arena (the one copy).
    fn write_request(&self, w: &mut Live, parts: &[&[u8]]) -> Result<(), Error> {
        let base = w.slot * self.strides.0;
        let mut st = side(w);
        for (p, &at) in parts.iter().zip(&self.in_layout.0) {
            st.arena
                .write_input(base + at, p)
                .map_err(Error::Internal)?;
        }
        Ok(())
    }

    /// Starts one request on an idle worker without waiting for anything; when no worker is
    /// idle (all busy, starting or being replaced) the arguments come back, copied, and the
    /// caller uses [`Remote::call`], which waits. The returned [`InFlight`] is driven by its
    /// [`InFlight::step`] from the caller's own event loop.
    ///
    /// # Errors
    /// `Ok(Err(_))`: no idle worker, the arguments to pass to [`Remote::call`]; `Err`: the
    /// arguments are not this model's.
    pub(crate) fn begin(
        self: &Arc<Self>,
        parts: &[&[u8]],
        deadline: Option<Instant>,
    ) -> Result<Result<InFlight, Vec<Vec<u8>>>, Error> {
        let started = Instant::now();
        let deadline = deadline.or_else(|| self.deadline.map(|d| started + d));
        self.check_parts(parts)?;
        let owned = || parts.iter().map(|p| p.to_vec()).collect();
        let mut w = {
            let mut s = lock(&self.state);
            // Only a worker known alive: one that died while idle is left for `acquire`,
            // which counts it and starts its replacement.
            let Some(w) = s.idle.pop() else {
                return Ok(Err(owned()));
            };
            match crate::compile::sandbox::wait4(w.proc.pid, false) {
                Ok(None) => {
                    busy_push(&mut s, &w);
                    w
                }
                _ => {
                    s.idle.push(w);
                    return Ok(Err(owned()));
                }
            }
        };
        if let Err(e) = self.write_request(&mut w, parts) {
            self.release(w);
            return Err(e);
        }
        Ok(Ok(InFlight {
            remote: self.clone(),
            worker: Some(w),
            call: pool::Call::default(),
            rung: false,
            ended: None,
            started,
            deadline,
        }))
    }

    /// Ends a request: the worker goes back to the idle ones after a well-formed reply;
    /// after anything else it is killed (reaped, audited, replaced) and the error says why.
    fn conclude(
        self: &Arc<Self>,
        mut w: Live,
        result: Result<protocol::Frame, Broken>,
        started: Instant,
        t: Instant,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let limits = &self.spawner.setup.limits;
        let pid = w.proc.pid;
        let broken = match result {
            Ok(f) if f.kind == Kind::Executed && f.payload.is_empty() => {
                // The worker is done with its arena: copy the outputs out, then release it.
                let base = w.slot * self.strides.1;
                let outs = {
                    let st = side(&w);
                    self.out_lens
                        .iter()
                        .zip(&self.out_layout.0)
                        .map(|(&len, &at)| st.arena.read_output(base + at, len))
                        .collect::<Result<Vec<_>, String>>()
                };
                self.release(w);
                let c = &self.counters;
                c.executions.fetch_add(1, Ordering::Relaxed);
                let nanos = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                c.exec_nanos.fetch_add(nanos, Ordering::Relaxed);
                return outs.map_err(Error::Internal);
            }
            Ok(f) if f.kind == Kind::ExecError => match serde_json::from_slice(&f.payload) {
                Ok(r) => {
                    self.release(w);
                    return Err(plugin_error(&r));
                }
                Err(e) => Broken::Protocol(ProtocolError::Malformed {
                    kind: Kind::ExecError,
                    detail: e.to_string(),
                }),
            },
            Ok(f) if f.kind == Kind::Executed => Broken::Protocol(ProtocolError::Malformed {
                kind: Kind::Executed,
                detail: format!(
                    "{} bytes of outputs in the reply, expected none (outputs travel in the \
                     shared-memory arena)",
                    f.payload.len()
                ),
            }),
            Ok(f) => Broken::Protocol(ProtocolError::Unexpected(f.kind)),
            Err(b) => b,
        };
        let timed_out = matches!(broken, Broken::Timeout);
        let mut failure = pool::failure_of(&mut w.proc, broken, limits, WorkerRole::Execution);
        self.requeue_behind(&w);
        drop(w);
        let (event, counter) = match &mut failure.cause {
            FailureCause::Timeout(d) => {
                *d = deadline.map_or(Duration::ZERO, |dl| dl.saturating_duration_since(started));
                ("deadline", &self.counters.killed_deadline)
            }
            FailureCause::MemoryLimit(b) => {
                *b = self.address_space.unwrap_or(*b);
                ("memory", &self.counters.died)
            }
            FailureCause::Protocol(_) => ("protocol", &self.counters.protocol),
            _ => ("died", &self.counters.died),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        (self.audit)(
            "exec_worker_killed",
            json!({"pid": pid, "why": event, "cause": failure.cause.to_string(), "wall_ms": started.elapsed().as_secs_f64() * 1e3}),
        );
        self.lost(pid);
        Err(if timed_out {
            Error::ExecutionTimeout(failure)
        } else {
            Error::ExecutionFailed(failure)
        })
    }
}

/// What an [`InFlight`] request waits for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The worker's stdin to be writable.
    Write,
    /// Its stdout to be readable.
    Read,
}

/// One request running in an execution worker, driven without a blocked thread: the caller
/// calls [`InFlight::step`] until it says the exchange has ended, waiting between steps for
/// the pipe it names ([`InFlight::pipe`] gives a duplicate to register with an event loop),
/// then takes the outputs with [`InFlight::finish`]; when the deadline passes first it calls
/// [`InFlight::expire`]. Stderr is drained when the exchange starts (a worker that writes
/// more than a pipe's buffer to stderr during one request stalls until its deadline, and is
/// killed then, with the text in its failure report). Dropped unfinished
/// (the caller went away), the request is finished on a thread of its own: the worker's answer
/// is read and the worker reused, or it is killed at the deadline, as for [`Remote::call`].
pub(crate) struct InFlight {
    remote: Arc<Remote>,
    worker: Option<Live>,
    call: pool::Call,
    /// Whether the doorbell is in the pipe (and said so to requests that may ring behind).
    rung: bool,
    /// How the exchange ended, once it has.
    ended: Option<Result<protocol::Frame, Broken>>,
    started: Instant,
    deadline: Option<Instant>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("pid", &self.worker.as_ref().map(|w| w.proc.pid))
            .finish()
    }
}

impl InFlight {
    /// A duplicate of the pipe `wait` names, to wait on in an event loop (it stays open while
    /// held, whatever happens to the worker).
    ///
    /// # Errors
    /// The system's (`dup`), or a broken pipe when the request has ended.
    pub(crate) fn pipe(&self, wait: &Wait) -> std::io::Result<std::os::fd::OwnedFd> {
        match &self.worker {
            Some(w) => w.proc.dup_pipe(matches!(wait, Wait::Write)),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Advances the exchange as far as the pipes allow now: `Ok(())` once it has ended (call
    /// [`InFlight::finish`]), else what to wait for.
    ///
    /// # Errors
    /// The descriptor to wait for ([`Wait`]), not a failure.
    pub(crate) fn step(&mut self) -> Result<(), Wait> {
        if self.ended.is_some() {
            return Ok(());
        }
        let Some(w) = self.worker.as_mut() else {
            return Ok(());
        };
        let bell = &self.remote.doorbells[w.slot];
        let r = match pool::step(&mut w.proc, &mut self.call, bell, &reply_max) {
            Ok(pool::Step::Write(_)) => return Err(Wait::Write),
            Ok(pool::Step::Read(_)) => {
                if !self.rung {
                    self.rung = true;
                    mark_rung(w);
                }
                return Err(Wait::Read);
            }
            Ok(pool::Step::Done(f)) => Ok(f),
            Err(b) => Err(b),
        };
        self.ended = Some(r);
        Ok(())
    }

    /// The outputs' bytes once [`InFlight::step`] said the exchange ended, or the error
    /// [`Remote::call`] would give (the worker then killed and replaced).
    ///
    /// # Errors
    /// As [`Remote::call`].
    pub(crate) fn finish(mut self) -> Result<Vec<Vec<u8>>, Error> {
        let r = self
            .ended
            .take()
            .unwrap_or(Err(Broken::Protocol(ProtocolError::Malformed {
                kind: Kind::Executed,
                detail: "the request was finished before its reply".into(),
            })));
        self.end(r)
    }

    /// The deadline passed: the worker is killed and replaced, and the error says so.
    pub(crate) fn expire(mut self) -> Error {
        match self.end(Err(Broken::Timeout)) {
            Err(e) => e,
            Ok(_) => Error::Internal("an expired execution request gave outputs".into()),
        }
    }

    fn end(&mut self, result: Result<protocol::Frame, Broken>) -> Result<Vec<Vec<u8>>, Error> {
        match self.worker.take() {
            Some(w) => self
                .remote
                .conclude(w, result, self.started, self.started, self.deadline),
            None => Err(Error::Internal("an execution request ended twice".into())),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(mut w) = self.worker.take() else {
            return;
        };
        let remote = self.remote.clone();
        let mut call = std::mem::take(&mut self.call);
        let (started, deadline) = (self.started, self.deadline);
        let pid = w.proc.pid;
        let ended = self.ended.take();
        let finish = move || {
            let r = match ended {
                Some(r) => r,
                None => remote.finish_call(&mut w, &mut call, deadline),
            };
            let _ = remote.conclude(w, r, started, started, deadline);
        };
        if std::thread::Builder::new()
            .name("xlaguard-exec-finish".into())
            .spawn(finish)
            .is_err()
        {
            // No thread: the worker cannot be waited for. It was killed and reaped with the
            // closure that held it; count it out and start a replacement.
            self.remote.lost(pid);
        }
    }
}

/// The largest frame of each kind a worker may answer a request with: `Executed` carries
/// nothing (the outputs are in the arena).
fn reply_max(k: Kind) -> usize {
    match k {
        Kind::Executed => 0,
        _ => MAX_SMALL,
    }
}

/// Counts `w` among the busy workers.
fn busy_push(s: &mut State, w: &Live) {
    s.busy
        .push((u32::try_from(w.proc.pid).unwrap_or(0), w.side.clone()));
}

/// Says that `w`'s running request has its doorbell in the pipe: a request may ring behind it.
fn mark_rung(w: &Live) {
    side(w).rung = Some(w.slot);
}

/// Wakes the oldest queued request (a worker slot came free: it may start a worker itself).
fn wake_front(s: &State) {
    if let Some(w) = s.queue.front() {
        w.cv.notify_one();
    }
}

/// What [`Remote::acquire`] gives.
enum Got {
    /// A worker for the caller to write its request into.
    Idle(Live),
    /// A worker already running the caller's request.
    Handed(Box<Handed>),
}

/// Why a worker could not be started and loaded.
enum Started {
    /// The worker failed (spawn, jail, death, protocol).
    Failed(Box<WorkerFailure>),
    /// The plugin in the worker refused the executable.
    Refused(Error),
}
