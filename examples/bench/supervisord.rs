//! The same workloads against supervisord (ini config, supervisorctl over a
//! unix socket).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::Opts;

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
            .die_with_parent(libc::SIGTERM)
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
    let prog =
        "[program:crash]\ncommand=/bin/true\nstartsecs=0\nautorestart=true\nstartretries=1000000\n";
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

/// W5/W5r under supervisord: the same child, its stdout log with rotation
/// off or at the same 100MB × 20. Returns MiB/s and supervisord's CPU
/// seconds per GiB. Timed from the first byte in the file to the last (the
/// start is asked with supervisorctl in the background, whose own Python
/// start-up is not supervisord's time), watching the files' sizes; no
/// supervisorctl polling runs during the copy. Its files are checked like
/// ours, except the size limit (supervisord rotates after a write that
/// reaches maxbytes, so its files exceed it a little).
pub fn output(bin: &Path, cmd: &str, bytes: u64, runs: usize, rotate: bool) -> Res<(Stat, Stat)> {
    let mut rates = Vec::new();
    let mut cpus = Vec::new();
    for _ in 0..runs {
        let rotation = if rotate {
            "stdout_logfile_maxbytes=100MB\nstdout_logfile_backups=20\n"
        } else {
            "stdout_logfile_maxbytes=0\n"
        };
        let logs = temp("sd-w5-logs");
        let out = logs.join("out.log");
        let prog = format!(
            "[program:out]\ncommand={cmd}\nstartsecs=0\nautorestart=false\nautostart=false\n\
             stdout_logfile={}\n{rotation}",
            out.display()
        );
        let sd = Sd::start(bin, if rotate { "w5r" } else { "w5" }, &prog)?;
        let size = || -> u64 {
            crate::output::log_files(&out)
                .iter()
                .filter_map(|f| fs::metadata(f).ok())
                .map(|m| m.len())
                .sum()
        };
        let c0 = proc_cpu_secs(sd.pid());
        let mut ctl = Kids::default();
        ctl.0.push(
            sd.ctl(&["start", "out"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?,
        );
        let deadline = Instant::now() + Duration::from_secs(600);
        while size() == 0 {
            if Instant::now() > deadline {
                return Err("no output".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = Instant::now();
        while size() < bytes {
            if Instant::now() > deadline {
                return Err(format!("only {} of {bytes} bytes", size()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let secs = t.elapsed().as_secs_f64();
        cpus.push((proc_cpu_secs(sd.pid()) - c0) / (bytes as f64 / (1u64 << 30) as f64));
        rates.push(bytes as f64 / secs / (1 << 20) as f64);
        if let Some(c) = ctl.0.first_mut() {
            let _ = c.wait();
        }
        if let Err(e) = crate::output::verify(&out, bytes, 0) {
            eprintln!(
                "bench: supervisord W5{}: {e}",
                if rotate { "r" } else { "" }
            );
        }
        drop(sd);
        let _ = fs::remove_dir_all(&logs);
    }
    Ok((stat(rates), stat(cpus)))
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
