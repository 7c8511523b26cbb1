//! Commands run for Lua: `tm.exec` (without waiting, output to the daemon
//! log) and, later, the `os.execute`/`io.popen` replacements.
//!
//! Each gets a process group of its own, marked for the guard at spawn under
//! the reaper lock, and the environment hygiene of services.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::{clean_env, dev_null, spawn_marked};

/// Runs `cmd` under `/bin/sh -c` without waiting; its output goes to the
/// daemon log. The daemon's reaper collects its exit.
pub fn exec_logged(cmd: &str) -> std::io::Result<u32> {
    let mut command = Command::new("/bin/sh");
    clean_env(&mut command);
    command
        .arg("-c")
        .arg(cmd)
        .stdin(dev_null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, known to the guard like an instance's, so a
        // `cmd &` it leaves behind cannot outlive a SIGKILLed daemon either.
        .process_group(0);
    let mut child = match spawn_marked(&mut command, false) {
        Ok(c) => c,
        Err(e) => {
            crate::log!("exec: cannot run {cmd:?}: {e}");
            return Err(e);
        }
    };
    let pid = child.id();
    crate::log!("exec[{pid}]: {cmd}");
    let streams: Vec<Box<dyn std::io::Read + Send>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for stream in streams {
        let _ = std::thread::Builder::new()
            .name("exec-output".into())
            .spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    crate::log!("exec[{pid}]: {line}");
                }
            });
    }
    // Not waited for here: the supervisor reaps every child on SIGCHLD.
    drop(child);
    Ok(pid)
}
