//! The output workloads: a child writing 1 GiB to its stdout file (W5).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::supervisord;
use crate::Opts;

pub fn w5_output(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
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
