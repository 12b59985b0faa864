//! The `kmsgate` command: parse the CLI, set up logging, then hand over to
//! the library (`server::run` for `serve`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Parser, Subcommand, ValueEnum};
use kmsgate::config::Config;
use kmsgate::proto::{admin, v1beta1, v2};
use kmsgate::reload::{self, Checked};
use kmsgate::{client, server, socket, wasm};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(
    name = "kmsgate",
    version,
    about = "Kubernetes KMS plugin with WebAssembly providers"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `kmsgate=debug` (RUST_LOG also works).
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Api {
    V2,
    V1beta1,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the KMS API on the configured Unix socket.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the config, load every provider (compile, link, init) and
    /// run the swap canary on it when its backend is up, without serving.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Ask a running daemon for its status (v2) or version (v1beta1).
    Status {
        #[arg(long, short)]
        socket: PathBuf,
        #[arg(long, value_enum, default_value_t = Api::V2)]
        api: Api,
    },
    /// Encrypt stdin; print JSON (ciphertext in base64, key id, annotations)
    /// that `kmsgate decrypt` reads back.
    Encrypt {
        #[arg(long, short)]
        socket: PathBuf,
        #[arg(long, value_enum, default_value_t = Api::V2)]
        api: Api,
    },
    /// Decrypt the JSON that `kmsgate encrypt` printed (on stdin); write the
    /// plaintext to stdout.
    Decrypt {
        #[arg(long, short)]
        socket: PathBuf,
        #[arg(long, value_enum, default_value_t = Api::V2)]
        api: Api,
    },
    /// Show what a running daemon serves: per provider the component, its
    /// sha256, load time, generation, health, and the last reload error.
    Providers {
        #[arg(long, short)]
        socket: PathBuf,
    },
    /// Load-test any KMS plugin socket (kmsgate or not): throughput,
    /// p50/p90/p99/max latency, errors by gRPC code.
    Bench {
        /// The KMS plugin's socket.
        #[arg(long, short, required_unless_present = "vault_direct")]
        socket: Option<PathBuf>,
        /// Instead of a socket, send the same operations straight to Vault
        /// Transit at this address (token from $VAULT_TOKEN): the baseline
        /// any Vault plugin pays.
        #[arg(long, conflicts_with = "socket", requires = "vault_key")]
        vault_direct: Option<String>,
        /// The Transit key for --vault-direct.
        #[arg(long)]
        vault_key: Option<String>,
        /// The Transit mount for --vault-direct.
        #[arg(long, default_value = "transit")]
        vault_mount: String,
        #[arg(long, value_enum, default_value_t = kmsgate::bench::Api::V2)]
        api: kmsgate::bench::Api,
        #[arg(long = "op", value_enum, default_value_t = kmsgate::bench::Operation::Encrypt)]
        operation: kmsgate::bench::Operation,
        /// Concurrent callers (on one connection, like kube-apiserver).
        #[arg(long, short, default_value_t = 16)]
        concurrency: usize,
        /// Seconds to measure (after warm-up).
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Stop after this many calls, if sooner.
        #[arg(long)]
        count: Option<u64>,
        /// Seconds of unrecorded load first.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Plaintext size (Kubernetes sends 32-byte keys).
        #[arg(long, default_value_t = 32)]
        plaintext_bytes: usize,
        /// A cold-start decrypt storm: decrypt this many distinct
        /// ciphertexts (made first, not timed), each once, no warm-up.
        #[arg(long)]
        distinct: Option<usize>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the benchmark floor: the same gRPC stack with a native AES
    /// provider, no Wasm. For `scripts/bench`.
    #[command(hide = true)]
    Floor {
        #[arg(long, short)]
        socket: PathBuf,
        /// Vault Transit through a native client instead of local AES
        /// (token from $VAULT_TOKEN).
        #[arg(long, requires = "vault_key")]
        vault_address: Option<String>,
        #[arg(long)]
        vault_key: Option<String>,
    },
    /// Make a running daemon re-read its config and hot-swap what changed
    /// (the same as SIGHUP). Fails if any new version was refused.
    Reload {
        #[arg(long, short)]
        socket: PathBuf,
    },
}

/// What `encrypt` prints and `decrypt` reads.
#[derive(Serialize, Deserialize)]
struct Sealed {
    /// Base64.
    ciphertext: String,
    /// Empty for v1beta1 (the key id is inside the ciphertext).
    #[serde(default)]
    key_id: String,
    /// Values in base64.
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format, &cli.log)?;
    match cli.command {
        Command::Serve { config } => serve(config).await,
        Command::Check { config } => check(config).await,
        Command::Status { socket, api } => status(socket, api).await,
        Command::Encrypt { socket, api } => encrypt(socket, api).await,
        Command::Decrypt { socket, api } => decrypt(socket, api).await,
        Command::Providers { socket } => providers(socket).await,
        Command::Reload { socket } => reload(socket).await,
        Command::Bench {
            socket,
            vault_direct,
            vault_key,
            vault_mount,
            api,
            operation,
            concurrency,
            duration,
            count,
            warmup,
            plaintext_bytes,
            distinct,
            json,
        } => {
            if distinct.is_some() && operation != kmsgate::bench::Operation::Decrypt {
                anyhow::bail!("--distinct is a decrypt storm: use it with --op decrypt");
            }
            let target = match (socket, vault_direct) {
                (Some(socket), _) => kmsgate::bench::Target::Socket(socket),
                (None, Some(address)) => kmsgate::bench::Target::VaultDirect {
                    address,
                    mount: vault_mount,
                    key: vault_key.expect("clap requires --vault-key"),
                    token: kmsgate::secret::Secret::new(
                        std::env::var("VAULT_TOKEN")
                            .context("--vault-direct reads the token from $VAULT_TOKEN")?,
                    ),
                },
                (None, None) => unreachable!("clap requires --socket or --vault-direct"),
            };
            let options = kmsgate::bench::BenchOptions {
                target,
                api,
                operation,
                concurrency,
                duration: std::time::Duration::from_secs_f64(duration),
                count,
                warmup: std::time::Duration::from_secs_f64(warmup),
                plaintext_bytes,
                distinct,
            };
            let report = kmsgate::bench::run(&options)
                .await
                .map_err(anyhow::Error::msg)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
            Ok(())
        }
        Command::Floor {
            socket,
            vault_address,
            vault_key,
        } => {
            let provider: Arc<dyn kmsgate::kms::KmsProvider> = match vault_address {
                Some(address) => {
                    let token = kmsgate::secret::Secret::new(
                        std::env::var("VAULT_TOKEN")
                            .context("--vault-address reads the token from $VAULT_TOKEN")?,
                    );
                    let key = vault_key.expect("clap requires --vault-key");
                    let client =
                        kmsgate::floor::TransitClient::new(&address, "transit", &key, &token)
                            .map_err(anyhow::Error::msg)?;
                    Arc::new(kmsgate::floor::NativeTransit::new(client))
                }
                None => Arc::new(kmsgate::floor::NativeAes::random()),
            };
            let socket = socket::bind(&socket, 0o600).await?;
            server::run_floor(socket, provider, shutdown_signal()?).await?;
            Ok(())
        }
    }
}

fn init_tracing(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let mut filter =
        tracing_subscriber::EnvFilter::try_new(filter).context("parsing the log filter")?;
    // The file watcher's library logs every inotify event at trace. With
    // the log in a watched directory, each line would be an event, and each
    // event a line: quiet it unless asked for by name.
    if !filter.to_string().contains("notify") {
        filter = filter.add_directive("notify=debug".parse().expect("a valid directive"));
    }
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
    Ok(())
}

async fn serve(config_path: PathBuf) -> anyhow::Result<()> {
    // Before anything that can take time: a SIGTERM from here on is a clean
    // shutdown, and a SIGHUP no longer terminates (tokio keeps a handler
    // once installed; `server::run` listens for SIGHUP itself).
    let shutdown = shutdown_signal()?;
    drop(tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::hangup(),
    )?);
    let config = Config::load(&config_path)?;
    let mode = config.socket_mode().expect("validated");
    let socket = socket::bind(&config.socket, mode).await?;
    server::run(config, socket, shutdown).await?;
    Ok(())
}

/// Completes on SIGTERM (kubelet, systemd) or SIGINT (a terminal). The
/// handlers are installed now, not when the future is first polled.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

async fn check(config_path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&config_path)?;
    // No disk cache: a check writes nothing.
    let runtime = wasm::Runtime::new(None, (config.memory_budget_mib << 20) as usize)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut failed = false;
    for provider in &config.providers {
        match reload::check(&runtime, provider).await {
            Ok(Checked::Passed(health)) => println!(
                "ok    {}: key id {:?}, canary passed{}",
                provider.name,
                health.key_id.unwrap_or_default(),
                if health.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", health.detail)
                }
            ),
            Ok(Checked::BackendDown(why)) => println!(
                "ok    {}: loaded; canary not run, the backend is not healthy: {why}",
                provider.name
            ),
            Err(error) => {
                failed = true;
                println!("error {}: {error}", provider.name);
            }
        }
    }
    if failed {
        bail!("{config_path:?}: some providers failed to load or failed the canary");
    }
    println!(
        "{config_path:?}: config valid, {} provider(s) loaded and checked",
        config.providers.len()
    );
    Ok(())
}

async fn status(socket: PathBuf, api: Api) -> anyhow::Result<()> {
    match api {
        Api::V2 => {
            let mut client = client::v2(&socket)
                .await
                .with_context(|| format!("connecting to {socket:?}"))?;
            let status = client.status(v2::StatusRequest {}).await?.into_inner();
            println!(
                "{}",
                serde_json::json!({
                    "version": status.version, "healthz": status.healthz, "key_id": status.key_id,
                })
            );
            if status.healthz != "ok" {
                bail!("unhealthy: {}", status.healthz);
            }
        }
        Api::V1beta1 => {
            let mut client = client::v1beta1(&socket)
                .await
                .with_context(|| format!("connecting to {socket:?}"))?;
            let version = client
                .version(v1beta1::VersionRequest {
                    version: "v1beta1".into(),
                })
                .await?
                .into_inner();
            println!(
                "{}",
                serde_json::json!({
                    "version": version.version, "runtime_name": version.runtime_name,
                    "runtime_version": version.runtime_version,
                })
            );
        }
    }
    Ok(())
}

async fn encrypt(socket: PathBuf, api: Api) -> anyhow::Result<()> {
    let mut plaintext = Vec::new();
    std::io::stdin()
        .read_to_end(&mut plaintext)
        .context("reading plaintext from stdin")?;
    let sealed = match api {
        Api::V2 => {
            let mut client = client::v2(&socket)
                .await
                .with_context(|| format!("connecting to {socket:?}"))?;
            let uid = format!("kmsgate-cli-{}", std::process::id());
            let response = client
                .encrypt(v2::EncryptRequest { plaintext, uid })
                .await?
                .into_inner();
            Sealed {
                ciphertext: STANDARD.encode(response.ciphertext),
                key_id: response.key_id,
                annotations: response
                    .annotations
                    .into_iter()
                    .map(|(k, v)| (k, STANDARD.encode(v)))
                    .collect(),
            }
        }
        Api::V1beta1 => {
            let mut client = client::v1beta1(&socket)
                .await
                .with_context(|| format!("connecting to {socket:?}"))?;
            let request = v1beta1::EncryptRequest {
                version: "v1beta1".into(),
                plain: plaintext,
            };
            let response = client.encrypt(request).await?.into_inner();
            Sealed {
                ciphertext: STANDARD.encode(response.cipher),
                key_id: String::new(),
                annotations: BTreeMap::new(),
            }
        }
    };
    println!("{}", serde_json::to_string(&sealed)?);
    Ok(())
}

async fn decrypt(socket: PathBuf, api: Api) -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading JSON from stdin")?;
    let sealed: Sealed =
        serde_json::from_str(&input).context("stdin is not the JSON `kmsgate encrypt` prints")?;
    let ciphertext = STANDARD
        .decode(&sealed.ciphertext)
        .context("ciphertext is not base64")?;
    let plaintext = match api {
        Api::V2 => {
            let annotations = sealed
                .annotations
                .iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        STANDARD
                            .decode(v)
                            .with_context(|| format!("annotation {k} is not base64"))?,
                    ))
                })
                .collect::<anyhow::Result<_>>()?;
            let mut client = client::v2(&socket)
                .await
                .with_context(|| format!("connecting to {socket:?}"))?;
            let uid = format!("kmsgate-cli-{}", std::process::id());
            let request = v2::DecryptRequest {
                ciphertext,
                uid,
                key_id: sealed.key_id,
                annotations,
            };
            client.decrypt(request).await?.into_inner().plaintext
        }
        Api::V1beta1 => {
            let mut client = client::v1beta1(&socket)
                .await
                .with_context(|| format!("connecting to {socket:?}"))?;
            let request = v1beta1::DecryptRequest {
                version: "v1beta1".into(),
                cipher: ciphertext,
            };
            client.decrypt(request).await?.into_inner().plain
        }
    };
    std::io::stdout().write_all(&plaintext)?;
    Ok(())
}

async fn providers(socket: PathBuf) -> anyhow::Result<()> {
    let mut client = client::admin(&socket)
        .await
        .with_context(|| format!("connecting to {socket:?}"))?;
    let view = client
        .providers(admin::ProvidersRequest {})
        .await?
        .into_inner();
    let providers: Vec<_> = view
        .providers
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name, "primary": p.primary, "component": p.component, "sha256": p.sha256,
                "loaded_at_unix_ms": p.loaded_at_unix_ms, "generation": p.generation,
                "healthy": p.healthy, "key_id": p.key_id, "detail": p.detail,
                "last_reload_error": p.last_reload_error,
                "batches_decrypts": p.batches_decrypts, "decrypt_batches": p.decrypt_batches,
                "decrypt_batch_items": p.decrypt_batch_items,
                "decrypts_abandoned": p.decrypts_abandoned, "breaker": p.breaker,
                "fast_failures": p.fast_failures, "instances": p.instances,
                "queued_calls": p.queued_calls, "sandbox_memory_bytes": p.sandbox_memory_bytes,
            })
        })
        .collect();
    let json = serde_json::json!({
        "providers": providers,
        "reloads_total": view.reloads_total,
        "reload_failures_total": view.reload_failures_total,
        "last_reload_error": view.last_reload_error,
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

async fn reload(socket: PathBuf) -> anyhow::Result<()> {
    let mut client = client::admin(&socket)
        .await
        .with_context(|| format!("connecting to {socket:?}"))?;
    let report = client.reload(admin::ReloadRequest {}).await?.into_inner();
    if !report.error.is_empty() {
        bail!(
            "reload refused, previous versions keep serving: {}",
            report.error
        );
    }
    if report.swapped.is_empty() {
        println!("nothing changed");
    } else {
        println!("swapped: {}", report.swapped.join(", "));
    }
    Ok(())
}
