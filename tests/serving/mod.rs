//! Helpers for the server tests: a plain HTTP/1.1 client over `std::net::TcpStream` (so the
//! tests control every byte, including malformed and slow requests), an in-process server on
//! a loopback port, and the real binary started as a child process.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xlaguard::server::repo::ModelSpec;
use xlaguard::server::{Server, ServerConfig};
use xlaguard::{DType, Tensor};

/// A response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Resp {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body (or its JSON header, for binary responses) as JSON. The bare tokens `NaN`,
    /// `Infinity`, `-Infinity` the server writes for non-finite floats become strings.
    pub fn json(&self) -> serde_json::Value {
        let n = self
            .header("inference-header-content-length")
            .map_or(self.body.len(), |v| v.parse().unwrap());
        let text = quote_bare_tokens(std::str::from_utf8(&self.body[..n]).unwrap());
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// The `error` message of an error response.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {}", self.text()))
            .to_string()
    }

    /// The binary data after the JSON header.
    pub fn binary(&self) -> &[u8] {
        let n: usize = self
            .header("inference-header-content-length")
            .expect("a binary response")
            .parse()
            .unwrap();
        &self.body[n..]
    }
}

/// `NaN`, `Infinity`, `-Infinity` outside strings become `"NaN"`, ... (strict JSON).
pub fn quote_bare_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(t) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push('"');
            out.push_str(t);
            out.push('"');
            rest = &rest[t.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// One keep-alive connection.
pub struct Conn {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects with a read timeout.
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Conn { stream, reader }
    }

    /// Sends a request and reads the response.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut all = head.into_bytes();
        all.extend_from_slice(body);
        self.stream.write_all(&all)?;
        self.read_response()
    }

    /// Reads one response.
    pub fn read_response(&mut self) -> std::io::Result<Resp> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if let Some(n) = get("content-length") {
            body.resize(n.parse().unwrap(), 0);
            self.reader.read_exact(&mut body)?;
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if status != 204 && status != 304 {
            self.reader.read_to_end(&mut body)?;
        }
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

/// One request on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    Conn::open(addr)
        .send(method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// GET.
pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"")
}

/// POST a JSON value.
pub fn post_json(addr: SocketAddr, path: &str, v: &serde_json::Value) -> Resp {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        v.to_string().as_bytes(),
    )
}

/// POST a JSON header followed by binary data, with `Inference-Header-Content-Length`.
pub fn post_binary(addr: SocketAddr, path: &str, header: &serde_json::Value, data: &[u8]) -> Resp {
    let json = header.to_string();
    let n = json.len().to_string();
    let mut body = json.into_bytes();
    body.extend_from_slice(data);
    request(
        addr,
        "POST",
        path,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Inference-Header-Content-Length", &n),
        ],
        &body,
    )
}

/// The protocol datatype name of a dtype.
pub fn datatype(d: DType) -> &'static str {
    xlaguard::server::wire::datatype_name(d)
}

/// A tensor's elements as JSON values (bf16/f16 through f32; non-finite as strings).
pub fn json_values(t: &Tensor) -> Vec<serde_json::Value> {
    use half::{bf16, f16};
    use serde_json::json;
    let f = |x: f64| {
        if x.is_nan() {
            json!("NaN")
        } else if x.is_infinite() {
            json!(if x > 0.0 { "Infinity" } else { "-Infinity" })
        } else {
            json!(x)
        }
    };
    match t.dtype() {
        DType::Bool => t.bytes().iter().map(|&b| json!(b != 0)).collect(),
        DType::I8 => t
            .to_array::<i8>()
            .unwrap()
            .iter()
            .map(|&x| json!(x))
            .collect(),
        DType::I16 => t
            .to_array::<i16>()
            .unwrap()
            .iter()
            .map(|&x| json!(x))
            .collect(),
        DType::I32 => t
            .to_array::<i32>()
            .unwrap()
            .iter()
            .map(|&x| json!(x))
            .collect(),
        DType::I64 => t
            .to_array::<i64>()
            .unwrap()
            .iter()
            .map(|&x| json!(x))
            .collect(),
        DType::U8 => t
            .to_array::<u8>()
            .unwrap()
            .iter()
            .map(|&x| json!(x))
            .collect(),
        DType::U16 => t
            .to_array::<u16>()
            .unwrap()
            .iter()
            .map(|&x| json!(x))
            .collect(),
        DType::U32 => t
            .to_array::<u32>()
            .unwrap()
            .iter()
            .map(|&x| json!(x))
            .collect(),
        DType::U64 => t
            .to_array::<u64>()
            .unwrap()
            .iter()
            .map(|&x| json!(x))
            .collect(),
        DType::F16 => t
            .to_array::<f16>()
            .unwrap()
            .iter()
            .map(|x| f(x.to_f64()))
            .collect(),
        DType::BF16 => t
            .to_array::<bf16>()
            .unwrap()
            .iter()
            .map(|x| f(x.to_f64()))
            .collect(),
        // f32 through its shortest decimal (what a JSON client writes), not the widened f64.
        DType::F32 => t
            .to_array::<f32>()
            .unwrap()
            .iter()
            .map(|&x| {
                if x.is_finite() {
                    serde_json::from_str(&format!("{x:?}")).unwrap()
                } else {
                    f(f64::from(x))
                }
            })
            .collect(),
        DType::F64 => t.to_array::<f64>().unwrap().iter().map(|&x| f(x)).collect(),
        other => panic!("unexpected dtype {other}"),
    }
}

/// Decodes a JSON output's `data` into little-endian bytes of `dtype` (strings for non-finite
/// floats as written by [`Resp::json`]).
pub fn bytes_of_json(dtype: DType, data: &serde_json::Value) -> Vec<u8> {
    use half::{bf16, f16};
    let vals = data.as_array().expect("data is an array");
    let mut out = Vec::new();
    let float = |v: &serde_json::Value| -> f64 {
        match v {
            serde_json::Value::String(s) => match s.as_str() {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                s => panic!("unexpected string {s}"),
            },
            v => v.as_f64().unwrap(),
        }
    };
    for v in vals {
        match dtype {
            DType::Bool => out.push(u8::from(v.as_bool().unwrap())),
            DType::I8 => out.extend(i8::try_from(v.as_i64().unwrap()).unwrap().to_le_bytes()),
            DType::I16 => out.extend(i16::try_from(v.as_i64().unwrap()).unwrap().to_le_bytes()),
            DType::I32 => out.extend(i32::try_from(v.as_i64().unwrap()).unwrap().to_le_bytes()),
            DType::I64 => out.extend(v.as_i64().unwrap().to_le_bytes()),
            DType::U8 => out.extend(u8::try_from(v.as_u64().unwrap()).unwrap().to_le_bytes()),
            DType::U16 => out.extend(u16::try_from(v.as_u64().unwrap()).unwrap().to_le_bytes()),
            DType::U32 => out.extend(u32::try_from(v.as_u64().unwrap()).unwrap().to_le_bytes()),
            DType::U64 => out.extend(v.as_u64().unwrap().to_le_bytes()),
            DType::F16 => out.extend(f16::from_f64(float(v)).to_le_bytes()),
            DType::BF16 => out.extend(bf16::from_f64(float(v)).to_le_bytes()),
            // Parse the decimal text as f32 directly: the server wrote the shortest f32 form.
            DType::F32 => match v {
                serde_json::Value::Number(n) => {
                    out.extend(n.to_string().parse::<f32>().unwrap().to_le_bytes())
                }
                v => {
                    let x = float(v);
                    let x = if x.is_nan() {
                        f32::NAN
                    } else if x > 0.0 {
                        f32::INFINITY
                    } else {
                        f32::NEG_INFINITY
                    };
                    out.extend(x.to_le_bytes());
                }
            },
            DType::F64 => out.extend(float(v).to_le_bytes()),
            other => panic!("unexpected dtype {other}"),
        }
    }
    out
}

/// A server running in this process on a loopback port, stopped on drop.
pub struct InProcess {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    /// Starts a server on 127.0.0.1:0 with `models` on the shared test engine, after `tweak`
    /// adjusts the configuration, and waits until loading has finished.
    pub fn start(models: Vec<ModelSpec>, tweak: impl FnOnce(&mut ServerConfig)) -> InProcess {
        let s = InProcess::start_loading(models, tweak);
        wait_loaded(s.addr);
        s
    }

    /// As [`InProcess::start`], returning as soon as the server listens (models may still be
    /// loading).
    pub fn start_loading(
        models: Vec<ModelSpec>,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> InProcess {
        let mut config = ServerConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            ..ServerConfig::default()
        };
        config.limits.workers = 2;
        tweak(&mut config);
        let engine = crate::common::engine().clone();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = Server::bind(config, models, Some(engine)).await.unwrap();
                addr_tx.send(server.local_addr()).unwrap();
                server
                    .run(async move {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
            rt.shutdown_timeout(Duration::from_secs(5));
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        InProcess {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits (up to 60 s) until no model is `LOADING`.
pub fn wait_loaded(addr: SocketAddr) {
    let start = Instant::now();
    loop {
        let r = request(addr, "POST", "/v2/repository/index", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        if v.as_array()
            .unwrap()
            .iter()
            .all(|m| m["state"] != "LOADING")
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "models still loading: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The real binary serving, killed on drop unless stopped.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    /// The gRPC address (`None` with `--no-grpc`).
    pub grpc: Option<SocketAddr>,
}

impl Binary {
    /// Starts `xlaguard serve --addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 ARGS...` on the pinned
    /// plugin (no `--grpc-addr` when ARGS have one or `--no-grpc`) and reads the addresses from
    /// its stdout; waits until loading has finished.
    pub fn start(args: &[&str]) -> Binary {
        Binary::start_logging(args, "warn", Stdio::inherit())
    }

    /// As [`Binary::start`] with a log level (RUST_LOG) and where stderr goes.
    pub fn start_logging(args: &[&str], level: &str, stderr: Stdio) -> Binary {
        Binary::spawn(env!("CARGO_BIN_EXE_xlaguard"), args, level, stderr)
    }

    /// As [`Binary::start`] with another build of the binary.
    pub fn start_program(program: &str, args: &[&str]) -> Binary {
        Binary::spawn(program, args, "warn", Stdio::inherit())
    }

    fn spawn(program: &str, args: &[&str], level: &str, stderr: Stdio) -> Binary {
        let grpc_default = !args
            .iter()
            .any(|a| *a == "--grpc-addr" || *a == "--no-grpc");
        let grpc_on = !args.contains(&"--no-grpc");
        let mut child = Command::new(program)
            .current_dir(crate::common::root())
            .arg("--plugin")
            .arg(crate::common::plugin())
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(if grpc_default {
                &["--grpc-addr", "127.0.0.1:0"][..]
            } else {
                &[][..]
            })
            .args(args)
            .env("RUST_LOG", level)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("serving on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        let grpc = grpc_on.then(|| {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            line.trim()
                .strip_prefix("serving grpc on ")
                .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
                .parse()
                .unwrap()
        });
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
        wait_loaded(addr);
        Binary { child, addr, grpc }
    }

    /// Sends a signal and waits (up to `limit`) for the exit status.
    pub fn stop(mut self, signal: &str, limit: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success());
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "server did not exit after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the server process (VmRSS), in bytes.
    pub fn rss(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `inputs` JSON of a model folder's `in*.npy` files, given the input names.
pub fn json_inputs(names: &[&str], tensors: &[Tensor]) -> serde_json::Value {
    names
        .iter()
        .zip(tensors)
        .map(|(n, t)| {
            serde_json::json!({
                "name": n,
                "datatype": datatype(t.dtype()),
                "shape": t.shape(),
                "data": json_values(t),
            })
        })
        .collect()
}

/// The path of a test fixture under `tests/fixtures/`.
pub fn test_fixture(name: &str) -> std::path::PathBuf {
    crate::common::root().join("tests/fixtures").join(name)
}

/// Copies a file into a folder (creating it).
pub fn copy_into(file: &Path, dir: &Path, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(file, dir.join(name)).unwrap();
}

/// A server on loopback serving each `hlo/<name>/model.jaxexport`, with every model loaded.
pub fn serve_fixtures(models: &[&str]) -> InProcess {
    let s = InProcess::start(
        models
            .iter()
            .map(|&n| ModelSpec::from_file(n, crate::common::fixture(n).join("model.jaxexport")))
            .collect(),
        |c| c.max_body_bytes = 16 << 20,
    );
    wait_loaded(s.addr);
    s
}

/// The input names a served model's metadata lists, in order.
pub fn served_input_names(addr: SocketAddr, model: &str) -> Vec<String> {
    get(addr, &format!("/v2/models/{model}")).json()["inputs"]
        .as_array()
        .expect("metadata inputs")
        .iter()
        .map(|i| i["name"].as_str().expect("input name").to_string())
        .collect()
}

/// Infers with JSON inputs and outputs; asserts 200 and returns the response.
pub fn infer_json(
    addr: SocketAddr,
    model: &str,
    names: &[String],
    inputs: &[Tensor],
) -> serde_json::Value {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let body = serde_json::json!({"inputs": json_inputs(&refs, inputs)});
    let r = post_json(addr, &format!("/v2/models/{model}/infer"), &body);
    assert_eq!(r.status, 200, "{model}: {}", r.text());
    r.json()
}

/// Infers with binary inputs and every output binary; asserts 200 and returns the outputs'
/// bytes, concatenated in order.
pub fn infer_binary(addr: SocketAddr, model: &str, names: &[String], inputs: &[Tensor]) -> Vec<u8> {
    let header = serde_json::json!({
        "inputs": inputs.iter().zip(names).map(|(t, n)| serde_json::json!({
            "name": n, "datatype": datatype(t.dtype()), "shape": t.shape(),
            "parameters": {"binary_data_size": t.bytes().len()},
        })).collect::<Vec<_>>(),
        "parameters": {"binary_data_output": true},
    });
    let data: Vec<u8> = inputs.iter().flat_map(|t| t.bytes().to_vec()).collect();
    let r = post_binary(addr, &format!("/v2/models/{model}/infer"), &header, &data);
    assert_eq!(r.status, 200, "{model}: {}", r.text());
    r.binary().to_vec()
}
