//! Wiring of the daemon: config → supervisor, signals, shutdown.
//!
//! Start-up loads and validates the config before anything is spawned; a
//! bad config is an error and the process exits non-zero with nothing
//! running. SIGTERM/SIGINT stop every instance with its own stopsignal and
//! stoptime, then the daemon exits 0; SIGHUP reloads.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::{self, ConfigError};
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
    /// Listen address.
    pub listen: String,
    /// Port.
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

/// Loads the config, supervises until shutdown.
pub async fn run(opts: Options) -> Result<(), DaemonError> {
    let host = opts.listen.trim_start_matches('[').trim_end_matches(']');
    if host != "localhost" && host.parse::<std::net::IpAddr>().is_err() {
        return Err(DaemonError::Io(format!(
            "invalid listen address {:?}: expected an IP address such as 127.0.0.1 or ::1",
            opts.listen
        )));
    }
    if opts.token.is_none() && !server::is_loopback(&opts.listen) {
        return Err(DaemonError::Io(format!(
            "refusing to listen on non-loopback address {} without a token (set --token or TASKMASTER_TOKEN)",
            opts.listen
        )));
    }
    let loaded = config::load(&opts.config)?;
    // Bind before anything is spawned: a port in use must leave nothing behind.
    let listener = server::bind(&opts.listen, opts.port)
        .await
        .map_err(DaemonError::Io)?;
    let services = loaded.config.services.len();
    let instances: u32 = loaded.config.services.values().map(|s| s.numprocs).sum();
    crate::log!(
        "taskmasterd {} starting: {} ({services} services, {instances} instances)",
        env!("CARGO_PKG_VERSION"),
        opts.config.display()
    );

    process::become_subreaper();
    let mut term = signal(SignalKind::terminate()).map_err(io_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io_err)?;
    let mut hup = signal(SignalKind::hangup()).map_err(io_err)?;

    let path = std::path::absolute(&opts.config).unwrap_or_else(|_| opts.config.clone());
    let hooks = HookQueue::default();
    let (sup, handle, rx) = Supervisor::new(loaded.config, path.clone(), Arc::new(hooks.clone()));
    crate::hooks::start(hooks.clone(), loaded.hooks, handle.clone())
        .map_err(|e| DaemonError::Io(format!("cannot start the hook thread: {e}")))?;
    let actor = tokio::spawn(sup.run(rx));

    let reloader = Reloader::new(opts.config.clone(), handle.clone());
    let watcher = match crate::watcher::ConfigWatcher::start(&loaded.files) {
        Ok((w, changes)) => Some(tokio::spawn(crate::watcher::run(
            w,
            changes,
            reloader.clone(),
        ))),
        Err(e) => {
            crate::log!("warning: cannot watch the config for changes: {e}");
            None
        }
    };
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::mpsc::channel(1);
    let ctx = server::Context {
        handle: handle.clone(),
        reloader: reloader.clone(),
        token: opts.token.as_deref().map(Into::into),
        shutdown: shutdown_tx,
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    crate::log!("listening on ws://{addr}/");
    let server = tokio::spawn(server::serve(listener, ctx));
    let shutdown = async {
        loop {
            tokio::select! {
                _ = shutdown_rx.recv() => { crate::log!("shutdown requested by a client"); break }
                _ = term.recv() => { crate::log!("received SIGTERM: shutting down"); break }
                _ = int.recv() => { crate::log!("received SIGINT: shutting down"); break }
                _ = hup.recv() => {
                    crate::log!("received SIGHUP: reloading");
                    reloader.reload().await.ok();
                }
            }
        }
        handle.shutdown().await;
    };
    tokio::select! {
        _ = shutdown => {}
        _ = wait_actor(actor) => {}
    }
    server.abort();
    if let Some(w) = watcher {
        w.abort();
    }
    hooks.close();
    crate::log!("taskmasterd stopped");
    Ok(())
}

async fn wait_actor(actor: tokio::task::JoinHandle<()>) {
    if let Err(e) = actor.await {
        crate::log!("supervisor task ended abnormally: {e}");
    }
}

fn io_err(e: std::io::Error) -> DaemonError {
    DaemonError::Io(e.to_string())
}
