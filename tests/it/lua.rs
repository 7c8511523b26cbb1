//! Lua's escape hatches with a real daemon (SPEC §17, §18): `os.exit` is an
//! error, `os.execute`/`io.popen` return their command's real status while
//! the actor reaps, no signal is lost meanwhile, the config table is bounded,
//! and the bundled modules are found from any folder.

use std::fs;

use crate::common::*;

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
