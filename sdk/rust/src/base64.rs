//! Standard base64 (RFC 4648 alphabet, with padding), the way JSON APIs
//! such as Vault's carry bytes.

use ::base64::Engine as _;
use ::base64::engine::general_purpose::STANDARD;

pub use ::base64::DecodeError;

/// Encodes `bytes`.
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    STANDARD.encode(bytes)
}

/// Decodes `text`, which must be padded standard base64 without
/// whitespace. The error does not quote the input.
pub fn decode(text: impl AsRef<[u8]>) -> Result<Vec<u8>, DecodeError> {
    STANDARD.decode(text)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_refuses_garbage() {
        assert_eq!(super::encode(b"dek"), "ZGVr");
        assert_eq!(super::decode("ZGVr").unwrap(), b"dek");
        assert!(super::decode("%%").is_err());
        assert!(super::decode("ZGVr ").is_err());
    }
}
