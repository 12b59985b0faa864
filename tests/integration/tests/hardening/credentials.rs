//! A provider cannot get hold of its credentials: not by asking Vault for
//! them (`lookup-self`), not by putting them in a header a server echoes,
//! and not by publishing what it got in its status detail, error messages
//! or log lines. The `leaky` fixture tries each way and publishes whatever
//! came back everywhere it can.

use base64::Engine as _;
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
