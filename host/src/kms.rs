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
}
