//! Reading the files the config names (the config itself, components,
//! settings, secrets, TLS material): regular files only, bounded in size,
//! and never on an async worker thread.
//!
//! A FIFO, a device or a huge file in one of those places must not hang a
//! reload or the shutdown after it, nor fill the daemon's memory. So a file
//! is opened without blocking (opening a FIFO for reading would wait for a
//! writer), refused unless it is a regular file, and read to a cap; callers
//! on the runtime go through [`off_runtime`], which runs the reads on the
//! blocking pool and gives up after [`READ_TIMEOUT`] (a hung network file
//! system then costs one blocking thread, not the daemon).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

/// How long reading the files of one reload may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The config file, a settings or secret file, a TLS file.
pub const MAX_SMALL_FILE: u64 = 1 << 20;
/// A component (a Python component is tens of MiB).
pub const MAX_COMPONENT: u64 = 512 << 20;

/// The bytes of `path`, a regular file of at most `max` bytes. The error
/// names the file, never its contents.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("reading {path:?}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("reading {path:?}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("reading {path:?}: not a regular file"));
    }
    if meta.len() > max {
        return Err(format!("reading {path:?}: larger than {max} bytes"));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // `take`: the file may grow while it is read.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading {path:?}: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("reading {path:?}: larger than {max} bytes"));
    }
    Ok(bytes)
}

/// Runs `read` (file reads) on the blocking pool, for at most
/// [`READ_TIMEOUT`]. The outer error says why it did not finish.
pub async fn off_runtime<T: Send + 'static>(
    what: &str,
    read: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    match tokio::time::timeout(READ_TIMEOUT, tokio::task::spawn_blocking(read)).await {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(panicked)) => Err(format!("{what}: {panicked}")),
        Err(_) => Err(format!(
            "{what}: reading files took longer than {} s",
            READ_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_up_to_their_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_bounded(&path, 10).unwrap(), b"0123456789");
        let error = read_bounded(&path, 9).unwrap_err();
        assert!(error.contains("larger than 9 bytes"), "{error}");
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let error = read_bounded(&fifo, 10).unwrap_err();
        assert!(error.contains("not a regular file"), "{error}");
        let error = read_bounded(dir.path(), 10).unwrap_err();
        assert!(error.contains("not a regular file"), "{error}");
    }
}
