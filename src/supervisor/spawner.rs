//! The actor's only way to touch processes, as a small trait, so the
//! actor's reload and waiter logic can be tested without processes (a fake
//! spawner under `tokio::time::pause()`, see `tests.rs`). [`Os`] is the
//! real one: `process/` for processes, `output/` for their streams.

use std::collections::{BTreeMap, BTreeSet};

use nix::sys::signal::Signal;

use crate::config::SpawnSpec;
use tokio::sync::mpsc;

use crate::output::Output;
use crate::process::{self, Exit};

/// Spawns, signals and reaps on the actor's behalf.
pub trait Spawner: Send {
    /// Spawns one instance; its pid is also its process group.
    fn spawn(&mut self, spec: &SpawnSpec, service: &str, index: u32) -> Result<u32, String>;
    /// Sends `sig` to a process group.
    fn signal(&mut self, pgid: u32, sig: Signal);
    /// Whether a process group still has members (forgetting it if not).
    fn group_alive(&mut self, pgid: u32) -> bool;
    /// Collects every exited child.
    fn reap(&mut self) -> Vec<(u32, Exit)>;
    /// Makes sure what `pid` wrote before it exited is in its log files.
    /// True when that takes a moment: `pid` is then sent on the flushed
    /// channel once done, and the exit must wait for it.
    fn flush(&mut self, pid: u32) -> bool;
    /// Resident bytes per process group (SPEC §12 `max_memory`); groups
    /// without a readable process are absent. A fake has none.
    fn group_rss(&mut self, _pgids: &BTreeSet<u32>) -> BTreeMap<u32, u64> {
        BTreeMap::new()
    }
}

/// Real processes, their output through the daemon's writers.
pub struct Os {
    /// The writers children's pipes are attached to.
    output: Output,
    /// Where finished flushes are announced (the actor's loop listens).
    flushed: mpsc::UnboundedSender<u32>,
}

impl Os {
    /// Spawns through `process/`, output through `output`.
    pub fn new(output: Output, flushed: mpsc::UnboundedSender<u32>) -> Os {
        Os { output, flushed }
    }
}

impl Spawner for Os {
    fn spawn(&mut self, spec: &SpawnSpec, service: &str, index: u32) -> Result<u32, String> {
        // Placeholders ({instance}, {service}, {name}) made concrete.
        let spec = &spec.for_instance(service, index);
        let capture = self.output.capture(spec)?;
        let program = process::Program {
            cmd: &spec.cmd,
            env: &spec.env,
            workingdir: spec.workingdir.as_deref(),
            umask: spec.umask,
            file_env: &spec.file_env,
            credentials: spec.credentials.as_ref(),
            limits: &spec.rlimits,
        };
        let pid = process::spawn(&program, service, index, capture.stdout, capture.stderr)?;
        self.output.attach(pid, capture.pipes);
        Ok(pid)
    }
    fn flush(&mut self, pid: u32) -> bool {
        let tx = self.flushed.clone();
        self.output.flush(pid, move || {
            let _ = tx.send(pid);
        })
    }
    fn signal(&mut self, pgid: u32, sig: Signal) {
        process::signal_group(pgid, sig);
    }
    fn group_alive(&mut self, pgid: u32) -> bool {
        process::forget_if_empty(pgid)
    }
    fn reap(&mut self) -> Vec<(u32, Exit)> {
        process::reap()
    }
    fn group_rss(&mut self, pgids: &BTreeSet<u32>) -> BTreeMap<u32, u64> {
        process::memory::group_rss(pgids)
    }
}
