//! Where the serving path's blocking work runs.
//!
//! A request's synchronous part (decoding, validation, execution, encoding) runs either on the
//! blocking pool ([`offload`]) or, when the model's measured cost says it is short, inline on
//! the async worker that decoded the request ([`run`]): handing a few microseconds of work to
//! another thread and back costs more than the work (two futex wake-ups, up to two context
//! switches each way on a loaded machine).
//!
//! The decision is per model, from an estimate of how long its requests hold a thread: an
//! exponentially weighted moving average of every request's measured time, inline or
//! offloaded, that rises at once to a longer sample and decays by 1/8 per shorter one. A model
//! is run inline while the estimate is at most the threshold (`--inline-execution-us`, 50 µs
//! by default; 0 turns inlining off). Tokio's guidance for time between two `.await`s on an
//! async worker is 10 to 100 µs; 50 µs is the middle of it, and about three times what the
//! hand-off itself costs a digits request on the development VM (see `docs/serving.md`). A
//! model is measured on the blocking pool before it is ever run inline, and one request that
//! takes longer than the threshold sends the model back to the pool until the average has
//! decayed below it again.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs blocking work (decoding, validation, execution, encoding) off the async workers. Every
/// hand-off of the serving path goes through here, so the strategy changes in one place.
pub fn offload<F, T>(f: F) -> tokio::task::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
}

/// Nothing measured yet.
const UNMEASURED: u64 = u64::MAX;

/// How long one model's requests hold a thread, and whether they are short enough to run
/// inline on an async worker.
#[derive(Debug)]
pub struct Cost {
    /// The estimate in nanoseconds ([`UNMEASURED`] before the first sample).
    ewma_ns: AtomicU64,
    /// The longest estimate that runs inline, nanoseconds (0: never inline).
    threshold_ns: u64,
    /// Requests run inline.
    inline: AtomicU64,
    /// Requests run on the blocking pool.
    offloaded: AtomicU64,
}

impl Cost {
    /// A model not measured yet, run inline once its estimate is at most `threshold`
    /// (`Duration::ZERO`: never).
    pub fn new(threshold: Duration) -> Cost {
        Cost {
            ewma_ns: AtomicU64::new(UNMEASURED),
            threshold_ns: u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX),
            inline: AtomicU64::new(0),
            offloaded: AtomicU64::new(0),
        }
    }

    /// Whether inlining is on at all (a threshold above zero).
    pub fn enabled(&self) -> bool {
        self.threshold_ns > 0
    }

    /// Whether the next request runs inline.
    pub fn inline(&self) -> bool {
        let e = self.ewma_ns.load(Ordering::Relaxed);
        self.threshold_ns > 0 && e != UNMEASURED && e <= self.threshold_ns
    }

    /// Adds one request's measured time: a longer sample replaces the estimate (one slow
    /// request moves the model off the async workers at once), a shorter one moves it by 1/8.
    pub fn record(&self, took: Duration) {
        let s = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX - 1);
        // Lost updates between racing requests only drop a sample; the estimate stays one of
        // the values it would have taken.
        let e = self.ewma_ns.load(Ordering::Relaxed);
        let next = if e == UNMEASURED || s >= e {
            s
        } else {
            e - (e - s) / 8
        };
        self.ewma_ns.store(next, Ordering::Relaxed);
    }

    /// Adds one request's time as [`Timing`] measured it: the wall time, but a sample whose
    /// thread was preempted (`preempted`: its CPU time) raises the estimate only as far as
    /// that CPU time. A part that waits without using the CPU (for XLA's own threads) still
    /// counts its wall time when it was not preempted, and the first sample always does.
    fn record_sample(&self, wall: Duration, preempted: Option<Duration>) {
        let Some(cpu) = preempted else {
            return self.record(wall);
        };
        let e = self.ewma_ns.load(Ordering::Relaxed);
        if e == UNMEASURED {
            return self.record(wall);
        }
        self.record(wall.min(cpu.max(Duration::from_nanos(e))));
    }

    /// The estimate, when measured.
    pub fn estimate(&self) -> Option<Duration> {
        match self.ewma_ns.load(Ordering::Relaxed) {
            UNMEASURED => None,
            e => Some(Duration::from_nanos(e)),
        }
    }

    /// Requests run inline and on the blocking pool so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.inline.load(Ordering::Relaxed),
            self.offloaded.load(Ordering::Relaxed),
        )
    }
}

/// How long a request's synchronous part held its thread, and whether the kernel preempted
/// the thread meanwhile (then the part of the wall time another process had the core is not
/// the model's: measured 2026-12-02, such samples kept a digits server's estimate near the
/// threshold and sent 5 % of its requests to the pool).
struct Timing {
    wall: Instant,
    usage: Option<(Duration, u64)>,
}

impl Timing {
    fn start() -> Timing {
        Timing {
            usage: crate::compile::thread_usage(),
            wall: Instant::now(),
        }
    }

    /// The wall time, and the thread's CPU time when it was preempted.
    fn sample(self) -> (Duration, Option<Duration>) {
        let wall = self.wall.elapsed();
        let cpu = match (self.usage, crate::compile::thread_usage()) {
            (Some((cpu0, pre0)), Some((cpu1, pre1))) if pre1 > pre0 => {
                Some(cpu1.saturating_sub(cpu0))
            }
            _ => None,
        };
        (wall, cpu)
    }
}

/// How a request's synchronous part ended.
#[derive(Debug)]
pub enum Ran<T> {
    /// It returned this, before the deadline.
    Done(T),
    /// It panicked (the panic was caught; the request fails, the server goes on).
    Failed,
    /// The deadline passed first (on the pool: the work may still be running; inline: it
    /// ended late and its result was dropped).
    Late,
}

/// Runs `f`, inline when `cost` says the model's requests are short, else on the blocking
/// pool, and adds the time it took to `cost`. The answer comes by `deadline` at the latest on
/// the pool; inline work is short by construction and is checked against the deadline when
/// it ends.
pub async fn run<F, T>(cost: &Arc<Cost>, deadline: tokio::time::Instant, f: F) -> Ran<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if cost.inline() {
        if tokio::time::Instant::now() >= deadline {
            return Ran::Late;
        }
        cost.inline.fetch_add(1, Ordering::Relaxed);
        let t = Timing::start();
        let r = std::panic::catch_unwind(AssertUnwindSafe(f));
        let (wall, preempted) = t.sample();
        cost.record_sample(wall, preempted);
        return match r {
            Ok(_) if tokio::time::Instant::now() > deadline => Ran::Late,
            Ok(v) => Ran::Done(v),
            Err(_) => Ran::Failed,
        };
    }
    cost.offloaded.fetch_add(1, Ordering::Relaxed);
    let c = cost.clone();
    let job = offload(move || {
        let t = Timing::start();
        let r = f();
        let (wall, preempted) = t.sample();
        c.record_sample(wall, preempted);
        r
    });
    match tokio::time::timeout_at(deadline, job).await {
        Ok(Ok(v)) => Ran::Done(v),
        Ok(Err(_)) => Ran::Failed,
        Err(_) => Ran::Late,
    }
}

/// Drives a request in an execution worker to the end of its exchange on this async worker,
/// waiting for the worker's pipe in the runtime's reactor (epoll) instead of in a blocked
/// thread: one `dup` of the pipe registered per request (and one more for stdin when the
/// request is larger than the pipe's buffer). Returns when the exchange has ended (then
/// [`InFlight::finish`]) or with the error of registering a pipe; dropping this future (the
/// deadline passed, the caller went away) drops the registrations.
///
/// [`InFlight::finish`]: crate::exec::InFlight::finish
pub(crate) async fn drive(flight: &mut crate::exec::InFlight) -> std::io::Result<()> {
    use crate::exec::Wait;
    use tokio::net::unix::pipe;
    let would_block = || std::io::Error::from(std::io::ErrorKind::WouldBlock);
    let mut out: Option<pipe::Receiver> = None;
    let mut inp: Option<pipe::Sender> = None;
    loop {
        let wait = match flight.step() {
            Ok(()) => return Ok(()),
            Err(w) => w,
        };
        // Readiness is cleared only through `try_io` seeing `WouldBlock`: the step reads
        // and writes the worker's own descriptors, and says when they would block.
        let stepped = match wait {
            Wait::Read => {
                let rx = match &out {
                    Some(r) => r,
                    None => out.insert(pipe::Receiver::from_owned_fd_unchecked(
                        flight.pipe(&wait)?,
                    )?),
                };
                rx.readable().await?;
                rx.try_io(|| match flight.step() {
                    Err(Wait::Read) => Err(would_block()),
                    _ => Ok(()),
                })
            }
            Wait::Write => {
                let tx = match &inp {
                    Some(t) => t,
                    None => inp.insert(pipe::Sender::from_owned_fd_unchecked(flight.pipe(&wait)?)?),
                };
                tx.writable().await?;
                tx.try_io(|| match flight.step() {
                    Err(Wait::Write) => Err(would_block()),
                    _ => Ok(()),
                })
            }
        };
        match stepped {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn unmeasured_models_are_offloaded_and_short_ones_inlined() {
        let c = Cost::new(Duration::from_micros(50));
        assert!(!c.inline());
        c.record(Duration::from_micros(10));
        assert!(c.inline());
        assert_eq!(c.estimate(), Some(Duration::from_micros(10)));
    }

    #[test]
    fn one_slow_request_moves_the_model_off_at_once_and_it_decays_back() {
        let c = Cost::new(Duration::from_micros(50));
        c.record(Duration::from_micros(10));
        c.record(Duration::from_millis(10));
        assert!(!c.inline());
        let mut n = 0;
        while !c.inline() {
            c.record(Duration::from_micros(10));
            n += 1;
            assert!(n < 100, "the estimate never decayed");
        }
        // 10 ms -> below 50 µs by steps of 1/8 of the gap: ln(9990 / 40) / ln(8 / 7) ≈ 41.
        assert!((35..=45).contains(&n), "{n} samples");
    }

    #[test]
    fn a_preempted_sample_raises_the_estimate_only_by_its_cpu_time() {
        let c = Cost::new(Duration::from_micros(50));
        // The first sample counts its wall time, preempted or not.
        c.record_sample(Duration::from_micros(20), Some(Duration::from_micros(5)));
        assert_eq!(c.estimate(), Some(Duration::from_micros(20)));
        // 4 ms of wall time, of which the thread ran 15 µs: the model stays inline.
        c.record_sample(Duration::from_millis(4), Some(Duration::from_micros(15)));
        assert_eq!(c.estimate(), Some(Duration::from_micros(20)));
        assert!(c.inline());
        // Preempted, but 3 ms of its own CPU: that is the model's, it goes off at once.
        c.record_sample(Duration::from_millis(4), Some(Duration::from_millis(3)));
        assert_eq!(c.estimate(), Some(Duration::from_millis(3)));
        assert!(!c.inline());
        // Not preempted: the wall time, waiting included.
        let c = Cost::new(Duration::from_micros(50));
        c.record_sample(Duration::from_micros(10), None);
        c.record_sample(Duration::from_millis(2), None);
        assert_eq!(c.estimate(), Some(Duration::from_millis(2)));
    }

    #[test]
    fn thread_usage_counts_this_threads_cpu() {
        let (cpu0, _) = crate::compile::thread_usage().unwrap();
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let (cpu1, _) = crate::compile::thread_usage().unwrap();
        // Busy for 30 ms of wall time: some of it on the CPU (all of it on an idle machine).
        assert!(cpu1 > cpu0, "{cpu0:?} -> {cpu1:?}");
        assert!(
            cpu1 - cpu0 <= Duration::from_millis(40),
            "{cpu0:?} -> {cpu1:?}"
        );
    }

    #[test]
    fn zero_threshold_never_inlines() {
        let c = Cost::new(Duration::ZERO);
        c.record(Duration::ZERO);
        assert!(!c.inline());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn inline_runs_on_this_thread_and_panics_are_caught() {
        let c = Arc::new(Cost::new(Duration::from_millis(50)));
        c.record(Duration::from_micros(1));
        let far = tokio::time::Instant::now() + Duration::from_secs(60);
        let here = std::thread::current().id();
        match run(&c, far, move || std::thread::current().id() == here).await {
            Ran::Done(same) => assert!(same),
            r => panic!("{r:?}"),
        }
        assert_eq!(c.counts(), (1, 0));
        let r = run(&c, far, || -> u32 { panic!("boom") }).await;
        assert!(matches!(r, Ran::Failed), "{r:?}");
        // (The panic's own time, a backtrace printed under RUST_BACKTRACE, is a sample too and
        // may move `c` to the pool: the deadline check of the inline path takes a fresh model.)
        let c = Arc::new(Cost::new(Duration::from_millis(50)));
        c.record(Duration::from_micros(1));
        let past = tokio::time::Instant::now() - Duration::from_millis(1);
        assert!(matches!(run(&c, past, || 1).await, Ran::Late));
        assert_eq!(c.counts(), (0, 0), "a late request is not run");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn long_models_run_on_the_pool() {
        let c = Arc::new(Cost::new(Duration::from_micros(50)));
        let far = tokio::time::Instant::now() + Duration::from_secs(60);
        let here = std::thread::current().id();
        let r = run(&c, far, move || {
            std::thread::sleep(Duration::from_millis(2));
            std::thread::current().id() != here
        })
        .await;
        assert!(matches!(r, Ran::Done(true)), "{r:?}");
        assert_eq!(c.counts(), (0, 1));
        assert!(!c.inline());
        assert!(c.estimate().unwrap() >= Duration::from_millis(2));
    }
}
