//! The options of SPEC §12 that change what a process is started as:
//! `user`, `group`, `rlimits`, `env_file`.
//!
//! Everything is resolved here, at load: user and group names through the
//! system databases (so an unknown one is a config error with its field
//! path, and the child gets plain numbers), env files read and parsed (so a
//! bad line is `FILE:LINE`, and their content is part of the `SpawnSpec`
//! the reload diff compares).
//!
//! What depends on this host (a user or group that does not exist here,
//! becoming another user without being root, an env file that is missing or
//! unreadable) goes through `Problems::host`: an error when the config is
//! to run here, a warning when it is evaluated for `--export` (SPEC §18),
//! where the names as written (`SpawnSpec::run_as`) are what counts.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::env_file;
use super::fields::{did_you_mean, integer, kind, Problems};
use super::SpawnSpec;
use crate::process::identity::{self, Limit, Resource, RESOURCE_NAMES};

/// The keys read here.
pub(super) const KEYS: &[&str] = &["user", "group", "rlimits", "env_file"];

/// Reads the §12 spawn options of one service into `spawn`.
pub(super) fn read(
    obj: &Map<String, Value>,
    path: &str,
    base: &Path,
    spawn: &mut SpawnSpec,
    p: &mut Problems,
) {
    let field = |name: &str| obj.get(name).filter(|v| !v.is_null());
    let at = |name: &str| format!("{path}.{name}");
    let user_text = field("user").and_then(|v| id_text(v, &at("user"), "user", p));
    let group_text = field("group").and_then(|v| id_text(v, &at("group"), "group", p));
    spawn.run_as.user = user_text.clone();
    spawn.run_as.group = group_text.clone();
    let user = user_text.and_then(|t| user(&t, &at("user"), p));
    let group = group_text.and_then(|t| group(&t, &at("group"), p));
    if user.is_some() || group.is_some() {
        // A `group` alone keeps the daemon's user.
        let who = match user {
            Some(u) => Some(u),
            None => match identity::own_user() {
                Ok(u) => u,
                Err(e) => {
                    p.host(
                        &at("group"),
                        format!("cannot look up the daemon's user: {e}"),
                    );
                    None
                }
            },
        };
        if let Some(who) = who {
            match identity::credentials(&who, group) {
                Ok(c) => spawn.credentials = Some(c),
                Err(e) => p.host(
                    &at("user"),
                    format!("cannot read the groups of \"{}\": {e}", who.name),
                ),
            }
        }
    }
    if let Some(v) = field("rlimits") {
        spawn.rlimits = rlimits(v, &at("rlimits"), p);
    }
    if let Some(v) = field("env_file") {
        env_files(v, &at("env_file"), base, spawn, p);
    }
}

/// A name or uid as the text the databases take.
fn id_text(v: &Value, path: &str, what: &str, p: &mut Problems) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(_) => match integer(v) {
            Some(i) if (0..=u32::MAX as i64).contains(&i) => Some(i.to_string()),
            _ => {
                p.add(
                    path,
                    format!("expected a {what} name or id, got {}", kind(v)),
                );
                None
            }
        },
        _ => {
            p.add(
                path,
                format!("expected a {what} name or id, got {}", kind(v)),
            );
            None
        }
    }
}

fn user(text: &str, path: &str, p: &mut Problems) -> Option<nix::unistd::User> {
    let found = match identity::lookup_user(text) {
        Ok(Some(u)) => u,
        Ok(None) => {
            p.host(path, format!("unknown user \"{text}\""));
            return None;
        }
        Err(e) => {
            p.host(path, format!("cannot look up user \"{text}\": {e}"));
            return None;
        }
    };
    // Only root can become somebody else; the daemon's own user is a no-op.
    if !identity::is_root() && found.uid != nix::unistd::Uid::effective() {
        p.host(
            path,
            format!("cannot run as \"{}\": the daemon is not root", found.name),
        );
        return None;
    }
    Some(found)
}

fn group(text: &str, path: &str, p: &mut Problems) -> Option<u32> {
    match identity::lookup_group(text) {
        Ok(Some(g)) => Some(g),
        Ok(None) => {
            p.host(path, format!("unknown group \"{text}\""));
            None
        }
        Err(e) => {
            p.host(path, format!("cannot look up group \"{text}\": {e}"));
            None
        }
    }
}

fn rlimits(v: &Value, path: &str, p: &mut Problems) -> Vec<(Resource, Limit)> {
    let mut out = Vec::new();
    let map = match v {
        Value::Object(m) => m,
        Value::Array(a) if a.is_empty() => return out,
        other => {
            p.add(
                path,
                format!("expected a table of limits, got {}", kind(other)),
            );
            return out;
        }
    };
    for (name, val) in map {
        let Some(res) = Resource::from_name(name) else {
            let hint = did_you_mean(name, RESOURCE_NAMES)
                .map(|k| format!(" — did you mean \"{k}\"?"))
                .unwrap_or_default();
            p.add(
                path,
                format!(
                    "unknown limit \"{name}\" (expected one of {}){hint}",
                    RESOURCE_NAMES.join(", ")
                ),
            );
            continue;
        };
        let limit = match val {
            Value::String(s) if s == "unlimited" => Some(None),
            Value::Number(_) => integer(val).filter(|i| *i >= 0).map(|i| Some(i as u64)),
            _ => None,
        };
        match limit {
            Some(l) => out.push((res, l)),
            None => p.add(
                &format!("{path}.{name}"),
                format!(
                    "expected an integer >= 0 or \"unlimited\", got {}",
                    kind(val)
                ),
            ),
        }
    }
    out.sort();
    out
}

fn env_files(v: &Value, path: &str, base: &Path, spawn: &mut SpawnSpec, p: &mut Problems) {
    let items: Vec<(String, &Value)> = match v {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| (format!("{path}[{}]", i + 1), x))
            .collect(),
        other => vec![(path.to_string(), other)],
    };
    for (at, item) in items {
        let Some(name) = item.as_str().filter(|s| !s.is_empty()) else {
            p.add(
                &at,
                format!("expected a path or a list of paths, got {}", kind(item)),
            );
            continue;
        };
        let file: PathBuf = base.join(name);
        match std::fs::read_to_string(&file) {
            // Later files win over earlier ones: inserted in order.
            Ok(text) => match env_file::parse(&text) {
                Ok(vars) => spawn.file_env.extend(vars),
                Err((line, why)) => p.add(&at, format!("{name}:{line}: {why}")),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                p.host(&at, format!("{name}: no such file"))
            }
            Err(e) => p.host(&at, format!("{name}: cannot read: {e}")),
        }
        spawn.env_files.push(file);
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use serde_json::{json, Value};

    use super::super::{validate, validate_for, ConfigError, HostChecks};

    /// A service whose every §12 option only fails on this host.
    fn foreign() -> Value {
        json!({"services": {"web": {
            "cmd": "x",
            "user": "tm-no-such-user",
            "group": "tm-no-such-group",
            "env_file": ["missing.env"],
        }}})
    }

    #[test]
    fn host_problems_are_errors_when_the_config_is_to_run_here() {
        let Err(ConfigError::Invalid(e)) = validate(&foreign(), Path::new("/nonexistent")) else {
            panic!("expected errors");
        };
        assert_eq!(
            e,
            vec![
                "services.web.user: unknown user \"tm-no-such-user\"",
                "services.web.group: unknown group \"tm-no-such-group\"",
                "services.web.env_file[1]: missing.env: no such file",
            ]
        );
    }

    #[test]
    fn host_problems_are_warnings_for_an_export_and_the_names_are_kept() {
        let (c, warnings) =
            validate_for(&foreign(), Path::new("/nonexistent"), HostChecks::Warn).unwrap();
        assert_eq!(
            warnings,
            vec![
                "services.web.user: unknown user \"tm-no-such-user\"",
                "services.web.group: unknown group \"tm-no-such-group\"",
                "services.web.env_file[1]: missing.env: no such file",
            ]
        );
        let spawn = &c.services["web"].spawn;
        assert_eq!(spawn.run_as.user.as_deref(), Some("tm-no-such-user"));
        assert_eq!(spawn.run_as.group.as_deref(), Some("tm-no-such-group"));
        assert_eq!(spawn.credentials, None);
        assert_eq!(
            spawn.env_files,
            vec![PathBuf::from("/nonexistent/missing.env")]
        );
        // What is wrong on any host stays an error.
        let bad =
            json!({"services": {"web": {"cmd": "x", "user": true, "rlimits": {"nofile": -1}}}});
        assert!(validate_for(&bad, Path::new("/b"), HostChecks::Warn).is_err());
    }
}
