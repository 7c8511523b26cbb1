//! Child output (SPEC §10): where each stream of an instance goes, the
//! daemon-side writers that rotate files by rename, and reading logs back
//! (`tail`, `logs`, following across rotations).
//!
//! Who owns which fd: a stream to nil goes to `/dev/null`; to a non-regular
//! file (`/dev/stdout` = the daemon's own fd 1, a FIFO) the child gets that
//! fd as is; to a regular file with rotation off and no timestamps the child
//! gets the file itself (append-only, the daemon never touches the bytes);
//! otherwise the child gets the write end of a pipe whose read end belongs
//! to one daemon-side [`writer`] per path, which `splice(2)`s the bytes into
//! the file (no copy through user space) and rotates it. Reading back
//! (`tail.rs`, `follow.rs`) only ever reads the files.

mod capture;
pub mod follow;
pub mod tail;
mod writer;

pub use capture::Capture;
pub use writer::{Output, Owner, Pipes};

use std::path::PathBuf;

/// One of an instance's two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stream {
    /// fd 1.
    Stdout,
    /// fd 2.
    Stderr,
}

impl Stream {
    /// `stdout` / `stderr`, as the protocol and the config name them.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    /// Parses `stdout` / `stderr`.
    pub fn parse(s: &str) -> Option<Stream> {
        match s {
            "stdout" => Some(Stream::Stdout),
            "stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// Where one stream of one instance is logged, as `tail`/`logs`/`clear`
/// need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTarget {
    /// `web:0`.
    pub name: String,
    /// Which stream.
    pub stream: Stream,
    /// The regular file the stream is written to; None when it has none
    /// (nil, a non-regular file such as `/dev/stdout`, or a stderr that
    /// `redirect_stderr` sends to stdout).
    pub path: Option<PathBuf>,
    /// Why there is no file, naming the option (`web:0 has no stdout file
    /// (stdout = nil)`), for the `no_log` error.
    pub missing: String,
}

/// The last non-empty line of a log file (for a failed start's reason),
/// reading at most its last 4 KiB.
pub fn last_line(path: &std::path::Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(4096);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    f.take(4096).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.lines()
        .rev()
        .map(str::trim_end)
        .find(|l| !l.trim().is_empty())
        .map(str::to_string)
}
