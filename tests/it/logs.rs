//! Logs over the wire (SPEC §10, §18): `tail` (reading back into backups),
//! `logs`, following what children write across an external rotation,
//! `unfollow`, `clear`, `signal`, their errors, and a follower that never
//! reads, against a real daemon with real children and files.
//!
//! Backup files are made by hand here: the daemon's own rotation is tested
//! with its writers. Children write their files directly (`echo … >>`), as
//! a child with rotation off does.

use std::collections::VecDeque;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::common::*;

/// A connection that keeps the events it meets while waiting for a reply.
struct Client {
    ws: Ws,
    events: VecDeque<Value>,
}

impl Client {
    fn new(d: &Daemon) -> Client {
        Client {
            ws: d.connect(),
            events: VecDeque::new(),
        }
    }

    /// Sends a request with options; returns its reply.
    fn call(&mut self, id: Value, cmd: &str, args: &[&str], opts: Value) -> Value {
        let req = json!({"id": id, "cmd": cmd, "args": args, "opts": opts});
        self.ws
            .send(Message::text(req.to_string()))
            .expect("send request");
        set_timeout(&mut self.ws, Some(secs(30)));
        loop {
            match self.ws.read().expect("read reply") {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON");
                    if v.get("event").is_some() {
                        self.events.push_back(v);
                    } else if v["id"] == id {
                        return v;
                    }
                }
                Message::Close(f) => panic!("connection closed: {f:?}"),
                _ => {}
            }
        }
    }

    /// The next event within `timeout`, or None.
    fn event(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(ev) = self.events.pop_front() {
            return Some(ev);
        }
        set_timeout(&mut self.ws, Some(timeout.max(Duration::from_millis(1))));
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
                Ok(Message::Close(f)) => panic!("connection closed: {f:?}"),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("connection lost: {e}"),
            }
        }
    }
}

fn ok(reply: &Value) -> &Value {
    assert_eq!(reply["ok"], true, "{reply}");
    &reply["data"]
}

fn error_code(reply: &Value) -> &str {
    assert_eq!(reply["ok"], false, "{reply}");
    reply["error"]["code"].as_str().unwrap_or_default()
}

fn numbered(from: usize, to: usize) -> String {
    (from..=to).map(|n| format!("line {n}\n")).collect()
}

/// A child that appends `line N` to `out.log` every 50 ms, opening it by
/// name for each line (as a child whose output is reopened would), so an
/// external rename is followed by a new `out.log`.
const TICKER: &str = r#"tick = { cmd = [[sh -c 'i=0; while :; do i=$((i+1)); echo "line $i" >> out.log; sleep 0.05; done']], stdout = "out.log", starttime = 0 }"#;

/// Collects followed text (events with `id`) until `enough` holds for it.
fn follow_until(
    c: &mut Client,
    id: &Value,
    text: &mut String,
    what: &str,
    enough: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + secs(20);
    while !enough(text) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {what}; got {text:?}"
        );
        if let Some(ev) = c.event(left) {
            if ev["event"] == "output" && &ev["id"] == id {
                assert_eq!(ev["stream"], "stdout", "{ev}");
                text.push_str(ev["text"].as_str().expect("text"));
            }
        }
    }
}

/// The numbers of `line N` lines, in order; panics on anything else.
fn line_numbers(text: &str) -> Vec<usize> {
    text.lines()
        .map(|l| {
            l.strip_prefix("line ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a numbered line: {l:?} in {text:?}"))
        })
        .collect()
}

fn complete_lines(text: &str) -> usize {
    text.matches('\n').count()
}

#[test]
fn tail_returns_the_last_lines_of_a_stream() {
    let lua = r#"return { services = {
        web = { cmd = [[sh -c 'seq 1 30 | sed "s/^/line /"; seq 1 3 | sed "s/^/err /" >&2; exec sleep 1000']],
                stdout = "out.log", stderr = "err.log", starttime = 0 },
    } }"#;
    let d = Daemon::start("tail-lines", lua);
    wait_file(&d.dir.join("err.log"), secs(10), |t| t.lines().count() == 3);
    wait_file(&d.dir.join("out.log"), secs(10), |t| {
        t.lines().count() == 30
    });
    let mut c = Client::new(&d);
    let r = c.call(json!(1), "tail", &["web:0"], json!({"lines": 5}));
    let data = ok(&r);
    assert_eq!(data["name"], "web:0");
    assert_eq!(data["stream"], "stdout");
    let path = data["path"].as_str().expect("path");
    assert!(Path::new(path).ends_with("out.log"), "{path}");
    assert_eq!(data["text"], numbered(26, 30));
    // Ten by default; a service with one instance is that instance.
    let r = c.call(json!(2), "tail", &["web"], json!({}));
    assert_eq!(ok(&r)["text"], numbered(21, 30));
    assert_eq!(ok(&r)["name"], "web:0");
    let r = c.call(json!(3), "tail", &["web:0"], json!({"lines": 10000}));
    assert_eq!(ok(&r)["text"], numbered(1, 30));
    let r = c.call(
        json!(4),
        "tail",
        &["web:0"],
        json!({"stream": "stderr", "lines": 2}),
    );
    assert_eq!(ok(&r)["stream"], "stderr");
    assert_eq!(ok(&r)["text"], "err 2\nerr 3\n");
    // Without opts at all, as a plain SPEC §7 request.
    assert_eq!(
        call(&mut c.ws, 5, "tail", &["web:0"])["data"]["text"],
        numbered(21, 30)
    );
}

#[test]
fn tail_reads_back_into_the_backups_across_a_line_cut_by_a_rotation() {
    let lua = r#"return { services = {
        web = { cmd = "sleep 1000", stdout = "out.log", starttime = 0 },
    } }"#;
    let mut d = Daemon::start("tail-backups", lua);
    d.wait_state("web:0", "RUNNING", secs(10));
    let f = d.dir.join("out.log");
    // As a rotation leaves them: F.2 oldest, a line cut between F.1 and F.
    fs::write(d.dir.join("out.log.2"), numbered(1, 4)).unwrap();
    fs::write(d.dir.join("out.log.1"), format!("{}line 1", numbered(5, 9))).unwrap();
    fs::write(&f, format!("0\n{}", numbered(11, 12))).unwrap();
    let mut c = Client::new(&d);
    let tail = |c: &mut Client, n: usize| -> String {
        let r = c.call(json!(n), "tail", &["web:0"], json!({ "lines": n }));
        ok(&r)["text"].as_str().expect("text").to_string()
    };
    assert_eq!(tail(&mut c, 2), numbered(11, 12));
    assert_eq!(
        tail(&mut c, 3),
        numbered(10, 12),
        "the cut line comes back whole"
    );
    assert_eq!(tail(&mut c, 7), numbered(6, 12));
    assert_eq!(tail(&mut c, 100), numbered(1, 12));
}

#[test]
fn follow_sees_what_a_child_writes_across_external_rotations() {
    let lua = format!("return {{ services = {{ {TICKER} }} }}");
    let d = Daemon::start("follow-rotate", &lua);
    let f = d.dir.join("out.log");
    wait_file(&f, secs(10), |t| t.lines().count() >= 3);
    let mut c = Client::new(&d);
    let id = json!("t1");
    let r = c.call(
        id.clone(),
        "tail",
        &["tick:0"],
        json!({"lines": 2, "follow": true}),
    );
    let mut text = ok(&r)["text"].as_str().expect("text").to_string();
    assert_eq!(complete_lines(&text), 2, "{text:?}");
    follow_until(&mut c, &id, &mut text, "lines before the rotation", |t| {
        complete_lines(t) >= 6
    });
    // An external logrotate: out.log → out.log.1; the child's next line
    // creates a new out.log. Then once more, shifting out.log.1 first.
    fs::rename(&f, d.dir.join("out.log.1")).unwrap();
    let seen = complete_lines(&text);
    follow_until(&mut c, &id, &mut text, "lines after a rotation", |t| {
        complete_lines(t) >= seen + 5
    });
    fs::rename(d.dir.join("out.log.1"), d.dir.join("out.log.2")).unwrap();
    fs::rename(&f, d.dir.join("out.log.1")).unwrap();
    let seen = complete_lines(&text);
    follow_until(
        &mut c,
        &id,
        &mut text,
        "lines after a second rotation",
        |t| complete_lines(t) >= seen + 5,
    );
    // The tail and everything followed since: consecutive, none lost or
    // repeated.
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let numbers = line_numbers(whole);
    let first = numbers[0];
    assert_eq!(
        numbers,
        (first..first + numbers.len()).collect::<Vec<_>>(),
        "{text:?}"
    );
    // Positive control that the rotations happened under the follower.
    assert!(d.dir.join("out.log.2").exists() && f.exists());
}

#[test]
fn logs_of_several_instances_and_following_them() {
    let lua = format!(
        r#"return {{ services = {{
        a = {{ cmd = [[sh -c 'echo a1; echo a2; echo a3; exec sleep 1000']], stdout = "a.log", starttime = 0 }},
        b = {{ cmd = [[sh -c 'echo b1 >&2; exec sleep 1000']], stderr = "b.log", starttime = 0 }},
        quiet = {{ cmd = "sleep 1000", starttime = 0 }},
        {TICKER},
    }} }}"#
    );
    let d = Daemon::start("logs", &lua);
    wait_file(&d.dir.join("a.log"), secs(10), |t| t.lines().count() == 3);
    wait_file(&d.dir.join("b.log"), secs(10), |t| t.lines().count() == 1);
    let mut c = Client::new(&d);
    let r = c.call(
        json!(1),
        "logs",
        &["a", "b"],
        json!({"lines": 2, "follow": false}),
    );
    assert_eq!(
        ok(&r)["lines"],
        json!([
            {"name": "a:0", "stream": "stdout", "text": "a2"},
            {"name": "a:0", "stream": "stdout", "text": "a3"},
            {"name": "b:0", "stream": "stderr", "text": "b1"},
        ])
    );
    // No names: every instance with a log file; `quiet` (nil) is skipped.
    let r = c.call(json!(2), "logs", &[], json!({"follow": false}));
    let names: Vec<&str> = ok(&r)["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["name"].as_str().unwrap_or_default())
        .collect();
    assert!(
        names.starts_with(&["a:0", "a:0", "a:0", "b:0"]),
        "{names:?}"
    );
    assert!(names[4..].iter().all(|n| *n == "tick:0"), "{names:?}");
    // Naming it is an error.
    let r = c.call(json!(3), "logs", &["quiet"], json!({}));
    assert_eq!(error_code(&r), "no_log");
    assert_eq!(
        r["error"]["message"],
        "quiet:0 has no stdout file (stdout = nil)"
    );
    // Following (the default): events carry the logs request's id.
    let id = json!(4);
    let r = c.call(id.clone(), "logs", &["a", "tick"], json!({"lines": 1}));
    assert_eq!(ok(&r)["lines"][0]["text"], "a3");
    let mut text = String::new();
    follow_until(&mut c, &id, &mut text, "ticker lines", |t| {
        complete_lines(t) >= 3
    });
    line_numbers(&text[..text.rfind('\n').map_or(0, |i| i + 1)]);
}

#[test]
fn unfollow_ends_a_follow_and_the_connection_goes_on() {
    let lua = format!("return {{ services = {{ {TICKER} }} }}");
    let d = Daemon::start("unfollow", &lua);
    wait_file(&d.dir.join("out.log"), secs(10), |t| !t.is_empty());
    let mut c = Client::new(&d);
    let r = c.call(json!(5), "tail", &["tick:0"], json!({"follow": true}));
    ok(&r);
    // Positive control: events flow.
    let mut text = String::new();
    follow_until(
        &mut c,
        &json!(5),
        &mut text,
        "events before unfollow",
        |t| complete_lines(t) >= 2,
    );
    // The same id twice is refused while the first runs.
    let r = c.call(json!(5), "tail", &["tick:0"], json!({"follow": true}));
    assert_eq!(error_code(&r), "bad_args");
    let r = c.call(json!(6), "unfollow", &["5"], json!({}));
    assert_eq!(ok(&r), &json!({}));
    // Anything of follow 5 was queued before the reply to unfollow.
    c.events.clear();
    let quiet_until = Instant::now() + Duration::from_millis(600);
    while let Some(ev) = c.event(quiet_until.saturating_duration_since(Instant::now())) {
        assert_ne!(ev["event"], "output", "an event after unfollow: {ev}");
    }
    let r = c.call(json!(7), "unfollow", &["5"], json!({}));
    assert_eq!(error_code(&r), "bad_args", "already ended");
    // The connection goes on: another follow, under the same id.
    assert_eq!(c.call(json!(8), "status", &[], json!({}))["ok"], true);
    ok(&c.call(json!(5), "tail", &["tick:0"], json!({"follow": true})));
    let mut again = String::new();
    follow_until(
        &mut c,
        &json!(5),
        &mut again,
        "events after a new follow",
        |t| complete_lines(t) >= 2,
    );
}

#[test]
fn clear_empties_the_files_and_keeps_the_backups() {
    let lua = r#"return { services = {
        web = { cmd = [[sh -c 'echo out; echo err >&2; exec sleep 1000']], stdout = "out.log", stderr = "err.log", starttime = 0 },
        quiet = { cmd = "sleep 1000", starttime = 0 },
    } }"#;
    let mut d = Daemon::start("clear", lua);
    wait_file(&d.dir.join("out.log"), secs(10), |t| t == "out\n");
    wait_file(&d.dir.join("err.log"), secs(10), |t| t == "err\n");
    fs::write(d.dir.join("out.log.1"), "older\n").unwrap();
    let r = d.request("clear", &["web"]);
    assert_eq!(
        r["data"],
        json!({"results": [{"name": "web:0", "ok": true, "message": "cleared"}]}),
        "{r}"
    );
    assert_eq!(fs::read(d.dir.join("out.log")).unwrap(), b"");
    assert_eq!(fs::read(d.dir.join("err.log")).unwrap(), b"");
    assert_eq!(
        fs::read_to_string(d.dir.join("out.log.1")).unwrap(),
        "older\n"
    );
    // `all` skips the instance without a file; naming it is `no_log`.
    let r = d.ok("clear", &["all"]);
    assert_eq!(
        r["results"],
        json!([{"name": "web:0", "ok": true, "message": "cleared"}])
    );
    let r = d.request("clear", &["quiet"]);
    assert_eq!(error_code(&r), "no_log");
    assert_eq!(
        r["error"]["message"],
        "quiet:0 has no stdout file (stdout = nil)"
    );
    assert_eq!(error_code(&d.request("clear", &["nosuch"])), "unknown_name");
    assert_eq!(error_code(&d.request("clear", &[])), "bad_args");
    // An empty file: tail reads back into the backup that was kept.
    let r = d.request("tail", &["web:0"]);
    assert_eq!(r["data"]["text"], "older\n");
    let log = d.log();
    assert!(log.contains(": clear web\n"), "clear is logged:\n{log}");
}

#[test]
fn signal_reaches_running_children_and_names_are_checked() {
    let lua = r#"return { services = {
        trap = { cmd = [[sh -c 'trap "echo got HUP >> sig.txt" HUP; touch ready; while :; do sleep 0.05; done']], starttime = 0 },
        idle = { cmd = "sleep 1000", autostart = false, starttime = 0 },
    } }"#;
    let mut d = Daemon::start("signal", lua);
    wait_file(&d.dir.join("ready"), secs(10), |_| true);
    let r = d.ok("signal", &["HUP", "trap"]);
    assert_eq!(
        r["results"],
        json!([{"name": "trap:0", "ok": true, "message": "sent SIGHUP"}])
    );
    wait_file(&d.dir.join("sig.txt"), secs(10), |t| t == "got HUP\n");
    // One at a time: two HUPs pending at once are delivered as one.
    for (name, count) in [("SIGHUP", 2), ("hup", 3)] {
        d.ok("signal", &[name, "trap:0"]);
        wait_file(&d.dir.join("sig.txt"), secs(10), |t| {
            t.lines().filter(|l| *l == "got HUP").count() == count
        });
    }
    // Not running: ok false when named, skipped by `all`.
    let r = d.ok("signal", &["USR1", "idle"]);
    assert_eq!(
        r["results"],
        json!([{"name": "idle:0", "ok": false, "message": "not running"}])
    );
    let r = d.ok("signal", &["HUP", "all"]);
    assert_eq!(
        r["results"],
        json!([{"name": "trap:0", "ok": true, "message": "sent SIGHUP"}])
    );
    for args in [&["FOO", "trap"][..], &[], &["HUP"], &["9", "trap"]] {
        let r = d.request("signal", args);
        assert_eq!(error_code(&r), "bad_args", "{args:?}: {r}");
    }
    assert_eq!(
        error_code(&d.request("signal", &["HUP", "nosuch"])),
        "unknown_name"
    );
    let log = d.log();
    assert!(
        log.contains(": signal HUP trap\n"),
        "signal is logged:\n{log}"
    );
}

#[test]
fn no_log_and_bad_args_say_exactly_what_is_wrong() {
    let lua = r#"return { services = {
        web = { cmd = "sleep 1000", numprocs = 2, stdout = "web.log", starttime = 0 },
        nolog = { cmd = "sleep 1000", starttime = 0 },
    } }"#;
    let d = Daemon::start("log-errors", lua);
    let mut c = Client::new(&d);
    let r = c.call(json!(1), "tail", &["nolog:0"], json!({}));
    assert_eq!(error_code(&r), "no_log");
    assert_eq!(
        r["error"]["message"],
        "nolog:0 has no stdout file (stdout = nil)"
    );
    let r = c.call(json!(2), "tail", &["web:0"], json!({"stream": "stderr"}));
    assert_eq!(
        r["error"]["message"],
        "web:0 has no stderr file (stderr = nil)"
    );
    let cases = [
        ("tail", vec!["web:0"], json!({"lines": 0}), "lines"),
        ("tail", vec!["web:0"], json!({"lines": 10001}), "lines"),
        ("logs", vec![], json!({"lines": 0}), "lines"),
        ("tail", vec!["web:0"], json!({"lines": "5"}), "lines"),
        ("tail", vec!["web:0"], json!({"colour": true}), "colour"),
        ("tail", vec!["web:0"], json!({"stream": "stdin"}), "stdin"),
        ("status", vec![], json!({"verbose": true}), "verbose"),
        ("tail", vec!["web"], json!({}), "web:0, web:1"),
        ("tail", vec![], json!({}), "one instance"),
        ("tail", vec!["web:0", "web:1"], json!({}), "one instance"),
    ];
    for (n, (cmd, args, opts, named)) in cases.into_iter().enumerate() {
        let r = c.call(json!(100 + n), cmd, &args, opts.clone());
        assert_eq!(error_code(&r), "bad_args", "{cmd} {args:?} {opts}: {r}");
        let message = r["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{cmd} {opts}: {message}");
    }
    let r = c.call(json!(3), "tail", &["nosuch"], json!({}));
    assert_eq!(error_code(&r), "unknown_name");
    // `opts` that is not an object is a malformed request.
    let r = c.call(json!(4), "tail", &["web:0"], json!([1]));
    assert_eq!(error_code(&r), "bad_request");
    // The connection is still fine.
    assert_eq!(c.call(json!(5), "version", &[], json!({}))["ok"], true);
}

#[test]
fn a_follower_that_never_reads_is_disconnected_and_stalls_nobody() {
    let lua = r#"return { services = {
        web = { cmd = "sleep 1000", stdout = "out.log", starttime = 0 },
    } }"#;
    let mut d = Daemon::start("slow-follower", lua);
    d.wait_state("web:0", "RUNNING", secs(10));
    let mut hog = Client::new(&d);
    ok(&hog.call(json!(1), "tail", &["web:0"], json!({"follow": true})));
    // From here on the hog reads nothing while 48 MiB are written: more
    // than every socket buffer and queue between the daemon and it holds.
    let path = d.dir.join("out.log");
    let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
    let block: String = (0..16_384).map(|n| format!("{n:063}\n")).collect();
    let started = Instant::now();
    let mut written = 0;
    let mut worst = Duration::ZERO;
    let disconnected = "follower too slow";
    while !d.log().contains(disconnected) {
        assert!(
            started.elapsed() < secs(60),
            "the follower was never disconnected; log:\n{}",
            d.log()
        );
        if written < 48 {
            file.write_all(block.as_bytes()).unwrap();
            written += 1;
        }
        let t = Instant::now();
        assert_eq!(d.request("status", &[])["ok"], true);
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        worst < secs(1),
        "status took {worst:?} while a follower stalled"
    );
    // The hog's connection is closed: draining it ends (with what it had
    // been sent: output events, the positive control that it followed).
    let mut outputs = 0;
    let deadline = Instant::now() + secs(30);
    set_timeout(&mut hog.ws, Some(secs(10)));
    loop {
        assert!(Instant::now() < deadline, "the hog's connection stays open");
        match hog.ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                if v["event"] == "output" {
                    outputs += 1;
                }
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the hog's connection is still open, silent")
            }
            Err(_) => break,
        }
    }
    assert!(outputs > 0, "the hog never got an output event");
    assert_eq!(d.request("status", &[])["ok"], true);
    let _ = fs::remove_file(&path);
}

#[test]
fn a_line_reaches_a_follower_quickly() {
    let lua = r#"return { services = {
        web = { cmd = "sleep 1000", stdout = "out.log", starttime = 0 },
    } }"#;
    let mut d = Daemon::start("latency", lua);
    d.wait_state("web:0", "RUNNING", secs(10));
    let mut c = Client::new(&d);
    ok(&c.call(json!(1), "tail", &["web:0"], json!({"follow": true})));
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(d.dir.join("out.log"))
        .unwrap();
    let mut took = Vec::new();
    for n in 0..20 {
        // Some lines after a quiet second, when polls have slowed down.
        if n % 5 == 4 {
            std::thread::sleep(Duration::from_millis(1100));
        }
        let line = format!("line {n}\n");
        let sent = Instant::now();
        file.write_all(line.as_bytes()).unwrap();
        let mut text = String::new();
        follow_until(&mut c, &json!(1), &mut text, "the line", |t| t == line);
        took.push(sent.elapsed());
    }
    took.sort();
    let median = took[took.len() / 2];
    // SPEC §10 promises 100 ms; a loaded test machine may stretch a few.
    assert!(median < Duration::from_millis(100), "{took:?}");
    assert!(took.iter().all(|t| *t < secs(1)), "{took:?}");
}
