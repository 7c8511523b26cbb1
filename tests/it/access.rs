//! Local access (SPEC §13, §18): Unix-socket listeners, several `--listen`,
//! `--token-file` and its permission check, and the Host-header check.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};

use crate::common::*;

const EMPTY: &str = "return { services = {} }";

/// A daemon started with exactly `args` (no `--port` unless given), its
/// config in `dir`; killed (by pid) when dropped.
struct Proc {
    child: Option<Child>,
    dir: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, args: &[&str]) -> Proc {
        let config = dir.join("taskmaster.lua");
        if !config.exists() {
            fs::write(&config, EMPTY).expect("write config");
        }
        let child = Command::new(daemon_bin())
            .arg("--config")
            .arg(&config)
            .arg("--log-file")
            .arg(dir.join("daemon.log"))
            .args(args)
            .current_dir(dir)
            .env_remove("TASKMASTER_TOKEN")
            .env_remove("TASKMASTER_TOKEN_FILE")
            .env_remove("TASKMASTER_LISTEN")
            .env_remove("PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn taskmasterd");
        Proc {
            child: Some(child),
            dir: dir.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Waits until `socket` accepts a connection.
    fn wait_socket(&mut self, socket: &Path) {
        let deadline = Instant::now() + secs(15);
        while UnixStream::connect(socket).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("taskmasterd exited early ({status}); log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "no socket; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_child(&mut child, secs(20))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if wait_child(&mut child, secs(15)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Runs the daemon expecting it to refuse to start: its status and stderr.
fn refused(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let config = dir.join("taskmaster.lua");
    if !config.exists() {
        fs::write(&config, EMPTY).expect("write config");
    }
    let out = output_within(
        Command::new(daemon_bin())
            .arg("--config")
            .arg(&config)
            .args(args)
            .current_dir(dir)
            .env_remove("TASKMASTER_TOKEN")
            .env_remove("TASKMASTER_TOKEN_FILE")
            .env_remove("TASKMASTER_LISTEN"),
        secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success(), "taskmasterd started with {args:?}");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `taskmasterctl --url URL ARGS`, bounded.
fn ctl(url: &str, args: &[&str]) -> std::process::Output {
    output_within(
        Command::new(ctl_bin())
            .arg("--url")
            .arg(url)
            .args(args)
            .env_remove("TASKMASTER_TOKEN")
            .env_remove("TASKMASTER_TOKEN_FILE")
            .env_remove("TASKMASTER_URL"),
        secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The HTTP status a raw WebSocket handshake gets, with `host` as its Host
/// header and `extra` headers.
fn status_of(mut stream: impl std::io::Read + Write, host: &str, extra: &[(&str, &str)]) -> u16 {
    let mut head = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send handshake");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("read status line");
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"))
}

fn tcp(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(secs(10))).expect("timeout");
    s
}

fn unix(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect to the socket");
    s.set_read_timeout(Some(secs(10))).expect("timeout");
    s
}

/// A `version` request over the Unix socket with a WebSocket client.
fn version_over(path: &Path, token: Option<&str>) -> Value {
    let mut req = "ws://localhost/".into_client_request().expect("request");
    if let Some(t) = token {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    let (mut ws, _) = tungstenite::client(req, unix(path)).expect("handshake over the socket");
    ws.send(Message::text(r#"{"id": 1, "cmd": "version"}"#))
        .expect("send");
    loop {
        if let Message::Text(text) = ws.read().expect("reply") {
            return serde_json::from_str(&text).expect("json");
        }
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_unix_socket_serves_ctl_and_raw_clients_with_mode_0600_and_no_tcp() {
    let dir = temp_dir("unix");
    let sock = dir.join("tm.sock");
    let port = free_port();
    let listen = format!("unix:{}", sock.display());
    let mut d = Proc::spawn(&dir, &["--listen", &listen, "--port", &port.to_string()]);
    d.wait_socket(&sock);
    let meta = fs::symlink_metadata(&sock).expect("stat socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(mode(&sock), 0o600, "the socket is the daemon's user's only");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "only unix: listeners: no TCP port is opened"
    );
    let reply = version_over(&sock, None);
    assert_eq!(reply["ok"], true, "{reply}");
    let out = ctl(&listen, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        d.log().contains(&format!("listening on {listen}")),
        "{}",
        d.log()
    );
    let status = d.terminate().expect("exits on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(
        !sock.exists(),
        "the socket file is removed at clean shutdown"
    );
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = temp_dir("stale");
    let sock = dir.join("tm.sock");
    // Bound then dropped: the file stays, nothing answers on it.
    drop(UnixListener::bind(&sock).expect("bind"));
    assert!(sock.exists());
    let listen = format!("unix:{}", sock.display());
    let mut d = Proc::spawn(&dir, &["--listen", &listen]);
    d.wait_socket(&sock);
    assert_eq!(version_over(&sock, None)["ok"], true);
    assert_eq!(mode(&sock), 0o600);
}

#[test]
fn a_second_daemon_on_a_live_socket_is_refused_and_the_first_still_serves() {
    let dir = temp_dir("live");
    let sock = dir.join("tm.sock");
    let listen = format!("unix:{}", sock.display());
    let mut first = Proc::spawn(&dir, &["--listen", &listen]);
    first.wait_socket(&sock);
    let other = temp_dir("live2");
    let (code, stderr) = refused(&other, &["--listen", &listen]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("already listening"), "{stderr}");
    assert_eq!(
        version_over(&sock, None)["ok"],
        true,
        "the first one serves"
    );
    let out = ctl(&listen, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_path_that_is_not_a_socket_is_refused_and_kept_and_a_long_one_is_refused() {
    let dir = temp_dir("notsock");
    let file = dir.join("tm.sock");
    fs::write(&file, "precious").expect("write");
    let (_, stderr) = refused(&dir, &["--listen", &format!("unix:{}", file.display())]);
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(fs::read_to_string(&file).expect("still there"), "precious");
    let long = dir.join("x".repeat(120));
    let (_, stderr) = refused(&dir, &["--listen", &format!("unix:{}", long.display())]);
    assert!(stderr.contains("107"), "{stderr}");
}

#[test]
fn token_files_must_be_private_and_work_for_both_binaries_on_every_listener() {
    let dir = temp_dir("tokfile");
    let token = dir.join("token");
    fs::write(&token, "s3cret\n").expect("write token");
    fs::set_permissions(&token, fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, stderr) = refused(&dir, &["--token-file", &token.display().to_string()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("chmod 600 {}", token.display())),
        "{stderr}"
    );

    let empty = dir.join("empty");
    fs::write(&empty, "\n").expect("write");
    fs::set_permissions(&empty, fs::Permissions::from_mode(0o600)).expect("chmod");
    let (_, stderr) = refused(&dir, &["--token-file", &empty.display().to_string()]);
    assert!(stderr.contains("is empty"), "{stderr}");

    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).expect("chmod");
    let sock = dir.join("tm.sock");
    let listen = format!("unix:{}", sock.display());
    let port = free_port();
    let tf = token.display().to_string();
    let mut d = Proc::spawn(
        &dir,
        &[
            "--token-file",
            &tf,
            "--listen",
            &listen,
            "--listen",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ],
    );
    d.wait_socket(&sock);
    // The token is the file without its newline, on TCP and the socket.
    assert_eq!(
        status_of(unix(&sock), "localhost", &[]),
        401,
        "the token is required on the Unix socket too"
    );
    assert_eq!(version_over(&sock, Some("s3cret"))["ok"], true);
    assert_eq!(
        status_of(
            tcp(port),
            "127.0.0.1",
            &[("Authorization", "Bearer s3cret")]
        ),
        101
    );
    for url in [listen.clone(), format!("ws://127.0.0.1:{port}")] {
        let out = ctl(&url, &["--token-file", &tf, "status"]);
        assert!(out.status.success(), "{url}: {}", text(&out));
        let out = ctl(&url, &["status"]);
        assert_eq!(out.status.code(), Some(4), "{url}: {}", text(&out));
    }
}

#[test]
fn token_and_token_file_together_are_a_usage_error() {
    let dir = temp_dir("tokboth");
    let token = dir.join("token");
    fs::write(&token, "s3cret").expect("write token");
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).expect("chmod");
    let tf = token.display().to_string();
    let (code, stderr) = refused(&dir, &["--token", "x", "--token-file", &tf]);
    assert_eq!(code, Some(2), "{stderr}");
    let out = ctl(
        "ws://127.0.0.1:1",
        &["--token", "x", "--token-file", &tf, "status"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn a_foreign_host_is_refused_without_a_token() {
    let d = Daemon::start("host", EMPTY);
    for ok in [
        format!("127.0.0.1:{}", d.port),
        "127.0.0.1".to_string(),
        "localhost:80".to_string(),
        "LOCALHOST".to_string(),
        "[::1]:3333".to_string(),
    ] {
        assert_eq!(status_of(tcp(d.port), &ok, &[]), 101, "{ok}");
    }
    for bad in [
        "evil.example",
        "evil.example:3333",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
    ] {
        assert_eq!(status_of(tcp(d.port), bad, &[]), 403, "{bad}");
    }
    // Host and Origin are both checked: a foreign Host with a loopback
    // Origin is 403, and a loopback Host with a foreign Origin too.
    assert_eq!(
        status_of(
            tcp(d.port),
            "evil.example",
            &[("Origin", "http://127.0.0.1")]
        ),
        403
    );
    assert_eq!(
        status_of(
            tcp(d.port),
            "127.0.0.1",
            &[("Origin", "http://evil.example")]
        ),
        403
    );
}

#[test]
fn with_a_token_any_host_is_served_once_the_token_is_shown() {
    let d = Daemon::start_with("hosttok", "taskmaster.lua", EMPTY, &["--token", "s3cret"]);
    let bearer = [("Authorization", "Bearer s3cret")];
    for host in ["evil.example", "tm.example.org:3333", "127.0.0.1"] {
        assert_eq!(status_of(tcp(d.port), host, &bearer), 101, "{host}");
        assert_eq!(status_of(tcp(d.port), host, &[]), 401, "{host}");
    }
}

#[test]
fn tcp_and_unix_listeners_together_both_answer() {
    let dir = temp_dir("both");
    let sock = dir.join("tm.sock");
    let listen = format!("unix:{}", sock.display());
    let d = Daemon::start_with(
        "both",
        "taskmaster.lua",
        EMPTY,
        &["--listen", "127.0.0.1", "--listen", &listen],
    );
    let out = ctl(&d.url(), &["version"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = ctl(&listen, &["version"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mode(&sock), 0o600);
}

#[test]
fn root_listening_on_tcp_without_a_token_is_warned_about() {
    let d = Daemon::start("rootwarn", EMPTY);
    // The warning comes right after the "listening on" lines.
    let log = wait_file(&d.dir.join("daemon.log"), secs(10), |t| {
        t.contains("listening on ws://")
    });
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        wait_file(&d.dir.join("daemon.log"), secs(10), |t| {
            t.contains("any local user can control")
        });
    } else {
        assert!(!log.contains("any local user"), "{log}");
    }
    let dir = temp_dir("rootwarn-unix");
    let sock = dir.join("tm.sock");
    let mut p = Proc::spawn(&dir, &["--listen", &format!("unix:{}", sock.display())]);
    p.wait_socket(&sock);
    let log = wait_file(&dir.join("daemon.log"), secs(10), |t| {
        t.contains("listening on unix:")
    });
    assert!(!log.contains("any local user"), "{log}");
}
