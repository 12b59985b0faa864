//! What can go wrong serving a KMS call. The daemon's `grpc::status` is
//! the one place where these become gRPC status codes.

use std::fmt;

use thiserror::Error;

/// The operation a provider was asked to do, for error messages and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Init,
    Status,
    Encrypt,
    Decrypt,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Init => "init",
            Action::Status => "status",
            Action::Encrypt => "encrypt",
            Action::Decrypt => "decrypt",
        })
    }
}

/// A failure of one provider call. The first seven cases mirror the WIT
/// `kms-error` variant (what a provider reports); the rest are raised by the
/// host around the sandbox.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProviderError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("invalid ciphertext: {0}")]
    InvalidCiphertext(String),
    #[error("unknown key: {0}")]
    UnknownKey(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The guest trapped (panic, unreachable, out of bounds). The instance is
    /// thrown away.
    #[error("provider trapped: {0}")]
    Trapped(String),
    /// The guest's own work (and the host's work on its behalf) used up
    /// `limits.cpu_ms`. Time spent waiting, on the backend or a timer, does
    /// not count.
    #[error("CPU budget of {0} ms used up (limits.cpu_ms)")]
    CpuBudgetExceeded(u64),
    /// The call ran out of wall-clock time: the caller's deadline, or
    /// `limits.call_timeout_ms` while the guest ran or waited on something
    /// other than its backend (a timer). (`call_timeout_ms` passing while
    /// it waited on its backend is [`ProviderError::Unavailable`].)
    #[error("no answer within {0} ms (limits.call_timeout_ms or the caller's deadline)")]
    TimedOut(u64),
    /// Every instance the provider may have is busy and its queue is full,
    /// or no instance came free in time. Nothing ran.
    #[error("provider busy: {0}")]
    Busy(String),
    /// The guest tried to grow its memory past the provider's cap.
    #[error("memory cap of {0} MiB reached")]
    MemoryExhausted(u64),
    /// The provider answered with something the apiserver would reject
    /// (an over-long ciphertext, a bad annotation, a wrong key id).
    #[error("provider broke the KMS contract: {0}")]
    Contract(String),
}

impl From<std::convert::Infallible> for ProviderError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// A failure of a KMS call, as the gRPC layer sees it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KmsError {
    /// The request breaks the KMS API's own rules (checked before any
    /// provider runs).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The key id names no loaded provider.
    #[error("no provider named {0:?} is loaded (from the key id's prefix)")]
    UnknownProvider(String),
    /// The primary provider has never reported a key id, so nothing can be
    /// encrypted yet.
    #[error("provider {provider} is not ready: {reason}")]
    NotReady { provider: String, reason: String },
    #[error("provider {provider} failed to {action}: {error}")]
    Provider {
        provider: String,
        action: Action,
        error: ProviderError,
    },
}
