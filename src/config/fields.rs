//! The schema's value helpers: each reads one field of the value tree into a
//! Rust value, or records why it cannot, under the field's path.
//!
//! They live apart from `mod.rs` so the schema there reads as a list of
//! options and their defaults, while the wording of every "expected …, got
//! …" message is written once here and shared by every option (and by both
//! front-ends, which only ever hand [`super::validate`] a `serde_json::Value`).
//! A helper returns `None` after recording a problem, so the caller keeps its
//! default and the walk goes on to report the next problem too.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Map, Value};

/// Collects problems with their paths while the tree is walked.
#[derive(Debug, Default)]
pub(super) struct Problems {
    /// The errors, in the order they were found.
    errors: Vec<String>,
    /// What a problem that depends on this host is (SPEC §18).
    host: HostChecks,
    /// Host problems recorded as warnings (with [`HostChecks::Warn`]).
    warnings: Vec<String>,
}

impl Problems {
    /// An empty list whose host problems are treated as `host` says.
    pub(super) fn new(host: HostChecks) -> Self {
        Problems {
            host,
            ..Problems::default()
        }
    }

    /// Records `msg` about the field at `path`.
    pub(super) fn add(&mut self, path: &str, msg: impl fmt::Display) {
        self.errors.push(format!("{path}: {msg}"));
    }

    /// Records `msg` about the field at `path`, a problem only on this host
    /// (an unknown user, a missing file): an error when the config is to
    /// run here, a warning when it is evaluated for an export.
    pub(super) fn host(&mut self, path: &str, msg: impl fmt::Display) {
        match self.host {
            HostChecks::Enforce => self.add(path, msg),
            HostChecks::Warn => self.warnings.push(format!("{path}: {msg}")),
        }
    }

    /// How many problems so far: a caller compares counts to tell whether its
    /// own part of the tree was clean.
    pub(super) fn count(&self) -> usize {
        self.errors.len()
    }

    /// The problems, in the order they were found.
    #[cfg(test)]
    pub(super) fn into_vec(self) -> Vec<String> {
        self.errors
    }

    /// The errors and the warnings, each in the order they were found.
    pub(super) fn into_parts(self) -> (Vec<String>, Vec<String>) {
        (self.errors, self.warnings)
    }
}

/// How the checks that depend on the host are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostChecks {
    /// As errors: the config is about to run here (start-up, reload).
    #[default]
    Enforce,
    /// As warnings: the config is evaluated to be exported (`--export`) and
    /// will run elsewhere, where the user may exist and the file be present.
    Warn,
}

/// Records every key of `obj` not in `known`, suggesting the nearest known one.
pub(super) fn unknown_keys(obj: &Map<String, Value>, known: &[&str], path: &str, p: &mut Problems) {
    for key in obj.keys() {
        if !known.contains(&key.as_str()) {
            let hint = did_you_mean(key, known)
                .map(|k| format!(" — did you mean \"{k}\"?"))
                .unwrap_or_default();
            // Not `add`: the message names the table, not a field of it.
            p.errors
                .push(format!("unknown option \"{key}\" in {path}{hint}"));
        }
    }
}

/// The closest known word within a small edit distance, if any.
pub fn did_you_mean<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// How a value is named in a "got …" message.
pub(super) fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string \"{s}\""),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a table".into(),
    }
}

/// An integer, accepting integer-valued floats (`2.0`).
pub(super) fn integer(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    let f = v.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

pub(super) fn int_in(v: &Value, path: &str, lo: i64, hi: i64, p: &mut Problems) -> Option<i64> {
    match integer(v) {
        Some(i) if (lo..=hi).contains(&i) => Some(i),
        Some(i) if hi == i64::MAX => {
            p.add(path, format!("must be at least {lo}, got {i}"));
            None
        }
        Some(i) => {
            p.add(path, format!("must be between {lo} and {hi}, got {i}"));
            None
        }
        None => {
            p.add(path, format!("expected an integer, got {}", kind(v)));
            None
        }
    }
}

pub(super) fn seconds(v: &Value, path: &str, p: &mut Problems) -> Option<Duration> {
    match v.as_f64() {
        Some(f) if f.is_finite() && (0.0..=1.0e9).contains(&f) => Some(Duration::from_secs_f64(f)),
        Some(f) => {
            p.add(path, format!("must be a number of seconds >= 0, got {f}"));
            None
        }
        None => {
            p.add(
                path,
                format!("expected a number of seconds, got {}", kind(v)),
            );
            None
        }
    }
}

/// Like [`seconds`], but zero is refused: for a period something repeats
/// at, where zero would mean "continuously".
pub(super) fn positive_seconds(v: &Value, path: &str, p: &mut Problems) -> Option<Duration> {
    match v.as_f64() {
        // At least a nanosecond: a fraction too small for `Duration` must
        // not round down to the zero that was just refused.
        Some(f) if f.is_finite() && f > 0.0 && f <= 1.0e9 => {
            Some(Duration::from_secs_f64(f).max(Duration::from_nanos(1)))
        }
        Some(f) => {
            p.add(path, format!("must be a number of seconds > 0, got {f}"));
            None
        }
        None => {
            p.add(
                path,
                format!("expected a number of seconds, got {}", kind(v)),
            );
            None
        }
    }
}

pub(super) fn string<'a>(v: &'a Value, path: &str, p: &mut Problems) -> Option<&'a str> {
    match v.as_str() {
        Some(s) => Some(s),
        None => {
            p.add(path, format!("expected a string, got {}", kind(v)));
            None
        }
    }
}

pub(super) fn boolean(v: &Value, path: &str, p: &mut Problems) -> Option<bool> {
    match v.as_bool() {
        Some(b) => Some(b),
        None => {
            p.add(path, format!("expected true or false, got {}", kind(v)));
            None
        }
    }
}

pub(super) fn file_path(
    v: &Value,
    path: &str,
    base: &Path,
    p: &mut Problems,
) -> Option<Option<PathBuf>> {
    match v {
        Value::Null => Some(None),
        // Stored as a template (SPEC §11 placeholders): see `placeholders::join`.
        Value::String(s) if !s.is_empty() => Some(Some(super::placeholders::join(base, s))),
        other => {
            p.add(
                path,
                format!("expected a path or null, got {}", kind(other)),
            );
            None
        }
    }
}

/// Parses a signal name: `TERM`, `SIGTERM` (any case).
pub fn parse_signal(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse().ok()
}

pub(super) fn umask(v: &Value, path: &str, p: &mut Problems) -> Option<u32> {
    // A string is octal ("022"); an integer is read digit by digit as octal,
    // as supervisord reads `umask=022`, so JSON's `22` means 0o022.
    let digits = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(_) => match integer(v) {
            Some(i) if i >= 0 => i.to_string(),
            _ => String::new(),
        },
        _ => String::new(),
    };
    match u32::from_str_radix(&digits, 8) {
        Ok(m) if m <= 0o777 && !digits.is_empty() => Some(m),
        _ => {
            p.add(
                path,
                format!("expected an octal umask like \"022\", got {}", kind(v)),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_with_or_without_prefix() {
        assert_eq!(parse_signal("TERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("sigkill"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("USR2"), Some(Signal::SIGUSR2));
        assert_eq!(parse_signal("BOGUS"), None);
    }
}
