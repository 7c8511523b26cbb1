//! The actor's only way to touch processes, as a small trait, so the
//! actor's reload and waiter logic can be tested without processes (a fake
//! spawner under `tokio::time::pause()`, see `tests.rs`). [`Os`] is the
//! real one: `process.rs`.

use nix::sys::signal::Signal;

use crate::config::SpawnSpec;
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
}

/// Real processes.
pub struct Os;

impl Spawner for Os {
    fn spawn(&mut self, spec: &SpawnSpec, service: &str, index: u32) -> Result<u32, String> {
        process::spawn(spec, service, index)
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
}
