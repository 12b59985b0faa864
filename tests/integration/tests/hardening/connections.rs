//! Each listener has its own connection budget and time limits: a flood of
//! idle connections on the admin port costs the KMS socket nothing and
//! cannot keep a probe out, and idle connections on the KMS socket are
//! capped and closed.

use std::time::Duration;

use kmsgate_integration::{ProviderSpec, TestGateway, wait_until};
use kmsgate_proto::v2;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UnixStream};

/// Open file descriptors of process `pid`.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Reads from `stream` until the other side closes it; false if it is
/// still open after `limit`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn an_admin_port_flood_costs_the_kms_socket_nothing() {
    // systemd's default soft limit is 1024; a small one makes the point
    // with fewer connections.
    let daemon = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 1))
        .admin_http()
        .fd_limit(256)
        .spawn_process("info");
    let mut client = daemon.v2().await;
    let admin = daemon.admin_url.clone().unwrap();
    let address = admin.trim_start_matches("http://").to_string();
    wait_until("the admin port", Duration::from_secs(30), || {
        let livez = format!("{admin}/livez");
        async move { reqwest::get(livez).await.is_ok() }
    })
    .await;

    // More idle connections than the daemon has file descriptors.
    let mut flood = Vec::new();
    for _ in 0..600 {
        if let Ok(connection) = TcpStream::connect(&address).await {
            flood.push(connection);
        }
    }
    assert_eq!(flood.len(), 600);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The KMS socket answers, and so does a fresh probe.
    let status = tokio::time::timeout(Duration::from_secs(2), client.status(v2::StatusRequest {}))
        .await
        .expect("Status hung during the flood")
        .unwrap();
    assert_eq!(status.into_inner().healthz, "ok");
    let livez = tokio::time::timeout(
        Duration::from_secs(2),
        reqwest::get(format!("{admin}/livez")),
    )
    .await
    .expect("/livez hung during the flood")
    .unwrap();
    assert_eq!(livez.status(), 200);
    let files = open_files(daemon.pid());
    assert!(files < 64 + 64, "the daemon holds {files} files");

    drop(flood);
    let log = daemon.terminate();
    let warnings = log.matches("admin connection cap reached").count();
    assert!(
        (1..=3).contains(&warnings),
        "{warnings} cap warnings in {log}"
    );
}

#[tokio::test]
async fn idle_kms_connections_are_capped_and_closed() {
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 1))
        .kms_socket("max_connections", 8)
        .kms_socket("idle_timeout_ms", 3000)
        .start()
        .await;
    let mut client = gateway.v2().await;
    client.status(v2::StatusRequest {}).await.unwrap();
    drop(client);

    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(UnixStream::connect(&gateway.socket).await.unwrap());
    }
    // Beyond the cap: closed at once (all read at the same time, well
    // before the idle timeout). Within it: closed once idle.
    let reads: Vec<_> = idle
        .into_iter()
        .map(|mut connection| {
            tokio::spawn(async move {
                let at_once = closed_within(&mut connection, Duration::from_secs(1)).await;
                (at_once, connection)
            })
        })
        .collect();
    let mut kept = Vec::new();
    for read in reads {
        let (at_once, connection) = read.await.unwrap();
        if !at_once {
            kept.push(connection);
        }
    }
    // 8 places; the test's first connection may still hold one.
    assert!((7..=8).contains(&kept.len()), "{} kept open", kept.len());
    for connection in &mut kept {
        assert!(
            closed_within(connection, Duration::from_secs(6)).await,
            "idle connection kept open"
        );
    }
    // Room again for a real client.
    let client = gateway.v2().await;
    assert_eq!(crate::healthz(&client).await, "ok");
}
