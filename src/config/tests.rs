//! The validator's own tests: defaults, every option, the wording of
//! errors, and the §11 options (placeholders in fields, `healthcheck`,
//! `depends_on`) through both front-ends.

use super::*;
use serde_json::json;

fn errors(v: Value) -> Vec<String> {
    match validate(&v, Path::new("/etc/tm")) {
        Err(ConfigError::Invalid(e)) => e,
        other => panic!("expected schema errors, got {other:?}"),
    }
}

#[test]
fn defaults_match_the_spec_table() {
    let c = validate(
        &json!({"services": {"web": {"cmd": "sleep 1"}}}),
        Path::new("/b"),
    )
    .unwrap();
    let s = &c.services["web"];
    assert_eq!(s.numprocs, 1);
    assert_eq!(*s.policy, Policy::default());
    assert_eq!(s.policy.starttime, Duration::from_secs(1));
    assert_eq!(s.policy.stoptime, Duration::from_secs(10));
    assert_eq!(s.spawn.stdout, None);
    assert_eq!(s.spawn.umask, None);
    assert!(s.spawn.env.is_empty());
}

#[test]
fn every_option_is_read() {
    let c = validate(
        &json!({"services": {"web": {
            "cmd": "x", "numprocs": 2.0, "autostart": false, "autorestart": "always",
            "exitcodes": [0, 2], "startretries": 5, "starttime": 0.5, "stopsignal": "SIGUSR1",
            "stoptime": 3, "stdout": "out.log", "stderr": "/abs/err.log",
            "env": {"A": "b", "N": 5, "F": 1.5}, "workingdir": "wd", "umask": "027"
        }}}),
        Path::new("/b"),
    )
    .unwrap();
    let s = &c.services["web"];
    assert_eq!(s.numprocs, 2);
    assert!(!s.policy.autostart);
    assert_eq!(s.policy.autorestart, AutoRestart::Always);
    assert_eq!(s.policy.exitcodes, vec![0, 2]);
    assert_eq!(s.policy.startretries, 5);
    assert_eq!(s.policy.starttime, Duration::from_millis(500));
    assert_eq!(s.policy.stopsignal, Signal::SIGUSR1);
    assert_eq!(s.policy.stoptime, Duration::from_secs(3));
    assert_eq!(s.spawn.stdout, Some(PathBuf::from("/b/out.log")));
    assert_eq!(s.spawn.stderr, Some(PathBuf::from("/abs/err.log")));
    assert_eq!(s.spawn.workingdir, Some(PathBuf::from("/b/wd")));
    assert_eq!(s.spawn.umask, Some(0o027));
    assert_eq!(s.spawn.env["N"], "5");
    assert_eq!(s.spawn.env["F"], "1.5");
}

#[test]
fn numprocs_range_names_the_field() {
    let e = errors(json!({"services": {"web": {"cmd": "x", "numprocs": 0}}}));
    assert_eq!(
        e,
        vec!["services.web.numprocs: must be between 1 and 100, got 0"]
    );
    let e = errors(json!({"services": {"web": {"cmd": "x", "numprocs": 101}}}));
    assert_eq!(
        e,
        vec!["services.web.numprocs: must be between 1 and 100, got 101"]
    );
    let e = errors(json!({"services": {"web": {"cmd": "x", "numprocs": 1.5}}}));
    assert_eq!(
        e,
        vec!["services.web.numprocs: expected an integer, got number 1.5"]
    );
}

#[test]
fn unknown_option_suggests_the_near_one() {
    let e = errors(json!({"services": {"web": {"cmd": "x", "autorestrat": "always"}}}));
    assert_eq!(
        e,
        vec!["unknown option \"autorestrat\" in services.web — did you mean \"autorestart\"?"]
    );
    let e = errors(json!({"services": {"web": {"cmd": "x", "zzzzzzzz": 1}}}));
    assert_eq!(e, vec!["unknown option \"zzzzzzzz\" in services.web"]);
    let e = errors(json!({"service": {}}));
    assert_eq!(
        e,
        vec!["unknown option \"service\" in config — did you mean \"services\"?"]
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let e = errors(json!({"services": {
        "a": {"numprocs": 0},
        "b": {"cmd": "x", "autorestart": "sometimes", "stopsignal": "NOPE", "umask": "999",
              "exitcodes": [0, "x"], "starttime": -1, "env": {"K": true}, "startretries": -1},
        "bad name": {"cmd": "x"}
    }}));
    let expected = [
        "services.a.cmd: required option missing",
        "services.a.numprocs: must be between 1 and 100, got 0",
        "services.b.autorestart: expected \"always\", \"never\" or \"unexpected\", got string \"sometimes\"",
        "services.b.exitcodes[2]: expected an integer, got string \"x\"",
        "services.b.startretries: must be at least 0, got -1",
        "services.b.starttime: must be a number of seconds >= 0, got -1",
        "services.b.stopsignal: unknown signal \"NOPE\" (expected a name like \"TERM\")",
        "services.b.umask: expected an octal umask like \"022\", got string \"999\"",
        "services.b.env.K: expected a string or number, got boolean true",
        "services.bad name: service names may only use letters, digits, '_', '.' and '-'",
    ];
    for want in expected {
        assert!(e.iter().any(|m| m == want), "missing {want:?} in {e:#?}");
    }
    assert_eq!(e.len(), expected.len(), "{e:#?}");
}

#[test]
fn wrong_shapes_are_named() {
    assert_eq!(
        errors(json!([1])),
        vec!["config: must be a table with a \"services\" field, got a list"]
    );
    assert_eq!(
        errors(json!({"services": 3})),
        vec!["services: expected a table of services, got number 3"]
    );
    assert_eq!(
        errors(json!({"services": {"w": "sleep"}})),
        vec!["services.w: expected a table of options, got string \"sleep\""]
    );
}

// SPEC §11: placeholders in the templated fields.

#[test]
fn placeholders_are_kept_as_templates_and_expand_per_instance() {
    let c = validate(
        &json!({"services": {"web": {
            "cmd": "python3 -m http.server {instance+8000}", "numprocs": 3,
            "env": {"PORT": "{instance+8000}", "NAME": "{name}", "LIT": "{{instance}}", "N": 5},
            "stdout": "logs/{name}.log", "stderr": "/var/log/{service}-{instance:02}.err",
            // Does not exist, and must not be looked for: it is a template.
            "workingdir": "run/{instance}",
        }}}),
        Path::new("/b"),
    )
    .unwrap();
    let s = &c.services["web"].spawn;
    // What the diff compares: the templates, joined to the config folder.
    assert_eq!(s.cmd, "python3 -m http.server {instance+8000}");
    assert_eq!(s.stdout, Some(PathBuf::from("/b/logs/{name}.log")));
    assert_eq!(s.workingdir, Some(PathBuf::from("/b/run/{instance}")));

    let one = s.for_instance("web", 1);
    let mut want = s.clone();
    want.cmd = "python3 -m http.server 8001".into();
    want.env = [
        ("PORT", "8001"),
        ("NAME", "web:1"),
        ("LIT", "{instance}"),
        ("N", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // `{name}` holds a ':', which is fine in a path.
    want.stdout = Some(PathBuf::from("/b/logs/web:1.log"));
    want.stderr = Some(PathBuf::from("/var/log/web-01.err"));
    want.workingdir = Some(PathBuf::from("/b/run/1"));
    assert_eq!(one, want);
    assert_eq!(s.for_instance("web", 0).env["PORT"], "8000");
}

#[test]
fn without_placeholders_an_instance_gets_the_spec_itself() {
    let c = validate(
        &json!({"services": {"web": {
            "cmd": "awk '{print $1}' ${HOME}", "env": {"A": "{b}"}, "stdout": "o.log"
        }}}),
        Path::new("/b"),
    )
    .unwrap();
    let s = &c.services["web"].spawn;
    assert_eq!(&s.for_instance("web", 4), s);
}

#[test]
fn braces_in_the_config_folder_are_not_placeholders() {
    let c = validate(
        &json!({"services": {"web": {"cmd": "x", "stdout": "o.log", "stderr": "{name}.err"}}}),
        Path::new("/srv/{instance}}"),
    )
    .unwrap();
    let s = c.services["web"].spawn.for_instance("web", 2);
    assert_eq!(s.stdout, Some(PathBuf::from("/srv/{instance}}/o.log")));
    assert_eq!(s.stderr, Some(PathBuf::from("/srv/{instance}}/web:2.err")));
}

#[test]
fn a_negative_instance_is_an_error_in_every_templated_field() {
    let e = errors(json!({"services": {"web": {
        "cmd": "x {instance-5}", "numprocs": 4,
        "env": {"PORT": "{instance-1}"},
        "stdout": "{instance-2}.log", "stderr": "/e/{instance-1:03}", "workingdir": "w{instance-9}",
        "healthcheck": {"cmd": "check {instance-1}"},
    }}}));
    assert_eq!(
        e,
        vec![
            "services.web.cmd: {instance-5} is negative for instance 0",
            "services.web.env.PORT: {instance-1} is negative for instance 0",
            "services.web.stdout: {instance-2} is negative for instance 0",
            "services.web.stderr: {instance-1:03} is negative for instance 0",
            "services.web.workingdir: {instance-9} is negative for instance 0",
            "services.web.healthcheck.cmd: {instance-1} is negative for instance 0",
        ]
    );
    assert_eq!(
        errors(json!({"services": {"web": {"cmd": "x {instance+99999999999999999999}"}}})),
        vec!["services.web.cmd: {instance+99999999999999999999} is out of range"]
    );
    assert_eq!(
        errors(json!({"services": {"web": {"cmd": "x {instance:0100}"}}})),
        vec!["services.web.cmd: {instance:0100} pads to more than 64 digits (out of range)"]
    );
    // `{instance-0}` and escaped text are fine.
    validate(
        &json!({"services": {"web": {"cmd": "x {instance-0} {{instance-1}}"}}}),
        Path::new("/b"),
    )
    .unwrap();
}

// SPEC §11: healthcheck.

fn healthcheck(hc: Value, numprocs: u32) -> Result<Healthcheck, Vec<String>> {
    let v = json!({"services": {"web": {"cmd": "x", "numprocs": numprocs, "healthcheck": hc}}});
    match validate(&v, Path::new("/b")) {
        Ok(c) => Ok(c.services["web"]
            .policy
            .healthcheck
            .clone()
            .expect("a healthcheck")),
        Err(ConfigError::Invalid(e)) => Err(e),
        Err(other) => panic!("{other}"),
    }
}

#[test]
fn healthcheck_defaults_match_the_spec() {
    assert_eq!(
        healthcheck(json!({"cmd": "pg_isready"}), 1),
        Ok(Healthcheck {
            probe: Probe::Cmd("pg_isready".into()),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            retries: 3,
            start_period: Duration::ZERO,
            on_unhealthy: OnUnhealthy::Restart,
        })
    );
    let c = validate(
        &json!({"services": {"web": {"cmd": "x", "healthcheck": null}}}),
        Path::new("/b"),
    )
    .unwrap();
    assert_eq!(c.services["web"].policy.healthcheck, None);
}

#[test]
fn healthcheck_every_field_is_read() {
    assert_eq!(
        healthcheck(
            json!({"http": "http://127.0.0.1:{instance+8000}/health", "interval": 0.5,
                   "timeout": 0.25, "retries": 5, "start_period": 2.5, "on_unhealthy": "none"}),
            3
        ),
        Ok(Healthcheck {
            probe: Probe::Http("http://127.0.0.1:{instance+8000}/health".into()),
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(250),
            retries: 5,
            start_period: Duration::from_millis(2500),
            on_unhealthy: OnUnhealthy::None,
        })
    );
    let tcp = healthcheck(json!({"tcp": "[::1]:{instance+5432}"}), 2).unwrap();
    assert_eq!(tcp.probe, Probe::Tcp("[::1]:{instance+5432}".into()));
    assert_eq!(
        tcp.for_instance("web", 1).probe,
        Probe::Tcp("[::1]:5433".into())
    );
    assert_eq!(tcp.for_instance("web", 1).retries, 3);
    let plain = healthcheck(json!({"tcp": "db:5432", "on_unhealthy": "restart"}), 1).unwrap();
    assert_eq!(plain.for_instance("web", 0), plain);
}

#[test]
fn healthcheck_errors_name_the_field() {
    let p = "services.web.healthcheck";
    let table: &[(Value, u32, String)] = &[
        (
            json!({}),
            1,
            format!("{p}: expected exactly one of cmd, http or tcp"),
        ),
        (
            json!({"interval": 5}),
            1,
            format!("{p}: expected exactly one of cmd, http or tcp"),
        ),
        (
            json!({"cmd": "a", "http": "http://h/"}),
            1,
            format!("{p}: expected exactly one of cmd, http or tcp, got cmd and http"),
        ),
        (
            json!({"cmd": "a", "http": "http://h/", "tcp": "h:1"}),
            1,
            format!("{p}: expected exactly one of cmd, http or tcp, got cmd, http and tcp"),
        ),
        (
            json!("pg_isready"),
            1,
            format!(
                "{p}: expected a table with one of cmd, http or tcp, got string \"pg_isready\""
            ),
        ),
        (
            json!({"cmd": "a", "retries": 0}),
            1,
            format!("{p}.retries: must be at least 1, got 0"),
        ),
        (
            json!({"cmd": "a", "retries": 1.5}),
            1,
            format!("{p}.retries: expected an integer, got number 1.5"),
        ),
        (
            json!({"cmd": "a", "interval": 0}),
            1,
            format!("{p}.interval: must be a number of seconds > 0, got 0"),
        ),
        (
            json!({"cmd": "a", "timeout": -1}),
            1,
            format!("{p}.timeout: must be a number of seconds > 0, got -1"),
        ),
        (
            json!({"cmd": "a", "timeout": "1s"}),
            1,
            format!("{p}.timeout: expected a number of seconds, got string \"1s\""),
        ),
        (
            json!({"cmd": "a", "start_period": -1}),
            1,
            format!("{p}.start_period: must be a number of seconds >= 0, got -1"),
        ),
        (
            json!({"cmd": "a", "on_unhealthy": "stop"}),
            1,
            format!("{p}.on_unhealthy: expected \"restart\" or \"none\", got string \"stop\""),
        ),
        (
            json!({"cmd": "a", "intervall": 5}),
            1,
            format!("unknown option \"intervall\" in {p} — did you mean \"interval\"?"),
        ),
        (
            json!({"cmd": "a", "onunhealthy": "none"}),
            1,
            format!("unknown option \"onunhealthy\" in {p} — did you mean \"on_unhealthy\"?"),
        ),
        (json!({"cmd": " "}), 1, format!("{p}.cmd: must not be empty")),
        (
            json!({"cmd": 5}),
            1,
            format!("{p}.cmd: expected a string, got number 5"),
        ),
        (
            json!({"http": "https://127.0.0.1/"}),
            1,
            format!("{p}.http: https:// is not supported (the probe speaks plain http:// only), got string \"https://127.0.0.1/\""),
        ),
        (
            json!({"http": "localhost:8080"}),
            1,
            format!("{p}.http: expected an http:// URL, got string \"localhost:8080\""),
        ),
        (
            json!({"http": "http:///health"}),
            1,
            format!("{p}.http: no host, got string \"http:///health\""),
        ),
        (
            json!({"tcp": "localhost"}),
            1,
            format!("{p}.tcp: no port (expected \"host:port\"), got string \"localhost\""),
        ),
        (
            json!({"tcp": "localhost:0"}),
            1,
            format!(
                "{p}.tcp: the port must be a number from 1 to 65535, got string \"localhost:0\""
            ),
        ),
        // Checked as each instance will probe it: fine at 0, not at 1.
        (
            json!({"tcp": "127.0.0.1:{instance+65535}"}),
            2,
            format!("{p}.tcp: the port must be a number from 1 to 65535, got string \"127.0.0.1:{{instance+65535}}\" (for instance 1: \"127.0.0.1:65536\")"),
        ),
        (
            json!({"http": "http://{service}:{instance}/"}),
            1,
            format!("{p}.http: the port must be a number from 1 to 65535, got string \"http://{{service}}:{{instance}}/\" (for instance 0: \"http://web:0/\")"),
        ),
    ];
    for (hc, numprocs, want) in table {
        assert_eq!(
            healthcheck(hc.clone(), *numprocs),
            Err(vec![want.clone()]),
            "{hc}"
        );
    }
}

// SPEC §11: depends_on.

fn deps_of(c: &Config, name: &str) -> Vec<(String, Condition)> {
    c.services[name]
        .policy
        .depends_on
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

#[test]
fn depends_on_as_a_list_or_a_table() {
    let c = validate(
        &json!({"services": {
            "db": {"cmd": "x", "healthcheck": {"tcp": "127.0.0.1:5432"}},
            "migrate": {"cmd": "x"},
            "cache": {"cmd": "x"},
            "api": {"cmd": "x", "depends_on": {"db": "healthy", "migrate": "completed", "cache": "started"}},
            "web": {"cmd": "x", "depends_on": ["api", "cache", "api"]},
            "none": {"cmd": "x", "depends_on": []},
            "empty": {"cmd": "x", "depends_on": {}},
            "null": {"cmd": "x", "depends_on": null},
        }}),
        Path::new("/b"),
    )
    .unwrap();
    let s = |n: &str| n.to_string();
    assert_eq!(
        deps_of(&c, "api"),
        vec![
            (s("cache"), Condition::Started),
            (s("db"), Condition::Healthy),
            (s("migrate"), Condition::Completed),
        ]
    );
    assert_eq!(
        deps_of(&c, "web"),
        vec![
            (s("api"), Condition::Started),
            (s("cache"), Condition::Started)
        ]
    );
    for n in ["none", "empty", "null", "db"] {
        assert!(c.services[n].policy.depends_on.is_empty(), "{n}");
    }
}

#[test]
fn depends_on_errors_name_the_field() {
    let table: &[(Value, &[&str])] = &[
        (
            json!({"db": {"cmd": "x"}, "api": {"cmd": "x", "depends_on": ["dbb"]}}),
            &["services.api.depends_on: unknown service \"dbb\" — did you mean \"db\"?"],
        ),
        (
            json!({"db": {"cmd": "x"}, "api": {"cmd": "x", "depends_on": {"zzzzzz": "started"}}}),
            &["services.api.depends_on: unknown service \"zzzzzz\""],
        ),
        (
            json!({"a": {"cmd": "x", "depends_on": ["b"]}, "b": {"cmd": "x", "depends_on": ["a"]}}),
            &["services.a.depends_on: dependency cycle a -> b -> a"],
        ),
        (
            json!({"a": {"cmd": "x", "depends_on": ["a"]}}),
            &["services.a.depends_on: dependency cycle a -> a"],
        ),
        (
            json!({"db": {"cmd": "x"}, "api": {"cmd": "x", "depends_on": {"db": "healthy"}}}),
            &["services.api.depends_on.db: \"healthy\" needs a healthcheck on db"],
        ),
        (
            json!({"db": {"cmd": "x"}, "api": {"cmd": "x", "depends_on": {"db": "ready"}}}),
            &["services.api.depends_on.db: expected \"started\", \"healthy\" or \"completed\", got string \"ready\""],
        ),
        (
            json!({"db": {"cmd": "x"}, "api": {"cmd": "x", "depends_on": {"db": true}}}),
            &["services.api.depends_on.db: expected \"started\", \"healthy\" or \"completed\", got boolean true"],
        ),
        (
            json!({"db": {"cmd": "x"}, "api": {"cmd": "x", "depends_on": ["db", 3]}}),
            &["services.api.depends_on[2]: expected a service name, got number 3"],
        ),
        (
            json!({"db": {"cmd": "x"}, "api": {"cmd": "x", "depends_on": "db"}}),
            &["services.api.depends_on: expected a list of service names or a table of conditions, got string \"db\""],
        ),
        // A dependency with errors of its own is not also unknown, and a
        // broken healthcheck is not also a missing one.
        (
            json!({"db": {"cmd": "x", "numprocs": 0, "healthcheck": {"cmd": "a", "retries": 0}},
                   "api": {"cmd": "x", "depends_on": {"db": "healthy"}}}),
            &[
                "services.db.numprocs: must be between 1 and 100, got 0",
                "services.db.healthcheck.retries: must be at least 1, got 0",
            ],
        ),
        (
            json!({"bad name": {"cmd": "x"}, "api": {"cmd": "x", "depends_on": ["bad name"]}}),
            &["services.bad name: service names may only use letters, digits, '_', '.' and '-'"],
        ),
    ];
    for (services, want) in table {
        assert_eq!(errors(json!({ "services": services })), *want, "{services}");
    }
}

#[test]
fn cross_service_problems_come_with_all_the_others() {
    let e = errors(json!({"services": {
        "a": {"cmd": "x", "depends_on": ["b", "cache"]},
        "b": {"cmd": "x", "depends_on": {"a": "started", "db": "healthy"}, "numprocs": 0},
        "c": {"cmd": "x", "depends_on": ["c"], "autostart": "yes"},
        "db": {"cmd": "x"},
    }}));
    assert_eq!(
        e,
        vec![
            "services.b.numprocs: must be between 1 and 100, got 0",
            "services.c.autostart: expected true or false, got string \"yes\"",
            "services.a.depends_on: unknown service \"cache\"",
            "services.b.depends_on.db: \"healthy\" needs a healthcheck on db",
            "services.a.depends_on: dependency cycle a -> b -> a",
            "services.c.depends_on: dependency cycle c -> c",
        ]
    );
}

// Both front-ends go through the same validator.

const SECTION_11_JSON: &str = r#"{"services": {
    "db": {"cmd": "postgres", "healthcheck": {"tcp": "127.0.0.1:5432", "interval": 0.5}},
    "web": {"cmd": "python3 -m http.server {instance+8000}", "numprocs": 2,
            "depends_on": {"db": "healthy"},
            "healthcheck": {"http": "http://127.0.0.1:{instance+8000}/", "retries": 2}},
    "worker": {"cmd": "w", "depends_on": ["db", "web"]}
}}"#;

fn section_11_checks(c: &Config) {
    let db = c.services["db"].policy.healthcheck.clone().unwrap();
    assert_eq!(db.probe, Probe::Tcp("127.0.0.1:5432".into()));
    assert_eq!(db.interval, Duration::from_millis(500));
    let web = &c.services["web"];
    let hc = web.policy.healthcheck.clone().unwrap();
    assert_eq!(hc.retries, 2);
    assert_eq!(
        hc.for_instance("web", 1).probe,
        Probe::Http("http://127.0.0.1:8001/".into())
    );
    assert_eq!(
        web.spawn.for_instance("web", 1).cmd,
        "python3 -m http.server 8001"
    );
    assert_eq!(
        deps_of(c, "web"),
        vec![("db".to_string(), Condition::Healthy)]
    );
    assert_eq!(
        deps_of(c, "worker"),
        vec![
            ("db".to_string(), Condition::Started),
            ("web".to_string(), Condition::Started)
        ]
    );
}

#[test]
fn json_configs_with_section_11_options() {
    let value = json::parse(SECTION_11_JSON, Path::new("conf.json")).unwrap();
    section_11_checks(&validate(&value, Path::new("/b")).unwrap());

    let text = r#"{"services": {"api": {"cmd": "x", "depends_on": ["dbb"],
        "healthcheck": {"http": "https://h/"}}, "db": {"cmd": "x"}}}"#;
    let value = json::parse(text, Path::new("conf.json")).unwrap();
    assert_eq!(
        validate(&value, Path::new("/b")).unwrap_err().to_string(),
        "services.api.healthcheck.http: https:// is not supported (the probe speaks plain http:// only), got string \"https://h/\"\n\
         services.api.depends_on: unknown service \"dbb\" — did you mean \"db\"?"
    );
}

#[test]
fn lua_configs_with_section_11_options() {
    let dir = std::env::temp_dir().join(format!("tm-config-s11-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("taskmaster.lua");
    std::fs::write(
        &file,
        "return { services = {\n\
         db = { cmd = 'postgres', healthcheck = { tcp = '127.0.0.1:5432', interval = 0.5 } },\n\
         web = { cmd = 'python3 -m http.server {instance+8000}', numprocs = 2,\n\
                 depends_on = { db = 'healthy' },\n\
                 healthcheck = { http = 'http://127.0.0.1:{instance+8000}/', retries = 2.0 } },\n\
         worker = { cmd = 'w', depends_on = { 'db', 'web' } },\n\
         solo = { cmd = 'x', depends_on = {} },\n\
         } }",
    )
    .unwrap();
    let c = lua::load(&file).unwrap().config;
    section_11_checks(&c);
    assert!(c.services["solo"].policy.depends_on.is_empty());

    std::fs::write(
        &file,
        "return { services = { a = { cmd = 'x', depends_on = { 'b' } },\n\
         b = { cmd = 'x', depends_on = { a = 'started' }, healthcheck = {} } } }",
    )
    .unwrap();
    let err = lua::load(&file).err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some(
            "services.b.healthcheck: expected exactly one of cmd, http or tcp\n\
             services.a.depends_on: dependency cycle a -> b -> a"
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// SPEC §12 options.

fn privileges_dir() -> tempdir::Dir {
    tempdir::Dir::new("privileges")
}

/// A throwaway folder for env files (no tempfile crate in the tree).
mod tempdir {
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!(
                "tm-config-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("temp dir");
            Dir(d)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn user_group_and_rlimits_are_resolved_at_load() {
    let c = validate(
        &json!({"services": {"web": {"cmd": "x", "user": "root", "group": 4242,
            "rlimits": {"nofile": 4096, "core": "unlimited"}, "max_memory": "256MB"}}}),
        Path::new("/b"),
    )
    .unwrap();
    let s = &c.services["web"];
    let cred = s.spawn.credentials.as_ref().expect("credentials");
    assert_eq!((cred.uid, cred.gid, cred.name.as_str()), (0, 4242, "root"));
    assert!(cred.groups.contains(&4242));
    assert_eq!(
        s.spawn.rlimits,
        vec![(Resource::Nofile, Some(4096)), (Resource::Core, None)]
    );
    assert_eq!(s.policy.max_memory, Some(256 * 1024 * 1024));
    let by_uid = validate(
        &json!({"services": {"web": {"cmd": "x", "user": 0}}}),
        Path::new("/b"),
    )
    .unwrap();
    let cred = by_uid.services["web"].spawn.credentials.clone().unwrap();
    assert_eq!((cred.uid, cred.gid), (0, 0));
}

#[test]
fn privilege_errors_name_the_field() {
    let e = errors(json!({"services": {"web": {"cmd": "x",
        "user": "no-such-user-xyz", "group": "no-such-group-xyz",
        "rlimits": {"nofiles": 1, "cpu": -1, "core": "lots"}, "max_memory": "lots"}}}));
    let want = [
        "services.web.user: unknown user \"no-such-user-xyz\"",
        "services.web.group: unknown group \"no-such-group-xyz\"",
        "services.web.rlimits.core: expected an integer >= 0 or \"unlimited\", got string \"lots\"",
        "services.web.rlimits.cpu: expected an integer >= 0 or \"unlimited\", got number -1",
        "services.web.rlimits: unknown limit \"nofiles\" (expected one of nofile, nproc, core, memlock, stack, as, fsize, cpu) — did you mean \"nofile\"?",
    ];
    for w in want {
        assert!(e.iter().any(|x| x == w), "{w}\nin {e:#?}");
    }
    assert!(
        e.iter().any(|x| x.starts_with("services.web.max_memory: ")),
        "{e:#?}"
    );
    let e = errors(json!({"services": {"web": {"cmd": "x", "user": true, "max_memory": 0}}}));
    assert_eq!(
        e,
        vec![
            "services.web.user: expected a user name or id, got boolean true",
            "services.web.max_memory: must be more than 0 bytes",
        ]
    );
}

#[test]
fn env_files_resolve_against_the_folder_later_ones_win() {
    let d = privileges_dir();
    std::fs::write(d.path().join(".env"), "# c\nA=1\nB=from-first\n").unwrap();
    std::fs::write(d.path().join("two.env"), "export B='from two'\n").unwrap();
    let c = validate(
        &json!({"services": {"web": {"cmd": "x", "env_file": [".env", "two.env"],
            "env": {"A": "env"}}}}),
        d.path(),
    )
    .unwrap();
    let s = &c.services["web"].spawn;
    assert_eq!(s.file_env["A"], "1");
    assert_eq!(s.file_env["B"], "from two");
    assert_eq!(s.env["A"], "env");
    assert_eq!(
        c.env_files(),
        vec![d.path().join(".env"), d.path().join("two.env")]
    );
    let single = validate(
        &json!({"services": {"web": {"cmd": "x", "env_file": ".env"}}}),
        d.path(),
    )
    .unwrap();
    assert_eq!(single.services["web"].spawn.file_env["B"], "from-first");
}

#[test]
fn env_file_errors_carry_file_and_line() {
    let d = privileges_dir();
    std::fs::write(d.path().join(".env"), "A=1\n\nnot a pair\n").unwrap();
    let run = |v: Value| match validate(&v, d.path()) {
        Err(ConfigError::Invalid(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        run(json!({"services": {"web": {"cmd": "x", "env_file": ".env"}}})),
        vec!["services.web.env_file: .env:3: expected KEY=VALUE"]
    );
    assert_eq!(
        run(json!({"services": {"web": {"cmd": "x", "env_file": ["missing.env"]}}})),
        vec!["services.web.env_file[1]: missing.env: no such file"]
    );
    assert_eq!(
        run(json!({"services": {"web": {"cmd": "x", "env_file": 3}}})),
        vec!["services.web.env_file: expected a path or a list of paths, got number 3"]
    );
}

#[test]
fn lua_configs_record_env_files_for_the_watcher() {
    let d = privileges_dir();
    std::fs::write(d.path().join(".env"), "A=1\n").unwrap();
    let cfg = d.path().join("taskmaster.lua");
    std::fs::write(
        &cfg,
        "return {services = {web = {cmd = 'x', env_file = '.env'}}}\n",
    )
    .unwrap();
    let loaded = load(&cfg).unwrap();
    assert!(
        loaded.files.contains(&d.path().join(".env")),
        "{:?}",
        loaded.files
    );
}
