//! Errors become gRPC statuses here and nowhere else.

use kmsgate_core::error::{KmsError, ProviderError};
use tonic::{Code, Status};

/// The gRPC code for `error`. Bad input is never INTERNAL; INTERNAL is
/// kept for provider bugs.
pub fn code(error: &KmsError) -> Code {
    match error {
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
            ProviderError::CpuBudgetExceeded(_) | ProviderError::TimedOut(..) => {
                Code::DeadlineExceeded
            }
            ProviderError::MemoryExhausted(_) | ProviderError::Busy(_) => Code::ResourceExhausted,
            ProviderError::Internal(_) | ProviderError::Trapped(_) | ProviderError::Contract(_) => {
                Code::Internal
            }
        },
    }
}

/// Longest message sent to the apiserver.
const MAX_STATUS_MESSAGE: usize = 1024;

/// `error` as the status the caller gets.
pub fn status(error: KmsError) -> Status {
    // Messages are built from provider-chosen strings (already cut and
    // cleaned where they entered) and our own text; neither ever
    // carries plaintext or credentials (see `secret.rs`, `leak.rs`).
    // The cap is a backstop for whatever a message quotes.
    let message = kmsgate_core::sanitize::clean(&error.to_string(), MAX_STATUS_MESSAGE);
    Status::new(code(&error), message)
}

#[cfg(test)]
mod tests {
    use kmsgate_core::error::{Action, TimeLimit};

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
                matches!(code(&error), Code::InvalidArgument | Code::NotFound),
                "{error}"
            );
        }
    }

    #[test]
    fn limits_and_outages_have_their_own_codes() {
        assert_eq!(
            code(&provider(ProviderError::Unavailable("x".into()))),
            Code::Unavailable
        );
        assert_eq!(
            code(&provider(ProviderError::CpuBudgetExceeded(5))),
            Code::DeadlineExceeded
        );
        assert_eq!(
            code(&provider(ProviderError::TimedOut(5, TimeLimit::Caller))),
            Code::DeadlineExceeded
        );
        assert_eq!(
            code(&provider(ProviderError::Busy("full".into()))),
            Code::ResourceExhausted
        );
        assert_eq!(
            code(&provider(ProviderError::MemoryExhausted(64))),
            Code::ResourceExhausted
        );
        assert_eq!(
            code(&provider(ProviderError::InvalidConfig("x".into()))),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(&provider(ProviderError::Trapped("x".into()))),
            Code::Internal
        );
    }
}
