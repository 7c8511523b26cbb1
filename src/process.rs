//! The only module that spawns, signals or reaps processes.
//!
//! Spawning happens on one long-lived thread ([`Spawner`]) because
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not
//! the process: a child forked from a short-lived runtime worker would be
//! killed when that worker retires. Each child gets its own process group
//! (so a stop reaches `sh -c` grandchildren), its umask set after the fork
//! (the daemon's own umask is never touched), stdout/stderr opened append-only
//! and handed over as its fds (the daemon never copies output bytes), and
//! SIGKILL as its parent-death signal.
//!
//! A plain command (no shell syntax) is exec'd directly, split on whitespace,
//! so the pid, the signals received and the exit code are the program's own,
//! and "command not found" is a spawn error rather than an exit status 127.
//! Anything else runs under `/bin/sh -c`.
//!
//! Reaping is `waitpid(-1, WNOHANG)` driven by SIGCHLD ([`reap`]): it collects
//! every child, including those of `tm.exec` and orphaned grandchildren (the
//! daemon is a child subreaper), so no zombie survives.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::supervisor::state::Exit;

/// Everything needed to start one instance.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    /// The command line.
    pub cmd: String,
    /// Extra environment, on top of the daemon's.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub workingdir: Option<PathBuf>,
    /// Child umask.
    pub umask: Option<u32>,
    /// stdout file, or discarded.
    pub stdout: Option<PathBuf>,
    /// stderr file, or discarded.
    pub stderr: Option<PathBuf>,
}

type Job = (SpawnRequest, oneshot::Sender<Result<u32, String>>);

/// Handle to the spawning thread.
#[derive(Clone)]
pub struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    /// Starts the spawning thread; it lives as long as the process.
    pub fn start() -> io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                // Never returns while a Spawner handle exists; when the daemon
                // exits, the thread dies with it and PDEATHSIG fires.
                for (req, reply) in rx {
                    let _ = reply.send(spawn_now(&req));
                }
            })?;
        Ok(Spawner { jobs: tx })
    }

    /// Spawns a process; returns its pid or why it could not start.
    pub async fn spawn(&self, req: SpawnRequest) -> Result<u32, String> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send((req, tx))
            .map_err(|_| "spawner thread is gone".to_string())?;
        rx.await.map_err(|_| "spawner thread is gone".to_string())?
    }
}

/// Characters that need a shell.
const SHELL_SYNTAX: &[char] = &[
    '|', '&', ';', '<', '>', '(', ')', '$', '`', '\\', '"', '\'', '*', '?', '[', ']', '#', '~',
    '=', '%', '{', '}', '!', '\n',
];

/// Shell words that are not programs (keywords and special builtins).
const SHELL_WORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "case", "esac", "for", "while", "until", "do", "done",
    "in", "function", "select", "time", "exit", "cd", "export", "set", "unset", ".", ":", "eval",
    "exec", "readonly", "return", "shift", "trap", "times", "wait", "ulimit", "umask", "alias",
    "unalias", "read", "source", "local", "break", "continue", "type", "command", "hash", "jobs",
    "fg", "bg", "kill", "getopts", "builtin", "let", "declare", "typeset",
];

/// The argv of a command that needs no shell, or None.
pub fn plain_argv(cmd: &str) -> Option<Vec<&str>> {
    if cmd.contains(SHELL_SYNTAX) {
        return None;
    }
    let argv: Vec<&str> = cmd.split_whitespace().collect();
    match argv.first() {
        Some(first) if !SHELL_WORDS.contains(first) => Some(argv),
        _ => None,
    }
}

fn open_output(path: &Option<PathBuf>, which: &str) -> Result<Stdio, String> {
    let Some(path) = path else {
        return Ok(Stdio::null());
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create folder {} for {which}: {e}", dir.display()))?;
    }
    let file: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {which} file {}: {e}", path.display()))?;
    Ok(file.into())
}

fn spawn_now(req: &SpawnRequest) -> Result<u32, String> {
    let mut command = match plain_argv(&req.cmd) {
        Some(argv) => {
            let mut c = Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        }
        None => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(&req.cmd);
            c
        }
    };
    if let Some(dir) = &req.workingdir {
        if !dir.is_dir() {
            return Err(format!(
                "spawn error: working directory {} does not exist",
                dir.display()
            ));
        }
        command.current_dir(dir);
    }
    command
        .envs(&req.env)
        .stdin(Stdio::null())
        .stdout(open_output(&req.stdout, "stdout")?)
        .stderr(open_output(&req.stderr, "stderr")?)
        .process_group(0);
    let umask = req.umask;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (umask, prctl, getppid, _exit)
    // run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if let Some(mask) = umask {
                libc::umask(mask as libc::mode_t);
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The daemon died between fork and prctl: do not outlive it.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    match command.spawn() {
        // The Child handle is dropped without waiting: reaping is done for
        // every child at once by `reap`.
        Ok(child) => {
            tell_guard(b'+', child.id());
            Ok(child.id())
        }
        Err(e) => Err(spawn_error(&req.cmd, &e)),
    }
}

fn spawn_error(cmd: &str, e: &io::Error) -> String {
    let program = plain_argv(cmd).map(|a| a[0]).unwrap_or("/bin/sh");
    match e.kind() {
        io::ErrorKind::NotFound => format!("spawn error: command not found: {program}"),
        io::ErrorKind::PermissionDenied => format!("spawn error: permission denied: {program}"),
        _ => format!("spawn error: {program}: {e}"),
    }
}

/// Sends `sig` to a process group. Returns false when the group is gone.
pub fn signal_group(pgid: u32, sig: Signal) -> bool {
    match killpg(Pid::from_raw(pgid as i32), sig) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(e) => {
            crate::log!(
                "warning: cannot send {} to process group {pgid}: {e}",
                sig.as_str()
            );
            true
        }
    }
}

/// Whether a process group still has members.
pub fn group_alive(pgid: u32) -> bool {
    !matches!(killpg(Pid::from_raw(pgid as i32), None), Err(Errno::ESRCH))
}

/// Reaps every exited child without blocking.
pub fn reap() -> Vec<(u32, Exit)> {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => out.push((pid.as_raw() as u32, Exit::Code(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                out.push((pid.as_raw() as u32, Exit::Signal(sig)))
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                crate::log!("warning: waitpid failed: {e}");
                break;
            }
        }
    }
    out
}

/// The group guard: a small process forked at start-up, before any thread
/// exists, that outlives the daemon just long enough to SIGKILL every
/// process group the daemon left behind.
///
/// `PR_SET_PDEATHSIG` only reaches the daemon's direct children; a grandchild
/// (`sh -c 'worker & worker'`) would survive a SIGKILLed daemon. The daemon
/// tells the guard, over a pipe, each group it creates and each group that
/// has emptied; when the pipe reaches EOF (the daemon is gone, however it
/// died) the guard kills the groups still listed and exits.
struct Guard {
    /// Write end of the pipe to the guard.
    fd: std::os::fd::OwnedFd,
}

static GUARD: std::sync::OnceLock<Guard> = std::sync::OnceLock::new();

/// Forks the group guard. Call once, first thing in `main`, while the
/// process is still single-threaded.
pub fn start_group_guard() -> io::Result<()> {
    let (read, write) = nix::unistd::pipe().map_err(io::Error::from)?;
    // SAFETY: called while single-threaded; the child only runs the simple
    // loop below and exits.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            drop(write);
            guard_loop(read);
        }
        nix::unistd::ForkResult::Parent { .. } => {
            drop(read);
            let fd = write;
            // The daemon's children must not inherit the pipe.
            let _ = nix::fcntl::fcntl(
                &fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            let _ = GUARD.set(Guard { fd });
            Ok(())
        }
    }
}

fn guard_loop(read: std::os::fd::OwnedFd) -> ! {
    use std::io::Read;
    // SAFETY: plain libc calls in a fresh single-threaded child.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            c"tm-group-guard".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        // Ctrl-C in a terminal reaches the whole foreground group: the guard
        // must outlive the daemon's graceful shutdown, not die before it.
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    let mut groups = std::collections::BTreeSet::new();
    let mut pipe = File::from(read);
    let mut buf = [0u8; 5 * 512];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                let whole = pending.len() / 5 * 5;
                for rec in pending[..whole].chunks_exact(5) {
                    let pgid = i32::from_le_bytes([rec[1], rec[2], rec[3], rec[4]]);
                    if rec[0] == b'+' {
                        groups.insert(pgid);
                    } else {
                        groups.remove(&pgid);
                    }
                }
                pending.drain(..whole);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    for pgid in groups {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    // SAFETY: leave without running the parent's atexit handlers or destructors.
    unsafe { libc::_exit(0) }
}

fn tell_guard(op: u8, pgid: u32) {
    let Some(guard) = GUARD.get() else { return };
    let mut rec = [op, 0, 0, 0, 0];
    rec[1..].copy_from_slice(&(pgid as i32).to_le_bytes());
    // One write of 5 bytes is atomic on a pipe; a failure means the guard is
    // gone, which only loses the SIGKILL-cleanup safety net.
    let _ = nix::unistd::write(&guard.fd, &rec);
}

/// Tells the guard a process group has no members left.
pub fn forget_group(pgid: u32) {
    tell_guard(b'-', pgid);
}

/// Makes orphaned descendants of our children ours, so they are reaped
/// (no zombies) and a stop can tell when a process group is empty.
pub fn become_subreaper() {
    // SAFETY: plain prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        crate::log!(
            "warning: cannot become a child subreaper: {}",
            io::Error::last_os_error()
        );
    }
}

/// Runs `cmd` under `/bin/sh -c` without waiting; its output goes to the
/// daemon log. The daemon's reaper collects its exit.
pub fn exec_logged(cmd: &str) -> std::io::Result<u32> {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl only, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            crate::log!("exec: cannot run {cmd:?}: {e}");
            return Err(e);
        }
    };
    let pid = child.id();
    crate::log!("exec[{pid}]: {cmd}");
    let streams: Vec<Box<dyn std::io::Read + Send>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for stream in streams {
        let _ = std::thread::Builder::new()
            .name("exec-output".into())
            .spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    crate::log!("exec[{pid}]: {line}");
                }
            });
    }
    // Not waited for here: the supervisor reaps every child on SIGCHLD.
    drop(child);
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_commands_skip_the_shell() {
        assert_eq!(plain_argv("sleep 10"), Some(vec!["sleep", "10"]));
        assert_eq!(
            plain_argv("  /bin/echo  a b "),
            Some(vec!["/bin/echo", "a", "b"])
        );
        for shelly in [
            "sleep 1 & sleep 2",
            "echo $HOME",
            "exit 3",
            "FOO=1 env",
            "echo 'a b'",
            "ls *.rs",
            "cd /tmp",
            "a | b",
            "",
        ] {
            assert_eq!(plain_argv(shelly), None, "{shelly}");
        }
    }
}
