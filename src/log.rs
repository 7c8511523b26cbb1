//! The daemon log: one line per event, RFC 3339 timestamp first, to stderr
//! and, when configured, appended to a log file.
//!
//! A process-wide sink because every part of the daemon logs (supervisor,
//! server, hooks, watcher) and the lines must interleave in one order. Each
//! line is written with a single `write` call so concurrent writers never
//! tear a line.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// The optional log file; stderr is always written.
static FILE: Mutex<Option<(PathBuf, File)>> = Mutex::new(None);

/// Starts appending log lines to `path` (creating its folder).
pub fn set_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if let Ok(mut slot) = FILE.lock() {
        *slot = Some((abs, file));
    }
    Ok(())
}

/// The log file in use, if any (the watcher ignores it).
pub fn file_path() -> Option<PathBuf> {
    FILE.lock()
        .ok()
        .and_then(|f| f.as_ref().map(|(p, _)| p.clone()))
}

/// Writes one timestamped line.
pub fn line(args: fmt::Arguments<'_>) {
    let stamp = humantime::format_rfc3339_millis(SystemTime::now());
    let text = format!("{stamp} {args}\n");
    let _ = std::io::stderr().write_all(text.as_bytes());
    if let Ok(mut slot) = FILE.lock() {
        if let Some((_, f)) = slot.as_mut() {
            let _ = f.write_all(text.as_bytes());
        }
    }
}

/// `log!("spawned: '{}' with pid {}", name, pid)`.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}
