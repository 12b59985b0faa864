//! Key ids as the apiserver sees them: `<provider>/<provider's key id>`.
//! The prefix routes a decrypt to the provider that encrypted, so every
//! provider can serve old ciphertexts after the primary changes.

use crate::error::ProviderError;
use crate::limits;

/// Separates the provider name from the provider's own key id.
pub const SEPARATOR: char = '/';

/// `<provider>/<key id>`: the key id the apiserver sees.
pub fn namespaced(provider: &str, key_id: &str) -> String {
    format!("{provider}{SEPARATOR}{key_id}")
}

/// The provider name and the provider's own key id of a namespaced key id;
/// `None` without a separator or with nothing after it.
pub fn split(key_id: &str) -> Option<(&str, &str)> {
    key_id
        .split_once(SEPARATOR)
        .filter(|(_, inner)| !inner.is_empty())
}

/// A provider's own key id must be non-empty, printable (it is logged and
/// sent to the apiserver) and leave room for the prefix.
pub fn check_reported(provider: &str, key_id: &str) -> Result<(), ProviderError> {
    if key_id.is_empty() {
        return Err(ProviderError::Contract(
            "status reported an empty key id".into(),
        ));
    }
    if key_id.chars().any(char::is_control) {
        return Err(ProviderError::Contract(
            "status reported a key id with control characters".into(),
        ));
    }
    limits::check_key_id(&namespaced(provider, key_id)).map_err(ProviderError::Contract)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_a_provider_reports_are_checked() {
        assert!(check_reported("p", "k1").is_ok());
        for bad in ["", "k\n1", "k\u{1b}[31m", &"k".repeat(1024)] {
            assert!(check_reported("p", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn namespaced_ids_split_back() {
        assert_eq!(
            split(&namespaced("vault", "kube:v3")),
            Some(("vault", "kube:v3"))
        );
        // Only the first separator counts: a provider's id may hold more.
        assert_eq!(split("p/a/b"), Some(("p", "a/b")));
        for bad in ["", "p", "p/"] {
            assert_eq!(split(bad), None, "{bad:?}");
        }
    }
}
