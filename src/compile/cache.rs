//! The on-disk cache of compiled executables: content-addressed, authenticated.
//!
//! A serialized executable is machine code, so an entry is only ever handed to the plugin
//! after its HMAC-SHA256 (keyed with a per-install secret, a 0600 file created on first use)
//! verifies, and after the key recorded inside it matches the one asked for. The key covers the
//! module bytes, its format, the compile options, the plugin's sha256 and PJRT API version, the
//! client options and `XLA_FLAGS`: an entry made by another plugin has another key (and another
//! file name), and one copied over a different name is refused.
//!
//! Entry layout: `XLGC`, version (u32 LE), key digest (32), plugin sha256 (32), API major and
//! minor (i32 LE each), payload length (u64 LE), payload, HMAC-SHA256 of everything before (32).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"XLGC";
const VERSION: u32 = 1;
const HEAD: usize = 4 + 4 + 32 + 32 + 4 + 4 + 8;
const MAC_LEN: usize = 32;

/// The lowercase hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// sha256 of bytes.
pub fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// sha256 of a file, streamed.
///
/// # Errors
/// The OS error.
pub fn sha256_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// What identifies a compiled executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    digest: [u8; 32],
    plugin_sha256: [u8; 32],
    api_version: (i32, i32),
}

impl CacheKey {
    /// The key of a compile: module, format, encoded compile options, plugin identity, client
    /// options (as text) and `XLA_FLAGS`.
    pub fn new(
        module: &[u8],
        format: &str,
        options: &[u8],
        plugin_sha256: [u8; 32],
        api_version: (i32, i32),
        client_options: &str,
        xla_flags: &str,
    ) -> CacheKey {
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(b"xlaguard-compile-cache-v1");
        field(&sha256(module));
        field(format.as_bytes());
        field(options);
        field(&plugin_sha256);
        field(&api_version.0.to_le_bytes());
        field(&api_version.1.to_le_bytes());
        field(client_options.as_bytes());
        field(xla_flags.as_bytes());
        CacheKey {
            digest: h.finalize().into(),
            plugin_sha256,
            api_version,
        }
    }

    /// The hex digest (also the entry's file name).
    pub fn hex(&self) -> String {
        hex(&self.digest)
    }
}

/// Why an entry was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheRejection {
    /// Shorter than its header, or than its stated length.
    #[error("truncated entry ({0} bytes)")]
    Truncated(usize),
    /// Not an entry of this format or version.
    #[error("not a cache entry of this version")]
    BadFormat,
    /// The HMAC does not verify: tampered with, or made with another key.
    #[error("authentication failed (tampered entry or another install's key)")]
    BadMac,
    /// Authentic, but made for another key (e.g. copied over another entry's name).
    #[error("entry belongs to another key")]
    WrongKey,
    /// Authentic, but made by another plugin.
    #[error("entry made by another plugin")]
    WrongPlugin,
    /// Could not be read.
    #[error("unreadable entry: {0}")]
    Io(String),
}

/// An open cache folder and its key.
pub struct Cache {
    dir: PathBuf,
    mac_key: [u8; 32],
    max_entry_bytes: u64,
}

/// Reads `path` when it is a regular file (not a symlink, FIFO or device: opened with
/// `O_NOFOLLOW | O_NONBLOCK`, then checked with `fstat`) of at most `max` bytes. `Ok(None)`: no
/// such file.
fn read_regular(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(invalid(format!("{}: a symbolic link", path.display())))
        }
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(invalid(format!(
            "{}: not a regular file ({:?})",
            path.display(),
            meta.file_type()
        )));
    }
    if meta.len() > max {
        return Err(invalid(format!(
            "{}: {} bytes, above the limit of {max}",
            path.display(),
            meta.len()
        )));
    }
    let mut b = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // A file that grows while we read is cut at the limit (and then fails its HMAC).
    f.take(max).read_to_end(&mut b)?;
    Ok(Some(b))
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("dir", &self.dir).finish()
    }
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, msg)
}

impl Cache {
    /// Opens the cache in `dir` (created 0700 if missing). The HMAC key is read from
    /// `key_file` (default `dir/hmac.key`); if there is none, 32 random bytes are written to a
    /// new file with mode 0600. A key file that others can read or write, that is not ours,
    /// or that is not 32 bytes is refused.
    ///
    /// # Errors
    /// The OS error, or `PermissionDenied` for a key file with loose permissions.
    pub fn open(dir: &Path, key_file: Option<&Path>) -> std::io::Result<Cache> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let key_path = key_file
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.join("hmac.key"));
        if !key_path.exists() {
            create_key(&key_path)?;
        }
        let meta = std::fs::metadata(&key_path)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(invalid(format!(
                "{}: key file mode {:o}, must not be accessible to group or others",
                key_path.display(),
                meta.permissions().mode() & 0o777
            )));
        }
        // The owner must be us (/proc/self is owned by our effective uid).
        let uid = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(0);
        if meta.uid() != uid {
            return Err(invalid(format!(
                "{}: key file owned by uid {}, not {uid}",
                key_path.display(),
                meta.uid()
            )));
        }
        let bytes = read_regular(&key_path, 64)?.unwrap_or_default();
        let mac_key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            invalid(format!(
                "{}: key file holds {} bytes, expected 32",
                key_path.display(),
                bytes.len()
            ))
        })?;
        Ok(Cache {
            dir: dir.to_path_buf(),
            mac_key,
            max_entry_bytes: (1 << 30) + (HEAD + MAC_LEN) as u64,
        })
    }

    /// Refuses entries whose executable is larger than `bytes` (default 1 GiB), without
    /// reading them.
    pub fn set_max_executable_bytes(&mut self, bytes: u64) {
        self.max_entry_bytes = bytes.saturating_add((HEAD + MAC_LEN) as u64);
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry for `key` lives.
    pub fn entry_path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{}.xlx", key.hex()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; 32 bytes never fails.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.mac_key).expect("HMAC takes any key length")
    }

    /// Reads and authenticates the entry for `key`. `Ok(None)`: no entry.
    ///
    /// # Errors
    /// A [`CacheRejection`] saying why an existing entry may not be used.
    pub fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheRejection> {
        let path = self.entry_path(key);
        let bytes = match read_regular(&path, self.max_entry_bytes) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => return Err(CacheRejection::Io(e.to_string())),
        };
        self.verify(key, &bytes).map(Some)
    }

    fn verify(&self, key: &CacheKey, b: &[u8]) -> Result<Vec<u8>, CacheRejection> {
        if b.len() < HEAD + MAC_LEN {
            return Err(CacheRejection::Truncated(b.len()));
        }
        if &b[..4] != MAGIC || b[4..8] != VERSION.to_le_bytes() {
            return Err(CacheRejection::BadFormat);
        }
        let len = u64::from_le_bytes(b[HEAD - 8..HEAD].try_into().unwrap_or([0xff; 8]));
        let want = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(HEAD + MAC_LEN));
        if want != Some(b.len()) {
            return Err(CacheRejection::Truncated(b.len()));
        }
        let (body, tag) = b.split_at(b.len() - MAC_LEN);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| CacheRejection::BadMac)?;
        // Authentic from here on.
        if b[8..40] != key.digest {
            return Err(CacheRejection::WrongKey);
        }
        let api = (
            i32::from_le_bytes(b[72..76].try_into().unwrap_or_default()),
            i32::from_le_bytes(b[76..80].try_into().unwrap_or_default()),
        );
        if b[40..72] != key.plugin_sha256 || api != key.api_version {
            return Err(CacheRejection::WrongPlugin);
        }
        Ok(body[HEAD..].to_vec())
    }

    /// Writes the entry for `key` (atomically: a temporary file renamed into place, mode 0600).
    ///
    /// # Errors
    /// The OS error.
    pub fn put(&self, key: &CacheKey, payload: &[u8]) -> std::io::Result<PathBuf> {
        let mut b = Vec::with_capacity(HEAD + payload.len() + MAC_LEN);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&key.digest);
        b.extend_from_slice(&key.plugin_sha256);
        b.extend_from_slice(&key.api_version.0.to_le_bytes());
        b.extend_from_slice(&key.api_version.1.to_le_bytes());
        b.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        b.extend_from_slice(payload);
        let mut mac = self.mac();
        mac.update(&b);
        b.extend_from_slice(&mac.finalize().into_bytes());
        let path = self.entry_path(key);
        let tmp = self
            .dir
            .join(format!(".{}.{}.tmp", key.hex(), std::process::id()));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&b)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Removes the entry for `key`, if any.
    pub fn remove(&self, key: &CacheKey) {
        let _ = std::fs::remove_file(self.entry_path(key));
    }
}

fn create_key(path: &Path) -> std::io::Result<()> {
    let mut key = [0u8; 32];
    File::open("/dev/urandom")?.read_exact(&mut key)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&key)?;
    f.sync_all()?;
    drop(f);
    // Atomic publish: a concurrent creator's key wins and ours is discarded.
    let r = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(plugin: u8) -> CacheKey {
        CacheKey::new(b"module", "mlir", b"opts", [plugin; 32], (0, 115), "", "")
    }

    #[test]
    fn round_trip_and_every_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path(), None).unwrap();
        let mode = std::fs::metadata(dir.path().join("hmac.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let k = key(1);
        assert_eq!(c.get(&k), Ok(None));
        let p = c.put(&k, b"machine code").unwrap();
        assert_eq!(c.get(&k).unwrap().unwrap(), b"machine code");
        // Every single flipped byte is caught.
        let good = std::fs::read(&p).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            std::fs::write(&p, &bad).unwrap();
            assert!(c.get(&k).is_err(), "flip at {i} accepted");
        }
        std::fs::write(&p, &good[..good.len() - 1]).unwrap();
        assert!(matches!(c.get(&k), Err(CacheRejection::Truncated(_))));
        // Another plugin's key names another file; copied over, it is refused as foreign.
        let other = key(2);
        assert_ne!(c.entry_path(&other), p);
        std::fs::write(&p, &good).unwrap();
        std::fs::copy(&p, c.entry_path(&other)).unwrap();
        assert_eq!(c.get(&other), Err(CacheRejection::WrongKey));
        // Another install's key: the MAC fails.
        let dir2 = tempfile::tempdir().unwrap();
        let c2 = Cache::open(dir2.path(), None).unwrap();
        std::fs::copy(&p, c2.entry_path(&k)).unwrap();
        assert_eq!(c2.get(&k), Err(CacheRejection::BadMac));
        // The same install reopens with the same key.
        let c3 = Cache::open(dir.path(), None).unwrap();
        assert_eq!(c3.get(&k).unwrap().unwrap(), b"machine code");
    }

    #[test]
    fn fifos_symlinks_and_huge_entries_are_refused_without_reading() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Cache::open(d.path(), None).unwrap();
        let k = key(1);
        let p = c.entry_path(&k);
        // A FIFO: open does not block (O_NONBLOCK), fstat refuses it.
        assert!(std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap()
            .success());
        let e = c.get(&k).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::remove_file(&p).unwrap();
        // A symlink to /dev/zero: O_NOFOLLOW refuses it.
        std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
        let e = c.get(&k).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::fs::remove_file(&p).unwrap();
        // Larger than the executable limit: refused from its size.
        c.put(&k, &[7u8; 4096]).unwrap();
        c.set_max_executable_bytes(1024);
        let e = c.get(&k).unwrap_err();
        assert!(e.to_string().contains("above the limit"), "{e}");
        c.set_max_executable_bytes(1 << 20);
        assert_eq!(c.get(&k).unwrap().unwrap(), vec![7u8; 4096]);
    }

    #[test]
    fn loose_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let kf = dir.path().join("k");
        std::fs::write(&kf, [7u8; 32]).unwrap();
        std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Cache::open(&dir.path().join("c"), Some(&kf)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Cache::open(&dir.path().join("c"), Some(&kf)).is_ok());
        std::fs::write(&kf, [7u8; 5]).unwrap();
        assert!(Cache::open(&dir.path().join("c"), Some(&kf)).is_err());
    }
}
