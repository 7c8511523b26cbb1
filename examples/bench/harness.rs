//! What every workload shares: statistics, the report row, a running
//! taskmasterd driven over WebSocket, readings from /proc, and the cleanup
//! that makes sure nothing the bench started outlives it.
//!
//! Cleanup works on three levels: every daemon, supervisord and helper
//! child is owned by a value whose `Drop` stops it by pid (also when a
//! workload fails with an error or panics); each is spawned with
//! `PR_SET_PDEATHSIG`, so it is told to go even if the bench itself is
//! killed; and the bench is a child subreaper, so anything orphaned on the
//! way is reparented to it, found by [`leftovers`] at the end and killed by
//! pid. Spawns happen on the main thread, since the death signal follows
//! the thread that forked.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

use crate::Opts;

pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;
pub type Res<T> = Result<T, String>;

/// Median, min and max of a sample.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn stat(mut xs: Vec<f64>) -> Stat {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if xs.is_empty() {
        return Stat {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    let n = xs.len();
    let median = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    };
    Stat {
        median,
        min: xs[0],
        max: xs[n - 1],
    }
}

/// One row of the report.
pub struct Row {
    pub id: &'static str,
    pub what: String,
    pub unit: &'static str,
    pub ours: Option<Stat>,
    pub limit: Option<Stat>,
    pub supervisord: Option<Stat>,
    /// ours relative to the limit, as the target states it.
    pub ratio: Option<f64>,
    pub target: String,
    pub pass: Option<bool>,
}

pub fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tm-bench-{}-{tag}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    let _ = fs::create_dir_all(&d);
    d
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(39_999)
}

/// A running taskmasterd.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub ws: Option<Ws>,
    pub sub: Option<Ws>,
    pub id: u64,
}

impl Daemon {
    /// Starts a daemon whose log goes nowhere (as in a crash loop, where
    /// writing it to a file would be part of what is measured).
    pub fn start(bin: &Path, tag: &str, lua: &str) -> Res<Daemon> {
        Daemon::spawn(bin, tag, lua, false)
    }

    /// Starts a daemon whose log (stderr) is kept in its folder, so that a
    /// daemon that exits early (a config it refuses) says why.
    pub fn start_logged(bin: &Path, tag: &str, lua: &str) -> Res<Daemon> {
        Daemon::spawn(bin, tag, lua, true)
    }

    fn spawn(bin: &Path, tag: &str, lua: &str, logged: bool) -> Res<Daemon> {
        let dir = temp(tag);
        let config = dir.join("taskmaster.lua");
        fs::write(&config, lua).map_err(|e| e.to_string())?;
        let port = free_port();
        let stderr = match logged {
            true => fs::File::create(dir.join("taskmasterd.stderr"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
            false => Stdio::null(),
        };
        let child = Command::new(bin.join("taskmasterd"))
            .args([
                "--config",
                config.to_str().unwrap_or_default(),
                "--port",
                &port.to_string(),
            ])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .die_with_parent(libc::SIGTERM)
            .spawn()
            .map_err(|e| format!("spawn taskmasterd: {e}"))?;
        Ok(Daemon {
            child,
            port,
            dir,
            config,
            ws: None,
            sub: None,
            id: 0,
        })
    }

    /// Connects, and subscribes to events (used by the waits).
    pub fn connect(&mut self) -> Res<()> {
        self.connect_plain()?;
        let (mut sub, _) = tungstenite::connect(format!("ws://127.0.0.1:{}/", self.port))
            .map_err(|e| e.to_string())?;
        call(&mut sub, 0, "subscribe", &[])?;
        self.sub = Some(sub);
        Ok(())
    }

    /// Connects without subscribing: a subscriber that is not reading costs
    /// the daemon event encoding until it is dropped, which is not part of
    /// the crash-loop workload.
    pub fn connect_plain(&mut self) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((ws, _)) = tungstenite::connect(format!("ws://127.0.0.1:{}/", self.port)) {
                self.ws = Some(ws);
                break;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                let log =
                    fs::read_to_string(self.dir.join("taskmasterd.stderr")).unwrap_or_default();
                return Err(format!(
                    "taskmasterd exited ({st}): {}",
                    clip(log.trim(), 300)
                ));
            }
            if Instant::now() > deadline {
                return Err("daemon did not listen".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    pub fn call(&mut self, cmd: &str, args: &[&str]) -> Res<Value> {
        self.id += 1;
        let ws = self.ws.as_mut().ok_or("not connected")?;
        let r = call(ws, self.id, cmd, args)?;
        if r["ok"] != true {
            return Err(format!("{cmd} failed: {r}"));
        }
        Ok(r["data"].clone())
    }

    pub fn status(&mut self) -> Res<Vec<Value>> {
        Ok(self.call("status", &[])?["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits for the next pushed event (None on timeout).
    pub fn event(&mut self, timeout: Duration) -> Option<Value> {
        let sub = self.sub.as_mut()?;
        if let MaybeTlsStream::Plain(s) = sub.get_mut() {
            let _ = s.set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
        }
        match sub.read() {
            Ok(Message::Text(t)) => serde_json::from_str(&t).ok(),
            _ => None,
        }
    }

    pub fn wait_until(
        &mut self,
        timeout: Duration,
        mut cond: impl FnMut(&[Value]) -> bool,
    ) -> Res<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status()?;
            if cond(&s) {
                return Ok(s);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out".into());
            }
            self.event(left);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kib(&self) -> f64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn call(ws: &mut Ws, id: u64, cmd: &str, args: &[&str]) -> Res<Value> {
    call_opts(ws, id, cmd, args, None)
}

/// A request with `opts` (SPEC §10: `tail`, `logs`); the whole reply, ok or not.
pub fn call_opts(
    ws: &mut Ws,
    id: u64,
    cmd: &str,
    args: &[&str],
    opts: Option<&Value>,
) -> Res<Value> {
    send_opts(ws, id, cmd, args, opts)?;
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    }
    loop {
        match ws.read().map_err(|e| e.to_string())? {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                if v.get("event").is_none() && v["id"] == id {
                    return Ok(v);
                }
            }
            Message::Close(_) => return Err("closed".into()),
            _ => {}
        }
    }
}

/// `s` cut to at most `max` characters, with how much was left out.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((at, _)) => format!("{} … (+{} bytes)", &s[..at], s.len() - at),
    }
}

/// Sends a request without waiting for its reply.
pub fn send_opts(ws: &mut Ws, id: u64, cmd: &str, args: &[&str], opts: Option<&Value>) -> Res<()> {
    let mut req = json!({"id": id, "cmd": cmd, "args": args});
    if let Some(o) = opts {
        req["opts"] = o.clone();
    }
    ws.send(Message::text(req.to_string()))
        .map_err(|e| e.to_string())
}

/// How many processes the machine has now (numeric entries of /proc).
pub fn process_count() -> usize {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(0)
}

pub fn proc_status_kib(pid: u32, key: &str) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// CPU time of every thread of `pid`, in nanoseconds (schedstat: exact, not ticks).
pub fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    for t in fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(s) = fs::read_to_string(t.path().join("schedstat")) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// User + system CPU seconds of process `pid`, all threads
/// (`/proc/PID/stat` fields 14 and 15, in clock ticks: 10 ms resolution).
pub fn proc_cpu_secs(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    let ticks = |i: usize| fields.get(i).and_then(|x| x.parse::<f64>().ok());
    // fields[0] is field 3 (state), so utime (14) is fields[11].
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / clock_ticks(),
        _ => f64::NAN,
    }
}

fn clock_ticks() -> f64 {
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    }
}

/// Wall-clock microseconds since the epoch (CLOCK_REALTIME): the clock the
/// `--tick` children stamp their lines with.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The bench's own executable: children run it in a child mode (`--emit`, `--tick`).
pub fn self_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("target/release/examples/bench"))
}

/// `Command` that is sent `sig` when the bench (the spawning thread) dies.
pub trait DieWithParent {
    fn die_with_parent(&mut self, sig: libc::c_int) -> &mut Self;
}

impl DieWithParent for Command {
    fn die_with_parent(&mut self, sig: libc::c_int) -> &mut Self {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated.
        unsafe {
            self.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0);
                // The parent died between fork and prctl: go now.
                if libc::getppid() != parent {
                    libc::raise(sig);
                }
                Ok(())
            })
        }
    }
}

/// Children that must not outlive a workload: killed by pid and reaped on drop.
#[derive(Default)]
pub struct Kids(pub Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for k in &mut self.0 {
            let _ = k.kill();
        }
        for k in &mut self.0 {
            let _ = k.wait();
        }
    }
}

/// Makes orphans of the bench's descendants its children (see the module
/// header), so [`leftovers`] can find them.
pub fn become_subreaper() {
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Kills (by pid) and reaps every process still a child of the bench, and
/// returns those that were alive: none when every workload cleaned up after itself.
pub fn leftovers() -> Vec<(u32, String)> {
    let me = std::process::id().to_string();
    let mut left = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        if fields.get(1) == Some(&me.as_str()) && fields[0] != "Z" {
            left.push((pid, stat[open + 1..close].to_string()));
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    // Reap them, and any zombie orphan handed to us.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if r < 0 || (r == 0 && Instant::now() > deadline) {
            break;
        }
        if r == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    left
}

/// Reaps the orphans that exited (a daemon's helpers outlive it by a
/// moment and are handed to the bench). Only between workloads: then no
/// `Child` of the bench is waiting to be waited for.
pub fn reap_orphans() {
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// Children of `pid` (ppid match) whose command name is `comm`.
pub fn children_named(pid: u32, comm: &str) -> usize {
    let mut n = 0;
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        if name == comm && fields.get(1) == Some(&pid.to_string().as_str()) && fields[0] != "Z" {
            n += 1;
        }
    }
    n
}

pub fn runs(opts: &Opts, full: usize, quick: usize) -> usize {
    if opts.quick {
        quick
    } else {
        full
    }
}

/// `n` instances of `sleep 3600` (starttime 0), 100 per service.
pub fn sleepers(n: usize) -> String {
    let services: String = (0..n.div_ceil(100))
        .map(|i| {
            let count = (n - i * 100).min(100);
            format!(
                "s{i} = {{ cmd = 'sleep 3600', numprocs = {count}, starttime = 0, stoptime = 5 }},"
            )
        })
        .collect();
    format!("return {{ services = {{ {services} }} }}")
}

pub fn time_cmd(cmd: &mut Command) -> Res<f64> {
    let t = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !out.success() && out.code() != Some(3) {
        return Err(format!("command failed: {out}"));
    }
    Ok(ms)
}
