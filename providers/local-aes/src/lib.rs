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

use std::cell::OnceCell;
use std::rc::Rc;

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
        let current = current_key()?;
        Ok(StatusInfo {
            key_id: current.key_id.clone(),
            healthy: true,
            detail: "local key loaded".to_string(),
        })
    }

    fn encrypt(_uid: String, key_id: String, plaintext: Vec<u8>) -> Result<Encrypted, KmsError> {
        if plaintext.is_empty() {
            return Err(KmsError::InvalidArgument("plaintext is empty".into()));
        }
        let current = current_key()?;
        if key_id != current.key_id {
            return Err(KmsError::UnknownKey(format!(
                "key id {key_id:?} is not the current key"
            )));
        }
        let mut nonce = [0u8; cipher::NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| KmsError::Internal(format!("no randomness for a nonce: {e}")))?;
        let ciphertext = cipher::seal(&current.key, &nonce, key_id.as_bytes(), &plaintext)
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
        with_key(&key_id, |key| {
            cipher::open(key, key_id.as_bytes(), &ciphertext)
        })?
        .map_err(|e| KmsError::InvalidCiphertext(e.to_string()))
    }
}

fn setting(name: &str) -> Result<Option<String>, KmsError> {
    store::get(name).map_err(|e| KmsError::InvalidConfig(format!("reading setting {name}: {e:?}")))
}

fn required(name: &str) -> Result<String, KmsError> {
    setting(name)?.ok_or_else(|| KmsError::InvalidConfig(format!("setting `{name}` is missing")))
}

/// The current key id and key.
struct Current {
    key_id: String,
    key: cipher::Key,
}

thread_local! {
    /// The current key, read and expanded once per instance. Settings never
    /// change while an instance lives (the WIT's instance model), and a
    /// failed read is not cached, so `init` and every call report it.
    static CURRENT: OnceCell<Rc<Current>> = const { OnceCell::new() };
}

fn current_key() -> Result<Rc<Current>, KmsError> {
    if let Some(current) = CURRENT.with(|cell| cell.get().cloned()) {
        return Ok(current);
    }
    let key_id = required("key-id")?;
    if key_id.is_empty() || key_id.len() > 200 {
        return Err(KmsError::InvalidConfig(
            "setting `key-id` must be 1..=200 bytes".into(),
        ));
    }
    let key = cipher::Key::from_base64(&required("key")?)
        .map_err(|e| KmsError::InvalidConfig(format!("setting `key`: {e}")))?;
    let current = Rc::new(Current { key_id, key });
    Ok(CURRENT.with(|cell| cell.get_or_init(|| current).clone()))
}

/// Runs `f` with the key named `key_id`: the current key or a retired one.
fn with_key<T>(key_id: &str, f: impl FnOnce(&cipher::Key) -> T) -> Result<T, KmsError> {
    let current = current_key()?;
    if key_id == current.key_id {
        return Ok(f(&current.key));
    }
    let name = format!("retired-key.{key_id}");
    match setting(&name)? {
        Some(encoded) => cipher::Key::from_base64(&encoded)
            .map(|key| f(&key))
            .map_err(|e| KmsError::InvalidConfig(format!("setting `{name}`: {e}"))),
        None => Err(KmsError::UnknownKey(format!("no key with id {key_id:?}"))),
    }
}
