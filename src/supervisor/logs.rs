//! The actor's share of `tail`/`logs`/`clear` (which files the named
//! instances write; reading them happens off the actor) and `signal`.

use std::path::Path;

use nix::sys::signal::Signal;

use crate::config::SpawnSpec;
use crate::output::{LogTarget, Stream};
use crate::protocol::ActionResult;

use super::state::State;
use super::{CommandError, Inst, Key, Supervisor};

/// Where `stream` of an instance of `spec` is logged.
pub(super) fn target(name: &str, spec: &SpawnSpec, stream: Stream) -> LogTarget {
    let (path, option) = match stream {
        Stream::Stdout => (&spec.stdout, "stdout"),
        Stream::Stderr if spec.redirect_stderr => {
            return LogTarget {
                name: name.into(),
                stream,
                path: None,
                missing: format!(
                    "{name} has no stderr file (redirect_stderr = true sends it to stdout)"
                ),
            }
        }
        Stream::Stderr => (&spec.stderr, "stderr"),
    };
    let missing = match path {
        None => format!("{name} has no {option} file ({option} = nil)"),
        Some(p) if !is_regular_or_absent(p) => format!(
            "{name} has no {option} file ({option} = {} is not a regular file)",
            p.display()
        ),
        Some(_) => String::new(),
    };
    LogTarget {
        name: name.into(),
        stream,
        path: path.clone().filter(|_| missing.is_empty()),
        missing,
    }
}

/// A log path is a file when it is one, or when nothing is there yet (the
/// first spawn creates it).
fn is_regular_or_absent(p: &Path) -> bool {
    match std::fs::metadata(p) {
        Ok(m) => m.is_file(),
        Err(_) => true,
    }
}

/// Longest part of a child's last line put into a status reason.
const REASON_LINE: usize = 200;

/// What a failed start said last: the last line of its stderr file, or of
/// its stdout file when stderr is not kept, cut to [`REASON_LINE`]
/// characters (then pointing at the file).
pub(super) fn last_words(name: &str, spec: &SpawnSpec) -> Option<String> {
    let err = target(name, spec, Stream::Stderr);
    let out = target(name, spec, Stream::Stdout);
    let path = err.path.or(out.path)?;
    let line = crate::output::last_line(&path)?;
    if line.chars().count() <= REASON_LINE {
        return Some(line);
    }
    let cut: String = line.chars().take(REASON_LINE).collect();
    Some(format!("{cut}… (more in {})", path.display()))
}

impl Supervisor {
    /// Where the named instances' streams are logged.
    pub(super) fn log_targets(
        &self,
        names: &[String],
        stream: Option<Stream>,
    ) -> Result<Vec<LogTarget>, CommandError> {
        let keys: Vec<Key> = if names.is_empty() {
            self.instances
                .iter()
                .filter(|(_, i)| !i.retiring)
                .map(|(k, _)| k.clone())
                .collect()
        } else {
            self.resolve(names, &|_| true)?
        };
        let streams: &[Stream] = match stream {
            Some(Stream::Stdout) => &[Stream::Stdout],
            Some(Stream::Stderr) => &[Stream::Stderr],
            None => &[Stream::Stdout, Stream::Stderr],
        };
        let mut out = Vec::new();
        for key in &keys {
            let (Some(inst), Some(svc)) = (self.instances.get(key), self.services.get(&key.0))
            else {
                continue;
            };
            let spec = svc.config.spawn.for_instance(&key.0, key.1);
            for s in streams {
                out.push(target(&inst.name, &spec, *s));
            }
        }
        Ok(out)
    }

    /// `signal SIG NAME...|all`.
    pub(super) fn send_signal(
        &mut self,
        signal: Signal,
        names: &[String],
    ) -> Result<Vec<ActionResult>, CommandError> {
        if names.is_empty() {
            return Err(CommandError {
                code: "bad_args",
                message: "expected a signal and at least one name (a service, service:N, or all)"
                    .into(),
            });
        }
        let live = |i: &Inst| matches!(i.proc.state, State::Running | State::Starting);
        let keys = self.resolve(names, &live)?;
        let mut results = Vec::new();
        for key in keys {
            let Some(inst) = self.instances.get(&key) else {
                continue;
            };
            let name = inst.name.clone();
            let result = match (live(inst), inst.proc.pgid) {
                (true, Some(pgid)) => {
                    crate::log!(
                        "signalled: {name} (process group {pgid}) with {}",
                        signal.as_str()
                    );
                    self.spawner.signal(pgid, signal);
                    ActionResult {
                        name,
                        ok: true,
                        message: format!("sent {}", signal.as_str()),
                    }
                }
                _ => ActionResult {
                    name,
                    ok: false,
                    message: "not running".into(),
                },
            };
            results.push(result);
        }
        Ok(results)
    }
}
