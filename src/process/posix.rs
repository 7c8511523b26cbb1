//! The spawn path of every instance that needs nothing run between fork
//! and exec (no `umask`, `user` or `rlimits`): `posix_spawn(3)` called
//! directly, which glibc implements with `clone(CLONE_VM | CLONE_VFORK)`.
//!
//! Why not std's `Command` (which takes the same `posix_spawn` path): a
//! `Command` whose environment is changed copies the whole environment of
//! the daemon into a map and back into C strings for every spawn, and
//! its `Stdio`s are fds duplicated and closed again for every spawn. In a
//! crash loop that is a tenth of the daemon's time per restart. Here the
//! daemon's environment, less its own settings ([`DAEMON_SETTINGS`]), is
//! turned into C strings once; a spawn only adds the service's variables
//! (which win over the daemon's); `/dev/null` is one fd opened once.
//!
//! What the child gets is what `Command` gave it: its own process group
//! (`POSIX_SPAWN_SETPGROUP`), an empty signal mask, SIGPIPE back to its
//! default (Rust ignores it in the daemon; an ignored signal survives
//! exec), stdin from `/dev/null`, stdout and stderr dup'ed onto 1 and 2,
//! the working directory changed in the child (`addchdir_np`), the program
//! looked up in `PATH` when its name has no slash — in the child's `PATH`
//! when the service sets one, as `Command` does — and an exec failure
//! reported as its errno.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::DAEMON_SETTINGS;

/// The daemon's environment less its settings, as `KEY=VALUE` C strings
/// with their keys, read once (the daemon never changes its environment).
fn base_env() -> &'static [(Vec<u8>, CString)] {
    static BASE: OnceLock<Vec<(Vec<u8>, CString)>> = OnceLock::new();
    BASE.get_or_init(|| {
        std::env::vars_os()
            .filter(|(k, _)| !DAEMON_SETTINGS.iter().any(|s| OsStr::new(s) == k))
            .filter_map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                Some((k.as_bytes().to_vec(), CString::new(kv).ok()?))
            })
            .collect()
    })
}

/// `/dev/null`, opened once (read-write: it is stdin, and stdout/stderr
/// for streams that go nowhere).
fn null_fd() -> io::Result<BorrowedFd<'static>> {
    static NULL: OnceLock<Option<std::fs::File>> = OnceLock::new();
    NULL.get_or_init(|| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .ok()
    })
    .as_ref()
    .map(|f| {
        // SAFETY: the file lives in a static for the life of the process.
        unsafe { BorrowedFd::borrow_raw(f.as_raw_fd()) }
    })
    .ok_or_else(|| io::Error::other("cannot open /dev/null"))
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    })
}

/// What to exec, and how.
pub(super) struct Spawn<'a> {
    /// argv; `argv[0]` is the program.
    pub argv: &'a [String],
    /// Variables over the daemon's, later ones winning.
    pub env: &'a [(&'a str, &'a str)],
    /// Working directory.
    pub dir: Option<&'a Path>,
    /// fd 1 and fd 2 (None: `/dev/null`).
    pub stdout: Option<BorrowedFd<'a>>,
    pub stderr: Option<BorrowedFd<'a>>,
}

/// Owns what the C calls are given pointers into.
struct Attrs {
    actions: libc::posix_spawn_file_actions_t,
    attr: libc::posix_spawnattr_t,
}

impl Drop for Attrs {
    fn drop(&mut self) {
        // SAFETY: both were initialized in `Attrs::new`.
        unsafe {
            libc::posix_spawn_file_actions_destroy(&mut self.actions);
            libc::posix_spawnattr_destroy(&mut self.attr);
        }
    }
}

/// Turns a non-zero return of a posix_spawn call into an error.
fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

impl Attrs {
    fn new(s: &Spawn<'_>, dir: Option<&CString>) -> io::Result<Box<Attrs>> {
        // Boxed: the C structures must not move once initialized.
        // SAFETY: zeroed structures are valid inputs to the _init calls.
        let mut a: Box<Attrs> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY (whole block): initialized before use, destroyed in Drop
        // (init failures leave nothing to destroy but are never ignored).
        unsafe {
            check(libc::posix_spawn_file_actions_init(&mut a.actions))?;
            if let Err(e) = check(libc::posix_spawnattr_init(&mut a.attr)) {
                libc::posix_spawn_file_actions_destroy(&mut a.actions);
                std::mem::forget(a);
                return Err(e);
            }
            let null = null_fd()?.as_raw_fd();
            let out = s.stdout.map_or(null, |f| f.as_raw_fd());
            let err = s.stderr.map_or(null, |f| f.as_raw_fd());
            check(libc::posix_spawn_file_actions_adddup2(
                &mut a.actions,
                null,
                0,
            ))?;
            check(libc::posix_spawn_file_actions_adddup2(
                &mut a.actions,
                out,
                1,
            ))?;
            check(libc::posix_spawn_file_actions_adddup2(
                &mut a.actions,
                err,
                2,
            ))?;
            if let Some(dir) = dir {
                check(libc::posix_spawn_file_actions_addchdir_np(
                    &mut a.actions,
                    dir.as_ptr(),
                ))?;
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            check(libc::posix_spawnattr_setsigmask(&mut a.attr, &none))?;
            let mut pipe: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut pipe);
            libc::sigaddset(&mut pipe, libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigdefault(&mut a.attr, &pipe))?;
            check(libc::posix_spawnattr_setpgroup(&mut a.attr, 0))?;
            let flags = libc::POSIX_SPAWN_SETPGROUP
                | libc::POSIX_SPAWN_SETSIGMASK
                | libc::POSIX_SPAWN_SETSIGDEF;
            check(libc::posix_spawnattr_setflags(&mut a.attr, flags as _))?;
        }
        Ok(a)
    }
}

/// The first executable `name` in the colon-separated `path`, as execvp
/// would find it.
fn lookup(name: &str, path: &[u8]) -> Option<PathBuf> {
    path.split(|&b| b == b':').find_map(|dir| {
        let dir = if dir.is_empty() { b"." as &[u8] } else { dir };
        let candidate = Path::new(OsStr::from_bytes(dir)).join(name);
        let c = CString::new(candidate.as_os_str().as_bytes()).ok()?;
        // SAFETY: access(2) on a NUL-terminated path.
        let ok = unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 && candidate.is_file();
        ok.then_some(candidate)
    })
}

/// Spawns `s`; the child's pid (also its process group).
pub(super) fn spawn(s: &Spawn<'_>) -> io::Result<u32> {
    let program = s
        .argv
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let argv: Vec<CString> = s
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<io::Result<_>>()?;
    // The service's variables, later ones winning; then the daemon's that
    // they do not set.
    let mut keys: HashSet<&[u8]> = HashSet::with_capacity(s.env.len());
    let mut extra: Vec<CString> = Vec::with_capacity(s.env.len());
    let mut child_path: Option<&[u8]> = None;
    for (k, v) in s.env.iter().rev() {
        if keys.insert(k.as_bytes()) {
            if *k == "PATH" {
                child_path = Some(v.as_bytes());
            }
            extra.push(cstring(format!("{k}={v}").as_bytes())?);
        }
    }
    let mut envp: Vec<*mut libc::c_char> = Vec::with_capacity(base_env().len() + extra.len() + 1);
    for (k, kv) in base_env() {
        if !keys.contains(k.as_slice()) {
            envp.push(kv.as_ptr() as *mut _);
        }
    }
    envp.extend(extra.iter().map(|c| c.as_ptr() as *mut _));
    envp.push(std::ptr::null_mut());
    let mut argp: Vec<*mut libc::c_char> = argv.iter().map(|c| c.as_ptr() as *mut _).collect();
    argp.push(std::ptr::null_mut());
    // A program without a slash is looked up in PATH: posix_spawnp uses the
    // daemon's, so a service that sets its own is looked up here.
    let resolved = match child_path {
        Some(path) if !program.contains('/') => Some(
            lookup(program, path)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
                .and_then(|p| cstring(p.as_os_str().as_bytes()))?,
        ),
        _ => None,
    };
    let dir = s
        .dir
        .map(|d| cstring(d.as_os_str().as_bytes()))
        .transpose()?;
    let attrs = Attrs::new(s, dir.as_ref())?;
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is to a NUL-terminated string or a
    // null-terminated array of them, alive until the call returns; the
    // attributes were initialized above.
    let rc = unsafe {
        match &resolved {
            Some(path) => libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                &attrs.actions,
                &attrs.attr,
                argp.as_ptr(),
                envp.as_ptr(),
            ),
            None => libc::posix_spawnp(
                &mut pid,
                argv[0].as_ptr(),
                &attrs.actions,
                &attrs.attr,
                argp.as_ptr(),
                envp.as_ptr(),
            ),
        }
    };
    check(rc)?;
    Ok(pid as u32)
}
