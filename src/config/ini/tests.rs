//! Tables for the supervisord reader: the grammar, the expansions, the glob,
//! and whole files (includes, warnings, errors with `FILE:LINE`).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::expand::{expand, Mode, Names};
use super::include::matches;
use super::syntax::parse;
use super::values::environment;
use super::*;

fn dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("tm-ini-{}-{tag}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// `(section, key, value, line)` of an entry.
type Row = (String, String, String, usize);

/// Every entry of `text`.
fn entries(text: &str) -> Vec<Row> {
    parse(text)
        .unwrap_or_else(|e| panic!("{text:?}: {e:?}"))
        .into_iter()
        .flat_map(|s| {
            let name = s.name.clone();
            s.entries
                .into_iter()
                .map(move |e| (name.clone(), e.key, e.value, e.line))
        })
        .collect()
}

#[test]
fn grammar_table() {
    let e = |s: &str, k: &str, v: &str, l: usize| (s.to_string(), k.to_string(), v.to_string(), l);
    let table: Vec<(&str, Vec<Row>)> = vec![
        ("[a]\nk=v\n", vec![e("a", "k", "v", 2)]),
        ("[a]\nk = v  \n", vec![e("a", "k", "v", 2)]),
        // `:` delimits too; the first of `=` / `:` splits.
        ("[a]\nk: v\n", vec![e("a", "k", "v", 2)]),
        (
            "[a]\nurl=http://x:1/\n",
            vec![e("a", "url", "http://x:1/", 2)],
        ),
        ("[a]\nk:v=w\n", vec![e("a", "k", "v=w", 2)]),
        // Keys are lowercased, section names are not.
        (
            "[Program:X]\nCommand=a\n",
            vec![e("Program:X", "command", "a", 2)],
        ),
        // Comments: whole lines with ; or #, inline ; only after a blank.
        (
            "; top\n# top\n[a]\n  ; indented\nk=v ; note\nj=v;not\nh=v # kept\ni=v\t;tab\n",
            vec![
                e("a", "k", "v", 5),
                e("a", "j", "v;not", 6),
                e("a", "h", "v # kept", 7),
                e("a", "i", "v", 8),
            ],
        ),
        ("[a] ; header comment\nk=v\n", vec![e("a", "k", "v", 2)]),
        // Continuation lines, blank lines and comments between them skipped.
        (
            "[a]\nk=one\n  two ; c\n\n\ttwo=three\n; x\n  four\nj=x\n",
            vec![
                e("a", "k", "one\ntwo\ntwo=three\nfour", 2),
                e("a", "j", "x", 8),
            ],
        ),
        // A value may start on the next line.
        ("[a]\nk=\n  v\n", vec![e("a", "k", "v", 2)]),
        // An indented key with nothing to continue is a key.
        ("[a]\n  k=v\n", vec![e("a", "k", "v", 2)]),
        // The last of a repeated key wins.
        (
            "[a]\nk=1\nj=2\nk=3\n",
            vec![e("a", "k", "3", 4), e("a", "j", "2", 3)],
        ),
        // CRLF files.
        ("[a]\r\nk=v\r\n", vec![e("a", "k", "v", 2)]),
        ("[a]\nk=\n", vec![e("a", "k", "", 2)]),
    ];
    for (text, want) in table {
        assert_eq!(entries(text), want, "{text:?}");
    }
    let bad: &[(&str, usize, &str)] = &[
        (
            "k=v\n",
            1,
            "expected a [section] header before the first key",
        ),
        ("[a]\njust words\n", 2, "expected KEY = VALUE"),
        ("\n[a\n", 2, "expected a section header like [program:name]"),
        ("[ ]\n", 1, "empty section name"),
        ("[a]\n=v\n", 2, "missing key before '='"),
    ];
    for (text, line, why) in bad {
        assert_eq!(parse(text), Err((*line, why.to_string())), "{text:?}");
    }
}

fn names(numprocs: u32, start: u32) -> Names<'static> {
    Names {
        program: Some("web"),
        here: "/etc/sv",
        numprocs: Some(numprocs),
        start: Some(start),
    }
}

#[test]
fn expansion_table() {
    std::env::set_var("TM_INI_TEST_VAR", "from env");
    let t = Mode::Template;
    let l = Mode::Literal;
    let table: &[(&str, u32, u32, Mode, &str)] = &[
        ("plain", 2, 0, t, "plain"),
        ("%(program_name)s-%(group_name)s", 2, 0, t, "web-web"),
        ("100%%", 2, 0, t, "100%"),
        ("%(process_num)d", 2, 0, t, "{instance}"),
        ("%(process_num)s", 2, 0, t, "{instance}"),
        ("%(process_num)02d", 2, 0, t, "{instance:02}"),
        ("%(process_num)1d", 2, 0, t, "{instance}"),
        ("port %(process_num)d", 2, 8000, t, "port {instance+8000}"),
        (
            "%(program_name)s_%(process_num)03d.log",
            2,
            1,
            t,
            "web_{instance+1:03}.log",
        ),
        ("%(here)s/run", 2, 0, t, "/etc/sv/run"),
        ("%(ENV_TM_INI_TEST_VAR)s!", 2, 0, t, "from env!"),
        (
            "%(numprocs)d/%(numprocs)03d/%(numprocs)s",
            4,
            0,
            t,
            "4/004/4",
        ),
        (
            "[%(program_name)5s|%(program_name)-5s]",
            1,
            0,
            l,
            "[  web|web  ]",
        ),
        // Braces are text in a template, escaped so they stay text.
        (
            "awk '{print $1}' %(process_num)d",
            2,
            0,
            t,
            "awk '{{print $1}}' {instance}",
        ),
        ("{instance}", 2, 0, t, "{{instance}}"),
        ("{instance}", 2, 0, l, "{instance}"),
        // One instance: process_num is a number anywhere.
        ("%(process_num)d", 1, 0, l, "0"),
        ("%(process_num)02d", 1, 5, l, "05"),
    ];
    for (value, numprocs, start, mode, want) in table {
        assert_eq!(
            expand(value, "command", &names(*numprocs, *start), *mode).as_deref(),
            Ok(*want),
            "{value}"
        );
    }
    let bad: &[(&str, Mode, &str)] = &[
        (
            "%(nope)s",
            t,
            "command: unknown name \"nope\" in %(nope)s (known: program_name, group_name, process_num, numprocs, here, host_node_name, ENV_X)",
        ),
        (
            "%(ENV_TM_INI_SURELY_UNSET)s",
            t,
            "command: %(ENV_TM_INI_SURELY_UNSET)s: the environment variable TM_INI_SURELY_UNSET is not set",
        ),
        ("date +%s", t, "command: a '%' must start %(name)s or be doubled (%%), got \"%s\""),
        ("50%", t, "command: a '%' must start %(name)s or be doubled (%%), got \"%\""),
        ("%(here", t, "command: unclosed \"%(\""),
        ("%(here)", t, "command: %(here) must be followed by a conversion like s or d"),
        ("%(here)x", t, "command: %(here) must be followed by a conversion like s or d"),
        ("%(here)d", t, "command: %(here)d: this name is text, use %(…)s"),
        (
            "%(process_num)3d",
            t,
            "command: %(process_num)3d has no {instance} equivalent (use %(process_num)d or %(process_num)0Nd)",
        ),
        (
            "%(process_num)d",
            l,
            "command: %(process_num)d cannot differ between instances in this key (only in command, environment, directory and the log files)",
        ),
    ];
    for (value, mode, want) in bad {
        assert_eq!(
            expand(value, "command", &names(2, 0), *mode),
            Err(want.to_string()),
            "{value}"
        );
    }
}

#[test]
fn glob_table() {
    let yes: &[(&str, &str)] = &[
        ("*.conf", "web.conf"),
        ("*", "anything"),
        ("w?b.conf", "web.conf"),
        ("[a-c]x", "bx"),
        ("[!a-c]x", "dx"),
        ("[]]x", "]x"),
        ("a[", "a["),
        ("*.*", "a.b"),
        ("a*b*c", "aXbYc"),
    ];
    let no: &[(&str, &str)] = &[
        ("*.conf", "web.ini"),
        ("w?b.conf", "wb.conf"),
        ("[a-c]x", "dx"),
        ("[!a-c]x", "bx"),
        ("a*b*c", "aXbY"),
    ];
    for (p, n) in yes {
        assert!(matches(p, n), "{p} should match {n}");
    }
    for (p, n) in no {
        assert!(!matches(p, n), "{p} should not match {n}");
    }
}

/// Loads `main` from a folder holding `files`; errors with the folder
/// removed from paths.
fn load_in(files: &[(&str, &str)]) -> (PathBuf, Result<Ini, String>) {
    let d = dir("load");
    for (name, text) in files {
        let p = d.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    let r = load(&d.join(files[0].0));
    let prefix = format!("{}/", d.display());
    (d, r.map_err(|e| e.replace(&prefix, "")))
}

fn warnings_of(d: &Path, ini: &Ini) -> Vec<String> {
    let prefix = format!("{}/", d.display());
    ini.warnings
        .iter()
        .map(|w| w.replace(&prefix, ""))
        .collect()
}

/// supervisord's documented sample, with the program section filled in.
const SAMPLE: &str = r#"; Sample supervisor config file.
[unix_http_server]
file=/tmp/supervisor.sock   ; the path to the socket file

[supervisord]
logfile=/tmp/supervisord.log ; main log file; default $CWD/supervisord.log
logfile_maxbytes=50MB        ; max main logfile bytes b4 rotation; default 50MB
nodaemon=false               ; start in foreground if true; default false

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix:///tmp/supervisor.sock ; use a unix:// URL  for a unix socket

[program:theprogramname]
command=/bin/cat              ; the program (relative uses PATH, can take args)
process_name=%(program_name)s ; process_name expr (default %(program_name)s)
numprocs=1                    ; number of processes copies to start (def 1)
directory=/tmp                ; directory to cwd to before exec (def no cwd)
umask=022                     ; umask for process (default None)
priority=999                  ; the relative start priority (default 999)
autostart=true                ; start at supervisord start (default: true)
startsecs=1                   ; # of secs prog must stay up to be running (def. 1)
startretries=3                ; max # of serial start failures when starting (default 3)
autorestart=unexpected        ; when to restart if exited after running (def: unexpected)
exitcodes=0,2                 ; 'expected' exit codes used with autorestart (default 0)
stopsignal=QUIT               ; signal used to kill process (default TERM)
stopwaitsecs=10               ; max num secs to wait b4 SIGKILL (default 10)
stopasgroup=false             ; send stop signal to the UNIX process group (default false)
killasgroup=false             ; SIGKILL the UNIX process group (def false)
redirect_stderr=true          ; redirect proc stderr to stdout (default false)
stdout_logfile=/a/path        ; stdout log path, NONE for none; default AUTO
stdout_logfile_maxbytes=1MB   ; max # logfile bytes b4 rotation (default 50MB)
stdout_logfile_backups=10     ; # of stdout logfile backups (0 means none, default 10)
stdout_capture_maxbytes=1MB   ; number of bytes in 'capturemode' (default 0)
stdout_events_enabled=false   ; emit events on stdout writes (default false)
stderr_logfile=/a/path        ; stderr log path, NONE for none; default AUTO
environment=A="1",B="2"       ; process environment additions (def no adds)
serverurl=AUTO                ; override serverurl computation (childutils)

[include]
files = relative/directory/*.ini
"#;

#[test]
fn supervisords_sample_maps_and_warns_once_per_ignored_key() {
    let (d, r) = load_in(&[("supervisord.conf", SAMPLE)]);
    let ini = r.unwrap();
    assert_eq!(
        ini.config,
        json!({"services": {"theprogramname": {
            "cmd": "/bin/cat",
            "numprocs": 1,
            "workingdir": "/tmp",
            "umask": "022",
            "autostart": true,
            "starttime": 1,
            "startretries": 3,
            "autorestart": "unexpected",
            "exitcodes": [0, 2],
            "stopsignal": "SIGQUIT",
            "stoptime": 10,
            "redirect_stderr": true,
            "stdout": "/a/path",
            "stdout_maxbytes": "1MB",
            "stdout_backups": 10,
            "env": {"A": "1", "B": "2"},
        }}})
    );
    let warnings = warnings_of(&d, &ini);
    let want = [
        "supervisord.conf:18: [program:theprogramname] process_name ignored: instances are named NAME:0 … NAME:N-1",
        "supervisord.conf:22: [program:theprogramname] priority ignored: start order comes from depends_on",
        "supervisord.conf:30: [program:theprogramname] stopasgroup ignored: stop signals always go to the whole process group",
        "supervisord.conf:31: [program:theprogramname] killasgroup ignored: stop signals always go to the whole process group",
        "supervisord.conf:36: [program:theprogramname] stdout_capture_maxbytes ignored: process communication events have no equivalent",
        "supervisord.conf:37: [program:theprogramname] stdout_events_enabled ignored: process communication events have no equivalent",
        "supervisord.conf:40: [program:theprogramname] serverurl ignored: no equivalent",
        "supervisord.conf:38: [program:theprogramname] stderr_logfile ignored: redirect_stderr is true (stderr goes to the stdout file)",
    ];
    assert!(
        warnings[0].starts_with("supervisord.conf:43: no file matches include"),
        "{warnings:?}"
    );
    assert_eq!(&warnings[1..], want, "{warnings:#?}");
    // What the schema makes of it.
    let c = crate::config::validate(&ini.config, Path::new("/b")).unwrap();
    let s = &c.services["theprogramname"];
    assert_eq!(s.policy.exitcodes, vec![0, 2]);
    assert_eq!(s.policy.stopsignal, nix::sys::signal::Signal::SIGQUIT);
    assert_eq!(s.spawn.stdout_rotation.maxbytes, 1024 * 1024);
    assert_eq!(s.spawn.umask, Some(0o022));
}

#[test]
fn numprocs_process_num_environment_and_include() {
    let main = "[supervisord]\nnodaemon=true\n\n[include]\nfiles = conf.d/*.conf  extra/one.ini\n";
    let workers = r#"[program:worker]
command=python3 -m worker --id %(process_num)02d
  --queue jobs
numprocs=3
numprocs_start=1
stdout_logfile=%(here)s/logs/%(program_name)s-%(process_num)02d.log
stderr_logfile=NONE
environment=
    QUEUE="jobs,high",
    WORKER_ID="%(process_num)d",
    HOME='/home/w'
autorestart=true
autostart=yes
"#;
    let (d, r) = load_in(&[
        ("supervisord.conf", main),
        ("conf.d/workers.conf", workers),
        ("conf.d/.hidden.conf", "[program:hidden]\ncommand=x\n"),
        ("conf.d/notes.txt", "not ini"),
        (
            "extra/one.ini",
            "[program:one]\ncommand=sleep 1\nautostart=off\n",
        ),
    ]);
    let ini = r.unwrap();
    let here = d.join("conf.d").display().to_string();
    assert_eq!(
        ini.config,
        json!({"services": {
            "worker": {
                "cmd": "python3 -m worker --id {instance+1:02} --queue jobs",
                "numprocs": 3,
                "stdout": format!("{here}/logs/worker-{{instance+1:02}}.log"),
                "env": {"QUEUE": "jobs,high", "WORKER_ID": "{instance+1}", "HOME": "/home/w"},
                "autorestart": "always",
                "autostart": true,
            },
            "one": {"cmd": "sleep 1", "autostart": false},
        }})
    );
    assert_eq!(
        ini.files,
        vec![
            d.join("supervisord.conf"),
            d.join("conf.d/workers.conf"),
            d.join("extra/one.ini")
        ]
    );
    assert!(ini.warnings.is_empty(), "{:?}", ini.warnings);
    // Each instance gets its own number, from numprocs_start.
    let c = crate::config::validate(&ini.config, Path::new("/b")).unwrap();
    let w = &c.services["worker"];
    let spec = w.spawn.for_instance("worker", 2);
    assert_eq!(spec.cmd, "python3 -m worker --id 03 --queue jobs");
    assert_eq!(spec.env["WORKER_ID"], "3");
    assert_eq!(
        spec.stdout,
        Some(PathBuf::from(format!("{here}/logs/worker-03.log")))
    );
}

#[test]
fn values_are_checked_with_file_and_line() {
    let bad: &[(&str, &str)] = &[
        ("[program:a]\ncommand=x\nautostart=maybe\n", "f.conf:3: autostart: expected true/false, yes/no, on/off or 1/0, got \"maybe\""),
        ("[program:a]\ncommand=x\nautorestart=sometimes\n", "f.conf:3: autorestart: expected true, false or unexpected, got \"sometimes\""),
        ("[program:a]\ncommand=x\nexitcodes=0,two\n", "f.conf:3: exitcodes: expected exit codes 0-255 separated by commas, got \"two\""),
        ("[program:a]\ncommand=x\nnumprocs=-1\n", "f.conf:3: numprocs: expected an integer >= 0, got \"-1\""),
        ("[program:a]\ncommand=x\nstartsecs=soon\n", "f.conf:3: startsecs: expected a number of seconds, got \"soon\""),
        ("[program:a]\ncommand=x\nstopsignal=NOPE\n", "f.conf:3: stopsignal: unknown signal \"NOPE\""),
        ("[program:a]\ncommand=x\nstdout_logfile_maxbytes=lots\n", "f.conf:3: stdout_logfile_maxbytes: expected bytes or a size like 50MB, got \"lots\""),
        ("[program:a]\ncommand=x\numask=999\n", "f.conf:3: umask: expected an octal umask like 022, got \"999\""),
        ("[program:a]\ncommand=x\nenvironment=A=1,B\n", "f.conf:3: environment: expected '=' after B"),
        ("[program:a]\ncommand=x\nenvironment=A=\"open\n", "f.conf:3: environment: unterminated quote in the value of A"),
        ("[program:a]\ncommand=x\nenvironment=A=\"x\" y\n", "f.conf:3: environment: expected ',' after the value of A, got \"y\""),
        ("\n[program:a]\nnumprocs=2\n", "f.conf:2: [program:a] has no command"),
        ("[program:a b]\ncommand=x\n", "f.conf:1: program name \"a b\" may only use letters, digits, '_', '.' and '-'"),
        ("[program:a]\ncommand=x\n[program:a]\ncommand=y\n", "f.conf:3: [program:a] is defined twice (first at f.conf:1)"),
        ("[program:a]\ncommand=x %(nope)s\n", "f.conf:2: command: unknown name \"nope\" in %(nope)s (known: program_name, group_name, process_num, numprocs, here, host_node_name, ENV_X)"),
        ("[program:a]\ncommand=x\nnumprocs=2\nuser=u%(process_num)d\n", "f.conf:4: user: %(process_num)d cannot differ between instances in this key (only in command, environment, directory and the log files)"),
        ("[program:a]\ncommand=x\n  oops\n[b\n", "f.conf:4: expected a section header like [program:name]"),
        ("[include]\nfile=x\n", "f.conf:1: [include] has no files = setting"),
    ];
    for (text, want) in bad {
        let (_, r) = load_in(&[("f.conf", text)]);
        assert_eq!(r.unwrap_err(), *want, "{text:?}");
    }
    // Every problem at once.
    let (_, r) = load_in(&[(
        "f.conf",
        "[program:a]\ncommand=x\nautostart=maybe\n[program:b]\nstartsecs=x\n",
    )]);
    let e = r.unwrap_err();
    assert_eq!(e.lines().count(), 3, "{e}");
}

#[test]
fn include_cycles_are_errors_at_the_include_line() {
    let (_, r) = load_in(&[
        (
            "a.conf",
            "[program:a]\ncommand=x\n[include]\nfiles=b.conf\n",
        ),
        ("b.conf", "\n[include]\nfiles = sub/*.conf\n"),
        ("sub/c.conf", "[include]\nfiles=../a.conf\n"),
    ]);
    assert_eq!(
        r.unwrap_err(),
        "sub/c.conf:2: include cycle: a.conf -> b.conf -> sub/c.conf -> sub/../a.conf"
    );
    // A file reached twice without a cycle is read once.
    let (_, r) = load_in(&[
        ("a.conf", "[include]\nfiles=b.conf b.conf *.inc\n"),
        ("b.conf", "[program:b]\ncommand=x\n"),
        ("c.inc", "[include]\nfiles=b.conf\n"),
    ]);
    let ini = r.unwrap();
    assert_eq!(ini.config["services"]["b"]["cmd"], "x");
    assert_eq!(ini.files.len(), 3);
    // A syntax error in an included file names that file.
    let (_, r) = load_in(&[
        ("a.conf", "[include]\nfiles=b.conf\n"),
        ("b.conf", "[program:b]\ncommand=x\nwhat\n"),
    ]);
    assert_eq!(r.unwrap_err(), "b.conf:3: expected KEY = VALUE");
}

#[test]
fn log_file_spellings_and_other_sections() {
    let (d, r) = load_in(&[(
        "f.conf",
        "[group:g]\nprograms=a\n[eventlistener:e]\ncommand=x\n[program:a]\ncommand=x\nstdout_logfile=AUTO\nstderr_logfile=none\ncomand=typo\nstopsignal=9\nstartsecs=0.5\n",
    )]);
    let ini = r.unwrap();
    assert_eq!(
        ini.config["services"]["a"],
        json!({"cmd": "x", "stopsignal": "SIGKILL", "starttime": 0.5})
    );
    assert_eq!(
        warnings_of(&d, &ini),
        vec![
            "f.conf:1: [group:g] ignored: its programs run as services of their own",
            "f.conf:3: [eventlistener:e] ignored: no equivalent",
            "f.conf:9: [program:a] comand ignored: not a supervisord program key — did you mean \"command\"?",
            "f.conf:7: [program:a] stdout_logfile = AUTO: no such file here, the stream is discarded (name a file to keep it)",
        ]
    );
}

#[test]
fn environment_table() {
    let table: &[(&str, &[(&str, &str)])] = &[
        ("A=1", &[("A", "1")]),
        ("A=\"1\",B=2", &[("A", "1"), ("B", "2")]),
        ("A='x, y',B=\"\"", &[("A", "x, y"), ("B", "")]),
        (
            " A = 1 ,\n B=http://h:1/p , ",
            &[("A", "1"), ("B", "http://h:1/p")],
        ),
        (
            "PATH=\"/opt/bin:/usr/bin\"",
            &[("PATH", "/opt/bin:/usr/bin")],
        ),
        ("A=1,A=2", &[("A", "2")]),
        ("", &[]),
    ];
    for (text, want) in table {
        let got = environment(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want, "{text:?}");
    }
    assert!(environment("=1").is_err());
    assert!(environment("A B=1").is_err());
}

#[test]
fn a_value_that_is_no_ini_value_keeps_its_type() {
    let (_, r) = load_in(&[(
        "f.conf",
        "[program:a]\ncommand=x\nstdout_logfile_maxbytes=1024\nstderr_logfile_maxbytes=0\nstopwaitsecs=2.5\n",
    )]);
    let v: Value = r.unwrap().config["services"]["a"].clone();
    assert_eq!(v["stdout_maxbytes"], json!(1024));
    assert_eq!(v["stderr_maxbytes"], json!(0));
    assert_eq!(v["stoptime"], json!(2.5));
}
