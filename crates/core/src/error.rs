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
    /// The call ran out of wall-clock time, after this many ms: the
    /// caller's deadline, or `limits.call_timeout_ms` while the guest ran or
    /// waited on something other than its backend (a timer). The message
    /// names which. (`call_timeout_ms` passing while it waited on its
    /// backend is [`ProviderError::Unavailable`]; the CPU budget is
    /// [`ProviderError::CpuBudgetExceeded`].)
    #[error("no answer within {0} ms: {1}")]
    TimedOut(u64, TimeLimit),
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

/// Which wall-clock limit a call ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeLimit {
    /// The caller's own deadline (`grpc-timeout`).
    Caller,
    /// The provider's `limits.call_timeout_ms`.
    CallTimeout,
}

impl std::fmt::Display for TimeLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeLimit::Caller => "the caller's deadline",
            TimeLimit::CallTimeout => "limits.call_timeout_ms",
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_names_the_limit_it_hit() {
        let caller = ProviderError::TimedOut(40, TimeLimit::Caller).to_string();
        let own = ProviderError::TimedOut(5000, TimeLimit::CallTimeout).to_string();
        let cpu = ProviderError::CpuBudgetExceeded(1000).to_string();
        assert!(caller.contains("the caller's deadline"), "{caller}");
        assert!(own.contains("limits.call_timeout_ms"), "{own}");
        assert!(cpu.contains("limits.cpu_ms"), "{cpu}");
    }
}
