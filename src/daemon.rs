//! Wiring of the daemon: config → supervisor, signals, shutdown.
//!
//! Start-up loads and validates the config before anything is spawned; a
//! bad config is an error and the process exits non-zero with nothing
//! running. SIGTERM/SIGINT stop every instance with its own stopsignal and
//! stoptime, then the daemon exits 0; SIGHUP reloads (on a task of its own,
//! so a slow config never holds up a SIGTERM). A supervisor that panics
//! makes the daemon exit non-zero.
//!
//! `--export` ([`export`]) is the other way to run: the config is evaluated
//! for another engine (host checks as warnings), nothing is bound or
//! spawned, and the files `crate::export` renders are written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, ConfigError, HostChecks};
use crate::hooks::HookQueue;
use crate::process;
use crate::reloader::Reloader;
use crate::server;
use crate::supervisor::Supervisor;

/// The daemon's settings (SPEC §2).
#[derive(Debug, Clone)]
pub struct Options {
    /// Config file.
    pub config: PathBuf,
    /// Listen addresses: TCP hosts and `unix:PATH` sockets (SPEC §13).
    pub listen: Vec<String>,
    /// Port of the TCP listeners.
    pub port: u16,
    /// Token required from clients.
    pub token: Option<String>,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Something in the OS refused.
    #[error("{0}")]
    Io(String),
}

/// What `--export` writes (SPEC §15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// `NAME@.service` template units and `taskmaster.target`, into a folder.
    Systemd,
    /// A Nomad job in the JSON of Nomad's jobs API, into a file.
    Nomad,
}

/// `taskmasterd --export FORMAT --out PATH`: evaluates `config` with the
/// host-dependent checks as warnings (printed on stderr: the config is to
/// run elsewhere), starts nothing, writes the files and returns their
/// paths. Options Nomad cannot express are printed on stderr too; the
/// systemd units carry theirs as comments.
pub fn export(
    config: &Path,
    format: ExportFormat,
    out: &Path,
) -> Result<Vec<PathBuf>, DaemonError> {
    let loaded = config::load_for(config, HostChecks::Warn)?;
    for warning in &loaded.warnings {
        eprintln!("taskmasterd: warning: {warning}");
    }
    let hooks = loaded
        .hooks
        .as_ref()
        .map(|h| h.events())
        .unwrap_or_default();
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text)
            .map_err(|e| DaemonError::Io(format!("cannot write {}: {e}", path.display())))
    };
    let mut written = Vec::new();
    match format {
        ExportFormat::Systemd => {
            std::fs::create_dir_all(out)
                .map_err(|e| DaemonError::Io(format!("cannot create {}: {e}", out.display())))?;
            for unit in crate::export::systemd::render(&loaded.config, &hooks) {
                let path = out.join(&unit.name);
                write(&path, &unit.text)?;
                written.push(path);
            }
        }
        ExportFormat::Nomad => {
            let stem = config
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let id = crate::export::dns_name(&stem);
            let job = crate::export::nomad::render(&loaded.config, &id, &hooks)
                .map_err(DaemonError::Io)?;
            for line in &job.unmapped {
                eprintln!("taskmasterd: not exported: {line}");
            }
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    DaemonError::Io(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            let text = serde_json::to_string_pretty(&job.json)
                .map_err(|e| DaemonError::Io(format!("cannot encode the job: {e}")))?;
            write(out, &format!("{text}\n"))?;
            written.push(out.to_path_buf());
        }
    }
    Ok(written)
}

/// `./taskmaster.lua` when it exists, else `./conf.json` when it exists,
/// else `./taskmaster.lua` (whose absence is then reported).
pub fn default_config_path() -> PathBuf {
    let lua = PathBuf::from("taskmaster.lua");
    let json = PathBuf::from("conf.json");
    if !lua.exists() && json.exists() {
        json
    } else {
        lua
    }
}

/// Reads `--token-file` (SPEC §13): its content without the trailing
/// newline. A file that group or others can read (or write) is refused: the
/// token is the key to every service, and a file others can read gives it
/// away. An empty token would mean "no token", which the user did not ask
/// for by pointing at a file.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let shown = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read the token file {shown}: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the token file {shown} is accessible by group or others (mode {mode:04o}): chmod 600 {shown}"
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {shown}: {e}"))?;
    let token = strip_newline(&text);
    if token.is_empty() {
        return Err(format!("the token file {shown} is empty"));
    }
    Ok(token.to_string())
}

/// A file's content without its one trailing newline (`\n` or `\r\n`), as
/// `echo TOKEN > FILE` writes it.
fn strip_newline(text: &str) -> &str {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.strip_suffix('\r').unwrap_or(text)
}

/// Loads the config, supervises until shutdown.
pub async fn run(opts: Options) -> Result<(), DaemonError> {
    let listen = opts
        .listen
        .iter()
        .map(|l| server::Listen::parse(l))
        .collect::<Result<Vec<_>, _>>()
        .map_err(DaemonError::Io)?;
    let tcp: Vec<String> = listen
        .iter()
        .filter_map(|l| match l {
            server::Listen::Tcp(host) => Some(host.clone()),
            server::Listen::Unix(_) => None,
        })
        .collect();
    if opts.token.is_none() {
        if let Some(host) = tcp.iter().find(|h| !server::is_loopback(h)) {
            return Err(DaemonError::Io(format!(
                "refusing to listen on non-loopback address {host} without a token (set --token, --token-file or TASKMASTER_TOKEN)"
            )));
        }
    }
    let loaded = config::load(&opts.config)?;
    // Bind before anything is spawned: a port in use or a live socket must
    // leave nothing behind (listeners bound so far are dropped, their
    // socket files removed).
    let mut listeners = Vec::with_capacity(listen.len());
    for l in &listen {
        listeners.push(server::bind(l, opts.port).await.map_err(DaemonError::Io)?);
    }
    let services = loaded.config.services.len();
    let instances: u32 = loaded.config.services.values().map(|s| s.numprocs).sum();
    crate::log!(
        "taskmasterd {} starting: {} ({services} services, {instances} instances)",
        env!("CARGO_PKG_VERSION"),
        opts.config.display()
    );

    process::become_subreaper();
    process::raise_nofile();
    let mut term = signal(SignalKind::terminate()).map_err(io_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io_err)?;
    let mut hup = signal(SignalKind::hangup()).map_err(io_err)?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(io_err)?;

    let path = std::path::absolute(&opts.config).unwrap_or_else(|_| opts.config.clone());
    let output = crate::output::Output::default();
    let hooks = HookQueue::default();
    let (sup, handle, rx) = Supervisor::new(
        loaded.config,
        path.clone(),
        Arc::new(hooks.clone()),
        output.clone(),
    );
    crate::hooks::start(hooks.clone(), loaded.hooks, handle.clone())
        .map_err(|e| DaemonError::Io(format!("cannot start the hook thread: {e}")))?;
    let mut actor = tokio::spawn(sup.run(rx));
    // Let the actor start its first slice of autostarts before the rest of
    // the wiring (the watcher's thread and inotify watches, the accept
    // loop): children start a few milliseconds sooner, and a client that
    // connects meanwhile waits in the listen backlog for as long.
    tokio::task::yield_now().await;

    // Two-phase shutdown: `cancel` tells every task to finish; `tasks` is
    // then waited for (bounded), so nothing is cut off mid-way by accident.
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let reloader = Reloader::new(opts.config.clone(), handle.clone());
    match crate::watcher::ConfigWatcher::start(&loaded.files) {
        Ok((w, changes)) => {
            let watch = crate::watcher::run(w, changes, reloader.clone());
            tasks.spawn(until_cancelled(cancel.clone(), watch));
        }
        Err(e) => crate::log!("warning: cannot watch the config for changes: {e}"),
    }
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::mpsc::channel(1);
    let ctx = server::Context {
        handle: handle.clone(),
        reloader: reloader.clone(),
        access: server::Access {
            token: opts.token.as_deref().map(Into::into),
            hosts: tcp.clone(),
            sessions: Default::default(),
        },
        shutdown: shutdown_tx,
        output: output.clone(),
        dashboard: listeners.iter().find_map(server::Listener::dashboard_url),
        cpu: Default::default(),
    };
    for l in &listeners {
        crate::log!("listening on {}", l.describe());
    }
    if opts.token.is_none() && !tcp.is_empty() && nix::unistd::geteuid().is_root() {
        crate::log!(
            "warning: running as root and listening on TCP without a token: any local user can control this daemon (and so run commands as root); set --token-file, or listen on a unix: socket only"
        );
    }
    tasks.spawn(until_cancelled(
        cancel.clone(),
        server::serve(listeners, ctx),
    ));
    let signals = async {
        loop {
            tokio::select! {
                _ = shutdown_rx.recv() => { crate::log!("shutdown requested by a client"); break }
                _ = term.recv() => { crate::log!("received SIGTERM: shutting down"); break }
                _ = int.recv() => { crate::log!("received SIGINT: shutting down"); break }
                _ = usr1.recv() => {
                    crate::log!("received SIGUSR1: reopening log files");
                    // File opens may wait on a slow disk: not on this task.
                    let out = output.clone();
                    tasks.spawn_blocking(move || out.reopen_all());
                }
                _ = hup.recv() => {
                    crate::log!("received SIGHUP: reloading");
                    // On a task of its own: a slow config must not hold up
                    // the next signal (a SIGTERM right after, say).
                    let r = reloader.clone();
                    tasks.spawn(until_cancelled(cancel.clone(), async move {
                        r.reload().await.ok();
                    }));
                }
            }
        }
    };
    let ended = tokio::select! {
        _ = signals => None,
        res = &mut actor => Some(res),
    };
    // Phase one: every task is told to stop; the supervisor stops every
    // instance (each with its stopsignal and stoptime).
    cancel.cancel();
    let ended = match ended {
        Some(res) => res,
        None => {
            handle.shutdown().await;
            actor.await
        }
    };
    // Phase two: wait for the tasks (bounded: a config evaluation stuck in
    // Lua is abandoned with the runtime).
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(2), tasks.wait())
        .await
        .is_err()
    {
        crate::log!("warning: some tasks did not finish in time");
    }
    hooks.close();
    if let Err(e) = ended {
        return Err(DaemonError::Io(format!("the supervisor crashed: {e}")));
    }
    crate::log!(
        "taskmasterd stopped ({} process groups left to the guard)",
        process::marked_groups()
    );
    Ok(())
}

/// Runs `task` until it ends or `cancel` fires.
async fn until_cancelled(cancel: CancellationToken, task: impl std::future::Future<Output = ()>) {
    tokio::select! {
        _ = task => {}
        _ = cancel.cancelled() => {}
    }
}

fn io_err(e: std::io::Error) -> DaemonError {
    DaemonError::Io(e.to_string())
}
