//! `kmsgate bench`: load-test any KMS plugin socket, or Vault Transit
//! itself as the baseline.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use kmsgate_bench::load::{self, BenchOptions, Operation, Target};
use kmsgate_core::secret::Secret;

/// Load-test any KMS plugin socket (kmsgate or not): throughput,
/// p50/p90/p99/max latency, errors by gRPC code.
#[derive(clap::Args)]
pub struct Args {
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
    #[arg(long, value_enum, default_value_t = load::Api::V2)]
    api: load::Api,
    #[arg(long = "op", value_enum, default_value_t = Operation::Encrypt)]
    operation: Operation,
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
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.distinct.is_some() && args.operation != Operation::Decrypt {
        bail!("--distinct is a decrypt storm: use it with --op decrypt");
    }
    let target = match (args.socket, args.vault_direct, args.vault_key) {
        (Some(socket), _, _) => Target::Socket(socket),
        (None, Some(address), Some(key)) => Target::VaultDirect {
            address,
            mount: args.vault_mount,
            key,
            token: Secret::new(
                std::env::var("VAULT_TOKEN")
                    .context("--vault-direct reads the token from $VAULT_TOKEN")?,
            ),
        },
        // clap requires --socket, or --vault-direct with --vault-key.
        _ => bail!("give --socket, or --vault-direct with --vault-key"),
    };
    let options = BenchOptions {
        target,
        api: args.api,
        operation: args.operation,
        concurrency: args.concurrency,
        duration: Duration::from_secs_f64(args.duration),
        count: args.count,
        warmup: Duration::from_secs_f64(args.warmup),
        plaintext_bytes: args.plaintext_bytes,
        distinct: args.distinct,
    };
    let report = load::run(&options).await.map_err(anyhow::Error::msg)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
