//! Lua's escape hatches with a real daemon (SPEC §17, §18): `os.exit` is an
//! error, `os.execute`/`io.popen` return their command's real status while
//! the actor reaps, no signal is lost meanwhile, the config table is bounded,
//! and the bundled modules are found from any folder.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

/// Waits (bounded) until `path` exists: a marker a child or a hook creates.
fn wait_exists(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request on a fresh connection whose reply must come within `timeout`
/// (the fixture's `request` waits a minute, too long for "promptly").
fn request_within(d: &Daemon, cmd: &str, timeout: Duration) -> Value {
    let mut ws = d.connect();
    let req = json!({"id": 1, "cmd": cmd, "args": []});
    ws.send(Message::text(req.to_string())).expect("send");
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no reply to {cmd} within {timeout:?}");
        set_timeout(&mut ws, Some(left));
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).expect("JSON reply");
                if v.get("event").is_none() && v["id"] == 1 {
                    return v;
                }
            }
            Ok(_) => {}
            Err(e) => panic!("no reply to {cmd} within {timeout:?}: {e}"),
        }
    }
}

#[test]
fn os_exit_in_a_hook_is_an_error_and_the_daemon_keeps_serving() {
    let lua = r#"local tm = require("taskmaster")
tm.on("RUNNING", function(ev)
  if ev.service == "a" then
    os.exit(3)
  end
end)
tm.on("RUNNING", function(ev)
  local f = io.open(tm.config_dir .. "/after.txt", "a"); f:write(ev.name, "\n"); f:close()
end)
return { services = {
  a = { cmd = "sleep 1000", starttime = 0 },
  b = { cmd = "sleep 1000", starttime = 0, autostart = false },
} }"#;
    let mut d = Daemon::start("lua-exit-hook", lua);
    let after = d.dir.join("after.txt");
    wait_file(&after, secs(10), |t| t.contains("a:0"));
    let log = wait_file(&d.dir.join("daemon.log"), secs(10), |l| {
        l.contains("os.exit")
    });
    let line = log.lines().find(|l| l.contains("os.exit")).unwrap();
    assert!(line.contains("taskmaster.lua:4: "), "{line}");
    assert!(line.contains("a:0"), "names the event: {line}");
    // Still serving, hooks included.
    d.ok("start", &["b"]);
    wait_file(&after, secs(10), |t| t.contains("b:0"));
    assert!(d.child.as_mut().unwrap().try_wait().unwrap().is_none());
}

#[test]
fn os_exit_in_a_config_is_a_config_error() {
    // At start-up: refused with file:line, nothing spawned.
    let (stderr, spawned) = start_refused(
        "lua-exit-boot",
        &format!("local x = 1\nos.exit(0)\n{MARKER}"),
        &[],
    );
    assert!(stderr.contains("taskmaster.lua:2: "), "{stderr}");
    assert!(stderr.contains("os.exit"), "{stderr}");
    assert!(!spawned);

    // On reload: rejected, the running service untouched.
    let mut d = Daemon::start(
        "lua-exit-reload",
        "return { services = { keep = { cmd = 'sleep 1000', starttime = 0 } } }",
    );
    let pid = d.wait_state("keep:0", "RUNNING", secs(10))["pid"].clone();
    fs::write(
        &d.config,
        "local x = 1\nos.exit(3)\nreturn { services = {} }",
    )
    .unwrap();
    let reply = d.request("reload", &[]);
    assert_eq!(reply["ok"], false, "{reply}");
    let error = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(
        error.contains("taskmaster.lua:2: ") && error.contains("os.exit"),
        "{reply}"
    );
    assert_eq!(d.instance("keep:0")["pid"], pid);
}

#[test]
fn os_execute_returns_the_real_status_while_the_actor_reaps() {
    let lua = r#"local tm = require("taskmaster")
tm.hook_timeout = 5
local n = 0
tm.on("transition", function(ev)
  if ev.service ~= "crash" or ev.to ~= "STARTING" or n >= 150 then return end
  n = n + 1
  local ok, what, code = os.execute("exit 3")
  local f = io.open(tm.config_dir .. "/results.txt", "a")
  f:write(tostring(ok), " ", tostring(what), " ", tostring(code), "\n")
  f:close()
end)
return { services = { crash = { cmd = "true", starttime = 0, autorestart = "always" } } }"#;
    let d = Daemon::start("lua-execute-race", lua);
    let text = wait_file(&d.dir.join("results.txt"), secs(60), |t| {
        t.lines().count() >= 150
    });
    let wrong: Vec<&str> = text.lines().filter(|l| *l != "nil exit 3").collect();
    assert!(
        wrong.is_empty(),
        "{} of 150 wrong: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

/// Everything `io.popen` and `os.execute` must return, checked in one hook;
/// each line of `results.txt` is one `rec(...)` (strings quoted).
const BATTERY: &str = r#"local tm = require("taskmaster")
tm.hook_timeout = 10
local out = {}
local function rec(...)
  local t = table.pack(...)
  for i = 1, t.n do
    local v = t[i]
    t[i] = type(v) == "string" and ('"' .. v:gsub("\n", "\\n") .. '"') or tostring(v)
  end
  out[#out + 1] = table.concat(t, " ", 1, t.n)
end
tm.on("RUNNING", function(ev)
  if ev.service ~= "s" then return end
  local p = io.popen("printf 'one\\ntwo\\n 3.5 0x10 -7e1 rest\\n'; echo err-$((6*7)) >&2; exit 4")
  rec(io.type(p), tostring(p):match("^file %(0?x?%x+%)$") ~= nil)
  rec(p:read())
  rec(p:read("L"))
  rec(p:read("n", "*n", "n"))
  rec(p:read(1, 0))
  rec(p:read("a"))
  rec(p:read("a"), p:read("l"), p:read(0))
  rec(p:close())
  rec(io.type(p), tostring(p))
  local ok, err = pcall(p.read, p)
  rec(ok, tostring(err):match("attempt to use a closed file") ~= nil)

  local lines = io.popen("printf 'x\\ny\\n\\nz'")
  rec(lines:read("l", "*l", "L", "l", "l"))
  lines:close()

  local got = {}
  local q = io.popen("seq 3")
  for l in q:lines() do got[#got + 1] = l end
  rec(table.concat(got, ","), q:close())
  local sum = 0
  for a, b in io.popen("printf '1 2\\n3 4\\n'"):lines("n", "n") do sum = sum + a * b end
  rec(sum)

  local w = io.popen("cat > '" .. tm.config_dir .. "/written.txt'", "w")
  rec(w:write("a", 1, "\n") == w, w:close())
  local w2 = io.popen("cat > /dev/null", "w")
  rec(w2:read("l"))
  rec(io.close(w2))

  rec(io.popen("kill -KILL $$"):close())
  local kept
  do
    local c <close> = io.popen("echo closing")
    kept = c
    rec(c:read("l"))
  end
  rec(io.type(kept))
  local okm, errm = pcall(io.popen, "true", "rw")
  rec(okm, tostring(errm):match("invalid mode") ~= nil)

  rec(os.execute())
  rec(os.execute("exit 0"))
  rec(os.execute("exit 7"))
  rec(os.execute("kill -TERM $$"))
  rec(os.execute("echo out-$((6*7)); echo err-$((7*8)) >&2"))
  collectgarbage()
  local f = io.open(tm.config_dir .. "/results.txt", "w")
  f:write(table.concat(out, "\n"), "\ndone\n")
  f:close()
end)
return { services = { s = { cmd = "sleep 1000", starttime = 0 } } }"#;

#[test]
fn io_popen_and_os_execute_behave_as_in_lua() {
    let mut d = Daemon::start("lua-popen", BATTERY);
    d.wait_state("s:0", "RUNNING", secs(10));
    let text = wait_file(&d.dir.join("results.txt"), secs(20), |t| t.contains("done"));
    // What Lua 5.4 itself gives for the same script.
    let expected = [
        r#""file" true"#,
        r#""one""#,
        r#""two\n""#,
        "3.5 16 -70.0",
        r#"" " """#,
        r#""rest\n""#,
        r#""" nil nil"#,
        r#"nil "exit" 4"#,
        r#""closed file" "file (closed)""#,
        "false true",
        r#""x" "y" "\n" "z" nil"#,
        r#""1,2,3" true "exit" 0"#,
        "14",
        r#"true true "exit" 0"#,
        r#"nil "Bad file descriptor" 9"#,
        r#"true "exit" 0"#,
        r#"nil "signal" 9"#,
        r#""closing""#,
        r#""closed file""#,
        "false true",
        "true",
        r#"true "exit" 0"#,
        r#"nil "exit" 7"#,
        r#"nil "signal" 15"#,
        r#"true "exit" 0"#,
        "done",
    ];
    let got: Vec<&str> = text.lines().collect();
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(got.get(i), Some(want), "line {i} of:\n{text}");
    }
    assert_eq!(
        fs::read_to_string(d.dir.join("written.txt")).unwrap(),
        "a1\n"
    );
    // Output not captured reaches the daemon log, line by line.
    let log = wait_file(&d.dir.join("daemon.log"), secs(10), |l| {
        l.contains("err-42") && l.contains("out-42") && l.contains("err-56")
    });
    assert!(
        log.lines().any(|l| l.ends_with("]: err-42")),
        "one line per output line: {log}"
    );
    // Every command was reaped, the ones Lua closed and the ones it dropped.
    let deadline = Instant::now() + secs(5);
    while !zombie_children(d.pid()).is_empty() {
        assert!(Instant::now() < deadline, "zombies left");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn io_popen_returns_the_real_status_while_the_actor_reaps() {
    let lua = r#"local tm = require("taskmaster")
tm.hook_timeout = 5
local n = 0
tm.on("transition", function(ev)
  if ev.service ~= "crash" or ev.to ~= "STARTING" or n >= 100 then return end
  n = n + 1
  local p = io.popen("echo out-$((6*7)); exit 5")
  local text = p:read("a")
  local ok, what, code = p:close()
  local f = io.open(tm.config_dir .. "/results.txt", "a")
  f:write(text:gsub("\n", ""), " ", tostring(ok), " ", tostring(what), " ", tostring(code), "\n")
  f:close()
end)
return { services = { crash = { cmd = "true", starttime = 0, autorestart = "always" } } }"#;
    let d = Daemon::start("lua-popen-race", lua);
    let text = wait_file(&d.dir.join("results.txt"), secs(60), |t| {
        t.lines().count() >= 100
    });
    let wrong: Vec<&str> = text.lines().filter(|l| *l != "out-42 nil exit 5").collect();
    assert!(
        wrong.is_empty(),
        "{} of 100 wrong: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

#[test]
fn sigint_during_os_execute_is_not_lost() {
    let lua = r#"local tm = require("taskmaster")
tm.hook_timeout = 10
tm.on("RUNNING", function(ev)
  os.execute("touch '" .. tm.config_dir .. "/in-execute'; sleep 1")
  tm.log("os.execute returned")
end)
return { services = { s = { cmd = "sleep 1000", starttime = 0 } } }"#;
    let mut d = Daemon::start("lua-sigint", lua);
    // The marker comes from the command itself: os.execute is under way.
    wait_exists(&d.dir.join("in-execute"), secs(10));
    let sent = Instant::now();
    unsafe { libc::kill(d.pid() as i32, libc::SIGINT) };
    let mut child = d.child.take().unwrap();
    let status = wait_child(&mut child, secs(10));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = status.unwrap_or_else(|| panic!("SIGINT lost; log:\n{}", d.log()));
    assert!(status.success(), "{status}");
    // Before the hook returned or promptly after (its command sleeps 1 s).
    assert!(sent.elapsed() < secs(4), "{:?}", sent.elapsed());
    assert!(d.log().contains("received SIGINT"), "{}", d.log());
}

#[test]
fn a_command_outliving_the_hook_budget_is_killed_and_the_hook_cut_off() {
    let lua = r#"local tm = require("taskmaster")
tm.hook_timeout = 0.5
tm.on("RUNNING", function(ev)
  if ev.service == "a" then
    pcall(function() os.execute("sleep 30") end)
    tm.log("swallowed the cut-off")
  else
    io.popen("sleep 30; echo never"):read("a")
  end
end)
tm.on("RUNNING", function(ev)
  local f = io.open(tm.config_dir .. "/after.txt", "a"); f:write(ev.name, "\n"); f:close()
end)
return { services = {
  a = { cmd = "sleep 1000", starttime = 0 },
  b = { cmd = "sleep 1000", starttime = 0 },
} }"#;
    let t = Instant::now();
    let d = Daemon::start("lua-budget", lua);
    // The next handlers run once each call is cut off.
    wait_file(&d.dir.join("after.txt"), secs(10), |t| {
        t.contains("a:0") && t.contains("b:0")
    });
    assert!(t.elapsed() < secs(5), "{:?}", t.elapsed());
    let log = d.log();
    let cut: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("hook ran out of time"))
        .collect();
    assert_eq!(cut.len(), 2, "{log}");
    assert!(
        cut[0].contains("taskmaster.lua:5: hook ran out of time (os.execute[")
            || cut[1].contains("taskmaster.lua:5: hook ran out of time (os.execute["),
        "{log}"
    );
    assert!(
        cut.iter()
            .any(|l| l.contains("taskmaster.lua:8: hook ran out of time (io.popen[")),
        "{log}"
    );
    // The cut-off reached the top through the pcall.
    assert!(!log.contains("swallowed the cut-off"), "{log}");
    // Each command's whole group was killed.
    for line in cut {
        let pid: i32 = line
            .rsplit('[')
            .next()
            .and_then(|r| r.split(']').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {line}"));
        let deadline = Instant::now() + secs(5);
        while alive(-pid) {
            assert!(Instant::now() < deadline, "group {pid} still alive");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `t = {t, t}` thirty times: 2^30 values once shared tables are expanded.
const SHARED: &str =
    "local t = {}\nfor i = 1, 30 do t = {t, t} end\nreturn { services = {}, x = t }\n";

#[test]
fn a_config_of_shared_subtables_fails_promptly_and_changes_nothing() {
    let mut d = Daemon::start(
        "lua-shared",
        "return { services = { keep = { cmd = 'sleep 1000', starttime = 0 } } }",
    );
    let pid = d.wait_state("keep:0", "RUNNING", secs(10))["pid"].clone();
    fs::write(&d.config, SHARED).unwrap();
    let t = Instant::now();
    let reply = request_within(&d, "reload", secs(15));
    assert!(t.elapsed() < secs(10), "{:?}", t.elapsed());
    assert_eq!(reply["ok"], false, "{reply}");
    let error = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(error.contains("1000000 values"), "{reply}");
    assert_eq!(d.instance("keep:0")["pid"], pid);
}

const BUNDLED: [&str; 4] = ["webhook", "jsonlog", "crashguard", "json"];

#[test]
fn bundled_modules_are_found_from_any_folder() {
    // A folder with no scripts/: the modules come from the binary.
    let dir = temp_dir("lua-bundled");
    let mut lua = String::from("local tm = require('taskmaster')\nlocal kinds = {}\n");
    for m in BUNDLED {
        lua.push_str(&format!(
            "kinds[#kinds + 1] = '{m}=' .. type(require('{m}'))\n"
        ));
    }
    lua.push_str(
        "kinds[#kinds + 1] = require('json').encode({ a = { 1, 2 } })\n\
         local f = io.open(tm.config_dir .. '/kinds.txt', 'w'); f:write(table.concat(kinds, ' ')); f:close()\n\
         return { services = {} }\n",
    );
    fs::write(dir.join("taskmaster.lua"), lua).unwrap();
    let mut d = Daemon::adopt(dir);
    assert_eq!(d.status().len(), 0);
    assert_eq!(
        fs::read_to_string(d.dir.join("kinds.txt")).unwrap(),
        "webhook=table jsonlog=table crashguard=table json=table {\"a\":[1,2]}"
    );
}

#[test]
fn a_file_in_the_config_folder_wins_over_the_bundled_module() {
    let dir = temp_dir("lua-override");
    fs::create_dir_all(dir.join("scripts")).unwrap();
    fs::write(
        dir.join("json.lua"),
        "return { encode = function() return 'mine' end }",
    )
    .unwrap();
    fs::write(
        dir.join("scripts/crashguard.lua"),
        "return { who = 'scripts' }",
    )
    .unwrap();
    fs::write(
        dir.join("taskmaster.lua"),
        "local tm = require('taskmaster')\n\
         local f = io.open(tm.config_dir .. '/who.txt', 'w')\n\
         f:write(require('json').encode({}), ' ', require('crashguard').who, ' ', type(require('jsonlog').setup))\n\
         f:close()\nreturn { services = {} }\n",
    )
    .unwrap();
    let d = Daemon::adopt(dir);
    // The bundled jsonlog, with its require("json") finding the local file.
    assert_eq!(
        fs::read_to_string(d.dir.join("who.txt")).unwrap(),
        "mine scripts function"
    );
    assert!(d.log().contains("starting"), "{}", d.log());
}
