//! The daemon's memory is bounded under attack: per-provider instance
//! quotas bound guest memory and host copies of huge outputs, provider
//! strings are cut before they are copied around, and the KMS socket
//! bounds streams per connection and resets half-open ones. The peak RSS
//! of each attack is printed (`--nocapture`) for `docs/security.md`.

use std::time::{Duration, Instant};

use http::Request;
use kmsgate_integration::{ProviderSpec, TestGateway};
use kmsgate_proto::v2;
use tokio::net::UnixStream;
use tonic::Code;

use crate::{decrypt, encrypt};

/// (current RSS, peak RSS since the last reset) of `pid`, in MiB.
fn rss_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .unwrap()
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak RSS of `pid` to its current RSS.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// Opens as many request streams as the server allows, up to
/// `per_connection`, on each of `connections` fresh HTTP/2 connections to
/// `socket`, each sending the start of a 60 KiB gRPC message and never the
/// rest. Returns the streams the server allows per connection, and the
/// responses to wait for.
async fn half_open_streams(
    socket: &std::path::Path,
    connections: usize,
    per_connection: usize,
) -> (usize, Vec<h2::client::ResponseFuture>) {
    let mut responses = Vec::new();
    let mut allowed = usize::MAX;
    for _ in 0..connections {
        let io = UnixStream::connect(socket).await.unwrap();
        let (mut send, connection) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(connection);
        // Wait for the server's SETTINGS, as a client would.
        send = send.ready().await.unwrap();
        let waited = Instant::now();
        while send.current_max_send_streams() == usize::MAX {
            assert!(
                waited.elapsed() < Duration::from_secs(30),
                "no SETTINGS from the server"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        allowed = send.current_max_send_streams();
        for _ in 0..per_connection.min(allowed) {
            send = send.ready().await.unwrap();
            let request = Request::post("http://localhost/v2.KeyManagementService/Decrypt")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let (response, mut body) = send.send_request(request, false).unwrap();
            // A frame header announcing 60 KiB, then 60 KiB less one byte.
            let mut data = vec![0u8; 5 + (60 << 10) - 1];
            data[1..5].copy_from_slice(&(60u32 << 10).to_be_bytes());
            body.reserve_capacity(data.len());
            let _ = body.send_data(data.into(), false);
            std::mem::forget(body);
            responses.push(response);
        }
    }
    (allowed, responses)
}

#[tokio::test]
async fn half_open_streams_are_bounded_per_connection_and_reset() {
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 1))
        .kms_socket("max_streams", 16)
        .kms_socket("request_timeout_ms", 6000)
        .start()
        .await;
    // One connection, as many streams as it will take: the server allows
    // 16 (a client that ignores that gets the rest refused by h2).
    let started = Instant::now();
    let (allowed, responses) = half_open_streams(&gateway.socket, 1, 2000).await;
    assert_eq!(allowed, 16, "streams one connection may open");
    assert_eq!(responses.len(), 16);
    // Every one is answered (cancelled) once the request timeout passes.
    for response in responses {
        let answered = tokio::time::timeout(Duration::from_secs(20), response).await;
        assert!(answered.is_ok(), "a half-open stream was never reset");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let mut client = gateway.v2().await;
    client.status(v2::StatusRequest {}).await.unwrap();
}

#[tokio::test]
async fn provider_strings_are_cut_before_they_are_copied_around() {
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 1))
        .with_provider(ProviderSpec::hostile("huge", "fixture_huge_output"))
        .primary("local")
        .start()
        .await;
    let mut client = gateway.v2().await;
    let detail = gateway.provider("huge").await.detail;
    assert!(detail.chars().count() <= 257, "{} characters", detail.len());
    assert!(
        !detail.contains('\n') && !detail.contains('\u{1b}'),
        "{detail:?}"
    );
    let status = client
        .decrypt(decrypt("huge/h1", b"error"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(
        status.message().len() <= 1100,
        "{} bytes",
        status.message().len()
    );
    assert!(
        !status.message().contains('\n'),
        "{:?}",
        &status.message()[..200]
    );
}

#[tokio::test]
async fn peak_memory_under_attack_stays_within_the_stated_bound() {
    let greedy = ProviderSpec::hostile("greedy", "fixture_greedy")
        .limit("memory_mib", 16)
        .limit("max_concurrent_calls", 4);
    let huge = ProviderSpec::hostile("huge", "fixture_huge_output")
        .limit("memory_mib", 40)
        .limit("max_concurrent_calls", 4);
    let daemon = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 1))
        .with_provider(greedy)
        .with_provider(huge)
        .primary("local")
        .spawn_process("warn");
    let mut client = daemon.v2().await;
    client.encrypt(encrypt(b"dek")).await.unwrap();
    let pid = daemon.pid();
    let (baseline, _) = rss_mib(pid);
    let mut report = vec![format!("baseline RSS {baseline} MiB")];

    // Each attack: 64 concurrent calls, all queued or refused beyond the
    // provider's 4 instances. Bound: (4 + 2) instances of guest memory,
    // plus a host copy of each busy call's output, plus slack for tonic
    // and the allocator.
    for (name, key_id, memory_mib, output_mib) in
        [("greedy", "greedy/g1", 16, 0), ("huge", "huge/h1", 40, 32)]
    {
        reset_peak(pid);
        let calls: Vec<_> = (0..64)
            .map(|_| {
                let mut client = client.clone();
                tokio::spawn(async move { client.decrypt(decrypt(key_id, b"x")).await })
            })
            .collect();
        for call in calls {
            let status = call.await.unwrap().unwrap_err();
            assert!(
                matches!(status.code(), Code::ResourceExhausted | Code::Internal),
                "{name}: {status:?}"
            );
        }
        let (_, peak) = rss_mib(pid);
        let bound = (4 + 2) * memory_mib + 4 * output_mib + 64;
        report.push(format!(
            "{name}: 64 concurrent calls, peak RSS {peak} MiB (+{} MiB; bound +{bound} MiB)",
            peak.saturating_sub(baseline)
        ));
        assert!(peak.saturating_sub(baseline) <= bound, "{report:?}");
    }

    // Half-open streams: 15 more connections (16 is the cap; the test's
    // client holds one) × 64 streams (the cap), each holding 60 KiB it
    // will never finish.
    reset_peak(pid);
    let (_, responses) = half_open_streams(&daemon.socket, 15, 64).await;
    let opened = responses.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, peak) = rss_mib(pid);
    // Per stream: its 60 KiB, and tonic's and h2's state around it.
    let bound = (opened * 80 / 1024) as u64 + 32;
    report.push(format!(
        "half-open streams: {opened} open, peak RSS {peak} MiB (+{} MiB; bound +{bound} MiB)",
        peak.saturating_sub(baseline)
    ));
    assert!(peak.saturating_sub(baseline) <= bound, "{report:?}");
    drop(responses);
    eprintln!("memory under attack:\n  {}", report.join("\n  "));
    daemon.terminate();
}
