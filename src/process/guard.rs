//! The group guard: a small process forked at start-up, before any thread
//! exists, that outlives the daemon just long enough to SIGKILL every
//! process group the daemon left behind.
//!
//! `PR_SET_PDEATHSIG` only reaches the daemon's direct children; a grandchild
//! (`sh -c 'worker & worker'`) would survive a SIGKILLed daemon. The daemon
//! marks each live process group in a bitmap indexed by pgid, in memory it
//! shares with the guard, so keeping it current costs no system call and
//! never wakes the guard. The guard sleeps on a pipe the daemon never writes
//! to; EOF means the daemon is gone, however it died, and the guard kills
//! the groups still marked and exits. It runs in a session of its own and
//! never signals pgid 0 or 1 or its own group. Marks are set and cleared by
//! `process/mod.rs` under its reaper lock only.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// The guard's handles, held by the daemon.
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
        // A session (and group) of its own: no terminal signal reaches it,
        // and no group it kills can be its own.
        libc::setsid();
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
    // SAFETY: plain getpgrp(2).
    let own = unsafe { libc::getpgrp() };
    for (w, word) in bits.iter().enumerate() {
        let mut set = word.load(Ordering::Acquire);
        while set != 0 {
            let bit = set.trailing_zeros() as usize;
            set &= set - 1;
            let pgid = (w * 64 + bit) as i32;
            if pgid > 1 && pgid != own {
                // SAFETY: plain kill(2) on a process group.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
        }
    }
    // SAFETY: leave without running the parent's atexit handlers or destructors.
    unsafe { libc::_exit(0) }
}

/// Sets or clears the mark of a process group.
pub(super) fn mark(pgid: u32, live: bool) {
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

/// Whether the guard runs (marks are kept at all).
pub(super) fn active() -> bool {
    GUARD.get().is_some()
}

/// Whether a process group is marked.
pub(super) fn is_marked(pgid: u32) -> bool {
    let Some(guard) = GUARD.get() else {
        return false;
    };
    let (w, bit) = (pgid as usize / 64, 1u64 << (pgid % 64));
    guard
        .bits
        .get(w)
        .is_some_and(|word| word.load(Ordering::Acquire) & bit != 0)
}

/// How many groups are marked (a full scan: tests and leak checks only).
pub(super) fn count() -> usize {
    GUARD.get().map_or(0, |g| {
        g.bits
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
            .sum()
    })
}
