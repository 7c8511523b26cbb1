//! The supervisor's public face: the closed set of [`Request`]s and the
//! cloneable [`Handle`] that sends them and awaits the answers.
//!
//! Everyone but the actor (server connections, signal handlers, the hook
//! thread, the reloader) holds a `Handle`; nobody else touches supervision
//! state.

use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::lua::HookState;
use crate::config::Config;
use crate::output::{LogTarget, Stream};
use crate::protocol::{ActionResult, DiffData, Event as WireEvent, StatusData};

use super::Observer;

/// A command-level failure (SPEC §9): the whole request is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandError {
    /// Stable code (`unknown_name`, `shutting_down`, `bad_config`).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

/// `start`, `stop` or `restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Start instances and wait for RUNNING or FATAL.
    Start,
    /// Stop instances and wait for STOPPED.
    Stop,
    /// Stop if running, then start.
    Restart,
}

pub(super) type Answer<T> = oneshot::Sender<Result<T, CommandError>>;

/// What the actor can be asked.
pub enum Request {
    /// Report instances (all when `names` is empty).
    Status {
        names: Vec<String>,
        reply: Answer<StatusData>,
    },
    /// Start/stop/restart; answered once the instances settled.
    Control {
        action: Control,
        names: Vec<String>,
        reply: Answer<Vec<ActionResult>>,
    },
    /// Apply a freshly loaded config (the caller validated it) and its hooks.
    Apply {
        config: Config,
        hooks: Option<HookState>,
        reply: oneshot::Sender<DiffData>,
    },
    /// Where the named instances' streams are logged (`names` empty: every
    /// instance; `stream` None: both streams).
    LogTargets {
        names: Vec<String>,
        stream: Option<Stream>,
        reply: Answer<Vec<LogTarget>>,
    },
    /// Send a signal to the named instances' process groups.
    Signal {
        signal: Signal,
        names: Vec<String>,
        reply: Answer<Vec<ActionResult>>,
    },
    /// Record a config that failed to load.
    ConfigFailed { error: String },
    /// Stop everything; answered when every process is gone.
    Shutdown { reply: oneshot::Sender<()> },
}

/// Cloneable access to the supervisor.
#[derive(Clone)]
pub struct Handle {
    pub(super) tx: mpsc::Sender<Request>,
    pub(super) events: broadcast::Sender<WireEvent>,
    pub(super) observer: Arc<dyn Observer>,
}

impl Handle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// `status [NAME...]`.
    pub async fn status(&self, names: Vec<String>) -> Result<StatusData, CommandError> {
        self.ask(|reply| Request::Status { names, reply })
            .await
            .unwrap_or_else(gone)
    }

    /// `start`/`stop`/`restart NAME...`.
    pub async fn control(
        &self,
        action: Control,
        names: Vec<String>,
    ) -> Result<Vec<ActionResult>, CommandError> {
        self.ask(|reply| Request::Control {
            action,
            names,
            reply,
        })
        .await
        .unwrap_or_else(gone)
    }

    /// Where the named instances' streams are logged, in status order
    /// (`names` empty: every instance; `stream` None: stdout then stderr).
    /// Unknown names are `unknown_name`.
    pub async fn log_targets(
        &self,
        names: Vec<String>,
        stream: Option<Stream>,
    ) -> Result<Vec<LogTarget>, CommandError> {
        self.ask(|reply| Request::LogTargets {
            names,
            stream,
            reply,
        })
        .await
        .unwrap_or_else(gone)
    }

    /// `signal SIG NAME...|all`: sends `signal` to each RUNNING/STARTING
    /// instance's process group; others get `ok: false` "not running" (with
    /// `all` they are skipped).
    pub async fn signal(
        &self,
        signal: Signal,
        names: Vec<String>,
    ) -> Result<Vec<ActionResult>, CommandError> {
        self.ask(|reply| Request::Signal {
            signal,
            names,
            reply,
        })
        .await
        .unwrap_or_else(gone)
    }

    /// Applies a validated config and its hooks; returns the diff.
    pub async fn apply(&self, config: Config, hooks: Option<HookState>) -> Option<DiffData> {
        self.ask(|reply| Request::Apply {
            config,
            hooks,
            reply,
        })
        .await
    }

    /// `status` from a thread outside the runtime (the hook host).
    pub fn status_blocking(&self) -> Result<StatusData, String> {
        let (tx, rx) = oneshot::channel();
        let req = Request::Status {
            names: Vec::new(),
            reply: tx,
        };
        self.tx
            .blocking_send(req)
            .map_err(|_| "the daemon is shutting down".to_string())?;
        match rx.blocking_recv() {
            Ok(Ok(data)) => Ok(data),
            Ok(Err(e)) => Err(e.message),
            Err(_) => Err("the daemon is shutting down".into()),
        }
    }

    /// Records a failed reload.
    pub async fn config_failed(&self, error: String) {
        let _ = self.tx.send(Request::ConfigFailed { error }).await;
    }

    /// Stops every instance and ends the actor; returns when all are gone.
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| Request::Shutdown { reply }).await;
    }

    /// Follows transitions and reload results. A receiver that falls more
    /// than the channel's capacity behind gets `Lagged` and should be dropped.
    pub fn subscribe(&self) -> broadcast::Receiver<WireEvent> {
        self.events.subscribe()
    }

    /// Publishes an event to subscribers and hooks (used for reload results).
    pub fn publish(&self, event: WireEvent) {
        if self.observer.wants_events() {
            self.observer.events(&mut vec![event.clone()]);
        }
        let _ = self.events.send(event);
    }
}

pub(super) fn gone<T>() -> Result<T, CommandError> {
    Err(CommandError {
        code: "shutting_down",
        message: "the daemon is shutting down".into(),
    })
}

/// Events kept for a slow subscriber before it is dropped.
pub const EVENT_BACKLOG: usize = 4096;
