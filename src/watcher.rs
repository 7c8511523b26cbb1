//! Config file watching: notify events → one debounced "config changed".
//!
//! The watcher watches the *folders* holding the config and every file it
//! loaded (`load_json`, `require`, `dofile`), not the files themselves, and
//! filters events by name: editors that save by writing a temp file and
//! renaming it over the original (vim, VS Code) replace the inode, which a
//! file watch would lose. Reads (our own reload opening the file) are
//! ignored, and nothing outside the config's own files (such as the daemon
//! log or the children's output files) can trigger a reload.
//!
//! The notify callback only does a `try_send` on a channel of one slot (never
//! blocks a thread it does not own); a task debounces bursts: it waits for
//! [`DEBOUNCE`] of quiet (at most [`MAX_DELAY`] in a continuous storm) and
//! then reloads once, so the last content wins.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::reloader::Reloader;

/// Quiet time after the last save before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest a reload is postponed by a continuous stream of saves.
pub const MAX_DELAY: Duration = Duration::from_millis(1000);

/// Absolute form of a path without resolving symlinks of the file itself.
fn absolute(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .unwrap_or_else(|_| dir.to_path_buf())
            .join(name),
        _ => abs,
    }
}

/// Watches the config's files and reloads on change.
pub struct ConfigWatcher {
    /// Kept alive: dropping it stops the notify thread.
    watcher: notify::RecommendedWatcher,
    /// The files whose change triggers a reload, shared with the callback.
    files: Arc<Mutex<BTreeSet<PathBuf>>>,
    /// Folders currently watched.
    dirs: BTreeSet<PathBuf>,
}

impl ConfigWatcher {
    /// Starts watching `files`; returns the watcher and the change signal.
    pub fn start(files: &[PathBuf]) -> notify::Result<(ConfigWatcher, mpsc::Receiver<()>)> {
        let (tx, rx) = mpsc::channel(1);
        let set: Arc<Mutex<BTreeSet<PathBuf>>> = Arc::default();
        let shared = set.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            if matches!(
                event.kind,
                EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_))
            ) {
                return;
            }
            let hit = shared
                .lock()
                .map(|files| event.paths.iter().any(|p| files.contains(p)))
                .unwrap_or(false);
            if hit {
                let _ = tx.try_send(());
            }
        })?;
        let mut w = ConfigWatcher {
            watcher,
            files: set,
            dirs: BTreeSet::new(),
        };
        w.set_files(files);
        Ok((w, rx))
    }

    /// Replaces the watched file set (after a reload pulled in other files).
    pub fn set_files(&mut self, files: &[PathBuf]) {
        let files: BTreeSet<PathBuf> = files.iter().map(|f| absolute(f)).collect();
        let log = crate::log::file_path().map(|p| absolute(&p));
        let files: BTreeSet<PathBuf> = files
            .into_iter()
            .filter(|f| Some(f) != log.as_ref())
            .collect();
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        for gone in self.dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(gone);
        }
        for new in dirs.difference(&self.dirs) {
            if let Err(e) = self.watcher.watch(new, RecursiveMode::NonRecursive) {
                crate::log!("warning: cannot watch {}: {e}", new.display());
            }
        }
        self.dirs = dirs;
        if let Ok(mut set) = self.files.lock() {
            *set = files;
        }
    }
}

/// Debounces change signals and reloads; keeps the watch set in line with
/// what each successful reload loaded.
pub async fn run(mut watcher: ConfigWatcher, mut changes: mpsc::Receiver<()>, reloader: Reloader) {
    while changes.recv().await.is_some() {
        let started = tokio::time::Instant::now();
        loop {
            let quiet = tokio::time::sleep(DEBOUNCE);
            let cap = tokio::time::sleep_until(started + MAX_DELAY);
            tokio::select! {
                more = changes.recv() => if more.is_none() { return },
                _ = quiet => break,
                _ = cap => break,
            }
        }
        if !reloader.path.exists() {
            crate::log!(
                "warning: config file {} is gone; keeping the running services until it reappears",
                reloader.path.display()
            );
            continue;
        }
        crate::log!("config file changed: reloading");
        if let Ok((_, files)) = reloader.reload_files().await {
            watcher.set_files(&files);
        }
    }
}
