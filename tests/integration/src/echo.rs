//! An HTTP server that answers every request with the request's own
//! headers, one `name: value` line each: the kind of backend a provider
//! could use to read back a header the host attached.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct HeaderEcho {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    task: JoinHandle<()>,
}

impl HeaderEcho {
    pub async fn start() -> HeaderEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let head = text.split("\r\n\r\n").next().unwrap_or_default();
                    let body: String = head.lines().skip(1).map(|l| format!("{l}\n")).collect();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                });
            }
        });
        HeaderEcho { address, task }
    }
}

impl Drop for HeaderEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}
