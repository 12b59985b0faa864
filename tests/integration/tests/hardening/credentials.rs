//! A provider cannot get hold of its credentials: not by asking Vault for
//! them (`lookup-self`), not by putting them in a header a server echoes,
//! and not by publishing what it got in its status detail, error messages
//! or log lines. The `leaky` fixture tries each way and publishes whatever
//! came back everywhere it can.

use base64::Engine as _;
use kmsgate_integration::vault_auth::{auth_table, file_source};
use kmsgate_integration::{HeaderEcho, OpenBao, ProviderSpec, TestGateway, wait_until};

use crate::encrypt;

/// Everything the token could have reached, from a daemon running with
/// trace logs: each provider's admin view (HTTP), Status, an encrypt error,
/// and the log; and each provider's status detail by name.
async fn published(
    gateway: kmsgate_integration::gateway::DaemonProcess,
    primary: &str,
) -> (String, serde_json::Value) {
    let mut client = gateway.v2().await;
    let mut seen = String::new();
    seen.push_str(&crate::healthz(&client).await);
    let error = client.encrypt(encrypt(b"dek")).await.unwrap_err();
    seen.push_str(error.message());
    let admin = gateway.admin_url.clone().expect("admin HTTP on");
    let url = format!("{admin}/providers");
    wait_until(
        "the first status refresh",
        std::time::Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let view = reqwest::get(&url).await.unwrap().text().await.unwrap();
                view.contains("refused") || view.contains("got ")
            }
        },
    )
    .await;
    let view = reqwest::get(&url).await.unwrap().text().await.unwrap();
    seen.push_str(&view);
    assert!(seen.contains(primary), "{seen}");
    seen.push_str(&gateway.terminate());
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    let details: serde_json::Map<String, serde_json::Value> = view["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["detail"].clone()))
        .collect();
    (seen, serde_json::Value::Object(details))
}

fn assert_not_published(seen: &str, token: &str) {
    let base64 = base64::engine::general_purpose::STANDARD.encode(token);
    for form in [token.to_string(), base64, hex::encode(token)] {
        assert!(!seen.contains(&form), "the token was published as {form:?}");
    }
}

#[tokio::test]
async fn a_provider_cannot_read_its_vault_token_back() {
    let bao = OpenBao::dev().await;
    let leaky = ProviderSpec::hostile("leaky", "fixture_leaky")
        .setting(
            "target",
            &format!("{}/v1/auth/token/lookup-self", bao.address),
        )
        .secret("token", &bao.token)
        .allow(&bao.address);
    let daemon = TestGateway::new()
        .with_provider(leaky)
        .admin_http()
        .spawn_process("trace");
    let (seen, _) = published(daemon, "leaky").await;
    assert_not_published(&seen, &bao.token);
    // The host withheld the answer; nothing was merely cut short.
    assert!(seen.contains("withheld"), "{seen}");
}

/// A token the host logged in for (AppRole here) is searched for like a
/// configured secret: `lookup-self` through the auth is withheld.
#[tokio::test]
async fn a_provider_cannot_read_back_a_token_the_host_logged_in_for() {
    let bao = OpenBao::dev().await;
    bao.create_transit_policy().await;
    let role_id = bao.enable_approle().await;
    let secret_id = bao.new_secret_id().await;
    let dir = tempfile::tempdir().unwrap();
    let (role_file, secret_file) = (dir.path().join("role-id"), dir.path().join("secret-id"));
    std::fs::write(&role_file, &role_id).unwrap();
    std::fs::write(&secret_file, &secret_id).unwrap();
    let auth = auth_table(
        "vault-approle",
        &[
            ("address", bao.address.clone().into()),
            ("role_id", file_source(&role_file)),
            ("secret_id", file_source(&secret_file)),
        ],
    );
    let leaky = ProviderSpec::hostile("leaky", "fixture_leaky")
        .setting(
            "target",
            &format!("{}/v1/auth/token/lookup-self", bao.address),
        )
        .setting("auth", "vault")
        .auth("vault", auth)
        .allow(&bao.address);
    let daemon = TestGateway::new()
        .with_provider(leaky)
        .admin_http()
        .spawn_process("trace");
    let (seen, _) = published(daemon, "leaky").await;
    assert_not_published(&seen, &secret_id);
    assert!(
        seen.contains("withheld") && seen.contains("credential of auth"),
        "{seen}"
    );
    // Whatever token the daemon held: none in any form above.
    let token_like = seen
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .filter(|word| word.starts_with("s.") && word.len() >= 26)
        .collect::<Vec<_>>();
    assert!(token_like.is_empty(), "tokens published: {token_like:?}");
}

#[tokio::test]
async fn a_credential_goes_only_into_its_own_headers_and_never_comes_back() {
    let echo = HeaderEcho::start().await;
    let token = "s.echo-me-back-0123456789";
    let leaky = |name: &str, header: &str| {
        ProviderSpec::hostile(name, "fixture_leaky")
            .setting("target", &format!("{}/", echo.address))
            .setting("header", header)
            .secret("token", token)
            .allow(&echo.address)
    };
    let daemon = TestGateway::new()
        // Allowed header, echoed back: the response is withheld.
        .with_provider(leaky("echoed", "x-vault-token"))
        // Headers not allowed for the secret (the host's own included).
        .with_provider(leaky("host", "host"))
        .with_provider(leaky("custom", "x-echo"))
        .primary("echoed")
        .admin_http()
        .spawn_process("trace");
    let (seen, details) = published(daemon, "echoed").await;
    assert_not_published(&seen, token);
    let detail = |name: &str| details[name].as_str().unwrap().to_string();
    assert!(
        detail("echoed").contains("withheld"),
        "{}",
        detail("echoed")
    );
    for header in ["host", "x-echo"] {
        let shown = detail(if header == "host" { "host" } else { "custom" });
        let expected = format!(r#"may not be sent in header \"{header}\""#);
        assert!(shown.contains(&expected), "{shown}");
    }
    // The echo server does echo: a header that is not a secret comes back.
    let echoed = reqwest::Client::new()
        .get(&echo.address)
        .header("x-probe", "visible")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(echoed.contains("x-probe: visible"), "{echoed}");
}

/// A secret so short that responses contain it by chance: every response
/// is searched for it and such a response is withheld, so the operator is
/// told when the provider loads (`kmsgate check` shows the same warning),
/// with the secret's name and length, never its value.
#[tokio::test]
async fn a_short_secret_is_warned_about_by_name() {
    let short = ProviderSpec::local_aes("local", "k1", 1)
        .secret("token", "ab12")
        .allow("http://127.0.0.1:9");
    let (ok, text) = kmsgate_integration::gateway::check(&TestGateway::new().with_provider(short));
    assert!(ok, "{text}");
    assert!(text.contains(r#"secret "token" is only 4 bytes"#), "{text}");
    assert!(!text.contains("ab12"), "{text}");
    let long = ProviderSpec::local_aes("local", "k1", 1)
        .secret("token", "s.0123456789abcdef")
        .allow("http://127.0.0.1:9");
    let (ok, text) = kmsgate_integration::gateway::check(&TestGateway::new().with_provider(long));
    assert!(ok && !text.contains("is only"), "{text}");
}
