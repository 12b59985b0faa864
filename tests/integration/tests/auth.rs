//! Credentials the host holds, against a real OpenBao: a given token that
//! the host renews, and AppRole, JWT and TLS-certificate logins, with
//! tokens that live 5 s per lease and 30 s at most, so that a run under
//! load spans many renewals and several re-logins. No call may fail, a
//! revoked credential makes the provider unhealthy at once, and fixing
//! the file brings it back without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kmsgate_integration::requests::{decrypt, encrypt};
use kmsgate_integration::vault_auth::{JwtSigner, TestCa, auth_table, file_source};
use kmsgate_integration::{OpenBao, ProviderSpec, RunningGateway, TestGateway, wait_until};
use kmsgate_proto::admin::CredentialInfo;
use kmsgate_proto::client::V2Client;
use kmsgate_proto::v2;

/// How long the login methods run under load; the issue asks for two
/// minutes (four re-logins at a 30 s max TTL). `KMSGATE_AUTH_SOAK_SECS`
/// shortens it for a quick local run.
fn soak_time() -> Duration {
    let secs = std::env::var("KMSGATE_AUTH_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// Round trips through the daemon's primary by 2 callers until `until`;
/// returns (ok, failed, first failure).
async fn load(gateway: &RunningGateway, until: Instant) -> (u64, u64, Option<String>) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_failure = Arc::new(std::sync::Mutex::new(None));
    let mut callers = Vec::new();
    for caller in 0..2 {
        let mut client = gateway.v2().await;
        let (ok, failed, first_failure) = (ok.clone(), failed.clone(), first_failure.clone());
        callers.push(tokio::spawn(async move {
            let mut round = 0u64;
            while Instant::now() < until {
                round += 1;
                let plaintext = format!("dek {caller} {round}");
                match round_trip(&mut client, plaintext.as_bytes()).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(why) => {
                        first_failure.lock().unwrap().get_or_insert(why);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }
    let first = first_failure.lock().unwrap().clone();
    (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        first,
    )
}

async fn round_trip(client: &mut V2Client, plaintext: &[u8]) -> Result<(), String> {
    let sealed = client
        .encrypt(encrypt(plaintext))
        .await
        .map_err(|s| format!("encrypt: {:?} {}", s.code(), s.message()))?
        .into_inner();
    let opened = client
        .decrypt(decrypt(&sealed))
        .await
        .map_err(|s| format!("decrypt: {:?} {}", s.code(), s.message()))?
        .into_inner();
    if opened.plaintext != plaintext {
        return Err("decrypted to something else".into());
    }
    Ok(())
}

async fn credential(gateway: &RunningGateway, provider: &str) -> CredentialInfo {
    let info = gateway.provider(provider).await;
    assert_eq!(info.credentials.len(), 1, "{info:?}");
    info.credentials[0].clone()
}

fn write(path: &Path, text: &str) {
    kmsgate_integration::write_atomically(path, text.as_bytes());
}

/// An AppRole auth table reading `role_id` and `secret_id` from files
/// written in `dir`; also returns the secret id's file, to rewrite.
fn approle_files(dir: &Path, role_id: &str, secret_id: &str) -> (toml::Table, PathBuf) {
    let (role_file, secret_file) = (dir.join("role-id"), dir.join("secret-id"));
    write(&role_file, role_id);
    write(&secret_file, secret_id);
    let approle = auth_table(
        "vault-approle",
        &[
            ("role_id", file_source(&role_file)),
            ("secret_id", file_source(&secret_file)),
        ],
    );
    (approle, secret_file)
}

async fn sealed(client: &mut V2Client, plaintext: &[u8]) -> v2::EncryptResponse {
    client
        .encrypt(encrypt(plaintext))
        .await
        .unwrap()
        .into_inner()
}

/// Waits for provider `name`'s health to be `healthy`; returns its detail.
async fn wait_health(
    gateway: &RunningGateway,
    name: &str,
    healthy: bool,
    limit: Duration,
) -> String {
    wait_until(
        &format!("provider {name} healthy={healthy}"),
        limit,
        || async { gateway.provider(name).await.healthy == healthy },
    )
    .await;
    gateway.provider(name).await.detail
}

#[tokio::test]
async fn a_vault_token_is_renewed_and_a_revoked_one_is_unhealthy_until_its_file_is_fixed() {
    let bao = OpenBao::dev().await;
    bao.create_transit_policy().await;
    let token = bao.create_token("5s", "").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write(&token_file, &token);
    let auth = auth_table("vault-token", &[("token", file_source(&token_file))]);
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::vault_with_auth(
            "vault",
            &bao.address,
            "kube",
            auth,
        ))
        .status_interval_ms(1_000)
        .start()
        .await;
    let mut client = gateway.v2().await;
    let before = sealed(&mut client, b"made before").await;

    // 12 s is two lease lengths over: without renewal it would expire.
    let (ok, failed, first) = load(&gateway, Instant::now() + Duration::from_secs(12)).await;
    assert_eq!(failed, 0, "{ok} ok; first failure: {first:?}");
    let held = credential(&gateway, "vault").await;
    assert_eq!(
        (held.kind.as_str(), held.state.as_str()),
        ("vault-token", "valid")
    );
    assert!(held.renewals >= 3, "{held:?}");
    assert!((0..=5).contains(&held.expires_in_seconds), "{held:?}");

    // Revoked: unhealthy within one status interval (a refused request
    // asks the auth to check at once), with a detail naming the auth.
    bao.revoke_token(&token).await;
    let revoked_at = Instant::now();
    wait_health(&gateway, "vault", false, Duration::from_secs(10)).await;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(4),
        "took {:?}",
        revoked_at.elapsed()
    );
    wait_until(
        "the detail to name the auth",
        Duration::from_secs(4),
        || async {
            gateway
                .provider("vault")
                .await
                .detail
                .contains("auth vault")
        },
    )
    .await;
    let held = credential(&gateway, "vault").await;
    assert_eq!(held.state, "failed", "{held:?}");
    assert!(held.detail.contains("403"), "{held:?}");
    let refused = client.encrypt(encrypt(b"x")).await.unwrap_err();
    assert!(!refused.message().contains(&token), "{}", refused.message());

    // A new token in the file: back without a restart, and what was
    // encrypted before still decrypts.
    write(&token_file, &bao.create_token("5s", "").await);
    wait_health(&gateway, "vault", true, Duration::from_secs(10)).await;
    round_trip(&mut client, b"after the fix").await.unwrap();
    let opened = client.decrypt(decrypt(&before)).await.unwrap().into_inner();
    assert_eq!(opened.plaintext, b"made before");
    assert!(credential(&gateway, "vault").await.logins >= 2);
    gateway.stop().await.unwrap();
}

/// A token that cannot be renewed serves until it expires, then the
/// provider is unhealthy, saying so, until the file holds a new token.
#[tokio::test]
async fn an_expired_token_is_unhealthy_with_a_clear_detail_until_replaced() {
    let bao = OpenBao::dev().await;
    bao.create_transit_policy().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write(
        &token_file,
        &bao.create_token_renewable("4s", "", false).await,
    );
    let auth = auth_table("vault-token", &[("token", file_source(&token_file))]);
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::vault_with_auth(
            "vault",
            &bao.address,
            "kube",
            auth,
        ))
        .status_interval_ms(1_000)
        .admin_http()
        .start()
        .await;
    let mut client = gateway.v2().await;
    round_trip(&mut client, b"while it lasts").await.unwrap();
    wait_until("the token to expire", Duration::from_secs(15), || async {
        gateway.provider("vault").await.detail.contains("expired")
    })
    .await;
    let info = gateway.provider("vault").await;
    assert!(!info.healthy);
    assert!(
        info.detail.contains("auth vault: the credential expired"),
        "{}",
        info.detail
    );
    assert_eq!(info.credentials[0].state, "failed");

    // The metrics say the same: no credential, and how it went.
    let metrics = gateway.admin_get("/metrics").await;
    let labels = r#"provider="vault",auth="vault",kind="vault-token""#;
    for line in [
        format!("kmsgate_provider_credential_valid{{{labels}}} 0"),
        format!("kmsgate_provider_credential_expiry_seconds{{{labels}}} -1"),
        format!("kmsgate_provider_credential_logins_total{{{labels}}} 1"),
    ] {
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }

    write(&token_file, &bao.create_token("5s", "").await);
    wait_health(&gateway, "vault", true, Duration::from_secs(10)).await;
    round_trip(&mut client, b"with the new token")
        .await
        .unwrap();
    gateway.stop().await.unwrap();
}

/// AppRole, JWT and cert login side by side, each in its own daemon
/// against one OpenBao, under load for [`soak_time`]: renewals every 2.5 s,
/// a new login at each 30 s max TTL, and one more when the JWT file is
/// replaced halfway; not one failed call.
#[tokio::test]
async fn logins_renew_and_log_in_again_under_load_with_no_failed_call() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let bao = OpenBao::dev_with_tls(&ca).await;
    bao.create_transit_policy().await;
    let role_id = bao.enable_approle().await;
    let secret_id = bao.new_secret_id().await;
    let signer = JwtSigner::new();
    bao.enable_jwt(&signer).await;
    bao.enable_cert(&ca).await;
    let tls_address = bao.tls_address.clone().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        write(&path, text);
        path
    };
    let (role_file, secret_file) = (file("role-id", &role_id), file("secret-id", &secret_id));
    let jwt_file = file("jwt", &signer.token("kmsgate", 3600));
    let path = |p: &Path| toml::Value::from(p.display().to_string());

    let approle = auth_table(
        "vault-approle",
        &[
            ("role_id", file_source(&role_file)),
            ("secret_id", file_source(&secret_file)),
        ],
    );
    let jwt = auth_table(
        "vault-jwt",
        &[("role", "kms".into()), ("jwt_file", path(&jwt_file))],
    );
    let cert = auth_table(
        "vault-cert",
        &[
            ("name", "kms".into()),
            ("client_cert_file", path(&ca.client_cert())),
            ("client_key_file", path(&ca.client_key())),
        ],
    );
    let start = |name: &'static str, spec: ProviderSpec| async move {
        let gateway = TestGateway::new()
            .with_provider(spec)
            .status_interval_ms(1_000)
            .start()
            .await;
        wait_health(&gateway, name, true, Duration::from_secs(15)).await;
        Arc::new(gateway)
    };
    let gateways = [
        (
            "approle",
            start(
                "approle",
                ProviderSpec::vault_with_auth("approle", &bao.address, "kube", approle),
            )
            .await,
        ),
        (
            "jwt",
            start(
                "jwt",
                ProviderSpec::vault_with_auth("jwt", &bao.address, "kube", jwt),
            )
            .await,
        ),
        (
            "cert",
            start(
                "cert",
                ProviderSpec::vault_with_auth("cert", &tls_address, "kube", cert)
                    .outbound("ca_file", path(&ca.ca_cert())),
            )
            .await,
        ),
    ];

    let started = Instant::now();
    let until = started + soak_time();
    let mut runs = Vec::new();
    for (name, gateway) in &gateways {
        let gateway = gateway.clone();
        runs.push((
            *name,
            tokio::spawn(async move { load(&gateway, until).await }),
        ));
    }
    // Halfway, a new JWT (as kubelet rotates a projected token).
    tokio::time::sleep(soak_time() / 2).await;
    let jwt_logins = credential(&gateways[1].1, "jwt").await.logins;
    write(&jwt_file, &signer.token("kmsgate", 3600));
    for (name, run) in runs {
        let (ok, failed, first) = run.await.unwrap();
        assert_eq!(failed, 0, "{name}: {ok} ok; first failure: {first:?}");
        assert!(ok > 100, "{name}: only {ok} round trips");
    }
    let soaked = started.elapsed().as_secs();
    for (name, gateway) in &gateways {
        let held = credential(gateway, name).await;
        assert_eq!(held.state, "valid", "{name}: {held:?}");
        // A login per 30 s max TTL (the first included), a renewal per
        // 2.5 s in between.
        let logins = soaked / 30 + 1;
        assert!(held.logins >= logins, "{name}: {held:?} after {soaked} s");
        assert!(
            held.renewals >= soaked / 5,
            "{name}: {held:?} after {soaked} s"
        );
    }
    assert!(credential(&gateways[1].1, "jwt").await.logins > jwt_logins);
    for (_, gateway) in gateways {
        let gateway = Arc::into_inner(gateway).expect("no other holder");
        gateway.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_destroyed_secret_id_is_unhealthy_until_its_file_is_fixed() {
    let bao = OpenBao::dev().await;
    bao.create_transit_policy().await;
    let role_id = bao.enable_approle().await;
    let secret_id = bao.new_secret_id().await;
    let dir = tempfile::tempdir().unwrap();
    let (approle, secret_file) = approle_files(dir.path(), &role_id, &secret_id);
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::vault_with_auth(
            "vault",
            &bao.address,
            "kube",
            approle,
        ))
        .status_interval_ms(1_000)
        .start()
        .await;
    let mut client = gateway.v2().await;
    let before = sealed(&mut client, b"made before").await;

    // The secret id destroyed and every token it got revoked: the next
    // request is refused, the auth logs in again and is refused too.
    bao.destroy_secret_id(&secret_id).await;
    bao.revoke_logins("approle").await;
    let revoked_at = Instant::now();
    wait_health(&gateway, "vault", false, Duration::from_secs(10)).await;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(4),
        "took {:?}",
        revoked_at.elapsed()
    );
    // The status after the failed login names the auth and Vault's reason.
    wait_until(
        "the detail to name the auth",
        Duration::from_secs(4),
        || async {
            gateway
                .provider("vault")
                .await
                .detail
                .contains("auth vault")
        },
    )
    .await;
    let detail = gateway.provider("vault").await.detail;
    assert!(detail.contains("invalid role or secret ID"), "{detail}");
    assert!(!detail.contains(&secret_id));
    let held = credential(&gateway, "vault").await;
    assert_eq!(held.state, "failed", "{held:?}");
    assert!(held.failures >= 1, "{held:?}");

    write(&secret_file, &bao.new_secret_id().await);
    wait_health(&gateway, "vault", true, Duration::from_secs(10)).await;
    round_trip(&mut client, b"after the fix").await.unwrap();
    let opened = client.decrypt(decrypt(&before)).await.unwrap().into_inner();
    assert_eq!(opened.plaintext, b"made before");
    gateway.stop().await.unwrap();
}

/// Each provider version logs in for a token of its own; when a swap drops
/// the old version, its token is revoked instead of staying valid for its
/// TTL (here an hour).
#[tokio::test]
async fn a_swapped_out_version_revokes_the_token_it_logged_in_for() {
    let bao = OpenBao::dev().await;
    bao.create_transit_policy().await;
    let role_id = bao.enable_approle_lasting("1h", "2h").await;
    let dir = tempfile::tempdir().unwrap();
    let (approle, _) = approle_files(dir.path(), &role_id, &bao.new_secret_id().await);
    let component = dir.path().join("vault_transit.wasm");
    std::fs::copy(kmsgate_integration::component("vault_transit"), &component).unwrap();
    let gateway = TestGateway::new()
        .with_provider(
            ProviderSpec::vault_with_auth("vault", &bao.address, "kube", approle)
                .component_path(&component),
        )
        .start()
        .await;
    let mut client = gateway.v2().await;
    let before = sealed(&mut client, b"made before").await;
    assert_eq!(bao.live_logins("approle").await, 1);

    std::fs::write(
        &component,
        kmsgate_integration::component_version("vault_transit", 2),
    )
    .unwrap();
    let generation = gateway.provider("vault").await.generation;
    gateway.reload().await;
    assert!(gateway.provider("vault").await.generation > generation);
    wait_until(
        "the old version's token to be revoked",
        Duration::from_secs(10),
        || async { bao.live_logins("approle").await == 1 },
    )
    .await;
    let opened = client.decrypt(decrypt(&before)).await.unwrap().into_inner();
    assert_eq!(opened.plaintext, b"made before");
    round_trip(&mut client, b"after the swap").await.unwrap();
    gateway.stop().await.unwrap();
}

/// A backend that refuses every request with 403 for a policy reason (the
/// login works, the token may not encrypt): each refusal asks the auth for
/// a fresh login, but at most one a second, so a flood of calls cannot
/// turn into a flood of logins against Vault.
#[tokio::test]
async fn refusals_under_a_flood_ask_for_at_most_one_login_a_second() {
    let bao = OpenBao::dev().await;
    bao.create_transit_policy().await;
    let role_id = bao.enable_approle().await;
    let dir = tempfile::tempdir().unwrap();
    let (approle, _) = approle_files(dir.path(), &role_id, &bao.new_secret_id().await);
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::vault_with_auth(
            "vault",
            &bao.address,
            "kube",
            approle,
        ))
        .start()
        .await;
    round_trip(&mut gateway.v2().await, b"allowed")
        .await
        .unwrap();

    // Status may still read the key; encrypting is refused from now on.
    bao.set_transit_policy(r#"path "transit/keys/*" { capabilities = ["read"] }"#)
        .await;
    let logins_before = credential(&gateway, "vault").await.logins;
    let flood = Duration::from_secs(3);
    let until = Instant::now() + flood;
    let refused = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for _ in 0..8 {
        let mut client = gateway.v2().await;
        let refused = refused.clone();
        callers.push(tokio::spawn(async move {
            while Instant::now() < until {
                let status = client.encrypt(encrypt(b"refused")).await.unwrap_err();
                assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
                refused.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }
    let refused = refused.load(Ordering::Relaxed);
    let logins = credential(&gateway, "vault").await.logins - logins_before;
    // One a second over the flood, one at its start, one in flight.
    assert!(refused >= 100, "only {refused} refusals: not a flood");
    assert!(
        logins <= flood.as_secs() + 2,
        "{logins} logins for {refused} refusals in {flood:?}"
    );
    assert!(logins >= 1, "a refusal asks for a fresh login");
    gateway.stop().await.unwrap();
}

/// `header`: a fixed secret with a prefix, here Vault's own token header
/// without one; and an auth the provider names but the operator did not
/// configure is a config error, not a crash.
#[tokio::test]
async fn a_header_auth_sends_its_secret_and_an_unknown_auth_is_a_config_error() {
    let bao = OpenBao::dev().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write(&token_file, &bao.token);
    let header = auth_table(
        "header",
        &[
            ("header", "x-vault-token".into()),
            ("value", file_source(&token_file)),
        ],
    );
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::vault_with_auth(
            "vault",
            &bao.address,
            "kube",
            header,
        ))
        .with_provider(
            ProviderSpec::new("unknown", "vault_transit")
                .setting("address", &bao.address)
                .setting("key", "kube")
                .setting("auth", "nope")
                .allow(&bao.address),
        )
        .primary("vault")
        .start()
        .await;
    let mut client = gateway.v2().await;
    round_trip(&mut client, b"through a header auth")
        .await
        .unwrap();
    let info = gateway.provider("unknown").await;
    assert!(!info.healthy);
    assert!(
        info.detail.contains("setting `auth` must name an auth"),
        "{}",
        info.detail
    );
    gateway.stop().await.unwrap();
}
