//! Running it like production: probes, gRPC health, graceful shutdown,
//! socket recovery, and `kmsgate check`.

use std::process::Command;
use std::time::Duration;

use kmsgate_integration::gateway::check;
use kmsgate_integration::requests::{encrypt, status};
use kmsgate_integration::{OpenBao, ProviderSpec, TestGateway, daemon_binary, wait_until};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn http_status(url: &str) -> u16 {
    reqwest::get(url)
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn livez_stays_up_while_vault_is_down_and_readyz_follows_it() {
    let mut bao = OpenBao::persistent().await;
    let gateway = TestGateway::new()
        .with_provider(
            ProviderSpec::vault("vault", &bao, "kube")
                .outbound_timeout_ms(1_000)
                .limit("call_timeout_ms", 2_000),
        )
        .status_interval_ms(300)
        .admin_http()
        .start()
        .await;
    status(&mut gateway.v2().await).await;
    let admin = gateway.admin_url.clone().unwrap();
    let (livez, readyz) = (format!("{admin}/livez"), format!("{admin}/readyz"));
    assert_eq!(
        (http_status(&livez).await, http_status(&readyz).await),
        (200, 200)
    );

    bao.stop();
    wait_until("/readyz to fail", Duration::from_secs(5), || async {
        http_status(&readyz).await == 503
    })
    .await;
    let reason = reqwest::get(&readyz).await.unwrap().text().await.unwrap();
    assert!(reason.contains("unavailable"), "{reason}");
    assert_eq!(
        http_status(&livez).await,
        200,
        "livez must not follow the backend"
    );

    bao.start_again().await;
    wait_until("/readyz to recover", Duration::from_secs(10), || async {
        http_status(&readyz).await == 200
    })
    .await;
    assert_eq!(http_status(&livez).await, 200);

    // The providers view is JSON with what serves; the port needs no
    // credentials, so key ids show only as hashes (as in /metrics).
    let view: serde_json::Value = reqwest::get(format!("{admin}/providers"))
        .await
        .unwrap()
        .json_value()
        .await;
    assert_eq!(view["providers"][0]["name"], "vault");
    assert_eq!(
        view["providers"][0]["key_id_hash"],
        kmsgate_daemon::metrics::key_id_hash("vault", "kube:v1")
    );
    assert!(!view.to_string().contains("kube:v1"), "{view}");
}

/// `reqwest` without its `json` feature: parse the body ourselves.
trait JsonValue {
    async fn json_value(self) -> serde_json::Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}

#[tokio::test]
async fn grpc_health_answers_on_the_kms_socket() {
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 1))
        .start()
        .await;
    let channel = kmsgate_proto::client::connect(&gateway.socket)
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in [
        "",
        "v2.KeyManagementService",
        "v1beta1.KeyManagementService",
    ] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(
            response.into_inner().status(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

/// The metric's value in OpenMetrics text (the first sample line that starts
/// with `prefix`).
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_finishes_in_flight_calls_and_removes_the_socket() {
    const CALLS: usize = 16;
    // Each encrypt takes 1.5 s in a WASI sleep: longer than the 1 s CPU
    // budget, which must not count time spent in the host.
    let daemon = TestGateway::new()
        .with_provider(ProviderSpec::new("slow", "fixture_slow").setting("sleep-ms", "1500"))
        .admin_http()
        .spawn_process("info");
    let client = daemon.v2().await;
    let metrics_url = format!("{}/metrics", daemon.admin_url.clone().unwrap());

    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(
                async move { client.encrypt(encrypt(format!("dek-{i}").as_bytes())).await },
            )
        })
        .collect();
    wait_until("all calls in flight", Duration::from_secs(10), || async {
        // Refused until the daemon has loaded its providers.
        let Ok(response) = reqwest::get(&metrics_url).await else {
            return false;
        };
        sample(
            &response.text().await.unwrap(),
            "kmsgate_requests_in_flight ",
        ) == CALLS as f64
    })
    .await;

    let socket = daemon.socket.clone();
    let log = tokio::task::spawn_blocking(move || daemon.terminate())
        .await
        .unwrap();
    for (i, call) in calls.into_iter().enumerate() {
        let sealed = call
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("in-flight call {i} failed: {e}"));
        assert_eq!(sealed.into_inner().key_id, "slow/w1");
    }
    assert!(!socket.exists(), "the socket must be removed");
    assert!(log.contains("draining in-flight calls"), "{log}");
}

#[tokio::test]
async fn a_stale_socket_is_recovered_and_a_live_one_is_not_stolen() {
    let spec = TestGateway::new().with_provider(ProviderSpec::local_aes("local", "k1", 1));
    let first = spec.clone().spawn_process("info");
    status(&mut first.v2().await).await;

    // A second daemon on the same socket refuses to start.
    let second = Command::new(daemon_binary())
        .args(["serve", "--config"])
        .arg(&first.config_path)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another process is serving"), "{stderr}");
    status(&mut first.v2().await).await;

    // Kill -9 leaves the socket file behind; a restart recovers it.
    let config_path = first.config_path.clone();
    let socket = first.socket.clone();
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(socket.exists(), "SIGKILL leaves the socket file");
    let mut restarted = Command::new(daemon_binary())
        .args(["serve", "--config"])
        .arg(&config_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the restarted daemon to serve",
        Duration::from_secs(20),
        || async {
            match kmsgate_proto::client::v2(&socket).await {
                Ok(mut client) => status(&mut client).await.healthz == "ok",
                Err(_) => false,
            }
        },
    )
    .await;
    restarted.kill().unwrap();
    restarted.wait().unwrap();
}

#[test]
fn check_refuses_what_the_swap_canary_refuses() {
    let (ok, out) =
        check(&TestGateway::new().with_provider(ProviderSpec::local_aes("local", "k1", 1)));
    assert!(ok, "{out}");
    assert!(out.contains("canary passed"), "{out}");
    // Its init and status are fine; its ciphertexts break the apiserver's
    // limit, so no swap would let it serve.
    let (ok, out) =
        check(&TestGateway::new().with_provider(ProviderSpec::new("big", "fixture_oversized")));
    assert!(!ok, "{out}");
    assert!(out.contains("error big: canary"), "{out}");
}

#[test]
fn check_names_the_file_and_field_of_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    let cases = [
        (
            "socket = \"/tmp/x.sock\"\nsocket_mode = \"rw-\"\n[[providers]]\nname = \"a\"\ncomponent = \"a.wasm\"\n",
            "socket_mode",
        ),
        (
            "socket = \"/tmp/x.sock\"\n[[providers]]\nname = \"A\"\ncomponent = \"a.wasm\"\n",
            "providers[0].name",
        ),
        (
            "socket = \"/tmp/x.sock\"\ntypo = 1\n[[providers]]\nname = \"a\"\ncomponent = \"a.wasm\"\n",
            "typo",
        ),
        (
            "socket = \"/tmp/x.sock\"\n[[providers]]\nname = \"a\"\ncomponent = \"missing.wasm\"\n",
            "missing.wasm",
        ),
    ];
    for (text, field) in cases {
        std::fs::write(&path, text).unwrap();
        let output = Command::new(daemon_binary())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{field}");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            all.contains("broken.toml") || all.contains(&*dir.path().to_string_lossy()),
            "{field}: {all}"
        );
        assert!(all.contains(field), "{field}: {all}");
    }
}
