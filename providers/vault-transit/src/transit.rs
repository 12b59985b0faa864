//! The Transit HTTP API as plain data: requests, response parsing and error
//! classification; settings and key ids live in [`settings`]. Nothing here
//! calls the host, so all of it is tested natively
//! (`cargo test -p vault-transit`).

use std::fmt;

use kmsgate_provider::http::{self, Method, Request};
use kmsgate_provider::{KmsError, base64};
use serde::{Deserialize, Serialize};

mod settings;

pub use settings::Settings;
use settings::parse_version;

/// The header the host fills with the secret named [`TOKEN_SECRET`].
pub const TOKEN_HEADER: &str = "x-vault-token";
/// The name of the provider secret that holds the Vault token (host side).
pub const TOKEN_SECRET: &str = "token";
const NAMESPACE_HEADER: &str = "x-vault-namespace";
/// Vault error strings are passed on, cut to this many characters.
const MAX_MESSAGE: usize = 200;
/// Every Transit ciphertext starts with this, then the key version and `:`.
/// OpenBao kept the prefix for compatibility.
const CIPHERTEXT_PREFIX: &str = "vault:v";

/// The Transit call being made, for error messages and classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ReadKey,
    Encrypt,
    Decrypt,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::ReadKey => "reading",
            Action::Encrypt => "encrypting with",
            Action::Decrypt => "decrypting with",
        })
    }
}

/// The key as `GET {mount}/keys/{key}` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyInfo {
    pub latest_version: u32,
    #[serde(default)]
    pub min_decryption_version: u32,
    #[serde(default)]
    pub min_encryption_version: u32,
    #[serde(rename = "type", default)]
    pub key_type: String,
    /// Absent in old Vault versions; `false` for signing-only key types.
    #[serde(default)]
    pub supports_encryption: Option<bool>,
}

#[derive(Serialize)]
struct EncryptBody<'a> {
    plaintext: &'a str,
    key_version: u32,
}

#[derive(Serialize)]
struct DecryptBody<'a> {
    ciphertext: &'a str,
}

/// Vault wraps every answer in `{"data": ...}`.
#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Deserialize)]
struct EncryptData {
    ciphertext: String,
    #[serde(default)]
    key_version: Option<u32>,
}

#[derive(Deserialize)]
struct DecryptData {
    plaintext: String,
}

#[derive(Serialize)]
struct DecryptBatchBody<'a> {
    batch_input: Vec<DecryptBody<'a>>,
    /// Some items failing is an answer, not a failed request: answer 200
    /// with per-item errors. (Vault still answers 400 when all fail.)
    partial_failure_response_code: u16,
}

#[derive(Deserialize)]
struct DecryptBatchData {
    batch_results: Vec<DecryptBatchItem>,
}

#[derive(Deserialize)]
struct DecryptBatchItem {
    #[serde(default)]
    plaintext: String,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

impl Settings {
    /// `GET {address}/v1/{mount}/keys/{key}`.
    pub fn read_key_request(&self) -> Request {
        self.request(Method::Get, "keys")
    }

    /// `POST .../encrypt/{key}` with an explicit `key_version`, returning the
    /// request and that version.
    pub fn encrypt_request(
        &self,
        key_id: &str,
        plaintext: &[u8],
    ) -> Result<(Request, u32), KmsError> {
        if plaintext.is_empty() {
            return Err(KmsError::InvalidArgument("plaintext is empty".into()));
        }
        let key_version = self.key_version(key_id)?;
        let encoded = base64::encode(plaintext);
        let body = EncryptBody {
            plaintext: &encoded,
            key_version,
        };
        Ok((
            self.request(Method::Post, "encrypt").json(&body),
            key_version,
        ))
    }

    /// `POST .../decrypt/{key}`, after checking that the ciphertext is a
    /// Transit ciphertext of the version `key_id` names; anything else never
    /// reaches Vault.
    pub fn decrypt_request(&self, key_id: &str, ciphertext: &[u8]) -> Result<Request, KmsError> {
        let body = DecryptBody {
            ciphertext: self.decrypt_text(key_id, ciphertext)?,
        };
        Ok(self.request(Method::Post, "decrypt").json(&body))
    }

    /// The ciphertext as Transit takes it, if it is a Transit ciphertext of
    /// the version `key_id` names.
    pub fn decrypt_text<'a>(
        &self,
        key_id: &str,
        ciphertext: &'a [u8],
    ) -> Result<&'a str, KmsError> {
        let key_version = self.key_version(key_id)?;
        let (text, version) = split_ciphertext(ciphertext).map_err(KmsError::InvalidCiphertext)?;
        if version != key_version {
            return Err(KmsError::InvalidCiphertext(format!(
                "ciphertext is for key version {version}, key id says {key_version}"
            )));
        }
        Ok(text)
    }

    /// `POST .../decrypt/{key}` with `batch_input`: one request for many
    /// ciphertexts (each already passed [`Settings::decrypt_text`]). Every
    /// item carries its own key version in its `vault:v{N}:` prefix.
    pub fn decrypt_batch_request(&self, texts: &[&str]) -> Request {
        let body = DecryptBatchBody {
            batch_input: texts
                .iter()
                .map(|text| DecryptBody { ciphertext: text })
                .collect(),
            partial_failure_response_code: 200,
        };
        self.request(Method::Post, "decrypt").json(&body)
    }

    /// Parses a batch decrypt answer into one result per item. An answer
    /// with `batch_results` for every item is judged item by item, whatever
    /// its status (Vault answers 400 when every item failed); any other
    /// answer fails the whole batch like a single decrypt would.
    pub fn parse_decrypt_batch(
        &self,
        status: u16,
        body: &[u8],
        expected: usize,
    ) -> Result<Vec<Result<Vec<u8>, KmsError>>, KmsError> {
        let parsed = serde_json::from_slice::<Envelope<DecryptBatchData>>(body)
            .ok()
            .map(|envelope| envelope.data.batch_results)
            .filter(|results| results.len() == expected);
        let Some(results) = parsed.filter(|_| (200..300).contains(&status) || status == 400) else {
            return Err(match self.check(Action::Decrypt, status, body.to_vec()) {
                Ok(_) => KmsError::Internal(format!(
                    "Vault's batch decrypt answer does not hold {expected} results"
                )),
                Err(error) => error,
            });
        };
        Ok(results
            .into_iter()
            .map(|item| match item.error.filter(|e| !e.is_empty()) {
                Some(message) => {
                    Err(self.classify_message(Action::Decrypt, 400, Some(truncate(message.trim()))))
                }
                None => base64::decode(item.plaintext).map_err(|_| {
                    KmsError::Internal(
                        "Vault's batch decrypt answer holds a plaintext that is not base64".into(),
                    )
                }),
            })
            .collect())
    }

    /// A request to `{address}/v1/{mount}/{endpoint}/{key}` that asks the
    /// host for the token, through the auth if one is set (and sends the
    /// namespace, if any).
    fn request(&self, method: Method, endpoint: &str) -> Request {
        let url = format!("{}/v1/{}/{endpoint}/{}", self.address, self.mount, self.key);
        let mut request = Request::new(method, url);
        if let Some(ns) = &self.namespace {
            request = request.header(NAMESPACE_HEADER, ns);
        }
        match &self.auth {
            Some(auth) => request.auth(auth),
            None => request.secret_header(TOKEN_HEADER, TOKEN_SECRET),
        }
    }

    /// Passes a 2xx body through; turns anything else into a [`KmsError`].
    pub fn check(&self, action: Action, status: u16, body: Vec<u8>) -> Result<Vec<u8>, KmsError> {
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(self.classify(action, status, &body))
        }
    }

    /// Classifies a failed answer by status code and Vault's `errors`.
    pub fn classify(&self, action: Action, status: u16, body: &[u8]) -> KmsError {
        self.classify_message(action, status, vault_message(body))
    }

    /// Classifies by Vault's error text (already cut), then by status code
    /// as the SDK does.
    fn classify_message(&self, action: Action, status: u16, message: Option<String>) -> KmsError {
        let lower = message.as_deref().unwrap_or_default().to_ascii_lowercase();
        let has = |needle: &str| lower.contains(needle);
        let detail = match &message {
            Some(m) => format!(
                "{action} transit key {}: Vault answered HTTP {status}: {m}",
                self.key
            ),
            None => format!(
                "{action} transit key {}: Vault answered HTTP {status}",
                self.key
            ),
        };

        if has("sealed") {
            return KmsError::Unavailable(detail);
        }
        // 429 and 5xx are unavailable, 401 and 403 permission-denied;
        // whatever the SDK cannot place is for Vault's words to decide.
        let detail = match http::status_error(status, detail) {
            KmsError::Internal(detail) => detail,
            decided => return decided,
        };
        if has("permission denied") || has("missing client token") {
            KmsError::PermissionDenied(detail)
        } else if has("no handler for route") || has("unsupported path") {
            KmsError::InvalidConfig(format!("{detail} (is setting `mount` a Transit mount?)"))
        } else if (status == 404 && action == Action::ReadKey) || has("encryption key not found") {
            KmsError::UnknownKey(format!(
                "{detail} (kmsgate never creates keys: `vault write -f {}/keys/{}`)",
                self.mount, self.key
            ))
        } else if has("requested version for encryption") {
            // The key id's version is past the latest or below the minimum
            // encryption version: the host must take a new key id from status.
            KmsError::UnknownKey(detail)
        } else if status == 400
            && (has("invalid ciphertext")
                || has("message authentication failed")
                || has("disallowed by policy"))
        {
            KmsError::InvalidCiphertext(detail)
        } else {
            KmsError::Internal(detail)
        }
    }

    /// Parses the key read, refusing keys that cannot encrypt.
    pub fn parse_key(&self, body: &[u8]) -> Result<KeyInfo, KmsError> {
        let info: KeyInfo = self.parse_data(Action::ReadKey, body)?;
        if info.latest_version == 0 {
            return Err(KmsError::Internal(format!(
                "transit key {} reports latest version 0",
                self.key
            )));
        }
        if info.supports_encryption == Some(false) {
            return Err(KmsError::InvalidConfig(format!(
                "transit key {} has type {:?}, which cannot encrypt",
                self.key, info.key_type
            )));
        }
        Ok(info)
    }

    /// Parses an encrypt answer, which must be for `version` exactly.
    pub fn parse_encrypt(&self, version: u32, body: &[u8]) -> Result<String, KmsError> {
        let data: EncryptData = self.parse_data(Action::Encrypt, body)?;
        let mismatch = |got: String| {
            KmsError::Internal(format!(
                "Vault encrypted with transit key {} version {got}, not the requested {version}",
                self.key
            ))
        };
        if let Some(got) = data.key_version.filter(|&v| v != version) {
            return Err(mismatch(got.to_string()));
        }
        match split_ciphertext(data.ciphertext.as_bytes()) {
            Ok((_, got)) if got == version => Ok(data.ciphertext),
            Ok((_, got)) => Err(mismatch(got.to_string())),
            Err(reason) => Err(KmsError::Internal(format!(
                "Vault's encrypt answer: {reason}"
            ))),
        }
    }

    /// Parses a decrypt answer into the plaintext bytes.
    pub fn parse_decrypt(&self, body: &[u8]) -> Result<Vec<u8>, KmsError> {
        let data: DecryptData = self.parse_data(Action::Decrypt, body)?;
        base64::decode(data.plaintext).map_err(|_| {
            KmsError::Internal("Vault's decrypt answer holds a plaintext that is not base64".into())
        })
    }

    /// Parses `{"data": T}`; errors never quote the body, which may hold a
    /// plaintext ([`http::from_json`]).
    fn parse_data<T: for<'de> Deserialize<'de>>(
        &self,
        action: Action,
        body: &[u8],
    ) -> Result<T, KmsError> {
        let context = format!("{action} transit key {}", self.key);
        http::from_json::<Envelope<T>>(body, &context).map(|envelope| envelope.data)
    }
}

/// The joined `errors` of a Vault error body, if it has any.
fn vault_message(body: &[u8]) -> Option<String> {
    let parsed: ErrorBody = serde_json::from_slice(body).ok()?;
    let joined = parsed.errors.join("; ");
    (!joined.trim().is_empty()).then(|| truncate(joined.trim()))
}

/// Splits a Transit ciphertext into its text and key version, checking its
/// shape: `vault:v{N}:{base64}`. Errors say why, never quoting the input.
fn split_ciphertext(ciphertext: &[u8]) -> Result<(&str, u32), String> {
    let text =
        std::str::from_utf8(ciphertext).map_err(|_| "ciphertext is not UTF-8".to_string())?;
    let rest = text
        .strip_prefix(CIPHERTEXT_PREFIX)
        .ok_or_else(|| format!("ciphertext does not start with `{CIPHERTEXT_PREFIX}`"))?;
    let (version, payload) = rest
        .split_once(':')
        .ok_or_else(|| "ciphertext has no `:` after its version".to_string())?;
    let version = parse_version(version)
        .ok_or_else(|| "ciphertext has an invalid key version".to_string())?;
    let is_base64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
    if payload.is_empty() || !payload.chars().all(is_base64) {
        return Err("ciphertext body is not base64".to_string());
    }
    Ok((text, version))
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
