//! A provider's configuration, as the operator writes it in the daemon's
//! TOML file (`[[providers]]`): its component, settings, secrets, outbound
//! network and sandbox limits. The daemon's config embeds these; this crate
//! builds a provider from them.
//!
//! Every struct rejects unknown fields. [`ProviderConfig::validate`] is pure;
//! reading the files that settings and secrets name happens when a provider
//! loads, in [`ProviderConfig::resolve_settings`] and
//! [`ProviderConfig::resolve_secrets`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::allowlist::Allowlist;
use kmsgate_core::secret::Secret;

/// A setting or secret that could not be read when its provider loaded.
#[derive(Debug, Error)]
#[error("provider {provider}: {what}: {message}")]
pub struct ResolveError {
    pub provider: String,
    pub what: String,
    pub message: String,
}

/// Sandboxed instances that may live at once in the daemon (the size of the
/// runtime's instance pool). Every provider's quota,
/// `limits.max_concurrent_calls` plus the host's own
/// [`CONTROL_INSTANCES`], must fit in it together.
pub const MAX_INSTANCES: u64 = 256;

/// Instances a provider may have beyond `max_concurrent_calls`, for the
/// host's own calls (status refresh, init, canary).
pub const CONTROL_INSTANCES: u64 = 2;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Unique name: lowercase letters, digits and `-`, at most 63 bytes. It
    /// prefixes every key id this provider issues (`<name>/<key id>`), so
    /// renaming a provider strands its ciphertexts: keep names stable.
    pub name: String,
    /// Path of the provider's `.wasm` component; relative paths are relative
    /// to the config file. Replacing the file hot-swaps the provider.
    pub component: PathBuf,
    /// Optional pin: the component's hex SHA-256. A component that does not
    /// match is refused (and on a reload the old version keeps serving).
    #[serde(default)]
    pub sha256: Option<String>,
    /// The component's detached signature; default: the component's path
    /// with `.sig` appended (`acme.wasm.sig`), or, for an `oci://`
    /// component, the signatures the registry holds beside it (see
    /// [`crate::oci`]). Checked against the daemon's `trusted_keys` when any
    /// are configured.
    #[serde(default)]
    pub signature: Option<PathBuf>,
    /// Whether the component must be signed by a trusted key; default: the
    /// daemon's `require_signature`.
    #[serde(default)]
    pub require_signature: Option<bool>,
    /// Which of the daemon's `trusted_keys` may sign this provider's
    /// component, by name; default: all of them.
    #[serde(default)]
    pub trusted_keys: Option<Vec<String>>,
    /// The keys and requirement resolved from the fields above and the
    /// daemon's config (by the daemon, never read from the file).
    #[serde(skip)]
    pub policy: crate::signature::Policy,
    /// How to reach the registry of an `oci://` component.
    #[serde(default)]
    pub registry: crate::oci::RegistryConfig,
    /// Where pulled components are kept (`compile_cache_dir/oci`; set by
    /// the daemon, never read from the file).
    #[serde(skip)]
    pub oci_cache: Option<PathBuf>,
    /// The provider's own settings, handed to it through `wasi:config/store`.
    /// Values are strings, numbers or booleans, or `{ file = "path" }` /
    /// `{ env = "NAME" }` to read the value from a file or an environment
    /// variable when the provider loads.
    #[serde(default)]
    pub settings: BTreeMap<String, SettingValue>,
    /// Credentials the host attaches to the provider's outbound requests
    /// (`secret-headers` in the WIT). They never enter the sandbox, and no
    /// response that carries one is handed to it.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretConfig>,
    /// Host-held authentication the provider asks for by name
    /// (`send-with-auth` in the WIT): `[providers.auth.<name>]` with a
    /// `kind` (see [`AuthConfig`]). The host obtains, renews and applies
    /// the credential; it never enters the sandbox, and no response that
    /// carries it is handed to it.
    #[serde(default)]
    pub auth: BTreeMap<String, AuthConfig>,
    /// Outbound HTTP the provider may make. Default: none.
    #[serde(default)]
    pub outbound: OutboundConfig,
    /// Sandbox limits for each call.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Coalescing of concurrent decrypts, for components that export
    /// `kms-batch`; ignored for the others.
    #[serde(default)]
    pub batch: BatchConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Decrypts per batch, at most; 1 turns batching off. Default 64.
    #[serde(default = "default_batch_max_items")]
    pub max_items: u64,
    /// Batches in flight at once, at most. While they all run, new decrypts
    /// queue for the next batch. Default 4.
    #[serde(default = "default_batch_max_in_flight")]
    pub max_in_flight: u64,
    /// Decrypts that may wait for a batch, at most; one beyond that fails
    /// at once with RESOURCE_EXHAUSTED. Decrypts whose caller gave up or
    /// whose deadline passed are dropped from the queue unsent. Default
    /// 1024.
    #[serde(default = "default_batch_max_queued")]
    pub max_queued: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_items: default_batch_max_items(),
            max_in_flight: default_batch_max_in_flight(),
            max_queued: default_batch_max_queued(),
        }
    }
}

fn default_batch_max_items() -> u64 {
    64
}

fn default_batch_max_in_flight() -> u64 {
    4
}

fn default_batch_max_queued() -> u64 {
    1024
}

/// One provider setting. A setting can be key material (the local-aes
/// key), so `Debug` shows a literal's length, never its text.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum SettingValue {
    Text(String),
    Integer(i64),
    Bool(bool),
    /// Read from a file when the provider loads (trailing newline trimmed).
    File {
        file: PathBuf,
    },
    /// Read from an environment variable of the daemon when it loads.
    Env {
        env: String,
    },
}

impl std::fmt::Debug for SettingValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettingValue::Text(text) => write!(f, "Text({} bytes, redacted)", text.len()),
            SettingValue::Integer(n) => write!(f, "Integer({n})"),
            SettingValue::Bool(b) => write!(f, "Bool({b})"),
            SettingValue::File { file } => write!(f, "File({file:?})"),
            SettingValue::Env { env } => write!(f, "Env({env:?})"),
        }
    }
}

/// One credential: where its value comes from, and where it may go.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    /// Read from this file when the provider loads (trailing newline
    /// trimmed). Exactly one of `file` and `env`.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Or from this environment variable of the daemon.
    #[serde(default)]
    pub env: Option<String>,
    /// The request headers the provider may ask the host to put this
    /// secret in, lowercase. Default `["x-vault-token", "authorization"]`,
    /// the headers servers treat as credentials. Headers the host owns
    /// (`host`, `content-length`, ...) are never allowed.
    #[serde(default = "default_secret_headers")]
    pub headers: Vec<String>,
    /// The `scheme://host:port` entries of `outbound.allowed_hosts` this
    /// secret may be sent to. Default: all of them.
    #[serde(default)]
    pub hosts: Vec<String>,
}

fn default_secret_headers() -> Vec<String> {
    vec!["x-vault-token".into(), "authorization".into()]
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretSource {
    /// A file, read when the provider loads (trailing newline trimmed).
    File(PathBuf),
    /// An environment variable of the daemon.
    Env(String),
}

impl SecretConfig {
    /// Where the value comes from; `None` unless exactly one of `file` and
    /// `env` is set.
    pub fn source(&self) -> Option<SecretSource> {
        match (&self.file, &self.env) {
            (Some(file), None) => Some(SecretSource::File(file.clone())),
            (None, Some(env)) => Some(SecretSource::Env(env.clone())),
            _ => None,
        }
    }
}

/// Where a credential comes from: `{ file = "path" }` (re-read when it
/// changes; trailing newline trimmed) or `{ env = "NAME" }` (read once).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(untagged, deny_unknown_fields)]
pub enum Source {
    File { file: PathBuf },
    Env { env: String },
}

impl Source {
    /// The value: the file's text without its trailing newline, or the
    /// environment variable. Errors name where, never the value.
    pub fn read(&self) -> Result<String, String> {
        match self {
            Source::File { file } => read_trimmed(file),
            Source::Env { env } => {
                std::env::var(env).map_err(|_| format!("environment variable {env} is not set"))
            }
        }
    }
}

/// One auth of a provider: `[providers.auth.<name>]`, by `kind`. Every
/// kind takes `hosts`, the `scheme://host:port` entries of
/// `outbound.allowed_hosts` the credential may be applied to (default: the
/// Vault `address` for the Vault kinds, all allowed hosts for the others).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AuthConfig {
    /// A fixed secret in one header, with an optional prefix.
    Header(HeaderAuth),
    /// A Vault token from a file or the environment, looked up and renewed
    /// by the host (`renew-self`) before it expires.
    VaultToken(VaultTokenAuth),
    /// Vault AppRole login with a role id and a secret id.
    VaultApprole(VaultApproleAuth),
    /// Vault JWT login with a token file (a projected service-account token
    /// or a SPIFFE JWT-SVID).
    VaultJwt(VaultJwtAuth),
    /// Vault TLS certificate login.
    VaultCert(VaultCertAuth),
    /// AWS Signature Version 4 over each request.
    AwsSigv4(AwsSigv4Auth),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderAuth {
    /// Lowercase header name; never one the host owns.
    pub header: String,
    /// Written before the secret, for example `"Bearer "`. Default none.
    #[serde(default)]
    pub prefix: String,
    pub value: Source,
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VaultTokenAuth {
    /// Vault's `scheme://host:port`, one of `outbound.allowed_hosts`: the
    /// host logs in and renews there.
    pub address: String,
    /// Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`
    /// on the host's own requests. Default none.
    #[serde(default)]
    pub namespace: Option<String>,
    pub token: Source,
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VaultApproleAuth {
    /// Vault's `scheme://host:port`, one of `outbound.allowed_hosts`: the
    /// host logs in and renews there.
    pub address: String,
    /// Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`
    /// on the host's own requests. Default none.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Where the AppRole auth method is mounted. Default `approle`.
    #[serde(default = "default_approle_mount")]
    pub mount: String,
    pub role_id: Source,
    pub secret_id: Source,
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VaultJwtAuth {
    /// Vault's `scheme://host:port`, one of `outbound.allowed_hosts`: the
    /// host logs in and renews there.
    pub address: String,
    /// Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`
    /// on the host's own requests. Default none.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Where the JWT auth method is mounted. Default `jwt`.
    #[serde(default = "default_jwt_mount")]
    pub mount: String,
    /// The Vault role to log in as.
    pub role: String,
    /// The JWT's file, re-read when it changes (kubelet rotates projected
    /// tokens).
    pub jwt_file: PathBuf,
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VaultCertAuth {
    /// Vault's `scheme://host:port`, one of `outbound.allowed_hosts`: the
    /// host logs in and renews there.
    pub address: String,
    /// Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`
    /// on the host's own requests. Default none.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Where the cert auth method is mounted. Default `cert`.
    #[serde(default = "default_cert_mount")]
    pub mount: String,
    /// The certificate role to log in as; default: any that matches.
    #[serde(default)]
    pub name: Option<String>,
    /// PEM client certificate and key presented at login (only there).
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AwsSigv4Auth {
    /// The region signed for, for example `eu-west-1`.
    pub region: String,
    /// The service signed for. Default `kms`.
    #[serde(default = "default_aws_service")]
    pub service: String,
    /// Static credentials: the access key id and secret access key, and
    /// a session token for temporary ones. Or `web_identity`.
    #[serde(default)]
    pub access_key_id: Option<Source>,
    #[serde(default)]
    pub secret_access_key: Option<Source>,
    #[serde(default)]
    pub session_token: Option<Source>,
    /// Temporary credentials from STS `AssumeRoleWithWebIdentity`.
    #[serde(default)]
    pub web_identity: Option<WebIdentity>,
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebIdentity {
    pub role_arn: String,
    /// The OIDC token's file (a projected service-account token), re-read
    /// at every refresh.
    pub token_file: PathBuf,
    /// Default `kmsgate`.
    #[serde(default = "default_session_name")]
    pub session_name: String,
    /// Default `https://sts.<region>.amazonaws.com`.
    #[serde(default)]
    pub sts_endpoint: Option<String>,
}

fn default_approle_mount() -> String {
    "approle".into()
}

fn default_jwt_mount() -> String {
    "jwt".into()
}

fn default_cert_mount() -> String {
    "cert".into()
}

fn default_aws_service() -> String {
    "kms".into()
}

fn default_session_name() -> String {
    "kmsgate".into()
}

impl AuthConfig {
    /// The kind as written in the config (`vault-approle`).
    pub fn kind(&self) -> &'static str {
        match self {
            AuthConfig::Header(_) => "header",
            AuthConfig::VaultToken(_) => "vault-token",
            AuthConfig::VaultApprole(_) => "vault-approle",
            AuthConfig::VaultJwt(_) => "vault-jwt",
            AuthConfig::VaultCert(_) => "vault-cert",
            AuthConfig::AwsSigv4(_) => "aws-sigv4",
        }
    }

    /// The Vault address this auth logs in to, and its namespace, for the
    /// Vault kinds.
    pub fn vault(&self) -> Option<(&str, Option<&str>)> {
        match self {
            AuthConfig::VaultToken(a) => Some((&a.address, a.namespace.as_deref())),
            AuthConfig::VaultApprole(a) => Some((&a.address, a.namespace.as_deref())),
            AuthConfig::VaultJwt(a) => Some((&a.address, a.namespace.as_deref())),
            AuthConfig::VaultCert(a) => Some((&a.address, a.namespace.as_deref())),
            AuthConfig::Header(_) | AuthConfig::AwsSigv4(_) => None,
        }
    }

    /// The configured `hosts`, before defaults.
    pub fn hosts(&self) -> &[String] {
        match self {
            AuthConfig::Header(a) => &a.hosts,
            AuthConfig::VaultToken(a) => &a.hosts,
            AuthConfig::VaultApprole(a) => &a.hosts,
            AuthConfig::VaultJwt(a) => &a.hosts,
            AuthConfig::VaultCert(a) => &a.hosts,
            AuthConfig::AwsSigv4(a) => &a.hosts,
        }
    }

    /// The hosts the credential is applied to: `hosts`, or by default the
    /// Vault address, or else every allowed host.
    pub fn effective_hosts(&self, allowed: &[String]) -> Vec<String> {
        if !self.hosts().is_empty() {
            return self.hosts().to_vec();
        }
        match self.vault() {
            Some((address, _)) => vec![address.trim_end_matches('/').to_owned()],
            None => allowed.to_vec(),
        }
    }

    fn validate(
        &self,
        field: &str,
        allowed: &Allowlist,
        allowed_hosts: &[String],
    ) -> Result<(), Problem> {
        let hosts = Allowlist::parse(&self.effective_hosts(allowed_hosts))
            .map_err(|why| Problem::new(format!("{field}.hosts"), why))?;
        if !allowed.covers(&hosts) {
            return Err(Problem::new(
                format!("{field}.hosts"),
                "each entry (default: the Vault address) must be one of outbound.allowed_hosts",
            ));
        }
        match self {
            AuthConfig::Header(a) => crate::outbound::check_secret_header(&a.header)
                .map_err(|why| Problem::new(format!("{field}.header"), why)),
            AuthConfig::VaultApprole(a) if !is_valid_mount(&a.mount) => {
                Err(Problem::new(format!("{field}.mount"), MOUNT_RULE))
            }
            AuthConfig::VaultJwt(a) if !is_valid_mount(&a.mount) => {
                Err(Problem::new(format!("{field}.mount"), MOUNT_RULE))
            }
            AuthConfig::VaultCert(a) if !is_valid_mount(&a.mount) => {
                Err(Problem::new(format!("{field}.mount"), MOUNT_RULE))
            }
            AuthConfig::AwsSigv4(a) => {
                let statics = (&a.access_key_id, &a.secret_access_key);
                match (statics, &a.web_identity) {
                    ((Some(_), Some(_)), None) => {}
                    ((None, None), Some(_)) if a.session_token.is_none() => {}
                    _ => {
                        return Err(Problem::new(
                            field,
                            "needs access_key_id and secret_access_key (and optionally session_token), or web_identity",
                        ));
                    }
                }
                for (what, value) in [("region", &a.region), ("service", &a.service)] {
                    if value.is_empty()
                        || !value
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    {
                        return Err(Problem::new(
                            format!("{field}.{what}"),
                            "lowercase letters, digits and '-'",
                        ));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

const MOUNT_RULE: &str = "a Vault mount path: letters, digits, '-', '_' and '/' between segments";

fn is_valid_mount(mount: &str) -> bool {
    !mount.is_empty()
        && mount.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// `scheme://host:port` entries the provider may call. `host` may be a
    /// DNS name, an IP address, or `*.domain` (any subdomain). Empty: no
    /// network at all.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// PEM bundle of CAs trusted for https; replaces the built-in roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `client_key_file`).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Timeout of one request, connect included, in milliseconds.
    /// Default 3000.
    #[serde(default = "default_outbound_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest response body handed to the provider, in bytes. Default 1 MiB.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Cap on all linear memory of one provider instance, in MiB. Default 64.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// CPU budget of one call, in milliseconds: the time it runs, in the
    /// guest or in the host on its behalf (clock reads, copying a response
    /// into guest memory), not the time it waits (on the backend, a timer).
    /// Default 1000.
    #[serde(default = "default_cpu_ms")]
    pub cpu_ms: u64,
    /// Wall-clock limit of one call, its wait for an instance and host
    /// calls included, in milliseconds; the caller's deadline when sooner.
    /// Must exceed `outbound.timeout_ms`. Default 5000.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// How many calls one instance may serve before it is dropped. An
    /// instance goes back for another call only after a call that returned
    /// (no trap, no limit hit, no timeout) and left its memory near its
    /// starting size. 1 gives every call a fresh instance. Default 1000.
    #[serde(default = "default_calls_per_instance")]
    pub calls_per_instance: u64,
    /// Instances of this provider alive at once for callers (busy or idle
    /// between calls), so one provider cannot take another's share. The
    /// host keeps 2 more for its own status refresh and canary. Default 16.
    #[serde(default = "default_max_concurrent_calls")]
    pub max_concurrent_calls: u64,
    /// Guest memory all of this provider's instances for callers may hold
    /// together, busy or idle, in MiB: a new instance is made only while it
    /// fits (one always may run), so a provider of large instances (a
    /// Python or JavaScript interpreter, 9-13 MiB each) runs fewer of them
    /// and calls wait for one to come free, as when `max_concurrent_calls`
    /// are busy. Default 64.
    #[serde(default = "default_instances_memory_mib")]
    pub instances_memory_mib: u64,
    /// Calls that may wait for a free instance when all are busy; a call
    /// beyond that, or one still waiting at its deadline, fails with
    /// RESOURCE_EXHAUSTED without running. Default 64.
    #[serde(default = "default_max_queued_calls")]
    pub max_queued_calls: u64,
}

fn default_outbound_timeout_ms() -> u64 {
    3_000
}

fn default_max_response_bytes() -> u64 {
    1024 * 1024
}

fn default_memory_mib() -> u64 {
    64
}

fn default_cpu_ms() -> u64 {
    1_000
}

fn default_call_timeout_ms() -> u64 {
    5_000
}

fn default_calls_per_instance() -> u64 {
    1_000
}

fn default_max_concurrent_calls() -> u64 {
    16
}

fn default_instances_memory_mib() -> u64 {
    64
}

fn default_max_queued_calls() -> u64 {
    64
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            allowed_hosts: Vec::new(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            timeout_ms: default_outbound_timeout_ms(),
            max_response_bytes: default_max_response_bytes(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            memory_mib: default_memory_mib(),
            cpu_ms: default_cpu_ms(),
            call_timeout_ms: default_call_timeout_ms(),
            calls_per_instance: default_calls_per_instance(),
            max_concurrent_calls: default_max_concurrent_calls(),
            instances_memory_mib: default_instances_memory_mib(),
            max_queued_calls: default_max_queued_calls(),
        }
    }
}

/// A validation failure before the file name is known: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl ProviderConfig {
    /// The registry reference, if the component is `oci://...`.
    pub fn oci_reference(&self) -> Option<Result<crate::oci::OciReference, String>> {
        let text = self.component.to_str()?;
        text.starts_with(crate::oci::SCHEME)
            .then(|| crate::oci::OciReference::parse(text))
    }

    /// Where the component's signature is: `signature`, or the component's
    /// path with `.sig` appended.
    pub fn signature_path(&self) -> PathBuf {
        self.signature.clone().unwrap_or_else(|| {
            let mut path = self.component.clone().into_os_string();
            path.push(".sig");
            PathBuf::from(path)
        })
    }

    /// Checks this provider's entry; `at` names it in messages
    /// (`providers[0]`).
    pub fn validate(&self, at: &str) -> Result<(), Problem> {
        if !is_valid_name(&self.name) {
            return Err(Problem::new(
                format!("{at}.name"),
                "must be 1-63 lowercase letters, digits or '-', starting with a letter or digit",
            ));
        }
        if let Some(reference) = self.oci_reference() {
            let reference =
                reference.map_err(|why| Problem::new(format!("{at}.component"), why))?;
            if reference.digest.is_none() && !self.registry.allow_unpinned {
                return Err(Problem::new(
                    format!("{at}.component"),
                    "an oci:// component needs @sha256:<digest> (or registry.allow_unpinned = true)",
                ));
            }
        }
        if let Some(pin) = &self.sha256
            && !crate::integrity::is_valid_pin(pin)
        {
            return Err(Problem::new(
                format!("{at}.sha256"),
                "must be 64 hex digits",
            ));
        }
        let allowed = Allowlist::parse(&self.outbound.allowed_hosts)
            .map_err(|message| Problem::new(format!("{at}.outbound.allowed_hosts"), message))?;
        for (name, secret) in &self.secrets {
            let field = format!("{at}.secrets.{name}");
            if secret.source().is_none() {
                return Err(Problem::new(field, "needs exactly one of file and env"));
            }
            if secret.headers.is_empty() {
                return Err(Problem::new(
                    format!("{field}.headers"),
                    "must name at least one header",
                ));
            }
            for header in &secret.headers {
                crate::outbound::check_secret_header(header)
                    .map_err(|why| Problem::new(format!("{field}.headers"), why))?;
            }
            let hosts = Allowlist::parse(&secret.hosts)
                .map_err(|why| Problem::new(format!("{field}.hosts"), why))?;
            if !allowed.covers(&hosts) {
                return Err(Problem::new(
                    format!("{field}.hosts"),
                    "each entry must be one of outbound.allowed_hosts",
                ));
            }
        }
        for (name, auth) in &self.auth {
            let field = format!("{at}.auth.{name}");
            if !is_valid_name(name) {
                return Err(Problem::new(
                    field,
                    "an auth's name is 1-63 lowercase letters, digits or '-'",
                ));
            }
            auth.validate(&field, &allowed, &self.outbound.allowed_hosts)?;
        }
        if self.outbound.client_cert_file.is_some() != self.outbound.client_key_file.is_some() {
            return Err(Problem::new(
                format!("{at}.outbound"),
                "client_cert_file and client_key_file go together",
            ));
        }
        let limits = &self.limits;
        for (field, value) in [
            ("limits.memory_mib", limits.memory_mib),
            ("limits.cpu_ms", limits.cpu_ms),
            ("limits.call_timeout_ms", limits.call_timeout_ms),
            ("limits.calls_per_instance", limits.calls_per_instance),
            ("limits.max_concurrent_calls", limits.max_concurrent_calls),
            ("limits.instances_memory_mib", limits.instances_memory_mib),
            ("batch.max_items", self.batch.max_items),
            ("batch.max_in_flight", self.batch.max_in_flight),
            ("batch.max_queued", self.batch.max_queued),
            ("outbound.timeout_ms", self.outbound.timeout_ms),
            (
                "outbound.max_response_bytes",
                self.outbound.max_response_bytes,
            ),
        ] {
            if value == 0 {
                return Err(Problem::new(
                    format!("{at}.{field}"),
                    "must be greater than 0",
                ));
            }
        }
        if self.batch.max_items > 1024 {
            return Err(Problem::new(
                format!("{at}.batch.max_items"),
                "at most 1024",
            ));
        }
        if limits.memory_mib > 4096 {
            return Err(Problem::new(
                format!("{at}.limits.memory_mib"),
                "at most 4096",
            ));
        }
        if limits.instances_memory_mib > 65536 {
            return Err(Problem::new(
                format!("{at}.limits.instances_memory_mib"),
                "at most 65536",
            ));
        }
        if !self.outbound.allowed_hosts.is_empty()
            && limits.call_timeout_ms <= self.outbound.timeout_ms
        {
            return Err(Problem::new(
                format!("{at}.limits.call_timeout_ms"),
                "must exceed outbound.timeout_ms, or a slow backend looks like a stuck provider",
            ));
        }
        Ok(())
    }

    /// The settings as the provider sees them, with files and environment
    /// variables read.
    pub fn resolve_settings(&self) -> Result<Vec<(String, String)>, ResolveError> {
        self.settings
            .iter()
            .map(|(key, value)| {
                let text = match value {
                    SettingValue::Text(text) => text.clone(),
                    SettingValue::Integer(n) => n.to_string(),
                    SettingValue::Bool(b) => b.to_string(),
                    SettingValue::File { file } => read_trimmed(file)
                        .map_err(|message| self.resolve_error(format!("setting {key}"), message))?,
                    SettingValue::Env { env } => std::env::var(env).map_err(|_| {
                        self.resolve_error(
                            format!("setting {key}"),
                            format!("environment variable {env} is not set"),
                        )
                    })?,
                };
                Ok((key.clone(), text))
            })
            .collect()
    }

    /// The secrets the host attaches to outbound requests.
    pub fn resolve_secrets(&self) -> Result<HashMap<String, Secret>, ResolveError> {
        self.secrets
            .iter()
            .map(|(name, secret)| {
                let value = match secret.source() {
                    None => {
                        return Err(self.resolve_error(
                            format!("secret {name}"),
                            "needs exactly one of file and env".into(),
                        ));
                    }
                    Some(SecretSource::File(file)) => read_trimmed(&file)
                        .map_err(|message| self.resolve_error(format!("secret {name}"), message))?,
                    Some(SecretSource::Env(env)) => std::env::var(&env).map_err(|_| {
                        self.resolve_error(
                            format!("secret {name}"),
                            format!("environment variable {env} is not set"),
                        )
                    })?,
                };
                Ok((name.clone(), Secret::new(value)))
            })
            .collect()
    }

    fn resolve_error(&self, what: String, message: String) -> ResolveError {
        ResolveError {
            provider: self.name.clone(),
            what,
            message,
        }
    }
}

fn read_trimmed(path: &Path) -> Result<String, String> {
    // The error names the file, never its contents.
    let bytes = kmsgate_core::files::read_bounded(path, kmsgate_core::files::MAX_SMALL_FILE)?;
    let text = String::from_utf8(bytes).map_err(|_| format!("reading {path:?}: not UTF-8"))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}
