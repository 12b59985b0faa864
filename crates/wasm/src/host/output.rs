//! What a guest writes to stdout and stderr: kept, the last
//! [`MAX_TAIL`] bytes of the current call, for the log entry of a trap (a
//! Rust panic message, a Python traceback, a JavaScript exception all go
//! to stderr). Never forwarded to the apiserver; cleaned of control
//! characters before it reaches a log. Writes never block or fail, so a
//! chatty guest costs only the copy.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes kept per instance: the end of the call's output.
pub const MAX_TAIL: usize = 4096;

/// The end of an instance's stdout and stderr (both, interleaved). Cheap to
/// clone; clones share the buffer.
#[derive(Clone, Default)]
pub struct OutputTail(Arc<Mutex<VecDeque<u8>>>);

impl OutputTail {
    /// Forgets what earlier calls wrote.
    pub fn clear(&self) {
        self.0.lock().expect("output lock poisoned").clear();
    }

    /// The last `max` lines written, cleaned (no control characters), each
    /// cut to 256 characters.
    pub fn last_lines(&self, max: usize) -> Vec<String> {
        let bytes: Vec<u8> = self
            .0
            .lock()
            .expect("output lock poisoned")
            .iter()
            .copied()
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<String> = text
            .lines()
            .map(|line| kmsgate_core::sanitize::clean(line, 256))
            .filter(|line| !line.trim().is_empty())
            .collect();
        lines[lines.len().saturating_sub(max)..].to_vec()
    }

    fn append(&self, bytes: &[u8]) {
        let mut tail = self.0.lock().expect("output lock poisoned");
        let bytes = &bytes[bytes.len().saturating_sub(MAX_TAIL)..];
        let overflow = (tail.len() + bytes.len()).saturating_sub(MAX_TAIL);
        tail.drain(..overflow);
        tail.extend(bytes);
    }
}

impl IsTerminal for OutputTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputTail {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(TailWriter(self.clone()))
    }

    /// Written in place, with no task between the guest and the buffer, so
    /// a panic message is there by the time the trap is seen.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(TailWriter(self.clone()))
    }
}

/// A stream into an [`OutputTail`].
struct TailWriter(OutputTail);

#[async_trait::async_trait]
impl Pollable for TailWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for TailWriter {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.0.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_TAIL)
    }
}

impl tokio::io::AsyncWrite for TailWriter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        bytes: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.append(bytes);
        std::task::Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_cleaned_end_of_the_output() {
        let tail = OutputTail::default();
        let mut writer = TailWriter(tail.clone());
        writer
            .write(bytes::Bytes::from("x".repeat(MAX_TAIL * 2)))
            .unwrap();
        writer
            .write(bytes::Bytes::from_static(
                b"\nfirst\nthread panicked at src/lib.rs:3:\n\x1b[31mboom\n",
            ))
            .unwrap();
        assert_eq!(tail.0.lock().unwrap().len(), MAX_TAIL);
        assert_eq!(
            tail.last_lines(2),
            ["thread panicked at src/lib.rs:3:", "[31mboom"]
        );
        tail.clear();
        assert!(tail.last_lines(5).is_empty());
    }
}
