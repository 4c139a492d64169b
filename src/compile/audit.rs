//! The append-only JSON-lines audit log of compilation.
//!
//! One JSON object per line, written with a single `write` on a file opened `O_APPEND` (mode
//! 0600 when created), so concurrent records never interleave. Every record has `time` (UTC,
//! RFC 3339 with milliseconds), `unix_ms` and `event`: `sandbox_report`, `compile_start`,
//! `compile_end`, `compile_failed`, `sandbox_violation`, `busy`, `cache_hit`, `cache_rejected`,
//! `cache_store`. Compile records carry the module (sha256, size, format, input avals), the
//! plugin (path, sha256, API version), the options, the limits, and on completion the duration,
//! CPU time, peak RSS, exit status or signal, outcome and error text.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// An open audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log for appending.
    ///
    /// # Errors
    /// The OS error.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record: `event` plus the fields of `fields` (an object), stamped with the
    /// time.
    ///
    /// # Errors
    /// The OS error from the write.
    pub fn record(&self, event: &str, fields: Value) -> std::io::Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut m = Map::new();
        m.insert("time".into(), Value::String(rfc3339(now.as_millis())));
        m.insert(
            "unix_ms".into(),
            Value::from(u64::try_from(now.as_millis()).unwrap_or(u64::MAX)),
        );
        m.insert("event".into(), Value::String(event.into()));
        if let Value::Object(f) = fields {
            for (k, v) in f {
                m.insert(k, v);
            }
        }
        let mut line = serde_json::to_vec(&Value::Object(m))?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&line)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the epoch (proleptic Gregorian, UTC).
fn rfc3339(ms: u128) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(0);
    let milli = ms % 1000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_000_000_000), "2026-11-18T11:06:40.000Z");
    }

    #[test]
    fn lines_append_and_parse() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/audit.jsonl");
        let log = AuditLog::open(&p).unwrap();
        log.record("compile_start", serde_json::json!({"x": 1}))
            .unwrap();
        drop(log);
        let log = AuditLog::open(&p).unwrap();
        log.record("compile_end", serde_json::json!({"x": 2}))
            .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "compile_start");
        assert_eq!(lines[1]["x"], 2);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
