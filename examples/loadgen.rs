//! A closed-loop HTTP/1.1 load generator for the serving benchmark (benches/serve_vs_python.py):
//! N keep-alive connections each send one request, wait for the whole response, and send the
//! next, for a fixed time after a warm-up. Prints one JSON object with the request count,
//! errors, throughput and latency percentiles.
//!
//! ```sh
//! cargo run --release --example loadgen -- --addr 127.0.0.1:8000 \
//!     --path /v2/models/digits/infer --body examples/digits_request.json --clients 8 --secs 5
//! ```
//!
//! Standard library only, so it measures the servers and not a client framework.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    addr: SocketAddr,
    path: String,
    body: Vec<u8>,
    clients: usize,
    secs: f64,
    warmup: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:8000".parse().map_err(|e| format!("{e}"))?,
        path: "/v2/models/digits/infer".into(),
        body: Vec::new(),
        clients: 8,
        secs: 5.0,
        warmup: 1.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => a.addr = v.parse().map_err(|e| format!("--addr: {e}"))?,
            "--path" => a.path = v,
            "--body" => a.body = std::fs::read(&v).map_err(|e| format!("{v}: {e}"))?,
            "--clients" => a.clients = v.parse().map_err(|e| format!("--clients: {e}"))?,
            "--secs" => a.secs = v.parse().map_err(|e| format!("--secs: {e}"))?,
            "--warmup" => a.warmup = v.parse().map_err(|e| format!("--warmup: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

/// Sends one request and reads the whole response; returns the status.
fn exchange(
    w: &mut TcpStream,
    r: &mut BufReader<TcpStream>,
    request: &[u8],
) -> std::io::Result<u16> {
    w.write_all(request)?;
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut len = None;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse::<usize>().ok();
            }
        }
    }
    let len = len.ok_or_else(|| std::io::Error::other("no Content-Length"))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(status)
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        a.path,
        a.addr,
        a.body.len()
    )
    .into_bytes();
    request.extend_from_slice(&a.body);
    let request = Arc::new(request);
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..a.clients)
        .map(|_| {
            let (request, stop, measuring, addr) =
                (request.clone(), stop.clone(), measuring.clone(), a.addr);
            std::thread::spawn(move || {
                let mut lat: Vec<u32> = Vec::with_capacity(1 << 18);
                let mut errors = 0u64;
                let connect = || -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
                    let s = TcpStream::connect(addr)?;
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(Duration::from_secs(30)))?;
                    let r = BufReader::new(s.try_clone()?);
                    Ok((s, r))
                };
                let mut conn = connect().ok();
                while !stop.load(Ordering::Relaxed) {
                    let Some((w, r)) = conn.as_mut() else {
                        errors += 1;
                        std::thread::sleep(Duration::from_millis(10));
                        conn = connect().ok();
                        continue;
                    };
                    let t = Instant::now();
                    let res = exchange(w, r, &request);
                    let us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
                    let m = measuring.load(Ordering::Relaxed);
                    match res {
                        Ok(200) => {
                            if m {
                                lat.push(us);
                            }
                        }
                        Ok(_) => errors += u64::from(m),
                        Err(_) => {
                            errors += u64::from(m);
                            conn = connect().ok();
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(a.warmup));
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(a.secs));
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in threads {
        if let Ok((l, e)) = t.join() {
            lat.extend(l);
            errors += e;
        }
    }
    lat.sort_unstable();
    // The value at `permille`/1000 of the sorted latencies (nearest rank, rounded down).
    let pct = |permille: usize| -> u32 {
        if lat.is_empty() {
            return 0;
        }
        lat[(lat.len() - 1) * permille / 1000]
    };
    println!(
        "{{\"clients\": {}, \"secs\": {:.3}, \"requests\": {}, \"errors\": {}, \"rps\": {:.1}, \
         \"p50_us\": {}, \"p90_us\": {}, \"p99_us\": {}, \"max_us\": {}}}",
        a.clients,
        elapsed,
        lat.len(),
        errors,
        lat.len() as f64 / elapsed,
        pct(500),
        pct(900),
        pct(990),
        pct(1000)
    );
}
