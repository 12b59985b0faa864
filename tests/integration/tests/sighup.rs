//! SIGHUP reloads. Alone in its test binary: the signal goes to the whole
//! process, and would reload the daemons of other tests too.

use std::time::Duration;

use kmsgate_integration::requests::status;
use kmsgate_integration::{
    ProviderSpec, TestGateway, component_version, wait_until, write_atomically,
};

#[tokio::test]
async fn sighup_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("local.wasm");
    std::fs::write(&component, component_version("local_aes", 0)).unwrap();
    let spec = ProviderSpec::local_aes("local", "local-1", 1).component_path(&component);
    let gateway = TestGateway::new().with_provider(spec).start().await;
    let mut client = gateway.v2().await;
    // Once Status answers, the SIGHUP handler is installed.
    assert_eq!(status(&mut client).await.healthz, "ok");

    write_atomically(&component, &component_version("local_aes", 1));
    let pid = std::process::id().to_string();
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    wait_until("a reload after SIGHUP", Duration::from_secs(10), || async {
        gateway.provider("local").await.generation == 2
    })
    .await;
    assert_eq!(status(&mut client).await.healthz, "ok");
}
