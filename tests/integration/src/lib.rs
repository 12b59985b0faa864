//! The integration-test harness: the real daemon (`kmsgate_daemon::server::run`,
//! or the `kmsgate` binary when logs must be captured) on a throwaway Unix
//! socket, real provider components, and a real OpenBao server.
//!
//! # Layout
//! - [`gateway`] — `TestGateway::new().with_provider(spec).start()`.
//! - [`openbao`] — starts `bao server` (dev or persistent) on a free port.
//! - [`requests`] — request builders the tests share.
//! - [`proxy`] — a delaying, freezing, counting TCP proxy in front of a server.
//! - [`echo`] — an HTTP server that echoes request headers.
//! - [`component`] — where the built `.wasm` components are.

pub mod echo;
pub mod gateway;
pub mod moto;
pub mod openbao;
pub mod proxy;
pub mod registry;
pub mod requests;
pub mod signing;
pub mod vault_auth;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use echo::HeaderEcho;
pub use gateway::{ProviderSpec, RunningGateway, TestGateway};
pub use moto::Moto;
pub use openbao::OpenBao;
pub use proxy::DelayProxy;

/// The hint every "something is not built or installed" failure carries.
pub const SETUP_HINT: &str = "run `scripts/setup && scripts/build` (installs the tools, builds the daemon and every component), then `cargo test --release`; or run scripts/test, which does all of it";

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The path of a built component, e.g. `component("local_aes")`. Fails (never
/// skips) when it has not been built.
pub fn component(name: &str) -> PathBuf {
    let path = workspace_root().join(format!("target/wasm32-wasip2/release/{name}.wasm"));
    assert!(path.exists(), "component {path:?} is missing: {SETUP_HINT}");
    path
}

/// A distinct version of a built component: the same code with a custom
/// section naming `version` appended, so its SHA-256 differs.
pub fn component_version(name: &str, version: u32) -> Vec<u8> {
    let mut bytes = std::fs::read(component(name)).expect("reading a component");
    let section_name = b"kmsgate-test-version";
    let mut payload = vec![section_name.len() as u8];
    payload.extend_from_slice(section_name);
    payload.extend_from_slice(&version.to_le_bytes());
    bytes.push(0); // custom section id
    push_leb128(&mut bytes, payload.len() as u32);
    bytes.extend(payload);
    bytes
}

fn push_leb128(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Writes a temporary file beside `path`, then renames it over `path`: how
/// operators (and config management) replace files.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) {
    let staging = path.with_extension("staging");
    std::fs::write(&staging, bytes).expect("writing a staging file");
    std::fs::rename(&staging, path).expect("renaming into place");
}

/// The `kmsgate` binary, for tests that run the daemon as a process.
pub fn daemon_binary() -> PathBuf {
    let path = workspace_root().join("target/release/kmsgate");
    assert!(
        path.exists(),
        "daemon binary {path:?} is missing: {SETUP_HINT}"
    );
    path
}

/// Waits until `check` holds, polling every 20 ms, for at most `limit`.
/// Returns how long it took. For conditions that change in the background
/// (a status refresh, a server coming up); panics with `what` on timeout.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("binding a loopback port")
}
