//! Health probes (SPEC §11), run off the actor: `cmd`, `http`, `tcp`.
//!
//! [`run`] is one probe, a future the actor drives on its own (single)
//! runtime thread, so nothing in it may block: sockets and the `cmd`'s pipe
//! are non-blocking and polled by the runtime, and a `cmd`'s exit is awaited
//! through a pidfd ([`cmd`]). Every probe is bounded by its `timeout` from
//! start to verdict; a `cmd` that outlives it has its process group killed
//! and is still reaped.
//!
//! Cost (SPEC §16: 200 instances probing over `http` every second stay
//! under 5 % of a core): an `http` or `tcp` probe is one non-blocking
//! connect, one write and one bounded read on the runtime thread, with no
//! thread, no DNS for an IP literal, and a handful of small allocations.
//! Only the status line of an HTTP response is read, never the body.
//!
//! What a probe says ([`ProbeResult::output`]) is for the log line and the
//! `health` event: the command's output, the HTTP status, or why it failed,
//! at most [`OUTPUT_MAX`] bytes.

mod cmd;
mod http;
mod net;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Probe;

/// The most of a probe's output kept (SPEC §11: the log shows the first 200 bytes).
pub const OUTPUT_MAX: usize = 200;

/// One probe to run, with everything expanded for its instance.
#[derive(Debug, Clone)]
pub struct ProbeRun {
    /// What to check (placeholders already expanded).
    pub probe: Probe,
    /// A probe still running after this fails (a `cmd`'s group is killed).
    pub timeout: Duration,
    /// A `cmd`'s environment on top of the daemon's (cleaned): the
    /// instance's service env plus TASKMASTER_SERVICE/TASKMASTER_INSTANCE.
    pub env: BTreeMap<String, String>,
    /// A `cmd`'s working directory, or the daemon's.
    pub workingdir: Option<PathBuf>,
    /// A `cmd` runs as the service's user (SPEC §12), or the daemon's.
    pub credentials: Option<crate::process::identity::Credentials>,
}

/// A probe's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Whether it passed.
    pub ok: bool,
    /// The command's output, the HTTP status line or why the probe failed:
    /// at most [`OUTPUT_MAX`] bytes, cut at a char boundary.
    pub output: String,
}

/// Runs one probe to its verdict, within `probe.timeout`. Dropping the
/// future early is safe: a `cmd` still running is killed and reaped.
pub async fn run(probe: ProbeRun) -> ProbeResult {
    let deadline = Instant::now() + probe.timeout;
    let verdict = match &probe.probe {
        Probe::Cmd(cmd) => {
            cmd::run(
                cmd,
                &probe.env,
                probe.workingdir.as_deref(),
                probe.credentials.as_ref(),
                deadline,
                probe.timeout,
            )
            .await
        }
        Probe::Http(url) => bounded(http::get(url), deadline, probe.timeout).await,
        Probe::Tcp(address) => bounded(net::probe(address), deadline, probe.timeout).await,
    };
    let (ok, output) = match verdict {
        Ok(text) => (true, text),
        Err(text) => (false, text),
    };
    ProbeResult {
        ok,
        output: clip(output),
    }
}

/// A probe's outcome before clipping: `Ok` passes, `Err` fails, each with
/// its text.
type Verdict = Result<String, String>;

/// Runs a socket probe with the deadline over all of it (resolve, connect,
/// send, read).
async fn bounded(
    probe: impl std::future::Future<Output = Verdict>,
    deadline: Instant,
    timeout: Duration,
) -> Verdict {
    tokio::time::timeout_at(deadline, probe)
        .await
        .unwrap_or_else(|_| Err(timed_out(timeout)))
}

/// `timed out after 1s` (`1.5s`, `250ms`: how Duration prints).
fn timed_out(timeout: Duration) -> String {
    format!("timed out after {timeout:?}")
}

/// An IO error as a probe's output: `connection refused`, without std's
/// `(os error 111)` tail.
fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("{:?}", e.kind()),
    }
}

/// Cuts `text` to at most [`OUTPUT_MAX`] bytes, at a char boundary.
fn clip(mut text: String) -> String {
    if text.len() > OUTPUT_MAX {
        let mut end = OUTPUT_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}
