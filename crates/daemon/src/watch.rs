//! Reload when a watched file changes on disk.
//!
//! Directories are watched, not files: an atomic replace (write a temporary
//! file, rename it over the old one) gives the path a new inode, which a
//! watch on the old file would never see. Events for paths outside
//! [`Reloader::watched_files`] are ignored, and so are the daemon's own
//! log writes when its stderr is a file in a watched directory (`main.rs`
//! also keeps the watcher library's per-event trace lines out of the log,
//! or every line would be an event and every event a line); a burst of
//! events (an in-place write arrives in pieces) becomes one reload after
//! the files have been quiet for `debounce`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::reload::Reloader;

/// Stops watching when dropped.
pub struct FileWatch {
    task: JoinHandle<()>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching the reloader's files.
pub async fn spawn(reloader: Arc<Reloader>, debounce: Duration) -> notify::Result<FileWatch> {
    let (events_tx, mut events) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    // The daemon's own log, if it is a file: its writes are never a reason
    // to wake up (and a log line per wake-up would feed itself).
    let own_log = own_log_files();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, EventKind::Access(_))
            && (event.paths.is_empty() || !event.paths.iter().all(|path| own_log.contains(path)))
        {
            let _ = events_tx.send(event.paths);
        }
    })?;
    let mut watched = Watched::default();
    watched.update(&mut watcher, reloader.watched_files().await)?;

    let task = tokio::spawn(async move {
        // The watcher lives as long as this task.
        let mut watcher = watcher;
        while let Some(paths) = events.recv().await {
            if !watched.is_relevant(&paths) {
                continue;
            }
            // Quiet period: keep draining until nothing arrives for `debounce`.
            while let Ok(Some(_)) = tokio::time::timeout(debounce, events.recv()).await {}
            reloader.reload("file change").await;
            if let Err(error) = watched.update(&mut watcher, reloader.watched_files().await) {
                tracing::warn!("updating the file watch: {error}");
            }
        }
    });
    Ok(FileWatch { task })
}

/// The files the daemon's stdout and stderr point at.
fn own_log_files() -> Vec<PathBuf> {
    ["/proc/self/fd/1", "/proc/self/fd/2"]
        .iter()
        .filter_map(|fd| std::fs::read_link(fd).ok())
        .filter(|path| path.is_file())
        .collect()
}

#[derive(Default)]
struct Watched {
    files: HashSet<PathBuf>,
    dirs: HashSet<PathBuf>,
}

impl Watched {
    fn update(
        &mut self,
        watcher: &mut RecommendedWatcher,
        files: Vec<PathBuf>,
    ) -> notify::Result<()> {
        let dirs: HashSet<PathBuf> = files
            .iter()
            .filter_map(|file| file.parent().map(Path::to_owned))
            .collect();
        for dir in dirs.difference(&self.dirs) {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        for dir in self.dirs.difference(&dirs) {
            let _ = watcher.unwatch(dir);
        }
        self.dirs = dirs;
        self.files = files.into_iter().collect();
        Ok(())
    }

    fn is_relevant(&self, paths: &[PathBuf]) -> bool {
        paths.iter().any(|path| self.files.contains(path))
    }
}
