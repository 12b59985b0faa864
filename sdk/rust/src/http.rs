//! Outbound HTTP through the host (`kmsgate:provider/outbound-http`), and
//! the one mapping from a failed exchange to a [`KmsError`].
//!
//! The host sends the request only to the operator's `allowed_hosts`, with
//! the operator's CA bundle, client certificate, timeout and size cap, and
//! fills in secrets the provider names but never sees
//! ([`Request::secret_header`]), or authenticates the request with an auth
//! the operator configured ([`Request::auth`]: a Vault token it logs in
//! for and renews, an AWS SigV4 signature, a fixed header).
//!
//! # Errors
//! [`status_error`] and [`transport_error`] are the SDK's mapping; a
//! provider that knows its backend refines it first (a body saying
//! "invalid ciphertext" is `invalid-ciphertext`, a 404 on a key read is
//! `unknown-key`: Vault Transit does both) and falls back to them:
//!
//! | Cause | `kms-error` |
//! |---|---|
//! | HTTP 429, 5xx | `unavailable` (retrying later may succeed) |
//! | HTTP 401, 403 | `permission-denied` |
//! | any other non-2xx status (3xx, other 4xx) | `internal` |
//! | `http-error::denied` (not in `allowed_hosts`, secret or auth not allowed there, the auth's credential refused, answer withheld) | `permission-denied` |
//! | `http-error::unknown-secret` (secret or auth), `http-error::invalid-request` | `invalid-config` |
//! | `http-error::timeout`, `http-error::connection-failed` | `unavailable` |
//! | `http-error::response-too-large` | `internal` |

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::KmsError;
use crate::wit::kmsgate::provider::outbound_http as raw;
pub use crate::wit::kmsgate::provider::outbound_http::{HttpError, Method};

/// An outgoing request, built step by step:
///
/// ```
/// use kmsgate_provider::http::Request;
///
/// let request = Request::post("https://vault.example:8200/v1/transit/encrypt/kube")
///     .header("x-vault-namespace", "team-a")
///     .secret_header("x-vault-token", "token")
///     .json(&serde_json::json!({ "plaintext": "ZGVr" }));
/// assert_eq!(request.headers.len(), 2); // x-vault-namespace, content-type
/// assert!(!format!("{request:?}").contains("ZGVr"));
/// ```
///
/// Its `Debug` shows the body's length only: a body may hold a plaintext.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// Absolute `http://` or `https://` URL.
    pub url: String,
    /// Plain headers, sent as given. The host owns the framing and routing
    /// headers (`host`, `content-length`, ...): setting one makes the
    /// request `invalid-request`.
    pub headers: Vec<(String, String)>,
    /// (header name, secret name) pairs the host fills in.
    pub secret_headers: Vec<(String, String)>,
    /// The operator's auth the host authenticates the request with, if any.
    pub auth: Option<String>,
    /// The body; empty for none.
    pub body: Vec<u8>,
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: Method, url: impl Into<String>) -> Request {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            secret_headers: Vec::new(),
            auth: None,
            body: Vec::new(),
        }
    }

    /// `GET url`.
    pub fn get(url: impl Into<String>) -> Request {
        Request::new(Method::Get, url)
    }

    /// `POST url`.
    pub fn post(url: impl Into<String>) -> Request {
        Request::new(Method::Post, url)
    }

    /// `PUT url`.
    pub fn put(url: impl Into<String>) -> Request {
        Request::new(Method::Put, url)
    }

    /// `DELETE url`.
    pub fn delete(url: impl Into<String>) -> Request {
        Request::new(Method::Delete, url)
    }

    /// Adds a plain header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Asks the host to send the provider's secret `secret` as header
    /// `header`: `secret_header("x-vault-token", "token")`. The value never
    /// enters the sandbox; a header or host the operator did not allow for
    /// that secret is `denied`, an unconfigured secret `unknown-secret`.
    pub fn secret_header(
        mut self,
        header: impl Into<String>,
        secret: impl Into<String>,
    ) -> Request {
        self.secret_headers.push((header.into(), secret.into()));
        self
    }

    /// Asks the host to authenticate the request with the operator's auth
    /// named `auth` (`[providers.auth.<auth>]`), after it is built: a Vault
    /// token the host logs in for and renews, an AWS SigV4 signature, or a
    /// fixed header. The credential never enters the sandbox. No auth of
    /// that name is `unknown-secret`; a host not allowed for it, or a
    /// credential its backend refused, `denied`; a login endpoint that
    /// could not be reached, `connection-failed`.
    pub fn auth(mut self, auth: impl Into<String>) -> Request {
        self.auth = Some(auth.into());
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Sets the body to `value` as JSON, and `content-type:
    /// application/json`.
    ///
    /// # Panics
    /// If `value` cannot be serialised (a map with non-string keys, a
    /// failing `Serialize` impl): a bug, and bugs trap.
    pub fn json(self, value: &impl Serialize) -> Request {
        let body = serde_json::to_vec(value).expect("a request body that serialises to JSON");
        self.header("content-type", "application/json").body(body)
    }

    /// Sends the request through the host and waits for the whole answer,
    /// whatever its status. Outside a component there is no host: every
    /// request is `denied`.
    pub fn send(self) -> Result<Response, HttpError> {
        if cfg!(not(target_arch = "wasm32")) {
            return Err(HttpError::Denied(
                "outbound HTTP needs the kmsgate host (a wasm32 component)".into(),
            ));
        }
        let request = raw::Request {
            method: self.method,
            url: self.url,
            headers: self.headers,
            secret_headers: self.secret_headers,
            body: self.body,
        };
        let response = match &self.auth {
            Some(auth) => raw::send_with_auth(auth, &request)?,
            None => raw::send(&request)?,
        };
        Ok(Response {
            status: response.status,
            headers: response.headers,
            body: response.body,
        })
    }
}

/// Method, URL and headers; the body by length only.
impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &self.headers)
            .field("secret_headers", &self.secret_headers)
            .field("auth", &self.auth)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

/// An answer, whatever its status code. Its `Debug` shows the body's length
/// only: a body may hold a plaintext.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, as received.
    pub headers: Vec<(String, String)>,
    /// The whole body (the host caps its size).
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The response if its status is 2xx, else [`status_error`] for it;
    /// `context` says what was asked ("reading key kube").
    pub fn error_for_status(self, context: &str) -> Result<Response, KmsError> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(status_error(
                self.status,
                format!("{context}: HTTP {}", self.status),
            ))
        }
    }

    /// The body parsed as JSON; see [`from_json`].
    pub fn json<T: DeserializeOwned>(&self, context: &str) -> Result<T, KmsError> {
        from_json(&self.body, context)
    }
}

/// Status and headers; the body by length only.
impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

/// Parses `body` as JSON; a body that does not parse is `internal`,
/// prefixed with `context`. The message gives the kind of error and its
/// line and column but not serde's text, which can quote the body (and a
/// body may hold a plaintext).
pub fn from_json<T: DeserializeOwned>(body: &[u8], context: &str) -> Result<T, KmsError> {
    serde_json::from_slice(body).map_err(|e| {
        KmsError::Internal(format!(
            "{context}: unexpected answer ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

/// The `kms-error` for a non-2xx `status` that the provider could not
/// explain better (see the [module docs](self)): 429 and 5xx are
/// `unavailable`, 401 and 403 `permission-denied`, anything else
/// `internal`. `detail` becomes the message.
pub fn status_error(status: u16, detail: impl Into<String>) -> KmsError {
    let detail = detail.into();
    match status {
        429 | 500.. => KmsError::Unavailable(detail),
        401 | 403 => KmsError::PermissionDenied(detail),
        _ => KmsError::Internal(detail),
    }
}

/// The `kms-error` for a request the host did not answer (see the
/// [module docs](self)); `context` says what was asked
/// ("reading key kube at https://vault:8200") and prefixes the message.
pub fn transport_error(context: &str, error: HttpError) -> KmsError {
    match error {
        HttpError::Denied(reason) if reason.contains("allowed_hosts") => {
            KmsError::PermissionDenied(format!(
                "{context}: the host denied the request ({reason}); add the address to the provider's allowed_hosts"
            ))
        }
        HttpError::Denied(reason) => {
            KmsError::PermissionDenied(format!("{context}: the host denied the request ({reason})"))
        }
        HttpError::UnknownSecret(name) => KmsError::InvalidConfig(format!(
            "{context}: secret `{name}` is not configured for this provider"
        )),
        HttpError::InvalidRequest(reason) => KmsError::InvalidConfig(format!(
            "{context}: the host rejected the request as malformed ({reason}); check the provider's settings"
        )),
        HttpError::Timeout => {
            KmsError::Unavailable(format!("{context}: no answer within the host's timeout"))
        }
        HttpError::ConnectionFailed(reason) => {
            KmsError::Unavailable(format!("{context}: connection failed: {reason}"))
        }
        HttpError::ResponseTooLarge(cap) => KmsError::Internal(format!(
            "{context}: the answer exceeded the host's cap of {cap} bytes"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kms_errors() {
        for (status, expected) in [
            (429, "unavailable"),
            (500, "unavailable"),
            (503, "unavailable"),
            (599, "unavailable"),
            (401, "permission-denied"),
            (403, "permission-denied"),
            (400, "internal"),
            (404, "internal"),
            (408, "internal"),
            (302, "internal"),
        ] {
            let error = status_error(status, "detail");
            assert_eq!(kind(&error), expected, "{status}");
            assert!(format!("{error:?}").contains("detail"));
        }
    }

    #[test]
    fn transport_errors_map_to_kms_errors() {
        let map = |e| transport_error("reading key k", e);
        let denied = map(HttpError::Denied(
            "http://x:1 is not in the provider's allowed_hosts".into(),
        ));
        assert!(
            matches!(&denied, KmsError::PermissionDenied(m) if m.starts_with("reading key k:") && m.contains("add the address")),
            "{denied:?}"
        );
        assert!(
            matches!(map(HttpError::Denied("withheld".into())), KmsError::PermissionDenied(m) if !m.contains("add the address"))
        );
        assert!(
            matches!(map(HttpError::UnknownSecret("token".into())), KmsError::InvalidConfig(m) if m.contains("`token`"))
        );
        assert_eq!(
            kind(&map(HttpError::InvalidRequest("bad url".into()))),
            "invalid-config"
        );
        assert_eq!(kind(&map(HttpError::Timeout)), "unavailable");
        assert_eq!(
            kind(&map(HttpError::ConnectionFailed("refused".into()))),
            "unavailable"
        );
        assert_eq!(kind(&map(HttpError::ResponseTooLarge(1024))), "internal");
    }

    #[test]
    fn json_bodies_set_the_content_type_and_stay_out_of_debug() {
        let request = Request::post("http://v:1/x")
            .header("x-a", "1")
            .secret_header("x-vault-token", "token")
            .json(&serde_json::json!({"plaintext": "SECRET"}));
        assert_eq!(request.method, Method::Post);
        assert_eq!(
            request.headers,
            [
                ("x-a".to_string(), "1".to_string()),
                ("content-type".to_string(), "application/json".to_string())
            ]
        );
        assert_eq!(
            request.secret_headers,
            [("x-vault-token".to_string(), "token".to_string())]
        );
        assert_eq!(request.body, br#"{"plaintext":"SECRET"}"#);
        assert!(!format!("{request:?}").contains("SECRET"));
    }

    #[test]
    fn responses_parse_without_quoting_the_body() {
        let response = Response {
            status: 200,
            headers: Vec::new(),
            body: br#"{"n":"SECRET"}"#.to_vec(),
        };
        assert!(!format!("{response:?}").contains("SECRET"));
        #[derive(serde::Deserialize, Debug)]
        struct Number {
            #[allow(dead_code)]
            n: u32,
        }
        let error = response.json::<Number>("reading n").unwrap_err();
        assert!(
            matches!(&error, KmsError::Internal(m) if m.starts_with("reading n:") && !m.contains("SECRET")),
            "{error:?}"
        );
        let failed = Response {
            status: 503,
            ..response
        };
        assert_eq!(
            kind(&failed.error_for_status("reading n").unwrap_err()),
            "unavailable"
        );
    }

    #[test]
    fn outside_a_component_requests_are_denied() {
        assert!(matches!(
            Request::get("http://v:1/").send(),
            Err(HttpError::Denied(_))
        ));
    }

    fn kind(error: &KmsError) -> &'static str {
        match error {
            KmsError::InvalidArgument(_) => "invalid-argument",
            KmsError::InvalidCiphertext(_) => "invalid-ciphertext",
            KmsError::UnknownKey(_) => "unknown-key",
            KmsError::PermissionDenied(_) => "permission-denied",
            KmsError::Unavailable(_) => "unavailable",
            KmsError::InvalidConfig(_) => "invalid-config",
            KmsError::Internal(_) => "internal",
        }
    }
}
