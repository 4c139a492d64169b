//! A bounded load test on loopback against the real binary: N keep-alive clients for a fixed
//! time, zero errors, p50/p99 and throughput printed, resident memory flat between the first and
//! last tenth of the run. Alone in its file so that no other test competes for the CPUs.
//!
//! `XLAGUARD_LOAD_CLIENTS` (default 8) and `XLAGUARD_LOAD_SECS` (default 4) change the run;
//! `XLAGUARD_LOAD_BIN` runs another build of the binary (e.g. target/release/xlaguard).
#![cfg(feature = "server")]

mod common;
mod serving;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serving::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn load_zero_errors_flat_memory() {
    let clients = usize::try_from(env_or("XLAGUARD_LOAD_CLIENTS", 8)).unwrap();
    let secs = env_or("XLAGUARD_LOAD_SECS", 4);
    let s = match std::env::var("XLAGUARD_LOAD_BIN") {
        Ok(bin) => Binary::start_program(&bin, &[]),
        Err(_) => Binary::start(&[]),
    };
    let addr = s.addr;
    let body =
        Arc::new(std::fs::read(common::root().join("examples/digits_request.json")).unwrap());

    // Warm up (allocator pools, thread pools), then measure.
    let warm = Duration::from_millis(500);
    let run = Duration::from_secs(secs);
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (body, stop, measuring) = (body.clone(), stop.clone(), measuring.clone());
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                let mut lat = Vec::with_capacity(1 << 16);
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = c.send("POST", "/v2/models/digits/infer", &[], &body);
                    let took = t.elapsed();
                    match r {
                        Ok(r)
                            if r.status == 200 && r.body.windows(8).any(|w| w == b"\"data\":[") => {
                        }
                        Ok(r) => errors.push(format!("{} {}", r.status, r.text())),
                        Err(e) => {
                            errors.push(e.to_string());
                            c = Conn::open(addr);
                        }
                    }
                    if measuring.load(Ordering::Relaxed) {
                        lat.push(took);
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    std::thread::sleep(warm);
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut rss = Vec::new();
    while started.elapsed() < run {
        rss.push(s.rss());
        std::thread::sleep(Duration::from_millis(25));
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut lat = Vec::new();
    let mut errors = Vec::new();
    for w in workers {
        let (l, e) = w.join().unwrap();
        lat.extend(l);
        errors.extend(e);
    }
    lat.sort();
    let pct = |permille: usize| lat[(lat.len() - 1) * permille / 1000].as_secs_f64() * 1e6;
    let tenth = (rss.len() / 10).max(1);
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len() as f64 / (1 << 20) as f64;
    let (first, last) = (mean(&rss[..tenth]), mean(&rss[rss.len() - tenth..]));
    println!(
        "load: {clients} clients, {:.1} s: {} requests, {:.0} req/s, p50 {:.0} us, p99 {:.0} us, \
         max {:.0} us, errors {}; RSS first tenth {first:.1} MiB, last tenth {last:.1} MiB",
        elapsed.as_secs_f64(),
        lat.len(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(500),
        pct(990),
        pct(1000),
        errors.len(),
    );
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert!(lat.len() > clients * 10, "too few requests: {}", lat.len());
    assert!(
        last <= first * 1.05 + 4.0,
        "resident memory grew from {first:.1} MiB to {last:.1} MiB"
    );
    // The server's own count agrees.
    let t = get(addr, "/metrics").text();
    let ok: f64 = t
        .lines()
        .find(|l| {
            l.starts_with(
                r#"xlaguard_inference_requests_total{model="digits",version="1",code="200"}"#,
            )
        })
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(ok >= lat.len() as f64, "{ok} < {}", lat.len());
    assert!(!t.contains("code=\"5"), "server errors in\n{t}");
}
