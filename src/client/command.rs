//! The client's command set (SPEC §8): one table of commands, the parser that
//! turns typed words into a [`Command`], and the help text.
//!
//! The table is the single source for parsing, `help`, and the REPL's
//! completion of command names, so the three cannot drift apart. Parsing is
//! pure and happens before any connection is made: a usage error never
//! contacts the daemon.
//!
//! `tail` and `logs` take flags (`-f`, `-n LINES`, `--no-follow`) anywhere
//! among their words, as `tail(1)` does; `--` ends the flags, for a service
//! whose name starts with a dash.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::protocol::parse_signal;

/// Lines `tail`/`logs` may ask for (SPEC §18).
pub const MAX_LINES: u32 = 10_000;

/// A command the user asked for, with its arguments checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `status [NAME...]`: every instance when no names are given.
    Status(Vec<String>),
    /// `start NAME...|all`.
    Start(Vec<String>),
    /// `stop NAME...|all`.
    Stop(Vec<String>),
    /// `restart NAME...|all`.
    Restart(Vec<String>),
    /// `tail [-f] [-n LINES] NAME [stdout|stderr]`.
    Tail {
        /// One instance, or a service with one instance.
        name: String,
        /// `stdout` or `stderr`; the daemon's default (stdout) when None.
        stream: Option<String>,
        /// How many lines; the daemon's default (10) when None.
        lines: Option<u32>,
        /// Keep printing what is appended (`-f`).
        follow: bool,
    },
    /// `logs [-n LINES] [--no-follow] [NAME...]`.
    Logs {
        /// Instances or services; every one with a log file when empty.
        names: Vec<String>,
        /// Lines per stream; the daemon's default (10) when None.
        lines: Option<u32>,
        /// Keep printing what is appended (the default).
        follow: bool,
    },
    /// `clear NAME...|all`.
    Clear(Vec<String>),
    /// `signal SIG NAME...|all`.
    Signal {
        /// The signal as typed (`HUP`, `SIGHUP`), checked.
        signal: String,
        /// Whom to send it to.
        names: Vec<String>,
    },
    /// `reload`: re-read the config and apply the differences.
    Reload,
    /// `shutdown` (or `exit`): stop everything and the daemon.
    Shutdown,
    /// `version`: the daemon's version.
    Version,
    /// `events`: follow the event stream.
    Events,
    /// `dashboard`: print the web dashboard's URL.
    Dashboard,
    /// `help [COMMAND]`, answered locally.
    Help(Option<String>),
    /// `quit`: leave the REPL.
    Quit,
}

/// A request as it goes on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Wire {
    /// The protocol `cmd`.
    pub cmd: &'static str,
    /// Its `args`.
    pub args: Vec<String>,
    /// Its `opts` (empty: none sent).
    pub opts: Map<String, Value>,
}

/// Words that do not form a valid command; exit status 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// What `help` says about one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// The word that invokes it.
    pub name: &'static str,
    /// Its synopsis, `start NAME...|all`.
    pub usage: &'static str,
    /// One line for the `help` overview.
    pub summary: &'static str,
    /// What `help NAME` adds to the summary.
    pub details: &'static str,
}

/// Every command, in the order `help` lists them.
pub const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "status",
        usage: "status [NAME...]",
        summary: "show the state of every instance, or of the named ones",
        details: "Prints one line per instance: name, state, and pid and uptime or why it \
                  is not running.\nExit status 3 when a listed instance is not RUNNING.",
    },
    CommandSpec {
        name: "start",
        usage: "start NAME...|all",
        summary: "start services or instances",
        details: "Waits until each instance is RUNNING or has given up (FATAL), then prints \
                  one line per instance.\nExit status 1 when one of them could not be started.",
    },
    CommandSpec {
        name: "stop",
        usage: "stop NAME...|all",
        summary: "stop services or instances",
        details: "Sends each instance its stop signal, escalating to SIGKILL after its \
                  stoptime, and waits until it is STOPPED.\nA stopped instance is not \
                  restarted automatically. Exit status 1 when one was not running.",
    },
    CommandSpec {
        name: "restart",
        usage: "restart NAME...|all",
        summary: "stop, then start services or instances",
        details: "Stops each running instance, then starts it; a stopped instance is just \
                  started.\nExit status 1 when one of them could not be started.",
    },
    CommandSpec {
        name: "tail",
        usage: "tail [-f] [-n LINES] NAME [stdout|stderr]",
        summary: "show the last lines of an instance's output",
        details: "Prints the last LINES lines (default 10, at most 10000) of NAME's stdout, or \
                  of its stderr; when the file holds fewer, earlier lines come from its \
                  rotated backups.\nNAME is one instance (web:0), or a service with one \
                  instance. With -f, keeps printing what is written until Ctrl-C.\nExit \
                  status 1 when the stream is not written to a file (stdout = nil).",
    },
    CommandSpec {
        name: "logs",
        usage: "logs [-n LINES] [--no-follow] [NAME...]",
        summary: "show and follow the output of several instances, each line prefixed",
        details: "Prints the last LINES lines (default 10) of each stream of the named \
                  instances, or of every instance that has a log file, as \"NAME | line\", \
                  then follows them until Ctrl-C.\n--no-follow stops after the last lines. \
                  On a terminal each instance has its own colour and stderr lines a red bar.",
    },
    CommandSpec {
        name: "clear",
        usage: "clear NAME...|all",
        summary: "empty the log files of services or instances (backups are kept)",
        details: "Truncates each instance's stdout and stderr files; rotated backups (F.1, \
                  F.2 ...) stay.\nclear all skips instances without a log file; naming one \
                  is an error (exit status 1).",
    },
    CommandSpec {
        name: "signal",
        usage: "signal SIG NAME...|all",
        summary: "send a signal to services or instances",
        details: "SIG is a signal name, with or without SIG (HUP, SIGUSR1, term). It goes to \
                  the process group of each RUNNING or STARTING instance.\nA named instance \
                  that is not running is an error (exit status 1); signal SIG all skips them.",
    },
    CommandSpec {
        name: "reload",
        usage: "reload",
        summary: "re-read the config and apply the differences",
        details: "Unchanged services keep running untouched; added ones are created, removed \
                  ones stopped, changed ones restarted only when how they are spawned \
                  changed.\nIf the new config is invalid nothing changes and the error is \
                  shown (exit status 1).",
    },
    CommandSpec {
        name: "shutdown",
        usage: "shutdown",
        summary: "stop every process, then the daemon (alias: exit; the REPL asks first)",
        details: "Each instance is stopped with its own stop signal and stoptime, then \
                  taskmasterd exits.\nIn the REPL (when its input is a terminal) it first \
                  asks \"stop every service and the daemon? [y/N]\"; anything but y or yes \
                  cancels. taskmasterctl shutdown does not ask.",
    },
    CommandSpec {
        name: "exit",
        usage: "exit",
        summary: "same as shutdown: stop every process, then the daemon (the REPL asks first)",
        details: "In the REPL (when its input is a terminal) it first asks \"stop every \
                  service and the daemon? [y/N]\"; anything but y or yes cancels.\nTo leave \
                  the REPL without stopping the daemon, use quit or Ctrl-D.",
    },
    CommandSpec {
        name: "version",
        usage: "version",
        summary: "show the daemon's version",
        details: "Prints the version of the running taskmasterd.",
    },
    CommandSpec {
        name: "dashboard",
        usage: "dashboard",
        summary: "print the URL of the web dashboard",
        details: "Prints the URL of the dashboard page, which the daemon serves on its \
                  first TCP listener (and /metrics beside it). Fails with \"no TCP \
                  listener\" when the daemon listens on Unix sockets only.",
    },
    CommandSpec {
        name: "events",
        usage: "events",
        summary: "follow state changes and reloads as they happen",
        details: "Prints one line per event until Ctrl-C or until the daemon closes the \
                  connection; with --json, one JSON object per line.",
    },
    CommandSpec {
        name: "help",
        usage: "help [COMMAND]",
        summary: "list the commands, or describe one",
        details: "Without an argument, lists every command; with one, shows its usage.",
    },
    CommandSpec {
        name: "quit",
        usage: "quit",
        summary: "leave the REPL (the daemon keeps running)",
        details: "Ctrl-D does the same.",
    },
];

/// Looks a command up by the word that invokes it.
pub fn spec(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| c.name == name)
}

impl Command {
    /// Turns words (`["start", "web"]`) into a command, or says what is wrong.
    pub fn parse<S: AsRef<str>>(words: &[S]) -> Result<Command, UsageError> {
        let Some((first, rest)) = words.split_first() else {
            return Err(UsageError("no command given (try: help)".into()));
        };
        let name = first.as_ref();
        let Some(spec) = spec(name) else {
            return Err(UsageError(format!("unknown command {name:?} (try: help)")));
        };
        let args: Vec<String> = rest.iter().map(|a| a.as_ref().to_string()).collect();
        // Everything after the command word comes here (its flags are its
        // own), so `taskmasterctl tail --help` is asked for here too.
        if let Some(end) = args
            .iter()
            .position(|a| a == "-h" || a == "--help" || a == "--")
        {
            if args[end] != "--" {
                return Ok(Command::Help(Some(name.to_string())));
            }
        }
        let no_args = |command: Command| {
            if args.is_empty() {
                Ok(command)
            } else {
                Err(UsageError(format!(
                    "{name} takes no arguments (usage: {})",
                    spec.usage
                )))
            }
        };
        let names = |make: fn(Vec<String>) -> Command| {
            let names = plain_words(&args, spec)?;
            if names.is_empty() {
                Err(UsageError(format!(
                    "{name} needs at least one name (usage: {})",
                    spec.usage
                )))
            } else {
                Ok(make(names))
            }
        };
        match name {
            "status" => Ok(Command::Status(plain_words(&args, spec)?)),
            "start" => names(Command::Start),
            "stop" => names(Command::Stop),
            "restart" => names(Command::Restart),
            "tail" => parse_tail(&args, spec),
            "logs" => parse_logs(&args, spec),
            "clear" => names(Command::Clear),
            "signal" => parse_signal_command(&args, spec),
            "reload" => no_args(Command::Reload),
            "shutdown" | "exit" => no_args(Command::Shutdown),
            "version" => no_args(Command::Version),
            "dashboard" => no_args(Command::Dashboard),
            "events" => no_args(Command::Events),
            "quit" => no_args(Command::Quit),
            _ => match args.as_slice() {
                [] => Ok(Command::Help(None)),
                [topic] if spec_exists(topic) => Ok(Command::Help(Some(topic.clone()))),
                [topic] => Err(UsageError(format!(
                    "no help for {topic:?}: unknown command (try: help)"
                ))),
                _ => Err(UsageError(format!(
                    "help takes at most one command (usage: {})",
                    spec.usage
                ))),
            },
        }
    }

    /// The request for commands the daemon answers; `None` for `help`,
    /// `quit` and `events` (which subscribes).
    pub fn wire(&self) -> Option<Wire> {
        let plain = |cmd: &'static str, args: &[String]| {
            Some(Wire {
                cmd,
                args: args.to_vec(),
                opts: Map::new(),
            })
        };
        match self {
            Command::Status(names) => plain("status", names),
            Command::Start(names) => plain("start", names),
            Command::Stop(names) => plain("stop", names),
            Command::Restart(names) => plain("restart", names),
            Command::Clear(names) => plain("clear", names),
            Command::Signal { signal, names } => {
                let mut args = vec![signal.clone()];
                args.extend(names.iter().cloned());
                plain("signal", &args)
            }
            Command::Tail {
                name,
                stream,
                lines,
                follow,
            } => {
                let mut opts = Map::new();
                if let Some(stream) = stream {
                    opts.insert("stream".into(), Value::from(stream.as_str()));
                }
                if let Some(lines) = lines {
                    opts.insert("lines".into(), Value::from(*lines));
                }
                if *follow {
                    opts.insert("follow".into(), Value::Bool(true));
                }
                Some(Wire {
                    cmd: "tail",
                    args: vec![name.clone()],
                    opts,
                })
            }
            Command::Logs {
                names,
                lines,
                follow,
            } => {
                let mut opts = Map::new();
                if let Some(lines) = lines {
                    opts.insert("lines".into(), Value::from(*lines));
                }
                // Always said: the daemon's default (follow) is what a
                // plain `logs` wants, but a reader should not need to know.
                opts.insert("follow".into(), Value::Bool(*follow));
                Some(Wire {
                    cmd: "logs",
                    args: names.clone(),
                    opts,
                })
            }
            Command::Reload => plain("reload", &[]),
            Command::Shutdown => plain("shutdown", &[]),
            Command::Version | Command::Dashboard => plain("version", &[]),
            Command::Events | Command::Help(_) | Command::Quit => None,
        }
    }

    /// Whether it keeps printing output after its reply, until Ctrl-C.
    pub fn follows(&self) -> bool {
        matches!(
            self,
            Command::Tail { follow: true, .. } | Command::Logs { follow: true, .. }
        )
    }
}

/// The words of `tail`/`logs` split into flags and the rest: `-n`'s value
/// (`-n 5`, `-n5`, `--lines 5`, `--lines=5`), whether one of `switches`
/// was given, and the other words in order.
struct Flags {
    lines: Option<u32>,
    switched: bool,
    words: Vec<String>,
}

fn flags(args: &[String], switches: &[&str], spec: &CommandSpec) -> Result<Flags, UsageError> {
    let usage = |what: String| UsageError(format!("{what} (usage: {})", spec.usage));
    let mut out = Flags {
        lines: None,
        switched: false,
        words: Vec::new(),
    };
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let value = match word.as_str() {
            "--" => {
                out.words.extend(words.by_ref().cloned());
                break;
            }
            "-n" | "--lines" => Some(
                words
                    .next()
                    .ok_or_else(|| usage(format!("{word} needs a number of lines")))?
                    .as_str(),
            ),
            w if w.starts_with("--lines=") => Some(&w["--lines=".len()..]),
            w if w.starts_with("-n") && w.len() > 2 => Some(&w[2..]),
            w if switches.contains(&w) => {
                out.switched = true;
                None
            }
            w if w.starts_with('-') && w.len() > 1 => {
                return Err(usage(format!(
                    "unknown option {w:?} for {}; options of taskmasterctl itself, such as \
                     --json, go before the command",
                    spec.name
                )))
            }
            _ => {
                out.words.push(word.clone());
                None
            }
        };
        if let Some(value) = value {
            let lines = value
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_LINES).contains(n))
                .ok_or_else(|| {
                    usage(format!(
                        "LINES must be a number from 1 to {MAX_LINES}, not {value:?}"
                    ))
                })?;
            out.lines = Some(lines);
        }
    }
    Ok(out)
}

fn parse_tail(args: &[String], spec: &CommandSpec) -> Result<Command, UsageError> {
    let f = flags(args, &["-f", "--follow"], spec)?;
    let (name, stream) = match f.words.as_slice() {
        [name] => (name.clone(), None),
        [name, stream] if stream == "stdout" || stream == "stderr" => {
            (name.clone(), Some(stream.clone()))
        }
        [_, other] => {
            return Err(UsageError(format!(
                "the stream is stdout or stderr, not {other:?} (usage: {})",
                spec.usage
            )))
        }
        [] => {
            return Err(UsageError(format!(
                "tail needs an instance name (usage: {})",
                spec.usage
            )))
        }
        _ => {
            return Err(UsageError(format!(
                "tail takes one instance name (usage: {})",
                spec.usage
            )))
        }
    };
    Ok(Command::Tail {
        name,
        stream,
        lines: f.lines,
        follow: f.switched,
    })
}

fn parse_logs(args: &[String], spec: &CommandSpec) -> Result<Command, UsageError> {
    let f = flags(args, &["--no-follow"], spec)?;
    Ok(Command::Logs {
        names: f.words,
        lines: f.lines,
        follow: !f.switched,
    })
}

/// Words that are names, not flags: a word starting with `-` is an unknown
/// option (a usage error, as before any network), unless it comes after
/// `--`, for a service whose name starts with a dash.
fn plain_words(args: &[String], spec: &CommandSpec) -> Result<Vec<String>, UsageError> {
    let mut out = Vec::with_capacity(args.len());
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if word == "--" {
            out.extend(words.by_ref().cloned());
            break;
        }
        if word.starts_with('-') && word.len() > 1 {
            return Err(UsageError(format!(
                "unknown option {word:?} for {} (usage: {}; options of taskmasterctl \
                 itself, such as --json, go before the command)",
                spec.name, spec.usage
            )));
        }
        out.push(word.clone());
    }
    Ok(out)
}

fn parse_signal_command(args: &[String], spec: &CommandSpec) -> Result<Command, UsageError> {
    let args = plain_words(args, spec)?;
    let Some((signal, names)) = args.split_first().filter(|(_, names)| !names.is_empty()) else {
        return Err(UsageError(format!(
            "signal needs a signal and at least one name (usage: {})",
            spec.usage
        )));
    };
    if parse_signal(signal).is_none() {
        return Err(UsageError(format!(
            "unknown signal {signal:?} (a name such as HUP, TERM, USR1; usage: {})",
            spec.usage
        )));
    }
    Ok(Command::Signal {
        signal: signal.clone(),
        names: names.to_vec(),
    })
}

fn spec_exists(name: &str) -> bool {
    spec(name).is_some()
}

/// The text of `help` (no topic) or `help COMMAND`.
pub fn help(topic: Option<&str>) -> String {
    let mut out = String::new();
    match topic.and_then(spec) {
        Some(spec) => {
            let _ = writeln!(out, "usage: {}", spec.usage);
            let _ = writeln!(out, "{}.", capitalize(spec.summary));
            let _ = writeln!(out, "{}", spec.details);
            if spec.usage.contains("NAME") {
                let _ = writeln!(out, "{NAMES}");
            }
        }
        None => {
            out.push_str(&overview());
            let _ = writeln!(out, "\n{NAMES}");
            let _ = writeln!(out, "Type help COMMAND for more about one command.");
        }
    }
    out
}

/// What a NAME argument may be.
const NAMES: &str = "NAME is a service (web), one of its instances (web:0), or all.";

/// One line per command: usage and summary, aligned.
pub fn overview() -> String {
    let width = COMMANDS.iter().map(|c| c.usage.len()).max().unwrap_or(0) + 2;
    let mut out = String::from("commands:\n");
    for c in COMMANDS {
        let _ = writeln!(out, "  {:<width$}{}", c.usage, c.summary);
    }
    out
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command, UsageError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        Command::parse(&words)
    }

    #[test]
    fn parses_every_command() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cases = [
            ("status", Command::Status(vec![])),
            ("status web web:1", Command::Status(s(&["web", "web:1"]))),
            ("start all", Command::Start(s(&["all"]))),
            ("stop web:0 db", Command::Stop(s(&["web:0", "db"]))),
            ("restart web", Command::Restart(s(&["web"]))),
            ("clear all", Command::Clear(s(&["all"]))),
            (
                "signal HUP web web:1",
                Command::Signal {
                    signal: "HUP".into(),
                    names: s(&["web", "web:1"]),
                },
            ),
            (
                "tail web:0",
                Command::Tail {
                    name: "web:0".into(),
                    stream: None,
                    lines: None,
                    follow: false,
                },
            ),
            (
                "tail -f -n 20 web:0 stderr",
                Command::Tail {
                    name: "web:0".into(),
                    stream: Some("stderr".into()),
                    lines: Some(20),
                    follow: true,
                },
            ),
            (
                "tail web:0 -n5 -f",
                Command::Tail {
                    name: "web:0".into(),
                    stream: None,
                    lines: Some(5),
                    follow: true,
                },
            ),
            (
                "tail --lines=10000 -- -odd",
                Command::Tail {
                    name: "-odd".into(),
                    stream: None,
                    lines: Some(10_000),
                    follow: false,
                },
            ),
            (
                "logs",
                Command::Logs {
                    names: vec![],
                    lines: None,
                    follow: true,
                },
            ),
            (
                "logs --no-follow -n 3 web db:0",
                Command::Logs {
                    names: s(&["web", "db:0"]),
                    lines: Some(3),
                    follow: false,
                },
            ),
            ("reload", Command::Reload),
            ("shutdown", Command::Shutdown),
            ("exit", Command::Shutdown),
            ("version", Command::Version),
            ("events", Command::Events),
            ("help", Command::Help(None)),
            ("help start", Command::Help(Some("start".into()))),
            ("quit", Command::Quit),
            ("tail --help", Command::Help(Some("tail".into()))),
            ("start web -h", Command::Help(Some("start".into()))),
            ("stop -- -odd", Command::Stop(s(&["-odd"]))),
            ("status -- --help", Command::Status(s(&["--help"]))),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), Ok(want), "{line}");
        }
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        let cases = [
            ("", "no command"),
            ("frobnicate", "unknown command \"frobnicate\""),
            ("Status", "unknown command"),
            (
                "start",
                "start needs at least one name (usage: start NAME...|all)",
            ),
            ("stop", "stop needs at least one name"),
            ("restart", "restart needs at least one name"),
            ("reload now", "reload takes no arguments"),
            ("version 2", "version takes no arguments"),
            ("exit now", "exit takes no arguments (usage: exit)"),
            ("events web", "events takes no arguments"),
            ("tail", "tail needs an instance name"),
            ("tail web:0 web:1 stdout", "tail takes one instance name"),
            (
                "tail web:0 web:1",
                "the stream is stdout or stderr, not \"web:1\"",
            ),
            (
                "tail web:0 stdin",
                "the stream is stdout or stderr, not \"stdin\"",
            ),
            (
                "tail -n 0 web:0",
                "LINES must be a number from 1 to 10000, not \"0\"",
            ),
            ("tail -n 10001 web:0", "not \"10001\""),
            ("tail -n x web:0", "not \"x\""),
            ("tail web:0 -n", "-n needs a number of lines"),
            ("tail -x web:0", "unknown option \"-x\" for tail"),
            ("logs -f", "unknown option \"-f\" for logs"),
            ("logs --lines=0", "LINES must be"),
            ("clear", "clear needs at least one name"),
            ("signal", "signal needs a signal and at least one name"),
            ("signal HUP", "signal needs a signal and at least one name"),
            ("signal FOO web", "unknown signal \"FOO\""),
            ("status --nope", "unknown option \"--nope\" for status"),
            ("start web --json", "go before the command"),
            ("signal HUP -x", "unknown option \"-x\" for signal"),
            ("help nosuch", "no help for \"nosuch\""),
            ("help start stop", "help takes at most one command"),
        ];
        for (line, want) in cases {
            let err = parse(line).expect_err(line);
            assert!(err.0.contains(want), "{line}: {err}");
        }
    }

    fn wire(line: &str) -> (String, Vec<String>, Value) {
        let w = parse(line).unwrap().wire().expect("a wire command");
        (w.cmd.to_string(), w.args, Value::Object(w.opts))
    }

    #[test]
    fn shutdown_and_exit_send_the_same_wire_command() {
        use serde_json::json;
        assert_eq!(wire("exit"), ("shutdown".into(), vec![], json!({})));
        assert_eq!(
            wire("start web"),
            ("start".into(), vec!["web".into()], json!({}))
        );
        assert_eq!(parse("events").unwrap().wire(), None);
        assert_eq!(parse("help").unwrap().wire(), None);
    }

    #[test]
    fn log_commands_carry_their_options() {
        use serde_json::json;
        assert_eq!(
            wire("tail web:0"),
            ("tail".into(), vec!["web:0".into()], json!({}))
        );
        assert_eq!(
            wire("tail -f -n 3 web:0 stderr"),
            (
                "tail".into(),
                vec!["web:0".into()],
                json!({"stream": "stderr", "lines": 3, "follow": true})
            )
        );
        assert_eq!(
            wire("logs web"),
            ("logs".into(), vec!["web".into()], json!({"follow": true}))
        );
        assert_eq!(
            wire("logs --no-follow -n 2"),
            ("logs".into(), vec![], json!({"lines": 2, "follow": false}))
        );
        assert_eq!(
            wire("signal hup web all"),
            (
                "signal".into(),
                vec!["hup".into(), "web".into(), "all".into()],
                json!({})
            )
        );
        assert!(parse("tail -f web:0").unwrap().follows());
        assert!(parse("logs").unwrap().follows());
        assert!(!parse("tail web:0").unwrap().follows());
        assert!(!parse("logs --no-follow").unwrap().follows());
    }

    #[test]
    fn help_lists_every_command_and_describes_one() {
        let all = help(None);
        for c in COMMANDS {
            assert!(all.contains(c.usage), "{} missing from help", c.name);
            assert!(all.contains(c.summary), "{} summary missing", c.name);
        }
        let start = help(Some("start"));
        assert!(start.starts_with("usage: start NAME...|all\n"), "{start}");
        assert!(start.contains("RUNNING"));
        assert!(start.contains("web:0"));
        assert!(!help(Some("version")).contains("NAME is"));
        for cmd in ["shutdown", "exit"] {
            let text = help(Some(cmd));
            assert!(
                text.contains("asks \"stop every service and the daemon? [y/N]\""),
                "{text}"
            );
        }
        assert!(help(Some("shutdown")).contains("taskmasterctl shutdown does not ask"));
        assert!(help(Some("exit")).contains("quit"));
    }
}
