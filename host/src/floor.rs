//! The benchmark floor: a KMS provider in native Rust (AES-256-GCM, no
//! Wasm), served through exactly the same gateway and gRPC stack as real
//! providers. `kmsgate floor --socket S` runs it; `scripts/bench` measures
//! kmsgate's Wasm path against it in the same run. Not a product feature.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;

use crate::error::ProviderError;
use crate::kms::{Encrypted, KmsProvider, ProviderStatus};
use crate::limits::Annotations;
use crate::secret::Plaintext;

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
