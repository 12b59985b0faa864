//! The domain seam: what the gateway needs from a provider. The gRPC layer
//! depends on this trait, not on wasmtime; [`crate::wasm::WasmProvider`] is
//! one implementation, tests use in-process fakes.

use async_trait::async_trait;

use crate::error::ProviderError;
use crate::limits::Annotations;
use crate::secret::Plaintext;

/// A provider's view of its backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderStatus {
    /// The provider's own key id (without the gateway's prefix).
    pub key_id: String,
    pub healthy: bool,
    /// For operators only; never sent to the apiserver.
    pub detail: String,
}

/// What `encrypt` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encrypted {
    pub ciphertext: Vec<u8>,
    /// The provider's own key id (without the gateway's prefix).
    pub key_id: String,
    pub annotations: Annotations,
}

/// One decrypt of a batch: the arguments of [`KmsProvider::decrypt`].
#[derive(Debug, Clone)]
pub struct DecryptItem {
    pub uid: String,
    pub key_id: String,
    pub ciphertext: Vec<u8>,
    pub annotations: Annotations,
}

/// What a batch returns: one result per item, in order, or one error for
/// all of them.
pub type BatchResult = Result<Vec<Result<Plaintext, ProviderError>>, ProviderError>;

/// How a provider wants its decrypts batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Decrypts per [`KmsProvider::decrypt_batch`] call, at most.
    pub max_items: usize,
    /// Batches in flight at once, at most.
    pub max_in_flight: usize,
}

/// A KMS provider. Implementations must be cheap to call concurrently.
#[async_trait]
pub trait KmsProvider: Send + Sync + 'static {
    /// Asks the backend for the current key id and health. Called in the
    /// background, never on the apiserver's Status path.
    async fn status(&self) -> Result<ProviderStatus, ProviderError>;

    /// Encrypts under `key_id`, the key id from the last successful
    /// [`KmsProvider::status`].
    async fn encrypt(
        &self,
        uid: &str,
        key_id: &str,
        plaintext: &Plaintext,
    ) -> Result<Encrypted, ProviderError>;

    async fn decrypt(
        &self,
        uid: &str,
        key_id: &str,
        ciphertext: &[u8],
        annotations: &Annotations,
    ) -> Result<Plaintext, ProviderError>;

    /// Whether the gateway should coalesce concurrent decrypts into
    /// [`KmsProvider::decrypt_batch`] calls, and how. `None` (the default):
    /// one `decrypt` per ciphertext.
    fn batching(&self) -> Option<Batching> {
        None
    }

    /// Decrypts every item, each judged on its own. The gateway sends at
    /// most [`Batching::max_items`] items. The default decrypts them one
    /// after another.
    async fn decrypt_batch(&self, items: Vec<DecryptItem>) -> BatchResult {
        let mut results = Vec::with_capacity(items.len());
        for item in &items {
            results.push(
                self.decrypt(&item.uid, &item.key_id, &item.ciphertext, &item.annotations)
                    .await,
            );
        }
        Ok(results)
    }
}
