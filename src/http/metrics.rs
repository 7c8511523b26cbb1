//! `/metrics` in the Prometheus text format 0.0.4 (SPEC §14, §18).
//!
//! Rendering is a pure function of a `status` snapshot and the per-group
//! CPU and memory read from /proc at the moment of the scrape (nothing is
//! sampled between scrapes, so an unscraped daemon pays nothing). Instances
//! are labelled `name`, `service` and `index`: `instance` is the label
//! Prometheus itself puts on every target.
//!
//! CPU is a counter: the group's user + system time, its members' reaped
//! children included (`cutime`/`cstime`). A member reaped by the daemon
//! itself (an orphan reparented to us) takes its time with it, which could
//! make the sum drop; [`CpuCounters`] keeps the highest value seen for each
//! run of an instance, so the counter never decreases while it runs and
//! starts again from the new process's time when it restarts (a counter
//! reset, which Prometheus's `rate` understands).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

use crate::process::memory::Usage;
use crate::protocol::StatusData;

/// The content type of a scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The highest CPU time reported per instance run, keyed by name, for the
/// pid it was reported for.
#[derive(Debug, Default)]
pub struct CpuCounters {
    seen: Mutex<HashMap<String, (u32, f64)>>,
}

impl CpuCounters {
    /// The counter value for `name` running as `pid` with `now` seconds
    /// measured; forgets every instance not in `live`.
    fn value(&self, name: &str, pid: u32, now: f64) -> f64 {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = seen.entry(name.to_string()).or_insert((pid, now));
        if entry.0 != pid {
            *entry = (pid, now);
        }
        entry.1 = entry.1.max(now);
        entry.1
    }

    /// Drops the instances that no longer run.
    fn retain(&self, running: &dyn Fn(&str) -> bool) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.retain(|name, _| running(name));
    }
}

/// Escapes a label value (`\`, `"` and newlines).
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes one `# HELP` / `# TYPE` pair.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A number as Prometheus reads it.
fn num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The scrape text for a status snapshot and each group's usage (by pgid,
/// which is the instance's pid: every instance leads its own group).
/// `ticks` is the kernel's clock ticks per second (`_SC_CLK_TCK`).
pub fn render(
    status: &StatusData,
    usage: &BTreeMap<u32, Usage>,
    ticks: f64,
    counters: &CpuCounters,
    version: &str,
) -> String {
    let mut out = String::with_capacity(256 + status.instances.len() * 900);
    let labels: Vec<String> = status
        .instances
        .iter()
        .map(|i| {
            format!(
                "name=\"{}\",service=\"{}\",index=\"{}\"",
                label(&i.name),
                label(&i.service),
                i.instance
            )
        })
        .collect();
    let series = |out: &mut String,
                  name: &str,
                  kind: &str,
                  help: &str,
                  value: &dyn Fn(usize) -> Option<(String, f64)>| {
        family(out, name, kind, help);
        for (i, l) in labels.iter().enumerate() {
            if let Some((extra, v)) = value(i) {
                let _ = writeln!(out, "{name}{{{l}{extra}}} {}", num(v));
            }
        }
    };
    let inst = &status.instances;
    series(
        &mut out,
        "taskmaster_instance_up",
        "gauge",
        "1 when the instance is RUNNING.",
        &|i| {
            Some((
                String::new(),
                f64::from(u8::from(inst[i].state == "RUNNING")),
            ))
        },
    );
    series(
        &mut out,
        "taskmaster_instance_state",
        "gauge",
        "The instance's current state (one series, value 1).",
        &|i| Some((format!(",state=\"{}\"", label(&inst[i].state)), 1.0)),
    );
    series(
        &mut out,
        "taskmaster_instance_restarts_total",
        "counter",
        "Automatic restarts since the last manual start.",
        &|i| Some((String::new(), f64::from(inst[i].restarts))),
    );
    series(
        &mut out,
        "taskmaster_instance_uptime_seconds",
        "gauge",
        "Seconds since the instance's process started (0 when none runs).",
        &|i| Some((String::new(), inst[i].uptime.unwrap_or(0.0))),
    );
    series(
        &mut out,
        "taskmaster_instance_healthy",
        "gauge",
        "1 when the healthcheck passes (only instances with a healthcheck that run).",
        &|i| {
            inst[i]
                .health
                .as_deref()
                .map(|h| (String::new(), f64::from(u8::from(h == "healthy"))))
        },
    );
    let pid = |i: usize| inst[i].pid;
    series(
        &mut out,
        "taskmaster_instance_cpu_seconds_total",
        "counter",
        "User and system CPU time of the instance's process group, reaped members included.",
        &|i| {
            let seconds = pid(i)
                .and_then(|p| usage.get(&p).map(|u| (p, u.cpu_ticks as f64 / ticks)))
                .map(|(p, s)| counters.value(&inst[i].name, p, s))
                .unwrap_or(0.0);
            Some((String::new(), seconds))
        },
    );
    // A set, not a scan per entry: quadratic at 1,000 instances.
    let running: HashSet<&str> = inst
        .iter()
        .filter(|i| i.pid.is_some())
        .map(|i| i.name.as_str())
        .collect();
    counters.retain(&|name| running.contains(name));
    series(
        &mut out,
        "taskmaster_instance_memory_rss_bytes",
        "gauge",
        "Resident memory summed over the instance's process group (shared pages count once per process).",
        &|i| {
            let rss = pid(i).and_then(|p| usage.get(&p)).map_or(0, |u| u.rss_bytes);
            Some((String::new(), rss as f64))
        },
    );
    family(
        &mut out,
        "taskmaster_config_last_reload_success",
        "gauge",
        "1 when the last config load or reload succeeded.",
    );
    let _ = writeln!(
        out,
        "taskmaster_config_last_reload_success {}",
        u8::from(status.config.error.is_none())
    );
    family(
        &mut out,
        "taskmaster_config_last_reload_timestamp_seconds",
        "gauge",
        "When the running config was loaded (unix seconds).",
    );
    let _ = writeln!(
        out,
        "taskmaster_config_last_reload_timestamp_seconds {}",
        num(status.config.loaded_at)
    );
    family(
        &mut out,
        "taskmaster_build_info",
        "gauge",
        "The daemon's version (value 1).",
    );
    let _ = writeln!(
        out,
        "taskmaster_build_info{{version=\"{}\"}} 1",
        label(version)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ConfigInfo, InstanceInfo};

    fn instance(name: &str, state: &str, pid: Option<u32>, health: Option<&str>) -> InstanceInfo {
        let (service, index) = name.split_once(':').unwrap();
        InstanceInfo {
            name: name.into(),
            service: service.into(),
            instance: index.parse().unwrap(),
            state: state.into(),
            pid,
            uptime: pid.map(|_| 12.5),
            exitcode: None,
            signal: None,
            restarts: 3,
            description: String::new(),
            health: health.map(Into::into),
            waiting_for: None,
        }
    }

    fn status(instances: Vec<InstanceInfo>, error: Option<&str>) -> StatusData {
        StatusData {
            instances,
            config: ConfigInfo {
                path: "/etc/t.lua".into(),
                loaded_at: 1_700_000_000.0,
                error: error.map(Into::into),
            },
        }
    }

    #[test]
    fn every_series_with_its_labels() {
        let s = status(
            vec![
                instance("web:0", "RUNNING", Some(100), Some("healthy")),
                instance("web:1", "BACKOFF", None, None),
                instance("q\"x:0", "RUNNING", Some(200), None),
            ],
            None,
        );
        let mut usage = BTreeMap::new();
        usage.insert(
            100,
            Usage {
                cpu_ticks: 250,
                rss_bytes: 4096,
            },
        );
        let text = render(&s, &usage, 100.0, &CpuCounters::default(), "0.1.0");
        let l0 = "name=\"web:0\",service=\"web\",index=\"0\"";
        for line in [
            format!("taskmaster_instance_up{{{l0}}} 1"),
            format!("taskmaster_instance_state{{{l0},state=\"RUNNING\"}} 1"),
            format!("taskmaster_instance_restarts_total{{{l0}}} 3"),
            format!("taskmaster_instance_uptime_seconds{{{l0}}} 12.5"),
            format!("taskmaster_instance_healthy{{{l0}}} 1"),
            format!("taskmaster_instance_cpu_seconds_total{{{l0}}} 2.5"),
            format!("taskmaster_instance_memory_rss_bytes{{{l0}}} 4096"),
            "taskmaster_instance_up{name=\"web:1\",service=\"web\",index=\"1\"} 0".into(),
            "taskmaster_instance_state{name=\"web:1\",service=\"web\",index=\"1\",state=\"BACKOFF\"} 1"
                .into(),
            "taskmaster_instance_uptime_seconds{name=\"web:1\",service=\"web\",index=\"1\"} 0".into(),
            "taskmaster_instance_up{name=\"q\\\"x:0\",service=\"q\\\"x\",index=\"0\"} 1".into(),
            "taskmaster_config_last_reload_success 1".into(),
            "taskmaster_config_last_reload_timestamp_seconds 1700000000".into(),
            "taskmaster_build_info{version=\"0.1.0\"} 1".into(),
            "# TYPE taskmaster_instance_restarts_total counter".into(),
            "# TYPE taskmaster_instance_cpu_seconds_total counter".into(),
            "# TYPE taskmaster_instance_up gauge".into(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Only instances with a health state have a healthy series.
        assert_eq!(text.matches("taskmaster_instance_healthy{").count(), 1);
        // One state series per instance.
        assert_eq!(text.matches("taskmaster_instance_state{").count(), 3);
        let failed = render(
            &status(vec![], Some("bad")),
            &usage,
            100.0,
            &CpuCounters::default(),
            "v",
        );
        assert!(failed.contains("\ntaskmaster_config_last_reload_success 0\n"));
    }

    #[test]
    fn cpu_never_decreases_within_a_run_and_resets_with_a_new_pid() {
        let c = CpuCounters::default();
        assert_eq!(c.value("a:0", 10, 5.0), 5.0);
        assert_eq!(
            c.value("a:0", 10, 4.0),
            5.0,
            "a reaped member took its time"
        );
        assert_eq!(c.value("a:0", 10, 6.0), 6.0);
        assert_eq!(c.value("a:0", 11, 0.5), 0.5, "a new run starts again");
        c.retain(&|_| false);
        assert!(c.seen.lock().unwrap().is_empty());
    }
}
