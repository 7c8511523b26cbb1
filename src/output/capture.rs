//! What a child gets as its stdout and stderr (SPEC §10), deciding who owns
//! which fd: nil → `/dev/null`; `/dev/stdout`/`/dev/stderr` → a duplicate of
//! the daemon's own fd 1/2; another non-regular file (a FIFO) → opened
//! non-blocking and handed over as is; a regular file with rotation off and
//! no timestamps → the file itself, append-only (the child writes it
//! directly, zero copies); otherwise → the write end of a pipe whose read
//! end goes to the path's daemon-side writer once the child exists.
//! `process::spawn` turns a missing fd into the daemon's one `/dev/null`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::{Rotation, SpawnSpec};

use super::writer::{Output, Pipes};

/// A child's output streams, as the fds to hand over (None: `/dev/null`).
pub struct Capture {
    /// fd 1.
    pub stdout: Option<OwnedFd>,
    /// fd 2.
    pub stderr: Option<OwnedFd>,
    /// Pipes to hand to writers once the child is spawned ([`Output::attach`]).
    pub pipes: Pipes,
}

/// One stream's end for the child, as an owned fd (so stderr can share it).
enum End {
    Null,
    Fd(OwnedFd),
}

impl End {
    fn fd(self) -> Option<OwnedFd> {
        match self {
            End::Null => None,
            End::Fd(fd) => Some(fd),
        }
    }

    fn dup(&self) -> io::Result<End> {
        match self {
            End::Null => Ok(End::Null),
            End::Fd(fd) => fd.try_clone().map(End::Fd),
        }
    }
}

impl Output {
    /// Prepares the streams of one child of `spec`.
    pub fn capture(&self, spec: &SpawnSpec) -> Result<Capture, String> {
        let mut pipes = Pipes::default();
        let out = self.end(
            &spec.stdout,
            spec.stdout_rotation,
            spec.timestamps,
            "stdout",
            &mut pipes,
        )?;
        let err = if spec.redirect_stderr {
            out.dup()
                .map_err(|e| format!("cannot share stdout with stderr: {e}"))?
        } else {
            self.end(
                &spec.stderr,
                spec.stderr_rotation,
                spec.timestamps,
                "stderr",
                &mut pipes,
            )?
        };
        Ok(Capture {
            stdout: out.fd(),
            stderr: err.fd(),
            pipes,
        })
    }

    fn end(
        &self,
        path: &Option<PathBuf>,
        rotation: Rotation,
        timestamps: bool,
        which: &str,
        pipes: &mut Pipes,
    ) -> Result<End, String> {
        let Some(path) = path else {
            return Ok(End::Null);
        };
        // The daemon's own streams, duplicated: never reopened by path (a
        // pipe or a terminal could not be reopened the same way).
        let own = match path.to_str() {
            Some("/dev/stdout") => Some(1),
            Some("/dev/stderr") => Some(2),
            _ => None,
        };
        if let Some(fd) = own {
            // SAFETY: borrowing the daemon's fd 1/2 just to duplicate it.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            return borrowed
                .try_clone_to_owned()
                .map(End::Fd)
                .map_err(|e| format!("cannot use the daemon's {which}: {e}"));
        }
        match std::fs::metadata(path) {
            Ok(m) if !m.is_file() => {
                // A FIFO or a device: as is, non-blocking so opening a FIFO
                // nobody reads does not hang the daemon.
                let file = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(path)
                    .map_err(|e| format!("cannot open {which} file {}: {e}", path.display()))?;
                return Ok(End::Fd(file.into()));
            }
            _ => {}
        }
        create_folder(path, which)?;
        if rotation.maxbytes == 0 && !timestamps {
            let file: File = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open {which} file {}: {e}", path.display()))?;
            return Ok(End::Fd(file.into()));
        }
        let (read, write, writer) = self
            .pipe_to(path, rotation, timestamps)
            .map_err(|e| format!("cannot open {which} file {}: {e}", path.display()))?;
        pipes.0.push((read, writer));
        Ok(End::Fd(write))
    }
}

/// Creates the missing folders of a log file (mode 0755 under the usual
/// umask), with an error that names the configured path.
fn create_folder(path: &Path, which: &str) -> Result<(), String> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create the folder of {which} file {}: {}",
            path.display(),
            folder_error(dir, &e)
        )
    })
}

/// Why a folder could not be created, in words: `File exists` alone does
/// not say that a file sits where a folder is needed.
fn folder_error(dir: &Path, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::AlreadyExists || e.raw_os_error() == Some(libc::ENOTDIR) {
        let mut probe = Some(dir);
        while let Some(p) = probe {
            if p.is_file() {
                return format!("{} is a file, not a folder", p.display());
            }
            if p.exists() && !p.is_dir() {
                return format!("{} exists and is not a folder", p.display());
            }
            probe = p.parent();
        }
    }
    e.to_string()
}
