//! The shared-memory arena between the parent and one execution worker.
//!
//! Two memfds per worker, created by the parent before the worker starts and inherited by it
//! as descriptors [`INPUT_FD`] and [`OUTPUT_FD`] (every other descriptor is closed):
//! - the **input** arena holds one request's arguments. The parent maps it read-write, then
//!   seals it with `F_SEAL_FUTURE_WRITE`: no one can map it writable again or `write(2)` to it,
//!   so the worker can only read it;
//! - the **output** arena holds the outputs. The worker maps it read-write; the parent maps it
//!   read-only and *copies* the bytes out after the worker's reply (it never holds a reference
//!   into memory that a hostile worker may be changing).
//!
//! Both are sized once, when the worker loads its model, then sealed against shrinking and
//! growing (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`): a worker cannot truncate a mapping
//! under the parent (which would turn the parent's next read into `SIGBUS`). Where the kernel
//! knows `MFD_NOEXEC_SEAL`, neither can ever be executable.
//!
//! The pipes stay the doorbell: an `Execute` frame with no payload says "the arguments are in
//! the arena", an `Executed` frame with no payload "the outputs are". A pipe's write and read
//! are the memory barriers between the two processes.
//!
//! Each argument and output starts at a multiple of [`ALIGN`] bytes, so the plugin can use the
//! worker's view of an argument in place.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

/// The worker's descriptor for the input arena.
pub(crate) const INPUT_FD: RawFd = 3;
/// The worker's descriptor for the output arena.
pub(crate) const OUTPUT_FD: RawFd = 4;
/// Alignment of every argument and output in an arena, bytes.
pub(crate) const ALIGN: usize = 64;
/// Request slots per worker: one request runs while the next one waits in the other slot,
/// its doorbell already rung, so the worker goes from one to the next without waiting for the
/// parent to wake up.
pub(crate) const SLOTS: usize = 2;

/// Bytes between the starts of two slots of a region of `len` bytes, or `None` on overflow.
pub(crate) fn stride(len: usize) -> Option<usize> {
    Some(len.max(1).checked_add(ALIGN - 1)? & !(ALIGN - 1))
}

/// Offsets of consecutive regions of `lens` bytes, each aligned to [`ALIGN`], and the bytes
/// the arena needs (at least 1). `None` on overflow.
pub(crate) fn layout(lens: &[usize]) -> Option<(Vec<usize>, usize)> {
    let mut at = 0usize;
    let mut offsets = Vec::with_capacity(lens.len());
    for &len in lens {
        at = at.checked_add(ALIGN - 1)? & !(ALIGN - 1);
        offsets.push(at);
        at = at.checked_add(len)?;
    }
    Some((offsets, at.max(1)))
}

fn errno(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn memfd(name: &std::ffi::CStr) -> io::Result<OwnedFd> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create takes a NUL-terminated name and flags and returns a new descriptor
    // (or -1); nothing else is touched.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), flags | libc::MFD_NOEXEC_SEAL) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // Kernels before 6.3 do not know MFD_NOEXEC_SEAL.
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(errno("memfd_create"));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn truncate(fd: &OwnedFd, len: usize) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "arena too large"))?;
    // SAFETY: ftruncate on a descriptor we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
        return Err(errno("ftruncate"));
    }
    Ok(())
}

/// Adds `seals`; the error is the system's own (its errno kept).
fn add_seals(fd: RawFd, seals: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl(F_ADD_SEALS) with an integer argument on a descriptor we hold.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn seals_of(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: fcntl(F_GET_SEALS) takes no argument.
    let s = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if s < 0 {
        return Err(errno("F_GET_SEALS"));
    }
    Ok(s)
}

/// One shared mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is a plain region of shared memory; every access goes through `&self` /
// `&mut self` methods that copy bytes, so moving it or sharing it between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above (`&self` methods only read, by copying).
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: RawFd, len: usize, writable: bool) -> io::Result<Mapping> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of `len` bytes of a descriptor we hold, at an address
        // the kernel chooses; it aliases no Rust object.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(errno("mmap"));
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).ok_or_else(|| errno("mmap"))?,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the region was mapped by `Mapping::new` with this length and is unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The parent's side of one worker's arena.
pub(crate) struct Arena {
    input: OwnedFd,
    output: OwnedFd,
    /// Input (read-write here) and output (read-only here) mappings, once sized.
    maps: Option<(Mapping, Mapping)>,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("input_len", &self.maps.as_ref().map(|m| m.0.len))
            .field("output_len", &self.maps.as_ref().map(|m| m.1.len))
            .finish()
    }
}

impl Arena {
    /// Two empty memfds, not yet sized.
    ///
    /// # Errors
    /// The system's.
    pub(crate) fn new() -> io::Result<Arena> {
        Ok(Arena {
            input: memfd(c"xlaguard-exec-in")?,
            output: memfd(c"xlaguard-exec-out")?,
            maps: None,
        })
    }

    /// The descriptors to give the worker, and the numbers it expects them at.
    pub(crate) fn child_fds(&self) -> [(RawFd, RawFd); 2] {
        [
            (self.input.as_raw_fd(), INPUT_FD),
            (self.output.as_raw_fd(), OUTPUT_FD),
        ]
    }

    /// Sizes, maps and seals the arena (once, before the worker is told its model): [`SLOTS`]
    /// slots of `input_len` and of `output_len` bytes.
    ///
    /// # Errors
    /// The system's; sizing twice is an error.
    pub(crate) fn size(&mut self, input_len: usize, output_len: usize) -> io::Result<()> {
        if self.maps.is_some() {
            return Err(io::Error::other("the arena is sized already"));
        }
        let total = |len: usize| {
            stride(len)
                .and_then(|s| s.checked_mul(SLOTS))
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "arena too large"))
        };
        let (input_len, output_len) = (total(input_len)?, total(output_len)?);
        truncate(&self.input, input_len)?;
        truncate(&self.output, output_len)?;
        let input = Mapping::new(self.input.as_raw_fd(), input_len, true)?;
        let output = Mapping::new(self.output.as_raw_fd(), output_len, false)?;
        let fixed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // Kernels before 5.1 do not know F_SEAL_FUTURE_WRITE (EINVAL): the input arena then
        // stays writable to the worker, which can only spoil its own request's arguments.
        if let Err(e) = add_seals(self.input.as_raw_fd(), fixed | libc::F_SEAL_FUTURE_WRITE) {
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
            add_seals(self.input.as_raw_fd(), fixed)?;
        }
        add_seals(self.output.as_raw_fd(), fixed)?;
        self.maps = Some((input, output));
        Ok(())
    }

    /// Copies `bytes` into the input arena at `at`.
    ///
    /// # Errors
    /// A region outside the arena, or an arena not sized yet.
    pub(crate) fn write_input(&mut self, at: usize, bytes: &[u8]) -> Result<(), String> {
        let (input, _) = self.maps.as_mut().ok_or("the arena is not sized")?;
        let end = at
            .checked_add(bytes.len())
            .filter(|&e| e <= input.len)
            .ok_or_else(|| {
                format!(
                    "{} bytes at {at} do not fit an input arena of {} bytes",
                    bytes.len(),
                    input.len
                )
            })?;
        let _ = end;
        // SAFETY: [at, at + len) lies inside the mapping (checked above), which is writable
        // here; the worker only reads it, and only between our doorbell and its reply, while
        // `&mut self` keeps this side from writing concurrently.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), input.ptr.as_ptr().add(at), bytes.len())
        };
        Ok(())
    }

    /// Copies `len` bytes of the output arena at `at` out of it.
    ///
    /// # Errors
    /// A region outside the arena, or an arena not sized yet.
    pub(crate) fn read_output(&self, at: usize, len: usize) -> Result<Vec<u8>, String> {
        let (_, output) = self.maps.as_ref().ok_or("the arena is not sized")?;
        at.checked_add(len)
            .filter(|&e| e <= output.len)
            .ok_or_else(|| {
                format!(
                    "{len} bytes at {at} do not fit an output arena of {} bytes",
                    output.len
                )
            })?;
        let mut v = Vec::with_capacity(len);
        // SAFETY: [at, at + len) lies inside the mapping (checked above), sealed against
        // shrinking, so reading it cannot fault. A hostile worker may change these bytes while
        // they are copied: they are copied as plain bytes (any value is a valid u8) into
        // memory we own, and no reference into the mapping is ever formed.
        unsafe {
            std::ptr::copy_nonoverlapping(output.ptr.as_ptr().add(at), v.as_mut_ptr(), len);
            v.set_len(len);
        }
        Ok(v)
    }
}

/// The worker's side: maps the inherited descriptors after checking their sizes and seals
/// ([`SLOTS`] slots of `input_len` and `output_len` bytes, as [`Arena::size`] made them). The
/// mappings live as long as the worker.
///
/// # Errors
/// A descriptor missing, smaller than the model needs, or not sealed as the parent seals it.
pub(crate) fn map_in_worker(
    input_len: usize,
    output_len: usize,
) -> Result<(&'static [u8], &'static mut [u8]), String> {
    let total = |len: usize| {
        stride(len)
            .and_then(|s| s.checked_mul(SLOTS))
            .ok_or_else(|| "arena too large".to_string())
    };
    let (input_len, output_len) = (total(input_len)?, total(output_len)?);
    let need = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    for (fd, len, what) in [
        (INPUT_FD, input_len, "input"),
        (OUTPUT_FD, output_len, "output"),
    ] {
        let seals = seals_of(fd).map_err(|e| format!("{what} arena (fd {fd}): {e}"))?;
        if seals & need != need {
            return Err(format!(
                "{what} arena (fd {fd}) is not sealed against resizing"
            ));
        }
        // SAFETY: fstat fills the zeroed struct for a descriptor we hold.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(format!("{what} arena (fd {fd}): {}", errno("fstat")));
        }
        if usize::try_from(st.st_size).unwrap_or(0) < len {
            return Err(format!(
                "{what} arena (fd {fd}) has {} bytes, the model needs {len}",
                st.st_size
            ));
        }
    }
    let input =
        Mapping::new(INPUT_FD, input_len, false).map_err(|e| format!("input arena: {e}"))?;
    let output =
        Mapping::new(OUTPUT_FD, output_len, true).map_err(|e| format!("output arena: {e}"))?;
    let (input, output) = (
        std::mem::ManuallyDrop::new(input),
        std::mem::ManuallyDrop::new(output),
    );
    // SAFETY: both mappings are never unmapped (ManuallyDrop, for the life of the worker). The
    // input is written only by the parent, which the worker trusts, and only while no request
    // runs; the output is written only through the one `&mut` returned here.
    unsafe {
        Ok((
            std::slice::from_raw_parts(input.ptr.as_ptr(), input.len),
            std::slice::from_raw_parts_mut(output.ptr.as_ptr(), output.len),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_aligned() {
        assert_eq!(stride(0), Some(64));
        assert_eq!(stride(64), Some(64));
        assert_eq!(stride(65), Some(128));
        assert_eq!(stride(usize::MAX), None);
    }

    #[test]
    fn layout_aligns_every_region() {
        assert_eq!(layout(&[]), Some((vec![], 1)));
        assert_eq!(layout(&[3, 64, 1]), Some((vec![0, 64, 128], 129)));
        assert_eq!(layout(&[0, 0]), Some((vec![0, 0], 1)));
        assert_eq!(layout(&[usize::MAX, 1]), None);
    }

    #[test]
    fn a_sized_arena_is_sealed_and_copies_both_ways() {
        let mut a = Arena::new().unwrap();
        assert!(a.write_input(0, b"x").is_err(), "not sized yet");
        a.size(100, 8).unwrap();
        assert!(a.size(1, 1).is_err(), "sized twice");
        // Two slots each: inputs 2 x 128 bytes, outputs 2 x 64.
        a.write_input(224, b"abcd").unwrap();
        assert!(a
            .write_input(253, b"abcd")
            .unwrap_err()
            .contains("do not fit"));
        assert_eq!(a.read_output(64, 64).unwrap(), vec![0u8; 64]);
        assert!(a.read_output(65, 64).is_err());
        let [(inp, _), (out, _)] = a.child_fds();
        // Nobody can resize either, nor write the input through a descriptor or a new mapping.
        for fd in [inp, out] {
            // SAFETY: ftruncate on a descriptor the arena holds.
            assert_ne!(unsafe { libc::ftruncate(fd, 1) }, 0);
        }
        assert!(
            Mapping::new(inp, 256, true).is_err(),
            "input mapped writable"
        );
        assert!(
            Mapping::new(out, 128, true).is_ok(),
            "the worker writes outputs"
        );
        // The bytes written are in the file.
        let mut buf = [0u8; 4];
        // SAFETY: pread into a local buffer.
        let n = unsafe { libc::pread(inp, buf.as_mut_ptr().cast(), 4, 224) };
        assert_eq!((n, &buf), (4, b"abcd"));
    }
}
