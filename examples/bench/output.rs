//! The output workloads (SPEC §16 W5): a child writes 1 GiB (256 MiB with
//! `--quick`) to its stdout file.
//!
//! - W5: rotation off (`stdout_maxbytes = 0`, set explicitly: the default is
//!   50MB, which would measure the rotating path): the child writes the file
//!   itself, the daemon never touches the bytes.
//! - W5r: `stdout_maxbytes = "100MB"`, `stdout_backups = 20`: the child
//!   writes a pipe that the daemon splices into the file and rotates.
//! - W5w: W5 with the file next to the config instead of in `logs/`. The
//!   config watcher watches that folder (non-recursively), so each write is
//!   also an inotify event it wakes up for; the difference from W5 is what
//!   that costs the child and the daemon.
//!
//! The limit, measured in the same run and interleaved with ours, is
//! `exec CHILD > FILE` from the shell. The child is this executable
//! (`bench --emit BYTES`), so the shell, the daemon and supervisord run the
//! same writer: 64 KiB blocks of 16-byte lines, the first line of each block
//! its index, so the concatenation `F.N … F.1 F` is checked against what
//! was written, block by block, after each run (reading back from the page
//! cache costs a fraction of a second per GiB and is not timed).
//!
//! Daemon CPU per GiB is utime + stime of the daemon process over the run.
//! Its limit for W5r is a bare loop in the bench splicing the same child's
//! pipe into a file with the same rotation (the least a pipe-draining
//! supervisor can spend); with rotation off the limit is zero (a shell
//! redirect has no middleman).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::supervisord;
use crate::Opts;

/// The writer's unit: a header line with the block's index, then filler lines.
const BLOCK: usize = 64 << 10;
/// Every line of a block is this long (the header included).
const LINE: usize = 16;
/// W5r's `stdout_maxbytes` ("100MB" is 1024-based).
const MAXBYTES: u64 = 100 << 20;
/// W5r's `stdout_backups`: enough to keep all of 1 GiB (10 backups + F).
const BACKUPS: u32 = 20;
const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

/// Block `index` of the stream: `{index:015}\n`, then `abcdefghijklmno\n`
/// lines (so a block shifted by any number of bytes does not match).
fn fill_block(buf: &mut [u8], index: u64) {
    if buf[LINE..2 * LINE] != *b"abcdefghijklmno\n" {
        for line in buf.chunks_mut(LINE) {
            line.copy_from_slice(b"abcdefghijklmno\n");
        }
    }
    let _ = writeln!(&mut buf[..LINE], "{index:015}");
}

/// Child mode `bench --emit BYTES`: writes the first BYTES of the stream to
/// stdout, one block per write(2), and exits.
pub fn emit(bytes: u64) -> ! {
    // fd 1 is not owned here: never close it through File's drop.
    let mut out = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
    let mut block = vec![0u8; BLOCK];
    let mut left = bytes;
    let mut index = 0;
    while left > 0 {
        fill_block(&mut block, index);
        let n = left.min(BLOCK as u64) as usize;
        if out.write_all(&block[..n]).is_err() {
            std::process::exit(1);
        }
        left -= n as u64;
        index += 1;
    }
    std::process::exit(0)
}

/// The files of a log `F`, oldest first: `F.N` … `F.1`, `F`.
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    for k in 1.. {
        let p = PathBuf::from(format!("{}.{k}", path.display()));
        if !p.exists() {
            break;
        }
        files.push(p);
    }
    files.reverse();
    files
}

/// Checks that the files of `path` hold exactly the first `bytes` of the
/// stream, in order, with none above `max` bytes (0: no limit). Returns
/// how many files there were.
pub fn verify(path: &Path, bytes: u64, max: u64) -> Res<usize> {
    let files = log_files(path);
    let mut total = 0;
    for f in &files {
        let len = fs::metadata(f)
            .map_err(|e| format!("{}: {e}", f.display()))?
            .len();
        if max > 0 && len > max {
            return Err(format!("{} has {len} bytes, above {max}", f.display()));
        }
        total += len;
    }
    if total != bytes {
        return Err(format!(
            "{} files hold {total} bytes, the child wrote {bytes}",
            files.len()
        ));
    }
    let mut readers = Vec::new();
    for f in &files {
        readers.push(File::open(f).map_err(|e| format!("{}: {e}", f.display()))?);
    }
    let mut all = Concat(readers);
    let mut got = vec![0u8; 16 * BLOCK];
    let mut want = vec![0u8; BLOCK];
    let mut offset = 0u64;
    while offset < bytes {
        let n = ((bytes - offset) as usize).min(got.len());
        all.read_exact(&mut got[..n])
            .map_err(|e| format!("reading at byte {offset}: {e}"))?;
        for (i, chunk) in got[..n].chunks(BLOCK).enumerate() {
            let index = offset / BLOCK as u64 + i as u64;
            fill_block(&mut want, index);
            if chunk != &want[..chunk.len()] {
                let at = chunk
                    .iter()
                    .zip(&want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(format!(
                    "byte {} differs from what the child wrote (block {index})",
                    index * BLOCK as u64 + at as u64
                ));
            }
        }
        offset += n as u64;
    }
    Ok(files.len())
}

/// Files read one after the other.
struct Concat(Vec<File>);

impl Read for Concat {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(f) = self.0.first_mut() {
            match f.read(buf)? {
                0 => {
                    self.0.remove(0);
                }
                n => return Ok(n),
            }
        }
        Ok(0)
    }
}

/// One timed run: seconds, and the CPU seconds of the process in the middle
/// (the daemon, supervisord, the bench's splice loop; 0 for the shell).
struct Run {
    secs: f64,
    cpu: f64,
}

/// The limit: `exec CHILD > FILE` from the shell.
fn shell_redirect(emit: &str, dir: &Path, bytes: u64) -> Res<Run> {
    let target = dir.join("shell.bin");
    let t = Instant::now();
    let st = Command::new("/bin/sh")
        .args(["-c", &format!("exec {emit} > '{}'", target.display())])
        .status()
        .map_err(|e| e.to_string())?;
    let secs = t.elapsed().as_secs_f64();
    let got = fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    let _ = fs::remove_file(&target);
    if !st.success() || got != bytes {
        return Err(format!("shell redirect: {st}, {got} bytes"));
    }
    Ok(Run { secs, cpu: 0.0 })
}

/// Where the log file is, relative to the config's folder.
#[derive(Clone, Copy, PartialEq)]
enum Place {
    /// `logs/out.log`: outside the folder the config watcher watches.
    Logs,
    /// `out.log`, next to the config: every write is also an inotify event
    /// for the config watcher (W5w).
    NextToConfig,
}

/// One run of the child under a fresh taskmasterd, rotation on or off;
/// every byte is checked afterwards.
fn taskmaster(bin: &Path, emit: &str, bytes: u64, rotate: bool, place: Place) -> Res<Run> {
    let log = match place {
        Place::Logs => "logs/out.log",
        Place::NextToConfig => "out.log",
    };
    let rotation = if rotate {
        format!(
            "stdout_maxbytes = '{}MB', stdout_backups = {BACKUPS}",
            MAXBYTES >> 20
        )
    } else {
        "stdout_maxbytes = 0".to_string()
    };
    let lua = format!(
        "return {{ services = {{ out = {{ cmd = '{emit}', stdout = '{log}', {rotation}, \
         starttime = 0, autorestart = 'never', autostart = false }} }} }}"
    );
    let mut d = Daemon::start_logged(bin, if rotate { "w5r" } else { "w5" }, &lua)?;
    d.connect()?;
    d.wait_until(Duration::from_secs(30), |s| s.len() == 1)?;
    let c0 = proc_cpu_secs(d.pid());
    let t = Instant::now();
    d.call("start", &["out"])?;
    let s = d.wait_until(Duration::from_secs(300), |s| s[0]["state"] == "EXITED")?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = proc_cpu_secs(d.pid()) - c0;
    if s[0]["exitcode"] != 0 {
        return Err(format!("the child exited with {}", s[0]["exitcode"]));
    }
    let files = verify(&d.dir.join(log), bytes, if rotate { MAXBYTES } else { 0 })?;
    let want = if rotate {
        bytes.div_ceil(MAXBYTES) as usize
    } else {
        1
    };
    if files != want {
        return Err(format!("{files} files, expected {want}"));
    }
    Ok(Run { secs, cpu })
}

/// The CPU limit of W5r: the bench splices the child's pipe into a file
/// itself, with the same rotation by rename, blocking (no epoll).
fn splice_loop(emit_exe: &Path, dir: &Path, bytes: u64) -> Res<Run> {
    let path = dir.join("splice.log");
    let mut kids = Kids::default();
    let t = Instant::now();
    let c0 = thread_cpu_secs();
    let mut child = Command::new(emit_exe)
        .args(["--emit", &bytes.to_string()])
        .stdout(Stdio::piped())
        .die_with_parent(libc::SIGKILL)
        .spawn()
        .map_err(|e| e.to_string())?;
    let pipe = child.stdout.take().ok_or("no pipe")?;
    kids.0.push(child);
    let rfd = pipe.as_raw_fd();
    unsafe { libc::fcntl(rfd, libc::F_SETPIPE_SZ, 1 << 20) };
    let open = |p: &Path| File::create(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut file = open(&path)?;
    let mut size = 0u64;
    let mut rotations = 0u32;
    let mut moved = 0u64;
    loop {
        let room = (MAXBYTES - size).min(1 << 20) as usize;
        let mut off = size as libc::loff_t;
        let n = unsafe {
            libc::splice(
                rfd,
                std::ptr::null_mut(),
                file.as_raw_fd(),
                &mut off,
                room,
                libc::SPLICE_F_MOVE,
            )
        };
        match n {
            0 => break,
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("splice: {e}"));
            }
            n => {
                size += n as u64;
                moved += n as u64;
            }
        }
        if size == MAXBYTES {
            rotations += 1;
            for k in (1..rotations.min(BACKUPS)).rev() {
                let from = format!("{}.{k}", path.display());
                let _ = fs::rename(&from, format!("{}.{}", path.display(), k + 1));
            }
            fs::rename(&path, format!("{}.1", path.display())).map_err(|e| e.to_string())?;
            file = open(&path)?;
            size = 0;
        }
    }
    let cpu = thread_cpu_secs() - c0;
    drop(kids);
    let secs = t.elapsed().as_secs_f64();
    for f in log_files(&path) {
        let _ = fs::remove_file(f);
    }
    if moved != bytes {
        return Err(format!("splice loop moved {moved} bytes, expected {bytes}"));
    }
    Ok(Run { secs, cpu })
}

/// CPU seconds of the calling thread.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

pub fn w5_output(bin: &Path, opts: &Opts) -> Res<Vec<Row>> {
    let bytes: u64 = if opts.quick { 256 << 20 } else { 1 << 30 };
    let exe = self_exe();
    let emit = format!("{} --emit {bytes}", exe.display());
    let dir = temp("w5-limit");
    let gib = bytes as f64 / GIB;
    let mut shell = Vec::new();
    let mut plain = Vec::new();
    let mut rot = Vec::new();
    let mut watched = Vec::new();
    let mut bare = Vec::new();
    // 1 GiB takes about a second: five runs keep the medians steady on a
    // shared machine at little cost.
    for r in 0..runs(opts, 5, 3) {
        // Rotate the order so that no variant always runs first.
        for k in 0..4 {
            match (r + k) % 4 {
                0 => shell.push(shell_redirect(&emit, &dir, bytes)?),
                1 => plain.push(taskmaster(bin, &emit, bytes, false, Place::Logs)?),
                2 => rot.push(taskmaster(bin, &emit, bytes, true, Place::Logs)?),
                _ => watched.push(taskmaster(bin, &emit, bytes, false, Place::NextToConfig)?),
            }
        }
        bare.push(splice_loop(&exe, &dir, bytes)?);
    }
    let _ = fs::remove_dir_all(&dir);
    let sd = |rotate| {
        let sd = opts.supervisord.as_ref()?;
        supervisord::output(sd, &emit, bytes, runs(opts, 2, 1), rotate)
            .map_err(|e| {
                eprintln!(
                    "bench: supervisord W5{}: {e}",
                    if rotate { "r" } else { "" }
                )
            })
            .ok()
    };
    let (sd_plain, sd_rot) = (sd(false), sd(true));
    let rates = |runs: &[Run]| stat(runs.iter().map(|r| bytes as f64 / r.secs / MIB).collect());
    let cpu = |runs: &[Run]| stat(runs.iter().map(|r| r.cpu / gib).collect());
    let l = rates(&shell);
    // Time relative to the shell redirect: the inverse of the rates.
    let rate_row = |id, what: String, o: Stat, max: f64, sd: Option<Stat>| {
        let ratio = l.median / o.median;
        Row {
            id,
            what,
            unit: "MiB/s",
            ours: Some(o),
            limit: Some(l),
            ratio: Some(ratio),
            supervisord: sd,
            target: format!("time ≤ {max:.2}× shell redirect"),
            pass: Some(ratio <= max),
        }
    };
    let cpu_row = |id, what: &str, o: Stat, limit: Option<Stat>, sd: Option<Stat>| Row {
        id,
        what: what.to_string(),
        unit: "CPU s/GiB",
        ours: Some(o),
        limit,
        // No ratio to a zero limit: the figure itself is the excess.
        ratio: limit
            .filter(|l| l.median > 0.0)
            .map(|l| o.median / l.median),
        supervisord: sd,
        target: "reported".into(),
        pass: None,
    };
    let mib = bytes >> 20;
    let b = cpu(&bare);
    let zero = stat(vec![0.0]);
    Ok(vec![
        rate_row(
            "W5",
            format!("{mib} MiB to stdout → logs/F, rotation off (`stdout_maxbytes = 0`), every byte checked"),
            rates(&plain),
            1.05,
            sd_plain.map(|s| s.0),
        ),
        cpu_row(
            "W5",
            "daemon CPU per GiB, rotation off (limit: 0, a shell redirect has no middleman)",
            cpu(&plain),
            Some(zero),
            sd_plain.map(|s| s.1),
        ),
        rate_row(
            "W5r",
            format!(
                "{mib} MiB to stdout → logs/F, rotation {}MB × {BACKUPS} backups, every byte checked across F.N … F",
                MAXBYTES >> 20
            ),
            rates(&rot),
            1.15,
            sd_rot.map(|s| s.0),
        ),
        cpu_row(
            "W5r",
            "daemon CPU per GiB, rotation on (limit: the bench's own splice loop, same rotation)",
            cpu(&rot),
            Some(b),
            sd_rot.map(|s| s.1),
        ),
        Row {
            target: "reported".into(),
            pass: None,
            ..rate_row(
                "W5r",
                "the pipe path without a daemon: the bench's own blocking splice loop, same child and rotation".into(),
                rates(&bare),
                1.15,
                None,
            )
        },
        rate_row(
            "W5w",
            "W5 with F next to the config (the folder the config watcher watches)".to_string(),
            rates(&watched),
            1.05,
            None,
        ),
        cpu_row(
            "W5w",
            "daemon CPU per GiB, W5 with F next to the config (limit: 0)",
            cpu(&watched),
            Some(zero),
            None,
        ),
    ])
}
