//! The domain seam: what the gateway needs from a provider. The gRPC layer
//! depends on this trait, not on wasmtime; `kmsgate_wasm::WasmProvider` is
//! one implementation, tests use in-process fakes.

use std::time::Instant;

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

/// Who is calling a provider, and by when the answer is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// Answer by then: the caller's gRPC deadline, less a margin. `None`:
    /// only the provider's own limits apply.
    pub deadline: Option<Instant>,
    /// The host's own call (status refresh, init, swap canary): it never
    /// queues behind callers, so health checks and swaps work while a
    /// provider is saturated.
    pub control: bool,
}

impl Call {
    /// The host's own call, bounded by the provider's limits only.
    pub const CONTROL: Call = Call {
        deadline: None,
        control: true,
    };

    /// A caller's call, to be answered by `deadline` if it has one.
    pub fn caller(deadline: Option<Instant>) -> Call {
        Call {
            deadline,
            control: false,
        }
    }
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
    /// Decrypts waiting for a batch, at most; more fail at once.
    pub max_queued: usize,
}

/// What a provider holds now, for operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Instances alive for callers (busy or idle).
    pub instances: u64,
    /// Calls waiting for an instance.
    pub queued: u64,
    /// Guest memory of all its instances, in bytes.
    pub memory_bytes: u64,
}

/// One credential the host holds for a provider (an auth), for operators:
/// its state, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialStatus {
    /// The auth's name in the config.
    pub name: String,
    /// Its kind (`vault-approle`, `aws-sigv4`, ...).
    pub kind: &'static str,
    /// `pending` (first login running), `valid`, or `failed` (none held).
    pub state: &'static str,
    /// Time left on the credential; `None` when it has no end or none is
    /// held.
    pub expires_in: Option<std::time::Duration>,
    /// Logins (a lookup of a given token counts as one).
    pub logins: u64,
    pub renewals: u64,
    /// Failed logins or renewals.
    pub failures: u64,
    /// The last problem, while one stands; no secret in it.
    pub detail: String,
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
        call: Call,
        uid: &str,
        key_id: &str,
        plaintext: &Plaintext,
    ) -> Result<Encrypted, ProviderError>;

    async fn decrypt(
        &self,
        call: Call,
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

    /// What the provider holds now; zero for providers without a quota.
    fn usage(&self) -> Usage {
        Usage::default()
    }

    /// The credentials the host holds for it; none by default.
    fn credentials(&self) -> Vec<CredentialStatus> {
        Vec::new()
    }

    /// Decrypts every item, each judged on its own. The gateway sends at
    /// most [`Batching::max_items`] items. The default decrypts them one
    /// after another.
    async fn decrypt_batch(&self, call: Call, items: Vec<DecryptItem>) -> BatchResult {
        let mut results = Vec::with_capacity(items.len());
        for item in &items {
            results.push(
                self.decrypt(
                    call,
                    &item.uid,
                    &item.key_id,
                    &item.ciphertext,
                    &item.annotations,
                )
                .await,
            );
        }
        Ok(results)
    }
}
