//! `taskmasterctl`, the client (SPEC §8): runs one command and exits, or,
//! without a command, opens a REPL.
//!
//! The flow of a one-shot command is: parse the words ([`command`]) — a usage
//! error stops here, before any network — then open a session
//! ([`connection`]), send one request, render the reply ([`render`]) and exit
//! with the status it implies ([`Exit`]). The REPL ([`repl`]) runs the same
//! `execute` step per line, keeping its session between lines and
//! reopening it when the daemon went away.
//!
//! Everything runs on a current-thread tokio runtime built on demand: a
//! one-shot `status` is a process start, one connect, one round trip, so there
//! is nothing worth a thread pool.
//!
//! `tail -f` and `logs` (which follows by default) print their reply, then
//! the `output` events that carry their request's id, until Ctrl-C, a
//! closed stdout or the end of the connection. Ctrl-C sends `unfollow` and
//! waits for its reply, after which no event of that follow can come: the
//! session is as good as new for the REPL's next command.

pub mod command;
pub mod connection;
pub mod render;
pub mod repl;

use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::time::SystemTime;

use serde::Deserialize as _;
use serde_json::Value;

use command::Command;
use connection::{Session, SessionError, Target};
use render::Prefixes;

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The daemon's WebSocket URL (`ws://127.0.0.1:3333`).
    pub url: String,
    /// Bearer token for the handshake, if the daemon requires one.
    pub token: Option<String>,
    /// Print replies' `data` (and events) as JSON, one object per line.
    pub json: bool,
    /// The command and its arguments; empty opens the REPL.
    pub command: Vec<String>,
}

/// Reads `--token-file` (SPEC §13): the file's content without its one
/// trailing newline. Unlike the daemon, the client does not police the
/// file's mode: the daemon's owner already decided who may hold the token.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {shown}: {e}"))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let token = text.strip_suffix('\r').unwrap_or(text);
    if token.is_empty() {
        return Err(format!("the token file {shown} is empty"));
    }
    Ok(token.to_string())
}

/// How `taskmasterctl` exits (SPEC §8, §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: success.
    Ok,
    /// 1: the daemon replied with an error, or an action failed for an instance.
    DaemonError,
    /// 2: the command line was wrong; the daemon was not contacted.
    Usage,
    /// 3: `status` listed an instance that is not RUNNING.
    NotRunning,
    /// 4: no session could be established (refused, 401, 403, lost), or the
    /// daemon did not answer in time.
    Unreachable,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::DaemonError => 1,
            Exit::Usage => 2,
            Exit::NotRunning => 3,
            Exit::Unreachable => 4,
        }
    }

    /// The exit status a session failure implies.
    fn of(error: &SessionError) -> Exit {
        match error {
            SessionError::BadUrl { .. } => Exit::Usage,
            SessionError::Unreachable { .. }
            | SessionError::Refused { .. }
            | SessionError::Timeout { .. }
            | SessionError::Lost { .. } => Exit::Unreachable,
            SessionError::BadReply { .. } => Exit::DaemonError,
        }
    }
}

/// Runs `taskmasterctl` as `options` ask; the caller exits with the result.
pub fn run(options: Options) -> Exit {
    if options.command.is_empty() {
        return repl::run(&options);
    }
    let command = match Command::parse(&options.command) {
        Ok(command) => command,
        Err(usage) => {
            eprintln!("taskmasterctl: {usage}");
            return Exit::Usage;
        }
    };
    match &command {
        Command::Help(topic) => {
            print_out(&command::help(topic.as_deref()));
            return Exit::Ok;
        }
        // Nothing to leave outside the REPL.
        Command::Quit => return Exit::Ok,
        _ => {}
    }
    let (target, runtime) = match prepare(&options) {
        Ok(ready) => ready,
        Err(exit) => return exit,
    };
    runtime.block_on(async {
        let mut session = match Session::connect(&target).await {
            Ok(session) => session,
            Err(error) => return report(&error),
        };
        let exit = match execute(&mut session, &command, options.json, interrupted()).await {
            Ok(exit) => exit,
            Err(error) => return report(&error),
        };
        session.close().await;
        exit
    })
}

/// The daemon's address and the runtime to reach it on, or the exit status
/// (after saying why) when either cannot be had.
fn prepare(options: &Options) -> Result<(Target, tokio::runtime::Runtime), Exit> {
    let target = Target::new(&options.url, options.token.as_deref()).map_err(|e| report(&e))?;
    let runtime = runtime().map_err(|error| {
        eprintln!("taskmasterctl: cannot start the async runtime: {error}");
        Exit::DaemonError
    })?;
    Ok((target, runtime))
}

/// The runtime every async step runs on: one thread, IO and timers.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

/// Runs one command that needs the daemon on an open session, printing its
/// outcome. `interrupt` ends `events` and follows (Ctrl-C); other commands
/// ignore it.
async fn execute(
    session: &mut Session,
    command: &Command,
    json: bool,
    interrupt: impl Future<Output = ()>,
) -> Result<Exit, SessionError> {
    let Some(wire) = command.wire() else {
        return match command {
            Command::Events => follow_events(session, json, interrupt).await,
            _ => Ok(Exit::Ok),
        };
    };
    if command.follows() {
        return follow_output(session, command, json, interrupt).await;
    }
    let (_, reply) = session
        .request_with(wire.cmd, &wire.args, wire.opts)
        .await?;
    if let (Command::Logs { .. }, true, false) = (command, reply.ok, json) {
        if let Some(Ok(logs)) = reply
            .data
            .as_ref()
            .map(crate::protocol::LogsData::deserialize)
        {
            let names = logs.lines.iter().map(|l| l.name.as_str());
            let mut prefixes = Prefixes::new(names, colour());
            print_out(&render::logs_text(&logs, &mut prefixes));
            return Ok(Exit::Ok);
        }
    }
    let rendered = render::reply(command, &reply, json);
    print_out(&rendered.stdout);
    print_err(&rendered.stderr);
    Ok(rendered.exit)
}

/// Whether `logs` colours its prefixes: only for a terminal, and not when
/// the user asked for no colour (`NO_COLOR`, no-color.org).
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `tail -f` and `logs`: the reply, then every output event of the follow
/// it starts, until `interrupt` (then `unfollow`, so the session stays
/// usable), a closed stdout, or the end of the connection.
async fn follow_output(
    session: &mut Session,
    command: &Command,
    json: bool,
    interrupt: impl Future<Output = ()>,
) -> Result<Exit, SessionError> {
    let Some(wire) = command.wire() else {
        return Ok(Exit::Ok);
    };
    // `logs` pads names to one width from the start: every instance it may
    // follow is among those `status` lists.
    let mut prefixes = match command {
        Command::Logs { names, .. } if !json => {
            let names: Vec<String> = names.iter().filter(|n| *n != "all").cloned().collect();
            let listed = match session.request("status", &names).await?.data {
                Some(data) => instance_names(&data),
                None => Vec::new(),
            };
            Some(Prefixes::new(listed.iter().map(String::as_str), colour()))
        }
        _ => None,
    };
    let (id, reply) = session
        .request_with(wire.cmd, &wire.args, wire.opts)
        .await?;
    if !reply.ok {
        let rendered = render::reply(command, &reply, json);
        print_err(&rendered.stderr);
        return Ok(rendered.exit);
    }
    let first = match (&mut prefixes, reply.data.as_ref()) {
        (_, Some(data)) if json => format!("{data}\n"),
        (Some(prefixes), Some(data)) => match crate::protocol::LogsData::deserialize(data) {
            Ok(logs) => render::logs_text(&logs, prefixes),
            Err(_) => render::reply(command, &reply, false).stdout,
        },
        _ => render::reply(command, &reply, false).stdout,
    };
    if !print_out_checked(&first) {
        return Ok(Exit::Ok);
    }
    let id = Value::from(id);
    tokio::pin!(interrupt);
    loop {
        let event = tokio::select! {
            () = &mut interrupt => {
                if let Some(prefixes) = &mut prefixes {
                    print_out(&prefixes.flush());
                }
                // Wait for the reply: after it, no event of this follow
                // comes, and the session can carry the next command.
                session.request("unfollow", &[id.to_string()]).await?;
                return Ok(Exit::Ok);
            }
            event = session.next_event() => event?,
        };
        let Some(event) = event else {
            if let Some(prefixes) = &mut prefixes {
                print_out(&prefixes.flush());
            }
            eprintln!("taskmasterd closed the connection");
            return Ok(Exit::Ok);
        };
        if event.get("event").and_then(Value::as_str) != Some("output")
            || event.get("id") != Some(&id)
        {
            continue;
        }
        let field = |k: &str| event.get(k).and_then(Value::as_str).unwrap_or_default();
        let text = if json {
            format!("{event}\n")
        } else if let Some(prefixes) = &mut prefixes {
            prefixes.chunk(field("name"), field("stream"), field("text"))
        } else {
            field("text").to_string()
        };
        if !print_out_checked(&text) {
            return Ok(Exit::Ok);
        }
    }
}

/// The instance names of a `status` reply's data.
fn instance_names(data: &Value) -> Vec<String> {
    data.get("instances")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|i| i.get("name").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `events`: subscribe, then print each event until `interrupt`, the end of
/// the stream, or a closed stdout (`taskmasterctl events | head`).
async fn follow_events(
    session: &mut Session,
    json: bool,
    interrupt: impl Future<Output = ()>,
) -> Result<Exit, SessionError> {
    let reply = session.request("subscribe", &[]).await?;
    if !reply.ok {
        let rendered = render::reply(&Command::Events, &reply, json);
        print_err(&rendered.stderr);
        return Ok(rendered.exit);
    }
    tokio::pin!(interrupt);
    loop {
        let event = tokio::select! {
            _ = &mut interrupt => return Ok(Exit::Ok),
            event = session.next_event() => event?,
        };
        let Some(event) = event else {
            eprintln!("taskmasterd closed the connection");
            return Ok(Exit::Ok);
        };
        let line = if json {
            event.to_string()
        } else {
            render::event_line(&event, SystemTime::now())
        };
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Ok(Exit::Ok);
        }
    }
}

/// Resolves on Ctrl-C; never, if the handler cannot be installed.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Prints a session failure and returns the exit status it implies.
fn report(error: &SessionError) -> Exit {
    eprintln!("taskmasterctl: {error}");
    Exit::of(error)
}

/// Writes to stdout, ignoring a closed pipe (`taskmasterctl status | head -1`).
fn print_out(text: &str) {
    print_out_checked(text);
}

/// Writes to stdout; false once it is closed (`taskmasterctl logs | head`),
/// which ends a follow.
fn print_out_checked(text: &str) -> bool {
    if text.is_empty() {
        return true;
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .is_ok()
}

/// Writes to stderr, ignoring failures.
fn print_err(text: &str) {
    if !text.is_empty() {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(words: &[&str]) -> Options {
        Options {
            // Nothing listens on port 9: a test that reached the network
            // would exit 4, not 2.
            url: "ws://127.0.0.1:9".into(),
            token: None,
            json: false,
            command: words.iter().map(|w| w.to_string()).collect(),
        }
    }

    #[test]
    fn exit_codes_are_the_documented_numbers() {
        let codes: Vec<u8> = [
            Exit::Ok,
            Exit::DaemonError,
            Exit::Usage,
            Exit::NotRunning,
            Exit::Unreachable,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn usage_errors_exit_2_without_contacting_the_daemon() {
        for words in [
            &["nosuch"][..],
            &["start"],
            &["stop"],
            &["restart"],
            &["reload", "x"],
            &["help", "nosuch"],
            &["tail"],
            &["tail", "-n", "0", "web:0"],
            &["logs", "-x"],
            &["clear"],
            &["signal", "HUP"],
            &["signal", "NOPE", "web"],
        ] {
            assert_eq!(run(options(words)), Exit::Usage, "{words:?}");
        }
        let mut bad_url = options(&["status"]);
        bad_url.url = "http://127.0.0.1:9".into();
        assert_eq!(run(bad_url), Exit::Usage);
    }

    #[test]
    fn help_needs_no_daemon() {
        assert_eq!(run(options(&["help"])), Exit::Ok);
        assert_eq!(run(options(&["help", "status"])), Exit::Ok);
    }

    #[test]
    fn an_unreachable_daemon_exits_4() {
        assert_eq!(run(options(&["status"])), Exit::Unreachable);
    }

    #[test]
    fn session_failures_map_to_exit_codes() {
        let url = String::from("ws://x");
        let cases = [
            (
                SessionError::BadUrl {
                    url: url.clone(),
                    reason: String::new(),
                },
                Exit::Usage,
            ),
            (
                SessionError::Refused {
                    url: url.clone(),
                    reason: String::new(),
                    hint: String::new(),
                },
                Exit::Unreachable,
            ),
            (
                SessionError::Lost {
                    url: url.clone(),
                    reason: String::new(),
                },
                Exit::Unreachable,
            ),
            (
                SessionError::Timeout {
                    url: url.clone(),
                    what: String::new(),
                    hint: String::new(),
                },
                Exit::Unreachable,
            ),
            (
                SessionError::BadReply {
                    url,
                    reason: String::new(),
                },
                Exit::DaemonError,
            ),
        ];
        for (error, exit) in cases {
            assert_eq!(Exit::of(&error), exit, "{error}");
        }
    }
}
