//! DASH (SPEC §16 "The dashboard with 1000 instances"): the first full
//! render of the dashboard in headless Chromium, `/metrics` latency, and
//! the page following a restart of every instance, all with 1000 instances
//! (`sleep`, 100 per service).
//!
//! Render: Chromium, driven over the DevTools protocol by the browser
//! tests' driver (`tests/it/cdp.rs`, included below), opens the page; the
//! figure is the page's own `performance.now()` when it sets `data-ready`:
//! from the navigation's start to the first status applied, every row
//! built, and laid out (the page marks it in the animation frame after the
//! rows are in the DOM, after a forced layout). Each run is a fresh
//! navigation. The limit, in the same run and browser: the very DOM the
//! page built, as static HTML without scripts (served by the bench), timed
//! the same way: what the browser alone needs to parse, style and lay out
//! those rows.
//!
//! Metrics: `GET /metrics` on a fresh connection each time (the daemon
//! closes every HTTP response), timed from connect to the last byte, and
//! checked to list every instance; the first scrape is a warm-up. The
//! limit: the bench itself reading `/proc/PID/stat` of every process once,
//! what a scrape must at least read for CPU and RSS.
//!
//! Burst: `Restart all` clicked in the page; the page's longest main-thread
//! task (a `longtask` PerformanceObserver) until it shows all 1000 RUNNING
//! again, and its main-thread busy time over that span (DevTools
//! `Performance.getMetrics`): whether the page keeps up and stays
//! responsive while thousands of events arrive.
//!
//! Without `/usr/bin/chromium` the workload fails with a message (the rest
//! of the run goes on).

#[path = "../../tests/it/cdp.rs"]
mod cdp;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;
use crate::Opts;

/// Instances on the page (SPEC §16).
const N: usize = 1000;
/// Render target (SPEC §16).
const RENDER_MS: f64 = 2000.0;
/// `/metrics` target (SPEC §16).
const METRICS_MS: f64 = 50.0;
const WAIT: Duration = Duration::from_secs(120);

pub fn dashboard(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
    if !cdp::available() {
        return Err(format!(
            "{} is not installed (apt-get install chromium)",
            cdp::CHROMIUM
        ));
    }
    let mut d = Daemon::start_logged(bin, "dash", &sleepers(N))?;
    d.connect()?;
    d.wait_until(WAIT, |s| {
        s.len() == N && s.iter().all(|i| i["state"] == "RUNNING")
    })
    .map_err(|e| format!("{N} instances RUNNING: {e}"))?;
    let page = format!("http://127.0.0.1:{}/", d.port);
    let mut b = cdp::Browser::launch(&d.dir, 1280, 860)?;

    // First full render, and the DOM it built for the limit.
    let mut ready = Vec::new();
    let mut phases: [Vec<f64>; 3] = Default::default();
    let mut built = String::new();
    for _ in 0..runs(opts, 5, 2) {
        b.goto("about:blank")?;
        b.goto(&page)?;
        b.wait_for(
            "the first render",
            "document.body.dataset.ready === '1'",
            WAIT,
        )?;
        let m = b.eval(
            "(() => { const m = n => performance.getEntriesByName(n)[0]?.startTime ?? NaN; \
             return [Number(document.body.dataset.readyMs), m('tm-open'), m('tm-status'), m('tm-built'), \
             document.querySelectorAll('tr[data-name]').length]; })()",
        )?;
        let rows = m[4].as_u64().unwrap_or(0);
        if rows != N as u64 {
            return Err(format!("the page shows {rows} rows, not {N}"));
        }
        ready.push(m[0].as_f64().unwrap_or(f64::NAN));
        for (i, p) in phases.iter_mut().enumerate() {
            p.push(m[i + 1].as_f64().unwrap_or(f64::NAN));
        }
        if built.is_empty() {
            built = b
                .eval(STATIC_COPY)?
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
    }
    let server = StaticPage::serve(built)?;
    let mut limit = Vec::new();
    for _ in 0..runs(opts, 5, 2) {
        b.goto("about:blank")?;
        b.goto(&server.url)?;
        b.wait_for(
            "the static copy",
            "document.body.dataset.ready === '1'",
            WAIT,
        )?;
        let ms = b.eval("Number(document.body.dataset.readyMs)")?;
        limit.push(ms.as_f64().unwrap_or(f64::NAN));
    }
    drop(server);

    // The page following a restart of all 1000.
    b.goto(&page)?;
    b.wait_for("the page", "document.body.dataset.ready === '1'", WAIT)?;
    b.call("Performance.enable", json!({}))?;
    b.eval(
        "window.longest = 0; new PerformanceObserver(l => { for (const e of l.getEntries()) \
         longest = Math.max(longest, e.duration); }).observe({type: 'longtask'}); true",
    )?;
    let busy0 = task_seconds(&mut b)?;
    let t = Instant::now();
    b.click("[data-scope=\"all\"] button[data-action=\"restart\"]")?;
    let all =
        format!("document.querySelector('.chip[data-state=\"RUNNING\"][data-count=\"{N}\"]')");
    b.wait_for("the restart to show", &format!("!{all}"), WAIT)?;
    b.wait_for("all RUNNING again", &all, WAIT)?;
    let span = t.elapsed().as_secs_f64();
    let busy = task_seconds(&mut b)? - busy0;
    let longest = b.eval("longest")?.as_f64().unwrap_or(f64::NAN);
    b.close();

    // /metrics.
    let scrapes = runs(opts, 50, 20);
    scrape(d.port)?;
    let mut ms = Vec::new();
    for _ in 0..scrapes {
        ms.push(scrape(d.port)?);
    }
    let mut scan = Vec::new();
    for _ in 0..scrapes {
        scan.push(proc_scan_ms());
    }
    // A scrape reads /proc once: its cost follows the machine's processes.
    let procs = process_count();
    drop(d);

    let (r, l) = (stat(ready), stat(limit));
    let [open, status, rows] = phases.map(|p| stat(p).median);
    let (m50, s50) = (stat(ms.clone()), stat(scan.clone()));
    let (m99, s99) = (percentile(&ms, 99.0), percentile(&scan, 99.0));
    Ok(vec![
        Row {
            id: "DASH",
            what: format!(
                "dashboard, {N} instances, headless Chromium: navigation → every row built and laid out \
                 (socket open {open:.0}, status in {status:.0}, rows built {rows:.0} ms; \
                 limit: the same DOM as static HTML)"
            ),
            unit: "ms",
            ours: Some(r),
            limit: Some(l),
            supervisord: None,
            ratio: Some(r.median / l.median),
            target: format!("< {RENDER_MS:.0} ms"),
            pass: Some(r.median < RENDER_MS),
        },
        Row {
            id: "DASH",
            what: format!(
                "GET /metrics, {N} instances, {procs} processes on the machine, median of {scrapes} \
                 (limit: the bench reading /proc/PID/stat of every process)"
            ),
            unit: "ms",
            ours: Some(m50),
            limit: Some(s50),
            supervisord: None,
            ratio: Some(m50.median / s50.median),
            target: format!("< {METRICS_MS:.0} ms"),
            pass: Some(m50.median < METRICS_MS),
        },
        Row {
            id: "DASH",
            what: format!("GET /metrics, {N} instances, p99 of {scrapes}"),
            unit: "ms",
            ours: Some(stat(vec![m99])),
            limit: Some(stat(vec![s99])),
            supervisord: None,
            ratio: Some(m99 / s99),
            target: format!("< {METRICS_MS:.0} ms"),
            pass: Some(m99 < METRICS_MS),
        },
        Row {
            id: "DASH",
            what: format!(
                "Restart all from the page, {N} instances: its longest main-thread task until it \
                 shows all RUNNING again ({span:.1} s; page busy {:.0} % of it)",
                busy / span * 100.0
            ),
            unit: "ms",
            ours: Some(stat(vec![longest])),
            limit: None,
            supervisord: None,
            ratio: None,
            target: "reported".into(),
            pass: None,
        },
    ])
}

/// The page's DOM as static HTML: scripts removed, `data-ready` cleared,
/// and one script that marks it ready the way the page does.
const STATIC_COPY: &str = r#"(() => {
  const root = document.documentElement.cloneNode(true);
  root.querySelectorAll('script').forEach((s) => s.remove());
  const body = root.querySelector('body');
  delete body.dataset.ready;
  delete body.dataset.readyMs;
  const mark = document.createElement('script');
  mark.textContent = "requestAnimationFrame(() => { void document.querySelector('main table').offsetHeight; " +
    "document.body.dataset.readyMs = String(Math.round(performance.now())); document.body.dataset.ready = '1'; });";
  body.appendChild(mark);
  return '<!doctype html>' + root.outerHTML;
})()"#;

/// Main-thread time of the page's tasks so far, in seconds.
fn task_seconds(b: &mut cdp::Browser) -> Res<f64> {
    let m = b.call("Performance.getMetrics", json!({}))?;
    m["metrics"]
        .as_array()
        .and_then(|ms| ms.iter().find(|x| x["name"] == "TaskDuration"))
        .and_then(|x| x["value"].as_f64())
        .ok_or_else(|| format!("no TaskDuration in {m}"))
}

/// One `GET /metrics`: milliseconds from connect to the last byte.
fn scrape(port: u16) -> Res<f64> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).map_err(|e| e.to_string())?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let text = String::from_utf8_lossy(&body);
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("/metrics: {}", clip(&text, 200)));
    }
    let up = text
        .lines()
        .filter(|l| l.starts_with("taskmaster_instance_up{"))
        .count();
    if up != N {
        return Err(format!("/metrics lists {up} instances, not {N}"));
    }
    Ok(ms)
}

/// Milliseconds to read `/proc/PID/stat` of every process once.
fn proc_scan_ms() -> f64 {
    let t = Instant::now();
    let mut bytes = 0;
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.parse::<u32>().is_ok())
        {
            bytes += fs::read(e.path().join("stat"))
                .map(|s| s.len())
                .unwrap_or(0);
        }
    }
    std::hint::black_box(bytes);
    t.elapsed().as_secs_f64() * 1000.0
}

fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if xs.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (xs.len() - 1) as f64).round() as usize;
    xs[i.min(xs.len() - 1)]
}

/// A one-page HTTP server on a thread of its own, for the limit.
struct StaticPage {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StaticPage {
    fn serve(html: String) -> Res<StaticPage> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
                 Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                html.len()
            );
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut req = [0u8; 4096];
                        let _ = s.read(&mut req);
                        let _ = s.write_all(head.as_bytes());
                        let _ = s.write_all(html.as_bytes());
                    }
                    // Nothing to accept: look again shortly (the stop flag too).
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(StaticPage {
            url: format!("http://127.0.0.1:{port}/"),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StaticPage {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
