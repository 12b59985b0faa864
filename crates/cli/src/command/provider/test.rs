//! `kmsgate provider test COMPONENT`: a provider component, run alone in
//! the daemon as it would serve (the same sandbox, and the same start-up
//! canary a hot swap runs), then held to the KMS contract by
//! `kmsgate_conformance` over a throwaway socket.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kmsgate_conformance::{Check, Options, Outcome, Report};
use kmsgate_daemon::config::Config;
use kmsgate_daemon::{server, socket};
use toml::{Table, Value};

/// Run a provider component in the daemon's sandbox, alone, and check it:
/// start (the swap canary: a round trip and health), then the KMS v2
/// contract over a throwaway socket, as `kmsgate conformance` does. One
/// PASS/FAIL line per check; exits non-zero if any failed. Settings,
/// secrets and allowed hosts come from flags, or from a provider of a
/// config file (`--config F --provider NAME`, its component replaced by
/// COMPONENT).
#[derive(clap::Args)]
pub struct TestArgs {
    /// The `.wasm` component.
    component: PathBuf,
    /// Take settings, secrets, auths, outbound and limits from this
    /// provider of `--config`.
    #[arg(long, requires = "config")]
    provider: Option<String>,
    #[arg(long)]
    config: Option<PathBuf>,
    /// A setting, `KEY=VALUE`. Repeatable.
    #[arg(long = "setting", value_name = "KEY=VALUE")]
    settings: Vec<String>,
    /// A secret read from a file, `NAME=FILE`. Repeatable.
    #[arg(long = "secret", value_name = "NAME=FILE")]
    secrets: Vec<String>,
    /// An auth the host applies to the provider's requests,
    /// `NAME={ kind = "vault-token", token = { file = "token" } }`: the
    /// table of `[providers.auth.NAME]`, inline. Repeatable.
    #[arg(long = "auth", value_name = "NAME=TABLE")]
    auths: Vec<String>,
    /// A public key trusted to sign the component, `NAME=FILE` (PEM,
    /// ECDSA P-256 or Ed25519), as `[[trusted_keys]]`. Repeatable.
    #[arg(long = "trusted-key", value_name = "NAME=FILE")]
    trusted_keys: Vec<String>,
    /// Refuse the component unless a trusted key signed it.
    #[arg(long)]
    require_signature: bool,
    /// The signature file; default: COMPONENT.sig.
    #[arg(long)]
    signature: Option<PathBuf>,
    /// A `scheme://host:port` the provider may reach. Repeatable.
    #[arg(long = "allow", value_name = "URL")]
    allowed_hosts: Vec<String>,
    /// Also check the v1beta1 service.
    #[arg(long)]
    v1beta1: bool,
    /// Calls per latency measurement.
    #[arg(long, default_value_t = 50)]
    latency_calls: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The provider's name when not taken from a config: it prefixes key ids.
const NAME: &str = "under-test";

pub async fn run(args: TestArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("a directory for the test socket")?;
    let provider = provider_table(&args)?;
    let name = provider
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or(NAME)
        .to_owned();
    let path = dir.path().join("kmsgate.toml");
    let mut root = Table::new();
    root.insert(
        "socket".into(),
        dir.path().join("kms.sock").display().to_string().into(),
    );
    root.insert("primary".into(), name.clone().into());
    root.insert("status_interval_ms".into(), 1_000.into());
    // Shared with the direct checks below, so the component compiles once.
    let cache = dir.path().join("compiled");
    root.insert(
        "compile_cache_dir".into(),
        cache.display().to_string().into(),
    );
    let (keys, required) = trust(&args)?;
    root.insert("trusted_keys".into(), Value::Array(keys));
    root.insert("require_signature".into(), required.into());
    root.insert("watch".into(), false.into());
    let mut admin = Table::new();
    admin.insert("enabled".into(), false.into());
    root.insert("admin".into(), Value::Table(admin));
    root.insert(
        "providers".into(),
        Value::Array(vec![Value::Table(provider)]),
    );
    std::fs::write(&path, toml::to_string(&root)?).context("writing the test config")?;
    let config = Config::load(&path)?;

    let mut report = Report::default();
    let socket_path = config.socket.clone();
    let provider_config = config.providers[0].clone();
    let memory_budget = config.memory_budget_bytes;
    let socket = socket::bind(&config.socket, 0o600).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = Some(tokio::spawn(server::run(config, socket, async {
        let _ = stopped.await;
    })));
    let started = Instant::now();
    let ready = wait_ready(&socket_path, &mut server).await;
    let served = ready.is_ok();
    match ready {
        Ok(()) => {
            report.checks.push(Check::new(
                "start",
                Outcome::Pass,
                format!(
                    "loaded, canary passed, healthy in {:.1?}",
                    started.elapsed()
                ),
            ));
            let options = Options {
                v1beta1: args.v1beta1,
                latency_calls: args.latency_calls,
                ..Options::default()
            };
            let contract = kmsgate_conformance::run(&socket_path, &options).await?;
            report.checks.extend(contract.checks);
        }
        Err(why) => report.checks.push(Check::new("start", Outcome::Fail, why)),
    }
    let _ = stop.send(());
    // A daemon that failed to start was awaited by `wait_ready` already.
    if let Some(server) = server {
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    }
    if served {
        let direct =
            super::direct::run(&provider_config, &cache, memory_budget, args.latency_calls);
        report.checks.extend(direct.await);
    }

    print(&report, args.json)?;
    if report.failed() > 0 {
        bail!("{} of the checks failed", report.failed());
    }
    Ok(())
}

/// Until the daemon serves and its provider is healthy; or why not. A
/// daemon that stopped (a start refused) is taken out of `server`.
async fn wait_ready(
    socket: &Path,
    server: &mut Option<tokio::task::JoinHandle<Result<(), server::ServeError>>>,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::from("the daemon did not answer");
    while Instant::now() < deadline {
        if let Some(stopped) = server.take_if(|running| running.is_finished()) {
            return Err(match stopped.await {
                Ok(Err(error)) => error.to_string(),
                Ok(Ok(())) => "the daemon stopped".into(),
                Err(error) => error.to_string(),
            });
        }
        if let Ok(mut client) = kmsgate_proto::client::v2(socket).await {
            match client.status(kmsgate_proto::v2::StatusRequest {}).await {
                Ok(status) if status.get_ref().healthz == "ok" => return Ok(()),
                Ok(status) => last = format!("unhealthy: {}", status.get_ref().healthz),
                Err(error) => last = error.message().to_owned(),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("not healthy within 60 s: {last}"))
}

/// The provider's config entry: from `--config`/`--provider`, or built
/// from the flags.
fn provider_table(args: &TestArgs) -> anyhow::Result<Table> {
    let component =
        std::path::absolute(&args.component).with_context(|| format!("{:?}", args.component))?;
    let mut table = match (&args.config, &args.provider) {
        (Some(config), Some(name)) => {
            let config = Config::load(config)?;
            let provider = config
                .providers
                .iter()
                .find(|p| &p.name == name)
                .with_context(|| format!("no provider {name} in {:?}", args.config))?;
            match Value::try_from(provider)? {
                Value::Table(table) => table,
                _ => bail!("provider {name} is not a table"),
            }
        }
        (Some(_), None) => bail!("--config needs --provider NAME"),
        _ => {
            let mut table = Table::new();
            table.insert("name".into(), NAME.into());
            table
        }
    };
    table.insert("component".into(), component.display().to_string().into());
    // The signature beside the component under test, not the configured
    // component's.
    table.remove("signature");
    if let Some(signature) = &args.signature {
        let signature = std::path::absolute(signature)?;
        table.insert("signature".into(), signature.display().to_string().into());
    }
    // The component under test is new bytes: a pin from the config would
    // refuse it.
    table.remove("sha256");
    let settings = entry_table(&mut table, "settings");
    for setting in &args.settings {
        let (key, value) = split(setting, "--setting")?;
        settings.insert(key.into(), value.into());
    }
    let secrets = entry_table(&mut table, "secrets");
    for secret in &args.secrets {
        let (name, file) = split(secret, "--secret")?;
        let file = std::path::absolute(file)?;
        let mut source = Table::new();
        source.insert("file".into(), file.display().to_string().into());
        secrets.insert(name.into(), Value::Table(source));
    }
    let auths = entry_table(&mut table, "auth");
    for auth in &args.auths {
        let (name, text) = split(auth, "--auth")?;
        let mut parsed: Table = toml::from_str(&format!("auth = {text}"))
            .with_context(|| format!("--auth {name}: expected an inline TOML table"))?;
        let Some(mut value @ Value::Table(_)) = parsed.remove("auth") else {
            bail!("--auth {name}: expected an inline TOML table, {{ kind = ... }}");
        };
        absolute_files(&mut value)?;
        auths.insert(name.into(), value);
    }
    let outbound = entry_table(&mut table, "outbound");
    if !args.allowed_hosts.is_empty() {
        let hosts = outbound
            .entry("allowed_hosts")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(hosts) = hosts {
            hosts.extend(args.allowed_hosts.iter().map(|h| Value::from(h.as_str())));
        }
    }
    Ok(table)
}

/// The trusted keys and the requirement: the config file's (with
/// `--config`), then the flags'.
fn trust(args: &TestArgs) -> anyhow::Result<(Vec<Value>, bool)> {
    let mut keys = Vec::new();
    let mut required = args.require_signature;
    if let Some(config) = &args.config {
        let config = Config::load(config)?;
        for key in &config.trusted_keys {
            keys.push(Value::try_from(key)?);
        }
        required |= config.require_signature;
    }
    for key in &args.trusted_keys {
        let (name, file) = split(key, "--trusted-key")?;
        let mut table = Table::new();
        table.insert("name".into(), name.into());
        table.insert(
            "file".into(),
            std::path::absolute(file)?.display().to_string().into(),
        );
        keys.push(Value::Table(table));
    }
    Ok((keys, required))
}

/// Every `file = "…"` in `value` made absolute: the test's config lives in
/// a temporary directory, and relative paths in it would resolve there.
fn absolute_files(value: &mut Value) -> anyhow::Result<()> {
    if let Value::Table(table) = value {
        for (key, entry) in table.iter_mut() {
            match entry {
                Value::String(path) if key == "file" => {
                    *path = std::path::absolute(&*path)?.display().to_string();
                }
                _ => absolute_files(entry)?,
            }
        }
    }
    Ok(())
}

fn entry_table<'a>(table: &'a mut Table, key: &str) -> &'a mut Table {
    let entry = table
        .entry(key)
        .or_insert_with(|| Value::Table(Table::new()));
    if !entry.is_table() {
        *entry = Value::Table(Table::new());
    }
    entry.as_table_mut().expect("a table, just made one")
}

fn split<'a>(text: &'a str, flag: &str) -> anyhow::Result<(&'a str, &'a str)> {
    text.split_once('=')
        .with_context(|| format!("{flag} {text:?}: expected NAME=VALUE"))
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    for check in &report.checks {
        println!("{}", super::super::conformance::line(check));
    }
    println!("{} passed, {} failed", report.passed(), report.failed());
    Ok(())
}
