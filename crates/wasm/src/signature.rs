//! Who signed this component? Detached signatures over the exact bytes
//! that are compiled, checked against the operator's trusted public keys
//! before anything else reads the component (the compile cache included: it
//! is looked up by the digest of bytes already checked).
//!
//! The formats are the ones standard tools make, so an operator never needs
//! kmsgate to sign:
//! - **ECDSA P-256 with SHA-256**, the signature DER-encoded, as `cosign
//!   sign-blob --key` writes it (base64) and `openssl dgst -sha256 -sign`
//!   writes it (binary);
//! - **Ed25519** (pure, over the whole component), as `openssl pkeyutl
//!   -sign -rawin` writes it (64 bytes, binary or base64).
//!
//! Keys are PEM `PUBLIC KEY` files (SubjectPublicKeyInfo), as `cosign
//! generate-key-pair` and `openssl pkey -pubout` write them. Several keys
//! may be trusted at once, so a signing key can be rotated: sign with the
//! new key, trust both, then drop the old one.

use std::fmt;
use std::sync::Arc;

use ring::signature::{ECDSA_P256_SHA256_ASN1, ED25519, UnparsedPublicKey};

/// The largest signature file read: base64 of a DER ECDSA signature is ~100
/// bytes; this leaves room for a trailing newline and comments, not for a
/// file that is not a signature.
pub const MAX_SIGNATURE_FILE: u64 = 4096;

/// The largest public key file read.
pub const MAX_KEY_FILE: u64 = 16 * 1024;

/// A public key's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    EcdsaP256,
    Ed25519,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::EcdsaP256 => "ecdsa-p256",
            Algorithm::Ed25519 => "ed25519",
        })
    }
}

/// A public key the operator trusts to sign components.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// The operator's name for it (`[[trusted_keys]] name`).
    pub name: String,
    pub algorithm: Algorithm,
    /// The raw key: an uncompressed P-256 point or 32 Ed25519 bytes.
    raw: Vec<u8>,
    /// The hex SHA-256 of the key's SubjectPublicKeyInfo (what `openssl
    /// pkey -pubin -outform DER | sha256sum` prints), to tell keys apart.
    pub fingerprint: String,
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} sha256:{})",
            self.name,
            self.algorithm,
            &self.fingerprint[..16]
        )
    }
}

impl TrustedKey {
    /// Parses a PEM `PUBLIC KEY` (or its DER).
    pub fn parse(name: &str, text: &[u8]) -> Result<TrustedKey, String> {
        let der = match pem_body(text) {
            Some(der) => der?,
            None => text.to_vec(),
        };
        let (algorithm, raw) = spki(&der).ok_or_else(|| {
            "not an ECDSA P-256 or Ed25519 public key (a PEM PUBLIC KEY, as cosign or openssl pkey -pubout write)"
                .to_owned()
        })?;
        Ok(TrustedKey {
            name: name.to_owned(),
            algorithm,
            raw,
            fingerprint: crate::integrity::sha256_hex(&der),
        })
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let algorithm: &dyn ring::signature::VerificationAlgorithm = match self.algorithm {
            Algorithm::EcdsaP256 => &ECDSA_P256_SHA256_ASN1,
            Algorithm::Ed25519 => &ED25519,
        };
        UnparsedPublicKey::new(algorithm, &self.raw)
            .verify(message, signature)
            .is_ok()
    }
}

/// What a provider's component must satisfy: the keys that may sign it and
/// whether it must be signed. Resolved by the daemon's config from its
/// `[[trusted_keys]]`, `require_signature` and the provider's own
/// `trusted_keys` / `require_signature`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub keys: Arc<Vec<TrustedKey>>,
    pub required: bool,
}

impl Policy {
    /// What changes the outcome of [`Policy::check`] for the same bytes:
    /// part of a provider's fingerprint, so a reload that drops a key
    /// checks the serving component again.
    pub fn fingerprint(&self) -> String {
        let keys: Vec<&str> = self.keys.iter().map(|k| k.fingerprint.as_str()).collect();
        format!("required={} keys={}", self.required, keys.join(","))
    }

    /// Checks `component` against `signature` (the signature file's
    /// contents, if there is one). Ok(Some(key)) names the key that signed
    /// it; Ok(None) is an unsigned component where none is required (or no
    /// key is trusted, which leaves signatures unchecked). A signature that
    /// is present but matches no trusted key is refused even where none is
    /// required: the file beside the component says it is signed, and it
    /// is not, by anyone trusted.
    pub fn check(
        &self,
        component: &[u8],
        signature: Option<&[u8]>,
        signature_path: &std::path::Path,
    ) -> Result<Option<TrustedKey>, String> {
        let Some(signature) = signature else {
            return self.unsigned(&format!("there is none at {signature_path:?}"));
        };
        if self.keys.is_empty() {
            return self.unsigned("no key is trusted");
        }
        let decoded = decode_signature(signature);
        for key in self.keys.iter() {
            if decoded
                .iter()
                .any(|candidate| key.verifies(component, candidate))
            {
                return Ok(Some(key.clone()));
            }
        }
        Err(format!(
            "the signature at {signature_path:?} is not by a trusted key over this component (trusted: {}): a wrong key, another component's signature, a damaged signature or a changed component",
            self.key_names()
        ))
    }

    /// Checks the signatures a registry holds for an artifact (see
    /// [`CosignSignature`]) against the artifact's manifest digest: one by a
    /// trusted key whose payload names `manifest_digest` is enough. As with
    /// a file, signatures that are there but none by a trusted key over
    /// this manifest are refused even where none is required. `location`
    /// names where they were found, for messages.
    pub fn check_cosign(
        &self,
        manifest_digest: &str,
        signatures: &[CosignSignature],
        location: &str,
    ) -> Result<Option<TrustedKey>, String> {
        if signatures.is_empty() {
            return self.unsigned(&format!("the registry holds none at {location}"));
        }
        if self.keys.is_empty() {
            return self.unsigned("no key is trusted");
        }
        let mut misnamed = false;
        for key in self.keys.iter() {
            for signature in signatures {
                match signature.verify(key, manifest_digest) {
                    Ok(()) => return Ok(Some(key.clone())),
                    Err(CosignMismatch::Payload) => misnamed = true,
                    Err(CosignMismatch::Signature) => {}
                }
            }
        }
        Err(match misnamed {
            true => format!(
                "the signatures at {location} are by a trusted key but name another artifact, not manifest {manifest_digest}"
            ),
            false => format!(
                "none of the {} signature(s) at {location} is by a trusted key (trusted: {})",
                signatures.len(),
                self.key_names()
            ),
        })
    }

    /// The outcome for a component with no signature to check (`why`).
    fn unsigned(&self, why: &str) -> Result<Option<TrustedKey>, String> {
        match (self.required, self.keys.is_empty()) {
            (false, _) => Ok(None),
            (true, true) => {
                Err("a signature is required, but no key is trusted (trusted_keys)".into())
            }
            (true, false) => Err(format!("unsigned: a signature is required and {why}")),
        }
    }

    fn key_names(&self) -> String {
        let names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        names.join(", ")
    }
}

/// A signature as `cosign sign --key` stores it in a registry beside the
/// artifact it signs (cosign's signature specification): in the same
/// repository, under tag `sha256-<manifest hex>.sig`, a manifest whose
/// layers are `application/vnd.dev.cosign.simplesigning.v1+json` payloads,
/// each carrying its base64 signature in annotation
/// `dev.cosignproject.cosign/signature`. The payload is a "simple signing"
/// JSON document that names the signed manifest by digest
/// (`critical.image.docker-manifest-digest`); the manifest names the
/// component's layer by digest, and the component's bytes are checked
/// against that. So the signature covers the exact bytes compiled, through
/// two digests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CosignSignature {
    /// The signed payload, base64 (as it is kept in the pull cache).
    pub payload: String,
    /// The signature over the payload's bytes, base64.
    pub signature: String,
}

/// The payload layer's media type.
pub const COSIGN_PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation that holds the signature.
pub const COSIGN_SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The largest payload read: a simple-signing document is ~250 bytes plus
/// whatever optional claims the signer added.
pub const MAX_COSIGN_PAYLOAD: usize = 16 * 1024;

/// Why a cosign signature does not vouch for a manifest.
#[derive(Debug, PartialEq, Eq)]
enum CosignMismatch {
    /// Not a signature by this key over the payload.
    Signature,
    /// Signed, but the payload is not a cosign signature of this manifest.
    Payload,
}

impl CosignSignature {
    fn verify(&self, key: &TrustedKey, manifest_digest: &str) -> Result<(), CosignMismatch> {
        use base64::Engine;
        let engine = base64::engine::general_purpose::STANDARD;
        let (Ok(payload), Ok(signature)) = (
            engine.decode(&self.payload),
            engine.decode(self.signature.trim()),
        ) else {
            return Err(CosignMismatch::Signature);
        };
        if !key.verifies(&payload, &signature) {
            return Err(CosignMismatch::Signature);
        }
        // Only a payload whose signature verified is parsed.
        match signed_manifest(&payload).as_deref() == Some(manifest_digest) {
            true => Ok(()),
            false => Err(CosignMismatch::Payload),
        }
    }
}

/// The manifest digest a simple-signing payload names, if it is a cosign
/// image signature. Keys are matched without regard to case, as cosign's
/// own reader (Go's `encoding/json`) does, so the specification's
/// `Docker-manifest-digest` example reads too.
fn signed_manifest(payload: &[u8]) -> Option<String> {
    use serde_json::Value;
    fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
        value
            .as_object()?
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }
    let document: Value = serde_json::from_slice(payload).ok()?;
    let critical = field(&document, "critical")?;
    if field(critical, "type")?.as_str()? != "cosign container image signature" {
        return None;
    }
    let image = field(critical, "image")?;
    Some(field(image, "docker-manifest-digest")?.as_str()?.to_owned())
}

/// The signature as bytes, in the forms tools write it: base64 text
/// (cosign), or binary (openssl). Both readings are tried; a signature
/// verifies under at most one.
fn decode_signature(file: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine;
    let mut readings = vec![file.to_vec()];
    let text: Vec<u8> = file
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&text) {
        readings.push(decoded);
    }
    readings
}

/// The DER inside a PEM `PUBLIC KEY` block; `None` if `text` is not PEM.
fn pem_body(text: &[u8]) -> Option<Result<Vec<u8>, String>> {
    use base64::Engine;
    let text = std::str::from_utf8(text).ok()?;
    let begin = text.find("-----BEGIN PUBLIC KEY-----")?;
    let body = &text[begin + "-----BEGIN PUBLIC KEY-----".len()..];
    let Some(end) = body.find("-----END PUBLIC KEY-----") else {
        return Some(Err("a PEM PUBLIC KEY without its END line".into()));
    };
    let base64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(base64)
            .map_err(|e| format!("a PEM PUBLIC KEY that is not base64: {e}")),
    )
}

// DER object identifiers, with their tag and length.
const ID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const PRIME256V1: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const ID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// The algorithm and raw key of a DER SubjectPublicKeyInfo:
/// `SEQUENCE { SEQUENCE { OID, params? }, BIT STRING }`. Only the two
/// algorithms above; anything else (RSA, other curves) is `None`.
fn spki(der: &[u8]) -> Option<(Algorithm, Vec<u8>)> {
    let (info, rest) = element(der, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    let (algorithm, key) = element(info, 0x30)?;
    let (bits, rest) = element(key, 0x03)?;
    if !rest.is_empty() {
        return None;
    }
    // A BIT STRING starts with its count of unused bits: none for keys.
    let raw = bits.strip_prefix(&[0])?.to_vec();
    let kind = if algorithm == [ID_EC_PUBLIC_KEY, PRIME256V1].concat() {
        (raw.len() == 65 && raw[0] == 0x04).then_some(Algorithm::EcdsaP256)
    } else if algorithm == ID_ED25519 {
        (raw.len() == 32).then_some(Algorithm::Ed25519)
    } else {
        None
    }?;
    Some((kind, raw))
}

/// One DER element of `tag` at the start of `der`: its contents and what
/// follows it. Definite lengths up to 2 bytes (keys are small).
fn element(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = der.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = match first {
        0..=0x7f => (first as usize, rest),
        0x81 => (*rest.first()? as usize, &rest[1..]),
        0x82 => (
            u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize,
            rest.get(2..)?,
        ),
        _ => return None,
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    /// SubjectPublicKeyInfo DER around a raw key, as openssl writes it.
    fn spki_der(algorithm: &[u8], raw: &[u8]) -> Vec<u8> {
        let mut bits = vec![0x03, raw.len() as u8 + 1, 0];
        bits.extend_from_slice(raw);
        let mut inner = vec![0x30, algorithm.len() as u8];
        inner.extend_from_slice(algorithm);
        inner.extend_from_slice(&bits);
        let mut der = vec![0x30, inner.len() as u8];
        der.extend_from_slice(&inner);
        der
    }

    fn pem(der: &[u8]) -> Vec<u8> {
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n").into_bytes()
    }

    fn policy(keys: Vec<TrustedKey>, required: bool) -> Policy {
        Policy {
            keys: Arc::new(keys),
            required,
        }
    }

    #[test]
    fn ecdsa_and_ed25519_signatures_verify_and_anything_else_is_refused() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let ecdsa = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let ec_der = spki_der(
            &[ID_EC_PUBLIC_KEY, PRIME256V1].concat(),
            ecdsa.public_key().as_ref(),
        );
        let ec_key = TrustedKey::parse("ec", &pem(&ec_der)).unwrap();
        assert_eq!(ec_key.algorithm, Algorithm::EcdsaP256);

        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let ed_key =
            TrustedKey::parse("ed", &spki_der(ID_ED25519, ed.public_key().as_ref())).unwrap();
        assert_eq!(ed_key.algorithm, Algorithm::Ed25519);

        let component = b"\0asm component bytes";
        let path = std::path::Path::new("c.wasm.sig");
        let trusted = policy(vec![ec_key.clone(), ed_key.clone()], true);
        let ec_sig = ecdsa.sign(&rng, component).unwrap();
        let ed_sig = ed.sign(component);
        {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(ec_sig.as_ref());
            let signed = trusted.check(component, Some(format!("{b64}\n").as_bytes()), path);
            assert_eq!(signed.unwrap().unwrap().name, "ec", "cosign's base64");
        }
        let signed = trusted.check(component, Some(ec_sig.as_ref()), path);
        assert_eq!(signed.unwrap().unwrap().name, "ec", "openssl's DER");
        let signed = trusted.check(component, Some(ed_sig.as_ref()), path);
        assert_eq!(signed.unwrap().unwrap().name, "ed");

        // Tampered component, truncated signature, wrong key, unsigned.
        assert!(
            trusted
                .check(b"\0asm other bytes", Some(ed_sig.as_ref()), path)
                .is_err()
        );
        assert!(
            trusted
                .check(component, Some(&ed_sig.as_ref()[..63]), path)
                .is_err()
        );
        let only_ed = policy(vec![ed_key], true);
        let wrong = only_ed
            .check(component, Some(ec_sig.as_ref()), path)
            .unwrap_err();
        assert!(wrong.contains("trusted: ed"), "{wrong}");
        let unsigned = only_ed.check(component, None, path).unwrap_err();
        assert!(unsigned.contains("unsigned"), "{unsigned}");
        assert_eq!(
            policy(vec![ec_key.clone()], false).check(component, None, path),
            Ok(None)
        );
        assert!(
            policy(vec![ec_key], false)
                .check(component, Some(ed_sig.as_ref()), path)
                .is_err(),
            "a signature that does not verify is refused even where none is required"
        );
        assert!(
            policy(Vec::new(), true)
                .check(component, None, path)
                .is_err()
        );
    }

    #[test]
    fn cosign_signatures_vouch_only_for_the_manifest_their_payload_names() {
        use base64::Engine;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let signer =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap();
        let der = spki_der(
            &[ID_EC_PUBLIC_KEY, PRIME256V1].concat(),
            signer.public_key().as_ref(),
        );
        let key = TrustedKey::parse("release", &pem(&der)).unwrap();
        let manifest = format!("sha256:{}", "ab".repeat(32));
        let other = format!("sha256:{}", "cd".repeat(32));
        let sign = |payload: &str| CosignSignature {
            payload: b64(payload.as_bytes()),
            signature: b64(signer.sign(&rng, payload.as_bytes()).unwrap().as_ref()),
        };
        let payload = |digest: &str, kind: &str| {
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"r/p"}},"image":{{"Docker-manifest-digest":"{digest}"}},"type":"{kind}"}},"optional":null}}"#
            )
        };
        let good = sign(&payload(&manifest, "cosign container image signature"));
        let trusted = policy(vec![key.clone()], true);
        let at = "r/p:sha256-ab.sig";
        assert_eq!(
            trusted
                .check_cosign(&manifest, std::slice::from_ref(&good), at)
                .unwrap()
                .unwrap()
                .name,
            "release"
        );
        // Signed by the trusted key, but over another manifest, or not a
        // cosign image signature at all.
        for wrong in [
            sign(&payload(&other, "cosign container image signature")),
            sign(&payload(&manifest, "something else")),
            sign("not json"),
        ] {
            let refused = trusted.check_cosign(&manifest, &[wrong], at).unwrap_err();
            assert!(refused.contains("name another artifact"), "{refused}");
        }
        // A signature moved onto another payload, or damaged.
        let moved = CosignSignature {
            payload: sign(&payload(&other, "cosign container image signature")).payload,
            signature: good.signature.clone(),
        };
        let damaged = CosignSignature {
            signature: good.signature[..good.signature.len() - 8].to_owned(),
            ..good.clone()
        };
        for wrong in [moved, damaged] {
            let refused = trusted.check_cosign(&manifest, &[wrong], at).unwrap_err();
            assert!(refused.contains("trusted: release"), "{refused}");
        }
        // One good signature among others is enough; none, and one is
        // required, is refused; none where none is required is unsigned.
        let noise = sign(&payload(&other, "cosign container image signature"));
        assert!(trusted.check_cosign(&manifest, &[noise, good], at).is_ok());
        let none = trusted.check_cosign(&manifest, &[], at).unwrap_err();
        assert!(none.contains("unsigned") && none.contains(at), "{none}");
        assert_eq!(
            policy(vec![key], false).check_cosign(&manifest, &[], at),
            Ok(None)
        );
    }

    #[test]
    fn keys_of_other_kinds_and_damaged_files_are_refused() {
        // An RSA SubjectPublicKeyInfo (rsaEncryption OID, a short dummy key).
        let rsa_oid = [
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
        ];
        assert!(TrustedKey::parse("rsa", &spki_der(&rsa_oid, &[1; 40])).is_err());
        assert!(TrustedKey::parse("short", &spki_der(ID_ED25519, &[1; 31])).is_err());
        assert!(TrustedKey::parse("pem", b"-----BEGIN PUBLIC KEY-----\nAAAA").is_err());
        assert!(TrustedKey::parse("junk", b"junk").is_err());
        assert!(TrustedKey::parse("empty", b"").is_err());
    }
}
