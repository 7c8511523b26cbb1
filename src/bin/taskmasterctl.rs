//! `taskmasterctl`: flags, then [`taskmaster::client::run`]. Everything the
//! client does lives in the library; this file only maps the command line to
//! [`taskmaster::client::Options`] and the result to an exit status.

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use taskmaster::client::{self, command, Options};

/// Control a running taskmasterd: run one command, or open a shell when none
/// is given.
#[derive(Debug, Parser)]
#[command(name = "taskmasterctl", version)]
struct Cli {
    /// WebSocket URL of the daemon, or unix:PATH for its Unix socket.
    #[arg(long, env = "TASKMASTER_URL", default_value = "ws://127.0.0.1:3333")]
    url: String,
    /// Token the daemon requires (sent as `Authorization: Bearer TOKEN`).
    #[arg(long, env = "TASKMASTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from this file (the trailing newline is not part of it).
    #[arg(
        long = "token-file",
        env = "TASKMASTER_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "token"
    )]
    token_file: Option<std::path::PathBuf>,
    /// Print replies and events as JSON, one object per line.
    #[arg(long)]
    json: bool,
    /// The command and its arguments; none opens the interactive shell.
    /// Words after COMMAND are its own, flags included (`tail -f -n 5`).
    #[arg(value_name = "COMMAND [ARGS]", allow_hyphen_values = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let matches = Cli::command().after_help(command::overview()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    // `--json` is taskmasterctl's own wherever it is written (`status web
    // --json` is how scripts often say it); no command takes it.
    let mut words = cli.command;
    let end = words.iter().position(|w| w == "--").unwrap_or(words.len());
    let late_json = words[..end].iter().any(|w| w == "--json");
    if late_json {
        let tail = words.split_off(end);
        words.retain(|w| w != "--json");
        words.extend(tail);
    }
    let token = match &cli.token_file {
        Some(path) => match client::read_token_file(path) {
            Ok(token) => Some(token),
            Err(e) => {
                eprintln!("taskmasterctl: {e}");
                return ExitCode::from(client::Exit::Usage.code());
            }
        },
        None => cli.token,
    };
    let exit = client::run(Options {
        url: cli.url,
        token,
        json: cli.json || late_json,
        command: words,
    });
    ExitCode::from(exit.code())
}
