//! `kmsgate conformance`: the KMS plugin contract, checked against any
//! running plugin's socket (`kmsgate_conformance`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use kmsgate_conformance::{Check, Options, Outcome};

/// Check a running KMS plugin (kmsgate or another vendor's) against the
/// Kubernetes KMS v2 contract, dialling its Unix socket as kube-apiserver
/// does: Status, round trips, what the apiserver enforces on answers, and
/// clear errors for bad input. One PASS/FAIL line per check, latency as
/// INFO; exits non-zero if any check failed.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short)]
    socket: PathBuf,
    /// Also check the deprecated v1beta1 service.
    #[arg(long)]
    v1beta1: bool,
    /// Calls per latency measurement.
    #[arg(long, default_value_t = 50)]
    latency_calls: usize,
    /// Deadline of each call, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Print the report as JSON instead of lines.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let options = Options {
        v1beta1: args.v1beta1,
        latency_calls: args.latency_calls,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let report = kmsgate_conformance::run(&args.socket, &options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for check in &report.checks {
            println!("{}", line(check));
        }
        println!("{} passed, {} failed", report.passed(), report.failed());
    }
    if report.failed() > 0 {
        bail!("{} of the checks failed", report.failed());
    }
    Ok(())
}

/// One check as a report line: `PASS  name [Code]: detail`.
pub fn line(check: &Check) -> String {
    let outcome = match check.outcome {
        Outcome::Pass => "PASS",
        Outcome::Fail => "FAIL",
        Outcome::Info => "INFO",
    };
    let code = check
        .code
        .as_deref()
        .map(|code| format!(" [{code}]"))
        .unwrap_or_default();
    format!("{outcome}  {}{code}: {}", check.name, check.detail)
}
