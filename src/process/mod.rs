//! The only module that spawns, signals or reaps processes.
//!
//! Spawning is `posix_spawn(3)` ([`posix`], the vfork path) when nothing
//! has to run between fork and exec: the parent is suspended only until the
//! child has exec'd, with no page-table copy, so a spawn costs about what a
//! shell's does; the daemon's environment is prepared once. Each child gets its own process
//! group (so a stop reaches `sh -c` grandchildren), stdout/stderr opened
//! append-only and handed over as its fds (the daemon never copies output
//! bytes), and the daemon's environment minus the daemon's own settings
//! ([`DAEMON_SETTINGS`]) plus the service's. Only a service with a `umask`,
//! a `user` or `rlimits` takes std's `Command` and its fork path, to set
//! them in the child (the daemon's own umask is never touched).
//!
//! Children must not outlive the daemon, even a SIGKILLed one: see
//! [`guard`]. Every spawn marks its process group for the guard while
//! holding the reaper lock, and every check that a group is empty (and
//! clears its mark) holds it too, so a child can never be reaped, nor its
//! group number reused, between its spawn and its mark.
//!
//! A command that is one simple command is exec'd without a shell ([`argv`]),
//! so the pid, the signals received and the exit code are the program's own.
//!
//! Reaping is `waitpid(-1, WNOHANG)` driven by SIGCHLD ([`reap`]): it collects
//! every child, including those of `tm.exec` and orphaned grandchildren (the
//! daemon is a child subreaper), so no zombie survives. A child somebody
//! waits for synchronously (Lua's `os.execute`, `io.popen`) is registered at
//! spawn: its status is kept for [`wait_child`] whichever side reaps it.

pub mod argv;
pub mod exec;
pub mod guard;
pub mod identity;
pub mod memory;
mod posix;

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;

use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use argv::Launch;
use std::collections::BTreeMap;
use std::path::Path;

pub use guard::start_group_guard;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Normal exit with a status code.
    Code(i32),
    /// Killed by a signal.
    Signal(Signal),
}

impl Exit {
    /// `exit status 1` / `killed by SIGKILL`.
    pub fn describe(self) -> String {
        match self {
            Exit::Code(c) => format!("exit status {c}"),
            Exit::Signal(s) => format!("killed by {}", s.as_str()),
        }
    }
}

/// The daemon's own settings (SPEC §12): never passed on to a child unless
/// the service's `env` sets them.
pub const DAEMON_SETTINGS: &[&str] = &[
    "CONFIG_PATH",
    "PORT",
    "TASKMASTER_LISTEN",
    "TASKMASTER_LOG",
    "TASKMASTER_TOKEN",
    "TASKMASTER_TOKEN_FILE",
];

/// Removes the daemon's settings from a child's environment (call before
/// adding the child's own variables, which may set them again).
pub fn clean_env(command: &mut Command) {
    for var in DAEMON_SETTINGS {
        command.env_remove(var);
    }
}

/// What the reaper shares with the threads that spawn (the hook host, a
/// config's `os.execute`): one lock orders spawns, marks and reaps.
#[derive(Default)]
struct Reaper {
    /// Children whose status a synchronous waiter wants: None until reaped.
    waited: HashMap<u32, Option<Exit>>,
    /// Process groups whose leader was reaped while members lived on: their
    /// guard marks stay until they are empty.
    lingering: BTreeSet<u32>,
}

static REAPER: Mutex<Option<Reaper>> = Mutex::new(None);

fn reaper() -> MutexGuard<'static, Option<Reaper>> {
    // A panic while holding the lock cannot leave the registry inconsistent
    // in a way that matters more than losing it: keep going.
    REAPER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns `command` (which must ask for a process group of its own) and
/// marks its group for the guard before anybody can reap it. With `waited`,
/// its exit status is kept for [`wait_child`].
pub(crate) fn spawn_marked(command: &mut Command, waited: bool) -> io::Result<Child> {
    let mut child = None;
    spawn_marked_with(
        || {
            let c = command.spawn()?;
            let pid = c.id();
            child = Some(c);
            Ok(pid)
        },
        waited,
    )?;
    child.ok_or_else(|| io::Error::other("spawn returned no child"))
}

/// [`spawn_marked`] for any way of spawning that returns the pid.
fn spawn_marked_with(spawn: impl FnOnce() -> io::Result<u32>, waited: bool) -> io::Result<u32> {
    let mut lock = reaper();
    let pid = with_original_nofile(spawn)?;
    guard::mark(pid, true);
    if waited {
        lock.get_or_insert_with(Reaper::default)
            .waited
            .insert(pid, None);
    }
    Ok(pid)
}

/// Waits for a child spawned with `waited` and returns how it ended, even
/// when the SIGCHLD reaper collected it first.
pub fn wait_child(pid: u32) -> io::Result<Exit> {
    let target = Pid::from_raw(pid as i32);
    loop {
        // Sleep until it is a zombie, without reaping (no lock held).
        match waitid(Id::Pid(target), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) | Err(Errno::ECHILD) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let mut lock = reaper();
        let reg = lock.get_or_insert_with(Reaper::default);
        if let Some(Some(exit)) = reg.waited.get(&pid).copied() {
            reg.waited.remove(&pid);
            return Ok(exit);
        }
        match waitpid(target, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => {
                reg.waited.remove(&pid);
                settle_group(reg, pid);
                return Ok(Exit::Code(code));
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                reg.waited.remove(&pid);
                settle_group(reg, pid);
                return Ok(Exit::Signal(sig));
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                reg.waited.remove(&pid);
                return Err(e.into());
            }
        }
    }
}

/// After a group leader was reaped: keep its mark while members live on,
/// else clear it. Called with the reaper lock held.
fn settle_group(reg: &mut Reaper, pgid: u32) {
    if group_alive(pgid) {
        reg.lingering.insert(pgid);
    } else {
        guard::mark(pgid, false);
    }
}

/// Clears the guard's mark of a group that turned out empty; returns whether
/// it still has members. Holding the lock, so no spawn can take the number
/// between the check and the clear.
pub fn forget_if_empty(pgid: u32) -> bool {
    let _lock = reaper();
    // An unmarked group was found empty already (marks are cleared only
    // then, under this lock), and an empty group cannot be joined: no
    // system call needed. Right after an exit this is the common case.
    if guard::active() && !guard::is_marked(pgid) {
        return false;
    }
    let alive = group_alive(pgid);
    if !alive {
        guard::mark(pgid, false);
    }
    alive
}

/// How many process groups the guard has marked (for tests and leak checks).
pub fn marked_groups() -> usize {
    let _lock = reaper();
    guard::count()
}

/// `/dev/null`, opened once and duplicated per spawn (a dup is cheaper than
/// an open, and a crash loop spawns hundreds of times a second).
pub(crate) fn dev_null() -> Stdio {
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

/// The NOFILE limit the daemon was started with, when it raised its own
/// (children get it back).
static ORIGINAL_NOFILE: std::sync::OnceLock<Option<libc::rlimit>> = std::sync::OnceLock::new();

/// Raises the daemon's soft RLIMIT_NOFILE to its hard limit (SPEC §18: a
/// daemon with thousands of pipes and sockets needs more than 1024), and
/// remembers the original so children start with it. Call once at start-up.
pub fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    let original = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            None
        } else {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            (libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0).then_some(limit)
        }
    };
    let _ = ORIGINAL_NOFILE.set(original);
}

/// Runs `spawn` with the daemon's soft NOFILE limit lowered to the one it
/// was started with, so the child inherits that (SPEC §18). Setting it in
/// the child would need `pre_exec`, which forces std off the `posix_spawn`
/// (vfork) path onto fork: a crash loop restarts half as fast that way.
/// Lowering the soft limit never closes anything; in the few microseconds
/// of the spawn only a new descriptor numbered above the original limit
/// could fail (the spawning paths hold the reaper lock meanwhile).
fn with_original_nofile<T>(spawn: impl FnOnce() -> T) -> T {
    let Some(Some(original)) = ORIGINAL_NOFILE.get() else {
        return spawn();
    };
    let raised = libc::rlimit {
        rlim_cur: original.rlim_max,
        rlim_max: original.rlim_max,
    };
    // SAFETY: setrlimit with valid structs.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, original) };
    let out = spawn();
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
    out
}

/// Spawns one instance with the given output streams (see
/// `output::capture`); returns its pid (= its process group) or why it
/// could not start.
/// What to run for one instance (the process side of a service's
/// `SpawnSpec`; `process` sits below `config` and does not know it).
pub struct Program<'a> {
    /// Command line (see [`argv`]).
    pub cmd: &'a str,
    /// Variables added to the daemon's (cleaned) environment.
    pub env: &'a BTreeMap<String, String>,
    /// Working directory, or the daemon's.
    pub workingdir: Option<&'a Path>,
    /// Child umask, or inherited.
    pub umask: Option<u32>,
    /// Variables from `env_file`s, under `env` (which wins).
    pub file_env: &'a BTreeMap<String, String>,
    /// Who to run as, or the daemon's user.
    pub credentials: Option<&'a identity::Credentials>,
    /// Limits to set (soft and hard), or inherited.
    pub limits: &'a [(identity::Resource, identity::Limit)],
}

pub fn spawn(
    req: &Program<'_>,
    service: &str,
    instance: u32,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
) -> Result<u32, String> {
    let launch = argv::launch(req.cmd);
    if let Some(dir) = req.workingdir {
        if !dir.is_dir() {
            return Err(format!(
                "spawn error: working directory {} does not exist",
                dir.display()
            ));
        }
    }
    identity::check_limits(req.limits)?;
    let setup = child_setup(req.umask, req.credentials, req.limits);
    if setup.is_empty() {
        // Nothing to run between fork and exec: posix_spawn directly.
        let argv: Vec<String> = match launch {
            Launch::Direct(argv) => argv,
            Launch::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script],
        };
        let index = instance.to_string();
        let env: Vec<(&str, &str)> = req
            .file_env
            .iter()
            .chain(req.env)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain([
                ("TASKMASTER_SERVICE", service),
                ("TASKMASTER_INSTANCE", &index),
            ])
            .collect();
        let s = posix::Spawn {
            argv: &argv,
            env: &env,
            dir: req.workingdir,
            stdout: stdout.as_ref().map(AsFd::as_fd),
            stderr: stderr.as_ref().map(AsFd::as_fd),
        };
        return spawn_marked_with(|| posix::spawn(&s), false).map_err(|e| spawn_error(req.cmd, &e));
    }
    let stdio = |fd: Option<OwnedFd>| fd.map_or_else(dev_null, Stdio::from);
    let mut command = match launch {
        Launch::Direct(argv) => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
        Launch::Shell(script) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(script);
            c
        }
    };
    clean_env(&mut command);
    if let Some(dir) = req.workingdir {
        command.current_dir(dir);
    }
    if let Some(c) = req.credentials {
        // Before the files and `env`, which may set them otherwise.
        command
            .env("HOME", &c.home)
            .env("USER", &c.name)
            .env("LOGNAME", &c.name);
    }
    command
        .envs(req.file_env)
        .envs(req.env)
        .env("TASKMASTER_SERVICE", service)
        .env("TASKMASTER_INSTANCE", instance.to_string())
        .stdin(dev_null())
        .stdout(stdio(stdout))
        .stderr(stdio(stderr))
        .process_group(0);
    // Only here the fork path: the closure owns everything it touches,
    // prepared here in the parent.
    // SAFETY: `apply_in_child` only makes async-signal-safe syscalls.
    unsafe {
        command.pre_exec(move || identity::apply_in_child(&setup));
    }
    match spawn_marked(&mut command, false) {
        // The Child handle is dropped without waiting: reaping is done for
        // every child at once by `reap`.
        Ok(child) => Ok(child.id()),
        // EPERM (not EACCES, which is the exec's) can only come from the
        // setup: name what was asked, errno alone would not say.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let mut what: Vec<String> = req
                .limits
                .iter()
                .map(|(r, _)| format!("rlimits.{}", r.name()))
                .collect();
            if let Some(c) = req.credentials {
                what.push(format!("user {}", c.name));
            }
            Err(format!("spawn error: cannot set {}: {e}", what.join(", ")))
        }
        Err(e) => Err(spawn_error(req.cmd, &e)),
    }
}

/// What a child must apply before exec, as plain values.
pub(crate) fn child_setup(
    umask: Option<u32>,
    credentials: Option<&identity::Credentials>,
    limits: &[(identity::Resource, identity::Limit)],
) -> identity::ChildSetup {
    identity::ChildSetup {
        umask,
        limits: limits.to_vec(),
        ids: credentials.map(|c| (c.uid, c.gid, c.groups.clone())),
    }
}

fn spawn_error(cmd: &str, e: &io::Error) -> String {
    let program = match argv::launch(cmd) {
        Launch::Direct(argv) => argv.into_iter().next().unwrap_or_default(),
        Launch::Shell(_) => "/bin/sh".to_string(),
    };
    match e.kind() {
        io::ErrorKind::NotFound => format!("spawn error: command not found: {program}"),
        io::ErrorKind::PermissionDenied => format!("spawn error: permission denied: {program}"),
        _ => format!("spawn error: {program}: {e}"),
    }
}

/// Sends `sig` to a process group. Returns false when the group is gone.
/// Never signals pgid 0 or 1 or the daemon's own group: those numbers can
/// only come from a bug, and `kill(-1)` would reach every process.
pub fn signal_group(pgid: u32, sig: Signal) -> bool {
    if !signallable(pgid) {
        crate::log!("warning: refusing to signal process group {pgid}");
        return false;
    }
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

/// Whether `pgid` may be signalled at all (see [`signal_group`]).
fn signallable(pgid: u32) -> bool {
    // The daemon never changes its own process group: asked once.
    static OWN: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    let own = *OWN.get_or_init(|| nix::unistd::getpgrp().as_raw());
    pgid > 1 && pgid <= i32::MAX as u32 && pgid as i32 != own
}

/// Whether a process group still has members.
pub fn group_alive(pgid: u32) -> bool {
    signallable(pgid) && !matches!(killpg(Pid::from_raw(pgid as i32), None), Err(Errno::ESRCH))
}

/// Reaps every exited child without blocking. Children registered by a
/// synchronous waiter keep their status for it (and are listed too, as
/// strangers to the supervisor); groups whose leader is reaped keep their
/// guard mark while members live on, and lose it once empty.
pub fn reap() -> Vec<(u32, Exit)> {
    let mut out = Vec::new();
    let mut lock = reaper();
    let reg = lock.get_or_insert_with(Reaper::default);
    loop {
        let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw() as u32, Exit::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw() as u32, Exit::Signal(sig)),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                crate::log!("warning: waitpid failed: {e}");
                break;
            }
        };
        if let Some(slot) = reg.waited.get_mut(&pid) {
            *slot = Some(exit);
        }
        if guard::is_marked(pid) {
            settle_group(reg, pid);
        }
        out.push((pid, exit));
    }
    if !out.is_empty() && !reg.lingering.is_empty() {
        reg.lingering.retain(|&g| {
            let alive = group_alive(g);
            if !alive {
                guard::mark(g, false);
            }
            alive
        });
    }
    out
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
