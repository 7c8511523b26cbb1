//! Shared fixtures: a real `taskmasterd` on a free port in a temp folder,
//! a blocking WebSocket client, and event-driven waits.
//!
//! Every wait is bounded and wakes on a daemon event (a `subscribe`d
//! connection) rather than sleeping; the daemon is stopped (SIGTERM, then
//! SIGKILL) when the fixture drops.

#![allow(dead_code)]

use std::fs;
use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// A fresh folder under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("tm-it-{}-{tag}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn daemon_bin() -> &'static str {
    env!("CARGO_BIN_EXE_taskmasterd")
}

pub fn ctl_bin() -> &'static str {
    env!("CARGO_BIN_EXE_taskmasterctl")
}

/// A running daemon.
pub struct Daemon {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub child: Option<Child>,
    /// The `--token` the daemon was started with, sent by `connect`.
    pub token: Option<String>,
    sub: Option<Ws>,
    next_id: u64,
    ws: Option<Ws>,
}

impl Daemon {
    /// Starts a daemon on a Lua config (written to `taskmaster.lua`).
    pub fn start(tag: &str, lua: &str) -> Daemon {
        Self::start_with(tag, "taskmaster.lua", lua, &[])
    }

    /// Starts a daemon on a config file of the given name, with extra flags.
    pub fn start_with(tag: &str, file: &str, text: &str, extra: &[&str]) -> Daemon {
        let dir = temp_dir(tag);
        let config = dir.join(file);
        fs::write(&config, text).expect("write config");
        let token = extra
            .iter()
            .position(|a| *a == "--token")
            .and_then(|i| extra.get(i + 1))
            .map(|t| t.to_string());
        let mut d = Daemon {
            dir,
            config,
            port: 0,
            child: None,
            token,
            sub: None,
            next_id: 0,
            ws: None,
        };
        d.launch(extra);
        d
    }

    /// Starts a daemon on a folder already holding `taskmaster.lua`.
    pub fn adopt(dir: PathBuf) -> Daemon {
        let config = dir.join("taskmaster.lua");
        let mut d = Daemon {
            dir,
            config,
            port: 0,
            child: None,
            token: None,
            sub: None,
            next_id: 0,
            ws: None,
        };
        d.launch(&[]);
        d
    }

    /// Starts (or restarts) the daemon process and waits until it serves.
    pub fn launch(&mut self, extra: &[&str]) {
        self.port = free_port();
        let child = Command::new(daemon_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("--port")
            .arg(self.port.to_string())
            .args(if extra.contains(&"--log-file") {
                vec![]
            } else {
                vec![
                    "--log-file".into(),
                    self.dir.join("daemon.log").display().to_string(),
                ]
            })
            .args(extra)
            .current_dir(&self.dir)
            .env_remove("TASKMASTER_TOKEN")
            .env_remove("CONFIG_PATH")
            .env_remove("PORT")
            .env_remove("TASKMASTER_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn taskmasterd");
        self.child = Some(child);
        self.wait_listening();
        self.sub = Some(self.subscribe());
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("taskmasterd exited early ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "taskmasterd did not listen; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn connect(&self) -> Ws {
        use tungstenite::client::IntoClientRequest;
        let mut req = self.url().into_client_request().expect("request");
        if let Some(t) = &self.token {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("header"),
            );
        }
        let (ws, _) = tungstenite::connect(req).expect("connect to taskmasterd");
        ws
    }

    fn subscribe(&mut self) -> Ws {
        let mut ws = self.connect();
        let reply = call(&mut ws, 0, "subscribe", &[]);
        assert_eq!(reply["ok"], true, "{reply}");
        ws
    }

    /// Sends one request on the fixture's connection; returns the whole reply.
    pub fn request(&mut self, cmd: &str, args: &[&str]) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        if self.ws.is_none() {
            self.ws = Some(self.connect());
        }
        let ws = self.ws.as_mut().expect("connection");
        call(ws, id, cmd, args)
    }

    /// `data` of a successful reply.
    pub fn ok(&mut self, cmd: &str, args: &[&str]) -> Value {
        let reply = self.request(cmd, args);
        assert_eq!(reply["ok"], true, "{cmd} {args:?} failed: {reply}");
        reply["data"].clone()
    }

    pub fn status(&mut self) -> Vec<Value> {
        self.ok("status", &[])["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn instance(&mut self, name: &str) -> Value {
        self.status()
            .into_iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("no instance {name}"))
    }

    /// Waits, woken by daemon events, until `cond` holds for the status.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if cond(&status) {
                return status;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "timed out waiting for {what}; status: {status:#?}\nlog:\n{}",
                    self.log()
                );
            }
            self.next_event(left);
        }
    }

    /// Waits for one event (or the timeout); resubscribes if dropped.
    pub fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        let sub = self.sub.as_mut()?;
        set_timeout(sub, Some(timeout.max(Duration::from_millis(1))));
        match sub.read() {
            Ok(Message::Text(t)) => serde_json::from_str(&t).ok(),
            Ok(_) => None,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                None
            }
            Err(_) => {
                self.sub = Some(self.subscribe());
                None
            }
        }
    }

    /// Waits until instance `name` is in `state`.
    pub fn wait_state(&mut self, name: &str, state: &str, timeout: Duration) -> Value {
        let status = self.wait_until(&format!("{name} {state}"), timeout, |s| {
            s.iter().any(|i| i["name"] == name && i["state"] == state)
        });
        status
            .into_iter()
            .find(|i| i["name"] == name)
            .unwrap_or(Value::Null)
    }

    /// Waits until every instance is in `state`.
    pub fn wait_all(&mut self, state: &str, timeout: Duration) -> Vec<Value> {
        self.wait_until(&format!("all {state}"), timeout, |s| {
            !s.is_empty() && s.iter().all(|i| i["state"] == state)
        })
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_child(&mut child, Duration::from_secs(20))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if wait_child(&mut child, Duration::from_secs(15)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Waits for a child with a bound; None on timeout.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn set_timeout(ws: &mut Ws, t: Option<Duration>) {
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        let _ = s.set_read_timeout(t);
    }
}

/// One request/response on a connection, skipping pushed events.
pub fn call(ws: &mut Ws, id: u64, cmd: &str, args: &[&str]) -> Value {
    let req = json!({"id": id, "cmd": cmd, "args": args});
    ws.send(Message::text(req.to_string()))
        .expect("send request");
    read_reply(ws, &json!(id))
}

pub fn read_reply(ws: &mut Ws, id: &Value) -> Value {
    set_timeout(ws, Some(Duration::from_secs(60)));
    loop {
        match ws.read().expect("read reply") {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).expect("reply is JSON");
                if v.get("event").is_none() && &v["id"] == id {
                    return v;
                }
            }
            Message::Close(f) => panic!("connection closed: {f:?}"),
            _ => {}
        }
    }
}

/// Whether a process (or, with a negative id, a process group) exists.
pub fn alive(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) == 0 }
}

/// One process as /proc/PID/stat describes it.
pub struct ProcStat {
    pub pid: u32,
    pub state: char,
    pub ppid: u32,
    pub pgid: u32,
}

/// Every process on the machine.
pub fn processes() -> Vec<ProcStat> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        let (Some(state), Some(ppid), Some(pgid)) = (f.first(), f.get(1), f.get(2)) else {
            continue;
        };
        out.push(ProcStat {
            pid,
            state: state.chars().next().unwrap_or('?'),
            ppid: ppid.parse().unwrap_or(0),
            pgid: pgid.parse().unwrap_or(0),
        });
    }
    out
}

/// Direct children of `pid` that are zombies.
pub fn zombie_children(pid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.state == 'Z' && p.ppid == pid)
        .map(|p| p.pid)
        .collect()
}

/// Live pids whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.state != 'Z' && p.pgid == pgid)
        .map(|p| p.pid)
        .collect()
}

/// Runs the daemon on `config` expecting it to refuse to start; returns its
/// stderr and whether the config's `touch spawned` marker service ran.
pub fn start_refused(tag: &str, config: &str, args: &[&str]) -> (String, bool) {
    let dir = temp_dir(tag);
    let cfg = dir.join("taskmaster.lua");
    fs::write(&cfg, config).expect("write config");
    let out = Command::new(daemon_bin())
        .arg("--config")
        .arg(&cfg)
        .args(if args.contains(&"--port") {
            vec![]
        } else {
            vec!["--port".to_string(), free_port().to_string()]
        })
        .args(args)
        .env_remove("TASKMASTER_TOKEN")
        .current_dir(&dir)
        .output()
        .expect("run taskmasterd");
    assert!(!out.status.success(), "taskmasterd started with {args:?}");
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        dir.join("spawned").exists(),
    )
}

/// A config whose only service leaves a `spawned` file if it ever runs.
pub const MARKER: &str = "return { services = { m = { cmd = 'touch spawned' } } }";

/// Reads a file, waiting (bounded) for it to have at least `lines` lines.
pub fn lines_of(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Polls (bounded) until the file exists and `cond` holds for its text;
/// returns it. For output written by hooks and children, which send no
/// daemon event.
pub fn wait_file(path: &Path, timeout: Duration, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(path);
        let exists = text.is_ok();
        let text = text.unwrap_or_default();
        if exists && cond(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting on {}: {text:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies the shipped `scripts/` into a test's config folder.
pub fn install_scripts(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let dst = dir.join("scripts");
    fs::create_dir_all(&dst).expect("scripts dir");
    for entry in fs::read_dir(src).expect("read scripts").flatten() {
        if entry.path().extension().is_some_and(|e| e == "lua") {
            fs::copy(entry.path(), dst.join(entry.file_name())).expect("copy script");
        }
    }
}

/// Runs `command` to its end, its output captured, within `timeout`; past
/// it the child is killed (by its pid) and the error says what it printed.
pub fn output_within(
    command: &mut Command,
    timeout: Duration,
) -> Result<std::process::Output, String> {
    use std::io::Read;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot spawn {command:?}: {e}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = wait_child(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Ok(std::process::Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!(
            "{command:?} still running after {timeout:?}; stdout {:?}, stderr {:?}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}
