//! Regression tests of the core hardening (SPEC §17): each is named after
//! the way the daemon used to break, and failed on the code before its fix.

use std::fs;
use std::time::{Duration, Instant};

use crate::common::*;

fn services(body: &str) -> String {
    format!("return {{ services = {{ {body} }} }}")
}

/// Live `sleep` processes whose command line contains `needle`.
fn count_cmdline(needle: &str) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.state != 'Z')
        .filter(|p| {
            fs::read_to_string(format!("/proc/{}/comm", p.pid)).is_ok_and(|c| c.trim() == "sleep")
        })
        .filter(|p| {
            fs::read(format!("/proc/{}/cmdline", p.pid))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .map(|p| p.pid)
        .collect()
}

/// Polls (bounded) until `cond` holds; for facts no daemon event announces
/// (a process that is not ours dying, a count in /proc).
fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child that ignores SIGTERM (the ignored disposition survives exec).
fn stubborn(tag: &str) -> String {
    format!(r#"cmd = [[sh -c 'trap "" TERM; exec sleep {tag}']], starttime = 0, stoptime = 1"#)
}

#[test]
fn reload_readding_a_stopping_service_keeps_each_exit_with_its_own_pid() {
    let keep = "keep = { cmd = 'sleep 2001', starttime = 0 }";
    let a = format!("a = {{ {} }}", stubborn("2002"));
    let mut d = Daemon::start("readd", &services(&format!("{keep}, {a}")));
    let old = d.wait_state("a:0", "RUNNING", secs(10))["pid"]
        .as_u64()
        .expect("pid") as i32;
    fs::write(&d.config, services(keep)).unwrap();
    assert_eq!(d.ok("reload", &[])["removed"], serde_json::json!(["a"]));
    fs::write(&d.config, services(&format!("{keep}, {a}"))).unwrap();
    assert_eq!(d.ok("reload", &[])["added"], serde_json::json!(["a"]));
    // The old process ignores TERM: it must still be SIGKILLed after its
    // stoptime (1 s), and the new instance must run on its own pid.
    eventually("the old process to be killed", secs(6), || !alive(old));
    let now = d.wait_until("a:0 running a new pid", secs(10), |s| {
        s.iter().any(|i| {
            i["name"] == "a:0" && i["state"] == "RUNNING" && i["pid"].as_i64() != Some(old as i64)
        })
    });
    let new = now.iter().find(|i| i["name"] == "a:0").unwrap()["pid"]
        .as_i64()
        .unwrap();
    assert!(alive(new as i32));
    assert_eq!(count_cmdline("sleep 2002").len(), 1, "one copy runs");
    let log = d.log();
    assert!(
        !log.contains(&format!("EXITED, pid {new}]")),
        "old exit booked against the new pid:\n{log}"
    );
    assert!(log.contains("killing: a:0"), "{log}");
}

#[test]
fn numprocs_down_and_up_while_stopping_brings_the_instance_back() {
    let a = |n: u32| services(&format!("a = {{ numprocs = {n}, {} }}", stubborn("2003")));
    let mut d = Daemon::start("numprocs-bounce", &a(2));
    d.wait_all("RUNNING", secs(10));
    let old = d.instance("a:1")["pid"].as_i64().unwrap() as i32;
    fs::write(&d.config, a(1)).unwrap();
    d.ok("reload", &[]);
    assert_eq!(d.instance("a:1")["state"], "STOPPING");
    fs::write(&d.config, a(2)).unwrap();
    d.ok("reload", &[]);
    // It comes back once the old process is gone (SIGKILL after 1 s).
    let back = d.wait_until("a:1 running again", secs(10), |s| {
        s.iter().any(|i| {
            i["name"] == "a:1" && i["state"] == "RUNNING" && i["pid"].as_i64() != Some(old as i64)
        })
    });
    assert!(!alive(old));
    assert_eq!(back.len(), 2);
    assert_eq!(count_cmdline("sleep 2003").len(), 2);
}

#[test]
fn a_dead_leader_leaves_no_group_behind() {
    let mut d = Daemon::start(
        "leader",
        &services(
            r#"a = { cmd = [[sh -c 'sleep 2004 & exit 1']], autorestart = "always",
                     starttime = 0, stoptime = 1 },
               b = { cmd = [[sh -c '(trap "" TERM; exec sleep 2005) & exit 1']],
                     autorestart = "always", starttime = 0, stoptime = 1 }"#,
        ),
    );
    // The loop goes on (positive control) while the leftovers are killed
    // before each restart: never more than one member alive per instance.
    let start = Instant::now();
    let mut max_a = 0;
    let mut max_b = 0;
    loop {
        max_a = max_a.max(count_cmdline("sleep 2004").len());
        max_b = max_b.max(count_cmdline("sleep 2005").len());
        let s = d.status();
        let restarts = |n: &str| {
            s.iter().find(|i| i["name"] == n).unwrap()["restarts"]
                .as_u64()
                .unwrap()
        };
        // b's first member may die of the TERM before its trap is set; one
        // SIGKILL after stoptime, then a restart, shows the ignored TERM.
        if restarts("a:0") >= 20 && restarts("b:0") >= 3 && d.log().contains("killing: b:0") {
            break;
        }
        assert!(start.elapsed() < secs(20), "the loop stalled: {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(max_a <= 1, "{max_a} leftover sleeps of a at once");
    assert!(max_b <= 1, "{max_b} leftover sleeps of b at once");
    d.ok("stop", &["all"]);
    eventually("no leftover", secs(5), || {
        count_cmdline("sleep 2004").is_empty() && count_cmdline("sleep 2005").is_empty()
    });
}

#[test]
fn exec_hooks_leave_no_stale_guard_marks() {
    let dir = temp_dir("marks");
    fs::write(
        dir.join("taskmaster.lua"),
        r#"
local tm = require("taskmaster")
tm.on("transition", function(ev)
  if ev.to == "STOPPED" then tm.exec("touch stopped") else tm.exec("true") end
end)
return { services = { crash = { cmd = "false", autorestart = "always", starttime = 0 } } }
"#,
    )
    .unwrap();
    let mut d = Daemon::adopt(dir.clone());
    d.wait_until("a crash loop", secs(20), |s| {
        s[0]["restarts"].as_u64().unwrap_or(0) >= 300
    });
    d.ok("stop", &["crash"]);
    eventually("the hooks to catch up", secs(30), || {
        dir.join("stopped").exists()
    });
    let daemon = d.pid();
    // Only the guard is left as the daemon's child once the exec'd
    // commands are done and reaped.
    eventually("every exec child to be reaped", secs(10), || {
        processes().iter().filter(|p| p.ppid == daemon).all(|p| {
            fs::read_to_string(format!("/proc/{}/comm", p.pid))
                .is_ok_and(|c| c.trim() == "tm-group-guard")
        })
    });
    assert!(d.terminate().is_some_and(|s| s.success()));
    let log = d.log();
    assert!(
        log.contains("taskmasterd stopped (0 process groups left to the guard)"),
        "{log}"
    );
}

#[test]
fn exec_leftovers_are_left_to_the_guard_and_killed() {
    // Positive control of the test above: a live group is counted, and the
    // guard kills it once the daemon is gone.
    let dir = temp_dir("marks-left");
    fs::write(
        dir.join("taskmaster.lua"),
        r#"
local tm = require("taskmaster")
tm.on("RUNNING", function(ev) tm.exec("sleep 2006 & touch forked") end)
return { services = { a = { cmd = "sleep 2007", starttime = 0 } } }
"#,
    )
    .unwrap();
    let mut d = Daemon::adopt(dir.clone());
    eventually("the exec", secs(10), || dir.join("forked").exists());
    eventually("the leftover", secs(5), || {
        count_cmdline("sleep 2006").len() == 1
    });
    assert!(d.terminate().is_some_and(|s| s.success()));
    assert!(
        d.log()
            .contains("taskmasterd stopped (1 process groups left to the guard)"),
        "{}",
        d.log()
    );
    eventually("the guard to kill the leftover", secs(5), || {
        count_cmdline("sleep 2006").is_empty()
    });
}

#[test]
fn stop_all_skips_instances_already_stopped() {
    let mut d = Daemon::start(
        "stop-all",
        &services(
            "up = { cmd = 'sleep 2008', starttime = 0 }, \
             idle = { cmd = 'sleep 2009', autostart = false }, \
             done = { cmd = 'true', starttime = 0, autorestart = 'never' }",
        ),
    );
    d.wait_state("up:0", "RUNNING", secs(10));
    d.wait_state("done:0", "EXITED", secs(10));
    let out = std::process::Command::new(ctl_bin())
        .args(["--url", &d.url(), "stop", "all"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("up:0"), "{text}");
    assert!(
        !text.contains("idle:0") && !text.contains("done:0"),
        "{text}"
    );
    // Naming a stopped instance still reports it (positive control).
    let r = d.ok("stop", &["idle"]);
    assert_eq!(r["results"][0]["ok"], false, "{r}");
    // start all skips what is running; restart all covers everything.
    d.ok("start", &["up"]);
    let r = d.ok("start", &["all"]);
    let names: Vec<&str> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["done:0", "idle:0"], "{r}");
}

#[test]
fn the_last_retry_is_logged_once() {
    let mut d = Daemon::start(
        "retry-log",
        &services("bad = { cmd = 'false', starttime = 1, startretries = 2 }"),
    );
    d.wait_state("bad:0", "FATAL", secs(15));
    let log = d.log();
    assert_eq!(log.matches("retry 2 of 2").count(), 1, "{log}");
    assert_eq!(log.matches("retry 1 of 2").count(), 1, "{log}");
}

#[test]
fn children_do_not_inherit_the_daemon_settings() {
    let dir = temp_dir("env");
    fs::write(
        dir.join("taskmaster.lua"),
        r#"local tm = require("taskmaster")
os.execute("env > os_execute.env")
tm.on("EXITED", function(ev)
  if ev.service == "plain" then tm.exec("env > tm_exec.env") end
end)
return { services = {
  plain = { cmd = [[sh -c 'env > plain.env']], autorestart = "never", starttime = 0 },
  own = { cmd = [[sh -c 'env > own.env']], autorestart = "never", starttime = 0,
          env = { PORT = "8080" } },
} }"#,
    )
    .unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(daemon_bin())
        .args(["--config", "taskmaster.lua", "--log-file", "daemon.log"])
        .current_dir(&dir)
        .env("PORT", port.to_string())
        .env("TASKMASTER_TOKEN", "s3cret")
        .env("TASKMASTER_LOG", "daemon.log")
        .env("CONFIG_PATH", "taskmaster.lua")
        .env("KEEP_ME", "yes")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let plain = wait_file(&dir.join("plain.env"), secs(10), |t| t.contains("KEEP_ME"));
    let own = wait_file(&dir.join("own.env"), secs(10), |t| t.contains("KEEP_ME"));
    let exec = wait_file(&dir.join("tm_exec.env"), secs(10), |t| {
        t.contains("KEEP_ME")
    });
    let os_execute = wait_file(&dir.join("os_execute.env"), secs(10), |t| {
        t.contains("KEEP_ME")
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_child(&mut child, secs(10));
    for text in [&plain, &exec, &os_execute] {
        for var in [
            "PORT=",
            "TASKMASTER_TOKEN=",
            "TASKMASTER_LOG=",
            "CONFIG_PATH=",
        ] {
            assert!(
                !text.lines().any(|l| l.starts_with(var)),
                "{var} leaked: {text}"
            );
        }
    }
    assert!(own.lines().any(|l| l == "PORT=8080"), "{own}");
    assert!(plain.contains("TASKMASTER_SERVICE=plain"), "{plain}");
}

#[test]
fn an_output_path_under_a_file_names_the_configured_path() {
    let dir = temp_dir("under-file");
    fs::write(dir.join("plainfile"), "x").unwrap();
    let mut d = Daemon::adopt({
        fs::write(
            dir.join("taskmaster.lua"),
            services("a = { cmd = 'sleep 2010', stdout = 'plainfile/out.log', startretries = 0 }"),
        )
        .unwrap();
        dir.clone()
    });
    let fatal = d.wait_state("a:0", "FATAL", secs(10));
    let why = fatal["description"].as_str().unwrap();
    assert!(why.contains("plainfile/out.log"), "{why}");
    assert!(why.contains("is a file, not a folder"), "{why}");
}

#[test]
fn a_slow_sighup_reload_does_not_hold_up_sigterm() {
    // A reload whose config takes long to evaluate must not delay SIGTERM.
    let dir = temp_dir("hup-term");
    fs::write(
        dir.join("taskmaster.lua"),
        r#"
local f = io.open("slow", "r")
if f then f:close(); local t = os.clock() + 3; while os.clock() < t do end end
return { services = { a = { cmd = "sleep 2011", starttime = 0 } } }
"#,
    )
    .unwrap();
    let mut d = Daemon::adopt(dir.clone());
    d.wait_state("a:0", "RUNNING", secs(10));
    fs::write(dir.join("slow"), "").unwrap();
    let pid = d.pid() as i32;
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_file(&dir.join("daemon.log"), secs(5), |t| {
        t.contains("received SIGHUP")
    });
    let t0 = Instant::now();
    let status = d.terminate().expect("exited");
    assert!(status.success(), "{status:?}");
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "SIGTERM waited for the reload: {:?}",
        t0.elapsed()
    );
}
