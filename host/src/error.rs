//! What can go wrong serving a KMS call, and the one place where that is
//! turned into a gRPC status code.

use std::fmt;

use thiserror::Error;
use tonic::{Code, Status};

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

impl KmsError {
    /// The gRPC code for this error. Bad input is never INTERNAL; INTERNAL
    /// is kept for provider bugs.
    pub fn code(&self) -> Code {
        match self {
            KmsError::InvalidRequest(_) => Code::InvalidArgument,
            KmsError::UnknownProvider(_) => Code::NotFound,
            KmsError::NotReady { .. } => Code::Unavailable,
            KmsError::Provider { error, .. } => match error {
                ProviderError::InvalidArgument(_) | ProviderError::InvalidCiphertext(_) => {
                    Code::InvalidArgument
                }
                ProviderError::UnknownKey(_) => Code::NotFound,
                ProviderError::PermissionDenied(_) => Code::PermissionDenied,
                ProviderError::Unavailable(_) => Code::Unavailable,
                ProviderError::InvalidConfig(_) => Code::FailedPrecondition,
                ProviderError::CpuBudgetExceeded(_) | ProviderError::TimedOut(_) => {
                    Code::DeadlineExceeded
                }
                ProviderError::MemoryExhausted(_) | ProviderError::Busy(_) => {
                    Code::ResourceExhausted
                }
                ProviderError::Internal(_)
                | ProviderError::Trapped(_)
                | ProviderError::Contract(_) => Code::Internal,
            },
        }
    }
}

/// Longest message sent to the apiserver.
const MAX_STATUS_MESSAGE: usize = 1024;

impl From<KmsError> for Status {
    fn from(error: KmsError) -> Status {
        // Messages are built from provider-chosen strings (already cut and
        // cleaned where they entered) and our own text; neither ever
        // carries plaintext or credentials (see `secret.rs`, `leak.rs`).
        // The cap is a backstop for whatever a message quotes.
        let message = crate::sanitize::clean(&error.to_string(), MAX_STATUS_MESSAGE);
        Status::new(error.code(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(error: ProviderError) -> KmsError {
        KmsError::Provider {
            provider: "p".into(),
            action: Action::Decrypt,
            error,
        }
    }

    #[test]
    fn bad_input_is_never_internal() {
        for error in [
            KmsError::InvalidRequest("x".into()),
            KmsError::UnknownProvider("x".into()),
            provider(ProviderError::InvalidArgument("x".into())),
            provider(ProviderError::InvalidCiphertext("x".into())),
            provider(ProviderError::UnknownKey("x".into())),
        ] {
            assert!(
                matches!(error.code(), Code::InvalidArgument | Code::NotFound),
                "{error}"
            );
        }
    }

    #[test]
    fn limits_and_outages_have_their_own_codes() {
        assert_eq!(
            provider(ProviderError::Unavailable("x".into())).code(),
            Code::Unavailable
        );
        assert_eq!(
            provider(ProviderError::CpuBudgetExceeded(5)).code(),
            Code::DeadlineExceeded
        );
        assert_eq!(
            provider(ProviderError::TimedOut(5)).code(),
            Code::DeadlineExceeded
        );
        assert_eq!(
            provider(ProviderError::Busy("full".into())).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            provider(ProviderError::MemoryExhausted(64)).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            provider(ProviderError::InvalidConfig("x".into())).code(),
            Code::FailedPrecondition
        );
        assert_eq!(
            provider(ProviderError::Trapped("x".into())).code(),
            Code::Internal
        );
    }
}
