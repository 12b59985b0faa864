//! `local-aes`: the embedded default provider. AES-256-GCM with a key the
//! operator hands in through settings.
//!
//! **Not for production.** The key sits in a file on the node, next to the
//! data it protects; that defeats the point of a KMS. It exists so that a
//! first run needs nothing but kmsgate, and so that tests and benchmarks have
//! a provider without a backend.
//!
//! Settings (`wasi:config/store`):
//! - `key-id`: the id of the current key (any non-empty string, ≤ 200 bytes).
//! - `key`: the current key, 32 bytes in standard base64.
//! - `retired-key.<id>`: older keys, still used to decrypt, never to encrypt.
//!
//! Ciphertext: `0x01 || nonce (12 bytes) || AES-256-GCM(plaintext) || tag`,
//! with the key id as associated data, so a ciphertext presented under the
//! wrong key id fails authentication.

mod cipher;

use kmsgate_provider::{
    DecryptRequest, EncryptRequest, Encrypted, KmsError, Provider, Settings, StatusInfo,
};

struct LocalAes {
    /// The current key id and key, read and expanded once per instance.
    key_id: String,
    key: cipher::Key,
    /// For the retired keys, read (and checked) only when a ciphertext
    /// names one.
    settings: Settings,
}

impl Provider for LocalAes {
    fn new(settings: &Settings) -> Result<Self, KmsError> {
        let key_id = settings.require("key-id")?;
        if key_id.is_empty() || key_id.len() > 200 {
            return Err(KmsError::InvalidConfig(
                "setting `key-id` must be 1..=200 bytes".into(),
            ));
        }
        let key = cipher::Key::from_base64(settings.require("key")?)
            .map_err(|e| KmsError::InvalidConfig(format!("setting `key`: {e}")))?;
        Ok(LocalAes {
            key_id: key_id.to_string(),
            key,
            settings: settings.clone(),
        })
    }

    fn status(&mut self) -> Result<StatusInfo, KmsError> {
        Ok(StatusInfo::healthy(&self.key_id, "local key loaded"))
    }

    fn encrypt(&mut self, request: EncryptRequest) -> Result<Encrypted, KmsError> {
        let EncryptRequest {
            key_id, plaintext, ..
        } = request;
        if plaintext.is_empty() {
            return Err(KmsError::InvalidArgument("plaintext is empty".into()));
        }
        if key_id != self.key_id {
            return Err(KmsError::UnknownKey(format!(
                "key id {key_id:?} is not the current key"
            )));
        }
        let mut nonce = [0u8; cipher::NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| KmsError::Internal(format!("no randomness for a nonce: {e}")))?;
        let ciphertext = cipher::seal(&self.key, &nonce, key_id.as_bytes(), &plaintext)
            .map_err(|e| KmsError::Internal(e.to_string()))?;
        Ok(Encrypted::new(ciphertext, key_id))
    }

    fn decrypt(&mut self, request: DecryptRequest) -> Result<Vec<u8>, KmsError> {
        let key_id = request.key_id;
        let open = |key: &cipher::Key| cipher::open(key, key_id.as_bytes(), &request.ciphertext);
        let opened = if key_id == self.key_id {
            open(&self.key)
        } else {
            let name = format!("retired-key.{key_id}");
            let encoded = self
                .settings
                .get(&name)
                .ok_or_else(|| KmsError::UnknownKey(format!("no key with id {key_id:?}")))?;
            let key = cipher::Key::from_base64(encoded)
                .map_err(|e| KmsError::InvalidConfig(format!("setting `{name}`: {e}")))?;
            open(&key)
        };
        opened.map_err(|e| KmsError::InvalidCiphertext(e.to_string()))
    }
}

kmsgate_provider::export!(LocalAes);
