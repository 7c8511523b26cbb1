//! SPEC §15 with a real daemon: supervisord configs (one modelled on
//! supervisord's documented sample, one with numprocs, `%(process_num)02d`,
//! `environment=` and `[include]`) and a Procfile loaded from Lua, run and
//! checked through their output; `--export systemd` checked by
//! `systemd-analyze verify`, `--export nomad` parsed and checked.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::*;

/// A folder with `files` and a `taskmaster.lua` that returns `lua`.
fn folder(tag: &str, lua: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = temp_dir(tag);
    for (name, text) in files {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }
    fs::write(dir.join("taskmaster.lua"), lua).expect("write config");
    dir
}

/// supervisord's sample config (its `echo_supervisord_conf`), trimmed to
/// the sections and comments that matter, with two programs.
const SAMPLE: &str = r#"; Sample supervisor config file.
;
; For more information on the config file, please see:
; http://supervisord.org/configuration.html
;
; Notes:
;  - Shell expansion ("~" or "$HOME") is not supported.  Environment
;    variables can be expanded using this syntax: "%(ENV_HOME)s".
;  - Quotes around values are not supported, except in the case of
;    the environment= options as shown below.
;  - Comments must have a leading space: "a=b ;comment" not "a=b;comment".

[unix_http_server]
file=/tmp/supervisor.sock   ; the path to the socket file
;chmod=0700                 ; socket file mode (default 0700)

[supervisord]
logfile=/tmp/supervisord.log ; main log file; default $CWD/supervisord.log
logfile_maxbytes=50MB        ; max main logfile bytes b4 rotation; default 50MB
logfile_backups=10           ; # of main logfile backups; 0 means none, default 10
loglevel=info                ; log level; default info; others: debug,warn,trace
pidfile=/tmp/supervisord.pid ; supervisord pidfile; default supervisord.pid
nodaemon=false               ; start in foreground if true; default false
minfds=1024                  ; min. avail startup file descriptors; default 1024

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix:///tmp/supervisor.sock ; use a unix:// URL  for a unix socket

[program:greeter]
command=/bin/sh -c 'echo "hello from %(program_name)s, $GREETING" && echo "to stderr" >&2 && exec sleep 1000'
process_name=%(program_name)s ; process_name expr (default %(program_name)s)
numprocs=1                    ; number of processes copies to start (def 1)
directory=%(here)s            ; directory to cwd to before exec (def no cwd)
priority=999                  ; the relative start priority (default 999)
autostart=true                ; start at supervisord start (default: true)
startsecs=0                   ; # of secs prog must stay up to be running (def. 1)
startretries=3                ; max # of serial start failures when starting (default 3)
autorestart=unexpected        ; when to restart if exited after running (def: unexpected)
exitcodes=0                   ; 'expected' exit codes used with autorestart (default 0)
stopsignal=TERM               ; signal used to kill process (default TERM)
stopwaitsecs=10               ; max num secs to wait b4 SIGKILL (default 10)
stopasgroup=true              ; send stop signal to the UNIX process group (default false)
redirect_stderr=true          ; redirect proc stderr to stdout (default false)
stdout_logfile=%(here)s/logs/%(program_name)s.log ; stdout log path, NONE for none; default AUTO
stdout_logfile_maxbytes=1MB   ; max # logfile bytes b4 rotation (default 50MB)
stdout_logfile_backups=10     ; # of stdout logfile backups (0 means none, default 10)
stderr_logfile=/nonexistent/dropped.log ; ignored: redirect_stderr
environment=GREETING="a, b and c",UNUSED=1 ; process environment additions (def no adds)

[program:oneshot]
command=/bin/sh -c 'pwd -P > %(here)s/oneshot.pwd'
directory=/tmp
autorestart=false
startsecs=0
exitcodes=0,2
"#;

#[test]
fn supervisords_sample_config_runs() {
    let dir = folder(
        "ini-sample",
        "return load_ini('supervisord.conf')\n",
        &[("supervisord.conf", SAMPLE)],
    );
    let mut d = Daemon::adopt(dir.clone());
    d.wait_state("greeter:0", "RUNNING", secs(10));
    d.wait_state("oneshot:0", "EXITED", secs(10));
    let log = dir.join("logs/greeter.log");
    // redirect_stderr: both streams in the stdout file.
    let text = wait_file(&log, secs(10), |t| t.contains("to stderr"));
    assert!(text.contains("hello from greeter, a, b and c"), "{text:?}");
    assert_eq!(
        fs::read_to_string(dir.join("oneshot.pwd")).expect("pwd written"),
        "/tmp\n"
    );
    assert!(!Path::new("/nonexistent/dropped.log").exists());
    let status = d.status();
    assert_eq!(status.len(), 2, "{status:?}");
    // One warning line per ignored key, with its file:line.
    let daemon_log = d.log();
    for (line, key) in [(34, "process_name"), (37, "priority"), (45, "stopasgroup")] {
        let want = format!("supervisord.conf:{line}: [program:greeter] {key} ignored");
        assert_eq!(
            daemon_log.matches(&want).count(),
            1,
            "{want} in:\n{daemon_log}"
        );
    }
    assert!(
        daemon_log.contains("stderr_logfile ignored: redirect_stderr is true"),
        "{daemon_log}"
    );
}

#[test]
fn numprocs_process_num_environment_and_include() {
    let main = "[supervisord]\nnodaemon=true\n\n[include]\nfiles = conf.d/*.conf\n";
    let workers = r#"[program:worker]
process_name=%(program_name)s_%(process_num)02d
command=/bin/sh -c 'echo "worker $WORKER_ID of %(numprocs)d on $QUEUE in $(pwd -P)" && exec sleep 1000'
numprocs=3
numprocs_start=1
directory=%(here)s
environment=
    WORKER_ID="%(process_num)02d",
    QUEUE="jobs,high"
stdout_logfile=%(here)s/../logs/worker-%(process_num)02d.log
startsecs=0
autorestart=true
"#;
    let dir = folder(
        "ini-workers",
        "return load_ini('supervisord.conf')\n",
        &[
            ("supervisord.conf", main),
            ("conf.d/workers.conf", workers),
            ("conf.d/README", "not a config"),
        ],
    );
    let mut d = Daemon::adopt(dir.clone());
    for i in 0..3 {
        d.wait_state(&format!("worker:{i}"), "RUNNING", secs(10));
    }
    let conf_d = dir.join("conf.d");
    for n in 1..=3 {
        let log = dir.join(format!("logs/worker-{n:02}.log"));
        let text = wait_file(&log, secs(10), |t| t.contains('\n'));
        assert_eq!(
            text,
            format!("worker {n:02} of 3 on jobs,high in {}\n", conf_d.display())
        );
    }
    // The included file is watched like the config: editing it reloads.
    let edited = workers.replace("numprocs=3", "numprocs=2");
    fs::write(conf_d.join("workers.conf"), edited).expect("edit include");
    d.wait_until("worker:2 removed", secs(15), |s| {
        s.len() == 2 && s.iter().all(|i| i["state"] == "RUNNING")
    });
}

#[test]
fn procfile_services_get_foremans_port() {
    let procfile = "# processes\nweb: /bin/sh -c 'echo \"web on $PORT\" && exec sleep 1000'\n\nworker: /bin/sh -c 'echo \"worker on $PORT\" && exec sleep 1000'\n";
    let lua = r#"local cfg = load_procfile("Procfile")
for name, svc in pairs(cfg.services) do
  svc.stdout = "logs/" .. name .. ".log"
  svc.starttime = 0
end
return cfg
"#;
    let dir = folder("procfile", lua, &[("Procfile", procfile)]);
    let mut d = Daemon::adopt(dir.clone());
    d.wait_all("RUNNING", secs(10));
    let web = wait_file(&dir.join("logs/web.log"), secs(10), |t| t.contains('\n'));
    assert_eq!(web, "web on 5000\n");
    let worker = wait_file(&dir.join("logs/worker.log"), secs(10), |t| t.contains('\n'));
    assert_eq!(worker, "worker on 5100\n");
}

#[test]
fn an_ini_error_refuses_to_start_with_file_and_line() {
    let dir = folder(
        "ini-bad",
        "local cfg = load_ini('bad.conf')\nreturn cfg\n",
        &[(
            "bad.conf",
            "[program:a]\ncommand=touch spawned\nautostart=perhaps\n",
        )],
    );
    let out = output_within(
        Command::new(daemon_bin())
            .arg("--config")
            .arg(dir.join("taskmaster.lua"))
            .args(["--port", &free_port().to_string()])
            .current_dir(&dir),
        secs(20),
    )
    .expect("taskmasterd ends");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.conf:3: autostart: expected true/false"),
        "{stderr}"
    );
    assert!(stderr.contains("taskmaster.lua:1: "), "{stderr}");
    assert!(!dir.join("spawned").exists());
}

/// A config with most of what an export maps, and a marker service that
/// would leave `spawned` if anything were started.
const EXPORTED: &str = r#"local tm = require("taskmaster")
tm.on("FATAL", function() end)
return { services = {
  web = {
    cmd = "python3 -m http.server {instance+8000} --bind 127.0.0.1",
    numprocs = 2,
    env = { PORT = "{instance+8000}", GREETING = "100% \"quoted\" 'single' $HOME" },
    stdout = "logs/web-{instance}.log",
    redirect_stderr = true,
    healthcheck = { http = "http://127.0.0.1:{instance+8000}/", interval = 5 },
    depends_on = { "db" },
    user = "tm-export-no-such-user",
    rlimits = { nofile = 4096 },
    max_memory = "256MB",
    umask = "022",
  },
  db = {
    cmd = "sh -c 'echo db {instance:02}; exec sleep 1000'",
    autorestart = "always",
    exitcodes = { 0, 3 },
    env_file = "db.env",
    workingdir = "/tmp",
  },
  marker = { cmd = "touch spawned", autorestart = "never" },
  manual = { cmd = "touch spawned", autostart = false },
} }
"#;

/// Runs `taskmasterd --export` on `dir`'s config; the port given is never
/// bound (checked by the caller).
fn export(dir: &Path, args: &[&str], port: u16) -> std::process::Output {
    output_within(
        Command::new(daemon_bin())
            .arg("--config")
            .arg(dir.join("taskmaster.lua"))
            .args(["--port", &port.to_string()])
            .args(args)
            .env_remove("TASKMASTER_LISTEN")
            .current_dir(dir),
        secs(30),
    )
    .expect("taskmasterd --export ends")
}

fn nothing_started(dir: &Path, port: u16) {
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something listens on {port}"
    );
    assert!(!dir.join("spawned").exists(), "a service ran");
    assert!(!dir.join("logs").exists(), "a log file was opened");
}

#[test]
fn export_systemd_writes_units_that_systemd_analyze_verifies() {
    let dir = folder("export-systemd", EXPORTED, &[]);
    let out_dir = dir.join("units/nested");
    let port = free_port();
    let out = export(
        &dir,
        &[
            "--export",
            "systemd",
            "--out",
            &out_dir.display().to_string(),
        ],
        port,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stdout {stdout}\nstderr {stderr}");
    nothing_started(&dir, port);
    // Host checks are warnings on stderr, not errors.
    assert!(
        stderr.contains("warning: services.web.user: unknown user \"tm-export-no-such-user\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: services.db.env_file: db.env: no such file"),
        "{stderr}"
    );
    let listed: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
    let names = [
        "db@.service",
        "manual@.service",
        "marker@.service",
        "web@.service",
        "taskmaster.target",
    ];
    assert_eq!(
        listed,
        names.iter().map(|n| out_dir.join(n)).collect::<Vec<_>>()
    );
    for file in &listed {
        assert!(file.is_file(), "{} listed but not written", file.display());
    }
    let web = fs::read_to_string(out_dir.join("web@.service")).expect("web unit");
    assert!(
        web.contains("exec python3 -m http.server $$((%i+8000)) --bind 127.0.0.1"),
        "{web}"
    );
    assert!(web.contains("\nUser=tm-export-no-such-user\n"), "{web}");
    assert!(web.contains("# not exported: healthcheck"), "{web}");
    let target = fs::read_to_string(out_dir.join("taskmaster.target")).expect("target");
    assert!(
        target.contains("Wants=web@0.service web@1.service"),
        "{target}"
    );
    assert!(target.contains("Wants=marker@0.service"), "{target}");
    assert!(!target.contains("manual@0"), "{target}");

    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        eprintln!("skipped systemd-analyze verify: /usr/bin/systemd-analyze is not installed");
        return;
    }
    for unit in [
        "web@0.service",
        "db@0.service",
        "marker@0.service",
        "manual@0.service",
        "taskmaster.target",
    ] {
        let out = output_within(
            Command::new(analyze)
                .arg("verify")
                .arg(out_dir.join(unit))
                .current_dir(&out_dir),
            secs(60),
        )
        .expect("systemd-analyze ends");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Not a word from it: its warnings (an unknown key, a bad escape)
        // count as failures too.
        assert!(
            out.status.success() && said.trim().is_empty(),
            "systemd-analyze verify {unit}: {}\n{said}\n{}",
            out.status,
            fs::read_to_string(out_dir.join(unit.replace("@0", "@"))).unwrap_or_default()
        );
    }
}

#[test]
fn export_nomad_writes_a_job() {
    let dir = folder("export-nomad", EXPORTED, &[]);
    let file = dir.join("out/job.json");
    let port = free_port();
    let out = export(
        &dir,
        &["--export", "nomad", "--out", &file.display().to_string()],
        port,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stdout {stdout}\nstderr {stderr}");
    nothing_started(&dir, port);
    assert_eq!(stdout.trim(), file.display().to_string());
    for line in [
        "warning: services.web.user: unknown user \"tm-export-no-such-user\"",
        "not exported: services.web.stdout = ",
        "not exported: services.web.depends_on: Nomad has no start order between task groups",
        "not exported: services.db.env_file:",
        "not exported: Lua hooks (tm.on \"FATAL\"): Nomad runs no Lua",
    ] {
        assert!(stderr.contains(line), "no {line:?} in:\n{stderr}");
    }
    let job: Value =
        serde_json::from_str(&fs::read_to_string(&file).expect("job written")).expect("JSON");
    let job = &job["Job"];
    assert_eq!(job["ID"], "taskmaster");
    assert_eq!(job["Type"], "service");
    let groups = job["TaskGroups"].as_array().expect("groups");
    let names: Vec<&str> = groups.iter().filter_map(|g| g["Name"].as_str()).collect();
    assert_eq!(names, vec!["db", "manual", "marker", "web-0", "web-1"]);
    let group = |name: &str| groups.iter().find(|g| g["Name"] == name).expect("group");
    assert_eq!(group("manual")["Count"], 0);
    assert_eq!(group("marker")["Count"], 1);
    let db = &group("db")["Tasks"][0];
    assert_eq!(db["Driver"], "raw_exec");
    assert_eq!(db["Config"]["command"], "/bin/sh");
    assert_eq!(
        db["Config"]["args"],
        serde_json::json!([
            "-c",
            "cd '/tmp' || exit 1; exec sh -c 'echo db 00; exec sleep 1000'"
        ])
    );
    for i in 0..2u64 {
        let g = group(&format!("web-{i}"));
        assert_eq!(g["Count"], 1);
        let task = &g["Tasks"][0];
        assert_eq!(task["Env"]["PORT"], (8000 + i).to_string());
        assert_eq!(task["Env"]["TASKMASTER_INSTANCE"], i.to_string());
        assert_eq!(task["User"], "tm-export-no-such-user");
        assert_eq!(task["KillTimeout"], 10_000_000_000u64);
        let check = &task["Services"][0]["Checks"][0];
        assert_eq!(check["Type"], "http");
        assert_eq!(check["Path"], "/");
        assert_eq!(check["PortLabel"], "http");
        assert_eq!(check["Interval"], 5_000_000_000u64);
        assert_eq!(
            g["Networks"][0]["ReservedPorts"][0]["Value"],
            serde_json::json!(8000 + i)
        );
    }
}

#[test]
fn export_of_a_broken_config_fails_and_writes_nothing() {
    let dir = folder(
        "export-bad",
        "return { services = { w = { cmd = 'x', numprocs = 0 } } }",
        &[],
    );
    let out_dir = dir.join("units");
    let out = export(
        &dir,
        &[
            "--export",
            "systemd",
            "--out",
            &out_dir.display().to_string(),
        ],
        free_port(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("services.w.numprocs: must be between 1 and 100, got 0"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert!(!out_dir.exists());
    // --out is required with --export (a usage error).
    let out = export(&dir, &["--export", "nomad"], free_port());
    assert_eq!(out.status.code(), Some(2));
}
