//! Reloading: evaluate the config off the actor, then hand it to the actor
//! or record why it failed (SPEC §5).
//!
//! Shared by the `reload` command (server), SIGHUP (daemon) and saves (the
//! watcher), none of which needs to know the others. Reloads are serialized,
//! so the last config applied is the last one read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config;
use crate::protocol::{DiffData, Event, ReloadEvent};
use crate::supervisor::Handle;

/// Loads the config again and applies it (the reload entry point, shared
/// by the `reload` command, SIGHUP and the file watcher).
#[derive(Clone)]
pub struct Reloader {
    /// The config file.
    pub path: PathBuf,
    /// The supervisor.
    pub handle: Handle,
    /// One reload at a time, so the last one applied is the last one read.
    pub lock: Arc<tokio::sync::Mutex<()>>,
}

impl Reloader {
    /// A reloader for `path`.
    pub fn new(path: PathBuf, handle: Handle) -> Reloader {
        Reloader {
            path,
            handle,
            lock: Arc::default(),
        }
    }

    /// Evaluates the config off the actor, then applies it or records the error.
    pub async fn reload(&self) -> Result<DiffData, String> {
        self.reload_files().await.map(|(diff, _)| diff)
    }

    /// Like [`Reloader::reload`], also returning the files the config read.
    pub async fn reload_files(&self) -> Result<(DiffData, Vec<PathBuf>), String> {
        let _one_at_a_time = self.lock.lock().await;
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(Path::new(&path)))
            .await
            .map_err(|e| format!("config evaluation crashed: {e}"))?;
        let result = match loaded {
            Ok(loaded) => match self.handle.apply(loaded.config, loaded.hooks).await {
                Some(diff) => {
                    crate::log!(
                        "reload: ok (added {:?}, removed {:?}, changed {:?}, unchanged {:?})",
                        diff.added,
                        diff.removed,
                        diff.changed,
                        diff.unchanged
                    );
                    Ok((diff, loaded.files))
                }
                None => Err("the daemon is shutting down".to_string()),
            },
            Err(e) => {
                let error = e.to_string();
                crate::log!("reload: failed, keeping the running config: {error}");
                self.handle.config_failed(error.clone()).await;
                Err(error)
            }
        };
        self.handle.publish(Event::Reload(ReloadEvent {
            ok: result.is_ok(),
            error: result.as_ref().err().cloned(),
            diff: result.as_ref().ok().map(|(d, _)| d.clone()),
        }));
        result
    }
}
