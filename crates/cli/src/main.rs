//! The `kmsgate` command: parse the CLI, set up logging, run the command
//! (one module each under `command/`; `serve` hands over to
//! `kmsgate_daemon::server::run`).

mod command;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use command::{
    bench, check, compile, conformance, decrypt, encrypt, provider, providers, reload, serve,
    status,
};

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

#[derive(Subcommand)]
enum Command {
    Serve(serve::Args),
    Check(check::Args),
    Status(status::Args),
    Encrypt(encrypt::Args),
    Decrypt(decrypt::Args),
    Providers(providers::Args),
    Bench(bench::Args),
    Reload(reload::Args),
    Conformance(conformance::Args),
    Provider(provider::Args),
    Compile(compile::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format, &cli.log)?;
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Check(args) => check::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Encrypt(args) => encrypt::run(args).await,
        Command::Decrypt(args) => decrypt::run(args).await,
        Command::Providers(args) => providers::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Reload(args) => reload::run(args).await,
        Command::Conformance(args) => conformance::run(args).await,
        Command::Provider(args) => provider::run(args).await,
        Command::Compile(args) => compile::run(args).await,
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
