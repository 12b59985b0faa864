//! The daemon's configuration: one TOML file, read at start and again at
//! every reload.
//!
//! Two layers. [`ConfigFile`] is the file as written (serde schema): every
//! struct rejects unknown fields, so a typo is an error rather than a
//! silently ignored setting, and `examples/kmsgate.toml` documents every
//! key and mirrors these structs. [`ConfigFile::validate`] is pure and
//! table-tested. [`Config`] is what the daemon uses: built only from a
//! valid file, with durations as `Duration`, the socket mode as bits and
//! the primary provider resolved, so nothing downstream re-parses or
//! `expect`s. Reading the files that settings and secrets name happens when
//! a provider loads ([`ProviderConfig::resolve_settings`],
//! [`ProviderConfig::resolve_secrets`]), so a reload re-reads them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use kmsgate_wasm::spec::{
    BatchConfig, CONTROL_INSTANCES, LimitsConfig, MAX_INSTANCES, OutboundConfig, Problem,
    ProviderConfig, ResolveError, SecretConfig, SecretSource, SettingValue,
};

/// The config file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Path of the Unix socket kube-apiserver dials (the `endpoint` of the
    /// EncryptionConfiguration, without `unix://`).
    pub socket: PathBuf,
    /// Permission bits of the socket, in octal. Default "0600": only the
    /// daemon's user (the apiserver runs as root on control-plane nodes).
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// The provider that encrypts and answers Status. Optional when only one
    /// provider is configured. Every provider can decrypt what it encrypted.
    #[serde(default)]
    pub primary: Option<String>,
    /// How often each provider's status (key id, health) is refreshed in the
    /// background, in milliseconds. A dead backend shows as unhealthy within
    /// `status_interval_ms + limits.call_timeout_ms`, or at once when an
    /// Encrypt or Decrypt sees it unavailable. Default 10000.
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    /// How long SIGTERM/SIGINT waits for in-flight calls before exiting, in
    /// milliseconds. Default 10000.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Watch the config file, every component and every file a setting or
    /// secret reads, and reload when one changes. Default true. SIGHUP and
    /// `kmsgate reload` work either way.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// How long files must be quiet after a change before the reload runs,
    /// in milliseconds, so a file written in several steps is read once.
    /// Default 300.
    #[serde(default = "default_reload_debounce_ms")]
    pub reload_debounce_ms: u64,
    /// Where compiled components are kept between restarts, so a start
    /// does not compile again. Must belong to the daemon's user and be
    /// writable by no one else (created 0700 if missing); otherwise it is
    /// not used, with a warning. Default: none (compile at every start).
    #[serde(default)]
    pub compile_cache_dir: Option<PathBuf>,
    /// Guest memory all providers' sandboxes may use together, in MiB. A
    /// provider can use up to `(limits.max_concurrent_calls + 2) ×
    /// limits.memory_mib`; a config whose providers could together use
    /// more is refused. Set it below the memory limit of the daemon's pod
    /// or unit (see docs/security.md for the rest of the worst case).
    /// Default 4096.
    #[serde(default = "default_memory_budget_mib")]
    pub memory_budget_mib: u64,
    /// Public keys trusted to sign provider components: PEM `PUBLIC KEY`
    /// files, ECDSA P-256 (as `cosign generate-key-pair` or `openssl ec
    /// -pubout` write them) or Ed25519. Several at once, to rotate a
    /// signing key. With none, signatures are not checked.
    #[serde(default)]
    pub trusted_keys: Vec<TrustedKeyConfig>,
    /// Refuse a component that is not signed by a trusted key (a provider's
    /// own `require_signature` overrides it). Default false.
    #[serde(default)]
    pub require_signature: bool,
    /// Limits on the KMS socket's connections.
    #[serde(default)]
    pub kms_socket: KmsSocketConfig,
    /// The admin HTTP server: probes, metrics, the providers view.
    #[serde(default)]
    pub admin: AdminConfig,
    /// The providers, each a WebAssembly component.
    pub providers: Vec<ProviderConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve `/livez`, `/readyz`, `/metrics` and `/providers`. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address to listen on. Default "127.0.0.1:9474": loopback only, so
    /// probes use `host: 127.0.0.1` with `hostNetwork`. A non-loopback
    /// address exposes the read-only endpoints to the network.
    #[serde(default = "default_admin_listen")]
    pub listen: std::net::SocketAddr,
    /// Also serve `POST /reload`. Default false; allowed only on a loopback
    /// `listen` address.
    #[serde(default)]
    pub allow_reload: bool,
    /// Connections open at once, at most; one more closes the oldest, so a
    /// flood of idle connections cannot keep a probe out. Separate from
    /// the KMS socket's budget. Default 64.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: u64,
    /// How long a client has to send its request head, in milliseconds;
    /// each connection serves one request. Default 5000.
    #[serde(default = "default_admin_header_timeout_ms")]
    pub header_timeout_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: default_admin_listen(),
            allow_reload: false,
            max_connections: default_admin_max_connections(),
            header_timeout_ms: default_admin_header_timeout_ms(),
        }
    }
}

fn default_admin_max_connections() -> u64 {
    64
}
fn default_admin_header_timeout_ms() -> u64 {
    5_000
}

/// Limits on the KMS socket. Only its owner (and group, with a wider
/// `socket_mode`) can connect, but a stuck or hostile local client must
/// still not be able to pin the daemon's memory or file descriptors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsSocketConfig {
    /// Connections open at once, at most; one more is closed at once (the
    /// ones already open, kube-apiserver's among them, are kept).
    /// kube-apiserver uses one per KMS provider entry. Default 16.
    #[serde(default = "default_kms_max_connections")]
    pub max_connections: u64,
    /// Concurrent requests (HTTP/2 streams) per connection; clients queue
    /// beyond it (grpc-go does). Default 64.
    #[serde(default = "default_kms_max_streams")]
    pub max_streams: u32,
    /// A connection with no traffic either way for this long is closed, in
    /// milliseconds (kube-apiserver polls Status at least every minute, and
    /// reconnects by itself). Default 300000.
    #[serde(default = "default_kms_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// A request not answered within this long is cancelled, however far
    /// it got (a stream whose body never finishes included), in
    /// milliseconds; a caller's shorter `grpc-timeout` wins. Must exceed
    /// every provider's `limits.call_timeout_ms`. Default 30000.
    #[serde(default = "default_kms_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl Default for KmsSocketConfig {
    fn default() -> Self {
        KmsSocketConfig {
            max_connections: default_kms_max_connections(),
            max_streams: default_kms_max_streams(),
            idle_timeout_ms: default_kms_idle_timeout_ms(),
            request_timeout_ms: default_kms_request_timeout_ms(),
        }
    }
}

fn default_kms_max_connections() -> u64 {
    16
}
fn default_kms_max_streams() -> u32 {
    64
}
fn default_kms_idle_timeout_ms() -> u64 {
    300_000
}
fn default_kms_request_timeout_ms() -> u64 {
    30_000
}

fn default_admin_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9474))
}

fn default_socket_mode() -> String {
    "0600".into()
}
fn default_status_interval_ms() -> u64 {
    10_000
}
fn default_shutdown_grace_ms() -> u64 {
    10_000
}
fn default_true() -> bool {
    true
}
fn default_reload_debounce_ms() -> u64 {
    300
}
fn default_memory_budget_mib() -> u64 {
    4096
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading config file {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config file {path:?}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("config file {path:?}: `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

impl ConfigFile {
    /// Parses the file's text; [`ConfigFile::validate`] checks it.
    pub fn parse(text: &str) -> Result<ConfigFile, toml::de::Error> {
        toml::from_str(text)
    }

    fn make_paths_absolute(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.socket);
        for key in &mut self.trusted_keys {
            fix(&mut key.file);
        }
        for provider in &mut self.providers {
            if provider.oci_reference().is_none() {
                fix(&mut provider.component);
            }
            if let Some(ca) = &mut provider.registry.ca_file {
                fix(ca);
            }
            if let Some(kmsgate_wasm::spec::Source::File { file }) = &mut provider.registry.password
            {
                fix(file);
            }
            if let Some(signature) = &mut provider.signature {
                fix(signature);
            }
            for value in provider.settings.values_mut() {
                if let SettingValue::File { file } = value {
                    fix(file);
                }
            }
            for secret in provider.secrets.values_mut() {
                if let Some(file) = &mut secret.file {
                    fix(file);
                }
            }
            let outbound = &mut provider.outbound;
            for file in [
                &mut outbound.ca_file,
                &mut outbound.client_cert_file,
                &mut outbound.client_key_file,
            ]
            .into_iter()
            .flatten()
            {
                fix(file);
            }
        }
    }

    /// The trusted keys, read and parsed. A key that cannot be read or is
    /// of another kind makes the config invalid: a typo must not turn
    /// signature checking off.
    fn read_trusted_keys(&self) -> Result<Vec<kmsgate_wasm::signature::TrustedKey>, Problem> {
        self.trusted_keys
            .iter()
            .enumerate()
            .map(|(n, key)| {
                let field = format!("trusted_keys[{n}].file");
                let text = kmsgate_core::files::read_bounded(
                    &key.file,
                    kmsgate_wasm::signature::MAX_KEY_FILE,
                )
                .map_err(|why| Problem::new(field.clone(), why))?;
                kmsgate_wasm::signature::TrustedKey::parse(&key.name, &text)
                    .map_err(|why| Problem::new(field, format!("{:?}: {why}", key.file)))
            })
            .collect()
    }

    /// Checks everything that can be checked without touching the disk.
    pub fn validate(&self) -> Result<(), Problem> {
        self.socket_mode()?;
        for (n, key) in self.trusted_keys.iter().enumerate() {
            if !kmsgate_wasm::spec::is_valid_name(&key.name) {
                return Err(Problem::new(
                    format!("trusted_keys[{n}].name"),
                    "1-63 lowercase letters, digits or '-'",
                ));
            }
            if self.trusted_keys[..n].iter().any(|k| k.name == key.name) {
                return Err(Problem::new(
                    format!("trusted_keys[{n}].name"),
                    format!("{} is named twice", key.name),
                ));
            }
        }
        for provider in &self.providers {
            if provider.oci_reference().is_some() && self.compile_cache_dir.is_none() {
                return Err(Problem::new(
                    format!("providers.{}.component", provider.name),
                    "an oci:// component needs compile_cache_dir, where pulled components are kept",
                ));
            }
            for name in provider.trusted_keys.iter().flatten() {
                if !self.trusted_keys.iter().any(|k| &k.name == name) {
                    return Err(Problem::new(
                        format!("providers.{}.trusted_keys", provider.name),
                        format!("{name} is not one of the daemon's trusted_keys"),
                    ));
                }
            }
        }
        if self.memory_budget_mib == 0 {
            return Err(Problem::new("memory_budget_mib", "must be greater than 0"));
        }
        for (field, value) in [
            (
                "kms_socket.max_connections",
                self.kms_socket.max_connections,
            ),
            (
                "kms_socket.max_streams",
                u64::from(self.kms_socket.max_streams),
            ),
            (
                "kms_socket.idle_timeout_ms",
                self.kms_socket.idle_timeout_ms,
            ),
            (
                "kms_socket.request_timeout_ms",
                self.kms_socket.request_timeout_ms,
            ),
            ("admin.max_connections", self.admin.max_connections),
            ("admin.header_timeout_ms", self.admin.header_timeout_ms),
        ] {
            if value == 0 {
                return Err(Problem::new(field, "must be greater than 0"));
            }
        }
        if let Some(provider) = self
            .providers
            .iter()
            .find(|p| p.limits.call_timeout_ms >= self.kms_socket.request_timeout_ms)
        {
            return Err(Problem::new(
                "kms_socket.request_timeout_ms",
                format!(
                    "must exceed limits.call_timeout_ms of provider {} ({} ms)",
                    provider.name, provider.limits.call_timeout_ms
                ),
            ));
        }
        if self.status_interval_ms < 100 {
            return Err(Problem::new("status_interval_ms", "must be at least 100"));
        }
        if self.admin.allow_reload && !self.admin.listen.ip().is_loopback() {
            return Err(Problem::new(
                "admin.allow_reload",
                "POST /reload is only served on a loopback admin.listen address",
            ));
        }
        if self.providers.is_empty() {
            return Err(Problem::new("providers", "at least one provider is needed"));
        }
        let mut seen = Vec::new();
        for (i, provider) in self.providers.iter().enumerate() {
            provider.validate(&format!("providers[{i}]"))?;
            if seen.contains(&&provider.name) {
                return Err(Problem::new(
                    format!("providers[{i}].name"),
                    format!("{:?} is used twice", provider.name),
                ));
            }
            seen.push(&provider.name);
        }
        self.primary_name()?;
        let instances: u64 = self
            .providers
            .iter()
            .map(|p| p.limits.max_concurrent_calls + CONTROL_INSTANCES)
            .sum();
        if instances > MAX_INSTANCES {
            return Err(Problem::new(
                "providers",
                format!(
                    "the providers may hold {instances} instances at once (limits.max_concurrent_calls + {CONTROL_INSTANCES} each); the daemon has {MAX_INSTANCES}"
                ),
            ));
        }
        let worst = self.worst_case_memory_mib();
        if worst > self.memory_budget_mib {
            return Err(Problem::new(
                "memory_budget_mib",
                format!(
                    "the providers may use {worst} MiB of guest memory at once ((limits.max_concurrent_calls + {CONTROL_INSTANCES}) × limits.memory_mib each), more than the budget of {} MiB",
                    self.memory_budget_mib
                ),
            ));
        }
        Ok(())
    }

    /// The most guest memory every provider's instances can use together,
    /// in MiB.
    pub fn worst_case_memory_mib(&self) -> u64 {
        self.providers
            .iter()
            .map(|p| (p.limits.max_concurrent_calls + CONTROL_INSTANCES) * p.limits.memory_mib)
            .sum()
    }

    /// The socket's permission bits.
    pub fn socket_mode(&self) -> Result<u32, Problem> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .ok_or_else(|| {
                Problem::new("socket_mode", "must be octal permission bits like \"0600\"")
            })
    }

    /// The name of the provider that encrypts.
    pub fn primary_name(&self) -> Result<&str, Problem> {
        match (&self.primary, self.providers.as_slice()) {
            (Some(name), providers) => providers
                .iter()
                .find(|p| &p.name == name)
                .map(|p| p.name.as_str())
                .ok_or_else(|| Problem::new("primary", format!("no provider is named {name:?}"))),
            (None, [only]) => Ok(&only.name),
            (None, _) => Err(Problem::new(
                "primary",
                "must name the encrypting provider when several are configured",
            )),
        }
    }
}

/// The config as the daemon uses it: a [`ConfigFile`] that passed
/// validation, its paths absolute (when it came from a file), durations
/// and modes parsed, the primary provider resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this config was read from; `None` for one built from text.
    pub path: Option<PathBuf>,
    pub socket: PathBuf,
    /// Permission bits of the socket.
    pub socket_mode: u32,
    /// The provider that encrypts and answers Status; one of `providers`.
    pub primary: String,
    pub status_interval: Duration,
    pub shutdown_grace: Duration,
    pub watch: bool,
    pub reload_debounce: Duration,
    pub compile_cache_dir: Option<PathBuf>,
    /// Guest memory all providers' sandboxes may use together, in bytes.
    pub memory_budget_bytes: usize,
    pub kms_socket: KmsSocket,
    pub admin: Admin,
    /// As in the file; each provider's `policy` holds the keys read.
    pub trusted_keys: Vec<TrustedKeyConfig>,
    pub require_signature: bool,
    pub providers: Vec<ProviderConfig>,
}

/// One `[[trusted_keys]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKeyConfig {
    /// Shown as the signer (`kmsgate providers`, `kmsgate_provider_info`);
    /// providers name keys by it.
    pub name: String,
    /// The PEM public key file.
    pub file: PathBuf,
}

/// Limits on the KMS socket's connections ([`KmsSocketConfig`], parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsSocket {
    pub max_connections: usize,
    pub max_streams: u32,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for KmsSocket {
    fn default() -> Self {
        KmsSocket::from(&KmsSocketConfig::default())
    }
}

impl From<&KmsSocketConfig> for KmsSocket {
    fn from(file: &KmsSocketConfig) -> Self {
        KmsSocket {
            max_connections: saturating_usize(file.max_connections),
            max_streams: file.max_streams,
            idle_timeout: Duration::from_millis(file.idle_timeout_ms),
            request_timeout: Duration::from_millis(file.request_timeout_ms),
        }
    }
}

/// The admin HTTP server ([`AdminConfig`], parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub allow_reload: bool,
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl From<&AdminConfig> for Admin {
    fn from(file: &AdminConfig) -> Self {
        Admin {
            enabled: file.enabled,
            listen: file.listen,
            allow_reload: file.allow_reload,
            max_connections: saturating_usize(file.max_connections),
            header_timeout: Duration::from_millis(file.header_timeout_ms),
        }
    }
}

fn saturating_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Config {
    /// Reads, parses and validates `path`; relative paths inside it are made
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = kmsgate_core::files::read_bounded(path, kmsgate_core::files::MAX_SMALL_FILE)
            .map_err(|why| ConfigError::Read {
                path: path.to_owned(),
                source: std::io::Error::other(why),
            })?;
        let text = String::from_utf8(bytes).map_err(|_| ConfigError::Read {
            path: path.to_owned(),
            source: std::io::Error::other("not UTF-8"),
        })?;
        let mut file = ConfigFile::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        file.make_paths_absolute(path.parent().unwrap_or(Path::new(".")));
        Config::from_file(file, Some(path.to_owned())).map_err(|p| ConfigError::Invalid {
            path: path.to_owned(),
            field: p.field,
            message: p.message,
        })
    }

    /// Parses and validates config text that no file holds (tests, benches);
    /// relative paths stay as written.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let inline = || PathBuf::from("(inline)");
        let file = ConfigFile::parse(text).map_err(|source| ConfigError::Parse {
            path: inline(),
            source: Box::new(source),
        })?;
        Config::from_file(file, None).map_err(|p| ConfigError::Invalid {
            path: inline(),
            field: p.field,
            message: p.message,
        })
    }

    /// Validates `file` and turns it into the daemon's types (reading the
    /// trusted keys).
    pub fn from_file(mut file: ConfigFile, path: Option<PathBuf>) -> Result<Config, Problem> {
        file.validate()?;
        let keys = file.read_trusted_keys()?;
        for provider in &mut file.providers {
            let chosen = keys
                .iter()
                .filter(|key| {
                    provider
                        .trusted_keys
                        .as_ref()
                        .is_none_or(|names| names.contains(&key.name))
                })
                .cloned()
                .collect();
            provider.oci_cache = file.compile_cache_dir.as_ref().map(|dir| dir.join("oci"));
            provider.policy = kmsgate_wasm::signature::Policy {
                keys: std::sync::Arc::new(chosen),
                required: provider.require_signature.unwrap_or(file.require_signature),
            };
        }
        Ok(Config {
            path,
            socket_mode: file.socket_mode()?,
            primary: file.primary_name()?.to_owned(),
            status_interval: Duration::from_millis(file.status_interval_ms),
            shutdown_grace: Duration::from_millis(file.shutdown_grace_ms),
            watch: file.watch,
            reload_debounce: Duration::from_millis(file.reload_debounce_ms),
            memory_budget_bytes: saturating_usize(file.memory_budget_mib.saturating_mul(1 << 20)),
            kms_socket: KmsSocket::from(&file.kms_socket),
            admin: Admin::from(&file.admin),
            socket: file.socket,
            compile_cache_dir: file.compile_cache_dir,
            trusted_keys: file.trusted_keys,
            require_signature: file.require_signature,
            providers: file.providers,
        })
    }

    /// Whether a running daemon can move from `self` to `next` without a
    /// restart. The socket cannot move, and a provider can be removed only
    /// when the operator names it in `removable` (`kmsgate reload --remove
    /// NAME`): its ciphertexts no longer decrypt, so a config edit alone,
    /// a stray one included, never does it. Returns the providers removed.
    pub fn reloadable_to(
        &self,
        next: &Config,
        removable: &[String],
    ) -> Result<Vec<String>, String> {
        if next.socket != self.socket || next.socket_mode != self.socket_mode {
            return Err("socket and socket_mode changes need a restart".into());
        }
        let mut removed = Vec::new();
        for provider in &self.providers {
            if next.providers.iter().any(|p| p.name == provider.name) {
                continue;
            }
            if !removable.contains(&provider.name) {
                return Err(format!(
                    "provider {0} was removed; that would strand its ciphertexts: rewrite them first, then `kmsgate reload --remove {0}` (or restart)",
                    provider.name
                ));
            }
            removed.push(provider.name.clone());
        }
        for name in removable {
            if next.providers.iter().any(|p| &p.name == name) {
                return Err(format!(
                    "--remove {name}: provider {name} is still in the config"
                ));
            }
            if !self.providers.iter().any(|p| &p.name == name) {
                return Err(format!("--remove {name}: no provider {name} is serving"));
            }
        }
        Ok(removed)
    }

    /// Every file whose change should trigger a reload.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.path.iter().cloned().collect();
        for provider in &self.providers {
            // A registry reference is pulled when the operator reloads,
            // never on a file event.
            if provider.oci_reference().is_none() {
                files.push(provider.component.clone());
            }
            files.extend(provider.settings.values().filter_map(|value| match value {
                SettingValue::File { file } => Some(file.clone()),
                _ => None,
            }));
            files.extend(
                provider
                    .secrets
                    .values()
                    .filter_map(|secret| secret.file.clone()),
            );
        }
        files.sort();
        files.dedup();
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const MINIMAL: &str = r#"
        socket = "/run/kmsgate.sock"
        [[providers]]
        name = "local"
        component = "local_aes.wasm"
    "#;

    fn with(extra: &str) -> String {
        format!("{MINIMAL}\n{extra}")
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let file = ConfigFile::parse(MINIMAL).unwrap();
        assert_eq!(file.worst_case_memory_mib(), 18 * 64);
        let config = Config::from_file(file, None).unwrap();
        assert_eq!(config.socket_mode, 0o600);
        assert_eq!(config.primary, "local");
        assert_eq!(config.status_interval, Duration::from_secs(10));
        assert_eq!(config.kms_socket.request_timeout, Duration::from_secs(30));
        assert_eq!(config.admin.header_timeout, Duration::from_secs(5));
        let limits = &config.providers[0].limits;
        assert_eq!(
            (
                limits.memory_mib,
                limits.cpu_ms,
                limits.call_timeout_ms,
                limits.calls_per_instance,
                limits.max_concurrent_calls,
                limits.max_queued_calls,
            ),
            (64, 1000, 5000, 1000, 16, 64)
        );
        assert_eq!(config.memory_budget_bytes, 4096 << 20);
        assert!(config.providers[0].outbound.allowed_hosts.is_empty());
    }

    #[test]
    fn debug_never_shows_literal_settings() {
        let config =
            ConfigFile::parse(&with("[providers.settings]\nkey = \"c2VjcmV0LWtleQ==\"")).unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("c2VjcmV0") && shown.contains("16 bytes, redacted"),
            "{shown}"
        );
    }

    #[test]
    fn trusted_keys_are_named_once_read_at_load_and_chosen_per_provider() {
        let problem = |text: &str| match ConfigFile::parse(text).map(|f| Config::from_file(f, None))
        {
            Ok(Err(problem)) => problem.field,
            other => panic!("{other:?}"),
        };
        let key = |name: &str, file: &str| {
            format!("[[trusted_keys]]\nname = \"{name}\"\nfile = \"{file}\"\n")
        };
        let twice = format!("{MINIMAL}\n{}{}", key("a", "a.pub"), key("a", "b.pub"));
        assert_eq!(problem(&twice), "trusted_keys[1].name");
        let unknown = MINIMAL.replace(
            "component = \"local_aes.wasm\"",
            "component = \"local_aes.wasm\"\ntrusted_keys = [\"nope\"]",
        );
        assert_eq!(problem(&unknown), "providers.local.trusted_keys");
        // A key file that cannot be read or is no key: the config is
        // invalid, never signature checking quietly off.
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pub");
        let text = format!("{MINIMAL}\n{}", key("a", missing.to_str().unwrap()));
        assert_eq!(problem(&text), "trusted_keys[0].file");
        let junk = dir.path().join("junk.pub");
        std::fs::write(&junk, "not a key").unwrap();
        let text = format!("{MINIMAL}\n{}", key("a", junk.to_str().unwrap()));
        assert_eq!(problem(&text), "trusted_keys[0].file");
        // A registry reference needs somewhere to keep what it pulls, and
        // a digest unless the operator opts out.
        let digest = "a".repeat(64);
        let oci = MINIMAL.replace(
            "\"local_aes.wasm\"",
            &format!("\"oci://registry.example/kms:v1@sha256:{digest}\""),
        );
        assert_eq!(problem(&oci), "providers.local.component");
        let cached = format!("compile_cache_dir = \"/var/cache/kmsgate\"\n{oci}");
        let config = Config::from_file(ConfigFile::parse(&cached).unwrap(), None).unwrap();
        assert_eq!(
            config.providers[0].oci_cache.as_deref(),
            Some(Path::new("/var/cache/kmsgate/oci"))
        );
        let unpinned = cached.replace(&format!("@sha256:{digest}"), "");
        assert_eq!(problem(&unpinned), "providers[0].component");
        // Without keys, nothing is checked, and the default requires nothing.
        let config = Config::from_file(ConfigFile::parse(MINIMAL).unwrap(), None).unwrap();
        assert_eq!(config.providers[0].policy, Default::default());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(ConfigFile::parse(&with("typo = 1")).is_err());
        assert!(ConfigFile::parse(&with("[providers.limits]\nmemory = 1")).is_err());
    }

    #[test]
    fn settings_and_secrets_take_literals_files_and_env() {
        let config = ConfigFile::parse(&with(
            r#"
            [providers.settings]
            key-id = "k1"
            port = 8200
            tls = true
            key = { file = "key.b64" }
            [providers.secrets]
            token = { env = "VAULT_TOKEN" }
            "#,
        ))
        .unwrap();
        let provider = &config.providers[0];
        assert_eq!(provider.settings["port"], SettingValue::Integer(8200));
        assert_eq!(
            provider.settings["key"],
            SettingValue::File {
                file: "key.b64".into()
            }
        );
        assert_eq!(
            provider.secrets["token"].source(),
            Some(SecretSource::Env("VAULT_TOKEN".into()))
        );
        assert_eq!(
            provider.secrets["token"].headers,
            ["x-vault-token", "authorization"]
        );
    }

    #[rstest]
    #[case::bad_socket_mode("socket_mode = \"rw\"", "socket_mode")]
    #[case::socket_mode_too_big("socket_mode = \"1777\"", "socket_mode")]
    #[case::tiny_status_interval("status_interval_ms = 5", "status_interval_ms")]
    #[case::unknown_primary("primary = \"vault\"", "primary")]
    #[case::zero_budget("memory_budget_mib = 0", "memory_budget_mib")]
    #[case::no_kms_connections("[kms_socket]\nmax_connections = 0", "kms_socket.max_connections")]
    #[case::request_timeout_below_call_timeout(
        "[kms_socket]\nrequest_timeout_ms = 1000",
        "kms_socket.request_timeout_ms"
    )]
    #[case::over_budget("memory_budget_mib = 100", "memory_budget_mib")]
    #[case::remote_reload(
        "[admin]\nlisten = \"0.0.0.0:9474\"\nallow_reload = true",
        "admin.allow_reload"
    )]
    fn top_level_problems_name_the_field(#[case] line: &str, #[case] field: &str) {
        let text = if line.starts_with('[') {
            format!("{MINIMAL}\n{line}")
        } else {
            format!("{line}\n{MINIMAL}")
        };
        let problem = ConfigFile::parse(&text).unwrap().validate().unwrap_err();
        assert_eq!(problem.field, field);
    }

    #[rstest]
    #[case::uppercase_name("name = \"Local\"", "providers[0].name")]
    #[case::zero_memory("[providers.limits]\nmemory_mib = 0", "providers[0].limits.memory_mib")]
    #[case::huge_memory(
        "[providers.limits]\nmemory_mib = 9000",
        "providers[0].limits.memory_mib"
    )]
    #[case::bad_host(
        "[providers.outbound]\nallowed_hosts = [\"vault:8200\"]",
        "providers[0].outbound.allowed_hosts"
    )]
    #[case::timeout_order(
        "[providers.outbound]\nallowed_hosts = [\"http://127.0.0.1:8200\"]\ntimeout_ms = 9000",
        "providers[0].limits.call_timeout_ms"
    )]
    #[case::bad_pin("sha256 = \"abc\"", "providers[0].sha256")]
    #[case::no_concurrency(
        "[providers.limits]\nmax_concurrent_calls = 0",
        "providers[0].limits.max_concurrent_calls"
    )]
    #[case::more_instances_than_the_pool(
        "[providers.limits]\nmax_concurrent_calls = 300\nmemory_mib = 1",
        "providers"
    )]
    #[case::secret_without_source(
        "[providers.secrets]\ntoken = { headers = [\"x-vault-token\"] }",
        "providers[0].secrets.token"
    )]
    #[case::secret_in_the_host_header(
        "[providers.secrets]\ntoken = { env = \"T\", headers = [\"host\"] }",
        "providers[0].secrets.token.headers"
    )]
    #[case::secret_in_an_uppercase_header(
        "[providers.secrets]\ntoken = { env = \"T\", headers = [\"X-Token\"] }",
        "providers[0].secrets.token.headers"
    )]
    #[case::secret_to_a_host_not_allowed(
        "[providers.secrets]\ntoken = { env = \"T\", hosts = [\"https://evil.example.com\"] }",
        "providers[0].secrets.token.hosts"
    )]
    #[case::half_mtls(
        "[providers.outbound]\nclient_cert_file = \"c.pem\"",
        "providers[0].outbound"
    )]
    fn provider_problems_name_the_field(#[case] extra: &str, #[case] field: &str) {
        let component = "component = \"local_aes.wasm\"";
        let text = if extra.starts_with("name") {
            MINIMAL.replace("name = \"local\"", extra)
        } else if extra.starts_with("sha256") {
            MINIMAL.replace(component, &format!("{component}\n{extra}"))
        } else {
            with(extra)
        };
        let problem = ConfigFile::parse(&text).unwrap().validate().unwrap_err();
        assert_eq!(problem.field, field, "{problem:?}");
    }

    #[test]
    fn reloads_may_not_move_the_socket_or_drop_providers() {
        let two = Config::parse(&format!(
            "primary = \"local\"\n{}",
            with("[[providers]]\nname = \"b\"\ncomponent = \"b.wasm\"")
        ))
        .unwrap();
        let one = Config::parse(MINIMAL).unwrap();
        assert!(
            one.reloadable_to(&two, &[]).is_ok(),
            "adding a provider is fine"
        );
        assert!(
            two.reloadable_to(&one, &[])
                .unwrap_err()
                .contains("provider b was removed")
        );
        // Named by the operator, it may go; a name still configured or
        // unknown is a mistake.
        assert_eq!(two.reloadable_to(&one, &["b".into()]).unwrap(), ["b"]);
        assert!(one.reloadable_to(&one, &["local".into()]).is_err());
        assert!(two.reloadable_to(&one, &["b".into(), "c".into()]).is_err());
        let moved =
            Config::parse(&MINIMAL.replace("/run/kmsgate.sock", "/run/other.sock")).unwrap();
        assert!(one.reloadable_to(&moved, &[]).is_err());
    }

    #[test]
    fn watched_files_cover_config_components_and_file_settings() {
        let mut config = Config::parse(&with("[providers.settings]\nkey = { file = \"k\" }\n[providers.secrets]\nt = { file = \"t\" }")).unwrap();
        config.path = Some("/etc/kmsgate.toml".into());
        let files = config.watched_files();
        for file in ["/etc/kmsgate.toml", "local_aes.wasm", "k", "t"] {
            assert!(files.contains(&PathBuf::from(file)), "{file} in {files:?}");
        }
    }

    #[test]
    fn two_providers_need_a_primary_and_distinct_names() {
        let two = with("[[providers]]\nname = \"vault\"\ncomponent = \"v.wasm\"");
        assert_eq!(
            ConfigFile::parse(&two)
                .unwrap()
                .validate()
                .unwrap_err()
                .field,
            "primary"
        );
        let with_primary = format!("primary = \"vault\"\n{two}");
        assert_eq!(
            ConfigFile::parse(&with_primary)
                .unwrap()
                .primary_name()
                .unwrap(),
            "vault"
        );
        let twice = with("[[providers]]\nname = \"local\"\ncomponent = \"v.wasm\"");
        let problem = ConfigFile::parse(&format!("primary = \"local\"\n{twice}"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(problem.field, "providers[1].name");
    }

    #[test]
    fn load_names_the_file_and_makes_paths_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmsgate.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(
            config.providers[0].component,
            dir.path().join("local_aes.wasm")
        );
        std::fs::write(&path, "socket_mode = \"x\"\n".to_owned() + MINIMAL).unwrap();
        let message = Config::load(&path).unwrap_err().to_string();
        assert!(
            message.contains("kmsgate.toml") && message.contains("socket_mode"),
            "{message}"
        );
    }

    #[test]
    fn resolving_reads_files_without_putting_contents_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "s.secret-token\n").unwrap();
        let text = with(&format!(
            "[providers.secrets]\ntoken = {{ file = {:?} }}\nmissing = {{ file = \"/nonexistent/x\" }}",
            dir.path().join("token")
        ));
        let mut config = ConfigFile::parse(&text).unwrap();
        let error = config.providers[0]
            .resolve_secrets()
            .unwrap_err()
            .to_string();
        assert!(error.contains("secret missing") && !error.contains("s.secret-token"));
        config.providers[0].secrets.remove("missing");
        let secrets = config.providers[0].resolve_secrets().unwrap();
        assert_eq!(secrets["token"].expose(), "s.secret-token");
    }

    #[test]
    fn a_stream_limit_past_http2s_range_is_refused_not_truncated() {
        let text = |streams: u64| {
            format!(
                "socket = \"/s\"\n[kms_socket]\nmax_streams = {streams}\n[[providers]]\nname = \"p\"\ncomponent = \"p.wasm\"\n"
            )
        };
        assert_eq!(
            ConfigFile::parse(&text(64)).unwrap().kms_socket.max_streams,
            64
        );
        // 2^32 would have become 0 streams.
        assert!(ConfigFile::parse(&text(1 << 32)).is_err());
    }

    #[test]
    fn the_deployment_config_is_valid() {
        let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kmsgate.toml");
        let config = Config::load(Path::new(deploy)).unwrap();
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9474");
    }

    #[test]
    fn the_documented_example_is_valid() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/kmsgate.toml");
        let config = Config::load(Path::new(example)).unwrap();
        assert_eq!(config.primary, "vault");
        assert_eq!(config.providers.len(), 2);
    }
}
