//! A moto server (`moto_server`, the AWS emulator) on a free loopback port,
//! checking SigV4 signatures, with an IAM user allowed `kms:*`, a KMS key
//! and its alias `alias/kube`.
//!
//! moto checks signatures only after its first `INITIAL_NO_AUTH_ACTION_COUNT`
//! requests (default: never), and even before that it crashes on a request
//! without an `Authorization` header. So the harness starts it without the
//! variable, sets up with `boto3` (installed with moto) signing with dummy
//! keys, then turns checking on (`POST /moto-api/reset-auth` with body `0`):
//! from then on every request must carry a valid signature of the user's
//! keys. Key changes (rotate, disable, enable) are made with those keys.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::{SETUP_HINT, free_port};

pub struct Moto {
    /// `http://127.0.0.1:PORT`: the KMS (and IAM) endpoint.
    pub endpoint: String,
    /// The IAM user's keys; requests signed with them are allowed `kms:*`.
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The KMS key's id (a uuid), the target of `alias/kube`.
    pub key_id: String,
    pub key_arn: String,
    /// A role allowed `kms:*`, for `AssumeRoleWithWebIdentity`.
    pub role_arn: String,
    child: Option<Child>,
    dir: TempDir,
}

/// Region of the key, and of the signatures moto checks.
pub const REGION: &str = "us-east-1";

/// `python3 -c SCRIPT ENDPOINT OP [ACCESS_KEY SECRET KEY_ID]`: `setup`
/// prints `{access_key_id, secret_access_key, key_id, key_arn}`; `rotate`,
/// `disable`, `enable` change the key with the user's keys.
const SCRIPT: &str = r#"
import json, sys
import boto3
from botocore.config import Config

endpoint, op = sys.argv[1], sys.argv[2]

def client(service, access_key, secret):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=access_key, aws_secret_access_key=secret,
                        config=Config(retries={"max_attempts": 1}))

if op == "setup":
    # Signature checks are off: any keys sign (moto needs a signature).
    iam = client("iam", "AKIAKMSGATESETUP0000", "setup")
    iam.create_user(UserName="kms")
    key = iam.create_access_key(UserName="kms")["AccessKey"]
    iam.put_user_policy(UserName="kms", PolicyName="kms-all", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["kms:*"], "Resource": "*"}],
    }))
    kms = client("kms", key["AccessKeyId"], key["SecretAccessKey"])
    meta = kms.create_key(Description="kmsgate test key")["KeyMetadata"]
    kms.create_alias(AliasName="alias/kube", TargetKeyId=meta["KeyId"])
    # A role a workload assumes with a web identity token, allowed kms:*.
    role = iam.create_role(RoleName="kmsgate", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/kmsgate.test"},
                       "Action": "sts:AssumeRoleWithWebIdentity"}],
    }))["Role"]
    iam.put_role_policy(RoleName="kmsgate", PolicyName="kms-all", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["kms:*"], "Resource": "*"}],
    }))
    print(json.dumps({
        "access_key_id": key["AccessKeyId"],
        "secret_access_key": key["SecretAccessKey"],
        "key_id": meta["KeyId"],
        "key_arn": meta["Arn"],
        "role_arn": role["Arn"],
    }))
else:
    access_key, secret, key_id = sys.argv[3], sys.argv[4], sys.argv[5]
    kms = client("kms", access_key, secret)
    if op == "rotate":
        kms.rotate_key_on_demand(KeyId=key_id)
    elif op == "disable":
        kms.disable_key(KeyId=key_id)
    elif op == "enable":
        kms.enable_key(KeyId=key_id)
    else:
        sys.exit("unknown op " + op)
    print("{}")
"#;

impl Moto {
    /// Starts moto, sets up the user, key and alias, and turns signature
    /// checking on.
    pub async fn start() -> Moto {
        Moto::start_checking(true).await
    }

    /// Starts moto set up as [`Moto::start`] does, but with signature
    /// checking still off until [`Moto::enforce_signatures`]. moto answers
    /// STS `AssumeRoleWithWebIdentity`, which AWS takes unsigned, only
    /// while checking is off: a test of web identity lets the host get its
    /// keys first, then turns checking on for every KMS call.
    pub async fn start_unchecked() -> Moto {
        Moto::start_checking(false).await
    }

    async fn start_checking(checked: bool) -> Moto {
        // `free_port` releases the port before moto binds it, so a test
        // running in parallel may take it first: if the server exits at
        // start, try again on another port.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let mut child = spawn(&dir, port);
            let endpoint = format!("http://127.0.0.1:{port}");
            if !wait_ready(&endpoint, &mut child).await {
                let _ = child.wait();
                continue;
            }
            let mut moto = Moto {
                endpoint,
                access_key_id: String::new(),
                secret_access_key: String::new(),
                key_id: String::new(),
                key_arn: String::new(),
                role_arn: String::new(),
                child: Some(child),
                dir,
            };
            let setup = moto.python(&["setup"]).await;
            let field = |name: &str| {
                setup[name]
                    .as_str()
                    .unwrap_or_else(|| panic!("moto setup printed no {name}: {setup}"))
                    .to_string()
            };
            moto.access_key_id = field("access_key_id");
            moto.secret_access_key = field("secret_access_key");
            moto.key_id = field("key_id");
            moto.key_arn = field("key_arn");
            moto.role_arn = field("role_arn");
            if checked {
                moto.enforce_signatures().await;
            }
            return moto;
        }
        panic!("moto_server exited at start five times");
    }

    /// `RotateKeyOnDemand` of the key (moto lists the rotation but keeps
    /// the key material).
    pub async fn rotate(&self) {
        self.change("rotate").await;
    }

    /// `DisableKey`.
    pub async fn disable(&self) {
        self.change("disable").await;
    }

    /// `EnableKey`.
    pub async fn enable(&self) {
        self.change("enable").await;
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    async fn change(&self, op: &str) {
        let args = [
            op,
            &self.access_key_id,
            &self.secret_access_key,
            &self.key_id,
        ];
        self.python(&args).await;
    }

    /// Runs [`SCRIPT`] with `args` after the endpoint; its stdout as JSON.
    async fn python(&self, args: &[&str]) -> Value {
        let output = tokio::process::Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(&self.endpoint)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("running python3: {e}; {SETUP_HINT}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "moto {}: {}\n{stdout}\n{}",
            args[0],
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("moto {}: output is not JSON ({e}): {stdout}", args[0]))
    }

    /// From now on every request must be signed with a known access key.
    pub async fn enforce_signatures(&self) {
        let response = reqwest::Client::new()
            .post(format!("{}/moto-api/reset-auth", self.endpoint))
            .header("content-type", "text/plain")
            .body("0")
            .send()
            .await
            .expect("POST /moto-api/reset-auth");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(
            status.is_success() && text.contains("ok"),
            "moto reset-auth: {status}: {text}"
        );
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until moto answers `GET /moto-api/`; false if it exited first.
async fn wait_ready(endpoint: &str, child: &mut Child) -> bool {
    let http = reqwest::Client::new();
    let url = format!("{endpoint}/moto-api/");
    let started = Instant::now();
    loop {
        if http.get(&url).send().await.is_ok() {
            return true;
        }
        if child.try_wait().expect("polling moto_server").is_some() {
            return false;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out after 30s waiting for moto_server on {endpoint}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn(dir: &TempDir, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("moto.log"))
        .expect("creating moto.log");
    Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .current_dir(dir.path())
        .env_remove("INITIAL_NO_AUTH_ACTION_COUNT")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("starting moto (`moto_server`): {e}; {SETUP_HINT} (pip install 'moto[server]')")
        })
}
