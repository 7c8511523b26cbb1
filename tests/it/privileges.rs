//! SPEC §12 with real processes (the suite runs as root): `user`/`group`
//! seen in /proc, `env_file` precedence and reload on edit, `rlimits` in
//! /proc/PID/limits, `max_memory` restarts, and the load errors.

use std::fs;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn pid_of(d: &mut Daemon, name: &str) -> u32 {
    let i = d.wait_state(name, "RUNNING", secs(10));
    i["pid"].as_u64().expect("a RUNNING instance has a pid") as u32
}

/// The `Key:` line of /proc/PID/status, its fields.
fn status_line(pid: u32, key: &str) -> Vec<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn environ(pid: u32) -> Vec<String> {
    let raw = fs::read(format!("/proc/{pid}/environ")).expect("environ");
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn var(pid: u32, key: &str) -> Option<String> {
    environ(pid)
        .into_iter()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

fn id(args: &[&str]) -> Vec<String> {
    let out = Command::new("id").args(args).output().expect("run id");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn user_nobody_gets_its_ids_groups_and_home() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut d = Daemon::start(
        "user",
        "return { services = { web = { cmd = 'sleep 1000', starttime = 0, user = 'nobody' } } }",
    );
    let pid = pid_of(&mut d, "web:0");
    let uid = id(&["-u", "nobody"]);
    let gid = id(&["-g", "nobody"]);
    let mut groups = id(&["-G", "nobody"]);
    groups.sort();
    assert_eq!(status_line(pid, "Uid"), vec![uid[0].clone(); 4]);
    assert_eq!(status_line(pid, "Gid"), vec![gid[0].clone(); 4]);
    let mut got = status_line(pid, "Groups");
    got.sort();
    assert_eq!(got, groups, "no root group left over");
    let home = fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .and_then(|l| l.split(':').nth(5).map(str::to_string))
        .unwrap();
    assert_eq!(var(pid, "HOME"), Some(home));
    assert_eq!(var(pid, "USER").as_deref(), Some("nobody"));
    assert_eq!(var(pid, "LOGNAME").as_deref(), Some("nobody"));
}

#[test]
fn env_can_override_the_user_variables() {
    let mut d = Daemon::start(
        "userenv",
        "return { services = { web = { cmd = 'sleep 1000', starttime = 0, user = 'root', env = { HOME = '/elsewhere' } } } }",
    );
    let pid = pid_of(&mut d, "web:0");
    assert_eq!(var(pid, "HOME").as_deref(), Some("/elsewhere"));
    assert_eq!(var(pid, "USER").as_deref(), Some("root"));
}

#[test]
fn unknown_user_is_a_start_up_error_naming_the_field() {
    let (err, spawned) = start_refused(
        "nouser",
        "return { services = { m = { cmd = 'touch spawned', user = 'no-such-user-tm' } } }",
        &[],
    );
    assert!(
        err.contains("services.m.user: unknown user \"no-such-user-tm\""),
        "{err}"
    );
    assert!(!spawned);
}

/// Runs the daemon in `dir` (its config already there) expecting a refusal.
fn refused_in(dir: &std::path::Path) -> String {
    let out = Command::new(daemon_bin())
        .arg("--config")
        .arg(dir.join("taskmaster.lua"))
        .args(["--port", &free_port().to_string()])
        .env_remove("TASKMASTER_TOKEN")
        .current_dir(dir)
        .output()
        .expect("run taskmasterd");
    assert!(!out.status.success(), "taskmasterd started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_env_file_line_is_a_start_up_error_with_file_and_line() {
    let dir = temp_dir("badenv");
    fs::write(dir.join(".env"), "A=1\n# fine\nnot a pair\n").unwrap();
    fs::write(
        dir.join("taskmaster.lua"),
        "return { services = { web = { cmd = 'touch spawned', env_file = '.env' } } }",
    )
    .unwrap();
    let err = refused_in(&dir);
    assert!(
        err.contains("services.web.env_file: .env:3: expected KEY=VALUE"),
        "{err}"
    );
    assert!(!dir.join("spawned").exists());
}

#[test]
fn env_files_lose_to_env_later_files_win_and_an_edit_restarts() {
    let dir = temp_dir("envfile");
    fs::write(dir.join(".env"), "A=first\nB=first\nC=first\n").unwrap();
    fs::write(dir.join("more.env"), "export B='second'\n").unwrap();
    fs::write(
        dir.join("taskmaster.lua"),
        "return { services = { web = { cmd = 'sleep 1000', starttime = 0, \
         env_file = { '.env', 'more.env' }, env = { C = 'env' } } } }",
    )
    .unwrap();
    let mut d = Daemon::adopt(dir.clone());
    let pid = pid_of(&mut d, "web:0");
    assert_eq!(var(pid, "A").as_deref(), Some("first"));
    assert_eq!(var(pid, "B").as_deref(), Some("second"), "later file wins");
    assert_eq!(var(pid, "C").as_deref(), Some("env"), "env wins");

    // Editing an env file is a spawn change: the watcher reloads, the
    // instance restarts with the new value.
    fs::write(dir.join(".env"), "A=edited\nB=first\nC=first\n").unwrap();
    let after = d.wait_until("a new web:0", secs(15), |s| {
        s.iter().any(|i| {
            i["name"] == "web:0"
                && i["state"] == "RUNNING"
                && i["pid"].as_u64().is_some_and(|p| p as u32 != pid)
        })
    });
    let new = after
        .iter()
        .find(|i| i["name"] == "web:0")
        .and_then(|i| i["pid"].as_u64())
        .unwrap() as u32;
    assert_eq!(var(new, "A").as_deref(), Some("edited"));
}

#[test]
fn rlimits_show_in_proc_limits() {
    let mut d = Daemon::start(
        "rlimits",
        "return { services = { web = { cmd = 'sleep 1000', starttime = 0, \
         rlimits = { nofile = 1234, core = 'unlimited', cpu = 3600, fsize = 1048576 } } } }",
    );
    let pid = pid_of(&mut d, "web:0");
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let row = |name: &str| -> Vec<String> {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l[name.len()..]
                    .split_whitespace()
                    .take(2)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(row("Max open files"), ["1234", "1234"], "{limits}");
    assert_eq!(row("Max core file size"), ["unlimited", "unlimited"]);
    assert_eq!(row("Max cpu time"), ["3600", "3600"]);
    assert_eq!(row("Max file size"), ["1048576", "1048576"]);
}

#[test]
fn a_child_over_max_memory_is_restarted_one_under_it_is_not() {
    // The hog holds ~60 MB in a shell variable, then sleeps; the control
    // is a plain sleep under the same limit.
    let hog = "x=$(head -c 60000000 /dev/zero | tr '\\0' a); sleep 1000";
    let config = format!(
        "return {{ services = {{ \
           hog = {{ cmd = [[{hog}]], starttime = 0, max_memory = '20MB', stoptime = 2 }}, \
           calm = {{ cmd = 'sleep 1000', starttime = 0, max_memory = '20MB' }} }} }}"
    );
    let mut d = Daemon::start("maxmem", &config);
    d.wait_until("hog restarted for memory", secs(30), |s| {
        s.iter()
            .any(|i| i["name"] == "hog:0" && i["restarts"].as_u64().is_some_and(|r| r >= 1))
    });
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("max_memory: hog:0 uses "))
        .unwrap_or_else(|| panic!("no max_memory line in:\n{log}"));
    assert!(line.ends_with("> 20 MiB, restarting"), "{line}");
    // Checked every second: the control has been looked at several times.
    std::thread::sleep(Duration::from_millis(2500));
    let calm = d.instance("calm:0");
    assert_eq!(calm["restarts"], 0, "{calm}");
    assert_eq!(calm["state"], "RUNNING");
    assert!(!d.log().contains("max_memory: calm:0"));
}

#[test]
fn cmd_probes_run_as_the_services_user() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let uid = id(&["-u", "nobody"]).remove(0);
    let config = format!(
        "return {{ services = {{ web = {{ cmd = 'sleep 1000', starttime = 0, user = 'nobody', \
         healthcheck = {{ cmd = [[test \"$(id -u)\" = {uid} && test \"$USER\" = nobody]], \
         interval = 0.2, retries = 1 }} }} }} }}"
    );
    let mut d = Daemon::start("probeuser", &config);
    d.wait_until("web:0 healthy", secs(15), |s| {
        s.iter()
            .any(|i| i["name"] == "web:0" && i["health"] == "healthy")
    });
}
