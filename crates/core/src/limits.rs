//! The limits kube-apiserver enforces on a KMS plugin, checked at the gateway
//! so that a misbehaving caller or provider fails here, clearly, instead of
//! deep inside the apiserver.

use std::collections::BTreeMap;

/// Longest key id the apiserver accepts (v2).
pub const MAX_KEY_ID_BYTES: usize = 1024;
/// Longest v2 ciphertext the apiserver accepts. kmsgate holds a provider's
/// ciphertext to it for v1beta1 too (inside its envelope).
pub const MAX_CIPHERTEXT_BYTES: usize = 1024;
/// Annotation keys plus values must stay within this many bytes.
pub const MAX_ANNOTATIONS_BYTES: usize = 32 * 1024;
/// Longest plaintext kmsgate accepts: a ciphertext is never shorter than
/// its plaintext, so a longer one could not come back within
/// [`MAX_CIPHERTEXT_BYTES`]. (The apiserver sends 32-byte DEKs or seeds.)
pub const MAX_PLAINTEXT_BYTES: usize = MAX_CIPHERTEXT_BYTES;

/// KMS v2 annotations: key (a DNS name) to opaque bytes.
pub type Annotations = BTreeMap<String, Vec<u8>>;

pub fn check_key_id(key_id: &str) -> Result<(), String> {
    match key_id.len() {
        0 => Err("key id is empty".into()),
        n if n > MAX_KEY_ID_BYTES => Err(format!(
            "key id is {n} bytes, the limit is {MAX_KEY_ID_BYTES}"
        )),
        _ => Ok(()),
    }
}

pub fn check_ciphertext(ciphertext: &[u8]) -> Result<(), String> {
    match ciphertext.len() {
        0 => Err("ciphertext is empty".into()),
        n if n > MAX_CIPHERTEXT_BYTES => Err(format!(
            "ciphertext is {n} bytes, the limit is {MAX_CIPHERTEXT_BYTES}"
        )),
        _ => Ok(()),
    }
}

pub fn check_plaintext(plaintext: &[u8]) -> Result<(), String> {
    match plaintext.len() {
        0 => Err("plaintext is empty".into()),
        n if n > MAX_PLAINTEXT_BYTES => Err(format!(
            "plaintext is {n} bytes, the limit is {MAX_PLAINTEXT_BYTES} (no ciphertext of it would fit the apiserver's {MAX_CIPHERTEXT_BYTES})"
        )),
        _ => Ok(()),
    }
}

pub fn check_annotations(annotations: &Annotations) -> Result<(), String> {
    let mut total = 0;
    for (key, value) in annotations {
        if !is_fully_qualified_domain_name(key) {
            return Err(format!(
                "annotation key {key:?} is not a lowercase fully qualified domain name"
            ));
        }
        total += key.len() + value.len();
    }
    if total > MAX_ANNOTATIONS_BYTES {
        return Err(format!(
            "annotations are {total} bytes, the limit is {MAX_ANNOTATIONS_BYTES}"
        ));
    }
    Ok(())
}

/// The apiserver's rule: an RFC 1123 subdomain (lowercase letters, digits,
/// `-` and `.`, at most 253 bytes, labels start and end alphanumeric, at most
/// 63 bytes each) with at least two labels. A trailing dot is allowed.
pub fn is_fully_qualified_domain_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() >= 2 && labels.iter().all(|label| is_dns_label(label))
}

fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && alnum(&bytes[0])
        && alnum(&bytes[bytes.len() - 1])
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::simple("kms.example.com", true)]
    #[case::two_labels("a.b", true)]
    #[case::trailing_dot("kms.example.com.", true)]
    #[case::digits_and_dash("v2-key.k8s.io", true)]
    #[case::single_label("localhost", false)]
    #[case::uppercase("KMS.example.com", false)]
    #[case::slash("example.com/key", false)]
    #[case::leading_dash("-a.example.com", false)]
    #[case::empty_label("a..b", false)]
    #[case::empty("", false)]
    fn fqdn_rule(#[case] name: &str, #[case] ok: bool) {
        assert_eq!(is_fully_qualified_domain_name(name), ok);
    }

    #[rstest]
    #[case::empty(0, false)]
    #[case::one(1, true)]
    #[case::at_limit(MAX_CIPHERTEXT_BYTES, true)]
    #[case::over_limit(MAX_CIPHERTEXT_BYTES + 1, false)]
    fn ciphertext_size(#[case] len: usize, #[case] ok: bool) {
        assert_eq!(check_ciphertext(&vec![1; len]).is_ok(), ok);
    }

    #[rstest]
    #[case::empty(0, false)]
    #[case::at_limit(MAX_KEY_ID_BYTES, true)]
    #[case::over_limit(MAX_KEY_ID_BYTES + 1, false)]
    fn key_id_size(#[case] len: usize, #[case] ok: bool) {
        assert_eq!(check_key_id(&"k".repeat(len)).is_ok(), ok);
    }

    #[test]
    fn empty_plaintext_is_refused() {
        assert!(check_plaintext(b"").is_err());
        assert!(check_plaintext(&vec![0; MAX_PLAINTEXT_BYTES + 1]).is_err());
        assert!(check_plaintext(b"dek").is_ok());
    }

    #[test]
    fn annotations_total_size_is_capped() {
        let mut annotations = Annotations::new();
        annotations.insert("a.example.com".into(), vec![0; MAX_ANNOTATIONS_BYTES]);
        assert!(check_annotations(&annotations).is_err());
        annotations.insert("a.example.com".into(), vec![0; 16]);
        assert!(check_annotations(&annotations).is_ok());
    }
}
