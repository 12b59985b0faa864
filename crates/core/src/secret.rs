//! Redacting wrappers for the values that must never reach a log line, an
//! error message or a `Debug` print: plaintext (DEKs) and credentials.

use std::fmt;

use zeroize::Zeroizing;

/// Plaintext handed to or returned by a provider: in Kubernetes, a data
/// encryption key. Zeroed on drop; `Debug` prints only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    pub fn new(bytes: Vec<u8>) -> Self {
        Plaintext(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Hands the bytes on (to a gRPC response); the caller owns them now.
    pub fn into_vec(mut self) -> Vec<u8> {
        std::mem::take(&mut *self.0)
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext({} bytes, redacted)", self.0.len())
    }
}

/// A credential (a Vault token, a password) resolved by the host from a file
/// or an environment variable. It is attached to outbound requests by the
/// host and never enters a provider's sandbox.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(Zeroizing::new(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let plaintext = Plaintext::new(b"dek-bytes".to_vec());
        assert_eq!(format!("{plaintext:?}"), "Plaintext(9 bytes, redacted)");
        let secret = Secret::new("s.token".into());
        assert!(!format!("{secret:?}").contains("s.token"));
    }
}
