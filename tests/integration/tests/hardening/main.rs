//! Every bound under attack (issue "Hold every bound under attack"): each
//! module attacks one promise with real processes (OpenBao behind a delay
//! proxy, a header-echo server, hostile fixture components) and checks the
//! daemon holds it. Each test failed before its fix.
//!
//! # Layout
//! - [`cpu`] — the CPU budget counts guest work only, whatever the host call.
//! - [`pools`] — one provider cannot take another's instances.
//! - [`deadlines`] — the caller's deadline bounds a call; a down backend fails fast.
//! - [`batcher`] — abandoned decrypts are not replayed; the queue is bounded.
//! - [`startup`] — a provider that cannot load does not stop the daemon.
//! - [`credentials`] — a provider cannot get its credentials back.
//! - [`memory`] — memory stays bounded: quotas, cut strings, stream limits.
//! - [`connections`] — each listener has its own connection budget and timeouts.
//! - [`misc`] — input that cannot fit, FIFOs, the log feeding itself, escaping, origins.

mod batcher;
mod connections;
mod cpu;
mod credentials;
mod deadlines;
mod memory;
mod misc;
mod pools;
mod startup;

use std::time::Duration;

use kmsgate_integration::{DelayProxy, OpenBao, ProviderSpec, RunningGateway, wait_until};
use kmsgate_proto::client::V2Client;
use kmsgate_proto::v2;
use tonic::Code;

/// `message` with a gRPC deadline, as kube-apiserver sends every call.
pub fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Status's `healthz`, as kube-apiserver polls it.
pub async fn healthz(client: &V2Client) -> String {
    let mut client = client.clone();
    let status = client.status(v2::StatusRequest {}).await.unwrap();
    status.into_inner().healthz
}

/// Waits, up to 30 s, until Status says `ok`.
pub async fn wait_until_healthy(client: &V2Client, what: &str) {
    wait_until(what, Duration::from_secs(30), || async {
        healthz(client).await == "ok"
    })
    .await;
}

/// Asserts that a call failed with `code` and a message that says `says`.
#[track_caller]
pub fn assert_error(status: &tonic::Status, code: Code, says: &str) {
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(status.message().contains(says), "{}", status.message());
}

/// The `vault` provider (Transit key `kube`) reaching OpenBao through
/// `proxy`.
pub fn vault_behind(bao: &OpenBao, proxy: &DelayProxy) -> ProviderSpec {
    ProviderSpec::vault_via("vault", bao, &proxy.address, "kube")
}

/// `GET /metrics` from the daemon's admin HTTP server.
pub async fn metrics_text(gateway: &RunningGateway) -> String {
    let url = format!(
        "{}/metrics",
        gateway.admin_url.as_ref().expect("admin HTTP on")
    );
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

pub fn encrypt(plaintext: &[u8]) -> v2::EncryptRequest {
    v2::EncryptRequest {
        plaintext: plaintext.to_vec(),
        uid: "u".into(),
    }
}

pub fn decrypt(key_id: &str, ciphertext: &[u8]) -> v2::DecryptRequest {
    v2::DecryptRequest {
        ciphertext: ciphertext.to_vec(),
        uid: "u".into(),
        key_id: key_id.into(),
        annotations: Default::default(),
    }
}
