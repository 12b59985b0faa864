//! The AWS KMS JSON API as plain data: requests, response parsing and error
//! classification; settings and key ids live in [`settings`]. Nothing here
//! calls the host, so all of it is tested natively (`cargo test -p aws-kms`).

use std::fmt;

use kmsgate_provider::http::{self, Request};
use kmsgate_provider::{KmsError, base64};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod settings;

pub use settings::{Settings, is_key_uuid, key_id, key_id_uuid, material_marker, rotation_marker};

/// Every KMS call is a POST of this content type.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// AWS error strings are passed on, cut to this many characters.
const MAX_MESSAGE: usize = 200;
/// AWS error codes are short identifiers; anything else is not quoted.
const MAX_CODE: usize = 64;
/// KMS Encrypt takes at most 4096 bytes of plaintext.
pub const MAX_PLAINTEXT: usize = 4096;
/// ListKeyRotations page size (the API's maximum).
const ROTATIONS_PAGE: u32 = 1000;

/// The KMS operation being called: its `x-amz-target` and what errors say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    DescribeKey,
    ListKeyRotations,
    Encrypt,
    Decrypt,
}

impl Op {
    fn target(self) -> &'static str {
        match self {
            Op::DescribeKey => "TrentService.DescribeKey",
            Op::ListKeyRotations => "TrentService.ListKeyRotations",
            Op::Encrypt => "TrentService.Encrypt",
            Op::Decrypt => "TrentService.Decrypt",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::DescribeKey => "describing",
            Op::ListKeyRotations => "listing the rotations of",
            Op::Encrypt => "encrypting with",
            Op::Decrypt => "decrypting with",
        })
    }
}

/// What DescribeKey says about the key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadata {
    pub key_id: String,
    #[serde(default)]
    pub arn: String,
    #[serde(default)]
    pub enabled: bool,
    /// `Enabled`, `Disabled`, `PendingDeletion`, `PendingImport`, ...
    #[serde(default)]
    pub key_state: Option<String>,
    /// Real AWS names the current key material; it changes on rotation.
    /// Emulators (moto) leave it out.
    #[serde(default)]
    pub current_key_material_id: Option<String>,
}

impl KeyMetadata {
    /// Why the key cannot encrypt now, if it cannot.
    pub fn unusable(&self) -> Option<String> {
        let name = if self.arn.is_empty() {
            &self.key_id
        } else {
            &self.arn
        };
        match self.key_state.as_deref() {
            Some("Enabled") => None,
            Some(state) => Some(format!("key {name} is {}", truncate(state))),
            None if self.enabled => None,
            None => Some(format!("key {name} is disabled")),
        }
    }
}

/// One page of ListKeyRotations: how many rotations, and where the next
/// page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationsPage {
    pub count: usize,
    pub next_marker: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeKeyAnswer {
    key_metadata: KeyMetadata,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RotationsAnswer {
    #[serde(default)]
    rotations: Vec<IgnoredAny>,
    #[serde(default)]
    truncated: bool,
    #[serde(default)]
    next_marker: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptAnswer {
    ciphertext_blob: String,
    #[serde(default)]
    key_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptAnswer {
    plaintext: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KeyBody<'a> {
    key_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListRotationsBody<'a> {
    key_id: &'a str,
    limit: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    marker: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptBody<'a> {
    key_id: &'a str,
    plaintext: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption_context: Option<&'a Map<String, Value>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptBody<'a> {
    key_id: &'a str,
    ciphertext_blob: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption_context: Option<&'a Map<String, Value>>,
}

/// A KMS error as the JSON API (`{"__type": ..., "message": ...}`) or the
/// signature check in front of it (XML `<Code>`, `<Message>`) reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsError {
    pub code: Option<String>,
    pub message: Option<String>,
}

#[derive(Deserialize)]
struct JsonError {
    #[serde(rename = "__type", default)]
    kind: Option<String>,
    #[serde(default, alias = "Message")]
    message: Option<String>,
}

impl AwsError {
    /// Reads the code and message from an error body; either may be absent.
    pub fn parse(body: &[u8]) -> AwsError {
        let (code, message) = match serde_json::from_slice::<JsonError>(body) {
            Ok(json) => (json.kind, json.message),
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                (xml_element(&text, "Code"), xml_element(&text, "Message"))
            }
        };
        // `__type` may be namespaced: `com.amazonaws.kms#NotFoundException`.
        let code = code
            .map(|c| c.rsplit('#').next().unwrap_or_default().trim().to_string())
            .filter(|c| {
                !c.is_empty() && c.len() <= MAX_CODE && c.bytes().all(|b| b.is_ascii_alphanumeric())
            });
        let message = message
            .map(|m| truncate(m.trim()))
            .filter(|m| !m.is_empty());
        AwsError { code, message }
    }
}

impl Settings {
    /// DescribeKey of the configured key.
    pub fn describe_key_request(&self) -> Request {
        self.request(Op::DescribeKey, &KeyBody { key_id: &self.key })
    }

    /// One page of ListKeyRotations of the key DescribeKey described: by
    /// its ARN (or key id), since the operation takes no alias.
    pub fn list_rotations_request(&self, key: &KeyMetadata, marker: Option<&str>) -> Request {
        let key_id = if key.arn.is_empty() {
            &key.key_id
        } else {
            &key.arn
        };
        let body = ListRotationsBody {
            key_id,
            limit: ROTATIONS_PAGE,
            marker,
        };
        self.request(Op::ListKeyRotations, &body)
    }

    /// Encrypt under the configured key. The plaintext must be 1..=4096
    /// bytes (`invalid-argument` otherwise).
    pub fn encrypt_request(&self, plaintext: &[u8]) -> Result<Request, KmsError> {
        if plaintext.is_empty() {
            return Err(KmsError::InvalidArgument("plaintext is empty".into()));
        }
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(KmsError::InvalidArgument(format!(
                "plaintext is {} bytes; AWS KMS encrypts at most {MAX_PLAINTEXT}",
                plaintext.len()
            )));
        }
        let encoded = base64::encode(plaintext);
        let body = EncryptBody {
            key_id: &self.key,
            plaintext: &encoded,
            encryption_context: self.encryption_context.as_ref(),
        };
        Ok(self.request(Op::Encrypt, &body))
    }

    /// Decrypt with the configured key named, so that KMS refuses a
    /// ciphertext of another key (`IncorrectKeyException`).
    pub fn decrypt_request(&self, ciphertext: &[u8]) -> Result<Request, KmsError> {
        if ciphertext.is_empty() {
            return Err(KmsError::InvalidCiphertext("ciphertext is empty".into()));
        }
        let encoded = base64::encode(ciphertext);
        let body = DecryptBody {
            key_id: &self.key,
            ciphertext_blob: &encoded,
            encryption_context: self.encryption_context.as_ref(),
        };
        Ok(self.request(Op::Decrypt, &body))
    }

    /// `POST {endpoint}/` with the KMS JSON content type and target, signed
    /// by the host with the operator's auth.
    fn request(&self, op: Op, body: &impl Serialize) -> Request {
        let body = serde_json::to_vec(body).expect("KMS request bodies serialize");
        Request::post(format!("{}/", self.endpoint))
            .header("content-type", CONTENT_TYPE)
            .header("x-amz-target", op.target())
            .auth(&self.auth)
            .body(body)
    }

    /// Passes a 2xx body through; turns anything else into a [`KmsError`].
    pub fn check(&self, op: Op, status: u16, body: Vec<u8>) -> Result<Vec<u8>, KmsError> {
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(self.classify(op, status, &AwsError::parse(&body)))
        }
    }

    /// Classifies a failed answer by AWS's error code, then by status code
    /// as the SDK does.
    pub fn classify(&self, op: Op, status: u16, error: &AwsError) -> KmsError {
        let code = error.code.as_deref().unwrap_or_default();
        let mut detail = format!("{op} KMS key {}: AWS answered HTTP {status}", self.key);
        if let Some(code) = &error.code {
            detail.push_str(&format!(" {code}"));
        }
        if let Some(message) = &error.message {
            detail.push_str(&format!(": {message}"));
        }
        match code {
            "InvalidCiphertextException" | "IncorrectKeyException" => {
                KmsError::InvalidCiphertext(detail)
            }
            "NotFoundException" => KmsError::UnknownKey(detail),
            // The key exists but cannot be used as it is (disabled, pending
            // deletion or import, not a symmetric encryption key, a bad
            // ARN): an operator must act. FAILED_PRECONDITION in gRPC.
            "DisabledException"
            | "KMSInvalidStateException"
            | "InvalidKeyUsageException"
            | "InvalidArnException" => KmsError::InvalidConfig(detail),
            "AccessDeniedException"
            | "AccessDenied"
            | "SignatureDoesNotMatch"
            | "InvalidSignatureException"
            | "InvalidClientTokenId"
            | "UnrecognizedClientException"
            | "IncompleteSignature"
            | "MissingAuthenticationToken"
            | "ExpiredTokenException"
            | "ExpiredToken" => KmsError::PermissionDenied(detail),
            "ThrottlingException"
            | "KMSInternalException"
            | "DependencyTimeoutException"
            | "KeyUnavailableException"
            | "ServiceUnavailable" => KmsError::Unavailable(detail),
            _ => http::status_error(status, detail),
        }
    }

    /// A ListKeyRotations answer: the page's body, `None` if the
    /// operation is refused (no `kms:ListKeyRotations` permission, or a
    /// key type that does not rotate), or the error.
    pub fn check_rotations(&self, status: u16, body: Vec<u8>) -> Result<Option<Vec<u8>>, KmsError> {
        if (200..300).contains(&status) {
            return Ok(Some(body));
        }
        let error = AwsError::parse(&body);
        match error.code.as_deref() {
            Some("AccessDeniedException" | "AccessDenied" | "UnsupportedOperationException") => {
                Ok(None)
            }
            _ => Err(self.classify(Op::ListKeyRotations, status, &error)),
        }
    }

    /// Parses a DescribeKey answer.
    pub fn parse_describe_key(&self, body: &[u8]) -> Result<KeyMetadata, KmsError> {
        let answer: DescribeKeyAnswer = http::from_json(body, &self.context(Op::DescribeKey))?;
        let meta = answer.key_metadata;
        if !is_key_uuid(&meta.key_id) {
            return Err(KmsError::Internal(format!(
                "{}: the answer's KeyId {:?} is not a KMS key id",
                self.context(Op::DescribeKey),
                truncate(&meta.key_id)
            )));
        }
        Ok(meta)
    }

    /// Parses one ListKeyRotations page.
    pub fn parse_rotations(&self, body: &[u8]) -> Result<RotationsPage, KmsError> {
        let answer: RotationsAnswer = http::from_json(body, &self.context(Op::ListKeyRotations))?;
        let next_marker = answer
            .next_marker
            .filter(|marker| answer.truncated && !marker.is_empty());
        if answer.truncated && next_marker.is_none() {
            return Err(KmsError::Internal(format!(
                "{}: a truncated answer without NextMarker",
                self.context(Op::ListKeyRotations)
            )));
        }
        Ok(RotationsPage {
            count: answer.rotations.len(),
            next_marker,
        })
    }

    /// Parses an Encrypt answer into the ciphertext bytes, refusing one
    /// made with another key than `uuid` (an alias moved since status).
    pub fn parse_encrypt(&self, uuid: &str, body: &[u8]) -> Result<Vec<u8>, KmsError> {
        let answer: EncryptAnswer = http::from_json(body, &self.context(Op::Encrypt))?;
        if let Some(used) = answer.key_id.as_deref().map(arn_key_uuid)
            && used != uuid
        {
            return Err(KmsError::UnknownKey(format!(
                "{}: KMS encrypted with key {}, not key {uuid} of the key id; the alias moved, status will report the new key",
                self.context(Op::Encrypt),
                truncate(used)
            )));
        }
        base64::decode(answer.ciphertext_blob).map_err(|_| {
            KmsError::Internal(format!(
                "{}: the CiphertextBlob is not base64",
                self.context(Op::Encrypt)
            ))
        })
    }

    /// Parses a Decrypt answer into the plaintext bytes.
    pub fn parse_decrypt(&self, body: &[u8]) -> Result<Vec<u8>, KmsError> {
        let answer: DecryptAnswer = http::from_json(body, &self.context(Op::Decrypt))?;
        base64::decode(answer.plaintext).map_err(|_| {
            KmsError::Internal(format!(
                "{}: the Plaintext is not base64",
                self.context(Op::Decrypt)
            ))
        })
    }

    /// What was asked, for messages: "encrypting with KMS key alias/kube".
    pub fn context(&self, op: Op) -> String {
        format!("{op} KMS key {}", self.key)
    }
}

/// The key id of a key ARN (`arn:...:key/<id>`), or the text itself.
fn arn_key_uuid(key: &str) -> &str {
    key.rsplit_once(":key/").map_or(key, |(_, id)| id)
}

/// The text of the first `<name>...</name>` in `text`, if any.
fn xml_element(text: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{name}>"))? + start;
    Some(text[start..end].to_string())
}

/// Cuts `s` to [`MAX_MESSAGE`] characters, marking the cut.
fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests;
