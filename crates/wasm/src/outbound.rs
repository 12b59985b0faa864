//! Outbound HTTP for providers, in one place: the allowlist, the resolved
//! address check, TLS settings, timeouts, the response size cap and the
//! secrets the host attaches. The Wasm host import only translates types
//! into and out of [`OutboundClient::send`].
//!
//! Credentials stay in the host, both ways:
//! - a secret goes only into the headers the operator allowed for it
//!   (`secrets.<name>.headers`) and only to its hosts (`.hosts`);
//! - the host owns the headers that frame or route a request
//!   ([`HOST_OWNED_HEADERS`]): a provider cannot set `Host` (to reach
//!   another virtual host behind an allowed address), ask for compression
//!   or a byte range (to get a credential back in a form the host cannot
//!   search), or break the framing;
//! - a response that carries any of the provider's credentials, in any
//!   form [`crate::leak`] knows, is withheld (a `denied` value), as is a
//!   compressed one.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderName, HeaderValue};
use thiserror::Error;
use url::Url;

use crate::allowlist::{Allowlist, address_permitted};
use crate::leak::LeakDetector;
use crate::spec::{OutboundConfig, SecretConfig};
use kmsgate_core::secret::Secret;

/// Request headers only the host sets: they route the request (`host`),
/// frame it, or shape the response (`accept-encoding`, `range`) in ways
/// that would let a response slip past the credential search.
pub const HOST_OWNED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "accept-encoding",
    "range",
    "if-range",
    "proxy-authorization",
    "proxy-connection",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
];

/// Header name prefixes only the host sets: Vault's response wrapping
/// (`X-Vault-Wrap-TTL`) would turn any answer, `lookup-self`'s included,
/// into a token that unwraps to it later, past the credential search.
const HOST_OWNED_PREFIXES: &[&str] = &["x-vault-wrap-"];

/// Whether only the host may set header `name` (lowercase).
fn host_owned(name: &str) -> bool {
    HOST_OWNED_HEADERS.contains(&name)
        || HOST_OWNED_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
}

/// Headers a provider may send, at most; longer header values and URLs are
/// refused too. Generous for any KMS API, small for abuse.
const MAX_HEADERS: usize = 64;
const MAX_HEADER_VALUE: usize = 8 << 10;
const MAX_URL: usize = 8 << 10;

/// Whether `name` may carry a secret: a lowercase header name the host does
/// not own.
pub fn check_secret_header(name: &str) -> Result<(), String> {
    if HeaderName::from_bytes(name.as_bytes()).is_err() || name.to_ascii_lowercase() != name {
        return Err(format!("{name:?} is not a lowercase header name"));
    }
    if host_owned(name) {
        return Err(format!("{name:?} is set by the host, never from a secret"));
    }
    Ok(())
}

/// A secret with where it may go.
pub struct SecretGrant {
    pub value: Secret,
    /// Lowercase header names it may be sent in.
    pub headers: Vec<String>,
    /// Hosts it may be sent to (within the provider's allowlist).
    pub hosts: Option<Allowlist>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

/// An outbound request. Its body may carry plaintext (Transit's encrypt
/// takes it base64-encoded), so `Debug` prints only its length.
#[derive(Clone)]
pub struct OutboundRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// (header name, secret name): the host fills in the secret's value.
    pub secret_headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A response. Its body may carry plaintext (Transit's decrypt answer), so
/// `Debug` prints only its length.
#[derive(Clone)]
pub struct OutboundResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for OutboundRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &self.headers)
            .field("secret_headers", &self.secret_headers)
            .field("body", &format_args!("{} bytes", self.body.len()))
            .finish()
    }
}

impl std::fmt::Debug for OutboundResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundResponse")
            .field("status", &self.status)
            .field("body", &format_args!("{} bytes", self.body.len()))
            .finish_non_exhaustive()
    }
}

/// Mirrors the WIT `http-error`.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum OutboundError {
    #[error("denied: {0}")]
    Denied(String),
    #[error("no secret named {0:?} is configured for this provider")]
    UnknownSecret(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    ConnectionFailed(String),
    #[error("response body exceeds {0} bytes")]
    ResponseTooLarge(u64),
}

/// Everything needed to build an [`OutboundClient`], resolved from config.
pub struct OutboundSettings {
    /// For log lines.
    pub provider: String,
    pub allowlist: Allowlist,
    /// `outbound.allowed_hosts` as written: the default hosts of an auth.
    pub allowlist_entries: Vec<String>,
    pub secrets: HashMap<String, SecretGrant>,
    pub timeout: Duration,
    pub max_response_bytes: u64,
    pub ca_pem: Option<Vec<u8>>,
    /// Certificate and key, PEM, concatenated.
    pub identity_pem: Option<Vec<u8>>,
    /// The provider's auths (`send-with-auth`), started with the client.
    pub auth: std::collections::BTreeMap<String, crate::spec::AuthConfig>,
}

/// The TLS files an [`OutboundConfig`] names, read.
#[derive(Default)]
pub struct TlsFiles {
    pub ca_pem: Option<Vec<u8>>,
    /// Certificate and key, PEM, concatenated.
    pub identity_pem: Option<Vec<u8>>,
}

impl TlsFiles {
    /// Reads them (blocking; see [`kmsgate_core::files`]).
    pub fn read(config: &OutboundConfig) -> Result<TlsFiles, String> {
        let read = |path: &std::path::Path| {
            kmsgate_core::files::read_bounded(path, kmsgate_core::files::MAX_SMALL_FILE)
        };
        let identity_pem = match (&config.client_cert_file, &config.client_key_file) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                Some(pem)
            }
            _ => None,
        };
        Ok(TlsFiles {
            ca_pem: config.ca_file.as_deref().map(read).transpose()?,
            identity_pem,
        })
    }
}

impl OutboundSettings {
    /// `values` are the resolved values of `secrets`, `tls` the files
    /// `config` names.
    pub fn from_config(
        provider: &str,
        config: &OutboundConfig,
        secrets: &std::collections::BTreeMap<String, SecretConfig>,
        mut values: HashMap<String, Secret>,
        tls: TlsFiles,
        auth: &BTreeMap<String, crate::spec::AuthConfig>,
    ) -> Result<OutboundSettings, String> {
        let mut grants = HashMap::new();
        for (name, secret) in secrets {
            let value = values
                .remove(name)
                .ok_or_else(|| format!("secret {name} was not resolved"))?;
            let hosts = (!secret.hosts.is_empty())
                .then(|| Allowlist::parse(&secret.hosts))
                .transpose()?;
            grants.insert(
                name.clone(),
                SecretGrant {
                    value,
                    headers: secret.headers.clone(),
                    hosts,
                },
            );
        }
        Ok(OutboundSettings {
            provider: provider.to_owned(),
            allowlist: Allowlist::parse(&config.allowed_hosts)?,
            allowlist_entries: config.allowed_hosts.clone(),
            secrets: grants,
            timeout: Duration::from_millis(config.timeout_ms),
            max_response_bytes: config.max_response_bytes,
            ca_pem: tls.ca_pem,
            identity_pem: tls.identity_pem,
            auth: auth.clone(),
        })
    }
}

/// A client with the host's fixed policy: no redirects (one could lead
/// outside the allowlist), no proxy, names resolved through
/// [`PolicyResolver`], and the operator's CA bundle when given. Providers'
/// requests and the auths' own (logins, renewals) both start here.
pub(crate) fn client_builder(
    timeout: Duration,
    ca_pem: Option<&[u8]>,
) -> Result<reqwest::ClientBuilder, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(PolicyResolver))
        .no_proxy()
        .user_agent(concat!("kmsgate/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("parsing ca_file: {e}"))?;
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

/// One provider's outbound HTTP client. Cheap to clone.
#[derive(Clone)]
pub struct OutboundClient {
    inner: Arc<Inner>,
}

struct Inner {
    provider: String,
    auths: crate::auth::Auths,
    client: reqwest::Client,
    allowlist: Allowlist,
    secrets: HashMap<String, SecretGrant>,
    leaks: LeakDetector,
    max_response_bytes: u64,
    /// Withheld responses are logged at most this often.
    withheld_log: kmsgate_core::log_limit::LogLimit,
}

impl OutboundClient {
    pub fn new(settings: OutboundSettings) -> Result<OutboundClient, String> {
        // Providers see a redirect as a 3xx answer.
        let mut builder = client_builder(settings.timeout, settings.ca_pem.as_deref())?;
        if let Some(pem) = &settings.identity_pem {
            let identity = reqwest::Identity::from_pem(pem)
                .map_err(|e| format!("parsing client certificate or key: {e}"))?;
            builder = builder.identity(identity);
        }
        let client = builder
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        let leaks = LeakDetector::new(
            settings
                .secrets
                .iter()
                .map(|(name, grant)| (name.as_str(), grant.value.expose().as_bytes())),
        );
        for (name, grant) in &settings.secrets {
            let length = grant.value.expose().len();
            if length < crate::leak::SHORT_CREDENTIAL {
                tracing::warn!(
                    provider = %settings.provider,
                    "secret {name:?} is only {length} bytes: every response is searched for it, and one that contains it by chance (likelier the shorter it is) is withheld from the provider; use a secret of at least {} bytes",
                    crate::leak::SHORT_CREDENTIAL
                );
            }
        }
        let auths = crate::auth::Auths::start(
            &settings.auth,
            &crate::auth::AuthContext {
                provider: &settings.provider,
                allowed_hosts: &settings.allowlist_entries,
                ca_pem: settings.ca_pem.as_deref(),
                timeout: settings.timeout,
            },
        )?;
        Ok(OutboundClient {
            inner: Arc::new(Inner {
                auths,
                provider: settings.provider,
                client,
                allowlist: settings.allowlist,
                secrets: settings.secrets,
                leaks,
                max_response_bytes: settings.max_response_bytes,
                withheld_log: kmsgate_core::log_limit::LogLimit::default(),
            }),
        })
    }

    pub async fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        self.send_inner(None, request).await
    }

    /// Sends `request` authenticated by the provider's auth `auth`
    /// (`send-with-auth`).
    pub async fn send_with_auth(
        &self,
        auth: &str,
        request: OutboundRequest,
    ) -> Result<OutboundResponse, OutboundError> {
        let auth = self
            .inner
            .auths
            .get(auth)
            .ok_or_else(|| OutboundError::UnknownSecret(auth.to_owned()))?
            .clone();
        self.send_inner(Some(&auth), request).await
    }

    /// The provider's auths' states, for views and metrics.
    pub fn auth_statuses(&self) -> Vec<kmsgate_core::kms::CredentialStatus> {
        self.inner.auths.statuses()
    }

    async fn send_inner(
        &self,
        auth: Option<&crate::auth::Auth>,
        request: OutboundRequest,
    ) -> Result<OutboundResponse, OutboundError> {
        let inner = &self.inner;
        if request.url.len() > MAX_URL {
            return Err(OutboundError::InvalidRequest(format!(
                "URL longer than {MAX_URL} bytes"
            )));
        }
        let url = Url::parse(&request.url)
            .map_err(|e| OutboundError::InvalidRequest(format!("bad URL: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OutboundError::InvalidRequest(
                "credentials in the URL".into(),
            ));
        }
        inner.allowlist.check(&url).map_err(OutboundError::Denied)?;
        if request.headers.len() + request.secret_headers.len() > MAX_HEADERS {
            return Err(OutboundError::InvalidRequest(format!(
                "more than {MAX_HEADERS} headers"
            )));
        }

        let method = match request.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder = inner
            .client
            .request(method, url.clone())
            // Nothing the credential search cannot read.
            .header(reqwest::header::ACCEPT_ENCODING, "identity");
        for (name, value) in &request.headers {
            let name = header_name(name)?;
            if host_owned(name.as_str()) {
                return Err(OutboundError::InvalidRequest(format!(
                    "header {name:?} is set by the host"
                )));
            }
            if auth.is_some() && crate::auth::AUTH_OWNED_HEADERS.contains(&name.as_str()) {
                return Err(OutboundError::InvalidRequest(format!(
                    "header {name:?} is set by the auth"
                )));
            }
            builder = builder.header(name, header_value(value)?);
        }
        for (name, secret_name) in &request.secret_headers {
            let grant = inner
                .secrets
                .get(secret_name)
                .ok_or_else(|| OutboundError::UnknownSecret(secret_name.clone()))?;
            let name = header_name(name)?;
            if !grant.headers.iter().any(|allowed| allowed == name.as_str()) {
                return Err(OutboundError::Denied(format!(
                    "secret {secret_name:?} may not be sent in header {name:?} (secrets.{secret_name}.headers allows {:?})",
                    grant.headers
                )));
            }
            if let Some(hosts) = &grant.hosts {
                hosts.check(&url).map_err(|_| {
                    OutboundError::Denied(format!(
                        "secret {secret_name:?} may not be sent to {} (secrets.{secret_name}.hosts)",
                        url.origin().ascii_serialization()
                    ))
                })?;
            }
            let mut value = HeaderValue::from_str(grant.value.expose()).map_err(|_| {
                OutboundError::InvalidRequest(format!(
                    "secret {secret_name:?} is not a valid header value"
                ))
            })?;
            value.set_sensitive(true);
            builder = builder.header(name, value);
        }
        let mut outgoing = builder
            .body(request.body)
            .build()
            .map_err(|e| OutboundError::InvalidRequest(e.to_string()))?;
        if let Some(auth) = auth {
            if !auth.covers(&url) {
                return Err(OutboundError::Denied(format!(
                    "auth {:?} may not be sent to {} (auth.{}.hosts)",
                    auth.name(),
                    url.origin().ascii_serialization(),
                    auth.name()
                )));
            }
            let credential = auth.credential().await.map_err(|problem| {
                if problem.refused {
                    OutboundError::Denied(problem.message)
                } else {
                    OutboundError::ConnectionFailed(problem.message)
                }
            })?;
            auth.apply(&credential, &mut outgoing)
                .map_err(OutboundError::InvalidRequest)?;
        }
        let mut response = inner.client.execute(outgoing).await.map_err(classify)?;

        let status = response.status().as_u16();
        if let Some(auth) = auth {
            auth.answered(status);
        }
        let cap = inner.max_response_bytes;
        if response.content_length().is_some_and(|len| len > cap) {
            return Err(OutboundError::ResponseTooLarge(cap));
        }
        let encoding = response
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .map(|value| value.to_str().unwrap_or("?").to_ascii_lowercase());
        if encoding.is_some_and(|encoding| encoding != "identity") {
            return Err(self.withhold(&url, "it is compressed, which the host does not search"));
        }
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if (body.len() + chunk.len()) as u64 > cap {
                return Err(OutboundError::ResponseTooLarge(cap));
            }
            body.extend_from_slice(&chunk);
        }
        let header_text: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\n"))
            .collect();
        if let Some(secret) = inner.leaks.find(&[header_text.as_bytes(), &body]) {
            return Err(self.withhold(
                &url,
                &format!("it carries the provider's secret {secret:?}"),
            ));
        }
        // Every auth's credentials, not only this request's: a provider
        // must not get one auth's token back through a request sent with
        // another, or with none.
        for auth in inner.auths.iter() {
            if let Some(leaks) = auth.leaks()
                && leaks.find(&[header_text.as_bytes(), &body]).is_some()
            {
                return Err(self.withhold(
                    &url,
                    &format!("it carries the credential of auth {:?}", auth.name()),
                ));
            }
        }
        Ok(OutboundResponse {
            status,
            headers,
            body,
        })
    }

    /// Refuses a response the guest must not see, and says so (in the
    /// log at most every few seconds: a hostile provider could repeat it).
    fn withhold(&self, url: &Url, why: &str) -> OutboundError {
        let inner = &self.inner;
        let origin = url.origin().ascii_serialization();
        if inner.withheld_log.allow() {
            tracing::warn!(provider = %inner.provider, %origin, "withheld a response from the provider: {why}");
        }
        OutboundError::Denied(format!("the host withheld the response of {origin}: {why}"))
    }
}

fn header_name(name: &str) -> Result<HeaderName, OutboundError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| OutboundError::InvalidRequest(format!("bad header name {name:?}")))
}

fn header_value(value: &str) -> Result<HeaderValue, OutboundError> {
    if value.len() > MAX_HEADER_VALUE {
        return Err(OutboundError::InvalidRequest(format!(
            "header value longer than {MAX_HEADER_VALUE} bytes"
        )));
    }
    HeaderValue::from_str(value)
        .map_err(|_| OutboundError::InvalidRequest("bad header value".into()))
}

/// Turns a reqwest error into the WIT's vocabulary. A refusal by
/// [`PolicyResolver`] is found in the error's source chain.
fn classify(error: reqwest::Error) -> OutboundError {
    if error.is_timeout() {
        return OutboundError::Timeout;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(denied) = e.downcast_ref::<ResolutionDenied>() {
            return OutboundError::Denied(denied.to_string());
        }
        source = e.source();
    }
    // reqwest's Display hides the cause; the chain names it (refused, TLS).
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(e) = source {
        message = format!("{message}: {e}");
        source = e.source();
    }
    OutboundError::ConnectionFailed(message)
}

#[derive(Debug, Error)]
#[error("{host} resolves only to addresses providers may not reach")]
struct ResolutionDenied {
    host: String,
}

/// Resolves DNS names and drops addresses [`address_permitted`] forbids, so
/// the connection goes only to an address that was checked.
struct PolicyResolver;

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let permitted: Vec<SocketAddr> = resolved
                .filter(|addr| address_permitted(&host, addr.ip()))
                .collect();
            if permitted.is_empty() {
                return Err(Box::new(ResolutionDenied { host }) as _);
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn client(allowed: &[String], secrets: &[(&str, &str)], cap: u64) -> OutboundClient {
        OutboundClient::new(OutboundSettings {
            provider: "test".into(),
            allowlist: Allowlist::parse(allowed).unwrap(),
            secrets: secrets
                .iter()
                .map(|(k, v)| {
                    let grant = SecretGrant {
                        value: Secret::new(v.to_string()),
                        headers: vec!["x-vault-token".into()],
                        hosts: None,
                    };
                    (k.to_string(), grant)
                })
                .collect(),
            timeout: Duration::from_secs(2),
            max_response_bytes: cap,
            ca_pem: None,
            identity_pem: None,
            auth: BTreeMap::new(),
            allowlist_entries: Vec::new(),
        })
        .unwrap()
    }

    fn get(url: String) -> OutboundRequest {
        OutboundRequest {
            method: Method::Get,
            url,
            headers: vec![],
            secret_headers: vec![("x-vault-token".into(), "token".into())],
            body: vec![],
        }
    }

    /// A one-shot HTTP server on loopback that answers `body` and hands back
    /// the raw request it saw.
    async fn serve_once(body: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        answer_once("HTTP/1.1 200 OK".into(), body.into()).await
    }

    #[tokio::test]
    async fn allowed_request_gets_the_secret_attached() {
        let (base, server) = serve_once("hello").await;
        let client = client(std::slice::from_ref(&base), &[("token", "s.abc")], 1024);
        let response = client.send(get(format!("{base}/v1/x"))).await.unwrap();
        assert_eq!(
            (response.status, response.body.as_slice()),
            (200, &b"hello"[..])
        );
        assert!(
            server
                .await
                .unwrap()
                .to_lowercase()
                .contains("x-vault-token: s.abc")
        );
    }

    #[test]
    fn debug_shows_body_lengths_not_bodies() {
        let mut request = get("http://vault:8200/".into());
        request.body = b"{\"plaintext\":\"c2VjcmV0\"}".to_vec();
        let response = OutboundResponse {
            status: 200,
            headers: vec![],
            body: b"c2VjcmV0".to_vec(),
        };
        let shown = format!("{request:?} {response:?}");
        assert!(
            !shown.contains("c2VjcmV0") && shown.contains("24 bytes"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn denials_are_values() {
        let client = client(&["http://127.0.0.1:1".into()], &[], 1024);
        let denied = client
            .send(get("http://127.0.0.2:1/".into()))
            .await
            .unwrap_err();
        assert!(matches!(denied, OutboundError::Denied(_)), "{denied:?}");
        let unknown = client
            .send(get("http://127.0.0.1:1/".into()))
            .await
            .unwrap_err();
        assert_eq!(unknown, OutboundError::UnknownSecret("token".into()));
    }

    #[tokio::test]
    async fn oversize_responses_are_cut_off() {
        let (base, _server) = serve_once("0123456789").await;
        let client = client(std::slice::from_ref(&base), &[("token", "t")], 4);
        let error = client.send(get(format!("{base}/"))).await.unwrap_err();
        assert_eq!(error, OutboundError::ResponseTooLarge(4));
    }

    /// A one-shot server that answers with `head` (status line and
    /// headers, no blank line) and `body`.
    async fn answer_once(head: String, body: String) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let n = socket.read(&mut buf).await.unwrap();
            let reply = format!("{head}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            socket.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (format!("http://{addr}"), task)
    }

    #[tokio::test]
    async fn a_response_carrying_the_secret_is_withheld() {
        for (head, body) in [
            (
                "HTTP/1.1 200 OK".to_string(),
                r#"{"data":{"id":"s.abcdef123"}}"#.to_string(),
            ),
            (
                "HTTP/1.1 200 OK\r\nx-echo: s.abcdef123".to_string(),
                String::new(),
            ),
            (
                "HTTP/1.1 200 OK".to_string(),
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    "x-vault-token: s.abcdef123",
                ),
            ),
        ] {
            let (base, _server) = answer_once(head, body).await;
            let client = client(
                std::slice::from_ref(&base),
                &[("token", "s.abcdef123")],
                1024,
            );
            let error = client.send(get(format!("{base}/"))).await.unwrap_err();
            assert!(
                matches!(&error, OutboundError::Denied(m) if m.contains("secret \"token\"")),
                "{error:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_compressed_response_is_withheld_and_none_is_asked_for() {
        let (base, server) = answer_once(
            "HTTP/1.1 200 OK\r\ncontent-encoding: gzip".into(),
            "not really gzip".into(),
        )
        .await;
        let client = client(std::slice::from_ref(&base), &[("token", "t")], 1024);
        let error = client.send(get(format!("{base}/"))).await.unwrap_err();
        assert!(
            matches!(&error, OutboundError::Denied(m) if m.contains("compressed")),
            "{error:?}"
        );
        let request = server.await.unwrap().to_lowercase();
        assert!(request.contains("accept-encoding: identity"), "{request}");
    }

    #[tokio::test]
    async fn oversize_urls_header_lists_and_header_values_are_refused() {
        let client = client(&["http://127.0.0.1:1".into()], &[], 1024);
        let base = "http://127.0.0.1:1/";
        let long_url = get(format!("{base}{}", "a".repeat(MAX_URL)));
        let mut many_headers = get(base.into());
        many_headers.headers = (0..=MAX_HEADERS)
            .map(|i| (format!("x-h{i}"), "v".into()))
            .collect();
        let mut long_value = get(base.into());
        long_value.headers = vec![("x-long".into(), "v".repeat(MAX_HEADER_VALUE + 1))];
        for (what, request) in [
            ("url", long_url),
            ("headers", many_headers),
            ("value", long_value),
        ] {
            let error = client.send(request).await.unwrap_err();
            assert!(
                matches!(&error, OutboundError::InvalidRequest(m) if m.contains("longer than") || m.contains("more than")),
                "{what}: {error:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_guest_cannot_set_host_owned_headers_or_misplace_a_secret() {
        let client = client(&["http://127.0.0.1:1".into()], &[("token", "t")], 1024);
        for name in [
            "Host",
            "accept-encoding",
            "range",
            "content-length",
            "X-Vault-Wrap-TTL",
        ] {
            let mut request = get("http://127.0.0.1:1/".into());
            request.headers = vec![(name.into(), "x".into())];
            let error = client.send(request).await.unwrap_err();
            assert!(
                matches!(error, OutboundError::InvalidRequest(_)),
                "{name}: {error:?}"
            );
        }
        for name in ["host", "x-echo", "authorization"] {
            let mut request = get("http://127.0.0.1:1/".into());
            request.secret_headers = vec![(name.into(), "token".into())];
            let error = client.send(request).await.unwrap_err();
            assert!(
                matches!(&error, OutboundError::Denied(m) if m.contains("may not be sent in header")),
                "{name}: {error:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_secret_goes_only_to_its_hosts() {
        let allowed = [
            "http://127.0.0.1:1".to_string(),
            "http://127.0.0.2:1".to_string(),
        ];
        let client = OutboundClient::new(OutboundSettings {
            provider: "test".into(),
            allowlist: Allowlist::parse(&allowed).unwrap(),
            secrets: HashMap::from([(
                "token".to_string(),
                SecretGrant {
                    value: Secret::new("t".into()),
                    headers: vec!["x-vault-token".into()],
                    hosts: Some(Allowlist::parse(&allowed[..1]).unwrap()),
                },
            )]),
            timeout: Duration::from_secs(2),
            max_response_bytes: 1024,
            ca_pem: None,
            identity_pem: None,
            auth: BTreeMap::new(),
            allowlist_entries: Vec::new(),
        })
        .unwrap();
        let error = client
            .send(get("http://127.0.0.2:1/".into()))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, OutboundError::Denied(m) if m.contains("secrets.token.hosts")),
            "{error:?}"
        );
    }

    /// A client with one `header` auth named `api` (`Bearer ` prefix,
    /// value from a file) for `hosts`.
    fn client_with_header_auth(
        allowed: &[String],
        hosts: &[String],
        value: &std::path::Path,
    ) -> OutboundClient {
        let config: crate::spec::AuthConfig = toml::from_str(&format!(
            "kind = \"header\"\nheader = \"authorization\"\nprefix = \"Bearer \"\nvalue = {{ file = {:?} }}\nhosts = {hosts:?}\n",
            value.display().to_string()
        ))
        .unwrap();
        OutboundClient::new(OutboundSettings {
            provider: "test".into(),
            allowlist: Allowlist::parse(allowed).unwrap(),
            allowlist_entries: allowed.to_vec(),
            secrets: HashMap::new(),
            timeout: Duration::from_secs(2),
            max_response_bytes: 1024,
            ca_pem: None,
            identity_pem: None,
            auth: BTreeMap::from([("api".to_string(), config)]),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn an_auth_is_applied_by_the_host_only_where_it_may_go() {
        let dir = tempfile::tempdir().unwrap();
        let value = dir.path().join("api-key");
        std::fs::write(&value, "k-123456789\n").unwrap();
        let (base, server) = serve_once("ok").await;
        let other = "http://127.0.0.2:1".to_string();
        let client = client_with_header_auth(
            &[base.clone(), other.clone()],
            std::slice::from_ref(&base),
            &value,
        );
        let mut request = get(format!("{base}/v1/x"));
        request.secret_headers.clear();
        let response = client.send_with_auth("api", request.clone()).await.unwrap();
        assert_eq!(response.status, 200);
        let seen = server.await.unwrap().to_lowercase();
        assert!(seen.contains("authorization: bearer k-123456789"), "{seen}");

        let unknown = client
            .send_with_auth("nope", request.clone())
            .await
            .unwrap_err();
        assert_eq!(unknown, OutboundError::UnknownSecret("nope".into()));
        let mut to_other = request.clone();
        to_other.url = format!("{other}/");
        let elsewhere = client.send_with_auth("api", to_other).await.unwrap_err();
        assert!(
            matches!(&elsewhere, OutboundError::Denied(m) if m.contains("auth.api.hosts")),
            "{elsewhere:?}"
        );
        let mut own_header = request;
        own_header.headers = vec![("authorization".into(), "Bearer mine".into())];
        let error = client.send_with_auth("api", own_header).await.unwrap_err();
        assert!(
            matches!(error, OutboundError::InvalidRequest(_)),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_response_carrying_an_auths_credential_is_withheld_whoever_asked() {
        let dir = tempfile::tempdir().unwrap();
        let value = dir.path().join("api-key");
        std::fs::write(&value, "k-123456789").unwrap();
        let (base, _server) =
            answer_once("HTTP/1.1 200 OK".into(), "echo: k-123456789".into()).await;
        let client = client_with_header_auth(std::slice::from_ref(&base), &[], &value);
        let mut plain = get(format!("{base}/"));
        plain.secret_headers.clear();
        // Once the auth holds its credential, a request sent without the
        // auth still must not get it back.
        client
            .inner
            .auths
            .get("api")
            .unwrap()
            .credential()
            .await
            .unwrap();
        let error = client.send(plain).await.unwrap_err();
        assert!(
            matches!(&error, OutboundError::Denied(m) if m.contains("credential of auth \"api\"")),
            "{error:?}"
        );
    }

    #[test]
    fn secret_headers_are_lowercase_and_never_host_owned() {
        assert!(check_secret_header("x-vault-token").is_ok());
        assert!(check_secret_header("X-Vault-Token").is_err());
        assert!(check_secret_header("host").is_err());
        assert!(check_secret_header("bad header").is_err());
    }

    #[tokio::test]
    async fn refused_connections_are_connection_failures() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = client(&[format!("http://{addr}")], &[("token", "t")], 4);
        let error = client
            .send(get(format!("http://{addr}/")))
            .await
            .unwrap_err();
        assert!(
            matches!(error, OutboundError::ConnectionFailed(_)),
            "{error:?}"
        );
    }
}
