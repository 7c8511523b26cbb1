//! How a `cmd` is run (SPEC §3): one simple command, quotes and `$VAR`
//! included, ends up as the program's own pid, so its signals and exit are
//! reported as its own and a kill of that pid leaves nothing behind.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::common::*;

/// The system's python3, not a version manager's shim script.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn comm(pid: u64) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

fn cmdline(pid: u64) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .split_last()
        .map(|(_, args)| args.to_vec())
        .unwrap_or_default()
}

fn one(cmd: &str, extra: &str) -> String {
    format!(
        "return {{ services = {{ svc = {{ cmd = {cmd:?}, starttime = 0, autorestart = 'never', {extra} }} }} }}"
    )
}

fn pid_of(inst: &Value) -> u64 {
    inst["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid: {inst}"))
}

#[test]
fn a_quoted_command_is_the_program_itself_and_dies_with_its_own_signal() {
    let script = r#"import os, time; open("pid.tmp", "w").write(str(os.getpid())); os.rename("pid.tmp", "pid"); time.sleep(100)"#;
    let mut d = Daemon::start(
        "cmd-quoted",
        &one(&format!("{} -c '{script}'", python()), ""),
    );
    let inst = d.wait_state("svc:0", "RUNNING", secs(10));
    let pid = pid_of(&inst);
    let own: u64 = wait_file(&d.dir.join("pid"), secs(10), |t| t.parse::<u64>().is_ok())
        .parse()
        .unwrap_or(0);
    assert_eq!(pid, own, "status shows another pid than the program's");
    assert_eq!(comm(pid), "python3");

    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let inst = d.wait_state("svc:0", "EXITED", secs(10));
    assert_eq!(inst["signal"], "SIGKILL", "{inst}");
    assert_eq!(inst["exitcode"], Value::Null, "{inst}");
    assert!(
        group_members(pid as u32).is_empty() && !alive(own as i32),
        "the program survived its instance"
    );
}

#[test]
fn a_variable_in_the_command_still_runs_the_program_itself() {
    let mut d = Daemon::start("cmd-var", &one("sleep $T", "env = { T = '100' }"));
    let pid = pid_of(&d.wait_state("svc:0", "RUNNING", secs(10)));
    assert_eq!(comm(pid), "sleep");
    assert_eq!(cmdline(pid), ["sleep", "100"]);
}

#[test]
fn empty_and_quoted_arguments_reach_the_program_as_words() {
    let script = r#"import sys, time; open("args.tmp", "w").write(repr(sys.argv[1:])); import os; os.rename("args.tmp", "args"); time.sleep(100)"#;
    let mut d = Daemon::start(
        "cmd-empty",
        &one(
            &format!(
                r#"{} -c '{script}' '' "two words" a\ b bind=127.0.0.1"#,
                python()
            ),
            "",
        ),
    );
    let pid = pid_of(&d.wait_state("svc:0", "RUNNING", secs(10)));
    let args = wait_file(&d.dir.join("args"), secs(10), |t| !t.is_empty());
    assert_eq!(args, "['', 'two words', 'a b', 'bind=127.0.0.1']");
    assert_eq!(comm(pid), "python3");
}

#[test]
fn leading_assignments_are_exported_to_the_program_itself() {
    let script = r#"import os, time; open("env.tmp", "w").write(os.environ.get("GREETING", "unset")); os.rename("env.tmp", "env"); time.sleep(100)"#;
    let mut d = Daemon::start(
        "cmd-assign",
        &one(
            &format!("GREETING='hello world' {} -c '{script}'", python()),
            "",
        ),
    );
    let pid = pid_of(&d.wait_state("svc:0", "RUNNING", secs(10)));
    let env = wait_file(&d.dir.join("env"), secs(10), |t| !t.is_empty());
    assert_eq!(env, "hello world");
    assert_eq!(comm(pid), "python3");
}

#[test]
fn a_program_is_looked_up_in_the_path_its_service_sets_and_sees_its_environment() {
    // posix_spawnp would search the daemon's PATH: a service that sets its
    // own is searched there (as execvp in the child would), the service's
    // variables win over the daemon's, and the daemon's settings are gone.
    let dir = temp_dir("cmd-path-tools");
    let tool = dir.join("only-here-tool");
    fs::write(
        &tool,
        "#!/bin/sh\nprintf '%s|%s|%s|%s|%s\\n' \"$TASKMASTER_SERVICE\" \"$TASKMASTER_INSTANCE\" \"$HOME\" \"${TASKMASTER_TOKEN-unset}\" \"$PWD\" > out.tmp\nmv out.tmp out\nexec sleep 100\n",
    )
    .expect("write tool");
    fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let extra = format!(
        "env = {{ PATH = {:?}, HOME = '/nowhere' }}, numprocs = 2",
        format!("/nonexistent:{}:/usr/bin:/bin", dir.display())
    );
    let mut d = Daemon::start("cmd-path", &one("only-here-tool", &extra));
    d.wait_all("RUNNING", secs(10));
    let out = wait_file(&d.dir.join("out"), secs(10), |t| t.ends_with('\n'));
    let fields: Vec<&str> = out.trim_end().split('|').collect();
    assert_eq!(fields[0], "svc", "{out}");
    assert!(fields[1] == "0" || fields[1] == "1", "{out}");
    assert_eq!(fields[2], "/nowhere", "{out}");
    assert_eq!(fields[3], "unset", "{out}");
    // Not on the daemon's PATH: without the service's, a spawn error.
    let mut bad = Daemon::start("cmd-path-missing", &one("only-here-tool", ""));
    let inst = bad.wait_state("svc:0", "FATAL", secs(30));
    assert!(
        inst["description"]
            .as_str()
            .is_some_and(|s| s.contains("command not found: only-here-tool")),
        "{inst}"
    );
    let _ = fs::remove_dir_all(&dir);
}
