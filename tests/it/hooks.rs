//! Lua hooks (SPEC §6) with a real daemon: event fields and order, reload
//! replacement, time budget, errors, exec, tm.stop on its own service, and
//! the shipped scripts.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const RECORDER: &str = r#"
local tm = require("taskmaster")
local function rec(tag)
  return function(ev)
    local f = assert(io.open(tm.config_dir .. "/events.txt", "a"))
    f:write(table.concat({ tag, ev.name, ev.service, tostring(ev.instance), ev.from, ev.to,
      tostring(ev.pid), tostring(ev.exitcode), tostring(ev.signal), tostring(ev.expected),
      tostring(math.type(ev.time) == "float" and ev.time > 1.7e9) }, " "), "\n")
    f:close()
  end
end
tm.on("transition", rec("T"))
tm.on("RUNNING", rec("R"))
tm.on("EXITED", rec("E"))
tm.on("reload", function(ev)
  local f = assert(io.open(tm.config_dir .. "/events.txt", "a"))
  f:write("reload ", tostring(ev.ok), " ", tostring(ev.error), " ",
    ev.diff and table.concat(ev.diff.unchanged, ",") or "-", "\n")
  f:close()
end)
"#;

#[test]
fn transition_and_state_events_fire_in_order_with_their_fields() {
    let lua = format!(
        "{RECORDER}\nreturn {{ services = {{ w = {{ cmd = \"sh -c 'sleep 0.3; exit 3'\", starttime = 0, autorestart = 'never' }} }} }}"
    );
    let mut d = Daemon::start("hook-order", &lua);
    d.wait_state("w:0", "EXITED", secs(10));
    let path = d.dir.join("events.txt");
    let text = wait_file(&path, secs(10), |t| t.lines().count() >= 5);
    let lines: Vec<&str> = text.lines().collect();
    let pid = lines[1].split(' ').nth(6).unwrap().to_string();
    assert!(pid.parse::<u32>().is_ok(), "{text}");
    assert_eq!(lines[0], "T w:0 w 0 STOPPED STARTING nil nil nil nil true");
    // State handlers run before "transition" handlers for the same change.
    assert_eq!(
        lines[1],
        format!("R w:0 w 0 STARTING RUNNING {pid} nil nil nil true")
    );
    assert_eq!(
        lines[2],
        format!("T w:0 w 0 STARTING RUNNING {pid} nil nil nil true")
    );
    assert_eq!(
        lines[3],
        format!("E w:0 w 0 RUNNING EXITED {pid} 3 nil false true")
    );
    assert_eq!(
        lines[4],
        format!("T w:0 w 0 RUNNING EXITED {pid} 3 nil false true")
    );

    // Reload events go to the hooks too.
    d.ok("reload", &[]);
    wait_file(&path, secs(10), |t| t.contains("reload true nil w"));
    fs::write(
        &d.config,
        "return { services = { w = { cmd = 'x', numprocs = 0 } } }",
    )
    .unwrap();
    assert_eq!(d.request("reload", &[])["ok"], false);
    let text = wait_file(&path, secs(10), |t| t.contains("reload false"));
    assert!(text.contains("services.w.numprocs"), "{text}");
}

#[test]
fn reloaded_config_hooks_replace_the_old_ones() {
    let hook = |tag: &str| {
        format!(
            r#"local tm = require("taskmaster")
tm.on("RUNNING", function(ev)
  local f = io.open(tm.config_dir .. "/who.txt", "a"); f:write("{tag} ", ev.name, "\n"); f:close()
end)
tm.on("reload", function(ev)
  local f = io.open(tm.config_dir .. "/who.txt", "a"); f:write("{tag} reload ", tostring(ev.ok), "\n"); f:close()
end)
return {{ services = {{ a = {{ cmd = "sleep 1000", starttime = 0 }}, b = {{ cmd = "sleep 1000", starttime = 0, autostart = false }} }} }}"#
        )
    };
    let mut d = Daemon::start("hook-replace", &hook("old"));
    let path = d.dir.join("who.txt");
    wait_file(&path, secs(10), |t| t.contains("old a:0"));
    fs::write(&d.config, hook("new")).unwrap();
    d.ok("reload", &[]);
    wait_file(&path, secs(10), |t| t.contains("new reload true"));
    d.ok("start", &["b"]);
    let text = wait_file(&path, secs(10), |t| t.contains("b:0"));
    assert!(
        text.contains("new b:0") && !text.contains("old b:0"),
        "{text}"
    );
    assert!(!text.contains("old reload true"), "{text}");
    // A failed reload keeps the old (here: "new") hooks and tells them.
    fs::write(&d.config, "syntax error here").unwrap();
    assert_eq!(d.request("reload", &[])["ok"], false);
    wait_file(&path, secs(10), |t| t.contains("new reload false"));
}

#[test]
fn an_endless_hook_is_cut_off_and_supervision_goes_on_at_full_speed() {
    let lua = r#"local tm = require("taskmaster")
tm.on("transition", function(ev)
  while true do pcall(function() while true do end end) end
end)
return { services = {
  crash = { cmd = "true", starttime = 0, autorestart = "always" },
  steady = { cmd = "sleep 1000", starttime = 0 },
} }"#;
    let mut d = Daemon::start("hook-endless", lua);
    let t = Instant::now();
    d.wait_until("crash loop", secs(10), |s| {
        s[0]["restarts"].as_u64() >= Some(200)
    });
    // Hundreds of restarts while every hook call burns its whole second.
    assert!(
        t.elapsed() < secs(5),
        "restarts slowed by hooks: {:?}",
        t.elapsed()
    );
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(d.request("status", &[])["ok"], true);
        assert!(t.elapsed() < Duration::from_millis(500));
    }
    d.ok("stop", &["crash"]);
    let log = wait_file(&d.dir.join("daemon.log"), secs(10), |l| {
        l.contains("ran out of time")
    });
    let line = log.lines().find(|l| l.contains("ran out of time")).unwrap();
    assert!(
        line.contains("taskmaster.lua:3: hook ran out of time"),
        "{line}"
    );
    assert!(line.contains("crash:0"), "names the event: {line}");
}

#[test]
fn custom_hook_timeout_and_errors_with_file_line_and_later_hooks_run() {
    let lua = r#"local tm = require("taskmaster")
tm.hook_timeout = 0.2
tm.on("RUNNING", function(ev)
  error("boom in " .. ev.name)
end)
tm.on("RUNNING", function(ev)
  while true do end
end)
tm.on("RUNNING", function(ev)
  local f = io.open(tm.config_dir .. "/third.txt", "w"); f:write(ev.name); f:close()
end)
return { services = { s = { cmd = "sleep 1000", starttime = 0 } } }"#;
    let mut d = Daemon::start("hook-errors", lua);
    d.wait_state("s:0", "RUNNING", secs(10));
    let t = Instant::now();
    assert_eq!(
        wait_file(&d.dir.join("third.txt"), secs(10), |t| !t.is_empty()),
        "s:0"
    );
    assert!(
        t.elapsed() < secs(1),
        "budget of 0.2 s not applied: {:?}",
        t.elapsed()
    );
    let log = d.log();
    assert!(log.contains("taskmaster.lua:4: boom in s:0"), "{log}");
    assert!(
        log.contains("taskmaster.lua:7: hook ran out of time"),
        "{log}"
    );
}

#[test]
fn exec_runs_without_waiting_and_leaves_no_zombie() {
    // The command waits (up to 10 s) for a file the hook creates only after
    // tm.exec returned, then says whether it saw it; `$((6*7))` makes the
    // line one only the shell can print (the log also shows the command).
    let lua = r#"local tm = require("taskmaster")
tm.on("RUNNING", function(ev)
  local go = "'" .. tm.config_dir .. "/go'"
  tm.exec("i=0; while [ ! -e " .. go .. " ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; "
    .. "if [ -e " .. go .. " ]; then echo saw-go-$((6*7)); else echo no-go-$((6*7)); fi")
  local f = assert(io.open(tm.config_dir .. "/go", "w")); f:close()
end)
return { services = { s = { cmd = "sleep 1000", starttime = 0 } } }"#;
    let d = Daemon::start("hook-exec", lua);
    let log = wait_file(&d.dir.join("daemon.log"), secs(20), |l| l.contains("go-42"));
    let line = log.lines().find(|l| l.contains("go-42")).unwrap();
    assert!(line.ends_with("]: saw-go-42"), "tm.exec waited: {line}");
    // That shell exits right after: the daemon must reap it (no event marks
    // that), so its pid disappears (a zombie would still answer kill 0).
    let pid: i32 = line
        .split("exec[")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"));
    let deadline = Instant::now() + secs(5);
    while alive(pid) {
        assert!(Instant::now() < deadline, "exec[{pid}] not reaped");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(zombie_children(d.pid()).is_empty());
}

#[test]
fn a_hook_can_stop_its_own_service() {
    let lua = r#"local tm = require("taskmaster")
tm.on("RUNNING", function(ev)
  if ev.service == "selfstop" then tm.stop(ev.name) end
  local n = #tm.status()
  tm.log("status has " .. n .. " instances")
end)
return { services = { selfstop = { cmd = "sleep 1000", starttime = 0 }, other = { cmd = "sleep 1000", starttime = 0 } } }"#;
    let mut d = Daemon::start("hook-selfstop", lua);
    d.wait_state("selfstop:0", "STOPPED", secs(10));
    assert_eq!(d.instance("other:0")["state"], "RUNNING");
    // The hook goes on after tm.stop (which did not wait) and tm.status:
    // its line may come after the stop has settled.
    wait_file(&d.dir.join("daemon.log"), secs(10), |l| {
        l.contains("status has 2 instances")
    });
}

#[test]
fn script_jsonlog_writes_one_json_line_per_event() {
    let dir = temp_dir("jsonlog");
    install_scripts(&dir);
    fs::write(
        dir.join("taskmaster.lua"),
        r#"require("jsonlog").setup({ path = "events.jsonl" })
return { services = { a = { cmd = "sleep 1000", starttime = 0 } } }"#,
    )
    .unwrap();
    let mut d = Daemon::adopt(dir);
    d.wait_state("a:0", "RUNNING", secs(10));
    let text = wait_file(&d.dir.join("events.jsonl"), secs(10), |t| {
        t.lines().count() >= 2
    });
    let evs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(evs[0]["event"], "transition");
    assert_eq!(
        (evs[0]["from"].as_str(), evs[0]["to"].as_str()),
        (Some("STOPPED"), Some("STARTING"))
    );
    assert_eq!(evs[1]["to"], "RUNNING");
    assert!(evs[1]["pid"].as_u64().is_some());
    d.ok("reload", &[]);
    let text = wait_file(&d.dir.join("events.jsonl"), secs(10), |t| {
        t.contains("\"reload\"")
    });
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["ok"], true);
    assert_eq!(last["diff"]["unchanged"], serde_json::json!(["a"]));
}

#[test]
fn script_crashguard_stops_a_crash_loop_and_says_why() {
    let dir = temp_dir("crashguard");
    install_scripts(&dir);
    fs::write(
        dir.join("taskmaster.lua"),
        r#"require("crashguard").setup({ max = 3, window = 60 })
return { services = {
  loop = { cmd = "sh -c 'sleep 0.05; exit 7'", starttime = 0, autorestart = "always" },
  fine = { cmd = "sleep 1000", starttime = 0 },
} }"#,
    )
    .unwrap();
    let mut d = Daemon::adopt(dir);
    let s = d.wait_state("loop:0", "STOPPED", secs(15));
    assert!(s["restarts"].as_u64().unwrap() >= 4);
    let log = d.log();
    assert!(
        log.contains(
            "crashguard: stopping loop:0: restarted 4 times in 60 s (last: exit status 7)"
        ),
        "{log}"
    );
    assert_eq!(d.instance("fine:0")["state"], "RUNNING");
}

#[test]
fn script_webhook_posts_json_on_fatal_and_unexpected_exit() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let dir = temp_dir("webhook");
    install_scripts(&dir);
    fs::write(
        dir.join("taskmaster.lua"),
        format!(
            r#"require("webhook").setup({{ url = "http://127.0.0.1:{port}/alert" }})
return {{ services = {{
  dies = {{ cmd = "sh -c 'exit 1'", starttime = 1, startretries = 0 }},
  crashes = {{ cmd = "sh -c 'sleep 0.2; exit 5'", starttime = 0, autorestart = "never" }},
}} }}"#
        ),
    )
    .unwrap();
    let _d = Daemon::adopt(dir);
    server.set_nonblocking(false).unwrap();
    let mut bodies = Vec::new();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in server.incoming().take(2).flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            let mut line = String::new();
            let mut first = String::new();
            reader.read_line(&mut first).unwrap();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let mut s = stream;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .unwrap();
            tx.send((first, String::from_utf8(body).unwrap())).unwrap();
        }
    });
    for _ in 0..2 {
        let (first, body) = rx.recv_timeout(secs(15)).expect("a webhook POST");
        assert!(first.starts_with("POST /alert "), "{first}");
        bodies.push(serde_json::from_str::<Value>(&body).unwrap());
    }
    bodies.sort_by_key(|b| b["name"].as_str().unwrap().to_string());
    assert_eq!(bodies[0]["alert"], "unexpected_exit");
    assert_eq!(bodies[0]["name"], "crashes:0");
    assert_eq!(bodies[0]["exitcode"], 5);
    assert_eq!(bodies[0]["expected"], false);
    assert_eq!(bodies[0]["reason"], "exit status 5; not expected");
    assert_eq!(bodies[1]["alert"], "FATAL");
    assert_eq!(bodies[1]["name"], "dies:0");
    assert_eq!(bodies[1]["to"], "FATAL");
    // The reason and the exit code of the attempt that gave up.
    assert_eq!(bodies[1]["reason"], "exited too quickly (exit status 1)");
    assert_eq!(bodies[1]["exitcode"], 1);
}
