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
        default: trappable,
    },
    exports: { default: async },
});

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
