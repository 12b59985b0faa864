//! `kmsgate conformance` (crate `kmsgate-conformance`) against kmsgate
//! itself: every check passes with local-aes and with vault-transit on a
//! real OpenBao, on v2 and v1beta1; and a plugin that breaks the contract
//! (a provider that traps on every call but the canary's) fails it,
//! naming the code a caller would see.

use kmsgate_conformance::{Options, Outcome, Report};
use kmsgate_integration::{OpenBao, ProviderSpec, TestGateway};

fn options() -> Options {
    Options {
        v1beta1: true,
        latency_calls: 20,
        ..Options::default()
    }
}

fn failures(report: &Report) -> Vec<String> {
    report
        .checks
        .iter()
        .filter(|c| c.outcome == Outcome::Fail)
        .map(|c| format!("{} [{:?}]: {}", c.name, c.code, c.detail))
        .collect()
}

#[tokio::test]
async fn kmsgate_with_local_aes_passes_every_check() {
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 7))
        .start()
        .await;
    let report = kmsgate_conformance::run(&gateway.socket, &options())
        .await
        .unwrap();
    assert_eq!(failures(&report), Vec::<String>::new());
    assert!(report.passed() >= 20, "{report:?}");
    assert!(report.checks.iter().any(|c| c.name == "v1beta1 round trip"));
    assert!(report.checks.iter().any(|c| c.outcome == Outcome::Info));
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn kmsgate_with_vault_transit_passes_every_check() {
    let bao = OpenBao::dev().await;
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::vault("vault", &bao, "kube"))
        .start()
        .await;
    let report = kmsgate_conformance::run(&gateway.socket, &options())
        .await
        .unwrap();
    assert_eq!(failures(&report), Vec::<String>::new());
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_plugin_that_breaks_the_contract_fails_it() {
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::hostile("trapping", "fixture_trapping"))
        .start()
        .await;
    let report = kmsgate_conformance::run(&gateway.socket, &options())
        .await
        .unwrap();
    let failed = failures(&report);
    assert!(!failed.is_empty(), "{report:?}");
    assert!(
        failed
            .iter()
            .any(|f| f.contains("round trip") && f.contains("Internal")),
        "{failed:?}"
    );
    gateway.stop().await.unwrap();
}

/// `kmsgate provider test COMPONENT`: the release binary, as a vendor runs
/// it. Its stdout (the report) and exit status.
fn provider_test(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(kmsgate_integration::daemon_binary())
        .args(["--log", "error", "provider", "test", "--latency-calls", "5"])
        .args(args)
        .output()
        .expect("running kmsgate provider test");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), stdout)
}

fn component(name: &str) -> String {
    kmsgate_integration::component(name).display().to_string()
}

#[tokio::test]
async fn provider_test_certifies_the_providers_and_refuses_a_broken_one() {
    let key = format!("key={}", kmsgate_integration::gateway::local_aes_key(3));
    let (ok, report) = provider_test(&[
        &component("local_aes"),
        "--setting",
        "key-id=k1",
        "--setting",
        &key,
        "--v1beta1",
    ]);
    assert!(ok, "{report}");
    assert!(
        report.contains("PASS  start: loaded, canary passed"),
        "{report}"
    );
    assert!(report.contains(" 0 failed"), "{report}");

    let bao = OpenBao::dev().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, &bao.token).unwrap();
    let (ok, report) = provider_test(&[
        &component("vault_transit"),
        "--setting",
        &format!("address={}", bao.address),
        "--setting",
        "key=kube",
        "--secret",
        &format!("token={}", token.display()),
        "--allow",
        &bao.address,
    ]);
    assert!(ok, "{report}");
    // vault-transit exports decrypt-batch: checked item by item.
    assert!(
        report.contains("PASS  decrypt-batch agrees with decrypt: 6 items"),
        "{report}"
    );
    assert!(report.contains("INFO  cost per call: CPU"), "{report}");

    // The same, its token applied by the host through an auth given by
    // flag rather than sent as the provider's secret.
    let (ok, report) = provider_test(&[
        &component("vault_transit"),
        "--setting",
        &format!("address={}", bao.address),
        "--setting",
        "key=kube",
        "--setting",
        "auth=vault",
        "--auth",
        &format!(
            "vault={{ kind = \"vault-token\", address = \"{}\", token = {{ file = \"{}\" }} }}",
            bao.address,
            token.display()
        ),
        "--allow",
        &bao.address,
    ]);
    assert!(ok, "{report}");

    // The Python (componentize-py) and JavaScript (componentize-js)
    // example providers, certified the same way.
    for example in ["vault_transit_py", "vault_transit_js"] {
        let (ok, report) = provider_test(&[
            &component(example),
            "--setting",
            &format!("address={}", bao.address),
            "--setting",
            "key=kube",
            "--secret",
            &format!("token={}", token.display()),
            "--allow",
            &bao.address,
            "--v1beta1",
        ]);
        assert!(ok, "{example}: {report}");
        assert!(
            report.contains("PASS  v2 decrypt tampered ciphertext [InvalidArgument]"),
            "{example}: {report}"
        );
    }

    // The same settings from a config file's provider.
    let config = TestGateway::new().with_provider(ProviderSpec::local_aes("local", "k9", 4));
    let path = dir.path().join("kmsgate.toml");
    config.write_config_to(&path);
    let (ok, report) = provider_test(&[
        &component("local_aes"),
        "--config",
        &path.display().to_string(),
        "--provider",
        "local",
    ]);
    // Without the config's settings (its key) it could not start.
    assert!(ok, "{report}");

    // Refused where a swap would be: at the canary.
    let (ok, report) = provider_test(&[&component("fixture_trapping")]);
    assert!(!ok);
    assert!(
        report.contains("FAIL  start") && report.contains("canary"),
        "{report}"
    );
    // One that passes the canary and traps on everything else fails the
    // contract, with the code a caller would see.
    let (ok, report) = provider_test(&[
        &component("fixture_trapping"),
        "--setting",
        "evade-canary=true",
    ]);
    assert!(!ok);
    assert!(report.contains("PASS  start"), "{report}");
    assert!(
        report.contains("FAIL  v2 round trip 1 bytes [Internal]"),
        "{report}"
    );
    // A decrypt-batch that answers out of order, past the canary.
    let (ok, report) = provider_test(&[
        &component("fixture_wrong_batch"),
        "--setting",
        "evade-canary=true",
    ]);
    assert!(!ok);
    assert!(report.contains("PASS  start"), "{report}");
    assert!(
        report.contains("FAIL  decrypt-batch agrees with decrypt: item 0"),
        "{report}"
    );
}
