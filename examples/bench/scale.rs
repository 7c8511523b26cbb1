//! The start-up and scale workloads (SPEC §16, issue 16).
//!
//! - W1L: `N` × `sleep 3600` from launching the daemon until every one has
//!   exec'd, against the least a program can do: this executable in child
//!   mode (`bench --spawn-loop N`), launched the same way, `posix_spawnp`ing
//!   `sleep 3600` N times in a loop. Both are timed the same way, by the
//!   bench counting the children of the launched process whose command name
//!   became `sleep` ([`ExecCount`]: it reads `/proc/PID/task/*/children` and
//!   each child's `comm` once, so a poll costs little even at 10,000).
//! - SCALE: the same at 200, 1,000, 5,000 and 10,000 instances (100 per
//!   service, so 100 services × numprocs 100 at the top), with the daemon's
//!   RSS once all are RUNNING, a `status` round trip on an open connection
//!   (the whole reply read), a `reload` of the unchanged config, and `stop
//!   all` until its reply (every process reaped). Limits in the same run:
//!   the spawn loop above, and for `stop all` the same program then
//!   signalling and reaping (by pid) its `sleep`s. While the daemon
//!   spawns, another connection asks `status s0:0` (through the actor) in a
//!   loop: the slowest answer is the responsiveness row.
//!
//! Every process is stopped by pid: the daemons by their `Drop`, the spawn
//! loop's children by the spawn loop once its stdin closes.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::{self, Message};

use crate::harness::*;
use crate::Opts;

/// The instance counts of the scale curve.
pub const SIZES: [usize; 4] = [200, 1000, 5000, 10_000];

/// Child mode `bench --spawn-loop N`: posix_spawnp `sleep 3600` N times,
/// then wait for stdin to close, then SIGTERM (by pid) and reap them, and
/// print how long that took (ms): the limit of `stop all`.
pub fn spawn_loop(n: usize) -> ! {
    let argv = ["sleep", "3600"];
    let mut pids = Vec::with_capacity(n);
    for _ in 0..n {
        match posix_spawnp(&argv) {
            Ok(pid) => pids.push(pid),
            Err(_) => break,
        }
    }
    let mut buf = [0u8; 64];
    while matches!(std::io::stdin().read(&mut buf), Ok(k) if k > 0) {}
    // The `stop all` limit: signal every one, then reap each by pid.
    let t = Instant::now();
    for &p in &pids {
        unsafe { libc::kill(p, libc::SIGTERM) };
    }
    for &p in &pids {
        unsafe { libc::waitpid(p, std::ptr::null_mut(), 0) };
    }
    println!("{}", t.elapsed().as_secs_f64() * 1000.0);
    std::process::exit(0)
}

/// `posix_spawnp(argv)` with the bench's environment and stdio; the pid.
pub fn posix_spawnp(argv: &[&str]) -> Res<libc::pid_t> {
    let owned: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(*a).map_err(|e| e.to_string()))
        .collect::<Res<_>>()?;
    let mut ptrs: Vec<*mut libc::c_char> = owned.iter().map(|c| c.as_ptr() as *mut _).collect();
    ptrs.push(std::ptr::null_mut());
    extern "C" {
        static environ: *const *mut libc::c_char;
    }
    let mut pid: libc::pid_t = 0;
    // SAFETY: argv is NUL-terminated C strings ending in a null pointer;
    // no file actions or attributes.
    let rc = unsafe {
        libc::posix_spawnp(
            &mut pid,
            ptrs[0],
            std::ptr::null(),
            std::ptr::null(),
            ptrs.as_ptr(),
            environ,
        )
    };
    if rc != 0 {
        return Err(format!(
            "posix_spawnp: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    Ok(pid)
}

/// Counts the children of one process that exec'd a given program, reading
/// each child's name once.
pub struct ExecCount {
    pid: u32,
    comm: &'static str,
    /// Children already seen as the program.
    done: HashSet<u32>,
}

impl ExecCount {
    pub fn new(pid: u32, comm: &'static str) -> ExecCount {
        ExecCount {
            pid,
            comm,
            done: HashSet::new(),
        }
    }

    /// How many children have exec'd the program so far.
    pub fn poll(&mut self) -> usize {
        for t in fs::read_dir(format!("/proc/{}/task", self.pid))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(list) = fs::read_to_string(t.path().join("children")) else {
                continue;
            };
            for pid in list
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
            {
                if self.done.contains(&pid) {
                    continue;
                }
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim_end() == self.comm {
                    self.done.insert(pid);
                }
            }
        }
        self.done.len()
    }

    /// Polls until `n` children exec'd (or `timeout`); the time since `t0`.
    pub fn wait(&mut self, n: usize, t0: Instant, timeout: Duration) -> Res<f64> {
        loop {
            if self.poll() >= n {
                return Ok(t0.elapsed().as_secs_f64() * 1000.0);
            }
            if t0.elapsed() > timeout {
                return Err(format!("only {} of {n} processes exec'd", self.done.len()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The limit of W1L: launch the spawn loop, time until all N exec'd; and
/// the time it then takes to signal and reap them (ms, ms).
fn spawn_limit(n: usize) -> Res<(f64, f64)> {
    let t0 = Instant::now();
    let mut child = Command::new(self_exe())
        .args(["--spawn-loop", &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .die_with_parent(libc::SIGKILL)
        .spawn()
        .map_err(|e| e.to_string())?;
    let ms = ExecCount::new(child.id(), "sleep").wait(n, t0, Duration::from_secs(120));
    drop(child.stdin.take());
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let _ = child.wait();
    let stop = out
        .trim()
        .parse::<f64>()
        .map_err(|_| "the spawn loop did not report".to_string());
    Ok((ms?, stop?))
}

/// How many more processes this user may start: the least of pid_max,
/// threads-max and RLIMIT_NPROC, less the processes that exist.
fn process_room() -> usize {
    let read = |p: &str| {
        fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    };
    let mut nproc = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid struct.
    let ulimit = match unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut nproc) } {
        0 if nproc.rlim_cur != libc::RLIM_INFINITY => nproc.rlim_cur as usize,
        _ => usize::MAX,
    };
    let existing = process_count();
    read("/proc/sys/kernel/pid_max")
        .min(read("/proc/sys/kernel/threads-max"))
        .min(ulimit)
        .saturating_sub(existing)
}

/// Launches a daemon with `n` sleepers and times until all exec'd.
fn spawn_daemon(bin: &Path, n: usize, tag: &str) -> Res<(Daemon, f64)> {
    let lua = sleepers(n);
    let t0 = Instant::now();
    let d = Daemon::start(bin, tag, &lua)?;
    let ms = ExecCount::new(d.pid(), "sleep").wait(n, t0, Duration::from_secs(180))?;
    Ok((d, ms))
}

/// W1L: launch → all exec'd, daemon vs spawn loop, interleaved.
pub fn w1_launch(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
    let n = opts.n;
    // Pairs, limit first; the ratio is the median of the pairs' ratios
    // (the load on a shared machine changes from second to second).
    let (mut ours, mut limit, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs(opts, 11, 3) {
        let l = spawn_limit(n)?.0;
        let (d, ms) = spawn_daemon(bin, n, "w1l")?;
        drop(d);
        reap_orphans();
        ours.push(ms);
        limit.push(l);
        ratios.push(ms / l);
    }
    let (o, l) = (stat(ours), stat(limit));
    let ratio = stat(ratios).median;
    Ok(vec![Row {
        id: "W1L",
        what: format!(
            "{n} × sleep: daemon launch → all exec'd vs a posix_spawn loop launched alike"
        ),
        unit: "ms",
        ours: Some(o),
        limit: Some(l),
        supervisord: None,
        ratio: Some(ratio),
        target: "≤ 1.3× limit".into(),
        pass: Some(ratio <= 1.3),
    }])
}

/// One size of the scale curve (medians).
pub struct Point {
    pub n: usize,
    pub spawn: Stat,
    pub spawn_limit: Stat,
    pub rss: Stat,
    pub status: Stat,
    pub reload: Stat,
    pub stop: Stat,
    pub stop_limit: Stat,
    /// Slowest `status s0:0` answer while spawning.
    pub busy: Stat,
}

/// A request on an open connection, timed until its whole reply is read
/// (not parsed): what the daemon costs, without a client's rendering.
fn round_trip(ws: &mut Ws, id: u64, cmd: &str, args: &[&str]) -> Res<f64> {
    let t = Instant::now();
    send_opts(ws, id, cmd, args, None)?;
    loop {
        match ws.read().map_err(|e| e.to_string())? {
            Message::Text(t_) if t_.contains("\"ok\":true") || t_.contains("\"ok\": true") => break,
            Message::Text(t_) => return Err(format!("{cmd} failed: {}", clip(&t_, 200))),
            Message::Close(_) => return Err("closed".into()),
            _ => {}
        }
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn connect(port: u16) -> Res<Ws> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tungstenite::connect(format!("ws://127.0.0.1:{port}/")) {
            Ok((ws, _)) => return Ok(ws),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Asks `status s0:0` in a loop on its own thread until `done`; the
/// slowest answer (ms).
fn probe_while(port: u16, done: Arc<AtomicBool>) -> std::thread::JoinHandle<Res<f64>> {
    std::thread::spawn(move || {
        let mut ws = connect(port)?;
        let mut worst: f64 = 0.0;
        let mut id = 0;
        while !done.load(Ordering::Relaxed) {
            id += 1;
            worst = worst.max(round_trip(&mut ws, id, "status", &["s0:0"])?);
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(worst)
    })
}

fn one_size(bin: &Path, n: usize, reps: usize) -> Res<Point> {
    let mut v: [Vec<f64>; 8] = Default::default();
    for _ in 0..reps {
        let (spawn_l, stop_l) = spawn_limit(n)?;
        v[1].push(spawn_l);
        v[6].push(stop_l);
        let lua = sleepers(n);
        let t0 = Instant::now();
        let mut d = Daemon::start(bin, "scale", &lua)?;
        let done = Arc::new(AtomicBool::new(false));
        // The probe connects as soon as the daemon listens.
        let probe = probe_while(d.port, done.clone());
        let spawned = ExecCount::new(d.pid(), "sleep").wait(n, t0, Duration::from_secs(300));
        done.store(true, Ordering::Relaxed);
        let busy = probe.join().map_err(|_| "probe panicked".to_string())?;
        v[0].push(spawned?);
        v[7].push(busy?);
        d.connect_plain()?;
        d.wait_until(Duration::from_secs(120), |s| {
            s.len() == n && s.iter().all(|i| i["state"] == "RUNNING")
        })?;
        v[2].push(d.rss_kib() / 1024.0);
        let mut ws = connect(d.port)?;
        let mut st = Vec::new();
        for id in 0..5 {
            st.push(round_trip(&mut ws, id, "status", &[])?);
        }
        v[3].push(stat(st).median);
        let mut rl = Vec::new();
        for id in 10..13 {
            rl.push(round_trip(&mut ws, id, "reload", &[])?);
        }
        v[4].push(stat(rl).median);
        v[5].push(round_trip(&mut ws, 20, "stop", &["all"])?);
        let left = ExecCount::new(d.pid(), "sleep").poll();
        if left > 0 {
            return Err(format!("{left} sleeps left after stop all"));
        }
        drop(ws);
        drop(d);
        reap_orphans();
    }
    let [spawn, spawn_limit, rss, status, reload, stop, stop_limit, busy] = v.map(stat);
    Ok(Point {
        n,
        spawn,
        spawn_limit,
        rss,
        status,
        reload,
        stop,
        stop_limit,
        busy,
    })
}

pub fn scale(bin: &Path, opts: &Opts, plot: &Path) -> Res<Vec<Row>> {
    let room = process_room();
    let sizes: Vec<usize> = SIZES
        .iter()
        .copied()
        .filter(|&n| !opts.quick || n <= 5000)
        .filter(|&n| {
            // N sleeps at a time (the daemon's, or the limit's), and room
            // for what else runs on the machine meanwhile.
            let fits = n + 1000 <= room;
            if !fits {
                eprintln!("bench: SCALE {n} skipped: room for {room} more processes (pid_max, ulimit -u, threads-max)");
            }
            fits
        })
        .collect();
    let mut points = Vec::new();
    for &n in &sizes {
        let reps = match (opts.quick, n) {
            (true, _) => 1,
            (false, n) if n >= 5000 => 2,
            (false, 1000) => 3,
            _ => 5,
        };
        eprintln!("bench: SCALE {n} ...");
        points.push(one_size(bin, n, reps)?);
    }
    if let Err(e) = crate::plot::scale_png(&points, plot) {
        eprintln!("bench: cannot draw {}: {e}", plot.display());
    }
    let mut rows = Vec::new();
    let first = &points[0];
    for p in &points {
        let n = p.n;
        let ratio = p.spawn.median / p.spawn_limit.median;
        rows.push(Row {
            id: "SCALE",
            what: format!("{n}: launch → all exec'd"),
            unit: "ms",
            ours: Some(p.spawn),
            limit: Some(p.spawn_limit),
            supervisord: None,
            ratio: Some(ratio),
            target: "≤ 1.3× limit (linear in N)".into(),
            pass: Some(ratio <= 1.3),
        });
        let (rss_target, rss_ok) = match n {
            n if n <= 200 => ("< 8 MiB", p.rss.median < 8.0),
            n if n <= 1000 => ("≤ 20 MiB", p.rss.median <= 20.0),
            _ => ("≤ 64 MiB", p.rss.median <= 64.0),
        };
        rows.push(Row {
            id: "SCALE",
            what: format!("{n}: daemon RSS, all RUNNING"),
            unit: "MiB",
            ours: Some(p.rss),
            limit: None,
            supervisord: None,
            ratio: None,
            target: rss_target.into(),
            pass: Some(rss_ok),
        });
        rows.push(Row {
            id: "SCALE",
            what: format!("{n}: `status` round trip (whole reply)"),
            unit: "ms",
            ours: Some(p.status),
            limit: None,
            supervisord: None,
            ratio: None,
            target: "< 100 ms".into(),
            pass: Some(p.status.median < 100.0),
        });
        rows.push(Row {
            id: "SCALE",
            what: format!("{n}: `reload`, config unchanged"),
            unit: "ms",
            ours: Some(p.reload),
            limit: None,
            supervisord: None,
            ratio: None,
            target: "< 200 ms".into(),
            pass: Some(p.reload.median < 200.0),
        });
        let ratio = p.stop.median / p.stop_limit.median;
        rows.push(Row {
            id: "SCALE",
            what: format!("{n}: `stop all` → reply, none left"),
            unit: "ms",
            ours: Some(p.stop),
            limit: Some(p.stop_limit),
            supervisord: None,
            ratio: Some(ratio),
            target: "linear in N".into(),
            pass: None,
        });
        rows.push(Row {
            id: "SCALE",
            what: format!("{n}: slowest `status s0:0` while spawning"),
            unit: "ms",
            ours: Some(p.busy),
            limit: None,
            supervisord: None,
            ratio: None,
            target: "< 100 ms".into(),
            pass: Some(p.busy.median < 100.0),
        });
    }
    // How each cost per instance grows over the last decade of N (from
    // 1,000, where the daemon's state no longer fits the caches either, to
    // the largest size): 1.0 is linear. Spawning and stopping are compared
    // with the same growth of their limits (the machine itself spawns and
    // reaps more slowly with 10,000 processes).
    let base = points.iter().find(|p| p.n == 1000).unwrap_or(first);
    if let Some(last) = points.last().filter(|l| l.n > base.n) {
        let k = last.n as f64 / base.n as f64;
        let grow = |a: f64, b: f64| b / a / k;
        for (what, ours, limit) in [
            (
                "launch → all exec'd",
                grow(base.spawn.median, last.spawn.median),
                Some(grow(base.spawn_limit.median, last.spawn_limit.median)),
            ),
            (
                "`status`",
                grow(base.status.median, last.status.median),
                None,
            ),
            (
                "`reload`",
                grow(base.reload.median, last.reload.median),
                None,
            ),
            (
                "`stop all`",
                grow(base.stop.median, last.stop.median),
                Some(grow(base.stop_limit.median, last.stop_limit.median)),
            ),
        ] {
            let ratio = limit.map(|l| ours / l);
            rows.push(Row {
                id: "SCALE",
                what: format!("{what}: cost per instance at {} ÷ at {}", last.n, base.n),
                unit: "×",
                ours: Some(stat(vec![ours])),
                limit: limit.map(|l| stat(vec![l])),
                supervisord: None,
                ratio,
                target: match limit {
                    Some(_) => "≈ 1 (linear): ≤ 1.2× the limit's growth".into(),
                    None => "≈ 1 (linear): ≤ 1.2".into(),
                },
                pass: Some(ratio.unwrap_or(ours) <= 1.2),
            });
        }
    }
    Ok(rows)
}
