//! `taskmasterd`: parses flags, sets up logging, runs the daemon (or, with
//! `--export`, writes the config for systemd or Nomad and exits).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use taskmaster::daemon::{self, ExportFormat, Options};

/// How long the log may take to write its queued lines at exit.
const LOG_FLUSH: Duration = Duration::from_secs(2);

/// The Taskmaster daemon: supervises the services of a Lua or JSON config.
///
/// With --export, writes that config for another engine instead and exits:
/// `--export systemd --out DIR` (a `NAME@.service` template per service and
/// `taskmaster.target`), `--export nomad --out FILE` (a Nomad job, JSON).
/// Nothing is started; the files written are listed on stdout.
#[derive(Parser, Debug)]
#[command(name = "taskmasterd", version, about, long_about)]
struct Flags {
    /// Config file (`.json` is read as JSON, anything else as Lua)
    /// [default: ./taskmaster.lua, else ./conf.json]
    #[arg(long, env = "CONFIG_PATH")]
    config: Option<PathBuf>,
    /// Address to listen on: an IP address, `localhost`, or `unix:PATH`
    /// (a socket only this user can use); may be given several times
    #[arg(long, env = "TASKMASTER_LISTEN", default_value = "127.0.0.1")]
    listen: Vec<String>,
    /// Port of the TCP listeners
    #[arg(long, env = "PORT", default_value_t = 3333)]
    port: u16,
    /// Also append the daemon log to this file
    #[arg(long = "log-file", env = "TASKMASTER_LOG")]
    log_file: Option<PathBuf>,
    /// Require `Authorization: Bearer TOKEN` from clients
    #[arg(long, env = "TASKMASTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from this file (mode 0600; the trailing newline is
    /// not part of it)
    #[arg(
        long = "token-file",
        env = "TASKMASTER_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
    /// Write the config for another engine instead of running it (no
    /// listener, no process): `systemd` units or a `nomad` job
    #[arg(long, value_enum, value_name = "FORMAT", requires = "out")]
    export: Option<Export>,
    /// Where --export writes: a folder for systemd (created when missing),
    /// a file for nomad
    #[arg(long, value_name = "PATH", requires = "export")]
    out: Option<PathBuf>,
}

/// The formats of `--export`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Export {
    /// `NAME@.service` template units and `taskmaster.target`
    Systemd,
    /// A Nomad job in the JSON of Nomad's jobs API
    Nomad,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    taskmaster::process::close_inherited_fds();
    // Before any thread exists: the guard that kills our process groups
    // should this process die without stopping them (SIGKILL, crash).
    if let Err(e) = taskmaster::process::start_group_guard() {
        eprintln!("taskmasterd: cannot start the process-group guard: {e}");
        return ExitCode::from(1);
    }
    if let Some(path) = &flags.log_file {
        if let Err(e) = taskmaster::log::set_file(path) {
            eprintln!("taskmasterd: cannot open log file {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if let (Some(format), Some(out)) = (flags.export, &flags.out) {
        let format = match format {
            Export::Systemd => ExportFormat::Systemd,
            Export::Nomad => ExportFormat::Nomad,
        };
        let config = flags.config.unwrap_or_else(daemon::default_config_path);
        let code = match daemon::export(&config, format, out) {
            Ok(files) => {
                for file in files {
                    println!("{}", file.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("taskmasterd: {e}");
                ExitCode::from(1)
            }
        };
        // load_ini's warnings go through the log's writer threads.
        taskmaster::log::flush(LOG_FLUSH);
        return code;
    }
    let token = match &flags.token_file {
        Some(path) => match daemon::read_token_file(path) {
            Ok(token) => Some(token),
            Err(e) => {
                eprintln!("taskmasterd: {e}");
                return ExitCode::from(1);
            }
        },
        None => flags.token.filter(|t| !t.is_empty()),
    };
    let opts = Options {
        config: flags.config.unwrap_or_else(daemon::default_config_path),
        listen: flags.listen,
        port: flags.port,
        token,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("taskmasterd: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(daemon::run(opts));
    // A config evaluation still running on a blocking thread (a slow reload
    // cut short by SIGTERM) is abandoned rather than waited for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            taskmaster::log!("taskmasterd: {e}");
            ExitCode::from(1)
        }
    };
    // Log lines are written by their own threads: give them a moment to
    // write the last ones ("taskmasterd stopped"), but never wait on a sink
    // that is stuck (a stderr pipe nobody reads).
    taskmaster::log::flush(LOG_FLUSH);
    code
}
