//! The ciphertext format and AES-256-GCM, in plain Rust so it is tested
//! natively (`cargo test -p local-aes`).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use kmsgate_provider::base64;

/// The only format version so far; the first byte of every ciphertext.
const FORMAT_V1: u8 = 1;
pub const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// A 256-bit key, expanded for AES-256-GCM once, when it is read. Its
/// `Debug` never shows the key; its round keys are wiped on drop (the
/// `zeroize` feature of `aes-gcm`).
pub struct Key(Aes256Gcm);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(redacted)")
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    KeyEncoding,
    KeyLength(usize),
    TooShort,
    UnknownFormat(u8),
    Authentication,
    Encryption,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::KeyEncoding => f.write_str("key is not valid base64"),
            Error::KeyLength(n) => write!(f, "key must be 32 bytes, got {n}"),
            Error::TooShort => f.write_str("ciphertext is too short"),
            Error::UnknownFormat(v) => write!(f, "unknown ciphertext format {v}"),
            Error::Authentication => {
                f.write_str("ciphertext failed authentication (tampered or wrong key)")
            }
            Error::Encryption => f.write_str("encryption failed"),
        }
    }
}

impl Key {
    pub fn from_base64(encoded: &str) -> Result<Key, Error> {
        let mut bytes = base64::decode(encoded.trim()).map_err(|_| Error::KeyEncoding)?;
        let key = Aes256Gcm::new_from_slice(&bytes).map_err(|_| Error::KeyLength(bytes.len()));
        bytes.fill(0);
        key.map(Key)
    }
}

/// Encrypts `plaintext` with a caller-chosen random `nonce`.
pub fn seal(
    key: &Key,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let sealed = key
        .0
        .encrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| Error::Encryption)?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

pub fn open(key: &Key, aad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, Error> {
    let (&format, rest) = ciphertext.split_first().ok_or(Error::TooShort)?;
    if format != FORMAT_V1 {
        return Err(Error::UnknownFormat(format));
    }
    if rest.len() < NONCE_LEN + TAG_LEN {
        return Err(Error::TooShort);
    }
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    key.0
        .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
        .map_err(|_| Error::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Key {
        Key::from_base64(&base64::encode([byte; 32])).unwrap()
    }

    #[test]
    fn round_trip() {
        let sealed = seal(&key(7), &[1; NONCE_LEN], b"k1", b"dek").unwrap();
        assert_eq!(open(&key(7), b"k1", &sealed).unwrap(), b"dek");
    }

    #[test]
    fn tampering_wrong_key_and_wrong_key_id_fail_authentication() {
        let mut sealed = seal(&key(7), &[1; NONCE_LEN], b"k1", b"dek").unwrap();
        assert_eq!(open(&key(8), b"k1", &sealed), Err(Error::Authentication));
        assert_eq!(open(&key(7), b"k2", &sealed), Err(Error::Authentication));
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(open(&key(7), b"k1", &sealed), Err(Error::Authentication));
    }

    #[test]
    fn garbage_is_rejected_by_shape() {
        assert_eq!(open(&key(7), b"k1", b""), Err(Error::TooShort));
        assert_eq!(open(&key(7), b"k1", &[1, 2, 3]), Err(Error::TooShort));
        assert_eq!(open(&key(7), b"k1", &[9; 40]), Err(Error::UnknownFormat(9)));
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert_eq!(Key::from_base64("%%").unwrap_err(), Error::KeyEncoding);
        assert_eq!(
            Key::from_base64(&base64::encode([0; 16])).unwrap_err(),
            Error::KeyLength(16)
        );
    }
}
