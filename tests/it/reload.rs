//! Hot reload with real processes (SPEC §5): every trigger, every diff class
//! (pids compared before and after), bad configs, save storms.

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

fn pids(d: &mut Daemon) -> BTreeMap<String, Value> {
    d.status()
        .into_iter()
        .map(|i| (i["name"].as_str().unwrap().to_string(), i["pid"].clone()))
        .collect()
}

fn services(body: &str) -> String {
    format!("return {{ services = {{ {body} }} }}")
}

const BASE: &str = r#"
    same = { cmd = "sleep 1001", starttime = 0 },
    gone = { cmd = "sleep 1002", starttime = 0 },
    respawn = { cmd = "sleep 1003", starttime = 0 },
    grow = { cmd = "sleep 1004", starttime = 0, numprocs = 2 },
    shrink = { cmd = "sleep 1005", starttime = 0, numprocs = 3 },
    policy = { cmd = "sleep 1006", starttime = 0 },
"#;

const NEXT: &str = r#"
    same = { cmd = "sleep 1001", starttime = 0 },
    respawn = { cmd = "sleep 1003", starttime = 0, env = { NEW = "1" } },
    grow = { cmd = "sleep 1004", starttime = 0, numprocs = 4 },
    shrink = { cmd = "sleep 1005", starttime = 0, numprocs = 1 },
    policy = { cmd = "sleep 1006", starttime = 0, autorestart = "always", stoptime = 3, exitcodes = {0, 9} },
    added = { cmd = "sleep 1007", starttime = 0 },
"#;

#[test]
fn reload_command_applies_each_diff_class() {
    let mut d = Daemon::start("diff", &services(BASE));
    d.wait_all("RUNNING", secs(10));
    let before = pids(&mut d);
    fs::write(&d.config, services(NEXT)).unwrap();
    let diff = d.ok("reload", &[]);
    assert_eq!(diff["added"], serde_json::json!(["added"]));
    assert_eq!(diff["removed"], serde_json::json!(["gone"]));
    assert_eq!(
        diff["changed"],
        serde_json::json!(["grow", "policy", "respawn", "shrink"])
    );
    assert_eq!(diff["unchanged"], serde_json::json!(["same"]));

    let after = d.wait_until("new layout running", secs(15), |s| {
        s.len() == 9 && s.iter().all(|i| i["state"] == "RUNNING")
    });
    let after: BTreeMap<String, Value> = after
        .into_iter()
        .map(|i| (i["name"].as_str().unwrap().to_string(), i["pid"].clone()))
        .collect();
    let names: Vec<&str> = after.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "added:0",
            "grow:0",
            "grow:1",
            "grow:2",
            "grow:3",
            "policy:0",
            "respawn:0",
            "same:0",
            "shrink:0"
        ]
    );
    // Untouched: same pids.
    for kept in ["same:0", "grow:0", "grow:1", "shrink:0", "policy:0"] {
        assert_eq!(after[kept], before[kept], "{kept} was restarted");
    }
    // Spawn options changed: restarted.
    assert_ne!(after["respawn:0"], before["respawn:0"]);
    // Removed and shrunk instances' processes are gone.
    for gone in ["gone:0", "shrink:1", "shrink:2"] {
        assert!(
            !alive(before[gone].as_i64().unwrap() as i32),
            "{gone} still alive"
        );
    }
    // The policy change applies at the next event it governs: an exit 9 is
    // now expected, but autorestart = always restarts it anyway.
    let p = after["policy:0"].as_i64().unwrap() as i32;
    unsafe { libc::kill(p, libc::SIGKILL) };
    d.wait_until("policy restarted", secs(10), |s| {
        s.iter().any(|i| {
            i["name"] == "policy:0"
                && i["state"] == "RUNNING"
                && i["pid"].as_i64() != Some(p as i64)
        })
    });
}

#[test]
fn policy_change_applies_without_restart_and_governs_next_exit() {
    let mut d = Daemon::start(
        "policy",
        &services(r#"p = { cmd = "sleep 1000", starttime = 0, autorestart = "always" }"#),
    );
    let first = d.wait_state("p:0", "RUNNING", secs(10))["pid"].clone();
    fs::write(
        &d.config,
        services(r#"p = { cmd = "sleep 1000", starttime = 0, autorestart = "never" }"#),
    )
    .unwrap();
    assert_eq!(d.ok("reload", &[])["changed"], serde_json::json!(["p"]));
    assert_eq!(d.instance("p:0")["pid"], first);
    unsafe { libc::kill(first.as_i64().unwrap() as i32, libc::SIGKILL) };
    let inst = d.wait_state("p:0", "EXITED", secs(10));
    assert_eq!(inst["restarts"], 0, "never: not restarted");
}

#[test]
fn invalid_config_keeps_everything_and_is_reported() {
    let mut d = Daemon::start(
        "invalid",
        &services(r#"a = { cmd = "sleep 1000", starttime = 0 }"#),
    );
    let pid = d.wait_state("a:0", "RUNNING", secs(10))["pid"].clone();
    let mut sub = d.connect();
    call(&mut sub, 1, "subscribe", &[]);

    fs::write(
        &d.config,
        "return { services = {\n  a = { cmd = 'sleep 1000', numprocs = 0 },\n} }",
    )
    .unwrap();
    let reply = d.request("reload", &[]);
    assert_eq!(reply["ok"], false);
    let msg = reply["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("services.a.numprocs: must be between 1 and 100, got 0"),
        "{msg}"
    );
    let status = d.ok("status", &[]);
    assert_eq!(status["instances"][0]["pid"], pid);
    assert!(status["config"]["error"]
        .as_str()
        .unwrap()
        .contains("numprocs"));

    // Subscribers hear about it.
    set_timeout(&mut sub, Some(secs(10)));
    loop {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = sub.read().unwrap() {
            let ev: Value = serde_json::from_str(&t).unwrap();
            if ev["event"] == "reload" {
                assert_eq!(ev["ok"], false);
                assert!(ev["error"].as_str().unwrap().contains("numprocs"));
                break;
            }
        }
    }

    fs::write(&d.config, "local x = nil\nreturn x.y\n").unwrap();
    let reply = d.request("reload", &[]);
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("taskmaster.lua:2:"),
        "{reply}"
    );

    // A good config clears the error.
    fs::write(
        &d.config,
        services(r#"a = { cmd = "sleep 1000", starttime = 0 }"#),
    )
    .unwrap();
    d.ok("reload", &[]);
    let status = d.ok("status", &[]);
    assert_eq!(status["config"]["error"], Value::Null);
    assert_eq!(status["instances"][0]["pid"], pid);
}

/// The config `text` with one more `sleep` service called `name`.
fn add_service(text: &str, name: &str) -> String {
    text.replacen(
        "services = {",
        &format!("services = {{ {name} = {{ cmd = \"sleep 1000\", starttime = 0 }},"),
        1,
    )
}

#[test]
fn saving_in_place_reloads() {
    let mut d = Daemon::start(
        "inplace",
        &services(r#"a = { cmd = "sleep 1000", starttime = 0 }"#),
    );
    d.wait_state("a:0", "RUNNING", secs(10));
    let new = add_service(&fs::read_to_string(&d.config).unwrap(), "b");
    fs::write(&d.config, new).unwrap();
    d.wait_state("b:0", "RUNNING", secs(10));
    assert!(d.log().contains("config file changed"));
}

#[test]
fn rename_over_the_config_reloads() {
    let mut d = Daemon::start(
        "rename",
        &services(r#"a = { cmd = "sleep 1000", starttime = 0 }"#),
    );
    d.wait_state("a:0", "RUNNING", secs(10));
    for (i, name) in ["b", "c"].iter().enumerate() {
        // vim / VS Code style: write a temp file, rename it over the original.
        let tmp = d.dir.join(format!(".taskmaster.lua.swp{i}"));
        fs::write(
            &tmp,
            add_service(&fs::read_to_string(&d.config).unwrap(), name),
        )
        .unwrap();
        fs::rename(&tmp, &d.config).unwrap();
        d.wait_state(&format!("{name}:0"), "RUNNING", secs(10));
    }
}

#[test]
fn editing_a_load_json_file_reloads() {
    let dir_cfg = r#"local cfg = load_json("conf.json")
return cfg"#;
    let dir = temp_dir("loadjson");
    fs::write(
        dir.join("conf.json"),
        r#"{"services": {"a": {"cmd": "sleep 1000", "starttime": 0}}}"#,
    )
    .unwrap();
    fs::write(dir.join("taskmaster.lua"), dir_cfg).unwrap();
    let mut d = Daemon::adopt(dir);
    d.wait_state("a:0", "RUNNING", secs(10));
    fs::write(
        d.dir.join("conf.json"),
        r#"{"services": {"a": {"cmd": "sleep 1000", "starttime": 0}, "j": {"cmd": "sleep 1000", "starttime": 0}}}"#,
    )
    .unwrap();
    d.wait_state("j:0", "RUNNING", secs(10));
}

#[test]
fn save_storm_ends_on_the_last_content() {
    let mut d = Daemon::start(
        "storm",
        &services(r#"a = { cmd = "sleep 1000", starttime = 0 }"#),
    );
    d.wait_state("a:0", "RUNNING", secs(10));
    let start = Instant::now();
    for i in 1..=10 {
        let n = if i == 10 { 3 } else { i % 3 + 1 };
        let body = if i % 4 == 0 {
            "return { broken = ".to_string() // some saves in between are invalid
        } else {
            services(&format!(
                r#"a = {{ cmd = "sleep 1000", starttime = 0, numprocs = {n} }}"#
            ))
        };
        fs::write(&d.config, body).unwrap();
        std::thread::sleep(Duration::from_millis(90)); // a person typing and saving
        let t = Instant::now();
        assert_eq!(d.request("status", &[])["ok"], true);
        assert!(
            t.elapsed() < secs(1),
            "daemon unresponsive during the storm"
        );
    }
    assert!(start.elapsed() < secs(2));
    d.wait_until("final content (3 instances)", secs(10), |s| {
        s.len() == 3 && s.iter().all(|i| i["state"] == "RUNNING")
    });
    let reloads = d.log().matches("config file changed").count();
    assert!(
        (1..=5).contains(&reloads),
        "{reloads} reloads for one burst"
    );
    assert_eq!(d.ok("status", &[])["config"]["error"], Value::Null);
}

#[test]
fn deleted_config_keeps_running_until_it_reappears() {
    let text = services(r#"a = { cmd = "sleep 1000", starttime = 0 }"#);
    let mut d = Daemon::start("deleted", &text);
    let pid = d.wait_state("a:0", "RUNNING", secs(10))["pid"].clone();
    fs::remove_file(&d.config).unwrap();
    let deadline = Instant::now() + secs(10);
    while !d.log().contains("is gone; keeping the running services") {
        assert!(Instant::now() < deadline, "no warning logged");
        d.next_event(Duration::from_millis(50));
    }
    assert_eq!(d.instance("a:0")["pid"], pid);
    fs::write(&d.config, add_service(&text, "back")).unwrap();
    d.wait_state("back:0", "RUNNING", secs(10));
    assert_eq!(d.instance("a:0")["pid"], pid);
}

#[test]
fn own_log_and_child_output_never_trigger_reloads() {
    let lua = services(
        r#"chatty = { cmd = "sh -c 'while true; do echo x; sleep 0.05; done'", stdout = "chatty.log", starttime = 0 }"#,
    );
    let mut d = Daemon::start("ownlog", &lua);
    d.wait_state("chatty:0", "RUNNING", secs(10));
    // Plenty of writes to files in the config folder; give them a debounce window.
    for _ in 0..10 {
        d.ok("status", &[]);
        d.next_event(Duration::from_millis(50));
    }
    assert_eq!(d.log().matches("config file changed").count(), 0);
}
