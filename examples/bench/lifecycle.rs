//! The lifecycle workloads: spawning (W1), status (W2), crash loops with and
//! without a hook (W3, W8), restart latency (W4), stop all (W6), reload (W7).

use std::fs;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::supervisord;
use crate::Opts;

pub fn w1_spawn(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
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

pub fn w2_status(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
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

pub fn w3_crash_loop(bin: &Path, opts: &Opts, hook: bool) -> Res<Vec<Row>> {
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

pub fn w4_restart_latency(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
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

pub fn w6_stop_all(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
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

pub fn w7_reload(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
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

/// W3sh: the crash loop of SPEC §16 with a shell child that writes a file:
/// `sh -c 'echo x >> F; exit 1'` (`always`, `starttime = 0`), against a
/// serial `posix_spawnp` + `waitpid` loop of the same command, interleaved
/// run by run. F is outside the config's folder (the config watcher is not
/// part of this workload; see W5w for that).
pub fn w3_shell(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
    // Short windows, alternating, many rounds: on a shared machine the
    // load changes from second to second, so each ratio compares the
    // daemon with the limit measured right before it, and the row gives
    // the median of those ratios.
    let secs = if opts.quick { 1.0 } else { 1.5 };
    let out = temp("w3sh-out");
    let file = out.join("F");
    let script = format!("echo x >> {}; exit 1", file.display());
    let lua = format!(
        "return {{ services = {{ crash = {{ cmd = \"sh -c '{script}'\", starttime = 0, autorestart = 'always' }} }} }}"
    );
    let (mut ours, mut limit, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs(opts, 11, 3) {
        let t = Instant::now();
        let mut count = 0u64;
        while t.elapsed().as_secs_f64() < secs {
            let pid = crate::scale::posix_spawnp(&["sh", "-c", &script])?;
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            count += 1;
        }
        let l = count as f64 / t.elapsed().as_secs_f64();
        let mut d = Daemon::start(bin, "w3sh", &lua)?;
        d.connect_plain()?;
        let r0 = d.status()?[0]["restarts"].as_f64().unwrap_or(0.0);
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(secs));
        let r1 = d.status()?[0]["restarts"].as_f64().unwrap_or(0.0);
        let o = (r1 - r0) / t0.elapsed().as_secs_f64();
        drop(d);
        ours.push(o);
        limit.push(l);
        ratios.push(o / l);
    }
    let _ = fs::remove_dir_all(&out);
    let (o, l, r) = (stat(ours), stat(limit), stat(ratios));
    Ok(vec![Row {
        id: "W3sh",
        what: "crash loop (`sh -c 'echo x >> F; exit 1'`, always, starttime 0); ratio: median of per-round ratios".into(),
        unit: "restarts/s",
        ours: Some(o),
        limit: Some(l),
        supervisord: None,
        ratio: Some(r.median),
        target: "≥ 0.8× limit".into(),
        pass: Some(r.median >= 0.8),
    }])
}
