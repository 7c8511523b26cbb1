//! The daemon log (SPEC §2, §9, §17): a sink that cannot take lines never
//! holds up supervision, dropped lines are counted once it drains, and text
//! from a client or a hook can never start a line of its own.

use std::fs;
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::common::*;

/// A daemon whose stderr is a pipe the test holds: the fixture in common.rs
/// sends stderr to /dev/null, which never fills.
struct PipedDaemon {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl PipedDaemon {
    fn start(tag: &str, lua: &str) -> (PipedDaemon, ChildStderr) {
        let dir = temp_dir(tag);
        let config = dir.join("taskmaster.lua");
        fs::write(&config, lua).expect("write config");
        let log = dir.join("daemon.log");
        let port = free_port();
        let mut child = Command::new(daemon_bin())
            .arg("--config")
            .arg(&config)
            .arg("--port")
            .arg(port.to_string())
            .arg("--log-file")
            .arg(&log)
            .current_dir(&dir)
            .env_remove("TASKMASTER_TOKEN")
            .env_remove("CONFIG_PATH")
            .env_remove("PORT")
            .env_remove("TASKMASTER_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn taskmasterd");
        let stderr = child.stderr.take().expect("stderr pipe");
        // The smallest pipe (one page), so it fills after a few dozen lines.
        unsafe { libc::fcntl(stderr.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        let mut d = PipedDaemon { child, port, log };
        let deadline = Instant::now() + secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("taskmasterd exited early ({status}):\n{}", d.log());
            }
            assert!(Instant::now() < deadline, "taskmasterd did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        (d, stderr)
    }

    fn connect(&self) -> Ws {
        let (ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{}/", self.port))
            .expect("connect to taskmasterd");
        ws
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PipedDaemon {
    fn drop(&mut self) {
        // Only while it is not reaped: its pid could be somebody else's.
        if let Ok(None) = self.child.try_wait() {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// One request with a bounded wait for its reply (None: no reply in time).
fn call_within(ws: &mut Ws, id: u64, cmd: &str, args: &[&str], t: Duration) -> Option<Value> {
    let req = json!({"id": id, "cmd": cmd, "args": args});
    ws.send(Message::text(req.to_string())).ok()?;
    let deadline = Instant::now() + t;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        set_timeout(ws, Some(left));
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).ok()?;
                if v.get("event").is_none() && v["id"] == id {
                    return Some(v);
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                return None
            }
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

#[test]
fn a_stderr_pipe_nobody_reads_never_stops_supervision() {
    // 3 log lines per restart: 3000 restarts overflow the one-page pipe and
    // the writer's queue several times over, so lines must be dropped.
    const RESTARTS: u64 = 3000;
    let (mut d, mut stderr) = PipedDaemon::start(
        "log-full-pipe",
        "return { services = { c = { cmd = '/bin/false', autorestart = 'always', starttime = 0 } } }",
    );
    let mut sub = d.connect();
    let reply = call_within(&mut sub, 1, "subscribe", &[], secs(10));
    assert!(reply.is_some_and(|r| r["ok"] == true), "subscribe failed");

    // Events keep flowing; a stuck daemon sends none (bounded per event).
    let deadline = Instant::now() + secs(90);
    let mut restarts = 0;
    while restarts <= RESTARTS {
        assert!(
            Instant::now() < deadline,
            "only {restarts} restarts in 90 s"
        );
        set_timeout(&mut sub, Some(secs(10)));
        match sub.read() {
            Ok(Message::Text(t)) => {
                let ev: Value = serde_json::from_str(&t).expect("event is JSON");
                if ev["event"] == "transition" && ev["name"] == "c:0" {
                    restarts = ev["restarts"].as_u64().unwrap_or(restarts);
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                panic!("no event for 10 s after {restarts} restarts: supervision is stuck")
            }
            // Too slow a subscriber is disconnected: subscribe again.
            Err(_) => {
                sub = d.connect();
                let reply = call_within(&mut sub, 1, "subscribe", &[], secs(10));
                assert!(reply.is_some(), "subscribe got no reply");
            }
        }
    }

    // Commands are answered too.
    let mut ws = d.connect();
    let status = call_within(&mut ws, 2, "status", &[], secs(10)).expect("status answers");
    let inst = &status["data"]["instances"][0];
    assert!(inst["restarts"].as_u64().unwrap_or(0) > RESTARTS, "{inst}");
    let stop = call_within(&mut ws, 3, "stop", &["c"], secs(20)).expect("stop answers");
    assert_eq!(stop["ok"], true, "{stop}");

    // Nothing reported as dropped while the pipe is still full...
    let before = d.log();
    assert!(
        !before.lines().any(|l| l.contains("dropped")),
        "a drop was reported before stderr drained"
    );
    // ...and the count once it drains.
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    let text = wait_file(&d.log, secs(20), |t| {
        t.lines()
            .any(|l| l.contains("dropped") && l.contains("stderr"))
    });
    let line = text
        .lines()
        .find(|l| l.contains("dropped"))
        .expect("dropped line");
    let count: u64 = line
        .split(' ')
        .skip_while(|w| *w != "dropped")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(count > 0, "{line}");

    // A clean exit flushes what is queued, to both sinks.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    let status = wait_child(&mut d.child, secs(20)).expect("daemon exits");
    assert!(status.success(), "{status}");
    assert!(d.log().contains("taskmasterd stopped"));
    let stderr_text = reader.join().expect("reader thread");
    assert!(stderr_text.contains("dropped"), "stderr lacks the count");
    assert!(stderr_text.contains("taskmasterd stopped"));
}

/// What a forged line would start with: no real line does (they carry the
/// current time, with milliseconds).
const FORGED: &str = "2026-01-01T00:00:00Z";

#[test]
fn client_and_hook_text_cannot_start_a_log_line() {
    let lua = format!(
        r#"local tm = require("taskmaster")
tm.on("RUNNING", function(ev)
  tm.log("hook says\n{FORGED} forged by a hook\r\n{FORGED} again\27[31m and\tDEL\127")
end)
return {{ services = {{ s = {{ cmd = "sleep 100", starttime = 0 }} }} }}"#
    );
    let mut d = Daemon::start("log-inject", &lua);
    d.wait_state("s:0", "RUNNING", secs(10));
    let reply = d.request("start", &[&format!("nosuch\n{FORGED} forged by a client")]);
    assert_eq!(reply["ok"], false, "{reply}");
    let path = d.dir.join("daemon.log");
    // Positive control: both texts reached the log.
    let log = wait_file(&path, secs(10), |t| {
        t.contains("forged by a client") && t.contains("forged by a hook")
    });
    let forged: Vec<&str> = log.lines().filter(|l| l.starts_with(FORGED)).collect();
    assert!(forged.is_empty(), "forged lines: {forged:#?}\n{log}");
    assert!(
        log.contains(&format!("start nosuch\\n{FORGED} forged by a client")),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "lua: hook says\\n{FORGED} forged by a hook\\r\\n{FORGED} again\\x1b[31m and\tDEL\\x7f"
        )),
        "{log}"
    );
}
