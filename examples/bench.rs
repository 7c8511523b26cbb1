//! The benchmark harness behind `scripts/bench` (README "Performance").
//!
//! Runs each workload against the release binaries, with the physical limit
//! measured in the same run (a plain program doing the same work), and the
//! same workloads against supervisord when it is available. Prints a table
//! and writes JSON. Figures are medians with min–max over repeated runs.
//!
//! Speed and memory targets live here, never in timed tests.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;
type Res<T> = Result<T, String>;

/// Median, min and max of a sample.
#[derive(Clone, Copy, Debug)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(mut xs: Vec<f64>) -> Stat {
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
struct Row {
    id: &'static str,
    what: String,
    unit: &'static str,
    ours: Option<Stat>,
    limit: Option<Stat>,
    supervisord: Option<Stat>,
    /// ours relative to the limit, as the target states it.
    ratio: Option<f64>,
    target: String,
    pass: Option<bool>,
}

struct Opts {
    quick: bool,
    n: usize,
    json_out: PathBuf,
    only: Option<Vec<String>>,
    supervisord: Option<PathBuf>,
}

fn main() {
    let mut opts = Opts {
        quick: false,
        n: 200,
        json_out: PathBuf::from("target/bench.json"),
        only: None,
        supervisord: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--json" => opts.json_out = args.next().map(PathBuf::from).unwrap_or(opts.json_out),
            "--only" => {
                opts.only = args
                    .next()
                    .map(|s| s.split(',').map(str::to_string).collect())
            }
            "--supervisord" => opts.supervisord = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("bench [--quick] [--json PATH] [--only W1,W2,...] [--supervisord PATH]");
                return;
            }
            other => {
                eprintln!("bench: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    if opts.supervisord.is_none() {
        opts.supervisord = which("supervisord");
    }
    let bin = release_dir();
    let mut rows = Vec::new();
    let want = |id: &str| opts.only.as_ref().is_none_or(|o| o.iter().any(|x| x == id));
    macro_rules! run {
        ($id:literal, $f:expr) => {
            if want($id) {
                eprintln!("bench: {} ...", $id);
                match $f {
                    Ok(mut r) => rows.append(&mut r),
                    Err(e) => eprintln!("bench: {} failed: {e}", $id),
                }
            }
        };
    }
    run!("W1", w1_spawn(&bin, &opts));
    run!("W2", w2_status(&bin, &opts));
    run!("W3", w3_crash_loop(&bin, &opts, false));
    run!("W4", w4_restart_latency(&bin, &opts));
    run!("W5", w5_output(&bin, &opts));
    run!("W6", w6_stop_all(&bin, &opts));
    run!("W7", w7_reload(&bin, &opts));
    run!("W8", w3_crash_loop(&bin, &opts, true));
    report(&rows, &opts);
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/release/examples/bench → target/release
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tm-bench-{}-{tag}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    let _ = fs::create_dir_all(&d);
    d
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(39_999)
}

/// A running taskmasterd.
struct Daemon {
    child: Child,
    port: u16,
    dir: PathBuf,
    config: PathBuf,
    ws: Option<Ws>,
    sub: Option<Ws>,
    id: u64,
}

impl Daemon {
    fn start(bin: &Path, tag: &str, lua: &str) -> Res<Daemon> {
        let dir = temp(tag);
        let config = dir.join("taskmaster.lua");
        fs::write(&config, lua).map_err(|e| e.to_string())?;
        let port = free_port();
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
            .stderr(Stdio::null())
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
    fn connect(&mut self) -> Res<()> {
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
    fn connect_plain(&mut self) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((ws, _)) = tungstenite::connect(format!("ws://127.0.0.1:{}/", self.port)) {
                self.ws = Some(ws);
                break;
            }
            if Instant::now() > deadline {
                return Err("daemon did not listen".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    fn call(&mut self, cmd: &str, args: &[&str]) -> Res<Value> {
        self.id += 1;
        let ws = self.ws.as_mut().ok_or("not connected")?;
        let r = call(ws, self.id, cmd, args)?;
        if r["ok"] != true {
            return Err(format!("{cmd} failed: {r}"));
        }
        Ok(r["data"].clone())
    }

    fn status(&mut self) -> Res<Vec<Value>> {
        Ok(self.call("status", &[])?["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits for the next pushed event (None on timeout).
    fn event(&mut self, timeout: Duration) -> Option<Value> {
        let sub = self.sub.as_mut()?;
        if let MaybeTlsStream::Plain(s) = sub.get_mut() {
            let _ = s.set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
        }
        match sub.read() {
            Ok(Message::Text(t)) => serde_json::from_str(&t).ok(),
            _ => None,
        }
    }

    fn wait_until(
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

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> f64 {
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

fn call(ws: &mut Ws, id: u64, cmd: &str, args: &[&str]) -> Res<Value> {
    ws.send(Message::text(
        json!({"id": id, "cmd": cmd, "args": args}).to_string(),
    ))
    .map_err(|e| e.to_string())?;
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

fn proc_status_kib(pid: u32, key: &str) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// CPU time of every thread of `pid`, in nanoseconds (schedstat: exact, not ticks).
fn cpu_ns(pid: u32) -> u64 {
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

/// Children of `pid` (ppid match) whose command name is `comm`.
fn children_named(pid: u32, comm: &str) -> usize {
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

fn runs(opts: &Opts, full: usize, quick: usize) -> usize {
    if opts.quick {
        quick
    } else {
        full
    }
}

/// `n` instances of `sleep 3600` (starttime 0), 100 per service.
fn sleepers(n: usize) -> String {
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

fn w1_spawn(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
    let n = opts.n;
    let mut ours = Vec::new();
    let mut rss = Vec::new();
    let mut idle = Vec::new();
    for r in 0..runs(opts, 5, 2) {
        let t = Instant::now();
        let mut d = Daemon::start(bin, "w1", &sleepers(n))?;
        let deadline = t + Duration::from_secs(60);
        while children_named(d.pid(), "sleep") < n {
            if Instant::now() > deadline {
                return Err("not all processes appeared".into());
            }
            // A /proc scan costs about a millisecond: do not let it hog a core.
            std::thread::sleep(Duration::from_millis(2));
        }
        ours.push(t.elapsed().as_secs_f64() * 1000.0);
        d.connect()?;
        d.wait_until(Duration::from_secs(30), |s| {
            s.iter().all(|i| i["state"] == "RUNNING")
        })?;
        rss.push(d.rss_kib() / 1024.0);
        if r == 0 {
            let secs = if opts.quick { 3 } else { 10 };
            let c0 = cpu_ns(d.pid());
            std::thread::sleep(Duration::from_secs(secs));
            let c1 = cpu_ns(d.pid());
            idle.push((c1 - c0) as f64 / 1e6 * 10.0 / secs as f64);
        }
    }
    // The limit: a plain program spawning the same commands back to back.
    let mut limit = Vec::new();
    for _ in 0..runs(opts, 5, 2) {
        let t = Instant::now();
        let mut kids = Vec::new();
        for _ in 0..n {
            kids.push(
                Command::new("/bin/sh")
                    .args(["-c", "exec sleep 3600"])
                    .spawn()
                    .map_err(|e| e.to_string())?,
            );
        }
        let me = std::process::id();
        while children_named(me, "sleep") < n {
            std::thread::sleep(Duration::from_millis(2));
        }
        limit.push(t.elapsed().as_secs_f64() * 1000.0);
        for k in &mut kids {
            let _ = k.kill();
            let _ = k.wait();
        }
    }
    // RSS at 1000 instances.
    let mut d = Daemon::start(bin, "w1k", &sleepers(1000))?;
    d.connect()?;
    d.wait_until(Duration::from_secs(120), |s| {
        s.len() == 1000 && s.iter().all(|i| i["state"] == "RUNNING")
    })?;
    let rss1000 = d.rss_kib() / 1024.0;
    drop(d);

    let (o, l) = (stat(ours), stat(limit));
    let mut rows = vec![Row {
        id: "W1",
        what: format!("spawn {n} × sleep: launch → all exist"),
        unit: "ms",
        ours: Some(o),
        limit: Some(l),
        supervisord: None,
        ratio: Some(o.median / l.median),
        target: "≤ 1.3× limit".into(),
        pass: Some(o.median <= 1.3 * l.median),
    }];
    let r = stat(rss);
    rows.push(Row {
        id: "W1",
        what: format!("daemon RSS, {n} instances"),
        unit: "MiB",
        ours: Some(r),
        limit: None,
        supervisord: None,
        ratio: None,
        target: "< 8 MiB".into(),
        pass: Some(r.median < 8.0),
    });
    rows.push(Row {
        id: "W1",
        what: "daemon RSS, 1000 instances".into(),
        unit: "MiB",
        ours: Some(stat(vec![rss1000])),
        limit: None,
        supervisord: None,
        ratio: None,
        target: "< 20 MiB".into(),
        pass: Some(rss1000 < 20.0),
    });
    let i = stat(idle);
    rows.push(Row {
        id: "W1",
        what: "idle CPU per 10 s".into(),
        unit: "ms",
        ours: Some(i),
        limit: None,
        supervisord: None,
        ratio: None,
        target: "< 1 ms".into(),
        pass: Some(i.median < 1.0),
    });
    if let Some(sd) = &opts.supervisord {
        match supervisord::spawn(sd, n, opts) {
            Ok((t, rss)) => {
                rows[0].supervisord = Some(t);
                rows[1].supervisord = Some(rss);
            }
            Err(e) => eprintln!("bench: supervisord W1: {e}"),
        }
    }
    Ok(rows)
}

fn time_cmd(cmd: &mut Command) -> Res<f64> {
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

fn w2_status(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
    let n = opts.n;
    let mut d = Daemon::start(bin, "w2", &sleepers(n))?;
    d.connect()?;
    d.wait_until(Duration::from_secs(60), |s| {
        s.iter().all(|i| i["state"] == "RUNNING")
    })?;
    let url = format!("ws://127.0.0.1:{}/", d.port);
    let mut ours = Vec::new();
    let mut limit = Vec::new();
    for _ in 0..runs(opts, 20, 10) {
        ours.push(time_cmd(
            Command::new(bin.join("taskmasterctl")).args(["--url", &url, "status"]),
        )?);
        // The limit: starting a process at all.
        limit.push(time_cmd(&mut Command::new("/bin/true"))?);
    }
    drop(d);
    let o = stat(ours);
    let mut row = Row {
        id: "W2",
        what: format!("`taskmasterctl status`, {n} running"),
        unit: "ms",
        ours: Some(o),
        limit: Some(stat(limit)),
        supervisord: None,
        ratio: None,
        target: "median < 10 ms".into(),
        pass: Some(o.median < 10.0),
    };
    if let Some(sd) = &opts.supervisord {
        match supervisord::status(sd, n, opts) {
            Ok(s) => row.supervisord = Some(s),
            Err(e) => eprintln!("bench: supervisord W2: {e}"),
        }
    }
    Ok(vec![row])
}

fn w3_crash_loop(bin: &Path, opts: &Opts, hook: bool) -> Res<Vec<Row>> {
    let secs = if opts.quick { 3.0 } else { 10.0 };
    let hook_src = if hook {
        "require('taskmaster').on('transition', function(ev) local x = ev.name end)\n"
    } else {
        ""
    };
    let lua = format!("{hook_src}return {{ services = {{ crash = {{ cmd = '/bin/true', starttime = 0, autorestart = 'always' }} }} }}");
    let rate = |d: &mut Daemon| -> Res<f64> {
        d.connect_plain()?;
        let r0 = d.status()?[0]["restarts"].as_f64().unwrap_or(0.0);
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(secs));
        let r1 = d.status()?[0]["restarts"].as_f64().unwrap_or(0.0);
        Ok((r1 - r0) / t0.elapsed().as_secs_f64())
    };
    let mut ours = Vec::new();
    for _ in 0..runs(opts, 3, 1) {
        let mut d = Daemon::start(bin, if hook { "w8" } else { "w3" }, &lua)?;
        ours.push(rate(&mut d)?);
    }
    let o = stat(ours);
    if hook {
        // W8 compares against W3 measured in the same run.
        let mut base = Vec::new();
        for _ in 0..runs(opts, 3, 1) {
            let plain = "return { services = { crash = { cmd = '/bin/true', starttime = 0, autorestart = 'always' } } }";
            let mut d = Daemon::start(bin, "w8base", plain)?;
            base.push(rate(&mut d)?);
        }
        let b = stat(base);
        let ratio = o.median / b.median;
        return Ok(vec![Row {
            id: "W8",
            what: "crash loop with a `transition` hook vs without".into(),
            unit: "restarts/s",
            ours: Some(o),
            limit: Some(b),
            supervisord: None,
            ratio: Some(ratio),
            target: "≥ 0.9× hook-free".into(),
            pass: Some(ratio >= 0.9),
        }]);
    }
    // The limit: a loop respawning the same command.
    let mut limit = Vec::new();
    for _ in 0..runs(opts, 3, 1) {
        let t = Instant::now();
        let mut count = 0u64;
        while t.elapsed().as_secs_f64() < secs {
            Command::new("/bin/true")
                .status()
                .map_err(|e| e.to_string())?;
            count += 1;
        }
        limit.push(count as f64 / t.elapsed().as_secs_f64());
    }
    let l = stat(limit);
    let ratio = o.median / l.median;
    let mut row = Row {
        id: "W3",
        what: "crash loop (`/bin/true`, always, starttime 0)".into(),
        unit: "restarts/s",
        ours: Some(o),
        limit: Some(l),
        supervisord: None,
        ratio: Some(ratio),
        target: "≥ 0.8× limit".into(),
        pass: Some(ratio >= 0.8),
    };
    if let Some(sd) = &opts.supervisord {
        match supervisord::crash_loop(sd, secs) {
            Ok(s) => row.supervisord = Some(s),
            Err(e) => eprintln!("bench: supervisord W3: {e}"),
        }
    }
    Ok(vec![row])
}

fn w4_restart_latency(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
    let lua = "return { services = { s = { cmd = 'sleep 3600', starttime = 0 } } }";
    let mut d = Daemon::start(bin, "w4", lua)?;
    d.connect()?;
    let mut ours = Vec::new();
    for _ in 0..runs(opts, 20, 10) {
        let s = d.wait_until(Duration::from_secs(10), |s| s[0]["state"] == "RUNNING")?;
        let old = s[0]["pid"].as_i64().unwrap_or(0);
        while d.event(Duration::from_millis(1)).is_some() {}
        let t = Instant::now();
        unsafe { libc::kill(old as i32, libc::SIGKILL) };
        // The daemon announces the replacement's pid once it has been spawned
        // (starttime 0: STARTING -> RUNNING right after the exec succeeded).
        let deadline = t + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("no replacement".into());
            }
            if let Some(ev) = d.event(left) {
                if ev["to"] == "RUNNING" && ev["pid"].as_i64().is_some_and(|p| p != old) {
                    break;
                }
            }
        }
        ours.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    drop(d);
    let mut limit = Vec::new();
    for _ in 0..runs(opts, 20, 10) {
        let t = Instant::now();
        let mut c = Command::new("sleep")
            .arg("3600")
            .spawn()
            .map_err(|e| e.to_string())?;
        limit.push(t.elapsed().as_secs_f64() * 1000.0);
        let _ = c.kill();
        let _ = c.wait();
    }
    let o = stat(ours);
    let mut row = Row {
        id: "W4",
        what: "SIGKILL → replacement exists".into(),
        unit: "ms",
        ours: Some(o),
        limit: Some(stat(limit)),
        supervisord: None,
        ratio: None,
        target: "median < 2 ms".into(),
        pass: Some(o.median < 2.0),
    };
    if let Some(sd) = &opts.supervisord {
        match supervisord::restart_latency(sd, runs(opts, 20, 10)) {
            Ok(s) => row.supervisord = Some(s),
            Err(e) => eprintln!("bench: supervisord W4: {e}"),
        }
    }
    Ok(vec![row])
}

fn w5_output(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
    let bytes: u64 = if opts.quick { 256 << 20 } else { 1 << 30 };
    let cmd = format!("head -c {bytes} /dev/zero");
    let lua = format!(
        "return {{ services = {{ out = {{ cmd = '{cmd}', stdout = 'out.bin', starttime = 0, autorestart = 'never', autostart = false }} }} }}"
    );
    let mut d = Daemon::start(bin, "w5", &lua)?;
    d.connect()?;
    let mut ours = Vec::new();
    let mut limit = Vec::new();
    for _ in 0..runs(opts, 3, 2) {
        let _ = fs::remove_file(d.dir.join("out.bin"));
        let t = Instant::now();
        d.call("start", &["out"])?;
        d.wait_until(Duration::from_secs(120), |s| s[0]["state"] == "EXITED")?;
        ours.push(bytes as f64 / t.elapsed().as_secs_f64() / (1 << 20) as f64);
        let got = fs::metadata(d.dir.join("out.bin"))
            .map(|m| m.len())
            .unwrap_or(0);
        if got != bytes {
            return Err(format!("wrote {got} bytes, expected {bytes}"));
        }
        let _ = fs::remove_file(d.dir.join("out.bin"));
        let target = d.dir.join("shell.bin");
        let t = Instant::now();
        Command::new("/bin/sh")
            .args(["-c", &format!("exec {cmd} > '{}'", target.display())])
            .status()
            .map_err(|e| e.to_string())?;
        limit.push(bytes as f64 / t.elapsed().as_secs_f64() / (1 << 20) as f64);
        let _ = fs::remove_file(&target);
    }
    drop(d);
    let (o, l) = (stat(ours), stat(limit));
    let ratio = o.median / l.median;
    let sd = match &opts.supervisord {
        Some(sd) => supervisord::output(sd, &cmd, bytes, runs(opts, 3, 2))
            .map_err(|e| eprintln!("bench: supervisord W5: {e}"))
            .ok(),
        None => None,
    };
    Ok(vec![Row {
        id: "W5",
        what: format!("{} MiB to stdout → file", bytes >> 20),
        unit: "MiB/s",
        ours: Some(o),
        limit: Some(l),

        ratio: Some(ratio),
        target: "≥ 0.95× shell redirect".into(),
        pass: Some(ratio >= 0.95),
        supervisord: sd,
    }])
}

fn w6_stop_all(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
    let n = opts.n;
    let mut ours = Vec::new();
    for _ in 0..runs(opts, 5, 2) {
        let mut d = Daemon::start(bin, "w6", &sleepers(n))?;
        d.connect()?;
        d.wait_until(Duration::from_secs(60), |s| {
            s.iter().all(|i| i["state"] == "RUNNING")
        })?;
        let t = Instant::now();
        d.call("stop", &["all"])?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if children_named(d.pid(), "sleep") != 0 {
            return Err("children left after stop all".into());
        }
        ours.push(ms);
    }
    // The limit: the same children, signalled and reaped by a plain program.
    let mut limit = Vec::new();
    for _ in 0..runs(opts, 5, 2) {
        let mut kids: Vec<Child> = (0..n)
            .filter_map(|_| Command::new("sleep").arg("3600").spawn().ok())
            .collect();
        let t = Instant::now();
        for k in &kids {
            unsafe { libc::kill(k.id() as i32, libc::SIGTERM) };
        }
        for k in &mut kids {
            let _ = k.wait();
        }
        limit.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (o, l) = (stat(ours), stat(limit));
    let mut row = Row {
        id: "W6",
        what: format!("`stop all`, {n} running → returned, none left"),
        unit: "ms",
        ours: Some(o),
        limit: Some(l),
        supervisord: None,
        ratio: None,
        target: "≤ limit + 50 ms".into(),
        pass: Some(o.median <= l.median + 50.0),
    };
    if let Some(sd) = &opts.supervisord {
        match supervisord::stop_all(sd, n) {
            Ok(s) => row.supervisord = Some(s),
            Err(e) => eprintln!("bench: supervisord W6: {e}"),
        }
    }
    Ok(vec![row])
}

fn w7_reload(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
    let cfg = |n: usize| {
        format!("return {{ services = {{ s = {{ cmd = 'sleep 3600', starttime = 0, numprocs = {n} }} }} }}\n")
    };
    let mut d = Daemon::start(bin, "w7", &cfg(1))?;
    d.connect()?;
    d.wait_until(Duration::from_secs(10), |s| s[0]["state"] == "RUNNING")?;
    let mut ours = Vec::new();
    for k in 2..2 + runs(opts, 10, 5) {
        let name = format!("s:{}", k - 1);
        // Drain events so the wait below sees only fresh ones.
        while d.event(Duration::from_millis(1)).is_some() {}
        let t = Instant::now();
        fs::write(&d.config, cfg(k)).map_err(|e| e.to_string())?;
        let deadline = t + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("reload not seen".into());
            }
            if let Some(ev) = d.event(left) {
                if ev["name"] == name.as_str() && ev["to"] == "RUNNING" {
                    break;
                }
            }
        }
        ours.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let o = stat(ours);
    Ok(vec![Row {
        id: "W7",
        what: "save adding an instance → it is RUNNING".into(),
        unit: "ms",
        ours: Some(o),
        limit: Some(stat(vec![200.0])),
        supervisord: None,
        ratio: None,
        target: "< debounce (200) + 100 ms".into(),
        pass: Some(o.median < 300.0),
    }])
}

fn fmt_stat(s: &Option<Stat>) -> String {
    match s {
        Some(s) if s.min == s.max => format!("{:.3}", s.median),
        Some(s) => format!("{:.3} ({:.3}–{:.3})", s.median, s.min, s.max),
        None => "—".into(),
    }
}

fn report(rows: &[Row], opts: &Opts) {
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("")
            .trim()
    );
    println!(
        "\nTaskmaster benchmarks ({}; {machine})\n",
        if opts.quick { "quick" } else { "full" }
    );
    println!("| id | workload | unit | taskmaster median (min–max) | limit | ratio | supervisord | target | ok |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut out = Vec::new();
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.id,
            r.what,
            r.unit,
            fmt_stat(&r.ours),
            fmt_stat(&r.limit),
            r.ratio
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "—".into()),
            fmt_stat(&r.supervisord),
            r.target,
            match r.pass {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "—",
            }
        );
        let s =
            |s: &Option<Stat>| s.map(|s| json!({"median": s.median, "min": s.min, "max": s.max}));
        out.push(json!({
            "id": r.id, "workload": r.what, "unit": r.unit, "taskmaster": s(&r.ours), "limit": s(&r.limit),
            "ratio": r.ratio, "supervisord": s(&r.supervisord), "target": r.target, "pass": r.pass,
        }));
    }
    let doc = json!({"machine": machine, "quick": opts.quick, "rows": out});
    if let Some(dir) = opts.json_out.parent() {
        let _ = fs::create_dir_all(dir);
    }
    match fs::write(
        &opts.json_out,
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    ) {
        Ok(()) => println!("\nJSON: {}", opts.json_out.display()),
        Err(e) => eprintln!("bench: cannot write {}: {e}", opts.json_out.display()),
    }
}

/// The same workloads against supervisord (ini config, supervisorctl over a unix socket).
mod supervisord {
    use super::*;

    pub struct Sd {
        child: Child,
        dir: PathBuf,
        ctl: PathBuf,
    }

    impl Sd {
        pub fn start(bin: &Path, tag: &str, programs: &str) -> Res<Sd> {
            let dir = temp(&format!("sd-{tag}"));
            let sock = dir.join("s.sock");
            let conf = dir.join("supervisord.conf");
            let text = format!(
                "[unix_http_server]\nfile={sock}\n[supervisord]\nlogfile={log}\npidfile={pid}\nnodaemon=true\nloglevel=info\n\
                 [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\
                 [supervisorctl]\nserverurl=unix://{sock}\n{programs}",
                sock = sock.display(),
                log = dir.join("sd.log").display(),
                pid = dir.join("sd.pid").display(),
            );
            fs::write(&conf, text).map_err(|e| e.to_string())?;
            let child = Command::new(bin)
                .args(["-c", conf.to_str().unwrap_or_default()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            let ctl = bin.with_file_name("supervisorctl");
            let sd = Sd { child, dir, ctl };
            let deadline = Instant::now() + Duration::from_secs(30);
            while !sock.exists() {
                if Instant::now() > deadline {
                    return Err("supervisord did not start".into());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(sd)
        }

        pub fn ctl(&self, args: &[&str]) -> Command {
            let mut c = Command::new(&self.ctl);
            c.arg("-c")
                .arg(self.dir.join("supervisord.conf"))
                .args(args);
            c
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        pub fn running(&self) -> usize {
            let out = self
                .ctl(&["status"])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default();
            String::from_utf8_lossy(&out)
                .lines()
                .filter(|l| l.contains("RUNNING"))
                .count()
        }
    }

    impl Drop for Sd {
        fn drop(&mut self) {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn sleepers(n: usize) -> String {
        format!("[program:s]\ncommand=sleep 3600\nnumprocs={n}\nprocess_name=%(program_name)s_%(process_num)d\nstartsecs=0\nautostart=true\n")
    }

    pub fn spawn(bin: &Path, n: usize, opts: &Opts) -> Res<(Stat, Stat)> {
        let mut times = Vec::new();
        let mut rss = Vec::new();
        for _ in 0..runs(opts, 3, 1) {
            let t = Instant::now();
            let sd = Sd::start(bin, "w1", &sleepers(n))?;
            let deadline = t + Duration::from_secs(120);
            while children_named(sd.pid(), "sleep") < n {
                if Instant::now() > deadline {
                    return Err("not all processes appeared".into());
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            rss.push(proc_status_kib(sd.pid(), "VmRSS:") / 1024.0);
        }
        Ok((stat(times), stat(rss)))
    }

    pub fn status(bin: &Path, n: usize, opts: &Opts) -> Res<Stat> {
        let sd = Sd::start(bin, "w2", &sleepers(n))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while sd.running() < n {
            if Instant::now() > deadline {
                return Err("not all running".into());
            }
        }
        let mut times = Vec::new();
        for _ in 0..runs(opts, 20, 10) {
            times.push(time_cmd(&mut sd.ctl(&["status"]))?);
        }
        Ok(stat(times))
    }

    pub fn crash_loop(bin: &Path, secs: f64) -> Res<Stat> {
        let prog = "[program:crash]\ncommand=/bin/true\nstartsecs=0\nautorestart=true\nstartretries=1000000\n";
        let sd = Sd::start(bin, "w3", prog)?;
        std::thread::sleep(Duration::from_secs(1));
        let count = |sd: &Sd| {
            fs::read_to_string(sd.dir.join("sd.log"))
                .unwrap_or_default()
                .matches("spawned")
                .count()
        };
        let c0 = count(&sd);
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(secs));
        let c1 = count(&sd);
        Ok(stat(vec![(c1 - c0) as f64 / t.elapsed().as_secs_f64()]))
    }

    pub fn restart_latency(bin: &Path, runs: usize) -> Res<Stat> {
        let sd = Sd::start(
            bin,
            "w4",
            "[program:s]\ncommand=sleep 3600\nstartsecs=0\nautorestart=true\n",
        )?;
        let mut times = Vec::new();
        for _ in 0..runs {
            let deadline = Instant::now() + Duration::from_secs(30);
            let old = loop {
                if let Some(p) = child_pid(sd.pid(), "sleep") {
                    break p;
                }
                if Instant::now() > deadline {
                    return Err("no child".into());
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            let t = Instant::now();
            unsafe { libc::kill(old as i32, libc::SIGKILL) };
            loop {
                if child_pid(sd.pid(), "sleep").is_some_and(|p| p != old) {
                    break;
                }
                if t.elapsed() > Duration::from_secs(30) {
                    return Err("no replacement".into());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(stat(times))
    }

    pub fn stop_all(bin: &Path, n: usize) -> Res<Stat> {
        let sd = Sd::start(bin, "w6", &sleepers(n))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while sd.running() < n {
            if Instant::now() > deadline {
                return Err("not all running".into());
            }
        }
        let ms = time_cmd(&mut sd.ctl(&["stop", "all"]))?;
        Ok(stat(vec![ms]))
    }

    pub fn output(bin: &Path, cmd: &str, bytes: u64, runs: usize) -> Res<Stat> {
        let mut rates = Vec::new();
        for r in 0..runs {
            let dir = temp(&format!("sd-w5-out-{r}"));
            let out = dir.join("out.bin");
            let prog = format!(
                "[program:out]\ncommand={cmd}\nstartsecs=0\nautorestart=false\nautostart=false\n\
                 stdout_logfile={}\nstdout_logfile_maxbytes=0\n",
                out.display()
            );
            let sd = Sd::start(bin, "w5", &prog)?;
            let t = Instant::now();
            time_cmd(&mut sd.ctl(&["start", "out"]))?;
            loop {
                let o = sd
                    .ctl(&["status", "out"])
                    .output()
                    .map_err(|e| e.to_string())?;
                if String::from_utf8_lossy(&o.stdout).contains("EXITED") {
                    break;
                }
                if t.elapsed() > Duration::from_secs(600) {
                    return Err("never exited".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            rates.push(bytes as f64 / t.elapsed().as_secs_f64() / (1 << 20) as f64);
            drop(sd);
            let _ = fs::remove_dir_all(&dir);
        }
        Ok(stat(rates))
    }

    fn child_pid(parent: u32, comm: &str) -> Option<u32> {
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
            if &stat[open + 1..close] == comm
                && fields.get(1) == Some(&parent.to_string().as_str())
                && fields[0] != "Z"
            {
                return e.file_name().to_str()?.parse().ok();
            }
        }
        None
    }
}
