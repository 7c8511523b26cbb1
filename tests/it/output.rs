//! Child output with real processes and files (SPEC §10): rotation that
//! loses nothing, output flushed before an exit is told, SIGUSR1 reopening,
//! timestamps, redirect_stderr, `/dev/stdout`, the reason of a failed start,
//! and the NOFILE limit children get back.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;

fn services(body: &str) -> String {
    format!("return {{ services = {{ {body} }} }}")
}

/// `F.N … F.1 F` concatenated, and the largest file's size.
fn rotated(dir: &Path, name: &str) -> (Vec<u8>, u64, usize) {
    let mut parts: Vec<(u32, std::path::PathBuf)> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let f = e.file_name().to_string_lossy().into_owned();
            if f == name {
                Some((0, e.path()))
            } else {
                f.strip_prefix(&format!("{name}."))
                    .and_then(|k| k.parse().ok())
                    .map(|k| (k, e.path()))
            }
        })
        .collect();
    parts.sort_by_key(|p| std::cmp::Reverse(p.0));
    let mut all = Vec::new();
    let mut largest = 0;
    for (_, p) in &parts {
        let bytes = fs::read(p).unwrap();
        largest = largest.max(bytes.len() as u64);
        all.extend(bytes);
    }
    (all, largest, parts.len())
}

/// A child writing numbered lines `00000000\n` … as fast as it can.
fn numbered(n: u32) -> String {
    format!(
        r#"[[python3 -c 'import sys
w = sys.stdout.write
for i in range({n}): w("%08d\n" % i)
sys.stdout.flush()']]"#
    )
}

fn assert_numbered(bytes: &[u8], n: u32) {
    let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
    let mut count = 0;
    for (i, line) in text.lines().enumerate() {
        assert_eq!(line, format!("{i:08}"), "line {i}");
        count += 1;
    }
    assert_eq!(count, n);
    assert_eq!(text.len(), 9 * n as usize);
}

#[test]
fn rotation_keeps_every_byte_in_order_and_no_file_exceeds_maxbytes() {
    let n = 300_000;
    let mut d = Daemon::start(
        "rotate",
        &services(&format!(
            "w = {{ cmd = {}, stdout = 'logs/out.log', stdout_maxbytes = '100KB', \
             stdout_backups = 40, autorestart = 'never', starttime = 0 }}",
            numbered(n)
        )),
    );
    d.wait_state("w:0", "EXITED", secs(30));
    let (all, largest, files) = rotated(&d.dir.join("logs"), "out.log");
    assert_numbered(&all, n);
    assert!(largest <= 100 * 1024, "a file of {largest} bytes");
    assert_eq!(files, 27, "2.7 MB in 100 KiB files");
    // Every rotated file is exactly full: rotations fall at the limit,
    // inside a line when they must.
    let one = fs::read(d.dir.join("logs/out.log.1")).unwrap();
    assert_eq!(one.len(), 100 * 1024);
}

#[test]
fn backups_drop_the_oldest_and_zero_backups_start_afresh() {
    // 900,027 bytes: nine full files of 100,000 and 27 bytes.
    let n = 100_003;
    let total = 9 * n as usize;
    let mut d = Daemon::start(
        "backups",
        &services(&format!(
            "three = {{ cmd = {c}, stdout = 'three.log', stdout_maxbytes = 100000, \
             stdout_backups = 3, autorestart = 'never', starttime = 0 }}, \
             none = {{ cmd = {c}, stdout = 'none.log', stdout_maxbytes = 100000, \
             stdout_backups = 0, autorestart = 'never', starttime = 0 }}, \
             exact = {{ cmd = {e}, stdout = 'exact.log', stdout_maxbytes = 90000, \
             stdout_backups = 3, autorestart = 'never', starttime = 0 }}",
            c = numbered(n),
            e = numbered(20_000),
        )),
    );
    for name in ["three:0", "none:0", "exact:0"] {
        d.wait_state(name, "EXITED", secs(30));
    }
    let stream: String = (0..n).map(|i| format!("{i:08}\n")).collect();
    let (three, _, files) = rotated(&d.dir, "three.log");
    assert_eq!(files, 4, "three.log and three backups");
    // What is kept is the exact tail of what was written.
    assert_eq!(three.len(), 300_027);
    assert_eq!(three, stream.as_bytes()[total - 300_027..]);
    let none = fs::read(d.dir.join("none.log")).unwrap();
    assert_eq!(none, stream.as_bytes()[total - 27..]);
    assert!(!d.dir.join("none.log.1").exists());
    // 180,000 bytes in 90,000-byte files: the second file ends exactly
    // full and stays current (no empty rotation at the end).
    assert_eq!(fs::metadata(d.dir.join("exact.log")).unwrap().len(), 90_000);
    assert!(!d.dir.join("exact.log.2").exists());
}

#[test]
fn output_written_just_before_exit_is_in_the_file_when_exited_is_told() {
    let mut d = Daemon::start(
        "flush",
        &services(
            "big = { cmd = [[sh -c 'head -c 3000000 /dev/zero; exit 0']], stdout = 'big.log', \
             stdout_maxbytes = '1MB', stdout_backups = 5, autorestart = 'never', starttime = 0 }",
        ),
    );
    d.wait_state("big:0", "EXITED", secs(30));
    // Read at once: the exit was announced after the bytes were written.
    let (all, _, _) = rotated(&d.dir, "big.log");
    assert_eq!(all.len(), 3_000_000);
}

#[test]
fn sigusr1_reopens_files_after_an_external_rename() {
    let mut d = Daemon::start(
        "usr1",
        &services(
            "tick = { cmd = [[python3 -u -c 'import sys, time
for i in range(100000):
    print(\"%08d\" % i)
    time.sleep(0.002)']], stdout = 'tick.log', stdout_maxbytes = '10MB', starttime = 0 }",
        ),
    );
    let log = d.dir.join("tick.log");
    wait_file(&log, secs(10), |t| t.lines().count() > 50);
    fs::rename(&log, d.dir.join("tick.log.moved")).unwrap();
    unsafe { libc::kill(d.pid() as i32, libc::SIGUSR1) };
    wait_file(&log, secs(10), |t| t.lines().count() > 50);
    d.ok("stop", &["tick"]);
    // A line may straddle the switch (print writes its text and its
    // newline separately): the two files together hold the stream.
    let moved = fs::read_to_string(d.dir.join("tick.log.moved")).unwrap();
    let now = fs::read_to_string(&log).unwrap();
    let both = moved + &now;
    let complete = &both[..both.rfind('\n').map_or(0, |i| i + 1)];
    let all: Vec<&str> = complete.lines().collect();
    assert!(all.len() > 100, "{} lines", all.len());
    for (i, line) in all.iter().enumerate() {
        assert_eq!(*line, format!("{i:08}"), "none lost, none repeated");
    }
    assert!(d.log().contains("reopened"), "{}", d.log());
}

#[test]
fn timestamps_prefix_each_line_and_redirect_stderr_shares_the_file() {
    let mut d = Daemon::start(
        "stamps",
        &services(
            "t = { cmd = [[sh -c 'echo one; echo two >&2; printf three']], stdout = 't.log', \
             redirect_stderr = true, timestamps = true, autorestart = 'never', starttime = 0 }",
        ),
    );
    d.wait_state("t:0", "EXITED", secs(10));
    let text = fs::read_to_string(d.dir.join("t.log")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (line, want) in lines.iter().zip(["one", "two", "three"]) {
        let (stamp, rest) = line.split_once(' ').unwrap();
        assert!(humantime::parse_rfc3339(stamp).is_ok(), "{line}");
        assert_eq!(rest, want);
    }
}

#[test]
fn dev_stdout_is_the_daemons_own_and_never_rotated() {
    let dir = temp_dir("devstdout");
    fs::write(
        dir.join("taskmaster.lua"),
        services(
            "s = { cmd = [[sh -c 'head -c 5000 /dev/zero | tr \"\\\\0\" x; echo']], \
             stdout = '/dev/stdout', stdout_maxbytes = 1000, autorestart = 'never', starttime = 0 }",
        ),
    )
    .unwrap();
    let out = fs::File::create(dir.join("daemon.out")).unwrap();
    let port = free_port();
    let mut child = Command::new(daemon_bin())
        .args(["--config", "taskmaster.lua", "--port", &port.to_string()])
        .current_dir(&dir)
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let text = wait_file(&dir.join("daemon.out"), secs(10), |t| t.contains('\n'));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_child(&mut child, secs(10));
    assert_eq!(text.trim_end().len(), 5000, "written as is, past maxbytes");
    assert!(!dir.join("daemon.out.1").exists());
}

#[test]
fn a_failed_start_says_its_last_stderr_line() {
    let mut d = Daemon::start(
        "last-words",
        &services(
            "bad = { cmd = [[sh -c 'echo starting; echo \"nginx: [emerg] unknown directive bogus\" >&2; exit 1']], \
             stdout = 'bad.out', stderr = 'bad.err', startretries = 0 }, \
             quiet = { cmd = [[sh -c 'echo only stdout here; exit 1']], stdout = 'q.out', \
             stdout_maxbytes = '1MB', startretries = 0 }, \
             long = { cmd = [[sh -c 'printf \"%0300d\\n\" 7 >&2; exit 1']], stderr = 'long.err', \
             startretries = 0 }",
        ),
    );
    let bad = d.wait_state("bad:0", "FATAL", secs(10));
    assert_eq!(
        bad["description"],
        "exited too quickly (exit status 1): nginx: [emerg] unknown directive bogus"
    );
    let quiet = d.wait_state("quiet:0", "FATAL", secs(10));
    assert_eq!(
        quiet["description"],
        "exited too quickly (exit status 1): only stdout here"
    );
    let long = d.wait_state("long:0", "FATAL", secs(10));
    let why = long["description"].as_str().unwrap();
    assert!(
        why.ends_with(&format!("… (more in {})", d.dir.join("long.err").display())),
        "{why}"
    );
    assert!(
        d.log().contains("unknown directive bogus"),
        "the log line says it too"
    );
}

#[test]
fn one_writer_per_path_keeps_every_instances_bytes() {
    let mut d = Daemon::start(
        "shared",
        &services(
            "w = { numprocs = 4, cmd = [[sh -c 'head -c 500000 /dev/zero']], stdout = 'shared.log', \
             stdout_maxbytes = '300KB', stdout_backups = 20, autorestart = 'never', starttime = 0 }",
        ),
    );
    d.wait_until("all exited", secs(30), |s| {
        s.len() == 4 && s.iter().all(|i| i["state"] == "EXITED")
    });
    let (all, largest, _) = rotated(&d.dir, "shared.log");
    assert_eq!(all.len(), 2_000_000);
    assert!(largest <= 300 * 1024);
}

#[test]
fn children_get_the_original_nofile_soft_limit_back() {
    let dir = temp_dir("nofile");
    fs::write(
        dir.join("taskmaster.lua"),
        services(
            "n = { cmd = [[sh -c 'ulimit -Sn > soft.txt']], autorestart = 'never', starttime = 0 }",
        ),
    )
    .unwrap();
    let port = free_port();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 512 && exec {} --config taskmaster.lua --port {port} --log-file daemon.log",
            daemon_bin()
        ))
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let soft = wait_file(&dir.join("soft.txt"), secs(10), |t| t.ends_with('\n'));
    // The daemon lowers its soft limit for the moment of a spawn: read its
    // own once the child's exit has been handled, well after the spawn.
    wait_file(&dir.join("daemon.log"), secs(10), |t| {
        t.contains("exited: n:0")
    });
    let limits = fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_child(&mut child, secs(10));
    assert_eq!(soft.trim(), "512");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        f[3], f[4],
        "the daemon's soft limit is raised to its hard one: {line}"
    );
}
