//! The interactive shell: `taskmasterctl` without a command (SPEC §8).
//!
//! A rustyline editor reads lines at the `taskmaster> ` prompt; each line is
//! parsed like a command line and run through the same `execute`
//! step as a one-shot command, so output and errors read the same. The shell
//! keeps one session and checks it before each command: when the daemon went
//! away (restart, shutdown) the dead session is dropped and a new one opened,
//! and when none can be opened the message is printed and the shell waits
//! for the next line. Tab completion offers command names and the service and
//! instance names of the last `status`, refreshed after every command.
//! History is kept in `$XDG_STATE_HOME/taskmaster/history`, appended after
//! each line so that a killed shell loses nothing.
//!
//! Ctrl-C at the prompt clears the line (rustyline reads it as a key); during
//! a command it abandons the wait and drops the session, so a late reply
//! cannot be mistaken for the next one's. A follow (`tail -f`, `logs`) is
//! the exception: there Ctrl-C is how it ends, so the follow itself takes
//! it, sends `unfollow` and waits for the reply, and the session is kept.
//!
//! `exit` is what people type to leave a shell, and here it is an alias of
//! `shutdown`: so when the input is a terminal, both first ask
//! [`CONFIRM`] and anything but `y`/`yes` (Enter, Ctrl-C, Ctrl-D included)
//! cancels (SPEC §8). A script piping commands in is not asked, and neither
//! is the one-shot `taskmasterctl shutdown`.

use std::ffi::OsString;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Context, Editor, Helper};
use serde_json::Value;

use super::command::{self, Command, COMMANDS};
use super::connection::{Session, SessionError, Target};
use super::{execute, interrupted, prepare, print_out, report, Exit, Options};

/// The prompt, exactly as SPEC §9 fixes it.
pub const PROMPT: &str = "taskmaster> ";

/// The question `shutdown` and `exit` ask first (SPEC §8).
pub const CONFIRM: &str = "stop every service and the daemon? [y/N] ";

/// How many lines the history file keeps.
const HISTORY_SIZE: usize = 1000;

/// Commands whose arguments are service or instance names (`signal` after
/// its signal, `tail` and `logs` besides their flags).
const TAKES_NAMES: &[&str] = &["status", "start", "stop", "restart", "clear", "logs"];

/// Signals offered after `signal`, the ones worth sending to a service.
const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "CONT", "STOP", "TSTP", "WINCH",
];

/// Runs the shell until `quit` or end of input.
pub fn run(options: &Options) -> Exit {
    let (target, runtime) = match prepare(options) {
        Ok(ready) => ready,
        Err(exit) => return exit,
    };
    let mut editor = match new_editor() {
        Ok(editor) => editor,
        Err(error) => {
            eprintln!("taskmasterctl: cannot set up line editing: {error}");
            return Exit::DaemonError;
        }
    };
    let history = history_path(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
        .and_then(|path| open_history(&mut editor, path));

    let mut shell = Shell {
        target,
        session: None,
        json: options.json,
    };
    match runtime.block_on(shell.names()) {
        Ok(names) => set_names(&mut editor, names),
        Err(error) => {
            report(&error);
        }
    }
    // Without a terminal rustyline reads plain lines and shows no prompt
    // (unless TERM names a dumb terminal, where it prints one itself); show
    // it anyway, as supervisorctl does, so a driven session reads the same.
    let echo_prompt = !std::io::stdin().is_terminal() && !dumb_terminal();
    let ask_first = std::io::stdin().is_terminal();

    loop {
        if echo_prompt {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout
                .write_all(PROMPT.as_bytes())
                .and_then(|()| stdout.flush());
        }
        let line = match editor.readline(PROMPT) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => {
                if echo_prompt {
                    print_out("\n");
                }
                break;
            }
            Err(error) => {
                eprintln!("taskmasterctl: cannot read input: {error}");
                runtime.block_on(shell.close());
                return Exit::DaemonError;
            }
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        if let Some(path) = &history {
            let _ = editor.add_history_entry(line.trim());
            if let Err(error) = editor.append_history(path) {
                eprintln!(
                    "taskmasterctl: cannot save history to {}: {error}",
                    path.display()
                );
            }
        }
        let command = match Command::parse(&words) {
            Ok(command) => command,
            Err(usage) => {
                eprintln!("{usage}");
                continue;
            }
        };
        match &command {
            Command::Quit => break,
            Command::Help(topic) => {
                print_out(&command::help(topic.as_deref()));
                continue;
            }
            Command::Shutdown if ask_first && !confirmed(editor.readline(CONFIRM)) => {
                print_out("cancelled: the daemon keeps running (quit leaves the shell)\n");
                continue;
            }
            _ => {}
        }
        runtime.block_on(shell.run(&command));
        if let Ok(names) = runtime.block_on(shell.names()) {
            set_names(&mut editor, names);
        }
    }
    runtime.block_on(shell.close());
    Exit::Ok
}

/// The shell's link to the daemon.
struct Shell {
    /// Where the daemon is.
    target: Target,
    /// The open session, if any; replaced when found dead.
    session: Option<Session>,
    /// Print JSON instead of text.
    json: bool,
}

/// How a command run from the shell ended.
enum Outcome {
    /// It ran to its end (successfully or not).
    Done(Result<Exit, SessionError>),
    /// The user pressed Ctrl-C while waiting.
    Interrupted,
}

impl Shell {
    /// A live session: the current one if it still answers, else a new one.
    async fn session(&mut self) -> Result<&mut Session, SessionError> {
        let mut current = self.session.take();
        if let Some(session) = &mut current {
            if !session.is_alive().await {
                current = None;
            }
        }
        let session = match current {
            Some(session) => session,
            None => Session::connect(&self.target).await?,
        };
        Ok(self.session.insert(session))
    }

    /// Runs one daemon command and prints its outcome; the shell goes on
    /// whatever happens.
    async fn run(&mut self, command: &Command) {
        let json = self.json;
        let follows = command.follows();
        let outcome = tokio::select! {
            biased;
            result = async {
                let session = self.session().await?;
                // A follow takes Ctrl-C itself, to unfollow and keep the
                // session.
                let interrupt = async move {
                    if follows {
                        interrupted().await
                    } else {
                        std::future::pending().await
                    }
                };
                execute(session, command, json, interrupt).await
            } => Outcome::Done(result),
            // For the rest Ctrl-C is watched here, around every command, so
            // `events` needs no interrupt of its own.
            () = async {
                if follows {
                    std::future::pending().await
                } else {
                    interrupted().await
                }
            } => Outcome::Interrupted,
        };
        match outcome {
            Outcome::Done(Ok(_)) => {}
            Outcome::Done(Err(error)) => {
                report(&error);
                self.session = None;
            }
            Outcome::Interrupted => {
                if *command != Command::Events {
                    eprintln!("interrupted; the daemon may still carry the command out");
                }
                self.session = None;
            }
        }
        if *command == Command::Events {
            // A subscribed session would keep receiving events nobody reads.
            self.close().await;
        }
    }

    /// The names to complete, from a fresh `status`.
    async fn names(&mut self) -> Result<Vec<String>, SessionError> {
        let result = match self.session().await {
            Ok(session) => session.request("status", &[]).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(reply) => Ok(reply.data.as_ref().map(names_from).unwrap_or_default()),
            Err(error) => {
                self.session = None;
                Err(error)
            }
        }
    }

    /// Closes the session, if one is open.
    async fn close(&mut self) {
        if let Some(session) = self.session.take() {
            session.close().await;
        }
    }
}

fn new_editor() -> rustyline::Result<Editor<Completion, DefaultHistory>> {
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .auto_add_history(false)
        .history_ignore_space(true)
        .history_ignore_dups(true)?
        .max_history_size(HISTORY_SIZE)?
        .build();
    let mut editor = Editor::with_config(config)?;
    editor.set_helper(Some(Completion::default()));
    Ok(editor)
}

fn set_names(editor: &mut Editor<Completion, DefaultHistory>, names: Vec<String>) {
    if let Some(helper) = editor.helper_mut() {
        helper.names = names;
    }
}

/// Where the history lives: `$XDG_STATE_HOME/taskmaster/history`, or
/// `~/.local/state/taskmaster/history` when that is unset or relative (as
/// the XDG spec says to treat it).
fn history_path(xdg_state_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let base = match xdg_state_home.map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        _ => PathBuf::from(home.filter(|h| !h.is_empty())?).join(".local/state"),
    };
    Some(base.join("taskmaster").join("history"))
}

/// Creates the history folder and loads past lines; `None` (with a warning)
/// when the history cannot be kept.
fn open_history(editor: &mut Editor<Completion, DefaultHistory>, path: PathBuf) -> Option<PathBuf> {
    if let Some(dir) = path.parent() {
        if let Err(error) = std::fs::create_dir_all(dir) {
            eprintln!(
                "taskmasterctl: history disabled, cannot create {}: {error}",
                dir.display()
            );
            return None;
        }
    }
    if path.exists() {
        if let Err(error) = editor.load_history(&path) {
            eprintln!(
                "taskmasterctl: cannot read history from {}: {error}",
                path.display()
            );
        }
    }
    Some(path)
}

/// Whether the answer to [`CONFIRM`] is yes; no answer (Ctrl-C, Ctrl-D, an
/// error) is no.
fn confirmed(answer: rustyline::Result<String>) -> bool {
    answer.is_ok_and(|answer| matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// Whether rustyline treats the terminal as unable to edit lines (and so
/// prints the prompt itself even without a tty).
fn dumb_terminal() -> bool {
    std::env::var("TERM").is_ok_and(|term| {
        ["dumb", "cons25", "emacs"]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&term))
    })
}

/// Completion candidates from a `status` reply's `data`: `all`, then each
/// service followed by its instances.
fn names_from(data: &Value) -> Vec<String> {
    let mut names = vec!["all".to_string()];
    let instances = data
        .get("instances")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for instance in instances {
        let service = instance.get("service").and_then(Value::as_str);
        if let Some(service) = service {
            if !names.iter().any(|n| n == service) {
                names.push(service.to_string());
            }
        }
        if let Some(name) = instance.get("name").and_then(Value::as_str) {
            names.push(name.to_string());
        }
    }
    names
}

/// The rustyline helper: completes commands and names.
#[derive(Default)]
struct Completion {
    /// `all`, services and instances, from the last `status`.
    names: Vec<String>,
}

impl Completer for Completion {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        Ok(complete(line, pos, &self.names))
    }
}

impl Hinter for Completion {
    type Hint = String;
}

impl Highlighter for Completion {}

impl Validator for Completion {}

impl Helper for Completion {}

/// Candidates for the word under the cursor: a command name first, then
/// names for the commands that take them, a command name after `help`.
/// Each replacement ends with a space, so a unique match is ready for the
/// next word.
fn complete(line: &str, pos: usize, names: &[String]) -> (usize, Vec<Pair>) {
    let before = line.get(..pos).unwrap_or(line);
    let start = before
        .rfind(|c: char| c.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let word = &before[start..];
    let previous: Vec<&str> = before[..start].split_whitespace().collect();
    let commands = || COMMANDS.iter().map(|c| c.name).collect::<Vec<_>>();
    let unused = |typed: &[&str]| -> Vec<&str> {
        names
            .iter()
            .map(String::as_str)
            .filter(|n| !typed.contains(n))
            .collect()
    };
    let pool: Vec<&str> = match previous.as_slice() {
        [] => commands(),
        ["help"] => commands(),
        // A flag's value is not completed.
        [.., "-n" | "--lines"] => Vec::new(),
        [_, ..] if word.starts_with('-') => Vec::new(),
        ["signal"] => SIGNALS.to_vec(),
        ["signal", _, typed @ ..] => unused(typed),
        ["tail", typed @ ..] => match positional(typed).len() {
            // `tail all` means nothing: one instance.
            0 => unused(&["all"]),
            1 => vec!["stdout", "stderr"],
            _ => Vec::new(),
        },
        [first, typed @ ..] if TAKES_NAMES.contains(first) => unused(typed),
        _ => Vec::new(),
    };
    let candidates = pool
        .into_iter()
        .filter(|c| c.starts_with(word))
        .map(|c| Pair {
            display: c.to_string(),
            replacement: format!("{c} "),
        })
        .collect();
    (start, candidates)
}

/// The words of `tail`/`logs` that are not flags or a flag's value.
fn positional<'a>(words: &[&'a str]) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut words = words.iter();
    while let Some(word) = words.next() {
        match *word {
            "-n" | "--lines" => {
                words.next();
            }
            w if w.starts_with('-') && w.len() > 1 => {}
            w => out.push(w),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names() -> Vec<String> {
        names_from(&json!({"instances": [
            {"name": "web:0", "service": "web"},
            {"name": "web:1", "service": "web"},
            {"name": "worker:0", "service": "worker"},
        ]}))
    }

    fn shown(line: &str) -> (usize, Vec<String>) {
        let (start, pairs) = complete(line, line.len(), &names());
        (start, pairs.into_iter().map(|p| p.display).collect())
    }

    #[test]
    fn names_come_from_status_services_first() {
        assert_eq!(
            names(),
            ["all", "web", "web:0", "web:1", "worker", "worker:0"]
        );
        assert_eq!(names_from(&json!({})), ["all"]);
    }

    #[test]
    fn completes_command_names() {
        assert_eq!(
            shown("st"),
            (0, vec!["status".into(), "start".into(), "stop".into()])
        );
        assert_eq!(shown("  re"), (2, vec!["restart".into(), "reload".into()]));
        assert_eq!(shown("help sh"), (5, vec!["shutdown".into()]));
        assert_eq!(shown("").1.len(), COMMANDS.len());
        let (_, pairs) = complete("vers", 4, &[]);
        assert_eq!(pairs[0].replacement, "version ");
    }

    #[test]
    fn completes_services_instances_and_all() {
        assert_eq!(
            shown("start w"),
            (
                6,
                vec![
                    "web".into(),
                    "web:0".into(),
                    "web:1".into(),
                    "worker".into(),
                    "worker:0".into()
                ]
            )
        );
        assert_eq!(
            shown("stop web:"),
            (5, vec!["web:0".into(), "web:1".into()])
        );
        assert_eq!(shown("restart a"), (8, vec!["all".into()]));
        assert_eq!(shown("status web:0 web:").1, vec!["web:1".to_string()]);
        assert!(shown("reload w").1.is_empty());
        assert!(shown("version ").1.is_empty());
    }

    #[test]
    fn completes_the_log_commands() {
        assert_eq!(shown("ta"), (0, vec!["tail".into()]));
        assert_eq!(shown("cl").1, vec!["clear".to_string()]);
        assert_eq!(shown("sig").1, vec!["signal".to_string()]);
        assert_eq!(shown("lo").1, vec!["logs".to_string()]);
        assert_eq!(
            shown("tail -f -n 5 web:"),
            (13, vec!["web:0".into(), "web:1".into()])
        );
        assert!(!shown("tail ").1.contains(&"all".to_string()));
        assert_eq!(
            shown("tail web:0 "),
            (11, vec!["stdout".into(), "stderr".into()])
        );
        assert_eq!(shown("tail -f web:0 std").1, ["stdout", "stderr"]);
        assert!(shown("tail web:0 stdout ").1.is_empty());
        assert!(shown("tail -n ").1.is_empty(), "a number goes there");
        assert!(shown("tail -").1.is_empty());
        assert_eq!(shown("signal H").1, ["HUP"]);
        assert_eq!(shown("signal US").1, ["USR1", "USR2"]);
        assert_eq!(shown("signal HUP wo").1, ["worker", "worker:0"]);
        assert_eq!(shown("clear a").1, ["all"]);
        assert_eq!(shown("logs web web:").1, ["web:0", "web:1"]);
        assert_eq!(shown("logs --no-follow w").1.len(), 5);
    }

    #[test]
    fn completes_at_the_cursor_not_the_end() {
        let (start, pairs) = complete("stop we web:0", 7, &names());
        assert_eq!(start, 5);
        assert_eq!(pairs.len(), 3);
    }

    #[test]
    fn only_y_or_yes_confirms_a_shutdown() {
        for yes in ["y", "Y", "yes", "YES", " yes "] {
            assert!(confirmed(Ok(yes.into())), "{yes:?}");
        }
        for no in ["", "n", "no", "ye", "yes please", "sure"] {
            assert!(!confirmed(Ok(no.into())), "{no:?}");
        }
        assert!(!confirmed(Err(ReadlineError::Interrupted)));
        assert!(!confirmed(Err(ReadlineError::Eof)));
    }

    #[test]
    fn history_follows_xdg_state_home() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            history_path(os("/state"), os("/home/u")),
            Some(PathBuf::from("/state/taskmaster/history"))
        );
        assert_eq!(
            history_path(None, os("/home/u")),
            Some(PathBuf::from("/home/u/.local/state/taskmaster/history"))
        );
        assert_eq!(
            history_path(os("relative"), os("/home/u")),
            Some(PathBuf::from("/home/u/.local/state/taskmaster/history"))
        );
        assert_eq!(history_path(os(""), None), None);
    }
}
