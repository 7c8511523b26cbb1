//! Commands run for Lua: `tm.exec` (without waiting, output to the daemon
//! log) and the shell behind the `os.execute`/`io.popen` replacements
//! ([`Shell`], waited for by the Lua code that started it).
//!
//! Each gets `/bin/sh -c CMD`, a process group of its own, marked for the
//! guard at spawn under the reaper lock, and the environment hygiene of
//! services. Output Lua does not capture goes to the daemon log, one line
//! per line, from reader threads.
//!
//! Why not Lua's own `os.execute`/`io.popen`: glibc's `system()` ignores
//! SIGINT and SIGQUIT in the whole daemon while it waits (a signal sent
//! meanwhile is lost), and both `system()` and `pclose()` call
//! `waitpid(pid)`, which races the actor's `waitpid(-1)` and gets ECHILD when
//! the reaper was first. A [`Shell`] is spawned with its status kept for
//! [`wait_child`], and nothing here touches a signal disposition.
//!
//! Waiting is bounded by a deadline (the Lua time budget): when it passes,
//! the command's process group gets SIGKILL, so a hook blocked in a command
//! that never ends is cut off on time like one looping in Lua.
//!
//! A health probe's `cmd` ([`spawn_probe`]) is spawned here the same way,
//! but waited for asynchronously by `health`: this side stays synchronous
//! and hands over a pipe and a pidfd, which the runtime can poll.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{clean_env, dev_null, guard, signal_group, spawn_marked, wait_child, Exit};

/// The longest line logged as one; longer output is cut into pieces (a
/// command printing without newlines must not grow the daemon's memory).
const MAX_LINE: u64 = 16 * 1024;
/// How long a finished command's output may take to reach the log before
/// the Lua call returns anyway (a background `cmd &` can hold the pipe open).
const LOG_GRACE: Duration = Duration::from_millis(200);

/// Runs `cmd` under `/bin/sh -c` without waiting; its output goes to the
/// daemon log. The daemon's reaper collects its exit.
pub fn exec_logged(cmd: &str) -> io::Result<u32> {
    let mut command = Command::new("/bin/sh");
    clean_env(&mut command);
    command
        .arg("-c")
        .arg(cmd)
        .stdin(dev_null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, known to the guard like an instance's, so a
        // `cmd &` it leaves behind cannot outlive a SIGKILLed daemon either.
        .process_group(0);
    let mut child = match spawn_marked(&mut command, false) {
        Ok(c) => c,
        Err(e) => {
            crate::log!("exec: cannot run {cmd:?}: {e}");
            return Err(e);
        }
    };
    let pid = child.id();
    crate::log!("exec[{pid}]: {cmd}");
    if let Some(out) = child.stdout.take() {
        log_lines(out, "exec", pid, None);
    }
    if let Some(err) = child.stderr.take() {
        log_lines(err, "exec", pid, None);
    }
    // Not waited for here: the supervisor reaps every child on SIGCHLD.
    drop(child);
    Ok(pid)
}

/// Counts the logger threads of a command that reached end of file.
type Ended = Arc<(Mutex<usize>, Condvar)>;

/// Logs what `stream` carries, line by line as `TAG[PID]: line`, from a
/// thread of its own; `done` counts it when the stream ended. Returns
/// whether the thread runs.
fn log_lines<R: Read + Send + 'static>(
    stream: R,
    tag: &'static str,
    pid: u32,
    done: Option<Ended>,
) -> bool {
    std::thread::Builder::new()
        .name(format!("{tag}-output"))
        .spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if line.last() == Some(&b'\n') {
                            line.pop();
                        }
                        crate::log!("{tag}[{pid}]: {}", String::from_utf8_lossy(&line));
                    }
                }
            }
            if let Some(done) = done {
                let (count, cv) = &*done;
                if let Ok(mut n) = count.lock() {
                    *n += 1;
                }
                cv.notify_all();
            }
        })
        .is_ok()
}

/// Which end of a [`Shell`] the Lua code holds; the command's other output
/// goes to the daemon log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// `os.execute`: stdin is /dev/null, stdout and stderr are logged.
    Nothing,
    /// `io.popen(cmd, "r")`: Lua reads its stdout.
    Stdout,
    /// `io.popen(cmd, "w")`: Lua writes its stdin.
    Stdin,
}

/// A `/bin/sh -c` command the caller waits for (`os.execute`, `io.popen`).
/// Dropped without [`Shell::finish`] (a pipe Lua never closed), its pipes
/// close and a thread reaps it.
pub struct Shell {
    /// Its pid, which is also its process group.
    pid: u32,
    /// What its log lines are tagged with (`os.execute`, `io.popen`).
    tag: &'static str,
    /// Its stdout, for `Capture::Stdout` (non-blocking: reads poll with the deadline).
    stdout: Option<ChildStdout>,
    /// Its stdin, for `Capture::Stdin` (non-blocking, as stdout).
    stdin: Option<ChildStdin>,
    /// How many of its logger threads saw their stream end.
    logged: Ended,
    /// How many logger threads run.
    loggers: usize,
    /// Set once its exit was collected (or handed to a reaping thread).
    ended: bool,
}

impl Shell {
    /// Starts `cmd`; `tag` names its lines in the log (`os.execute[PID]: …`).
    pub fn spawn(cmd: &OsStr, tag: &'static str, capture: Capture) -> io::Result<Shell> {
        let mut command = Command::new("/bin/sh");
        clean_env(&mut command);
        command
            .arg("-c")
            .arg(cmd)
            .stdin(if capture == Capture::Stdin {
                Stdio::piped()
            } else {
                dev_null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = spawn_marked(&mut command, true)?;
        let pid = child.id();
        crate::log!("{tag}[{pid}]: {}", cmd.to_string_lossy());
        let logged = Ended::default();
        let mut shell = Shell {
            pid,
            tag,
            stdout: None,
            stdin: child.stdin.take(),
            logged: logged.clone(),
            loggers: 0,
            ended: false,
        };
        if let Some(out) = child.stdout.take() {
            if capture == Capture::Stdout {
                shell.stdout = Some(out);
            } else if log_lines(out, tag, pid, Some(logged.clone())) {
                shell.loggers += 1;
            }
        }
        if let Some(err) = child.stderr.take() {
            if log_lines(err, tag, pid, Some(logged)) {
                shell.loggers += 1;
            }
        }
        let fds = [
            shell.stdout.as_ref().map(AsRawFd::as_raw_fd),
            shell.stdin.as_ref().map(AsRawFd::as_raw_fd),
        ];
        for fd in fds.into_iter().flatten() {
            set_nonblocking(fd)?;
        }
        Ok(shell)
    }

    /// Its pid (= its process group).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reads some of its stdout (0 at end of file). An `io::ErrorKind::TimedOut`
    /// error means the deadline passed and the command was killed.
    pub fn read(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
        loop {
            let Some(out) = self.stdout.as_mut() else {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            };
            match out.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let fd = out.as_raw_fd();
                    self.ready(fd, libc::POLLIN, deadline)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    /// Writes all of `data` to its stdin, with the same deadline as [`Shell::read`].
    pub fn write_all(&mut self, mut data: &[u8], deadline: Option<Instant>) -> io::Result<()> {
        while !data.is_empty() {
            let Some(input) = self.stdin.as_mut() else {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            };
            match input.write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let fd = input.as_raw_fd();
                    self.ready(fd, libc::POLLOUT, deadline)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Closes its pipes (EOF on its stdin, SIGPIPE if it writes on), waits
    /// for it, and gives its output a moment to reach the log. Past the
    /// deadline its group is killed and the result is `TimedOut`.
    pub fn finish(&mut self, deadline: Option<Instant>) -> io::Result<Exit> {
        self.stdout = None;
        self.stdin = None;
        self.ended = true;
        let (exit, killed) = wait_bounded(self.pid, deadline)?;
        let grace = Instant::now() + LOG_GRACE;
        let until = deadline.map_or(grace, |d| d.min(grace));
        let (count, cv) = &*self.logged;
        if let Ok(mut n) = count.lock() {
            while *n < self.loggers {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match cv.wait_timeout(n, left) {
                    Ok((guard, _)) => n = guard,
                    Err(_) => break,
                }
            }
        }
        if killed {
            return Err(self.cut_off());
        }
        Ok(exit)
    }

    /// Waits until `fd` is ready for `events`, or kills the command when the
    /// deadline passes first.
    fn ready(
        &mut self,
        fd: RawFd,
        events: libc::c_short,
        deadline: Option<Instant>,
    ) -> io::Result<()> {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(self.cut_off());
                }
                // Rounded up: a 0 ms poll before the deadline would spin.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int
            }
        };
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd, owned by this frame, for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        // Ready, timed out or interrupted: the caller tries again, and a
        // deadline that has passed is noticed above.
        Ok(())
    }

    /// Kills the command's group for running past the deadline.
    fn cut_off(&mut self) -> io::Error {
        kill_group(self.pid);
        crate::log!(
            "{}[{}]: killed: the Lua code waiting for it ran out of time",
            self.tag,
            self.pid
        );
        io::Error::new(io::ErrorKind::TimedOut, "ran out of time")
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // Lua dropped the pipe without closing it: closing our ends lets the
        // command finish; its status is collected off the Lua thread, which
        // must not block in a garbage collection step.
        self.stdout = None;
        self.stdin = None;
        let pid = self.pid;
        let spawned = std::thread::Builder::new()
            .name("lua-reap".into())
            .spawn(move || {
                let _ = wait_child(pid);
            });
        if let Err(e) = spawned {
            crate::log!("warning: cannot reap command {pid} in the background: {e}");
        }
    }
}

/// Waits for `pid` (spawned `waited`); past `deadline` its group is killed.
/// Returns how it ended and whether it was killed for the deadline.
fn wait_bounded(pid: u32, deadline: Option<Instant>) -> io::Result<(Exit, bool)> {
    let Some(deadline) = deadline else {
        return wait_child(pid).map(|e| (e, false));
    };
    // A watchdog, since the wait itself (waitid) takes no timeout. It kills
    // only while the waiter has not seen the exit (both under one lock).
    let state = Arc::new((Mutex::new(false), Condvar::new()));
    let watch = state.clone();
    let watchdog = std::thread::Builder::new()
        .name("lua-wait".into())
        .spawn(move || {
            let (lock, cv) = &*watch;
            let Ok(mut done) = lock.lock() else {
                return false;
            };
            loop {
                if *done {
                    return false;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    kill_group(pid);
                    return true;
                }
                match cv.wait_timeout(done, left) {
                    Ok((guard, _)) => done = guard,
                    Err(_) => return false,
                }
            }
        });
    let watchdog = match watchdog {
        Ok(w) => w,
        Err(e) => {
            crate::log!("warning: cannot bound the wait for command {pid}: {e}");
            return wait_child(pid).map(|e| (e, false));
        }
    };
    let result = wait_child(pid);
    let (lock, cv) = &*state;
    if let Ok(mut done) = lock.lock() {
        *done = true;
    }
    cv.notify_all();
    let killed = watchdog.join().unwrap_or(false);
    result.map(|e| (e, killed))
}

/// SIGKILLs a command's group, if it is still one the daemon started.
fn kill_group(pgid: u32) {
    if guard::is_marked(pgid) {
        signal_group(pgid, Signal::SIGKILL);
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns (a pipe end just created).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A health probe's command, just spawned ([`spawn_probe`]).
pub struct ProbeChild {
    /// Its pid, which is also its process group; its status is kept for
    /// [`wait_child`].
    pub pid: u32,
    /// The read end of the one pipe its stdout and stderr share (blocking,
    /// close-on-exec).
    pub output: OwnedFd,
    /// A pidfd that becomes readable when it has exited (Linux ≥ 5.3), so
    /// the exit can be awaited without a thread; None where the kernel or a
    /// seccomp filter refuses `pidfd_open`.
    pub exited: Option<OwnedFd>,
}

/// Spawns a health probe's `cmd` (SPEC §11): `/bin/sh -c CMD` in a process
/// group of its own, marked for the guard, its status kept for
/// [`wait_child`]; the services' environment hygiene plus `env`; stdin
/// /dev/null; stdout and stderr into one pipe, so the output reads in the
/// order it was written, as with `2>&1`.
pub fn spawn_probe(
    cmd: &str,
    env: &BTreeMap<String, String>,
    workingdir: Option<&Path>,
    credentials: Option<&super::identity::Credentials>,
) -> io::Result<ProbeChild> {
    if let Some(dir) = workingdir {
        // posix_spawn would report a missing directory as ENOENT, which
        // reads like a missing /bin/sh.
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("working directory {} does not exist", dir.display()),
            ));
        }
    }
    let (output, write) = io::pipe()?;
    let mut command = Command::new("/bin/sh");
    clean_env(&mut command);
    command
        .arg("-c")
        .arg(cmd)
        .envs(env)
        .stdin(dev_null())
        .stdout(write.try_clone()?)
        .stderr(write)
        .process_group(0);
    if let Some(dir) = workingdir {
        command.current_dir(dir);
    }
    if let Some(c) = credentials {
        // The service's user, as SPEC §12 asks; resolved at load, so the
        // child only makes syscalls.
        command
            .env("HOME", &c.home)
            .env("USER", &c.name)
            .env("LOGNAME", &c.name)
            .envs(env);
        let setup = super::child_setup(None, Some(c), &[]);
        // SAFETY: `apply_in_child` only makes async-signal-safe syscalls.
        unsafe {
            command.pre_exec(move || super::identity::apply_in_child(&setup));
        }
    }
    let child = spawn_marked(&mut command, true)?;
    // The command holds our copies of the write end: dropped here, so the
    // pipe reaches end of file once the probe's processes are gone.
    drop(command);
    let pid = child.id();
    Ok(ProbeChild {
        pid,
        output: output.into(),
        exited: pidfd_open(pid),
    })
}

/// A pidfd for our child `pid`, opened right after its spawn: the reaper
/// runs on the actor's thread, which is the probe's too, so it cannot have
/// collected the child (and let its number be reused) in between. Should it
/// have anyway, this fails with ESRCH and the caller falls back to
/// [`wait_child`], which finds the recorded status.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new
    // descriptor (close-on-exec) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a descriptor just returned by the kernel, owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
