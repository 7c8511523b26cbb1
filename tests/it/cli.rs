//! `taskmasterctl` against a real daemon (SPEC §8): one-shot output, every
//! exit code, `--json`, `events`, the REPL through a pseudo-terminal with a
//! real terminal type (so rustyline edits, completes and reads Ctrl-C as a
//! user's xterm makes it), and fake servers that never answer (SPEC §17).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const CFG: &str = r#"return { services = {
    web = { cmd = "sleep 1000", numprocs = 2, starttime = 0 },
    bad = { cmd = "sh -c 'exit 1'", startretries = 0, starttime = 1 },
    idle = { cmd = "sleep 1000", autostart = false, starttime = 0 },
} }"#;

fn ctl(d: &Daemon, args: &[&str]) -> Output {
    Command::new(ctl_bin())
        .arg("--url")
        .arg(d.url())
        .args(args)
        .env_remove("TASKMASTER_TOKEN")
        .env_remove("TASKMASTER_URL")
        .output()
        .expect("run taskmasterctl")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn settled(tag: &str) -> Daemon {
    let mut d = Daemon::start(tag, CFG);
    d.wait_until("settled", secs(15), |s| {
        s.iter().filter(|i| i["state"] == "RUNNING").count() == 2
            && s.iter().any(|i| i["state"] == "FATAL")
    });
    d
}

#[test]
fn status_is_supervisorctl_shaped_and_exit_codes_follow_the_spec() {
    let d = settled("cli-status");
    let o = ctl(&d, &["status"]);
    assert_eq!(o.status.code(), Some(3), "an instance is not RUNNING");
    let text = out(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "no header: {text}");
    assert!(
        lines[0].starts_with("bad:0     FATAL     exited too quickly (exit status 1)"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("idle:0    STOPPED   Not started"),
        "{text}"
    );
    for (line, n) in lines[2..].iter().zip(0..) {
        assert!(
            line.starts_with(&format!("web:{n}     RUNNING   pid ")),
            "{line}"
        );
        assert!(line.contains(", uptime 0:00:"), "{line}");
    }

    let o = ctl(&d, &["status", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o).lines().count(), 2);

    let o = ctl(&d, &["status", "NOSUCH"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("no such service or instance: NOSUCH"),
        "{}",
        err(&o)
    );

    let o = ctl(&d, &["--json", "status", "web:1"]);
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_str(out(&o).trim()).unwrap();
    assert_eq!(v["instances"][0]["name"], "web:1");
    assert!(v["config"]["path"].is_string());

    let o = ctl(&d, &["--json", "status", "idle"]);
    assert_eq!(o.status.code(), Some(3), "--json keeps the exit code");
}

#[test]
fn control_commands_print_per_instance_results() {
    let d = settled("cli-control");
    let o = ctl(&d, &["start", "idle"]);
    assert_eq!(
        (o.status.code(), out(&o)),
        (Some(0), "idle:0: started\n".to_string())
    );
    let o = ctl(&d, &["start", "idle:0"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(out(&o), "idle:0: ERROR (already started)\n");
    let o = ctl(&d, &["stop", "web"]);
    assert_eq!(
        (o.status.code(), out(&o)),
        (Some(0), "web:0: stopped\nweb:1: stopped\n".to_string())
    );
    let o = ctl(&d, &["restart", "web:0"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(out(&o), "web:0: started\n");
    let o = ctl(&d, &["reload"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(out(&o).contains("unchanged: bad, idle, web"), "{}", out(&o));
    let o = ctl(&d, &["--json", "version"]);
    let v: Value = serde_json::from_str(out(&o).trim()).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn usage_errors_exit_2_without_a_daemon() {
    let port = free_port(); // nobody listens: a usage error must not even try
    for args in [
        vec!["bogus"],
        vec!["start"],
        vec!["help", "nosuch"],
        vec!["status", "--nope"],
    ] {
        let o = Command::new(ctl_bin())
            .args(["--url", &format!("ws://127.0.0.1:{port}/")])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", err(&o));
    }
    let o = Command::new(ctl_bin()).args(["help"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let text = out(&o);
    for cmd in [
        "status", "start", "stop", "restart", "reload", "shutdown", "version", "events", "help",
        "quit",
    ] {
        assert!(text.contains(cmd), "help misses {cmd}: {text}");
    }
    let o = Command::new(ctl_bin())
        .args(["help", "restart"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(out(&o).contains("restart NAME...|all"), "{}", out(&o));
}

#[test]
fn unreachable_daemon_exits_4_and_says_how_to_start_it() {
    let port = free_port();
    let o = Command::new(ctl_bin())
        .args(["--url", &format!("ws://127.0.0.1:{port}/"), "status"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4));
    let e = err(&o);
    assert!(
        e.contains("taskmasterd") && e.contains("start it with"),
        "{e}"
    );

    let d = Daemon::start_with("cli-token", "taskmaster.lua", CFG, &["--token", "tok"]);
    let o = ctl(&d, &["status"]);
    assert_eq!(o.status.code(), Some(4), "401 is unreachable: {}", err(&o));
    let o = Command::new(ctl_bin())
        .args(["--url", &d.url(), "--token", "tok", "version"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let o = Command::new(ctl_bin())
        .args(["--url", &d.url(), "version"])
        .env("TASKMASTER_TOKEN", "tok")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
}

#[test]
fn events_follow_the_stream() {
    let d = settled("cli-events");
    let mut child = Command::new(ctl_bin())
        .args(["--url", &d.url(), "--json", "events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Subscribing takes a moment: keep poking until an event for idle arrives.
    let deadline = Instant::now() + secs(15);
    let mut found = None;
    while found.is_none() && Instant::now() < deadline {
        ctl(&d, &["restart", "idle"]);
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["event"] == "transition" && v["name"] == "idle:0" {
                found = Some(v);
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let v = found.expect("an idle:0 transition event");
    assert!(v.get("from").is_some() && v.get("to").is_some());
}

/// `taskmasterctl` on a pseudo-terminal, driven the way a user at an xterm
/// drives it: keys go in through the master side, and what the program
/// draws comes back with its escape sequences, which [`plain`] strips.
struct Terminal {
    child: std::process::Child,
    /// The master side, for typing.
    keys: fs::File,
    /// Chunks read from the master side by a thread (ends at EOF or EIO,
    /// once the program has exited and every slave copy is closed).
    chunks: std::sync::mpsc::Receiver<Vec<u8>>,
    /// Everything drawn so far.
    drawn: Vec<u8>,
    /// How much of `plain(drawn)` the test has already looked past.
    consumed: usize,
}

/// The REPL prompt as a fresh prompt draws it, at the start of a line (line
/// redraws while typing put it after `\r`, which [`plain`] drops, so they
/// never match this).
const FRESH_PROMPT: &str = "\ntaskmaster> ";

/// The REPL's shutdown question (SPEC §8).
const CONFIRM: &str = "stop every service and the daemon? [y/N] ";

impl Terminal {
    /// Starts `taskmasterctl ARGS` on a new 200×50 pty with a real terminal
    /// type, as the session leader with the pty as its controlling terminal.
    fn start(args: &[&str], envs: &[(&str, &std::path::Path)]) -> Terminal {
        use std::os::unix::process::CommandExt;
        let size = nix::pty::Winsize {
            ws_row: 50,
            ws_col: 200,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        let keys = fs::File::from(pty.master);
        let child = {
            let mut command = Command::new(ctl_bin());
            command
                .args(args)
                .env("TERM", "xterm-256color")
                .env_remove("TASKMASTER_TOKEN")
                .env_remove("TASKMASTER_URL")
                .stdin(Stdio::from(slave.try_clone().expect("dup slave")))
                .stdout(Stdio::from(slave.try_clone().expect("dup slave")))
                .stderr(Stdio::from(slave));
            for (key, value) in envs {
                command.env(key, value);
            }
            // SAFETY: setsid and ioctl are async-signal-safe system calls.
            unsafe {
                command.pre_exec(|| {
                    nix::unistd::setsid()?;
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            // The command (and its slave copies) is dropped at the end of
            // this block, so the reader sees EOF once the child is gone.
            command.spawn().expect("spawn taskmasterctl on a pty")
        };
        let mut reader = keys.try_clone().expect("dup master");
        let (tx, chunks) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break, // EIO: the slave side is closed
                }
            }
        });
        Terminal {
            child,
            keys,
            chunks,
            drawn: Vec::new(),
            consumed: 0,
        }
    }

    fn screen(&self) -> String {
        plain(&self.drawn)
    }

    /// Waits (bounded) until `needle` is drawn after what was already looked
    /// at, and looks past it.
    fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + secs(15);
        loop {
            let screen = self.screen();
            if let Some(at) = screen.get(self.consumed..).and_then(|s| s.find(needle)) {
                self.consumed += at + needle.len();
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.drawn.extend_from_slice(&chunk),
                Err(_) => panic!(
                    "never saw {needle:?} after {:?}\nwhole screen: {screen:?}\nas drawn: {:?}",
                    screen.get(self.consumed..).unwrap_or_default(),
                    String::from_utf8_lossy(&self.drawn),
                ),
            }
        }
    }

    /// Waits for the next fresh prompt.
    fn prompt(&mut self) {
        self.expect(FRESH_PROMPT);
    }

    fn type_keys(&mut self, keys: &str) {
        self.keys
            .write_all(keys.as_bytes())
            .expect("type on the pty");
        self.keys.flush().expect("flush the pty");
    }

    /// Types a whole line and Enter at a fresh prompt.
    fn line(&mut self, text: &str) {
        self.type_keys(&format!("{text}\r"));
    }

    /// Waits (bounded) for the program to exit.
    fn exit_status(&mut self) -> std::process::ExitStatus {
        match wait_child(&mut self.child, secs(15)) {
            Some(status) => status,
            None => panic!("taskmasterctl did not exit; screen:\n{}", self.screen()),
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Terminal output as text: escape sequences (CSI, OSC, two-byte ESC
/// sequences) and control characters other than newline removed.
fn plain(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI: parameters and intermediates, then one final byte.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ST (ESC \).
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\n' => out.push('\n'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[test]
fn plain_strips_what_a_real_terminal_type_draws() {
    let drawn = b"\x1b[?2004h\x1b[?2026h\rtaskmaster> st\x1b[0K\x1b[3D\x1b]0;title\x07a\x1b=\r\n";
    assert_eq!(plain(drawn), "taskmaster> sta\n");
}

#[test]
fn repl_on_a_real_terminal_edits_completes_survives_ctrl_c_and_keeps_history() {
    let mut d = settled("cli-repl");
    let state = temp_dir("xdg-state");
    let mut t = Terminal::start(&["--url", &d.url()], &[("XDG_STATE_HOME", &state)]);
    t.expect("taskmaster> ");

    // Line editing: type, erase, insert in the middle after moving left.
    // "strt idlx", Backspace, "e", Left ×7 (to after "st"), "a" → "start idle".
    t.type_keys("strt idlx\x7fe\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[Da\r");
    t.expect("idle:0: started");
    t.prompt();
    assert_eq!(d.instance("idle:0")["state"], "RUNNING", "start idle ran");

    // Ctrl-C clears the line: the stop never runs, and the REPL goes on.
    t.type_keys("stop web:0");
    t.expect("stop web:0");
    t.type_keys("\x03");
    t.prompt();
    // Tab completes a command prefix.
    t.type_keys("vers\t");
    t.expect("version");
    t.type_keys("\r");
    t.expect(&format!("\n{}", env!("CARGO_PKG_VERSION")));
    t.prompt();
    assert_eq!(
        d.instance("web:0")["state"],
        "RUNNING",
        "the cleared line ran"
    );

    // Tab completes a service name (to "idle", the common prefix of idle
    // and idle:0).
    t.type_keys("stop id\t");
    t.expect("stop idle");
    t.type_keys("\r");
    t.expect("idle:0: stopped");
    t.prompt();

    t.line("quit");
    let status = t.exit_status();
    assert!(status.success(), "{status}; screen:\n{}", t.screen());
    let history = fs::read_to_string(state.join("taskmaster/history")).expect("history file");
    let lines: Vec<&str> = history.lines().collect();
    for cmd in ["start idle", "version", "stop idle", "quit"] {
        assert!(lines.contains(&cmd), "{cmd} not in history: {history:?}");
    }
    assert!(
        !lines.contains(&"stop web:0"),
        "a line cleared by Ctrl-C is not history: {history:?}"
    );
}

#[test]
fn repl_asks_before_exit_or_shutdown_on_a_terminal() {
    let mut d = settled("cli-confirm");
    let state = temp_dir("xdg-confirm");
    let mut t = Terminal::start(&["--url", &d.url()], &[("XDG_STATE_HOME", &state)]);
    t.expect("taskmaster> ");
    // `exit` is what a user types to leave a shell: it must not take the
    // daemon down unasked.
    t.line("exit");
    t.expect(CONFIRM);
    t.line("n");
    t.prompt();
    assert_eq!(d.ok("version", &[])["version"], env!("CARGO_PKG_VERSION"));
    t.line("shutdown");
    t.expect(CONFIRM);
    t.line(""); // the default is no
    t.prompt();
    assert_eq!(d.ok("version", &[])["version"], env!("CARGO_PKG_VERSION"));
    // The help says so.
    t.line("help exit");
    t.expect("[y/N]");
    t.prompt();

    t.line("shutdown");
    t.expect(CONFIRM);
    t.line("y");
    t.expect("taskmasterd is shutting down");
    let mut daemon = d.child.take().expect("daemon");
    let status = wait_child(&mut daemon, secs(20)).expect("the daemon exits");
    assert!(status.success(), "{status}");
    t.prompt();
    t.line("quit");
    assert!(t.exit_status().success(), "{}", t.screen());
    let history = fs::read_to_string(state.join("taskmaster/history")).expect("history file");
    let lines: Vec<&str> = history.lines().collect();
    assert!(
        lines.contains(&"exit") && lines.contains(&"shutdown"),
        "{history:?}"
    );
    assert!(
        !lines.contains(&"n") && !lines.contains(&"y"),
        "answers are not history: {history:?}"
    );
}

#[test]
fn one_shot_shutdown_does_not_ask_even_on_a_terminal() {
    let mut d = settled("cli-oneshot-shutdown");
    let mut t = Terminal::start(&["--url", &d.url(), "shutdown"], &[]);
    t.expect("taskmasterd is shutting down");
    assert!(t.exit_status().success(), "{}", t.screen());
    assert!(!t.screen().contains("[y/N]"), "{}", t.screen());
    let mut daemon = d.child.take().expect("daemon");
    let status = wait_child(&mut daemon, secs(20)).expect("the daemon exits");
    assert!(status.success(), "{status}");
}

/// How a fake server misbehaves.
#[derive(Clone, Copy, Debug)]
enum Fake {
    /// Accepts TCP and never answers the WebSocket handshake.
    SilentHandshake,
    /// Completes the handshake, reads requests, never replies.
    NoReply,
    /// Completes the handshake and answers every request with a stream of
    /// frames that are not its reply (events, replies to other ids).
    Flood,
}

/// A misbehaving server on a free port, on its own thread and runtime;
/// dropping it stops the thread and closes every connection.
struct FakeServer {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    fn start(kind: Fake) -> FakeServer {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message as WsMessage;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(async move {
                            if let Fake::SilentHandshake = kind {
                                // Hold the socket open, read nothing.
                                let _held = stream;
                                return std::future::pending::<()>().await;
                            }
                            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                                return;
                            };
                            while let Some(Ok(frame)) = ws.next().await {
                                if !frame.is_text() {
                                    continue;
                                }
                                if let Fake::Flood = kind {
                                    for n in 0u64.. {
                                        let frame = if n % 2 == 0 {
                                            r#"{"event": "transition", "name": "x:0"}"#.to_string()
                                        } else {
                                            format!(
                                                r#"{{"id": "other-{n}", "ok": true, "data": {{}}}}"#
                                            )
                                        };
                                        if ws.send(WsMessage::text(frame)).await.is_err() {
                                            return;
                                        }
                                        tokio::time::sleep(Duration::from_millis(1)).await;
                                    }
                                }
                            }
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        FakeServer {
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `taskmasterctl --url URL ARGS`, bounded well past its own 10 s.
fn ctl_at(url: &str, args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let o = output_within(
        Command::new(ctl_bin())
            .arg("--url")
            .arg(url)
            .args(args)
            .env_remove("TASKMASTER_TOKEN")
            .env_remove("TASKMASTER_URL"),
        secs(30),
    )
    .unwrap_or_else(|e| panic!("taskmasterctl hung: {e}"));
    (o, t.elapsed())
}

/// Exits 4 after about 10 s (SPEC §17), saying what it waited for.
fn assert_gave_up(o: &Output, took: Duration, waited_for: &str) {
    assert_eq!(o.status.code(), Some(4), "{}", err(o));
    let e = err(o);
    assert!(
        e.contains(waited_for) && e.contains("within 10 s"),
        "the message says what took too long: {e}"
    );
    assert!(
        took >= Duration::from_millis(9500) && took < secs(20),
        "gave up after {took:?}, expected about 10 s"
    );
}

#[test]
fn a_server_that_never_completes_the_handshake_makes_ctl_exit_4_after_10_s() {
    let fake = FakeServer::start(Fake::SilentHandshake);
    let (o, took) = ctl_at(&fake.url(), &["status"]);
    assert_gave_up(&o, took, "handshake");
}

#[test]
fn a_server_that_never_replies_makes_ctl_exit_4_after_10_s_but_start_waits() {
    let fake = FakeServer::start(Fake::NoReply);
    // `start` waits as long as the action takes: still waiting when the
    // `status` beside it has given up.
    let mut start = Command::new(ctl_bin())
        .args(["--url", &fake.url(), "start", "web"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let results: Vec<_> = ["status", "version", "reload"]
        .map(|cmd| {
            let url = fake.url();
            std::thread::spawn(move || (cmd, ctl_at(&url, &[cmd])))
        })
        .into_iter()
        .map(|t| t.join().expect("ctl thread"))
        .collect();
    let start_still_waits = start.try_wait().unwrap().is_none();
    let _ = start.kill();
    let _ = start.wait();
    for (cmd, (o, took)) in results {
        assert_gave_up(&o, took, &format!("reply to {cmd}"));
    }
    assert!(
        start_still_waits,
        "start gave up while the action could still be running"
    );
}

#[test]
fn a_server_that_floods_other_frames_makes_ctl_exit_4_after_10_s() {
    let fake = FakeServer::start(Fake::Flood);
    let (o, took) = ctl_at(&fake.url(), &["status"]);
    assert_gave_up(&o, took, "reply to status");
}

/// Services for the log commands: files with known lines, one without a
/// file, and a ticker that prints `line N` every 50 ms.
const LOGS_CFG: &str = r#"return { services = {
    a = { cmd = [[sh -c 'echo a1; echo a2; echo oops >&2; exec sleep 1000']], stdout = "a.log", stderr = "a.err", starttime = 0 },
    longname = { cmd = [[sh -c 'echo l1; exec sleep 1000']], stdout = "l.log", starttime = 0 },
    quiet = { cmd = "sleep 1000", starttime = 0 },
    tick = { cmd = [[sh -c 'i=0; while :; do i=$((i+1)); echo "line $i"; sleep 0.05; done']], stdout = "tick.log", starttime = 0 },
} }"#;

fn logs_daemon(tag: &str) -> Daemon {
    let d = Daemon::start(tag, LOGS_CFG);
    wait_file(&d.dir.join("a.log"), secs(10), |t| t == "a1\na2\n");
    wait_file(&d.dir.join("a.err"), secs(10), |t| t == "oops\n");
    wait_file(&d.dir.join("l.log"), secs(10), |t| t == "l1\n");
    wait_file(&d.dir.join("tick.log"), secs(10), |t| {
        t.lines().count() >= 2
    });
    d
}

/// A `taskmasterctl ARGS` that keeps running (a follow), its stdout lines
/// read by a thread; killed by its pid when dropped.
struct Following {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Following {
    fn start(d: &Daemon, args: &[&str]) -> Following {
        let mut child = Command::new(ctl_bin())
            .arg("--url")
            .arg(d.url())
            .args(args)
            .env_remove("TASKMASTER_TOKEN")
            .env_remove("TASKMASTER_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn taskmasterctl");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Following { child, lines }
    }

    /// The next `n` lines, each within 10 s.
    fn take(&mut self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                self.lines
                    .recv_timeout(secs(10))
                    .unwrap_or_else(|e| panic!("line {i} of {n}: {e}"))
            })
            .collect()
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `line N` numbers of lines (after an optional prefix), checked to be
/// consecutive.
fn consecutive(lines: &[String], prefix: &str) {
    let numbers: Vec<u64> = lines
        .iter()
        .map(|l| {
            l.strip_prefix(prefix)
                .and_then(|l| l.strip_prefix("line "))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {l:?} in {lines:?}"))
        })
        .collect();
    let first = numbers[0];
    assert_eq!(
        numbers,
        (first..first + numbers.len() as u64).collect::<Vec<_>>(),
        "{lines:?}"
    );
}

#[test]
fn tail_logs_clear_and_signal_one_shot() {
    let d = logs_daemon("cli-logs");
    let o = ctl(&d, &["tail", "-n", "1", "a:0"]);
    assert_eq!((o.status.code(), out(&o)), (Some(0), "a2\n".to_string()));
    let o = ctl(&d, &["tail", "a", "stderr"]);
    assert_eq!((o.status.code(), out(&o)), (Some(0), "oops\n".to_string()));
    let o = ctl(&d, &["--json", "tail", "a:0"]);
    let v: Value = serde_json::from_str(out(&o).trim()).expect("one JSON line");
    assert_eq!(
        (v["name"].as_str(), v["text"].as_str()),
        (Some("a:0"), Some("a1\na2\n"))
    );
    assert_eq!(v["stream"], "stdout");

    let o = ctl(&d, &["logs", "--no-follow", "-n", "1", "a", "longname"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(
        out(&o),
        "a:0        | a2\na:0        | oops\nlongname:0 | l1\n",
        "prefixed, padded to one width, no colour in a pipe"
    );
    let o = ctl(&d, &["--json", "logs", "--no-follow", "-n", "1", "a"]);
    let v: Value = serde_json::from_str(out(&o).trim()).expect("one JSON line");
    assert_eq!(
        v["lines"],
        serde_json::json!([
            {"name": "a:0", "stream": "stdout", "text": "a2"},
            {"name": "a:0", "stream": "stderr", "text": "oops"},
        ])
    );

    let o = ctl(&d, &["clear", "longname"]);
    assert_eq!(
        (o.status.code(), out(&o)),
        (Some(0), "longname:0: cleared\n".to_string())
    );
    assert_eq!(fs::read(d.dir.join("l.log")).unwrap(), b"");
    let o = ctl(&d, &["signal", "CONT", "a"]);
    assert_eq!(
        (o.status.code(), out(&o)),
        (Some(0), "a:0: sent SIGCONT\n".to_string())
    );
    let o = ctl(&d, &["signal", "sigcont", "a:0"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));

    // The daemon's errors exit 1 with its message; usage errors exit 2.
    for (args, message) in [
        (
            &["tail", "quiet:0"][..],
            "error: quiet:0 has no stdout file (stdout = nil)\n",
        ),
        (
            &["logs", "quiet"],
            "error: quiet:0 has no stdout file (stdout = nil)\n",
        ),
        (
            &["clear", "quiet"],
            "error: quiet:0 has no stdout file (stdout = nil)\n",
        ),
        (
            &["tail", "nosuch"],
            "error: no such service or instance: nosuch\n",
        ),
        (
            &["signal", "HUP", "nosuch"],
            "error: no such service or instance: nosuch\n",
        ),
    ] {
        let o = ctl(&d, args);
        assert_eq!(
            (o.status.code(), err(&o).as_str()),
            (Some(1), message),
            "{args:?}"
        );
    }
    for args in [
        &["tail", "-n", "0", "a:0"][..],
        &["tail", "-n", "10001", "a:0"],
        &["tail", "a:0", "stdin"],
        &["logs", "--follow"],
        &["signal", "FOO", "a"],
        &["signal", "HUP"],
        &["clear"],
    ] {
        let o = ctl(&d, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", err(&o));
    }
}

#[test]
fn tail_f_and_logs_follow_what_a_child_prints() {
    let d = logs_daemon("cli-follow");
    let mut tail = Following::start(&d, &["tail", "-f", "-n", "2", "tick:0"]);
    let lines = tail.take(8);
    consecutive(&lines, "");
    drop(tail);

    let mut logs = Following::start(&d, &["logs", "-n", "1", "tick"]);
    let lines = logs.take(6);
    consecutive(&lines, "tick:0 | ");
    drop(logs);

    let mut json = Following::start(&d, &["--json", "tail", "-f", "-n", "1", "tick:0"]);
    let lines = json.take(4);
    let first: Value = serde_json::from_str(&lines[0]).expect("the reply's data");
    assert_eq!(first["name"], "tick:0");
    for line in &lines[1..] {
        let v: Value = serde_json::from_str(line).expect("an event");
        assert_eq!(
            (v["event"].as_str(), v["name"].as_str()),
            (Some("output"), Some("tick:0"))
        );
        assert!(v["id"].is_number(), "{v}");
    }
}

#[test]
fn repl_ctrl_c_ends_a_follow_and_the_session_goes_on() {
    let d = logs_daemon("cli-repl-follow");
    let state = temp_dir("xdg-follow");
    let mut t = Terminal::start(&["--url", &d.url()], &[("XDG_STATE_HOME", &state)]);
    t.expect("taskmaster> ");
    t.line("tail -f -n 1 tick:0");
    // Positive control: the follow prints new lines.
    t.expect("line ");
    t.expect("\nline ");
    t.expect("\nline ");
    t.type_keys("\x03");
    t.expect("taskmaster> ");
    let after_follow = t.consumed;
    assert!(
        !t.screen().contains("interrupted; the daemon may still"),
        "{}",
        t.screen()
    );
    // The shell goes on, and nothing more of the follow is printed.
    t.line("version");
    t.expect(&format!("\n{}", env!("CARGO_PKG_VERSION")));
    t.prompt();
    let screen = t.screen();
    let between = &screen[after_follow..t.consumed];
    assert!(
        !between.contains("line "),
        "output after Ctrl-C: {between:?}"
    );
    // Log commands complete: `ta` Tab gives tail, then a name, then stderr.
    t.type_keys("ta\t");
    t.expect("tail");
    t.type_keys("-n 1 a:0 stde\t");
    t.expect("stderr");
    t.type_keys("\r");
    t.expect("\noops");
    t.prompt();
    // Another follow on the same shell, and Ctrl-C again.
    t.line("logs -n 1 tick");
    t.expect("tick:0");
    t.expect("| line ");
    t.type_keys("\x03");
    t.expect("taskmaster> ");
    t.line("quit");
    assert!(t.exit_status().success(), "{}", t.screen());
}
