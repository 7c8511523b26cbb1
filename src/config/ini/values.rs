//! The value grammars of supervisord's program keys: booleans, signals,
//! byte sizes and `environment=` pairs, each checked here so that a bad
//! value is reported at its `FILE:LINE` rather than as a schema error
//! later.

use serde_json::{json, Value};

/// supervisord's boolean spellings.
pub(super) fn boolean(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// A signal given by name (`TERM`, `SIGTERM`) or number (`15`), as a name.
pub(super) fn signal_name(v: &str) -> Option<String> {
    let signal = match v.parse::<i32>() {
        Ok(n) => nix::sys::signal::Signal::try_from(n).ok()?,
        Err(_) => crate::config::parse_signal(v)?,
    };
    Some(signal.as_str().to_string())
}

/// A `*_logfile_maxbytes` value: an integer stays one, a size with a unit
/// is kept as text for the schema's size grammar, which it is checked
/// against here (supervisord's `KB`/`MB`/`GB` are 1024-based there too).
pub(super) fn size(v: &str) -> Option<Value> {
    if let Ok(n) = v.parse::<u64>() {
        return Some(json!(n));
    }
    let mut p = crate::config::fields::Problems::default();
    crate::config::output::size(&json!(v), "", &mut p)?;
    Some(json!(v))
}

/// `KEY="value",KEY2=value2` (supervisord's `environment`): quotes keep
/// commas and blanks in a value; blanks and newlines between pairs are
/// skipped; a trailing comma is allowed.
pub(super) fn environment(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err(format!(
                "expected KEY=VALUE pairs, got \"{}\"",
                first_line(rest)
            ));
        }
        rest = rest[key_end..].trim_start();
        let Some(after) = rest.strip_prefix('=') else {
            return Err(format!("expected '=' after {key}"));
        };
        rest = after.trim_start();
        let value;
        if let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
            let body = &rest[1..];
            let end = body
                .find(q)
                .ok_or_else(|| format!("unterminated quote in the value of {key}"))?;
            value = body[..end].to_string();
            rest = body[end + 1..].trim_start();
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim_end().to_string();
            rest = &rest[end..];
        }
        match rest.strip_prefix(',') {
            Some(after) => rest = after.trim_start(),
            None if rest.is_empty() => {}
            None => {
                return Err(format!(
                    "expected ',' after the value of {key}, got \"{}\"",
                    first_line(rest)
                ))
            }
        }
        out.retain(|(k, _)| k != key);
        out.push((key.to_string(), value));
    }
    Ok(out)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}
