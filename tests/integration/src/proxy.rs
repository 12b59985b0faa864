//! Real network trouble in front of a real server: a TCP proxy that adds a
//! delay to every HTTP request, can freeze (hold every byte, as a stopped
//! server's kernel would), and counts what passes through to the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct DelayProxy {
    /// `http://127.0.0.1:PORT`: point the provider here.
    pub address: String,
    state: Arc<State>,
    task: JoinHandle<()>,
}

struct State {
    upstream: String,
    delay_ms: AtomicU64,
    frozen: watch::Sender<bool>,
    /// HTTP requests forwarded to the server.
    requests: AtomicU64,
    /// `"ciphertext":` fields forwarded (one per Transit decrypt, batched
    /// or not).
    ciphertexts: AtomicU64,
}

impl DelayProxy {
    /// A proxy to `upstream` (`http://127.0.0.1:PORT`), with no delay yet.
    pub async fn start(upstream: &str) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let address = format!("http://{}", listener.local_addr().expect("proxy address"));
        let state = Arc::new(State {
            upstream: upstream
                .strip_prefix("http://")
                .expect("an http:// upstream")
                .to_owned(),
            delay_ms: AtomicU64::new(0),
            frozen: watch::channel(false).0,
            requests: AtomicU64::new(0),
            ciphertexts: AtomicU64::new(0),
        });
        let accepting = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = accepting.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&state.upstream).await {
                        relay(state, client, server).await;
                    }
                });
            }
        });
        DelayProxy {
            address,
            state,
            task,
        }
    }

    /// Every request from now on waits `delay` before it is forwarded.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Holds every byte both ways until [`DelayProxy::thaw`].
    pub fn freeze(&self) {
        self.state.frozen.send_replace(true);
    }

    pub fn thaw(&self) {
        self.state.frozen.send_replace(false);
    }

    /// HTTP requests that reached the server.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Transit ciphertexts that reached the server.
    pub fn ciphertexts(&self) -> u64 {
        self.state.ciphertexts.load(Ordering::Relaxed)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(state: Arc<State>, client: TcpStream, server: TcpStream) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up_state = state.clone();
    let up = tokio::spawn(async move {
        let mut buf = vec![0; 64 << 10];
        let mut tail = Vec::new();
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            wait_while_frozen(&up_state).await;
            if starts_request(chunk) {
                let delay = up_state.delay_ms.load(Ordering::Relaxed);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                wait_while_frozen(&up_state).await;
                up_state.requests.fetch_add(1, Ordering::Relaxed);
            }
            // Count across chunk boundaries: scan the last bytes of the
            // previous chunk too.
            tail.extend_from_slice(chunk);
            let needle = b"\"ciphertext\":";
            let found = tail.windows(needle.len()).filter(|w| w == needle).count();
            up_state
                .ciphertexts
                .fetch_add(found as u64, Ordering::Relaxed);
            let keep = tail.len().min(needle.len() - 1);
            tail.drain(..tail.len() - keep);
            if server_write.write_all(chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        wait_while_frozen(&state).await;
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    up.abort();
}

async fn wait_while_frozen(state: &State) {
    let mut frozen = state.frozen.subscribe();
    let _ = frozen.wait_for(|frozen| !frozen).await;
}

fn starts_request(chunk: &[u8]) -> bool {
    [&b"GET "[..], b"POST ", b"PUT ", b"DELETE "]
        .iter()
        .any(|method| chunk.starts_with(method))
}
