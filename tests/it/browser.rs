//! The dashboard in a real browser (SPEC §14): headless Chromium, driven
//! over the DevTools protocol (`cdp.rs`), against a real daemon.
//!
//! Every check of the page waits on a condition evaluated inside it
//! (re-checked on each DOM mutation); every check of the daemon waits on
//! its events (`Daemon::wait_until`). Effects of clicks are read back
//! through `status`, never from the page alone.
//!
//! Without `/usr/bin/chromium` the tests say so and pass, except under CI
//! (env `CI` set), where they fail: `.ci/run` installs Debian's chromium.

use std::fs;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::cdp::{self, Browser};
use crate::common::*;

/// Services: two plain instances (the service buttons), one with a
/// healthcheck, one that logs a line on SIGUSR1 (`pong N`) and a line of
/// stderr at start, and one that does not start by itself.
const CONFIG: &str = r#"
return { services = {
  web = { cmd = "sleep 100000", numprocs = 2, starttime = 0, stoptime = 2 },
  probe = { cmd = "sleep 100000", starttime = 0, healthcheck = { cmd = "true", interval = 0.2 } },
  talker = {
    cmd = "n=0; trap 'n=$((n+1)); echo \"pong $n\"' USR1; echo 'hello <i>markup</i>'; echo 'err hello' >&2; while :; do sleep 1 & wait $!; done",
    starttime = 0, stoptime = 2, stdout = "talker.out", stderr = "talker.err",
  },
  idle = { cmd = "sleep 100000", autostart = false, stoptime = 2 },
} }
"#;

/// Long enough for a loaded 2-core machine running the whole suite.
const WAIT: Duration = Duration::from_secs(30);

/// Chromium, or None (the test then passes) when it is not installed.
fn browser(dir: &std::path::Path) -> Option<Browser> {
    browser_sized(dir, 1280, 860)
}

fn browser_sized(dir: &std::path::Path, width: u32, height: u32) -> Option<Browser> {
    if !cdp::available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing under CI: .ci/run installs it",
            cdp::CHROMIUM
        );
        eprintln!(
            "skipping the browser test: {} is not installed (apt-get install chromium)",
            cdp::CHROMIUM
        );
        return None;
    }
    Some(Browser::launch(dir, width, height).unwrap_or_else(|e| panic!("{e}")))
}

fn page_url(d: &Daemon) -> String {
    format!("http://127.0.0.1:{}/", d.port)
}

/// `taskmasterctl ARGS` against the daemon; it must succeed.
fn ctl(d: &Daemon, args: &[&str]) {
    let mut cmd = Command::new(ctl_bin());
    cmd.arg("--url").arg(d.url());
    if let Some(t) = &d.token {
        cmd.arg("--token").arg(t);
    }
    cmd.args(args)
        .env_remove("TASKMASTER_TOKEN")
        .env_remove("TASKMASTER_URL");
    let out = output_within(&mut cmd, WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "taskmasterctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A JS string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Waits until the page shows instance `name` in `state`.
fn page_state(b: &mut Browser, name: &str, state: &str) {
    let sel = js(&format!("tr[data-name=\"{name}\"][data-state=\"{state}\"]"));
    b.wait_for(
        &format!("the page to show {name} {state}"),
        &format!("document.querySelector({sel})"),
        WAIT,
    )
    .map(|_| ())
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Clicks `selector` in the page.
fn click(b: &mut Browser, selector: &str) {
    b.click(selector)
        .unwrap_or_else(|e| panic!("click {selector}: {e}"));
}

fn row_button(name: &str, action: &str) -> String {
    format!("tr[data-name=\"{name}\"] button[data-action=\"{action}\"]")
}

fn service_button(service: &str, action: &str) -> String {
    format!("tr.svc[data-service=\"{service}\"] button[data-action=\"{action}\"]")
}

fn all_button(action: &str) -> String {
    format!("[data-scope=\"all\"] button[data-action=\"{action}\"]")
}

/// Pids by instance name, from `status`.
fn pids(d: &mut Daemon) -> Vec<(String, Option<u64>)> {
    d.status()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or_default().to_string(),
                i["pid"].as_u64(),
            )
        })
        .collect()
}

fn pid_of(d: &mut Daemon, name: &str) -> u64 {
    d.instance(name)["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} has no pid"))
}

/// Waits until `names` are RUNNING with pids other than `before`'s.
fn wait_new_pids(d: &mut Daemon, before: &[(String, Option<u64>)], names: &[&str]) {
    d.wait_until("new pids after a restart", WAIT, |s| {
        names.iter().all(|n| {
            s.iter().any(|i| {
                i["name"] == *n
                    && i["state"] == "RUNNING"
                    && i["pid"].as_u64().is_some()
                    && before
                        .iter()
                        .all(|(bn, bp)| bn != n || *bp != i["pid"].as_u64())
            })
        })
    });
}

fn running(d: &mut Daemon, names: &[&str]) {
    d.wait_until(&format!("{names:?} RUNNING"), WAIT, |s| {
        names
            .iter()
            .all(|n| s.iter().any(|i| i["name"] == *n && i["state"] == "RUNNING"))
    });
}

/// Stops the daemon and starts it again on the same port (the page's
/// address), with `extra` flags; waits until it listens. The fixture's own
/// connections are left dead: use `Daemon::connect` afterwards.
fn relaunch_on_same_port(d: &mut Daemon, extra: &[&str]) {
    assert!(d.terminate().is_some(), "the daemon did not stop");
    let child = Command::new(daemon_bin())
        .arg("--config")
        .arg(&d.config)
        .arg("--port")
        .arg(d.port.to_string())
        .arg("--log-file")
        .arg(d.dir.join("daemon.log"))
        .args(extra)
        .current_dir(&d.dir)
        .env_remove("TASKMASTER_TOKEN")
        .env_remove("TASKMASTER_LISTEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn taskmasterd");
    d.child = Some(child);
    let deadline = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", d.port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "taskmasterd did not listen again; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (woken by daemon events) until `status` reports a config error.
fn config_error(d: &mut Daemon) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(e) = d.ok("status", &[])["config"]["error"].as_str() {
            return e.to_string();
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "no config error after a bad reload");
        d.next_event(left);
    }
}

#[test]
fn the_dashboard_shows_every_instance_live_and_drives_the_daemon() {
    let mut d = Daemon::start("browser", CONFIG);
    running(&mut d, &["web:0", "web:1", "probe:0", "talker:0"]);
    let Some(mut b) = browser(&d.dir) else {
        return;
    };
    b.goto(&page_url(&d)).unwrap_or_else(|e| panic!("{e}"));
    b.wait_for(
        "the first status",
        "document.body.dataset.ready === '1'",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Marks this page load: a reload would lose it.
    b.eval("window.sameLoad = true")
        .unwrap_or_else(|e| panic!("{e}"));

    // Every instance, with its state as status has it (they are settled).
    let status = d.status();
    let want: Vec<(String, String)> = status
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or_default().to_string(),
                i["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let shown = b
        .eval("[...document.querySelectorAll('tr[data-name]')].map(r => [r.dataset.name, r.dataset.state])")
        .unwrap_or_else(|e| panic!("{e}"));
    let shown: Vec<(String, String)> = serde_json::from_value(shown).expect("rows");
    assert_eq!(shown, want, "rows vs status");
    assert!(want.iter().any(|(n, s)| n == "idle:0" && s == "STOPPED"));
    // The pid column, the config path, health from the probe, a ticking uptime.
    let web0 = pid_of(&mut d, "web:0");
    let cell = b
        .eval("document.querySelector('tr[data-name=\"web:0\"] [data-field=\"pid\"]').textContent")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cell, Value::String(web0.to_string()));
    let path = b
        .eval("document.querySelector('[data-field=\"config-path\"]').textContent")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(path.as_str(), d.config.to_str());
    b.wait_for(
        "probe:0 healthy on the page",
        "document.querySelector('tr[data-name=\"probe:0\"][data-health=\"healthy\"]')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let up = b
        .eval(
            "document.querySelector('tr[data-name=\"web:0\"] [data-field=\"uptime\"]').textContent",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let up = js(up.as_str().unwrap_or_default());
    b.wait_for(
        "the uptime to tick",
        &format!("document.querySelector('tr[data-name=\"web:0\"] [data-field=\"uptime\"]').textContent !== {up}"),
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // A stop from the ctl shows without a reload.
    ctl(&d, &["stop", "web:1"]);
    page_state(&mut b, "web:1", "STOPPED");
    assert_eq!(
        b.eval("window.sameLoad === true").ok(),
        Some(Value::Bool(true))
    );

    // Instance buttons.
    click(&mut b, &row_button("web:1", "start"));
    d.wait_state("web:1", "RUNNING", WAIT);
    page_state(&mut b, "web:1", "RUNNING");
    click(&mut b, &row_button("web:0", "stop"));
    d.wait_state("web:0", "STOPPED", WAIT);
    page_state(&mut b, "web:0", "STOPPED");
    let before = pids(&mut d);
    click(&mut b, &row_button("talker:0", "restart"));
    wait_new_pids(&mut d, &before, &["talker:0"]);

    // Service buttons.
    click(&mut b, &service_button("web", "start"));
    running(&mut d, &["web:0", "web:1"]);
    let before = pids(&mut d);
    click(&mut b, &service_button("web", "restart"));
    wait_new_pids(&mut d, &before, &["web:0", "web:1"]);
    click(&mut b, &service_button("web", "stop"));
    d.wait_until("web stopped", WAIT, |s| {
        s.iter()
            .filter(|i| i["service"] == "web")
            .all(|i| i["state"] == "STOPPED")
    });
    page_state(&mut b, "web:1", "STOPPED");

    // The buttons for all.
    click(&mut b, &all_button("start"));
    d.wait_all("RUNNING", WAIT);
    page_state(&mut b, "idle:0", "RUNNING");
    let before = pids(&mut d);
    click(&mut b, &all_button("restart"));
    wait_new_pids(
        &mut d,
        &before,
        &["web:0", "web:1", "probe:0", "talker:0", "idle:0"],
    );
    click(&mut b, &all_button("stop"));
    d.wait_all("STOPPED", WAIT);
    page_state(&mut b, "talker:0", "STOPPED");
    click(&mut b, &all_button("start"));
    d.wait_all("RUNNING", WAIT);

    // Following a log: the line is written after the follow started.
    click(&mut b, &row_button("talker:0", "logs"));
    b.wait_for(
        "the log panel to follow talker:0",
        "document.querySelector('#log[data-name=\"talker:0\"][data-following=\"1\"]')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Output is text, never markup.
    b.wait_for(
        "the child's first line, as text",
        "document.querySelector('pre[data-field=\"log\"]').textContent.includes('hello <i>markup</i>') \
         && !document.querySelector('pre[data-field=\"log\"] i')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    ctl(&d, &["signal", "USR1", "talker"]);
    b.wait_for(
        "pong 1 in the log panel",
        "document.querySelector('pre[data-field=\"log\"]').textContent.includes('pong 1')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Switching to stderr ends that follow and starts another.
    click(&mut b, "#log button[data-stream=\"stderr\"]");
    b.wait_for(
        "stderr in the log panel",
        "document.querySelector('#log[data-stream=\"stderr\"][data-following=\"1\"]') && document.querySelector('pre[data-field=\"log\"]').textContent.includes('err hello')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    click(&mut b, "#log button[data-stream=\"stdout\"]");
    b.wait_for(
        "stdout again",
        "document.querySelector('#log[data-stream=\"stdout\"][data-following=\"1\"]')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    ctl(&d, &["signal", "USR1", "talker"]);
    b.wait_for(
        "pong 2 in the log panel",
        "document.querySelector('pre[data-field=\"log\"]').textContent.includes('pong 2')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // Reload: a new service appears; a broken config shows its error.
    let good = CONFIG.replace(
        "} }\n",
        "  extra = { cmd = \"sleep 100000\", starttime = 0 },\n} }\n",
    );
    fs::write(&d.config, &good).expect("write config");
    click(&mut b, &all_button("reload"));
    running(&mut d, &["extra:0"]);
    page_state(&mut b, "extra:0", "RUNNING");
    fs::write(&d.config, "return { services = { oops = { cmd = 5 } } }").expect("write config");
    click(&mut b, &all_button("reload"));
    let error = config_error(&mut d);
    assert!(error.contains("oops"), "{error}");
    b.wait_for(
        "the config error on the page",
        "(() => { const e = document.querySelector('[data-field=\"config-error\"]'); return !e.hidden && e.textContent.includes('oops'); })()",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        b.eval("window.sameLoad === true").ok(),
        Some(Value::Bool(true))
    );

    // The daemon goes away and comes back: the page says so, reconnects
    // with backoff and is live again (status re-read), without a reload.
    fs::write(&d.config, &good).expect("write config");
    b.eval(
        "window.conns = []; new MutationObserver(() => conns.push(document.body.dataset.conn))\
         .observe(document.body, {attributes: true, attributeFilter: ['data-conn']}); true",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    relaunch_on_same_port(&mut d, &[]);
    b.wait_for(
        "the page to show the drop, then reconnect",
        "conns.includes('closed') && document.body.dataset.conn === 'open' \
         && document.querySelector('[data-field=\"config-error\"]').hidden",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut ws = d.connect();
    let reply = call(&mut ws, 1, "stop", &["extra:0"]);
    assert_eq!(reply["ok"], true, "{reply}");
    page_state(&mut b, "extra:0", "STOPPED");
    assert_eq!(
        b.eval("window.sameLoad === true").ok(),
        Some(Value::Bool(true))
    );

    let shot = d.dir.join("dashboard.png");
    b.screenshot(&shot).unwrap_or_else(|e| panic!("{e}"));
    assert!(fs::metadata(&shot).map(|m| m.len()).unwrap_or(0) > 10_000);
    eprintln!("screenshot: {}", shot.display());
    b.close();
}

#[test]
fn with_a_token_the_dashboard_asks_for_it_and_works_once_logged_in() {
    let mut d = Daemon::start_with(
        "browser-token",
        "taskmaster.lua",
        "return { services = { web = { cmd = 'sleep 100000', starttime = 0, stoptime = 2 } } }",
        &["--token", "s3cret-token"],
    );
    running(&mut d, &["web:0"]);
    let Some(mut b) = browser(&d.dir) else {
        return;
    };
    let url = page_url(&d);
    b.goto(&url).unwrap_or_else(|e| panic!("{e}"));
    let form = "document.querySelector('form input[name=\"token\"]') && !document.querySelector('meta[name=\"taskmaster-page\"]')";
    b.wait_for("the login form", form, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));

    // A wrong token: 401 and the form again.
    b.type_into("input[name=\"token\"]", "wrong")
        .unwrap_or_else(|e| panic!("{e}"));
    b.clear_events();
    b.press_enter().unwrap_or_else(|e| panic!("{e}"));
    b.wait_event("Page.loadEventFired", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    b.wait_for("the login form again", form, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let status = b
        .eval("performance.getEntriesByType('navigation')[0].responseStatus")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 401, "a wrong token");

    // The right one: the dashboard, live over the session cookie.
    b.type_into("input[name=\"token\"]", "s3cret-token")
        .unwrap_or_else(|e| panic!("{e}"));
    b.clear_events();
    b.press_enter().unwrap_or_else(|e| panic!("{e}"));
    b.wait_event("Page.loadEventFired", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    b.wait_for("the dashboard", "document.body.dataset.ready === '1'", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let here = b.eval("location.href").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        here.as_str(),
        Some(url.as_str()),
        "the login redirects to /"
    );
    // The cookie is HttpOnly: the page's script cannot read it.
    assert_eq!(b.eval("document.cookie").ok(), Some(Value::from("")));
    page_state(&mut b, "web:0", "RUNNING");
    click(&mut b, &row_button("web:0", "stop"));
    d.wait_state("web:0", "STOPPED", WAIT);
    page_state(&mut b, "web:0", "STOPPED");
    ctl(&d, &["start", "web:0"]);
    page_state(&mut b, "web:0", "RUNNING");

    // Sessions die with the daemon: once it is back, the page's cookie
    // opens nothing and the page says to sign in again.
    relaunch_on_same_port(&mut d, &["--token", "s3cret-token"]);
    b.wait_for(
        "the page to say it is signed out",
        "document.body.dataset.conn === 'signed-out' && document.querySelector('[data-field=\"conn\"] a[href=\"/\"]')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    b.close();
}

/// A realistic config for the README's picture: ten services in every
/// kind of state.
const README_CONFIG: &str = r#"
local log = "while :; do i=$((i+1)); echo \"$(date +%%T) %s $i\"; sleep %s; done"
return { services = {
  web = {
    cmd = log:format("GET /orders/ 200 in 4 ms, request", "0.7"), numprocs = 3, starttime = 1,
    stdout = "logs/web-{instance}.log",
    healthcheck = { cmd = "true", interval = 2 },
  },
  worker = {
    cmd = log:format("worker {instance}: job done, id", "0.4"), numprocs = 4, starttime = 1,
    stdout = "logs/worker-{instance}.log",
  },
  db = { cmd = "sleep 100000", starttime = 1, healthcheck = { cmd = "true", interval = 2 } },
  api = { cmd = "sleep 100000", starttime = 1, depends_on = { db = "healthy" } },
  cache = { cmd = "sleep 100000", starttime = 1 },
  scheduler = { cmd = "echo 'nightly run: 0 jobs due'", starttime = 0, autorestart = "never" },
  mailer = { cmd = "sleep 100000", autostart = false },
  reports = { cmd = "sh -c 'echo cannot open reports.db >&2; exit 3'", starttime = 1, startretries = 1 },
  search = {
    cmd = "sleep 100000", starttime = 1,
    healthcheck = { cmd = "false", interval = 1, retries = 1, on_unhealthy = "none" },
  },
  indexer = { cmd = "sleep 100000", depends_on = { search = "healthy" } },
} }
"#;

/// Writes `docs/dashboard.png` (light) and `docs/dashboard-dark.png`:
/// `cargo test --test it readme_screenshot -- --ignored`.
#[test]
#[ignore]
fn readme_screenshot() {
    let mut d = Daemon::start("browser-readme", README_CONFIG);
    d.wait_until("the picture's states", WAIT, |s| {
        let is =
            |name: &str, f: &dyn Fn(&Value) -> bool| s.iter().any(|i| i["name"] == name && f(i));
        s.iter()
            .filter(|i| i["service"] == "web" || i["service"] == "worker")
            .all(|i| i["state"] == "RUNNING")
            && is("web:2", &|i| i["health"] == "healthy")
            && is("api:0", &|i| i["state"] == "RUNNING")
            && is("reports:0", &|i| i["state"] == "FATAL")
            && is("scheduler:0", &|i| i["state"] == "EXITED")
            && is("search:0", &|i| i["health"] == "unhealthy")
            && is("indexer:0", &|i| i["state"] == "WAITING")
    });
    ctl(&d, &["stop", "worker:3"]);
    let Some(mut b) = browser_sized(&d.dir, 1280, 1220) else {
        return;
    };
    b.goto(&page_url(&d)).unwrap_or_else(|e| panic!("{e}"));
    b.wait_for("the page", "document.body.dataset.ready === '1'", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    click(&mut b, &row_button("worker:1", "logs"));
    b.wait_for(
        "a few log lines",
        "document.querySelector('pre[data-field=\"log\"]').textContent.split('\\n').length > 22",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    b.eval("document.querySelector('main').scrollTop = 0")
        .unwrap_or_else(|e| panic!("{e}"));
    for (scheme, file) in [("light", "dashboard.png"), ("dark", "dashboard-dark.png")] {
        b.color_scheme(scheme).unwrap_or_else(|e| panic!("{e}"));
        // Two frames: the new colours are painted.
        b.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            .unwrap_or_else(|e| panic!("{e}"));
        b.screenshot(&docs.join(file))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    b.close();
}
