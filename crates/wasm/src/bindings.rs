//! The one `bindgen!` of the host, and the conversions between its
//! generated types and the domain types. Generated types stop here.

use crate::outbound::{Method, OutboundError, OutboundRequest, OutboundResponse};
use kmsgate_core::error::ProviderError;
use kmsgate_core::kms::{Encrypted, ProviderStatus};
use kmsgate_core::limits::Annotations;
use kmsgate_core::sanitize;

// The larger world: it includes `provider` and adds the optional
// `kms-batch` export. Exports are looked up one interface at a time
// (`GuestIndices`), so components without `kms-batch` load too.
wasmtime::component::bindgen!({
    world: "batching-provider",
    path: "../../wit",
    imports: {
        // Outbound HTTP awaits the network; everything else answers at once.
        "kmsgate:provider/outbound-http.send": async,
        "kmsgate:provider/outbound-http.send-with-auth": async,
        default: trappable,
    },
    exports: { default: async },
});

/// The `kmsgate:provider` version this host implements (`wit/provider.wit`),
/// and the oldest it still loads (kept in `wit/archive/`). Within `0.1`,
/// wasmtime links a component built against any patch version to the
/// host's; what is newer than the host is refused by [`check_wit_version`].
pub const WIT_VERSION: Version = Version(0, 1, 1);
pub const OLDEST_WIT_VERSION: Version = Version(0, 1, 0);

/// A `major.minor.patch` package version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u64, pub u64, pub u64);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Version {
    fn parse(text: &str) -> Option<Version> {
        let mut parts = text.split('.').map(|part| part.parse::<u64>().ok());
        let version = Version(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(version)
    }
}

/// Refuses a component that imports or exports `kmsgate:provider` at a
/// version this host does not offer, naming both, before linking (whose
/// error would name only a missing function). `names` are the component's
/// import and export names.
pub fn check_wit_version<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    for name in names {
        let Some(rest) = name.strip_prefix("kmsgate:provider/") else {
            continue;
        };
        let Some((interface, version)) = rest.split_once('@') else {
            return Err(format!(
                "{name} has no version; this host offers kmsgate:provider@{OLDEST_WIT_VERSION} to @{WIT_VERSION}"
            ));
        };
        let offered = OLDEST_WIT_VERSION..=WIT_VERSION;
        match Version::parse(version) {
            Some(version) if offered.contains(&version) => {}
            Some(version) => {
                let advice = if version > WIT_VERSION {
                    "upgrade kmsgate, or build the component against a version this host offers"
                } else {
                    "rebuild the component against a version this host offers"
                };
                return Err(format!(
                    "the component was built for kmsgate:provider@{version} ({interface}); this host offers @{OLDEST_WIT_VERSION} to @{WIT_VERSION}: {advice}"
                ));
            }
            None => return Err(format!("{name}: unreadable version {version:?}")),
        }
    }
    Ok(())
}

pub use self::exports::kmsgate::provider::{kms, kms_batch};
pub use self::kmsgate::provider::outbound_http as http;
pub use self::kmsgate::provider::types::{Annotation, KmsError};

/// Provider-supplied strings enter the host here, and only here: each is
/// cut and cleaned ([`sanitize`]) before it can reach a log line, Status,
/// the admin view or the apiserver.
impl From<KmsError> for ProviderError {
    fn from(error: KmsError) -> Self {
        let clean = |message: String| sanitize::clean(&message, sanitize::MAX_MESSAGE);
        match error {
            KmsError::InvalidArgument(m) => ProviderError::InvalidArgument(clean(m)),
            KmsError::InvalidCiphertext(m) => ProviderError::InvalidCiphertext(clean(m)),
            KmsError::UnknownKey(m) => ProviderError::UnknownKey(clean(m)),
            KmsError::PermissionDenied(m) => ProviderError::PermissionDenied(clean(m)),
            KmsError::Unavailable(m) => ProviderError::Unavailable(clean(m)),
            KmsError::InvalidConfig(m) => ProviderError::InvalidConfig(clean(m)),
            KmsError::Internal(m) => ProviderError::Internal(clean(m)),
        }
    }
}

impl From<kms::StatusInfo> for ProviderStatus {
    /// The key id is checked, not cleaned (`slot::check_provider_key_id`):
    /// changing it would change what the apiserver stores.
    fn from(info: kms::StatusInfo) -> Self {
        ProviderStatus {
            key_id: info.key_id,
            healthy: info.healthy,
            detail: sanitize::clean(&info.detail, sanitize::MAX_DETAIL),
        }
    }
}

impl TryFrom<kms::Encrypted> for Encrypted {
    type Error = ProviderError;

    fn try_from(encrypted: kms::Encrypted) -> Result<Self, ProviderError> {
        Ok(Encrypted {
            ciphertext: encrypted.ciphertext,
            key_id: encrypted.key_id,
            annotations: annotations_from_wit(encrypted.annotations)?,
        })
    }
}

/// Duplicate keys are a contract breach: a map cannot carry them to the
/// apiserver.
fn annotations_from_wit(list: Vec<Annotation>) -> Result<Annotations, ProviderError> {
    let mut map = Annotations::new();
    for Annotation { key, value } in list {
        if map.contains_key(&key) {
            return Err(ProviderError::Contract(format!(
                "annotation {:?} appears twice",
                sanitize::clean(&key, sanitize::MAX_DETAIL)
            )));
        }
        map.insert(key, value);
    }
    Ok(map)
}

impl From<kmsgate_core::kms::DecryptItem> for kms_batch::DecryptItem {
    fn from(item: kmsgate_core::kms::DecryptItem) -> Self {
        kms_batch::DecryptItem {
            annotations: annotations_to_wit(&item.annotations),
            uid: item.uid,
            key_id: item.key_id,
            ciphertext: item.ciphertext,
        }
    }
}

pub fn annotations_to_wit(map: &Annotations) -> Vec<Annotation> {
    map.iter()
        .map(|(key, value)| Annotation {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

impl From<http::Request> for OutboundRequest {
    fn from(request: http::Request) -> Self {
        OutboundRequest {
            method: match request.method {
                http::Method::Get => Method::Get,
                http::Method::Post => Method::Post,
                http::Method::Put => Method::Put,
                http::Method::Delete => Method::Delete,
            },
            url: request.url,
            headers: request.headers,
            secret_headers: request.secret_headers,
            body: request.body,
        }
    }
}

impl From<OutboundResponse> for http::Response {
    fn from(response: OutboundResponse) -> Self {
        http::Response {
            status: response.status,
            headers: response.headers,
            body: response.body,
        }
    }
}

impl From<OutboundError> for http::HttpError {
    fn from(error: OutboundError) -> Self {
        match error {
            OutboundError::Denied(m) => http::HttpError::Denied(m),
            OutboundError::UnknownSecret(m) => http::HttpError::UnknownSecret(m),
            OutboundError::InvalidRequest(m) => http::HttpError::InvalidRequest(m),
            OutboundError::Timeout => http::HttpError::Timeout,
            OutboundError::ConnectionFailed(m) => http::HttpError::ConnectionFailed(m),
            OutboundError::ResponseTooLarge(cap) => http::HttpError::ResponseTooLarge(cap),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_outside_what_the_host_offers_are_refused_naming_both() {
        assert!(check_wit_version(["kmsgate:provider/kms@0.1.0", "wasi:io/streams@0.2.0"]).is_ok());
        assert!(check_wit_version(["kmsgate:provider/outbound-http@0.1.1"]).is_ok());
        for (name, shown) in [
            ("kmsgate:provider/kms@0.1.2", "0.1.2"),
            ("kmsgate:provider/kms@0.2.0", "0.2.0"),
            ("kmsgate:provider/kms@1.0.0", "1.0.0"),
            ("kmsgate:provider/kms@0.0.9", "0.0.9"),
        ] {
            let error = check_wit_version([name]).unwrap_err();
            assert!(
                error.contains(&format!("kmsgate:provider@{shown}"))
                    && error.contains("@0.1.0 to @0.1.1"),
                "{error}"
            );
        }
        assert!(check_wit_version(["kmsgate:provider/kms"]).is_err());
    }
}
