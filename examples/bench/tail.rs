//! TAIL (SPEC §16 "tail -f latency"): 200 instances each write a stamped
//! line every 100 ms; one WebSocket connection follows all of them, and
//! every line is timed from the child's write to the `output` event that
//! carries it. The follow is one `logs` request (`args: []`, `opts:
//! {"follow": true, "lines": 1}`: every instance with a log file); a daemon
//! that has `tail` but not `logs` gets one `tail` request per instance with
//! `{"follow": true}` on the same connection instead.
//!
//! The children are this executable (`bench --tick 100`): each line is
//! `SEQ MICROS\n`, MICROS the CLOCK_REALTIME just before the write(2), the
//! clock the bench reads when an event arrives (same machine). Lines are
//! timed over a window that opens one second after every follow was
//! answered; the bench then reads one more second, and checks that the
//! stream of each instance has no gap or repeat (SEQ), and that every line
//! its file holds with a stamp inside the window reached the follower.
//!
//! Two daemon variants: the default rotation (the daemon's writer appends
//! to the file, so it knows of every chunk) and `stdout_maxbytes = 0` (the
//! child writes the file itself, the daemon must notice the file grow).
//! The limit, in the same run: the same 200 children writing pipes that the
//! bench reads in one poll(2) loop, the delay the machine's scheduler alone
//! adds. A daemon without `tail` (the reply is `unknown_command`) gives a
//! "not supported" row and the rest of the run goes on.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, stream::MaybeTlsStream, Message};

use crate::harness::*;
use crate::Opts;

/// Each child writes a line this often.
const PERIOD_MS: u64 = 100;
/// Lines are timed only from this long after the follows are in place.
const WARMUP: Duration = Duration::from_secs(1);
/// Read this long after the window closes, for lines still on the way.
const GRACE: Duration = Duration::from_secs(1);

/// Child mode `bench --tick MS`: writes `SEQ MICROS\n` every MS
/// milliseconds until its stdout is closed or it is killed.
pub fn tick(ms: u64) -> ! {
    // fd 1 is not owned here: never close it through File's drop.
    let mut out = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
    let period = Duration::from_millis(ms.max(1));
    let start = Instant::now();
    for seq in 0u64.. {
        let line = format!("{seq} {}\n", now_micros());
        if out.write_all(line.as_bytes()).is_err() {
            break;
        }
        let next = start + period * (seq + 1) as u32;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    std::process::exit(0)
}

/// What one stream delivered so far.
#[derive(Default)]
struct Stream {
    /// A line whose end has not arrived yet.
    partial: String,
    /// SEQ of the last complete line.
    last: Option<u64>,
    /// Lines stamped inside the window.
    in_window: u64,
}

/// The lines of every stream, timed.
struct Tally {
    /// Stamps (µs) of the window, inclusive; empty until it opens.
    window: (u64, u64),
    /// Child write → arrival, µs, of each line stamped inside the window.
    latencies: Vec<u64>,
    /// Lines whose SEQ was not the previous one + 1 (lost or repeated).
    gaps: u64,
    /// Lines that do not parse.
    garbled: u64,
    streams: HashMap<String, Stream>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            window: (u64::MAX, 0),
            latencies: Vec::new(),
            gaps: 0,
            garbled: 0,
            streams: HashMap::new(),
        }
    }

    /// Text that reached the reader at `now` (µs) for stream `name`.
    fn feed(&mut self, name: &str, text: &str, now: u64) {
        let s = self.streams.entry(name.to_string()).or_default();
        s.partial.push_str(text);
        while let Some(nl) = s.partial.find('\n') {
            let line: String = s.partial.drain(..=nl).collect();
            let Some((seq, stamp)) = parse(&line) else {
                self.garbled += 1;
                continue;
            };
            if s.last.is_some_and(|l| seq != l + 1) {
                self.gaps += 1;
            }
            s.last = Some(seq);
            if (self.window.0..=self.window.1).contains(&stamp) {
                self.latencies.push(now.saturating_sub(stamp));
                s.in_window += 1;
            }
        }
    }

    /// Opens the window `WARMUP` from now for `secs` seconds; returns when it
    /// opens and closes.
    fn open_window(&mut self, secs: f64) -> (Instant, Instant) {
        let start = Instant::now() + WARMUP;
        let from = now_micros() + WARMUP.as_micros() as u64;
        let len = Duration::from_secs_f64(secs);
        self.window = (from, from + len.as_micros() as u64);
        (start, start + len)
    }

    /// p-th percentile (nearest rank), in ms.
    fn percentile(&mut self, p: f64) -> f64 {
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        if n == 0 {
            return f64::NAN;
        }
        let rank = ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n);
        self.latencies[rank - 1] as f64 / 1000.0
    }
}

fn parse(line: &str) -> Option<(u64, u64)> {
    let mut it = line.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// One daemon variant's outcome.
enum Outcome {
    Measured {
        /// Which request followed the logs.
        how: &'static str,
        tally: Tally,
        /// Lines in the files, stamped inside the window, that never arrived.
        missing: u64,
        /// Daemon CPU over the window, % of one core.
        cpu_pct: f64,
    },
    /// The daemon answered the first `tail` with this error.
    Refused { code: String, message: String },
    /// Something else went wrong (the daemon refused the config, a reply
    /// was an error, the connection closed).
    Failed(String),
}

fn service(i: usize) -> String {
    format!("t{i:03}")
}

/// `n` tickers, one service each (instances of one service would share a
/// file), `extra` added to every service.
fn config(n: usize, extra: &str) -> String {
    let exe = self_exe();
    format!(
        "local s = {{}}\n\
         for i = 0, {last} do\n  \
           s[string.format('t%03d', i)] = {{ cmd = '{exe} --tick {PERIOD_MS}', \
             stdout = string.format('logs/t%03d.log', i), starttime = 0, stoptime = 2, {extra} }}\n\
         end\n\
         return {{ services = s }}\n",
        last = n - 1,
        exe = exe.display(),
    )
}

fn follow_daemon(bin: &Path, n: usize, secs: f64, extra: &str) -> Res<Outcome> {
    let mut d = Daemon::start_logged(bin, "tail", &config(n, extra))?;
    d.connect()?;
    d.wait_until(Duration::from_secs(120), |s| {
        s.len() == n && s.iter().all(|i| i["state"] == "RUNNING")
    })?;
    // No more transitions are coming: do not leave an unread subscriber.
    d.sub = None;
    let (mut ws, _) =
        tungstenite::connect(format!("ws://127.0.0.1:{}/", d.port)).map_err(|e| e.to_string())?;
    let name = |i: usize| format!("{}:0", service(i));
    let mut tally = Tally::new();
    let error = |r: &Value| {
        (
            r["error"]["code"].as_str().unwrap_or("?").to_string(),
            r["error"]["message"].as_str().unwrap_or("").to_string(),
        )
    };
    // One `logs` request follows every instance; a daemon that has `tail`
    // but not `logs` gets one `tail` per instance instead.
    let logs = call_opts(
        &mut ws,
        1,
        "logs",
        &[],
        Some(&json!({"lines": 1, "follow": true})),
    )?;
    let mut pending = 0;
    let how;
    if logs["ok"] == true {
        how = "one `logs` follow";
        // Each entry is one line, without its newline.
        for l in logs["data"]["lines"].as_array().into_iter().flatten() {
            let text = l["text"].as_str().unwrap_or("").trim_end_matches('\n');
            tally.feed(l["name"].as_str().unwrap_or("?"), &format!("{text}\n"), 0);
        }
    } else if error(&logs).0 != "unknown_command" {
        return Err(format!("logs: {}", logs["error"]));
    } else {
        how = "a `tail` follow per instance";
        let opts = json!({"stream": "stdout", "lines": 1, "follow": true});
        let first = call_opts(&mut ws, 1, "tail", &[&name(0)], Some(&opts))?;
        if first["ok"] != true {
            let (code, message) = error(&first);
            return Ok(Outcome::Refused { code, message });
        }
        tally.feed(&name(0), first["data"]["text"].as_str().unwrap_or(""), 0);
        for i in 1..n {
            send_opts(&mut ws, i as u64 + 1, "tail", &[&name(i)], Some(&opts))?;
        }
        pending = n - 1;
    }
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
    }
    let mut events = 0u64;
    let mut window: Option<(Instant, Instant)> = None;
    let mut cpu: (Option<f64>, Option<f64>) = (None, None);
    let replies_by = Instant::now() + Duration::from_secs(30);
    loop {
        let now = Instant::now();
        match window {
            None if pending == 0 => window = Some(tally.open_window(secs)),
            None if now > replies_by => {
                return Err(format!("{pending} tail replies missing after 30 s"));
            }
            Some((start, _)) if cpu.0.is_none() && now >= start => {
                cpu.0 = Some(proc_cpu_secs(d.pid()));
            }
            Some((_, end)) if cpu.1.is_none() && now >= end => {
                cpu.1 = Some(proc_cpu_secs(d.pid()));
            }
            Some((_, end)) if now >= end + GRACE => break,
            _ => {}
        }
        let msg = match ws.read() {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(c)) => return Err(format!("the daemon closed the follow: {c:?}")),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.to_string()),
        };
        let at = now_micros();
        let v: Value = serde_json::from_str(&msg).map_err(|e| e.to_string())?;
        if v["event"] == "output" {
            events += 1;
            let name = v["name"].as_str().unwrap_or("?");
            tally.feed(name, v["text"].as_str().unwrap_or(""), at);
        } else if v.get("event").is_none() {
            let i = v["id"].as_u64().unwrap_or(0) as usize;
            if v["ok"] != true {
                return Err(format!(
                    "tail {}: {}",
                    name(i.saturating_sub(1)),
                    v["error"]
                ));
            }
            pending = pending.saturating_sub(1);
            tally.feed(
                &name(i.saturating_sub(1)),
                v["data"]["text"].as_str().unwrap_or(""),
                at,
            );
        }
    }
    if events == 0 {
        return Ok(Outcome::Refused {
            code: "no output events".into(),
            message: "tail answered but nothing was followed".into(),
        });
    }
    // Every line the files hold inside the window must have arrived.
    let mut missing = 0;
    for i in 0..n {
        let path = d.dir.join(format!("logs/{}.log", service(i)));
        let mut in_file = 0u64;
        for f in crate::output::log_files(&path) {
            let mut text = String::new();
            let _ = File::open(&f).and_then(|mut f| f.read_to_string(&mut text));
            in_file += text
                .lines()
                .filter_map(parse)
                .filter(|(_, t)| (tally.window.0..=tally.window.1).contains(t))
                .count() as u64;
        }
        let got = tally.streams.get(&name(i)).map_or(0, |s| s.in_window);
        missing += in_file.saturating_sub(got);
    }
    let cpu_pct = match cpu {
        (Some(a), Some(b)) => (b - a) / secs * 100.0,
        _ => f64::NAN,
    };
    Ok(Outcome::Measured {
        how,
        tally,
        missing,
        cpu_pct,
    })
}

/// The limit: the same children writing pipes, read by one poll(2) loop.
fn pipe_limit(n: usize, secs: f64) -> Res<Tally> {
    let exe = self_exe();
    let mut kids = Kids::default();
    let mut pipes = Vec::new();
    for _ in 0..n {
        let mut c = Command::new(&exe)
            .args(["--tick", &PERIOD_MS.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .die_with_parent(libc::SIGKILL)
            .spawn()
            .map_err(|e| e.to_string())?;
        pipes.push(c.stdout.take().ok_or("no pipe")?);
        kids.0.push(c);
    }
    let mut tally = Tally::new();
    let (_, end) = tally.open_window(secs);
    let mut fds: Vec<libc::pollfd> = pipes
        .iter()
        .map(|p| libc::pollfd {
            fd: p.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let names: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let mut buf = vec![0u8; 64 << 10];
    while Instant::now() < end + GRACE {
        // SAFETY: a valid array of pollfd of the length given.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        if r <= 0 {
            continue;
        }
        let at = now_micros();
        for (i, p) in fds.iter_mut().enumerate() {
            if p.revents & (libc::POLLIN | libc::POLLHUP) == 0 {
                continue;
            }
            let k = match pipes[i].read(&mut buf) {
                Ok(0) | Err(_) => {
                    // A child that died: stop polling its pipe.
                    p.fd = -1;
                    continue;
                }
                Ok(k) => k,
            };
            tally.feed(&names[i], &String::from_utf8_lossy(&buf[..k]), at);
        }
    }
    drop(pipes);
    drop(kids);
    Ok(tally)
}

pub fn tail_latency(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
    let n = opts.n;
    let secs = if opts.quick { 4.0 } else { 10.0 };
    let variants = [
        ("F written by the daemon (default rotation)", ""),
        (
            "F written by the child (`stdout_maxbytes = 0`)",
            "stdout_maxbytes = 0",
        ),
    ];
    let mut outcomes = Vec::new();
    for (label, extra) in variants {
        let o = follow_daemon(bin, n, secs, extra).unwrap_or_else(Outcome::Failed);
        let refused = matches!(o, Outcome::Refused { .. });
        outcomes.push((label, o));
        if refused {
            // The same daemon refuses the other variant too.
            break;
        }
    }
    let supported = outcomes
        .iter()
        .any(|(_, o)| matches!(o, Outcome::Measured { .. }));
    let mut limit = if supported {
        Some(pipe_limit(n, secs)?)
    } else {
        None
    };
    let (l50, l99) = match &mut limit {
        Some(t) => (Some(t.percentile(50.0)), Some(t.percentile(99.0))),
        None => (None, None),
    };
    let one = |x: f64| Stat {
        median: x,
        min: x,
        max: x,
    };
    let what = format!(
        "`tail -f` latency, {n} instances × a line per {PERIOD_MS} ms, one connection following all"
    );
    let mut rows = Vec::new();
    for (label, o) in outcomes {
        match o {
            Outcome::Refused { code, message } => rows.push(Row {
                id: "TAIL",
                what: format!("{what}: not supported by this daemon ({code}: {message})"),
                unit: "ms",
                ours: None,
                limit: None,
                supervisord: None,
                ratio: None,
                target: "p99 < 100 ms".into(),
                pass: None,
            }),
            Outcome::Failed(e) => rows.push(Row {
                id: "TAIL",
                what: format!("{what}, {label}: failed: {e}"),
                unit: "ms",
                ours: None,
                limit: None,
                supervisord: None,
                ratio: None,
                target: "p99 < 100 ms".into(),
                pass: Some(false),
            }),
            Outcome::Measured {
                how,
                mut tally,
                missing,
                cpu_pct,
            } => {
                let (p50, p99) = (tally.percentile(50.0), tally.percentile(99.0));
                let lines = tally.latencies.len();
                let bad = tally.gaps + tally.garbled + missing;
                rows.push(Row {
                    id: "TAIL",
                    what: format!("{what} ({how}), {label}: p50"),
                    unit: "ms",
                    ours: Some(one(p50)),
                    limit: l50.map(one),
                    supervisord: None,
                    ratio: None,
                    target: "reported (limit: pipes read by a poll loop)".into(),
                    pass: None,
                });
                rows.push(Row {
                    id: "TAIL",
                    what: format!(
                        "{what} ({how}), {label}: p99 over {lines} lines; {} out of order, {missing} lost or later than {} s",
                        tally.gaps + tally.garbled,
                        GRACE.as_secs()
                    ),
                    unit: "ms",
                    ours: Some(one(p99)),
                    limit: l99.map(one),
                    supervisord: None,
                    ratio: None,
                    target: "p99 < 100 ms, none lost".into(),
                    pass: Some(p99 < 100.0 && bad == 0 && lines > 0),
                });
                rows.push(Row {
                    id: "TAIL",
                    what: format!("daemon CPU while following, {label}"),
                    unit: "% of a core",
                    ours: Some(one(cpu_pct)),
                    limit: None,
                    supervisord: None,
                    ratio: None,
                    target: "reported".into(),
                    pass: None,
                });
            }
        }
    }
    Ok(rows)
}
