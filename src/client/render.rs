//! What the client prints, and the exit status it implies, for each reply
//! (SPEC §8, §9).
//!
//! Pure functions from a reply (or an event) to text: no IO, no clock (the
//! time for event lines is an argument), so every layout and every exit-code
//! decision is tested by table. The text mirrors supervisorctl: `status`
//! has no header, one aligned line per instance; actions print `NAME: what
//! happened` or `NAME: ERROR (why)`.
//!
//! Output (SPEC §10): `tail` prints the text as it is in the file; `logs`
//! prints `NAME | line`, names padded to one width, and on a terminal each
//! instance's name in its own colour and a stderr line's bar in red (the
//! plain text is the same for both streams, so a pipe gets what SPEC §10
//! shows). A followed chunk may end inside a line: [`Prefixes`] holds the
//! start of a line until its end arrives.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::Value;

use super::command::Command;
use super::Exit;
use crate::protocol::{
    ActionResult, DiffData, InstanceInfo, LogsData, ReloadEvent, Reply, StatusData, TailData,
    TransitionEvent,
};

/// Width of the state column: the longest state (`STARTING`, `STOPPING`)
/// plus two spaces.
const STATE_WIDTH: usize = 10;

/// Spaces between the longest instance name and the state column.
const NAME_GAP: usize = 4;

/// The outcome of one command: what goes where, and how the process exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Text for standard output (each line ends with `\n`).
    pub stdout: String,
    /// Text for standard error (each line ends with `\n`).
    pub stderr: String,
    /// The exit status this outcome implies.
    pub exit: Exit,
}

impl Rendered {
    fn out(stdout: String, exit: Exit) -> Rendered {
        Rendered {
            stdout,
            stderr: String::new(),
            exit,
        }
    }

    fn error(message: impl std::fmt::Display) -> Rendered {
        Rendered {
            stdout: String::new(),
            stderr: format!("error: {message}\n"),
            exit: Exit::DaemonError,
        }
    }
}

/// Renders the daemon's reply to `command`. With `json`, stdout is the
/// reply's `data` on one line, but the exit status is decided as in text mode.
pub fn reply(command: &Command, reply: &Reply, json: bool) -> Rendered {
    if !reply.ok {
        return match &reply.error {
            Some(error) => Rendered::error(&error.message),
            None => Rendered::error("the daemon reported a failure without saying why"),
        };
    }
    let null = Value::Null;
    let data = reply.data.as_ref().unwrap_or(&null);
    if *command == Command::Dashboard {
        return dashboard(data, json);
    }
    if json {
        let exit = match command {
            Command::Status(_) => status_exit_lenient(data),
            Command::Start(_)
            | Command::Stop(_)
            | Command::Restart(_)
            | Command::Clear(_)
            | Command::Signal { .. } => results_exit_lenient(data),
            _ => Exit::Ok,
        };
        return Rendered::out(format!("{data}\n"), exit);
    }
    let malformed =
        |e: serde_json::Error| Rendered::error(format!("unexpected reply from taskmasterd: {e}"));
    match command {
        Command::Status(_) => match StatusData::deserialize(data) {
            Ok(status) => status_output(&status),
            Err(e) => malformed(e),
        },
        Command::Start(_)
        | Command::Stop(_)
        | Command::Restart(_)
        | Command::Clear(_)
        | Command::Signal { .. } => {
            match Vec::<ActionResult>::deserialize(data.get("results").unwrap_or(&null)) {
                Ok(results) => results_output(&results),
                Err(e) => malformed(e),
            }
        }
        Command::Tail { follow, .. } => match TailData::deserialize(data) {
            Ok(tail) => Rendered::out(tail_text(&tail.text, *follow), Exit::Ok),
            Err(e) => malformed(e),
        },
        Command::Logs { .. } => match LogsData::deserialize(data) {
            Ok(logs) => {
                let mut prefixes = Prefixes::new(logs.lines.iter().map(|l| l.name.as_str()), false);
                Rendered::out(logs_text(&logs, &mut prefixes), Exit::Ok)
            }
            Err(e) => malformed(e),
        },
        Command::Reload => match DiffData::deserialize(data) {
            Ok(diff) => Rendered::out(diff_lines(&diff), Exit::Ok),
            Err(e) => malformed(e),
        },
        Command::Version => match data.get("version").and_then(Value::as_str) {
            Some(version) => Rendered::out(format!("{version}\n"), Exit::Ok),
            None => Rendered::error("unexpected reply from taskmasterd: no version"),
        },
        Command::Shutdown => Rendered::out("taskmasterd is shutting down\n".into(), Exit::Ok),
        Command::Events | Command::Help(_) | Command::Quit | Command::Dashboard => {
            Rendered::out(String::new(), Exit::Ok)
        }
    }
}

/// `dashboard`: the URL from the `version` reply (`{"url": ...}` with
/// `--json`); an error when the daemon has no TCP listener.
fn dashboard(data: &Value, json: bool) -> Rendered {
    match data.get("dashboard").and_then(Value::as_str) {
        Some(url) if json => {
            Rendered::out(format!("{}\n", serde_json::json!({ "url": url })), Exit::Ok)
        }
        Some(url) => Rendered::out(format!("{url}\n"), Exit::Ok),
        None => Rendered::error(
            "no TCP listener: the dashboard is served on TCP listeners only \
             (start taskmasterd with --listen 127.0.0.1)",
        ),
    }
}

/// `tail`'s text as printed: as in the file, plus a newline after a last
/// line that has none yet, unless following (then the rest of that line is
/// still to come).
pub fn tail_text(text: &str, follow: bool) -> String {
    if follow || text.is_empty() || text.ends_with('\n') {
        text.to_string()
    } else {
        format!("{text}\n")
    }
}

/// The lines of a `logs` reply, each prefixed.
pub fn logs_text(logs: &LogsData, prefixes: &mut Prefixes) -> String {
    let mut out = String::new();
    for line in &logs.lines {
        out.push_str(&prefixes.line(&line.name, &line.stream, &line.text));
    }
    out
}

/// Colours for instance names on a terminal, in turn: cyan, yellow, green,
/// magenta, blue, and their bright forms (red is kept for stderr).
const PALETTE: &[&str] = &["36", "33", "32", "35", "34", "96", "93", "92", "95", "94"];

/// How `logs` prefixes lines: `NAME | `, names padded to one width, each
/// name its own colour when `colour` is set; and the starts of followed
/// lines whose ends have not arrived.
#[derive(Debug, Clone, Default)]
pub struct Prefixes {
    /// Width of the name column.
    width: usize,
    /// Whether to colour (stdout is a terminal).
    colour: bool,
    /// Names in the order first seen: a name's colour is its place here.
    names: Vec<String>,
    /// Per (name, stream): text after the last newline of its chunks.
    partial: Vec<((String, String), String)>,
}

impl Prefixes {
    /// Prefixes for lines of `names` (any order, repeats allowed); a longer
    /// name met later widens the column from then on.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>, colour: bool) -> Prefixes {
        let mut prefixes = Prefixes {
            colour,
            ..Prefixes::default()
        };
        for name in names {
            prefixes.know(name);
        }
        prefixes
    }

    fn know(&mut self, name: &str) -> usize {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return i;
        }
        self.width = self.width.max(name.chars().count());
        self.names.push(name.to_string());
        self.names.len() - 1
    }

    /// One line (`text` without its newline), prefixed, with its newline.
    pub fn line(&mut self, name: &str, stream: &str, text: &str) -> String {
        let index = self.know(name);
        let width = self.width;
        if !self.colour {
            return format!("{name:<width$} | {text}\n");
        }
        let colour = PALETTE[index % PALETTE.len()];
        let bar = if stream == "stderr" {
            "\x1b[1;31m|\x1b[0m"
        } else {
            "|"
        };
        format!("\x1b[{colour}m{name:<width$}\x1b[0m {bar} {text}\n")
    }

    /// A followed chunk: the lines it completes, prefixed; a trailing
    /// piece without its newline waits for the next chunk of that stream.
    pub fn chunk(&mut self, name: &str, stream: &str, text: &str) -> String {
        let key = (name.to_string(), stream.to_string());
        let slot = match self.partial.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.partial.push((key, String::new()));
                self.partial.len() - 1
            }
        };
        let mut pending = std::mem::take(&mut self.partial[slot].1);
        pending.push_str(text);
        let mut out = String::new();
        let complete = pending.rfind('\n').map_or(0, |i| i + 1);
        for line in pending[..complete].split_inclusive('\n') {
            out.push_str(&self.line(name, stream, line.strip_suffix('\n').unwrap_or(line)));
        }
        self.partial[slot].1 = pending[complete..].to_string();
        out
    }

    /// The line starts still waiting for their ends (when the follow
    /// stops), prefixed.
    pub fn flush(&mut self) -> String {
        let partial = std::mem::take(&mut self.partial);
        let mut out = String::new();
        for ((name, stream), text) in partial {
            if !text.is_empty() {
                out.push_str(&self.line(&name, &stream, &text));
            }
        }
        out
    }
}

/// `status` in text mode: the lines, the warning about a failed reload, and
/// exit status 3 when something listed is not RUNNING.
fn status_output(status: &StatusData) -> Rendered {
    let stderr = match &status.config.error {
        Some(error) => format!(
            "warning: the last reload of {} failed, the previous config is still in use: {error}\n",
            status.config.path
        ),
        None => String::new(),
    };
    Rendered {
        stdout: status_lines(&status.instances),
        stderr,
        exit: status_exit(&status.instances),
    }
}

/// One supervisorctl-style line per instance, columns aligned, no header:
/// `web:0    RUNNING   pid 1234, uptime 0:01:02`.
pub fn status_lines(instances: &[InstanceInfo]) -> String {
    let width = instances.iter().map(|i| i.name.len()).max().unwrap_or(0) + NAME_GAP;
    let mut out = String::with_capacity(instances.len() * (width + STATE_WIDTH + 32));
    for instance in instances {
        let start = out.len();
        let _ = write!(
            out,
            "{:<width$}{:<STATE_WIDTH$}{}",
            instance.name,
            instance.state,
            description(instance)
        );
        let end = out[start..].trim_end().len() + start;
        out.truncate(end);
        out.push('\n');
    }
    out
}

/// The daemon's description, or one built from the fields if it sent none.
fn description(instance: &InstanceInfo) -> String {
    if !instance.description.is_empty() {
        return instance.description.clone();
    }
    match (
        instance.pid,
        instance.uptime,
        &instance.signal,
        instance.exitcode,
    ) {
        (Some(pid), Some(uptime), _, _) => format!("pid {pid}, uptime {}", uptime_text(uptime)),
        (Some(pid), None, _, _) => format!("pid {pid}"),
        (None, _, Some(signal), _) => format!("killed by {signal}"),
        (None, _, None, Some(code)) => format!("exit status {code}"),
        (None, _, None, None) => String::new(),
    }
}

/// `H:MM:SS`, as supervisorctl shows uptimes.
fn uptime_text(seconds: f64) -> String {
    let total = if seconds.is_finite() && seconds > 0.0 {
        seconds as u64
    } else {
        0
    };
    format!(
        "{}:{:02}:{:02}",
        total / 3600,
        (total / 60) % 60,
        total % 60
    )
}

/// Exit status of `status`: 3 when any listed instance is not RUNNING.
pub fn status_exit(instances: &[InstanceInfo]) -> Exit {
    if instances.iter().all(|i| i.state == "RUNNING") {
        Exit::Ok
    } else {
        Exit::NotRunning
    }
}

/// [`status_exit`] on raw `data`, for `--json`, where the reply is passed
/// through without being fully decoded.
fn status_exit_lenient(data: &Value) -> Exit {
    let instances = data.get("instances").and_then(Value::as_array);
    let all_running = instances.is_some_and(|list| {
        list.iter()
            .all(|i| i.get("state").and_then(Value::as_str) == Some("RUNNING"))
    });
    if all_running {
        Exit::Ok
    } else {
        Exit::NotRunning
    }
}

/// `start`/`stop`/`restart`: `web:0: started` or `web:0: ERROR (not running)`
/// per instance; exit status 1 when any failed.
fn results_output(results: &[ActionResult]) -> Rendered {
    let mut out = String::new();
    for result in results {
        if result.ok {
            let _ = writeln!(out, "{}: {}", result.name, result.message);
        } else {
            let _ = writeln!(out, "{}: ERROR ({})", result.name, result.message);
        }
    }
    let exit = if results.iter().all(|r| r.ok) {
        Exit::Ok
    } else {
        Exit::DaemonError
    };
    Rendered::out(out, exit)
}

fn results_exit_lenient(data: &Value) -> Exit {
    let results = data.get("results").and_then(Value::as_array);
    let all_ok = results.is_none_or(|list| {
        list.iter()
            .all(|r| r.get("ok").and_then(Value::as_bool) == Some(true))
    });
    if all_ok {
        Exit::Ok
    } else {
        Exit::DaemonError
    }
}

/// The result of `reload`, one line per kind of change.
pub fn diff_lines(diff: &DiffData) -> String {
    let mut out = String::new();
    for (label, names) in [
        ("added:", &diff.added),
        ("removed:", &diff.removed),
        ("changed:", &diff.changed),
        ("unchanged:", &diff.unchanged),
    ] {
        let _ = writeln!(out, "{label:<11}{}", name_list(names));
    }
    out
}

fn name_list(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}

/// One readable line for an event frame, stamped with the event's own time
/// (transitions) or `now` (reloads, which carry none). Unknown frames are
/// shown as JSON.
pub fn event_line(event: &Value, now: SystemTime) -> String {
    let kind = event.get("event").and_then(Value::as_str);
    match kind {
        Some("transition") => match TransitionEvent::deserialize(event) {
            Ok(t) => transition_line(&t),
            Err(_) => event.to_string(),
        },
        Some("reload") => match ReloadEvent::deserialize(event) {
            Ok(r) => format!("{} {}", timestamp(now), reload_text(&r)),
            Err(_) => event.to_string(),
        },
        Some("health") => match crate::protocol::HealthEvent::deserialize(event) {
            Ok(h) => {
                let time = Duration::try_from_secs_f64(h.time)
                    .ok()
                    .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
                    .unwrap_or(now);
                let mut line = format!("{} {} is {}", timestamp(time), h.name, h.health);
                if !h.output.is_empty() && h.health != "healthy" {
                    let _ = write!(line, " ({})", h.output.trim_end());
                }
                line
            }
            Err(_) => event.to_string(),
        },
        _ => event.to_string(),
    }
}

fn transition_line(t: &TransitionEvent) -> String {
    let time = Duration::try_from_secs_f64(t.time)
        .ok()
        .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut details = Vec::new();
    if let Some(pid) = t.pid {
        details.push(format!("pid {pid}"));
    }
    if let Some(signal) = &t.signal {
        details.push(format!("killed by {signal}"));
    } else if let Some(code) = t.exitcode {
        details.push(format!("exit status {code}"));
    }
    match t.expected {
        Some(true) => details.push("expected".into()),
        Some(false) => details.push("not expected".into()),
        None => {}
    }
    let mut line = format!("{} {} {} -> {}", timestamp(time), t.name, t.from, t.to);
    if !details.is_empty() {
        let _ = write!(line, " ({})", details.join(", "));
    }
    line
}

fn reload_text(r: &ReloadEvent) -> String {
    if !r.ok {
        return format!(
            "reload failed: {}",
            r.error.as_deref().unwrap_or("unknown error")
        );
    }
    let Some(diff) = &r.diff else {
        return "reload ok".to_string();
    };
    format!(
        "reload ok: added {}; removed {}; changed {}; unchanged {}",
        name_list(&diff.added),
        name_list(&diff.removed),
        name_list(&diff.changed),
        name_list(&diff.unchanged)
    )
}

fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ConfigInfo, ErrorBody};
    use serde_json::json;

    fn instance(name: &str, state: &str, description: &str) -> InstanceInfo {
        let (service, index) = name.split_once(':').unwrap();
        InstanceInfo {
            name: name.into(),
            service: service.into(),
            instance: index.parse().unwrap(),
            state: state.into(),
            pid: None,
            uptime: None,
            exitcode: None,
            signal: None,
            restarts: 0,
            description: description.into(),
            health: None,
            waiting_for: None,
        }
    }

    fn status_reply(instances: Vec<InstanceInfo>, error: Option<&str>) -> Reply {
        let data = StatusData {
            instances,
            config: ConfigInfo {
                path: "/etc/taskmaster.lua".into(),
                loaded_at: 1.0,
                error: error.map(str::to_string),
            },
        };
        Reply::ok(json!(1), serde_json::to_value(data).unwrap())
    }

    #[test]
    fn status_lines_align_like_supervisorctl() {
        let lines = status_lines(&[
            instance("web:0", "RUNNING", "pid 1234, uptime 0:01:02"),
            instance("worker:10", "STARTING", ""),
            instance("db:0", "BACKOFF", "exited too quickly (exit status 1)"),
            instance("db:1", "FATAL", "exited too quickly (exit status 1)"),
            instance("job:0", "EXITED", "exit status 2; not expected"),
            instance("job:1", "EXITED", "killed by SIGKILL"),
            instance("api:0", "STOPPING", "pid 99"),
            instance("api:1", "STOPPED", "Not started"),
        ]);
        let want = "\
web:0        RUNNING   pid 1234, uptime 0:01:02
worker:10    STARTING
db:0         BACKOFF   exited too quickly (exit status 1)
db:1         FATAL     exited too quickly (exit status 1)
job:0        EXITED    exit status 2; not expected
job:1        EXITED    killed by SIGKILL
api:0        STOPPING  pid 99
api:1        STOPPED   Not started
";
        assert_eq!(lines, want);
    }

    #[test]
    fn status_line_matches_the_spec_example() {
        let lines = status_lines(&[instance("web:0", "RUNNING", "pid 1234, uptime 0:01:02")]);
        assert_eq!(lines, "web:0    RUNNING   pid 1234, uptime 0:01:02\n");
        assert_eq!(status_lines(&[]), "");
    }

    #[test]
    fn missing_descriptions_are_built_from_the_fields() {
        let mut running = instance("web:0", "RUNNING", "");
        running.pid = Some(7);
        running.uptime = Some(3723.9);
        assert_eq!(description(&running), "pid 7, uptime 1:02:03");
        let mut killed = instance("web:1", "EXITED", "");
        killed.signal = Some("SIGKILL".into());
        killed.exitcode = Some(-9);
        assert_eq!(description(&killed), "killed by SIGKILL");
        let mut exited = instance("web:2", "EXITED", "");
        exited.exitcode = Some(2);
        assert_eq!(description(&exited), "exit status 2");
        assert_eq!(uptime_text(f64::NAN), "0:00:00");
    }

    #[test]
    fn status_exit_is_3_when_anything_listed_is_not_running() {
        let status = Command::Status(vec![]);
        let all_running = status_reply(
            vec![
                instance("web:0", "RUNNING", "pid 1"),
                instance("web:1", "RUNNING", "pid 2"),
            ],
            None,
        );
        for json in [false, true] {
            assert_eq!(reply(&status, &all_running, json).exit, Exit::Ok);
        }
        for state in [
            "STOPPED", "STARTING", "BACKOFF", "STOPPING", "EXITED", "FATAL",
        ] {
            let mixed = status_reply(
                vec![
                    instance("web:0", "RUNNING", "pid 1"),
                    instance("web:1", state, ""),
                ],
                None,
            );
            for json in [false, true] {
                assert_eq!(
                    reply(&status, &mixed, json).exit,
                    Exit::NotRunning,
                    "{state} json={json}"
                );
            }
        }
        assert_eq!(
            reply(&status, &status_reply(vec![], None), false).exit,
            Exit::Ok
        );
    }

    #[test]
    fn status_warns_about_a_failed_reload_on_stderr() {
        let r = reply(
            &Command::Status(vec![]),
            &status_reply(
                vec![instance("web:0", "RUNNING", "pid 1")],
                Some("taskmaster.lua:3: syntax error"),
            ),
            false,
        );
        assert!(r.stdout.starts_with("web:0"));
        assert!(r.stderr.contains("last reload"), "{}", r.stderr);
        assert!(r.stderr.contains("taskmaster.lua:3: syntax error"));
        assert_eq!(r.exit, Exit::Ok);
    }

    #[test]
    fn json_mode_prints_data_on_one_line() {
        let data = json!({"version": "0.1.0"});
        let r = reply(&Command::Version, &Reply::ok(json!(1), data.clone()), true);
        assert_eq!(r.stdout, format!("{data}\n"));
        assert_eq!(r.stdout.lines().count(), 1);
        let text = reply(&Command::Version, &Reply::ok(json!(1), data), false);
        assert_eq!(text.stdout, "0.1.0\n");
    }

    #[test]
    fn daemon_errors_exit_1_with_the_message_on_stderr() {
        let err = Reply {
            id: json!(1),
            ok: false,
            data: None,
            error: Some(ErrorBody {
                code: "unknown_name".into(),
                message: "no such service or instance: NOSUCH".into(),
            }),
        };
        for json in [false, true] {
            let r = reply(&Command::Status(vec!["NOSUCH".into()]), &err, json);
            assert_eq!(r.exit, Exit::DaemonError);
            assert_eq!(r.stdout, "");
            assert_eq!(r.stderr, "error: no such service or instance: NOSUCH\n");
        }
    }

    #[test]
    fn action_results_print_one_line_each_and_fail_on_any_error() {
        let data = json!({"results": [
            {"name": "web:0", "ok": true, "message": "started"},
            {"name": "web:1", "ok": false, "message": "already started"},
        ]});
        let start = Command::Start(vec!["web".into()]);
        let r = reply(&start, &Reply::ok(json!(1), data.clone()), false);
        assert_eq!(r.stdout, "web:0: started\nweb:1: ERROR (already started)\n");
        assert_eq!(r.exit, Exit::DaemonError);
        assert_eq!(
            reply(&start, &Reply::ok(json!(1), data), true).exit,
            Exit::DaemonError
        );
        let fine = json!({"results": [{"name": "web:0", "ok": true, "message": "stopped"}]});
        let stop = Command::Stop(vec!["web:0".into()]);
        let r = reply(&stop, &Reply::ok(json!(1), fine), false);
        assert_eq!((r.stdout.as_str(), r.exit), ("web:0: stopped\n", Exit::Ok));
    }

    #[test]
    fn malformed_data_is_an_error_not_a_panic() {
        let r = reply(
            &Command::Status(vec![]),
            &Reply::ok(json!(1), json!({"instances": 3})),
            false,
        );
        assert_eq!(r.exit, Exit::DaemonError);
        assert!(r.stderr.contains("unexpected reply"));
        let r = reply(&Command::Reload, &Reply::ok(json!(1), json!(null)), false);
        assert_eq!(r.exit, Exit::DaemonError);
    }

    #[test]
    fn reload_lists_the_diff() {
        let diff = json!({"added": ["api"], "removed": [], "changed": ["web"], "unchanged": ["db", "worker"]});
        let r = reply(&Command::Reload, &Reply::ok(json!(1), diff), false);
        assert_eq!(
            r.stdout,
            "added:     api\nremoved:   (none)\nchanged:   web\nunchanged: db, worker\n"
        );
        assert_eq!(r.exit, Exit::Ok);
    }

    #[test]
    fn tail_prints_the_text_as_in_the_file() {
        let data =
            json!({"name": "web:0", "stream": "stdout", "path": "/x/out.log", "text": "a\nb\n"});
        let tail = Command::Tail {
            name: "web:0".into(),
            stream: None,
            lines: None,
            follow: false,
        };
        let r = reply(&tail, &Reply::ok(json!(1), data.clone()), false);
        assert_eq!((r.stdout.as_str(), r.exit), ("a\nb\n", Exit::Ok));
        let r = reply(&tail, &Reply::ok(json!(1), data.clone()), true);
        assert_eq!(r.stdout, format!("{data}\n"));
        assert_eq!(tail_text("a\npart", false), "a\npart\n");
        assert_eq!(tail_text("a\npart", true), "a\npart");
        assert_eq!(tail_text("", false), "");
        let no_log = Reply::err(
            json!(1),
            "no_log",
            "web:0 has no stdout file (stdout = nil)",
        );
        let r = reply(&tail, &no_log, false);
        assert_eq!(r.exit, Exit::DaemonError);
        assert_eq!(r.stderr, "error: web:0 has no stdout file (stdout = nil)\n");
    }

    #[test]
    fn logs_lines_are_prefixed_with_names_padded_to_one_width() {
        let data = json!({"lines": [
            {"name": "web:0", "stream": "stdout", "text": "up"},
            {"name": "worker:10", "stream": "stderr", "text": "oops"},
            {"name": "web:0", "stream": "stdout", "text": ""},
        ]});
        let logs = Command::Logs {
            names: vec![],
            lines: None,
            follow: false,
        };
        let r = reply(&logs, &Reply::ok(json!(1), data), false);
        assert_eq!(r.stdout, "web:0     | up\nworker:10 | oops\nweb:0     | \n");
        let mut coloured = Prefixes::new(["web:0", "db:0"], true);
        assert_eq!(
            coloured.line("web:0", "stdout", "x"),
            "\x1b[36mweb:0\x1b[0m | x\n"
        );
        assert_eq!(
            coloured.line("db:0", "stderr", "y"),
            "\x1b[33mdb:0 \x1b[0m \x1b[1;31m|\x1b[0m y\n"
        );
    }

    #[test]
    fn followed_chunks_are_printed_line_by_line() {
        let mut p = Prefixes::new(["web:0", "db:0"], false);
        assert_eq!(p.chunk("web:0", "stdout", "one\ntw"), "web:0 | one\n");
        assert_eq!(p.chunk("db:0", "stdout", "x"), "");
        assert_eq!(
            p.chunk("web:0", "stdout", "o\nthree\n"),
            "web:0 | two\nweb:0 | three\n"
        );
        assert_eq!(p.chunk("web:0", "stderr", "e\n"), "web:0 | e\n");
        assert_eq!(p.flush(), "db:0  | x\n");
        assert_eq!(p.flush(), "");
    }

    #[test]
    fn clear_and_signal_print_results_like_actions() {
        let data = json!({"results": [
            {"name": "web:0", "ok": true, "message": "sent SIGHUP"},
            {"name": "idle:0", "ok": false, "message": "not running"},
        ]});
        let signal = Command::Signal {
            signal: "HUP".into(),
            names: vec!["web".into(), "idle".into()],
        };
        let r = reply(&signal, &Reply::ok(json!(1), data.clone()), false);
        assert_eq!(
            r.stdout,
            "web:0: sent SIGHUP\nidle:0: ERROR (not running)\n"
        );
        assert_eq!(r.exit, Exit::DaemonError);
        assert_eq!(
            reply(&signal, &Reply::ok(json!(1), data), true).exit,
            Exit::DaemonError
        );
        let cleared = json!({"results": [{"name": "web:0", "ok": true, "message": "cleared"}]});
        let r = reply(
            &Command::Clear(vec!["web".into()]),
            &Reply::ok(json!(1), cleared),
            false,
        );
        assert_eq!((r.stdout.as_str(), r.exit), ("web:0: cleared\n", Exit::Ok));
    }

    #[test]
    fn events_read_as_one_line_each() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let exit = json!({"event": "transition", "name": "web:0", "service": "web",
            "instance": 0, "from": "RUNNING", "to": "EXITED", "pid": 42, "exitcode": 1,
            "signal": null, "expected": false, "time": 1_700_000_000.5});
        assert_eq!(
            event_line(&exit, t0),
            "2023-11-14T22:13:20.500Z web:0 RUNNING -> EXITED (pid 42, exit status 1, not expected)"
        );
        let up = json!({"event": "transition", "name": "web:0", "service": "web",
            "instance": 0, "from": "STARTING", "to": "RUNNING", "pid": 42, "exitcode": null,
            "signal": null, "expected": null, "time": 1_700_000_000.0});
        assert!(event_line(&up, t0).ends_with("web:0 STARTING -> RUNNING (pid 42)"));
        let failed =
            json!({"event": "reload", "ok": false, "error": "x.lua:1: boom", "diff": null});
        assert_eq!(
            event_line(&failed, t0),
            "2023-11-14T22:13:20.000Z reload failed: x.lua:1: boom"
        );
        let ok = json!({"event": "reload", "ok": true, "error": null,
            "diff": {"added": [], "removed": ["old"], "changed": [], "unchanged": ["web"]}});
        assert!(event_line(&ok, t0)
            .ends_with("reload ok: added (none); removed old; changed (none); unchanged web"));
        let odd = json!({"event": "future", "x": 1});
        assert_eq!(event_line(&odd, t0), odd.to_string());
    }
}
