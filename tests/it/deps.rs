//! Dependencies and health checks with real processes (SPEC §11): each
//! probe kind, each condition, boot order, transitive start, FATAL
//! propagation, stop order, reload of probe settings, placeholders.

use std::fs;
use std::time::{Duration, Instant};

use crate::common::*;

fn services(body: &str) -> String {
    format!("return {{ services = {{ {body} }} }}")
}

fn state_of(d: &mut Daemon, name: &str) -> serde_json::Value {
    d.instance(name)
}

#[test]
fn a_dependent_waits_for_its_dependency_to_run() {
    let mut d = Daemon::start(
        "boot-order",
        &services(
            "db = { cmd = 'sleep 3001', starttime = 1 }, \
             api = { cmd = 'sleep 3002', starttime = 0, depends_on = { 'db' } }",
        ),
    );
    let api = state_of(&mut d, "api:0");
    assert_eq!(api["state"], "WAITING", "{api}");
    assert_eq!(api["waiting_for"], serde_json::json!(["db"]));
    assert_eq!(api["description"], "waiting for db (started)");
    d.wait_state("api:0", "RUNNING", secs(10));
    let log = d.log();
    let db_up = log.find("success: db:0 entered RUNNING").expect("db up");
    let api_spawn = log.find("spawned: 'api:0'").expect("api spawned");
    assert!(db_up < api_spawn, "api spawned before db ran:\n{log}");
}

#[test]
fn healthy_waits_for_a_passing_cmd_probe_and_status_shows_health() {
    let mut d = Daemon::start(
        "healthy",
        &services(
            "db = { cmd = 'sleep 3003', starttime = 0, \
                    healthcheck = { cmd = 'test -f ready', interval = 0.1, timeout = 1, retries = 1, \
                                    on_unhealthy = 'none' } }, \
             api = { cmd = 'sleep 3004', starttime = 0, depends_on = { db = 'healthy' } }",
        ),
    );
    let db = d.wait_until("db probed", secs(10), |s| {
        s.iter()
            .any(|i| i["name"] == "db:0" && i["health"] == "unhealthy")
    });
    let api = db.iter().find(|i| i["name"] == "api:0").unwrap();
    assert_eq!(api["state"], "WAITING", "{api}");
    assert_eq!(api["description"], "waiting for db (healthy)");
    fs::write(d.dir.join("ready"), "").unwrap();
    let s = d.wait_until("api running", secs(10), |s| {
        s.iter()
            .any(|i| i["name"] == "api:0" && i["state"] == "RUNNING")
    });
    let db = s.iter().find(|i| i["name"] == "db:0").unwrap();
    assert_eq!(db["health"], "healthy");
    assert!(
        db["description"].as_str().unwrap().ends_with(", healthy"),
        "{db}"
    );
    let api = s.iter().find(|i| i["name"] == "api:0").unwrap();
    assert_eq!(api["health"], serde_json::Value::Null);
}

#[test]
fn an_http_probe_per_instance_port_and_a_tcp_probe_pass() {
    let base = free_port();
    let mut d = Daemon::start(
        "http-probe",
        &services(&format!(
            "web = {{ cmd = 'python3 -m http.server {{instance+{base}}} --bind 127.0.0.1', \
                     numprocs = 2, starttime = 0, stdout = 'web-{{instance}}.log', \
                     healthcheck = {{ http = 'http://127.0.0.1:{{instance+{base}}}/', \
                                      interval = 0.2, retries = 5, timeout = 1, start_period = 0.5 }} }}, \
             raw = {{ cmd = 'python3 -m http.server {p} --bind 127.0.0.1', starttime = 0, \
                     healthcheck = {{ tcp = '127.0.0.1:{p}', interval = 0.2, retries = 10 }} }}",
            p = base + 10
        )),
    );
    d.wait_until("all healthy", secs(20), |s| {
        s.len() == 3 && s.iter().all(|i| i["health"] == "healthy")
    });
    assert!(d.dir.join("web-1.log").exists(), "placeholders in stdout");
}

#[test]
fn failing_probes_restart_the_instance_and_none_leaves_it_unhealthy() {
    let mut d = Daemon::start(
        "unhealthy",
        &services(
            "flaky = { cmd = 'sleep 3005', starttime = 0, \
                       healthcheck = { cmd = 'echo probe says no; exit 1', interval = 0.1, retries = 2 } }, \
             calm = { cmd = 'sleep 3006', starttime = 0, \
                      healthcheck = { cmd = 'exit 1', interval = 0.1, retries = 2, on_unhealthy = 'none' } }",
        ),
    );
    let first = d.wait_state("flaky:0", "RUNNING", secs(10))["pid"].clone();
    let s = d.wait_until("flaky restarted", secs(15), |s| {
        s.iter().any(|i| {
            i["name"] == "flaky:0" && i["restarts"].as_u64() >= Some(1) && i["state"] == "RUNNING"
        })
    });
    let flaky = s.iter().find(|i| i["name"] == "flaky:0").unwrap();
    assert_ne!(flaky["pid"], first);
    let log = d.log();
    assert!(log.contains("unhealthy: flaky:0"), "{log}");
    assert!(
        log.contains("probe says no"),
        "the probe's output is logged:\n{log}"
    );
    let calm = d.wait_until("calm unhealthy", secs(10), |s| {
        s.iter()
            .any(|i| i["name"] == "calm:0" && i["health"] == "unhealthy")
    });
    let calm = calm.iter().find(|i| i["name"] == "calm:0").unwrap();
    assert_eq!(calm["state"], "RUNNING");
    assert_eq!(calm["restarts"], 0);
}

#[test]
fn a_probe_that_times_out_fails_and_leaves_no_process() {
    let mut d = Daemon::start(
        "probe-timeout",
        &services(
            "slow = { cmd = 'sleep 3007', starttime = 0, \
                      healthcheck = { cmd = 'sleep 3008 & sleep 3009', timeout = 0.3, interval = 0.2, \
                                      retries = 1, on_unhealthy = 'none' } }",
        ),
    );
    d.wait_until("slow unhealthy", secs(10), |s| {
        s[0]["health"] == "unhealthy"
    });
    // Every probe was killed with its group on time-out: once probing ends
    // (the stop), none of their sleeps survive.
    d.ok("stop", &["slow"]);
    let deadline = Instant::now() + secs(5);
    loop {
        let left = processes()
            .into_iter()
            .filter(|p| p.state != 'Z')
            .filter(|p| {
                fs::read(format!("/proc/{}/cmdline", p.pid))
                    .map(|c| {
                        let c = String::from_utf8_lossy(&c).replace('\0', " ");
                        c.contains("sleep 3008") || c.contains("sleep 3009")
                    })
                    .unwrap_or(false)
            })
            .count();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} probe processes left");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        d.log().contains("unhealthy: slow:0"),
        "positive control: probes ran"
    );
}

#[test]
fn probes_get_the_instance_env_and_workingdir() {
    let dir = temp_dir("probe-env");
    fs::create_dir_all(dir.join("work")).unwrap();
    fs::write(
        dir.join("taskmaster.lua"),
        services(
            "p = { cmd = 'sleep 3010', starttime = 0, workingdir = 'work', env = { COLOR = 'blue' }, \
                   healthcheck = { cmd = 'echo \"$COLOR $TASKMASTER_INSTANCE $(pwd)\" > probe.txt', \
                                   interval = 0.2, retries = 1 } }",
        ),
    )
    .unwrap();
    let mut d = Daemon::adopt(dir.clone());
    let text = wait_file(&dir.join("work/probe.txt"), secs(10), |t| t.ends_with('\n'));
    assert_eq!(
        text.trim(),
        format!("blue 0 {}", dir.join("work").display())
    );
    d.wait_until("healthy", secs(10), |s| s[0]["health"] == "healthy");
}

#[test]
fn completed_waits_for_a_one_shot_job_and_fatal_propagates() {
    let mut d = Daemon::start(
        "completed",
        &services(
            "migrate = { cmd = [[sh -c 'sleep 0.3; exit 0']], autorestart = 'never' }, \
             api = { cmd = 'sleep 3011', starttime = 0, depends_on = { migrate = 'completed' } }, \
             db = { cmd = 'false', startretries = 0, starttime = 1 }, \
             app = { cmd = 'sleep 3012', depends_on = { 'db' } }",
        ),
    );
    let s = d.wait_until("api running", secs(10), |s| {
        s.iter()
            .any(|i| i["name"] == "api:0" && i["state"] == "RUNNING")
    });
    let migrate = s.iter().find(|i| i["name"] == "migrate:0").unwrap();
    assert_eq!(
        migrate["state"], "EXITED",
        "a one-shot within starttime completed"
    );
    let app = d.wait_state("app:0", "FATAL", secs(10));
    assert_eq!(app["description"], "dependency db is FATAL");
}

#[test]
fn start_starts_dependencies_transitively_and_a_single_stop_does_not_cascade() {
    let mut d = Daemon::start(
        "transitive",
        &services(
            "db = { cmd = 'sleep 3013', starttime = 0, autostart = false }, \
             cache = { cmd = 'sleep 3014', starttime = 0, autostart = false, depends_on = { 'db' } }, \
             api = { cmd = 'sleep 3015', starttime = 0, autostart = false, depends_on = { 'cache' } }",
        ),
    );
    let r = d.ok("start", &["api"]);
    assert_eq!(r["results"][0]["name"], "api:0");
    assert_eq!(r["results"][0]["ok"], true, "{r}");
    let s = d.status();
    assert!(s.iter().all(|i| i["state"] == "RUNNING"), "{s:?}");
    d.ok("stop", &["db"]);
    let s = d.status();
    let by = |n: &str| s.iter().find(|i| i["name"] == n).unwrap()["state"].clone();
    assert_eq!(by("db:0"), "STOPPED");
    assert_eq!(by("cache:0"), "RUNNING");
    assert_eq!(by("api:0"), "RUNNING");
}

#[test]
fn stop_all_stops_dependents_first() {
    let trap = |name: &str| {
        format!(
            "{name} = {{ cmd = [[sh -c 'trap \"date +%s.%N > {name}.term; exit 0\" TERM; while :; do sleep 0.05; done']], \
             starttime = 0, stoptime = 5"
        )
    };
    let mut d = Daemon::start(
        "stop-order",
        &services(&format!(
            "{} }}, {}, depends_on = {{ 'db' }} }}, {}, depends_on = {{ 'api' }} }}",
            trap("db"),
            trap("api"),
            trap("web")
        )),
    );
    d.wait_all("RUNNING", secs(10));
    d.ok("stop", &["all"]);
    let t = |n: &str| -> f64 {
        fs::read_to_string(d.dir.join(format!("{n}.term")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert!(
        t("web") <= t("api") && t("api") <= t("db"),
        "web {} api {} db {}",
        t("web"),
        t("api"),
        t("db")
    );
}

#[test]
fn reloading_probe_settings_does_not_restart() {
    let cfg = |interval: &str| {
        services(&format!(
            "db = {{ cmd = 'sleep 3016', starttime = 0, \
                     healthcheck = {{ cmd = 'true', interval = {interval}, retries = 1 }} }}"
        ))
    };
    let mut d = Daemon::start("probe-reload", &cfg("0.2"));
    let pid = d.wait_until("healthy", secs(10), |s| s[0]["health"] == "healthy")[0]["pid"].clone();
    fs::write(&d.config, cfg("0.5")).unwrap();
    let diff = d.ok("reload", &[]);
    assert_eq!(diff["changed"], serde_json::json!(["db"]));
    assert_eq!(d.instance("db:0")["pid"], pid);
}

#[test]
fn dependency_config_errors_are_reported() {
    let (err, spawned) = start_refused(
        "dep-cycle",
        &services(
            "a = { cmd = 'touch spawned', depends_on = { 'b' } }, \
             b = { cmd = 'true', depends_on = { 'a' } }",
        ),
        &[],
    );
    assert!(err.contains("dependency cycle a -> b -> a"), "{err}");
    assert!(!spawned);
    let (err, _) = start_refused(
        "dep-unknown",
        &services("api = { cmd = 'true', depends_on = { 'dbb' } }, db = { cmd = 'true' }"),
        &[],
    );
    assert!(err.contains("unknown service \"dbb\""), "{err}");
    assert!(err.contains("did you mean \"db\""), "{err}");
}

#[test]
fn a_start_waiting_on_a_settled_unmet_dependency_is_answered_and_keeps_waiting() {
    let mut d = Daemon::start(
        "stuck",
        &services(
            "db = { cmd = 'sleep 3017', starttime = 0, \
                    healthcheck = { cmd = 'exit 1', interval = 0.1, retries = 1, on_unhealthy = 'none' } }, \
             api = { cmd = 'sleep 3018', starttime = 0, autostart = false, depends_on = { db = 'healthy' } }",
        ),
    );
    d.wait_until("db unhealthy", secs(10), |s| {
        s.iter()
            .any(|i| i["name"] == "db:0" && i["health"] == "unhealthy")
    });
    let r = d.ok("start", &["api"]);
    assert_eq!(r["results"][0]["ok"], false, "{r}");
    assert_eq!(r["results"][0]["message"], "waiting for db (healthy)");
    assert_eq!(d.instance("api:0")["state"], "WAITING");
    // start all skips it (WAITING counts as started); stop all stops it.
    let r = d.ok("start", &["all"]);
    assert!(
        r["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["name"] != "api:0"),
        "{r}"
    );
    d.ok("stop", &["all"]);
    assert_eq!(d.instance("api:0")["state"], "STOPPED");
}
