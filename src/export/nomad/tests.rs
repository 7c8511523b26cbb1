//! The job JSON for every mapped field, checked against the field names of
//! Nomad's JSON job specification: developer.hashicorp.com/nomad/api-docs/json-jobs
//! (`Job`: `ID`, `Name`, `Type`, `Datacenters`, `TaskGroups`; task group:
//! `Name`, `Count`, `RestartPolicy` {`Attempts`, `Interval`, `Delay`,
//! `Mode`}, `ReschedulePolicy` {`Attempts`, `Unlimited`}, `Networks`
//! [{`ReservedPorts`: [{`Label`, `Value`}]}], `Tasks`; task: `Name`,
//! `Driver`, `User`, `Config`, `Env`, `KillSignal`, `KillTimeout`,
//! `Services` [{`Name`, `Provider`, `PortLabel`, `Checks`: [{`Name`,
//! `Type`, `Command`, `Args`, `Path`, `PortLabel`, `Interval`, `Timeout`,
//! `CheckRestart` {`Limit`, `Grace`, `IgnoreWarnings`}}]}]; every duration
//! in nanoseconds), and of the raw_exec driver's `command`/`args`
//! (developer.hashicorp.com/nomad/docs/drivers/raw_exec).

use std::path::Path;

use serde_json::{json, Value};

use super::*;
use crate::config::validate;

const SECOND: u64 = 1_000_000_000;

fn config(services: Value) -> Config {
    validate(&json!({ "services": services }), Path::new("/srv/app")).unwrap()
}

fn job(services: Value) -> Job {
    render(&config(services), "shop", &[]).unwrap()
}

fn groups(job: &Job) -> &Vec<Value> {
    job.json["Job"]["TaskGroups"].as_array().unwrap()
}

fn group<'a>(job: &'a Job, name: &str) -> &'a Value {
    groups(job)
        .iter()
        .find(|g| g["Name"] == name)
        .unwrap_or_else(|| panic!("no group {name} in {:#}", job.json))
}

#[test]
fn the_job_and_a_plain_service() {
    let j = job(json!({"web": {"cmd": "/usr/bin/python3 -m http.server 8000", "numprocs": 3}}));
    assert_eq!(
        j.json,
        json!({"Job": {
            "ID": "shop",
            "Name": "shop",
            "Type": "service",
            "Datacenters": ["*"],
            "TaskGroups": [{
                "Name": "web",
                "Count": 3,
                "RestartPolicy": {
                    "Attempts": 3,
                    "Interval": 8 * SECOND,
                    "Delay": SECOND,
                    "Mode": "fail",
                },
                "Tasks": [{
                    "Name": "web",
                    "Driver": "raw_exec",
                    "Config": {
                        "command": "/usr/bin/python3",
                        "args": ["-m", "http.server", "8000"],
                    },
                    "Env": {
                        "TASKMASTER_SERVICE": "web",
                        "TASKMASTER_INSTANCE": "${NOMAD_ALLOC_INDEX}",
                    },
                    "KillSignal": "SIGTERM",
                    "KillTimeout": 10 * SECOND,
                }],
            }],
        }})
    );
    // The default policy: what Nomad does differently.
    assert_eq!(
        j.unmapped,
        vec!["services.web.autorestart = \"unexpected\": Nomad restarts a service task after any exit, 0 included"]
    );
    let j = job(json!({"web": {"cmd": "/bin/web", "autorestart": "always"}}));
    assert_eq!(j.unmapped, Vec::<String>::new());
}

#[test]
fn every_task_field() {
    let j = job(json!({
        "api": {
            "cmd": "node server.js --port $PORT",
            "env": {"PORT": "3000", "MODE": "{service}"},
            "user": "root",
            "stopsignal": "QUIT",
            "stoptime": 1.5,
            "workingdir": "/srv/api",
            "umask": "027",
        },
        "cron": {"cmd": "/bin/true", "autostart": false, "autorestart": "never"},
        "loop": {"cmd": "/bin/sleep 1", "autorestart": "always", "startretries": 10, "starttime": 2},
    }));
    let api = group(&j, "api");
    let task = &api["Tasks"][0];
    assert_eq!(
        task["Config"],
        json!({
            "command": "/bin/sh",
            "args": ["-c", "cd '/srv/api' || exit 1; umask 027; exec node server.js --port $PORT"],
        })
    );
    assert_eq!(task["Env"]["PORT"], "3000");
    assert_eq!(task["Env"]["MODE"], "api");
    assert_eq!(task["User"], "root");
    assert_eq!(task["KillSignal"], "SIGQUIT");
    assert_eq!(task["KillTimeout"], json!(1_500_000_000u64));
    // autostart = false: declared, not run.
    let cron = group(&j, "cron");
    assert_eq!(cron["Count"], 0);
    assert_eq!(cron["RestartPolicy"]["Attempts"], 0);
    assert_eq!(cron["RestartPolicy"]["Mode"], "fail");
    assert_eq!(
        cron["ReschedulePolicy"],
        json!({"Attempts": 0, "Unlimited": false})
    );
    let restart = &group(&j, "loop")["RestartPolicy"];
    assert_eq!(restart["Attempts"], 10);
    // (1 s delay + 2 s starttime) × 11 starts.
    assert_eq!(restart["Interval"], json!(33 * SECOND));
    assert_eq!(restart["Delay"], json!(SECOND));
    assert!(group(&j, "loop").get("ReschedulePolicy").is_none());
    // A bare program name is found by the shell.
    let j = job(json!({"w": {"cmd": "sleep 5"}}));
    assert_eq!(
        group(&j, "w")["Tasks"][0]["Config"],
        json!({"command": "/bin/sh", "args": ["-c", "exec sleep 5"]})
    );
}

#[test]
fn checks_of_each_kind() {
    let j = job(json!({
        "web": {
            "cmd": "/bin/web",
            "healthcheck": {"http": "http://127.0.0.1:8080/health?full=1", "interval": 5, "timeout": 2,
                            "retries": 4, "start_period": 30},
        },
        "db": {"cmd": "/bin/db", "healthcheck": {"tcp": "localhost:5432", "on_unhealthy": "none"}},
        "q": {"cmd": "/bin/q", "healthcheck": {"cmd": "q-ping --fast"}},
    }));
    let web = group(&j, "web");
    assert_eq!(
        web["Networks"],
        json!([{"ReservedPorts": [{"Label": "http", "Value": 8080}]}])
    );
    assert_eq!(
        web["Tasks"][0]["Services"],
        json!([{
            "Name": "web",
            "Provider": "nomad",
            "PortLabel": "http",
            "Checks": [{
                "Name": "web-health",
                "Type": "http",
                "Path": "/health?full=1",
                "PortLabel": "http",
                "Interval": 5 * SECOND,
                "Timeout": 2 * SECOND,
                "CheckRestart": {"Limit": 4, "Grace": 30 * SECOND, "IgnoreWarnings": false},
            }],
        }])
    );
    let db = group(&j, "db");
    assert_eq!(
        db["Networks"],
        json!([{"ReservedPorts": [{"Label": "tcp", "Value": 5432}]}])
    );
    let check = &db["Tasks"][0]["Services"][0]["Checks"][0];
    assert_eq!(check["Type"], "tcp");
    assert_eq!(check["PortLabel"], "tcp");
    assert!(check.get("CheckRestart").is_none(), "{check}");
    let q = &group(&j, "q")["Tasks"][0]["Services"][0];
    // Script checks need Consul (Nomad's own provider runs http and tcp).
    assert_eq!(q["Provider"], "consul");
    assert!(q.get("PortLabel").is_none());
    assert_eq!(
        q["Checks"][0],
        json!({
            "Name": "q-health",
            "Type": "script",
            "Command": "/bin/sh",
            "Args": ["-c", "q-ping --fast"],
            "Interval": 10 * SECOND,
            "Timeout": SECOND,
            "CheckRestart": {"Limit": 3, "Grace": 0, "IgnoreWarnings": false},
        })
    );
    assert!(group(&j, "q").get("Networks").is_none());
}

#[test]
fn placeholders_make_a_group_per_instance() {
    let j = job(json!({
        "web": {
            "cmd": "/usr/bin/python3 -m http.server {instance+8000}",
            "numprocs": 2,
            "env": {"ID": "{name}"},
            "healthcheck": {"http": "http://127.0.0.1:{instance+8000}/"},
        },
        // {service} is the same for every instance: one group.
        "logger": {"cmd": "/bin/logger -t {service}", "numprocs": 2},
    }));
    let names: Vec<&str> = groups(&j)
        .iter()
        .map(|g| g["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["logger", "web-0", "web-1"]);
    assert_eq!(group(&j, "logger")["Count"], 2);
    assert_eq!(
        group(&j, "logger")["Tasks"][0]["Config"]["args"],
        json!(["-t", "logger"])
    );
    for i in 0..2u16 {
        let g = group(&j, &format!("web-{i}"));
        assert_eq!(g["Count"], 1);
        let task = &g["Tasks"][0];
        assert_eq!(task["Name"], "web");
        assert_eq!(
            task["Config"]["args"],
            json!(["-m", "http.server", (8000 + i).to_string()])
        );
        assert_eq!(task["Env"]["ID"], format!("web:{i}"));
        assert_eq!(task["Env"]["TASKMASTER_INSTANCE"], i.to_string());
        assert_eq!(
            g["Networks"][0]["ReservedPorts"][0]["Value"],
            json!(8000 + i)
        );
        assert_eq!(task["Services"][0]["Name"], "web");
    }
    // One instance needs no group of its own.
    let j = job(json!({"one": {"cmd": "/bin/x {instance}"}}));
    assert_eq!(group(&j, "one")["Tasks"][0]["Config"]["args"], json!(["0"]));
}

#[test]
fn what_does_not_map_is_listed() {
    let c = config(json!({
        "web": {
            "cmd": "serve ${HOME}",
            "stdout": "out.log",
            "stderr": "err.log",
            "timestamps": true,
            "autorestart": "unexpected",
            "exitcodes": [0, 2],
            "starttime": 3,
            "rlimits": {"nofile": 10},
            "max_memory": 1000,
            "depends_on": ["db"],
            "healthcheck": {"tcp": "127.0.0.1:1", "on_unhealthy": "none"},
        },
        "db": {"cmd": "db", "redirect_stderr": true, "stdout": "db.log", "autorestart": "always"},
    }));
    let j = render(&c, "x", &["EXITED".to_string()]).unwrap();
    assert_eq!(
        j.unmapped,
        vec![
            "services.db.stdout = /srv/app/db.log: Nomad keeps a task's output itself (nomad alloc logs), with its own rotation",
            "services.db.redirect_stderr: Nomad keeps stdout and stderr apart",
            "services.web.stdout = /srv/app/out.log: Nomad keeps a task's output itself (nomad alloc logs), with its own rotation",
            "services.web.stderr = /srv/app/err.log: Nomad keeps a task's output itself (nomad alloc logs), with its own rotation",
            "services.web.timestamps: Nomad's logs carry no timestamps",
            "services.web.rlimits: raw_exec sets no resource limits",
            "services.web.max_memory: raw_exec enforces no memory limit",
            "services.web.depends_on: Nomad has no start order between task groups",
            "services.web.autorestart = \"unexpected\": Nomad restarts a service task after any exit, 0 included",
            "services.web.exitcodes: Nomad tells no expected exit code from another",
            "services.web.starttime = 3s: Nomad counts a start once the task runs",
            "services.web.healthcheck.retries = 3: without a restart Nomad's check has no failure count",
            "services.web: Nomad interpolates ${...} in args and env before the shell sees them",
            "Lua hooks (tm.on \"EXITED\"): Nomad runs no Lua",
        ]
    );
}

#[test]
fn a_group_name_used_twice_is_an_error() {
    let c = config(json!({
        "web": {"cmd": "x {instance}", "numprocs": 2},
        "web-1": {"cmd": "y"},
    }));
    assert_eq!(
        render(&c, "x", &[]).unwrap_err(),
        "nomad: two task groups would be named \"web-1\" (a service named like another's instance group)"
    );
}
