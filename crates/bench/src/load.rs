//! `kmsgate bench`: a load generator for any KMS plugin socket (kmsgate or
//! not).
//!
//! The generator shares one gRPC connection among its workers, as
//! kube-apiserver does. Decrypt runs over a pool of ciphertexts made during
//! warm-up; with `distinct`, over that many ciphertexts, each decrypted
//! once and no warm-up (a cold-start decrypt storm). Latencies are per
//! call, merged and sorted at the end.
//!
//! Besides a KMS socket, the target can be Vault Transit itself
//! ([`Target::VaultDirect`]): the same operations sent by a native HTTP
//! client ([`TransitClient`]) straight to Vault, the cost any Vault plugin
//! pays.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use kmsgate_proto::client;
use kmsgate_proto::{v1beta1, v2};

use crate::floor::TransitClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    V2,
    V1beta1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Encrypt,
    Decrypt,
    /// Alternating encrypt and decrypt.
    Mix,
}

/// What to load.
#[derive(Debug, Clone)]
pub enum Target {
    /// A KMS plugin's Unix socket.
    Socket(PathBuf),
    /// Vault Transit over HTTP, no plugin in between.
    VaultDirect {
        /// `http://host:port`.
        address: String,
        mount: String,
        key: String,
        token: kmsgate_core::secret::Secret,
    },
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub target: Target,
    pub api: Api,
    pub operation: Operation,
    pub concurrency: usize,
    /// Stop after this long (after warm-up)...
    pub duration: Duration,
    /// ...or after this many calls, whichever comes first.
    pub count: Option<u64>,
    pub warmup: Duration,
    pub plaintext_bytes: usize,
    /// Decrypt this many distinct ciphertexts, each once (made first, not
    /// timed); no warm-up.
    pub distinct: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub api: Api,
    pub operation: Operation,
    pub concurrency: usize,
    pub calls: u64,
    pub seconds: f64,
    pub throughput_per_second: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Failed calls by gRPC code.
    pub errors: BTreeMap<String, u64>,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} {:?} c={}: {} calls in {:.2}s = {:.0}/s; p50 {}µs p90 {}µs p99 {}µs max {}µs; errors {:?}",
            self.api,
            self.operation,
            self.concurrency,
            self.calls,
            self.seconds,
            self.throughput_per_second,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.max_us,
            self.errors
        )
    }
}

/// One client: a KMS API over the socket, or Vault directly.
#[derive(Clone)]
enum Client {
    V2(client::V2Client),
    V1beta1(client::V1beta1Client),
    Vault(TransitClient),
}

/// What decrypt needs to replay an encrypt.
#[derive(Clone)]
struct Sealed {
    ciphertext: Vec<u8>,
    key_id: String,
    annotations: std::collections::HashMap<String, Vec<u8>>,
}

impl Client {
    async fn encrypt(&mut self, plaintext: &[u8]) -> Result<Sealed, tonic::Status> {
        match self {
            Client::V2(client) => {
                let request = v2::EncryptRequest {
                    plaintext: plaintext.to_vec(),
                    uid: "kmsgate-bench".into(),
                };
                let response = client.encrypt(request).await?.into_inner();
                Ok(Sealed {
                    ciphertext: response.ciphertext,
                    key_id: response.key_id,
                    annotations: response.annotations,
                })
            }
            Client::V1beta1(client) => {
                let request = v1beta1::EncryptRequest {
                    version: "v1beta1".into(),
                    plain: plaintext.to_vec(),
                };
                let response = client.encrypt(request).await?.into_inner();
                Ok(Sealed {
                    ciphertext: response.cipher,
                    key_id: String::new(),
                    annotations: Default::default(),
                })
            }
            Client::Vault(vault) => Ok(Sealed {
                ciphertext: vault.encrypt(plaintext).await?,
                key_id: String::new(),
                annotations: Default::default(),
            }),
        }
    }

    async fn decrypt(&mut self, sealed: &Sealed) -> Result<(), tonic::Status> {
        match self {
            Client::V2(client) => {
                let request = v2::DecryptRequest {
                    ciphertext: sealed.ciphertext.clone(),
                    uid: "kmsgate-bench".into(),
                    key_id: sealed.key_id.clone(),
                    annotations: sealed.annotations.clone(),
                };
                client.decrypt(request).await.map(|_| ())
            }
            Client::V1beta1(client) => {
                let request = v1beta1::DecryptRequest {
                    version: "v1beta1".into(),
                    cipher: sealed.ciphertext.clone(),
                };
                client.decrypt(request).await.map(|_| ())
            }
            Client::Vault(vault) => vault.decrypt(&sealed.ciphertext).await.map(|_| ()),
        }
    }

    async fn call(
        &mut self,
        operation: Operation,
        n: u64,
        pool: &[Sealed],
        plaintext: &[u8],
    ) -> Result<(), tonic::Status> {
        let decrypt = match operation {
            Operation::Encrypt => false,
            Operation::Decrypt => true,
            Operation::Mix => n % 2 == 1,
        };
        if decrypt {
            self.decrypt(&pool[n as usize % pool.len()]).await
        } else {
            self.encrypt(plaintext).await.map(|_| ())
        }
    }
}

/// Runs the load and reports. Errors only if the socket cannot be reached
/// or the warm-up cannot make a single ciphertext.
pub async fn run(options: &BenchOptions) -> Result<BenchReport, String> {
    let client = match &options.target {
        Target::Socket(socket) => {
            let channel = client::connect(socket).await.map_err(|e| e.to_string())?;
            match options.api {
                Api::V2 => Client::V2(client::V2Client::new(channel)),
                Api::V1beta1 => Client::V1beta1(client::V1beta1Client::new(channel)),
            }
        }
        Target::VaultDirect {
            address,
            mount,
            key,
            token,
        } => Client::Vault(TransitClient::new(address, mount, key, token)?),
    };
    let plaintext = vec![0x5a; options.plaintext_bytes.max(1)];
    let pool = Arc::new(make_pool(&client, options, &plaintext).await?);

    // Warm-up: the same load, not recorded. A storm has none: it is cold.
    if options.distinct.is_none() {
        let warm_until = Instant::now() + options.warmup;
        drive(&client, options, &pool, &plaintext, warm_until, None).await;
    }

    let started = Instant::now();
    let count = match options.distinct {
        Some(distinct) => Some(options.count.unwrap_or(u64::MAX).min(distinct as u64)),
        None => options.count,
    };
    let (latencies, errors) = drive(
        &client,
        options,
        &pool,
        &plaintext,
        started + options.duration,
        count,
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut sorted = latencies;
    sorted.sort_unstable();
    let percentile = |p: f64| -> u64 {
        if sorted.is_empty() {
            return 0;
        }
        let index = ((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1);
        sorted[index.min(sorted.len() - 1)]
    };
    let calls = sorted.len() as u64 + errors.values().sum::<u64>();
    Ok(BenchReport {
        api: options.api,
        operation: options.operation,
        concurrency: options.concurrency,
        calls,
        seconds,
        throughput_per_second: calls as f64 / seconds,
        p50_us: percentile(0.50),
        p90_us: percentile(0.90),
        p99_us: percentile(0.99),
        max_us: sorted.last().copied().unwrap_or(0),
        errors,
    })
}

/// The ciphertexts decrypt runs over: 64, or `distinct` (made by
/// `concurrency` workers, so a big storm is quick to set up).
async fn make_pool(
    client: &Client,
    options: &BenchOptions,
    plaintext: &[u8],
) -> Result<Vec<Sealed>, String> {
    let wanted = options.distinct.unwrap_or(64).max(1);
    let workers = options.concurrency.clamp(1, wanted);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let mut client = client.clone();
        let plaintext = plaintext.to_vec();
        let share = wanted / workers + usize::from(worker < wanted % workers);
        tasks.spawn(async move {
            let mut made = Vec::with_capacity(share);
            for _ in 0..share {
                made.push(client.encrypt(&plaintext).await?);
            }
            Ok::<_, tonic::Status>(made)
        });
    }
    let mut pool = Vec::with_capacity(wanted);
    for made in tasks.join_all().await {
        pool.extend(made.map_err(|e| format!("making ciphertexts to decrypt failed: {e}"))?);
    }
    Ok(pool)
}

/// `concurrency` workers until `until` or `count` calls; returns the
/// successful calls' latencies (µs) and the failures by code.
async fn drive(
    client: &Client,
    options: &BenchOptions,
    pool: &Arc<Vec<Sealed>>,
    plaintext: &[u8],
    until: Instant,
    count: Option<u64>,
) -> (Vec<u64>, BTreeMap<String, u64>) {
    let issued = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..options.concurrency.max(1))
        .map(|_| {
            let mut client = client.clone();
            let (pool, issued, plaintext) = (pool.clone(), issued.clone(), plaintext.to_vec());
            let operation = options.operation;
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = BTreeMap::<String, u64>::new();
                while Instant::now() < until {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    if count.is_some_and(|count| n >= count) {
                        break;
                    }
                    let started = Instant::now();
                    match client.call(operation, n, &pool, &plaintext).await {
                        Ok(()) => latencies.push(started.elapsed().as_micros() as u64),
                        Err(status) => {
                            *errors.entry(format!("{:?}", status.code())).or_default() += 1
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = BTreeMap::new();
    for worker in workers {
        let (worker_latencies, worker_errors) = worker.await.expect("bench worker panicked");
        latencies.extend(worker_latencies);
        for (code, n) in worker_errors {
            *errors.entry(code).or_default() += n;
        }
    }
    (latencies, errors)
}
