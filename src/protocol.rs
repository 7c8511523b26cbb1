//! The wire protocol (SPEC §7, §9, §10), shared by the daemon and the client.
//!
//! One JSON object per WebSocket text frame. Requests are decoded leniently
//! enough to answer every malformed one with an error reply that carries the
//! request's `id` when it could be read, and `null` otherwise; nothing here
//! panics on input.
//!
//! A request may carry `opts` beside `args` (SPEC Part two): a JSON object
//! of named options. Decoding only checks that it is an object; which
//! options a command takes, and their types, is the command's business
//! ([`Request::check_opts`]), so that the error can name the command.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Largest frame or message the daemon accepts (SPEC §7).
pub const MAX_FRAME: usize = 64 * 1024;

/// A decoded request: `{"id": 7, "cmd": "tail", "args": ["web:0"], "opts": {"lines": 20}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Echoed in the reply; any JSON number or string, `null` when absent.
    pub id: Value,
    /// The command name, as sent.
    pub cmd: String,
    /// Positional string arguments; an omitted `args` is empty.
    pub args: Vec<String>,
    /// Named options; an omitted (or `null`) `opts` is empty.
    pub opts: Map<String, Value>,
}

/// The JSON type an option must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptType {
    /// `true` / `false`.
    Bool,
    /// A JSON integer (range checks are the command's).
    Integer,
    /// A JSON string.
    String,
}

impl OptType {
    fn accepts(self, value: &Value) -> bool {
        match self {
            OptType::Bool => value.is_boolean(),
            OptType::Integer => value.is_i64() || value.is_u64(),
            OptType::String => value.is_string(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            OptType::Bool => "a boolean",
            OptType::Integer => "an integer",
            OptType::String => "a string",
        }
    }
}

/// Why a request's `opts` do not fit its command: a `bad_args` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptError {
    /// The command takes no option of that name.
    Unknown {
        /// The option as sent.
        name: String,
        /// The options the command does take (empty: none).
        known: Vec<&'static str>,
    },
    /// The option's value has the wrong JSON type.
    WrongType {
        /// The option.
        name: String,
        /// What it must be (`an integer`).
        expected: &'static str,
        /// What was sent, as JSON.
        found: String,
    },
}

/// Why a frame could not be turned into a [`Request`]: carries what the reply needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    /// The request id when it could be read, else `null`.
    pub id: Value,
    /// Machine-readable error code (`bad_json`, `bad_request`).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl Request {
    /// Decodes one text frame. Never panics; every failure names its cause.
    pub fn decode(text: &str) -> Result<Request, DecodeError> {
        let value: Value = serde_json::from_str(text).map_err(|e| DecodeError {
            id: Value::Null,
            code: "bad_json",
            message: format!("malformed JSON: {e}"),
        })?;
        let Value::Object(mut obj) = value else {
            return Err(DecodeError {
                id: Value::Null,
                code: "bad_request",
                message: "a request must be a JSON object".into(),
            });
        };
        let id = obj.remove("id").unwrap_or(Value::Null);
        let bad = |id: &Value, message: String| DecodeError {
            id: id.clone(),
            code: "bad_request",
            message,
        };
        if !matches!(id, Value::Null | Value::Number(_) | Value::String(_)) {
            return Err(bad(
                &Value::Null,
                "\"id\" must be a number or a string".into(),
            ));
        }
        let cmd = match obj.remove("cmd") {
            Some(Value::String(cmd)) => cmd,
            Some(_) => return Err(bad(&id, "\"cmd\" must be a string".into())),
            None => return Err(bad(&id, "missing \"cmd\"".into())),
        };
        let args = match obj.remove("args") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut args = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => args.push(s),
                        other => {
                            return Err(bad(
                                &id,
                                format!("\"args\" must be a list of strings, found {other}"),
                            ))
                        }
                    }
                }
                args
            }
            Some(_) => return Err(bad(&id, "\"args\" must be a list of strings".into())),
        };
        let opts = match obj.remove("opts") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(opts)) => opts,
            Some(_) => return Err(bad(&id, "\"opts\" must be a JSON object".into())),
        };
        Ok(Request {
            id,
            cmd,
            args,
            opts,
        })
    }

    /// A request with no options.
    pub fn new(id: Value, cmd: &str, args: &[String]) -> Request {
        Request {
            id,
            cmd: cmd.to_string(),
            args: args.to_vec(),
            opts: Map::new(),
        }
    }

    /// Encodes a request as the client sends it; `opts` only when there are
    /// some, so a plain request reads as in SPEC §7.
    pub fn encode(&self) -> String {
        let mut frame = serde_json::json!({"id": self.id, "cmd": self.cmd, "args": self.args});
        if !self.opts.is_empty() {
            frame["opts"] = Value::Object(self.opts.clone());
        }
        frame.to_string()
    }

    /// Checks `opts` against the options the command takes (`known`, each
    /// with its type): the first unknown option or wrong type, in the order
    /// sent, is the error.
    pub fn check_opts(&self, known: &[(&'static str, OptType)]) -> Result<(), OptError> {
        for (name, value) in &self.opts {
            let Some((_, kind)) = known.iter().find(|(k, _)| k == name) else {
                return Err(OptError::Unknown {
                    name: name.clone(),
                    known: known.iter().map(|(k, _)| *k).collect(),
                });
            };
            if !kind.accepts(value) {
                let mut found = value.to_string();
                if found.len() > 64 {
                    found = format!("{}…", found.chars().take(60).collect::<String>());
                }
                return Err(OptError::WrongType {
                    name: name.clone(),
                    expected: kind.name(),
                    found,
                });
            }
        }
        Ok(())
    }

    /// A boolean option, if given (after [`Request::check_opts`]).
    pub fn opt_bool(&self, name: &str) -> Option<bool> {
        self.opts.get(name).and_then(Value::as_bool)
    }

    /// An integer option, if given; one beyond `i64` reads as `i64::MAX`,
    /// which every range check refuses.
    pub fn opt_int(&self, name: &str) -> Option<i64> {
        let value = self.opts.get(name)?;
        value.as_i64().or_else(|| value.as_u64().map(|_| i64::MAX))
    }

    /// A string option, if given.
    pub fn opt_str(&self, name: &str) -> Option<&str> {
        self.opts.get(name).and_then(Value::as_str)
    }
}

/// Parses a signal name as `signal` takes it (SPEC §10): `HUP`, `SIGHUP`,
/// `hup`. Numbers are refused: their meaning differs between systems.
pub fn parse_signal(name: &str) -> Option<nix::sys::signal::Signal> {
    let upper = name.trim().to_ascii_uppercase();
    if upper.is_empty() {
        return None;
    }
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse().ok()
}

/// An error carried by a failed reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code (`unknown_name`, `bad_json`, `unknown_command`, ...).
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

/// A reply frame: `{"id", "ok": true, "data"}` or `{"id", "ok": false, "error"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The request's id, echoed.
    pub id: Value,
    /// Whether the command succeeded.
    pub ok: bool,
    /// The command's result when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// The failure when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Reply {
    /// A successful reply.
    pub fn ok(id: Value, data: Value) -> Reply {
        Reply {
            id,
            ok: true,
            data: Some(data),
            error: None,
        }
    }

    /// A failed reply.
    pub fn err(id: Value, code: &str, message: impl Into<String>) -> Reply {
        Reply {
            id,
            ok: false,
            data: None,
            error: Some(ErrorBody {
                code: code.to_string(),
                message: message.into(),
            }),
        }
    }

    /// The reply as one JSON text frame.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"id":null,"ok":false,"error":{"code":"internal","message":"unencodable reply"}}"#
                .to_string()
        })
    }
}

/// One instance as `status` reports it (SPEC §7 INSTANCE).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// `web:0`.
    pub name: String,
    /// `web`.
    pub service: String,
    /// 0-based index within the service.
    pub instance: u32,
    /// State name in capitals (`RUNNING`).
    pub state: String,
    /// Pid while a process exists.
    pub pid: Option<u32>,
    /// Seconds since the process started, while it runs.
    pub uptime: Option<f64>,
    /// Exit code of the last exit, if it exited normally.
    pub exitcode: Option<i32>,
    /// Signal name (`SIGKILL`) of the last exit, if killed by a signal.
    pub signal: Option<String>,
    /// Automatic restarts since the last manual start.
    pub restarts: u32,
    /// The supervisorctl-style status text (`pid 123, uptime 0:00:12`).
    pub description: String,
    /// `"starting"`, `"healthy"`, `"unhealthy"`, or null (not RUNNING, or
    /// no healthcheck).
    #[serde(default)]
    pub health: Option<String>,
    /// While WAITING: the services it waits for; else null.
    #[serde(default)]
    pub waiting_for: Option<Vec<String>>,
}

/// The `config` section of a `status` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigInfo {
    /// Path of the config file in use.
    pub path: String,
    /// When the running config was loaded (unix seconds).
    pub loaded_at: f64,
    /// The error of the last failed reload, until a good config loads.
    pub error: Option<String>,
}

/// The `data` of a `status` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusData {
    /// Instances in service-name then index order.
    pub instances: Vec<InstanceInfo>,
    /// Which config is loaded.
    pub config: ConfigInfo,
}

/// The outcome of `start`/`stop`/`restart` for one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionResult {
    /// `web:0`.
    pub name: String,
    /// Whether the instance reached the requested state.
    pub ok: bool,
    /// What happened (`started`, `not running`, `exited too quickly ...`).
    pub message: String,
}

/// The `data` of a `tail` reply (SPEC §10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailData {
    /// `web:0`.
    pub name: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The log file read.
    pub path: String,
    /// The last lines, each with its newline (the last may lack one while
    /// the child is still writing it).
    pub text: String,
}

/// One line of a `logs` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// `web:0`.
    pub name: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, without its newline.
    pub text: String,
}

/// The `data` of a `logs` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsData {
    /// Oldest first within each instance's stream; streams in status order,
    /// stdout before stderr.
    pub lines: Vec<LogLine>,
}

/// Output appended to a followed log: `{"event": "output", "id": 7, "name":
/// "web:0", "stream": "stdout", "text": "..."}`. A chunk, not a line: it may
/// end inside a line (never inside a character).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename = "output")]
pub struct OutputEvent {
    /// The id of the `tail`/`logs` request that started the follow.
    pub id: Value,
    /// `web:0`.
    pub name: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The bytes appended, as UTF-8 (invalid bytes replaced by U+FFFD).
    pub text: String,
}

impl OutputEvent {
    /// The event as one JSON text frame.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The result of a reload: service names by what happened to them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffData {
    /// Services that are new.
    pub added: Vec<String>,
    /// Services that are gone.
    pub removed: Vec<String>,
    /// Services whose options changed (restarted, resized or updated in place).
    pub changed: Vec<String>,
    /// Services left exactly as they were.
    pub unchanged: Vec<String>,
}

/// A state change of one instance, as pushed to subscribers and hooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionEvent {
    /// `web:0`.
    pub name: String,
    /// `web`.
    pub service: String,
    /// 0-based index.
    pub instance: u32,
    /// State left.
    pub from: String,
    /// State entered.
    pub to: String,
    /// The process's pid, when one is involved.
    pub pid: Option<u32>,
    /// Exit code, when the change was caused by a normal exit.
    pub exitcode: Option<i32>,
    /// Signal name, when the change was caused by a death by signal.
    pub signal: Option<String>,
    /// For exits: whether the exit was expected; otherwise null.
    pub expected: Option<bool>,
    /// Unix seconds.
    pub time: f64,
    /// The instance's status text after the change (as in INSTANCE).
    #[serde(default)]
    pub description: String,
    /// The instance's automatic restarts after the change.
    #[serde(default)]
    pub restarts: u32,
    /// The instance's health after the change (see [`InstanceInfo`]).
    #[serde(default)]
    pub health: Option<String>,
    /// The services it waits for, while WAITING.
    #[serde(default)]
    pub waiting_for: Option<Vec<String>>,
}

/// An instance's health changed (SPEC §11).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthEvent {
    /// `web:0`.
    pub name: String,
    /// `web`.
    pub service: String,
    /// 0-based index.
    pub instance: u32,
    /// `starting`, `healthy`, `unhealthy`.
    pub health: String,
    /// The last probe's output (first 200 bytes).
    pub output: String,
    /// Unix seconds.
    pub time: f64,
}

/// The result of one reload attempt, as pushed to subscribers and hooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadEvent {
    /// Whether the new config was applied.
    pub ok: bool,
    /// The config error when not applied.
    pub error: Option<String>,
    /// What changed when applied.
    pub diff: Option<DiffData>,
}

/// Anything pushed on a `subscribe`d connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// An instance changed state.
    Transition(TransitionEvent),
    /// A reload was attempted.
    Reload(ReloadEvent),
    /// An instance's health changed.
    Health(HealthEvent),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_requests_and_names_each_failure() {
        let ok = Request::decode(r#"{"id": 7, "cmd": "start", "args": ["web"]}"#).unwrap();
        assert_eq!(
            ok,
            Request {
                id: json!(7),
                cmd: "start".into(),
                args: vec!["web".into()],
                opts: Map::new(),
            }
        );
        let no_args = Request::decode(r#"{"id": "a", "cmd": "status"}"#).unwrap();
        assert!(no_args.args.is_empty());
        assert_eq!(no_args.id, json!("a"));

        let cases = [
            ("{nope", Value::Null, "bad_json"),
            ("[1,2]", Value::Null, "bad_request"),
            (r#"{"id": 3}"#, json!(3), "bad_request"),
            (r#"{"id": 3, "cmd": 5}"#, json!(3), "bad_request"),
            (
                r#"{"id": 3, "cmd": "start", "args": [1]}"#,
                json!(3),
                "bad_request",
            ),
            (
                r#"{"id": 3, "cmd": "start", "args": "web"}"#,
                json!(3),
                "bad_request",
            ),
            (r#"{"id": {}, "cmd": "start"}"#, Value::Null, "bad_request"),
            (
                r#"{"id": 3, "cmd": "tail", "opts": [1]}"#,
                json!(3),
                "bad_request",
            ),
        ];
        for (text, id, code) in cases {
            let err = Request::decode(text).unwrap_err();
            assert_eq!((err.id, err.code), (id, code), "{text}");
        }
    }

    #[test]
    fn opts_are_an_object_checked_per_command() {
        let req = Request::decode(
            r#"{"id": 1, "cmd": "tail", "args": ["web:0"], "opts": {"lines": 20, "follow": true}}"#,
        )
        .unwrap();
        let tail = [
            ("stream", OptType::String),
            ("lines", OptType::Integer),
            ("follow", OptType::Bool),
        ];
        assert_eq!(req.check_opts(&tail), Ok(()));
        assert_eq!(req.opt_int("lines"), Some(20));
        assert_eq!(req.opt_bool("follow"), Some(true));
        assert_eq!(req.opt_str("stream"), None);
        let null = Request::decode(r#"{"cmd": "status", "opts": null}"#).unwrap();
        assert!(null.opts.is_empty());
        assert_eq!(null.check_opts(&[]), Ok(()));

        let unknown = Request::decode(r#"{"cmd": "tail", "opts": {"lnes": 2}}"#).unwrap();
        assert_eq!(
            unknown.check_opts(&tail),
            Err(OptError::Unknown {
                name: "lnes".into(),
                known: vec!["stream", "lines", "follow"],
            })
        );
        for (opts, name, found) in [
            (r#"{"lines": "20"}"#, "lines", r#""20""#),
            (r#"{"lines": 2.5}"#, "lines", "2.5"),
            (r#"{"follow": 1}"#, "follow", "1"),
            (r#"{"stream": null}"#, "stream", "null"),
        ] {
            let req = Request::decode(&format!(r#"{{"cmd": "tail", "opts": {opts}}}"#)).unwrap();
            match req.check_opts(&tail) {
                Err(OptError::WrongType {
                    name: n, found: f, ..
                }) => assert_eq!((n.as_str(), f.as_str()), (name, found), "{opts}"),
                other => panic!("{opts}: {other:?}"),
            }
        }
        let huge =
            Request::decode(r#"{"cmd": "tail", "opts": {"lines": 18446744073709551615}}"#).unwrap();
        assert_eq!(huge.check_opts(&tail), Ok(()));
        assert_eq!(huge.opt_int("lines"), Some(i64::MAX));
    }

    #[test]
    fn requests_encode_opts_only_when_there_are_some() {
        let mut req = Request::new(json!(4), "tail", &["web:0".to_string()]);
        assert_eq!(
            serde_json::from_str::<Value>(&req.encode()).unwrap(),
            json!({"id": 4, "cmd": "tail", "args": ["web:0"]})
        );
        req.opts.insert("lines".into(), json!(5));
        let round = Request::decode(&req.encode()).unwrap();
        assert_eq!(round, req);
    }

    #[test]
    fn signal_names_with_or_without_the_prefix_in_any_case() {
        use nix::sys::signal::Signal;
        for name in ["HUP", "SIGHUP", "hup", "sigHup", " HUP "] {
            assert_eq!(parse_signal(name), Some(Signal::SIGHUP), "{name}");
        }
        assert_eq!(parse_signal("USR1"), Some(Signal::SIGUSR1));
        for name in ["", "SIG", "FOO", "1", "SIGHUPX"] {
            assert_eq!(parse_signal(name), None, "{name}");
        }
    }

    #[test]
    fn output_events_are_tagged_and_carry_the_follow_id() {
        let ev = OutputEvent {
            id: json!(7),
            name: "web:0".into(),
            stream: "stdout".into(),
            text: "hi\n".into(),
        };
        let v: Value = serde_json::from_str(&ev.encode()).unwrap();
        assert_eq!(
            v,
            json!({"event": "output", "id": 7, "name": "web:0", "stream": "stdout", "text": "hi\n"})
        );
        assert_eq!(serde_json::from_value::<OutputEvent>(v).unwrap(), ev);
    }

    #[test]
    fn events_are_tagged_top_level_objects() {
        let ev = Event::Reload(ReloadEvent {
            ok: false,
            error: Some("x".into()),
            diff: None,
        });
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            v,
            json!({"event": "reload", "ok": false, "error": "x", "diff": null})
        );
    }
}
