//! Compile worker processes: admission control (a bounded number running, a bounded queue,
//! `Busy` beyond), warm spares, one request per worker, deadlines, and reaping with `wait4`.
//!
//! A worker serves exactly one request and exits: a compile can never see state left by
//! another, and a crashed or killed worker is "replaced" simply by the next one. Spare workers
//! are started ahead of time (jailed, plugin loaded, client created) so a compile does not wait
//! for a process to start.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::protocol::{self, Decoder, Frame, Kind, ProtocolError, MAX_SMALL};
use super::sandbox::{self, ChildUsage, ExitInfo, JailReport};
use super::stats::{CompileStats, Counter};
use super::{FailureCause, Limits, WorkerFailure, WorkerRole, WORKER_ARG};

/// How much of a worker's stderr is kept for error messages.
const STDERR_TAIL: usize = 16 * 1024;

/// A finished request.
#[derive(Debug)]
pub(crate) struct Done {
    pub frame: Frame,
    pub pid: u32,
    pub exit: Option<ExitInfo>,
    pub usage: ChildUsage,
    pub wall: Duration,
}

/// Why a request got no reply.
#[derive(Debug)]
pub(crate) enum PoolError {
    Busy { running: usize, queued: usize },
    Failed(Box<WorkerFailure>),
}

/// The pool's settings.
pub(crate) struct PoolConfig {
    pub exe: PathBuf,
    pub init: Vec<u8>,
    pub env: Vec<(String, OsString)>,
    pub limits: Limits,
    pub workers: usize,
    pub queue: usize,
    pub spares: usize,
}

struct Inner {
    cfg: PoolConfig,
    state: Mutex<State>,
    cv: Condvar,
    stats: Arc<CompileStats>,
}

#[derive(Default)]
struct State {
    running: usize,
    queued: usize,
    spares: Vec<Warm>,
    spawning: usize,
}

pub(crate) struct Warm {
    pub(crate) proc: Proc,
    pub(crate) report: JailReport,
}

/// A live worker process and its pipes. Killed and reaped on drop.
pub(crate) struct Proc {
    pub(crate) pid: i32,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    stderr: Option<ChildStderr>,
    stderr_tail: Vec<u8>,
    started: Instant,
    pub(crate) reaped: Option<(ExitInfo, ChildUsage)>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            sandbox::kill_child(self.pid);
            let _ = sandbox::wait4(self.pid, true);
        }
    }
}

impl Proc {
    fn push_stderr(&mut self, b: &[u8]) {
        self.stderr_tail.extend_from_slice(b);
        if self.stderr_tail.len() > STDERR_TAIL {
            let cut = self.stderr_tail.len() - STDERR_TAIL;
            self.stderr_tail.drain(..cut);
        }
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr_tail)
            .trim()
            .to_string()
    }

    /// Reads whatever stderr holds without blocking (the process is dead or about to be).
    fn drain_stderr(&mut self) {
        let mut buf = [0u8; 4096];
        let end = Instant::now() + Duration::from_millis(200);
        while let Some(e) = self.stderr.as_mut() {
            match e.read(&mut buf) {
                Ok(0) => self.stderr = None,
                Ok(n) => {
                    let chunk = buf[..n].to_vec();
                    self.push_stderr(&chunk);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > end {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(_) => self.stderr = None,
            }
        }
    }

    /// Reads what stderr holds now, without waiting.
    fn drain_stderr_now(&mut self) {
        let mut buf = [0u8; 4096];
        while let Some(e) = self.stderr.as_mut() {
            match e.read(&mut buf) {
                Ok(0) => self.stderr = None,
                Ok(n) => {
                    let chunk = buf[..n].to_vec();
                    self.push_stderr(&chunk);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Waits until `fd` is ready for `events` (draining stderr meanwhile) or `deadline`.
    fn wait_for(&mut self, fd: i32, events: i16, deadline: Instant) -> Result<(), Broken> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(Broken::Timeout);
            }
            let err_fd = self.stderr.as_ref().map_or(-1, AsRawFd::as_raw_fd);
            let mut fds = [
                libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                },
                libc::pollfd {
                    fd: err_fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // Round up: a timeout under a millisecond must not become a busy loop.
            let wait = (deadline - now).max(Duration::from_millis(1));
            sandbox::poll(&mut fds, wait).map_err(Broken::Io)?;
            if fds[1].revents != 0 {
                self.drain_stderr_now();
            }
            if fds[0].revents != 0 {
                return Ok(());
            }
        }
    }

    /// Kills (if still running) and reaps.
    pub(crate) fn kill_and_reap(&mut self) -> Option<(ExitInfo, ChildUsage)> {
        if self.reaped.is_none() {
            sandbox::kill_child(self.pid);
            self.reaped = sandbox::wait4(self.pid, true).ok().flatten();
        }
        self.drain_stderr();
        self.reaped
    }

    /// Waits up to `grace` for a normal exit, then kills.
    fn reap_gracefully(&mut self, grace: Duration) -> Option<(ExitInfo, ChildUsage)> {
        let end = Instant::now() + grace;
        while self.reaped.is_none() {
            match sandbox::wait4(self.pid, false) {
                Ok(Some(r)) => self.reaped = Some(r),
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(1)),
                Ok(None) => return self.kill_and_reap(),
                Err(_) => return None,
            }
        }
        self.drain_stderr();
        self.reaped
    }
}

/// Why an exchange with a worker got no frame.
pub(crate) enum Broken {
    Timeout,
    Eof,
    Protocol(ProtocolError),
    Io(std::io::Error),
}

/// Sends `send`, then reads one frame, all before `deadline`; stderr is collected meanwhile.
pub(crate) fn exchange(
    p: &mut Proc,
    send: &[u8],
    close_after: bool,
    deadline: Instant,
    max: &dyn Fn(Kind) -> usize,
) -> Result<Frame, Broken> {
    let mut written = 0usize;
    let mut write_failed = false;
    let mut dec = Decoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if (written == send.len() && close_after) || write_failed {
            p.stdin = None;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Broken::Timeout);
        }
        let want_write = written < send.len() && p.stdin.is_some();
        let mut fds = Vec::with_capacity(3);
        let out_fd = p.stdout.as_raw_fd();
        fds.push(libc::pollfd {
            fd: out_fd,
            events: libc::POLLIN,
            revents: 0,
        });
        let err_fd = p.stderr.as_ref().map(AsRawFd::as_raw_fd);
        if let Some(fd) = err_fd {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let in_fd = p
            .stdin
            .as_ref()
            .filter(|_| want_write)
            .map(AsRawFd::as_raw_fd);
        if let Some(fd) = in_fd {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            });
        }
        sandbox::poll(&mut fds, deadline - now).map_err(Broken::Io)?;
        for f in &fds {
            if f.revents == 0 {
                continue;
            }
            if Some(f.fd) == in_fd {
                if let Some(w) = p.stdin.as_mut() {
                    match w.write(&send[written..]) {
                        Ok(n) => written += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        // The worker is gone (EPIPE): its exit tells why.
                        Err(_) => write_failed = true,
                    }
                }
            } else if Some(f.fd) == err_fd {
                if let Some(e) = p.stderr.as_mut() {
                    match e.read(&mut buf) {
                        Ok(0) => p.stderr = None,
                        Ok(n) => {
                            let chunk = buf[..n].to_vec();
                            p.push_stderr(&chunk);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => p.stderr = None,
                    }
                }
            } else if f.fd == out_fd {
                loop {
                    match p.stdout.read(&mut buf) {
                        Ok(0) => return Err(Broken::Eof),
                        Ok(n) => {
                            if let Some(frame) =
                                dec.feed(&buf[..n], &max).map_err(Broken::Protocol)?
                            {
                                return Ok(frame);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(Broken::Io(e)),
                    }
                }
            }
        }
    }
}

/// Drives `c` to its end, waiting (poll) as needed, before `deadline`.
pub(crate) fn finish(
    p: &mut Proc,
    c: &mut Call,
    send: &[u8],
    deadline: Instant,
    max: &dyn Fn(Kind) -> usize,
) -> Result<Frame, Broken> {
    loop {
        match step(p, c, send, max)? {
            Step::Write(fd) => p.wait_for(fd, libc::POLLOUT, deadline)?,
            Step::Read(fd) => p.wait_for(fd, libc::POLLIN, deadline)?,
            Step::Done(f) => return Ok(f),
        }
    }
}

/// One request to a long-lived worker in progress: how much of the frame is written and of the
/// reply read. Driven by [`step`] without blocking, so that a caller can wait for the pipes in
/// its own event loop (the server's async workers) instead of in a blocked thread.
#[derive(Debug, Default)]
pub(crate) struct Call {
    begun: bool,
    sent: usize,
    head: [u8; protocol::HEADER_LEN],
    head_at: usize,
    kind: Option<Kind>,
    payload: Vec<u8>,
    at: usize,
}

impl Call {
    /// A call whose frame (`len` bytes) was already written, by someone else: only the reply
    /// remains to be read.
    pub(crate) fn sent(len: usize) -> Call {
        Call {
            begun: true,
            sent: len,
            ..Call::default()
        }
    }
}

/// What a [`Call`] needs next.
#[derive(Debug)]
pub(crate) enum Step {
    /// The worker's stdin (this descriptor) to be writable.
    Write(std::os::fd::RawFd),
    /// Its stdout (this descriptor) to be readable.
    Read(std::os::fd::RawFd),
    /// The reply.
    Done(Frame),
}

/// Advances `c` as far as the pipes allow now, without blocking.
pub(crate) fn step(
    p: &mut Proc,
    c: &mut Call,
    send: &[u8],
    max: &dyn Fn(Kind) -> usize,
) -> Result<Step, Broken> {
    if !c.begun {
        c.begun = true;
        p.drain_stderr_now();
    }
    while c.sent < send.len() {
        let Some(w) = p.stdin.as_mut() else {
            return Err(Broken::Eof);
        };
        match w.write(&send[c.sent..]) {
            Ok(0) => return Err(Broken::Eof),
            Ok(n) => c.sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Ok(Step::Write(w.as_raw_fd()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // The worker is gone (EPIPE): its exit tells why.
            Err(_) => return Err(Broken::Eof),
        }
    }
    let kind = loop {
        if let Some(k) = c.kind {
            break k;
        }
        if c.head_at == c.head.len() {
            let (kind, len) = protocol::parse_header(&c.head, max).map_err(Broken::Protocol)?;
            c.payload = vec![0u8; len];
            c.kind = Some(kind);
            continue;
        }
        match p.stdout.read(&mut c.head[c.head_at..]) {
            Ok(0) => return Err(Broken::Eof),
            Ok(n) => c.head_at += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Ok(Step::Read(p.stdout.as_raw_fd()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Broken::Io(e)),
        }
    };
    while c.at < c.payload.len() {
        match p.stdout.read(&mut c.payload[c.at..]) {
            Ok(0) => return Err(Broken::Eof),
            Ok(n) => c.at += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Ok(Step::Read(p.stdout.as_raw_fd()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Broken::Io(e)),
        }
    }
    Ok(Step::Done(Frame {
        kind,
        payload: std::mem::take(&mut c.payload),
    }))
}

impl Proc {
    /// A duplicate of the worker's stdout (`write` false) or stdin (`write` true), to wait on
    /// in an event loop: it stays open as long as the caller holds it, whatever happens to
    /// the worker.
    pub(crate) fn dup_pipe(&self, write: bool) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        if write {
            match &self.stdin {
                Some(w) => w.as_fd().try_clone_to_owned(),
                None => Err(std::io::ErrorKind::BrokenPipe.into()),
            }
        } else {
            self.stdout.as_fd().try_clone_to_owned()
        }
    }
}

/// Messages that look like an allocation failure in the compiler.
fn looks_out_of_memory(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    [
        "bad_alloc",
        "out of memory",
        "cannot allocate memory",
        "failed to allocate",
        "allocation failed",
    ]
    .iter()
    .any(|m| s.contains(m))
}

fn classify(
    b: &Broken,
    exit: Option<ExitInfo>,
    usage: &ChildUsage,
    l: &Limits,
    stderr: &str,
) -> FailureCause {
    match b {
        Broken::Timeout => FailureCause::Timeout(l.deadline),
        Broken::Protocol(e) => FailureCause::Protocol(e.clone()),
        Broken::Eof | Broken::Io(_) => {
            let cpu = (usage.user + usage.sys).as_secs();
            match exit {
                Some(ExitInfo::Signal(libc::SIGSYS)) => FailureCause::SeccompKill,
                Some(ExitInfo::Signal(libc::SIGXCPU)) => {
                    FailureCause::CpuLimit(l.cpu_seconds.unwrap_or(0))
                }
                Some(ExitInfo::Signal(libc::SIGKILL))
                    if l.cpu_seconds.is_some_and(|c| cpu >= c) =>
                {
                    FailureCause::CpuLimit(l.cpu_seconds.unwrap_or(0))
                }
                _ if looks_out_of_memory(stderr) && l.address_space_bytes.is_some() => {
                    FailureCause::MemoryLimit(l.address_space_bytes.unwrap_or(0))
                }
                Some(ExitInfo::Signal(s)) => FailureCause::Signal(s),
                Some(ExitInfo::Code(c)) => FailureCause::Exit(c),
                None => FailureCause::Exit(-1),
            }
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How to start one kind of worker: the executable, its hidden argument, environment, init
/// frame and limits.
pub(crate) struct Spawn<'a> {
    pub exe: &'a std::path::Path,
    pub arg: &'a str,
    pub env: &'a [(String, OsString)],
    pub init: &'a [u8],
    pub limits: &'a Limits,
    pub role: WorkerRole,
    /// Descriptors the worker inherits: (ours, its number).
    pub fds: &'a [(std::os::fd::RawFd, std::os::fd::RawFd)],
}

/// Kills and reaps `p`, and says why it failed.
pub(crate) fn failure_of(
    p: &mut Proc,
    b: Broken,
    limits: &Limits,
    role: WorkerRole,
) -> Box<WorkerFailure> {
    let reaped = p.kill_and_reap();
    let (exit, usage) = match reaped {
        Some((e, u)) => (Some(e), u),
        None => (None, ChildUsage::default()),
    };
    let stderr = p.stderr_text();
    let cause = classify(&b, exit, &usage, limits, &stderr);
    let cause = match (cause, &b) {
        (FailureCause::Exit(c), Broken::Io(e)) => {
            FailureCause::Io(format!("{e} (worker {})", ExitInfo::Code(c)))
        }
        (c, _) => c,
    };
    Box::new(WorkerFailure {
        pid: u32::try_from(p.pid).unwrap_or(0),
        role,
        cause,
        exit,
        usage,
        wall: p.started.elapsed(),
        stderr_tail: stderr,
    })
}

/// Starts a worker and waits until it is jailed and ready.
pub(crate) fn start_worker(s: &Spawn<'_>) -> Result<Warm, Box<WorkerFailure>> {
    let started = Instant::now();
    let spawn_failed = |e: String| {
        Box::new(WorkerFailure {
            pid: 0,
            role: s.role,
            cause: FailureCause::Spawn(e),
            exit: None,
            usage: ChildUsage::default(),
            wall: started.elapsed(),
            stderr_tail: String::new(),
        })
    };
    let mut cmd = Command::new(s.exe);
    cmd.arg(s.arg)
        .env_clear()
        .envs(s.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sandbox::inherit_fds(&mut cmd, s.fds);
    let mut child = cmd
        .spawn()
        .map_err(|e| spawn_failed(format!("{}: {e}", s.exe.display())))?;
    let pid = i32::try_from(child.id()).unwrap_or(-1);
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(spawn_failed("no pipes to the worker".into()));
    };
    // From here on the child is reaped through `Proc` (wait4), never through `child`.
    drop(child);
    let mut p = Proc {
        pid,
        stdin: Some(stdin),
        stdout,
        stderr: Some(stderr),
        stderr_tail: Vec::new(),
        started,
        reaped: None,
    };
    let fail = |p: &mut Proc, b: Broken| failure_of(p, b, s.limits, s.role);
    for fd in [
        p.stdout.as_raw_fd(),
        p.stderr.as_ref().map_or(-1, AsRawFd::as_raw_fd),
        p.stdin.as_ref().map_or(-1, AsRawFd::as_raw_fd),
    ] {
        if let Err(e) = sandbox::set_nonblocking(fd) {
            return Err(fail(&mut p, Broken::Io(e)));
        }
    }
    let deadline = started + s.limits.startup_timeout;
    match exchange(&mut p, s.init, false, deadline, &|_| MAX_SMALL) {
        Ok(f) if f.kind == Kind::Ready => match serde_json::from_slice(&f.payload) {
            Ok(report) => Ok(Warm { proc: p, report }),
            Err(e) => Err(fail(
                &mut p,
                Broken::Protocol(ProtocolError::Malformed {
                    kind: Kind::Ready,
                    detail: e.to_string(),
                }),
            )),
        },
        Ok(f) if f.kind == Kind::Fatal => {
            let mut failed = fail(&mut p, Broken::Eof);
            failed.cause = FailureCause::Setup(String::from_utf8_lossy(&f.payload).into_owned());
            Err(failed)
        }
        Ok(f) => Err(fail(
            &mut p,
            Broken::Protocol(ProtocolError::Unexpected(f.kind)),
        )),
        Err(b) => Err(fail(&mut p, b)),
    }
}

impl Inner {
    fn failure(&self, p: &mut Proc, b: Broken) -> Box<WorkerFailure> {
        failure_of(p, b, &self.cfg.limits, WorkerRole::Compile)
    }

    /// Starts a worker and waits until it is jailed and ready.
    fn start(&self) -> Result<Warm, Box<WorkerFailure>> {
        self.stats.bump(Counter::WorkersSpawned);
        start_worker(&Spawn {
            exe: &self.cfg.exe,
            arg: WORKER_ARG,
            env: &self.cfg.env,
            init: &self.cfg.init,
            limits: &self.cfg.limits,
            role: WorkerRole::Compile,
            fds: &[],
        })
    }
}

/// The worker pool of one engine.
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

/// Starts spares when dropped (at the end of a request, whatever its outcome).
struct Replenish<'a>(&'a Pool);

impl Drop for Replenish<'_> {
    fn drop(&mut self) {
        self.0.replenish();
    }
}

/// Holds a running slot; frees it on drop.
struct Slot<'a>(&'a Inner);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.0.state);
        s.running -= 1;
        self.0.stats.set_load(s.running, s.queued);
        drop(s);
        self.0.cv.notify_one();
    }
}

impl Pool {
    /// Starts the first worker (whose jail report is returned) and keeps it as a spare.
    pub(crate) fn new(
        cfg: PoolConfig,
        stats: Arc<CompileStats>,
    ) -> Result<(Pool, JailReport), Box<WorkerFailure>> {
        let inner = Arc::new(Inner {
            cfg,
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            stats,
        });
        let first = inner.start()?;
        let report = first.report.clone();
        if inner.cfg.spares > 0 {
            lock(&inner.state).spares.push(first);
        }
        Ok((Pool { inner }, report))
    }

    fn admit(&self) -> Result<Slot<'_>, PoolError> {
        let inner = &*self.inner;
        let mut s = lock(&inner.state);
        if s.running >= inner.cfg.workers {
            if s.queued >= inner.cfg.queue {
                inner.stats.bump(Counter::Busy);
                return Err(PoolError::Busy {
                    running: s.running,
                    queued: s.queued,
                });
            }
            s.queued += 1;
            inner.stats.set_load(s.running, s.queued);
            while s.running >= inner.cfg.workers {
                s = inner.cv.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            s.queued -= 1;
        }
        s.running += 1;
        inner.stats.set_load(s.running, s.queued);
        Ok(Slot(inner))
    }

    fn take_spare(&self) -> Option<Warm> {
        let mut s = lock(&self.inner.state);
        while let Some(mut w) = s.spares.pop() {
            // A spare that died while idle is discarded.
            match sandbox::wait4(w.proc.pid, false) {
                Ok(None) => return Some(w),
                Ok(Some(r)) => w.proc.reaped = Some(r),
                Err(_) => {}
            }
        }
        None
    }

    /// Starts spares in the background up to the configured number.
    fn replenish(&self) {
        let inner = &self.inner;
        let mut s = lock(&inner.state);
        if s.spares.len() + s.spawning >= inner.cfg.spares {
            return;
        }
        s.spawning += 1;
        drop(s);
        let bg = inner.clone();
        let spawned = std::thread::Builder::new()
            .name("xlaguard-spare".into())
            .spawn(move || {
                let w = bg.start();
                let mut s = lock(&bg.state);
                s.spawning -= 1;
                if let Ok(w) = w {
                    s.spares.push(w);
                }
            });
        if spawned.is_err() {
            lock(&inner.state).spawning -= 1;
        }
    }

    /// Runs one request on a fresh worker.
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub(crate) fn run(&self, kind: Kind, payload: &[u8]) -> Result<Done, PoolError> {
        let frame = protocol::encode(kind, payload);
        self.run_encoded(frame)
    }

    /// [`Pool::run`] with the frame already encoded (a compile frame built in one buffer).
    pub(crate) fn run_encoded(
        &self,
        frame: Result<Vec<u8>, protocol::ProtocolError>,
    ) -> Result<Done, PoolError> {
        let _slot = self.admit()?;
        let warm = self.take_spare();
        let warm = match warm {
            Some(w) => w,
            None => self.inner.start().map_err(PoolError::Failed)?,
        };
        // The next spare starts once this request is done, not during it: starting a worker
        // (plugin load, client, warm-up compile) would compete for the same cores.
        let _replenish = Replenish(self);
        let mut p = warm.proc;
        let frame = frame
            .map_err(|e| PoolError::Failed(self.inner.failure(&mut p, Broken::Protocol(e))))?;
        let t = Instant::now();
        let max_exe = self
            .inner
            .cfg
            .limits
            .max_executable_bytes
            .saturating_add(MAX_SMALL);
        let max = move |k: Kind| match k {
            Kind::Compiled => max_exe,
            _ => MAX_SMALL,
        };
        match exchange(
            &mut p,
            &frame,
            true,
            t + self.inner.cfg.limits.deadline,
            &max,
        ) {
            Ok(frame) => {
                let reaped = p.reap_gracefully(Duration::from_secs(2));
                Ok(Done {
                    frame,
                    pid: u32::try_from(p.pid).unwrap_or(0),
                    exit: reaped.map(|r| r.0),
                    usage: reaped.map(|r| r.1).unwrap_or_default(),
                    wall: t.elapsed(),
                })
            }
            Err(b) => Err(PoolError::Failed(self.inner.failure(&mut p, b))),
        }
    }

    /// Pids of the warm spare workers (jailed, waiting for a request).
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub(crate) fn spare_pids(&self, wait: Duration) -> Vec<u32> {
        let end = Instant::now() + wait;
        loop {
            let s = lock(&self.inner.state);
            if !s.spares.is_empty() || Instant::now() >= end {
                return s
                    .spares
                    .iter()
                    .map(|w| u32::try_from(w.proc.pid).unwrap_or(0))
                    .collect();
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
