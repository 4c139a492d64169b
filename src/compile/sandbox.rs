//! The jail a compile worker applies to itself, and the few raw system calls the compile
//! machinery needs. With `src/pjrt`, this is the only place with `unsafe`.
//!
//! The worker applies the steps in this order, before it reads the untrusted module
//! (see [`super::worker`]): close inherited file descriptors, clear the environment, resource
//! limits, CPU affinity, `PR_SET_NO_NEW_PRIVS`, a new network namespace, drop capabilities,
//! (load the plugin library), Landlock, seccomp. Each step reports what it achieved; what the
//! kernel cannot enforce ends up in [`JailReport::unenforced`].

use std::collections::BTreeMap;
use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::limits::Limits;

/// What the jail of a compile worker enforces, as the worker itself observed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailReport {
    /// `process` or `thread`.
    pub isolation: String,
    /// Pid of the worker that reported (0 for thread isolation).
    pub pid: u32,
    /// Landlock: e.g. `fully enforced (ABI 7), read-only: 8 paths`.
    pub landlock: String,
    /// Seccomp: e.g. `filter, default action kill, all threads (TSYNC)`.
    pub seccomp: String,
    /// Whether `PR_SET_NO_NEW_PRIVS` is set.
    pub no_new_privs: bool,
    /// Network isolation: e.g. `new network namespace`.
    pub network: String,
    /// Capabilities: e.g. `all dropped`.
    pub capabilities: String,
    /// Resource limits set.
    pub rlimits: String,
    /// CPU affinity.
    pub affinity: String,
    /// Names of the environment variables passed through.
    pub env: Vec<String>,
    /// Each protection that is not in force, in words. Empty when the jail is complete.
    pub unenforced: Vec<String>,
}

impl JailReport {
    /// The report for thread isolation: nothing of the jail applies.
    pub fn thread() -> JailReport {
        let none = "none (thread isolation)".to_string();
        JailReport {
            isolation: "thread".into(),
            pid: 0,
            landlock: none.clone(),
            seccomp: none.clone(),
            no_new_privs: false,
            network: none.clone(),
            capabilities: none.clone(),
            rlimits: none.clone(),
            affinity: none,
            env: Vec::new(),
            unenforced: vec![
                "thread isolation: compiles run inside this process, with no jail; a crash or \
                 abort in the compiler takes the process down, and no deadline, memory or CPU \
                 limit can be enforced"
                    .into(),
            ],
        }
    }
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

/// Step 1: closes every file descriptor from `first` up (3: all above stderr; an execution
/// worker keeps its two arena descriptors, 3 and 4, and passes 5).
pub(crate) fn close_inherited_fds(first: RawFd) -> Result<(), String> {
    let first = first.max(3);
    // SAFETY: close_range takes plain integers; closing descriptors we do not use cannot break
    // memory safety (the worker holds no Rust object on fds >= `first` at this point).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) };
    if r == 0 {
        return Ok(());
    }
    // Older kernels: close what /proc says is open.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("close_range: {}; /proc/self/fd: {e}", errno()))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter(|&fd| fd >= first)
        .collect();
    for fd in fds {
        // SAFETY: as above.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Makes the child of `cmd` inherit descriptors: for each `(fd, at)`, this process's `fd`
/// becomes the child's `at` (not close-on-exec there). Every other descriptor of ours stays
/// close-on-exec, and the worker closes whatever else it finds at step 1.
pub(crate) fn inherit_fds(cmd: &mut std::process::Command, fds: &[(RawFd, RawFd)]) {
    use std::os::unix::process::CommandExt;
    if fds.is_empty() {
        return;
    }
    let fds: Vec<(RawFd, RawFd)> = fds.to_vec();
    let hook = move || -> io::Result<()> {
        // First move every source above the targets (a source may be another pair's target),
        // then put each in place. Only fcntl and dup2: async-signal-safe, no allocation.
        let high = fds.iter().map(|&(_, at)| at).max().unwrap_or(0) + 1;
        let mut moved = [-1 as RawFd; 8];
        if fds.len() > moved.len() {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        for (i, &(fd, _)) in fds.iter().enumerate().take(moved.len()) {
            // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor this process holds.
            let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, high) };
            if d < 0 {
                return Err(io::Error::last_os_error());
            }
            moved[i] = d;
        }
        for (i, &(_, at)) in fds.iter().enumerate().take(moved.len()) {
            // SAFETY: dup2 onto a descriptor number we chose; the new one is not close-on-exec.
            if unsafe { libc::dup2(moved[i], at) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and only calls fcntl and dup2
    // (async-signal-safe) on a vector allocated before the fork.
    unsafe { cmd.pre_exec(hook) };
}

/// Step 2: removes every environment variable not in `keep`. Returns the names kept.
///
/// Runs while the worker is single-threaded, so changing the environment races nothing.
pub(crate) fn clear_env(keep: &[&str]) -> Vec<String> {
    let mut kept = Vec::new();
    for (k, _) in std::env::vars_os() {
        match k.to_str() {
            Some(name) if keep.contains(&name) => kept.push(name.to_string()),
            _ => std::env::remove_var(&k),
        }
    }
    kept.sort();
    kept
}

fn setrlimit(res: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: a valid rlimit struct passed by pointer for the duration of the call.
    if unsafe { libc::setrlimit(res, &lim) } == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// The host's physical memory in bytes (`sysinfo`), if it can be read.
pub(crate) fn physical_memory() -> Option<u64> {
    let mut s = std::mem::MaybeUninit::<libc::sysinfo>::zeroed();
    // SAFETY: sysinfo writes one struct into the pointer, valid for it.
    if unsafe { libc::sysinfo(s.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: sysinfo returned 0, so it filled the struct.
    let s = unsafe { s.assume_init() };
    s.totalram.checked_mul(u64::from(s.mem_unit))
}

/// The address-space limit of a compile of a `module_len`-byte module: the configured `base`
/// plus 8 × the module (XLA holds a few copies of baked weights while it compiles: a 100 MiB
/// module peaked at 4.3× its size), never above `cap` (a fraction of the host's memory,
/// [`Limits::host_memory_percent`]; 0: unknown, no cap).
pub(crate) fn address_space_for(base: u64, cap: u64, module_len: usize) -> u64 {
    let need = base.saturating_add((module_len as u64).saturating_mul(8));
    if cap == 0 {
        need
    } else {
        need.min(cap)
    }
}

/// The cap of [`address_space_for`]: `percent` of `physical` bytes (0 when memory is unknown
/// or the percentage is not in 1..=100).
pub(crate) fn host_cap(physical: Option<u64>, percent: u8) -> u64 {
    match physical {
        Some(p) if (1..=100).contains(&percent) => p / 100 * u64::from(percent),
        _ => 0,
    }
}

#[cfg(test)]
mod sizing_tests {
    #[test]
    fn address_space_grows_with_the_module_up_to_the_cap() {
        use super::address_space_for as f;
        const G: u64 = 1 << 30;
        assert_eq!(f(16 * G, 24 * G, 0), 16 * G);
        assert_eq!(f(16 * G, 24 * G, 100 << 20), 16 * G + (800 << 20));
        assert_eq!(f(16 * G, 24 * G, 2 << 30), 24 * G);
        // The host's share caps even the configured limit (a 16 GiB default on an 8 GiB host).
        assert_eq!(f(16 * G, 4 * G, 1 << 30), 4 * G);
        assert_eq!(f(256 << 20, 0, 1000), (256 << 20) + 8000);
        assert_eq!(super::host_cap(Some(100 * G), 50), 50 * G);
        assert_eq!(super::host_cap(Some(24 * G), 0), 0);
        assert_eq!(super::host_cap(Some(24 * G), 101), 0);
        assert_eq!(super::host_cap(None, 50), 0);
    }
}

/// Sets the address-space limit (soft and hard) to `bytes` for the compile about to run;
/// only ever lowers the hard limit [`set_rlimits`] left.
pub(crate) fn limit_address_space(bytes: u64) -> Result<(), String> {
    setrlimit(libc::RLIMIT_AS, bytes, bytes).map_err(|e| format!("RLIMIT_AS: {e}"))
}

/// Step 3: resource limits. Returns a description; a limit that cannot be set is an error
/// (they are what stops a runaway compile). The address space gets `l.address_space_bytes` as
/// its soft limit and `cap` (at least that) as its hard limit, so that the limit of one compile
/// can be sized from its module ([`address_space_for`]) before the module is parsed.
pub(crate) fn set_rlimits(l: &Limits, cap: u64) -> Result<String, String> {
    let mut parts = Vec::new();
    if let Some(b) = l.address_space_bytes {
        setrlimit(libc::RLIMIT_AS, b, cap.max(b)).map_err(|e| format!("RLIMIT_AS: {e}"))?;
        parts.push(format!("AS {} MiB", b >> 20));
    }
    if let Some(s) = l.cpu_seconds {
        // SIGXCPU at the soft limit, SIGKILL one second later.
        setrlimit(libc::RLIMIT_CPU, s, s + 1).map_err(|e| format!("RLIMIT_CPU: {e}"))?;
        parts.push(format!("CPU {s} s"));
    }
    setrlimit(libc::RLIMIT_NOFILE, l.open_files, l.open_files)
        .map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    parts.push(format!("NOFILE {}", l.open_files));
    setrlimit(libc::RLIMIT_FSIZE, 0, 0).map_err(|e| format!("RLIMIT_FSIZE: {e}"))?;
    parts.push("FSIZE 0".into());
    setrlimit(libc::RLIMIT_CORE, 0, 0).map_err(|e| format!("RLIMIT_CORE: {e}"))?;
    parts.push("CORE 0".into());
    Ok(parts.join(", "))
}

/// Step 4: pins the worker (and every thread it will start) to `cores`.
pub(crate) fn set_affinity(cores: &[usize]) -> Result<String, String> {
    // SAFETY: cpu_set_t is plain old data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cores {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(format!("core {c} out of range"));
        }
        // SAFETY: `c` < CPU_SETSIZE (checked above), so the bit lies inside `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: a valid set of the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(format!("sched_setaffinity({cores:?}): {}", errno()));
    }
    Ok(format!("cores {cores:?}"))
}

/// The CPUs this process may run on.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: as in set_affinity.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid set of the size passed, written by the kernel.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` < CPU_SETSIZE, inside `set`.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Step 5: `PR_SET_NO_NEW_PRIVS`.
pub(crate) fn no_new_privs() -> Result<(), String> {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!("PR_SET_NO_NEW_PRIVS: {}", errno()))
    }
}

/// Step 6: a new, empty network namespace (only a down loopback). Tries a plain one (needs
/// CAP_SYS_ADMIN), then one inside a new user namespace (unprivileged).
pub(crate) fn new_network_namespace() -> Result<String, String> {
    // SAFETY: unshare with flag arguments; the process is single-threaded, as required.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
        return Ok("new network namespace".into());
    }
    let first = errno();
    // SAFETY: as above.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } == 0 {
        return Ok("new network namespace (in a new user namespace)".into());
    }
    Err(format!(
        "no new network namespace: unshare(CLONE_NEWNET): {first}; with CLONE_NEWUSER: {}",
        errno()
    ))
}

/// Step 7: drops every capability (bounding, ambient, effective, permitted, inheritable).
/// Meaningful when the parent runs as root; harmless otherwise.
pub(crate) fn drop_capabilities() -> Result<String, String> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments; EINVAL past the last capability is expected.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
    // SAFETY: as above.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut h = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let d = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset with a v3 header and the two data words v3 requires, both alive for the
    // call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) };
    if r != 0 {
        return Err(format!("capset: {}", errno()));
    }
    Ok("all dropped".into())
}

/// Number of threads of this process (from `/proc/self/task`).
/// Loads a system library (by soname, e.g. `libz.so.1`) for good, before Landlock, so that a
/// library opened later inside the jail finds it already loaded (the loader matches sonames of
/// loaded objects before it searches, and the jail would not let it search).
pub(crate) fn preload_library(soname: &str) -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: a system library from the loader's search path; its initializers are those of
    // a plain C library, and it is never unloaded (`forget`), so no symbol outlives it.
    let lib = unsafe { Library::open(Some(soname), RTLD_NOW | RTLD_GLOBAL) }
        .map_err(|e| format!("preloading {soname}: {e}"))?;
    std::mem::forget(lib);
    Ok(())
}

pub(crate) fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Step 8: Landlock. Every filesystem access the kernel knows is handled; `read_paths` get
/// read-only access (files: read; folders: read and list); nothing is writable. TCP bind and
/// connect are denied, and abstract Unix sockets and signals are scoped to the worker. Must
/// run while single-threaded (Landlock ABI < 8 restricts only the calling thread and its future
/// children).
pub(crate) fn landlock(read_paths: &[PathBuf]) -> Result<(String, bool), String> {
    use landlock::{
        path_beneath_rules, Access, AccessFs, AccessNet, LandlockStatus, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus, Scope, ABI,
    };
    let threads = thread_count();
    if threads != 1 {
        return Err(format!(
            "{threads} threads at Landlock time; refusing to leave threads unrestricted"
        ));
    }
    let abi = ABI::V6;
    let existing: Vec<&PathBuf> = read_paths.iter().filter(|p| p.exists()).collect();
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(&existing, AccessFs::from_read(abi))))
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("Landlock: {e}"))?;
    let abi_text = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => format!("ABI {}", effective_abi as i32),
        LandlockStatus::NotEnabled => "not enabled in this kernel".into(),
        LandlockStatus::NotImplemented => "not built into this kernel".into(),
    };
    let (text, full) = match status.ruleset {
        RulesetStatus::FullyEnforced => (format!("fully enforced ({abi_text})"), true),
        RulesetStatus::PartiallyEnforced => (format!("partially enforced ({abi_text})"), false),
        RulesetStatus::NotEnforced => (format!("not enforced ({abi_text})"), false),
    };
    Ok((
        format!(
            "{text}; read-only: {} paths; no writes; TCP and signals outside the worker denied",
            existing.len()
        ),
        full,
    ))
}

/// The syscalls a jailed worker may make after seccomp is applied: client creation, compile,
/// serialize, reply, exit. Measured with strace on the CPU plugin (see PJRT_NOTES.md) and by
/// running every fixture under the filter.
fn allowed_syscalls(pid: u32) -> Result<BTreeMap<i64, Vec<seccompiler::SeccompRule>>, String> {
    use seccompiler::SeccompRule as Rule;
    use seccompiler::{SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond};
    let e = |e: seccompiler::BackendError| e.to_string();
    let cond = |arg: u8, op: Op, v: u64| Cond::new(arg, Len::Qword, op, v).map_err(e);
    let dcond = |arg: u8, op: Op, v: u64| Cond::new(arg, Len::Dword, op, v).map_err(e);
    let mut m: BTreeMap<i64, Vec<Rule>> = BTreeMap::new();
    let always = [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_lseek,
        libc::SYS_close,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_getdents64,
        libc::SYS_openat, // paths: Landlock; write modes: the second filter
        libc::SYS_fcntl,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mprotect,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_futex,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getrandom,
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_gettimeofday,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_sched_getaffinity,
        libc::SYS_sched_yield,
        libc::SYS_sched_getparam,
        libc::SYS_sched_getscheduler,
        libc::SYS_sysinfo,
        libc::SYS_uname,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_restart_syscall,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_clone3, // answered ENOSYS by the second filter: glibc falls back to clone
        // OpenBLAS (the LAPACK custom calls' library, in execution workers) sets the NUMA
        // policy of its own buffers at start-up and per call; it affects only the caller's
        // memory.
        libc::SYS_mbind,
    ];
    for s in always {
        m.insert(s, Vec::new());
    }
    #[cfg(target_arch = "x86_64")]
    for s in [libc::SYS_stat, libc::SYS_lstat, libc::SYS_poll] {
        m.insert(s, Vec::new());
    }
    // Threads only: clone must carry CLONE_THREAD (no fork).
    let thread = libc::CLONE_THREAD as u64;
    m.insert(
        libc::SYS_clone,
        vec![Rule::new(vec![cond(0, Op::MaskedEq(thread), thread)?]).map_err(e)?],
    );
    // Signals to itself only (abort() raises SIGABRT with tgkill).
    m.insert(
        libc::SYS_tgkill,
        vec![Rule::new(vec![dcond(0, Op::Eq, u64::from(pid))?]).map_err(e)?],
    );
    // Reading resource limits (a null new-limit pointer), and setting its own address-space
    // limit, which the worker does once, before it parses a module ([`limit_address_space`]):
    // without capabilities a hard limit can only go down, and that one sets soft = hard.
    m.insert(
        libc::SYS_prlimit64,
        vec![
            Rule::new(vec![cond(2, Op::Eq, 0)?]).map_err(e)?,
            Rule::new(vec![
                cond(0, Op::Eq, 0)?,
                cond(1, Op::Eq, libc::RLIMIT_AS as u64)?,
            ])
            .map_err(e)?,
        ],
    );
    // Thread names and anonymous-mapping names.
    const PR_SET_VMA: u64 = 0x5356_4d41;
    let mut prctl = Vec::new();
    for opt in [
        libc::PR_SET_NAME as u64,
        libc::PR_GET_NAME as u64,
        PR_SET_VMA,
    ] {
        prctl.push(Rule::new(vec![dcond(0, Op::Eq, opt)?]).map_err(e)?);
    }
    // An execution worker narrows its own filter once its model is loaded
    // ([`seccomp_execution_loop`]): installing a filter (seccompiler sets no_new_privs again,
    // then calls seccomp) can only take permissions away.
    prctl.push(Rule::new(vec![dcond(0, Op::Eq, libc::PR_SET_NO_NEW_PRIVS as u64)?]).map_err(e)?);
    m.insert(libc::SYS_prctl, prctl);
    m.insert(
        libc::SYS_seccomp,
        vec![Rule::new(vec![dcond(
            0,
            Op::Eq,
            u64::from(libc::SECCOMP_SET_MODE_FILTER),
        )?])
        .map_err(e)?],
    );
    // isatty() on the log stream.
    m.insert(
        libc::SYS_ioctl,
        vec![Rule::new(vec![dcond(1, Op::Eq, libc::TCGETS)?]).map_err(e)?],
    );
    Ok(m)
}

/// The architecture seccomp filters are compiled for.
fn seccomp_arch() -> Result<seccompiler::TargetArch, String> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// Compiles `f` and installs it on every thread of this process (TSYNC).
fn install(f: seccompiler::SeccompFilter) -> Result<(), String> {
    let prog: seccompiler::BpfProgram = f
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    seccompiler::apply_filter_all_threads(&prog).map_err(|e| format!("seccomp: {e}"))
}

/// Step 9: the seccomp filters, applied to every thread (TSYNC). The first allows only
/// [`allowed_syscalls`] and kills the process on anything else; the second turns opens for
/// writing into `EACCES` (a second wall behind Landlock) and `clone3` into `ENOSYS`.
pub(crate) fn seccomp() -> Result<String, String> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
        SeccompFilter, SeccompRule as Rule,
    };
    let e = |e: seccompiler::BackendError| e.to_string();
    let arch = seccomp_arch()?;
    let pid = std::process::id();
    let allow = SeccompFilter::new(
        allowed_syscalls(pid)?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(e)?;
    let mut deny = BTreeMap::new();
    let mut write_opens = Vec::new();
    for flag in [libc::O_WRONLY, libc::O_RDWR, libc::O_CREAT, libc::O_TRUNC] {
        let f = flag as u64;
        write_opens.push(
            Rule::new(vec![
                Cond::new(2, Len::Dword, Op::MaskedEq(f), f).map_err(e)?
            ])
            .map_err(e)?,
        );
    }
    deny.insert(libc::SYS_openat, write_opens);
    let deny_files = SeccompFilter::new(
        deny,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch,
    )
    .map_err(e)?;
    let mut nosys = BTreeMap::new();
    nosys.insert(libc::SYS_clone3, Vec::new());
    let no_clone3 = SeccompFilter::new(
        nosys,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(e)?;
    // The allowlist goes last: installing a filter needs prctl(PR_SET_NO_NEW_PRIVS) and
    // seccomp(), which it does not allow.
    for f in [no_clone3, deny_files, allow] {
        install(f)?;
    }
    Ok(
        "allowlist filter, default action kill process, applied to all threads (TSYNC); \
        opens for writing -> EACCES; fork/exec/sockets -> kill"
            .into(),
    )
}

/// The system calls an execution worker's request loop makes, measured with `strace -f` over
/// every `hlo/` fixture that runs (the calls after the worker maps its arena; see
/// docs/execution.md), plus the exit and signal plumbing: reading the doorbell and answering,
/// the allocator, futexes, XLA's and OpenBLAS's reads of `/sys/devices/system/cpu` and
/// `/proc/cpuinfo` (opens stay read-only: Landlock and the write-open filter still apply), and
/// the NUMA policy of OpenBLAS's buffers.
const EXECUTION_LOOP_SYSCALLS: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_mbind,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_sched_getparam,
    libc::SYS_sched_getscheduler,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_restart_syscall,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Threads the plugin started during the load (LLVM's JIT threads, the client's pool) may
    // still be starting or ending when the filter goes in: each calls these for itself only
    // (robust futex list, rseq area, signal stack, CPU mask, its name). strace did not see them
    // (it slows the load enough that they settle before); the tests did (`dmesg`: audit 1326).
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sigaltstack,
    libc::SYS_sched_getaffinity,
];

/// An execution worker's last jail step, once its model is loaded and its arena mapped: a
/// further allowlist (stacked on the first, so both must allow a call) of the request loop's
/// system calls only. Gone from here on: threads (`clone`), resource limits, descriptor
/// control (`fcntl`, `ioctl`), directory listing, `stat`s, signal handlers, and any further
/// filter. Anything else kills the worker (`SIGSYS`), which the parent reports.
pub(crate) fn seccomp_execution_loop() -> Result<String, String> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
        SeccompFilter, SeccompRule as Rule,
    };
    let e = |e: seccompiler::BackendError| e.to_string();
    let arch = seccomp_arch()?;
    let mut m: BTreeMap<i64, Vec<Rule>> = EXECUTION_LOOP_SYSCALLS
        .iter()
        .map(|&s| (s, Vec::new()))
        .collect();
    let dcond = |arg: u8, op: Op, v: u64| Cond::new(arg, Len::Dword, op, v).map_err(e);
    // abort() signals itself (a typed SIGABRT in the parent, not SIGSYS).
    m.insert(
        libc::SYS_tgkill,
        vec![Rule::new(vec![dcond(0, Op::Eq, u64::from(std::process::id()))?]).map_err(e)?],
    );
    // Names of anonymous mappings (absl's allocator) and of threads.
    const PR_SET_VMA: u64 = 0x5356_4d41;
    let mut prctl = Vec::new();
    for opt in [
        PR_SET_VMA,
        libc::PR_SET_NAME as u64,
        libc::PR_GET_NAME as u64,
    ] {
        prctl.push(Rule::new(vec![dcond(0, Op::Eq, opt)?]).map_err(e)?);
    }
    m.insert(libc::SYS_prctl, prctl);
    install(
        SeccompFilter::new(m, SeccompAction::KillProcess, SeccompAction::Allow, arch).map_err(e)?,
    )?;
    Ok(format!(
        "request-loop allowlist: {} system calls, default action kill process, all threads \
         (TSYNC)",
        EXECUTION_LOOP_SYSCALLS.len() + 2
    ))
}

/// Ends the worker at once: no destructors, no atexit handlers (the plugin's static
/// destructors may be slow or need syscalls the filter denies).
pub(crate) fn fast_exit(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitInfo {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitInfo::Code(c) => write!(f, "exit code {c}"),
            ExitInfo::Signal(s) => write!(f, "signal {} ({s})", signal_name(*s)),
        }
    }
}

/// `SIGSEGV` etc. for a signal number.
pub fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSYS => "SIGSYS",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGTERM => "SIGTERM",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

/// Resources a finished child used (from `wait4`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildUsage {
    /// User CPU time.
    pub user: Duration,
    /// System CPU time.
    pub sys: Duration,
    /// Peak resident set size in bytes.
    pub peak_rss_bytes: u64,
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
}

/// The calling thread's CPU time so far (user + system) and how many times it was preempted
/// (involuntary context switches), from `getrusage(RUSAGE_THREAD)`; `None` if the call fails.
pub fn thread_usage() -> Option<(Duration, u64)> {
    // SAFETY: rusage is plain old data.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer; RUSAGE_THREAD reads only the calling thread's counters.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return None;
    }
    Some((
        tv(ru.ru_utime) + tv(ru.ru_stime),
        u64::try_from(ru.ru_nivcsw).unwrap_or(0),
    ))
}

/// `wait4` on our own child. `block = false` returns `None` while it still runs.
pub(crate) fn wait4(pid: i32, block: bool) -> io::Result<Option<(ExitInfo, ChildUsage)>> {
    let mut status = 0;
    // SAFETY: rusage is plain old data.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: valid out-pointers for the call; `pid` is our unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
        if r == 0 {
            return Ok(None);
        }
        if r < 0 {
            let e = errno();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        break;
    }
    let exit = if libc::WIFSIGNALED(status) {
        ExitInfo::Signal(libc::WTERMSIG(status))
    } else {
        ExitInfo::Code(libc::WEXITSTATUS(status))
    };
    let usage = ChildUsage {
        user: tv(ru.ru_utime),
        sys: tv(ru.ru_stime),
        peak_rss_bytes: u64::try_from(ru.ru_maxrss).unwrap_or(0) * 1024,
    };
    Ok(Some((exit, usage)))
}

/// SIGKILL to our own unreaped child (its pid cannot have been reused).
pub(crate) fn kill_child(pid: i32) {
    // SAFETY: kill with integer arguments.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Puts a descriptor into non-blocking mode.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, integer arguments.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 {
        return Err(errno());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
        return Err(errno());
    }
    Ok(())
}

/// `poll(2)` on `fds`; returns the number ready.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: `fds` is a valid, exclusively borrowed array of the length passed.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = errno();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Test hooks: deliberate misbehaviour inside a jailed worker.
#[cfg(feature = "test-hooks")]
pub(crate) mod hooks {
    /// Touches an inaccessible page: a genuine SIGSEGV from the MMU.
    pub(crate) fn segfault() -> ! {
        // SAFETY: maps a fresh PROT_NONE page; the write below faults and the kernel kills the
        // process with SIGSEGV before any Rust-visible state is affected.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            std::ptr::write_volatile(p.cast::<u8>(), 1);
        }
        super::fast_exit(99)
    }

    /// `socket(AF_INET, SOCK_STREAM)`: the raw result and errno.
    pub(crate) fn socket() -> (i64, i32) {
        // SAFETY: integer arguments.
        let r = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        (i64::from(r), super::errno().raw_os_error().unwrap_or(0))
    }

    /// `execve(path)`: only returns on failure.
    pub(crate) fn execve(path: &str) -> (i64, i32) {
        let Ok(c) = std::ffi::CString::new(path) else {
            return (-1, libc::EINVAL);
        };
        let argv = [c.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        // SAFETY: NUL-terminated path, null-terminated argv/envp arrays alive for the call.
        let r = unsafe { libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        (i64::from(r), super::errno().raw_os_error().unwrap_or(0))
    }

    /// `fork()`: only returns on failure (or in both processes, if it were allowed).
    pub(crate) fn fork() -> (i64, i32) {
        // SAFETY: the child, if any, exits at once without touching Rust state.
        let r = unsafe { libc::fork() };
        if r == 0 {
            super::fast_exit(0);
        }
        (i64::from(r), super::errno().raw_os_error().unwrap_or(0))
    }
}
