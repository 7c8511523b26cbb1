//! Per-instance placeholders (SPEC §11): one config line gives each
//! instance its own port, log file or probe.
//!
//! A [`SpawnSpec`] and a [`Healthcheck`] hold templates; what an instance is
//! started or probed with is [`SpawnSpec::for_instance`] /
//! [`Healthcheck::for_instance`], which [`expand`] each templated field:
//! `cmd`, `env` values, `stdout`, `stderr`, `workingdir` and the probe string.
//! The reload diff compares the templates, so a placeholder change in `cmd`
//! is a respawn like any other `cmd` change.
//!
//! The forms, and nothing else:
//! - `{instance}`: the instance number; `{instance+K}` / `{instance-K}` (K
//!   ASCII digits) that number plus or minus K; `{instance:0N}` /
//!   `{instance+K:0N}` the same zero-padded to N digits (`{instance:00}` and
//!   `{instance:0}` pad to nothing, as printf's `%00d` / `%0d` do, so the
//!   `%(process_num)0Nd` of a supervisord file maps over for any N);
//! - `{service}`: the service name; `{name}`: the instance name (`web:1`);
//! - `{{` and `}}`: a literal `{` and `}`, read left to right as in Rust's
//!   and Python's format strings (`{{instance}}` is the text `{instance}`).
//!   So a literal `}}` in a command (`'{"a":{"b":1}}'`) must be written
//!   `}}}}`: the price of the escape the SPEC asks for.
//!
//! Any other text in braces is left as it is (`awk '{print $1}'`,
//! `${HOME}`, `{instance*2}`, an unclosed `{`), since commands are shell and
//! shell is full of braces.
//!
//! What expands is always digits, a service name (`[A-Za-z0-9_.-]`) or
//! `service:index`, so a placeholder never needs shell quoting and is fine
//! in a path (`:` included).
//!
//! Decisions the SPEC leaves open, checked at load by [`check`] so that
//! [`expand`] itself cannot fail:
//! - A value below zero is a config error (`{instance-1} is negative for
//!   instance 0`), never a `-1` in a port or a file name. Instance 0 always
//!   exists, so `{instance-K}` is only accepted with K = 0; an instance that
//!   needs "the previous one" can compute it in the shell
//!   (`$((TASKMASTER_INSTANCE - 1))`).
//! - A value past `i64`, or a padding past [`MAX_WIDTH`] digits, is a config
//!   error too (`is out of range`): it is a typo, and left as text it would
//!   pass silently into a command.
//!
//! Paths are templates as a whole: a relative path is joined to the config
//! folder before it is stored, and the folder's own braces are escaped by
//! [`escape`] at that moment, so a folder named `{x}` survives expansion.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::fields::Problems;
use super::{Healthcheck, Probe, SpawnSpec};

/// The most digits `{instance:0N}` pads to: far beyond any port or file
/// name, and it bounds what a typo like `{instance:09999999}` can allocate.
pub const MAX_WIDTH: usize = 64;

/// What one instance's copy of `template` reads: the placeholders of the
/// module header replaced, everything else as written.
pub fn expand(template: &str, service: &str, index: u32) -> String {
    let bytes = expand_bytes(template.as_bytes(), service, index);
    // Only ASCII runs were replaced by ASCII, so the text is still UTF-8;
    // the lossy path is never taken but needs no unwrap.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Whether [`expand`] can give anything other than `s` itself: a
/// placeholder or an escaped brace. Text in braces that is no placeholder
/// does not count.
pub fn has_placeholders(s: &str) -> bool {
    has_placeholders_bytes(s.as_bytes())
}

/// One piece of a template as an export renders it (`--export` writes
/// `{instance}` as systemd's `%i`, for instance). Escapes are already text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text as it is (an escaped brace is one brace here).
    Text(String),
    /// The instance number plus `offset`, zero-padded to `width` digits (0
    /// or 1: no padding).
    Instance {
        /// The `K` of `{instance+K}`.
        offset: i64,
        /// The `N` of `{instance:0N}`.
        width: usize,
    },
    /// `{service}`.
    Service,
    /// `{name}`: `service:index`.
    Name,
}

/// The pieces of `template`, adjacent text merged; a placeholder out of
/// range (refused at load) is text.
pub fn parts(template: &str) -> Vec<Part> {
    let mut out: Vec<Part> = Vec::new();
    let text = |out: &mut Vec<Part>, bytes: &[u8]| {
        let s = String::from_utf8_lossy(bytes);
        match out.last_mut() {
            Some(Part::Text(t)) => t.push_str(&s),
            _ => out.push(Part::Text(s.into_owned())),
        }
    };
    for piece in Pieces::new(template.as_bytes()) {
        match piece {
            Piece::Text(t) | Piece::Escape(t) => text(&mut out, t),
            Piece::Field { text: t, kind } => match kind {
                Kind::Instance { offset, width } => out.push(Part::Instance { offset, width }),
                Kind::Service => out.push(Part::Service),
                Kind::Name => out.push(Part::Name),
                Kind::OutOfRange | Kind::TooWide => text(&mut out, t),
            },
        }
    }
    out
}

/// Whether `template` expands differently for different instances: it
/// holds `{instance…}` or `{name}`.
pub fn varies(template: &str) -> bool {
    parts(template)
        .iter()
        .any(|p| matches!(p, Part::Instance { .. } | Part::Name))
}

/// Checks that every placeholder of `template` expands for instances
/// `0..=last`: the error, when there is one, names the placeholder
/// (`{instance-5} is negative for instance 0`).
pub fn check(template: &str, last: u32) -> Result<(), String> {
    for piece in Pieces::new(template.as_bytes()) {
        let Piece::Field { text, kind } = piece else {
            continue;
        };
        let text = String::from_utf8_lossy(text);
        match kind {
            Kind::Instance { offset, .. } => {
                // The lowest instance is the one that can go negative, the
                // highest the one that can overflow.
                if offset < 0 {
                    return Err(format!("{text} is negative for instance 0"));
                }
                if offset.checked_add(i64::from(last)).is_none() {
                    return Err(format!("{text} is out of range"));
                }
            }
            Kind::OutOfRange => return Err(format!("{text} is out of range")),
            Kind::TooWide => {
                return Err(format!(
                    "{text} pads to more than {MAX_WIDTH} digits (out of range)"
                ))
            }
            Kind::Service | Kind::Name => {}
        }
    }
    Ok(())
}

/// The path template for `value` as written in the config: a relative path
/// joined to the config folder `base`, whose braces are escaped so that
/// only the user's own text can hold placeholders.
pub(super) fn join(base: &Path, value: &str) -> PathBuf {
    let value = Path::new(value);
    if value.is_absolute() {
        return value.to_path_buf();
    }
    let base = base.as_os_str().as_bytes();
    PathBuf::from(OsString::from_vec(escape(base))).join(value)
}

/// `bytes` with every brace doubled, so that expanding the result gives
/// `bytes` back: how a config folder is made part of a path template.
pub(super) fn escape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        out.push(b);
        if b == b'{' || b == b'}' {
            out.push(b);
        }
    }
    out
}

/// Runs [`check`] on every templated field of a service's spawn options,
/// recording each problem under the field's path (`services.web.cmd`).
pub(super) fn check_spawn(spawn: &SpawnSpec, path: &str, last: u32, p: &mut Problems) {
    let mut field = |name: &str, template: &str| {
        if let Err(why) = check(template, last) {
            p.add(&format!("{path}.{name}"), why);
        }
    };
    field("cmd", &spawn.cmd);
    for (key, value) in &spawn.env {
        field(&format!("env.{key}"), value);
    }
    let paths = [
        ("stdout", &spawn.stdout),
        ("stderr", &spawn.stderr),
        ("workingdir", &spawn.workingdir),
    ];
    for (name, value) in paths {
        if let Some(v) = value {
            // Lossy only changes bytes that are no brace; the joined config
            // folder is escaped, so it cannot hold a placeholder.
            field(name, &v.to_string_lossy());
        }
    }
}

impl SpawnSpec {
    /// What instance `index` of `service` is spawned with: every templated
    /// field expanded. A clone when nothing is templated.
    pub fn for_instance(&self, service: &str, index: u32) -> SpawnSpec {
        let mut spec = self.clone();
        if has_placeholders(&spec.cmd) {
            spec.cmd = expand(&spec.cmd, service, index);
        }
        for value in spec.env.values_mut() {
            if has_placeholders(value) {
                *value = expand(value, service, index);
            }
        }
        for path in [&mut spec.stdout, &mut spec.stderr, &mut spec.workingdir]
            .into_iter()
            .flatten()
        {
            if has_placeholders_bytes(path.as_os_str().as_bytes()) {
                *path = expand_path(path, service, index);
            }
        }
        spec
    }
}

impl Healthcheck {
    /// The probe instance `index` of `service` runs: its string expanded.
    /// A clone when it holds no placeholder.
    pub fn for_instance(&self, service: &str, index: u32) -> Healthcheck {
        let mut hc = self.clone();
        let text = match &mut hc.probe {
            Probe::Cmd(s) | Probe::Http(s) | Probe::Tcp(s) => s,
        };
        if has_placeholders(text) {
            *text = expand(text, service, index);
        }
        hc
    }
}

/// [`expand`] on a path, which may not be UTF-8 (its config folder).
fn expand_path(path: &Path, service: &str, index: u32) -> PathBuf {
    let bytes = expand_bytes(path.as_os_str().as_bytes(), service, index);
    PathBuf::from(OsString::from_vec(bytes))
}

fn has_placeholders_bytes(bytes: &[u8]) -> bool {
    // Quick exit for the common case: no brace, nothing to do.
    if !bytes.iter().any(|&b| b == b'{' || b == b'}') {
        return false;
    }
    Pieces::new(bytes).any(|piece| match piece {
        Piece::Text(_) => false,
        Piece::Escape(_) => true,
        Piece::Field { kind, .. } => !matches!(kind, Kind::OutOfRange | Kind::TooWide),
    })
}

fn expand_bytes(template: &[u8], service: &str, index: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(template.len() + 8);
    for piece in Pieces::new(template) {
        match piece {
            Piece::Text(t) | Piece::Escape(t) => out.extend_from_slice(t),
            Piece::Field { text, kind } => match kind {
                Kind::Service => out.extend_from_slice(service.as_bytes()),
                Kind::Name => {
                    out.extend_from_slice(format!("{service}:{index}").as_bytes());
                }
                Kind::Instance { offset, width } => {
                    match offset.checked_add(i64::from(index)) {
                        // A negative value is refused at load (see the
                        // header); should one get here, it reads `-1`.
                        Some(n) => out.extend_from_slice(format!("{n:0width$}").as_bytes()),
                        None => out.extend_from_slice(text),
                    }
                }
                // Refused at load; left as written rather than guessed at.
                Kind::OutOfRange | Kind::TooWide => out.extend_from_slice(text),
            },
        }
    }
    out
}

/// One piece of a template.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    /// Text copied as it is.
    Text(&'a [u8]),
    /// The one brace an escape (`{{` or `}}`) stands for.
    Escape(&'a [u8]),
    /// A placeholder, `text` being all of it, braces included.
    Field { text: &'a [u8], kind: Kind },
}

/// What a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// The instance number plus `offset`, zero-padded to `width` digits.
    Instance { offset: i64, width: usize },
    /// The service name.
    Service,
    /// `service:index`.
    Name,
    /// `{instance+K}` with a K past `i64`.
    OutOfRange,
    /// `{instance:0N}` with N past [`MAX_WIDTH`].
    TooWide,
}

/// The pieces of a template, left to right.
struct Pieces<'a> {
    /// What is left to read.
    rest: &'a [u8],
}

impl<'a> Pieces<'a> {
    fn new(template: &'a [u8]) -> Self {
        Pieces { rest: template }
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        let rest = self.rest;
        let first = *rest.first()?;
        let (piece, used) = match first {
            b'{' | b'}' if rest.get(1) == Some(&first) => (Piece::Escape(&rest[..1]), 2),
            b'{' => {
                let field = rest[1..]
                    .iter()
                    .position(|&b| b == b'}')
                    .and_then(|end| Some((end + 2, kind(&rest[1..end + 1])?)));
                match field {
                    Some((used, kind)) => (
                        Piece::Field {
                            text: &rest[..used],
                            kind,
                        },
                        used,
                    ),
                    // Not a placeholder: the brace is text, and what it
                    // opens is read on as text (it may hold an escape).
                    None => (Piece::Text(&rest[..1]), 1),
                }
            }
            b'}' => (Piece::Text(&rest[..1]), 1),
            _ => {
                let end = rest
                    .iter()
                    .position(|&b| b == b'{' || b == b'}')
                    .unwrap_or(rest.len());
                (Piece::Text(&rest[..end]), end)
            }
        };
        self.rest = &rest[used..];
        Some(piece)
    }
}

/// What the text between a pair of braces stands for, if it is a
/// placeholder at all.
fn kind(inner: &[u8]) -> Option<Kind> {
    match inner {
        b"service" => return Some(Kind::Service),
        b"name" => return Some(Kind::Name),
        _ => {}
    }
    let mut rest = inner.strip_prefix(b"instance")?;
    let mut offset = Ok(0);
    if let Some((&sign @ (b'+' | b'-'), tail)) = rest.split_first() {
        let (digits, tail) = split_digits(tail);
        if digits.is_empty() {
            return None;
        }
        offset = number(digits)
            .ok_or(Kind::OutOfRange)
            .map(|k| if sign == b'-' { -k } else { k });
        rest = tail;
    }
    let mut width = Ok(0);
    if let Some(tail) = rest.strip_prefix(b":0") {
        let (digits, tail) = split_digits(tail);
        if !tail.is_empty() {
            return None;
        }
        width = match number(digits) {
            _ if digits.is_empty() => Ok(0),
            Some(n) => match usize::try_from(n) {
                Ok(w) if w <= MAX_WIDTH => Ok(w),
                _ => Err(Kind::TooWide),
            },
            None => Err(Kind::TooWide),
        };
        rest = tail;
    }
    if !rest.is_empty() {
        return None;
    }
    Some(match (offset, width) {
        (Ok(offset), Ok(width)) => Kind::Instance { offset, width },
        (Err(k), _) | (_, Err(k)) => k,
    })
}

/// `bytes` split after its leading ASCII digits.
fn split_digits(bytes: &[u8]) -> (&[u8], &[u8]) {
    let end = bytes
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(bytes.len());
    bytes.split_at(end)
}

/// A run of ASCII digits as a non-negative `i64`, or None past `i64::MAX`
/// (or when empty).
fn number(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests;
