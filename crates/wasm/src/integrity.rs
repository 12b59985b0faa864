//! Is this component the one the operator meant to run? The only gate
//! between reading a component file and compiling it.
//!
//! An optional SHA-256 pin per provider (`sha256 = "..."` in the config). A
//! mismatch refuses the load, and on a reload the old version keeps
//! serving. Signatures by the operator's trusted keys are the other gate,
//! checked right after it on the same bytes ([`crate::signature`]).

use sha2::{Digest, Sha256};

/// The hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks `bytes` against the operator's pin, if any. Returns the digest.
pub fn verify(pin: Option<&str>, bytes: &[u8]) -> Result<String, String> {
    let digest = sha256_hex(bytes);
    match pin {
        Some(pin) if !pin.eq_ignore_ascii_case(&digest) => Err(format!(
            "component sha256 is {digest}, but the config pins {pin}; refusing to load it"
        )),
        _ => Ok(digest),
    }
}

/// A pin must be 64 hex digits.
pub fn is_valid_pin(pin: &str) -> bool {
    pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_match_or_refuse() {
        let digest = sha256_hex(b"component");
        assert_eq!(verify(None, b"component").unwrap(), digest);
        assert_eq!(
            verify(Some(&digest.to_uppercase()), b"component").unwrap(),
            digest
        );
        let error = verify(Some(&"0".repeat(64)), b"component").unwrap_err();
        assert!(error.contains("refusing"), "{error}");
        assert!(is_valid_pin(&digest) && !is_valid_pin("abc"));
    }
}
