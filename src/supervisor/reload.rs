//! The pure diff of two configs (SPEC §5): what a reload must do to each
//! service. No IO; the actor (`supervisor/mod.rs`) carries the plan out.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::protocol::DiffData;

/// What happens to one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// New: create, autostart.
    Added,
    /// Gone: stop gracefully, drop.
    Removed,
    /// Options differ. `respawn` when the way it spawns changed (restart the
    /// kept instances); otherwise policy (`healthcheck` and `depends_on`
    /// included, SPEC §18) and `numprocs` apply in place.
    Changed {
        /// Whether kept instances must restart.
        respawn: bool,
    },
    /// Identical: untouched.
    Unchanged,
}

/// A reload plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Per service.
    pub kinds: BTreeMap<String, Change>,
    /// Removed services, in name order.
    pub removed: Vec<String>,
    /// The lists the reply carries.
    pub data: DiffData,
}

impl Plan {
    /// What happens to `name`.
    pub fn kind_of(&self, name: &str) -> Option<Change> {
        self.kinds.get(name).copied()
    }
}

/// Compares the running config with a new one.
pub fn diff(old: &Config, new: &Config) -> Plan {
    let mut kinds = BTreeMap::new();
    let mut data = DiffData::default();
    for (name, svc) in &new.services {
        let change = match old.services.get(name) {
            None => Change::Added,
            Some(prev) if prev == svc => Change::Unchanged,
            Some(prev) => Change::Changed {
                respawn: prev.spawn != svc.spawn,
            },
        };
        match change {
            Change::Added => data.added.push(name.clone()),
            Change::Unchanged => data.unchanged.push(name.clone()),
            _ => data.changed.push(name.clone()),
        }
        kinds.insert(name.clone(), change);
    }
    let removed: Vec<String> = old
        .services
        .keys()
        .filter(|n| !new.services.contains_key(*n))
        .cloned()
        .collect();
    for name in &removed {
        kinds.insert(name.clone(), Change::Removed);
    }
    data.removed = removed.clone();
    Plan {
        kinds,
        removed,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate;
    use serde_json::{json, Value};
    use std::path::Path;

    fn cfg(v: Value) -> Config {
        validate(&json!({ "services": v }), Path::new("/b")).unwrap()
    }

    #[test]
    fn each_class_of_change() {
        let old = cfg(json!({
            "same": {"cmd": "sleep 1"},
            "gone": {"cmd": "sleep 1"},
            "cmd": {"cmd": "sleep 1"},
            "env": {"cmd": "sleep 1"},
            "wd": {"cmd": "sleep 1"},
            "umask": {"cmd": "sleep 1"},
            "out": {"cmd": "sleep 1"},
            "err": {"cmd": "sleep 1"},
            "more": {"cmd": "sleep 1", "numprocs": 2},
            "fewer": {"cmd": "sleep 1", "numprocs": 3},
            "policy": {"cmd": "sleep 1"},
            "out_max": {"cmd": "sleep 1"},
            "err_max": {"cmd": "sleep 1", "stderr_maxbytes": "1MB"},
            "out_keep": {"cmd": "sleep 1"},
            "err_keep": {"cmd": "sleep 1"},
            "redirect": {"cmd": "sleep 1", "stdout": "o.log"},
            "stamps": {"cmd": "sleep 1", "timestamps": true},
            "same_size": {"cmd": "sleep 1", "stdout_maxbytes": 1048576},
            "hc_add": {"cmd": "sleep 1"},
            "hc_drop": {"cmd": "sleep 1", "healthcheck": {"cmd": "true"}},
            "hc_timing": {"cmd": "sleep 1", "healthcheck": {"cmd": "true"}},
            "hc_probe": {"cmd": "sleep 1", "numprocs": 2,
                         "healthcheck": {"http": "http://127.0.0.1:{instance+8000}/"}},
            "dep_add": {"cmd": "sleep 1"},
            "dep_cond": {"cmd": "sleep 1", "depends_on": ["hc_add"]},
            "dep_same": {"cmd": "sleep 1", "depends_on": ["same"]},
            "ph_cmd": {"cmd": "sleep {instance}", "numprocs": 2},
            "ph_env": {"cmd": "sleep 1", "env": {"PORT": "{instance+8000}"}},
            "ph_out": {"cmd": "sleep 1", "stdout": "{name}.log"},
            "ph_same": {"cmd": "sleep {instance}"},
        }));
        let new = cfg(json!({
            "same": {"cmd": "sleep 1"},
            "new": {"cmd": "sleep 1"},
            "cmd": {"cmd": "sleep 2"},
            "env": {"cmd": "sleep 1", "env": {"A": "1"}},
            "wd": {"cmd": "sleep 1", "workingdir": "/tmp"},
            "umask": {"cmd": "sleep 1", "umask": "077"},
            "out": {"cmd": "sleep 1", "stdout": "o.log"},
            "err": {"cmd": "sleep 1", "stderr": "e.log"},
            "more": {"cmd": "sleep 1", "numprocs": 4},
            "fewer": {"cmd": "sleep 1", "numprocs": 1},
            "policy": {"cmd": "sleep 1", "autorestart": "always", "exitcodes": [0, 1], "startretries": 9,
                       "starttime": 3, "stopsignal": "INT", "stoptime": 2, "autostart": false},
            // SPEC §18: every §10 option is a spawn change.
            "out_max": {"cmd": "sleep 1", "stdout_maxbytes": "10MB"},
            "err_max": {"cmd": "sleep 1", "stderr_maxbytes": 0},
            "out_keep": {"cmd": "sleep 1", "stdout_backups": 3},
            "err_keep": {"cmd": "sleep 1", "stderr_backups": 0},
            "redirect": {"cmd": "sleep 1", "stdout": "o.log", "redirect_stderr": true},
            "stamps": {"cmd": "sleep 1", "timestamps": false},
            // Another spelling of the same size is no change at all.
            "same_size": {"cmd": "sleep 1", "stdout_maxbytes": "1MB"},
            // SPEC §11 and §18: `healthcheck` and `depends_on` are policy.
            "hc_add": {"cmd": "sleep 1", "healthcheck": {"tcp": "127.0.0.1:5432"}},
            "hc_drop": {"cmd": "sleep 1"},
            "hc_timing": {"cmd": "sleep 1", "healthcheck": {"cmd": "true", "interval": 2,
                          "timeout": 0.5, "retries": 1, "start_period": 3, "on_unhealthy": "none"}},
            "hc_probe": {"cmd": "sleep 1", "numprocs": 2,
                         "healthcheck": {"http": "http://127.0.0.1:{instance+9000}/"}},
            "dep_add": {"cmd": "sleep 1", "depends_on": ["same"]},
            "dep_cond": {"cmd": "sleep 1", "depends_on": {"hc_add": "healthy"}},
            // A list and its table spelling are the same dependencies.
            "dep_same": {"cmd": "sleep 1", "depends_on": {"same": "started"}},
            // The diff compares templates: a placeholder change is a spawn
            // change like any other.
            "ph_cmd": {"cmd": "sleep {instance+1}", "numprocs": 2},
            "ph_env": {"cmd": "sleep 1", "env": {"PORT": "{instance+9000}"}},
            "ph_out": {"cmd": "sleep 1", "stdout": "{service}-{instance}.log"},
            "ph_same": {"cmd": "sleep {instance}"},
        }));
        let plan = diff(&old, &new);
        let respawn = Change::Changed { respawn: true };
        let in_place = Change::Changed { respawn: false };
        let want = [
            ("same", Change::Unchanged),
            ("gone", Change::Removed),
            ("new", Change::Added),
            ("cmd", respawn),
            ("env", respawn),
            ("wd", respawn),
            ("umask", respawn),
            ("out", respawn),
            ("err", respawn),
            ("more", in_place),
            ("fewer", in_place),
            ("policy", in_place),
            ("out_max", respawn),
            ("err_max", respawn),
            ("out_keep", respawn),
            ("err_keep", respawn),
            ("redirect", respawn),
            ("stamps", respawn),
            ("same_size", Change::Unchanged),
            ("hc_add", in_place),
            ("hc_drop", in_place),
            ("hc_timing", in_place),
            ("hc_probe", in_place),
            ("dep_add", in_place),
            ("dep_cond", in_place),
            ("dep_same", Change::Unchanged),
            ("ph_cmd", respawn),
            ("ph_env", respawn),
            ("ph_out", respawn),
            ("ph_same", Change::Unchanged),
        ];
        for (name, change) in want {
            assert_eq!(plan.kind_of(name), Some(change), "{name}");
        }
        assert_eq!(plan.data.added, vec!["new"]);
        assert_eq!(plan.data.removed, vec!["gone"]);
        assert_eq!(
            plan.data.unchanged,
            vec!["dep_same", "ph_same", "same", "same_size"]
        );
        assert_eq!(
            plan.data.changed,
            vec![
                "cmd",
                "dep_add",
                "dep_cond",
                "env",
                "err",
                "err_keep",
                "err_max",
                "fewer",
                "hc_add",
                "hc_drop",
                "hc_probe",
                "hc_timing",
                "more",
                "out",
                "out_keep",
                "out_max",
                "ph_cmd",
                "ph_env",
                "ph_out",
                "policy",
                "redirect",
                "stamps",
                "umask",
                "wd"
            ]
        );
    }

    #[test]
    fn identical_configs_change_nothing() {
        let c = cfg(json!({"a": {"cmd": "x"}, "b": {"cmd": "y", "numprocs": 3}}));
        let plan = diff(&c, &c.clone());
        assert!(
            plan.data.added.is_empty()
                && plan.data.removed.is_empty()
                && plan.data.changed.is_empty()
        );
        assert_eq!(plan.data.unchanged, vec!["a", "b"]);
    }

    #[test]
    fn section_12_classes() {
        // SPEC §18: user, group, rlimits (and env_file content) respawn;
        // max_memory is policy.
        let old = cfg(json!({
            "user": {"cmd": "sleep 1"},
            "group": {"cmd": "sleep 1"},
            "limits": {"cmd": "sleep 1", "rlimits": {"nofile": 100}},
            "mem": {"cmd": "sleep 1", "max_memory": "1GB"},
        }));
        let new = cfg(json!({
            "user": {"cmd": "sleep 1", "user": "root"},
            "group": {"cmd": "sleep 1", "group": 4242},
            "limits": {"cmd": "sleep 1", "rlimits": {"nofile": 200}},
            "mem": {"cmd": "sleep 1", "max_memory": "2GB"},
        }));
        let plan = diff(&old, &new);
        let respawn = Change::Changed { respawn: true };
        for name in ["user", "group", "limits"] {
            assert_eq!(plan.kind_of(name), Some(respawn), "{name}");
        }
        assert_eq!(
            plan.kind_of("mem"),
            Some(Change::Changed { respawn: false })
        );
    }
}
