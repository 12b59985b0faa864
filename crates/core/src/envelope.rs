//! The KMS v1beta1 ciphertext format. v1beta1 has no key id field, so
//! kmsgate stores the namespaced key id inside the ciphertext:
//!
//! ```text
//! "KG" | version: u8 = 1 | key id length: u16 big-endian | key id | provider ciphertext
//! ```
//!
//! The key id routes Decrypt to the provider that encrypted, exactly as the
//! v2 `key_id` field does. Annotations cannot be carried, so v1beta1
//! Encrypt refuses providers that return any.

const MAGIC: &[u8; 2] = b"KG";
const VERSION: u8 = 1;
const HEADER_LEN: usize = MAGIC.len() + 1 + 2;

pub fn seal(key_id: &str, ciphertext: &[u8]) -> Vec<u8> {
    let key_id_len = u16::try_from(key_id.len()).expect("key ids are at most 1 KiB (limits.rs)");
    let mut out = Vec::with_capacity(HEADER_LEN + key_id.len() + ciphertext.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&key_id_len.to_be_bytes());
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(ciphertext);
    out
}

/// Splits an envelope into (key id, provider ciphertext).
pub fn open(envelope: &[u8]) -> Result<(&str, &[u8]), String> {
    if envelope.len() < HEADER_LEN || &envelope[..2] != MAGIC {
        return Err("not a kmsgate v1beta1 ciphertext".into());
    }
    if envelope[2] != VERSION {
        return Err(format!(
            "unknown kmsgate ciphertext version {}",
            envelope[2]
        ));
    }
    let key_id_len = u16::from_be_bytes([envelope[3], envelope[4]]) as usize;
    let rest = &envelope[HEADER_LEN..];
    if rest.len() < key_id_len {
        return Err("truncated kmsgate ciphertext".into());
    }
    let (key_id, ciphertext) = rest.split_at(key_id_len);
    let key_id =
        std::str::from_utf8(key_id).map_err(|_| "key id in ciphertext is not UTF-8".to_string())?;
    Ok((key_id, ciphertext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let sealed = seal("vault/kube:v1", b"vault:v1:abc");
        assert_eq!(
            open(&sealed).unwrap(),
            ("vault/kube:v1", &b"vault:v1:abc"[..])
        );
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(open(b"").is_err());
        assert!(open(b"XX\x01\x00\x01k").is_err());
        assert!(open(b"KG\x02\x00\x01kc").is_err());
        assert!(open(b"KG\x01\x00\x09abc").is_err());
    }
}
