//! The `cmd` probe: `/bin/sh -c CMD` in a process group of its own, with
//! the instance's env and workingdir (spawned by `process::exec`); exit 0
//! passes.
//!
//! The probe's stdout and stderr share one pipe, read as it fills: the
//! first [`OUTPUT_MAX`] bytes are kept, the rest is read and dropped, so a
//! chatty probe never blocks on a full pipe.
//!
//! Its exit is awaited through a pidfd, which the runtime polls like a
//! socket: no thread per probe, and nothing blocks the runtime thread. When
//! the pidfd turns readable the shell is a zombie, so [`wait_child`] returns
//! at once (with the status the daemon's SIGCHLD reaper recorded, if that
//! was first). Where `pidfd_open` is refused (a kernel before 5.3, a seccomp
//! filter), `wait_child` runs on tokio's blocking pool instead.
//!
//! No probe process is left behind: once the shell has exited, whatever it
//! left in its group (`sleep 100 &`) is SIGKILLed; past the timeout the
//! whole group is, and the shell is still reaped. Killing before reaping
//! keeps the group number ours: a zombie leader holds it. A probe future
//! dropped midway ([`Reaping`]) kills the group and leaves the reaping to a
//! thread. Orphans the shell left are the daemon's (a child subreaper) and
//! its reaper collects them.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{describe, timed_out, Verdict, OUTPUT_MAX};
use crate::process::exec::{self, ProbeChild};
use crate::process::{self, wait_child, Exit};

/// How long a SIGKILLed probe may take to die before the verdict is given
/// anyway (a process in uninterruptible sleep); a thread reaps it later.
const KILL_GRACE: Duration = Duration::from_millis(250);

/// Runs `cmd` to its exit or the deadline.
pub(super) async fn run(
    cmd: &str,
    env: &BTreeMap<String, String>,
    workingdir: Option<&Path>,
    credentials: Option<&crate::process::identity::Credentials>,
    deadline: Instant,
    timeout: Duration,
) -> Verdict {
    let child = exec::spawn_probe(cmd, env, workingdir, credentials)
        .map_err(|e| format!("spawn error: {}", describe(&e)))?;
    follow(child, deadline, timeout).await
}

/// Reads a spawned probe's output and waits for its exit, or kills it at
/// the deadline.
pub(super) async fn follow(child: ProbeChild, deadline: Instant, timeout: Duration) -> Verdict {
    // From here on, however this future ends, the probe is killed and reaped.
    let mut reaping = Reaping {
        pid: child.pid,
        state: Reap::Pending,
    };
    let mut waiter = Waiter::new(child.exited, child.pid, &mut reaping);
    let output = pipe::Receiver::from_owned_fd(child.output);
    let mut head = Head::default();
    let mut buf = [0u8; 1024];
    let mut reading = true;
    let exited = match output {
        Ok(mut output) => {
            let exited = loop {
                tokio::select! {
                    // The deadline before the pipe: a probe writing without
                    // pause must not starve it.
                    biased;
                    exit = waiter.exited() => break Some(exit),
                    () = tokio::time::sleep_until(deadline) => break None,
                    n = output.read(&mut buf), if reading => match n {
                        Ok(n) if n > 0 => head.push(&buf[..n]),
                        // End of file (every writer is gone) or a broken pipe:
                        // only the exit is left to wait for.
                        _ => reading = false,
                    },
                }
            };
            if exited.is_some() {
                // Everything the shell wrote is in the pipe by now; what
                // its leftovers write after it is not waited for. Read
                // directly (the pipe is non-blocking), not through tokio's
                // try_read: that trusts readiness the reactor may not have
                // seen yet, and would drop the last words.
                while reading && !head.full() {
                    match nix::unistd::read(output.as_fd(), &mut buf) {
                        Ok(n) if n > 0 => head.push(&buf[..n]),
                        Err(nix::errno::Errno::EINTR) => {}
                        _ => reading = false,
                    }
                }
            }
            exited
        }
        // Cannot happen for a fresh pipe; the probe is still waited for.
        Err(e) => {
            head.push(format!("cannot read the probe's output: {}", describe(&e)).as_bytes());
            tokio::select! {
                exit = waiter.exited() => Some(exit),
                () = tokio::time::sleep_until(deadline) => None,
            }
        }
    };
    let text = head.text();
    match exited {
        Some(exit) => {
            let exit = Waiter::collect(exit, &mut reaping);
            match exit {
                Ok(Exit::Code(0)) => Ok(text),
                Ok(exit) if text.is_empty() => Err(exit.describe()),
                Ok(_) => Err(text),
                Err(e) => Err(format!("cannot wait for the probe: {}", describe(&e))),
            }
        }
        None => {
            process::signal_group(reaping.pid, Signal::SIGKILL);
            if let Ok(exit) = tokio::time::timeout(KILL_GRACE, waiter.exited()).await {
                let _ = Waiter::collect(exit, &mut reaping);
            }
            // Else `reaping` kills again and hands the wait to a thread.
            let why = timed_out(timeout);
            Err(if text.is_empty() {
                why
            } else {
                format!("{why}: {text}")
            })
        }
    }
}

/// The first [`OUTPUT_MAX`] bytes of a probe's output.
#[derive(Default)]
struct Head {
    /// Never longer than [`OUTPUT_MAX`].
    bytes: Vec<u8>,
}

impl Head {
    fn push(&mut self, data: &[u8]) {
        let room = OUTPUT_MAX.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..room.min(data.len())]);
    }

    fn full(&self) -> bool {
        self.bytes.len() >= OUTPUT_MAX
    }

    /// As text, without the surrounding blank space (the trailing newline);
    /// invalid UTF-8 (or a char cut at the end) shows as U+FFFD, and the
    /// caller cuts the result to [`OUTPUT_MAX`] bytes again.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).trim().to_string()
    }
}

/// Where the probe's status stands, for [`Reaping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reap {
    /// Nobody has collected it yet.
    Pending,
    /// A blocking-pool task waits for it (it runs on if the future is dropped).
    Delegated,
    /// Collected.
    Done,
}

/// Kills and reaps a probe whose future ends (or is dropped) before its
/// status was collected, so no probe is left running nor unreaped, and its
/// entry in the reaper's table is removed.
struct Reaping {
    /// The probe's pid, which is also its process group.
    pid: u32,
    /// Whether its status was collected.
    state: Reap,
}

impl Drop for Reaping {
    fn drop(&mut self) {
        if self.state == Reap::Done {
            return;
        }
        // Not reaped yet (or only just, by the pool task): the group number
        // is still the probe's.
        process::signal_group(self.pid, Signal::SIGKILL);
        if self.state == Reap::Delegated {
            return;
        }
        // The wait blocks until the killed shell is a zombie: not on the
        // runtime thread. Rare (a dropped probe, a process that would not
        // die), so a thread of its own is cheap enough, and it needs no
        // runtime (this may run while one shuts down).
        let pid = self.pid;
        let spawned = std::thread::Builder::new()
            .name("probe-reap".into())
            .spawn(move || {
                let _ = wait_child(pid);
            });
        if let Err(e) = spawned {
            crate::log!("warning: cannot reap health probe {pid}: {e}");
        }
    }
}

/// How the probe's exit is awaited.
enum Waiter {
    /// Readable once the shell has exited (it is then a zombie, or already
    /// reaped by the daemon's reaper, which recorded its status).
    Pidfd(AsyncFd<OwnedFd>),
    /// `wait_child` on the blocking pool, where there is no pidfd.
    Pool(JoinHandle<io::Result<Exit>>),
    /// The pool task's result was taken.
    Taken,
}

/// What [`Waiter::exited`] saw.
enum Exited {
    /// The shell is a zombie; its status is for [`Waiter::collect`] to get.
    Zombie,
    /// Its status, collected by the pool task.
    Collected(io::Result<Exit>),
}

impl Waiter {
    fn new(pidfd: Option<OwnedFd>, pid: u32, reaping: &mut Reaping) -> Waiter {
        if let Some(fd) = pidfd {
            // SAFETY: an OwnedFd owns its descriptor and always returns that
            // one; the AsyncFd holds it until it is dropped.
            match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
                Ok(fd) => return Waiter::Pidfd(fd),
                Err(e) => crate::log!("warning: cannot poll the pidfd of health probe {pid}: {e}"),
            }
        }
        reaping.state = Reap::Delegated;
        Waiter::Pool(tokio::task::spawn_blocking(move || wait_child(pid)))
    }

    /// Resolves once the shell has exited. Cancel-safe (used in `select!`).
    async fn exited(&mut self) -> Exited {
        match self {
            Waiter::Pidfd(fd) => match fd.readable().await {
                Ok(_) => Exited::Zombie,
                // Only when the runtime shuts down: treated as not exited,
                // which leaves the probe to `Reaping`.
                Err(e) => Exited::Collected(Err(e)),
            },
            Waiter::Pool(task) => {
                let result = task.await;
                *self = Waiter::Taken;
                Exited::Collected(result.unwrap_or_else(|e| Err(io::Error::other(e))))
            }
            Waiter::Taken => std::future::pending().await,
        }
    }

    /// Kills what the exited shell left in its group, then collects its
    /// status (not blocking: it is a zombie or reaped already).
    fn collect(exited: Exited, reaping: &mut Reaping) -> io::Result<Exit> {
        match exited {
            Exited::Zombie => {
                // Before reaping: the zombie keeps the group number ours.
                process::signal_group(reaping.pid, Signal::SIGKILL);
                let exit = wait_child(reaping.pid);
                reaping.state = Reap::Done;
                exit
            }
            Exited::Collected(Ok(exit)) => {
                reaping.state = Reap::Done;
                // Reaped already; a group with members left keeps its number.
                process::signal_group(reaping.pid, Signal::SIGKILL);
                Ok(exit)
            }
            // Not collected (a runtime shutting down): `Reaping` kills the
            // group and waits on a thread of its own.
            Exited::Collected(Err(e)) => {
                reaping.state = Reap::Pending;
                Err(e)
            }
        }
    }
}
