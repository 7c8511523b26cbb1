//! HEALTH (SPEC §11, §16 "200 instances with an `http` healthcheck every
//! second: daemon CPU < 5 % of one core").
//!
//! Each of the 200 instances is a tiny HTTP server on a port of its own:
//! this executable in `bench --serve PORT` mode (one thread, a blocking
//! accept loop, `HTTP/1.1 200 OK` with `Connection: close` to any request).
//! Two services of 100 instances each, `cmd = 'bench --serve
//! {instance+BASE}'` and `healthcheck = { http =
//! 'http://127.0.0.1:{instance+BASE}/', interval = 1, timeout = 1, retries
//! = 3 }`, `starttime = 0`. BASE starts 200 ports that can all be bound,
//! below the ephemeral range (so the probes' own sockets never take one);
//! they are checked again before every phase.
//!
//! Rows:
//! - launch → all healthy: from spawning taskmasterd until the last
//!   instance is known healthy, by its `health` event with `health =
//!   "healthy"` on a `subscribe`d connection. What was pushed before the
//!   subscription existed is recovered from one `status` right after it (an
//!   instance already healthy counts from that reply). A daemon that closes
//!   the subscription on the way (it drops a subscriber whose queue is
//!   full) is subscribed to again, with the same catch-up; the row counts
//!   those closes and fails when there was one.
//! - per instance RUNNING → healthy, p50 and p99: the `time` of the
//!   instance's healthy event minus that of its transition to RUNNING (both
//!   the daemon's clock). A RUNNING transition pushed before the
//!   subscription is dated from the catch-up `status` reply minus the
//!   instance's `uptime` (with `starttime = 0` it is RUNNING from its
//!   spawn); an instance whose healthy event was never received has no
//!   healthy time and is left out of the percentiles (the row says how many
//!   were timed).
//! - daemon CPU while steady: once every instance is healthy, the daemon's
//!   utime + stime (`/proc/PID/stat`) over 10 s (4 s with `--quick`), as a
//!   percentage of one core; the subscriber stays connected and read, and
//!   any health change or exit in the window fails the row. The limit column
//!   is the baseline measured in the same run: the same 200 servers under a
//!   daemon without a healthcheck (0 probes). A derived row gives the CPU
//!   above the baseline per probe.
//!
//! The limit of the latency rows, in the same run: the bench spawns the
//! same 200 servers back to back, then GETs each one (a refused connect is
//! retried every millisecond) until all have answered; per server, the time
//! from its spawn to its answer. That is the floor: the first probe runs at
//! `start_period` (0) after RUNNING, so only the server's own start-up
//! stands between the spawn and a passing probe, unless that first probe
//! finds the port still closed and the next one waits `interval`.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, stream::MaybeTlsStream, Message};

use crate::harness::*;
use crate::Opts;

/// Probe period (seconds), as configured.
const INTERVAL: u64 = 1;
/// The daemon must have made every instance healthy within this.
const HEALTHY_BY: Duration = Duration::from_secs(60);
/// Set by the limit for its servers: the bench's pid.
const PARENT_VAR: &str = "TM_BENCH_PARENT";
/// What every request gets.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Child mode `bench --serve PORT`: answers every request on
/// 127.0.0.1:PORT with [`RESPONSE`], one connection at a time, until killed.
pub fn serve(port: u16) -> ! {
    // The limit's servers are spawned without a pre_exec hook (a fork per
    // spawn would make the limit slower than need be), so they ask for the
    // parent-death signal themselves; too late if the bench is gone already.
    if let Some(parent) = std::env::var(PARENT_VAR)
        .ok()
        .and_then(|p| p.parse::<libc::pid_t>().ok())
    {
        unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        if unsafe { libc::getppid() } != parent {
            std::process::exit(1);
        }
    }
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench --serve {port}: {e}");
            std::process::exit(1)
        }
    };
    let mut buf = [0u8; 2048];
    loop {
        let Ok((mut s, _)) = listener.accept() else {
            continue;
        };
        // A client that sends nothing must not stall the others for long.
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut len = 0;
        // Read the whole request head, so that closing sends a FIN, not a reset.
        while len < buf.len() {
            match s.read(&mut buf[len..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => len += k,
            }
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let _ = s.write_all(RESPONSE);
    }
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Whether all of `base .. base + n` can be bound now (as the servers bind:
/// std sets SO_REUSEADDR, so a port in TIME_WAIT counts as free).
fn ports_free(base: u16, n: usize) -> bool {
    (0..n as u16).all(|i| TcpListener::bind(localhost(base + i)).is_ok())
}

/// A BASE whose `n` ports are all free, between 10000 and the ephemeral
/// range. The ranges are tried from one chosen by the bench's pid, so that
/// two benches on one machine are unlikely to pick the same one.
fn pick_base(n: usize) -> Res<u16> {
    const LOW: usize = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32768);
    let width = n.div_ceil(100).max(1) * 100;
    let slots = ephemeral.saturating_sub(LOW) / width;
    let first = std::process::id() as usize % slots.max(1);
    (0..slots)
        .map(|k| (LOW + (first + k) % slots * width) as u16)
        .find(|&b| ports_free(b, n))
        .ok_or_else(|| format!("no {n} free ports in a row between {LOW} and {ephemeral}"))
}

/// Waits (a little) for the servers of the previous phase to let go of the ports.
fn await_ports(base: u16, n: usize) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ports_free(base, n) {
        if Instant::now() > deadline {
            return Err(format!(
                "ports {base}–{} are not free (taken by another program?)",
                base as usize + n - 1
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `n` servers, 100 instances per service, with the probe or without.
fn config(n: usize, base: u16, probe: bool) -> String {
    let exe = self_exe();
    let services: String = (0..n.div_ceil(100))
        .map(|i| {
            let count = (n - i * 100).min(100);
            let first = base as usize + i * 100;
            let check = match probe {
                true => format!(
                    "healthcheck = {{ http = 'http://127.0.0.1:{{instance+{first}}}/', \
                     interval = {INTERVAL}, timeout = 1, retries = 3 }}, "
                ),
                false => String::new(),
            };
            format!(
                "h{i} = {{ cmd = '{exe} --serve {{instance+{first}}}', numprocs = {count}, \
                 starttime = 0, stoptime = 2, {check}}},\n",
                exe = exe.display()
            )
        })
        .collect();
    format!("return {{ services = {{\n{services}}} }}\n")
}

fn unix_now() -> f64 {
    now_micros() as f64 / 1e6
}

/// p-th percentile (nearest rank) of `xs`.
fn percentile(xs: &mut [f64], p: f64) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if xs.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0 * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

/// One daemon run with the healthcheck.
struct Probed {
    /// Launch → the last instance healthy, ms.
    all_healthy_ms: f64,
    /// RUNNING → healthy of each instance timed, ms.
    per_instance: Vec<f64>,
    /// Instances healthy only by a catch-up `status` (not timed).
    untimed: usize,
    /// Instances whose RUNNING time came from a catch-up `status`.
    from_status: usize,
    /// Times the daemon closed the subscription before all were healthy.
    drops: usize,
    /// Daemon CPU over the steady window, % of one core.
    cpu_pct: f64,
    /// Health changes, transitions and restarts during the steady window,
    /// and whether the subscription was closed in it.
    changes: usize,
}

/// Subscribes on a new connection (the old one, if any, is dropped).
fn subscribe(d: &mut Daemon) -> Res<()> {
    d.sub = None;
    let (mut sub, _) =
        tungstenite::connect(format!("ws://127.0.0.1:{}/", d.port)).map_err(|e| e.to_string())?;
    let r = call(&mut sub, 0, "subscribe", &[])?;
    if r["ok"] != true {
        return Err(format!("subscribe: {r}"));
    }
    d.sub = Some(sub);
    Ok(())
}

/// The next pushed event: `Ok(None)` on timeout, `Err` when the
/// subscription is closed (unlike `Daemon::event`, which cannot tell).
fn next_event(d: &mut Daemon, timeout: Duration) -> Res<Option<Value>> {
    let sub = d.sub.as_mut().ok_or("not subscribed")?;
    if let MaybeTlsStream::Plain(s) = sub.get_mut() {
        let _ = s.set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
    }
    match sub.read() {
        Ok(Message::Text(t)) => Ok(serde_json::from_str(&t).ok()),
        Ok(Message::Close(c)) => Err(format!("closed: {c:?}")),
        Ok(_) => Ok(None),
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Reads the subscription for `secs`, measuring the daemon's CPU over
/// that time; returns the CPU (% of a core) and the events seen (health
/// changes, transitions; a closed subscription counts as one), which a
/// steady run has none of.
fn steady(d: &mut Daemon, secs: f64) -> (f64, usize) {
    let c0 = proc_cpu_secs(d.pid());
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let mut changes = 0;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match next_event(d, left) {
            Ok(Some(v)) if v["event"] == "health" || v["event"] == "transition" => {
                eprintln!("bench: HEALTH: while steady: {}", clip(&v.to_string(), 300));
                changes += 1
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("bench: HEALTH: the subscription ended in the steady window: {e}");
                changes += 1;
                std::thread::sleep(left);
            }
        }
    }
    let c1 = proc_cpu_secs(d.pid());
    ((c1 - c0) / t0.elapsed().as_secs_f64() * 100.0, changes)
}

/// What the events and the catch-up `status` replies said of each instance.
struct Track {
    /// Unix seconds (the daemon's `time`) of each RUNNING transition seen.
    running: HashMap<String, f64>,
    /// RUNNING dated by a catch-up status (reply time − `uptime`).
    running_by_status: HashMap<String, f64>,
    /// The daemon's `time` of each instance's first healthy event.
    healthy: HashMap<String, f64>,
    /// Healthy, by event or by a catch-up status.
    known_healthy: HashSet<String>,
    /// When the last instance became known healthy.
    last_healthy: Instant,
}

impl Track {
    fn new(t0: Instant) -> Track {
        Track {
            running: HashMap::new(),
            running_by_status: HashMap::new(),
            healthy: HashMap::new(),
            known_healthy: HashSet::new(),
            last_healthy: t0,
        }
    }

    fn is_healthy(&mut self, name: &str) {
        if self.known_healthy.insert(name.to_string()) {
            self.last_healthy = Instant::now();
        }
    }

    fn note(&mut self, v: &Value) {
        let name = v["name"].as_str().unwrap_or("?");
        let time = v["time"].as_f64().unwrap_or(f64::NAN);
        match v["event"].as_str() {
            Some("transition") if v["to"] == "RUNNING" => {
                self.running.entry(name.to_string()).or_insert(time);
            }
            Some("health") if v["health"] == "healthy" => {
                self.healthy.entry(name.to_string()).or_insert(time);
                self.is_healthy(name);
            }
            Some("health") => {
                // Unhealthy on the way up: the server did not answer thrice.
                eprintln!("bench: HEALTH: {name} is {}: {}", v["health"], v["output"]);
            }
            _ => {}
        }
    }

    /// Takes in a `status` that was asked after the subscription began:
    /// what happened before it, whose events were missed.
    fn catch_up(&mut self, status: &[Value], at: f64) {
        for i in status {
            let name = i["name"].as_str().unwrap_or("?");
            if i["state"] == "RUNNING" {
                if let Some(up) = i["uptime"].as_f64() {
                    self.running_by_status
                        .entry(name.to_string())
                        .or_insert(at - up);
                }
            }
            if i["health"] == "healthy" {
                self.is_healthy(name);
            }
        }
    }
}

fn probed(bin: &Path, n: usize, base: u16, secs: f64) -> Res<Probed> {
    await_ports(base, n)?;
    let t0 = Instant::now();
    let mut d = Daemon::start_logged(bin, "health", &config(n, base, true))?;
    d.connect_plain()?;
    let mut t = Track::new(t0);
    let deadline = t0 + HEALTHY_BY;
    let mut drops = 0;
    // Subscribe, then catch up with what happened before by one `status`
    // (events after the subscription are all pushed); again if the daemon
    // drops the subscription on the way.
    'subscription: loop {
        subscribe(&mut d)?;
        let asked = unix_now();
        let status = d.status()?;
        t.catch_up(&status, (asked + unix_now()) / 2.0);
        while t.known_healthy.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let sick: Vec<String> = d
                    .status()?
                    .iter()
                    .filter(|i| i["health"] != "healthy")
                    .take(5)
                    .map(|i| format!("{} {} {}", i["name"], i["state"], i["health"]))
                    .collect();
                return Err(format!(
                    "{} of {n} instances healthy after {} s (e.g. {})",
                    t.known_healthy.len(),
                    HEALTHY_BY.as_secs(),
                    sick.join(", ")
                ));
            }
            match next_event(&mut d, left) {
                Ok(Some(v)) => t.note(&v),
                Ok(None) => {}
                Err(e) => {
                    drops += 1;
                    eprintln!(
                        "bench: HEALTH: the daemon ended the subscription ({e}) with {} of {n} healthy; subscribing again",
                        t.known_healthy.len()
                    );
                    continue 'subscription;
                }
            }
        }
        break;
    }
    // A catch-up status may count an instance healthy whose event is still
    // on its way: take those in (exact times) before the steady window.
    while let Ok(Some(v)) = next_event(&mut d, Duration::from_millis(300)) {
        t.note(&v);
    }
    let all_healthy_ms = t.last_healthy.duration_since(t0).as_secs_f64() * 1000.0;
    let mut per_instance = Vec::new();
    let mut from_status = 0;
    for (name, h) in &t.healthy {
        let running = match t.running.get(name) {
            Some(r) => Some(*r),
            None => t.running_by_status.get(name).copied(),
        };
        if let Some(r) = running {
            per_instance.push((h - r) * 1000.0);
            from_status += usize::from(!t.running.contains_key(name));
        }
    }
    let untimed = n - per_instance.len();
    let (cpu_pct, changes) = steady(&mut d, secs);
    let restarts: u64 = d
        .status()?
        .iter()
        .map(|i| i["restarts"].as_u64().unwrap_or(0))
        .sum();
    Ok(Probed {
        all_healthy_ms,
        per_instance,
        untimed,
        from_status,
        drops,
        cpu_pct,
        changes: changes + restarts as usize,
    })
}

/// The same servers without a healthcheck: the daemon's CPU while steady,
/// with a subscriber connected as in the probed run.
fn baseline(bin: &Path, n: usize, base: u16, secs: f64) -> Res<(f64, usize)> {
    await_ports(base, n)?;
    let mut d = Daemon::start_logged(bin, "health0", &config(n, base, false))?;
    d.connect_plain()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = d.status()?;
        if s.len() == n && s.iter().all(|i| i["state"] == "RUNNING") {
            break;
        }
        if Instant::now() > deadline {
            return Err("the servers without a healthcheck did not all reach RUNNING".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A server that cannot bind exits at once: let that show.
    std::thread::sleep(Duration::from_millis(200));
    subscribe(&mut d)?;
    let (cpu, changes) = steady(&mut d, secs);
    let restarts: u64 = d
        .status()?
        .iter()
        .map(|i| i["restarts"].as_u64().unwrap_or(0))
        .sum();
    Ok((cpu, changes + restarts as usize))
}

/// One GET; true on a 200.
fn get(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(localhost(port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let req = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 256];
    let mut len = 0;
    while len < 12 {
        match s.read(&mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => len += k,
        }
    }
    buf[..len].starts_with(b"HTTP/1.1 200")
}

/// The limit: the bench spawns the servers back to back (posix_spawn, as
/// std does without a pre_exec hook), then GETs each until it answers. Returns spawn of the first → last answer (ms) and each
/// server's spawn → answer (ms).
fn limit(n: usize, base: u16) -> Res<(f64, Vec<f64>)> {
    await_ports(base, n)?;
    let exe = self_exe();
    let mut kids = Kids::default();
    let t0 = Instant::now();
    let mut spawned = Vec::with_capacity(n);
    for i in 0..n {
        let c = Command::new(&exe)
            .args(["--serve", &(base as usize + i).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env(PARENT_VAR, std::process::id().to_string())
            .spawn()
            .map_err(|e| e.to_string())?;
        spawned.push(Instant::now());
        kids.0.push(c);
    }
    let mut answered: Vec<Option<Instant>> = vec![None; n];
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.iter().any(Option::is_none) {
        for (i, a) in answered.iter_mut().enumerate() {
            if a.is_none() && get(base + i as u16) {
                *a = Some(Instant::now());
            } else if a.is_none() {
                if let Ok(Some(st)) = kids.0[i].try_wait() {
                    return Err(format!(
                        "the server on port {} exited: {st}",
                        base as usize + i
                    ));
                }
            }
        }
        if Instant::now() > deadline {
            return Err("the bench's own servers did not all answer in 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let last = answered.iter().flatten().max().copied().unwrap_or(t0);
    let per = answered
        .iter()
        .zip(&spawned)
        .map(|(a, s)| a.map_or(f64::NAN, |a| a.duration_since(*s).as_secs_f64() * 1000.0))
        .collect();
    drop(kids);
    Ok((last.duration_since(t0).as_secs_f64() * 1000.0, per))
}

pub fn health(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
    let n = opts.n;
    let secs = if opts.quick { 4.0 } else { 10.0 };
    let base = pick_base(n)?;
    eprintln!(
        "bench: HEALTH: ports {base}–{}, CPU windows of {secs} s",
        base as usize + n - 1
    );
    let mut all = Vec::new();
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    let mut cpu = Vec::new();
    let mut timed = Vec::new();
    // Untimed instances, RUNNING times from a status, changes while
    // steady, subscriptions the daemon closed: summed over the runs.
    let mut notes = (0, 0, 0, 0);
    for _ in 0..runs(opts, 3, 1) {
        let mut r = probed(bin, n, base, secs)?;
        all.push(r.all_healthy_ms);
        p50.push(percentile(&mut r.per_instance, 50.0));
        p99.push(percentile(&mut r.per_instance, 99.0));
        timed.push(r.per_instance.len());
        cpu.push(r.cpu_pct);
        notes.0 += r.untimed;
        notes.1 += r.from_status;
        notes.2 += r.changes;
        notes.3 += r.drops;
    }
    let mut base_cpu = Vec::new();
    let mut base_changes = 0;
    for _ in 0..runs(opts, 3, 1) {
        let (c, k) = baseline(bin, n, base, secs)?;
        base_cpu.push(c);
        base_changes += k;
    }
    let (mut l_all, mut l50, mut l99) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs(opts, 5, 2) {
        let (t, mut per) = limit(n, base)?;
        l_all.push(t);
        l50.push(percentile(&mut per, 50.0));
        l99.push(percentile(&mut per, 99.0));
    }
    let (o_all, l_all) = (stat(all), stat(l_all));
    let (o50, l50, o99, l99) = (stat(p50), stat(l50), stat(p99), stat(l99));
    let (c, b) = (stat(cpu), stat(base_cpu));
    let limit_what = "limit: the bench spawning the same servers, then one GET each";
    let timed_what = format!(
        "{} of {} timed, {} of them RUNNING by a catch-up status",
        timed.iter().sum::<usize>(),
        timed.iter().sum::<usize>() + notes.0,
        notes.1
    );
    let drops = notes.3;
    let mut rows = vec![
        Row {
            id: "HEALTH",
            what: format!(
                "{n} × http server, probe every {INTERVAL} s: launch → all healthy; \
                 subscription closed by the daemon {drops} times ({limit_what})"
            ),
            unit: "ms",
            ours: Some(o_all),
            limit: Some(l_all),
            supervisord: None,
            ratio: Some(o_all.median / l_all.median),
            target: "reported; the subscriber is never dropped".into(),
            pass: Some(drops == 0),
        },
        Row {
            id: "HEALTH",
            what: format!("per instance RUNNING → healthy, p50 ({timed_what})"),
            unit: "ms",
            ours: Some(o50),
            limit: Some(l50),
            supervisord: None,
            ratio: Some(o50.median / l50.median),
            target: "reported (limit: spawn → first answer)".into(),
            pass: None,
        },
        Row {
            id: "HEALTH",
            what: "per instance RUNNING → healthy, p99".into(),
            unit: "ms",
            ours: Some(o99),
            limit: Some(l99),
            supervisord: None,
            ratio: Some(o99.median / l99.median),
            target: "reported (limit: spawn → first answer)".into(),
            pass: None,
        },
        Row {
            id: "HEALTH",
            what: format!(
                "daemon CPU while steady, {n} × http probe every {INTERVAL} s over {secs} s; \
                 {} health changes, transitions or restarts (limit: the same {n} servers \
                 without a healthcheck, {base_changes} changes)",
                notes.2
            ),
            unit: "% of a core",
            ours: Some(c),
            limit: Some(b),
            supervisord: None,
            ratio: None,
            target: "< 5 %, no changes".into(),
            pass: Some(c.median < 5.0 && notes.2 == 0),
        },
    ];
    // CPU above the baseline per probe: n probes per interval.
    let per_probe = (c.median - b.median) / 100.0 / (n as f64 / INTERVAL as f64) * 1e6;
    rows.push(Row {
        id: "HEALTH",
        what: "daemon CPU per probe (steady CPU above the baseline ÷ probes per second)".into(),
        unit: "µs",
        ours: Some(stat(vec![per_probe])),
        limit: None,
        supervisord: None,
        ratio: None,
        target: "reported".into(),
        pass: None,
    });
    Ok(rows)
}
