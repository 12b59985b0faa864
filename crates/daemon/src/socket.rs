//! The KMS Unix socket: created with exact permissions, never stolen from a
//! live daemon, removed on shutdown.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, Error)]
pub enum SocketError {
    #[error("another process is serving on {0:?}; refusing to replace its socket")]
    InUse(PathBuf),
    #[error("{0:?} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    #[error("{action} {path:?}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// A listening socket that removes its file when dropped.
#[derive(Debug)]
pub struct BoundSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
    /// The socket file's inode, to recognise it at removal time.
    inode: u64,
}

impl BoundSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands the listener to the server; the file is still removed when
    /// `self` drops.
    pub fn take_listener(&mut self) -> UnixListener {
        self.listener.take().expect("listener taken twice")
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        // Only remove what is still ours: a successor may have bound anew.
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|meta| meta.ino() == self.inode);
        if !ours {
            return;
        }
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = ?self.path, "could not remove socket: {error}");
        }
    }
}

/// Binds `path` with permission bits `mode`.
///
/// A file already at `path` is removed only if it is a socket nobody
/// listens on (left by a killed daemon). The socket is created under a
/// temporary name, given its mode, then renamed into place, so it is never
/// reachable with looser permissions.
pub async fn bind(path: &Path, mode: u32) -> Result<BoundSocket, SocketError> {
    let io_error = |action, path: &Path| {
        let path = path.to_owned();
        move |source| SocketError::Io {
            action,
            path,
            source,
        }
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if someone_listens(path).await {
                return Err(SocketError::InUse(path.to_owned()));
            }
            tracing::info!(?path, "removing stale socket left by a previous daemon");
            std::fs::remove_file(path).map_err(io_error("removing stale socket", path))?;
        }
        Ok(_) => return Err(SocketError::NotASocket(path.to_owned())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error("inspecting", path)(error)),
    }

    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let staging = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging).map_err(io_error("binding", &staging))?;
    let staged = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))
        .map_err(io_error("setting permissions of", &staging))
        .and_then(|()| std::fs::rename(&staging, path).map_err(io_error("renaming into", path)));
    if let Err(error) = staged {
        let _ = std::fs::remove_file(&staging);
        return Err(error);
    }
    let inode = std::fs::symlink_metadata(path)
        .map_err(io_error("inspecting", path))?
        .ino();
    Ok(BoundSocket {
        listener: Some(listener),
        path: path.to_owned(),
        inode,
    })
}

/// Whether a live process accepts connections on `path`. A daemon that was
/// just killed can accept for a moment while the kernel tears it down, so
/// "live" means accepting on every try over about a second; one refusal
/// means the socket is stale.
async fn someone_listens(path: &Path) -> bool {
    const TRIES: u32 = 5;
    for attempt in 0..TRIES {
        if UnixStream::connect(path).await.is_err() {
            return false;
        }
        if attempt + 1 < TRIES {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mode_stale_socket_and_live_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kms.sock");

        let live = bind(&path, 0o600).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            bind(&path, 0o600).await,
            Err(SocketError::InUse(_))
        ));

        // A killed daemon leaves its file behind: simulate by forgetting the
        // guard after closing the listener.
        let mut live = live;
        drop(live.take_listener());
        std::mem::forget(live);
        assert!(path.exists());
        let again = bind(&path, 0o660).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(again);
        assert!(!path.exists(), "socket removed on drop");
    }

    #[tokio::test]
    async fn a_regular_file_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kms.sock");
        std::fs::write(&path, "data").unwrap();
        assert!(matches!(
            bind(&path, 0o600).await,
            Err(SocketError::NotASocket(_))
        ));
        assert!(path.exists());
    }
}
