//! `--export nomad`: the config as one Nomad job, in the JSON form of
//! Nomad's jobs HTTP API (`{"Job": {...}}`, what `nomad job run -json`
//! takes; field names from developer.hashicorp.com/nomad/api-docs/json-jobs,
//! durations in nanoseconds).
//!
//! Each service is a task group with `Count = numprocs` running one
//! `raw_exec` task (the driver that runs a host command as Taskmaster does,
//! without isolation): `Config.command`/`args` (the program itself when
//! `cmd` is one simple command with an absolute path, else `/bin/sh -c`
//! with the daemon's own script, `cd`/`umask` in front when `workingdir`/
//! `umask` are set), `Env` (with `TASKMASTER_SERVICE` and
//! `TASKMASTER_INSTANCE`, which is `${NOMAD_ALLOC_INDEX}`), `User`,
//! `KillSignal`, `KillTimeout`, a `RestartPolicy` from `autorestart` and
//! `startretries`, and a `Services` entry whose `Checks` item is the
//! healthcheck (`script`, `http` with `Path` and a port label, `tcp`; the
//! port reserved in the group's `Networks`; `on_unhealthy = "restart"` is a
//! `CheckRestart`). `autostart = false` is `Count = 0`: the group is
//! declared and scaled up by hand.
//!
//! Nomad cannot compute `{instance+K}` (its `${NOMAD_ALLOC_INDEX}` has no
//! arithmetic) and a group's allocations share one task definition, so a
//! service whose exported fields hold instance placeholders becomes one
//! group per instance, `NAME-0` … `NAME-N-1`, each with `Count = 1` and the
//! placeholders expanded. Everything that does not map is returned as a
//! line for stderr.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::config::placeholders::{expand, varies};
use crate::config::{
    http_target, launch, tcp_target, AutoRestart, Config, Healthcheck, Launch, OnUnhealthy, Policy,
    Probe, Service,
};

use super::{command_script, dns_name, shell_quote};

/// The delay between restarts (Taskmaster's back-off starts at 1 s).
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// Nomad refuses a restart interval below this.
const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// An exported job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// `{"Job": {...}}`.
    pub json: Value,
    /// One line per option that does not map (`services.web.stdout: …`).
    pub unmapped: Vec<String>,
}

/// The job `id` for `config`; `hooks` are the events the config's Lua
/// registered handlers for. Fails only when two groups would share a name.
pub fn render(config: &Config, id: &str, hooks: &[String]) -> Result<Job, String> {
    let mut groups: Vec<Value> = Vec::new();
    let mut unmapped = Vec::new();
    for (name, svc) in &config.services {
        unmapped.extend(not_mapped(name, svc));
        if per_instance(svc) {
            for i in 0..svc.numprocs {
                groups.push(group(name, svc, Some(i), &mut unmapped));
            }
        } else {
            groups.push(group(name, svc, None, &mut unmapped));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for g in &groups {
        let n = g["Name"].as_str().unwrap_or_default();
        if !seen.insert(n.to_string()) {
            return Err(format!(
                "nomad: two task groups would be named \"{n}\" (a service named like another's instance group)"
            ));
        }
    }
    if !hooks.is_empty() {
        unmapped.push(format!(
            "Lua hooks (tm.on {}): Nomad runs no Lua",
            hooks
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let json = json!({
        "Job": {
            "ID": id,
            "Name": id,
            "Type": "service",
            "Datacenters": ["*"],
            "TaskGroups": groups,
        }
    });
    Ok(Job { json, unmapped })
}

/// Whether a field the job uses differs between instances.
fn per_instance(svc: &Service) -> bool {
    let spawn = &svc.spawn;
    let probe = svc.policy.healthcheck.as_ref().map(|hc| match &hc.probe {
        Probe::Cmd(s) | Probe::Http(s) | Probe::Tcp(s) => s.as_str(),
    });
    svc.numprocs > 1
        && (varies(&spawn.cmd)
            || spawn.env.values().any(|v| varies(v))
            || spawn
                .workingdir
                .as_ref()
                .is_some_and(|w| varies(&w.to_string_lossy()))
            || probe.is_some_and(varies))
}

/// One task group: the whole service, or its instance `index`.
fn group(name: &str, svc: &Service, index: Option<u32>, unmapped: &mut Vec<String>) -> Value {
    let spawn = &svc.spawn;
    let policy = &svc.policy;
    // Without per-instance groups the templates vary by nothing but the
    // service name: instance 0's expansion is every instance's.
    let at = index.unwrap_or(0);
    let (group_name, count) = match index {
        Some(i) => (format!("{name}-{i}"), 1),
        None => (name.to_string(), svc.numprocs),
    };
    let count = if policy.autostart { count } else { 0 };
    let mut env = Map::new();
    for (k, v) in &spawn.env {
        env.insert(k.clone(), json!(expand(v, name, at)));
    }
    env.insert("TASKMASTER_SERVICE".into(), json!(name));
    env.insert(
        "TASKMASTER_INSTANCE".into(),
        match index {
            Some(i) => json!(i.to_string()),
            None => json!("${NOMAD_ALLOC_INDEX}"),
        },
    );
    let mut task = Map::new();
    task.insert("Name".into(), json!(name));
    task.insert("Driver".into(), json!("raw_exec"));
    task.insert("Config".into(), command(svc, name, at));
    task.insert("Env".into(), Value::Object(env));
    if let Some(user) = &spawn.run_as.user {
        task.insert("User".into(), json!(user));
    }
    task.insert("KillSignal".into(), json!(policy.stopsignal.as_str()));
    task.insert("KillTimeout".into(), json!(nanos(policy.stoptime)));
    let mut g = Map::new();
    g.insert("Name".into(), json!(group_name));
    g.insert("Count".into(), json!(count));
    g.insert("RestartPolicy".into(), restart_policy(policy));
    if policy.autorestart == AutoRestart::Never {
        g.insert(
            "ReschedulePolicy".into(),
            json!({"Attempts": 0, "Unlimited": false}),
        );
    }
    if let Some(hc) = &policy.healthcheck {
        let hc = hc.for_instance(name, at);
        if let Some((service, network)) = check(name, &hc, unmapped) {
            task.insert("Services".into(), json!([service]));
            if let Some(n) = network {
                g.insert("Networks".into(), json!([n]));
            }
        }
    }
    g.insert("Tasks".into(), json!([Value::Object(task)]));
    Value::Object(g)
}

/// `Config` of the raw_exec task.
fn command(svc: &Service, name: &str, index: u32) -> Value {
    let spawn = &svc.spawn;
    let cmd = expand(&spawn.cmd, name, index);
    let mut prefix = String::new();
    if let Some(dir) = &spawn.workingdir {
        let dir = expand(&dir.to_string_lossy(), name, index);
        prefix.push_str(&format!("cd {} || exit 1; ", shell_quote(&dir)));
    }
    if let Some(mask) = spawn.umask {
        prefix.push_str(&format!("umask {mask:03o}; "));
    }
    if let (true, Launch::Direct(argv)) = (prefix.is_empty(), launch(&cmd)) {
        // raw_exec wants an absolute path for a host binary; a bare name
        // is found by the shell.
        if argv.first().is_some_and(|p| p.starts_with('/')) {
            return json!({"command": argv[0], "args": argv[1..]});
        }
    }
    json!({
        "command": "/bin/sh",
        "args": ["-c", format!("{prefix}{}", command_script(&cmd))],
    })
}

/// Restarts in place: Taskmaster's retries of failed starts. Nomad counts
/// every exit of a service task, so `unexpected` restarts like `always`.
fn restart_policy(policy: &Policy) -> Value {
    let attempts = match policy.autorestart {
        AutoRestart::Never => 0,
        _ => policy.startretries,
    };
    // Only failures close together count, as only quick deaths (within
    // `starttime`) count towards FATAL here.
    let window = (RESTART_DELAY + policy.starttime).saturating_mul(attempts.saturating_add(1));
    let interval = window.max(MIN_INTERVAL);
    json!({
        "Attempts": attempts,
        "Interval": nanos(interval),
        "Delay": nanos(RESTART_DELAY),
        "Mode": "fail",
    })
}

/// The `Services` entry and the group network its check needs.
fn check(
    name: &str,
    hc: &Healthcheck,
    unmapped: &mut Vec<String>,
) -> Option<(Value, Option<Value>)> {
    let mut check = Map::new();
    let service = dns_name(name);
    check.insert("Name".into(), json!(format!("{service}-health")));
    check.insert("Interval".into(), json!(nanos(hc.interval)));
    check.insert("Timeout".into(), json!(nanos(hc.timeout)));
    let (provider, port) = match &hc.probe {
        Probe::Cmd(cmd) => {
            check.insert("Type".into(), json!("script"));
            check.insert("Command".into(), json!("/bin/sh"));
            check.insert("Args".into(), json!(["-c", cmd]));
            ("consul", None)
        }
        Probe::Http(url) => {
            let Ok(target) = http_target(url) else {
                unmapped.push(format!(
                    "services.{name}.healthcheck: {url} is not an http:// URL"
                ));
                return None;
            };
            check.insert("Type".into(), json!("http"));
            check.insert("Path".into(), json!(target.path));
            check.insert("PortLabel".into(), json!("http"));
            ("nomad", Some(("http", target.port)))
        }
        Probe::Tcp(addr) => {
            let Ok((_, port)) = tcp_target(addr) else {
                unmapped.push(format!("services.{name}.healthcheck: {addr} has no port"));
                return None;
            };
            check.insert("Type".into(), json!("tcp"));
            check.insert("PortLabel".into(), json!("tcp"));
            ("nomad", Some(("tcp", port)))
        }
    };
    if hc.on_unhealthy == OnUnhealthy::Restart {
        check.insert(
            "CheckRestart".into(),
            json!({
                "Limit": hc.retries,
                "Grace": nanos(hc.start_period),
                "IgnoreWarnings": false,
            }),
        );
    }
    let mut entry = Map::new();
    entry.insert("Name".into(), json!(service));
    entry.insert("Provider".into(), json!(provider));
    if let Some((label, _)) = port {
        entry.insert("PortLabel".into(), json!(label));
    }
    entry.insert("Checks".into(), json!([Value::Object(check)]));
    let network =
        port.map(|(label, value)| json!({"ReservedPorts": [{"Label": label, "Value": value}]}));
    Some((Value::Object(entry), network))
}

/// What a service sets that the job cannot say, one line each.
fn not_mapped(name: &str, svc: &Service) -> Vec<String> {
    let spawn = &svc.spawn;
    let policy = &svc.policy;
    let at = |option: &str| format!("services.{name}.{option}");
    let mut out = Vec::new();
    for (option, path) in [("stdout", &spawn.stdout), ("stderr", &spawn.stderr)] {
        if let Some(p) = path {
            out.push(format!(
                "{} = {}: Nomad keeps a task's output itself (nomad alloc logs), with its own rotation",
                at(option),
                p.display()
            ));
        }
    }
    if spawn.redirect_stderr {
        out.push(format!(
            "{}: Nomad keeps stdout and stderr apart",
            at("redirect_stderr")
        ));
    }
    if spawn.timestamps {
        out.push(format!(
            "{}: Nomad's logs carry no timestamps",
            at("timestamps")
        ));
    }
    if spawn.run_as.group.is_some() {
        out.push(format!(
            "{}: a raw_exec task runs with its user's groups",
            at("group")
        ));
    }
    if !spawn.rlimits.is_empty() {
        out.push(format!(
            "{}: raw_exec sets no resource limits",
            at("rlimits")
        ));
    }
    if !spawn.env_files.is_empty() {
        out.push(format!(
            "{}: not copied into the job (a template block with env = true can read it)",
            at("env_file")
        ));
    }
    if policy.max_memory.is_some() {
        out.push(format!(
            "{}: raw_exec enforces no memory limit",
            at("max_memory")
        ));
    }
    if !policy.depends_on.is_empty() {
        out.push(format!(
            "{}: Nomad has no start order between task groups",
            at("depends_on")
        ));
    }
    if policy.autorestart == AutoRestart::Unexpected {
        out.push(format!(
            "{} = \"unexpected\": Nomad restarts a service task after any exit, 0 included",
            at("autorestart")
        ));
    }
    if policy.exitcodes != [0] {
        out.push(format!(
            "{}: Nomad tells no expected exit code from another",
            at("exitcodes")
        ));
    }
    if policy.starttime != Policy::default().starttime {
        out.push(format!(
            "{} = {:?}: Nomad counts a start once the task runs",
            at("starttime"),
            policy.starttime
        ));
    }
    if let Some(hc) = &policy.healthcheck {
        if hc.on_unhealthy == OnUnhealthy::None && hc.retries > 1 {
            out.push(format!(
                "{}.retries = {}: without a restart Nomad's check has no failure count",
                at("healthcheck"),
                hc.retries
            ));
        }
    }
    let text = std::iter::once(spawn.cmd.as_str()).chain(spawn.env.values().map(String::as_str));
    if text.into_iter().any(|t| t.contains("${")) {
        out.push(format!(
            "services.{name}: Nomad interpolates ${{...}} in args and env before the shell sees them"
        ));
    }
    out
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
