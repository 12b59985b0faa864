//! `aws-sigv4`: AWS Signature Version 4 over each request, computed by the
//! host after the provider has built the request, with keys the provider
//! never sees: static keys from files or the environment, or temporary ones
//! from STS `AssumeRoleWithWebIdentity`, refreshed at half their life.
//!
//! The signature covers the method, path, query, every header the request
//! carries (the provider's `content-type` and `x-amz-target` among them)
//! plus `host` and `x-amz-date`, and a SHA-256 of the body
//! (<https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html>).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use reqwest::header::HeaderValue;
use sha2::{Digest, Sha256};
use url::Url;
use zeroize::Zeroizing;

use super::source::InputSources;
use super::vault::describe;
use super::{AuthContext, Credential, Obtained, Problem};
use crate::spec::{AwsSigv4Auth, Source};
use kmsgate_core::secret::Secret;

/// The largest STS answer read.
const MAX_ANSWER: usize = 64 << 10;

/// AWS keys.
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

impl Credentials {
    pub(super) fn secrets(&self) -> Vec<&str> {
        let mut secrets = vec![self.secret_access_key.expose()];
        secrets.extend(self.session_token.as_ref().map(Secret::expose));
        secrets
    }
}

pub struct Aws {
    region: String,
    service: String,
    web_identity: Option<WebIdentity>,
}

struct WebIdentity {
    role_arn: String,
    session_name: String,
    endpoint: Url,
    client: reqwest::Client,
}

impl Aws {
    pub fn new(
        config: &AwsSigv4Auth,
        context: &AuthContext<'_>,
    ) -> Result<(Aws, InputSources), String> {
        let (web_identity, inputs) = match &config.web_identity {
            Some(web) => {
                let endpoint = web
                    .sts_endpoint
                    .clone()
                    .unwrap_or_else(|| format!("https://sts.{}.amazonaws.com/", config.region));
                let endpoint =
                    Url::parse(&endpoint).map_err(|e| format!("sts_endpoint {endpoint:?}: {e}"))?;
                let client = crate::outbound::client_builder(context.timeout, context.ca_pem)?
                    .build()
                    .map_err(|e| format!("building the STS client: {e}"))?;
                (
                    Some(WebIdentity {
                        role_arn: web.role_arn.clone(),
                        session_name: web.session_name.clone(),
                        endpoint,
                        client,
                    }),
                    InputSources::new(vec![(
                        "web_identity_token",
                        Source::File {
                            file: web.token_file.clone(),
                        },
                    )]),
                )
            }
            None => {
                let mut sources = Vec::new();
                for (name, source) in [
                    ("access_key_id", &config.access_key_id),
                    ("secret_access_key", &config.secret_access_key),
                    ("session_token", &config.session_token),
                ] {
                    if let Some(source) = source {
                        sources.push((name, source.clone()));
                    }
                }
                (None, InputSources::new(sources))
            }
        };
        Ok((
            Aws {
                region: config.region.clone(),
                service: config.service.clone(),
                web_identity,
            },
            inputs,
        ))
    }

    pub async fn obtain(&self, inputs: &super::Inputs) -> Result<Obtained, Problem> {
        let Some(web) = &self.web_identity else {
            let keys = Credentials {
                access_key_id: inputs.require("access_key_id")?.expose().trim().to_owned(),
                secret_access_key: inputs.require("secret_access_key")?.clone(),
                session_token: inputs.get("session_token").cloned(),
            };
            return Ok(Obtained {
                credential: Credential::Aws(keys),
                expires: None,
                refresh_in: None,
                renewable: false,
                login: true,
            });
        };
        let token = inputs.require("web_identity_token")?;
        let form = Zeroizing::new(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("Action", "AssumeRoleWithWebIdentity")
                .append_pair("Version", "2011-06-15")
                .append_pair("RoleArn", &web.role_arn)
                .append_pair("RoleSessionName", &web.session_name)
                .append_pair("WebIdentityToken", token.expose().trim())
                .finish(),
        );
        let mut response = web
            .client
            .post(web.endpoint.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.as_bytes().to_vec())
            .send()
            .await
            .map_err(|e| Problem::unreachable(format!("STS: {}", describe(&e))))?;
        let status = response.status().as_u16();
        let answer = super::vault::read_answer(&mut response, MAX_ANSWER, "STS").await?;
        let text = String::from_utf8_lossy(&answer);
        if !(200..300).contains(&status) {
            // STS errors carry a code and a message, never the token.
            let code = xml_text(&text, "Code").unwrap_or_default();
            let message = format!(
                "STS AssumeRoleWithWebIdentity answered HTTP {status} {}",
                kmsgate_core::sanitize::clean(code, 80)
            );
            return Err(if status == 429 || status >= 500 {
                Problem::unreachable(message)
            } else {
                Problem::refused(message)
            });
        }
        let field = |name: &str| {
            xml_text(&text, name)
                .map(str::to_owned)
                .ok_or_else(|| Problem::unreachable(format!("STS answered without {name}")))
        };
        let keys = Credentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: Secret::new(field("SecretAccessKey")?),
            session_token: Some(Secret::new(field("SessionToken")?)),
        };
        let expires = super::time::parse_rfc3339(&field("Expiration")?)
            .ok_or_else(|| Problem::unreachable("STS answered an unreadable Expiration"))?;
        let life = expires
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Ok(Obtained {
            credential: Credential::Aws(keys),
            expires: Some(expires),
            refresh_in: Some((life / 2).max(Duration::from_secs(1))),
            renewable: false,
            login: true,
        })
    }

    /// Signs `request` (adds `x-amz-date`, `x-amz-security-token` for
    /// temporary keys, and `authorization`).
    pub fn sign(
        &self,
        keys: &Credentials,
        request: &mut reqwest::Request,
        now: SystemTime,
    ) -> Result<(), String> {
        let body: &[u8] = request
            .body()
            .map(|body| body.as_bytes().ok_or("a streamed body cannot be signed"))
            .transpose()?
            .unwrap_or_default();
        let payload_hash = hex::encode(Sha256::digest(body));
        let headers = request.headers_mut();
        let amz_date = super::time::amz_date(now);
        headers.insert(
            "x-amz-date",
            HeaderValue::from_str(&amz_date).expect("ASCII"),
        );
        if let Some(token) = &keys.session_token {
            let mut value = HeaderValue::from_str(token.expose())
                .map_err(|_| "the session token is not a valid header value")?;
            value.set_sensitive(true);
            headers.insert("x-amz-security-token", value);
        }
        let signed = Signed {
            method: request.method().as_str(),
            url: request.url(),
            headers: request.headers(),
            payload_hash: &payload_hash,
        };
        let authorization = signed.authorization(keys, &self.region, &self.service, &amz_date)?;
        let mut value = HeaderValue::from_str(&authorization).map_err(|_| "bad authorization")?;
        value.set_sensitive(true);
        request.headers_mut().insert("authorization", value);
        Ok(())
    }
}

/// What a signature covers.
struct Signed<'a> {
    method: &'a str,
    url: &'a Url,
    headers: &'a reqwest::header::HeaderMap,
    payload_hash: &'a str,
}

impl Signed<'_> {
    fn canonical(&self) -> Result<(String, String), String> {
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let host = self.url.host_str().ok_or("a URL without a host")?;
        let host = match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        headers.entry("host".into()).or_default().push(host);
        for (name, value) in self.headers {
            if name == "authorization" {
                continue;
            }
            let value = value
                .to_str()
                .map_err(|_| format!("header {name} is not text"))?;
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            headers
                .entry(name.as_str().to_owned())
                .or_default()
                .push(value);
        }
        let signed_headers = headers.keys().cloned().collect::<Vec<_>>().join(";");
        let canonical_headers: String = headers
            .iter()
            .map(|(name, values)| format!("{name}:{}\n", values.join(",")))
            .collect();
        let path = self.url.path();
        let canonical_path = if path.is_empty() {
            "/".to_owned()
        } else {
            path.split('/')
                .map(uri_encode)
                .collect::<Vec<_>>()
                .join("/")
        };
        let mut query: Vec<(String, String)> = self
            .url
            .query_pairs()
            .map(|(k, v)| (uri_encode(&k), uri_encode(&v)))
            .collect();
        query.sort();
        let canonical_query = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let canonical = format!(
            "{}\n{canonical_path}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{}",
            self.method, self.payload_hash
        );
        Ok((canonical, signed_headers))
    }

    fn authorization(
        &self,
        keys: &Credentials,
        region: &str,
        service: &str,
        amz_date: &str,
    ) -> Result<String, String> {
        let (canonical, signed_headers) = self.canonical()?;
        let date = &amz_date[..8];
        let scope = format!("{date}/{region}/{service}/aws4_request");
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let secret = Zeroizing::new(format!("AWS4{}", keys.secret_access_key.expose()));
        let mut key = hmac(secret.as_bytes(), date.as_bytes());
        for part in [region, service, "aws4_request"] {
            key = hmac(&key[..], part.as_bytes());
        }
        let signature = hex::encode(hmac(&key[..], to_sign.as_bytes()).as_slice());
        Ok(format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            keys.access_key_id
        ))
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// AWS's URI encoding: everything but `A-Z a-z 0-9 - _ . ~` as `%XX`.
fn uri_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The text of the first `<name>…</name>` element (STS answers are small
/// and flat; no XML library needed to read five fields).
fn xml_text<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(xml[start..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn keys(session: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            session_token: session.map(|s| Secret::new(s.into())),
        }
    }

    fn aws() -> Aws {
        Aws {
            region: "us-east-1".into(),
            service: "service".into(),
            web_identity: None,
        }
    }

    /// `get-vanilla` and `post-x-www-form-urlencoded` of AWS's SigV4 test
    /// suite: the signatures AWS publishes for these exact requests.
    #[test]
    fn signatures_match_the_aws_test_suite() {
        let at = UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 20150830T123600Z
        let client = reqwest::Client::new();
        let mut request = client
            .get("https://example.amazonaws.com/")
            .build()
            .unwrap();
        aws().sign(&keys(None), &mut request, at).unwrap();
        assert_eq!(
            request.headers()["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );

        let mut request = client
            .post("https://example.amazonaws.com/")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("Param1=value1")
            .build()
            .unwrap();
        aws().sign(&keys(None), &mut request, at).unwrap();
        assert_eq!(
            request.headers()["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
        );
    }

    #[test]
    fn a_session_token_is_sent_and_signed() {
        let at = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let mut request = reqwest::Client::new()
            .get("https://example.amazonaws.com/?b=2&a=1")
            .build()
            .unwrap();
        aws()
            .sign(&keys(Some("session")), &mut request, at)
            .unwrap();
        assert_eq!(request.headers()["x-amz-security-token"], "session");
        let authorization = request.headers()["authorization"].to_str().unwrap();
        assert!(
            authorization.contains("SignedHeaders=host;x-amz-date;x-amz-security-token,"),
            "{authorization}"
        );
        assert!(!authorization.contains("wJalr"));
    }

    #[test]
    fn sts_fields_are_read() {
        let xml = "<AssumeRoleWithWebIdentityResponse><Credentials>\
            <AccessKeyId>ASIA1</AccessKeyId><Expiration>2026-11-29T05:00:00Z</Expiration>\
            </Credentials></AssumeRoleWithWebIdentityResponse>";
        assert_eq!(xml_text(xml, "AccessKeyId"), Some("ASIA1"));
        assert_eq!(xml_text(xml, "SessionToken"), None);
    }
}
