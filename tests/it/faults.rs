//! Faults, load and hostile input (README "Reliability"): the daemon must
//! lose nothing. Short versions run in CI; `TASKMASTER_SLOW=1` runs the long
//! ones (10 s kill storm, 10,000 spawn/exit cycles).

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

fn slow() -> bool {
    std::env::var_os("TASKMASTER_SLOW").is_some()
}

/// A tiny deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn ppid(pid: u32) -> Option<u32> {
    processes()
        .into_iter()
        .find(|p| p.pid == pid)
        .map(|p| p.ppid)
}

#[test]
fn sigkilled_daemon_leaves_no_process_behind() {
    // A hook also leaves a background grandchild through tm.exec.
    let lua = r#"local tm = require("taskmaster")
tm.on("RUNNING", function(ev)
  if ev.name == "g:0" then tm.exec("sleep 1000 & echo $! > " .. tm.config_dir .. "/exec.pid") end
end)
return { services = { g = { cmd = "sh -c 'sleep 1000 & sleep 1000'", numprocs = 5, starttime = 0 } } }"#;
    let mut d = Daemon::start("sigkill", lua);
    let s = d.wait_all("RUNNING", secs(10));
    let exec_pid: i32 = wait_file(&d.dir.join("exec.pid"), secs(10), |t| t.ends_with('\n'))
        .trim()
        .parse()
        .unwrap();
    assert!(alive(exec_pid));
    let groups: Vec<i32> = s
        .iter()
        .map(|i| i["pid"].as_i64().unwrap() as i32)
        .collect();
    let deadline = Instant::now() + secs(5);
    while groups
        .iter()
        .map(|g| group_members(*g as u32).len())
        .sum::<usize>()
        < 15
    {
        assert!(Instant::now() < deadline, "groups never filled");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut child = d.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL: no chance to stop anything itself
    child.wait().unwrap();
    let deadline = Instant::now() + secs(5);
    loop {
        let left: Vec<u32> = groups
            .iter()
            .flat_map(|g| group_members(*g as u32))
            .collect();
        if left.is_empty() && !alive(exec_pid) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphans survived the daemon: {left:?}, exec'd sleep alive: {}",
            alive(exec_pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn kill_storm_loses_nothing() {
    let n = 50;
    let lua = format!("return {{ services = {{ k = {{ cmd = 'sleep 1000', numprocs = {n}, starttime = 0, autorestart = 'always' }} }} }}");
    let mut d = Daemon::start("killstorm", &lua);
    d.wait_all("RUNNING", secs(20));
    let baseline_fds = fd_count(d.pid());
    let rss_before = rss_kib(d.pid());
    let duration = if slow() { secs(10) } else { secs(2) };
    let mut rng = Rng(0x5eed);
    let mut kills = 0;
    let start = Instant::now();
    while start.elapsed() < duration {
        let s = d.status();
        // About 100 kills per second, at 10 distinct random instances per
        // round (a second kill of the same pid would hit a dying process).
        let mut picked = std::collections::BTreeSet::new();
        while picked.len() < 10 {
            picked.insert(rng.below(n as u64) as usize);
        }
        for i in picked.into_iter().map(|k| &s[k]) {
            if let Some(pid) = i["pid"].as_i64() {
                if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
                    kills += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = d.wait_all("RUNNING", secs(20));
    for i in &s {
        let pid = i["pid"].as_u64().unwrap() as u32;
        assert!(alive(pid as i32), "{} reports dead pid {pid}", i["name"]);
        assert_eq!(
            ppid(pid),
            Some(d.pid()),
            "{} pid {pid} is not the daemon's child",
            i["name"]
        );
    }
    assert!(zombie_children(d.pid()).is_empty());
    let restarts: u64 = s.iter().map(|i| i["restarts"].as_u64().unwrap()).sum();
    assert!(
        restarts >= kills as u64,
        "{restarts} restarts for {kills} kills"
    );
    assert_eq!(fd_count(d.pid()), baseline_fds, "fd leak");
    eprintln!(
        "kill storm: {kills} kills in {:?}, {restarts} restarts, fds {baseline_fds} -> {}, rss {rss_before} -> {} KiB",
        duration,
        fd_count(d.pid()),
        rss_kib(d.pid())
    );
}

#[test]
fn a_thousand_instances() {
    let services: String = (0..10)
        .map(|i| {
            format!("s{i} = {{ cmd = 'sleep 1000', numprocs = 100, starttime = 0, stoptime = 5 }},")
        })
        .collect();
    let t = Instant::now();
    let mut d = Daemon::start(
        "thousand",
        &format!("return {{ services = {{ {services} }} }}"),
    );
    let s = d.wait_until("1000 running", secs(60), |s| {
        s.len() == 1000 && s.iter().all(|i| i["state"] == "RUNNING")
    });
    let started = t.elapsed();
    let t = Instant::now();
    let data = d.ok("status", &[]);
    let status_time = t.elapsed();
    assert_eq!(data["instances"].as_array().unwrap().len(), 1000);
    let pids: Vec<i32> = s
        .iter()
        .map(|i| i["pid"].as_i64().unwrap() as i32)
        .collect();
    let rss = rss_kib(d.pid());
    let t = Instant::now();
    let r = d.ok("stop", &["all"]);
    let stop_time = t.elapsed();
    assert_eq!(r["results"].as_array().unwrap().len(), 1000);
    assert!(r["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["ok"] == true));
    assert!(pids.iter().all(|p| !alive(*p)));
    eprintln!("1000 instances: launch to all RUNNING {started:?}, status {status_time:?}, stop all {stop_time:?}, daemon RSS {rss} KiB");
}

#[test]
fn endurance_spawn_exit_cycles() {
    let cycles: u64 = if slow() { 10_000 } else { 1_000 };
    let lua = "return { services = { c = { cmd = '/bin/true', numprocs = 4, starttime = 0, autorestart = 'always' } } }";
    let mut d = Daemon::start("endurance", lua);
    d.wait_until("warm-up", secs(30), |s| {
        s.iter()
            .map(|i| i["restarts"].as_u64().unwrap())
            .sum::<u64>()
            >= 200
    });
    let fds = fd_count(d.pid());
    let rss = rss_kib(d.pid());
    d.wait_until("cycles", secs(300), |s| {
        s.iter()
            .map(|i| i["restarts"].as_u64().unwrap())
            .sum::<u64>()
            >= cycles + 200
    });
    d.ok("stop", &["all"]);
    let (fds2, rss2) = (fd_count(d.pid()), rss_kib(d.pid()));
    eprintln!("endurance: {cycles} cycles, fds {fds} -> {fds2}, rss {rss} -> {rss2} KiB");
    // The first count may catch a spawn in flight (its exec-status pipe and
    // /dev/null handles): fewer afterwards is fine, more is a leak.
    assert!(fds2 <= fds, "fd leak: {fds} -> {fds2}");
    assert!(rss2 < rss + 2048, "memory grew: {rss} -> {rss2} KiB");
    assert!(zombie_children(d.pid()).is_empty());
}

/// Writes one raw client frame (masked, as clients must).
fn raw_frame(stream: &mut TcpStream, opcode: u8, payload: &[u8]) {
    let mut frame = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let _ = stream.write_all(&frame);
}

#[test]
fn random_and_malformed_frames_never_stop_the_daemon() {
    let lua = "return { services = { s = { cmd = 'sleep 1000', starttime = 0 } } }";
    let mut d = Daemon::start("fuzzframes", lua);
    let pid = d.wait_state("s:0", "RUNNING", secs(10))["pid"].clone();
    let mut rng = Rng(42);
    let mut thrown = 0;
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let fixed: Vec<String> = vec![
        deep,
        r#"{"id": 1e400, "cmd": "status"}"#.into(),
        format!(r#"{{"id": {}, "cmd": "status"}}"#, "9".repeat(5000)),
        r#"{"id": 1, "cmd": "status", "args": [[[[]]]]}"#.into(),
        r#"{"id": 1, "cmd": "\u0000"}"#.into(),
        "\"just a string\"".into(),
        "null".into(),
        r#"{"id": 1, "cmd": "start", "args": ["s:99999999999999999999"]}"#.into(),
        r#"{"id": 1, "cmd": "start", "args": ["::::"]}"#.into(),
    ];
    for round in 0..40 {
        let mut ws = d.connect();
        for text in &fixed {
            let _ = ws.send(Message::text(text.clone()));
            thrown += 1;
        }
        for _ in 0..50 {
            let len = rng.below(300) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if rng.below(2) == 0 {
                let _ = ws.send(Message::binary(bytes));
            } else {
                let _ = ws.send(Message::text(String::from_utf8_lossy(&bytes).into_owned()));
            }
            thrown += 1;
        }
        // Protocol-level garbage on the raw socket: invalid UTF-8 in a text
        // frame, reserved opcodes, an unmasked frame, or plain noise.
        if let MaybeTlsStream::Plain(stream) = ws.get_mut() {
            match round % 4 {
                0 => raw_frame(stream, 0x1, &[0xff, 0xfe, 0xc3, 0x28]),
                1 => raw_frame(stream, 0x3, b"reserved"),
                2 => {
                    let _ = stream.write_all(&[0x81, 0x05, b'h', b'e', b'l', b'l', b'o']);
                }
                _ => {
                    let noise: Vec<u8> = (0..512).map(|_| rng.next() as u8).collect();
                    let _ = stream.write_all(&noise);
                }
            }
            thrown += 1;
        }
        drop(ws);
    }
    // Half-open handshakes and raw noise before any handshake.
    let mut hangers = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
        let _ = s.write_all(if i % 2 == 0 {
            b"GET / HTTP/1.1\r\nHost: x\r\n"
        } else {
            b"\x00\x01garbage\r\n\r\n"
        });
        hangers.push(s);
        thrown += 1;
    }
    let t = Instant::now();
    let s = d.ok("status", &[]);
    assert!(t.elapsed() < secs(2));
    assert_eq!(s["instances"][0]["pid"], pid, "the service was disturbed");
    eprintln!("hostile frames: {thrown} thrown, daemon still serving");
}

#[test]
fn random_and_broken_configs_through_reload_change_nothing() {
    let good = "return { services = { s = { cmd = 'sleep 1000', starttime = 0, numprocs = 2 } } }";
    let mut d = Daemon::start("badconfigs", good);
    let before: Vec<Value> = d
        .wait_all("RUNNING", secs(10))
        .into_iter()
        .map(|i| i["pid"].clone())
        .collect();
    let mut rng = Rng(7);
    let mut broken = vec![
        "return".to_string(),
        "return nil".into(),
        "return { services = { s = { cmd = 'sleep 1000', numprocs = 1/0 } } }".into(),
        "return { services = { [1] = { cmd = 'x' } } }".into(),
        "return { services = { s = { cmd = 'x', env = { A = {} } } } }".into(),
        "local t = {} t.t = t return { services = t }".into(),
        "return setmetatable({ services = 5 }, { __index = function() error('no') end })".into(),
        "error(setmetatable({}, { __tostring = function() return 'weird' end }))".into(),
        "return { services = { s = { cmd = string.rep('x', 10) , numprocs = -1 } } }".into(),
        "\u{0}\u{1}binary".into(),
        "while true do end".into(),
        "local t = {} while true do t[#t+1] = t end".into(),
    ];
    for _ in 0..20 {
        let len = rng.below(200) as usize;
        let alphabet = b"{}[]=,.'\"\n aservicescmd0123456789-return";
        let bytes: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
            .collect();
        broken.push(String::from_utf8_lossy(&bytes).into_owned());
    }
    for text in &broken {
        fs::write(&d.config, text).unwrap();
        let r = d.request("reload", &[]);
        assert_eq!(r["ok"], false, "{text:?} was accepted: {r}");
        assert!(r["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // JSON configs too.
    let json_path = d.dir.join("conf.json");
    for text in [
        "{",
        "{\"services\": 5}",
        "[]",
        "{\"services\": {\"a\": {\"cmd\": 1}}}",
    ] {
        fs::write(&json_path, text).unwrap();
        let err = taskmaster::config::load(&json_path)
            .err()
            .expect("rejected")
            .to_string();
        assert!(!err.is_empty());
    }
    let after: Vec<Value> = d.status().into_iter().map(|i| i["pid"].clone()).collect();
    assert_eq!(before, after, "running services changed");
    eprintln!(
        "hostile configs: {} broken configs rejected, services untouched",
        broken.len()
    );
}

#[test]
fn unwritable_world_ends_fatal_with_the_reason_and_the_rest_keep_running() {
    let ro = temp_dir("readonly");
    let ro_dir = ro.join("ro");
    fs::create_dir_all(&ro_dir).unwrap();
    let mut perms = fs::metadata(&ro_dir).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o555);
    fs::set_permissions(&ro_dir, perms).unwrap();
    let root = unsafe { libc::geteuid() } == 0;
    let lua = format!(
        r#"return {{ services = {{
  full = {{ cmd = "yes", stdout = "/dev/full", startretries = 1, starttime = 1 }},
  readonly = {{ cmd = "sleep 1000", stdout = "{ro}/ro/out.log", startretries = 0 }},
  nodir = {{ cmd = "sleep 1000", workingdir = "/nonexistent", startretries = 0 }},
  noexec = {{ cmd = "{ro}/notexec", startretries = 0 }},
  fine = {{ cmd = "sleep 1000", starttime = 0 }},
}} }}"#,
        ro = ro.display()
    );
    fs::write(ro.join("notexec"), "#!/bin/sh\n").unwrap();
    // The daemon's own log goes to a full device: it must not care.
    let mut d = Daemon::start_with("unwritable", "taskmaster.lua", &lua, &[]);
    let expected_fatal = if root { 3 } else { 4 }; // root may write into a 0555 folder
    let s = d.wait_until("FATALs", secs(20), |s| {
        s.iter().filter(|i| i["state"] == "FATAL").count() == expected_fatal
    });
    let desc = |n: &str| {
        s.iter().find(|i| i["name"] == n).unwrap()["description"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        desc("full:0").contains("exited too quickly (exit status 1)"),
        "{}",
        desc("full:0")
    );
    assert!(
        desc("nodir:0").contains("does not exist"),
        "{}",
        desc("nodir:0")
    );
    assert!(
        desc("noexec:0").contains("permission denied"),
        "{}",
        desc("noexec:0")
    );
    if !root {
        assert!(
            desc("readonly:0").contains("Permission denied"),
            "{}",
            desc("readonly:0")
        );
    }
    assert_eq!(
        s.iter().find(|i| i["name"] == "fine:0").unwrap()["state"],
        "RUNNING"
    );

    // A daemon whose log file is on a full device keeps serving.
    let mut d2 = Daemon::start_with(
        "fulllog",
        "taskmaster.lua",
        "return { services = { f = { cmd = 'sleep 1000', starttime = 0 } } }",
        &["--log-file", "/dev/full"],
    );
    d2.wait_state("f:0", "RUNNING", secs(10));
}
