//! Daemon-side writers: one per log path, rotating by rename (filled in next).

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

/// The registry of daemon-side writers, shared by the supervisor (which
/// attaches children's pipes) and the server (`clear`).
#[derive(Clone, Default)]
pub struct Output {}

impl Output {
    /// Empties the log file at `path` (its backups are kept). A file the
    /// daemon writes is truncated by its writer, so the size it rotates at
    /// stays right; any other is truncated in place (a child writing it
    /// appends, so it carries on at the new end).
    pub fn clear(&self, path: &Path) -> io::Result<()> {
        OpenOptions::new().write(true).open(path)?.set_len(0)
    }
}
