//! `vault-transit`: the reference provider. Data encryption keys are
//! encrypted and decrypted by the **Transit** secrets engine of HashiCorp
//! Vault or OpenBao; the key never leaves Vault.
//!
//! The provider talks to Vault only through the host's `outbound-http`
//! import and never sees the Vault token: every request asks the host to
//! send the provider secret `token` as `X-Vault-Token`. The operator
//! configures that secret, and allows `address` in `allowed_hosts`, on the
//! host side.
//!
//! # Settings (`wasi:config/store`)
//! - `address` (required): `http://host:port` or `https://host:port`, no
//!   path; a trailing `/` is dropped.
//! - `mount` (default `transit`): where the Transit engine is mounted.
//! - `key` (required): the Transit key, `[A-Za-z0-9_.-]+`. It must exist:
//!   the provider reads it and never creates it. Give the token `read` on
//!   `{mount}/keys/{key}` and `update` (not `create`) on
//!   `{mount}/encrypt/{key}` and `{mount}/decrypt/{key}`, so that Vault
//!   cannot upsert a deleted key on encrypt.
//! - `namespace` (optional): sent as `X-Vault-Namespace`.
//!
//! A missing or invalid setting is `invalid-config`, naming the setting.
//!
//! # Key id
//! `{key}:v{N}`, where `N` is the Transit key version (e.g. `kube:v3`).
//! `status` reports the latest version, so rotating the Transit key
//! (`vault write -f transit/keys/kube/rotate`) rotates the KMS key id.
//! `encrypt` pins the version with `key_version`; `decrypt` requires the
//! ciphertext's `vault:v{N}:` prefix to match the key id before calling Vault.
//!
//! # Error mapping
//! | Cause | `kms-error` |
//! |---|---|
//! | 400 `invalid ciphertext…`, `message authentication failed`, version too old | `invalid-ciphertext` |
//! | 404 on key read, `encryption key not found`, version out of range on encrypt | `unknown-key` |
//! | 401/403, `permission denied`; host denied the URL | `permission-denied` |
//! | 429, 5xx, sealed; host timeout or connection failure | `unavailable` |
//! | bad settings, unknown mount, token secret not configured | `invalid-config` |
//! | anything else, including an answer that does not parse | `internal` |
//!
//! Messages carry Vault's own error strings (cut to 200 characters) but
//! never plaintext, ciphertext or the token.

mod transit;

// The component ABI glue is generated `unsafe` code; it stays in this module.
#[allow(unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        world: "batching-provider",
        path: "../../wit",
        generate_all,
    });
    // Exports only on wasm32: a native cdylib cannot link symbols named like
    // `kmsgate:provider/kms@0.1.0#decrypt`, and native builds exist only to
    // run the unit tests.
    #[cfg(target_arch = "wasm32")]
    use super::VaultTransit;
    #[cfg(target_arch = "wasm32")]
    export!(VaultTransit);
}

use bindings::exports::kmsgate::provider::kms::{Encrypted, Guest, StatusInfo};
use bindings::exports::kmsgate::provider::kms_batch::{self, DecryptItem};
use bindings::kmsgate::provider::outbound_http::{self, HttpError};
use bindings::kmsgate::provider::types::{Annotation, KmsError};
use bindings::wasi::config::store;
use bindings::wasi::logging::logging::{Level, log};
use transit::{Action, Error, KeyInfo, Settings};

struct VaultTransit;

impl Guest for VaultTransit {
    fn init() -> Result<(), KmsError> {
        let settings = settings()?;
        let key = read_key(&settings)?;
        log(
            Level::Info,
            "init",
            &format!(
                "using transit key {} ({}) at version {} on {} mount {}",
                settings.key, key.key_type, key.latest_version, settings.address, settings.mount
            ),
        );
        Ok(())
    }

    fn status() -> Result<StatusInfo, KmsError> {
        let settings = settings()?;
        let key = read_key(&settings)?;
        Ok(StatusInfo {
            key_id: settings.key_id(key.latest_version),
            healthy: true,
            detail: format!(
                "transit key {} at version {} (decrypts from version {})",
                settings.key,
                key.latest_version,
                key.min_decryption_version.max(1)
            ),
        })
    }

    fn encrypt(uid: String, key_id: String, plaintext: Vec<u8>) -> Result<Encrypted, KmsError> {
        let settings = settings()?;
        let (request, version) = settings
            .encrypt_request(&key_id, &plaintext)
            .map_err(kms_error)?;
        let body = send(&settings, Action::Encrypt, request)?;
        let ciphertext = settings.parse_encrypt(version, &body).map_err(|e| {
            // Vault answered 200 with something unexpected: worth an operator's look.
            log(Level::Error, "encrypt", &format!("request {uid}: {e:?}"));
            kms_error(e)
        })?;
        Ok(Encrypted {
            ciphertext: ciphertext.into_bytes(),
            key_id,
            annotations: Vec::new(),
        })
    }

    fn decrypt(
        _uid: String,
        key_id: String,
        ciphertext: Vec<u8>,
        _annotations: Vec<Annotation>,
    ) -> Result<Vec<u8>, KmsError> {
        let settings = settings()?;
        let request = settings
            .decrypt_request(&key_id, &ciphertext)
            .map_err(kms_error)?;
        let body = send(&settings, Action::Decrypt, request)?;
        settings.parse_decrypt(&body).map_err(kms_error)
    }
}

impl kms_batch::Guest for VaultTransit {
    /// One Transit request for every item that passes the local checks;
    /// the others fail on their own without reaching Vault.
    fn decrypt_batch(items: Vec<DecryptItem>) -> Result<Vec<Result<Vec<u8>, KmsError>>, KmsError> {
        let settings = settings()?;
        let mut results: Vec<Option<Result<Vec<u8>, KmsError>>> = Vec::with_capacity(items.len());
        let mut texts = Vec::new();
        let mut sent = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match settings.decrypt_text(&item.key_id, &item.ciphertext) {
                Ok(text) => {
                    texts.push(text);
                    sent.push(index);
                    results.push(None);
                }
                Err(error) => results.push(Some(Err(kms_error(error)))),
            }
        }
        if !texts.is_empty() {
            let request = settings.decrypt_batch_request(&texts);
            let response = outbound_http::send(&to_outbound(request))
                .map_err(|e| http_error(&settings, Action::Decrypt, e))?;
            let answers = settings
                .parse_decrypt_batch(response.status, &response.body, texts.len())
                .map_err(kms_error)?;
            for (index, answer) in sent.into_iter().zip(answers) {
                results[index] = Some(answer.map_err(kms_error));
            }
        }
        Ok(results
            .into_iter()
            .map(|result| result.expect("every item answered"))
            .collect())
    }
}

thread_local! {
    /// The settings, read once per instance: they never change while an
    /// instance lives (the WIT's instance model). A failed read is not
    /// kept, so every call reports it.
    static SETTINGS: std::cell::OnceCell<std::rc::Rc<Settings>> =
        const { std::cell::OnceCell::new() };
}

/// The settings; a failing store is a configuration problem.
fn settings() -> Result<std::rc::Rc<Settings>, KmsError> {
    if let Some(settings) = SETTINGS.with(|cell| cell.get().cloned()) {
        return Ok(settings);
    }
    let settings = std::rc::Rc::new(read_settings()?);
    Ok(SETTINGS.with(|cell| cell.get_or_init(|| settings).clone()))
}

fn read_settings() -> Result<Settings, KmsError> {
    let mut values = Vec::with_capacity(Settings::NAMES.len());
    for name in Settings::NAMES {
        let value = store::get(name)
            .map_err(|e| KmsError::InvalidConfig(format!("reading setting `{name}`: {e:?}")))?;
        values.push((name, value));
    }
    Settings::from_lookup(|name| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.clone())
    })
    .map_err(kms_error)
}

fn read_key(settings: &Settings) -> Result<KeyInfo, KmsError> {
    let body = send(settings, Action::ReadKey, settings.read_key_request())?;
    settings.parse_key(&body).map_err(kms_error)
}

/// Sends `request` through the host; a non-2xx answer becomes an error.
fn send(
    settings: &Settings,
    action: Action,
    request: transit::Request,
) -> Result<Vec<u8>, KmsError> {
    let response =
        outbound_http::send(&to_outbound(request)).map_err(|e| http_error(settings, action, e))?;
    settings
        .check(action, response.status, response.body)
        .map_err(kms_error)
}

fn to_outbound(request: transit::Request) -> outbound_http::Request {
    outbound_http::Request {
        method: match request.method {
            transit::Method::Get => outbound_http::Method::Get,
            transit::Method::Post => outbound_http::Method::Post,
        },
        url: request.url,
        headers: request.headers,
        secret_headers: request.secret_headers,
        body: request.body,
    }
}

/// Maps the host's refusal to send (or finish) a request.
fn http_error(settings: &Settings, action: Action, error: HttpError) -> KmsError {
    let what = format!(
        "{action} transit key {} at {}",
        settings.key, settings.address
    );
    match error {
        HttpError::Denied(reason) if reason.contains("allowed_hosts") => {
            KmsError::PermissionDenied(format!(
                "{what}: the host denied the request ({reason}); add the address to the provider's allowed_hosts"
            ))
        }
        HttpError::Denied(reason) => {
            KmsError::PermissionDenied(format!("{what}: the host denied the request ({reason})"))
        }
        HttpError::UnknownSecret(name) => KmsError::InvalidConfig(format!(
            "{what}: secret `{name}` is not configured for this provider; it must hold the Vault token"
        )),
        HttpError::InvalidRequest(reason) => KmsError::InvalidConfig(format!(
            "{what}: the host rejected the request as malformed ({reason}); check settings `address`, `mount` and `namespace`"
        )),
        HttpError::Timeout => {
            KmsError::Unavailable(format!("{what}: Vault did not answer in time"))
        }
        HttpError::ConnectionFailed(reason) => {
            KmsError::Unavailable(format!("{what}: connection failed: {reason}"))
        }
        HttpError::ResponseTooLarge(cap) => KmsError::Internal(format!(
            "{what}: Vault's answer exceeded the host's cap of {cap} bytes"
        )),
    }
}

fn kms_error(error: Error) -> KmsError {
    match error {
        Error::InvalidArgument(m) => KmsError::InvalidArgument(m),
        Error::InvalidConfig(m) => KmsError::InvalidConfig(m),
        Error::InvalidCiphertext(m) => KmsError::InvalidCiphertext(m),
        Error::UnknownKey(m) => KmsError::UnknownKey(m),
        Error::PermissionDenied(m) => KmsError::PermissionDenied(m),
        Error::Unavailable(m) => KmsError::Unavailable(m),
        Error::Internal(m) => KmsError::Internal(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::from_lookup(|name| match name {
            "address" => Some("https://vault:8200".into()),
            "key" => Some("kube".into()),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn host_http_errors_map_to_kms_errors() {
        let s = settings();
        let map = |e| http_error(&s, Action::Encrypt, e);
        assert!(
            matches!(map(HttpError::Denied("http://x:1 is not in the provider's allowed_hosts".into())), KmsError::PermissionDenied(m) if m.contains("add the address"))
        );
        assert!(
            matches!(map(HttpError::Denied("the host withheld the response".into())), KmsError::PermissionDenied(m) if !m.contains("add the address"))
        );
        assert!(
            matches!(map(HttpError::UnknownSecret("token".into())), KmsError::InvalidConfig(m) if m.contains("`token`"))
        );
        assert!(matches!(
            map(HttpError::InvalidRequest("bad url".into())),
            KmsError::InvalidConfig(_)
        ));
        assert!(matches!(map(HttpError::Timeout), KmsError::Unavailable(_)));
        assert!(matches!(
            map(HttpError::ConnectionFailed("refused".into())),
            KmsError::Unavailable(_)
        ));
        assert!(matches!(
            map(HttpError::ResponseTooLarge(1024)),
            KmsError::Internal(_)
        ));
    }
}
