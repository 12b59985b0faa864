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

// The component ABI glue is generated `unsafe` code; it stays in this module.
#[allow(unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        world: "provider",
        path: "../../wit",
        generate_all,
    });
    // The exports only link into a component; native `cargo test` runs
    // the pure `cipher` module.
    #[cfg(target_arch = "wasm32")]
    use super::LocalAes;
    #[cfg(target_arch = "wasm32")]
    export!(LocalAes);
}

use bindings::exports::kmsgate::provider::kms::{Encrypted, Guest, StatusInfo};
use bindings::kmsgate::provider::types::{Annotation, KmsError};
use bindings::wasi::config::store;

struct LocalAes;

impl Guest for LocalAes {
    fn init() -> Result<(), KmsError> {
        current_key().map(|_| ())
    }

    fn status() -> Result<StatusInfo, KmsError> {
        let (key_id, _) = current_key()?;
        Ok(StatusInfo {
            key_id,
            healthy: true,
            detail: "local key loaded".to_string(),
        })
    }

    fn encrypt(_uid: String, key_id: String, plaintext: Vec<u8>) -> Result<Encrypted, KmsError> {
        if plaintext.is_empty() {
            return Err(KmsError::InvalidArgument("plaintext is empty".into()));
        }
        let (current_id, key) = current_key()?;
        if key_id != current_id {
            return Err(KmsError::UnknownKey(format!(
                "key id {key_id:?} is not the current key"
            )));
        }
        let mut nonce = [0u8; cipher::NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| KmsError::Internal(format!("no randomness for a nonce: {e}")))?;
        let ciphertext = cipher::seal(&key, &nonce, key_id.as_bytes(), &plaintext)
            .map_err(|e| KmsError::Internal(e.to_string()))?;
        Ok(Encrypted {
            ciphertext,
            key_id,
            annotations: Vec::new(),
        })
    }

    fn decrypt(
        _uid: String,
        key_id: String,
        ciphertext: Vec<u8>,
        _annotations: Vec<Annotation>,
    ) -> Result<Vec<u8>, KmsError> {
        let key = key_for(&key_id)?;
        cipher::open(&key, key_id.as_bytes(), &ciphertext)
            .map_err(|e| KmsError::InvalidCiphertext(e.to_string()))
    }
}

fn setting(name: &str) -> Result<Option<String>, KmsError> {
    store::get(name).map_err(|e| KmsError::InvalidConfig(format!("reading setting {name}: {e:?}")))
}

fn required(name: &str) -> Result<String, KmsError> {
    setting(name)?.ok_or_else(|| KmsError::InvalidConfig(format!("setting `{name}` is missing")))
}

fn current_key() -> Result<(String, cipher::Key), KmsError> {
    let key_id = required("key-id")?;
    if key_id.is_empty() || key_id.len() > 200 {
        return Err(KmsError::InvalidConfig(
            "setting `key-id` must be 1..=200 bytes".into(),
        ));
    }
    let key = cipher::Key::from_base64(&required("key")?)
        .map_err(|e| KmsError::InvalidConfig(format!("setting `key`: {e}")))?;
    Ok((key_id, key))
}

fn key_for(key_id: &str) -> Result<cipher::Key, KmsError> {
    let (current_id, current) = current_key()?;
    if key_id == current_id {
        return Ok(current);
    }
    let name = format!("retired-key.{key_id}");
    match setting(&name)? {
        Some(encoded) => cipher::Key::from_base64(&encoded)
            .map_err(|e| KmsError::InvalidConfig(format!("setting `{name}`: {e}"))),
        None => Err(KmsError::UnknownKey(format!("no key with id {key_id:?}"))),
    }
}
