//! The execution worker's loop, after the compile worker's jail ([`crate::compile`]'s worker
//! with [`crate::compile::EXEC_WORKER_ARG`]): read `Load` (lower the address-space limit to the
//! model's, deserialize, upload the resident arguments), answer `Loaded`, then answer each
//! `Execute` with `Executed` (or `ExecError`) until the parent closes the pipe. Both are
//! doorbells: the arguments and the outputs are in the shared-memory arena ([`super::shm`]).

use std::io::{Read, Write};
use std::time::Instant;

use super::message::{self, ExecRejection, LoadedReport};
use super::shm;
use crate::compile::protocol::{self, Kind, ProtocolError, MAX_SMALL};
use crate::compile::sandbox;
use crate::compile::Limits;
use crate::pjrt::{Buffer, Client, LoadedExecutable, PjrtError};
use crate::signature::DType;

/// An argument of the loaded executable.
enum Slot {
    /// `buffers[i]`, uploaded at load.
    Resident(usize),
    /// The next request argument: dtype, dims, bytes, offset in the input arena.
    Request(DType, Vec<i64>, usize, usize),
}

fn fatal(out: &mut impl Write, msg: &str) -> i32 {
    let _ = protocol::write_frame(out, Kind::Fatal, msg.as_bytes());
    2
}

fn rejection(e: &PjrtError, function: &str) -> ExecRejection {
    match e {
        PjrtError::Call {
            function,
            code,
            message,
        } => ExecRejection {
            function: function.to_string(),
            code: Some(code.raw()),
            message: message.clone(),
        },
        other => ExecRejection {
            function: function.to_string(),
            code: None,
            message: other.to_string(),
        },
    }
}

fn reject(out: &mut impl Write, r: &ExecRejection) -> bool {
    let body = serde_json::to_vec(r).unwrap_or_default();
    protocol::write_frame(out, Kind::ExecError, &body).is_ok()
}

fn deserialize(client: &Client, bytes: &[u8]) -> Result<LoadedExecutable, PjrtError> {
    // SAFETY: the parent sends an execution worker only the bytes of an executable it loaded
    // itself (from its own compile worker, its authenticated cache, or a TrustedExecutable):
    // the worker trusts its parent exactly as the parent trusts those bytes, and runs them
    // inside the jail.
    unsafe { client.deserialize(bytes) }
}

/// Serves one model until the parent closes the pipe; returns the exit code.
pub(crate) fn serve(
    client: &Client,
    limits: &Limits,
    input: &mut impl Read,
    out: &mut impl Write,
) -> i32 {
    let max_load = limits
        .max_executable_bytes
        .saturating_add(limits.max_module_bytes)
        .saturating_add(MAX_SMALL);
    let frame = match protocol::read_frame(input, |k| match k {
        Kind::Load => max_load,
        _ => MAX_SMALL,
    }) {
        Ok(Ok(f)) if f.kind == Kind::Load => f,
        Ok(Ok(f)) => return fatal(out, &format!("expected a load message, got {:?}", f.kind)),
        Ok(Err(_)) | Err(_) => return 4,
    };
    let (spec, exe_bytes, residents) = match message::decode_load(&frame.payload) {
        Ok(x) => x,
        Err(e) => return fatal(out, &e),
    };
    // The model's address-space limit, before the executable is touched.
    if let Some(limit) = spec.address_space {
        if let Err(e) = sandbox::limit_address_space(limit) {
            return fatal(out, &e);
        }
    }
    let t = Instant::now();
    let exe = match deserialize(client, exe_bytes) {
        Ok(e) => e,
        Err(e) => {
            reject(out, &rejection(&e, "PJRT_Executable_DeserializeAndLoad"));
            return 0;
        }
    };
    let mut buffers: Vec<Buffer> = Vec::with_capacity(residents.len());
    let mut slots = Vec::with_capacity(spec.args.len());
    let mut resident = residents.into_iter();
    let mut in_lens = Vec::new();
    for a in &spec.args {
        let Some(d) = DType::from_name(&a.dtype) else {
            return fatal(out, &format!("unknown dtype {}", a.dtype));
        };
        let Some(len) = message::byte_len(&a.dtype, &a.dims) else {
            return fatal(
                out,
                &format!("argument {} {:?} has no size", a.dtype, a.dims),
            );
        };
        if a.resident {
            let Some(bytes) = resident.next() else {
                return fatal(out, "fewer resident arguments than the spec");
            };
            match client.buffer_from_host(bytes, d, &a.dims) {
                Ok(b) => buffers.push(b),
                Err(e) => {
                    reject(out, &rejection(&e, "PJRT_Client_BufferFromHostBuffer"));
                    return 0;
                }
            }
            slots.push(Slot::Resident(buffers.len() - 1));
        } else {
            in_lens.push(len);
            slots.push(Slot::Request(d, a.dims.clone(), len, 0));
        }
    }
    let mut out_lens = Vec::with_capacity(spec.outputs.len());
    for o in &spec.outputs {
        match message::byte_len(&o.dtype, &o.dims) {
            Some(n) => out_lens.push(n),
            None => return fatal(out, &format!("output {} {:?} has no size", o.dtype, o.dims)),
        }
    }
    let (Some((in_at, in_size)), Some((out_at, out_size))) =
        (shm::layout(&in_lens), shm::layout(&out_lens))
    else {
        return fatal(out, "a request too large for an arena");
    };
    let mut next_at = in_at.iter();
    for s in &mut slots {
        if let Slot::Request(_, _, _, at) = s {
            *at = next_at.next().copied().unwrap_or(0);
        }
    }
    let (in_arena, out_arena) = match shm::map_in_worker(in_size, out_size) {
        Ok(m) => m,
        Err(e) => return fatal(out, &e),
    };
    // Stderr (the plugin's logging) never blocks the request loop: the server waits for a
    // reply on stdout only, so a worker stuck writing to a full stderr pipe would stall until
    // its deadline. Lines that do not fit the pipe are dropped; the parent keeps the tail.
    if let Err(e) = sandbox::set_nonblocking(2) {
        return fatal(out, &format!("stderr: {e}"));
    }
    // The last jail step: from here on only the request loop's system calls.
    let loop_filter = match sandbox::seccomp_execution_loop() {
        Ok(s) => s,
        Err(e) => return fatal(out, &e),
    };
    // The load message (the executable's bytes) is no longer needed.
    let garbage = spec.test_garbage_reply;
    let spawn_thread = spec.test_spawn_thread;
    drop(spec);
    drop(frame);
    let report = LoadedReport {
        load_ms: t.elapsed().as_secs_f64() * 1e3,
        seccomp: loop_filter,
    };
    let body = serde_json::to_vec(&report).unwrap_or_default();
    if protocol::write_frame(out, Kind::Loaded, &body).is_err() {
        return 3;
    }
    // Replies go to stdout unbuffered, one write each (std's stdout is line-buffered: binary
    // outputs with newline bytes would take two or more).
    // SAFETY: fd 1 is this process's stdout pipe for its whole life; the File is never dropped
    // (ManuallyDrop), so it never closes the descriptor `out` also writes to, and `out` was
    // flushed by write_frame and is not used again.
    let mut raw = std::mem::ManuallyDrop::new(unsafe {
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(1)
    });
    let out = &mut *raw;
    let Ok(done) = protocol::header(Kind::Executed, 0) else {
        return fatal(out, "cannot encode a reply");
    };
    let (Some(in_stride), Some(out_stride)) = (shm::stride(in_size), shm::stride(out_size)) else {
        return fatal(out, "a request too large for an arena");
    };
    loop {
        // The doorbell names the request's slot (a little-endian u32 below shm::SLOTS).
        let slot = match protocol::read_frame(input, |k| match k {
            Kind::Execute => 4,
            _ => 0,
        }) {
            Ok(Ok(f)) if f.kind == Kind::Execute => match <[u8; 4]>::try_from(f.payload.as_slice())
            {
                Ok(b) if (u32::from_le_bytes(b) as usize) < shm::SLOTS => {
                    u32::from_le_bytes(b) as usize
                }
                _ => return fatal(out, &format!("doorbell {:?} names no slot", f.payload)),
            },
            // The parent closed the pipe: done.
            Ok(Err(ProtocolError::Truncated { got: 0, .. })) => return 0,
            Ok(Ok(_)) | Ok(Err(_)) | Err(_) => return 4,
        };
        let (Some(slot_in), Some(slot_out)) = (
            in_arena.get(slot * in_stride..(slot + 1) * in_stride),
            out_arena.get_mut(slot * out_stride..(slot + 1) * out_stride),
        ) else {
            return fatal(out, "a slot outside the arena");
        };
        if spawn_thread {
            let _ = std::thread::Builder::new().spawn(|| {});
        }
        if let Some(n) = garbage {
            slot_out.fill(0xa5);
            let junk = vec![0xa5u8; usize::try_from(n).unwrap_or(0)];
            if protocol::write_frame(out, Kind::Executed, &junk).is_err() {
                return 3;
            }
            continue;
        }
        match execute(
            client,
            &exe,
            &slots,
            &buffers,
            slot_in,
            (slot_out, &out_at, &out_lens),
        ) {
            Ok(()) => {
                if out.write_all(&done).and_then(|()| out.flush()).is_err() {
                    return 3;
                }
            }
            Err(r) => {
                if !reject(out, &r) {
                    return 3;
                }
            }
        }
    }
}

/// Runs one request: its arguments are read in place from the input arena, its outputs
/// written into the output arena.
fn execute(
    client: &Client,
    exe: &LoadedExecutable,
    slots: &[Slot],
    resident: &[Buffer],
    in_arena: &[u8],
    (out_arena, out_at, out_lens): (&mut [u8], &[usize], &[usize]),
) -> Result<(), ExecRejection> {
    let mut request = Vec::new();
    for s in slots {
        if let Slot::Request(d, dims, len, at) = s {
            let bytes = in_arena.get(*at..at + len).unwrap_or_default();
            let b = client
                .buffer_from_host_borrowed(bytes, *d, dims)
                .map_err(|e| rejection(&e, "PJRT_Client_BufferFromHostBuffer"))?;
            request.push(b);
        }
    }
    let mut next = request.iter();
    let mut args: Vec<&Buffer> = Vec::with_capacity(slots.len());
    for s in slots {
        match s {
            Slot::Resident(i) => args.push(&resident[*i]),
            Slot::Request(..) => {
                if let Some(b) = next.next() {
                    args.push(b);
                }
            }
        }
    }
    let outs = exe
        .execute(&args)
        .map_err(|e| rejection(&e, "PJRT_LoadedExecutable_Execute"))?;
    drop(args);
    drop(request);
    if outs.len() != out_lens.len() {
        return Err(ExecRejection {
            function: "PJRT_LoadedExecutable_Execute".into(),
            code: None,
            message: format!("{} outputs, expected {}", outs.len(), out_lens.len()),
        });
    }
    for ((b, &len), &at) in outs.iter().zip(out_lens).zip(out_at) {
        let slot = out_arena
            .get_mut(at..at + len)
            .ok_or_else(|| ExecRejection {
                function: "Executed".into(),
                code: None,
                message: format!("output of {len} bytes at {at} outside the arena"),
            })?;
        b.copy_to_host(slot)
            .map_err(|e| rejection(&e, "PJRT_Buffer_ToHostBuffer"))?;
    }
    Ok(())
}
