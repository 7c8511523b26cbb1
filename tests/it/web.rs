//! The plain-HTTP side of the port (SPEC §14, §18): `/metrics` with every
//! series, the error statuses, the Host rule, the login form and its
//! session cookie, and `taskmasterctl dashboard`. The page itself is
//! driven in a real browser by `browser.rs`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// An HTTP answer as the tests read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends raw bytes, reads until the daemon closes, parses the answer.
fn raw(port: u16, request: &[u8]) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).expect("send");
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes)
        .expect("read the answer to its end");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// A request with the loopback Host and extra header lines.
fn get(port: u16, path: &str, extra: &[&str]) -> Answer {
    request(port, "GET", path, extra, "")
}

fn request(port: u16, method: &str, path: &str, extra: &[&str], body: &str) -> Answer {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for line in extra {
        req.push_str(line);
        req.push_str("\r\n");
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw(port, req.as_bytes())
}

/// A WebSocket handshake with these header lines; the status it got.
fn upgrade(port: u16, extra: &[&str]) -> u16 {
    let mut lines = vec![
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];
    lines.extend_from_slice(extra);
    let mut req = String::from("GET / HTTP/1.1\r\n");
    if !extra
        .iter()
        .any(|l| l.to_ascii_lowercase().starts_with("host:"))
    {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for l in lines {
        req.push_str(l);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// One sample of a scrape: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the text format strictly enough to catch a malformed line.
fn parse_scrape(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value of {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line:?}"));
                let mut labels = BTreeMap::new();
                let mut rest = inner;
                while !rest.is_empty() {
                    let (k, v) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                    // The value ends at the first quote not escaped.
                    let mut end = 0;
                    let bytes = v.as_bytes();
                    while bytes[end] != b'"' {
                        end += if bytes[end] == b'\\' { 2 } else { 1 };
                    }
                    labels.insert(
                        k.to_string(),
                        v[..end].replace("\\\"", "\"").replace("\\\\", "\\"),
                    );
                    rest = v[end + 1..].trim_start_matches(',');
                }
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "metric name {name:?}"
        );
        out.push((name, labels, value));
    }
    out
}

/// The value of `metric` for instance `name`.
fn value(samples: &[Sample], metric: &str, name: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(m, l, _)| m == metric && l.get("name").map(String::as_str) == Some(name))
        .map(|(_, _, v)| *v)
}

const METRICS: &str = r#"return { services = {
  burn = { cmd = "sh -c 'while :; do :; done'" },
  checked = { cmd = "sleep 1000", numprocs = 2,
              healthcheck = { cmd = "true", interval = 0.2 } },
  idle = { cmd = "sleep 1000", autostart = false },
} }"#;

#[test]
fn metrics_show_every_series_for_every_instance() {
    let mut d = Daemon::start("metrics", METRICS);
    d.wait_until(
        "checked healthy, burn running",
        Duration::from_secs(15),
        |s| {
            s.iter().filter(|i| i["health"] == "healthy").count() == 2
                && s.iter()
                    .any(|i| i["name"] == "burn:0" && i["state"] == "RUNNING")
        },
    );
    let first = get(d.port, "/metrics", &[]);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(
        first.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let samples = parse_scrape(&first.body);
    for family in [
        "taskmaster_instance_up",
        "taskmaster_instance_state",
        "taskmaster_instance_restarts_total",
        "taskmaster_instance_uptime_seconds",
        "taskmaster_instance_healthy",
        "taskmaster_instance_cpu_seconds_total",
        "taskmaster_instance_memory_rss_bytes",
        "taskmaster_config_last_reload_success",
        "taskmaster_config_last_reload_timestamp_seconds",
        "taskmaster_build_info",
    ] {
        assert!(
            first.body.contains(&format!("# TYPE {family} ")),
            "{family}"
        );
        assert!(samples.iter().any(|(m, _, _)| m == family), "{family}");
    }
    let names = ["burn:0", "checked:0", "checked:1", "idle:0"];
    for name in names {
        let labels = &samples
            .iter()
            .find(|(m, l, _)| m == "taskmaster_instance_up" && l["name"] == name)
            .unwrap_or_else(|| panic!("{name} in\n{}", first.body))
            .1;
        let (service, index) = name.split_once(':').unwrap();
        assert_eq!(labels["service"], service);
        assert_eq!(labels["index"], index);
        assert!(
            !labels.contains_key("instance"),
            "`instance` is Prometheus's own label"
        );
        // Exactly one state series, the current one.
        let states: Vec<_> = samples
            .iter()
            .filter(|(m, l, _)| m == "taskmaster_instance_state" && l["name"] == name)
            .collect();
        assert_eq!(states.len(), 1, "{name}");
        assert_eq!(states[0].2, 1.0);
    }
    assert_eq!(
        value(&samples, "taskmaster_instance_up", "burn:0"),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "taskmaster_instance_up", "idle:0"),
        Some(0.0)
    );
    let idle_state = samples
        .iter()
        .find(|(m, l, _)| m == "taskmaster_instance_state" && l["name"] == "idle:0")
        .unwrap();
    assert_eq!(idle_state.1["state"], "STOPPED");
    // `healthy` only where there is a healthcheck.
    assert_eq!(
        value(&samples, "taskmaster_instance_healthy", "checked:1"),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "taskmaster_instance_healthy", "burn:0"),
        None
    );
    assert!(value(&samples, "taskmaster_instance_uptime_seconds", "checked:0").unwrap() > 0.0);
    assert_eq!(
        value(&samples, "taskmaster_instance_uptime_seconds", "idle:0"),
        Some(0.0)
    );
    // RSS is the group's, as /proc says.
    let pid = d.instance("checked:0")["pid"].as_u64().unwrap() as u32;
    let rss = value(
        &samples,
        "taskmaster_instance_memory_rss_bytes",
        "checked:0",
    )
    .unwrap();
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let pages: f64 = statm.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        rss >= pages * 4096.0 * 0.5 && rss <= pages * 4096.0 * 2.0,
        "{rss} vs {pages} pages"
    );
    assert_eq!(
        value(&samples, "taskmaster_instance_memory_rss_bytes", "idle:0"),
        Some(0.0)
    );
    // The burner's CPU counter grows and never goes back.
    let mut last = value(&samples, "taskmaster_instance_cpu_seconds_total", "burn:0").unwrap();
    let mut grew = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline && !(grew && last > 0.2) {
        let s = parse_scrape(&get(d.port, "/metrics", &[]).body);
        let now = value(&s, "taskmaster_instance_cpu_seconds_total", "burn:0").unwrap();
        assert!(now >= last, "cpu went back: {last} -> {now}");
        grew |= now > last;
        last = now;
    }
    assert!(
        grew && last > 0.2,
        "the burner's CPU counter did not grow: {last}"
    );
    let build = samples
        .iter()
        .find(|(m, _, _)| m == "taskmaster_build_info")
        .unwrap();
    assert_eq!(build.1["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(build.2, 1.0);
    let loaded = samples
        .iter()
        .find(|(m, _, _)| m == "taskmaster_config_last_reload_timestamp_seconds")
        .unwrap()
        .2;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(loaded > now - 120.0 && loaded <= now + 1.0, "{loaded}");
    assert_eq!(
        samples
            .iter()
            .find(|(m, _, _)| m == "taskmaster_config_last_reload_success")
            .unwrap()
            .2,
        1.0
    );

    // A failed reload shows as 0, and the services keep running.
    std::fs::write(&d.config, "return { services = ").unwrap();
    let reply = d.request("reload", &[]);
    assert_eq!(reply["ok"], false, "{reply}");
    let after = parse_scrape(&get(d.port, "/metrics", &[]).body);
    let success = after
        .iter()
        .find(|(m, _, _)| m == "taskmaster_config_last_reload_success")
        .unwrap()
        .2;
    assert_eq!(success, 0.0);
    assert_eq!(value(&after, "taskmaster_instance_up", "burn:0"), Some(1.0));
}

#[test]
fn other_paths_methods_big_heads_and_foreign_hosts() {
    let mut d = Daemon::start(
        "http-errors",
        "return { services = { s = { cmd = 'sleep 1000' } } }",
    );
    let port = d.port;
    // Positive controls first: the page and /metrics answer.
    let page = get(port, "/", &[]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<html"), "{}", page.body);
    assert!(page.header("content-security-policy").is_some());
    assert_eq!(get(port, "/metrics", &[]).status, 200);
    assert_eq!(get(port, "/metrics?x=1", &[]).status, 200);
    let head = request(port, "HEAD", "/", &[], "");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    assert_eq!(get(port, "/nope", &[]).status, 404);
    assert_eq!(get(port, "/index.html", &[]).status, 404);
    assert_eq!(request(port, "DELETE", "/nope", &[], "").status, 404);
    let post = request(port, "POST", "/", &[], "x=1");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert_eq!(request(port, "PUT", "/metrics", &[], "").status, 405);
    let login = get(port, "/login", &[]);
    assert_eq!(login.status, 405);
    assert_eq!(login.header("allow"), Some("POST"));

    // A head over 8 KiB: 431; one just under it is served.
    let big = format!("X-Filler: {}", "a".repeat(8 * 1024));
    assert_eq!(get(port, "/", &[&big]).status, 431);
    let fits = format!("X-Filler: {}", "a".repeat(7 * 1024));
    assert_eq!(get(port, "/", &[&fits]).status, 200);
    assert_eq!(
        raw(
            port,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"
        )
        .status,
        400
    );

    // A foreign Host (DNS rebinding) gets 403 on every path and on the
    // upgrade; the loopback names are served.
    for path in ["/", "/metrics", "/nope"] {
        let raw_req = format!("GET {path} HTTP/1.1\r\nHost: evil.example:{port}\r\n\r\n");
        assert_eq!(raw(port, raw_req.as_bytes()).status, 403, "{path}");
    }
    assert_eq!(
        raw(port, b"GET / HTTP/1.1\r\n\r\n").status,
        403,
        "no Host at all"
    );
    assert_eq!(upgrade(port, &["Host: evil.example"]), 403);
    assert_eq!(upgrade(port, &[]), 101);
    for host in ["localhost", "[::1]:1"] {
        let raw_req = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert_eq!(raw(port, raw_req.as_bytes()).status, 200, "{host}");
    }
    // A cross-site page cannot read /metrics or post a login either.
    assert_eq!(
        get(port, "/metrics", &["Origin: http://evil.example"]).status,
        403
    );
    // The daemon still serves its services after all that.
    d.wait_state("s:0", "RUNNING", Duration::from_secs(10));
}

#[test]
fn a_websocket_upgrade_keeps_the_frames_sent_with_its_head() {
    let d = Daemon::start("ws-early", "return { services = {} }");
    let port = d.port;
    // The request and a first frame in one write: the frame is read along
    // with the head and must not be lost on the way to the WebSocket.
    let mut bytes = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes();
    let payload = br#"{"cmd":"version","id":7}"#;
    let mask = [1u8, 2, 3, 4];
    bytes.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
    bytes.extend_from_slice(&mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&bytes).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("\"id\":7") {
        let n = s.read(&mut buf).expect("the reply to the early frame");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(
        text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "the accept key: {text}"
    );
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
}

#[test]
fn login_sets_a_session_cookie_that_opens_the_page_and_its_websocket() {
    let d = Daemon::start_with(
        "login",
        "taskmaster.lua",
        "return { services = { s = { cmd = 'sleep 1000' } } }",
        &["--token", "s3cret"],
    );
    let port = d.port;
    // Without a session: the login form, and /metrics needs the bearer.
    let form = get(port, "/", &[]);
    assert_eq!(form.status, 200);
    assert!(form.body.contains("action=\"/login\"") && form.body.contains("name=\"token\""));
    assert_eq!(get(port, "/metrics", &[]).status, 401);
    assert_eq!(
        get(port, "/metrics", &["Authorization: Bearer wrong"]).status,
        401
    );
    assert_eq!(
        get(port, "/metrics", &["Authorization: Bearer s3cret"]).status,
        200
    );

    // A wrong token: 401 and the form again, no cookie.
    let wrong = request(port, "POST", "/login", &[], "token=nope");
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("action=\"/login\"") && wrong.body.contains("Wrong token"));
    assert!(wrong.header("set-cookie").is_none());
    // Cross-site posts are refused before the token is looked at.
    assert_eq!(
        request(
            port,
            "POST",
            "/login",
            &["Origin: http://evil.example"],
            "token=s3cret"
        )
        .status,
        403
    );

    let right = request(port, "POST", "/login", &[], "token=s3cret");
    assert_eq!(right.status, 303, "{right:?}");
    assert_eq!(right.header("location"), Some("/"));
    let cookie = right
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    let attrs: Vec<&str> = cookie.split(';').map(str::trim).collect();
    assert!(attrs.contains(&"HttpOnly"), "{cookie}");
    assert!(attrs.contains(&"SameSite=Strict"), "{cookie}");
    assert!(attrs.contains(&"Path=/"), "{cookie}");
    let pair = attrs[0];
    let (name, id) = pair.split_once('=').unwrap();
    assert!(name.starts_with("taskmaster_session"), "{pair}");
    assert_eq!(id.len(), 64, "256 random bits, hex");
    let cookie_line = format!("Cookie: {pair}");

    // The cookie opens the page (not the form) but not /metrics.
    let page = get(port, "/", &[&cookie_line]);
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("action=\"/login\""), "{}", page.body);
    assert_eq!(get(port, "/metrics", &[&cookie_line]).status, 401);

    // And the WebSocket, only from the page's own origin.
    let own = format!("Origin: http://127.0.0.1:{port}");
    assert_eq!(upgrade(port, &[&cookie_line, &own]), 101);
    assert_eq!(upgrade(port, &[&cookie_line]), 403, "no Origin");
    let other_loopback = format!("Origin: http://localhost:{port}");
    assert_eq!(upgrade(port, &[&cookie_line, &other_loopback]), 403);
    let dead = format!("Cookie: {name}={}", "f".repeat(64));
    assert_eq!(
        upgrade(port, &[&dead, &own]),
        401,
        "a cookie that is no session"
    );
    assert_eq!(upgrade(port, &[&own]), 401);
    assert_eq!(upgrade(port, &["Authorization: Bearer s3cret"]), 101);

    // Sessions die with the daemon.
    let mut d = d;
    d.terminate();
    d.launch(&["--token", "s3cret"]);
    let own = format!("Origin: http://127.0.0.1:{}", d.port);
    let moved = format!("Cookie: taskmaster_session_{}={id}", d.port);
    assert_eq!(upgrade(d.port, &[&moved, &own]), 401);
}

#[test]
fn ctl_dashboard_prints_the_url_or_says_there_is_no_tcp_listener() {
    let d = Daemon::start("dash-url", "return { services = {} }");
    let out = Command::new(ctl_bin())
        .args(["--url", &d.url(), "dashboard"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(url, format!("http://127.0.0.1:{}/", d.port));
    // The URL it prints serves the page.
    assert_eq!(get(d.port, "/", &[]).status, 200);
    let json = Command::new(ctl_bin())
        .args(["--url", &d.url(), "--json", "dashboard"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["url"], url.as_str());

    // Only a Unix socket: exit 1, "no TCP listener".
    let dir = temp_dir("dash-unix");
    let sock = dir.join("tm.sock");
    std::fs::write(dir.join("taskmaster.lua"), "return { services = {} }").unwrap();
    let mut child = Command::new(daemon_bin())
        .arg("--config")
        .arg(dir.join("taskmaster.lua"))
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--log-file")
        .arg(dir.join("daemon.log"))
        .env_remove("TASKMASTER_TOKEN")
        .env_remove("TASKMASTER_LISTEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("unix:{}", sock.display());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let out = loop {
        let out = Command::new(ctl_bin())
            .args(["--url", &url, "dashboard"])
            .output()
            .unwrap();
        // 4: not reachable yet.
        if out.status.code() != Some(4) || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = wait_child(&mut child, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no TCP listener"),
        "{out:?}"
    );
}
