//! The client's command set (SPEC §8): one table of commands, the parser that
//! turns typed words into a [`Command`], and the help text.
//!
//! The table is the single source for parsing, `help`, and the REPL's
//! completion of command names, so the three cannot drift apart. Parsing is
//! pure and happens before any connection is made: a usage error never
//! contacts the daemon.

use std::fmt::Write as _;

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
    /// `reload`: re-read the config and apply the differences.
    Reload,
    /// `shutdown` (or `exit`): stop everything and the daemon.
    Shutdown,
    /// `version`: the daemon's version.
    Version,
    /// `events`: follow the event stream.
    Events,
    /// `help [COMMAND]`, answered locally.
    Help(Option<String>),
    /// `quit`: leave the REPL.
    Quit,
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
            if args.is_empty() {
                Err(UsageError(format!(
                    "{name} needs at least one name (usage: {})",
                    spec.usage
                )))
            } else {
                Ok(make(args.clone()))
            }
        };
        match name {
            "status" => Ok(Command::Status(args.clone())),
            "start" => names(Command::Start),
            "stop" => names(Command::Stop),
            "restart" => names(Command::Restart),
            "reload" => no_args(Command::Reload),
            "shutdown" | "exit" => no_args(Command::Shutdown),
            "version" => no_args(Command::Version),
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

    /// The wire `cmd` and `args` for commands the daemon answers with one
    /// reply; `None` for `help`, `quit` and `events` (which subscribes).
    pub fn wire(&self) -> Option<(&'static str, &[String])> {
        match self {
            Command::Status(names) => Some(("status", names)),
            Command::Start(names) => Some(("start", names)),
            Command::Stop(names) => Some(("stop", names)),
            Command::Restart(names) => Some(("restart", names)),
            Command::Reload => Some(("reload", &[])),
            Command::Shutdown => Some(("shutdown", &[])),
            Command::Version => Some(("version", &[])),
            Command::Events | Command::Help(_) | Command::Quit => None,
        }
    }
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
            ("reload", Command::Reload),
            ("shutdown", Command::Shutdown),
            ("exit", Command::Shutdown),
            ("version", Command::Version),
            ("events", Command::Events),
            ("help", Command::Help(None)),
            ("help start", Command::Help(Some("start".into()))),
            ("quit", Command::Quit),
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
            ("help nosuch", "no help for \"nosuch\""),
            ("help start stop", "help takes at most one command"),
        ];
        for (line, want) in cases {
            let err = parse(line).expect_err(line);
            assert!(err.0.contains(want), "{line}: {err}");
        }
    }

    #[test]
    fn shutdown_and_exit_send_the_same_wire_command() {
        assert_eq!(parse("exit").unwrap().wire(), Some(("shutdown", &[][..])));
        let start = parse("start web").unwrap();
        assert_eq!(start.wire(), Some(("start", &["web".to_string()][..])));
        assert_eq!(parse("events").unwrap().wire(), None);
        assert_eq!(parse("help").unwrap().wire(), None);
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
