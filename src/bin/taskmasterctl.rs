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
    /// WebSocket URL of the daemon.
    #[arg(long, env = "TASKMASTER_URL", default_value = "ws://127.0.0.1:3333")]
    url: String,
    /// Token the daemon requires (sent as `Authorization: Bearer TOKEN`).
    #[arg(long, env = "TASKMASTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
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
    let exit = client::run(Options {
        url: cli.url,
        token: cli.token,
        json: cli.json,
        command: cli.command,
    });
    ExitCode::from(exit.code())
}
