//! The Vault kinds: a given token (`vault-token`), looked up and renewed;
//! and logins that obtain one (`vault-approle`, `vault-jwt`, `vault-cert`),
//! renewed while Vault allows and replaced by a new login when it stops
//! (the token's max TTL) or Vault refuses it.
//!
//! Each token is renewed at half its lease. A renewal that comes back with
//! a shorter lease than the token started with has hit the max TTL: the
//! next refresh logs in again instead (a given token cannot, and is then
//! warned about).
//!
//! Why there is no `vault-kubernetes` kind: Vault's `kubernetes` auth
//! method checks the service-account token by calling the Kubernetes
//! TokenReview API, that is, the apiserver, and the apiserver needs this
//! plugin to start (it decrypts Secrets through it). A control plane
//! restarted cold would wait on itself. `vault-jwt` checks the same
//! projected token against keys Vault already holds
//! (`jwt_validation_pubkeys` or the cluster's OIDC discovery, fetched
//! ahead of time), without calling the apiserver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderName;
use serde::Deserialize;
use url::Url;
use zeroize::Zeroizing;

use super::source::InputSources;
use super::{AuthContext, Credential, Obtained, Problem};
use crate::leak::LeakDetector;
use crate::spec::{AuthConfig, Source};
use kmsgate_core::secret::Secret;

/// The largest Vault answer read.
const MAX_ANSWER: usize = 256 << 10;

pub struct Vault {
    address: Url,
    namespace: Option<String>,
    login: Login,
    /// For every request but a cert login (which presents the certificate).
    client: reqwest::Client,
    ca_pem: Option<Vec<u8>>,
    timeout: Duration,
    /// The lease the current token started with, in seconds: a renewal
    /// that returns less has reached the max TTL.
    first_lease: AtomicU64,
    /// For cert login, the client that presented the certificate: Vault
    /// checks it again when the token is renewed.
    cert_client: std::sync::Mutex<Option<reqwest::Client>>,
}

enum Login {
    /// No login: the operator's token.
    Token,
    Approle {
        mount: String,
    },
    Jwt {
        mount: String,
        role: String,
    },
    Cert {
        mount: String,
        name: Option<String>,
    },
}

impl Vault {
    pub fn new(
        config: &AuthConfig,
        context: &AuthContext<'_>,
    ) -> Result<(Vault, InputSources), String> {
        let (address, namespace) = config
            .vault()
            .ok_or_else(|| format!("{} is not a Vault kind", config.kind()))?;
        let (login, inputs) = match config {
            AuthConfig::VaultToken(token) => (
                Login::Token,
                InputSources::new(vec![("token", token.token.clone())]),
            ),
            AuthConfig::VaultApprole(approle) => (
                Login::Approle {
                    mount: approle.mount.clone(),
                },
                InputSources::new(vec![
                    ("role_id", approle.role_id.clone()),
                    ("secret_id", approle.secret_id.clone()),
                ]),
            ),
            AuthConfig::VaultJwt(jwt) => (
                Login::Jwt {
                    mount: jwt.mount.clone(),
                    role: jwt.role.clone(),
                },
                InputSources::new(vec![(
                    "jwt",
                    Source::File {
                        file: jwt.jwt_file.clone(),
                    },
                )]),
            ),
            AuthConfig::VaultCert(cert) => (
                Login::Cert {
                    mount: cert.mount.clone(),
                    name: cert.name.clone(),
                },
                InputSources::new(vec![])
                    .with_file("cert", cert.client_cert_file.clone())
                    .with_file("key", cert.client_key_file.clone()),
            ),
            AuthConfig::Header(_) | AuthConfig::AwsSigv4(_) => unreachable!("checked above"),
        };
        let address = Url::parse(address).map_err(|e| format!("address {address:?}: {e}"))?;
        let client = crate::outbound::client_builder(context.timeout, context.ca_pem)?
            .build()
            .map_err(|e| format!("building the Vault client: {e}"))?;
        Ok((
            Vault {
                address,
                namespace: namespace.map(str::to_owned),
                login,
                client,
                ca_pem: context.ca_pem.map(<[u8]>::to_vec),
                timeout: context.timeout,
                first_lease: AtomicU64::new(0),
                cert_client: std::sync::Mutex::new(None),
            },
            inputs,
        ))
    }

    /// Whether this kind can log in (all but a given token).
    pub fn can_log_in(&self) -> bool {
        !matches!(self.login, Login::Token)
    }

    /// Revokes `token`, one this auth logged in for (`revoke-self`), so it
    /// does not outlive the provider version that held it by its TTL. Best
    /// effort: the returned task only logs (at debug, never the token) if
    /// Vault cannot be reached or refuses.
    pub fn revoke(&self, token: Secret) -> impl Future<Output = ()> + Send + 'static {
        let client = self
            .cert_client
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| self.client.clone());
        let url = self.address.join("v1/auth/token/revoke-self");
        let namespace = self.namespace.clone();
        async move {
            let (Ok(url), Ok(mut value)) =
                (url, reqwest::header::HeaderValue::from_str(token.expose()))
            else {
                return;
            };
            value.set_sensitive(true);
            let mut request = client.post(url).header("x-vault-token", value);
            if let Some(namespace) = namespace {
                request = request.header("x-vault-namespace", namespace);
            }
            match request.send().await {
                Ok(answer) if answer.status().is_success() => {
                    tracing::debug!("revoked the token of a dropped provider version");
                }
                Ok(answer) => tracing::debug!(
                    "revoking the token of a dropped provider version: Vault answered HTTP {}",
                    answer.status().as_u16()
                ),
                Err(error) => tracing::debug!(
                    "revoking the token of a dropped provider version: {}",
                    describe(&error)
                ),
            }
        }
    }

    /// Renews `token`, or (without one) logs in or looks up the given
    /// token.
    pub async fn obtain(
        &self,
        inputs: &super::Inputs,
        token: Option<&Secret>,
    ) -> Result<Obtained, Problem> {
        if let Some(token) = token {
            return self.renew(token, inputs).await;
        }
        let searched =
            LeakDetector::new(inputs.secrets().map(|s| ("input", s.expose().as_bytes())));
        let (token, lease, renewable) = match &self.login {
            Login::Token => {
                let token = inputs.require("token")?.clone();
                let looked_up: Result<Answer, Problem> = self
                    .call(
                        &self.client,
                        reqwest::Method::GET,
                        "auth/token/lookup-self",
                        Some(&token),
                        None,
                        &searched,
                    )
                    .await;
                let answer = match looked_up {
                    Ok(answer) => answer,
                    // A token whose policy grants `renew-self` but not
                    // `lookup-self` (which would answer with the token
                    // itself): a renewal tells its lease too.
                    Err(problem) if problem.refused => {
                        self.first_lease.store(0, Ordering::Relaxed);
                        return match self.renew(&token, inputs).await {
                            Ok(renewed) => Ok(Obtained {
                                login: true,
                                ..renewed
                            }),
                            Err(_) => Err(problem),
                        };
                    }
                    Err(problem) => return Err(problem),
                };
                let data = answer
                    .data
                    .ok_or_else(|| Problem::refused("lookup-self answered without data"))?;
                let first = if data.creation_ttl > 0 {
                    data.creation_ttl
                } else {
                    data.ttl
                };
                self.first_lease.store(first, Ordering::Relaxed);
                (token, data.ttl, data.renewable)
            }
            Login::Approle { mount } => {
                let body = serde_json::json!({
                    "role_id": inputs.require("role_id")?.expose(),
                    "secret_id": inputs.require("secret_id")?.expose(),
                });
                self.log_in(&self.client, mount, body, &searched).await?
            }
            Login::Jwt { mount, role } => {
                let body = serde_json::json!({
                    "role": role,
                    "jwt": inputs.require("jwt")?.expose().trim(),
                });
                self.log_in(&self.client, mount, body, &searched).await?
            }
            Login::Cert { mount, name } => {
                let mut pem = Zeroizing::new(inputs.require("cert")?.expose().as_bytes().to_vec());
                pem.push(b'\n');
                pem.extend_from_slice(inputs.require("key")?.expose().as_bytes());
                let identity = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| Problem::refused(format!("client certificate or key: {e}")))?;
                let client = crate::outbound::client_builder(self.timeout, self.ca_pem.as_deref())
                    .map_err(Problem::refused)?
                    .identity(identity)
                    .build()
                    .map_err(|e| {
                        Problem::refused(format!("building the cert login client: {e}"))
                    })?;
                let body = match name {
                    Some(name) => serde_json::json!({ "name": name }),
                    None => serde_json::json!({}),
                };
                let logged_in = self.log_in(&client, mount, body, &searched).await?;
                *self.cert_client.lock().unwrap() = Some(client);
                logged_in
            }
        };
        Ok(self.obtained(token, lease, renewable, true))
    }

    async fn log_in(
        &self,
        client: &reqwest::Client,
        mount: &str,
        body: serde_json::Value,
        searched: &LeakDetector,
    ) -> Result<(Secret, u64, bool), Problem> {
        let body = Zeroizing::new(serde_json::to_vec(&body).expect("a JSON object"));
        let answer: Answer = self
            .call(
                client,
                reqwest::Method::POST,
                &format!("auth/{mount}/login"),
                None,
                Some(&body),
                searched,
            )
            .await?;
        let auth = answer
            .auth
            .ok_or_else(|| Problem::refused(format!("auth/{mount}/login answered without auth")))?;
        let token = Secret::new(auth.client_token);
        self.first_lease
            .store(auth.lease_duration, Ordering::Relaxed);
        Ok((token, auth.lease_duration, auth.renewable))
    }

    async fn renew(&self, token: &Secret, inputs: &super::Inputs) -> Result<Obtained, Problem> {
        let searched = LeakDetector::new(
            inputs
                .secrets()
                .chain(std::iter::once(token))
                .map(|s| ("input", s.expose().as_bytes())),
        );
        let client = match &self.login {
            Login::Cert { .. } => self.cert_client.lock().unwrap().clone(),
            _ => None,
        };
        let client = client.as_ref().unwrap_or(&self.client);
        let answer: Answer = self
            .call(
                client,
                reqwest::Method::POST,
                "auth/token/renew-self",
                Some(token),
                Some(b"{}"),
                &searched,
            )
            .await?;
        let auth = answer
            .auth
            .ok_or_else(|| Problem::refused("renew-self answered without auth"))?;
        // The same token comes back; keep the one held. The first renewal
        // of a token not looked up sets the lease it is compared with.
        let first = self.first_lease.load(Ordering::Relaxed);
        if first == 0 {
            self.first_lease
                .store(auth.lease_duration, Ordering::Relaxed);
        }
        let capped = auth.lease_duration < first;
        Ok(self.obtained(
            token.clone(),
            auth.lease_duration,
            auth.renewable && !capped,
            false,
        ))
    }

    fn obtained(&self, token: Secret, lease: u64, renewable: bool, login: bool) -> Obtained {
        // A lease of 0 is a token that never expires (a root token). A
        // token renewed or replaced at half its lease; but a given token
        // that cannot be renewed is only waited out (nothing can replace
        // it but the operator, whose new file is noticed anyway).
        let (expires, refresh_in) = if lease == 0 {
            (None, None)
        } else {
            let lease = Duration::from_secs(lease);
            let refresh = (renewable || self.can_log_in()).then_some(lease / 2);
            (Some(SystemTime::now() + lease), refresh)
        };
        Obtained {
            credential: Credential::header(HeaderName::from_static("x-vault-token"), token)
                .expect("a Vault token is a valid header value: checked when read"),
            expires,
            refresh_in,
            renewable,
            login,
        }
    }

    /// One request to Vault's API. 4xx answers are refusals, quoting
    /// Vault's errors unless they carry an input; no answer, 429 and 5xx
    /// are the backend being unreachable.
    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        token: Option<&Secret>,
        body: Option<&[u8]>,
        searched: &LeakDetector,
    ) -> Result<T, Problem> {
        let url = self
            .address
            .join(&format!("v1/{path}"))
            .map_err(|e| Problem::refused(format!("{path}: {e}")))?;
        let mut request = client.request(method, url);
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(token.expose())
                .map_err(|_| Problem::refused("the token is not a valid header value"))?;
            value.set_sensitive(true);
            request = request.header("x-vault-token", value);
        }
        if let Some(namespace) = &self.namespace {
            request = request.header("x-vault-namespace", namespace);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_vec());
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| Problem::unreachable(format!("{path}: {}", describe(&e))))?;
        let status = response.status().as_u16();
        let answer = read_answer(&mut response, MAX_ANSWER, path).await?;
        if !(200..300).contains(&status) {
            let errors = serde_json::from_slice::<Answer>(&answer)
                .map(|a| a.errors.join("; "))
                .unwrap_or_default();
            let quoted = if errors.is_empty() || searched.find(&[errors.as_bytes()]).is_some() {
                String::new()
            } else {
                format!(": {}", kmsgate_core::sanitize::clean(&errors, 200))
            };
            let message = format!("{path}: Vault answered HTTP {status}{quoted}");
            return Err(if status == 429 || status >= 500 {
                Problem::unreachable(message)
            } else {
                Problem::refused(message)
            });
        }
        serde_json::from_slice(&answer)
            .map_err(|e| Problem::unreachable(format!("{path}: unexpected answer: {e}")))
    }
}

/// The body of an answer to the host's own request (a login, a renewal,
/// STS), at most `max` bytes, wiped when dropped: it may hold a token.
/// `what` names the request in problems.
pub(super) async fn read_answer(
    response: &mut reqwest::Response,
    max: usize,
    what: &str,
) -> Result<Zeroizing<Vec<u8>>, Problem> {
    let mut answer = Zeroizing::new(Vec::new());
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Problem::unreachable(format!("{what}: {}", describe(&e))))?
    {
        if answer.len() + chunk.len() > max {
            return Err(Problem::unreachable(format!(
                "{what}: answer larger than {max} bytes"
            )));
        }
        answer.extend_from_slice(&chunk);
    }
    Ok(answer)
}

/// reqwest's error with its causes (refused, TLS), never a URL's query or a
/// header.
pub(super) fn describe(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        message = format!("{message}: {e}");
        source = e.source();
    }
    message
}

/// The parts of Vault's answers read here.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    data: Option<LookupData>,
    #[serde(default)]
    auth: Option<AuthData>,
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(Deserialize)]
struct LookupData {
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    creation_ttl: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct AuthData {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers one request with a `len`-byte body.
    async fn answering(len: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 4096];
            let _ = socket.read(&mut request).await;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
            socket.write_all(head.as_bytes()).await.unwrap();
            let _ = socket.write_all(&vec![b' '; len]).await;
        });
        format!("http://{address}/")
    }

    /// A login endpoint cannot make the host buffer without end.
    #[tokio::test]
    async fn an_answer_over_the_cap_is_refused_unread() {
        let client = reqwest::Client::new();
        for (len, fits) in [(1000, true), (MAX_ANSWER + 1, false)] {
            let url = answering(len).await;
            let mut response = client.get(url).send().await.unwrap();
            let read = read_answer(&mut response, MAX_ANSWER, "auth/approle/login").await;
            match read {
                Ok(body) => assert!(fits && body.len() == len, "{len}"),
                Err(problem) => {
                    assert!(!fits, "{len}: {problem:?}");
                    assert!(
                        problem.message.contains("answer larger than"),
                        "{problem:?}"
                    );
                    assert!(!problem.refused);
                }
            }
        }
    }
}
