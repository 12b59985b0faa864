//! The benchmark floors: KMS providers in native Rust, no Wasm, served
//! through exactly the same gateway and gRPC stack as real providers.
//! [`NativeAes`] (AES-256-GCM in process) is the floor for `local-aes`;
//! [`NativeTransit`] (a native HTTP client to Vault Transit) is the floor
//! for `vault-transit`. `kmsgate-floor --socket S [--vault-address A
//! --vault-key K]` runs one; `scripts/bench` measures kmsgate's Wasm path
//! against them in the same run. Not a product feature.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;

use kmsgate_core::error::ProviderError;
use kmsgate_core::kms::{Call, Encrypted, KmsProvider, ProviderStatus};
use kmsgate_core::limits::Annotations;
use kmsgate_core::secret::Plaintext;

/// The floor's one key id.
pub const KEY_ID: &str = "floor-1";

pub struct NativeAes {
    cipher: Aes256Gcm,
}

impl NativeAes {
    /// A provider with a random key (benchmarks need no persistence).
    pub fn random() -> NativeAes {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the OS random source");
        NativeAes {
            cipher: Aes256Gcm::new(&key.into()),
        }
    }
}

#[async_trait]
impl KmsProvider for NativeAes {
    async fn status(&self) -> Result<ProviderStatus, ProviderError> {
        Ok(ProviderStatus {
            key_id: KEY_ID.into(),
            healthy: true,
            detail: "native floor".into(),
        })
    }

    async fn encrypt(
        &self,
        _: Call,
        _: &str,
        key_id: &str,
        plaintext: &Plaintext,
    ) -> Result<Encrypted, ProviderError> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| ProviderError::Internal(e.to_string()))?;
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: key_id.as_bytes(),
                },
            )
            .map_err(|_| ProviderError::Internal("encryption failed".into()))?;
        let mut ciphertext = nonce.to_vec();
        ciphertext.extend(sealed);
        Ok(Encrypted {
            ciphertext,
            key_id: key_id.into(),
            annotations: Annotations::new(),
        })
    }

    async fn decrypt(
        &self,
        _: Call,
        _: &str,
        key_id: &str,
        ciphertext: &[u8],
        _: &Annotations,
    ) -> Result<Plaintext, ProviderError> {
        if ciphertext.len() < 12 + 16 {
            return Err(ProviderError::InvalidCiphertext("too short".into()));
        }
        let (nonce, sealed) = ciphertext.split_at(12);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: key_id.as_bytes(),
                },
            )
            .map(Plaintext::new)
            .map_err(|_| ProviderError::InvalidCiphertext("authentication failed".into()))
    }
}

/// The floor for `vault-transit`: the same Transit calls from native code.
pub struct NativeTransit {
    client: TransitClient,
}

impl NativeTransit {
    pub fn new(client: TransitClient) -> NativeTransit {
        NativeTransit { client }
    }
}

fn unavailable(status: tonic::Status) -> ProviderError {
    ProviderError::Unavailable(status.message().to_string())
}

#[async_trait]
impl KmsProvider for NativeTransit {
    async fn status(&self) -> Result<ProviderStatus, ProviderError> {
        Ok(ProviderStatus {
            key_id: KEY_ID.into(),
            healthy: true,
            detail: "native Transit floor".into(),
        })
    }

    async fn encrypt(
        &self,
        _: Call,
        _: &str,
        key_id: &str,
        plaintext: &Plaintext,
    ) -> Result<Encrypted, ProviderError> {
        Ok(Encrypted {
            ciphertext: self
                .client
                .encrypt(plaintext.as_bytes())
                .await
                .map_err(unavailable)?,
            key_id: key_id.into(),
            annotations: Annotations::new(),
        })
    }

    async fn decrypt(
        &self,
        _: Call,
        _: &str,
        _: &str,
        ciphertext: &[u8],
        _: &Annotations,
    ) -> Result<Plaintext, ProviderError> {
        self.client
            .decrypt(ciphertext)
            .await
            .map(Plaintext::new)
            .map_err(unavailable)
    }
}

/// Vault Transit from native code: what a Vault KMS plugin does per call
/// (reqwest, pooled keep-alive connections, as kmsgate's outbound client
/// has). For `kmsgate bench --vault-direct` and [`NativeTransit`].
#[derive(Clone)]
pub struct TransitClient {
    http: reqwest::Client,
    encrypt_url: String,
    decrypt_url: String,
    token: reqwest::header::HeaderValue,
}

impl TransitClient {
    pub fn new(
        address: &str,
        mount: &str,
        key: &str,
        token: &kmsgate_core::secret::Secret,
    ) -> Result<TransitClient, String> {
        let address = address.trim_end_matches('/');
        let mut token = reqwest::header::HeaderValue::from_str(token.expose())
            .map_err(|_| "the Vault token is not a valid header value".to_string())?;
        token.set_sensitive(true);
        Ok(TransitClient {
            http: reqwest::Client::builder()
                .build()
                .map_err(|e| format!("building the HTTP client: {e}"))?,
            encrypt_url: format!("{address}/v1/{mount}/encrypt/{key}"),
            decrypt_url: format!("{address}/v1/{mount}/decrypt/{key}"),
            token,
        })
    }

    async fn post(
        &self,
        url: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, tonic::Status> {
        let response = self
            .http
            .post(url)
            .header("x-vault-token", self.token.clone())
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let body: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|_| tonic::Status::internal("Vault's answer is not JSON"))?;
        if !status.is_success() {
            return Err(tonic::Status::internal(format!("Vault answered {status}")));
        }
        Ok(body)
    }

    pub async fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, tonic::Status> {
        use base64::Engine as _;
        let plaintext = base64::engine::general_purpose::STANDARD.encode(plaintext);
        let body = self
            .post(
                &self.encrypt_url,
                serde_json::json!({ "plaintext": plaintext }),
            )
            .await?;
        body["data"]["ciphertext"]
            .as_str()
            .map(|c| c.as_bytes().to_vec())
            .ok_or_else(|| tonic::Status::internal("no ciphertext in Vault's answer"))
    }

    pub async fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, tonic::Status> {
        let ciphertext = String::from_utf8_lossy(ciphertext);
        let body = self
            .post(
                &self.decrypt_url,
                serde_json::json!({ "ciphertext": ciphertext }),
            )
            .await?;
        use base64::Engine as _;
        body["data"]["plaintext"]
            .as_str()
            .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
            .ok_or_else(|| tonic::Status::internal("no plaintext in Vault's answer"))
    }
}
