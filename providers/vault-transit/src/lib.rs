//! `vault-transit`: the reference provider. Data encryption keys are
//! encrypted and decrypted by the **Transit** secrets engine of HashiCorp
//! Vault or OpenBao; the key never leaves Vault.
//!
//! The provider talks to Vault only through the host's `outbound-http`
//! import and never sees the Vault token: with setting `auth`, every
//! request asks the host to authenticate it with that auth (a token the
//! host renews, or logs in for with AppRole, a JWT or a TLS certificate);
//! without it, to send the provider secret `token` as `X-Vault-Token`. The
//! operator configures the auth or the secret, and allows `address` in
//! `allowed_hosts`, on the host side.
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
//! - `auth` (optional): the name of the operator's auth
//!   (`[providers.auth.<name>]`) that supplies the Vault token. Without
//!   it the host sends the secret `token`.
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
//! Vault's error strings decide first (`transit.rs`); what they leave open
//! falls to the SDK's mapping of status codes and host errors
//! (`kmsgate_provider::http`).
//!
//! Messages carry Vault's own error strings (cut to 200 characters) but
//! never plaintext, ciphertext or the token.

mod transit;

use kmsgate_provider::http::Request;
use kmsgate_provider::{
    DecryptRequest, EncryptRequest, Encrypted, KmsError, Level, Provider, StatusInfo, http, log,
};
use transit::{Action, KeyInfo, Settings};

struct VaultTransit {
    settings: Settings,
}

impl Provider for VaultTransit {
    fn new(settings: &kmsgate_provider::Settings) -> Result<Self, KmsError> {
        let settings = Settings::from_lookup(|name| settings.get(name).map(str::to_owned))?;
        Ok(VaultTransit { settings })
    }

    fn init(&mut self) -> Result<(), KmsError> {
        let key = self.read_key()?;
        let s = &self.settings;
        log!(
            Level::Info,
            "init",
            "using transit key {} ({}) at version {} on {} mount {}",
            s.key,
            key.key_type,
            key.latest_version,
            s.address,
            s.mount
        );
        Ok(())
    }

    fn status(&mut self) -> Result<StatusInfo, KmsError> {
        let key = self.read_key()?;
        let s = &self.settings;
        let detail = format!(
            "transit key {} at version {} (decrypts from version {})",
            s.key,
            key.latest_version,
            key.min_decryption_version.max(1)
        );
        Ok(StatusInfo::healthy(s.key_id(key.latest_version), detail))
    }

    fn encrypt(&mut self, request: EncryptRequest) -> Result<Encrypted, KmsError> {
        let EncryptRequest {
            uid,
            key_id,
            plaintext,
        } = request;
        let (request, version) = self.settings.encrypt_request(&key_id, &plaintext)?;
        let body = self.send(Action::Encrypt, request)?;
        let ciphertext = self
            .settings
            .parse_encrypt(version, &body)
            .inspect_err(|e| {
                // Vault answered 200 with something unexpected: worth an operator's look.
                log!(Level::Error, "encrypt", "request {uid}: {e:?}");
            })?;
        Ok(Encrypted::new(ciphertext.into_bytes(), key_id))
    }

    fn decrypt(&mut self, request: DecryptRequest) -> Result<Vec<u8>, KmsError> {
        let request = self
            .settings
            .decrypt_request(&request.key_id, &request.ciphertext)?;
        let body = self.send(Action::Decrypt, request)?;
        self.settings.parse_decrypt(&body)
    }

    /// One Transit request for every item that passes the local checks;
    /// the others fail on their own without reaching Vault.
    fn decrypt_batch(
        &mut self,
        items: Vec<DecryptRequest>,
    ) -> Result<Vec<Result<Vec<u8>, KmsError>>, KmsError> {
        let settings = &self.settings;
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
                Err(error) => results.push(Some(Err(error))),
            }
        }
        if !texts.is_empty() {
            let response = settings
                .decrypt_batch_request(&texts)
                .send()
                .map_err(|e| self.transport_error(Action::Decrypt, e))?;
            let answers =
                settings.parse_decrypt_batch(response.status, &response.body, texts.len())?;
            for (index, answer) in sent.into_iter().zip(answers) {
                results[index] = Some(answer);
            }
        }
        Ok(results
            .into_iter()
            .map(|result| result.expect("every item answered"))
            .collect())
    }
}

kmsgate_provider::export!(VaultTransit, batch);

impl VaultTransit {
    fn read_key(&self) -> Result<KeyInfo, KmsError> {
        let body = self.send(Action::ReadKey, self.settings.read_key_request())?;
        self.settings.parse_key(&body)
    }

    /// Sends `request` through the host; a non-2xx answer becomes an error.
    fn send(&self, action: Action, request: Request) -> Result<Vec<u8>, KmsError> {
        let response = request
            .send()
            .map_err(|e| self.transport_error(action, e))?;
        self.settings.check(action, response.status, response.body)
    }

    /// The host's refusal to send (or finish) a request, as the SDK maps it.
    fn transport_error(&self, action: Action, error: http::HttpError) -> KmsError {
        let s = &self.settings;
        let context = format!("{action} transit key {} at {}", s.key, s.address);
        // The SDK's mapping, with what an operator of this provider should
        // check added to the two config errors.
        let hint = match &error {
            http::HttpError::UnknownSecret(_) if s.auth.is_some() => {
                Some("setting `auth` must name an auth of this provider")
            }
            http::HttpError::UnknownSecret(_) => Some("it must hold the Vault token"),
            http::HttpError::InvalidRequest(_) => {
                Some("check settings `address`, `mount` and `namespace`")
            }
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

    #[test]
    fn host_config_errors_say_what_to_check() {
        let settings = kmsgate_provider::Settings::from_pairs([
            ("address", "http://127.0.0.1:8200"),
            ("key", "kube"),
        ]);
        let provider = VaultTransit::new(&settings).unwrap();
        let error = |e| provider.transport_error(Action::Encrypt, e);
        assert!(matches!(
            error(http::HttpError::UnknownSecret("token".into())),
            KmsError::InvalidConfig(m) if m.contains("`token`") && m.contains("Vault token")
        ));
        assert!(matches!(
            error(http::HttpError::InvalidRequest("bad header".into())),
            KmsError::InvalidConfig(m) if m.contains("`namespace`")
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
}
