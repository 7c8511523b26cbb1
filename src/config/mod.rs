//! The config model (SPEC §3): typed services, and validation of a generic
//! value tree into them.
//!
//! Both front-ends (`lua.rs`, `json.rs`) turn their input into a
//! `serde_json::Value` and hand it to [`validate`], so the two formats share
//! one schema, one set of defaults and one set of error messages. Validation
//! never stops at the first problem: it walks the whole tree and reports every
//! error with its field path (`services.web.numprocs: ...`). No mlua type
//! leaks out of this module tree.
//!
//! This file holds the types and the list of options with their defaults
//! (`load.rs` reads a file with the front-end its name calls for);
//! `fields.rs` holds the helpers that read one value each and word the
//! errors, so every option of the same type fails with the same sentence;
//! `output.rs` reads the output options of SPEC §10 (rotation sizes have a
//! grammar of their own). SPEC §11: `placeholders.rs` (`{instance}` in the
//! templated fields, expanded per instance by `SpawnSpec::for_instance`),
//! `healthcheck.rs` (and the probe targets' grammar), `deps.rs`
//! (`depends_on`, checked across services once every service is read).
//! SPEC §12: `privileges.rs` (`user`, `group`, `rlimits`, `env_file`,
//! resolved at load) with `env_file.rs` (the dotenv grammar); `max_memory`
//! is read here with the size grammar of `output.rs`.
//! SPEC §15: `ini/` (`load_ini`: a supervisord config read into the tree a
//! Lua config would return) and `procfile.rs` (`load_procfile`), both
//! offered to Lua by `lua/`; a config evaluated for `--export` is validated
//! with [`HostChecks::Warn`], so what only fails on this host warns.

mod deps;
mod env_file;
mod fields;
mod healthcheck;
pub mod ini;
pub mod json;
mod load;
pub mod lua;
mod output;
pub mod placeholders;
mod privileges;
pub mod procfile;

/// How a `cmd` is run (exec'd, or through `/bin/sh -c`): what an export
/// writes must start the program the same way.
pub use crate::process::argv::{launch, Launch};
pub use fields::{did_you_mean, parse_signal, HostChecks};
pub use healthcheck::{http_target, tcp_target, HttpTarget};
pub use load::{base_dir, load, load_for, ConfigError, Loaded};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

pub use crate::process::identity::{Credentials, Limit, Resource};

use fields::{
    boolean, file_path, int_in, integer, kind, seconds, string, umask, unknown_keys, Problems,
};

/// Restart policy after an exit from RUNNING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoRestart {
    /// Restart after every exit.
    Always,
    /// Never restart.
    Never,
    /// Restart only when the exit code is not in `exitcodes` (or on a signal).
    Unexpected,
}

/// What a service's processes are started with; a change here restarts them.
///
/// `cmd`, the `env` values and the paths are templates (SPEC §11
/// placeholders, braces in the config folder escaped): an instance is
/// started with [`SpawnSpec::for_instance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnSpec {
    /// Command line, run directly when plain, else through `/bin/sh -c`.
    pub cmd: String,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute), or the daemon's own.
    pub workingdir: Option<PathBuf>,
    /// Child umask, or inherited.
    pub umask: Option<u32>,
    /// File that receives stdout (absolute), or discarded.
    pub stdout: Option<PathBuf>,
    /// File that receives stderr (absolute), or discarded.
    pub stderr: Option<PathBuf>,
    /// Rotation of the stdout file (SPEC §10).
    pub stdout_rotation: Rotation,
    /// Rotation of the stderr file.
    pub stderr_rotation: Rotation,
    /// stderr goes where stdout goes (same file, same rotation).
    pub redirect_stderr: bool,
    /// Prefix each output line in the files with an RFC 3339 UTC timestamp.
    pub timestamps: bool,
    /// Who the processes run as (resolved at load), or the daemon's user.
    pub credentials: Option<Credentials>,
    /// `user` and `group` as the config names them: what an export writes
    /// (they may not resolve on this host).
    pub run_as: RunAs,
    /// Resource limits set (soft and hard) before exec, by resource.
    pub rlimits: Vec<(Resource, Limit)>,
    /// The `env_file`s (absolute), in order: watched for reload.
    pub env_files: Vec<PathBuf>,
    /// Their variables, later files over earlier (`env` wins over these).
    /// Not templates: a brace in a file is a brace.
    pub file_env: BTreeMap<String, String>,
}

/// The `user` and `group` options as written (a name, or an id as text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunAs {
    /// `user`, if set.
    pub user: Option<String>,
    /// `group`, if set.
    pub group: Option<String>,
}

/// Size-based rotation of one log file (SPEC §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate when the file would grow past this many bytes; 0 = never.
    pub maxbytes: u64,
    /// Rotated files kept (`F.1` newest … `F.N`); 0 = start `F` afresh.
    pub backups: u32,
}

impl Default for Rotation {
    /// supervisord's defaults: 50 MB, 10 backups.
    fn default() -> Self {
        Rotation {
            maxbytes: 50 * 1024 * 1024,
            backups: 10,
        }
    }
}

/// How instances are supervised; a change here applies without a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Start on daemon start / when added.
    pub autostart: bool,
    /// Restart policy.
    pub autorestart: AutoRestart,
    /// Exit codes that count as expected.
    pub exitcodes: Vec<i32>,
    /// Retries after failed starts before FATAL.
    pub startretries: u32,
    /// How long a process must stay up to count as started.
    pub starttime: Duration,
    /// Graceful stop signal.
    pub stopsignal: Signal,
    /// Grace period after the stop signal before SIGKILL.
    pub stoptime: Duration,
    /// How to tell that an instance works (SPEC §11).
    pub healthcheck: Option<Healthcheck>,
    /// Services this one waits for, with the condition each must meet.
    pub depends_on: BTreeMap<String, Condition>,
    /// Restart an instance whose process group's RSS exceeds this (bytes).
    pub max_memory: Option<u64>,
}

/// A health probe and its schedule (SPEC §11). Strings may hold
/// placeholders, expanded per instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Healthcheck {
    /// What to check.
    pub probe: Probe,
    /// Between probes.
    pub interval: Duration,
    /// A probe that takes longer fails (a `cmd` probe's group is killed).
    pub timeout: Duration,
    /// Failures in a row that make the instance unhealthy (≥ 1).
    pub retries: u32,
    /// After entering RUNNING, before the first probe.
    pub start_period: Duration,
    /// What entering "unhealthy" does.
    pub on_unhealthy: OnUnhealthy,
}

/// One kind of probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `/bin/sh -c CMD` with the instance's env, user and workingdir; exit 0 passes.
    Cmd(String),
    /// An `http://` URL; a 2xx or 3xx status passes.
    Http(String),
    /// `host:port`; a completed connect passes.
    Tcp(String),
}

/// What an unhealthy instance gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnhealthy {
    /// Restarted (stopsignal, stoptime, spawn; `restarts` + 1).
    Restart,
    /// Nothing but the state.
    None,
}

/// What a dependency must reach (SPEC §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Condition {
    /// Every instance RUNNING.
    Started,
    /// Every instance healthy.
    Healthy,
    /// Every instance EXITED with an expected code.
    Completed,
}

impl Condition {
    /// `started` / `healthy` / `completed`.
    pub fn name(self) -> &'static str {
        match self {
            Condition::Started => "started",
            Condition::Healthy => "healthy",
            Condition::Completed => "completed",
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            autostart: true,
            autorestart: AutoRestart::Unexpected,
            exitcodes: vec![0],
            startretries: 3,
            starttime: Duration::from_secs(1),
            stopsignal: Signal::SIGTERM,
            stoptime: Duration::from_secs(10),
            healthcheck: None,
            depends_on: BTreeMap::new(),
            max_memory: None,
        }
    }
}

/// One service of the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Number of instances, 1–100.
    pub numprocs: u32,
    /// How to spawn.
    pub spawn: SpawnSpec,
    /// How to supervise. Shared: the supervisor hands it to the state
    /// machine for every event, and a clone of an `Arc` costs nothing.
    pub policy: std::sync::Arc<Policy>,
}

/// A validated config.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// Services by name.
    pub services: BTreeMap<String, Service>,
}

const TOP_KEYS: &[&str] = &["services"];
/// The §3 and §11 options; the §10 ones are `output::KEYS`, next to their
/// parsing.
const SERVICE_KEYS: &[&str] = &[
    "cmd",
    "numprocs",
    "autostart",
    "autorestart",
    "exitcodes",
    "startretries",
    "starttime",
    "stopsignal",
    "stoptime",
    "stdout",
    "stderr",
    "env",
    "workingdir",
    "umask",
    "healthcheck",
    "depends_on",
    "max_memory",
];

/// Validates a value tree into a [`Config`], resolving relative paths against `base`.
pub fn validate(value: &Value, base: &Path) -> Result<Config, ConfigError> {
    validate_for(value, base, HostChecks::Enforce).map(|(config, _)| config)
}

/// [`validate`], with the host-dependent checks treated as `host` says;
/// the warnings come with the config.
pub fn validate_for(
    value: &Value,
    base: &Path,
    host: HostChecks,
) -> Result<(Config, Vec<String>), ConfigError> {
    let mut p = Problems::new(host);
    let mut config = Config::default();
    let Some(top) = value.as_object() else {
        return Err(ConfigError::Invalid(vec![format!(
            "config: must be a table with a \"services\" field, got {}",
            kind(value)
        )]));
    };
    unknown_keys(top, TOP_KEYS, "config", &mut p);
    match top.get("services") {
        None | Some(Value::Null) => {}
        Some(Value::Object(services)) => {
            let mut graph = BTreeMap::new();
            for (name, svc) in services {
                let path = format!("services.{name}");
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                {
                    p.add(
                        &path,
                        "service names may only use letters, digits, '_', '.' and '-'",
                    );
                    continue;
                }
                if let Some(s) = service(svc, name, base, &mut graph, &mut p) {
                    config.services.insert(name.clone(), s);
                }
            }
            // Last: these need every service, and add to the same list.
            let declared: Vec<&str> = services.keys().map(String::as_str).collect();
            deps::check(&graph, &declared, &mut p);
        }
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(other) => p.add(
            "services",
            format!("expected a table of services, got {}", kind(other)),
        ),
    }
    let (errors, warnings) = p.into_parts();
    if errors.is_empty() {
        Ok((config, warnings))
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

/// Reads the service `name`, adding what the cross-service checks need
/// to `graph` even when its options have errors.
fn service(
    v: &Value,
    name: &str,
    base: &Path,
    graph: &mut BTreeMap<String, deps::Node>,
    p: &mut Problems,
) -> Option<Service> {
    let path = &format!("services.{name}");
    let Some(obj) = v.as_object() else {
        p.add(
            path,
            format!("expected a table of options, got {}", kind(v)),
        );
        return None;
    };
    let before = p.count();
    let known: Vec<&str> = SERVICE_KEYS
        .iter()
        .chain(output::KEYS)
        .chain(privileges::KEYS)
        .copied()
        .collect();
    unknown_keys(obj, &known, path, p);
    let field = |name: &str| obj.get(name).filter(|v| !v.is_null());
    let at = |name: &str| format!("{path}.{name}");
    let mut policy = Policy::default();
    let mut spawn = SpawnSpec {
        cmd: String::new(),
        env: BTreeMap::new(),
        workingdir: None,
        umask: None,
        stdout: None,
        stderr: None,
        stdout_rotation: Rotation::default(),
        stderr_rotation: Rotation::default(),
        redirect_stderr: false,
        timestamps: false,
        credentials: None,
        run_as: RunAs::default(),
        rlimits: Vec::new(),
        env_files: Vec::new(),
        file_env: BTreeMap::new(),
    };
    let mut numprocs = 1;

    match field("cmd") {
        None => p.add(&at("cmd"), "required option missing"),
        Some(v) => {
            if let Some(s) = string(v, &at("cmd"), p) {
                if s.trim().is_empty() {
                    p.add(&at("cmd"), "must not be empty");
                }
                spawn.cmd = s.to_string();
            }
        }
    }
    if let Some(v) = field("numprocs") {
        numprocs = int_in(v, &at("numprocs"), 1, 100, p).unwrap_or(1) as u32;
    }
    if let Some(v) = field("autostart") {
        policy.autostart = boolean(v, &at("autostart"), p).unwrap_or(true);
    }
    if let Some(v) = field("autorestart") {
        match v.as_str() {
            Some("always") => policy.autorestart = AutoRestart::Always,
            Some("never") => policy.autorestart = AutoRestart::Never,
            Some("unexpected") => policy.autorestart = AutoRestart::Unexpected,
            _ => p.add(
                &at("autorestart"),
                format!(
                    "expected \"always\", \"never\" or \"unexpected\", got {}",
                    kind(v)
                ),
            ),
        }
    }
    if let Some(v) = field("exitcodes") {
        let path = at("exitcodes");
        match v {
            Value::Array(items) => {
                policy.exitcodes = items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| int_in(c, &format!("{path}[{}]", i + 1), 0, 255, p))
                    .map(|c| c as i32)
                    .collect();
            }
            Value::Object(o) if o.is_empty() => policy.exitcodes = Vec::new(),
            Value::Number(_) => {
                policy.exitcodes = int_in(v, &path, 0, 255, p)
                    .map(|c| vec![c as i32])
                    .unwrap_or_default()
            }
            other => p.add(
                &path,
                format!("expected a list of integers, got {}", kind(other)),
            ),
        }
    }
    if let Some(v) = field("startretries") {
        policy.startretries = int_in(v, &at("startretries"), 0, i64::MAX, p)
            .unwrap_or(3)
            .min(u32::MAX as i64) as u32;
    }
    if let Some(v) = field("starttime") {
        policy.starttime = seconds(v, &at("starttime"), p).unwrap_or(policy.starttime);
    }
    if let Some(v) = field("stoptime") {
        policy.stoptime = seconds(v, &at("stoptime"), p).unwrap_or(policy.stoptime);
    }
    if let Some(v) = field("stopsignal") {
        if let Some(s) = string(v, &at("stopsignal"), p) {
            match parse_signal(s) {
                Some(sig) => policy.stopsignal = sig,
                None => p.add(
                    &at("stopsignal"),
                    format!("unknown signal \"{s}\" (expected a name like \"TERM\")"),
                ),
            }
        }
    }
    if let Some(v) = obj.get("stdout") {
        spawn.stdout = file_path(v, &at("stdout"), base, p).flatten();
    }
    if let Some(v) = obj.get("stderr") {
        spawn.stderr = file_path(v, &at("stderr"), base, p).flatten();
    }
    // After `stderr`, which `redirect_stderr` must find unset.
    output::read(obj, path, &mut spawn, p);
    if let Some(v) = field("workingdir") {
        spawn.workingdir = file_path(v, &at("workingdir"), base, p).flatten();
    }
    privileges::read(obj, path, base, &mut spawn, p);
    if let Some(v) = field("max_memory") {
        policy.max_memory = output::size(v, &at("max_memory"), p);
        if policy.max_memory == Some(0) {
            // Every process uses some: 0 would restart forever.
            p.add(&at("max_memory"), "must be more than 0 bytes");
        }
    }
    if let Some(v) = field("umask") {
        spawn.umask = umask(v, &at("umask"), p);
    }
    if let Some(v) = field("env") {
        match v {
            Value::Object(vars) => {
                for (key, val) in vars {
                    let vpath = format!("{path}.env.{key}");
                    if key.is_empty() || key.contains('=') || key.contains('\0') {
                        p.add(&vpath, "invalid environment variable name");
                        continue;
                    }
                    let text = match val {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => match integer(val) {
                            Some(i)
                                if n.is_f64() && n.as_f64().is_some_and(|f| f.fract() == 0.0) =>
                            {
                                i.to_string()
                            }
                            _ => n.to_string(),
                        },
                        other => {
                            p.add(
                                &vpath,
                                format!("expected a string or number, got {}", kind(other)),
                            );
                            continue;
                        }
                    };
                    if text.contains('\0') {
                        p.add(&vpath, "must not contain NUL bytes");
                        continue;
                    }
                    spawn.env.insert(key.clone(), text);
                }
            }
            Value::Array(a) if a.is_empty() => {}
            other => p.add(
                &at("env"),
                format!("expected a table of strings, got {}", kind(other)),
            ),
        }
    }
    // After `numprocs`: which instances the templates must expand for.
    let last = numprocs - 1;
    placeholders::check_spawn(&spawn, path, last, p);
    if let Some(v) = field("healthcheck") {
        policy.healthcheck = healthcheck::read(v, &at("healthcheck"), name, last, p);
    }
    if let Some(v) = field("depends_on") {
        policy.depends_on = deps::read(v, &at("depends_on"), p);
    }
    graph.insert(
        name.to_string(),
        deps::Node {
            deps: policy.depends_on.clone(),
            healthcheck: field("healthcheck").is_some(),
        },
    );
    (p.count() == before).then(|| Service {
        numprocs,
        spawn,
        policy: std::sync::Arc::new(policy),
    })
}

#[cfg(test)]
mod tests;
