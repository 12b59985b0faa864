//! The trait a provider implements.

use std::fmt;

use crate::{DecryptItem, Encrypted, KmsError, Settings, StatusInfo};

/// A KMS provider: the four calls of `kmsgate:provider/kms`, and optionally
/// `decrypt-batch`, on a value made from the operator's settings.
///
/// [`export!`](crate::export!) keeps one value per Wasm instance: made by
/// [`Provider::new`] on the instance's first call, then used for every call
/// that instance serves. The host may reuse an instance or start a fresh
/// one for any call, and drops it after a trap, so a provider may keep what
/// it derives from its settings (a parsed key, a URL) but must not rely on
/// anything else surviving.
///
/// Errors are values: each method's `Err` is the `kms-error` the host maps
/// to one gRPC code (see `wit/provider.wit` for which case means what).
/// A panic is a trap: keep it for bugs. No message may contain plaintext,
/// key material or credentials.
///
/// Methods take `&mut self` because an instance serves one call at a time
/// and the component model forbids re-entering it: the provider is never
/// shared, so it may keep counters or caches in plain fields, without
/// `Cell` or locks.
pub trait Provider: Sized + 'static {
    /// Makes the provider from its settings; no other call runs before it.
    /// Check and parse the settings here (failing with
    /// [`KmsError::InvalidConfig`] naming the setting); leave the backend
    /// for [`Provider::init`]. If this fails, the call that triggered it
    /// (usually `init`) fails with its error, and the next call tries again.
    fn new(settings: &Settings) -> Result<Self, KmsError>;

    /// Checks, where cheap, that the backend is reachable. Called when the
    /// provider is loaded (and by `kmsgate check`); an error refuses the
    /// load, except `unavailable`, which is reported but lets the provider
    /// load (backends may start later). By default: nothing beyond `new`.
    fn init(&mut self) -> Result<(), KmsError> {
        Ok(())
    }

    /// The key id that `encrypt` uses now, and the backend's health.
    /// Polled by the host in the background.
    fn status(&mut self) -> Result<StatusInfo, KmsError>;

    /// Encrypts `request.plaintext` (a data encryption key, never empty in
    /// practice) under `request.key_id`, the key id the host last got from
    /// [`Provider::status`]. The returned `key_id` must equal the request's.
    fn encrypt(&mut self, request: EncryptRequest) -> Result<Encrypted, KmsError>;

    /// Decrypts a ciphertext this provider produced; the request's `key_id`
    /// and `annotations` are exactly what `encrypt` returned.
    fn decrypt(&mut self, request: DecryptRequest) -> Result<Vec<u8>, KmsError>;

    /// Decrypts many ciphertexts: one result per item, in order, each
    /// meaning what [`Provider::decrypt`] would have returned for it; the
    /// outer error fails every item (backend down, bad settings). Called
    /// only if the provider is exported with `export!(P, batch)`; worth
    /// overriding when the backend takes many ciphertexts in one request.
    /// By default: one `decrypt` per item.
    fn decrypt_batch(
        &mut self,
        items: Vec<DecryptRequest>,
    ) -> Result<Vec<Result<Vec<u8>, KmsError>>, KmsError> {
        Ok(items.into_iter().map(|item| self.decrypt(item)).collect())
    }
}

/// The arguments of `kms.encrypt`. Its `Debug` shows the plaintext's
/// length only.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptRequest {
    /// Identifies the request, for logs.
    pub uid: String,
    /// The key id to encrypt under: the one `status` last reported.
    pub key_id: String,
    /// The data encryption key to encrypt. Never log it.
    pub plaintext: Vec<u8>,
}

impl fmt::Debug for EncryptRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptRequest")
            .field("uid", &self.uid)
            .field("key_id", &self.key_id)
            .field(
                "plaintext",
                &format_args!("<{} bytes>", self.plaintext.len()),
            )
            .finish()
    }
}

/// The arguments of `kms.decrypt`: the record a batch decrypt carries per
/// item (`uid`, `key_id`, `ciphertext`, `annotations`).
pub type DecryptRequest = DecryptItem;

impl StatusInfo {
    /// A healthy status for `key_id`, with `detail` for operators.
    pub fn healthy(key_id: impl Into<String>, detail: impl Into<String>) -> StatusInfo {
        StatusInfo {
            key_id: key_id.into(),
            healthy: true,
            detail: detail.into(),
        }
    }
}

impl Encrypted {
    /// A ciphertext under `key_id`, with no annotations (the usual case).
    pub fn new(ciphertext: Vec<u8>, key_id: String) -> Encrypted {
        Encrypted {
            ciphertext,
            key_id,
            annotations: Vec::new(),
        }
    }
}
