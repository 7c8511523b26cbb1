//! The service engine with real processes: one test per option and policy
//! (SPEC §3, §4).

use std::fs;
use std::time::{Duration, Instant};

use crate::common::*;

/// A config with one service; `opts` is Lua table syntax after `cmd`.
fn one(cmd: &str, opts: &str) -> String {
    format!("return {{ services = {{ svc = {{ cmd = [[{cmd}]], {opts} }} }} }}")
}

#[test]
fn umask_is_applied_in_the_child_only() {
    let mut d = Daemon::start(
        "umask",
        &one(
            "sh -c 'umask > umask.txt; touch made'",
            "umask = '027', starttime = 0, autorestart = 'never'",
        ),
    );
    d.wait_state("svc:0", "EXITED", secs(10));
    assert_eq!(
        fs::read_to_string(d.dir.join("umask.txt")).unwrap().trim(),
        "0027"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &fs::metadata(d.dir.join("made")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o640);
}

#[test]
fn workingdir_relative_to_the_config_folder() {
    let lua = one(
        "sh -c 'pwd > where.txt'",
        "workingdir = 'wd', starttime = 0, autorestart = 'never'",
    );
    let dir = temp_dir("wd-pre");
    let _ = dir; // the fixture makes its own folder; create wd inside it before start
    let mut d = Daemon::start_with(
        "workingdir",
        "taskmaster.lua",
        "return { services = {} }",
        &[],
    );
    fs::create_dir_all(d.dir.join("wd")).unwrap();
    fs::write(&d.config, &lua).unwrap();
    d.ok("reload", &[]);
    d.wait_state("svc:0", "EXITED", secs(10));
    let got = fs::read_to_string(d.dir.join("wd/where.txt")).unwrap();
    assert_eq!(
        got.trim(),
        fs::canonicalize(d.dir.join("wd"))
            .unwrap()
            .to_str()
            .unwrap()
    );
}

#[test]
fn env_is_added_with_service_and_instance() {
    let mut d = Daemon::start(
        "env",
        &one(
            r#"sh -c 'echo "$GREETING $PORT $TASKMASTER_SERVICE $TASKMASTER_INSTANCE" > env.$TASKMASTER_INSTANCE'"#,
            "numprocs = 2, env = { GREETING = 'hi', PORT = 8080 }, starttime = 0, autorestart = 'never'",
        ),
    );
    d.wait_all("EXITED", secs(10));
    assert_eq!(
        fs::read_to_string(d.dir.join("env.0")).unwrap(),
        "hi 8080 svc 0\n"
    );
    assert_eq!(
        fs::read_to_string(d.dir.join("env.1")).unwrap(),
        "hi 8080 svc 1\n"
    );
}

#[test]
fn stdout_and_stderr_append_to_files_in_created_folders() {
    let mut d = Daemon::start(
        "output",
        &one(
            "sh -c 'echo to-out; echo to-err >&2'",
            "stdout = 'logs/deep/out.log', stderr = 'logs/err.log', starttime = 0, autorestart = 'never'",
        ),
    );
    d.wait_state("svc:0", "EXITED", secs(10));
    d.ok("start", &["svc"]);
    d.wait_state("svc:0", "EXITED", secs(10));
    assert_eq!(
        fs::read_to_string(d.dir.join("logs/deep/out.log")).unwrap(),
        "to-out\nto-out\n"
    );
    assert_eq!(
        fs::read_to_string(d.dir.join("logs/err.log")).unwrap(),
        "to-err\nto-err\n"
    );
}

#[test]
fn null_outputs_are_discarded() {
    let mut d = Daemon::start(
        "discard",
        &one(
            "sh -c 'echo SECRET-OUT; echo SECRET-ERR >&2'",
            "starttime = 0, autorestart = 'never'",
        ),
    );
    d.wait_state("svc:0", "EXITED", secs(10));
    assert!(
        !d.log().contains("SECRET"),
        "output leaked into the daemon log"
    );
    let stray: Vec<_> = fs::read_dir(&d.dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        stray.len(),
        2,
        "only the config and the daemon log: {stray:?}"
    );
}

#[test]
fn plain_commands_are_the_process_itself() {
    let mut d = Daemon::start("exec", &one("sleep 1000", "starttime = 0"));
    let inst = d.wait_state("svc:0", "RUNNING", secs(10));
    let pid = inst["pid"].as_u64().unwrap();
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "sleep");
}

#[test]
fn stop_reaches_the_whole_process_group() {
    let mut d = Daemon::start(
        "group",
        &one("sh -c 'sleep 1000 & sleep 1000'", "starttime = 0"),
    );
    let inst = d.wait_state("svc:0", "RUNNING", secs(10));
    let pgid = inst["pid"].as_u64().unwrap() as u32;
    let deadline = Instant::now() + secs(5);
    while group_members(pgid).len() < 3 {
        assert!(Instant::now() < deadline, "group never had sh + 2 sleeps");
        std::thread::sleep(Duration::from_millis(10));
    }
    let data = d.ok("stop", &["svc:0"]);
    assert_eq!(data["results"][0]["ok"], true, "{data}");
    assert!(
        !alive(-(pgid as i32)),
        "grandchildren survived: {:?}",
        group_members(pgid)
    );
    assert!(zombie_children(d.pid()).is_empty());
}

#[test]
fn stoptime_escalates_to_sigkill() {
    // An ignored signal stays ignored across exec: this sleep ignores TERM.
    let mut d = Daemon::start(
        "stoptime",
        &one(
            "trap '' TERM; touch trapped; exec sleep 1000",
            "starttime = 0, stoptime = 1",
        ),
    );
    d.wait_state("svc:0", "RUNNING", secs(10));
    // RUNNING comes at once (starttime 0): wait until the shell ignores
    // TERM, or the stop could kill it before its trap is set.
    wait_file(&d.dir.join("trapped"), secs(10), |_| true);
    let t = Instant::now();
    let data = d.ok("stop", &["svc"]);
    let took = t.elapsed();
    assert_eq!(data["results"][0]["ok"], true, "{data}");
    assert!(
        took >= Duration::from_millis(950),
        "SIGKILL came before stoptime: {took:?}"
    );
    let inst = d.instance("svc:0");
    assert_eq!(inst["state"], "STOPPED");
    assert_eq!(inst["signal"], "SIGKILL");
    assert!(d.log().contains("with SIGKILL"));
}

#[test]
fn start_retries_then_fatal_after_exactly_retries_plus_one_attempts() {
    let mut d = Daemon::start(
        "retries",
        &one(
            "sh -c 'echo attempt >> attempts; exit 1'",
            "starttime = 1, startretries = 2",
        ),
    );
    let inst = d.wait_state("svc:0", "FATAL", secs(20));
    assert_eq!(lines_of(&d.dir.join("attempts")).len(), 3);
    assert_eq!(inst["description"], "exited too quickly (exit status 1)");
    // The daemon's log is written by its own thread: wait for the line.
    let log = wait_file(&d.dir.join("daemon.log"), secs(10), |l| {
        l.contains("gave up: svc:0 entered FATAL state")
    });
    assert_eq!(log.matches("spawned: 'svc:0'").count(), 3);
}

#[test]
fn autorestart_always_restarts_even_expected_exits() {
    let mut d = Daemon::start(
        "always",
        &one(
            "sh -c 'echo run >> runs; sleep 0.2; exit 0'",
            "starttime = 0, autorestart = 'always', exitcodes = {0}",
        ),
    );
    d.wait_until("3 restarts", secs(20), |s| {
        s[0]["restarts"].as_u64() >= Some(3)
    });
    d.ok("stop", &["svc"]);
    assert!(lines_of(&d.dir.join("runs")).len() >= 3);
}

#[test]
fn autorestart_never_leaves_it_exited() {
    let mut d = Daemon::start(
        "never",
        &one(
            "sh -c 'sleep 0.1; exit 3'",
            "starttime = 0, autorestart = 'never'",
        ),
    );
    let inst = d.wait_state("svc:0", "EXITED", secs(10));
    assert_eq!(inst["exitcode"], 3);
    assert_eq!(inst["restarts"], 0);
    assert_eq!(inst["description"], "exit status 3; not expected");
}

#[test]
fn autorestart_unexpected_follows_exitcodes() {
    let lua = r#"return { services = {
        expected = { cmd = "sh -c 'sleep 0.1; exit 2'", starttime = 0, exitcodes = {0, 2} },
        unexpected = { cmd = "sh -c 'echo run >> runs; sleep 0.1; exit 3'", starttime = 0, exitcodes = {0, 2} },
    } }"#;
    let mut d = Daemon::start("unexpected", lua);
    let inst = d.wait_state("expected:0", "EXITED", secs(10));
    assert_eq!(inst["description"], "exit status 2; expected");
    assert_eq!(inst["restarts"], 0);
    d.wait_until("unexpected restarts", secs(10), |s| {
        s.iter()
            .any(|i| i["name"] == "unexpected:0" && i["restarts"].as_u64() >= Some(2))
    });
    d.ok("stop", &["unexpected"]);
}

#[test]
fn death_by_signal_is_unexpected() {
    let mut d = Daemon::start(
        "signal",
        &one("sleep 1000", "starttime = 0, exitcodes = {0, 1, 2}"),
    );
    let first = d.wait_state("svc:0", "RUNNING", secs(10))["pid"]
        .as_i64()
        .unwrap();
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    let inst = d.wait_until("a new pid", secs(10), |s| {
        s[0]["state"] == "RUNNING" && s[0]["pid"].as_i64().is_some_and(|p| p != first)
    });
    assert_eq!(inst[0]["restarts"], 1);
    assert_eq!(
        inst[0]["signal"],
        serde_json::Value::Null,
        "a new process has no exit yet"
    );
    assert!(
        d.log()
            .contains("exited: svc:0 (killed by SIGKILL; not expected)"),
        "{}",
        d.log()
    );
}

#[test]
fn spawn_failures_end_fatal_with_the_reason_and_others_keep_running() {
    let lua = r#"return { services = {
        nodir = { cmd = "sleep 1000", workingdir = "/nonexistent/dir", startretries = 1 },
        nocmd = { cmd = "/nonexistent/program --flag", startretries = 0 },
        noout = { cmd = "sleep 1000", stdout = "/dev/null/cannot/be", startretries = 0 },
        fine = { cmd = "sleep 1000", starttime = 0 },
    } }"#;
    let mut d = Daemon::start("spawnfail", lua);
    let s = d.wait_until("three FATAL", secs(15), |s| {
        s.iter().filter(|i| i["state"] == "FATAL").count() == 3
    });
    let by = |n: &str| {
        s.iter().find(|i| i["name"] == n).unwrap()["description"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        by("nodir:0").contains("working directory /nonexistent/dir does not exist"),
        "{}",
        by("nodir:0")
    );
    assert!(
        by("nocmd:0").contains("command not found: /nonexistent/program"),
        "{}",
        by("nocmd:0")
    );
    assert!(
        by("noout:0").contains("cannot create the folder of stdout file /dev/null/cannot/be")
            && by("noout:0").contains("/dev/null exists and is not a folder"),
        "{}",
        by("noout:0")
    );
    assert_eq!(
        s.iter().find(|i| i["name"] == "fine:0").unwrap()["state"],
        "RUNNING"
    );
    assert_eq!(
        d.log().matches("spawnerr: nodir:0").count(),
        2,
        "startretries = 1 → 2 attempts"
    );
}

#[test]
fn hundred_instances_start_concurrently() {
    let mut d = Daemon::start(
        "hundred",
        &one("sleep 1000", "numprocs = 100, starttime = 2"),
    );
    let t = Instant::now();
    d.wait_all("RUNNING", secs(30));
    // Serial starts would take 200 s; concurrent ones about starttime.
    assert!(t.elapsed() < secs(10), "took {:?}", t.elapsed());
    assert_eq!(d.status().len(), 100);
}

#[test]
fn sigterm_stops_everything_and_exits_zero() {
    let mut d = Daemon::start(
        "sigterm",
        &one(
            "sh -c 'sleep 1000 & sleep 1000'",
            "numprocs = 3, starttime = 0",
        ),
    );
    let s = d.wait_all("RUNNING", secs(10));
    let groups: Vec<i32> = s
        .iter()
        .map(|i| i["pid"].as_i64().unwrap() as i32)
        .collect();
    let status = d.terminate().expect("daemon exits");
    assert!(status.success(), "{status}");
    for g in groups {
        assert!(!alive(-g), "group {g} survived shutdown");
    }
    assert!(d.log().contains("taskmasterd stopped"));
}

#[test]
fn no_zombies_after_many_exits() {
    // Positive control: `zombie_children` does see a zombie (an unreaped
    // child of this test process).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let me = std::process::id();
    let deadline = std::time::Instant::now() + secs(5);
    while !zombie_children(me).contains(&child.id()) {
        assert!(std::time::Instant::now() < deadline, "no zombie seen");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.wait().unwrap();
    // Each instance leaves an orphaned grandchild, in a session of its own
    // (so the group drain of a dead leader does not kill it), that exits
    // after its parent: the daemon (a subreaper) must reap those too, not
    // only the exits that EXITED reports.
    let mut d = Daemon::start(
        "zombies",
        &one(
            // The leader exits only once the grandchild has left its group
            // (else the drain of a dead leader's group would kill it first).
            "setsid sh -c 'touch up.$TASKMASTER_INSTANCE; sleep 0.2; touch done.$TASKMASTER_INSTANCE' & \
             while [ ! -e up.$TASKMASTER_INSTANCE ]; do sleep 0.01; done; exit 0",
            "numprocs = 5, starttime = 0, autorestart = 'never'",
        ),
    );
    d.wait_all("EXITED", secs(10));
    for i in 0..5 {
        wait_file(&d.dir.join(format!("done.{i}")), secs(10), |_| true);
    }
    let deadline = std::time::Instant::now() + secs(5);
    loop {
        let children: Vec<_> = processes()
            .into_iter()
            .filter(|p| p.ppid == d.pid())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{}/comm", p.pid))
                    .is_ok_and(|c| c.trim() != "tm-group-guard")
            })
            .collect();
        if children.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left: {:?}",
            children
                .iter()
                .map(|p| (p.pid, p.state))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(zombie_children(d.pid()).is_empty());
}

#[test]
fn log_lines_carry_rfc3339_time_name_and_what_happened() {
    let mut d = Daemon::start(
        "log",
        &one("sh -c 'exit 1'", "starttime = 1, startretries = 0"),
    );
    d.wait_state("svc:0", "FATAL", secs(10));
    let log = d.log();
    let spawned = log
        .lines()
        .find(|l| l.contains("spawned: 'svc:0' with pid"))
        .expect("spawned line");
    let stamp = spawned.split(' ').next().unwrap();
    assert!(
        humantime::parse_rfc3339(stamp).is_ok(),
        "not RFC 3339: {stamp}"
    );
    assert!(log.contains("gave up: svc:0 entered FATAL state"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("svc:0") && l.contains("BACKOFF") && l.contains("exit status 1")),
        "{log}"
    );
}

#[test]
fn bad_config_at_startup_exits_non_zero_and_spawns_nothing() {
    let schema = "return { services = {\n  marker = { cmd = 'touch spawned' },\n  bad = { cmd = 'x', numprocs = 0 },\n} }\n";
    let (err, spawned) = start_refused("badstart", schema, &[]);
    assert!(
        err.contains("services.bad.numprocs: must be between 1 and 100, got 0"),
        "{err}"
    );
    assert!(!spawned);

    let lua = "local x = 1\nreturn { services = { a = { cmd = nil .. 'x' } } }\n";
    let (err, _) = start_refused("badstart-lua", lua, &[]);
    assert!(
        err.contains("taskmaster.lua:2: attempt to concatenate"),
        "{err}"
    );
}

#[test]
fn json_config_is_read_directly() {
    let json = r#"{"services": {"web": {"cmd": "sleep 1000", "numprocs": 2, "starttime": 0}}}"#;
    let mut d = Daemon::start_with("json", "conf.json", json, &[]);
    let s = d.wait_all("RUNNING", secs(10));
    assert_eq!(s.len(), 2);
    let status = d.ok("status", &[]);
    assert!(status["config"]["path"]
        .as_str()
        .unwrap()
        .ends_with("conf.json"));
}

#[test]
fn shipped_config_starts_its_services() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/taskmaster.lua");
    let text = fs::read_to_string(shipped).unwrap();
    let mut d = Daemon::start("shipped", &text);
    d.wait_until("shipped services up", secs(15), |s| {
        s.iter().filter(|i| i["state"] == "RUNNING").count() >= 3
    });
}
