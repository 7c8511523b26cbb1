//! The units, line by line, for every mapped option and every `# not
//! exported:` case; and the ExecStart scripts run through `/bin/sh` after
//! systemd's own unquoting, so the escaping is checked by what the shell
//! does with it.
//!
//! Directives as documented in systemd.service(5) (`ExecStart=`,
//! `Restart=`, `SuccessExitStatus=`, `RestartForceExitStatus=`,
//! `TimeoutStopSec=`; "Command lines": `%` specifiers, `$$` for a literal
//! `$`, C escapes in quotes), systemd.exec(5) (`Environment=`,
//! `EnvironmentFile=`, `WorkingDirectory=`, `UMask=`, `User=`, `Group=`,
//! `StandardOutput=append:`, `Limit*=`), systemd.kill(5) (`KillSignal=`),
//! systemd.unit(5) (`Requires=`, `After=`, `PartOf=`, `Wants=`,
//! `StartLimitBurst=`, `%i`) and systemd.resource-control(5)
//! (`MemoryMax=`).

use std::path::Path;

use serde_json::{json, Value};

use super::*;
use crate::config::{validate, validate_for, HostChecks};

fn config(services: Value) -> Config {
    validate(&json!({ "services": services }), Path::new("/srv/app")).unwrap()
}

/// The unit of `name` among `units`.
fn unit<'a>(units: &'a [Unit], name: &str) -> &'a str {
    &units
        .iter()
        .find(|u| u.name == name)
        .unwrap_or_else(|| panic!("no {name} in {units:?}"))
        .text
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

fn has(text: &str, line: &str) {
    assert!(lines(text).contains(&line), "no line {line:?} in:\n{text}");
}

fn lacks(text: &str, start: &str) {
    assert!(
        !text.lines().any(|l| l.starts_with(start)),
        "unexpected {start:?} in:\n{text}"
    );
}

#[test]
fn a_minimal_service_gets_the_defaults_mapped() {
    let units = render(&config(json!({"web": {"cmd": "sleep 100"}})), &[]);
    assert_eq!(
        units.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        vec!["web@.service", "taskmaster.target"]
    );
    let web = unit(&units, "web@.service");
    assert_eq!(
        lines(web),
        vec![
            "# web@.service, written by `taskmasterd --export systemd`.",
            "# One instance, web@0; %i is the instance number.",
            "[Unit]",
            "Description=Taskmaster service web, instance %i",
            "PartOf=taskmaster.target",
            "StartLimitBurst=4",
            "",
            "[Service]",
            "Type=simple",
            "ExecStart=/bin/sh -c 'exec sleep 100'",
            "Environment=\"TASKMASTER_SERVICE=web\" \"TASKMASTER_INSTANCE=%i\"",
            "Restart=on-failure",
            "RestartForceExitStatus=SIGHUP SIGINT SIGTERM SIGPIPE",
            "KillSignal=SIGTERM",
            "TimeoutStopSec=10",
            "StandardOutput=null",
            "StandardError=null",
        ]
    );
    assert_eq!(
        lines(unit(&units, "taskmaster.target")),
        vec![
            "# taskmaster.target, written by `taskmasterd --export systemd`: every instance",
            "# of the services with autostart.",
            "[Unit]",
            "Description=Taskmaster services",
            "Wants=web@0.service",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
        ]
    );
}

#[test]
fn every_mapped_option() {
    let dir = std::env::temp_dir().join(format!("tm-export-sd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.env"), "SECRET=s\nLEVEL=from-file\n").unwrap();
    let value = json!({"services": {
        "db": {"cmd": "postgres", "numprocs": 2},
        "web": {
            "cmd": "serve --port {instance+8000}",
            "numprocs": 3,
            "autorestart": "always",
            "exitcodes": [0, 2, 3],
            "startretries": 5,
            "stopsignal": "INT",
            "stoptime": 2.5,
            "stdout": "logs/web-{instance}.log",
            "stderr": "/dev/stderr",
            "stdout_maxbytes": 0,
            "env": {"QUEUE": "jobs", "NAME": "{name}", "PORT": "{instance+8000}", "LEVEL": "from-env"},
            "env_file": "app.env",
            "workingdir": "/srv/{service}",
            "umask": "027",
            "user": "www-data",
            "group": "www-data",
            "rlimits": {"nofile": 4096, "core": "unlimited"},
            "max_memory": "256MB",
            "depends_on": ["db"],
        },
        "batch": {"cmd": "run", "autostart": false, "autorestart": "never", "startretries": 0, "stoptime": 0},
    }});
    let (c, _) = validate_for(&value, &dir, HostChecks::Warn).unwrap();
    let units = render(&c, &[]);
    let web = unit(&units, "web@.service");
    for line in [
        "# Instances web@0 … web@2 (numprocs = 3); %i is the instance number.",
        "Requires=db@0.service db@1.service",
        "After=db@0.service db@1.service",
        "StartLimitBurst=6",
        // Arithmetic and a key the env file sets too: in the shell.
        "ExecStart=/bin/sh -c 'export LEVEL=\\'from-env\\'; export PORT=$$((%i+8000)); exec serve --port $$((%i+8000))'",
        "Environment=\"TASKMASTER_SERVICE=web\" \"TASKMASTER_INSTANCE=%i\"",
        "Environment=\"NAME=web:%i\"",
        "Environment=\"QUEUE=jobs\"",
        &format!("EnvironmentFile={}/app.env", dir.display()),
        "WorkingDirectory=/srv/web",
        "UMask=0027",
        "User=www-data",
        "Group=www-data",
        "Restart=always",
        "SuccessExitStatus=2 3",
        "KillSignal=SIGINT",
        "TimeoutStopSec=2500ms",
        &format!("StandardOutput=append:{}/logs/web-%i.log", dir.display()),
        "StandardError=journal",
        "LimitNOFILE=4096",
        "LimitCORE=infinity",
        "MemoryMax=268435456",
    ] {
        has(web, line);
    }
    lacks(web, "RestartForceExitStatus=");
    lacks(web, "Environment=\"PORT");
    lacks(web, "Environment=\"LEVEL");
    // Rotation is off: nothing to say about it.
    lacks(web, "# not exported");
    let batch = unit(&units, "batch@.service");
    has(batch, "Restart=no");
    has(batch, "TimeoutStopSec=1ms");
    has(batch, "StartLimitBurst=1");
    has(
        batch,
        "# autostart = false: taskmaster.target does not want them (systemctl start batch@0).",
    );
    let target = unit(&units, "taskmaster.target");
    has(target, "Wants=db@0.service db@1.service");
    has(target, "Wants=web@0.service web@1.service web@2.service");
    has(target, "# not wanted (autostart = false): batch@.service");
    lacks(target, "Wants=batch");
    // stderr with redirect_stderr, and /dev/stdout.
    let units = render(
        &config(json!({
            "a": {"cmd": "x", "stdout": "/dev/stdout", "redirect_stderr": true},
        })),
        &[],
    );
    let a = unit(&units, "a@.service");
    has(a, "StandardOutput=journal");
    has(a, "StandardError=inherit");
}

#[test]
fn what_does_not_map_is_a_comment() {
    let units = render(
        &config(json!({
            "db": {"cmd": "db", "healthcheck": {"cmd": "pg_isready"}},
            "job": {"cmd": "migrate"},
            "web": {
                "cmd": "serve",
                "exitcodes": [2],
                "starttime": 5,
                "stdout": "out/{instance+1}.log",
                "stderr": "err.log",
                "timestamps": true,
                "env": {"my-var": "x"},
                "workingdir": "/w/{instance:02}",
                "healthcheck": {"http": "http://127.0.0.1:8000/health", "interval": 3},
                "depends_on": {"db": "healthy", "job": "completed"},
                "autorestart": "never",
            },
        })),
        &["FATAL".to_string(), "healthy".to_string()],
    );
    let web = unit(&units, "web@.service");
    let comments: Vec<&str> = web
        .lines()
        .filter_map(|l| l.strip_prefix("# not exported: "))
        .collect();
    assert_eq!(
        comments,
        vec![
            "depends_on db = \"healthy\" (ordered after its start only: systemd has no health state)",
            "depends_on job = \"completed\" (ordered after its start only; a Type=oneshot job would be waited for)",
            "env.my-var (not a variable name systemd or sh accepts)",
            "workingdir = /w/{instance:02} (systemd has no {instance+K} or padding outside a shell)",
            "exitcodes = {2} without 0 (systemd always counts exit 0 as a success)",
            "startretries = 3 (with Restart=no systemd does not retry a failed start)",
            "stdout = /srv/app/out/{instance+1}.log (systemd has no {instance+K} or padding outside a shell; the stream goes to the journal)",
            "stderr_maxbytes = 52428800, stderr_backups = 10 (append: files are not rotated; logrotate can)",
            "timestamps = true (the journal stamps lines; append: files get none)",
            "healthcheck (http http://127.0.0.1:8000/health, every 3s): systemd has no health probes",
            "starttime = 5s (systemd counts a start once the program runs)",
        ]
    );
    has(web, "StandardOutput=journal");
    has(web, "StandardError=append:/srv/app/err.log");
    lacks(web, "WorkingDirectory=");
    has(web, "SuccessExitStatus=2");
    has(
        unit(&units, "db@.service"),
        "# not exported: healthcheck (cmd pg_isready, every 10s): systemd has no health probes",
    );
    has(
        unit(&units, "taskmaster.target"),
        "# not exported: Lua hooks (tm.on \"FATAL\", \"healthy\"): systemd runs no Lua (OnFailure= units can stand in for some)",
    );
}

#[test]
fn escaping_table() {
    let table: &[(&str, &str)] = &[
        ("echo 100%", "exec echo 100%%"),
        ("echo $HOME ${X}", "exec echo $$HOME $${X}"),
        ("echo 'a' \"b\"", "exec echo \\'a\\' \"b\""),
        ("echo a\\ b", "exec echo a\\\\ b"),
        ("a; b", "a; b"),
        ("serve {instance}", "exec serve %i"),
        ("serve {instance+8000}", "exec serve $$((%i+8000))"),
        ("serve {instance:03}", "exec serve $$(printf %%03d %i)"),
        (
            "serve {instance+1:02}",
            "exec serve $$(printf %%02d $$((%i+1)))",
        ),
        ("serve {instance:01} {instance:0}", "exec serve %i %i"),
        ("log {service} {name}", "exec log web web:%i"),
        ("awk '{{print $1}}'", "exec awk \\'{print $$1}\\'"),
        // In shell single quotes the shell's part goes outside them.
        (
            "sh -c 'echo {instance+1}; echo {instance}'",
            "exec sh -c \\'echo \\'\"$$((%i+1))\"\\'; echo %i\\'",
        ),
        ("echo \"{instance+1}\"", "exec echo \"$$((%i+1))\""),
    ];
    for (cmd, want) in table {
        assert_eq!(exec_script(&command_script(cmd), "web"), *want, "{cmd}");
    }
    assert_eq!(env_text("a\"b\\c%d$e\nf"), "a\\\"b\\\\c%%d$e\\nf");
    assert_eq!(path_text("/a/100%/b"), "/a/100%%/b");
    assert_eq!(
        shell_word("p-{instance+1}'x", "web"),
        "\\'p-\\'$$((%i+1))\\'\\'\\\\\\'\\'x\\'"
    );
    assert_eq!(timespan(Duration::from_secs(3)), "3");
    assert_eq!(timespan(Duration::from_micros(1500)), "2ms");
}

/// What systemd makes of an `ExecStart=` line for instance `index`:
/// specifiers (`%%`, `%i`) first, then the split into words with quotes
/// and C escapes (inside quotes too), then `$$` (systemd.service(5),
/// "Command lines"; systemd.syntax(7), "Quoting"). Our lines must come out
/// as exactly `/bin/sh`, `-c` and the script, which is returned.
fn systemd_argument(line: &str, index: u32) -> String {
    let value = line
        .strip_prefix("ExecStart=")
        .unwrap_or_else(|| panic!("not an ExecStart: {line}"));
    let mut specified = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            specified.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => specified.push('%'),
            Some('i') => specified.push_str(&index.to_string()),
            other => panic!("unexpected specifier %{other:?} in {line}"),
        }
    }
    let mut words: Vec<String> = Vec::new();
    let mut chars = specified.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match (quote, c) {
                (_, '\\') => match chars.next() {
                    Some('n') => word.push('\n'),
                    Some('t') => word.push('\t'),
                    Some('x') => {
                        let hex: String = chars.by_ref().take(2).collect();
                        word.push(u8::from_str_radix(&hex, 16).unwrap() as char);
                    }
                    Some(e @ ('\\' | '\'' | '"' | ' ')) => word.push(e),
                    other => panic!("escape \\{other:?} systemd would not take in {line}"),
                },
                (None, ' ') => break,
                (None, '\'' | '"') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (_, c) => word.push(c),
            }
        }
        assert_eq!(quote, None, "unbalanced quoting in {line}");
        words.push(word.replace("$$", "$"));
    }
    assert_eq!(words.len(), 3, "{words:?} from {line}");
    assert_eq!(
        (words[0].as_str(), words[1].as_str()),
        ("/bin/sh", "-c"),
        "{line}"
    );
    words.pop().unwrap_or_default()
}

#[test]
fn the_shell_runs_what_taskmaster_would() {
    // Each command prints; the unit's script, unquoted as systemd does
    // and run by sh for instance 3, must print what the daemon's own
    // expansion of the template prints.
    let cmds = [
        "printf '%s|' 'a {instance+1}' \"b {instance:03}\" c{instance} '{name}' {service}",
        "printf '%s|' '100%' \"$TASKMASTER_INSTANCE\" 'it'\\''s' back\\\\slash",
        "echo \"{instance+10:04}\"; echo 'tab\there'",
        "X='{instance+2}'; echo \"$X $PORT\"",
        "printf '%s\\n' 'multi\nline'",
    ];
    for cmd in cmds {
        let c =
            config(json!({"web": {"cmd": cmd, "numprocs": 5, "env": {"PORT": "{instance+8000}"}}}));
        let units = render(&c, &[]);
        let exec = unit(&units, "web@.service")
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .unwrap()
            .to_string();
        let script = systemd_argument(&exec, 3);
        let run = |script: &str| {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(script)
                .env("TASKMASTER_INSTANCE", "3")
                .env_remove("PORT")
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let spec = c.services["web"].spawn.for_instance("web", 3);
        let want = run(&format!(
            "PORT={}; export PORT; {}",
            spec.env["PORT"], spec.cmd
        ));
        assert_eq!(run(&script), want, "{cmd}\n{exec}\n{script}");
        assert!(!want.is_empty(), "{cmd} printed nothing");
    }
}
