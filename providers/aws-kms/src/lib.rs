//! `aws-kms`: data encryption keys are encrypted and decrypted by **AWS
//! KMS** (the JSON API: `Encrypt`, `Decrypt`, `DescribeKey`,
//! `ListKeyRotations`) with a symmetric KMS key; the key never leaves KMS.
//!
//! The provider talks to KMS only through the host's `outbound-http`
//! import and never sees AWS credentials: every request asks the host to
//! sign it with the operator's auth (kind `aws-sigv4`, service `kms`), which
//! holds static keys or web-identity credentials. The operator configures
//! that auth and allows `endpoint` in `allowed_hosts` on the host side.
//! Give the principal `kms:Encrypt`, `kms:Decrypt` and `kms:DescribeKey`
//! on the key, and `kms:ListKeyRotations` where the key's DescribeKey does
//! not name its key material (see *Key id*).
//!
//! # Settings (`wasi:config/store`)
//! - `endpoint` (required): `https://kms.<region>.amazonaws.com` (or a FIPS
//!   or VPC endpoint, or `http://127.0.0.1:PORT` for tests), no path; a
//!   trailing `/` is dropped.
//! - `key` (required): the KMS key as a key id, `alias/<name>`, a key ARN
//!   or an alias ARN. It must exist: the provider never creates keys.
//! - `auth` (default `aws`): the name of the operator's auth
//!   (`[providers.auth.<name>]`, kind `aws-sigv4`) that signs the requests.
//! - `encryption-context` (optional): a JSON object of strings, sent as
//!   `EncryptionContext` with every Encrypt and Decrypt. Changing it makes
//!   every earlier ciphertext undecryptable.
//!
//! A missing or invalid setting is `invalid-config`, naming the setting.
//!
//! # Key id
//! `{key uuid}:{material}`: the KMS key id (a uuid, or `mrk-…` for a
//! multi-Region key) from DescribeKey, then what tells the key material
//! apart, so that a rotation changes the key id and Kubernetes re-encrypts:
//! - `CurrentKeyMaterialId` when DescribeKey reports it (AWS does, for
//!   symmetric keys);
//! - else `r{N}`, `N` the number of rotations ListKeyRotations lists
//!   (emulators such as moto report no material but do list on-demand
//!   rotations);
//! - else, if ListKeyRotations is refused (`AccessDeniedException`,
//!   `UnsupportedOperationException`; logged once per instance), the key
//!   uuid alone, and rotations go unseen.
//!
//! KMS picks the current material itself: `encrypt` cannot pin the
//! material the key id names, so a ciphertext made just after a rotation
//! may carry the previous key id until the next status. That is harmless:
//! KMS decrypts with whichever material made a ciphertext, so ciphertexts
//! of every earlier key id keep decrypting. Both calls check that the key
//! id has this shape and, once the key's uuid is known (from `key`, or from
//! DescribeKey for an alias), that it names that key; anything else is
//! `unknown-key` without a call. `encrypt` also refuses a ciphertext KMS
//! made with another key than the key id's (an alias moved since status).
//!
//! # Status
//! Healthy when DescribeKey answers `KeyState` `Enabled`; any other state
//! (`Disabled`, `PendingDeletion`, `PendingImport`, ...) is reported as
//! unhealthy with the key's ARN and state in the detail, and `init` only
//! logs it, so that enabling the key again heals the provider without a
//! reload.
//!
//! # Error mapping
//! | Cause | `kms-error` |
//! |---|---|
//! | `InvalidCiphertextException`, `IncorrectKeyException`; an empty ciphertext | `invalid-ciphertext` |
//! | `NotFoundException`; a key id of another shape or key | `unknown-key` |
//! | `DisabledException`, `KMSInvalidStateException`, `InvalidKeyUsageException`, `InvalidArnException` (the key exists but an operator must act: gRPC `FAILED_PRECONDITION`) | `invalid-config` |
//! | `AccessDeniedException`; the signature check's `AccessDenied`, `SignatureDoesNotMatch`, `InvalidSignatureException`, `InvalidClientTokenId`, `UnrecognizedClientException`, `IncompleteSignature`, `MissingAuthenticationToken`, `ExpiredToken(Exception)`; other 401/403; host denied the URL or the auth | `permission-denied` |
//! | `ThrottlingException`, `KMSInternalException`, `DependencyTimeoutException`, `KeyUnavailableException`, `ServiceUnavailable`; other 429, 5xx; host timeout or connection failure | `unavailable` |
//! | an empty or over-4096-byte plaintext | `invalid-argument` |
//! | bad settings; setting `auth` names no auth of the provider; the host refused the request as malformed | `invalid-config` |
//! | anything else, including an answer that does not parse | `internal` |
//!
//! The error code decides first (`kms.rs`), read from a JSON body's
//! `__type` or the XML `<Code>` that signature failures carry; what it
//! leaves open falls to the SDK's mapping of status codes and host errors
//! (`kmsgate_provider::http`). Messages carry the AWS code and message
//! (cut to 200 characters) but never plaintext, ciphertext or credentials,
//! which the provider never holds.

mod kms;

use kms::{KeyMetadata, Op, Settings};
use kmsgate_provider::http::Request;
use kmsgate_provider::{
    DecryptRequest, EncryptRequest, Encrypted, KmsError, Level, Provider, StatusInfo, http, log,
};

/// Bounds ListKeyRotations paging (1000 rotations a page).
const MAX_ROTATION_PAGES: usize = 20;

struct AwsKms {
    settings: Settings,
    /// The key's uuid: from setting `key`, or learnt from DescribeKey.
    key_uuid: Option<String>,
    /// Cleared once ListKeyRotations is refused, so that it is asked (and
    /// logged) once per instance.
    list_rotations: bool,
    /// The last key id reported, kept while the key is unusable.
    last_key_id: Option<String>,
}

impl Provider for AwsKms {
    fn new(settings: &kmsgate_provider::Settings) -> Result<Self, KmsError> {
        let settings = Settings::from_lookup(|name| settings.get(name).map(str::to_owned))?;
        let key_uuid = settings.configured_key_uuid().map(str::to_owned);
        Ok(AwsKms {
            settings,
            key_uuid,
            list_rotations: true,
            last_key_id: None,
        })
    }

    fn init(&mut self) -> Result<(), KmsError> {
        let meta = self.describe_key()?;
        let s = &self.settings;
        match meta.unusable() {
            Some(why) => log!(Level::Warn, "init", "{why}: status reports unhealthy"),
            None => log!(
                Level::Info,
                "init",
                "using KMS key {} ({}) at {} signed by auth {}",
                s.key,
                meta.arn,
                s.endpoint,
                s.auth
            ),
        }
        Ok(())
    }

    fn status(&mut self) -> Result<StatusInfo, KmsError> {
        let meta = self.describe_key()?;
        let marker = self.material_marker(&meta);
        if let Some(why) = meta.unusable() {
            // Keep the key id steady while the key is out of use, so that
            // enabling it again is not taken for a rotation.
            let key_id = match (marker, &self.last_key_id) {
                (Ok(marker), _) => kms::key_id(&meta.key_id, marker.as_deref()),
                (Err(_), Some(last)) if kms::key_id_uuid(last) == Ok(meta.key_id.as_str()) => {
                    last.clone()
                }
                (Err(_), _) => meta.key_id.clone(),
            };
            return Ok(StatusInfo {
                key_id,
                healthy: false,
                detail: why,
            });
        }
        let marker = marker?;
        let key_id = kms::key_id(&meta.key_id, marker.as_deref());
        self.last_key_id = Some(key_id.clone());
        let detail = format!(
            "KMS key {} ({}), key material {}",
            self.settings.key,
            meta.arn,
            marker.as_deref().unwrap_or("not tracked")
        );
        Ok(StatusInfo::healthy(key_id, detail))
    }

    fn encrypt(&mut self, request: EncryptRequest) -> Result<Encrypted, KmsError> {
        let EncryptRequest {
            uid,
            key_id,
            plaintext,
        } = request;
        let uuid = self.check_key_id(&key_id)?;
        let request = self.settings.encrypt_request(&plaintext)?;
        let body = self.send(Op::Encrypt, request)?;
        let ciphertext = self.settings.parse_encrypt(&uuid, &body).inspect_err(|e| {
            // KMS answered 200 with something unexpected: worth an operator's look.
            log!(Level::Error, "encrypt", "request {uid}: {e:?}");
        })?;
        Ok(Encrypted::new(ciphertext, key_id))
    }

    fn decrypt(&mut self, request: DecryptRequest) -> Result<Vec<u8>, KmsError> {
        self.check_key_id(&request.key_id)?;
        let request = self.settings.decrypt_request(&request.ciphertext)?;
        let body = self.send(Op::Decrypt, request)?;
        self.settings.parse_decrypt(&body)
    }
}

kmsgate_provider::export!(AwsKms);

impl AwsKms {
    /// DescribeKey, remembering the key's uuid.
    fn describe_key(&mut self) -> Result<KeyMetadata, KmsError> {
        let body = self.send(Op::DescribeKey, self.settings.describe_key_request())?;
        let meta = self.settings.parse_describe_key(&body)?;
        self.key_uuid = Some(meta.key_id.clone());
        Ok(meta)
    }

    /// What tells the key's current material apart (see the crate docs).
    fn material_marker(&mut self, meta: &KeyMetadata) -> Result<Option<String>, KmsError> {
        if let Some(material) = meta
            .current_key_material_id
            .as_deref()
            .and_then(kms::material_marker)
        {
            return Ok(Some(material.to_string()));
        }
        if !self.list_rotations {
            return Ok(None);
        }
        let mut count = 0;
        let mut marker: Option<String> = None;
        for _ in 0..MAX_ROTATION_PAGES {
            let request = self
                .settings
                .list_rotations_request(meta, marker.as_deref());
            let response = request
                .send()
                .map_err(|e| self.transport_error(Op::ListKeyRotations, e))?;
            let Some(body) = self
                .settings
                .check_rotations(response.status, response.body)?
            else {
                self.list_rotations = false;
                log!(
                    Level::Warn,
                    "status",
                    "ListKeyRotations of KMS key {} is refused (HTTP {}): the key id will not change on rotation; allow kms:ListKeyRotations",
                    self.settings.key,
                    response.status
                );
                return Ok(None);
            };
            let page = self.settings.parse_rotations(&body)?;
            count += page.count;
            match page.next_marker {
                Some(next) => marker = Some(next),
                None => return Ok(Some(kms::rotation_marker(count))),
            }
        }
        Err(KmsError::Internal(format!(
            "{}: more than {MAX_ROTATION_PAGES} pages",
            self.settings.context(Op::ListKeyRotations)
        )))
    }

    /// The key uuid of `key_id`, which must be of this provider's shape
    /// and, once the key is known, name it.
    fn check_key_id(&self, key_id: &str) -> Result<String, KmsError> {
        let uuid = kms::key_id_uuid(key_id)?;
        match &self.key_uuid {
            Some(known) if known != uuid => Err(KmsError::UnknownKey(format!(
                "key id names KMS key {uuid}; this provider's key {} is {known}",
                self.settings.key
            ))),
            _ => Ok(uuid.to_string()),
        }
    }

    /// Sends `request` through the host; a non-2xx answer becomes an error.
    fn send(&self, op: Op, request: Request) -> Result<Vec<u8>, KmsError> {
        let response = request.send().map_err(|e| self.transport_error(op, e))?;
        self.settings.check(op, response.status, response.body)
    }

    /// The host's refusal to send (or finish) a request, as the SDK maps it.
    fn transport_error(&self, op: Op, error: http::HttpError) -> KmsError {
        let s = &self.settings;
        let context = format!("{} at {}", s.context(op), s.endpoint);
        // The SDK's mapping, with what an operator of this provider should
        // check added to the two config errors.
        let hint = match &error {
            http::HttpError::UnknownSecret(_) => Some(format!(
                "setting `auth` ({}) must name an auth of kind aws-sigv4 of this provider",
                s.auth
            )),
            http::HttpError::InvalidRequest(_) => Some("check setting `endpoint`".to_string()),
            _ => None,
        };
        match (http::transport_error(&context, error), hint) {
            (KmsError::InvalidConfig(message), Some(hint)) => {
                KmsError::InvalidConfig(format!("{message}; {hint}"))
            }
            (mapped, _) => mapped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

    fn provider(key: &str) -> AwsKms {
        let settings = kmsgate_provider::Settings::from_pairs([
            ("endpoint", "http://127.0.0.1:4566"),
            ("key", key),
        ]);
        AwsKms::new(&settings).unwrap()
    }

    #[test]
    fn host_config_errors_say_what_to_check() {
        let provider = provider("alias/kube");
        let error = |e| provider.transport_error(Op::Encrypt, e);
        assert!(matches!(
            error(http::HttpError::UnknownSecret("aws".into())),
            KmsError::InvalidConfig(m) if m.contains("`auth`") && m.contains("aws-sigv4")
        ));
        assert!(matches!(
            error(http::HttpError::InvalidRequest("bad url".into())),
            KmsError::InvalidConfig(m) if m.contains("`endpoint`")
        ));
        assert!(matches!(
            error(http::HttpError::Denied("http://x:1 is not in the provider's allowed_hosts".into())),
            KmsError::PermissionDenied(m) if m.contains("add the address")
        ));
        assert!(matches!(
            error(http::HttpError::Timeout),
            KmsError::Unavailable(_)
        ));
    }

    #[test]
    fn key_ids_must_name_the_known_key() {
        let other = "00000000-0000-0000-0000-000000000000";
        let by_uuid = provider(UUID);
        assert_eq!(by_uuid.check_key_id(&format!("{UUID}:r1")).unwrap(), UUID);
        assert!(matches!(
            by_uuid.check_key_id(&format!("{other}:r1")),
            Err(KmsError::UnknownKey(m)) if m.contains(other) && m.contains(UUID)
        ));
        // An alias's key is unknown until DescribeKey: any well-formed key
        // id passes, and KMS judges.
        let mut by_alias = provider("alias/kube");
        assert_eq!(by_alias.check_key_id(other).unwrap(), other);
        assert!(matches!(
            by_alias.check_key_id("kube:v1"),
            Err(KmsError::UnknownKey(_))
        ));
        by_alias.key_uuid = Some(UUID.into());
        assert!(by_alias.check_key_id(other).is_err());
    }

    #[test]
    fn plaintexts_are_checked_before_any_call() {
        let mut provider = provider(UUID);
        let encrypt = |plaintext: Vec<u8>| EncryptRequest {
            uid: "u".into(),
            key_id: format!("{UUID}:r0"),
            plaintext,
        };
        assert!(matches!(
            provider.encrypt(encrypt(Vec::new())),
            Err(KmsError::InvalidArgument(_))
        ));
        assert!(matches!(
            provider.encrypt(encrypt(vec![1; kms::MAX_PLAINTEXT + 1])),
            Err(KmsError::InvalidArgument(_))
        ));
        // Outside a component the host denies every request.
        assert!(matches!(
            provider.encrypt(encrypt(b"dek".to_vec())),
            Err(KmsError::PermissionDenied(_))
        ));
    }
}
