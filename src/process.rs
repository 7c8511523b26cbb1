//! The only module that spawns, signals or reaps processes.
//!
//! Spawning uses std's `Command`, which takes the `posix_spawn` (vfork)
//! path when nothing has to run between fork and exec: the parent is
//! suspended only until the child has exec'd, with no page-table copy, so a
//! spawn costs about what a shell's does. Each child gets its own process
//! group (so a stop reaches `sh -c` grandchildren), stdout/stderr opened
//! append-only and handed over as its fds (the daemon never copies output
//! bytes), and the daemon's environment plus the service's. Only a service
//! with a `umask` takes the fork path, to set it in the child (the daemon's
//! own umask is never touched).
//!
//! Children must not outlive the daemon, even a SIGKILLed one. The group
//! guard (a small process forked before any thread exists) learns every
//! process group over a pipe and kills those left when the pipe closes; it
//! covers grandchildren, which `PR_SET_PDEATHSIG` (a per-child, per-thread
//! signal) never could. See [`start_group_guard`].
//!
//! A plain command (no shell syntax) is exec'd directly, split on whitespace,
//! so the pid, the signals received and the exit code are the program's own,
//! and "command not found" is a spawn error rather than an exit status 127.
//! Anything else runs under `/bin/sh -c`.
//!
//! Reaping is `waitpid(-1, WNOHANG)` driven by SIGCHLD ([`reap`]): it collects
//! every child, including those of `tm.exec` and orphaned grandchildren (the
//! daemon is a child subreaper), so no zombie survives.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::config::SpawnSpec;
use crate::supervisor::state::Exit;

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

/// `/dev/null`, opened once and duplicated per spawn (a dup is cheaper than
/// an open, and a crash loop spawns hundreds of times a second).
fn dev_null() -> Stdio {
    static NULL: std::sync::OnceLock<Option<File>> = std::sync::OnceLock::new();
    let file = NULL.get_or_init(|| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .ok()
    });
    match file.as_ref().and_then(|f| f.try_clone().ok()) {
        Some(f) => f.into(),
        None => Stdio::null(),
    }
}

fn open_output(path: &Option<PathBuf>, which: &str) -> Result<Stdio, String> {
    let Some(path) = path else {
        return Ok(dev_null());
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

/// Spawns one instance; returns its pid (= its process group) or why it
/// could not start.
pub fn spawn(req: &SpawnSpec, service: &str, instance: u32) -> Result<u32, String> {
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
        .env("TASKMASTER_SERVICE", service)
        .env("TASKMASTER_INSTANCE", instance.to_string())
        .stdin(dev_null())
        .stdout(open_output(&req.stdout, "stdout")?)
        .stderr(open_output(&req.stderr, "stderr")?)
        .process_group(0);
    if let Some(mask) = req.umask {
        // SAFETY: umask(2) is async-signal-safe; it runs in the forked child only.
        unsafe {
            command.pre_exec(move || {
                libc::umask(mask as libc::mode_t);
                Ok(())
            });
        }
    }
    match command.spawn() {
        // The Child handle is dropped without waiting: reaping is done for
        // every child at once by `reap`.
        Ok(child) => {
            mark_group(child.id(), true);
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
/// marks each live process group in a bitmap indexed by pgid, in memory it
/// shares with the guard, so keeping it current costs no system call and
/// never wakes the guard. The guard sleeps on a pipe the daemon never writes
/// to; EOF means the daemon is gone, however it died, and the guard kills
/// the groups still marked and exits.
struct Guard {
    /// Write end of the pipe (held, never written: its closing is the signal).
    _alive: std::os::fd::OwnedFd,
    /// The shared bitmap, one bit per possible pgid.
    bits: &'static [AtomicU64],
}

/// Linux never hands out pids at or above this (`PID_MAX_LIMIT` on 64-bit).
const PID_LIMIT: usize = 1 << 22;

static GUARD: std::sync::OnceLock<Guard> = std::sync::OnceLock::new();

/// Forks the group guard. Call once, first thing in `main`, while the
/// process is still single-threaded.
pub fn start_group_guard() -> io::Result<()> {
    let words = PID_LIMIT / 64;
    // SAFETY: a fresh anonymous shared mapping; untouched pages cost nothing.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            words * 8,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the mapping is page-aligned, zeroed, `words * 8` bytes long and
    // never unmapped; AtomicU64 has the layout of u64.
    let bits: &'static [AtomicU64] =
        unsafe { std::slice::from_raw_parts(map as *const AtomicU64, words) };
    let (read, write) = nix::unistd::pipe().map_err(io::Error::from)?;
    // SAFETY: called while single-threaded; the child only runs the simple
    // loop below and exits.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            drop(write);
            guard_loop(read, bits);
        }
        nix::unistd::ForkResult::Parent { .. } => {
            drop(read);
            // The daemon's children must not inherit the pipe.
            let _ = nix::fcntl::fcntl(
                &write,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            let _ = GUARD.set(Guard {
                _alive: write,
                bits,
            });
            Ok(())
        }
    }
}

fn guard_loop(read: std::os::fd::OwnedFd, bits: &[AtomicU64]) -> ! {
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
    let mut pipe = File::from(read);
    let mut buf = [0u8; 64];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    for (w, word) in bits.iter().enumerate() {
        let mut set = word.load(Ordering::Acquire);
        while set != 0 {
            let bit = set.trailing_zeros() as usize;
            set &= set - 1;
            // SAFETY: plain kill(2) on a process group.
            unsafe { libc::kill(-((w * 64 + bit) as i32), libc::SIGKILL) };
        }
    }
    // SAFETY: leave without running the parent's atexit handlers or destructors.
    unsafe { libc::_exit(0) }
}

fn mark_group(pgid: u32, live: bool) {
    let Some(guard) = GUARD.get() else { return };
    let (w, bit) = (pgid as usize / 64, 1u64 << (pgid % 64));
    if let Some(word) = guard.bits.get(w) {
        if live {
            word.fetch_or(bit, Ordering::Release);
        } else {
            word.fetch_and(!bit, Ordering::Release);
        }
    }
}

/// Tells the guard a process group has no members left.
pub fn forget_group(pgid: u32) {
    mark_group(pgid, false);
}

/// Marks every inherited descriptor above stderr close-on-exec, so children
/// get only their stdin, stdout and stderr (not, say, a pipe the shell that
/// started the daemon left open). Descriptors the daemon opens itself are
/// close-on-exec already.
pub fn close_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds.into_iter().filter(|fd| *fd > 2) {
        // SAFETY: fcntl on a descriptor number; a stale one just fails with EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
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
        .stdin(dev_null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, known to the guard like an instance's, so a
        // `cmd &` it leaves behind cannot outlive a SIGKILLed daemon either.
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            crate::log!("exec: cannot run {cmd:?}: {e}");
            return Err(e);
        }
    };
    mark_group(child.id(), true);
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
