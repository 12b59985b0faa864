//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF
//! distribution server), on a free loopback port, with TLS (a CA the test
//! makes, [`TestCa`]) and basic auth (an htpasswd file with a bcrypt hash,
//! as `htpasswd -B` writes it). Artifacts are pushed with the ORAS Python
//! SDK (`oras`), a client kmsgate did not write, as the Bytecode Alliance's
//! tools lay a component out: one `application/wasm` layer and config
//! `application/vnd.wasm.config.v0+json`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::vault_auth::TestCa;

pub const USERNAME: &str = "kmsgate-puller";
pub const PASSWORD: &str = "registry-test-password-7f3a";

pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub address: String,
    pub ca: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    config: PathBuf,
}

impl Registry {
    pub async fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new(dir.path());
        let htpasswd = dir.path().join("htpasswd");
        let output = Command::new("htpasswd")
            .args(["-Bbn", USERNAME, PASSWORD])
            .output()
            .expect("htpasswd is installed (scripts/setup: apache2-utils)");
        assert!(output.status.success());
        std::fs::write(&htpasswd, output.stdout).unwrap();
        let address = format!("127.0.0.1:{}", crate::free_port());
        let config = dir.path().join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n  secret: kmsgate-test\n  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: kmsgate-test\n    path: {}\n",
                dir.path().join("data").display(),
                ca.server_cert().display(),
                ca.server_key().display(),
                htpasswd.display(),
            ),
        )
        .unwrap();
        let mut registry = Registry {
            address,
            ca: ca.ca_cert(),
            dir,
            child: None,
            config,
        };
        registry.start_again().await;
        registry
    }

    /// Starts the server (again, after [`Registry::stop`]), on the same
    /// port and storage, and waits until it answers.
    pub async fn start_again(&mut self) {
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is installed (scripts/setup)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.address).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Pushes `component` as `repository:tag` with ORAS, laid out as the
    /// Bytecode Alliance's tools lay a component out; returns the
    /// manifest's digest.
    pub fn push(&self, repository: &str, tag: &str, component: &Path) -> String {
        self.push_artifact(
            &format!("{repository}:{tag}"),
            &[(component, "application/wasm", serde_json::json!({}))],
            "application/vnd.wasm.config.v0+json",
            serde_json::json!({"architecture": "wasm", "os": "wasip2"}),
        )
    }

    /// Pushes a signature as `cosign sign --key` stores it: `payload` (a
    /// simple-signing document) as a layer of cosign's payload type,
    /// `signature` (base64) in its annotation, under the tag
    /// `sha256-<hex>.sig` of the signed manifest `digest`.
    pub fn push_cosign_signature(
        &self,
        repository: &str,
        digest: &str,
        payload: &Path,
        signature: &str,
    ) {
        let tag = format!("{}.sig", digest.replace(':', "-"));
        self.push_artifact(
            &format!("{repository}:{tag}"),
            &[(
                payload,
                "application/vnd.dev.cosign.simplesigning.v1+json",
                serde_json::json!({"dev.cosignproject.cosign/signature": signature}),
            )],
            "application/vnd.oci.image.config.v1+json",
            serde_json::json!({}),
        );
    }

    /// Pushes `layers` (file, media type, annotations) and a config as
    /// `target` (`repository:tag`) with ORAS; returns the manifest digest.
    pub fn push_artifact(
        &self,
        target: &str,
        layers: &[(&Path, &str, serde_json::Value)],
        config_media_type: &str,
        config: serde_json::Value,
    ) -> String {
        let script = r#"
import json, os, sys, tempfile, oras.client
address, target, ca, user, password, spec = sys.argv[1:]
spec = json.loads(spec)
client = oras.client.OrasClient(hostname=address, auth_backend="basic", tls_verify=ca)
with tempfile.TemporaryDirectory() as work:
    # Its own credentials file: tests push in parallel.
    client.login(username=user, password=password, hostname=address, tls_verify=ca,
                 config_path=os.path.join(work, "docker-config.json"))
    config = os.path.join(work, "config.json")
    with open(config, "w") as f:
        json.dump(spec["config"], f)
    annotations = os.path.join(work, "annotations.json")
    with open(annotations, "w") as f:
        json.dump({layer["file"]: layer["annotations"] for layer in spec["layers"]}, f)
    response = client.push(target=target,
                           files=[f"{layer['file']}:{layer['media_type']}" for layer in spec["layers"]],
                           manifest_config=f"{config}:{spec['config_media_type']}",
                           annotation_file=annotations,
                           disable_path_validation=True)
print(response.headers["Docker-Content-Digest"])
"#;
        let spec = serde_json::json!({
            "layers": layers.iter().map(|(file, media_type, annotations)| serde_json::json!({
                "file": file.display().to_string(),
                "media_type": media_type,
                "annotations": annotations,
            })).collect::<Vec<_>>(),
            "config_media_type": config_media_type,
            "config": config,
        });
        let output = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args([
                &self.address,
                &format!("{}/{target}", self.address),
                &self.ca.display().to_string(),
                USERNAME,
                PASSWORD,
                &spec.to_string(),
            ])
            .output()
            .expect("python3 with oras (scripts/setup)");
        assert!(
            output.status.success(),
            "oras push: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// The file the registry stores blob `digest` in (to tamper with).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
