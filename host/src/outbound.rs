//! Outbound HTTP for providers, in one place: the allowlist, the resolved
//! address check, TLS settings, timeouts, the response size cap and the
//! secrets the host attaches. The Wasm host import only translates types
//! into and out of [`OutboundClient::send`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderName, HeaderValue};
use thiserror::Error;
use url::Url;

use crate::allowlist::{Allowlist, address_permitted};
use crate::config::OutboundConfig;
use crate::secret::Secret;

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
    pub allowlist: Allowlist,
    pub secrets: HashMap<String, Secret>,
    pub timeout: Duration,
    pub max_response_bytes: u64,
    pub ca_pem: Option<Vec<u8>>,
    /// Certificate and key, PEM, concatenated.
    pub identity_pem: Option<Vec<u8>>,
}

impl OutboundSettings {
    /// Reads the TLS files named in `config`.
    pub fn from_config(
        config: &OutboundConfig,
        secrets: HashMap<String, Secret>,
    ) -> Result<OutboundSettings, String> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("reading {path:?}: {e}"))
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
        Ok(OutboundSettings {
            allowlist: Allowlist::parse(&config.allowed_hosts)?,
            secrets,
            timeout: Duration::from_millis(config.timeout_ms),
            max_response_bytes: config.max_response_bytes,
            ca_pem: config.ca_file.as_deref().map(read).transpose()?,
            identity_pem,
        })
    }
}

/// One provider's outbound HTTP client. Cheap to clone.
#[derive(Clone)]
pub struct OutboundClient {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    allowlist: Allowlist,
    secrets: HashMap<String, Secret>,
    max_response_bytes: u64,
}

impl OutboundClient {
    pub fn new(settings: OutboundSettings) -> Result<OutboundClient, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // A redirect could lead outside the allowlist; providers see 3xx.
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(PolicyResolver))
            .no_proxy()
            .user_agent(concat!("kmsgate/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &settings.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("parsing ca_file: {e}"))?;
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(pem) = &settings.identity_pem {
            let identity = reqwest::Identity::from_pem(pem)
                .map_err(|e| format!("parsing client certificate or key: {e}"))?;
            builder = builder.identity(identity);
        }
        let client = builder
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(OutboundClient {
            inner: Arc::new(Inner {
                client,
                allowlist: settings.allowlist,
                secrets: settings.secrets,
                max_response_bytes: settings.max_response_bytes,
            }),
        })
    }

    pub async fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        let inner = &self.inner;
        let url = Url::parse(&request.url)
            .map_err(|e| OutboundError::InvalidRequest(format!("bad URL: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OutboundError::InvalidRequest(
                "credentials in the URL".into(),
            ));
        }
        inner.allowlist.check(&url).map_err(OutboundError::Denied)?;

        let method = match request.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder = inner.client.request(method, url);
        for (name, value) in &request.headers {
            builder = builder.header(header_name(name)?, header_value(value)?);
        }
        for (name, secret_name) in &request.secret_headers {
            let secret = inner
                .secrets
                .get(secret_name)
                .ok_or_else(|| OutboundError::UnknownSecret(secret_name.clone()))?;
            let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| {
                OutboundError::InvalidRequest(format!(
                    "secret {secret_name:?} is not a valid header value"
                ))
            })?;
            value.set_sensitive(true);
            builder = builder.header(header_name(name)?, value);
        }
        let mut response = builder.body(request.body).send().await.map_err(classify)?;

        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect();
        let cap = inner.max_response_bytes;
        if response.content_length().is_some_and(|len| len > cap) {
            return Err(OutboundError::ResponseTooLarge(cap));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if (body.len() + chunk.len()) as u64 > cap {
                return Err(OutboundError::ResponseTooLarge(cap));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(OutboundResponse {
            status,
            headers,
            body,
        })
    }
}

fn header_name(name: &str) -> Result<HeaderName, OutboundError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| OutboundError::InvalidRequest(format!("bad header name {name:?}")))
}

fn header_value(value: &str) -> Result<HeaderValue, OutboundError> {
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
            allowlist: Allowlist::parse(allowed).unwrap(),
            secrets: secrets
                .iter()
                .map(|(k, v)| (k.to_string(), Secret::new(v.to_string())))
                .collect(),
            timeout: Duration::from_secs(2),
            max_response_bytes: cap,
            ca_pem: None,
            identity_pem: None,
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let n = socket.read(&mut buf).await.unwrap();
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (format!("http://{addr}"), task)
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
