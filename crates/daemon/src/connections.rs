//! Bounded listeners. Each listener (the KMS socket, the admin port) has
//! its own connection budget, so a flood of one never costs the other its
//! file descriptors, and every connection has a time limit, so idle or
//! half-open ones do not pile up:
//!
//! - **KMS socket** ([`kms_incoming`]): at most `max_connections`; one
//!   beyond is closed at once (the connections already up, kube-apiserver's
//!   among them, keep theirs). A connection with no traffic either way for
//!   `idle_timeout_ms` is closed ([`Idle`]); per-request limits (streams,
//!   headers, the request timeout) are tonic's, set in `server.rs`.
//! - **Admin port** (`admin_http.rs`): at most `max_connections`; one
//!   beyond closes the *oldest*, so a flood of idle connections cannot keep
//!   a kubelet probe out. A request must arrive within `header_timeout_ms`
//!   and a connection lives for one request.
//!
//! An accept error (out of file descriptors) pauses accepting for a moment
//! instead of retrying in a tight loop, and every refusal is logged at most
//! every few seconds ([`kmsgate_core::log_limit`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, UdsConnectInfo};

use kmsgate_core::log_limit::LogLimit;

/// How long accepting pauses after an accept error (no file descriptors
/// left, no memory): long enough not to spin, short enough to recover fast.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A connection `accept` gave, or `None` after an error (out of file
/// descriptors, say): logged, rate-limited, then a pause, so the accept
/// loop does not spin while the error lasts.
pub(crate) async fn accepted<T>(
    result: io::Result<T>,
    failed: &LogLimit,
    listener: &str,
) -> Option<T> {
    match result {
        Ok(connection) => Some(connection),
        Err(error) => {
            if let Some(skipped) = failed.take() {
                tracing::error!(skipped, "accepting on {listener}: {error}; pausing");
            }
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            None
        }
    }
}

/// Accepts on the KMS socket within `max_connections`, for tonic's
/// `serve_with_incoming`. The accept loop ends when the stream is dropped.
pub fn kms_incoming(
    listener: UnixListener,
    max_connections: usize,
    idle_timeout: Duration,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Idle<UnixStream>>> {
    let (connections, incoming) = mpsc::channel(1);
    let budget = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(async move {
        let refused = LogLimit::default();
        let failed = LogLimit::default();
        loop {
            let Some((stream, _)) =
                accepted(listener.accept().await, &failed, "the KMS socket").await
            else {
                continue;
            };
            let Ok(permit) = budget.clone().try_acquire_owned() else {
                if let Some(skipped) = refused.take() {
                    tracing::warn!(
                        max_connections,
                        skipped,
                        "KMS socket connection cap reached: closing new connections (kms_socket.max_connections)"
                    );
                }
                continue;
            };
            let connection = Idle::new(stream, idle_timeout, permit);
            if connections.send(Ok(connection)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}

/// A connection that fails (and so is closed) after `timeout` with no
/// bytes either way, and holds its place in the listener's budget until it
/// drops. Checked whichever way the connection is stuck: a client that
/// stops reading (so the daemon's writes wait) times out like one that
/// stops writing.
pub struct Idle<S> {
    inner: S,
    timeout: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl<S> Idle<S> {
    pub fn new(inner: S, timeout: Duration, permit: OwnedSemaphorePermit) -> Self {
        Idle {
            inner,
            timeout,
            last_activity: Instant::now(),
            timer: Box::pin(tokio::time::sleep(timeout)),
            _permit: permit,
        }
    }

    /// `Ready(error)` once the connection has been idle too long; else
    /// makes sure the task wakes when it might be.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        // The timer is moved only when it fires, not on every read: cheap
        // on a busy connection.
        while self.timer.as_mut().poll(cx).is_ready() {
            let deadline = self.last_activity + self.timeout;
            if Instant::now() >= deadline {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                ));
            }
            self.timer.as_mut().reset(deadline.into());
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.settle(cx, polled)
    }
}

impl<S> Idle<S> {
    /// Settles a read or write poll: progress is activity; waiting is
    /// checked against the idle limit.
    fn settle<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.last_activity = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => match self.poll_idle(cx) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.settle(cx, written)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        this.settle(cx, flushed)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.settle(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Idle<UnixStream> {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_and_idle_ones_time_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut incoming = kms_incoming(listener, 2, Duration::from_millis(300));

        let mut first = UnixStream::connect(&path).await.unwrap();
        let mut served = incoming.next().await.unwrap().unwrap();
        let _second = UnixStream::connect(&path).await.unwrap();
        let _kept = incoming.next().await.unwrap().unwrap();

        // Over the cap: closed by the server at once.
        let mut third = UnixStream::connect(&path).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");

        // Traffic keeps a connection alive; silence ends it.
        first.write_all(b"x").await.unwrap();
        assert_eq!(served.read(&mut buf).await.unwrap(), 1);
        let started = Instant::now();
        let error = served.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(250));

        // Its place in the budget comes back when it drops.
        drop(served);
        let _fourth = UnixStream::connect(&path).await.unwrap();
        assert!(incoming.next().await.unwrap().is_ok());
    }
}
