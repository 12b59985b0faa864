//! What the auth tests set up in a real OpenBao: a Transit policy, AppRole,
//! JWT and cert auth methods with short token lifetimes, and the key
//! material they need, made here: a certificate authority with server and
//! client certificates (by `openssl`, as an operator would), and an Ed25519
//! key pair that signs JWTs (`ring`).

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

use crate::OpenBao;

/// The policy every auth's token gets: Transit only.
pub const TRANSIT_POLICY: &str = "kms-transit";

/// Token lifetimes short enough that a test of a minute or two spans
/// several renewals (every 2.5 s) and re-logins (every 30 s).
pub const TOKEN_TTL: &str = "5s";
pub const TOKEN_MAX_TTL: &str = "30s";

impl OpenBao {
    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// A policy that lets a token use Transit (and nothing else).
    pub async fn create_transit_policy(&self) {
        self.set_transit_policy(r#"path "transit/*" { capabilities = ["read", "update"] }"#)
            .await;
    }

    /// Rewrites the policy the test tokens and roles carry to `hcl`; Vault
    /// applies it at once to tokens already issued.
    pub async fn set_transit_policy(&self, hcl: &str) {
        self.call(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{TRANSIT_POLICY}"),
            Some(json!({ "policy": hcl })),
        )
        .await;
    }

    /// A token with the Transit policy, lasting `ttl` per lease and at most
    /// `max_ttl` (empty: the system's maximum).
    pub async fn create_token(&self, ttl: &str, max_ttl: &str) -> String {
        self.create_token_renewable(ttl, max_ttl, true).await
    }

    /// [`OpenBao::create_token`], renewable or not.
    pub async fn create_token_renewable(
        &self,
        ttl: &str,
        max_ttl: &str,
        renewable: bool,
    ) -> String {
        let mut body = json!({ "ttl": ttl, "renewable": renewable, "policies": [TRANSIT_POLICY] });
        if !max_ttl.is_empty() {
            body["explicit_max_ttl"] = max_ttl.into();
        }
        let answer = self.post("auth/token/create", body).await;
        answer["auth"]["client_token"].as_str().unwrap().to_owned()
    }

    pub async fn revoke_token(&self, token: &str) {
        self.post("auth/token/revoke", json!({ "token": token }))
            .await;
    }

    /// How many tokens that logins at auth mount `mount` issued are still
    /// valid (their leases).
    pub async fn live_logins(&self, mount: &str) -> usize {
        let answer = self
            .call(
                reqwest::Method::GET,
                &format!("sys/leases/lookup/auth/{mount}/login?list=true"),
                None,
            )
            .await;
        answer["data"]["keys"].as_array().map_or(0, Vec::len)
    }

    /// Revokes every token a login at auth mount `mount` issued.
    pub async fn revoke_logins(&self, mount: &str) {
        self.call(
            reqwest::Method::PUT,
            &format!("sys/leases/revoke-prefix/auth/{mount}"),
            None,
        )
        .await;
    }

    /// Enables AppRole with role `kms` (short token lifetimes); returns its
    /// role id.
    pub async fn enable_approle(&self) -> String {
        self.enable_approle_lasting(TOKEN_TTL, TOKEN_MAX_TTL).await
    }

    /// [`OpenBao::enable_approle`], its tokens lasting `ttl` per lease and
    /// `max_ttl` at most.
    pub async fn enable_approle_lasting(&self, ttl: &str, max_ttl: &str) -> String {
        self.post("sys/auth/approle", json!({ "type": "approle" }))
            .await;
        self.post(
            "auth/approle/role/kms",
            json!({
                "token_ttl": ttl,
                "token_max_ttl": max_ttl,
                "token_policies": [TRANSIT_POLICY],
            }),
        )
        .await;
        let answer = self
            .call(reqwest::Method::GET, "auth/approle/role/kms/role-id", None)
            .await;
        answer["data"]["role_id"].as_str().unwrap().to_owned()
    }

    pub async fn new_secret_id(&self) -> String {
        let answer = self
            .post("auth/approle/role/kms/secret-id", json!({}))
            .await;
        answer["data"]["secret_id"].as_str().unwrap().to_owned()
    }

    pub async fn destroy_secret_id(&self, secret_id: &str) {
        self.post(
            "auth/approle/role/kms/secret-id/destroy",
            json!({ "secret_id": secret_id }),
        )
        .await;
    }

    /// Enables JWT auth that trusts `signer`, with role `kms`.
    pub async fn enable_jwt(&self, signer: &JwtSigner) {
        self.post("sys/auth/jwt", json!({ "type": "jwt" })).await;
        self.post(
            "auth/jwt/config",
            json!({
                "jwt_validation_pubkeys": [signer.public_key_pem()],
                "bound_issuer": JwtSigner::ISSUER,
            }),
        )
        .await;
        self.post(
            "auth/jwt/role/kms",
            json!({
                "role_type": "jwt",
                "user_claim": "sub",
                "bound_audiences": [JwtSigner::AUDIENCE],
                "token_ttl": TOKEN_TTL,
                "token_max_ttl": TOKEN_MAX_TTL,
                "token_policies": [TRANSIT_POLICY],
            }),
        )
        .await;
    }

    /// Enables cert auth that trusts client certificates of `ca`, as
    /// role `kms`.
    pub async fn enable_cert(&self, ca: &TestCa) {
        self.post("sys/auth/cert", json!({ "type": "cert" })).await;
        let ca_pem = std::fs::read_to_string(ca.ca_cert()).unwrap();
        self.post(
            "auth/cert/certs/kms",
            json!({
                "certificate": ca_pem,
                "token_ttl": TOKEN_TTL,
                "token_max_ttl": TOKEN_MAX_TTL,
                "token_policies": [TRANSIT_POLICY],
            }),
        )
        .await;
    }
}

/// Signs JWTs with an Ed25519 key made for the test (what a Kubernetes
/// service-account issuer or a SPIFFE workload API would hand out).
pub struct JwtSigner {
    key: Ed25519KeyPair,
}

impl Default for JwtSigner {
    fn default() -> Self {
        Self::new()
    }
}

impl JwtSigner {
    pub const ISSUER: &str = "https://issuer.kmsgate.test";
    pub const AUDIENCE: &str = "kmsgate";

    pub fn new() -> JwtSigner {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("an Ed25519 key");
        JwtSigner {
            key: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("the key just made"),
        }
    }

    /// The public key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn public_key_pem(&self) -> String {
        // The fixed DER prefix of an Ed25519 SubjectPublicKeyInfo.
        let mut der = hex::decode("302a300506032b6570032100").unwrap();
        der.extend_from_slice(self.key.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    /// A JWT for subject `subject`, valid for `seconds`.
    pub fn token(&self, subject: &str, seconds: u64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let header = json!({ "alg": "EdDSA", "typ": "JWT" });
        let claims = json!({
            "iss": Self::ISSUER,
            "sub": subject,
            "aud": Self::AUDIENCE,
            "iat": now,
            "nbf": now - 5,
            "exp": now + seconds,
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(signature.as_ref()))
    }
}

/// A certificate authority made with `openssl` in a directory, with a
/// server certificate for 127.0.0.1 and a client certificate.
pub struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        let run = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("running openssl");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=kmsgate test CA",
        ]);
        run(&ca);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("client.ext"),
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        for (name, subject) in [("server", "/CN=127.0.0.1"), ("client", "/CN=kmsgate")] {
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let pem = format!("{name}.pem");
            let ext = format!("{name}.ext");
            let mut request = vec!["req"];
            request.extend(ec);
            request.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
            run(&request);
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        TestCa {
            dir: dir.to_owned(),
        }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }
}

/// `[providers.auth.<name>]` of kind `kind` with `fields`.
pub fn auth_table(kind: &str, fields: &[(&str, toml::Value)]) -> toml::Table {
    let mut table = toml::Table::new();
    table.insert("kind".into(), kind.into());
    for (key, value) in fields {
        table.insert((*key).into(), value.clone());
    }
    table
}

/// `{ file = "path" }`.
pub fn file_source(path: &Path) -> toml::Value {
    let mut table = toml::Table::new();
    table.insert("file".into(), path.display().to_string().into());
    toml::Value::Table(table)
}
