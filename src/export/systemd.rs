//! `--export systemd`: one template unit `NAME@.service` per service (the
//! instance name `%i` is the instance number) and `taskmaster.target`,
//! which wants every `NAME@0 … NAME@N-1` of the services with `autostart`.
//!
//! The mapping (systemd.service(5), systemd.exec(5), systemd.kill(5),
//! systemd.unit(5), systemd.resource-control(5)):
//! - `cmd` → `ExecStart=/bin/sh -c '…'`, the script being what the daemon
//!   runs (`exec CMD` for a simple command, so the program is the main
//!   pid). In it `%` and `$` are doubled (systemd expands both in command
//!   lines) and `\` and `'` backslash-escaped (systemd unescapes C escapes
//!   inside quotes too); `{instance}` is `%i`, `{instance+K}` is
//!   `$((%i+K))` and `{instance:0N}` is `$(printf %0Nd %i)`, left to the
//!   shell (closing a shell single quote around them when they sit in one).
//! - `env` → `Environment="K=V"`, `TASKMASTER_SERVICE` and
//!   `TASKMASTER_INSTANCE=%i` included; a value that needs arithmetic, or
//!   whose key an `env_file` sets too (systemd lets `EnvironmentFile=` win,
//!   Taskmaster lets `env` win), is exported by the ExecStart shell instead.
//!   `env_file` → `EnvironmentFile=`.
//! - `autorestart` → `Restart=always|on-failure|no` (with `on-failure`,
//!   `RestartForceExitStatus=` the four signals systemd counts as clean: a
//!   death by signal is unexpected here); `exitcodes` → `SuccessExitStatus=`;
//!   `startretries` → `StartLimitBurst=` (retries + 1 starts); `stopsignal`
//!   → `KillSignal=`; `stoptime` → `TimeoutStopSec=` (0, which systemd would
//!   read as "no timeout", is written 1ms); `workingdir`, `umask`, `user`,
//!   `group`, `rlimits` → `Limit*=`, `max_memory` → `MemoryMax=`;
//!   `stdout`/`stderr` → `StandardOutput=`/`StandardError=` (`append:FILE`,
//!   `null` for nil, `journal` for `/dev/stdout`, `inherit` with
//!   `redirect_stderr`); `depends_on` → `Requires=` + `After=` on every
//!   instance of the dependency.
//! - What has no equivalent is a `# not exported:` line in the unit: an
//!   `exitcodes` list without 0, a healthcheck, a `healthy`/`completed`
//!   condition, rotation and timestamps of log files, a path that needs
//!   arithmetic, a non-default `starttime`; the Lua hooks in the target.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::config::placeholders::{parts, Part};
use crate::config::{AutoRestart, Condition, Config, Policy, Probe, Rotation, Service};

use super::{command_script, is_env_name, shell_quote};

/// The target that gathers the autostarted instances.
pub const TARGET: &str = "taskmaster.target";

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// File name (`web@.service`).
    pub name: String,
    /// Its content.
    pub text: String,
}

/// Every unit for `config`: a template per service, then the target.
/// `hooks` are the events the config's Lua registered handlers for.
pub fn render(config: &Config, hooks: &[String]) -> Vec<Unit> {
    let mut units: Vec<Unit> = config
        .services
        .iter()
        .map(|(name, svc)| service(name, svc, config))
        .collect();
    units.push(target(config, hooks));
    units
}

fn service(name: &str, svc: &Service, config: &Config) -> Unit {
    let spawn = &svc.spawn;
    let policy = &svc.policy;
    let instances = match svc.numprocs {
        1 => format!("One instance, {name}@0"),
        n => format!("Instances {name}@0 … {name}@{} (numprocs = {n})", n - 1),
    };
    let mut head = vec![
        format!("# {name}@.service, written by `taskmasterd --export systemd`."),
        format!("# {instances}; %i is the instance number."),
    ];
    if !policy.autostart {
        head.push(format!(
            "# autostart = false: {TARGET} does not want them (systemctl start {name}@0)."
        ));
    }
    let mut unit = vec![
        format!("Description=Taskmaster service {name}, instance %i"),
        format!("PartOf={TARGET}"),
    ];
    let mut not = Vec::new();
    for (dep, condition) in &policy.depends_on {
        let n = config.services.get(dep).map_or(1, |s| s.numprocs);
        let list: Vec<String> = (0..n).map(|i| format!("{dep}@{i}.service")).collect();
        unit.push(format!("Requires={}", list.join(" ")));
        unit.push(format!("After={}", list.join(" ")));
        match condition {
            Condition::Started => {}
            Condition::Healthy => not.push(format!(
                "depends_on {dep} = \"healthy\" (ordered after its start only: systemd has no health state)"
            )),
            Condition::Completed => not.push(format!(
                "depends_on {dep} = \"completed\" (ordered after its start only; a Type=oneshot {dep} would be waited for)"
            )),
        }
    }
    unit.push(format!(
        "StartLimitBurst={}",
        policy.startretries.saturating_add(1)
    ));

    let mut out = vec!["Type=simple".to_string()];
    let mut exports = String::new();
    let mut env = vec![format!(
        "Environment=\"TASKMASTER_SERVICE={}\" \"TASKMASTER_INSTANCE=%i\"",
        env_text(name)
    )];
    for (key, value) in &spawn.env {
        if !is_env_name(key) {
            not.push(format!(
                "env.{key} (not a variable name systemd or sh accepts)"
            ));
            continue;
        }
        match env_setting(value, name) {
            Some(text) if !spawn.file_env.contains_key(key) => {
                env.push(format!("Environment=\"{key}={text}\""))
            }
            _ => {
                let _ = write!(exports, "export {key}={}; ", shell_word(value, name));
            }
        }
    }
    let script = format!(
        "{exports}{}",
        exec_script(&command_script(&spawn.cmd), name)
    );
    out.push(format!("ExecStart=/bin/sh -c '{script}'"));
    out.extend(env);
    for file in &spawn.env_files {
        out.push(format!(
            "EnvironmentFile={}",
            path_text(&file.to_string_lossy())
        ));
    }
    if let Some(dir) = &spawn.workingdir {
        match path_setting(dir, name) {
            Some(p) => out.push(format!("WorkingDirectory={p}")),
            None => not.push(format!(
                "workingdir = {} (systemd has no {{instance+K}} or padding outside a shell)",
                dir.display()
            )),
        }
    }
    if let Some(mask) = spawn.umask {
        out.push(format!("UMask={mask:04o}"));
    }
    if let Some(user) = &spawn.run_as.user {
        out.push(format!("User={}", path_text(user)));
    }
    if let Some(group) = &spawn.run_as.group {
        out.push(format!("Group={}", path_text(group)));
    }
    restart(policy, &mut out, &mut not);
    out.push(format!("KillSignal={}", policy.stopsignal.as_str()));
    let stop = if policy.stoptime.is_zero() {
        // 0 is "no timeout" to systemd; Taskmaster kills at once.
        "1ms".to_string()
    } else {
        timespan(policy.stoptime)
    };
    out.push(format!("TimeoutStopSec={stop}"));
    stream(
        "stdout",
        "StandardOutput",
        spawn.stdout.as_deref(),
        spawn.stdout_rotation,
        name,
        &mut out,
        &mut not,
    );
    if spawn.redirect_stderr {
        out.push("StandardError=inherit".to_string());
    } else {
        stream(
            "stderr",
            "StandardError",
            spawn.stderr.as_deref(),
            spawn.stderr_rotation,
            name,
            &mut out,
            &mut not,
        );
    }
    if spawn.timestamps {
        not.push("timestamps = true (the journal stamps lines; append: files get none)".into());
    }
    for (resource, limit) in &spawn.rlimits {
        let value = limit.map_or("infinity".to_string(), |n| n.to_string());
        out.push(format!(
            "Limit{}={value}",
            resource.name().to_ascii_uppercase()
        ));
    }
    if let Some(bytes) = policy.max_memory {
        out.push(format!("MemoryMax={bytes}"));
    }
    if let Some(hc) = &policy.healthcheck {
        let (kind, target) = match &hc.probe {
            Probe::Cmd(s) => ("cmd", s),
            Probe::Http(s) => ("http", s),
            Probe::Tcp(s) => ("tcp", s),
        };
        not.push(format!(
            "healthcheck ({kind} {target}, every {:?}): systemd has no health probes",
            hc.interval
        ));
    }
    if policy.starttime != Policy::default().starttime {
        not.push(format!(
            "starttime = {:?} (systemd counts a start once the program runs)",
            policy.starttime
        ));
    }

    let mut text = head.join("\n");
    text.push_str("\n[Unit]\n");
    for line in unit {
        text.push_str(&line);
        text.push('\n');
    }
    text.push_str("\n[Service]\n");
    for line in out {
        text.push_str(&line);
        text.push('\n');
    }
    for line in not {
        // A comment is one line: whatever the values hold.
        let line = line.replace(['\n', '\r'], " ");
        text.push_str(&format!("# not exported: {line}\n"));
    }
    Unit {
        name: format!("{name}@.service"),
        text,
    }
}

/// `Restart=` and the exit statuses that go with it.
fn restart(policy: &Policy, out: &mut Vec<String>, not: &mut Vec<String>) {
    let restart = match policy.autorestart {
        AutoRestart::Always => "always",
        AutoRestart::Unexpected => "on-failure",
        AutoRestart::Never => "no",
    };
    out.push(format!("Restart={restart}"));
    if policy.autorestart == AutoRestart::Unexpected {
        // on-failure counts these four as a clean end; here a death by
        // any signal is unexpected.
        out.push("RestartForceExitStatus=SIGHUP SIGINT SIGTERM SIGPIPE".into());
    }
    let extra: Vec<String> = policy
        .exitcodes
        .iter()
        .filter(|c| **c != 0)
        .map(|c| c.to_string())
        .collect();
    if !extra.is_empty() {
        out.push(format!("SuccessExitStatus={}", extra.join(" ")));
    }
    if !policy.exitcodes.contains(&0) {
        let codes: Vec<String> = policy.exitcodes.iter().map(|c| c.to_string()).collect();
        not.push(format!(
            "exitcodes = {{{}}} without 0 (systemd always counts exit 0 as a success)",
            codes.join(", ")
        ));
    }
    if policy.autorestart == AutoRestart::Never && policy.startretries > 0 {
        not.push(format!(
            "startretries = {} (with Restart=no systemd does not retry a failed start)",
            policy.startretries
        ));
    }
}

/// `StandardOutput=` / `StandardError=` for one stream.
fn stream(
    option: &str,
    setting: &str,
    path: Option<&Path>,
    rotation: Rotation,
    service: &str,
    out: &mut Vec<String>,
    not: &mut Vec<String>,
) {
    let Some(path) = path else {
        out.push(format!("{setting}=null"));
        return;
    };
    if path == Path::new("/dev/stdout") || path == Path::new("/dev/stderr") {
        // The daemon's own output: under systemd, the journal.
        out.push(format!("{setting}=journal"));
        return;
    }
    match path_setting(path, service) {
        Some(p) => out.push(format!("{setting}=append:{p}")),
        None => {
            out.push(format!("{setting}=journal"));
            not.push(format!(
                "{option} = {} (systemd has no {{instance+K}} or padding outside a shell; the stream goes to the journal)",
                path.display()
            ));
            return;
        }
    }
    if rotation.maxbytes > 0 && !path.starts_with("/dev") {
        not.push(format!(
            "{option}_maxbytes = {}, {option}_backups = {} (append: files are not rotated; logrotate can)",
            rotation.maxbytes, rotation.backups
        ));
    }
}

fn target(config: &Config, hooks: &[String]) -> Unit {
    let mut text = format!(
        "# {TARGET}, written by `taskmasterd --export systemd`: every instance\n\
         # of the services with autostart.\n[Unit]\nDescription=Taskmaster services\n"
    );
    let mut manual = Vec::new();
    for (name, svc) in &config.services {
        let list: Vec<String> = (0..svc.numprocs)
            .map(|i| format!("{name}@{i}.service"))
            .collect();
        if svc.policy.autostart {
            let _ = writeln!(text, "Wants={}", list.join(" "));
        } else {
            manual.push(format!("{name}@.service"));
        }
    }
    if !manual.is_empty() {
        let _ = writeln!(
            text,
            "# not wanted (autostart = false): {}",
            manual.join(" ")
        );
    }
    if !hooks.is_empty() {
        let events: Vec<String> = hooks.iter().map(|e| format!("\"{e}\"")).collect();
        let _ = writeln!(
            text,
            "# not exported: Lua hooks (tm.on {}): systemd runs no Lua (OnFailure= units can stand in for some)",
            events.join(", ").replace(['\n', '\r'], " ")
        );
    }
    text.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    Unit {
        name: TARGET.to_string(),
        text,
    }
}

/// Shell text inside ExecStart's single-quoted argument: systemd unescapes
/// C escapes even in quotes and expands `%` specifiers and `$` variables.
fn exec_text(s: &str) -> String {
    escape(s, &['\\', '\'', '%', '$'])
}

/// Text inside a double-quoted `Environment=` assignment: C escapes and
/// specifiers, but no `$` expansion there.
fn env_text(s: &str) -> String {
    escape(s, &['\\', '"', '%'])
}

/// A path setting: specifiers only.
fn path_text(s: &str) -> String {
    s.replace('%', "%%")
}

/// `s` with `%` doubled, `$` doubled, the other `special` characters
/// backslash-escaped and control characters as C escapes.
fn escape(s: &str, special: &[char]) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' if special.contains(&c) => out.push_str("%%"),
            '$' if special.contains(&c) => out.push_str("$$"),
            c if special.contains(&c) => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// The shell's side of `{instance+K:0N}`, as ExecStart text.
fn instance_shell(offset: i64, width: usize) -> String {
    let n = if offset == 0 {
        "%i".to_string()
    } else {
        format!("$$((%i{offset:+}))")
    };
    if width <= 1 {
        n
    } else {
        format!("$$(printf %%0{width}d {n})")
    }
}

/// Whether a placeholder needs the shell to compute it.
fn computed(part: &Part) -> bool {
    matches!(part, Part::Instance { offset, width } if *offset != 0 || *width > 1)
}

/// Where the shell is, quoting-wise, after some text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

fn advance(mut quote: Quote, text: &str) -> Quote {
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        quote = match (quote, c) {
            (Quote::None | Quote::Double, '\\') => {
                chars.next();
                quote
            }
            (Quote::None, '\'') => Quote::Single,
            (Quote::None, '"') => Quote::Double,
            (Quote::Single, '\'') | (Quote::Double, '"') => Quote::None,
            (q, _) => q,
        };
    }
    quote
}

/// A command script template as ExecStart text.
fn exec_script(template: &str, service: &str) -> String {
    let mut out = String::new();
    let mut quote = Quote::None;
    for part in parts(template) {
        match &part {
            Part::Text(t) => {
                out.push_str(&exec_text(t));
                quote = advance(quote, t);
            }
            Part::Instance { offset, width } if computed(&part) => {
                let n = instance_shell(*offset, *width);
                if quote == Quote::Single {
                    // `'…'"$((%i+1))"'…'`: out of the quote for the shell.
                    let _ = write!(out, "\\'\"{n}\"\\'");
                } else {
                    out.push_str(&n);
                }
            }
            Part::Instance { .. } => out.push_str("%i"),
            Part::Service => out.push_str(&exec_text(service)),
            Part::Name => {
                let _ = write!(out, "{}:%i", exec_text(service));
            }
        }
    }
    out
}

/// An env value as one shell word (for `export K=…` in ExecStart).
fn shell_word(template: &str, service: &str) -> String {
    let mut out = String::new();
    for part in parts(template) {
        match &part {
            Part::Text(t) => out.push_str(&exec_text(&shell_quote(t))),
            Part::Instance { offset, width } => out.push_str(&instance_shell(*offset, *width)),
            Part::Service => out.push_str(&exec_text(&shell_quote(service))),
            Part::Name => {
                let _ = write!(out, "{}%i", exec_text(&shell_quote(&format!("{service}:"))));
            }
        }
    }
    if out.is_empty() {
        out.push_str("''");
    }
    out
}

/// An env value as `Environment=` text, or None when it needs the shell.
fn env_setting(template: &str, service: &str) -> Option<String> {
    render_plain(template, service, env_text)
}

/// A path as a path setting's text, or None when it needs the shell.
fn path_setting(path: &Path, service: &str) -> Option<String> {
    render_plain(&path.to_string_lossy(), service, path_text)
}

/// A template with `%i` for the instance, `escape` applied to text; None
/// when a placeholder needs computing.
fn render_plain(template: &str, service: &str, escape: fn(&str) -> String) -> Option<String> {
    let mut out = String::new();
    for part in parts(template) {
        match &part {
            _ if computed(&part) => return None,
            Part::Text(t) => out.push_str(&escape(t)),
            Part::Instance { .. } => out.push_str("%i"),
            Part::Service => out.push_str(&escape(service)),
            Part::Name => {
                let _ = write!(out, "{}:%i", escape(service));
            }
        }
    }
    Some(out)
}

/// A systemd time span: whole seconds, else milliseconds (rounded up).
fn timespan(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{}ms", d.as_nanos().div_ceil(1_000_000))
    }
}

#[cfg(test)]
mod tests;
