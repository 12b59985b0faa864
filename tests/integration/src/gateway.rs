//! Runs the daemon with a generated config in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use kmsgate_daemon::config::Config;
use kmsgate_daemon::server::{self, ServeError};
use kmsgate_proto::admin::{ProviderInfo, ProvidersRequest, ReloadRequest, ReloadResponse};
use kmsgate_proto::client::{self, AdminClient, V1beta1Client, V2Client};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use toml::{Table, Value};

use crate::{component, daemon_binary};

/// One provider entry of the generated config.
#[derive(Clone)]
pub struct ProviderSpec {
    name: String,
    component: PathBuf,
    settings: Table,
    /// Secret name → value; written to a file the config points at.
    secrets: Vec<(String, String)>,
    outbound: Table,
    limits: Table,
    batch: Table,
    auth: Table,
    sha256: Option<String>,
    /// Further keys of the provider's table (`registry`, ...).
    fields: Table,
    /// A component given as text (`oci://...`) rather than a built one.
    reference: Option<String>,
}

impl ProviderSpec {
    /// A provider running the built component `component_name`.
    /// A hostile fixture that passes the host's canary (setting
    /// `evade-canary`, see `tests/fixture-support/canary.rs`) and misbehaves
    /// on every other call, so that it gets past the start's canary and the
    /// test can attack the sandbox's bounds with it.
    pub fn hostile(name: &str, fixture: &str) -> Self {
        ProviderSpec::new(name, fixture).setting("evade-canary", "true")
    }

    pub fn new(name: &str, component_name: &str) -> Self {
        ProviderSpec {
            name: name.into(),
            component: component(component_name),
            settings: Table::new(),
            secrets: Vec::new(),
            outbound: Table::new(),
            limits: Table::new(),
            batch: Table::new(),
            auth: Table::new(),
            sha256: None,
            fields: Table::new(),
            reference: None,
        }
    }

    /// `local-aes` with key id `key_id` and the key [`local_aes_key`]`(seed)`.
    pub fn local_aes(name: &str, key_id: &str, seed: u8) -> Self {
        let key = local_aes_key(seed);
        ProviderSpec::new(name, "local_aes")
            .setting("key-id", key_id)
            .setting("key", &key)
    }

    /// `vault-transit` against `bao`, Transit key `key`, token attached by
    /// the host.
    pub fn vault(name: &str, bao: &crate::OpenBao, key: &str) -> Self {
        ProviderSpec::new(name, "vault_transit")
            .setting("address", &bao.address)
            .setting("key", key)
            .secret("token", &bao.token)
            .allow(&bao.address)
    }

    /// `vault-transit` reaching `bao` at `address` (a proxy in front of
    /// it), token attached by the host.
    pub fn vault_via(name: &str, bao: &crate::OpenBao, address: &str, key: &str) -> Self {
        ProviderSpec::new(name, "vault_transit")
            .setting("address", address)
            .setting("key", key)
            .secret("token", &bao.token)
            .allow(address)
    }

    /// `vault-transit` against the Vault at `address`, Transit key `key`,
    /// with the Vault token from the host's auth (`[providers.auth.vault]`),
    /// no secret. `auth` holds `kind` and the kind's fields; `address` is
    /// filled in.
    pub fn vault_with_auth(name: &str, address: &str, key: &str, mut auth: Table) -> Self {
        if auth["kind"]
            .as_str()
            .is_some_and(|kind| kind.starts_with("vault-"))
        {
            auth.entry("address").or_insert_with(|| address.into());
        }
        ProviderSpec::new(name, "vault_transit")
            .setting("address", address)
            .setting("key", key)
            .setting("auth", "vault")
            .allow(address)
            .auth("vault", auth)
    }

    /// `[providers.auth.<name>]`: `config` holds `kind` and its fields.
    pub fn auth(mut self, name: &str, config: Table) -> Self {
        self.auth.insert(name.into(), Value::Table(config));
        self
    }

    /// Sets one `[providers.outbound]` key.
    pub fn outbound(mut self, key: &str, value: Value) -> Self {
        self.outbound.insert(key.into(), value);
        self
    }

    /// Runs the component at `path` instead of a built one (tests that
    /// replace the file to hot-swap it).
    /// The component as a registry reference, `oci://...`.
    pub fn component_reference(mut self, reference: &str) -> Self {
        self.reference = Some(reference.into());
        self
    }

    /// Sets any other key of the provider's table.
    pub fn field(mut self, key: &str, value: Value) -> Self {
        self.fields.insert(key.into(), value);
        self
    }

    pub fn component_path(mut self, path: &Path) -> Self {
        self.component = path.to_owned();
        self
    }

    /// Pins the component's SHA-256.
    pub fn sha256(mut self, pin: &str) -> Self {
        self.sha256 = Some(pin.into());
        self
    }

    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings
            .insert(key.into(), Value::String(value.into()));
        self
    }

    /// A setting read from `file` when the provider loads.
    pub fn file_setting(mut self, key: &str, file: &Path) -> Self {
        let mut source = Table::new();
        source.insert("file".into(), file.display().to_string().into());
        self.settings.insert(key.into(), Value::Table(source));
        self
    }

    pub fn secret(mut self, name: &str, value: &str) -> Self {
        self.secrets.push((name.into(), value.into()));
        self
    }

    pub fn allow(mut self, host: &str) -> Self {
        let hosts = self
            .outbound
            .entry("allowed_hosts")
            .or_insert_with(|| Value::Array(vec![]));
        hosts
            .as_array_mut()
            .expect("array")
            .push(Value::String(host.into()));
        self
    }

    pub fn outbound_timeout_ms(mut self, ms: i64) -> Self {
        self.outbound
            .insert("timeout_ms".into(), Value::Integer(ms));
        self
    }

    /// Sets one `[providers.limits]` key (`memory_mib`, `cpu_ms`,
    /// `call_timeout_ms`, `calls_per_instance`).
    pub fn limit(mut self, key: &str, value: i64) -> Self {
        self.limits.insert(key.into(), Value::Integer(value));
        self
    }

    /// Sets one `[providers.batch]` key (`max_items`, `max_in_flight`).
    pub fn batch(mut self, key: &str, value: i64) -> Self {
        self.batch.insert(key.into(), Value::Integer(value));
        self
    }

    fn to_toml(&self, dir: &Path) -> Table {
        let mut table = Table::new();
        table.insert("name".into(), self.name.clone().into());
        let component = match &self.reference {
            Some(reference) => reference.clone(),
            None => self.component.display().to_string(),
        };
        table.insert("component".into(), component.into());
        table.extend(self.fields.clone());
        if let Some(pin) = &self.sha256 {
            table.insert("sha256".into(), pin.clone().into());
        }
        table.insert("settings".into(), Value::Table(self.settings.clone()));
        let mut secrets = Table::new();
        for (name, value) in &self.secrets {
            let path = dir.join(format!("{}-{name}.secret", self.name));
            std::fs::write(&path, value).expect("writing a secret file");
            let mut source = Table::new();
            source.insert("file".into(), path.display().to_string().into());
            secrets.insert(name.clone(), Value::Table(source));
        }
        table.insert("secrets".into(), Value::Table(secrets));
        table.insert("outbound".into(), Value::Table(self.outbound.clone()));
        table.insert("limits".into(), Value::Table(self.limits.clone()));
        table.insert("batch".into(), Value::Table(self.batch.clone()));
        table.insert("auth".into(), Value::Table(self.auth.clone()));
        table
    }
}

/// Runs the `kmsgate check` binary on `gateway`'s config: whether it
/// passed, and what it printed (stdout, and warnings and errors logged on
/// stderr).
pub fn check(gateway: &TestGateway) -> (bool, String) {
    let (_dir, path) = gateway.write_config();
    let output = std::process::Command::new(crate::daemon_binary())
        .args(["--log", "warn", "check", "--config"])
        .arg(&path)
        .output()
        .expect("running kmsgate check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A local-aes key (base64) made from `seed`: tests only.
pub fn local_aes_key(seed: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([seed; 32])
}

/// Builds a config and runs the daemon on it.
#[derive(Clone)]
pub struct TestGateway {
    providers: Vec<ProviderSpec>,
    primary: Option<String>,
    status_interval_ms: i64,
    watch: bool,
    reload_debounce_ms: i64,
    /// Port of the admin HTTP server; none: off.
    admin_port: Option<u16>,
    compile_cache_dir: Option<PathBuf>,
    /// Extra keys of `[kms_socket]` and `[admin]`, and top-level ones.
    kms_socket: Table,
    admin: Table,
    top: Table,
    /// `RLIMIT_NOFILE` of a daemon started as a process.
    fd_limit: Option<u32>,
    /// Human log lines instead of JSON, for a daemon started as a process.
    human_logs: bool,
}

impl Default for TestGateway {
    fn default() -> Self {
        Self::new()
    }
}

impl TestGateway {
    pub fn new() -> Self {
        TestGateway {
            providers: Vec::new(),
            primary: None,
            status_interval_ms: 10_000,
            watch: false,
            reload_debounce_ms: 100,
            admin_port: None,
            compile_cache_dir: None,
            kms_socket: Table::new(),
            admin: Table::new(),
            top: Table::new(),
            fd_limit: None,
            human_logs: false,
        }
    }

    pub fn with_provider(mut self, provider: ProviderSpec) -> Self {
        self.providers.push(provider);
        self
    }

    pub fn primary(mut self, name: &str) -> Self {
        self.primary = Some(name.into());
        self
    }

    /// Reload on file changes (off by default in tests, so that only the
    /// tests about it see reloads they did not ask for).
    pub fn watch(mut self, watch: bool) -> Self {
        self.watch = watch;
        self
    }

    /// Serves the admin HTTP server on a free loopback port (off by default
    /// in tests, so parallel tests do not compete for a port).
    pub fn admin_http(mut self) -> Self {
        self.admin_port = Some(crate::free_port());
        self
    }

    /// Keeps compiled components in `dir` between starts.
    pub fn compile_cache_dir(mut self, dir: &Path) -> Self {
        self.compile_cache_dir = Some(dir.to_owned());
        self
    }

    /// Sets one `[kms_socket]` key (`max_connections`, `max_streams`,
    /// `idle_timeout_ms`, `request_timeout_ms`).
    pub fn kms_socket(mut self, key: &str, value: i64) -> Self {
        self.kms_socket.insert(key.into(), Value::Integer(value));
        self
    }

    /// Sets one `[admin]` key (`max_connections`, `header_timeout_ms`).
    pub fn admin(mut self, key: &str, value: i64) -> Self {
        self.admin.insert(key.into(), Value::Integer(value));
        self
    }

    /// Sets one top-level key (`memory_budget_mib`, ...).
    pub fn top(self, key: &str, value: i64) -> Self {
        self.top_value(key, Value::Integer(value))
    }

    /// Sets one top-level key to any value (`trusted_keys`, ...).
    pub fn top_value(mut self, key: &str, value: Value) -> Self {
        self.top.insert(key.into(), value);
        self
    }

    /// Logs in the human format (a daemon started as a process).
    pub fn human_logs(mut self) -> Self {
        self.human_logs = true;
        self
    }

    /// Runs the daemon process with at most `limit` open files.
    pub fn fd_limit(mut self, limit: u32) -> Self {
        self.fd_limit = Some(limit);
        self
    }

    pub fn reload_debounce_ms(mut self, ms: i64) -> Self {
        self.reload_debounce_ms = ms;
        self
    }

    pub fn status_interval_ms(mut self, ms: i64) -> Self {
        self.status_interval_ms = ms;
        self
    }

    /// Writes `kmsgate.toml` into a fresh directory; returns the directory
    /// and the config path.
    pub fn write_config(&self) -> (TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kmsgate.toml");
        self.write_config_to(&path);
        (dir, path)
    }

    /// Writes the config to `path` atomically (a watcher never sees half a
    /// file); secret files go beside it.
    pub fn write_config_to(&self, path: &Path) {
        let dir = path.parent().expect("config directory");
        let mut root = Table::new();
        root.insert(
            "socket".into(),
            dir.join("kms.sock").display().to_string().into(),
        );
        root.insert(
            "status_interval_ms".into(),
            Value::Integer(self.status_interval_ms),
        );
        root.insert("shutdown_grace_ms".into(), Value::Integer(5_000));
        root.insert("watch".into(), Value::Boolean(self.watch));
        root.insert(
            "reload_debounce_ms".into(),
            Value::Integer(self.reload_debounce_ms),
        );
        if let Some(primary) = &self.primary {
            root.insert("primary".into(), primary.clone().into());
        }
        if let Some(cache) = &self.compile_cache_dir {
            root.insert(
                "compile_cache_dir".into(),
                cache.display().to_string().into(),
            );
        }
        root.extend(self.top.clone());
        root.insert("kms_socket".into(), Value::Table(self.kms_socket.clone()));
        let mut admin = self.admin.clone();
        admin.insert("enabled".into(), Value::Boolean(self.admin_port.is_some()));
        if let Some(port) = self.admin_port {
            admin.insert("listen".into(), format!("127.0.0.1:{port}").into());
            admin.insert("allow_reload".into(), Value::Boolean(true));
        }
        root.insert("admin".into(), Value::Table(admin));
        let providers = self
            .providers
            .iter()
            .map(|p| Value::Table(p.to_toml(dir)))
            .collect();
        root.insert("providers".into(), Value::Array(providers));
        let text = toml::to_string(&root).expect("serializing config");
        crate::write_atomically(path, text.as_bytes());
    }

    /// Runs `kmsgate_daemon::server::run` in this process. Returns once the socket
    /// is bound; calls wait in the socket's backlog until providers load.
    pub async fn start(self) -> RunningGateway {
        let admin_url = self
            .admin_port
            .map(|port| format!("http://127.0.0.1:{port}"));
        let (dir, path) = self.write_config();
        let config = Config::load(&path).expect("test config is valid");
        let socket_path = config.socket.clone();
        let socket = kmsgate_daemon::socket::bind(&config.socket, 0o600)
            .await
            .expect("binding the test socket");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(server::run(config, socket, async {
            let _ = stopped.await;
        }));
        RunningGateway {
            socket: socket_path,
            config_path: path,
            admin_url,
            dir,
            stop: Some(stop),
            server,
        }
    }

    /// Runs the `kmsgate` binary with `--log-format json` and `RUST_LOG`
    /// = `log_filter`; its stderr goes to `daemon.log` in the directory.
    pub fn spawn_process(self, log_filter: &str) -> DaemonProcess {
        let admin_url = self
            .admin_port
            .map(|port| format!("http://127.0.0.1:{port}"));
        let (dir, path) = self.write_config();
        let log_path = dir.path().join("daemon.log");
        let log = std::fs::File::create(&log_path).expect("creating the log file");
        let mut command = match self.fd_limit {
            Some(limit) => {
                let mut prlimit = Command::new("prlimit");
                prlimit
                    .arg(format!("--nofile={limit}:{limit}"))
                    .arg("--")
                    .arg(daemon_binary());
                prlimit
            }
            None => Command::new(daemon_binary()),
        };
        let format = if self.human_logs { "human" } else { "json" };
        let child = command
            .args(["--log-format", format, "serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", log_filter)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the kmsgate binary");
        DaemonProcess {
            socket: dir.path().join("kms.sock"),
            admin_url,
            config_path: path,
            log_path,
            child,
            _dir: dir,
        }
    }
}

/// A daemon serving in this process.
pub struct RunningGateway {
    pub socket: PathBuf,
    pub config_path: PathBuf,
    /// `http://127.0.0.1:PORT` when the admin HTTP server is on.
    pub admin_url: Option<String>,
    pub dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), ServeError>>,
}

impl RunningGateway {
    pub async fn v2(&self) -> V2Client {
        client::v2(&self.socket)
            .await
            .expect("connecting to the test daemon")
    }

    pub async fn v1beta1(&self) -> V1beta1Client {
        client::v1beta1(&self.socket)
            .await
            .expect("connecting to the test daemon")
    }

    pub async fn admin(&self) -> AdminClient {
        client::admin(&self.socket)
            .await
            .expect("connecting to the test daemon")
    }

    /// Replaces the daemon's config file with `next`'s (no reload by itself,
    /// unless the daemon watches files).
    pub fn rewrite_config(&self, next: &TestGateway) {
        next.write_config_to(&self.config_path);
    }

    /// Asks the daemon to reload; returns its report.
    pub async fn reload(&self) -> ReloadResponse {
        self.reload_removing(&[]).await
    }

    /// Asks the daemon to reload and remove the providers `remove`
    /// (`kmsgate reload --remove`).
    pub async fn reload_removing(&self, remove: &[&str]) -> ReloadResponse {
        let request = ReloadRequest {
            remove: remove.iter().map(|name| name.to_string()).collect(),
        };
        self.admin()
            .await
            .reload(request)
            .await
            .expect("Reload")
            .into_inner()
    }

    /// The text the admin HTTP port serves at `path` (`/metrics`,
    /// `/providers`); the gateway must have been built with `admin_http`.
    pub async fn admin_get(&self, path: &str) -> String {
        let admin = self.admin_url.as_ref().expect("started with admin_http");
        let response = reqwest::get(format!("{admin}{path}")).await.unwrap();
        assert!(response.status().is_success(), "GET {path}: {response:?}");
        response.text().await.unwrap()
    }

    /// The admin view of provider `name`.
    pub async fn provider(&self, name: &str) -> ProviderInfo {
        let view = self
            .admin()
            .await
            .providers(ProvidersRequest {})
            .await
            .expect("Providers")
            .into_inner();
        view.providers
            .into_iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no provider {name}"))
    }

    /// Signals shutdown and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.server).await.expect("server task panicked")
    }

    /// Waits for `run` to end by itself (e.g. a provider failed to load).
    pub async fn exit(self) -> Result<(), ServeError> {
        self.server.await.expect("server task panicked")
    }
}

/// The daemon as a child process.
pub struct DaemonProcess {
    pub socket: PathBuf,
    pub admin_url: Option<String>,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub child: Child,
    _dir: TempDir,
}

impl DaemonProcess {
    /// Connects once the socket answers; a daemon that never gets there
    /// fails the test with the end of its log.
    pub async fn v2(&self) -> V2Client {
        let started = std::time::Instant::now();
        loop {
            if let Ok(client) = client::v2(&self.socket).await {
                return client;
            }
            if started.elapsed() > std::time::Duration::from_secs(30) {
                let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "timed out after 30s waiting for the daemon's socket; its log ends:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (`HUP`, `TERM`, ...) to the daemon.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("checking on the daemon")
    }

    /// SIGTERM, wait, and return the log.
    pub fn terminate(mut self) -> String {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("sending SIGTERM");
        let status = self.child.wait().expect("waiting for the daemon");
        assert!(status.success(), "daemon exited with {status}");
        std::fs::read_to_string(&self.log_path).expect("reading the daemon log")
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
