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
