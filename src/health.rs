//! Health probes (SPEC §11), run off the actor: `cmd`, `http`, `tcp`.
//! (Interface stub; the probe runner lands with its own commit.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Probe;

/// One probe to run.
pub struct ProbeRun {
    /// What to check (strings expanded for the instance).
    pub probe: Probe,
    /// A probe that takes longer fails.
    pub timeout: Duration,
    /// The instance's environment.
    pub env: BTreeMap<String, String>,
    /// The instance's working directory.
    pub workingdir: Option<PathBuf>,
}

/// What a probe found.
pub struct ProbeResult {
    /// Passed.
    pub ok: bool,
    /// Its output or error, at most 200 bytes.
    pub output: String,
}

/// Runs one probe.
pub async fn run(probe: ProbeRun) -> ProbeResult {
    let _ = probe;
    ProbeResult {
        ok: false,
        output: "probes are not available yet".into(),
    }
}
