//! supervisord's `%(name)s` expansions, turned into what a Taskmaster
//! config holds.
//!
//! supervisord runs Python's `value % names` on most program keys, so a
//! value is a printf-like format: `%%` is a `%`, `%(name)` is followed by
//! flags, a width and a conversion (`%(process_num)02d`), and any other
//! `%` is an error. The names: `program_name` (and `group_name`, the same
//! here: groups are not kept), `process_num`, `numprocs`, `here` (the
//! folder of the file the key is in), `host_node_name` and `ENV_X` (the
//! variable `X` of the daemon's environment). An unknown name is an error,
//! as in supervisord.
//!
//! `process_num` is the one name that differs between instances. In the
//! fields that are templates (SPEC §11: `cmd`, `env` values, the log files,
//! `workingdir`) it becomes a placeholder, `%(process_num)d` →
//! `{instance}` and `%(process_num)0Nd` → `{instance:0N}`, shifted by
//! `numprocs_start` (`{instance+K}`), and the rest of the value is escaped
//! (`{` → `{{`) so that only these placeholders expand. Elsewhere it is
//! only accepted when there is a single instance.

use std::fmt::Write as _;

/// What a value may become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A template: `process_num` is a placeholder, the rest escaped.
    Template,
    /// Plain text: `process_num` only when there is one instance.
    Literal,
}

/// The names a value may use, for one program section.
#[derive(Debug, Clone)]
pub struct Names<'a> {
    /// `program_name`, `group_name`; None outside a program section.
    pub program: Option<&'a str>,
    /// `here`: the folder of the file being read.
    pub here: &'a str,
    /// `numprocs`, once known.
    pub numprocs: Option<u32>,
    /// `numprocs_start`: what `process_num` counts from, once known.
    pub start: Option<u32>,
}

/// One `%` directive of a value.
struct Spec {
    /// Flags: `0`, `-`, `+`, ` `, `#`.
    flags: String,
    /// Minimum width.
    width: usize,
    /// Conversion character.
    conversion: char,
}

/// Expands `value` of `key` as `mode` says, or says what is wrong.
pub fn expand(value: &str, key: &str, names: &Names, mode: Mode) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('%') {
        text(&mut out, &rest[..at], mode);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            text(&mut out, "%", mode);
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('(') else {
            return Err(format!(
                "{key}: a '%' must start %(name)s or be doubled (%%), got \"%{}\"",
                after.chars().next().map(String::from).unwrap_or_default()
            ));
        };
        let Some(close) = body.find(')') else {
            return Err(format!("{key}: unclosed \"%(\""));
        };
        let name = &body[..close];
        let (spec, tail) = spec(&body[close + 1..]).ok_or_else(|| {
            format!("{key}: %({name}) must be followed by a conversion like s or d")
        })?;
        one(&mut out, name, &spec, key, names, mode)?;
        rest = tail;
    }
    text(&mut out, rest, mode);
    Ok(out)
}

/// Reads flags, width and conversion after `%(name)`.
fn spec(s: &str) -> Option<(Spec, &str)> {
    let flags_end = s.find(|c: char| !"0-+ #".contains(c)).unwrap_or(s.len());
    let flags = s[..flags_end].to_string();
    let s = &s[flags_end..];
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let width = if digits_end == 0 {
        0
    } else {
        s[..digits_end].parse().ok()?
    };
    let s = &s[digits_end..];
    let conversion = s.chars().next()?;
    if !"sdiu".contains(conversion) {
        return None;
    }
    Some((
        Spec {
            flags,
            width,
            conversion,
        },
        &s[conversion.len_utf8()..],
    ))
}

/// Appends literal text, escaped in a template.
fn text(out: &mut String, s: &str, mode: Mode) {
    match mode {
        Mode::Literal => out.push_str(s),
        Mode::Template => {
            for c in s.chars() {
                out.push(c);
                if c == '{' || c == '}' {
                    out.push(c);
                }
            }
        }
    }
}

/// The known names, for the error that names an unknown one.
const KNOWN: &str = "program_name, group_name, process_num, numprocs, here, host_node_name, ENV_X";

fn one(
    out: &mut String,
    name: &str,
    spec: &Spec,
    key: &str,
    names: &Names,
    mode: Mode,
) -> Result<(), String> {
    let shown = format!("%({name}){}{}", width_text(spec), spec.conversion);
    match name {
        "process_num" => {
            let Some(start) = names.start.filter(|_| names.numprocs.is_some()) else {
                return Err(format!(
                    "{key}: {shown} cannot be used here (the number of instances is not known yet)"
                ));
            };
            match mode {
                Mode::Template => placeholder(out, start, spec, &shown, key),
                Mode::Literal if names.numprocs == Some(1) => {
                    number(out, i64::from(start), spec, mode);
                    Ok(())
                }
                Mode::Literal => Err(format!(
                    "{key}: {shown} cannot differ between instances in this key (only in command, \
                     environment, directory and the log files)"
                )),
            }
        }
        "numprocs" => match names.numprocs {
            Some(n) => {
                number(out, i64::from(n), spec, mode);
                Ok(())
            }
            None => Err(format!("{key}: {shown} cannot be used here")),
        },
        "program_name" | "group_name" => match names.program {
            Some(p) => string(out, p, spec, mode, &shown, key),
            None => Err(format!(
                "{key}: {shown} is only known in a [program:x] section"
            )),
        },
        "here" => string(out, names.here, spec, mode, &shown, key),
        "host_node_name" => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .map_err(|e| format!("{key}: {shown}: cannot read the host name: {e}"))?;
            string(out, &host, spec, mode, &shown, key)
        }
        _ => match name.strip_prefix("ENV_") {
            Some(var) => match std::env::var(var) {
                Ok(v) => string(out, &v, spec, mode, &shown, key),
                Err(_) => Err(format!(
                    "{key}: {shown}: the environment variable {var} is not set"
                )),
            },
            None => Err(format!(
                "{key}: unknown name \"{name}\" in {shown} (known: {KNOWN})"
            )),
        },
    }
}

fn width_text(spec: &Spec) -> String {
    let mut s = spec.flags.clone();
    if spec.width > 0 {
        let _ = write!(s, "{}", spec.width);
    }
    s
}

/// `process_num` in a template: `{instance}`, shifted and padded.
fn placeholder(
    out: &mut String,
    start: u32,
    spec: &Spec,
    shown: &str,
    key: &str,
) -> Result<(), String> {
    let pad = match (spec.flags.as_str(), spec.width) {
        (_, 0) | ("", 1) => 0,
        ("0", w) => w,
        _ => {
            return Err(format!(
                "{key}: {shown} has no {{instance}} equivalent (use %(process_num)d or %(process_num)0Nd)"
            ))
        }
    };
    out.push_str("{instance");
    if start > 0 {
        let _ = write!(out, "+{start}");
    }
    if pad > 0 {
        let _ = write!(out, ":0{pad}");
    }
    out.push('}');
    Ok(())
}

/// An integer name, formatted as Python would.
fn number(out: &mut String, n: i64, spec: &Spec, mode: Mode) {
    let digits = if spec.flags.contains('+') && n >= 0 {
        format!("+{n}")
    } else if spec.flags.contains(' ') && n >= 0 {
        format!(" {n}")
    } else {
        n.to_string()
    };
    let padded = if spec.flags.contains('-') {
        format!("{digits:<w$}", w = spec.width)
    } else if spec.flags.contains('0') && spec.conversion != 's' {
        format!("{n:0w$}", w = spec.width)
    } else {
        format!("{digits:>w$}", w = spec.width)
    };
    text(out, &padded, mode);
}

/// A string name, formatted as Python would (`%s` with a width pads).
fn string(
    out: &mut String,
    s: &str,
    spec: &Spec,
    mode: Mode,
    shown: &str,
    key: &str,
) -> Result<(), String> {
    if spec.conversion != 's' {
        return Err(format!("{key}: {shown}: this name is text, use %(…)s"));
    }
    let padded = if spec.flags.contains('-') {
        format!("{s:<w$}", w = spec.width)
    } else {
        format!("{s:>w$}", w = spec.width)
    };
    text(out, &padded, mode);
    Ok(())
}
